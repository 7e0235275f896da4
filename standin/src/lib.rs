//! A stand-in for Kling's API, following `../shared/kling-api.md`, for end-to-end tests
//! and local demos (Kling itself is unreachable from our build machines).
//!
//! - Every asynchronous endpoint kling-api.md lists ([`surface`], read from it on its own,
//!   not from the component's catalog), in both API families:
//!   - legacy: `POST {endpoint}`, `GET {endpoint}/{task_id or external_task_id}` (task id
//!     only where Kling allows no other), `GET {endpoint}?pageNum=&pageSize=`;
//!   - API 2.0: `POST /{endpoint}/{model}` with `options.callback_url` and
//!     `options.external_task_id`, API key only; `GET /tasks?task_ids=` or
//!     `?external_task_ids=`.
//!
//!   Envelopes are `{code,message,request_id,data}`.
//! - Auth: `Authorization: Bearer <JWT>` verified exactly (HS256 signature, `iss`, `nbf`,
//!   `exp`: codes 1001 to 1004), or the configured API key; a POST without
//!   `Content-Type: application/json` is refused (1200).
//! - Long numeric string task ids; `external_task_id` unique per account; a create body
//!   without what kling-api.md says a path requires is refused `1201` ([`requests`], read
//!   from kling-api.md on its own, not from the catalog).
//! - After a create, calls back the callback URL with the family's body: `submitted`,
//!   `processing`, then `succeed` (API 2.0: `succeeded`) with the kind's outputs (or
//!   `failed`). The synchronous `identify-face` and `tts` answer at once.
//! - Callbacks signed with Standard Webhooks headers when the account has signing secrets
//!   ([`Config::webhook_secrets`]: one `v1,` signature per secret, as during a rotation),
//!   in both families (kling-api.md is unsure whether legacy bodies carry them).
//! - Per-task scripts ([`Script`]): refuse the create with a code, create then answer
//!   5002, create then answer slowly; duplicate, reverse, drop or delay callbacks, or send
//!   them before answering the create.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub mod requests;
pub mod surface;

use surface::{Endpoint, Family, ResultKey, endpoint_at};

#[derive(Debug, Clone)]
pub struct Config {
    pub access_key: String,
    pub secret_key: String,
    /// Accepted as a plain bearer when set.
    pub api_key: Option<String>,
    /// Pause between two callbacks of one task.
    pub callback_spacing: Duration,
    /// The first task's id (then every 97th number): two stand-ins playing two Kling
    /// regions must not hand out the same ids, as two real regions never do.
    pub first_task_id: u64,
    /// The account's Standard Webhooks secrets (`whsec_...`), newest first; empty: callbacks
    /// carry no signature headers (kling-api.md: none without a configured secret).
    pub webhook_secrets: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            access_key: "standin-access-key".into(),
            secret_key: "standin-secret-key".into(),
            api_key: Some("standin-api-key".into()),
            callback_spacing: Duration::from_millis(5),
            first_task_id: 867_283_741_759_111_202,
            webhook_secrets: Vec::new(),
        }
    }
}

/// How the stand-in answers a create.
#[derive(Debug, Clone, Default)]
pub enum CreateBehaviour {
    #[default]
    Normal,
    /// Refuse with this HTTP status and Kling code; no task is created.
    Refuse { http: u16, code: i64 },
    /// Fail with 5000 (no task created), quoting the request's `callback_url` in the
    /// message, as a Kling message about a parameter might.
    FailQuotingCallbackUrl,
    /// Create the task, then answer 5002 (Kling's "internal timeout").
    CreateThenTimeout,
    /// Create the task, then answer only after this long.
    CreateThenSlow(Duration),
    /// Create the task, then answer success (code 0) with no `task_id` in `data`.
    CreateWithoutTaskId,
}

