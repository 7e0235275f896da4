//! Every error the HTTP routes can answer, and the one mapping from errors to HTTP
//! statuses and machine-readable codes.

use serde_json::{Value, json};

use crate::api::pipelines::PipelineError;
use crate::api::submit::SubmitError;
use crate::callback::parse::PayloadError;
use crate::callback::receive::CallbackError;
use crate::config::ConfigError;
use crate::kling::client::{KlingApiError, KlingError};
use crate::ledger::LedgerError;
use crate::pipeline::spec::SpecError;
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
    #[error(
        "query parameter `{0}` is not valid (status: submitting, submitted, processing, succeed, failed or lost; limit: 1 to 100 for GET /tasks, 1 to 500 for reconcile; cursor: as returned)"
    )]
    InvalidQuery(&'static str),
    #[error(
        "not a task kind: POST to /tasks/{{kind}} with a kind that GET /kinds lists; a task id answers GET only"
    )]
    UnknownKind,
    /// A kind named by a caller of the WIT `submit` (HTTP callers name it in the path).
    #[error("`{0}` is not a task kind (see `kinds`)")]
    NotAKind(String),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("no pipeline with this id")]
    PipelineNotFound,
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("body is larger than 16 MiB")]
    SubmitTooLarge,
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
            ApiError::InvalidQuery(_) => (400, "invalid_query"),
            // `/tasks/{id}` is a task: it answers GET; POST is for the kinds' own paths.
            ApiError::UnknownKind => (405, "unknown_kind"),
            ApiError::NotAKind(_) => (400, "invalid_kind"),
            ApiError::Submit(e) => submit(e),
            ApiError::PipelineNotFound => (404, "pipeline_not_found"),
            ApiError::Pipeline(e) => pipeline(e),
            ApiError::SubmitTooLarge => (413, "payload_too_large"),
            ApiError::Config(ConfigError::Missing(_)) => (500, "config_missing"),
            ApiError::Config(ConfigError::Invalid(..)) => (500, "config_invalid"),
            ApiError::Config(ConfigError::Unavailable(_)) => (503, "config_unavailable"),
            ApiError::Store(e) | ApiError::Callback(CallbackError::Store(e)) => store(e),
            ApiError::Callback(e) => callback(e),
        }
    }

    /// The human-readable message: the error's text, plus what to do where that is known.
    pub fn message(&self) -> String {
        let hint = match self.kling_error() {
            // The token's `nbf` and `exp` come from this host's clock.
            Some(e) if e.code == 1003 => {
                " (the token is not valid yet: this host's clock is ahead of Kling's)"
            }
            Some(e) if e.code == 1004 => {
                " (the token has expired: this host's clock is behind Kling's)"
            }
            Some(e) if (1000..=1002).contains(&e.code) => {
                " (check kling_api_key, or kling_access_key and kling_secret_key, and that they belong to this Kling host)"
            }
            // kling-api.md: "no access to this API or model".
            Some(e) if e.code == 1103 => {
                " (this account has no access to this API or model: the request's model_name, or an API 2.0 kind's model; or the keys belong to another Kling host)"
            }
            _ => "",
        };
        format!("{self}{hint}")
    }

    /// Extra fields for the error body: Kling's own answer, or the offending field.
    pub fn details(&self) -> Option<(&'static str, Value)> {
        if let Some(e) = self.kling_error() {
            return Some((
                "kling",
                json!({ "code": e.code, "message": e.message, "request_id": e.request_id }),
            ));
        }
        match self {
            ApiError::Submit(SubmitError::InvalidRequest(e)) => Some(("field", json!(e.field))),
            ApiError::InvalidQuery(parameter) => Some(("parameter", json!(parameter))),
            ApiError::Pipeline(PipelineError::Spec(e)) => {
                let field = match e {
                    SpecError::UnknownKind(step) => format!("steps[{step}].kind"),
                    SpecError::RequestTooDeep(step) | SpecError::RequestNotAnObject(step) => {
                        format!("steps[{step}].request")
                    }
                    SpecError::InvalidRequest { step, error } => {
                        format!("steps[{step}].request.{}", error.field)
                    }
                    SpecError::ExternalTaskIdInStep { step, field } => {
                        format!("steps[{step}].request.{field}")
                    }
                    SpecError::InvalidInput { step, target, .. } => {
                        format!("steps[{step}].inputs.{target}")
                    }
                    SpecError::InvalidId | SpecError::IdempotencyKeyMismatch => "id".into(),
                    SpecError::InvalidBody | SpecError::StepCount => "steps".into(),
                };
                Some(("field", json!(field)))
            }
            ApiError::Pipeline(PipelineError::IdempotencyConflict(_)) => {
                Some(("field", json!("id")))
            }
            _ => None,
        }
    }

    /// Seconds to wait before retrying, for rate limits.
    pub fn retry_after_secs(&self) -> Option<u32> {
        // Kling: back off from at least one second on 1302/1303.
        self.kling_error()
            .filter(|e| matches!(e.code, 1302 | 1303))
            .map(|_| 1)
    }

    /// Kling's own answer, when the error is Kling refusing a submit.
    pub fn kling_error(&self) -> Option<&KlingApiError> {
        match self {
            ApiError::Submit(SubmitError::Kling(KlingError::Api(e)))
            | ApiError::Pipeline(PipelineError::Step {
                error: SubmitError::Kling(KlingError::Api(e)),
                ..
            }) => Some(e),
            _ => None,
        }
    }
}

