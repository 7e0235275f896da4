//! kling-webhook: receives Kling AI task callbacks in a Spin component and keeps the
//! truth about every task in Spin's key-value store.
//!
//! Where things are:
//! - [`callback::receive`]: the callback route, verify → parse → judge → store.
//! - [`signatures`]: the URL `sig` and Standard Webhooks signatures.
//! - [`callback::parse`]: every body shape Kling sends, to one [`task::TaskEvent`].
//! - [`ledger`]: the task state machine (never backwards; duplicates recognised).
//! - [`store`]: the key layout and task persistence behind the [`store::KeyValue`] trait.
//! - [`api`]: the authenticated task API, submitting, and running pipelines.
//! - [`pipeline`]: a pipeline's description and its state, derived from its tasks.
//! - [`notify`]: signed notifications to `notify_url`, and their outbox.
//! - [`reconcile`]: polling Kling for lost callbacks (and giving up tasks Kling lost),
//!   moving pipelines on.
//! - [`after_ack`]: what a request does once its response is sent (bookkeeping,
//!   notifications, the next pipeline step).
//! - [`app`], [`router`], [`response`], [`error`]: HTTP dispatch, routes, the response
//!   builder and the one error → status mapping.
//! - `spin_edge` (wasm32 only): the thin Spin glue.
//!
//! Everything but `spin_edge` is plain Rust that builds and tests natively.

pub mod after_ack;
pub mod api;
pub mod app;
pub mod callback;
pub mod clock;
pub mod config;
pub mod error;
pub mod kling;
pub mod ledger;
pub mod notify;
pub mod outbound;
pub mod pipeline;
pub mod reconcile;
pub mod response;
pub mod router;
pub mod signatures;
pub mod store;
pub mod task;
pub mod validate;

#[cfg(target_arch = "wasm32")]
mod spin_edge;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod identity_properties;
