//! Notifications to the next system: signed with Standard Webhooks headers (verified by
//! the reference library), sent after the acknowledgement, kept in the outbox when the
//! receiver fails, and retried by reconcile until it succeeds.

use std::time::{Duration, Instant};

use kling_standin::Script;
use serde_json::json;

use crate::support::deployment::{Auth, Deployment, deploy_on, deploy_with};
use crate::support::receiver::{Dripping, Message, NOTIFY_SECRET, Receiver};
use crate::support::requests::{API_TOKEN, authorized, callback, flat, request};
use crate::support::spin_host::{ALLOWED_OUTBOUND_HOSTS, PROVIDER_FAILS, SpinApp};

async fn deploy_notifying(receiver: &Receiver) -> Deployment {
    deploy_notifying_with(receiver, &[]).await
}

/// [`deploy_notifying`], with `extra` variables besides.
pub(crate) async fn deploy_notifying_with(
    receiver: &Receiver,
    extra: &[(&'static str, &str)],
) -> Deployment {
    let origin = receiver.origin();
    let mut vars = vec![
        ("notify_url", receiver.url()),
        ("notify_origin", origin.as_str()),
        ("notify_secret", NOTIFY_SECRET),
        ("notify_retry_seconds", "0"),
    ];
    vars.extend_from_slice(extra);
    deploy_with(Auth::KeyPair, None, &vars).await
}

/// Delivers `ext`'s final callback as an instance that stops after acknowledging it,
/// before its notification reaches the outbox: that write never lands. Returns once
/// the write was tried.
async fn final_never_queued(d: &Deployment, ext: &str, task_id: &str) {
    let outbox = format!("outbox/task_{ext}_succeed_");
    d.app.kv.fail_next_set_starting(&outbox);
    let start = d.app.kv.log_len();
    let reply = d
        .app
        .send(callback(ext, flat(task_id, ext, "succeed", 9)))
        .await;
    assert_eq!(reply.json()["outcome"], "applied");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d
        .app
        .kv
        .ops_since(start)
        .iter()
        .any(|(_, key)| key.starts_with(&outbox))
    {
        assert!(
            Instant::now() < deadline,
            "the notification was never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The outbox entries (`outbox/{webhook_id}`, index label) whose id starts with `prefix`.
fn outbox(app: &SpinApp, prefix: &str) -> Vec<serde_json::Value> {
    app.kv
        .label_keys("index")
        .into_iter()
        .filter(|k| k.starts_with(&format!("outbox/{prefix}")))
        .filter_map(|k| app.kv.json(&k))
        .collect()
}

/// Waits until the receiver has accepted a message whose id starts with `webhook_id`
/// (a task's ids end with a digest of its content).
async fn wait_for_message(receiver: &Receiver, webhook_id: &str) -> Message {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(message) = receiver
            .accepted()
            .into_iter()
            .find(|m| m.webhook_id.starts_with(webhook_id))
        {
            return message;
        }
        assert!(
            Instant::now() < deadline,
            "{webhook_id} never arrived; got {:?}",
            receiver
                .accepted()
                .iter()
                .map(|m| m.webhook_id.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_and_pipeline_changes_reach_the_next_system_signed_once_per_status() {
    let receiver = Receiver::start(0).await;
    let d = deploy_notifying(&receiver).await;
    let body = json!({"id": "clip", "steps": [
        {"kind": "text2video", "request": {"prompt": "a fox"}},
        {"kind": "video-extend", "request": {"prompt": "it runs"}},
    ]});
    let reply = d
        .app
        .send(
            request("POST", "/pipelines")
                .header("authorization", format!("Bearer {API_TOKEN}"))
                .body(body.to_string().into())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 202);

    let task = wait_for_message(&receiver, "task_clip-0_succeed").await;
    assert_eq!(task.body["type"], "task.updated");
    assert_eq!(task.body["data"]["external_task_id"], "clip-0");
    assert_eq!(task.body["data"]["status"], "succeed");
    assert!(task.body["data"]["videos"][0]["url"].is_string());
    assert!(
        task.body["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let started = wait_for_message(&receiver, "pipeline_clip_running_1").await;
    assert_eq!(started.body["type"], "pipeline.updated");
    assert_eq!(
        started.body["data"]["steps"][1]["task"]["external_task_id"],
        "clip-1"
    );
    let done = wait_for_message(&receiver, "pipeline_clip_succeed_1").await;
    assert_eq!(done.body["data"]["status"], "succeed");
    assert!(done.body["data"]["outputs"]["videos"][0]["id"].is_string());
    // A receiver orders a pipeline's notifications by their `sequence`.
    let sequence = |m: &serde_json::Value| m["data"]["sequence"].as_u64().unwrap();
    assert!(
        sequence(&done.body) > sequence(&started.body),
        "{} then {}",
        sequence(&started.body),
        sequence(&done.body)
    );
    // Step 1, twice its task's sequence, ended: as `GET /pipelines/clip` serves it.
    let step_task = done.body["data"]["steps"][1]["task"]["sequence"]
        .as_u64()
        .unwrap();
    assert_eq!(sequence(&done.body), 2 * 10u64.pow(14) + 2 * step_task + 1);
    let served = d
        .app
        .ok_json(
            request("GET", "/pipelines/clip")
                .header("authorization", format!("Bearer {API_TOKEN}"))
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(served["sequence"], done.body["data"]["sequence"]);
    for status in ["submitted", "processing", "succeed"] {
        wait_for_message(&receiver, &format!("task_clip-1_{status}")).await;
    }
    // Once per status: wait until the last callback's instance is done (the stand-in
    // has its answer), then count.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !d.standin.deliveries().iter().any(|delivery| {
        delivery.status == "succeed"
            && delivery.answered.is_some()
            && d.standin
                .tasks_with_external_id("clip-1")
                .iter()
                .any(|task| task.task_id == delivery.task_id)
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "clip-1 never finished"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut ids: Vec<String> = receiver
        .accepted()
        .iter()
        .map(|m| m.webhook_id.clone())
        .collect();
    for step in ["clip-0", "clip-1"] {
        for status in ["submitted", "processing", "succeed"] {
            let prefix = format!("task_{step}_{status}_");
            let sent = ids.iter().filter(|id| id.starts_with(&prefix)).count();
            assert_eq!(sent, 1, "{prefix}: {ids:?}");
        }
    }
    for prefix in ["pipeline_clip_running_1", "pipeline_clip_succeed_1"] {
        let sent = ids.iter().filter(|id| id.starts_with(prefix)).count();
        assert_eq!(sent, 1, "{prefix}: {ids:?}");
    }
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "no message twice");
    assert_eq!(receiver.forged(), 0, "every signature verified");
    let serialized = serde_json::to_string(
        &receiver
            .accepted()
            .iter()
            .map(|m| m.body.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(
        !serialized.contains(&d.standin.config().secret_key) && !serialized.contains(API_TOKEN),
        "no secret is ever sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_twice_gets_the_event_once_it_succeeds_and_the_outbox_empties() {
    let receiver = Receiver::start(2).await;
    let d = deploy_notifying(&receiver).await;
    let reply = d
        .app
        .send(callback("late-job", flat("5100", "late-job", "succeed", 9)))
        .await;
    assert_eq!(reply.status, 200, "the callback is acknowledged regardless");

    // The first send failed after the acknowledgement: the message waits in the outbox
    // (one key of the index label) for reconcile.
    let outbox_entry = || {
        outbox(&d.app, "task_late-job_succeed_")
            .into_iter()
            .find(|pending| pending["attempts"] == 1)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox_entry().is_none() {
        assert!(Instant::now() < deadline, "nothing reached the outbox");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.refused(), 1);
    assert!(receiver.accepted().is_empty());

    let second = d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert_eq!(
        (
            &second["notifications_sent"],
            &second["notifications_pending"]
        ),
        (&json!(0), &json!(1)),
        "{second}"
    );
    assert_eq!(receiver.refused(), 2);
    let pending = outbox(&d.app, "").remove(0);
    assert_eq!(pending["attempts"], 2);

    let third = d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert_eq!(
        (
            &third["notifications_sent"],
            &third["notifications_pending"]
        ),
        (&json!(1), &json!(0)),
        "{third}"
    );
    let accepted = receiver.accepted();
    assert_eq!(
        accepted.len(),
        1,
        "delivered once it succeeded, and only then"
    );
    assert!(accepted[0].webhook_id.starts_with("task_late-job_succeed_"));
    assert_eq!(accepted[0].body["data"]["task_id"], "5100");
    assert!(
        d.app.kv.keys().iter().all(|k| !k.starts_with("outbox/")),
        "{:?}",
        d.app.kv.keys()
    );
    let quiet = d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert_eq!(quiet["notifications_sent"], 0);
    assert_eq!(receiver.accepted().len(), 1);
}

/// A Kling that times out holds back no notification: a run passes over the outbox first,
/// within a quarter of its budget, before its polls (which here take all of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kling_that_times_out_holds_back_no_notification() {
    let receiver = Receiver::start(1).await;
    let d = deploy_notifying_with(
        &receiver,
        &[
            ("reconcile_budget_seconds", "1"),
            ("stale_after_seconds", "0"),
        ],
    )
    .await;
    // A callback's notification the receiver refused waits in the outbox.
    let reply = d
        .app
        .send(callback(
            "early-job",
            flat("5200", "early-job", "succeed", 9),
        ))
        .await;
    assert_eq!(reply.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox(&d.app, "task_early-job_succeed_").is_empty() {
        assert!(Instant::now() < deadline, "nothing reached the outbox");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Tasks whose queries Kling answers only after `kling_timeout_ms` (400 ms here).
    for i in 0..4 {
        d.submit_scripted(
            &format!("slow-{i}"),
            Script {
                drop: vec!["submitted", "processing", "succeed", "failed"],
                query_delay: Some(Duration::from_secs(2)),
                ..Script::default()
            },
        )
        .await;
    }
    let run = d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert_eq!(run["budget_exhausted"], true, "{run}");
    assert_eq!(
        (&run["notifications_sent"], &run["notifications_pending"]),
        (&json!(1), &json!(0)),
        "{run}"
    );
    let accepted = receiver.accepted();
    assert!(
        accepted
            .iter()
            .any(|m| m.webhook_id.starts_with("task_early-job_succeed_")),
        "{accepted:?}"
    );
}

/// A read whose repair stored Kling's news but could not write its poll record still
/// announces that news (nothing else would: no reconcile runs here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn news_a_read_repair_stored_is_announced_even_when_its_poll_record_fails() {
    let receiver = Receiver::start(0).await;
    let d = deploy_notifying_with(&receiver, &[("stale_after_seconds", "0")]).await;
    let ext = "job-repaired";
    let silent = Script {
        drop: vec!["submitted", "processing", "succeed", "failed"],
        ..Script::default()
    };
    d.submit_scripted(ext, silent).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.standin.tasks_with_external_id(ext)[0].status != "succeed" {
        assert!(Instant::now() < deadline, "the stand-in did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.app.kv.fail_next_set_to(&format!("task:{ext}:poll"));
    let task = d
        .app
        .send(authorized("GET", &format!("/tasks/{ext}")))
        .await;
    assert_eq!(task.expect_json(200)["status"], "succeed");
    wait_for_message(&receiver, &format!("task_{ext}_succeed")).await;
}

/// A callback that cannot tell whether notifications are on (`notify_url`'s provider did
/// not answer) queues its change unsent; a run that finds them on sends it. A
/// `processing` change, queued by the callback itself before any poll could announce it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_notify_settings_cannot_be_read_waits_unsent_for_a_run() {
    waits_unsent_for_a_run(("notify_url", PROVIDER_FAILS), "job-vault-notify").await;
}

/// Notifications on (`notify_url` set) but not usable yet (`notify_secret` missing): the
/// change is queued unsent too, and sent once the secret is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_notify_secret_is_missing_waits_unsent_for_a_run() {
    waits_unsent_for_a_run(("notify_secret", ""), "job-no-secret").await;
}

/// `ext`'s `processing` change, with `setting` spoiling the notify settings, waits in
/// the outbox unsent; a run with them whole sends it.
async fn waits_unsent_for_a_run(setting: (&'static str, &str), ext: &str) {
    let receiver = Receiver::start(0).await;
    let d = deploy_notifying_with(&receiver, &[setting]).await;
    let only_processing = Script {
        drop: vec!["succeed", "failed"],
        ..Script::default()
    };
    d.submit_scripted(ext, only_processing).await;
    let queued = format!("outbox/task_{ext}_processing_");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.app.kv.keys().iter().any(|key| key.starts_with(&queued)) {
        assert!(Instant::now() < deadline, "{:?}", d.app.kv.keys());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(receiver.accepted().is_empty(), "nothing sent");

    // The provider answers again: the next run sends what waited.
    let origin = receiver.origin();
    let fixed = deploy_on(
        d.app.kv.clone(),
        Auth::KeyPair,
        None,
        &[
            ("notify_url", receiver.url()),
            ("notify_origin", origin.as_str()),
            ("notify_secret", NOTIFY_SECRET),
        ],
    )
    .await;
    fixed
        .app
        .ok_json(authorized("POST", "/tasks/reconcile"))
        .await;
    wait_for_message(&receiver, &format!("task_{ext}_processing")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_url_without_its_secret_refuses_reconcile_but_never_a_callback() {
    let d = deploy_with(
        Auth::KeyPair,
        None,
        &[
            ("notify_url", "https://next.example/hooks"),
            ("stale_after_seconds", "0"),
        ],
    )
    .await;
    // Kling sends no callbacks for it, so nothing moves while we look.
    let submitted = d
        .submit_scripted(
            "quiet-job",
            Script {
                drop: vec!["submitted", "processing", "succeed"],
                ..Script::default()
            },
        )
        .await;
    let task_id = submitted["task_id"].as_str().unwrap();
    let before = d.app.kv.snapshot();
    let queries = d.standin.received().len();
    let error = d
        .app
        .send(authorized("POST", "/tasks/reconcile"))
        .await
        .expect_error(500, "config_missing", "notify_secret unset");
    assert!(error["message"].as_str().unwrap().contains("notify_secret"));
    assert_eq!(d.app.kv.snapshot(), before, "the run changed nothing");
    assert_eq!(
        d.standin.received().len(),
        queries,
        "nor asked Kling anything"
    );

    // Kling's callbacks are still acknowledged and stored; only the announcement is off.
    let reply = d
        .app
        .send(callback(
            "quiet-job",
            flat(task_id, "quiet-job", "succeed", 9),
        ))
        .await;
    assert_eq!(
        reply.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    d.wait_for("quiet-job", "succeed").await;
}

/// Waits until the receiver has accepted at least `count` messages.
async fn wait_for_count(receiver: &Receiver, count: usize) -> Vec<Message> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let accepted = receiver.accepted();
        if accepted.len() >= count {
            return accepted;
        }
        assert!(Instant::now() < deadline, "only {accepted:?} arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_processing_delivery_never_announces_itself_after_its_succeed() {
    let receiver = Receiver::start(0).await;
    let d = deploy_notifying(&receiver).await;
    // `processing` is judged news, but its slot write lands late, once `succeed` has
    // overtaken it and been answered.
    let late = d.app.kv.hold_next_write_to("task:overlap:processing");
    let start = d.app.kv.log_len();
    let app = d.app.clone();
    let processing = tokio::spawn(async move {
        app.send(callback(
            "overlap",
            flat("5200", "overlap", "processing", 20),
        ))
        .await
        .status
    });
    // `succeed` goes once `processing` has read the task (and so judged itself news).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d
        .app
        .kv
        .ops_since(start)
        .iter()
        .any(|(_, key)| key == "task:overlap")
    {
        assert!(Instant::now() < deadline, "processing never read the task");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reply = d
        .app
        .send(callback("overlap", flat("5200", "overlap", "succeed", 30)))
        .await;
    assert_eq!(reply.status, 200);
    late.notify_one();
    assert_eq!(processing.await.unwrap(), 200);

    // Each delivery announced something; the late one carried the highest state.
    let accepted = wait_for_count(&receiver, 2).await;
    let stored = d.wait_for("overlap", "succeed").await;
    let statuses: Vec<&str> = accepted
        .iter()
        .map(|m| m.body["data"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["succeed", "succeed"],
        "never processing after succeed"
    );
    for message in &accepted {
        assert_eq!(message.body["data"]["sequence"], stored["sequence"]);
        assert_eq!(
            message.webhook_id, accepted[0].webhook_id,
            "one content, one id"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_notification_its_sender_never_queued_is_sent_by_the_reconciler() {
    let receiver = Receiver::start(0).await;
    let d = deploy_notifying_with(&receiver, &[("stale_after_seconds", "0")]).await;
    let submitted = d
        .submit_scripted(
            "orphan",
            Script {
                drop: vec!["submitted", "processing", "succeed"],
                ..Script::default()
            },
        )
        .await;
    let task_id = submitted["task_id"].as_str().unwrap();
    final_never_queued(&d, "orphan", task_id).await;
    assert!(receiver.accepted().is_empty(), "{:?}", receiver.accepted());

    let run = d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert_eq!(run["pending"], 0, "{run}");
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert!(accepted[0].webhook_id.starts_with("task_orphan_succeed_"));
    let quiet = d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert_eq!(quiet["notifications_sent"], 0);
    assert_eq!(receiver.accepted().len(), 1, "sent once");
}

/// The same, when the final callback lands while the reconciler's poll of the task waits
/// on Kling: the poll finds the task final (no news of its own) and still makes sure the
/// notification goes out before it lets the task go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_never_queued_while_a_poll_waited_on_kling_is_still_sent() {
    let receiver = Receiver::start(0).await;
    let d = deploy_notifying_with(
        &receiver,
        &[("stale_after_seconds", "0"), ("kling_timeout_ms", "10000")],
    )
    .await;
    let (record, gate) = d.submit_held_at_kling("orphan-held").await;
    let task_id = record["task_id"].as_str().unwrap().to_string();
    let run = {
        let app = d.app.clone();
        tokio::spawn(async move { app.ok_json(authorized("POST", "/tasks/reconcile")).await })
    };
    d.until_queried(&task_id, 0).await;
    // The final lands while Kling is asked, and its notification is never queued.
    final_never_queued(&d, "orphan-held", &task_id).await;
    assert!(receiver.accepted().is_empty(), "{:?}", receiver.accepted());
    gate.notify_one();

    let run = run.await.unwrap();
    assert_eq!(
        (run["pending"].as_u64(), run["updated"].as_u64()),
        (Some(0), Some(0)),
        "{run}"
    );
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert!(
        accepted[0]
            .webhook_id
            .starts_with("task_orphan-held_succeed_")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_with_megabytes_is_a_failed_send_not_a_buffered_one() {
    let receiver = Receiver::start(0).await;
    receiver.flood_next(1);
    let d = deploy_notifying(&receiver).await;
    let reply = d
        .app
        .send(callback("flood", flat("5300", "flood", "succeed", 9)))
        .await;
    assert_eq!(reply.status, 200);
    // The answer was cut at 4 MiB: the send counts as failed and waits in the outbox.
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed_once = || {
        outbox(&d.app, "task_flood_succeed_")
            .iter()
            .any(|pending| pending["attempts"] == 1)
    };
    while !failed_once() {
        assert!(
            Instant::now() < deadline,
            "the flooded send was taken as sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert_eq!(run["notifications_sent"], 1, "{run}");
    assert_eq!(receiver.accepted().len(), 1);
}

/// A receiver that answers a byte at a time passes every per-phase timeout of `wasi:http`;
/// the deadline on the whole body still ends the send, which then waits in the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_a_byte_at_a_time_is_a_failed_send_not_a_hung_one() {
    let receiver = Dripping::start().await;
    let origin = receiver.origin();
    let vars = [
        ("notify_url", receiver.url()),
        ("notify_origin", origin.as_str()),
        ("notify_secret", NOTIFY_SECRET),
        ("notify_retry_seconds", "0"),
    ];
    let d = deploy_with(Auth::KeyPair, None, &vars).await;
    // The request's follow-up sends the notification (headers within 10 s, then 5 s for
    // the body); the drip would go on for ten minutes, and the request with it.
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        d.app
            .send(callback("drip", flat("5400", "drip", "succeed", 9))),
    )
    .await
    .expect("the request hung on the dripping receiver");
    assert_eq!(reply.status, 200);
    let failed_once = outbox(&d.app, "task_drip_succeed_")
        .iter()
        .any(|pending| pending["attempts"] == 1);
    assert!(failed_once, "a failed send, waiting in the outbox");
    assert_eq!(receiver.requests(), 1);
}

/// The wasmtime host allows outbound HTTP exactly where the shipped `spin.toml` does.
#[test]
fn the_host_allows_the_hosts_spin_toml_allows() {
    let manifest =
        std::fs::read_to_string(crate::support::real_spin::workspace().join("spin.toml")).unwrap();
    let templates: Vec<String> = ALLOWED_OUTBOUND_HOSTS
        .iter()
        .map(|(name, _)| format!("\"{{{{ {name} }}}}\""))
        .collect();
    assert!(
        manifest.contains(&format!(
            "\nallowed_outbound_hosts = [{}]\n",
            templates.join(", ")
        )),
        "spin.toml's allowed_outbound_hosts is {templates:?}"
    );
    for (name, default) in ALLOWED_OUTBOUND_HOSTS {
        assert!(
            manifest.contains(&format!("\n{name} = {{ default = \"{default}\" }}")),
            "{name} defaults to {default}"
        );
    }
}

/// A `notify_url` outside `notify_origin` is refused the way Spin refuses it (the host
/// enforces the manifest's allowed hosts); the notifications wait in the outbox, and a
/// deployment with the origin set sends them: nothing is lost to the mistake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_url_outside_notify_origin_is_refused_and_nothing_is_lost() {
    let receiver = Receiver::start(0).await;
    let misconfigured = deploy_with(
        Auth::KeyPair,
        None,
        &[
            ("notify_url", receiver.url()),
            ("notify_secret", NOTIFY_SECRET),
            ("notify_retry_seconds", "0"),
            ("stale_after_seconds", "0"),
        ],
    )
    .await;
    let done = misconfigured
        .submit_scripted("job-origin", kling_standin::Script::default())
        .await;
    assert_eq!(done["external_task_id"], "job-origin");
    misconfigured.wait_for("job-origin", "succeed").await;
    let run = misconfigured
        .app
        .ok_json(authorized("POST", "/tasks/reconcile"))
        .await;
    assert_eq!(run["notifications_sent"], 0, "{run}");
    assert!(
        receiver.accepted().is_empty(),
        "Spin's rules let nothing out"
    );
    let queued = outbox(&misconfigured.app, "").len();
    assert!(queued > 0, "the notifications wait in the outbox");

    // The same store, the variables put right: the next run sends them.
    let kling_api_key = misconfigured.standin.config().api_key.clone().unwrap();
    let kling_base_url = misconfigured.standin.base_url();
    let fixed = crate::support::components::kling_app_with(
        &[
            ("kling_api_key", kling_api_key.as_str()),
            ("kling_base_url", kling_base_url.as_str()),
            ("callback_secret", crate::support::requests::CALLBACK_SECRET),
            ("api_token", API_TOKEN),
            ("notify_url", receiver.url()),
            ("notify_origin", &receiver.origin()),
            ("notify_secret", NOTIFY_SECRET),
            ("notify_retry_seconds", "0"),
        ],
        misconfigured.app.kv.clone(),
    );
    let run = fixed.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert!(run["notifications_sent"].as_u64() > Some(0), "{run}");
    wait_for_message(&receiver, "task_job-origin_succeed").await;
}
