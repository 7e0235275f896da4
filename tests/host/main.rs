//! The host tests: the real release `kling_webhook.wasm` in a Spin-like wasmtime host.
//! One binary, so the host compiles once.

mod support;

mod bench;
mod callbacks;
mod composition;
mod concurrency;
mod kinds;
mod nothing_lost;
mod notify;
mod on_spin;
mod openapi_document;
mod pipelines;
mod reconcile;
mod rejections;
mod secrets;
mod storm;
mod submit;
mod task_api;
mod verify;
mod wit_interface;
mod wit_sync;
