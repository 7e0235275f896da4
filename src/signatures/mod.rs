//! The two ways a callback proves where it comes from.

pub mod callback_url;
pub mod standard_webhooks;
