//! The Spin edge: converts Spin's request into [`app::Request`], gives the core Spin's
//! key-value store, variables and clock, sends the response, and only then applies the
//! callback's bookkeeping, so Kling's acknowledgement never waits for it.
//!
//! Nothing here decides anything; it is glue over spin-sdk 5.2 (`wasi:http` 0.2).

use std::cell::OnceCell;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use spin_sdk::http::{Fields, IncomingRequest, Method, OutgoingResponse, ResponseOutparam};
use spin_sdk::http_component;
use spin_sdk::key_value::{self, Store};

use crate::app::{self, Env, Request};
use crate::callback::receive::{Body, MAX_BODY_BYTES};
use crate::config::Variables;
use crate::response::Response;
use crate::store::{KeyValue, StoreError};

#[http_component]
async fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
    let request = read_request(request).await;
    let kv = SpinKeyValue::default();
    let env = Env {
        kv: &kv,
        vars: &SpinVariables,
        now_ms: now_ms(),
    };
    let handled = app::handle(&request, &env);
    send(response_out, handled.response).await;
    if let Some(bookkeeping) = handled.after_ack
        && let Err(error) = bookkeeping.apply(&kv)
    {
        // The delivery's state is stored; only counters or the task_id index are
        // behind, and the next delivery for the task writes them again.
        eprintln!("callback bookkeeping after the acknowledgement failed: {error}");
    }
}

async fn read_request(request: IncomingRequest) -> Request {
    let method = match request.method() {
        Method::Other(other) => other,
        method => method.to_string(),
    };
    let path_with_query = request.path_with_query().unwrap_or_default();
    let (path, query) = match path_with_query.split_once('?') {
        Some((path, query)) => (path.to_string(), query.to_string()),
        None => (path_with_query, String::new()),
    };
    let headers = request
        .headers()
        .entries()
        .into_iter()
        .filter_map(|(name, value)| {
            Some((name.to_ascii_lowercase(), String::from_utf8(value).ok()?))
        })
        .collect::<Vec<_>>();
    // Only POST routes have bodies; never read one the router will refuse anyway.
    let body = if method == "POST" {
        read_body(request, &headers).await
    } else {
        Body::Bytes(Vec::new())
    };
    Request {
        method,
        path,
        query,
        headers,
        body,
    }
}

/// Reads at most [`MAX_BODY_BYTES`] + 1 bytes: enough to know a body is too large
/// without buffering all of it.
async fn read_body(request: IncomingRequest, headers: &[(String, String)]) -> Body {
    let declared = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return Body::TooLarge;
    }
    let mut stream = request.into_body_stream();
    let mut body = Vec::with_capacity(declared.unwrap_or(4096).min(MAX_BODY_BYTES));
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY_BYTES {
                    return Body::TooLarge;
                }
            }
            Err(_) => return Body::Unreadable,
        }
    }
    Body::Bytes(body)
}

async fn send(response_out: ResponseOutparam, response: Response) {
    let headers: Vec<(String, Vec<u8>)> = response
        .headers
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.into_bytes()))
        .collect();
    let outgoing =
        OutgoingResponse::new(Fields::from_list(&headers).unwrap_or_else(|_| Fields::new()));
    if outgoing.set_status_code(response.status).is_err() {
        eprintln!("could not set response status {}", response.status);
    }
    // Returns once the body is written and finished: the client has its answer.
    if let Err(error) = response_out.set_with_body(outgoing, response.body).await {
        eprintln!("could not send the response: {error}");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct SpinVariables;

impl Variables for SpinVariables {
    fn get(&self, name: &str) -> Option<String> {
        spin_sdk::variables::get(name)
            .ok()
            .filter(|value| !value.is_empty())
    }
}

/// Spin's `default` store, opened on first use (routes that need no store never open it).
#[derive(Default)]
struct SpinKeyValue {
    store: OnceCell<Result<Store, StoreError>>,
}

impl SpinKeyValue {
    fn store(&self) -> Result<&Store, StoreError> {
        self.store
            .get_or_init(|| Store::open_default().map_err(store_error))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl KeyValue for SpinKeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store()?.get(key).map_err(store_error)
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.store()?.set(key, value).map_err(store_error)
    }
}

fn store_error(error: key_value::Error) -> StoreError {
    match error {
        key_value::Error::AccessDenied | key_value::Error::NoSuchStore => StoreError::NotConfigured,
        other => StoreError::Unavailable(other.to_string()),
    }
}
