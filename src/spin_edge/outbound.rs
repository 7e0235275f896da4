//! Outbound HTTP (to Kling and to `notify_url`) over `wasi:http`, with timeouts
//! (`spin_sdk::http::send` takes no request options, and a server that never answers
//! must not hang a submit or a reconcile run). `wasi:http`'s timeouts are per phase
//! (connect, first byte, between bytes): a server that sends a byte now and then would
//! pass them all for ever, so the body also has a deadline of its own.
//!
//! Synchronous on purpose: one instance serves one request, so blocking on the pollable
//! costs nothing and keeps this short.

use spin_sdk::wit::wasi::http0_2_0::outgoing_handler;
use spin_sdk::wit::wasi::http0_2_0::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::clocks::monotonic_clock;
use wasi::io::poll;
use wasi::io::streams::StreamError;

use crate::outbound::{
    HttpTransport, MAX_RESPONSE_BYTES, OutboundRequest, OutboundResponse, TransportError,
};

pub struct SpinOutbound;

/// `wasi:io` writes take at most 4096 bytes at a time.
const WRITE_CHUNK: usize = 4096;

impl HttpTransport for SpinOutbound {
    fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, TransportError> {
        let (scheme, rest) = request
            .url
            .split_once("://")
            .ok_or_else(|| failed("the URL has no scheme"))?;
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
        let fields = Fields::from_list(&headers).map_err(|e| failed(format!("headers: {e:?}")))?;
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
        outgoing.set_method(&method).map_err(|_| failed("method"))?;
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|_| failed("scheme"))?;
        outgoing
            .set_authority(Some(authority))
            .map_err(|_| failed("authority"))?;
        outgoing
            .set_path_with_query(Some(path))
            .map_err(|_| failed("path"))?;
        let body = outgoing.body().map_err(|_| failed("request body"))?;

        let options = RequestOptions::new();
        let timeout_ns = request.timeout_ms.saturating_mul(1_000_000);
        // A host that does not support one of these still applies the others.
        let _ = options.set_connect_timeout(Some(timeout_ns));
        let _ = options.set_first_byte_timeout(Some(timeout_ns));
        let _ = options.set_between_bytes_timeout(Some(timeout_ns));
        let future = outgoing_handler::handle(outgoing, Some(options)).map_err(error_code)?;

        {
            let stream = body.write().map_err(|_| failed("request body stream"))?;
            for chunk in request.body.chunks(WRITE_CHUNK) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| failed(format!("writing the request: {e:?}")))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(error_code)?;

        future.subscribe().block();
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
                let ready = poll::poll(&[&readable, &deadline]);
                if !ready.contains(&0) {
                    return Err(TransportError::Timeout);
                }
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

fn failed(what: impl Into<String>) -> TransportError {
    TransportError::Failed(what.into())
}

fn error_code(code: ErrorCode) -> TransportError {
    match code {
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::HttpResponseTimeout => TransportError::Timeout,
        other => failed(format!("{other:?}")),
    }
}
