//! The callback route through the real component: shapes, ordering, duplicates, and
//! the store traffic each delivery costs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kling_standin::Config;
use serde_json::json;

use crate::support::components::kling_app;
use crate::support::deployment::{Auth, deploy_against, submit_request, valid_body};
use crate::support::kv::{KvStore, Op};
use crate::support::requests::{authorized, callback, flat, get_task};
use crate::support::spin_host::SpinApp;

async fn status_of(app: &SpinApp, id: &str) -> String {
    let reply = app.send(get_task(id)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.json()["status"].as_str().unwrap().to_string()
}

fn rank(status: &str) -> u8 {
    match status {
        "submitted" => 1,
        "processing" => 2,
        "succeed" | "failed" => 3,
        other => panic!("unexpected status {other}"),
    }
}

#[tokio::test]
async fn the_documented_flat_callback_is_stored_and_served_by_either_id() {
    let app = kling_app();
    // `../shared/kling-api.md`'s example, with a real external id.
    let body = r#"{"task_id":"867283741759111202","task_status":"succeed","task_status_msg":"",
 "created_at":1722769557708,"updated_at":1722769600123,"final_unit_deduction":"1",
 "task_info":{"parent_video":{"id":"p","url":"https://p","duration":"5"},"external_task_id":"job-doc"},
 "task_result":{"images":[{"index":0,"url":"https://i/0.png"}],
                "videos":[{"id":"867283741759111300","url":"https://v/1.mp4","duration":"5.1"}]}}"#;
    let reply = app.send(callback("job-doc", body)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({"received": true, "outcome": "applied"})
    );

    for id in ["job-doc", "867283741759111202"] {
        let task = app.send(get_task(id)).await.json();
        assert_eq!(task["task_id"], "867283741759111202");
        assert_eq!(task["external_task_id"], "job-doc");
        assert_eq!(task["status"], "succeed");
        assert_eq!(task["status_msg"], "");
        assert_eq!(task["created_at"], 1722769557708u64);
        assert_eq!(task["updated_at"], 1722769600123u64);
        assert_eq!(task["final_unit_deduction"], "1");
        assert_eq!(
            task["videos"],
            json!([{"id": "867283741759111300", "url": "https://v/1.mp4", "duration": "5.1"}])
        );
        assert_eq!(
            task["images"],
            json!([{"index": 0, "url": "https://i/0.png"}])
        );
        assert_eq!(
            task["parent_video"],
            json!({"id": "p", "url": "https://p", "duration": "5"})
        );
        assert_eq!(task["deliveries"], 1);
        assert!(task["last_delivery_at"].as_u64().unwrap() > 1_700_000_000_000);
    }
}

#[tokio::test]
async fn the_wrapped_and_the_new_standard_shapes_are_stored() {
    let app = kling_app();
    let wrapped = format!(
        r#"{{"code":0,"message":"SUCCEED","data":{}}}"#,
        flat("1001", "job-wrapped", "failed", 9)
    );
    assert_eq!(app.send(callback("job-wrapped", wrapped)).await.status, 200);
    assert_eq!(status_of(&app, "job-wrapped").await, "failed");

    let new_standard = r#"{"id":"1002","status":"succeeded","message":"","create_time":1781080778802,"update_time":1781080794151,
        "external_id":"job-new","outputs":[{"type":"video","id":"v9","url":"https://v/9.mp4","watermark_url":"https://w/9.mp4","duration":"10"}],
        "billing":[{"units":1}]}"#;
    assert_eq!(
        app.send(callback("job-new", new_standard)).await.status,
        200
    );
    let task = app.send(get_task("1002")).await.json();
    assert_eq!(task["status"], "succeed");
    assert_eq!(task["external_task_id"], "job-new");
    assert_eq!(task["videos"][0]["watermark_url"], "https://w/9.mp4");
    assert_eq!(task["updated_at"], 1781080794151u64);
}

