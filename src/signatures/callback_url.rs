//! The `sig` on our callback URLs: `/callbacks/kling/{external_task_id}?sig={sig}`.
//!
//! Kling's legacy callbacks are unsigned, so the URL itself carries the proof that we
//! issued it: `sig` = base64url, no padding, of HMAC-SHA256(key = `callback_secret` as
//! UTF-8, message = `external_task_id` as UTF-8). Only someone who knows the secret (or
//! was given this exact URL, i.e. Kling) can post to a task's callback route.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::{KeyRing, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallbackSigError {
    #[error("the callback URL has no `sig` parameter")]
    Missing,
    #[error("the callback URL's `sig` is not base64url")]
    Malformed,
    #[error("the callback URL's `sig` does not match")]
    Mismatch,
}

fn mac(secret: &Secret, external_task_id: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC-SHA256 takes keys of any length");
    mac.update(external_task_id.as_bytes());
    mac
}

/// The `sig` to put in the callback URL for `external_task_id`.
pub fn sign(secret: &Secret, external_task_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(mac(secret, external_task_id).finalize().into_bytes())
}

/// Checks a `sig` in constant time against every secret of the ring (a URL signed
/// before a rotation still verifies). A truncated or padded `sig` does not verify.
pub fn verify(
    secrets: &KeyRing,
    external_task_id: &str,
    sig: Option<&str>,
) -> Result<(), CallbackSigError> {
    let sig = sig.ok_or(CallbackSigError::Missing)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| CallbackSigError::Malformed)?;
    secrets
        .all()
        .iter()
        .any(|secret| mac(secret, external_task_id).verify_slice(&sig).is_ok())
        .then_some(())
        .ok_or(CallbackSigError::Mismatch)
}

/// What a task's head keeps of the `sig` that last proved a news delivery of it:
/// SHA-256 of the `sig` as sent, base64url. It reveals nothing of the secret, and only a
/// sender who holds that very URL can match it. `receive` answers a repeat (which stores
/// nothing) by it without reading the secret, a variable read that costs Spin about as
/// much as a store operation.
pub fn sig_digest(sig: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(sig.as_bytes()))
}

/// Whether `sig` is the one whose [`sig_digest`] a head keeps, compared in constant time.
pub fn matches_digest(sig: &str, digest: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(sig_digest(sig).as_bytes().ct_eq(digest.as_bytes()))
}

