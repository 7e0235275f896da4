//! `GET /tasks/{id}`: a task by Kling `task_id` or by `external_task_id`.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Secret, Variables, api_token};
use crate::error::ApiError;
use crate::store::KeyValue;
use crate::store::tasks::{Cursor, TaskPage, TaskStore};
use crate::task::{TaskRecord, TaskStatus};

pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;

pub fn get_task(
    id: &str,
    authorization: Option<&str>,
    vars: &dyn Variables,
    kv: &dyn KeyValue,
) -> Result<TaskRecord, ApiError> {
    check_bearer(authorization, &api_token(vars)?)?;
    TaskStore::new(kv).find(id)?.ok_or(ApiError::TaskNotFound)
}

/// `GET /tasks?status={status}&limit={n}&cursor={cursor}`: recent tasks, newest first.
pub fn list_tasks(
    status: Option<&str>,
    limit: Option<&str>,
    cursor: Option<&str>,
    authorization: Option<&str>,
    vars: &dyn Variables,
    kv: &dyn KeyValue,
) -> Result<TaskPage, ApiError> {
    check_bearer(authorization, &api_token(vars)?)?;
    let status = status
        .map(|s| TaskStatus::from_name(s).ok_or(ApiError::InvalidQuery("status")))
        .transpose()?;
    let limit = parse_limit(limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let cursor = cursor
        .map(|c| Cursor::parse(c).ok_or(ApiError::InvalidQuery("cursor")))
        .transpose()?;
    Ok(TaskStore::new(kv).list(status, limit, cursor)?)
}

/// A `limit` query parameter: `default` when absent, else 1 to `max`.
pub fn parse_limit(limit: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or(ApiError::InvalidQuery("limit")),
    }
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
