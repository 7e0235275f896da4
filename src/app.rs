//! The dispatcher: one request in, one response (and any after-acknowledgement work)
//! out. One small function per route; the Spin edge only converts types.

use serde_json::json;

use crate::after_ack::AfterAck;
use crate::api::kinds::kinds;
use crate::api::kling_calls::pass_through;
use crate::api::pipelines::{self, NewPipeline, PipelineError, Submitter};
use crate::api::submit::{SubmitRequest, submit};
use crate::api::tasks::{check_bearer, get_task, list_tasks, parse_limit};
use crate::callback::receive::{
    Body, Callback, CallbackError, KlingCheck, KlingLookup, MAX_BODY_BYTES, receive,
};
use crate::clock::Clock;
use crate::config::{
    CallbackConfig, ConfigError, KlingConfig, NotifyConfig, ReconcileLimits, SubmitConfig,
    Variables, api_token, retention_ms, stale_after_ms, verify_callbacks,
};
use crate::error::ApiError;
use crate::kling::catalog::TaskKind;
use crate::kling::client::{Found, KlingClient, TaskRef};
use crate::notify::Notifier;
use crate::outbound::HttpTransport;
use crate::pipeline::spec::parse_description;
use crate::reconcile::{
    DEFAULT_LIMIT, MAX_LIMIT, ReconcileOptions, reconcile, reconcile_pipelines,
};
use crate::response::Response;
use crate::router::{KlingCall, Route};
use crate::signatures::standard_webhooks::WebhookHeaders;
use crate::store::KeyValue;

/// An HTTP request, as the edge read it. Header names are lowercase. Its `Debug` shows
/// no credential: not the bearer, not a signature, not the callback URL's `sig`.
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let query: Vec<String> = form_urlencoded::parse(self.query.as_bytes())
            .map(|(name, value)| match name.as_ref() {
                "sig" => "sig=<redacted>".to_string(),
                _ => format!("{name}={value}"),
            })
            .collect();
        let body = match &self.body {
            Body::Bytes(bytes) => format!("{} bytes", bytes.len()),
            other => format!("{other:?}"),
        };
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &query.join("&"))
            .field("headers", &crate::outbound::redacted_headers(&self.headers))
            .field("body", &body)
            .finish()
    }
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// What the handlers may use: the store, the variables, outbound HTTP to Kling, the
/// clock and a source of fresh ids (injected, so tests are deterministic).
pub struct Env<'a> {
    pub kv: &'a dyn KeyValue,
    pub vars: &'a dyn Variables,
    pub http: &'a dyn HttpTransport,
    /// When the request arrived (ms since the epoch).
    pub now_ms: u64,
    /// Fresh readings during a request (a reconcile run's budget, backoffs).
    pub clock: &'a dyn Clock,
    /// 128 random bits, URL-safe: the `external_task_id` of a submit that names none.
    pub new_id: &'a dyn Fn() -> String,
}

pub struct Handled {
    pub response: Response,
    /// Work to do after the response is sent ([`crate::after_ack`]).
    pub after_ack: AfterAck,
}

impl From<Response> for Handled {
    fn from(response: Response) -> Self {
        Self {
            response,
            after_ack: AfterAck::default(),
        }
    }
}

impl<'a> Env<'a> {
    pub(crate) fn notifier(&'a self, config: &'a NotifyConfig) -> Notifier<'a> {
        Notifier::new(config, self.kv, self.http, self.clock)
    }

    pub(crate) fn submitter(&'a self, config: &'a SubmitConfig) -> Submitter<'a> {
        Submitter {
            config,
            kv: self.kv,
            transport: self.http,
            clock: self.clock,
            new_id: self.new_id,
        }
    }
}

/// Largest submit body accepted: Kling takes images as raw base64 of up to 10 MB.
pub const MAX_SUBMIT_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How much of a request body the edge reads before calling it too large: callbacks are
/// a few KiB, a submit may carry base64 images.
pub fn body_limit(path: &str) -> usize {
    match Route::parse(path) {
        Some(Route::Callback { .. }) | None => MAX_BODY_BYTES,
        Some(_) => MAX_SUBMIT_BODY_BYTES,
    }
}

