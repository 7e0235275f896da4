//! `GET /tasks/{id}`: a task by Kling `task_id` or by `external_task_id`.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Secret, Variables, api_token};
use crate::error::ApiError;
use crate::store::KeyValue;
use crate::store::tasks::TaskStore;
use crate::task::TaskRecord;

pub fn get_task(
    id: &str,
    authorization: Option<&str>,
    vars: &dyn Variables,
    kv: &dyn KeyValue,
) -> Result<TaskRecord, ApiError> {
    check_bearer(authorization, &api_token(vars)?)?;
    TaskStore::new(kv).find(id)?.ok_or(ApiError::TaskNotFound)
}

/// `Authorization: Bearer {api_token}`, compared in constant time. Comparing digests
/// keeps the token's length out of the timing too.
pub fn check_bearer(authorization: Option<&str>, token: &Secret) -> Result<(), ApiError> {
    let presented = authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    let presented = Sha256::digest(presented.trim().as_bytes());
    let expected = Sha256::digest(token.expose().as_bytes());
    if bool::from(presented.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = Secret::new("t0ken");
        assert_eq!(check_bearer(Some("Bearer t0ken"), &token), Ok(()));
        for bad in [
            None,
            Some(""),
            Some("t0ken"),
            Some("Bearer "),
            Some("Bearer t0ke"),
            Some("Bearer t0ken2"),
            Some("Basic t0ken"),
            Some("bearer x"),
        ] {
            assert_eq!(
                check_bearer(bad, &token),
                Err(ApiError::Unauthorized),
                "{bad:?}"
            );
        }
    }
}
