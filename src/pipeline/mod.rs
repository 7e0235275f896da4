//! Pipelines: ordered Kling tasks where each step starts when the previous one succeeds
//! (text2video, then video-extend, then lip-sync), moved forward by callbacks and by the
//! reconciler, never by a client polling.
//!
//! - [`spec`]: the description, its validation, and filling a step's request from the
//!   previous step's result.
//! - [`progress`]: where a pipeline stands, derived from its steps' tasks.
//!
//! - [`advance`]: moving one on when a step ends (after a callback's acknowledgement,
//!   and from the reconciler).
//!
//! Creating and reading them is [`crate::api::pipelines`]; storing them is
//! [`crate::store::pipelines`].

pub mod advance;
pub mod progress;
pub mod spec;
