//! Talking to Kling: the catalog of task kinds (paths, families, rules, outputs), the
//! auth token, request validation by the catalog's rules, and a client for both API
//! families over the [`HttpTransport`] trait.
//!
//! [`HttpTransport`]: crate::outbound::HttpTransport

pub mod catalog;
#[cfg(test)]
mod catalog_docs;
pub mod client;
pub mod jwt;
pub mod request;
