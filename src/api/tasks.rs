//! `GET /tasks/{id}` (a task by Kling `task_id` or by `external_task_id`, with read
//! repair) and `GET /tasks` (every task, newest first).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::after_ack::AfterAck;
use crate::app::Env;
use crate::config::{
    ConfigError, KeyRing, KlingConfig, ReconcileLimits, Variables, api_token, stale_after_ms,
};
use crate::error::ApiError;
use crate::ledger::{PollState, TaskHead};
use crate::reconcile::{PollError, Poller, ReconcileOptions};
use crate::store::KeyValue;
use crate::store::layout::TaskKey;
use crate::store::tasks::{Cursor, TaskPage, TaskStore};
use crate::task::{EventSource, TaskRecord, TaskStatus};

pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;

/// A task as `GET /tasks/{id}` shows it.
pub struct Shown {
    /// The task's store key (what its notifications name).
    pub key: TaskKey,
    pub record: TaskRecord,
    /// Read repair asked Kling and the task changed.
    pub repaired: bool,
}

impl Shown {
    /// The task as stored, with the reconciler's record of it once it has polled.
    fn as_stored(key: TaskKey, mut record: TaskRecord, previous: Option<PollState>) -> Self {
        record.reconcile = previous.filter(|p| p.polls > 0);
        Shown {
            key,
            record,
            repaired: false,
        }
    }

    /// What is left once the task is served: announcing what a repair changed.
    pub fn after_ack(self) -> AfterAck {
        AfterAck {
            changed: self.repaired.then_some((self.key, self.record)),
            ..AfterAck::default()
        }
    }
}

/// A task by either id. Read repair: a task submitted here, not final, and without news
/// for `stale_after_seconds` is asked about once (within three `kling_timeout_ms`), the answer
/// applied through the ledger, and the fresh state returned, so a client that polls
/// this API sees the truth even where no scheduler runs reconcile. If Kling cannot be
/// asked (no Kling keys, a variable the repair reads that cannot be read or is invalid, a
/// poll record that cannot be read), the stored state is served as it is, and why is
/// logged (unless the keys are simply not set): a read never fails for want of what only
/// its repair needs.
pub fn get_task(id: &str, authorization: Option<&str>, env: &Env<'_>) -> Result<Shown, ApiError> {
    check_bearer(authorization, &api_token(env.vars)?)?;
    show_task(id, env)
}

/// [`get_task`] for a caller already trusted (the WIT `get`): the same read repair.
pub fn show_task(id: &str, env: &Env<'_>) -> Result<Shown, ApiError> {
    let store = TaskStore::new(env.kv);
    let (key, head, record) = store.find_parts(id)?.ok_or(ApiError::TaskNotFound)?;
    // Only tasks submitted here are polled (their Kling endpoint is known).
    let Some(head) = head.filter(|h| h.submission.is_some()) else {
        return Ok(Shown {
            key,
            record,
            repaired: false,
        });
    };
    let previous = match store.poll_state(&key) {
        Ok(previous) => previous,
        Err(error) => {
            eprintln!("GET /tasks/{id}: served as stored: its poll record: {error}");
            return Ok(Shown::as_stored(key, record, None));
        }
    };
    let repair = if record.status.is_final() {
        None
    } else {
        repair_due(id, &head, previous.as_ref(), env)
    };
    let Some((kling, options)) = repair else {
        return Ok(Shown::as_stored(key, record, previous));
    };
    let poller = Poller {
        kv: env.kv,
        kling: &kling,
        transport: env.http,
        clock: env.clock,
        options: &options,
    };
    match poller.poll(&key, head, previous.unwrap_or_default()) {
        Ok(polled) => {
            let repaired = polled.news.is_some();
            // No record left: Kling never created it and the poll gave it up, or its head
            // was deleted while Kling was asked (its entries stay; a run restores a task
            // Kling has).
            let mut record = polled.record.ok_or(ApiError::TaskNotFound)?;
            record.reconcile = Some(polled.state);
            Ok(Shown {
                key,
                record,
                repaired,
            })
        }
        // Kling asked us to wait: the stored state is still the truth we have, with the
        // poll as it was just recorded.
        Err(PollError::RateLimited { state, .. }) => Ok(Shown::as_stored(key, record, Some(state))),
        // A write of the poll failed, perhaps after its news was stored: what the store
        // holds now is served (and, if newer, announced), or, if it cannot be read
        // either, the store error.
        Err(PollError::Store(error)) => {
            eprintln!("GET /tasks/{id}: read repair could not finish: {error}");
            let mut stored = store.find_by_key(&key)?.ok_or(ApiError::TaskNotFound)?;
            // Announced only if it is a poll's news (a callback that stored news while
            // Kling was asked has announced it itself).
            let repaired =
                stored.sequence > record.sequence && stored.source == Some(EventSource::Poll);
            // Best effort: the store has just failed once, and the task is what matters.
            stored.reconcile = store
                .poll_state(&key)
                .ok()
                .flatten()
                .filter(|state| state.polls > 0);
            Ok(Shown {
                key,
                record: stored,
                repaired,
            })
        }
    }
}

