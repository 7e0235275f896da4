//! The bearer token Kling expects from an access key / secret key pair: a JWT with
//! header `{"alg":"HS256","typ":"JWT"}` and claims `iss` = access key, `exp` = now +
//! 1800 s, `nbf` = now - 5 s, signed with HMAC-SHA256 under the secret key, base64url
//! without padding.
//!
//! Signed here over `hmac`/`sha2`/`base64` (already in the component) rather than with
//! `jsonwebtoken`, whose pure-Rust backend brings RSA, P-256/384 and Ed25519 into a
//! 300 KB component that only ever signs HS256. The tests verify our tokens with
//! `jsonwebtoken`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// How long a token lives, and how far back `nbf` reaches to absorb clock skew.
pub const LIFETIME_SECS: u64 = 1800;
pub const NOT_BEFORE_LEEWAY_SECS: u64 = 5;

/// `base64url({"alg":"HS256","typ":"JWT"})`
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Claims in Kling's documented order (a struct serializes fields in declaration order).
#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    exp: u64,
    nbf: u64,
}

pub fn token(access_key: &Secret, secret_key: &Secret, now_secs: u64) -> String {
    let claims = Claims {
        iss: access_key.expose(),
        exp: now_secs + LIFETIME_SECS,
        nbf: now_secs.saturating_sub(NOT_BEFORE_LEEWAY_SECS),
    };
    let claims = serde_json::to_vec(&claims).expect("claims serialize");
    let signing_input = format!("{HEADER}.{}", URL_SAFE_NO_PAD.encode(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret_key.expose().as_bytes())
        .expect("HMAC-SHA256 takes keys of any length");
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_token_computed_independently() {
        // Python: b64url(header) . b64url({"iss":"ak-test","exp":1781082594,"nbf":1781080789})
        // signed with hmac.new(b"sk-test", ..., sha256).
        let expected = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJhay10ZXN0IiwiZXhwIjoxNzgxMDgyNTk0LCJuYmYiOjE3ODEwODA3ODl9.2tVHwipIjN9ZTEArAoWe_4eaxvlc74hIlPMO0cYnyx0";
        assert_eq!(
            token(&Secret::new("ak-test"), &Secret::new("sk-test"), 1781080794),
            expected
        );
    }

    #[test]
    fn the_header_constant_is_the_encoded_header() {
        assert_eq!(
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            HEADER
        );
    }

    #[test]
    fn another_secret_or_time_gives_another_token() {
        let ak = Secret::new("ak-test");
        let base = token(&ak, &Secret::new("sk-test"), 100);
        assert_ne!(token(&ak, &Secret::new("sk-other"), 100), base);
        assert_ne!(token(&ak, &Secret::new("sk-test"), 101), base);
    }
}