/// What the issue found on a real Spin: audio and series-image callbacks, an API 2.0
/// audio, and an `element_id` beyond 2^53 were stored without their outputs. Now every
/// output is stored, typed, with Kling's own JSON beside it.
#[tokio::test]
async fn every_output_kling_sends_is_stored() {
    let app = kling_app();
    let task_result = r#"{"audios":[{"id":"a1","url_mp3":"https://a/1.mp3","url_wav":"https://a/1.wav","duration_mp3":"3.2","duration_wav":"3.2"}],"series_images":[{"index":0,"url":"https://s/0.png"}],"elements":[{"element_id":829836802793406551,"element_name":"hero"}]}"#;
    let legacy = format!(
        r#"{{"task_id":"2001","task_status":"succeed","updated_at":5,"task_info":{{"external_task_id":"job-audio"}},"task_result":{task_result}}}"#
    );
    let reply = app
        .send(callback("job-audio", legacy))
        .await
        .expect_json(200);
    assert_eq!(reply["outcome"], "applied");
    let task = app.send(get_task("job-audio")).await.expect_json(200);
    assert_eq!(task["audios"][0]["url_mp3"], "https://a/1.mp3");
    assert_eq!(task["audios"][0]["url_wav"], "https://a/1.wav");
    assert_eq!(task["series_images"][0]["url"], "https://s/0.png");
    assert_eq!(task["elements"][0]["element_id"], "829836802793406551");
    let served = String::from_utf8_lossy(&app.send(get_task("job-audio")).await.body).to_string();
    assert!(
        served.contains(task_result),
        "Kling's JSON, byte for byte: {served}"
    );

    let api_2 = r#"{"id":"2002","status":"succeeded","external_id":"job-audio-2","outputs":[{"type":"audio","id":"a","mp3_url":"https://a/2.mp3","wav_url":"https://a/2.wav","mp3_duration":4.5}],"billing":[{"units":1}]}"#;
    app.send(callback("job-audio-2", api_2))
        .await
        .expect_json(200);
    let task = app.send(get_task("2002")).await.expect_json(200);
    assert_eq!(task["videos"], json!([]), "an audio is not a video");
    assert_eq!(task["audios"][0]["url_mp3"], "https://a/2.mp3");
    assert_eq!(task["audios"][0]["duration_mp3"], "4.5");
    assert_eq!(task["billing"], json!([{"units": 1}]));
}

#[tokio::test]
async fn minimal_and_older_deliveries_are_accepted() {
    let app = kling_app();
    // Older deliveries: no task_info, no final_unit_deduction; empty objects; unknown fields.
    let bodies = [
        r#"{"task_id":"2001","task_status":"submitted"}"#,
        r#"{"task_id":"2001","task_status":"processing","task_info":{},"task_result":{},"updated_at":5}"#,
        r#"{"task_id":"2001","task_status":"succeed","updated_at":6,"final_balance_deduction":{"quota":"1","list_price":"2"},"something_new":[1]}"#,
    ];
    for body in bodies {
        let reply = app.send(callback("job-min", body)).await;
        assert_eq!(reply.status, 200, "{body}: {:?}", reply.body);
    }
    let task = app.send(get_task("job-min")).await.json();
    assert_eq!(
        (task["status"].as_str(), task["deliveries"].as_u64()),
        (Some("succeed"), Some(3))
    );
}

#[tokio::test]
async fn every_order_of_a_lifecycle_ends_final_and_never_goes_back() {
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for final_status in ["succeed", "failed"] {
        for order in orders {
            let app = kling_app();
            let lifecycle = [
                flat("3001", "job-order", "submitted", 10),
                flat("3001", "job-order", "processing", 20),
                flat("3001", "job-order", final_status, 30),
            ];
            let mut highest = 0;
            for i in order {
                assert_eq!(
                    app.send(callback("job-order", lifecycle[i].clone()))
                        .await
                        .status,
                    200
                );
                let status = status_of(&app, "job-order").await;
                assert!(rank(&status) >= highest, "{order:?}: went back to {status}");
                highest = rank(&status);
            }
            assert_eq!(status_of(&app, "3001").await, final_status, "{order:?}");
        }
    }
}

