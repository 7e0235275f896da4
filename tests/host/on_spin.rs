//! The end-to-end suite on a real Spin: the shipped `spin.toml` under `spin up`, the
//! Kling stand-in, and a notification receiver, driven over HTTP as a client would. The
//! same scenario runs on one instance over Spin's SQLite store, and on two instances
//! sharing one `redis-server` (SpinKube's shape); the example runs both ways a user
//! composes it. Every exchange is also checked against `openapi.json`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kling_standin::{Config, Script, StandIn};
use serde_json::{Value, json};

use crate::support::components::components;
use crate::support::deployment::{submit_request, valid_body};
use crate::support::real_spin::{App, RedisServer, SpinInstance, Stores};
use crate::support::receiver::{NOTIFY_SECRET, Receiver};
use crate::support::requests::{
    API_TOKEN, CALLBACK_SECRET, authorized, callback, callback_with_sig, flat, get_task, request,
};

/// The kinds the scenario submits, each under its own `Idempotency-Key`: both API
/// families, and outputs of each shape (an element's id is beyond 2^53).
const KINDS: [&str; 8] = [
    "text2video",
    "image2video",
    "lip-sync",
    "effects",
    "image-generation",
    "text-to-audio",
    "advanced-custom-elements",
    "text-to-video/kling-3.0-turbo",
];

/// The external id the scenario gives a kind's task.
fn ext_of(kind: &str) -> String {
    let kind: String = kind
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("e2e-{kind}")
}