/// One task's fate, chosen by its `external_task_id`.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub create: CreateBehaviour,
    /// `true`: the task ends `failed`.
    pub fails: bool,
    /// Statuses whose callback is never sent.
    pub drop: Vec<&'static str>,
    /// Send every callback twice.
    pub duplicate: bool,
    /// Send the callbacks last status first.
    pub reverse: bool,
    /// Once the task has ended, Kling refreshes its final state (a newer `updated_at`,
    /// the same status) and calls back again (copies as `duplicate` says); its queries
    /// answer the refreshed state. kling-api.md does not promise this: it exercises the
    /// component's rule that a newer `updated_at` of a status is that status's latest.
    pub refresh: bool,
    /// The success callback carries no results, as kling-api.md allows ("`task_result`
    /// may be missing or `{}`"; API 2.0's own example success has no `outputs`); queries
    /// still answer them.
    pub bare_success: bool,
    /// Wait this long before the first callback.
    pub delay: Duration,
    /// Send all callbacks (and wait for their answers) before answering the create.
    pub callbacks_before_answer: bool,
    /// Answer queries for this task with this HTTP status and Kling code.
    pub query_error: Option<(u16, i64)>,
    /// Fields added to this task's answers to a query by id (`data`; over any of the same
    /// name), to see how the component takes an unusual answer. List queries ignore it.
    pub query_extra: Option<serde_json::Map<String, Value>>,
    /// Answer queries for this task only after this long.
    pub query_delay: Option<Duration>,
    /// Answer each query for this task only once the test lets it through
    /// (`notify_one`): a test can act while Kling is being asked, without timing.
    pub query_gate: Option<Arc<Notify>>,
    /// Right after creating this task, the account creates this many more of its kind
    /// (other clients' tasks, ended, no callback to us), so a lookup in Kling's list
    /// (newest first) finds it only past the first pages.
    pub created_after: usize,
}

/// A request the stand-in received, for assertions.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// The query string, without `?` (empty when there is none).
    pub query: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// A task as the stand-in holds it.
#[derive(Debug, Clone)]
pub struct Task {
    pub task_id: String,
    pub external_task_id: Option<String>,
    pub kind: &'static Endpoint,
    pub status: &'static str,
    pub callback_url: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    pub request: Value,
}

/// A callback the stand-in sent, and the answer it got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub task_id: String,
    pub status: &'static str,
    pub answered: Option<u16>,
}

#[derive(Default)]
struct State {
    tasks: Vec<Task>,
    scripts: HashMap<String, Script>,
    received: Vec<Received>,
    deliveries: Vec<Delivery>,
    next_id: u64,
    /// Tasks whose callbacks are still being sent.
    calling_back: usize,
}

/// Serves `handler` over HTTP/1 on every connection `listener` accepts, in the current
/// tokio runtime (the stand-in's server; the test host's notification receiver uses it too).
pub fn serve<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

#[derive(Clone)]
pub struct StandIn {
    addr: SocketAddr,
    config: Arc<Config>,
    state: Arc<Mutex<State>>,
}

impl StandIn {
    /// Starts serving on `addr` (port 0 for any free port) in the current tokio runtime.
    pub async fn start(config: Config, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let first_task_id = config.first_task_id;
        let standin = Self {
            addr: listener.local_addr()?,
            config: Arc::new(config),
            state: Arc::new(Mutex::new(State {
                next_id: first_task_id,
                ..State::default()
            })),
        };
        let server = standin.clone();
        serve(listener, move |request| {
            let server = server.clone();
            async move { server.handle(request).await }
        });
        Ok(standin)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Scripts the fate of the task created with this `external_task_id`.
    pub fn script(&self, external_task_id: &str, script: Script) {
        self.state()
            .scripts
            .insert(external_task_id.to_string(), script);
    }

    pub fn tasks(&self) -> Vec<Task> {
        self.state().tasks.clone()
    }

    pub fn tasks_with_external_id(&self, external_task_id: &str) -> Vec<Task> {
        self.tasks()
            .into_iter()
            .filter(|t| t.external_task_id.as_deref() == Some(external_task_id))
            .collect()
    }

    pub fn received(&self) -> Vec<Received> {
        self.state().received.clone()
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state().deliveries.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("stand-in state")
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let uri_query = request.uri().query().map(str::to_string);
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // kling-api.md: `Content-Type: application/json` on every call with a body.
        let json_declared = request
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return error(400, 1200, "could not read the request body"),
        };
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.state().received.push(Received {
            method: method.clone(),
            path: path.clone(),
            query: uri_query.clone().unwrap_or_default(),
            authorization: authorization.clone(),
            body: json.clone(),
        });
        if let Err((code, message)) = self.authenticate(authorization.as_deref()) {
            return error(401, code, message);
        }
        if method == "POST" && !json_declared {
            return error(400, 1200, "Content-Type must be application/json");
        }
        let query = uri_query.as_deref().unwrap_or("");
        if let Some(kind) = endpoint_at(&path) {
            if kind.family == Family::Api2 && !self.is_api_key(authorization.as_deref()) {
                return error(401, 1002, "API 2.0 takes an API key");
            }
            return match method.as_str() {
                "POST" => self.create(kind, json).await,
                "GET" if kind.family == Family::Legacy => self.list(kind, query),
                _ => error(404, 1202, "wrong method"),
            };
        }
        match (method.as_str(), path.as_str()) {
            // API 2.0's queries, like its creates, take an API key only.
            ("GET", "/tasks") if !self.is_api_key(authorization.as_deref()) => {
                return error(401, 1002, "API 2.0 takes an API key");
            }
            ("GET", "/tasks") => return self.query_tasks(query).await,
            ("POST", "/v1/videos/identify-face") => return identify_face(&json),
            ("POST", "/v1/audio/tts") => return tts(&json),
            _ => {}
        }
        if method == "GET"
            && let Some((endpoint, id)) = path.rsplit_once('/')
            && let Some(kind) = endpoint_at(endpoint).filter(|k| k.family == Family::Legacy)
        {
            self.hold_query(id).await;
            return self.query(kind, id);
        }
        error(404, 1203, "resource does not exist")
    }

