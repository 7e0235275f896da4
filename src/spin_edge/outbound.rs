//! Outbound HTTP (to Kling and to `notify_url`) over `wasi:http`, with timeouts
//! (`spin_sdk::http::send` takes no request options, and a server that never answers
//! must not hang a submit or a reconcile run). `wasi:http`'s timeouts are per phase
//! (connect, first byte, between bytes), and a host may not apply one: a server that
//! reads or sends a byte now and then would pass them all for ever. So the exchange
//! also has deadlines of its own on the monotonic clock: the request sent and the
//! headers back within two timeouts, the body within one more.
//!
//! Synchronous on purpose: one instance serves one request, so blocking on the pollable
//! costs nothing and keeps this short.

use spin_sdk::wit::wasi::http0_2_0::outgoing_handler;
use spin_sdk::wit::wasi::http0_2_0::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::clocks::monotonic_clock;
use wasi::io::poll::{self, Pollable};
use wasi::io::streams::StreamError;

use crate::outbound::{
    HttpTransport, MAX_RESPONSE_BYTES, OutboundRequest, OutboundResponse, TransportError,
};

pub struct SpinOutbound;

/// Bytes written at a time, at most (and never more than the stream permits).
const WRITE_CHUNK: usize = 4096;

impl HttpTransport for SpinOutbound {
    fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, TransportError> {
        let (scheme, rest) = request
            .url
            .split_once("://")
            .ok_or_else(|| not_sent("the URL has no scheme"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let mut headers: Vec<(String, Vec<u8>)> = request
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect();
        if !request.body.is_empty() {
            headers.push((
                "content-length".into(),
                request.body.len().to_string().into_bytes(),
            ));
        }
        let fields =
            Fields::from_list(&headers).map_err(|e| not_sent(format!("headers: {e:?}")))?;
        let outgoing = OutgoingRequest::new(fields);
        let method = if request.method == "GET" {
            Method::Get
        } else {
            Method::Post
        };
        let scheme = if scheme == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        };
        outgoing
            .set_method(&method)
            .map_err(|_| not_sent("method"))?;
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|_| not_sent("scheme"))?;
        outgoing
            .set_authority(Some(authority))
            .map_err(|_| not_sent("authority"))?;
        outgoing
            .set_path_with_query(Some(path))
            .map_err(|_| not_sent("path"))?;
        let body = outgoing.body().map_err(|_| not_sent("request body"))?;

        let options = RequestOptions::new();
        let timeout_ns = request.timeout_ms.saturating_mul(1_000_000);
        let headers_deadline = monotonic_clock::subscribe_duration(timeout_ns.saturating_mul(2));
        // A host that does not support one of these still applies the others.
        let _ = options.set_connect_timeout(Some(timeout_ns));
        let _ = options.set_first_byte_timeout(Some(timeout_ns));
        let _ = options.set_between_bytes_timeout(Some(timeout_ns));
        // An error here is the host refusing the request before sending it (a host it
        // does not allow, a URL it cannot use).
        let future = outgoing_handler::handle(outgoing, Some(options))
            .map_err(|code| not_sent(format!("{code:?}")))?;

        {
            let stream = body.write().map_err(|_| failed("request body stream"))?;
            let writable = stream.subscribe();
            let writing = |e| failed(format!("writing the request: {e:?}"));
            let mut rest = request.body.as_slice();
            while !rest.is_empty() {
                wait(&writable, &headers_deadline)?;
                let room = stream.check_write().map_err(writing)?;
                let room = usize::try_from(room)
                    .unwrap_or(usize::MAX)
                    .min(WRITE_CHUNK)
                    .min(rest.len());
                if room == 0 {
                    continue;
                }
                let (now, later) = rest.split_at(room);
                stream.write(now).map_err(writing)?;
                rest = later;
            }
            // Flushed once the stream takes writes again. A host may close the stream
            // as soon as the `content-length` it was given is written (Spin does): that
            // is the body done, not an error.
            let closed = match stream.flush() {
                Ok(()) => false,
                Err(StreamError::Closed) => true,
                Err(e) => return Err(writing(e)),
            };
            if !closed {
                loop {
                    wait(&writable, &headers_deadline)?;
                    match stream.check_write() {
                        Ok(0) => {}
                        Ok(_) | Err(StreamError::Closed) => break,
                        Err(e) => return Err(writing(e)),
                    }
                }
            }
        }
        OutgoingBody::finish(body, None).map_err(error_code)?;

        wait(&future.subscribe(), &headers_deadline)?;
        let response = future
            .get()
            .ok_or_else(|| failed("no response after waiting"))?
            .map_err(|_| failed("response taken twice"))?
            .map_err(error_code)?;
        let status = response.status();
        let incoming = response.consume().map_err(|_| failed("response body"))?;
        let mut bytes = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|_| failed("response body stream"))?;
            // The whole body within one more timeout after the headers.
            let deadline = monotonic_clock::subscribe_duration(timeout_ns);
            let readable = stream.subscribe();
            loop {
                wait(&readable, &deadline)?;
                match stream.read(64 * 1024) {
                    Ok(chunk) => {
                        bytes.extend_from_slice(&chunk);
                        if bytes.len() > MAX_RESPONSE_BYTES {
                            return Err(TransportError::ResponseTooLarge);
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(e) => return Err(failed(format!("reading the response: {e:?}"))),
                }
            }
        }
        Ok(OutboundResponse {
            status,
            body: bytes,
        })
    }
}

/// Waits until `ready` is, or the deadline has passed (a timeout, even if both are:
/// a stream that keeps reporting ready with nothing in it must not outlast it).
fn wait(ready: &Pollable, deadline: &Pollable) -> Result<(), TransportError> {
    if poll::poll(&[ready, deadline]).contains(&1) {
        return Err(TransportError::Timeout);
    }
    Ok(())
}

fn failed(what: impl Into<String>) -> TransportError {
    TransportError::Failed(what.into())
}

fn not_sent(what: impl Into<String>) -> TransportError {
    TransportError::NotSent(what.into())
}

/// `wasi:http`'s error, by whether the request may have reached the server. Only
/// errors that end an exchange before its request is written count as not sent: no
/// name, no route, a refused connection, a certificate refused in the handshake, a
/// request the host denies. A connect timeout stays a timeout, as a host may report a
/// slow exchange so.
fn error_code(code: ErrorCode) -> TransportError {
    match code {
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::HttpResponseTimeout => TransportError::Timeout,
        ErrorCode::DnsTimeout
        | ErrorCode::DnsError(_)
        | ErrorCode::DestinationNotFound
        | ErrorCode::DestinationIpProhibited
        | ErrorCode::DestinationIpUnroutable
        | ErrorCode::ConnectionRefused
        | ErrorCode::TlsCertificateError
        | ErrorCode::HttpRequestDenied
        | ErrorCode::HttpRequestUriInvalid => not_sent(format!("{code:?}")),
        other => failed(format!("{other:?}")),
    }
}