async fn standin() -> StandIn {
    StandIn::start(Config::default(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
}

/// A stand-in whose account has Kling's Standard Webhooks signing on: every callback
/// carries `webhook-*` headers, which the deployment talking to it verifies.
async fn signing_standin() -> StandIn {
    let kling = Config {
        webhook_secrets: vec!["whsec_c2lnbmVkLWJ5LWtsaW5nLW9uLXJlYWwtc3Bpbg==".into()],
        ..Config::default()
    };
    StandIn::start(kling, ([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
}

/// The variables of a deployment talking to `standin` and notifying `receiver`.
fn variables(standin: &StandIn, receiver: &Receiver) -> Vec<(&'static str, String)> {
    let origin = receiver.origin();
    vec![
        ("callback_secret", CALLBACK_SECRET.to_string()),
        ("api_token", API_TOKEN.to_string()),
        ("kling_api_key", standin.config().api_key.clone().unwrap()),
        ("kling_base_url", standin.base_url()),
        ("stale_after_seconds", "0".to_string()),
        ("notify_url", receiver.url().to_string()),
        ("notify_origin", origin),
        ("notify_secret", NOTIFY_SECRET.to_string()),
    ]
    .into_iter()
    .chain(
        standin
            .config()
            .webhook_secrets
            .first()
            .map(|secret| ("webhook_signing_secret", secret.clone())),
    )
    .collect()
}

fn secrets(standin: &StandIn) -> Vec<String> {
    vec![
        CALLBACK_SECRET.to_string(),
        API_TOKEN.to_string(),
        standin.config().api_key.clone().unwrap(),
        NOTIFY_SECRET.trim_start_matches("whsec_").to_string(),
    ]
    .into_iter()
    .chain(
        standin
            .config()
            .webhook_secrets
            .iter()
            .map(|secret| secret.trim_start_matches("whsec_").to_string()),
    )
    .collect()
}

async fn start(stores: &Stores, standin: &StandIn, receiver: &Receiver) -> SpinInstance {
    let secrets = secrets(standin);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    SpinInstance::start(App::Shipped, stores, &variables(standin, receiver))
        .await
        .secrets(&secrets)
}

async fn wait_for(app: &SpinInstance, id: &str, status: &str) -> Value {
    app.poll_json(
        || get_task(id),
        |reply| reply.status == 200 && reply.json()["status"] == status,
    )
    .await
}

/// Waits until the stand-in has sent `count` callbacks for `task_id` and had answers.
async fn until_delivered(standin: &StandIn, task_id: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered: Vec<_> = standin
            .deliveries()
            .into_iter()
            .filter(|d| d.task_id == task_id)
            .collect();
        if delivered.len() >= count {
            assert!(
                delivered.iter().all(|d| d.answered == Some(200)),
                "every callback answered 200: {delivered:?}"
            );
            return;
        }
        assert!(Instant::now() < deadline, "{task_id}: {delivered:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kling_task_id(standin: &StandIn, ext: &str) -> String {
    let tasks = standin.tasks_with_external_id(ext);
    assert_eq!(tasks.len(), 1, "one Kling task for {ext}");
    tasks[0].task_id.clone()
}

/// Submit, callbacks (duplicated, reordered, forged, replayed on another instance), the
/// task API, reconcile of a task whose callbacks never came, a pipeline, and signed
/// notifications; request `n` goes to instance `n % len`, so with two instances every
/// step crosses between them.
async fn scenario(apps: &[SpinInstance], standin: &StandIn, receiver: &Receiver) {
    let on = |n: usize| &apps[n % apps.len()];

    // Submit several kinds; Kling calls back the instance that submitted.
    for (n, kind) in KINDS.iter().enumerate() {
        let ext = ext_of(kind);
        if *kind == "text2video" {
            // Every callback twice, the last status first.
            standin.script(
                &ext,
                Script {
                    duplicate: true,
                    reverse: true,
                    ..Script::default()
                },
            );
        }
        let submitted = on(n)
            .send(submit_request(kind, valid_body(kind), Some(&ext)))
            .await
            .expect_json(202);
        assert_eq!(submitted["external_task_id"], ext.as_str());
    }
    for (n, kind) in KINDS.iter().enumerate() {
        let ext = ext_of(kind);
        // Every callback answered 200 before anything reads the task, so what it shows
        // came by callback, not from a read-repair poll.
        let task_id = kling_task_id(standin, &ext);
        let sent = if *kind == "text2video" { 6 } else { 3 };
        until_delivered(standin, &task_id, sent).await;
        let done = on(n + 1).send(get_task(&ext)).await.expect_json(200);
        assert_eq!(
            (&done["status"], &done["source"]),
            (&json!("succeed"), &json!("callback")),
            "{done}"
        );
        assert_eq!(done["task_id"], task_id.as_str());
        // Each kind's first output, stored through Spin's own store.
        let (output, expected) = match *kind {
            "image-generation" => (&done["images"][0]["url"], format!("{task_id}.png")),
            "text-to-audio" => (&done["audios"][0]["url_mp3"], format!("{task_id}.mp3")),
            "advanced-custom-elements" => (
                &done["elements"][0]["element_id"],
                "829836802793406551".to_string(),
            ),
            _ => (&done["videos"][0]["url"], format!("{task_id}.mp4")),
        };
        assert!(
            output
                .as_str()
                .is_some_and(|text| text.ends_with(&expected)),
            "{kind}: {done}"
        );
    }

    // Duplicated and reversed (final first): after all six it is still final.
    let ext = "e2e-text2video";
    let task_id = kling_task_id(standin, ext);
    let after = on(1).send(get_task(ext)).await.expect_json(200);
    assert_eq!(after["status"], "succeed", "never backwards: {after}");

    // A late `processing`, replayed on the other instance: acknowledged, changes nothing.
    let late = flat(&task_id, ext, "processing", 1);
    let reply = on(1).send(callback(ext, late)).await.expect_json(200);
    assert_ne!(reply["outcome"], "applied", "{reply}");
    assert_eq!(on(0).send(get_task(ext)).await.json()["status"], "succeed");

    // Forged callbacks: refused, nothing stored, nothing changed.
    let forged_final = flat(&task_id, ext, "failed", u64::MAX / 4);
    on(0)
        .send(callback_with_sig(ext, "AAAA", forged_final))
        .await
        .expect_error(401, "invalid_signature", "forged callback");
    assert_eq!(on(1).send(get_task(ext)).await.json()["status"], "succeed");
    let unknown = flat("1", "e2e-forged", "succeed", 1);
    on(1)
        .send(callback_with_sig(
            "e2e-forged",
            &crate::support::requests::sig("x"),
            unknown,
        ))
        .await
        .expect_error(401, "invalid_signature", "forged callback for a new task");
    on(0).send(get_task("e2e-forged")).await.expect_error(
        404,
        "task_not_found",
        "a forged callback stores nothing",
    );

    // The task API wants the bearer; unauthenticated submits reach neither store nor Kling.
    let at_kling = standin.tasks().len();
    for bearer in [None, Some("Bearer not-the-token-at-all")] {
        let mut unauthorized = request("POST", "/tasks/text2video")
            .header("content-type", "application/json")
            .header("idempotency-key", "e2e-unauthorized");
        if let Some(bearer) = bearer {
            unauthorized = unauthorized.header("authorization", bearer);
        }
        let body = Bytes::from(valid_body("text2video").to_string());
        on(0)
            .send(unauthorized.body(body).unwrap())
            .await
            .expect_error(401, "unauthorized", "submit without the token");
    }
    assert_eq!(standin.tasks().len(), at_kling, "Kling was not called");
    on(1).send(get_task("e2e-unauthorized")).await.expect_error(
        404,
        "task_not_found",
        "nothing stored",
    );
    let page = on(1)
        .send(authorized("GET", "/tasks?limit=100"))
        .await
        .expect_json(200);
    let listed: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["external_task_id"].as_str())
        .collect();
    for kind in KINDS {
        assert!(listed.contains(&ext_of(kind).as_str()), "{page}");
    }

    // Reconcile: Kling never calls back; a run on the other instance finds the result.
    let silent = "e2e-silent";
    standin.script(
        silent,
        Script {
            drop: vec!["submitted", "processing", "succeed", "failed"],
            ..Script::default()
        },
    );
    on(0)
        .send(submit_request(
            "text2video",
            valid_body("text2video"),
            Some(silent),
        ))
        .await
        .expect_json(202);
    let deadline = Instant::now() + Duration::from_secs(120);
    while standin.tasks_with_external_id(silent)[0].status != "succeed" {
        assert!(Instant::now() < deadline, "the stand-in never finished it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = on(1)
        .send(authorized("POST", "/tasks/reconcile"))
        .await
        .expect_json(200);
    assert!(run["updated"].as_u64() >= Some(1), "{run}");
    // Read through the listing, which never asks Kling (GET /tasks/{id} might).
    let page = on(0)
        .send(authorized("GET", "/tasks?limit=100"))
        .await
        .expect_json(200);
    let reconciled = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["external_task_id"] == silent)
        .cloned()
        .unwrap_or_else(|| panic!("{silent} is not listed: {page}"));
    assert_eq!(
        (&reconciled["status"], &reconciled["source"]),
        (&json!("succeed"), &json!("poll")),
        "{reconciled}"
    );

    // A pipeline: text2video, then extend, then lip-sync, each step started by the
    // previous one's callback, whichever instance it reached.
    let pipeline = json!({"id": "e2e-promo", "steps": [
        {"kind": "text2video", "request": {"prompt": "a fox in snow"}},
        {"kind": "video-extend", "request": {"prompt": "it runs off"}},
        {"kind": "lip-sync", "request": {"input": {"mode": "text2video", "text": "hello", "voice_id": "v1", "voice_language": "en"}}},
    ]});
    on(0)
        .send(
            request("POST", "/pipelines")
                .header("authorization", format!("Bearer {API_TOKEN}"))
                .header("content-type", "application/json")
                .body(Bytes::from(pipeline.to_string()))
                .unwrap(),
        )
        .await
        .expect_json(202);
    let finished = on(1)
        .poll_json(
            || authorized("GET", "/pipelines/e2e-promo"),
            |reply| reply.status == 200 && reply.json()["status"] != "running",
        )
        .await;
    assert_eq!(finished["status"], "succeed", "{finished}");

    // Notifications: each final task and the pipeline reached the receiver, signed
    // (the receiver verifies with the Standard Webhooks library; forgeries are counted).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let accepted = receiver.accepted();
        let final_of = |id: &str| {
            accepted.iter().any(|m| {
                m.body["type"] == "task.updated"
                    && m.body["data"]["external_task_id"] == id
                    && m.body["data"]["status"] == "succeed"
            })
        };
        let pipeline_done = accepted.iter().any(|m| {
            m.body["type"] == "pipeline.updated"
                && m.body["data"]["id"] == "e2e-promo"
                && m.body["data"]["status"] == "succeed"
        });
        let tasks_done = KINDS
            .into_iter()
            .map(ext_of)
            .chain([silent.to_string()])
            .all(|ext| final_of(&ext));
        if tasks_done && pipeline_done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "notifications missing: {accepted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.forged(), 0, "every notification verified");

    for app in apps {
        app.assert_no_secret_logged();
    }
}

fn summarize(test: &str, apps: &[&SpinInstance], standin: &StandIn) {
    let sent: usize = apps
        .iter()
        .map(|app| app.sent.load(Ordering::Relaxed))
        .sum();
    let callbacks = standin.deliveries().len();
    crate::support::real_spin::summarize(&format!(
        "real Spin: {test}: passed ({} instance(s), {sent} requests, {callbacks} Kling callbacks)",
        apps.len()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_spin_with_its_sqlite_store() {
    let standin = standin().await;
    let receiver = Receiver::start(0).await;
    let app = start(&Stores::Sqlite, &standin, &receiver).await;

    // The document the tests hold the component to is the one it serves.
    let served = app
        .send(request("GET", "/openapi.json").body(Bytes::new()).unwrap())
        .await;
    assert_eq!(served.status, 200);
    assert_eq!(served.json(), *crate::support::openapi::document());
    responses_arrive_whole(&app).await;

    scenario(std::slice::from_ref(&app), &standin, &receiver).await;
    summarize("one instance, SQLite", &[&app], &standin);
}

/// A small response leaves Spin in one write: the component writes and finishes its body
/// before it hands the response over. Spin's server leaves Nagle's algorithm on, so a
/// head sent alone held the body back until the client's delayed ACK (40 ms on Linux),
/// for about one duplicate in three on a kept-alive connection. Read raw, on one such
/// connection: the first read of each answer must hold all of it.
async fn responses_arrive_whole(app: &SpinInstance) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = crate::support::requests::flat("8600000077", "job-whole", "succeed", 3);
    let post = format!(
        "POST /callbacks/kling/job-whole?sig={} HTTP/1.1\r\nhost: localhost\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        crate::support::requests::sig("job-whole"),
        body.len()
    );
    let address = app.base_url.trim_start_matches("http://");
    let mut connection = tokio::net::TcpStream::connect(address).await.unwrap();
    for i in 0..40 {
        connection.write_all(post.as_bytes()).await.unwrap();
        let mut buffer = vec![0; 8192];
        let read = connection.read(&mut buffer).await.unwrap();
        let text = String::from_utf8_lossy(&buffer[..read]).to_ascii_lowercase();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let whole = match head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
        {
            Some(length) => body.len().to_string() == length.trim(),
            None => body.ends_with("0\r\n\r\n"),
        };
        let outcome = if i == 0 { "applied" } else { "duplicate" };
        assert!(
            head.starts_with("http/1.1 200") && body.contains(outcome) && whole,
            "response {i} did not arrive in one piece: {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_spin_two_instances_sharing_redis() {
    let redis = RedisServer::start().await;
    // Kling's signatures on, so that they are checked on the real Spin too (the SQLite
    // run keeps them off: the `sig` alone).
    let standin = signing_standin().await;
    let receiver = Receiver::start(0).await;
    let stores = Stores::Redis(redis.port);
    let apps = [
        start(&stores, &standin, &receiver).await,
        start(&stores, &standin, &receiver).await,
    ];
    scenario(&apps, &standin, &receiver).await;
    // The headers were checked, not just carried: a valid `sig` with a signature that is
    // not Kling's is refused.
    let body = crate::support::requests::flat("8600000078", "e2e-not-kling", "succeed", 3);
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let mut forged = callback("e2e-not-kling", body.clone());
    for (name, value) in [
        ("webhook-id", "msg_not_kling".to_string()),
        ("webhook-timestamp", now.to_string()),
        (
            "webhook-signature",
            crate::support::requests::webhook_signature(
                crate::support::requests::WEBHOOK_SECRET,
                "msg_not_kling",
                now,
                body.as_bytes(),
            ),
        ),
    ] {
        forged.headers_mut().insert(name, value.parse().unwrap());
    }
    apps[0]
        .send(forged)
        .await
        .expect_error(401, "invalid_webhook_signature", "");
    assert_eq!(apps[1].send(get_task("e2e-not-kling")).await.status, 404);
    summarize("two instances, one Redis", &[&apps[0], &apps[1]], &standin);
}

/// The example's routes, with the bearer.
fn starter(method: &str, path: &str, body: Option<Value>) -> http::Request<Bytes> {
    request(method, path)
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .header("content-type", "application/json")
        .body(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default())
        .unwrap()
}

/// The example submits a video and a two-step pipeline through `kling:video/tasks`, and
/// reads them back; without the bearer it submits nothing.
async fn drive_the_example(app: &SpinInstance, standin: &StandIn) {
    let video = app
        .send(starter(
            "POST",
            "/starter/videos",
            Some(json!({"prompt": "a fox"})),
        ))
        .await
        .expect_json(202);
    let id = video["id"].as_str().unwrap().to_string();
    let task_id = kling_task_id(standin, &id);
    let done = app
        .poll_json(
            || starter("GET", &format!("/starter/videos/{id}"), None),
            |reply| reply.status == 200 && reply.json()["status"] == "succeed",
        )
        .await;
    assert_eq!(
        done["video_url"],
        format!("https://cdn.standin.example/{task_id}.mp4")
    );
    // kling-webhook's own API, in the same app, sees the same task.
    wait_for(app, &id, "succeed").await;

    let promo = app
        .send(starter(
            "POST",
            "/starter/promos",
            Some(json!({"prompt": "a fox", "then": "it runs"})),
        ))
        .await
        .expect_json(202);
    let promo_id = promo["id"].as_str().unwrap().to_string();
    let finished = app
        .poll_json(
            || starter("GET", &format!("/starter/promos/{promo_id}"), None),
            |reply| reply.status == 200 && reply.json()["status"] != "running",
        )
        .await;
    assert_eq!(finished["status"], "succeed", "{finished}");

    let at_kling = standin.tasks().len();
    let unauthorized = request("POST", "/starter/videos")
        .body(Bytes::from(r#"{"prompt":"a cat"}"#))
        .unwrap();
    assert_eq!(app.send(unauthorized).await.status, 401);
    assert_eq!(standin.tasks().len(), at_kling, "Kling was not called");
}

fn example_variables(standin: &StandIn) -> Vec<(&'static str, String)> {
    vec![
        ("callback_secret", CALLBACK_SECRET.to_string()),
        ("api_token", API_TOKEN.to_string()),
        ("kling_api_key", standin.config().api_key.clone().unwrap()),
        ("kling_base_url", standin.base_url()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_spin_the_example_through_component_dependencies() {
    let standin = standin().await;
    let app = SpinInstance::start(
        App::StarterWithDependencies,
        &Stores::Sqlite,
        &example_variables(&standin),
    )
    .await;
    drive_the_example(&app, &standin).await;
    summarize(
        "the example through component dependencies",
        &[&app],
        &standin,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_spin_the_example_composed_with_wac() {
    let composed = components().wasm_dir.join("pipeline_starter_composed.wasm");
    let standin = standin().await;
    let app = SpinInstance::start(
        App::StarterComposed(composed),
        &Stores::Sqlite,
        &example_variables(&standin),
    )
    .await;
    drive_the_example(&app, &standin).await;
    summarize("the example composed with wac", &[&app], &standin);
}

/// The version `scripts/install-tools.sh` pins.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Schemathesis, pinned in the virtualenv `scripts/install-tools.sh` makes.
fn schemathesis() -> std::path::PathBuf {
    const VERSION: &str = SCHEMATHESIS_VERSION;
    let venv = std::env::var_os("KLING_WEBHOOK_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(format!(".cache/kling-webhook/venv-schemathesis-{VERSION}"))
        });
    let st = venv.join("bin/st");
    let version = std::process::Command::new(&st).arg("--version").output();
    assert!(
        version.is_ok_and(|v| String::from_utf8_lossy(&v.stdout).contains(VERSION)),
        "no schemathesis {VERSION} at {}: run scripts/install-tools.sh",
        st.display()
    );
    st
}

/// Runs schemathesis over every operation of the served document; returns its output.
/// It fails the test on any failed check (5xx, an answer the document does not allow).
fn fuzz(app: &SpinInstance, token: Option<&str>, report: &str) -> String {
    let mut command = std::process::Command::new(schemathesis());
    let config = crate::support::real_spin::workspace().join("schemathesis.toml");
    // Its crash cache (`.schemathesis/`) goes beside the reports, not into the checkout.
    let dir = crate::support::components::target_dir().join("schemathesis");
    std::fs::create_dir_all(&dir).unwrap();
    command
        .current_dir(&dir)
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(format!("{}/openapi.json", app.base_url))
        .args(["--url", &app.base_url])
        .args(["--checks", "all"])
        .args(["--max-examples", "40"])
        .args(["--seed", "20261203"])
        .args(["--workers", "1"])
        .args(["--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1");
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let output = command.output().expect("running schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(dir.join(format!("{report}.txt")), &text).unwrap();
    assert!(
        output.status.success(),
        "schemathesis ({report}) failed:\n{text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_spin_fuzzed_by_schemathesis() {
    // On Redis, so that every key of every label can be counted.
    let redis = RedisServer::start().await;
    let standin = standin().await;
    let receiver = Receiver::start(0).await;
    let app = start(&Stores::Redis(redis.port), &standin, &receiver).await;

    // Without credentials: not one key in any label, and Kling never called.
    let anonymous = tokio::task::block_in_place(|| fuzz(&app, None, "anonymous"));
    assert!(standin.received().is_empty(), "Kling was called");
    for db in 0..2 {
        assert_eq!(redis.keys_in(db).await, 0, "keys in Redis database {db}");
    }
    eprintln!("{anonymous}");

    // With the bearer: every operation, stateful links included. The bearer must have
    // opened the API (401 is among the answers schemathesis accepts): tasks were
    // submitted to Kling and stored.
    let authenticated =
        tokio::task::block_in_place(|| fuzz(&app, Some(API_TOKEN), "authenticated"));
    eprintln!("{authenticated}");
    assert!(!standin.tasks().is_empty(), "no submit got through");
    let page = app
        .send(authorized("GET", "/tasks?limit=100"))
        .await
        .expect_json(200);
    assert!(
        page["tasks"].as_array().is_some_and(|t| !t.is_empty()),
        "{page}"
    );
    app.assert_no_secret_logged();
    let counts = |text: &str| {
        text.lines()
            .find(|line| line.contains(" generated, "))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    crate::support::real_spin::summarize(&format!(
        "schemathesis {SCHEMATHESIS_VERSION} on real Spin: without credentials: {}; with the bearer: {}",
        counts(&anonymous),
        counts(&authenticated)
    ));
}
