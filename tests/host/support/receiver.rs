//! The next system: a loopback HTTP server that receives kling-webhook's notifications,
//! verifies them with the Standard Webhooks reference library (`standardwebhooks`, an
//! implementation independent of the component's), and can refuse the first few.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::Value;

/// The notification signing secret the tests deploy with.
pub const NOTIFY_SECRET: &str = "whsec_bmV4dC1zeXN0ZW0tc2lnbmluZy1rZXktMzItYnl0ZXM=";

#[derive(Debug, Clone)]
pub struct Message {
    pub webhook_id: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    /// Verified messages this receiver accepted (answered 2xx).
    accepted: Vec<Message>,
    /// Requests answered 503 on purpose.
    refused: usize,
    /// Requests whose signature did not verify.
    forged: usize,
    refuse_next: usize,
    /// Answer this many more with 200 and a 5 MiB body (a broken or hostile peer).
    flood_next: usize,
}

#[derive(Clone)]
pub struct Receiver {
    url: String,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Serves on a free loopback port; refuses (503) the first `refuse_first` requests.
    pub async fn start(refuse_first: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            url: format!("http://{}/hooks/kling", listener.local_addr().unwrap()),
            state: Arc::new(Mutex::new(State {
                refuse_next: refuse_first,
                ..State::default()
            })),
        };
        let server = receiver.clone();
        kling_standin::serve(listener, move |request| {
            let server = server.clone();
            async move { server.handle(request).await }
        });
        receiver
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `http://127.0.0.1:{port}`: what `notify_origin` must be for this receiver.
    pub fn origin(&self) -> String {
        self.url.split('/').take(3).collect::<Vec<_>>().join("/")
    }

    pub fn accepted(&self) -> Vec<Message> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }

    /// The next `n` requests get 200 with a 5 MiB body, and are not accepted.
    pub fn flood_next(&self, n: usize) {
        self.state.lock().unwrap().flood_next = n;
    }

    pub fn forged(&self) -> usize {
        self.state.lock().unwrap().forged
    }

    async fn handle(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let headers = request.headers().clone();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let webhook = standardwebhooks::Webhook::new(NOTIFY_SECRET).unwrap();
        let mut state = self.state.lock().unwrap();
        if webhook.verify(&body, &headers).is_err() {
            state.forged += 1;
            return reply(401);
        }
        if state.flood_next > 0 {
            state.flood_next -= 1;
            return Response::new(Full::new(Bytes::from(vec![b' '; 5 * 1024 * 1024])));
        }
        if state.refuse_next > 0 {
            state.refuse_next -= 1;
            state.refused += 1;
            return reply(503);
        }
        state.accepted.push(Message {
            webhook_id: headers["webhook-id"].to_str().unwrap().to_string(),
            body: serde_json::from_slice(&body).unwrap(),
        });
        reply(204)
    }
}

fn reply(status: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A receiver that answers every request with 200 and a body it sends one byte at a time,
/// a byte every 100 ms, for ten minutes: each byte arrives well inside any between-bytes
/// timeout, so only a deadline on the whole body ends the exchange.
pub struct Dripping {
    url: String,
    requests: Arc<Mutex<usize>>,
}

impl Dripping {
    pub async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dripping = Self {
            url: format!("http://{}/hooks/kling", listener.local_addr().unwrap()),
            requests: Arc::default(),
        };
        let requests = dripping.requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                *requests.lock().unwrap() += 1;
                tokio::spawn(async move {
                    // The request is small: whatever arrives first is all of it that matters.
                    let mut request = [0u8; 16 * 1024];
                    let _ = stream.read(&mut request).await;
                    let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n";
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for _ in 0..6_000 {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        if stream.write_all(b" ").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        dripping
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn origin(&self) -> String {
        self.url.split('/').take(3).collect::<Vec<_>>().join("/")
    }

    pub fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }
}
