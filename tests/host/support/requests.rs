//! Requests as Kling (or an API client) would send them. Signatures are computed here
//! from the documented schemes, independently of the component's code.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const CALLBACK_SECRET: &str = "test-callback-secret";
pub const API_TOKEN: &str = "test-api-token-0001";
/// Kling's published Standard Webhooks example secret (`../shared/kling-api.md`).
pub const WEBHOOK_SECRET: &str = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI=";

pub const STANDARD_VARIABLES: [(&str, &str); 2] = [
    ("callback_secret", CALLBACK_SECRET),
    ("api_token", API_TOKEN),
];

pub const WITH_WEBHOOK_SECRET: [(&str, &str); 3] = [
    ("callback_secret", CALLBACK_SECRET),
    ("api_token", API_TOKEN),
    ("webhook_signing_secret", WEBHOOK_SECRET),
];

/// base64url(HMAC-SHA256(callback_secret, external_task_id)), no padding.
pub fn sig(external_task_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(CALLBACK_SECRET.as_bytes()).unwrap();
    mac.update(external_task_id.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// `v1,` + base64(HMAC-SHA256(base64decode(secret sans whsec_), "{id}.{ts}.{body}")).
pub fn webhook_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

pub fn request(method: &str, path_and_query: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path_and_query}"))
}

/// A correctly signed callback for `external_task_id`.
pub fn callback(external_task_id: &str, body: impl Into<Bytes>) -> http::Request<Bytes> {
    callback_with_sig(external_task_id, &sig(external_task_id), body)
}

pub fn callback_with_sig(
    external_task_id: &str,
    sig: &str,
    body: impl Into<Bytes>,
) -> http::Request<Bytes> {
    request(
        "POST",
        &format!("/callbacks/kling/{external_task_id}?sig={sig}"),
    )
    .header("content-type", "application/json")
    .body(body.into())
    .unwrap()
}

/// A bodiless request with `Authorization: Bearer {api_token}`.
pub fn authorized(method: &str, path_and_query: &str) -> http::Request<Bytes> {
    request(method, path_and_query)
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .body(Bytes::new())
        .unwrap()
}

/// A JSON `POST` with the bearer.
pub fn authorized_json(path: &str, body: &serde_json::Value) -> http::Request<Bytes> {
    request("POST", path)
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

pub fn get_task(id: &str) -> http::Request<Bytes> {
    authorized("GET", &format!("/tasks/{id}"))
}

/// A flat Kling callback body.
pub fn flat(task_id: &str, external_task_id: &str, status: &str, updated_at: u64) -> String {
    let result = if status == "succeed" {
        format!(
            r#","task_result":{{"videos":[{{"id":"v-{task_id}","url":"https://cdn.example/{task_id}.mp4","duration":"5.1"}}]}}"#
        )
    } else {
        String::new()
    };
    format!(
        r#"{{"task_id":"{task_id}","task_status":"{status}","task_status_msg":"","created_at":1722769557708,"updated_at":{updated_at},"task_info":{{"external_task_id":"{external_task_id}"}}{result}}}"#
    )
}