/// Whether the edge may read the request's body at all, decided from the request line
/// and the headers alone: a body its route refuses anyway (no such route, another
/// method, a missing or wrong bearer) is never read, so an unauthenticated client
/// cannot make an instance buffer megabytes. Callbacks are authenticated over their
/// bytes, so they are read (up to their small limit).
///
/// An error when the bearer's variable could not be read from its provider: the body is
/// then withheld ([`Body::Withheld`]), and the request answered 503, never taken as a
/// request without a body.
pub fn may_read_body(
    method: &str,
    path: &str,
    authorization: Option<&str>,
    vars: &dyn Variables,
) -> Result<bool, ConfigError> {
    Ok(match Route::parse(path) {
        Some(route) if method == "POST" && route.allows(method) => match route {
            Route::Callback { .. } => true,
            _ => match api_token(vars) {
                Ok(token) => check_bearer(authorization, &token).is_ok(),
                Err(error @ ConfigError::Unavailable(_)) => return Err(error),
                Err(_) => false,
            },
        },
        _ => false,
    })
}

pub fn handle(request: &Request, env: &Env<'_>) -> Handled {
    let Some(route) = Route::parse(&request.path) else {
        return Response::error(&ApiError::NotFound).into();
    };
    if !route.allows(&request.method) {
        let error = match route {
            // A submit to a kind that does not exist: say that, not only "use GET".
            Route::Task { .. } if request.method == "POST" => ApiError::UnknownKind,
            _ => ApiError::MethodNotAllowed(route.allow()),
        };
        return Response::error(&error).into();
    }
    let handled = match route {
        Route::Health => Ok(health().into()),
        Route::OpenApi => Ok(openapi().into()),
        Route::Callback { external_task_id } => callback(request, external_task_id, env),
        Route::Tasks => list(request, env),
        Route::Reconcile => run_reconcile(request, env),
        Route::Pipelines => create_pipeline(request, env),
        Route::Pipeline { id } => show_pipeline(request, id, env),
        Route::Submit { kind } => submit_task(request, kind, env),
        Route::Task { id } => task_route(request, id, env),
        Route::Kinds => show_kinds(),
        Route::Kling(call) => kling_call(request, call, env),
    };
    handled.unwrap_or_else(|error| {
        if error.status_and_code().0 >= 500 {
            // Operators need to see these; the messages never contain secrets.
            eprintln!("{} {}: {error}", request.method, request.path);
        }
        Response::error(&error).into()
    })
}

fn health() -> Response {
    Response::json(
        200,
        &json!({ "status": "ok", "service": "kling-webhook", "version": env!("CARGO_PKG_VERSION") }),
    )
}

/// The document is public, like `/health`: it describes the API, it holds no data.
fn openapi() -> Response {
    Response {
        status: 200,
        headers: vec![("content-type", "application/json".to_string())],
        body: openapi_json(),
    }
}

/// `openapi.json` with `openapi.kinds.json`, merged, minified and deflated by `build.rs`
/// (about 106 KB of JSON in 13 KB); the host tests check every exchange against it.
const OPENAPI_DEFLATED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openapi.json.deflate"));

/// The document, inflated: a rare request, so it pays for the smaller component.
fn openapi_json() -> Vec<u8> {
    miniz_oxide::inflate::decompress_to_vec_with_limit(OPENAPI_DEFLATED, 4 << 20)
        .expect("build.rs deflated the document; a unit test inflates it")
}

fn list(request: &Request, env: &Env<'_>) -> Result<Handled, ApiError> {
    let page = list_tasks(
        request.query_param("status").as_deref(),
        request.query_param("limit").as_deref(),
        request.query_param("cursor").as_deref(),
        request.header("authorization"),
        env.vars,
        env.kv,
    )?;
    let next_cursor = page.next_cursor.map(|c| c.to_string());
    Ok(Response::json(
        200,
        &json!({ "tasks": page.tasks, "next_cursor": next_cursor }),
    )
    .into())
}

/// Kling, reached only if a callback needs it: its configuration is read on first use,
/// so the callbacks that never ask Kling (nearly all) read no Kling variable.
struct LazyKling<'a> {
    env: &'a Env<'a>,
}

