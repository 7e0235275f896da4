//! The benchmark's yardstick: the least a callback receiver can do on Spin.
//! It answers 200 after exactly one key-value write, nothing else.
#![cfg(target_arch = "wasm32")]

use spin_sdk::http::{IncomingRequest, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;

#[http_component]
async fn handle(req: IncomingRequest) -> Response {
    let path = req.path_with_query().unwrap_or_default();
    let body = req.into_body().await.unwrap_or_default();
    let stored = Store::open_default().and_then(|store| store.set(&path, &body));
    match stored {
        Ok(()) => Response::new(200, r#"{"received":true}"#),
        Err(_) => Response::new(503, "store failed"),
    }
}
