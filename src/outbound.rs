//! Outbound HTTP as the core describes it: to Kling, and to `notify_url`. Spin's
//! `wasi:http` in the component (`spin_edge/outbound.rs`), a scripted one in unit tests,
//! and a loopback server in the host tests.

/// One outbound HTTP exchange, as the core describes it. Its `Debug` shows no
/// credential (see [`redacted_headers`]).
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Connect, first byte and between bytes, each.
    pub timeout_ms: u64,
}

impl std::fmt::Debug for OutboundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &redacted_headers(&self.headers))
            .field("body_bytes", &self.body.len())
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// Headers for a `Debug` print: the value of any that carries a credential (the Kling
/// bearer, the API token, a signature) is replaced.
pub fn redacted_headers<N: AsRef<str>, V: AsRef<str>>(headers: &[(N, V)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_ref();
            let secret = name.eq_ignore_ascii_case("authorization") || name.ends_with("signature");
            let value = if secret { "<redacted>" } else { value.as_ref() };
            (name.to_string(), value.to_string())
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("no answer in time")]
    Timeout,
    /// The request certainly never reached the server (refused before anything was sent:
    /// a URL or header the host rejects, a host it does not allow, no such host, a
    /// refused connection), so nothing can have been created by it.
    #[error("could not connect: {0}")]
    NotSent(String),
    /// The exchange broke off after the request may have left.
    #[error("the exchange failed: {0}")]
    Failed(String),
    #[error("the response is larger than 4 MiB")]
    ResponseTooLarge,
}

/// The largest response body a transport reads (Kling's answers are a few KiB).
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Outbound HTTP, so the core never names Spin.
pub trait HttpTransport {
    fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, TransportError>;
}

#[cfg(test)]
pub(crate) mod scripted {
    //! A [`HttpTransport`] for unit tests: scripted answers in order, and what was sent.
    use super::*;
    use std::cell::RefCell;

    /// One scripted answer: (HTTP status, body), or no answer at all.
    pub type Answer<'a> = Result<(u16, &'a str), TransportError>;

    pub struct Scripted {
        answers: RefCell<Vec<Result<OutboundResponse, TransportError>>>,
        pub sent: RefCell<Vec<OutboundRequest>>,
    }

    impl Scripted {
        pub fn new(answers: Vec<Answer<'_>>) -> Self {
            let answers = answers
                .into_iter()
                .rev()
                .map(|a| {
                    a.map(|(status, body)| OutboundResponse {
                        status,
                        body: body.as_bytes().to_vec(),
                    })
                })
                .collect();
            Self {
                answers: RefCell::new(answers),
                sent: RefCell::default(),
            }
        }
    }

    impl HttpTransport for Scripted {
        fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, TransportError> {
            self.sent.borrow_mut().push(request);
            self.answers
                .borrow_mut()
                .pop()
                .expect("an answer is scripted")
        }
    }

    /// Scripted answers, each given after `meanwhile` has run: what another instance
    /// (or a failing store) does while a request is on its way.
    pub struct Meanwhile<'a> {
        pub answers: Scripted,
        meanwhile: Box<dyn Fn() + 'a>,
    }

    impl<'a> Meanwhile<'a> {
        pub fn new(answers: Vec<Answer<'_>>, meanwhile: impl Fn() + 'a) -> Self {
            Self {
                answers: Scripted::new(answers),
                meanwhile: Box::new(meanwhile),
            }
        }
    }

    impl HttpTransport for Meanwhile<'_> {
        fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, TransportError> {
            (self.meanwhile)();
            self.answers.send(request)
        }
    }
}
