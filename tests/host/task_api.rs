//! `GET /tasks/{id}` and `GET /health`.

use bytes::Bytes;

use crate::support::components::{kling_app, kling_app_with};
use crate::support::kv::KvStore;
use crate::support::requests::{API_TOKEN, CALLBACK_SECRET, callback, flat, get_task, request};

#[tokio::test]
async fn tasks_need_the_bearer_token() {
    let app = kling_app();
    app.send(callback("job-1", flat("100", "job-1", "succeed", 9)))
        .await;
    let unauthenticated = [
        None,
        Some("Bearer wrong".to_string()),
        Some(API_TOKEN.to_string()),
        Some(format!("Basic {API_TOKEN}")),
        Some(format!("Bearer {API_TOKEN}x")),
    ];
    for authorization in unauthenticated {
        let mut req = request("GET", "/tasks/job-1");
        if let Some(value) = &authorization {
            req = req.header("authorization", value);
        }
        let reply = app.send(req.body(Bytes::new()).unwrap()).await;
        reply.expect_error(401, "unauthorized", &format!("{authorization:?}"));
        assert_eq!(reply.headers.get("www-authenticate").unwrap(), "Bearer");
        assert!(!String::from_utf8_lossy(&reply.body).contains("succeed"));
    }
    assert_eq!(app.send(get_task("job-1")).await.status, 200);
    // The scheme's name is case-insensitive (RFC 9110).
    let lowercase = request("GET", "/tasks/job-1")
        .header("authorization", format!("bearer {API_TOKEN}"))
        .body(Bytes::new())
        .unwrap();
    assert_eq!(app.send(lowercase).await.status, 200);
}

#[tokio::test]
async fn unknown_tasks_are_404() {
    let app = kling_app();
    for id in ["job-404", "867283741759111202", "a.b"] {
        let reply = app.send(get_task(id)).await;
        reply.expect_error(404, "task_not_found", id);
    }
}

#[tokio::test]
async fn a_missing_api_token_is_500_naming_it() {
    let app = kling_app_with(&[("callback_secret", CALLBACK_SECRET)], KvStore::default());
    let reply = app.send(get_task("job-1")).await;
    let error = reply.expect_error(500, "config_missing", "");
    assert!(
        error["message"].as_str().unwrap().contains("api_token"),
        "{error}"
    );
}

#[tokio::test]
async fn a_failing_store_is_503_on_reads_too() {
    let app = kling_app();
    app.kv.fail_next_gets(1);
    let reply = app.send(get_task("job-1")).await;
    reply.expect_error(503, "store_unavailable", "");
}

#[tokio::test]
async fn health_needs_nothing_and_reveals_nothing() {
    // Even unconfigured, and without touching the store.
    let app = kling_app_with::<&str, &str>(&[], KvStore::default());
    let reply = app
        .send(request("GET", "/health").body(Bytes::new()).unwrap())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "ok");
    assert_eq!(app.kv.log_len(), 0);

    let app = kling_app();
    let reply = app
        .send(request("GET", "/health").body(Bytes::new()).unwrap())
        .await;
    let text = String::from_utf8_lossy(&reply.body).to_string();
    for secret in [API_TOKEN, CALLBACK_SECRET] {
        assert!(!text.contains(secret), "{text}");
    }
}