fn submit(e: &SubmitError) -> (u16, &'static str) {
    match e {
        SubmitError::InvalidRequest(_) => (400, "invalid_request"),
        SubmitError::InvalidExternalTaskId => (400, "invalid_external_task_id"),
        SubmitError::InvalidIdempotencyKey => (400, "invalid_idempotency_key"),
        SubmitError::IdempotencyKeyMismatch => (400, "idempotency_key_mismatch"),
        SubmitError::IdempotencyConflict => (422, "idempotency_conflict"),
        SubmitError::ExternalIdTaken => (409, "external_task_id_taken"),
        SubmitError::Store(e) => store(e),
        SubmitError::Kling(KlingError::Api(e)) => kling(e.code),
        SubmitError::Kling(KlingError::Transport(_)) => (502, "kling_unreachable"),
        SubmitError::Kling(
            KlingError::InvalidResponse(_) | KlingError::MissingTaskId | KlingError::UnknownStatus,
        ) => (502, "kling_bad_response"),
        // The deployment's credentials, as for `kling_auth_failed`: not the caller's fault.
        SubmitError::Kling(KlingError::ApiKeyRequired) => (500, "kling_api_key_required"),
    }
}

fn pipeline(e: &PipelineError) -> (u16, &'static str) {
    match e {
        PipelineError::Spec(SpecError::InvalidId) => (400, "invalid_pipeline_id"),
        PipelineError::Spec(SpecError::IdempotencyKeyMismatch) => (400, "idempotency_key_mismatch"),
        PipelineError::Spec(_) => (400, "invalid_pipeline"),
        PipelineError::Step { error, .. } => submit(error),
        PipelineError::Input { .. } => (400, "input_missing"),
        PipelineError::IdempotencyConflict(_) => (422, "idempotency_conflict"),
        PipelineError::Store(e) => store(e),
    }
}

/// Kling's error codes (`../shared/kling-api.md`), mapped so the caller knows what to do.
fn kling(code: i64) -> (u16, &'static str) {
    match code {
        // The deployment's credentials or clock are wrong, not the caller's request.
        1000..=1004 | 1103 => (502, "kling_auth_failed"),
        1100..=1102 => (402, "kling_account"),
        1200..=1203 => (400, "kling_invalid_request"),
        1300 | 1301 => (422, "kling_content_rejected"),
        1302 | 1303 => (429, "kling_rate_limited"),
        1304 => (502, "kling_ip_not_allowed"),
        5001 => (503, "kling_maintenance"),
        _ => (502, "kling_unavailable"),
    }
}

