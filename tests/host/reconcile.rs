//! Nothing lost: `POST /tasks/reconcile` brings tasks whose callbacks never came to their
//! true final state, against the stand-in, through faults.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kling_standin::Script;
use serde_json::{Value, json};

use crate::support::components::kling_app_with;
use crate::support::deployment::{Auth, Deployment, deploy_with, text2video_as};
use crate::support::requests::{
    API_TOKEN, CALLBACK_SECRET, authorized, callback, flat, get_task, request,
};
use crate::support::spin_host::{Reply, SpinApp};

async fn reconcile(app: &SpinApp) -> Reply {
    app.send(authorized("POST", "/tasks/reconcile")).await
}

async fn report(app: &SpinApp) -> Value {
    app.ok_json(authorized("POST", "/tasks/reconcile")).await
}

/// Every task stale at once, so a run considers all of them.
async fn deploy() -> Deployment {
    deploy_with(Auth::KeyPair, None, &[("stale_after_seconds", "0")]).await
}

/// Waits until the stand-in itself holds the task as final (its callbacks may be dropped).
async fn until_final_at_kling(d: &Deployment, ext: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d
        .standin
        .tasks_with_external_id(ext)
        .iter()
        .any(|t| matches!(t.status, "succeed" | "failed"))
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn submit_silent(d: &Deployment, ext: &str, fails: bool) {
    // Kling never calls back.
    d.submit_scripted(
        ext,
        Script {
            fails,
            drop: vec!["submitted", "processing", "succeed", "failed"],
            ..Script::default()
        },
    )
    .await;
    until_final_at_kling(d, ext).await;
}

async fn status(app: &SpinApp, id: &str) -> Value {
    app.send(get_task(id)).await.json()
}

/// A task as stored, read through the listing (which, unlike `GET /tasks/{id}`, never
/// asks Kling: read repair would finish a stale task before the run under test).
async fn stored(app: &SpinApp, ext: &str) -> Value {
    let page = app.ok_json(authorized("GET", "/tasks?limit=100")).await;
    page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["external_task_id"] == ext)
        .cloned()
        .unwrap_or_else(|| panic!("{ext} is not listed: {page}"))
}

/// The store without what a poll records whatever its outcome (the task's poll record
/// and its pending entry's due time): what a failed run must leave unchanged.
fn task_state(kv: &crate::support::kv::KvStore) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut state = kv.snapshot();
    state.retain(|key, _| !key.ends_with(":poll") && !key.starts_with("pending/"));
    state
}

/// The same deployment (same store) with other variables; `clock` stops its wall clock.
/// `kling_timeout_ms` short where Kling is meant to time out, long where it is meant to
/// answer (a loaded machine must not turn an answer into a timeout).
fn same_store(
    d: &Deployment,
    kling_base_url: &str,
    kling_timeout_ms: &str,
    clock: Option<u64>,
) -> SpinApp {
    let variables = [
        ("callback_secret", CALLBACK_SECRET),
        ("api_token", API_TOKEN),
        ("kling_api_key", "standin-api-key"),
        ("kling_base_url", kling_base_url),
        ("public_base_url", "http://127.0.0.1:9"),
        ("kling_timeout_ms", kling_timeout_ms),
        ("stale_after_seconds", "0"),
    ];
    let app = kling_app_with(&variables, d.app.kv.clone());
    match clock {
        Some(secs) => app.at_time(secs),
        None => app,
    }
}

/// The same deployment (same store) with Kling unreachable.
fn kling_down(d: &Deployment) -> SpinApp {
    same_store(d, "http://127.0.0.1:9", "300", None)
}