    fn is_api_key(&self, authorization: Option<&str>) -> bool {
        let token = authorization.and_then(|a| a.strip_prefix("Bearer "));
        token.is_some() && self.config.api_key.as_deref() == token
    }

    /// API 2.0's `GET /tasks?task_ids=a,b` or `?external_task_ids=a,b`: `data` is the
    /// list of those it knows.
    async fn query_tasks(&self, query: &str) -> Response<Full<Bytes>> {
        let ids = |name: &str| -> Vec<String> {
            query_values(query, name)
                .flat_map(|list| list.split(','))
                .filter(|id| !id.is_empty())
                .map(str::to_string)
                .collect()
        };
        let (task_ids, external_ids) = (ids("task_ids"), ids("external_task_ids"));
        if task_ids.is_empty() == external_ids.is_empty() {
            return error(400, 1201, "give task_ids or external_task_ids");
        }
        for id in task_ids.iter().chain(&external_ids) {
            self.hold_query(id).await;
            if let Some((http, code)) = self.script_for(id).and_then(|s| s.query_error) {
                return error(http, code, "refused as scripted");
            }
        }
        let found: Vec<Value> = self
            .tasks()
            .iter()
            .filter(|t| t.kind.family == Family::Api2)
            .filter(|t| {
                task_ids.contains(&t.task_id)
                    || t.external_task_id
                        .as_ref()
                        .is_some_and(|e| external_ids.contains(e))
            })
            .map(|t| task_json(t, t.status, t.updated_at))
            .collect();
        envelope(200, Value::Array(found))
    }