#[tokio::test]
async fn a_second_final_status_does_not_replace_the_first() {
    let app = kling_app();
    app.send(callback("job-ff", flat("4001", "job-ff", "succeed", 30)))
        .await;
    let reply = app
        .send(callback("job-ff", flat("4001", "job-ff", "failed", 40)))
        .await;
    assert_eq!(
        (reply.status, reply.json()["outcome"].as_str()),
        (200, Some("stale"))
    );
    let task = app.send(get_task("job-ff")).await.json();
    assert_eq!(task["status"], "succeed");
    assert_eq!(
        task["deliveries"], 1,
        "only deliveries that changed the task count"
    );
}

#[tokio::test]
async fn a_newer_update_of_the_same_status_refreshes_and_an_older_one_does_not() {
    let app = kling_app();
    let with_msg = |msg: &str, updated_at: u64| {
        format!(
            r#"{{"task_id":"5001","task_status":"processing","task_status_msg":"{msg}","updated_at":{updated_at}}}"#
        )
    };
    app.send(callback("job-refresh", with_msg("queued", 10)))
        .await;
    let newer = app
        .send(callback("job-refresh", with_msg("rendering", 20)))
        .await;
    assert_eq!(newer.json()["outcome"], "applied");
    let older = app
        .send(callback("job-refresh", with_msg("stale", 15)))
        .await;
    assert_eq!(older.json()["outcome"], "duplicate");
    assert_eq!(
        app.send(get_task("job-refresh")).await.json()["status_msg"],
        "rendering"
    );
}

#[tokio::test]
async fn a_duplicate_changes_nothing_and_costs_one_read() {
    let app = kling_app();
    let body = flat("6001", "job-dup", "processing", 20);
    app.send(callback("job-dup", body.clone())).await;
    let slot_before = app.kv.get_now("task:job-dup:processing");
    let head_before = app.kv.json("task:job-dup").unwrap();

    let start = app.kv.log_len();
    let reply = app.send(callback("job-dup", body)).await;
    assert_eq!(
        reply.json(),
        json!({"received": true, "outcome": "duplicate"})
    );
    // One read decides, and nothing is written, not even after the answer.
    assert_eq!(
        app.kv.ops_since(start),
        [(Op::Get, "task:job-dup".to_string())]
    );
    assert_eq!(app.kv.get_now("task:job-dup:processing"), slot_before);
    assert_eq!(app.kv.json("task:job-dup").unwrap(), head_before);
}

#[tokio::test]
async fn store_traffic_per_delivery_is_as_documented() {
    let app = kling_app();
    let cases = [
        // First delivery: read the head, and whose task Kling's id is; then one batch:
        // slot, binding (index), the listing entry (named by Kling's created_at), head.
        // Nothing after the answer.
        (
            flat("7001", "job-ops", "submitted", 1),
            vec![
                (Op::Get, "task:job-ops"),
                (Op::Get, "taskid:7001"),
                (Op::SetMany, "task:job-ops:submitted"),
                (Op::SetMany, "taskid:7001"),
                (Op::SetMany, "listed/1722769557708/job-ops"),
                (Op::SetMany, "task:job-ops"),
            ],
        ),
        // Final news: read the head, one batch of slot, the same listing entry again
        // (so an entry that went missing comes back) and head.
        (
            flat("7001", "job-ops", "succeed", 3),
            vec![
                (Op::Get, "task:job-ops"),
                (Op::SetMany, "task:job-ops:final"),
                (Op::SetMany, "listed/1722769557708/job-ops"),
                (Op::SetMany, "task:job-ops"),
            ],
        ),
        // Late news, and the final again: the one read, nothing written.
        (
            flat("7001", "job-ops", "processing", 2),
            vec![(Op::Get, "task:job-ops")],
        ),
        (
            flat("7001", "job-ops", "succeed", 3),
            vec![(Op::Get, "task:job-ops")],
        ),
    ];
    for (body, expected) in cases {
        let start = app.kv.log_len();
        assert_eq!(app.send(callback("job-ops", body)).await.status, 200);
        let expected: Vec<(Op, String)> = expected
            .into_iter()
            .map(|(op, k)| (op, k.to_string()))
            .collect();
        assert_eq!(app.kv.ops_since(start), expected);
    }
}

