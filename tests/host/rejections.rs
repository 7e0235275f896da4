//! Every bad input: the right status, a JSON error with a code, and nothing stored.

use bytes::Bytes;

use crate::support::components::{kling_app, kling_app_with};
use crate::support::deployment::deploy;
use crate::support::kv::KvStore;
use crate::support::requests::{
    API_TOKEN, CALLBACK_SECRET, WEBHOOK_SECRET, WITH_WEBHOOK_SECRET, authorized, callback,
    callback_with_sig, flat, get_task, request, sig, webhook_signature,
};
use crate::support::spin_host::{Reply, SpinApp};

/// Sends `request` to a store that already holds one task, and checks the answer and
/// that the store is unchanged.
async fn refused(app: &SpinApp, request: http::Request<Bytes>, status: u16, code: &str) -> Reply {
    let before = app.kv.snapshot();
    let reply = app.send(request).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (status, code),
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    assert_eq!(
        app.kv.snapshot(),
        before,
        "a refused request changed the store"
    );
    reply
}

async fn app_with_one_task() -> SpinApp {
    let app = kling_app();
    assert_eq!(
        app.send(callback("job-1", flat("100", "job-1", "processing", 5)))
            .await
            .status,
        200
    );
    app
}

#[tokio::test]
async fn missing_altered_other_task_and_truncated_sigs_are_401() {
    let app = app_with_one_task().await;
    let body = flat("100", "job-1", "succeed", 9);
    let good = sig("job-1");
    let mut altered = good.clone().into_bytes();
    altered[5] = if altered[5] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let no_sig = request("POST", "/callbacks/kling/job-1")
        .header("content-type", "application/json")
        .body(Bytes::from(body.clone()))
        .unwrap();
    refused(&app, no_sig, 401, "missing_signature").await;
    for (bad, why) in [
        (altered.as_str(), "altered"),
        (&sig("job-2"), "another task's"),
        (&good[..good.len() - 1], "truncated by one"),
        (&good[..20], "truncated"),
        ("", "empty"),
        ("not-a-sig!", "garbage"),
    ] {
        let reply = app
            .send(callback_with_sig("job-1", bad, body.clone()))
            .await;
        assert_eq!(reply.status, 401, "{why} sig");
    }
    refused(
        &app,
        callback_with_sig("job-1", &altered, body),
        401,
        "invalid_signature",
    )
    .await;
    assert_eq!(
        app.kv.json("task:job-1").unwrap()["seen"]["final"],
        serde_json::Value::Null
    );
}

