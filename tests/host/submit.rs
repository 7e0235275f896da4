//! Submitting end to end: the component (served over loopback HTTP) calls the Kling
//! stand-in, which calls the component back. (Each kind's own test is in `kinds.rs`.)

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kling_standin::{CreateBehaviour, Script};
use serde_json::{Value, json};

use crate::support::components::kling_app_with;
use crate::support::deployment::{
    Auth, deploy, deploy_on, deploy_with, list, submit_request, text2video_as, valid_body,
};
use crate::support::kv::KvStore;
use crate::support::requests::{API_TOKEN, CALLBACK_SECRET, authorized, get_task, request};
use crate::support::spin_host::PROVIDER_FAILS_ONCE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_the_component_sends_verifies_with_a_standard_library() {
    let d = deploy().await;
    d.submit("text2video", valid_body("text2video")).await;
    let received = d.standin.received();
    let bearer = received[0]
        .authorization
        .as_deref()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    let config = d.standin.config();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&[&config.access_key]);
    validation.validate_nbf = true;
    let token = jsonwebtoken::decode::<Value>(
        bearer,
        &jsonwebtoken::DecodingKey::from_secret(config.secret_key.as_bytes()),
        &validation,
    )
    .unwrap();
    assert_eq!(token.header.alg, jsonwebtoken::Algorithm::HS256);
    assert_eq!(token.header.typ.as_deref(), Some("JWT"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let exp = token.claims["exp"].as_i64().unwrap();
    let nbf = token.claims["nbf"].as_i64().unwrap();
    assert_eq!(token.claims["iss"], config.access_key.as_str());
    assert_eq!(exp - nbf, 1805, "exp = now + 1800, nbf = now - 5");
    assert!((exp - 1800 - now).abs() <= 5, "exp is about now + 1800");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_is_sent_as_the_bearer_when_set() {
    let d = deploy_with(Auth::ApiKey, None, &[]).await;
    assert_eq!(
        d.submit("image-generation", valid_body("image-generation"))
            .await
            .status,
        202
    );
    assert_eq!(
        d.standin.received()[0].authorization.as_deref(),
        Some("Bearer standin-api-key")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_outruns_kling_s_answer_is_stored_and_bound() {
    let d = deploy().await;
    let reply = d
        .submit_scripted(
            "job-early",
            Script {
                callbacks_before_answer: true,
                ..Script::default()
            },
        )
        .await;
    let task_id = d.standin.tasks_with_external_id("job-early")[0]
        .task_id
        .clone();
    assert_eq!(reply["task_id"], task_id.as_str());
    let done = d.wait_for(&task_id, "succeed").await;
    assert_eq!(done["external_task_id"], "job-early");
    assert_eq!(done["kind"], "text2video");
    assert_eq!(
        d.app.send(get_task("job-early")).await.json()["task_id"],
        task_id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_an_external_id_returns_the_task_and_creates_one_at_kling() {
    let d = deploy().await;
    let first = d.app.send(text2video_as("job-idem")).await;
    assert_eq!(first.status, 202);
    let mut body = valid_body("text2video");
    body["external_task_id"] = json!("job-idem");
    for again in [
        text2video_as("job-idem"),
        submit_request("text2video", body, None),
    ] {
        let reply = d.app.send(again).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["task_id"], first.json()["task_id"]);
    }
    assert_eq!(d.standin.tasks_with_external_id("job-idem").len(), 1);
    let creates = d
        .standin
        .received()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(creates, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_create_is_looked_up_and_never_repeated() {
    let d = deploy().await;
    d.standin.script(
        "job-5002",
        Script {
            create: CreateBehaviour::CreateThenTimeout,
            ..Script::default()
        },
    );
    d.standin.script(
        "job-slow",
        Script {
            create: CreateBehaviour::CreateThenSlow(Duration::from_secs(2)),
            delay: Duration::from_millis(600),
            ..Script::default()
        },
    );
    for ext in ["job-5002", "job-slow"] {
        let record = d.app.send(text2video_as(ext)).await.expect_json(202);
        let at_kling = d.standin.tasks_with_external_id(ext);
        assert_eq!(at_kling.len(), 1, "{ext}: exactly one task at Kling");
        assert_eq!(
            d.creates_of(ext),
            1,
            "{ext}: created once, never posted again"
        );
        assert_eq!(
            record["task_id"],
            at_kling[0].task_id.as_str(),
            "{ext}: bound by the lookup"
        );
        assert_eq!(record["status"], "submitted", "{ext}");
        d.wait_for(ext, "succeed").await;
    }
}

/// Kling looks advanced-lip-sync up by its own task_id only: after a create with no clear
/// answer, the task is found by our id in Kling's list, read page by page past the
/// account's newer tasks (newest first, 500 a page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_create_of_a_kind_kling_only_lists_is_found_past_the_first_page() {
    // Kling's two answers of 500 tasks must come in time on a loaded machine too.
    let d = deploy_with(Auth::KeyPair, None, &[("kling_timeout_ms", "10000")]).await;
    d.standin.script(
        "job-listed",
        Script {
            create: CreateBehaviour::CreateThenTimeout,
            created_after: 700,
            ..Script::default()
        },
    );
    let body = json!({"session_id": "s-1", "face_choose": [{"face_id": "0", "sound_file": "https://a.mp3"}]});
    let record = d
        .app
        .send(submit_request(
            "advanced-lip-sync",
            body,
            Some("job-listed"),
        ))
        .await
        .expect_json(202);
    let at_kling = d.standin.tasks_with_external_id("job-listed");
    assert_eq!(record["task_id"], at_kling[0].task_id.as_str(), "{record}");
    let pages: Vec<String> = (d.standin.received().iter())
        .filter(|r| r.method == "GET" && r.query.contains("pageNum"))
        .map(|r| r.query.clone())
        .collect();
    assert_eq!(pages, ["pageNum=1&pageSize=500", "pageNum=2&pageSize=500"]);
    assert_eq!(d.creates_of("job-listed"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_429_with_retry_after_and_leave_nothing_behind() {
    let d = deploy().await;
    d.standin.script(
        "job-busy",
        Script {
            create: CreateBehaviour::Refuse {
                http: 429,
                code: 1303,
            },
            ..Script::default()
        },
    );
    let reply = d.app.send(text2video_as("job-busy")).await;
    reply.expect_error(429, "kling_rate_limited", "");
    assert_eq!(reply.headers.get("retry-after").unwrap(), "1");
    let kling = &reply.json()["error"]["kling"];
    assert_eq!(kling["code"], 1303);
    assert!(
        kling["request_id"]
            .as_str()
            .unwrap()
            .starts_with("standin-")
    );
    assert_eq!(
        d.app.send(get_task("job-busy")).await.status,
        404,
        "nothing left looking like a live task"
    );
    assert_eq!(list(&d.app, "").await["tasks"], json!([]), "nor listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_refusals_map_to_what_the_caller_should_do() {
    let d = deploy().await;
    for (code, http, status, name) in [
        (1101, 429, 402, "kling_account"),
        (1201, 400, 400, "kling_invalid_request"),
        (1301, 400, 422, "kling_content_rejected"),
        (5000, 500, 502, "kling_unavailable"),
        (5001, 503, 503, "kling_maintenance"),
    ] {
        let ext = format!("job-{code}");
        d.standin.script(
            &ext,
            Script {
                create: CreateBehaviour::Refuse { http, code },
                ..Script::default()
            },
        );
        let reply = d.app.send(text2video_as(&ext)).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (status, name.to_string()),
            "{code}"
        );
        assert_eq!(reply.json()["error"]["kling"]["code"], code);
        assert_eq!(d.app.send(get_task(&ext)).await.status, 404);
    }
}

/// A Kling the host cannot connect to (nothing listens on its port) never got the create:
/// the caller learns it at once (502), nothing is left pending, and its retry against a
/// Kling that answers creates the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kling_that_refuses_the_connection_is_502_and_leaves_nothing_pending() {
    let d = deploy().await;
    let refused = kling_app_with(
        &[
            ("api_token", API_TOKEN),
            ("callback_secret", CALLBACK_SECRET),
            ("kling_api_key", "standin-api-key"),
            ("kling_base_url", "http://127.0.0.1:9"),
            ("public_base_url", "http://127.0.0.1:9"),
        ],
        d.app.kv.clone(),
    );
    let reply = refused.send(text2video_as("job-refused")).await;
    let error = reply.expect_error(502, "kling_unreachable", "a refused connection");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{error}"
    );
    assert_eq!(d.app.send(get_task("job-refused")).await.status, 404);
    assert!(d.app.kv.pending().is_empty(), "{:?}", d.app.kv.pending());

    let retried = d.app.send(text2video_as("job-refused")).await;
    assert_eq!(retried.status, 202);
    assert_eq!(retried.json()["status"], "submitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_or_clocks_are_kling_auth_failed_and_say_which() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (auth, clock, kling_code, hint) in [
        (Auth::WrongSecret, None, 1002, "check kling_api_key"),
        // An hour ahead: the token is not valid yet at Kling (1003); behind: expired.
        (Auth::KeyPair, Some(now + 3600), 1003, "clock is ahead"),
        (Auth::KeyPair, Some(now - 3600), 1004, "clock is behind"),
    ] {
        let d = deploy_with(auth, clock, &[]).await;
        let reply = d.submit("text2video", valid_body("text2video")).await;
        reply.expect_error(502, "kling_auth_failed", &kling_code.to_string());
        let error = &reply.json()["error"];
        assert_eq!(error["kling"]["code"], kling_code);
        assert!(error["message"].as_str().unwrap().contains(hint), "{error}");
        assert!(d.standin.tasks().is_empty());
        assert_eq!(list(&d.app, "").await["tasks"], json!([]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_400_naming_the_field_and_reach_neither_kling_nor_the_store() {
    let d = deploy().await;
    let long = "x".repeat(2501);
    let cases = [
        (
            "text2video",
            json!({"prompt": "p", "callback_url": "https://elsewhere"}),
            "callback_url",
        ),
        ("text2video", json!({"prompt": long}), "prompt"),
        (
            "text2video",
            json!({"prompt": "p", "negative_prompt": long}),
            "negative_prompt",
        ),
        (
            "text2video",
            json!({"prompt": "p", "duration": 5}),
            "duration",
        ),
        (
            "text2video",
            json!({"prompt": "p", "mode": "turbo"}),
            "mode",
        ),
        ("text2video", json!({}), "prompt"),
        (
            "image2video",
            json!({"image": "data:image/png;base64,iVBORw0KGgo="}),
            "image",
        ),
        ("video-extend", json!({"prompt": "p"}), "video_id"),
        (
            "lip-sync",
            json!({"input": {"video_id": "1"}}),
            "input.mode",
        ),
        ("text2video", json!(["not", "an", "object"]), "body"),
        // The catalog's rules for the newer kinds, and API 2.0's own fields.
        (
            "avatar",
            json!({"image": "https://f.png", "audio_id": "a", "sound_file": "https://s.mp3"}),
            "audio_id",
        ),
        (
            "text-to-audio",
            json!({"prompt": "rain", "duration": "5"}),
            "duration",
        ),
        ("text-to-audio", json!({"prompt": "rain"}), "duration"),
        (
            "omni-image",
            json!({"prompt": "p", "result_type": "grid"}),
            "result_type",
        ),
        (
            "text-to-video/kling-3.0",
            json!({"prompt": "p", "options": {"callback_url": "https://elsewhere"}}),
            "options.callback_url",
        ),
        (
            "text-to-video/kling-3.0",
            json!({"prompt": "p", "external_task_id": "job-top"}),
            "external_task_id",
        ),
        (
            "text-to-video/kling-3.0",
            json!({"prompt": "p", "settings": {"duration": 16}}),
            "settings.duration",
        ),
        // Limits kling-api.md states.
        (
            "omni-video",
            json!({"prompt": "p", "duration": "20"}),
            "duration",
        ),
        (
            "omni-video",
            json!({"prompt": "p", "voice_list": [{"voice_id": "v"}]}),
            "voice_list",
        ),
        ("omni-video", json!({"multi_shot": true}), "multi_prompt"),
        (
            "avatar",
            json!({"image": "https://a.png", "audio_id": "a", "model_name": "kling-v2-6"}),
            "model_name",
        ),
        (
            "advanced-lip-sync",
            json!({"session_id": "s", "face_choose": [{"face_id": "0"}, {"face_id": "1"}]}),
            "face_choose",
        ),
        (
            "effects",
            json!({"effect_scene": "hug", "input": {"images": ["https://a.png", "DATA:image/png;base64,x"]}}),
            "input.images[1]",
        ),
        (
            "text2video",
            json!({"prompt": "p", "cfg_scale": 1.5}),
            "cfg_scale",
        ),
        (
            "text2video",
            json!({"prompt": "p", "aspect_ratio": "4:3"}),
            "aspect_ratio",
        ),
        (
            "image2video",
            json!({"image": "https://a.png", "sound": "loud"}),
            "sound",
        ),
        (
            "effects",
            json!({"effect_scene": "hug", "input": {}}),
            "input.image",
        ),
    ];
    for (kind, body, field) in cases {
        let reply = d.submit(kind, body).await;
        reply.expect_error(400, "invalid_request", field);
        assert_eq!(reply.json()["error"]["field"], field);
    }
    let bad_key = d.app.send(text2video_as("has space")).await;
    bad_key.expect_error(400, "invalid_idempotency_key", "");
    assert!(d.standin.received().is_empty());
    assert!(d.app.kv.keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitting_needs_the_bearer_a_known_kind_and_configuration() {
    let d = deploy().await;
    let no_token = request("POST", "/tasks/text2video")
        .body(Bytes::from(valid_body("text2video").to_string()))
        .unwrap();
    assert_eq!(d.app.send(no_token).await.error_code(), "unauthorized");
    let unknown = d.submit("omni-hologram", json!({"prompt": "p"})).await;
    let error = unknown.expect_error(405, "unknown_kind", "");
    assert!(
        error["message"].as_str().unwrap().contains("GET /kinds"),
        "{error}"
    );
    assert_eq!(unknown.headers["allow"], "GET");
    // An API 2.0 path with a model Kling does not have is no route at all.
    let no_model = d
        .submit("text-to-video/kling-9.9", json!({"prompt": "p"}))
        .await;
    no_model.expect_error(404, "not_found", "");

    let unconfigured = kling_app_with(
        &[
            ("api_token", API_TOKEN),
            ("callback_secret", CALLBACK_SECRET),
        ],
        KvStore::default(),
    );
    let reply = unconfigured
        .send(submit_request("text2video", valid_body("text2video"), None))
        .await;
    let error = reply.expect_error(500, "config_missing", "");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("public_base_url"),
        "{error}"
    );
    assert!(d.standin.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_listed_newest_first_by_status_a_page_at_a_time() {
    let d = deploy().await;
    for (ext, fails) in [
        ("job-l1", false),
        ("job-l2", true),
        ("job-l3", false),
        ("job-l4", false),
    ] {
        d.submit_scripted(
            ext,
            Script {
                fails,
                ..Script::default()
            },
        )
        .await;
        d.wait_for(ext, if fails { "failed" } else { "succeed" })
            .await;
    }
    let exts = |page: &Value| -> Vec<String> {
        page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["external_task_id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = list(&d.app, "").await;
    assert_eq!(exts(&all), ["job-l4", "job-l3", "job-l2", "job-l1"]);
    assert_eq!(all["next_cursor"], Value::Null);

    let succeeded = list(&d.app, "?status=succeed&limit=2").await;
    assert_eq!(exts(&succeeded), ["job-l4", "job-l3"]);
    let cursor = succeeded["next_cursor"].as_str().unwrap().to_string();
    let rest = list(&d.app, &format!("?status=succeed&limit=2&cursor={cursor}")).await;
    assert_eq!(exts(&rest), ["job-l1"]);
    assert_eq!(exts(&list(&d.app, "?status=failed").await), ["job-l2"]);

    for (query, parameter) in [
        ("?status=done", "status"),
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?cursor=x", "cursor"),
    ] {
        let reply = d
            .app
            .send(authorized("GET", &format!("/tasks{query}")))
            .await;
        reply.expect_error(400, "invalid_query", query);
        assert_eq!(reply.json()["error"]["parameter"], parameter);
    }
    let anonymous = d
        .app
        .send(request("GET", "/tasks").body(Bytes::new()).unwrap())
        .await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_reversed_and_dropped_callbacks_still_end_in_the_final_state() {
    let d = deploy().await;
    d.submit_scripted(
        "job-messy",
        Script {
            duplicate: true,
            reverse: true,
            drop: vec!["submitted"],
            ..Script::default()
        },
    )
    .await;
    let task = d.wait_for("job-messy", "succeed").await;
    // Let the stand-in finish sending (final, final, processing, processing).
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.standin.deliveries().len() < 4 {
        assert!(Instant::now() < deadline, "{:?}", d.standin.deliveries());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent: Vec<_> = d.standin.deliveries().iter().map(|x| x.status).collect();
    assert_eq!(sent, ["succeed", "succeed", "processing", "processing"]);
    let after = d.app.send(get_task("job-messy")).await.json();
    assert_eq!(
        after["status"], "succeed",
        "late processing callbacks moved nothing back"
    );
    assert_eq!(after["videos"], task["videos"]);
    assert_eq!(after["deliveries"], 1, "the repeats changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base64_image_of_a_mebibyte_is_submitted_and_over_16_mib_is_413() {
    let d = deploy().await;
    let image = "A".repeat(1024 * 1024);
    let reply = d
        .submit("image2video", json!({"image": image, "prompt": "move"}))
        .await;
    reply.expect_json(202);
    let ext = reply.json()["external_task_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.standin.tasks_with_external_id(&ext)[0].request["image"]
            .as_str()
            .unwrap()
            .len(),
        1024 * 1024
    );

    let huge = "A".repeat(16 * 1024 * 1024);
    let reply = d
        .app
        .send(submit_request(
            "image2video",
            json!({"image": huge}),
            Some("job-huge"),
        ))
        .await;
    reply.expect_error(413, "payload_too_large", "");
    // (The first task's callbacks may still be arriving: look for this task only.)
    assert!(
        d.app.kv.keys().iter().all(|k| !k.contains("job-huge")),
        "nothing stored"
    );
    assert_eq!(d.app.send(get_task("job-huge")).await.status, 404);
    assert_eq!(
        d.standin.tasks().len(),
        1,
        "the huge one never reached Kling"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_with_another_body_is_422_and_changes_nothing() {
    let d = deploy().await;
    // No callbacks, so nothing else changes the store while we look.
    d.standin.script(
        "fox-1",
        Script {
            drop: vec!["submitted", "processing", "succeed"],
            ..Script::default()
        },
    );
    let fox = || submit_request("text2video", json!({"prompt": "a fox"}), Some("fox-1"));
    let first = d.app.send(fox()).await.expect_json(202);
    // The same request again is the same task (200).
    let again = d.app.send(fox()).await.expect_json(200);
    assert_eq!(again["task_id"], first["task_id"]);
    let before = d.app.kv.snapshot();
    assert_eq!(d.creates_of("fox-1"), 1);
    d.app
        .send(submit_request(
            "text2video",
            json!({"prompt": "a cat"}),
            Some("fox-1"),
        ))
        .await
        .expect_error(422, "idempotency_conflict", "another request body");
    assert_eq!(d.app.kv.snapshot(), before, "nothing stored");
    assert_eq!(d.creates_of("fox-1"), 1, "Kling not called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_losing_submit_keeps_its_record_while_kling_does_not_list_the_winner_yet() {
    use crate::support::deployment::{fast_standin, replicas};
    let standin = fast_standin().await;
    // Another replica won the race: its create reached Kling, its record another store
    // (a write that has not landed where this replica reads).
    let winner = &replicas(&standin, &KvStore::default(), 1).await[0];
    let kv = KvStore::default();
    let loser = &replicas(&standin, &kv, 1).await[0];
    winner.send(text2video_as("race-1")).await.expect_json(202);
    // Kling does not list the winner's task yet.
    standin.script(
        "race-1",
        Script {
            query_error: Some((404, 1203)),
            ..Script::default()
        },
    );
    let kept = loser.send(text2video_as("race-1")).await.expect_json(200);
    assert_eq!(kept["status"], "submitting", "{kept}");
    assert_eq!(
        standin.tasks_with_external_id("race-1").len(),
        1,
        "no second task"
    );
    assert_eq!(kv.pending().len(), 1, "the reconciler will bind it");

    // Once Kling lists it, the reconciler binds the loser's record to the one task.
    standin.script("race-1", Script::default());
    let run = loser.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert_eq!(run["checked"], 1, "{run}");
    let task = loser.ok_json(get_task("race-1")).await;
    assert_eq!(
        task["task_id"],
        standin.tasks_with_external_id("race-1")[0].task_id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_accepted_without_a_task_id_is_looked_up_not_forgotten() {
    let d = deploy().await;
    d.standin.script(
        "no-id-1",
        Script {
            create: CreateBehaviour::CreateWithoutTaskId,
            ..Script::default()
        },
    );
    let record = d.app.send(text2video_as("no-id-1")).await.expect_json(202);
    let at_kling = d.standin.tasks_with_external_id("no-id-1");
    assert_eq!(at_kling.len(), 1);
    assert_eq!(
        record["task_id"],
        at_kling[0].task_id.as_str(),
        "bound by the lookup"
    );
    d.wait_for("no-id-1", "succeed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_too_large_to_compute_is_config_invalid_and_changes_nothing() {
    for (name, value) in [
        ("stale_after_seconds", "18446744073709551615"),
        ("retention_days", "213503982334601"),
        ("notify_retry_seconds", "18446744073709551615"),
    ] {
        // A task due now, stored by a well-configured deployment on the same store: a
        // run that went ahead would ask about it and write its poll record.
        let kv = KvStore::default();
        let seeding = deploy_on(
            kv.clone(),
            Auth::KeyPair,
            None,
            &[("stale_after_seconds", "0")],
        )
        .await;
        seeding
            .submit_scripted("due-1", crate::support::deployment::silent())
            .await;
        let d = deploy_on(
            kv,
            Auth::KeyPair,
            None,
            &[
                (name, value),
                ("notify_url", "https://next.example/hooks"),
                (
                    "notify_secret",
                    "whsec_bmV4dC1zeXN0ZW0tc2lnbmluZy1rZXktMzItYnl0ZXM=",
                ),
            ],
        )
        .await;
        let before = d.app.kv.snapshot();
        let error = d
            .app
            .send(authorized("POST", "/tasks/reconcile"))
            .await
            .expect_error(500, "config_invalid", name);
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(name) && !message.contains(value),
            "{message}"
        );
        assert_eq!(d.app.kv.snapshot(), before, "{name}: nothing changed");
        assert!(d.standin.received().is_empty(), "{name}: Kling not asked");
    }
}

/// The bearer's variable fails its first read (the one deciding whether the body may be
/// read) and answers the next (the handler's): the body was withheld, so the submit is a
/// 503 to retry, never a 400 for a body it did not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_bearer_cannot_be_read_at_first_is_refused_for_a_retry() {
    let flaky = format!("{PROVIDER_FAILS_ONCE}{API_TOKEN}");
    let d = deploy_with(Auth::KeyPair, None, &[("api_token", flaky.as_str())]).await;
    let reply = d.submit("text2video", json!({"prompt": "a fox"})).await;
    reply.expect_error(503, "config_unavailable", "a flapping provider");
    assert!(d.standin.tasks().is_empty(), "Kling was not called");
    assert!(d.app.kv.keys().is_empty(), "nothing stored");
}
