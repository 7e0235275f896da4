//! The dispatcher: one request in, one response (and any after-acknowledgement work)
//! out. One small function per route; the Spin edge only converts types.

use serde_json::json;

use crate::api::tasks::get_task;
use crate::callback::receive::{Body, Callback, receive};
use crate::config::{CallbackConfig, Variables};
use crate::error::ApiError;
use crate::response::Response;
use crate::router::Route;
use crate::signatures::standard_webhooks::WebhookHeaders;
use crate::store::KeyValue;
use crate::store::tasks::Bookkeeping;

/// An HTTP request, as the edge read it. Header names are lowercase.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
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

/// What the handlers may use: the store, the variables and the clock (injected, so
/// tests are deterministic).
pub struct Env<'a> {
    pub kv: &'a dyn KeyValue,
    pub vars: &'a dyn Variables,
    pub now_ms: u64,
}

pub struct Handled {
    pub response: Response,
    /// Writes to make after the response is sent (a callback's bookkeeping).
    pub after_ack: Option<Bookkeeping>,
}

impl From<Response> for Handled {
    fn from(response: Response) -> Self {
        Self {
            response,
            after_ack: None,
        }
    }
}

pub fn handle(request: &Request, env: &Env<'_>) -> Handled {
    let Some(route) = Route::parse(&request.path) else {
        return Response::error(&ApiError::NotFound).into();
    };
    if request.method != route.method() {
        return Response::error(&ApiError::MethodNotAllowed(route.method())).into();
    }
    let handled = match route {
        Route::Health => Ok(health().into()),
        Route::Callback { external_task_id } => callback(request, external_task_id, env),
        Route::Task { id } => get_task(id, request.header("authorization"), env.vars, env.kv)
            .map(|task| Response::json(200, &task).into()),
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

fn callback(
    request: &Request,
    external_task_id: Option<&str>,
    env: &Env<'_>,
) -> Result<Handled, ApiError> {
    let config = CallbackConfig::load(env.vars)?;
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
    let received = receive(&delivery, &config, env.kv, env.now_ms)?;
    Ok(Handled {
        response: Response::json(
            200,
            &json!({ "received": true, "outcome": received.verdict.as_str() }),
        ),
        after_ack: Some(received.bookkeeping),
    })
}
