//! The benchmark's yardstick: the least a callback receiver can do on Spin.
//! It answers 200 after exactly one key-value write, nothing else. Under `/floor-read/`
//! it reads instead the key that `/floor/` + the same path wrote: the least a receiver
//! that recognises a repeat can do. Under `/floor-rw/` it reads its key, then writes it:
//! the least a receiver that looks before it stores a first delivery can do. Under
//! `/floor-var/` it reads its variable `probe` before the write: what one variable costs.
//! Under `/floor-layout/` it does with the store what a first delivery of a task not
//! submitted here does in kling-webhook's key layout, and nothing else: two reads of keys
//! that are not there (the task's head, its `taskid:`), then one `wasi:keyvalue` batch of
//! four (the status slot holding the body, the `taskid:` entry, the listing entry, and a
//! head of about 225 bytes; the component writes a slot of about 440 and a head of 265):
//! what the layout costs, without the component's own work.
#![cfg(target_arch = "wasm32")]

use spin_sdk::http::{IncomingRequest, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;
use spin_sdk::wit::wasi::keyvalue::{batch, store as wasi_kv};

#[http_component]
async fn handle(req: IncomingRequest) -> Response {
    let path = req.path_with_query().unwrap_or_default();
    let body = req.into_body().await.unwrap_or_default();
    if path.starts_with("/floor-var/") && spin_sdk::variables::get("probe").is_err() {
        return Response::new(500, "no variable probe");
    }
    if let Some(rest) = path.strip_prefix("/floor-layout/") {
        // The external id: the last segment of the callback path, without its `sig`.
        let id = rest.split('?').next().unwrap_or_default();
        let id = id.rsplit('/').next().unwrap_or_default();
        return match layout(id, body) {
            Ok(()) => Response::new(200, r#"{"received":true}"#),
            Err(_) => Response::new(503, "store failed"),
        };
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

fn layout(id: &str, body: Vec<u8>) -> Result<(), wasi_kv::Error> {
    let bucket = wasi_kv::open("default")?;
    let head_key = format!("task:{id}");
    let task_id_key = format!("taskid:{id}");
    bucket.get(&head_key)?;
    bucket.get(&task_id_key)?;
    // About the size of the head a first delivery writes.
    let head = format!(
        r#"{{"task_id":"{id}","seen":{{"final":1722769600123}},"deliveries":1,"last_delivery_at":1722769600123,"listed_at":1722769557708,"callback_sig_sha256":"{:064}"}}"#,
        0
    );
    let entries = vec![
        (format!("task:{id}:final"), body),
        (task_id_key, id.as_bytes().to_vec()),
        (format!("listed/1722769557708/{id}"), b"1".to_vec()),
        (head_key, head.into_bytes()),
    ];
    batch::set_many(&bucket, &entries)
}