/// The same deployment (same store) with a Kling that takes connections and never
/// answers: for all the component knows, a create sent there may have been made. The
/// connections are held until the handle is dropped.
async fn kling_silent(d: &Deployment) -> (SpinApp, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (same_store(d, &url, "300", None), holder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_that_never_arrive_are_reconciled_to_the_true_final_state() {
    let d = deploy().await;
    submit_silent(&d, "job-lost-ok", false).await;
    submit_silent(&d, "job-lost-bad", true).await;
    assert_eq!(stored(&d.app, "job-lost-ok").await["status"], "submitted");

    let run = report(&d.app).await;
    assert_eq!(
        run,
        json!({"checked": 2, "updated": 2, "lost": 0, "pending": 0, "left_due": 0, "budget_exhausted": false, "purged": 0, "errors": [], "pipelines_advanced": 0, "pipelines_pending": 0, "notifications_sent": 0, "notifications_pending": 0})
    );
    let ok = status(&d.app, "job-lost-ok").await;
    assert_eq!(
        (ok["status"].as_str(), ok["source"].as_str()),
        (Some("succeed"), Some("poll"))
    );
    assert_eq!(
        ok["videos"][0]["url"],
        format!(
            "https://cdn.standin.example/{}.mp4",
            ok["task_id"].as_str().unwrap()
        )
    );
    assert_eq!(ok["deliveries"], 0, "polls are not callbacks");
    assert_eq!(status(&d.app, "job-lost-bad").await["status"], "failed");
    assert_eq!(d.app.kv.pending(), Vec::<String>::new());

    // Nothing pending: the next run asks Kling nothing.
    let queries_before = d.standin.received().len();
    assert_eq!(
        report(&d.app).await,
        json!({"checked": 0, "updated": 0, "lost": 0, "pending": 0, "left_due": 0, "budget_exhausted": false, "purged": 0, "errors": [], "pipelines_advanced": 0, "pipelines_pending": 0, "notifications_sent": 0, "notifications_pending": 0})
    );
    assert_eq!(d.standin.received().len(), queries_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_stale_tasks_are_asked_about() {
    let d = deploy_with(Auth::KeyPair, None, &[("stale_after_seconds", "3600")]).await;
    submit_silent(&d, "job-fresh", false).await;
    assert_eq!(
        report(&d.app).await,
        json!({"checked": 0, "updated": 0, "lost": 0, "pending": 1, "left_due": 0, "budget_exhausted": false, "purged": 0, "errors": [], "pipelines_advanced": 0, "pipelines_pending": 0, "notifications_sent": 0, "notifications_pending": 0})
    );
    assert_eq!(status(&d.app, "job-fresh").await["status"], "submitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kling_down_during_a_run_reports_errors_changes_nothing_and_the_next_run_succeeds() {
    let d = deploy().await;
    submit_silent(&d, "job-down", false).await;
    let before = task_state(&d.app.kv);
    let down = kling_down(&d);
    let run = report(&down).await;
    assert_eq!(
        (
            run["checked"].as_u64(),
            run["updated"].as_u64(),
            run["pending"].as_u64()
        ),
        (Some(1), Some(0), Some(1))
    );
    assert_eq!(run["errors"][0]["external_task_id"], "job-down");
    assert_eq!(run["errors"][0]["code"], "kling_unreachable");
    assert_eq!(
        task_state(&d.app.kv),
        before,
        "a failed run changes nothing"
    );
    // ...but the poll itself is recorded, and the task is due again.
    let poll = d.app.kv.json("task:job-down:poll").unwrap();
    assert_eq!(
        (poll["polls"].as_u64(), poll["last_outcome"].as_str()),
        (Some(1), Some("kling_unreachable"))
    );
    assert_eq!(d.app.kv.pending(), ["job-down"]);

    assert_eq!(report(&d.app).await["updated"], 1);
    assert_eq!(status(&d.app, "job-down").await["status"], "succeed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kling_too_slow_during_a_run_times_out_changes_nothing_and_the_next_run_succeeds() {
    let d = deploy_with(
        Auth::KeyPair,
        None,
        &[("stale_after_seconds", "0"), ("kling_timeout_ms", "2000")],
    )
    .await;
    submit_silent(&d, "job-slow", false).await;
    d.standin.script(
        "job-slow",
        Script {
            query_delay: Some(Duration::from_secs(30)),
            ..Script::default()
        },
    );
    let before = task_state(&d.app.kv);
    let run = report(&d.app).await;
    assert_eq!(run["errors"][0]["code"], "kling_unreachable", "{run}");
    assert!(
        run["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("in time"),
        "{run}"
    );
    assert_eq!(task_state(&d.app.kv), before);

    d.standin.script("job-slow", Script::default());
    assert_eq!(report(&d.app).await["updated"], 1);
    assert_eq!(status(&d.app, "job-slow").await["status"], "succeed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_stops_the_run_early_and_other_errors_do_not() {
    let d = deploy().await;
    submit_silent(&d, "job-a", false).await;
    submit_silent(&d, "job-b", false).await;
    submit_silent(&d, "job-c", false).await;
    // job-a (oldest) is refused with 5000: reported, the run goes on; job-b's 1303 stops it.
    d.standin.script(
        "job-a",
        Script {
            query_error: Some((500, 5000)),
            ..Script::default()
        },
    );
    d.standin.script(
        "job-b",
        Script {
            query_error: Some((429, 1303)),
            ..Script::default()
        },
    );
    let run = report(&d.app).await;
    assert_eq!(run["checked"], 2, "{run}");
    let codes: Vec<_> = run["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes, ["kling_5000", "kling_rate_limited"]);
    assert_eq!(
        stored(&d.app, "job-c").await["status"],
        "submitted",
        "not reached this run"
    );

    d.standin.script("job-a", Script::default());
    d.standin.script("job-b", Script::default());
    let run = report(&d.app).await;
    assert_eq!(
        (run["updated"].as_u64(), run["pending"].as_u64()),
        (Some(3), Some(0)),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_mid_run_is_a_503_and_the_retry_lands() {
    let d = deploy().await;
    submit_silent(&d, "job-store", false).await;
    d.app.kv.fail_next_set_to("task:job-store:final");
    let reply = reconcile(&d.app).await;
    reply.expect_error(503, "store_unavailable", "");
    assert_eq!(d.app.kv.pending(), ["job-store"], "still pending");

    assert_eq!(report(&d.app).await["updated"], 1);
    assert_eq!(status(&d.app, "job-store").await["status"], "succeed");
    assert_eq!(d.app.kv.pending(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_left_submitting_is_bound_or_forgotten_by_what_kling_says() {
    let d = deploy().await;
    // Kling silent while submitting: the task stays `submitting`, Kling never saw it.
    let (silent, holder) = kling_silent(&d).await;
    let reply = silent.send(text2video_as("job-never")).await;
    assert_eq!(
        (reply.status, reply.json()["status"].as_str()),
        (202, Some("submitting"))
    );
    holder.abort();

    // Within the grace period an in-flight submit may look like this: left alone.
    let run = report(&d.app).await;
    assert_eq!(
        (
            run["errors"].as_array().unwrap().len(),
            run["pending"].as_u64()
        ),
        (0, Some(1)),
        "{run}"
    );
    assert_eq!(
        d.app.send(get_task("job-never")).await.json()["status"],
        "submitting"
    );

    // Past it, Kling's silence means the create never went through.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 11 * 60;
    let run = report(&same_store(&d, &d.standin.base_url(), "10000", Some(later))).await;
    assert_eq!(run["errors"][0]["code"], "not_created", "{run}");
    assert_eq!(
        d.app.send(get_task("job-never")).await.status,
        404,
        "forgotten: safe to submit again"
    );
    assert!(d.standin.tasks_with_external_id("job-never").is_empty());

    // Submitted again, it is created once.
    let again = d.app.send(text2video_as("job-never")).await;
    assert_eq!(again.status, 202);
    assert_eq!(d.standin.tasks_with_external_id("job-never").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciling_needs_the_bearer_and_a_sane_limit() {
    let d = deploy().await;
    let anonymous = d
        .app
        .send(
            request("POST", "/tasks/reconcile")
                .body(Bytes::new())
                .unwrap(),
        )
        .await;
    assert_eq!(anonymous.status, 401);
    for limit in ["0", "501", "x"] {
        let reply = d
            .app
            .send(authorized(
                "POST",
                &format!("/tasks/reconcile?limit={limit}"),
            ))
            .await;
        reply.expect_error(400, "invalid_query", limit);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_tasks_past_retention_are_deleted_by_the_run_and_then_unknown() {
    let d = deploy().await;
    submit_silent(&d, "job-old", false).await;
    submit_silent(&d, "job-running", false).await;
    d.standin.script(
        "job-running",
        Script {
            query_error: Some((500, 5000)),
            ..Script::default()
        },
    );
    let run = report(&d.app).await;
    assert_eq!(
        (run["updated"].as_u64(), run["purged"].as_u64()),
        (Some(1), Some(0)),
        "{run}"
    );
    let task_id = status(&d.app, "job-old").await["task_id"]
        .as_str()
        .unwrap()
        .to_string();

    purged_31_days_later(&d, ["job-old", task_id.as_str()]).await;
    assert_eq!(
        status(&d.app, "job-running").await["status"],
        "submitted",
        "not final: kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_a_callback_finished_is_deleted_after_retention_without_a_retention_entry() {
    let d = deploy().await;
    // Not submitted here, finished by its first callback: the delivery writes no `final/`
    // entry, and retention's scan of the listing finds the task anyway.
    let body = flat("99001", "job-cb-old", "succeed", 5);
    let reply = d.app.send(callback("job-cb-old", body)).await;
    assert_eq!(reply.status, 200);
    assert!(
        d.app.kv.keys().iter().all(|k| !k.starts_with("final/")),
        "{:?}",
        d.app.kv.keys()
    );
    assert_eq!(report(&d.app).await["purged"], 0, "its last news is recent");
    purged_31_days_later(&d, ["job-cb-old", "99001"]).await;
}

/// A reconcile run 31 days later (retention_days defaults to 30) deletes one task, known
/// by both `ids`: both answer 404 and no key names either.
async fn purged_31_days_later(d: &Deployment, ids: [&str; 2]) {
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 31 * 24 * 3600;
    let future = same_store(d, &d.standin.base_url(), "10000", Some(later));
    let run = report(&future).await;
    assert_eq!(run["purged"], 1, "{run}");
    for id in ids {
        assert_eq!(d.app.send(get_task(id)).await.status, 404, "{id}");
    }
    let keys = d.app.kv.keys();
    assert!(
        keys.iter().all(|k| ids.iter().all(|id| !k.contains(id))),
        "{keys:?}"
    );
}

/// A poll judges Kling's answer against the task as it is when the answer comes, not as
/// it was when it asked: a final callback stored while Kling took its time is what the
/// reader is shown, and the head that records it is not written back over, so a later
/// different final is still stale. Both a poll that is news (Kling's `submitted`, never
/// stored) and one that is not (the same answer again) are raced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_stored_while_a_poll_waits_on_kling_is_neither_hidden_nor_undone() {
    for polled_before in [false, true] {
        // Kling answers once the test lets it: the poll must wait, not time out.
        let d = deploy_with(
            Auth::KeyPair,
            None,
            &[("stale_after_seconds", "0"), ("kling_timeout_ms", "10000")],
        )
        .await;
        let ext = format!("job-race-{polled_before}");
        let (record, gate) = d.submit_held_at_kling(&ext).await;
        let task_id = record["task_id"].as_str().unwrap().to_string();
        if polled_before {
            gate.notify_one();
            let first = status(&d.app, &ext).await;
            assert_eq!(first["status"], "submitted", "{first}");
        }
        let asked = d.queries_about(&task_id);
        let reader = {
            let app = d.app.clone();
            let ext = ext.clone();
            tokio::spawn(async move { app.send(get_task(&ext)).await })
        };
        // Once Kling has the read repair's query (and holds its answer), the final comes;
        // then Kling answers.
        d.until_queried(&task_id, asked).await;
        let succeed = flat(&task_id, &ext, "succeed", 2_000_000_000_000);
        let stored = d.app.send(callback(&ext, succeed)).await;
        assert_eq!(stored.json()["outcome"], "applied", "case {polled_before}");
        let final_slot = d.app.kv.json(&format!("task:{ext}:final")).unwrap();
        gate.notify_one();

        let shown = reader.await.unwrap().json();
        assert_eq!(
            (
                shown["status"].as_str(),
                shown["reconcile"]["last_outcome"].as_str()
            ),
            (Some("succeed"), Some("unchanged")),
            "case {polled_before}: Kling's answer came, older than the final the reader is shown: {shown}"
        );
        let failed = flat(&task_id, &ext, "failed", 2_000_000_000_001);
        let later = d.app.send(callback(&ext, failed)).await;
        assert_eq!(
            later.json()["outcome"],
            "stale",
            "case {polled_before}: the first final still wins"
        );
        assert_eq!(
            d.app.kv.json(&format!("task:{ext}:final")).unwrap(),
            final_slot
        );
        assert_eq!(status(&d.app, &ext).await["status"], "succeed");
    }
}

/// A task deleted while a poll waits on Kling (here by hand; retention and a forgotten
/// submission delete heads) is not brought back by Kling's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_deleted_while_a_poll_waits_on_kling_is_not_brought_back() {
    let d = deploy_with(
        Auth::KeyPair,
        None,
        &[("stale_after_seconds", "0"), ("kling_timeout_ms", "10000")],
    )
    .await;
    let ext = "job-gone";
    let (record, gate) = d.submit_held_at_kling(ext).await;
    let task_id = record["task_id"].as_str().unwrap();
    let reader = {
        let app = d.app.clone();
        tokio::spawn(async move { app.send(get_task(ext)).await })
    };
    d.until_queried(task_id, 0).await;
    d.app.kv.remove_now(&format!("task:{ext}"));
    gate.notify_one();
    let reply = reader.await.unwrap();
    assert_eq!(reply.status, 404, "{:?}", reply.body);
    assert_eq!(
        d.app.kv.get_now(&format!("task:{ext}")),
        None,
        "not recreated"
    );
    assert_eq!(d.app.kv.get_now(&format!("task:{ext}:submitted")), None);
}