#[tokio::test]
async fn malformed_bodies_are_400_with_a_reason() {
    let app = app_with_one_task().await;
    let full = flat("100", "job-1", "succeed", 9);
    let cases = [
        ("{not json", "invalid_json"),
        (&full[..full.len() / 2], "invalid_json"),
        ("", "invalid_json"),
        ("[1]", "not_an_object"),
        (r#"{"task_status":"succeed"}"#, "missing_task_id"),
        (r#"{"task_id":"100"}"#, "missing_status"),
        (
            r#"{"task_id":"1/2","task_status":"succeed"}"#,
            "invalid_task_id",
        ),
    ];
    for (body, code) in cases {
        refused(&app, callback("job-1", body.to_string()), 400, code).await;
    }
}

#[tokio::test]
async fn bodies_over_256_kib_are_413_and_256_kib_exactly_is_fine() {
    let app = app_with_one_task().await;
    let body = flat("100", "job-1", "succeed", 9);
    let padded = |len: usize| {
        let mut bytes = body.clone().into_bytes();
        bytes.resize(len, b' ');
        bytes
    };
    refused(
        &app,
        callback("job-1", padded(256 * 1024 + 1)),
        413,
        "payload_too_large",
    )
    .await;
    let reply = app.send(callback("job-1", padded(256 * 1024))).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn non_json_content_types_are_415_and_a_missing_one_is_accepted() {
    let app = app_with_one_task().await;
    let body = Bytes::from(flat("100", "job-1", "succeed", 9));
    let path = format!("/callbacks/kling/job-1?sig={}", sig("job-1"));
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let req = request("POST", &path)
            .header("content-type", content_type)
            .body(body.clone())
            .unwrap();
        refused(&app, req, 415, "unsupported_content_type").await;
    }
    let req = request("POST", &path).body(body).unwrap();
    assert_eq!(app.send(req).await.status, 200);
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow_and_unknown_paths_404() {
    let app = app_with_one_task().await;
    let path = format!("/callbacks/kling/job-1?sig={}", sig("job-1"));
    for (method, path, allow) in [
        ("GET", path.as_str(), "POST"),
        ("PUT", path.as_str(), "POST"),
        ("PUT", "/tasks/job-1", "GET"),
        ("DELETE", "/tasks/job-1", "GET"),
        ("GET", "/tasks/text2video", "POST"),
        ("GET", "/tasks/reconcile", "POST"),
        ("POST", "/health", "GET"),
    ] {
        let reply = refused(
            &app,
            request(method, path).body(Bytes::new()).unwrap(),
            405,
            "method_not_allowed",
        )
        .await;
        assert_eq!(reply.headers.get("allow").unwrap(), allow);
    }
    for path in [
        "/",
        "/callbacks",
        "/callbacks/kling/a/b",
        "/tasks/a/b",
        "/nope",
    ] {
        refused(
            &app,
            request("GET", path).body(Bytes::new()).unwrap(),
            404,
            "not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn an_invalid_external_id_in_the_url_is_400() {
    let app = app_with_one_task().await;
    let long = "x".repeat(65);
    for id in [long.as_str(), "a.b", "a%20b"] {
        refused(
            &app,
            callback(id, flat("100", "job-1", "succeed", 9)),
            400,
            "invalid_external_task_id",
        )
        .await;
    }
}

#[tokio::test]
async fn a_missing_callback_secret_is_500_naming_the_variable_not_its_value() {
    let app = kling_app_with(&[("api_token", "tok")], KvStore::default());
    let reply = refused(
        &app,
        callback("job-1", flat("100", "job-1", "succeed", 9)),
        500,
        "config_missing",
    )
    .await;
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("callback_secret"), "{message}");
}

mod standard_webhooks {
    use super::*;

    /// Kling's published example (`../shared/kling-api.md`).
    const KLING_ID: &str = "9876543210";
    const KLING_TS: u64 = 1781080794;
    const KLING_BODY: &str = r#"{"id":"1234567890","status":"succeeded","message":"","create_time":1781080778802,"update_time":1781080794151}"#;
    const KLING_SIG: &str = "v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4=";

    fn signed_app(now: u64) -> SpinApp {
        kling_app_with(&WITH_WEBHOOK_SECRET, KvStore::default()).at_time(now)
    }

    fn unnamed(
        id: Option<&str>,
        ts: Option<&str>,
        signature: Option<&str>,
        body: &str,
    ) -> http::Request<Bytes> {
        let mut req =
            request("POST", "/callbacks/kling").header("content-type", "application/json");
        for (name, value) in [
            ("webhook-id", id),
            ("webhook-timestamp", ts),
            ("webhook-signature", signature),
        ] {
            if let Some(value) = value {
                req = req.header(name, value);
            }
        }
        req.body(Bytes::from(body.to_string())).unwrap()
    }

    #[tokio::test]
    async fn kling_s_example_vector_lands_on_the_unnamed_route() {
        let app = signed_app(KLING_TS);
        let reply = app
            .send(unnamed(
                Some(KLING_ID),
                Some(&KLING_TS.to_string()),
                Some(KLING_SIG),
                KLING_BODY,
            ))
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let task = app
            .send(crate::support::requests::get_task("1234567890"))
            .await
            .json();
        assert_eq!(task["status"], "succeed");
        assert_eq!(task["external_task_id"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn the_reference_libraries_golden_vectors_verify() {
        // Their bodies are not Kling payloads: a verified signature shows as the parser's
        // 400, a failed one as 401.
        let vectors = [
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330u64,
                r#"{"test": 2432232314}"#,
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
            (
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                r#"{"email":"test@example.com","username":"test_user"}"#,
                "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
            ),
        ];
        for (secret, id, ts, body, signature) in vectors {
            let vars = [
                ("callback_secret", CALLBACK_SECRET),
                ("api_token", API_TOKEN),
                ("webhook_signing_secret", secret),
            ];
            let app = kling_app_with(&vars, KvStore::default()).at_time(ts);
            let ts = ts.to_string();
            let reply = app
                .send(unnamed(Some(id), Some(&ts), Some(signature), body))
                .await;
            assert_eq!(reply.status, 400, "{id}: {:?}", reply.body);
            let reply = app
                .send(unnamed(
                    Some(id),
                    Some(&ts),
                    Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE"),
                    body,
                ))
                .await;
            assert_eq!(reply.status, 401, "{id}");
            assert!(app.kv.keys().is_empty());
        }
    }

    #[tokio::test]
    async fn wrong_old_new_and_missing_signatures_are_401() {
        let ts = KLING_TS.to_string();
        let app = signed_app(KLING_TS);
        let wrong = "v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ5=";
        refused(
            &app,
            unnamed(Some(KLING_ID), Some(&ts), Some(wrong), KLING_BODY),
            401,
            "invalid_webhook_signature",
        )
        .await;
        let other_body = KLING_BODY.replace("succeeded", "failed");
        refused(
            &app,
            unnamed(Some(KLING_ID), Some(&ts), Some(KLING_SIG), &other_body),
            401,
            "invalid_webhook_signature",
        )
        .await;
        for missing in 0..3 {
            let mut parts = [Some(KLING_ID), Some(ts.as_str()), Some(KLING_SIG)];
            parts[missing] = None;
            refused(
                &app,
                unnamed(parts[0], parts[1], parts[2], KLING_BODY),
                401,
                "missing_webhook_signature",
            )
            .await;
        }
        refused(
            &app,
            unnamed(None, None, None, KLING_BODY),
            401,
            "missing_webhook_signature",
        )
        .await;
        // The proof comes before any judgment of the content: unsigned or forged, a body
        // of another type is a 401 too; a signed one, a 415.
        let as_text = |request: http::Request<Bytes>| {
            let (mut parts, body) = request.into_parts();
            parts
                .headers
                .insert("content-type", "text/plain".parse().unwrap());
            http::Request::from_parts(parts, body)
        };
        for (request, status, code) in [
            (
                unnamed(None, None, None, KLING_BODY),
                401,
                "missing_webhook_signature",
            ),
            (
                unnamed(Some(KLING_ID), Some(&ts), Some(wrong), KLING_BODY),
                401,
                "invalid_webhook_signature",
            ),
            (
                unnamed(Some(KLING_ID), Some(&ts), Some(KLING_SIG), KLING_BODY),
                415,
                "unsupported_content_type",
            ),
        ] {
            refused(&app, as_text(request), status, code).await;
        }

        for now in [KLING_TS + 301, KLING_TS - 301] {
            let app = signed_app(now);
            refused(
                &app,
                unnamed(Some(KLING_ID), Some(&ts), Some(KLING_SIG), KLING_BODY),
                401,
                "webhook_timestamp_out_of_range",
            )
            .await;
        }
        for now in [KLING_TS + 300, KLING_TS - 300] {
            let app = signed_app(now);
            assert_eq!(
                app.send(unnamed(
                    Some(KLING_ID),
                    Some(&ts),
                    Some(KLING_SIG),
                    KLING_BODY
                ))
                .await
                .status,
                200
            );
        }
    }

    #[tokio::test]
    async fn a_rotation_list_with_one_valid_entry_verifies() {
        let app = signed_app(KLING_TS);
        let list = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,{} {KLING_SIG} v1,bm9wZQ==",
            &KLING_SIG[3..]
        );
        let reply = app
            .send(unnamed(
                Some(KLING_ID),
                Some(&KLING_TS.to_string()),
                Some(&list),
                KLING_BODY,
            ))
            .await;
        assert_eq!(reply.status, 200);
    }

    #[tokio::test]
    async fn on_the_sig_route_present_headers_must_verify_too() {
        let now = 1_790_000_000u64;
        let app = signed_app(now);
        let body = flat("300", "job-sw", "succeed", 9);
        let ts = now.to_string();
        let good = webhook_signature(WEBHOOK_SECRET, "msg-1", now as i64, body.as_bytes());
        let with = |signature: &str| {
            let mut req = callback("job-sw", body.clone());
            let headers = req.headers_mut();
            headers.insert("webhook-id", "msg-1".parse().unwrap());
            headers.insert("webhook-timestamp", ts.parse().unwrap());
            headers.insert("webhook-signature", signature.parse().unwrap());
            req
        };
        refused(&app, with("v1,bm9wZQ=="), 401, "invalid_webhook_signature").await;
        assert_eq!(app.send(with(&good)).await.status, 200);
        // Legacy Kling sends no webhook-* headers: the sig alone is enough.
        assert_eq!(app.send(callback("job-sw", body.clone())).await.status, 200);
    }
}

#[tokio::test]
async fn a_status_kling_added_later_is_200_ignored_and_changes_nothing() {
    let app = app_with_one_task().await;
    let before = app.kv.snapshot();
    let reply = app
        .send(callback(
            "job-1",
            r#"{"task_id":"100","task_status":"done"}"#,
        ))
        .await;
    assert_eq!(reply.expect_json(200)["outcome"], "ignored");
    assert_eq!(app.kv.snapshot(), before, "nothing stored");
}

#[tokio::test]
async fn optional_fields_of_another_type_do_not_lose_the_delivery() {
    let app = app_with_one_task().await;
    let body = r#"{"task_id":"100","task_status":"succeed","updated_at":9,"task_status_msg":null,
        "task_info":{"external_task_id":"job-1"},
        "task_result":{"videos":null,"images":[{"index":"0","url":"https://i/0.png"}]}}"#;
    let reply = app.send(callback("job-1", body)).await;
    assert_eq!(reply.expect_json(200)["outcome"], "applied");
    let stored = app
        .ok_json(crate::support::requests::get_task("job-1"))
        .await;
    assert_eq!(stored["status"], "succeed");
    assert_eq!(stored["images"][0]["index"], 0);
    assert_eq!(stored["videos"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_upload_is_refused_before_its_body_is_read() {
    let app = kling_app();
    for (path, authorization) in [
        ("/tasks/text2video", None),
        ("/pipelines", Some("Bearer wrong")),
        ("/tasks/reconcile", None),
    ] {
        let mut builder = request("POST", path).header("content-length", "16000000");
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        let upload = builder.body(Bytes::from_static(b"{\"prompt\":")).unwrap();
        let reply = app
            .send_endless(upload, std::time::Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{path}: the guest waited for a body it must not read"));
        reply.expect_error(401, "unauthorized", path);
    }
    assert!(app.kv.keys().is_empty(), "nothing stored");
}

#[tokio::test]
async fn a_rotated_callback_secret_still_verifies_urls_signed_with_the_old_one() {
    // The new secret first (it signs new URLs); the old one still verifies.
    let rotated = [
        (
            "callback_secret",
            "a-brand-new-callback-secret-01 test-callback-secret",
        ),
        ("api_token", API_TOKEN),
    ];
    let app = kling_app_with(&rotated, KvStore::default());
    let reply = app
        .send(callback("job-1", flat("100", "job-1", "processing", 5)))
        .await;
    assert_eq!(reply.expect_json(200)["outcome"], "applied");

    // A secret that can be guessed is refused, and named, not echoed.
    let short = [("callback_secret", "change-me"), ("api_token", API_TOKEN)];
    let app = kling_app_with(&short, KvStore::default());
    let reply = refused(
        &app,
        callback("job-1", flat("100", "job-1", "processing", 5)),
        500,
        "config_invalid",
    )
    .await;
    let message = reply.json()["error"]["message"].to_string();
    assert!(message.contains("callback_secret") && !message.contains("change-me"));
}

/// A value `levels` deep: `{"a":{"a":...1}}`.
fn nested(levels: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels))
}

/// The component runs on a 128 KiB stack (build.rs), not Rust's 1 MiB. JSON nested as
/// deep as serde_json parses (127 levels in all) on the callback, submit and pipeline
/// routes is accepted, stored and served back: never a trap. (On a 32 KiB stack the
/// callback traps.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_as_deep_as_the_parser_goes_is_answered_on_the_component_stack() {
    let d = deploy().await;
    for deepest in [64, 126, 127] {
        let id = format!("deep-{deepest}");
        // The document's levels above the nested value: 2 for task_result.x, 4 for
        // task_result.videos[0].x.
        let body = format!(
            r#"{{"task_id":"9{deepest}","task_status":"succeed","updated_at":1,"task_info":{{"external_task_id":"{id}"}},"task_result":{{"videos":[{{"id":"v","url":"https://cdn.example/v.mp4","x":{}}}],"x":{}}}}}"#,
            nested(deepest - 4),
            nested(deepest - 2),
        );
        let reply = d.app.send(callback(&id, body)).await;
        assert_eq!(reply.status, 200, "callback, {deepest} levels: {reply:?}");
        let shown = d.app.send(get_task(&id)).await;
        assert_eq!(shown.status, 200, "GET, {deepest} levels: {shown:?}");

        for (path, body, accepted) in [
            (
                "/tasks/text2video",
                format!(r#"{{"prompt":"a cat","x":{}}}"#, nested(deepest - 1)),
                "/tasks/",
            ),
            (
                "/pipelines",
                format!(
                    r#"{{"steps":[{{"kind":"text2video","request":{{"prompt":"a cat","x":{}}}}}]}}"#,
                    nested(deepest - 4)
                ),
                "/pipelines/",
            ),
        ] {
            let request = request("POST", path)
                .header("authorization", format!("Bearer {API_TOKEN}"))
                .header("content-type", "application/json")
                .body(Bytes::from(body))
                .unwrap();
            let reply = d.app.send(request).await;
            assert_eq!(reply.status, 202, "{path}, {deepest} levels: {reply:?}");
            let id = reply.json()["id"]
                .as_str()
                .or(reply.json()["external_task_id"].as_str())
                .map(str::to_string)
                .unwrap();
            let shown = d
                .app
                .send(authorized("GET", &format!("{accepted}{id}")))
                .await;
            assert_eq!(shown.status, 200, "GET {accepted}{id}: {shown:?}");
        }
    }
}

/// The same limit on what Kling answers: a reconcile run, and a read's repair, take a
/// query answer nested as deep as serde_json parses (127 levels in all: the envelope,
/// `data`, then the extra field) on the component stack, and finish the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kling_answer_as_deep_as_the_parser_goes_is_taken_on_the_component_stack() {
    use crate::support::deployment::{deploy_silent, silent, until_kling_finished};
    let d = deploy_silent(KvStore::default(), &[("stale_after_seconds", "0")]).await;
    for (deepest, read) in [(127, "reconcile"), (127, "GET")] {
        let id = format!("deep-answer-{read}");
        let extra: serde_json::Value = serde_json::from_str(&nested(deepest - 2)).unwrap();
        let script = kling_standin::Script {
            query_extra: Some(serde_json::Map::from_iter([("x".to_string(), extra)])),
            ..silent()
        };
        d.submit_scripted(&id, script).await;
        until_kling_finished(&d.standin).await;
        if read == "reconcile" {
            let run = d.app.send(authorized("POST", "/tasks/reconcile")).await;
            assert_eq!(run.status, 200, "{deepest} levels: {run:?}");
            assert_eq!(run.json()["updated"], 1, "the run took the answer");
        }
        let shown = d.app.send(get_task(&id)).await;
        assert_eq!(
            (shown.status, shown.json()["status"].as_str()),
            (200, Some("succeed")),
            "{read}, {deepest} levels: {shown:?}"
        );
    }
}