#[tokio::test]
async fn the_task_id_index_binds_once_and_another_kling_task_is_refused() {
    let app = kling_app();
    app.send(callback(
        "job-bind",
        flat("8001", "job-bind", "submitted", 1),
    ))
    .await;
    let before = app.kv.snapshot();
    for other in [
        flat("8002", "job-bind", "processing", 2),
        r#"{"task_id":"8002","task_status":"succeed"}"#.to_string(),
    ] {
        let reply = app.send(callback("job-bind", other)).await;
        reply.expect_error(409, "task_id_mismatch", "");
    }
    assert_eq!(app.kv.snapshot(), before);
    assert_eq!(app.send(get_task("8002")).await.status, 404);
}

#[tokio::test]
async fn a_body_naming_another_external_id_is_refused_and_stores_nothing() {
    let app = kling_app();
    let reply = app
        .send(callback("job-a", flat("9001", "job-b", "succeed", 1)))
        .await;
    reply.expect_error(409, "external_task_id_mismatch", "");
    assert!(app.kv.keys().is_empty());
    assert_eq!(app.kv.log_len(), 0, "rejected before any store access");
}

#[tokio::test]
async fn a_failing_store_answers_503_and_the_retried_delivery_lands() {
    let body = flat("9101", "job-retry", "succeed", 5);
    // The head read fails, then the batch (slot, binding, head) fails: each time
    // nothing is acknowledged.
    for fail in [KvStore::fail_next_gets, KvStore::fail_next_sets] {
        let app = kling_app();
        fail(&app.kv, 1);
        let reply = app.send(callback("job-retry", body.clone())).await;
        reply.expect_error(503, "store_unavailable", "");
        assert!(app.kv.keys().is_empty(), "{:?}", app.kv.keys());

        let retried = app.send(callback("job-retry", body.clone())).await;
        assert_eq!(retried.status, 200);
        let task = app.send(get_task("9101")).await.json();
        assert_eq!(
            (task["status"].as_str(), task["deliveries"].as_u64()),
            (Some("succeed"), Some(1))
        );
    }
}

#[tokio::test]
async fn a_task_first_seen_is_listed_with_its_state_or_not_stored_at_all() {
    let app = kling_app();
    // The listing entry fails, so the whole batch does: no state without its listing.
    app.kv.fail_next_set_starting("listed/");
    let body = flat("9201", "job-late", "processing", 5);
    let reply = app.send(callback("job-late", body.clone())).await;
    reply.expect_error(503, "store_unavailable", "");
    for key in ["task:job-late", "task:job-late:processing", "taskid:9201"] {
        assert!(app.kv.get_now(key).is_none(), "{key}");
    }
    let listed = app.send(authorized("GET", "/tasks")).await.expect_json(200);
    assert_eq!(listed["tasks"], json!([]));

    // Kling's retry lands, listed in the same batch.
    assert_eq!(app.send(callback("job-late", body)).await.status, 200);
    let listed = app.send(authorized("GET", "/tasks")).await.expect_json(200);
    assert_eq!(listed["tasks"][0]["external_task_id"], "job-late");
    assert_eq!(listed["tasks"][0]["status"], "processing");
    assert_eq!(status_of(&app, "9201").await, "processing");
}

#[tokio::test]
async fn a_batch_that_fails_stores_no_head_and_the_retry_lands() {
    let app = kling_app();
    // The batch's binding entry fails, so the whole batch does (as on Spin's stores).
    app.kv.fail_next_set_to("taskid:9301");
    let body = flat("9301", "job-batch", "succeed", 5);
    let reply = app.send(callback("job-batch", body.clone())).await;
    reply.expect_error(503, "store_unavailable", "");
    for key in ["task:job-batch", "task:job-batch:final", "taskid:9301"] {
        assert!(app.kv.get_now(key).is_none(), "{key}");
    }
    assert_eq!(app.send(callback("job-batch", body)).await.status, 200);
    assert_eq!(status_of(&app, "9301").await, "succeed");
    assert_eq!(status_of(&app, "job-batch").await, "succeed");
}