fn store(e: &StoreError) -> (u16, &'static str) {
    match e {
        // 503: the sender (Kling, a client) retries, and nothing was acknowledged.
        StoreError::Unavailable(_) => (503, "store_unavailable"),
        StoreError::NotConfigured(_) => (500, "store_not_configured"),
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
        CallbackError::Ledger(LedgerError::BoundToAnotherTask) | CallbackError::TaskIdTaken => {
            (409, "task_id_mismatch")
        }
        // Not acknowledged: Kling retries, and the reconciler polls the task meanwhile.
        CallbackError::ResultsNotReady => (503, "results_unavailable"),
        CallbackError::FinalNotConfirmed => (503, "final_unconfirmed"),
        CallbackError::Store(e) => store(e),
        // Not acknowledged: Kling retries once we can reach it.
        CallbackError::Verification(_) => (503, "verification_unavailable"),
        // Not acknowledged either; the reconciler binds the task from Kling's own answer.
        CallbackError::BindingUnconfirmed => (503, "binding_unconfirmed"),
        CallbackError::Config(ConfigError::Missing(_)) => (500, "config_missing"),
        CallbackError::Config(ConfigError::Invalid(..)) => (500, "config_invalid"),
        CallbackError::Config(ConfigError::Unavailable(_)) => (503, "config_unavailable"),
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

    fn kling_error(code: i64) -> ApiError {
        SubmitError::Kling(KlingError::Api(KlingApiError {
            http_status: 400,
            code,
            message: "m".into(),
            request_id: Some("r".into()),
        }))
        .into()
    }

    #[test]
    fn kling_codes_map_to_what_the_caller_should_do() {
        let cases = [
            (1000, 502, "kling_auth_failed"),
            (1003, 502, "kling_auth_failed"),
            (1103, 502, "kling_auth_failed"),
            (1101, 402, "kling_account"),
            (1201, 400, "kling_invalid_request"),
            (1203, 400, "kling_invalid_request"),
            (1301, 422, "kling_content_rejected"),
            (1303, 429, "kling_rate_limited"),
            (5000, 502, "kling_unavailable"),
            (5001, 503, "kling_maintenance"),
        ];
        for (code, status, name) in cases {
            assert_eq!(
                kling_error(code).status_and_code(),
                (status, name),
                "{code}"
            );
        }
        assert_eq!(kling_error(1303).retry_after_secs(), Some(1));
        assert_eq!(kling_error(1201).retry_after_secs(), None);
        assert!(kling_error(1003).message().contains("clock is ahead"));
        assert!(kling_error(1004).message().contains("clock is behind"));
        assert!(kling_error(1103).message().contains("model_name"));
        assert_eq!(kling_error(1201).details().unwrap().1["request_id"], "r");
    }

    /// Every code an HTTP route can answer is in `openapi.json`'s `Error.code` enum (the
    /// codes are read from this file's mapping, so a new one cannot be forgotten there).
    #[test]
    fn every_code_is_in_the_published_document() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap();
        let document: Value = serde_json::from_str(&read("openapi.json")).unwrap();
        let published = &document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
            ["code"]["enum"];
        let source = read("src/error.rs");
        let between = |from: &str, to: &str| {
            let start = source.find(from).unwrap();
            &source[start..start + source[start..].find(to).unwrap()]
        };
        // `status_and_code`, and the functions after `ApiError`'s impl that it calls: their
        // only string literals are codes, however they are formatted (comments aside).
        let mapping: String = [
            between("pub fn status_and_code", "pub fn message"),
            between("\nfn submit(", "#[cfg(test)]"),
        ]
        .concat()
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect();
        let mut codes: Vec<&str> = mapping.split('"').skip(1).step_by(2).collect();
        codes.sort_unstable();
        codes.dedup();
        assert!(
            codes.len() >= 52
                && codes.iter().all(
                    |c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                ),
            "{codes:?}"
        );
        for code in codes {
            // Only the WIT `submit` names a kind in its arguments.
            if code == "invalid_kind" {
                continue;
            }
            assert!(
                published.as_array().unwrap().iter().any(|c| c == code),
                "`{code}` is missing from openapi.json's Error.code"
            );
        }
    }

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
            (ApiError::UnknownKind, 405),
            (ApiError::NotAKind("text2hologram".into()), 400),
            (SubmitError::IdempotencyKeyMismatch.into(), 400),
        ];
        for (error, status) in cases {
            assert_eq!(error.status_and_code().0, status, "{error:?}");
        }
    }
}