/// Whether `sig` has the shape [`sign`] gives (43 base64url characters): only such a
/// `sig` is worth a look at the head before the secret is read.
pub fn is_well_formed(sig: &str) -> bool {
    sig.len() == 43
        && sig
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently:
    /// `printf %s job-1 | openssl dgst -sha256 -hmac test-callback-secret -binary | base64 | tr '+/' '-_' | tr -d =`
    const GOLDEN_SIG: &str = "V2ucXnrDxfowJok8DZQ7EDP7WSR1cOwBTCE3n54VYbA";

    fn secret() -> Secret {
        Secret::new("test-callback-secret")
    }

    fn ring() -> KeyRing {
        KeyRing::single(secret())
    }

    #[test]
    fn signs_the_golden_vector() {
        assert_eq!(sign(&secret(), "job-1"), GOLDEN_SIG);
        assert_eq!(verify(&ring(), "job-1", Some(GOLDEN_SIG)), Ok(()));
    }

    #[test]
    fn after_a_rotation_urls_signed_with_the_old_secret_still_verify() {
        use crate::config::{CALLBACK_SECRET, CallbackConfig, tests::MapVariables};
        let rotated = MapVariables(std::collections::HashMap::from([(
            CALLBACK_SECRET,
            "a-brand-new-callback-secret test-callback-secret",
        )]));
        let config = CallbackConfig::load(&rotated, false).unwrap();
        assert_eq!(
            config.callback_secret.signing().expose(),
            "a-brand-new-callback-secret"
        );
        assert_eq!(
            verify(&config.callback_secret, "job-1", Some(GOLDEN_SIG)),
            Ok(())
        );
        let new_sig = sign(config.callback_secret.signing(), "job-1");
        assert_eq!(
            verify(&config.callback_secret, "job-1", Some(&new_sig)),
            Ok(())
        );
        // Once the old one is dropped, its URLs no longer verify.
        assert_eq!(
            verify(
                &KeyRing::single(Secret::new("a-brand-new-callback-secret")),
                "job-1",
                Some(GOLDEN_SIG)
            ),
            Err(CallbackSigError::Mismatch)
        );
    }

    #[test]
    fn anything_but_the_exact_sig_fails() {
        let other_task = sign(&secret(), "job-2");
        let other_secret = sign(&Secret::new("another-secret"), "job-1");
        let mut altered = GOLDEN_SIG.to_string();
        altered.replace_range(0..1, "W");
        let cases: &[(Option<&str>, CallbackSigError)] = &[
            (None, CallbackSigError::Missing),
            (Some(""), CallbackSigError::Mismatch),
            (Some(&GOLDEN_SIG[..42]), CallbackSigError::Malformed),
            (Some(&GOLDEN_SIG[..40]), CallbackSigError::Mismatch),
            (Some(&GOLDEN_SIG[..20]), CallbackSigError::Mismatch),
            (Some(&altered), CallbackSigError::Mismatch),
            (Some(&other_task), CallbackSigError::Mismatch),
            (Some(&other_secret), CallbackSigError::Mismatch),
            (
                Some("V2ucXnrDxfowJok8DZQ7EDP7WSR1cOwBTCE3n54VYbA="),
                CallbackSigError::Malformed,
            ),
            (
                Some("V2ucXnrDxfowJok8DZQ7EDP7WSR1cOwBTCE3n54VYb+"),
                CallbackSigError::Malformed,
            ),
        ];
        for (sig, expected) in cases {
            assert_eq!(verify(&ring(), "job-1", *sig), Err(*expected), "{sig:?}");
        }
    }

    /// `printf %s V2ucXnrDxfowJok8DZQ7EDP7WSR1cOwBTCE3n54VYbA | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d =`
    const GOLDEN_DIGEST: &str = "SOZeRNh1g3NdtCj0pTdh3EivvINSOpMUhG_YdWecYj4";

    #[test]
    fn a_head_knows_only_the_exact_sig_it_was_given() {
        assert_eq!(sig_digest(GOLDEN_SIG), GOLDEN_DIGEST);
        assert!(matches_digest(GOLDEN_SIG, GOLDEN_DIGEST));
        let mut altered = GOLDEN_SIG.to_string();
        altered.replace_range(42..43, "B");
        let other_task = sign(&secret(), "job-2");
        for other in [&altered, &other_task, &GOLDEN_SIG[..42], "", GOLDEN_DIGEST] {
            assert!(!matches_digest(other, GOLDEN_DIGEST), "{other}");
        }
        for stored in [&GOLDEN_DIGEST[..42], "", GOLDEN_SIG] {
            assert!(!matches_digest(GOLDEN_SIG, stored), "{stored}");
        }
    }

    #[test]
    fn only_a_sig_of_sign_s_shape_is_well_formed() {
        assert!(is_well_formed(GOLDEN_SIG));
        assert!(is_well_formed(&sign(&Secret::new("x"), "y")));
        for bad in [
            &GOLDEN_SIG[..42],
            "V2ucXnrDxfowJok8DZQ7EDP7WSR1cOwBTCE3n54VYbA=",
            "V2ucXnrDxfowJok8DZQ7EDP7WSR1cOwBTCE3n54VYb+",
            "V2ucXnrDxfowJok8DZQ7EDP7WSR1cOwBTCE3n54VYb/",
            "forged",
        ] {
            assert!(!is_well_formed(bad), "{bad}");
        }
    }
}