#[tokio::test]
async fn the_unnamed_route_without_a_webhook_secret_refuses_everything() {
    let app = kling_app();
    let reply = app
        .send(
            crate::support::requests::request("POST", "/callbacks/kling")
                .header("content-type", "application/json")
                .body(Bytes::from(flat("1", "job-x", "succeed", 1)))
                .unwrap(),
        )
        .await;
    reply.expect_error(401, "webhook_signing_not_configured", "");
    assert_eq!(app.kv.log_len(), 0);
}

/// A valid URL whose task has no record (not used yet, or deleted by retention) cannot
/// take another task's Kling `task_id`: it would answer that task's reads and name its
/// notifications.
#[tokio::test]
async fn a_url_without_a_record_cannot_take_another_task_s_kling_id() {
    let app = kling_app();
    let own = app
        .send(callback(
            "job-owner",
            flat("7100", "job-owner", "processing", 2),
        ))
        .await;
    assert_eq!(own.status, 200);
    let before = app.kv.snapshot();
    let forged = app
        .send(callback(
            "job-other",
            flat("7100", "job-other", "succeed", 9),
        ))
        .await;
    forged.expect_error(409, "task_id_mismatch", "another task");
    assert_eq!(app.kv.snapshot(), before, "nothing stored");
    let shown = app.send(get_task("7100")).await.expect_json(200);
    assert_eq!(shown["external_task_id"], "job-owner");
    assert_eq!(shown["status"], "processing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_callback_cannot_bind_a_task_whose_create_answer_is_on_its_way() {
    use crate::support::deployment::{Auth, deploy_with, text2video_as};
    use kling_standin::{CreateBehaviour, Script};
    use std::time::{Duration, Instant};

    let d = deploy_with(Auth::KeyPair, None, &[("kling_timeout_ms", "5000")]).await;
    d.standin.script(
        "forge-1",
        Script {
            create: CreateBehaviour::CreateThenSlow(Duration::from_secs(2)),
            delay: Duration::from_millis(300),
            ..Script::default()
        },
    );
    let app = d.app.clone();
    let submit = tokio::spawn(async move { app.send(text2video_as("forge-1")).await });
    // The task is recorded and Kling has it, its create answer not in yet: a leaked
    // callback URL names another task. (Waiting for Kling too: before Kling has the task,
    // the answer is 503 `binding_unconfirmed`, another test's case.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.app.kv.get_now("task:forge-1").is_none()
        || d.standin.tasks_with_external_id("forge-1").is_empty()
    {
        assert!(Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = d.app.kv.snapshot();
    let forged = d
        .app
        .send(callback("forge-1", flat("999", "forge-1", "processing", 1)))
        .await;
    forged.expect_error(409, "task_id_mismatch", "a forged binding");
    assert_eq!(
        d.app.kv.get_now("task:forge-1:processing"),
        before.get("task:forge-1:processing").cloned(),
        "the forged state is not stored"
    );

    submit.await.unwrap().expect_json(202);
    let done = d.wait_for("forge-1", "succeed").await;
    let at_kling = d.standin.tasks_with_external_id("forge-1");
    assert_eq!(
        done["task_id"],
        at_kling[0].task_id.as_str(),
        "bound to Kling's task"
    );
    assert_eq!(d.app.send(get_task("999")).await.status, 404);
}

#[tokio::test]
async fn a_repeat_on_a_url_the_task_knows_is_answered_while_the_secret_cannot_be_read() {
    use crate::support::components::kling_app_with;
    use crate::support::requests::{API_TOKEN, STANDARD_VARIABLES};
    use crate::support::spin_host::PROVIDER_FAILS;
    let app = kling_app();
    let news = flat("9801", "job-known", "processing", 5);
    assert_eq!(
        app.send(callback("job-known", news.clone())).await.status,
        200
    );
    // The same store, with the secret's provider down: only what needs no secret works.
    let no_secret = kling_app_with(
        &[
            ("callback_secret", PROVIDER_FAILS),
            ("api_token", API_TOKEN),
        ],
        app.kv.clone(),
    );
    let stored = |kv: &KvStore| -> Vec<(String, Option<Vec<u8>>)> {
        kv.keys()
            .into_iter()
            .map(|k| (k.clone(), kv.get_now(&k)))
            .collect()
    };
    let before = stored(&app.kv);
    let repeat = no_secret.send(callback("job-known", news)).await;
    assert_eq!(
        repeat.json(),
        json!({"received": true, "outcome": "duplicate"})
    );
    let stale = no_secret
        .send(callback(
            "job-known",
            flat("9801", "job-known", "submitted", 9),
        ))
        .await;
    assert_eq!(stale.json()["outcome"], "stale");
    // News needs the secret: not acknowledged, so Kling brings it again.
    let final_ = flat("9801", "job-known", "succeed", 6);
    no_secret
        .send(callback("job-known", final_.clone()))
        .await
        .expect_error(503, "config_unavailable", "");
    // So does a task whose head knows no sig yet.
    no_secret
        .send(callback(
            "job-other",
            flat("9802", "job-other", "processing", 5),
        ))
        .await
        .expect_error(503, "config_unavailable", "");
    assert_eq!(stored(&app.kv), before, "nothing written");
    let again = kling_app_with(&STANDARD_VARIABLES, app.kv.clone());
    assert_eq!(again.send(callback("job-known", final_)).await.status, 200);
    assert_eq!(status_of(&again, "9801").await, "succeed");
}

/// Kling's opt-in Standard Webhooks signatures, end to end: the stand-in signs every
/// callback of both families with the reference library, with two keys as during a
/// rotation. A component holding either key stores what Kling sends; one holding neither
/// refuses every delivery (401), so the task learns nothing from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_kling_signs_are_verified_end_to_end() {
    const BEFORE_ROTATION: &str = "whsec_dGhlLWNvbnNvbGUta2V5LWJlZm9yZS1yb3RhdGlvbg==";
    const AFTER_ROTATION: &str = "whsec_dGhlLWNvbnNvbGUta2V5LWFmdGVyLXJvdGF0aW9uIQ==";
    const NOT_KLING_S: &str = "whsec_YS1rZXkta2xpbmctbmV2ZXItc2lnbnMtd2l0aC1vaw==";
    for (configured, verifies) in [
        (AFTER_ROTATION, true),
        (BEFORE_ROTATION, true),
        (NOT_KLING_S, false),
    ] {
        let kling = Config {
            webhook_secrets: vec![AFTER_ROTATION.into(), BEFORE_ROTATION.into()],
            ..Config::default()
        };
        let d = deploy_against(
            kling,
            KvStore::default(),
            Auth::ApiKey,
            None,
            &[("webhook_signing_secret", configured)],
        )
        .await;
        for (kind, ext) in [
            ("text2video", "signed-legacy"),
            ("text-to-video/kling-3.0-turbo", "signed-api2"),
        ] {
            let body = valid_body(kind);
            d.app
                .send(submit_request(kind, body, Some(ext)))
                .await
                .expect_json(202);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.standin.callbacks_done() || d.standin.deliveries().len() < 6 {
            assert!(Instant::now() < deadline, "the stand-in did not call back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let answers: Vec<_> = d.standin.deliveries().iter().map(|d| d.answered).collect();
        let expected = if verifies { Some(200) } else { Some(401) };
        assert!(
            answers.iter().all(|a| *a == expected),
            "{configured}: {answers:?}"
        );
        for ext in ["signed-legacy", "signed-api2"] {
            let task = d.app.send(get_task(ext)).await.expect_json(200);
            if verifies {
                assert_eq!(
                    (task["status"].as_str(), task["source"].as_str()),
                    (Some("succeed"), Some("callback")),
                    "{configured}: {task}"
                );
            } else {
                assert_eq!(
                    (task["status"].as_str(), task["deliveries"].as_u64()),
                    (Some("submitted"), Some(0)),
                    "as the create answer left it: {task}"
                );
            }
        }
    }
}
