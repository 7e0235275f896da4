//! `openapi.json`: served as it is in the repository, well-formed, and the checker that
//! holds every exchange of the suite to it rejects what the document does not allow.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::support::components::kling_app;
use crate::support::openapi::{check, document};
use crate::support::requests::{API_TOKEN, request};
use crate::support::spin_host::Reply;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_component_serves_the_document_without_a_token() {
    let reply = kling_app()
        .send(request("GET", "/openapi.json").body(Bytes::new()).unwrap())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), *document());
}

/// Every `$ref` points at something, every operation has an id, and every operation
/// but the public ones requires the bearer.
#[test]
fn the_document_is_whole() {
    fn refs(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    found.push(r.clone());
                }
                map.values().for_each(|v| refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut found = Vec::new();
    refs(doc, &mut found);
    assert!(!found.is_empty());
    for reference in found {
        let pointer = reference.strip_prefix('#').expect("local references only");
        assert!(doc.pointer(pointer).is_some(), "dangling {reference}");
    }
    let public = [
        "health",
        "getOpenApi",
        "listKinds",
        "receiveCallback",
        "receiveWebhook",
    ];
    let mut ids = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let id = operation["operationId"].as_str().expect("operationId");
            ids.push(id.to_string());
            let open = operation["security"] == json!([]);
            assert_eq!(open, public.contains(&id), "{method} {path}: security");
        }
    }
    ids.sort();
    let count = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), count, "operation ids are unique");
}

fn reply(status: u16, body: Value) -> Reply {
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    Reply {
        status,
        headers,
        body: Bytes::from(body.to_string()),
    }
}

fn get(path: &str) -> http::request::Parts {
    request("GET", path)
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn rejected(parts: &http::request::Parts, body: &str, answer: &Reply) -> bool {
    let body = Bytes::from(body.to_string());
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(parts, &body, answer))).is_err()
}

/// Mutate-and-assert: a documented exchange passes, and each change the document does
/// not allow fails it.
#[test]
fn the_checker_rejects_what_the_document_does_not_allow() {
    let task = json!({
        "task_id": "867283741759111202", "external_task_id": "job-1", "kind": "text2video",
        "status": "succeed", "status_msg": "", "source": "callback",
        "videos": [{"id": "v", "url": "https://cdn.example/v.mp4", "duration": "5.1"}],
        "images": [], "created_at": 1, "updated_at": 2, "deliveries": 1,
        "last_delivery_at": 3, "sequence": 30_000_000_000_002u64
    });
    let parts = get("/tasks/job-1");
    assert!(
        !rejected(&parts, "", &reply(200, task.clone())),
        "documented"
    );

    let mut undocumented_field = task.clone();
    undocumented_field["surprise"] = json!(1);
    let mut missing_field = task.clone();
    missing_field.as_object_mut().unwrap().remove("status");
    let mut unknown_status = task.clone();
    unknown_status["status"] = json!("done");
    for (what, answer) in [
        ("an undocumented field", reply(200, undocumented_field)),
        ("a missing required field", reply(200, missing_field)),
        ("a value outside the enum", reply(200, unknown_status)),
        ("an undocumented status", reply(418, task.clone())),
        (
            "an error code not in the enum",
            reply(
                404,
                json!({"error": {"code": "gone_fishing", "message": "m"}}),
            ),
        ),
    ] {
        assert!(rejected(&parts, "", &answer), "{what}");
    }
    // A path the document lacks must be a 404 with the error body.
    let error = reply(
        404,
        json!({"error": {"code": "not_found", "message": "no route"}}),
    );
    assert!(!rejected(&get("/nowhere"), "", &error));
    assert!(rejected(&get("/nowhere"), "", &reply(200, json!({}))));
}