/// The longest a callback waits on Kling per phase (connect, first byte, between bytes),
/// whatever `kling_timeout_ms` allows a submit: its sender waits for the answer, and a
/// Kling too slow to ask is a 503 that Kling retries (and the reconciler polls the task
/// meanwhile), where waiting out a minute could outlast the sender's own patience.
const CALLBACK_KLING_TIMEOUT_MS: u64 = 3_000;

impl KlingLookup for LazyKling<'_> {
    fn find(&self, kind: TaskKind, id: TaskRef<'_>) -> Result<Option<Found>, CallbackError> {
        let mut config = KlingConfig::load(self.env.vars)?;
        config.timeout_ms = config.timeout_ms.min(CALLBACK_KLING_TIMEOUT_MS);
        KlingClient::new(&config, self.env.http, self.env.now_ms / 1000)
            .find(kind, id)
            .map_err(CallbackError::Verification)
    }
}

fn run_reconcile(request: &Request, env: &Env<'_>) -> Result<Handled, ApiError> {
    check_bearer(request.header("authorization"), &api_token(env.vars)?)?;
    let limit = parse_limit(
        request.query_param("limit").as_deref(),
        DEFAULT_LIMIT,
        MAX_LIMIT,
    )?;
    let mut options = ReconcileOptions {
        limit,
        stale_after_ms: stale_after_ms(env.vars)?,
        retention_ms: retention_ms(env.vars)?,
        limits: ReconcileLimits::load(env.vars)?,
    };
    let kling = KlingConfig::load(env.vars)?;
    // Every variable is read before anything is done: a misconfigured run changes nothing.
    let notify = NotifyConfig::load(env.vars)?;
    // Only a deployment that can submit has pipelines to move on; one whose provider
    // cannot answer is not taken for one that cannot submit.
    let submit = match SubmitConfig::load(env.vars) {
        Ok(config) => Some(config),
        Err(error @ ConfigError::Unavailable(_)) => return Err(error.into()),
        Err(_) => None,
    };
    // One budget for the whole run. The outbox goes first, within a quarter of it, so
    // that a Kling that times out (one poll can take three times `kling_timeout_ms`)
    // holds back no notification, which needs no Kling, and a slow receiver no poll;
    // then tasks, no poll starting past two thirds of what is left, so that polls alone
    // do not use the run up (steps to submit, ends to announce); then pipelines;
    // then the outbox again with what is left (this run's own failed sends wait for
    // their retry time), which counts what stays pending.
    let started = env.clock.now_ms();
    let deadline_ms = started.saturating_add(options.limits.budget_ms);
    let notifier = notify.as_ref().map(|config| env.notifier(config));
    let sent_first = match &notifier {
        Some(notifier) => {
            let quarter = options.limits.budget_ms / 4;
            notifier.retry_due(started.saturating_add(quarter))?.sent
        }
        None => 0,
    };
    let left = deadline_ms.saturating_sub(env.clock.now_ms());
    options.limits.budget_ms = left - left / 3;
    let mut report = reconcile(
        env.kv,
        &kling,
        env.http,
        env.clock,
        options,
        notifier.as_ref(),
    )?;
    if let Some(config) = &submit {
        reconcile_pipelines(
            &env.submitter(config),
            notifier.as_ref(),
            deadline_ms,
            &mut report,
        )?;
    }
    if let Some(notifier) = &notifier {
        let outbox = notifier.retry_due(deadline_ms)?;
        report.notifications_sent = sent_first + outbox.sent;
        report.notifications_pending = outbox.pending;
    }
    Ok(Response::json(200, &report).into())
}

fn request_body(request: &Request) -> Result<&[u8], ApiError> {
    match &request.body {
        Body::Bytes(bytes) => Ok(bytes.as_slice()),
        Body::TooLarge => Err(ApiError::SubmitTooLarge),
        Body::Unreadable => Err(CallbackError::UnreadableBody.into()),
        Body::Withheld(error) => Err(error.clone().into()),
    }
}

