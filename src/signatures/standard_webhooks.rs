//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), which Kling offers as
//! an opt-in on its callbacks.
//!
//! Headers `webhook-id`, `webhook-timestamp` (seconds) and `webhook-signature`
//! (`v1,<base64>` entries, space-separated while keys rotate). The signature is
//! base64(HMAC-SHA256(key, "{id}.{timestamp}.{raw body}")) with the key being the
//! base64-decoded secret after its `whsec_` prefix.
//!
//! Written here rather than taken from the `standardwebhooks` crate: that crate reads the
//! wall clock inside `verify` (we inject it so tests are deterministic), and brings `time`,
//! `http` and a second base64 and HMAC implementation for what is a few lines over the
//! `hmac`/`sha2` we already use.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a `webhook-timestamp` may be from our clock, either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook secret is not `whsec_` followed by base64")]
    InvalidSecret,
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    #[error("`webhook-timestamp` is not a number of seconds")]
    InvalidTimestamp,
    #[error("`webhook-timestamp` is more than 5 minutes old")]
    TimestampTooOld,
    #[error("`webhook-timestamp` is more than 5 minutes in the future")]
    TimestampTooNew,
    #[error("no `webhook-signature` entry matches")]
    NoMatchingSignature,
}

/// The decoded signing key. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// Accepts `whsec_<base64>` or bare base64, as the reference libraries do.
    pub fn parse(secret: &str) -> Result<Self, WebhookError> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| WebhookError::InvalidSecret)?;
        if key.is_empty() {
            return Err(WebhookError::InvalidSecret);
        }
        Ok(Self { key })
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .expect("HMAC-SHA256 takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// How long the decoded key is (bytes).
    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    /// The `webhook-signature` value (`v1,<base64>`) for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let signature = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(signature))
    }
}

/// The three headers as received (any of them may be absent). Its `Debug` shows no
/// signature.
#[derive(Clone, Copy, Default)]
pub struct WebhookHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

impl fmt::Debug for WebhookHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookHeaders")
            .field("id", &self.id)
            .field("timestamp", &self.timestamp)
            .field("signature", &self.signature.map(|_| "<redacted>"))
            .finish()
    }
}

impl WebhookHeaders<'_> {
    /// Whether the sender attempted a Standard Webhooks signature at all.
    pub fn any_present(&self) -> bool {
        self.id.is_some() || self.timestamp.is_some() || self.signature.is_some()
    }
}