    /// Kling's codes: 1001 empty, 1002 invalid, 1003 not yet valid, 1004 expired.
    fn authenticate(&self, authorization: Option<&str>) -> Result<(), (i64, &'static str)> {
        let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
            return Err((1001, "authorization is empty"));
        };
        if self.config.api_key.as_deref() == Some(token) {
            return Ok(());
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iss"]);
        validation.set_issuer(&[&self.config.access_key]);
        let key = jsonwebtoken::DecodingKey::from_secret(self.config.secret_key.as_bytes());
        match jsonwebtoken::decode::<Value>(token, &key, &validation) {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.kind() {
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    (1003, "token is not yet valid")
                }
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => (1004, "token has expired"),
                _ => (1002, "authorization is invalid"),
            }),
        }
    }

    async fn create(&self, kind: &'static Endpoint, request: Value) -> Response<Full<Bytes>> {
        if !request.is_object() {
            return error(400, 1200, "invalid request parameters");
        }
        // Where the family carries kling-webhook's two fields.
        let own = match kind.family {
            Family::Legacy => &request,
            Family::Api2 => &request["options"],
        };
        let external_task_id = own
            .get("external_task_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let callback_url = own
            .get("callback_url")
            .and_then(Value::as_str)
            .map(str::to_string);
        let script = external_task_id
            .as_ref()
            .and_then(|id| self.state().scripts.get(id).cloned())
            .unwrap_or_default();
        if let CreateBehaviour::Refuse { http, code } = script.create {
            return error(http, code, "refused as scripted");
        }
        if matches!(script.create, CreateBehaviour::FailQuotingCallbackUrl) {
            let quoted = callback_url.as_deref().unwrap_or_default();
            return error(
                500,
                5000,
                &format!("internal error with callback_url {quoted}"),
            );
        }
        if let Some(field) = requests::refused_field(kind.create_path, &request) {
            return error(400, 1201, &format!("{field} is invalid"));
        }
        let task = {
            let mut state = self.state();
            if let Some(id) = &external_task_id
                && state
                    .tasks
                    .iter()
                    .any(|t| t.external_task_id.as_ref() == Some(id))
            {
                return error(400, 1201, "external_task_id already exists");
            }
            let now = now_ms();
            state.next_id += 97;
            let task = Task {
                task_id: state.next_id.to_string(),
                external_task_id,
                kind,
                status: "submitted",
                callback_url,
                created_at: now,
                updated_at: updated_at_of(now, "submitted"),
                request,
            };
            state.tasks.push(task.clone());
            for _ in 0..script.created_after {
                state.next_id += 97;
                let other = Task {
                    task_id: state.next_id.to_string(),
                    external_task_id: Some(format!("other-{}", state.next_id)),
                    status: "succeed",
                    callback_url: None,
                    ..task.clone()
                };
                state.tasks.push(other);
            }
            task
        };
        if script.callbacks_before_answer {
            self.run_callbacks(&task.task_id, &script).await;
        } else {
            let server = self.clone();
            let (task_id, script_copy) = (task.task_id.clone(), script.clone());
            tokio::spawn(async move { server.run_callbacks(&task_id, &script_copy).await });
        }
        let created = match kind.family {
            Family::Legacy => {
                json!({"task_id": task.task_id, "task_status": "submitted", "task_info": {"external_task_id": task.external_task_id}, "created_at": task.created_at, "updated_at": task.updated_at})
            }
            Family::Api2 => {
                json!({"id": task.task_id, "status": "submitted", "external_id": task.external_task_id, "create_time": task.created_at, "update_time": task.updated_at})
            }
        };
        match script.create {
            CreateBehaviour::CreateThenTimeout => error(504, 5002, "internal timeout"),
            CreateBehaviour::CreateWithoutTaskId => {
                envelope(200, json!({"task_status": "submitted"}))
            }
            CreateBehaviour::CreateThenSlow(pause) => {
                tokio::time::sleep(pause).await;
                envelope(200, created)
            }
            _ => envelope(200, created),
        }
    }

    /// Moves the task through its statuses, calling back for each as scripted: each
    /// status once the task has it, as Kling does (a lookup that a callback causes sees
    /// the task as that callback says); a reversed script calls back once it has ended.
    async fn run_callbacks(&self, task_id: &str, script: &Script) {
        /// Counts the task down however its callbacks end (a dropped future included).
        struct CallingBack<'a>(&'a StandIn);
        impl Drop for CallingBack<'_> {
            fn drop(&mut self) {
                self.0.state().calling_back -= 1;
            }
        }
        self.state().calling_back += 1;
        let _counted = CallingBack(self);
        self.call_back(task_id, script).await;
    }

    /// Whether every task's callbacks have been sent (and answered, or given up on).
    pub fn callbacks_done(&self) -> bool {
        self.state().calling_back == 0
    }

    async fn call_back(&self, task_id: &str, script: &Script) {
        tokio::time::sleep(script.delay).await;
        let last = if script.fails { "failed" } else { "succeed" };
        let mut statuses = vec!["submitted", "processing", last];
        if script.reverse {
            for status in ["processing", last] {
                self.set_status(task_id, status);
            }
            statuses.reverse();
        }
        for status in statuses {
            if !script.reverse && status != "submitted" {
                tokio::time::sleep(self.config.callback_spacing).await;
                self.set_status(task_id, status);
            }
            if script.drop.contains(&status) {
                continue;
            }
            self.deliver_copies(task_id, status, script).await;
        }
        if script.refresh {
            self.refresh(task_id);
            if !script.drop.contains(&last) {
                self.deliver_copies(task_id, last, script).await;
            }
        }
    }

    async fn deliver_copies(&self, task_id: &str, status: &'static str, script: &Script) {
        let copies = if script.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            self.deliver(task_id, status, script.bare_success).await;
            tokio::time::sleep(self.config.callback_spacing).await;
        }
    }

    /// The task's state again, half a second newer.
    fn refresh(&self, task_id: &str) {
        let mut state = self.state();
        if let Some(task) = state.tasks.iter_mut().find(|t| t.task_id == task_id) {
            task.updated_at += 500;
        }
    }

    fn set_status(&self, task_id: &str, status: &'static str) {
        let mut state = self.state();
        if let Some(task) = state.tasks.iter_mut().find(|t| t.task_id == task_id) {
            task.status = status;
            task.updated_at = updated_at_of(task.created_at, status);
        }
    }

    async fn deliver(&self, task_id: &str, status: &'static str, bare_success: bool) {
        let Some(task) = self.tasks().into_iter().find(|t| t.task_id == task_id) else {
            return;
        };
        let Some(url) = task.callback_url.clone() else {
            return;
        };
        // The state the task is in carries its own time (refreshed or not); an earlier
        // status (a reversed script) the time it had then.
        let updated_at = if status == task.status {
            task.updated_at
        } else {
            updated_at_of(task.created_at, status)
        };
        let mut body = task_json(&task, status, updated_at);
        if bare_success && let Some(fields) = body.as_object_mut() {
            for results in ["task_result", "final_unit_deduction", "outputs", "billing"] {
                fields.remove(results);
            }
        }
        let body = body.to_string();
        // One id per message: copies of a delivery (retries) share it, a refreshed final
        // (another `updated_at`) does not.
        let message_id = format!("msg_{task_id}_{status}_{updated_at}");
        let headers = self.signature_headers(&message_id, body.as_bytes());
        let answered = post_json(&url, body, &headers).await;
        self.state().deliveries.push(Delivery {
            task_id: task_id.to_string(),
            status,
            answered,
        });
    }

    /// Standard Webhooks headers for a message, signed with every secret the account has
    /// (none without one). Signed by the Standard Webhooks reference library, not by the
    /// component's own code.
    fn signature_headers(&self, message_id: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        if self.config.webhook_secrets.is_empty() {
            return Vec::new();
        }
        let timestamp = i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX);
        let signatures: Vec<String> = self
            .config
            .webhook_secrets
            .iter()
            .map(|secret| {
                standardwebhooks::Webhook::new(secret)
                    .and_then(|key| key.sign(message_id, timestamp, body))
                    .expect("a stand-in webhook secret is whsec_ and base64")
            })
            .collect();
        vec![
            ("webhook-id", message_id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signatures.join(" ")),
        ]
    }

    /// Holds a query for the task known by `id` as its script says (`query_delay`,
    /// `query_gate`).
    async fn hold_query(&self, id: &str) {
        let Some(script) = self.script_for(id) else {
            return;
        };
        if let Some(delay) = script.query_delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(gate) = script.query_gate {
            gate.notified().await;
        }
    }

    /// The script of the task known by this `task_id` or `external_task_id`.
    fn script_for(&self, id: &str) -> Option<Script> {
        let state = self.state();
        let ext = state
            .tasks
            .iter()
            .find(|t| t.task_id == id || t.external_task_id.as_deref() == Some(id))?
            .external_task_id
            .clone()?;
        state.scripts.get(&ext).cloned()
    }

    fn query(&self, kind: &'static Endpoint, id: &str) -> Response<Full<Bytes>> {
        let task = self.tasks().into_iter().find(|t| {
            t.kind == kind
                && (t.task_id == id
                    || (!kind.task_id_only && t.external_task_id.as_deref() == Some(id)))
        });
        match task {
            Some(task) => {
                let script = task
                    .external_task_id
                    .as_ref()
                    .and_then(|ext| self.state().scripts.get(ext).cloned())
                    .unwrap_or_default();
                match script.query_error {
                    Some((http, code)) => error(http, code, "refused as scripted"),
                    None => {
                        let mut data = task_json(&task, task.status, task.updated_at);
                        if let (Some(extra), Some(data)) =
                            (script.query_extra, data.as_object_mut())
                        {
                            data.extend(extra);
                        }
                        envelope(200, data)
                    }
                }
            }
            None => error(404, 1203, "task not found"),
        }
    }

    /// `GET {path}?pageNum=1..1000&pageSize=1..500` (defaults 1 and 30): newest first.
    fn list(&self, kind: &'static Endpoint, query: &str) -> Response<Full<Bytes>> {
        let param = |name: &str, default: usize| {
            query_values(query, name)
                .next()
                .map_or(Some(default), |value| value.parse::<usize>().ok())
        };
        let (Some(page @ 1..=1000), Some(size @ 1..=500)) =
            (param("pageNum", 1), param("pageSize", 30))
        else {
            return error(400, 1201, "pageNum is 1 to 1000, pageSize 1 to 500");
        };
        let tasks: Vec<Value> = self
            .tasks()
            .iter()
            .rev()
            .filter(|t| t.kind == kind)
            .skip((page - 1) * size)
            .take(size)
            .map(|t| task_json(t, t.status, t.updated_at))
            .collect();
        envelope(200, Value::Array(tasks))
    }
}