fn create_pipeline(request: &Request, env: &Env<'_>) -> Result<Handled, ApiError> {
    check_bearer(request.header("authorization"), &api_token(env.vars)?)?;
    let config = SubmitConfig::load(env.vars)?;
    let (id, steps) = parse_description(request_body(request)?).map_err(PipelineError::from)?;
    let created = pipelines::create(
        NewPipeline {
            id,
            steps,
            idempotency_key: request.header("idempotency-key"),
        },
        &env.submitter(&config),
    )?;
    let status = if created.created { 202 } else { 200 };
    Ok(Response::json(status, &created.view).into())
}

fn show_pipeline(request: &Request, id: &str, env: &Env<'_>) -> Result<Handled, ApiError> {
    check_bearer(request.header("authorization"), &api_token(env.vars)?)?;
    let view = pipelines::get(id, env.kv)?.ok_or(ApiError::PipelineNotFound)?;
    Ok(Response::json(200, &view).into())
}

/// Public, like `/openapi.json`: it describes the API and holds no data.
fn show_kinds() -> Result<Handled, ApiError> {
    Ok(Response::json(200, &kinds()).into())
}

fn kling_call(request: &Request, call: KlingCall, env: &Env<'_>) -> Result<Handled, ApiError> {
    check_bearer(request.header("authorization"), &api_token(env.vars)?)?;
    let config = KlingConfig::load(env.vars)?;
    let answer = pass_through(
        call,
        request_body(request)?,
        &config,
        env.http,
        env.now_ms / 1000,
    )?;
    Ok(Response::json(200, &answer).into())
}

fn submit_task(request: &Request, kind: TaskKind, env: &Env<'_>) -> Result<Handled, ApiError> {
    check_bearer(request.header("authorization"), &api_token(env.vars)?)?;
    let config = SubmitConfig::load(env.vars)?;
    let submitted = submit(
        &SubmitRequest {
            kind,
            body: request_body(request)?,
            idempotency_key: request.header("idempotency-key"),
            pipeline: None,
        },
        &config,
        env.kv,
        env.http,
        env.clock,
        env.new_id,
    )?;
    let status = if submitted.created { 202 } else { 200 };
    Ok(Response::json(status, &submitted.record).into())
}

fn callback(
    request: &Request,
    external_task_id: Option<&str>,
    env: &Env<'_>,
) -> Result<Handled, ApiError> {
    let sig = request.query_param("sig");
    let delivery = Callback {
        external_task_id,
        sig: sig.as_deref(),
        content_type: request.header("content-type"),
        webhook: WebhookHeaders {
            id: request.header("webhook-id"),
            timestamp: request.header("webhook-timestamp"),
            signature: request.header("webhook-signature"),
        },
        body: &request.body,
    };
    // Read only if needed: a repeat the task's head recognises is answered without it.
    let config = || CallbackConfig::load(env.vars, delivery.can_use_webhook_key());
    let kling = KlingCheck {
        lookup: &LazyKling { env },
        verify_finals: &|| verify_callbacks(env.vars),
    };
    let received = receive(&delivery, &config, env.kv, &kling, env.now_ms)?;
    Ok(Handled {
        response: Response::json(
            200,
            &json!({ "received": true, "outcome": received.verdict.as_str() }),
        ),
        after_ack: AfterAck {
            bookkeeping: received.bookkeeping,
            news: received.news,
            changed: None,
        },
    })
}