/// The settings a read repair asks Kling with, if one is due: the task is stale, and past
/// the backoff the reconciler set (reading never polls faster). A setting that cannot be
/// read or is invalid means no repair, and is logged; Kling's keys are read only for a
/// repair that is due, and their absence is said nowhere: GET needs only `api_token`
/// (README, "Variables").
fn repair_due(
    id: &str,
    head: &TaskHead,
    previous: Option<&PollState>,
    env: &Env<'_>,
) -> Option<(KlingConfig, ReconcileOptions)> {
    let unrepaired = |error: ConfigError| {
        if !matches!(error, ConfigError::Missing(_)) {
            eprintln!("GET /tasks/{id}: served as stored, not asked about: {error}");
        }
    };
    let stale_after = stale_after_ms(env.vars).map_err(unrepaired).ok()?;
    let (last_polled_at, next_poll_at) =
        previous.map_or((0, 0), |p| (p.last_polled_at, p.next_poll_at));
    let last_news = head.last_news().unwrap_or(0).max(last_polled_at);
    let now = env.clock.now_ms();
    if now.saturating_sub(last_news) < stale_after || now < next_poll_at {
        return None;
    }
    let kling = KlingConfig::load(env.vars).map_err(unrepaired).ok()?;
    let limits = ReconcileLimits::load(env.vars).map_err(unrepaired).ok()?;
    Some((
        kling,
        ReconcileOptions {
            limit: 1,
            stale_after_ms: stale_after,
            retention_ms: None,
            limits,
        },
    ))
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
    Ok(TaskStore::new(kv).list(status, limit, cursor.as_ref())?)
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
/// keeps the token's length out of the timing too. The scheme's name is
/// case-insensitive (RFC 9110, 11.1): `bearer` is `Bearer`.
pub fn check_bearer(authorization: Option<&str>, tokens: &KeyRing) -> Result<(), ApiError> {
    let presented = authorization
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .ok_or(ApiError::Unauthorized)?;
    let presented = Sha256::digest(presented.trim().as_bytes());
    // Every token is compared, in constant time, whichever matches.
    let matches = tokens.all().iter().fold(false, |matched, token| {
        let expected = Sha256::digest(token.expose().as_bytes());
        matched | bool::from(presented.ct_eq(&expected))
    });
    if matches {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::Secret;

    #[test]
    fn any_token_of_the_ring_passes_during_a_rotation() {
        let ring = KeyRing::single(Secret::new("the-new-token-0001"));
        let vars = crate::config::tests::MapVariables(std::collections::HashMap::from([(
            crate::config::API_TOKEN,
            "the-new-token-0001 the-old-token-0000",
        )]));
        let rotated = api_token(&vars).unwrap();
        for token in ["the-new-token-0001", "the-old-token-0000"] {
            let bearer = format!("Bearer {token}");
            assert_eq!(check_bearer(Some(&bearer), &rotated), Ok(()), "{token}");
        }
        assert_eq!(
            check_bearer(Some("Bearer the-old-token-0000"), &ring),
            Err(ApiError::Unauthorized),
            "dropped"
        );
        assert_eq!(
            check_bearer(
                Some("Bearer the-new-token-0001 the-old-token-0000"),
                &rotated
            ),
            Err(ApiError::Unauthorized),
            "the variable's whole value is no token"
        );
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = KeyRing::single(Secret::new("t0ken"));
        for good in ["Bearer t0ken", "bearer t0ken", "BEARER t0ken"] {
            assert_eq!(check_bearer(Some(good), &token), Ok(()), "{good}");
        }
        for bad in [
            None,
            Some(""),
            Some("t0ken"),
            Some("Bearer "),
            Some("Bearer t0ke"),
            Some("Bearer t0ken2"),
            Some("Basic t0ken"),
            Some("bearer x"),
            Some("Bearer: t0ken"),
            Some("Bearert0ken"),
        ] {
            assert_eq!(
                check_bearer(bad, &token),
                Err(ApiError::Unauthorized),
                "{bad:?}"
            );
        }
    }
}
