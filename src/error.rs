//! Every error the HTTP routes can answer, and the one mapping from errors to HTTP
//! statuses and machine-readable codes.

use crate::callback::parse::PayloadError;
use crate::callback::receive::CallbackError;
use crate::config::ConfigError;
use crate::ledger::LedgerError;
use crate::signatures::callback_url::CallbackSigError;
use crate::signatures::standard_webhooks::WebhookError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("no route for this path")]
    NotFound,
    #[error("method not allowed here; use {0}")]
    MethodNotAllowed(&'static str),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("no task with this id")]
    TaskNotFound,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Callback(#[from] CallbackError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// HTTP status and machine-readable code.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            ApiError::NotFound => (404, "not_found"),
            ApiError::MethodNotAllowed(_) => (405, "method_not_allowed"),
            ApiError::Unauthorized => (401, "unauthorized"),
            ApiError::TaskNotFound => (404, "task_not_found"),
            ApiError::Config(ConfigError::Missing(_)) => (500, "config_missing"),
            ApiError::Config(ConfigError::Invalid(..)) => (500, "config_invalid"),
            ApiError::Store(e) | ApiError::Callback(CallbackError::Store(e)) => store(e),
            ApiError::Callback(e) => callback(e),
        }
    }
}

fn store(e: &StoreError) -> (u16, &'static str) {
    match e {
        // 503: the sender (Kling, a client) retries, and nothing was acknowledged.
        StoreError::Unavailable(_) => (503, "store_unavailable"),
        StoreError::NotConfigured => (500, "store_not_configured"),
        StoreError::Corrupt(_) => (500, "store_corrupt"),
    }
}

fn callback(e: &CallbackError) -> (u16, &'static str) {
    match e {
        CallbackError::InvalidExternalTaskId => (400, "invalid_external_task_id"),
        CallbackError::Signature(CallbackSigError::Missing) => (401, "missing_signature"),
        CallbackError::Signature(_) => (401, "invalid_signature"),
        CallbackError::Webhook(WebhookError::MissingHeader(_)) => {
            (401, "missing_webhook_signature")
        }
        CallbackError::Webhook(WebhookError::TimestampTooOld | WebhookError::TimestampTooNew) => {
            (401, "webhook_timestamp_out_of_range")
        }
        CallbackError::Webhook(WebhookError::InvalidSecret) => (500, "config_invalid"),
        CallbackError::Webhook(_) => (401, "invalid_webhook_signature"),
        CallbackError::WebhookSigningNotConfigured => (401, "webhook_signing_not_configured"),
        CallbackError::UnsupportedContentType => (415, "unsupported_content_type"),
        CallbackError::TooLarge => (413, "payload_too_large"),
        CallbackError::UnreadableBody => (400, "unreadable_body"),
        CallbackError::Payload(p) => (400, payload(p)),
        CallbackError::ExternalTaskIdMismatch => (409, "external_task_id_mismatch"),
        CallbackError::Ledger(LedgerError::BoundToAnotherTask) => (409, "task_id_mismatch"),
        CallbackError::Store(e) => store(e),
    }
}

fn payload(e: &PayloadError) -> &'static str {
    match e {
        PayloadError::InvalidJson(_) => "invalid_json",
        PayloadError::NotAnObject => "not_an_object",
        PayloadError::MissingTaskId => "missing_task_id",
        PayloadError::MissingStatus => "missing_status",
        PayloadError::UnknownStatus => "unknown_status",
        PayloadError::InvalidTaskId => "invalid_task_id",
        PayloadError::InvalidExternalTaskId => "invalid_external_task_id",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_documented_contract() {
        let cases: Vec<(ApiError, u16)> = vec![
            (
                CallbackError::Signature(CallbackSigError::Mismatch).into(),
                401,
            ),
            (
                CallbackError::Webhook(WebhookError::TimestampTooOld).into(),
                401,
            ),
            (CallbackError::WebhookSigningNotConfigured.into(), 401),
            (
                CallbackError::Payload(PayloadError::UnknownStatus).into(),
                400,
            ),
            (
                CallbackError::Payload(PayloadError::InvalidJson("x".into())).into(),
                400,
            ),
            (CallbackError::ExternalTaskIdMismatch.into(), 409),
            (
                CallbackError::Ledger(LedgerError::BoundToAnotherTask).into(),
                409,
            ),
            (CallbackError::TooLarge.into(), 413),
            (CallbackError::UnsupportedContentType.into(), 415),
            (
                CallbackError::Store(StoreError::Unavailable("x".into())).into(),
                503,
            ),
            (StoreError::Unavailable("x".into()).into(), 503),
            (ConfigError::Missing("api_token").into(), 500),
            (ApiError::MethodNotAllowed("POST"), 405),
            (ApiError::TaskNotFound, 404),
        ];
        for (error, status) in cases {
            assert_eq!(error.status_and_code().0, status, "{error:?}");
        }
    }
}
