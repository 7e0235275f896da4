//! Talking to Kling: endpoints per task kind, the auth token, request validation, the
//! response envelope, and a client over the [`HttpTransport`] trait.
//!
//! [`HttpTransport`]: crate::outbound::HttpTransport

pub mod catalog;
#[cfg(test)]
mod catalog_docs;
pub mod client;
pub mod jwt;
pub mod request;
