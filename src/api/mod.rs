//! The management API: task state for people and programs, behind a bearer token.

pub mod kinds;
pub mod kling_calls;
pub mod pipelines;
pub mod submit;
pub mod tasks;