/// The values of the query parameter `name`, in order.
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> {
    query
        .split('&')
        .filter_map(move |pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// The task as Kling reports it (query `data`, and the callback body), in its family's
/// shape: legacy flat `task_result`, or API 2.0 `outputs[]`.
fn task_json(task: &Task, status: &str, updated_at: u64) -> Value {
    let failed_msg = if status == "failed" {
        "generation failed (scripted)"
    } else {
        ""
    };
    match task.kind.family {
        Family::Legacy => {
            let mut body = json!({
                "task_id": task.task_id,
                "task_status": status,
                "task_status_msg": failed_msg,
                "created_at": task.created_at,
                "updated_at": updated_at,
                "task_info": {"external_task_id": task.external_task_id.clone().unwrap_or_default()},
            });
            if status == "succeed" {
                body["final_unit_deduction"] = json!("1");
                body["task_result"] = legacy_result(task);
                // Advanced lip-sync names the video it worked on (kling-api.md).
                if task.kind.create_path == "/v1/videos/advanced-lip-sync" {
                    body["task_info"]["parent_video"] = json!({
                        "id": format!("{}7", task.task_id),
                        "url": format!("https://cdn.standin.example/{}-parent.mp4", task.task_id),
                        "duration": "5",
                    });
                }
            }
            body
        }
        Family::Api2 => {
            let mut body = json!({
                "id": task.task_id,
                "status": if status == "succeed" { "succeeded" } else { status },
                "message": failed_msg,
                "create_time": task.created_at,
                "update_time": updated_at,
                "external_id": task.external_task_id,
            });
            if status == "succeed" {
                body["outputs"] = json!([{
                    "type": "video",
                    "id": format!("{}9", task.task_id),
                    "url": format!("https://cdn.standin.example/{}.mp4", task.task_id),
                    "watermark_url": format!("https://cdn.standin.example/{}-w.mp4", task.task_id),
                    "duration": 5,
                }]);
                body["billing"] = json!([{"type": "unit", "amount": "1"}]);
            }
            body
        }
    }
}

/// Each output kind's legacy result shape (`../shared/kling-api.md`, "Result shapes").
fn legacy_result(task: &Task) -> Value {
    let id = &task.task_id;
    let cdn = |suffix: &str| format!("https://cdn.standin.example/{id}{suffix}");
    let mut result = serde_json::Map::new();
    for output in task.kind.results {
        let value = match output {
            ResultKey::Videos => json!([{
                "id": format!("{id}9"),
                "url": cdn(".mp4"),
                "watermark_url": cdn("-w.mp4"),
                "duration": "5.1",
            }]),
            // ai-multi-shot answers three views of the element.
            ResultKey::ImageViews => json!([{
                "index": 0,
                "url_1": cdn("-1.png"),
                "url_2": cdn("-2.png"),
                "url_3": cdn("-3.png"),
            }]),
            ResultKey::Images => {
                let mut image =
                    json!({"index": 0, "url": cdn(".png"), "watermark_url": cdn("-w.png")});
                if task.kind.results.contains(&ResultKey::SeriesImages) {
                    image["result_type"] = json!("series");
                }
                json!([image])
            }
            ResultKey::SeriesImages => json!([
                {"index": 0, "url": cdn("-s0.png")},
                {"index": 1, "url": cdn("-s1.png")},
            ]),
            ResultKey::Audios => json!([{
                "id": format!("{id}8"),
                "url_mp3": cdn(".mp3"),
                "url_wav": cdn(".wav"),
                "duration_mp3": "5.0",
                "duration_wav": "5.0",
            }]),
            ResultKey::Voices => json!([{
                "voice_id": format!("voice-{id}"),
                "voice_name": task.request["voice_name"],
                "trial_url": cdn("-trial.mp3"),
                "owned_by": "me",
            }]),
            // A JSON number beyond 2^53, as Kling sends it.
            ResultKey::Elements => json!([{
                "element_id": 829_836_802_793_406_551_u64,
                "element_name": task.request["element_name"],
                "element_description": task.request["element_description"],
                "reference_type": task.request["reference_type"],
                "status": "succeed",
            }]),
        };
        result.insert(output.name().to_string(), value);
    }
    Value::Object(result)
}

/// `/v1/videos/identify-face`: a face-recognition session (about 24 h at Kling).
fn identify_face(request: &Value) -> Response<Full<Bytes>> {
    // `null` is a field left out, as Kling's other endpoints read it.
    let video = ["video_id", "video_url"]
        .iter()
        .find_map(|field| request.get(field).and_then(Value::as_str));
    match video {
        Some(video) => envelope(
            200,
            json!({
                "session_id": format!("session-{}", video.len()),
                "final_unit_deduction": "0",
                "face_data": [{"face_id": "0", "face_image": "https://cdn.standin.example/face.png", "start_time": 0, "end_time": 5000}],
            }),
        ),
        None => error(400, 1201, "video_id or video_url is required"),
    }
}

/// `/v1/audio/tts`: the audio at once.
fn tts(request: &Value) -> Response<Full<Bytes>> {
    if request.get("voice_id").and_then(Value::as_str) == Some("unknown-voice") {
        return error(400, 1201, "voice_id is invalid");
    }
    if request
        .get("voice_language")
        .and_then(Value::as_str)
        .is_none()
    {
        return error(400, 1201, "voice_language is required");
    }
    match request.get("text").and_then(Value::as_str) {
        Some(text) if text.chars().count() <= 1000 => envelope(
            200,
            json!({"task_id": "tts-1", "task_status": "succeed", "task_result": {"audios": [{"id": "a-1", "url": "https://cdn.standin.example/tts.mp3", "duration": "1.2"}]}}),
        ),
        _ => error(400, 1201, "text is required, at most 1000 characters"),
    }
}

fn envelope(status: u16, data: Value) -> Response<Full<Bytes>> {
    respond(
        status,
        json!({"code": 0, "message": "SUCCEED", "request_id": request_id(), "data": data}),
    )
}

fn error(status: u16, code: i64, message: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        json!({"code": code, "message": message, "request_id": request_id()}),
    )
}

fn respond(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn request_id() -> String {
    format!("standin-{}", now_ms())
}

/// Kling's `updated_at` for a task of `created_at` in `status`: one value per state, the
/// same in its callbacks, its create answer and its queries (a second apart per step).
fn updated_at_of(created_at: u64, status: &str) -> u64 {
    let rank = ["submitted", "processing", "succeed", "failed"]
        .iter()
        .position(|s| *s == status)
        .unwrap_or(0) as u64;
    created_at + 1000 * (rank + 1)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// POSTs JSON to an `http://` URL; the status it answered, or `None` if it did not.
async fn post_json(url: &str, body: String, headers: &[(&str, String)]) -> Option<u16> {
    let uri: hyper::Uri = url.parse().ok()?;
    let authority = uri.authority()?.clone();
    let stream = TcpStream::connect(authority.as_str()).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    let mut request = Request::post(uri.path_and_query()?.as_str())
        .header("host", authority.as_str())
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request.body(Full::new(Bytes::from(body))).ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Some(status)
}