/// `GET /tasks/{id}`, with read repair: a stale unfinished task is asked about once.
fn task_route(request: &Request, id: &str, env: &Env<'_>) -> Result<Handled, ApiError> {
    let shown = get_task(id, request.header("authorization"), env)?;
    Ok(Handled {
        response: Response::json(200, &shown.record),
        after_ack: shown.after_ack(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_document_inflates_to_the_repository_s_two_files_merged() {
        let served: serde_json::Value = serde_json::from_slice(&openapi_json()).unwrap();
        let read = |name: &str| -> serde_json::Value {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        };
        let (base, kinds) = (read("openapi.json"), read("openapi.kinds.json"));
        assert_eq!(served["info"], base["info"]);
        assert_eq!(served["paths"]["/health"], base["paths"]["/health"]);
        assert_eq!(
            served["paths"]["/tasks/text-to-video/kling-3.0"],
            kinds["paths"]["/tasks/text-to-video/kling-3.0"]
        );
        assert!(
            OPENAPI_DEFLATED.len() * 4 < openapi_json().len(),
            "deflated"
        );
    }

    #[test]
    fn a_body_is_read_only_for_a_route_that_takes_it_from_this_caller() {
        use crate::config::tests::MapVariables;
        let vars = MapVariables(std::collections::HashMap::from([(
            crate::config::API_TOKEN,
            "token-of-sixteen-bytes",
        )]));
        let bearer = Some("Bearer token-of-sixteen-bytes");
        for (method, path, authorization, read) in [
            ("POST", "/callbacks/kling/job-1", None, true),
            ("POST", "/callbacks/kling", None, true),
            ("POST", "/tasks/text2video", bearer, true),
            ("POST", "/pipelines", bearer, true),
            ("POST", "/tasks/reconcile", bearer, true),
            ("POST", "/tasks/text-to-video/kling-3.0", bearer, true),
            ("POST", "/kling/tts", bearer, true),
            ("POST", "/kling/tts", None, false),
            ("GET", "/kinds", None, false),
            ("POST", "/tasks/text2video", None, false),
            ("POST", "/tasks/text2video", Some("Bearer wrong"), false),
            ("POST", "/pipelines", Some("token-of-sixteen-bytes"), false),
            ("GET", "/tasks/job-1", bearer, false),
            ("POST", "/health", bearer, false),
            ("POST", "/nowhere", bearer, false),
        ] {
            assert_eq!(
                may_read_body(method, path, authorization, &vars),
                Ok(read),
                "{method} {path} {authorization:?}"
            );
        }
        let unconfigured = MapVariables(Default::default());
        assert_eq!(
            may_read_body("POST", "/pipelines", bearer, &unconfigured),
            Ok(false)
        );
        // A provider that cannot answer: undecided, so the body is withheld and the
        // request answered 503 (not read as one without a body).
        struct Down;
        impl Variables for Down {
            fn get(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
                Err(ConfigError::Unavailable(name))
            }
        }
        assert_eq!(
            may_read_body("POST", "/pipelines", bearer, &Down),
            Err(ConfigError::Unavailable("api_token"))
        );
        let withheld = Request {
            method: "POST".into(),
            path: "/pipelines".into(),
            query: String::new(),
            headers: Vec::new(),
            body: Body::Withheld(ConfigError::Unavailable("api_token")),
        };
        let error = request_body(&withheld).unwrap_err();
        assert_eq!(error.status_and_code(), (503, "config_unavailable"));
    }

    #[test]
    fn debug_prints_of_requests_show_no_credential() {
        let request = Request {
            method: "POST".into(),
            path: "/callbacks/kling/job-1".into(),
            query: "sig=SIG-VALUE&limit=5".into(),
            headers: vec![
                ("authorization".into(), "Bearer TOKEN-VALUE".into()),
                ("webhook-signature".into(), "v1,SIGNATURE-VALUE".into()),
                ("content-type".into(), "application/json".into()),
            ],
            body: Body::Bytes(b"{}".to_vec()),
        };
        let outbound = crate::outbound::OutboundRequest {
            method: "POST",
            url: "https://api.klingai.com/v1/videos/text2video".into(),
            headers: vec![
                ("authorization", "Bearer TOKEN-VALUE".into()),
                ("webhook-signature", "v1,SIGNATURE-VALUE".into()),
            ],
            body: b"{}".to_vec(),
            timeout_ms: 1,
        };
        for shown in [format!("{request:?}"), format!("{outbound:?}")] {
            for secret in ["SIG-VALUE", "TOKEN-VALUE", "SIGNATURE-VALUE"] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert!(format!("{request:?}").contains("limit=5"));
    }

    #[test]
    fn callbacks_are_limited_to_256_kib_and_submits_and_pipelines_to_16_mib() {
        assert_eq!(body_limit("/callbacks/kling/job-1"), 256 * 1024);
        assert_eq!(body_limit("/callbacks/kling"), 256 * 1024);
        assert_eq!(body_limit("/tasks/image2video"), 16 * 1024 * 1024);
        assert_eq!(body_limit("/pipelines"), 16 * 1024 * 1024);
        assert_eq!(body_limit("/nowhere"), 256 * 1024);
    }
}
