//! The benchmark's yardstick: the least a callback receiver can do on Spin.
//! It answers 200 after exactly one key-value write, nothing else. Under `/floor-read/`
//! it reads instead the key that `/floor/` + the same path wrote: the least a receiver
//! that recognises a repeat can do. Under `/floor-rw/` it reads its key, then writes it:
//! the least a receiver that looks before it stores a first delivery can do. Under
//! `/floor-var/` it reads its variable `probe` before the write: what one variable costs.
#![cfg(target_arch = "wasm32")]

use spin_sdk::http::{IncomingRequest, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;

#[http_component]
async fn handle(req: IncomingRequest) -> Response {
    let path = req.path_with_query().unwrap_or_default();
    let body = req.into_body().await.unwrap_or_default();
    if path.starts_with("/floor-var/") && spin_sdk::variables::get("probe").is_err() {
        return Response::new(500, "no variable probe");
    }
    let stored = Store::open_default().and_then(|store| {
        if path.starts_with("/floor-read/") {
            store
                .get(&path.replacen("/floor-read/", "/floor/", 1))
                .map(|value| value.is_some())
        } else if path.starts_with("/floor-rw/") {
            store
                .get(&path)
                .and_then(|_| store.set(&path, &body))
                .map(|()| true)
        } else {
            store.set(&path, &body).map(|()| true)
        }
    });
    match stored {
        Ok(true) => Response::new(200, r#"{"received":true}"#),
        Ok(false) => Response::new(404, "not primed"),
        Err(_) => Response::new(503, "store failed"),
    }
}