/// Verifies a delivery against `secret`, with `now_secs` as the current time.
pub fn verify(
    secret: &WebhookSecret,
    headers: &WebhookHeaders<'_>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), WebhookError> {
    let id = headers
        .id
        .ok_or(WebhookError::MissingHeader("webhook-id"))?;
    let timestamp = headers
        .timestamp
        .ok_or(WebhookError::MissingHeader("webhook-timestamp"))?;
    let signatures = headers
        .signature
        .ok_or(WebhookError::MissingHeader("webhook-signature"))?;

    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| WebhookError::InvalidTimestamp)?;
    if now_secs.saturating_sub(timestamp) > TOLERANCE_SECS {
        return Err(WebhookError::TimestampTooOld);
    }
    if timestamp.saturating_sub(now_secs) > TOLERANCE_SECS {
        return Err(WebhookError::TimestampTooNew);
    }

    let expected = secret.mac(id, timestamp, body);
    let matches = signatures
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, signature)| STANDARD.decode(signature).ok())
        // `verify_slice` compares in constant time.
        .any(|signature| expected.clone().verify_slice(&signature).is_ok());
    if matches {
        Ok(())
    } else {
        Err(WebhookError::NoMatchingSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vector {
        secret: &'static str,
        id: &'static str,
        timestamp: i64,
        body: &'static str,
        signature: &'static str,
    }

    /// Golden vectors: the Standard Webhooks Go library's `TestWebhookSign`, the Rust
    /// library's `test_sign`, and Kling's published example (`../shared/kling-api.md`).
    const VECTORS: [Vector; 3] = [
        Vector {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            timestamp: 1614265330,
            body: r#"{"test": 2432232314}"#,
            signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        },
        Vector {
            secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            id: "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            timestamp: 1649367553,
            body: r#"{"email":"test@example.com","username":"test_user"}"#,
            signature: "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        },
        Vector {
            secret: "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI=",
            id: "9876543210",
            timestamp: 1781080794,
            body: r#"{"id":"1234567890","status":"succeeded","message":"","create_time":1781080778802,"update_time":1781080794151}"#,
            signature: "v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4=",
        },
    ];

    fn headers<'a>(v: &'a Vector, timestamp: &'a str) -> WebhookHeaders<'a> {
        WebhookHeaders {
            id: Some(v.id),
            timestamp: Some(timestamp),
            signature: Some(v.signature),
        }
    }

    #[test]
    fn golden_vectors_sign_and_verify() {
        for v in &VECTORS {
            let secret = WebhookSecret::parse(v.secret).unwrap();
            assert_eq!(
                secret.sign(v.id, v.timestamp, v.body.as_bytes()),
                v.signature
            );
            let ts = v.timestamp.to_string();
            assert_eq!(
                verify(&secret, &headers(v, &ts), v.body.as_bytes(), v.timestamp),
                Ok(())
            );
        }
    }

    #[test]
    fn the_whsec_prefix_is_optional_and_bad_secrets_are_refused() {
        let v = &VECTORS[0];
        let bare = WebhookSecret::parse(v.secret.trim_start_matches("whsec_")).unwrap();
        assert_eq!(bare.sign(v.id, v.timestamp, v.body.as_bytes()), v.signature);
        for bad in ["whsec_", "", "whsec_***", "whsec_abc"] {
            assert!(WebhookSecret::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn any_mutation_fails() {
        let v = &VECTORS[2];
        let secret = WebhookSecret::parse(v.secret).unwrap();
        let ts = v.timestamp.to_string();
        let now = v.timestamp;
        let body = v.body.as_bytes();
        let ok = headers(v, &ts);

        let check = |h: WebhookHeaders<'_>, body: &[u8], now: i64| verify(&secret, &h, body, now);
        use WebhookError::*;
        assert_eq!(
            check(ok, b"{}", now),
            Err(NoMatchingSignature),
            "other body"
        );
        assert_eq!(
            check(ok, &body[..body.len() - 1], now),
            Err(NoMatchingSignature),
            "truncated body"
        );
        let other_id = WebhookHeaders {
            id: Some("9876543211"),
            ..ok
        };
        assert_eq!(check(other_id, body, now), Err(NoMatchingSignature));
        let wrong = WebhookHeaders {
            signature: Some("v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ5="),
            ..ok
        };
        assert_eq!(check(wrong, body, now), Err(NoMatchingSignature));
        let v2 = WebhookHeaders {
            signature: Some("v2,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4="),
            ..ok
        };
        assert_eq!(
            check(v2, body, now),
            Err(NoMatchingSignature),
            "only v1 counts"
        );
        let bare = WebhookHeaders {
            signature: Some("UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4="),
            ..ok
        };
        assert_eq!(check(bare, body, now), Err(NoMatchingSignature));
        let other_secret = WebhookSecret::parse(VECTORS[0].secret).unwrap();
        assert_eq!(
            verify(&other_secret, &ok, body, now),
            Err(NoMatchingSignature)
        );
    }

    #[test]
    fn timestamps_outside_five_minutes_fail_and_the_edges_pass() {
        let v = &VECTORS[2];
        let secret = WebhookSecret::parse(v.secret).unwrap();
        let ts = v.timestamp.to_string();
        let h = headers(v, &ts);
        let body = v.body.as_bytes();
        assert_eq!(verify(&secret, &h, body, v.timestamp + 300), Ok(()));
        assert_eq!(verify(&secret, &h, body, v.timestamp - 300), Ok(()));
        assert_eq!(
            verify(&secret, &h, body, v.timestamp + 301),
            Err(WebhookError::TimestampTooOld)
        );
        assert_eq!(
            verify(&secret, &h, body, v.timestamp - 301),
            Err(WebhookError::TimestampTooNew)
        );
        let garbage = WebhookHeaders {
            timestamp: Some("soon"),
            ..h
        };
        assert_eq!(
            verify(&secret, &garbage, body, v.timestamp),
            Err(WebhookError::InvalidTimestamp)
        );
    }

    #[test]
    fn missing_headers_are_named() {
        let v = &VECTORS[2];
        let secret = WebhookSecret::parse(v.secret).unwrap();
        let ts = v.timestamp.to_string();
        let ok = headers(v, &ts);
        let body = v.body.as_bytes();
        for (h, name) in [
            (WebhookHeaders { id: None, ..ok }, "webhook-id"),
            (
                WebhookHeaders {
                    timestamp: None,
                    ..ok
                },
                "webhook-timestamp",
            ),
            (
                WebhookHeaders {
                    signature: None,
                    ..ok
                },
                "webhook-signature",
            ),
        ] {
            assert!(h.any_present());
            assert_eq!(
                verify(&secret, &h, body, v.timestamp),
                Err(WebhookError::MissingHeader(name))
            );
        }
        assert!(!WebhookHeaders::default().any_present());
    }

    #[test]
    fn a_rotation_list_with_one_valid_entry_verifies() {
        let v = &VECTORS[2];
        let secret = WebhookSecret::parse(v.secret).unwrap();
        let ts = v.timestamp.to_string();
        let list = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,xyz v1,not-base64!! {} v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            v.signature
        );
        let h = WebhookHeaders {
            signature: Some(&list),
            ..headers(v, &ts)
        };
        assert_eq!(verify(&secret, &h, v.body.as_bytes(), v.timestamp), Ok(()));
    }
}
