//! The one response builder: JSON bodies, and errors as
//! `{"error":{"code":"machine_readable","message":"..."}}`.

use serde::Serialize;
use serde_json::json;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: &impl Serialize) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".to_string())],
            body: serde_json::to_vec(body).expect("response bodies serialize to JSON"),
        }
    }

    pub fn error(error: &ApiError) -> Self {
        let (status, code) = error.status_and_code();
        let mut body = json!({ "code": code, "message": error.message() });
        if let Some((name, value)) = error.details() {
            body[name] = value;
        }
        let mut response = Self::json(status, &json!({ "error": body }));
        if let Some(secs) = error.retry_after_secs() {
            response.headers.push(("retry-after", secs.to_string()));
        }
        match error {
            ApiError::MethodNotAllowed(allow) => {
                response.headers.push(("allow", allow.to_string()))
            }
            ApiError::UnknownKind => response.headers.push(("allow", "GET".to_string())),
            ApiError::Unauthorized => response
                .headers
                .push(("www-authenticate", "Bearer".to_string())),
            _ => {}
        }
        response
    }
}
