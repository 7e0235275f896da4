//! A deployment for end-to-end tests: the component served over loopback HTTP, pointed
//! at a fresh Kling stand-in that calls it back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kling_standin::{Config, Script, StandIn};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::components::kling_app_with;
use super::kv::KvStore;
use super::requests::{API_TOKEN, CALLBACK_SECRET, authorized, get_task, request};
use super::spin_host::{Reply, SpinApp};

pub enum Auth {
    KeyPair,
    ApiKey,
    WrongSecret,
}

pub struct Deployment {
    pub app: SpinApp,
    pub standin: StandIn,
}

/// A callback the stand-in sent that failed in the host fails the test that deployed it
/// (unless it is failing already).
impl Drop for Deployment {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.app.assert_served_without_failure();
        }
    }
}

/// The component served on loopback, talking to a fresh stand-in; `extra` variables
/// are added (or override) last.
pub async fn deploy_with(
    auth: Auth,
    clock: Option<u64>,
    extra: &[(&'static str, &str)],
) -> Deployment {
    deploy_on(KvStore::default(), auth, clock, extra).await
}

/// [`deploy_with`] over the store `kv` (a slow one, say).
pub async fn deploy_on(
    kv: KvStore,
    auth: Auth,
    clock: Option<u64>,
    extra: &[(&'static str, &str)],
) -> Deployment {
    deploy_against(Config::default(), kv, auth, clock, extra).await
}

/// [`deploy_on`] with a stand-in configured as `kling` says (signing its callbacks, say).
pub async fn deploy_against(
    kling: Config,
    kv: KvStore,
    auth: Auth,
    clock: Option<u64>,
    extra: &[(&'static str, &str)],
) -> Deployment {
    let standin = StandIn::start(kling, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", listener.local_addr().unwrap());
    let config = standin.config().clone();
    let mut variables = vec![
        ("callback_secret", CALLBACK_SECRET.to_string()),
        ("api_token", API_TOKEN.to_string()),
        ("kling_base_url", standin.base_url()),
        ("public_base_url", public),
        ("kling_timeout_ms", "400".to_string()),
    ];
    match auth {
        Auth::KeyPair => {
            variables.push(("kling_access_key", config.access_key.clone()));
            variables.push(("kling_secret_key", config.secret_key.clone()));
        }
        Auth::ApiKey => variables.push(("kling_api_key", config.api_key.clone().unwrap())),
        Auth::WrongSecret => {
            variables.push(("kling_access_key", config.access_key.clone()));
            variables.push(("kling_secret_key", "not-the-secret".to_string()));
        }
    }
    for (name, value) in extra {
        variables.retain(|(n, _)| n != name);
        variables.push((name, value.to_string()));
    }
    let mut app = kling_app_with(&variables, kv);
    if let Some(secs) = clock {
        app = app.at_time(secs);
    }
    app.serve(listener);
    Deployment { app, standin }
}

pub async fn deploy() -> Deployment {
    deploy_with(Auth::KeyPair, None, &[]).await
}

pub fn submit_request(
    kind: &str,
    body: Value,
    idempotency_key: Option<&str>,
) -> http::Request<Bytes> {
    let mut builder = request("POST", &format!("/tasks/{kind}"))
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .header("content-type", "application/json");
    if let Some(key) = idempotency_key {
        builder = builder.header("idempotency-key", key);
    }
    builder.body(Bytes::from(body.to_string())).unwrap()
}

/// A valid text2video submit under `external_task_id` (the `Idempotency-Key`).
pub fn text2video_as(external_task_id: &str) -> http::Request<Bytes> {
    submit_request(
        "text2video",
        valid_body("text2video"),
        Some(external_task_id),
    )
}

impl Deployment {
    /// Scripts the fate of `external_task_id` at the stand-in, submits a text2video under
    /// it, and expects 202; returns the task record.
    pub async fn submit_scripted(
        &self,
        external_task_id: &str,
        script: kling_standin::Script,
    ) -> Value {
        self.standin.script(external_task_id, script);
        self.app
            .send(text2video_as(external_task_id))
            .await
            .expect_json(202)
    }

    /// Submits a text2video under `external_task_id` that Kling keeps at `submitted`
    /// without calling back, and answers queries about only as the returned gate lets
    /// them through (one `notify_one` a query): a test acts while Kling is being asked.
    /// Returns the task record and the gate.
    pub async fn submit_held_at_kling(&self, external_task_id: &str) -> (Value, Arc<Notify>) {
        let gate = Arc::new(Notify::new());
        let record = self
            .submit_scripted(
                external_task_id,
                kling_standin::Script {
                    delay: Duration::from_secs(600),
                    drop: vec!["submitted", "processing", "succeed", "failed"],
                    query_gate: Some(gate.clone()),
                    ..Default::default()
                },
            )
            .await;
        (record, gate)
    }

    /// How many creates naming `external_task_id` Kling has received, refused ones
    /// included (the stand-in refuses an id it has, so its task count cannot show a
    /// repeated create): the legacy family's top-level `external_task_id` only.
    pub fn creates_of(&self, external_task_id: &str) -> usize {
        self.standin
            .received()
            .iter()
            .filter(|r| r.method == "POST" && r.body["external_task_id"] == external_task_id)
            .count()
    }

    /// How many queries about `task_id` Kling has received (answered or held): the
    /// legacy family's `GET /v1/.../{task_id}` only.
    pub fn queries_about(&self, task_id: &str) -> usize {
        self.standin
            .received()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(task_id))
            .count()
    }

    /// Waits until Kling has received more than `before` queries about `task_id`.
    pub async fn until_queried(&self, task_id: &str, before: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.queries_about(task_id) <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "Kling was never asked about {task_id}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn submit(&self, kind: &str, body: Value) -> Reply {
        self.app.send(submit_request(kind, body, None)).await
    }

    /// Polls `GET /tasks/{id}` until it shows `status` (callbacks arrive asynchronously).
    pub async fn wait_for(&self, id: &str, status: &str) -> Value {
        self.app
            .poll_json(
                || get_task(id),
                |reply| reply.status == 200 && reply.json()["status"] == status,
            )
            .await
    }
}

/// A stand-in that spaces callbacks by 1 ms, for storms.
pub async fn fast_standin() -> StandIn {
    StandIn::start(
        Config {
            callback_spacing: Duration::from_millis(1),
            ..Config::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap()
}

/// `count` replicas of the component sharing `kv`, each served on its own loopback
/// port (Kling calls each back on its own `public_base_url`), reconciling with no delay.
pub async fn replicas(standin: &StandIn, kv: &KvStore, count: usize) -> Replicas {
    replicas_with(standin, kv, count, &[]).await
}

/// [`replicas`] with `extra` variables (notifications, say).
pub async fn replicas_with(
    standin: &StandIn,
    kv: &KvStore,
    count: usize,
    extra: &[(&'static str, &str)],
) -> Replicas {
    let mut replicas = Vec::new();
    for _ in 0..count {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let public = format!("http://{}", listener.local_addr().unwrap());
        let variables = [
            ("callback_secret", CALLBACK_SECRET.to_string()),
            ("api_token", API_TOKEN.to_string()),
            ("kling_api_key", standin.config().api_key.clone().unwrap()),
            ("kling_base_url", standin.base_url()),
            ("public_base_url", public),
            ("stale_after_seconds", "0".to_string()),
        ];
        let extra = extra.iter().map(|(name, value)| (*name, value.to_string()));
        let variables: Vec<_> = variables.into_iter().chain(extra).collect();
        let app = kling_app_with(&variables, kv.clone());
        app.serve(listener);
        replicas.push(app);
    }
    Replicas(replicas)
}

/// Replicas of one deployment; like [`Deployment`], a callback one of them served that
/// failed in the host fails the test.
pub struct Replicas(Vec<SpinApp>);

impl std::ops::Deref for Replicas {
    type Target = [SpinApp];

    fn deref(&self) -> &[SpinApp] {
        &self.0
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            for replica in &self.0 {
                replica.assert_served_without_failure();
            }
        }
    }
}

pub async fn list(app: &SpinApp, query: &str) -> Value {
    app.ok_json(authorized("GET", &format!("/tasks{query}")))
        .await
}

pub fn valid_body(kind: &str) -> Value {
    match kind {
        "text2video" => {
            json!({"prompt": "a fox in snow", "duration": "5", "mode": "std", "aspect_ratio": "16:9"})
        }
        "image2video" => json!({"image": "https://img.example/fox.png", "prompt": "it runs"}),
        "multi-image2video" => {
            json!({"image_list": [{"image": "https://img.example/1.png"}, {"image": "https://img.example/2.png"}], "prompt": "p"})
        }
        "video-extend" => json!({"video_id": "867283741759111300", "prompt": "and then"}),
        "lip-sync" => {
            json!({"input": {"video_id": "867283741759111300", "mode": "text2video", "text": "hello", "voice_id": "v1"}})
        }
        "effects" => {
            json!({"effect_scene": "hug", "input": {"model_name": "kling-v1-6", "images": ["https://a", "https://b"]}})
        }
        "image-generation" => json!({"prompt": "a fox", "n": 1}),
        "text-to-audio" => json!({"prompt": "foxes calling at dusk", "duration": 5}),
        "advanced-custom-elements" => {
            json!({"element_name": "fox", "element_description": "a red fox", "reference_type": "image_refer", "element_image_list": {"frontal_image": "https://img.example/fox.png"}})
        }
        "text-to-video/kling-3.0-turbo" => {
            json!({"prompt": "a fox in snow", "settings": {"duration": 5, "resolution": "1080p"}})
        }
        other => panic!("{other}"),
    }
}

/// A deployment over `kv` (key pair auth, the real clock) for tasks scripted [`silent`].
pub async fn deploy_silent(kv: KvStore, extra: &[(&'static str, &str)]) -> Deployment {
    deploy_on(kv, Auth::KeyPair, None, extra).await
}

/// Kling never calls back: only the reconciler (or read repair) can finish it.
pub fn silent() -> Script {
    Script {
        drop: vec!["submitted", "processing", "succeed", "failed"],
        ..Script::default()
    }
}

/// Waits (at most 30 s) until the stand-in has finished every task it was given.
pub async fn until_kling_finished(standin: &StandIn) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while standin
        .tasks()
        .iter()
        .any(|t| !matches!(t.status, "succeed" | "failed"))
    {
        assert!(Instant::now() < deadline, "the stand-in did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
