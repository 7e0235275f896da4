//! Test support: the component build, the Spin-like wasmtime host, its key-value store,
//! and request builders that sign the way Kling's side would (computed here, not with
//! the component's code).

pub mod components;
pub mod deployment;
pub mod kv;
pub mod openapi;
pub mod real_spin;
pub mod receiver;
pub mod requests;
pub mod spin_host;
