//! The example component (`examples/pipeline-starter`) composed with kling-webhook as
//! `wac plug` does, run beside kling-webhook's own HTTP component over one store, the
//! way a Spin app with a component dependency runs: the example submits through
//! `kling:video/tasks`, Kling calls kling-webhook back, and the example reads the result.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::support::components::starter_beside;
use crate::support::deployment::deploy;
use crate::support::requests::{API_TOKEN, request};
use crate::support::spin_host::SpinApp;

fn post(path: &str, body: Value) -> http::Request<Bytes> {
    request("POST", path)
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

fn get(path: &str) -> http::Request<Bytes> {
    request("GET", path)
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .body(Bytes::new())
        .unwrap()
}

async fn wait_for(starter: &SpinApp, path: &str, status: &str) -> Value {
    starter
        .poll_json(
            || get(path),
            |reply| reply.status == 200 && reply.json()["status"] == status,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_composed_example_submits_and_reads_through_kling_video() {
    let d = deploy().await;
    let starter = starter_beside(&d.app);

    let reply = starter
        .send(post("/videos", json!({"prompt": "a fox in snow"})))
        .await
        .expect_json(202);
    let id = reply["id"].as_str().unwrap().to_string();
    let at_kling = d.standin.tasks_with_external_id(&id);
    assert_eq!(at_kling.len(), 1, "the composed kling-webhook called Kling");
    assert!(
        at_kling[0]
            .callback_url
            .as_deref()
            .is_some_and(|url| url.contains(&format!("/callbacks/kling/{id}?sig="))),
        "with its own signed callback URL"
    );

    // Kling calls kling-webhook's HTTP component back; the example sees the result.
    let done = wait_for(&starter, &format!("/videos/{id}"), "succeed").await;
    assert_eq!(
        done["video_url"],
        format!("https://cdn.standin.example/{}.mp4", at_kling[0].task_id)
    );

    // Its routes spend Kling credits: without the bearer, nothing is submitted.
    for bearer in [None, Some("Bearer not-the-api-token")] {
        let mut unauthorized = request("POST", "/videos");
        if let Some(bearer) = bearer {
            unauthorized = unauthorized.header("authorization", bearer);
        }
        let reply = starter
            .send(
                unauthorized
                    .body(Bytes::from(r#"{"prompt":"a cat"}"#))
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, 401, "{bearer:?}");
    }
    assert_eq!(d.standin.tasks().len(), 1, "Kling was not called");

    let bad = starter.send(post("/videos", json!({"prompt": 7}))).await;
    assert_eq!(bad.status, 400);
    // Without the bearer, the body is never read: one that never ends is answered.
    let endless = starter
        .send_endless(
            request("POST", "/videos")
                .body(Bytes::from_static(b"{\"prompt\": \""))
                .unwrap(),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(endless.map(|reply| reply.status), Some(401));
    // A body is read only up to 64 KiB, never buffered whole.
    let huge = starter
        .send(post("/videos", json!({"prompt": "x".repeat(70_000)})))
        .await;
    assert_eq!(huge.status, 413);
    assert_eq!(d.standin.tasks().len(), 1, "Kling was not called");
    let unknown = starter.send(get("/videos/nope")).await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_composed_example_runs_a_pipeline() {
    let d = deploy().await;
    let starter = starter_beside(&d.app);
    let reply = starter
        .send(post(
            "/promos",
            json!({"id": "promo-wac", "prompt": "a fox", "then": "it runs"}),
        ))
        .await;
    reply.expect_json(202);
    let done = wait_for(&starter, "/promos/promo-wac", "succeed").await;
    assert_eq!(done["videos"].as_array().unwrap().len(), 2, "{done}");
    let first = &d.standin.tasks_with_external_id("promo-wac-0")[0];
    let extend = &d.standin.tasks_with_external_id("promo-wac-1")[0];
    assert_eq!(extend.request["video_id"], format!("{}9", first.task_id));
}

/// What the starter is granted: its own bearer, what kling-webhook's `submit` reads
/// (`SubmitConfig`), and what its `get` reads to ask Kling about a stale task (the
/// staleness and the lost limits). Nothing about callbacks or notifications.
const STARTER_VARIABLES: [&str; 11] = [
    "api_token",
    "callback_secret",
    "kling_api_key",
    "kling_access_key",
    "kling_secret_key",
    "kling_base_url",
    "kling_timeout_ms",
    "public_base_url",
    "stale_after_seconds",
    "lost_after_polls",
    "lost_after_seconds",
];

/// The example's Spin manifest wires the same thing through component dependencies: it
/// must plug kling-webhook into the interface the component exports, let the dependency
/// inherit what it needs, map every variable kling-webhook reads to its HTTP component,
/// and grant the starter only [`STARTER_VARIABLES`].
#[test]
fn the_example_manifest_plugs_kling_webhook_with_everything_it_needs() {
    let root = include_str!("../../spin.toml");
    let example = include_str!("../../examples/pipeline-starter/spin.toml");
    assert!(example.contains(
        r#""kling:video/tasks@0.2.0" = { path = "../../target/wasm32-wasip2/release/kling_webhook.wasm" }"#
    ));
    assert!(example.contains("\ndependencies_inherit_configuration = true\n"));
    let tasks_wit = include_str!("../../wit/video/tasks.wit");
    assert!(
        tasks_wit.starts_with("package kling:video@0.2.0;")
            && tasks_wit.contains("interface tasks")
    );
    let variables: Vec<&str> = root
        .split("\n[variables]\n")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once(" = {").map(|(name, _)| name))
        .collect();
    assert!(variables.len() >= 15, "{variables:?}");
    let starter = example
        .split("\n[component.starter.variables]\n")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    for name in variables {
        assert!(
            example.contains(&format!("\n{name} = {{ ")),
            "{name} not declared"
        );
        let mapping = format!("\n{name} = \"{{{{ {name} }}}}\"");
        let granted = STARTER_VARIABLES.contains(&name);
        assert_eq!(
            example.matches(&mapping).count(),
            1 + usize::from(granted),
            "{name} is mapped to kling-webhook, and to the starter only if it uses it"
        );
        assert_eq!(format!("\n{starter}").contains(&mapping), granted, "{name}");
    }
}
