//! `verify_callbacks`: a final callback is checked with Kling before it is trusted.

use std::time::{Duration, Instant};

use kling_standin::Script;
use serde_json::json;

use crate::support::deployment::{Auth, Deployment, deploy_with, valid_body};
use crate::support::requests::{callback, flat, get_task};
use crate::support::spin_host::PROVIDER_FAILS;

async fn deploy() -> Deployment {
    deploy_with(Auth::KeyPair, None, &[("verify_callbacks", "true")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_final_callback_with_a_valid_sig_is_rejected_and_changes_nothing() {
    let d = deploy().await;
    // Kling finishes the task but never calls back; someone who learned the URL does.
    let submitted = d
        .submit_scripted(
            "job-forged",
            Script {
                drop: vec!["submitted", "processing", "succeed"],
                ..Script::default()
            },
        )
        .await;
    let task_id = submitted["task_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.standin.tasks_with_external_id("job-forged")[0].status != "succeed" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = d.app.kv.snapshot();

    // Kling's record shows a success: a `failed` contradicts it (twice: both counted).
    let forged = json!({"task_id": task_id, "task_status": "failed", "task_status_msg": "forged"});
    for _ in 0..2 {
        let reply = d.app.send(callback("job-forged", forged.to_string())).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["outcome"], "rejected");
    }
    let task = d.app.send(get_task("job-forged")).await.json();
    assert_eq!(
        task["status"], "submitted",
        "nothing stored from the forgeries"
    );
    let changed: Vec<_> = d
        .app
        .kv
        .snapshot()
        .into_iter()
        .filter(|(k, v)| before.get(k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        changed,
        ["task:job-forged:rejected"],
        "only the count of rejections: no head"
    );
    assert_eq!(d.app.kv.json("task:job-forged:rejected").unwrap(), 2);

    // A success Kling agrees with stores Kling's record, never the body's results: the
    // fake URL below is not stored, and neither is a genuine body's URL where Kling's
    // differs (its CDN URLs need not repeat from one answer to the next).
    let forged = json!({"task_id": task_id, "task_status": "succeed", "updated_at": 9_999_999_999_999u64,
        "task_result": {"videos": [{"id": "x", "url": "https://evil.example/fake.mp4", "duration": "5"}]}});
    let reply = d.app.send(callback("job-forged", forged.to_string())).await;
    assert_eq!(reply.json()["outcome"], "applied");
    let task = d.app.send(get_task(&task_id)).await.json();
    assert_eq!(task["status"], "succeed");
    assert_eq!(
        task["videos"][0]["url"],
        format!("https://cdn.standin.example/{task_id}.mp4"),
        "Kling's URL"
    );
    assert_eq!(
        task["final_unit_deduction"], "1",
        "Kling's record, not just the callback's"
    );
    assert_eq!(
        d.app.kv.json("task:job-forged:rejected").unwrap(),
        2,
        "not counted"
    );
}

/// A callback waits on Kling a few seconds at most, whatever a submit may wait
/// (`kling_timeout_ms`): a Kling too slow to confirm a final is a 503 that Kling retries,
/// nothing stored, and once Kling answers in time the retry is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_kling_is_too_slow_to_confirm_is_refused_for_a_retry_not_waited_on() {
    let d = deploy_with(
        Auth::KeyPair,
        None,
        &[("verify_callbacks", "true"), ("kling_timeout_ms", "60000")],
    )
    .await;
    let silent = Script {
        drop: vec!["submitted", "processing", "succeed"],
        ..Script::default()
    };
    let submitted = d.submit_scripted("job-slow-kling", silent.clone()).await;
    let task_id = submitted["task_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.standin.tasks_with_external_id("job-slow-kling")[0].status != "succeed" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.standin.script(
        "job-slow-kling",
        Script {
            query_delay: Some(Duration::from_secs(8)),
            ..silent.clone()
        },
    );
    let before = d.app.kv.snapshot();
    let final_ = json!({"task_id": task_id, "task_status": "succeed",
        "task_result": {"videos": [{"id": "v", "url": "https://cdn.example/v.mp4"}]}});
    let reply = d
        .app
        .send(callback("job-slow-kling", final_.to_string()))
        .await;
    reply.expect_error(503, "verification_unavailable", "Kling too slow to ask");
    assert_eq!(d.app.kv.snapshot(), before, "nothing stored");

    d.standin.script("job-slow-kling", silent);
    let reply = d
        .app
        .send(callback("job-slow-kling", final_.to_string()))
        .await;
    assert_eq!(reply.json()["outcome"], "applied");
}

/// A provider that cannot answer `verify_callbacks` (a Vault that timed out) is not read
/// as "off": the final is not stored unverified, and Kling's retry comes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_callback_whose_verify_setting_cannot_be_read_is_refused_for_a_retry() {
    let d = deploy_with(Auth::KeyPair, None, &[("verify_callbacks", PROVIDER_FAILS)]).await;
    let submitted = d
        .submit_scripted(
            "job-vault",
            Script {
                drop: vec!["submitted", "processing", "succeed"],
                ..Script::default()
            },
        )
        .await;
    let task_id = submitted["task_id"].as_str().unwrap().to_string();
    let before = d.app.kv.snapshot();
    let body = json!({"task_id": task_id, "task_status": "succeed",
        "task_result": {"videos": [{"id": "v", "url": "https://cdn.example/v.mp4"}]}});
    let reply = d.app.send(callback("job-vault", body.to_string())).await;
    let error = reply.expect_error(503, "config_unavailable", "a provider failure");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("verify_callbacks"),
        "{error}"
    );
    assert_eq!(d.app.kv.snapshot(), before, "nothing stored unverified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_deployments_still_complete_normally() {
    let d = deploy().await;
    let reply = d.submit("text2video", valid_body("text2video")).await;
    let ext = reply.json()["external_task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let task_id = reply.json()["task_id"].as_str().unwrap().to_string();
    d.wait_for(&ext, "succeed").await;
    // The final was stored because Kling confirmed it: asked once, by its task_id.
    assert_eq!(d.queries_about(&task_id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_callback_for_a_task_not_submitted_here_cannot_be_verified_and_is_rejected() {
    let d = deploy().await;
    let body = json!({"task_id": "555", "task_status": "succeed", "task_result": {"videos": [{"url": "https://x"}]}});
    let reply = d.app.send(callback("job-foreign", body.to_string())).await;
    assert_eq!(reply.json()["outcome"], "rejected");
    assert_eq!(d.app.send(get_task("job-foreign")).await.status, 404);
    // Nothing stored for it, not even a head to count the rejection on.
    assert_eq!(d.app.kv.get_now("task:job-foreign"), None);
}

/// What a delivery stores while another waits on Kling's verification is kept: the
/// waiting one, which Kling's record does not confirm, writes nothing at all, so a
/// repeat of the first is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_stored_while_kling_verifies_another_is_not_written_over() {
    let d = deploy_with(
        Auth::KeyPair,
        None,
        &[("verify_callbacks", "true"), ("kling_timeout_ms", "10000")],
    )
    .await;
    let ext = "job-verify-race";
    // Kling answers the verification once the test lets it.
    let (record, gate) = d.submit_held_at_kling(ext).await;
    let task_id = record["task_id"].as_str().unwrap().to_string();
    let asked = d.queries_about(&task_id);
    let forged = {
        let app = d.app.clone();
        let body = json!({"task_id": task_id, "task_status": "succeed",
            "task_result": {"videos": [{"id": "x", "url": "https://evil.example/fake.mp4"}]}});
        tokio::spawn(async move { app.send(callback(ext, body.to_string())).await })
    };
    d.until_queried(&task_id, asked).await;
    // While Kling is asked about the final, a `processing` callback is stored.
    let processing = flat(&task_id, ext, "processing", 5);
    let reply = d.app.send(callback(ext, processing.clone())).await;
    assert_eq!(reply.json()["outcome"], "applied");
    gate.notify_one();
    // Kling's record shows the task still running: not acknowledged, not counted.
    forged
        .await
        .unwrap()
        .expect_error(503, "final_unconfirmed", "Kling is behind its callback");

    let reply = d.app.send(callback(ext, processing)).await;
    assert_eq!(
        reply.json()["outcome"],
        "duplicate",
        "the head still knows it"
    );
    let head = d.app.kv.json(&format!("task:{ext}")).unwrap();
    assert_eq!(head["deliveries"], 1);
    assert_eq!(d.app.kv.get_now(&format!("task:{ext}:rejected")), None);
    assert_eq!(
        d.app.send(get_task(ext)).await.json()["status"],
        "processing"
    );
}

/// Kling calls back each status as the task has it, with the `updated_at` its queries
/// show: a final sent twice is checked with Kling once, and the copy is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_sent_twice_is_checked_with_kling_once() {
    let d = deploy().await;
    let twice = Script {
        duplicate: true,
        ..Script::default()
    };
    let submitted = d.submit_scripted("job-twice", twice).await;
    let task_id = submitted["task_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let answered = || -> Vec<Option<u16>> {
        d.standin
            .deliveries()
            .into_iter()
            .filter(|delivery| delivery.task_id == task_id)
            .map(|delivery| delivery.answered)
            .collect()
    };
    while answered().len() < 6 {
        assert!(Instant::now() < deadline, "{:?}", answered());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        answered().iter().all(|a| *a == Some(200)),
        "{:?}",
        answered()
    );
    assert_eq!(d.queries_about(&task_id), 1, "the final's check, once");
    let task = d.app.send(get_task("job-twice")).await.json();
    assert_eq!(
        (&task["status"], &task["deliveries"]),
        (&json!("succeed"), &json!(3)),
        "{task}"
    );
}
