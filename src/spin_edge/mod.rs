//! The Spin edge: converts Spin's request into [`app::Request`], gives the core Spin's
//! key-value store, variables and clock, sends the response, and only then applies the
//! callback's bookkeeping, so Kling's acknowledgement never waits for it.
//!
//! Nothing here decides anything; it is glue over spin-sdk 5.2 (`wasi:http` 0.2).

mod host_apis;
mod outbound;
mod wit_exports;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use spin_sdk::http::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use spin_sdk::http_component;
use spin_sdk::wit::wasi::http0_2_0::types;
use wasi::io::streams::OutputStream;

use crate::app::{self, Env, Request};
use crate::callback::receive::Body;
use crate::clock::Clock;
use crate::response::Response;
use host_apis::{SpinKeyValue, SpinVariables};
use outbound::SpinOutbound;

#[http_component]
async fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
    let request = read_request(request).await;
    with_env(|env| {
        let handled = app::handle(&request, env);
        send(response_out, handled.response);
        crate::after_ack::run(handled.after_ack, env);
    });
}

/// The core's view of the host: Spin's stores, variables, outbound HTTP and clocks.
fn with_env<R>(work: impl FnOnce(&Env<'_>) -> R) -> R {
    let kv = SpinKeyValue::default();
    work(&Env {
        kv: &kv,
        vars: &SpinVariables,
        http: &SpinOutbound,
        now_ms: now_ms(),
        clock: &HostClock,
        new_id: &new_id,
    })
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
    // Never read a body the router will refuse anyway, an unauthenticated one included.
    let authorization = headers
        .iter()
        .find(|(name, _)| name == "authorization")
        .map(|(_, value)| value.as_str());
    let body = match app::may_read_body(&method, &path, authorization, &SpinVariables) {
        Ok(true) => read_body(request, &headers, app::body_limit(&path)).await,
        Ok(false) => Body::Bytes(Vec::new()),
        Err(error) => Body::Withheld(error),
    };
    Request {
        method,
        path,
        query,
        headers,
        body,
    }
}

/// The most memory reserved up front for a body, whatever its `Content-Length` says.
const MAX_PREALLOCATED: usize = 64 * 1024;

/// Reads at most `limit` + 1 bytes: enough to know a body is too large without
/// buffering all of it.
async fn read_body(request: IncomingRequest, headers: &[(String, String)], limit: usize) -> Body {
    let declared = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Body::TooLarge;
    }
    let mut stream = request.into_body_stream();
    let mut body = Vec::with_capacity(declared.unwrap_or(4096).min(limit).min(MAX_PREALLOCATED));
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > limit {
                    return Body::TooLarge;
                }
            }
            Err(_) => return Body::Unreadable,
        }
    }
    Body::Bytes(body)
}

/// Sends the response with its body already written, flushed and finished when the body
/// stream takes it whole, as Spin's does for a body of up to a megabyte (every body of
/// ours), and only then hands the response over. Spin's HTTP server leaves Nagle's
/// algorithm on: a response handed over first could have its head leave on its own, and
/// the body, written a moment later, then waited for the client's delayed ACK (40 ms on
/// Linux), about one duplicate in three on a kept-alive connection. A body the stream
/// will not take whole is streamed after the hand-over.
fn send(response_out: ResponseOutparam, response: Response) {
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
    let Some((body, stream)) = outgoing.body().ok().and_then(|body| {
        let stream = body.write().ok()?;
        Some((body, stream))
    }) else {
        eprintln!("could not open the response body");
        // Spin answers a 500 for the component.
        return types::ResponseOutparam::set(
            response_out.into_inner(),
            Err(ErrorCode::InternalError(Some("response body".into()))),
        );
    };
    let mut unsent = Unsent(Some((response_out, outgoing)));
    let written = write_all(&stream, &response.body, &mut unsent);
    drop(stream);
    // A body left unfinished tells the reader it broke off.
    if written && OutgoingBody::finish(body, None).is_err() {
        eprintln!("could not finish the response body");
    }
    unsent.hand_over();
}

/// The response until it is handed over, which happens once.
struct Unsent(Option<(ResponseOutparam, OutgoingResponse)>);

impl Unsent {
    fn hand_over(&mut self) {
        if let Some((response_out, outgoing)) = self.0.take() {
            response_out.set(outgoing);
        }
    }
}

/// Writes all of `bytes`, then flushes. Whenever the stream is full, hands the response
/// over (so that its reader drains the stream) and waits. False if the stream failed.
fn write_all(stream: &OutputStream, mut bytes: &[u8], unsent: &mut Unsent) -> bool {
    let mut flushed = false;
    loop {
        let outcome = match stream.check_write() {
            Ok(0) => {
                unsent.hand_over();
                stream.subscribe().block();
                Ok(())
            }
            Ok(permitted) if !bytes.is_empty() => {
                let take = bytes
                    .len()
                    .min(usize::try_from(permitted).unwrap_or(usize::MAX));
                let written = stream.write(&bytes[..take]);
                bytes = &bytes[take..];
                written
            }
            Ok(_) if !flushed => {
                flushed = true;
                stream.flush()
            }
            Ok(_) => return true,
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            eprintln!("could not send the response: {error}");
            return false;
        }
    }
}

/// 128 random bits from the host, base64url: a valid `external_task_id`.
pub(crate) fn new_id() -> String {
    URL_SAFE_NO_PAD.encode(spin_sdk::wit::wasi::random0_2_0::random::get_random_bytes(
        16,
    ))
}

/// The host's clocks: wall time, and `wasi:clocks` monotonic waits.
pub(crate) struct HostClock;

impl Clock for HostClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
