//! `POST /tasks/{kind}`: submit a Kling task whose callback comes back to us, signed.
//!
//! 1. Validate what Kling would obviously reject; `callback_url` is ours to set.
//! 2. Choose the `external_task_id` (body, `Idempotency-Key`, or 128 random bits).
//! 3. A task already recorded under that id is returned as it is: Kling is not called twice.
//! 4. Record the task as `submitting` *before* calling Kling, so a callback that outruns
//!    Kling's create answer is matched.
//! 5. Create it at Kling; bind the `task_id` it returns.
//!    - A refusal forgets the record: nothing refused is left looking like a live task.
//!    - No answer, or 5002 (Kling's own timeout), may still have created it: look it up
//!      by `external_task_id` instead of creating it again. Still unknown, it stays
//!      `submitting` for the reconciler, and the caller gets 202.

use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::config::SubmitConfig;
use crate::kling::catalog::TaskKind;
use crate::kling::client::{KlingClient, KlingError, TaskRef, check_auth};
use crate::kling::request::{
    RequestError, comparable, digest_of, lookup, own_fields, set_path, validate,
};
use crate::ledger::made_since;
use crate::outbound::HttpTransport;
use crate::router::Route;
use crate::store::layout::TaskKey;
use crate::store::tasks::{NewSubmission, TaskStore};
use crate::store::{KeyValue, StoreError};
use crate::task::{StepRef, TaskEvent, TaskRecord};
use crate::validate::{choose_id, is_valid_external_task_id};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    InvalidRequest(#[from] RequestError),
    #[error(
        "`external_task_id` must be 1 to 64 characters of A-Z a-z 0-9 _ -, and not a kind's name or `reconcile`"
    )]
    InvalidExternalTaskId,
    #[error(
        "`Idempotency-Key` must be 1 to 64 characters of A-Z a-z 0-9 _ -, and not a kind's name or `reconcile`"
    )]
    InvalidIdempotencyKey,
    #[error("`Idempotency-Key` and the body's `external_task_id` differ")]
    IdempotencyKeyMismatch,
    #[error("this external_task_id was submitted with another request body")]
    IdempotencyConflict,
    #[error(
        "Kling already holds a task under this external_task_id, from before this deployment's first submission of it (an id used again after retention deleted its task): use another id"
    )]
    ExternalIdTaken,
    #[error(transparent)]
    Kling(#[from] KlingError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the caller gets back.
#[derive(Debug)]
pub struct Submitted {
    pub record: TaskRecord,
    /// `false` when the external id was already recorded and Kling was not called.
    pub created: bool,
}

pub struct SubmitRequest<'a> {
    pub kind: TaskKind,
    pub body: &'a [u8],
    pub idempotency_key: Option<&'a str>,
    /// Set when a pipeline submits one of its steps.
    pub pipeline: Option<&'a StepRef>,
}

pub fn submit(
    request: &SubmitRequest<'_>,
    config: &SubmitConfig,
    kv: &dyn KeyValue,
    transport: &dyn HttpTransport,
    clock: &dyn Clock,
    new_id: &dyn Fn() -> String,
) -> Result<Submitted, SubmitError> {
    let now_ms = clock.now_ms();
    let mut body = validate(request.kind, request.body)?;
    check_auth(&config.kling.auth, request.kind)?;
    let (callback_field, external_field) = own_fields(request.kind.family());
    let external_task_id = choose_external_task_id(
        lookup(&body, external_field),
        request.idempotency_key,
        new_id,
    )?;
    let store = TaskStore::new(kv);
    let key = TaskKey::external(&external_task_id);
    let digest = body_digest(request.kind, &body);
    // A submission given up as never created is no task: the id may be used again.
    let stored = store.head(&key)?;
    let stored_submission = stored.as_ref().and_then(|h| h.submission.clone());
    let head = match stored {
        Some(stored) => store.live(&key, stored)?,
        None => None,
    };
    // The given-up submission this one's head will be written over, if any.
    let replacing = stored_submission.filter(|_| head.is_none());
    // A pipeline step's request is rebuilt from the step before it on every advance, so
    // only its pipeline step must match; a client's retry must repeat its request.
    let conflicting = head
        .as_ref()
        .and_then(|h| h.submission.as_ref())
        .is_some_and(|stored| {
            stored.pipeline.as_ref() != request.pipeline
                || (request.pipeline.is_none()
                    && stored.body_digest.as_deref().is_some_and(|d| d != digest))
        });
    if conflicting {
        return Err(SubmitError::IdempotencyConflict);
    }
    let submitted = head.as_ref().and_then(|h| h.submission.clone());
    if let Some(record) = store.record(&key, head)? {
        // A task of ours not final whose submit stopped before storing its pending
        // entry (or whose binding stopped before storing its own, after a give-up
        // released the first) would never be reconciled: the retry stores it again (the
        // same name, or a spare entry that the next reconcile run folds into the
        // task's own).
        if let Some(submission) = submitted.filter(|_| !record.status.is_final()) {
            store.ensure_pending(&key, &submission, config.stale_after_ms)?;
        }
        return Ok(Submitted {
            record,
            created: false,
        });
    }

    let nonce = new_id();
    // The earliest submission of this id the store remembers: this one, or the given-up
    // one it replaces (unknown if that one's build did not record it). A task Kling
    // holds under the id from before it is another life's (retention deleted ours).
    let first_submitted_at = match &replacing {
        None => Some(now_ms),
        // A record of an older build: its own submission is the earliest known.
        Some(previous) => previous.first_submitted_at.or(Some(previous.submitted_at)),
    };
    let submission = NewSubmission {
        key: &key,
        external_task_id: &external_task_id,
        kind: request.kind.name(),
        pipeline: request.pipeline,
        nonce: &nonce,
        now_ms,
        first_due_ms: now_ms.saturating_add(config.stale_after_ms),
        body_digest: Some(&digest),
        first_submitted_at,
    };
    // Recorded, listed and pending (so a task Kling creates is never missing from
    // reconciliation) before Kling is called. If any write fails, forget the record too:
    // the caller's retry then starts afresh instead of finding a `submitting` task
    // nothing would reconcile.
    if let Err(error) = store.record_submission(&submission) {
        // Its own listing entry may be missing: the given-up one's stays.
        store.forget_submission(&submission, None)?;
        return Err(error.into());
    }
    // Once Kling has not refused this submission, it is listed under this one's entry,
    // which nothing in this request removes after that: the given-up one's entry would
    // list the id twice. (Removed no sooner: a refusal of this one may find the head a
    // late binding of the given-up one wrote meanwhile, and remove this one's entry.)
    // A failure to remove it costs a repeated entry in `GET /tasks`, nothing more.
    let unlist_replaced = || {
        if let Some(previous) = &replacing
            && let Err(error) = store.unlist_replaced(&submission, previous)
        {
            eprintln!("could not remove a replaced submission's listing entry: {error}");
        }
    };
    // A task Kling holds under the id from before our first submission of it is an
    // earlier life's (retention deleted our record): Kling refuses the id while it keeps
    // that task, so ours was not made, and the submission is given up as refused.
    let taken_by_an_earlier_life = |found: &TaskEvent| -> Result<(), SubmitError> {
        if made_since(first_submitted_at, found.created_at) {
            return Ok(());
        }
        store.forget_submission(&submission, replacing.as_ref())?;
        Err(SubmitError::ExternalIdTaken)
    };
    // Validation let `options` (API 2.0) be only an object or `null`: both paths can be set.
    set_path(&mut body, external_field, external_task_id.clone().into());
    set_path(
        &mut body,
        callback_field,
        config.callback_url(&external_task_id).into(),
    );

    let kling = KlingClient::new(&config.kling, transport, now_ms / 1000);
    match kling.create(request.kind, &body) {
        Ok(task_id) => store.bind_submission(&key, &task_id, Some(&submission))?,
        Err(error) if error.may_have_created() => {
            // Never create twice: ask Kling whether the task exists.
            if let Ok(Some(found)) = kling.query(request.kind, TaskRef::External(&external_task_id))
            {
                taken_by_an_earlier_life(&found)?;
                store.bind_submission(&key, &found.task_id, Some(&submission))?;
            }
        }
        Err(error) => {
            // Kling refuses an `external_task_id` it already has (1201): a concurrent
            // submit of the same id won the race, so bind its task instead of forgetting
            // (the record may be the winner's). If Kling cannot say, keep the record as
            // `submitting` for the reconciler, exactly like an ambiguous create.
            if error.is_invalid_request() {
                match kling.query(request.kind, TaskRef::External(&external_task_id)) {
                    Ok(Some(found)) => {
                        taken_by_an_earlier_life(&found)?;
                        store.bind_submission(&key, &found.task_id, Some(&submission))?;
                        unlist_replaced();
                        return answer(&store, &key, false);
                    }
                    // "Already exists", but not listed yet: the winner's create is on
                    // its way. Keep the record for the reconciler, which binds the
                    // task once Kling lists it; forgetting could delete the winner's.
                    Ok(None) if error.is_duplicate_external_id() => {
                        return answer(&store, &key, false);
                    }
                    // A duplicate Kling cannot be asked about: keep the record, and the
                    // caller retries.
                    Err(lookup) if error.is_duplicate_external_id() => return Err(lookup.into()),
                    // Anything else is the request refused: the caller gets the refusal,
                    // and nothing is left. (Were it a duplicate in other words after all,
                    // the winner's create answer makes its task whole again.)
                    Ok(None) | Err(_) => {}
                }
            }
            store.forget_submission(&submission, replacing.as_ref())?;
            return Err(error.into());
        }
    }
    unlist_replaced();
    answer(&store, &key, true)
}

/// The task as this submit left it, for the caller.
fn answer(store: &TaskStore<'_>, key: &TaskKey, created: bool) -> Result<Submitted, SubmitError> {
    let record = store.find_by_key(key)?.ok_or_else(|| {
        StoreError::Unavailable("the submitted task was not found after recording it".into())
    })?;
    Ok(Submitted { record, created })
}

/// The digest a submit of `request` (a JSON object) records: taken, as the submit takes
/// it, from the request's bytes. `None` for a request the kind refuses.
pub(crate) fn recorded_digest(kind: TaskKind, request: &Map<String, Value>) -> Option<String> {
    let sent = serde_json::to_vec(request).ok()?;
    Some(body_digest(kind, &validate(kind, &sent).ok()?))
}

/// The digest of the kind and the request as Kling gets it, compared as a retry's is
/// ([`comparable`]).
fn body_digest(kind: TaskKind, body: &Map<String, Value>) -> String {
    digest_of(&(kind.name(), comparable(body)))
}

#[cfg(test)]
#[test]
fn an_api_2_request_is_the_same_with_or_without_its_id_in_options() {
    use serde_json::json;
    let kind = TaskKind::from_name("text-to-video/kling-3.0").unwrap();
    let digest = |body: Value| body_digest(kind, body.as_object().unwrap());
    let plain = digest(json!({"prompt": "p"}));
    assert_eq!(
        digest(json!({"prompt": "p", "options": {"external_task_id": "job-1"}})),
        plain
    );
    assert_eq!(digest(json!({"prompt": "p", "options": null})), plain);
    assert_eq!(digest(json!({"prompt": "p", "options": {}})), plain);
    assert_eq!(
        digest(json!({"prompt": "p", "mode": null, "options": {"watermark_info": null}})),
        plain
    );
    assert_ne!(
        digest(json!({"prompt": "p", "options": {"watermark_info": {"enabled": true}}})),
        plain
    );
    assert_ne!(digest(json!({"prompt": "q"})), plain);
}

/// An id `GET /tasks/{id}` can reach: `/tasks/{kind}` and `/tasks/reconcile` are routes
/// of their own.
fn is_addressable(id: &str) -> bool {
    is_valid_external_task_id(id) && !Route::is_reserved_task_segment(id)
}

fn choose_external_task_id(
    in_body: Option<&Value>,
    idempotency_key: Option<&str>,
    new_id: &dyn Fn() -> String,
) -> Result<String, SubmitError> {
    let in_body = match in_body {
        None => None,
        Some(value) => match value.as_str() {
            Some(id) if is_addressable(id) => Some(id),
            _ => return Err(SubmitError::InvalidExternalTaskId),
        },
    };
    if let Some(key) = idempotency_key
        && !is_addressable(key)
    {
        return Err(SubmitError::InvalidIdempotencyKey);
    }
    choose_id(in_body, idempotency_key, new_id).ok_or(SubmitError::IdempotencyKeyMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::manual::ManualClock;
    use crate::config::Secret;
    use crate::config::tests::submit_config;
    use crate::outbound::TransportError;
    use crate::outbound::scripted::Scripted;
    use crate::store::memory::MemoryKv;
    use crate::task::TaskStatus;

    const CREATED: &str = r#"{"code":0,"message":"SUCCEED","request_id":"r","data":{"task_id":"86","task_status":"submitted"}}"#;

    fn run(
        kv: &MemoryKv,
        kling: &Scripted,
        body: &str,
        key: Option<&str>,
    ) -> Result<Submitted, SubmitError> {
        let request = SubmitRequest {
            kind: TaskKind::from_name("text2video").unwrap(),
            body: body.as_bytes(),
            idempotency_key: key,
            pipeline: None,
        };
        let clock = ManualClock(std::cell::Cell::new(1_000_000));
        submit(&request, &submit_config(), kv, kling, &clock, &|| {
            "generated-id".to_string()
        })
    }

    #[test]
    fn submits_with_a_signed_callback_and_binds_the_task_id() {
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![Ok((200, CREATED))]);
        let submitted = run(&kv, &kling, r#"{"prompt":"a cat","duration":"5"}"#, None).unwrap();
        assert!(submitted.created);
        let record = submitted.record;
        assert_eq!(record.status, TaskStatus::Submitted);
        assert_eq!(record.task_id.as_deref(), Some("86"));
        assert_eq!(record.external_task_id.as_deref(), Some("generated-id"));
        assert_eq!(record.kind.as_deref(), Some("text2video"));

        let sent: serde_json::Value = serde_json::from_slice(&kling.sent.borrow()[0].body).unwrap();
        assert_eq!(sent["prompt"], "a cat");
        assert_eq!(sent["duration"], "5");
        assert_eq!(sent["external_task_id"], "generated-id");
        assert_eq!(
            sent["callback_url"],
            format!(
                "https://hooks.example/callbacks/kling/generated-id?sig={}",
                crate::signatures::callback_url::sign(
                    &Secret::new("test-callback-secret"),
                    "generated-id"
                )
            )
        );
    }

    #[test]
    fn a_known_external_id_returns_the_stored_task_without_calling_kling() {
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![Ok((200, CREATED))]);
        run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap();
        let again = run(
            &kv,
            &kling,
            r#"{"prompt":"p","external_task_id":"job-1"}"#,
            None,
        )
        .unwrap();
        assert!(!again.created);
        assert_eq!(again.record.task_id.as_deref(), Some("86"));
        assert_eq!(kling.sent.borrow().len(), 1);
    }

    #[test]
    fn a_refusal_leaves_no_task_behind() {
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![Ok((
            429,
            r#"{"code":1303,"message":"too many","request_id":"r"}"#,
        ))]);
        let err = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap_err();
        assert!(
            matches!(err, SubmitError::Kling(KlingError::Api(ref e)) if e.code == 1303),
            "{err:?}"
        );
        // No pending entry: only its head, marked as given up, and the listing entry
        // through which retention deletes it.
        assert_eq!(
            kv.keys(),
            [
                "listed/0000001000000/job-1",
                "task:job-1",
                "task:job-1:forgotten:generated-id"
            ]
        );
        let store = TaskStore::new(&kv);
        assert!(store.find("job-1").unwrap().is_none());
        assert!(store.list(None, 10, None).unwrap().tasks.is_empty());
    }

    /// A create that certainly never left (a refused connection, a host Spin does not
    /// allow) cannot have made a task: it is not looked up, and it leaves what a refusal
    /// leaves, so the caller's 502 and retry start afresh.
    #[test]
    fn a_create_that_never_left_is_given_up_like_a_refusal() {
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![Err(TransportError::NotSent(
            "ConnectionRefused".into(),
        ))]);
        let err = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap_err();
        assert!(
            matches!(
                err,
                SubmitError::Kling(KlingError::Transport(TransportError::NotSent(_)))
            ),
            "{err:?}"
        );
        assert_eq!(kling.sent.borrow().len(), 1, "not looked up");
        assert_eq!(
            kv.keys(),
            [
                "listed/0000001000000/job-1",
                "task:job-1",
                "task:job-1:forgotten:generated-id"
            ]
        );
        assert!(TaskStore::new(&kv).find("job-1").unwrap().is_none());
    }

    /// A pipeline step's advance (or a client) retrying while Kling refuses (1303, 1102):
    /// each retry writes its head, listing entry and mark, and takes the ones of the
    /// given-up submission it replaced, so the id keeps one of each.
    #[test]
    fn retries_refused_like_the_one_before_pile_up_nothing() {
        let kv = MemoryKv::default();
        for attempt in 0..4u64 {
            let kling = rate_limited();
            let request = job_1();
            let clock = ManualClock(std::cell::Cell::new(1_000_000 + attempt * 120_000));
            let nonce = format!("n{attempt}");
            submit(&request, &submit_config(), &kv, &kling, &clock, &|| {
                nonce.clone()
            })
            .unwrap_err();
            assert_eq!(
                kv.keys(),
                [
                    format!("listed/{:013}/job-1", 1_000_000 + attempt * 120_000),
                    "task:job-1".to_string(),
                    format!("task:job-1:forgotten:n{attempt}"),
                ],
                "attempt {attempt}"
            );
        }
        // Then Kling takes it: a task like any other, listed once, at this submission.
        let kling = Scripted::new(vec![Ok((200, CREATED))]);
        let request = job_1();
        let clock = ManualClock(std::cell::Cell::new(2_000_000));
        let made = submit(&request, &submit_config(), &kv, &kling, &clock, &|| {
            "n-last".to_string()
        })
        .unwrap();
        assert_eq!(made.record.task_id.as_deref(), Some("86"));
        let listed: Vec<String> = kv
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("listed/"))
            .collect();
        assert_eq!(listed, ["listed/0000002000000/job-1"]);
        // Page by page, as `GET /tasks?limit=1` and its cursors serve it.
        let store = TaskStore::new(&kv);
        let (mut served, mut cursor) = (0, None);
        loop {
            let page = store.list(None, 1, cursor.as_ref()).unwrap();
            served += page.tasks.len();
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(served, 1);
    }

    /// Kling answering 1303 (too many running tasks).
    fn rate_limited() -> Scripted {
        Scripted::new(vec![Ok((
            429,
            r#"{"code":1303,"message":"too many","request_id":"r"}"#,
        ))])
    }

    /// A text2video submit of `job-1`.
    fn job_1() -> SubmitRequest<'static> {
        SubmitRequest {
            kind: TaskKind::from_name("text2video").unwrap(),
            body: br#"{"prompt":"p"}"#,
            idempotency_key: Some("job-1"),
            pipeline: None,
        }
    }

    /// A submit of an id whose earlier submission was given up, refused by Kling while a
    /// late callback binds that earlier submission after all: the earlier task stays
    /// listed (its entry is never taken by a submit Kling refused).
    #[test]
    fn a_refused_resubmit_leaves_a_late_bound_earlier_submission_listed() {
        let kv = MemoryKv::default();
        let refused = rate_limited;
        let request = job_1();
        let clock = ManualClock(std::cell::Cell::new(1_000_000));
        submit(&request, &submit_config(), &kv, &refused(), &clock, &|| {
            "n0".into()
        })
        .unwrap_err();
        // n0, given up, is bound by its late callback while Kling is asked about n1.
        let key = TaskKey::external("job-1");
        let late = NewSubmission {
            key: &key,
            external_task_id: "job-1",
            kind: "text2video",
            pipeline: None,
            nonce: "n0",
            now_ms: 1_000_000,
            first_due_ms: 1_300_000,
            body_digest: None,
            first_submitted_at: None,
        };
        let kling = crate::outbound::scripted::Meanwhile::new(
            vec![Ok((
                429,
                r#"{"code":1303,"message":"too many","request_id":"r"}"#,
            ))],
            || {
                TaskStore::new(&kv)
                    .bind_submission(&key, "77", Some(&late))
                    .unwrap()
            },
        );
        clock.0.set(2_000_000);
        submit(&request, &submit_config(), &kv, &kling, &clock, &|| {
            "n1".into()
        })
        .unwrap_err();
        let page = TaskStore::new(&kv).list(None, 10, None).unwrap();
        assert_eq!(
            page.tasks
                .iter()
                .map(|t| t.task_id.as_deref())
                .collect::<Vec<_>>(),
            [Some("77")]
        );
    }

    #[test]
    fn an_ambiguous_create_is_looked_up_not_repeated() {
        let found = r#"{"code":0,"message":"SUCCEED","data":{"task_id":"86","task_status":"processing","task_info":{"external_task_id":"job-1"}}}"#;
        for first in [
            Ok((504, r#"{"code":5002,"message":"timeout"}"#)),
            Err(TransportError::Timeout),
        ] {
            let kv = MemoryKv::default();
            let kling = Scripted::new(vec![first, Ok((200, found))]);
            let record = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1"))
                .unwrap()
                .record;
            assert_eq!(
                (record.status, record.task_id.as_deref()),
                (TaskStatus::Submitted, Some("86"))
            );
            let sent = kling.sent.borrow();
            assert_eq!(
                (sent[1].method, sent[1].url.as_str()),
                ("GET", "http://kling.test/v1/videos/text2video/job-1")
            );
            assert_eq!(sent.len(), 2, "created once at most");
        }
    }

    #[test]
    fn a_submit_that_cannot_be_indexed_is_forgotten_so_its_retry_creates_it() {
        // The 2nd set is the recent-log append, the 3rd the pending shard's.
        for nth in [2, 3] {
            let kv = MemoryKv::default();
            let kling = Scripted::new(vec![Ok((200, CREATED))]);
            kv.fail_nth_set.set(Some(nth));
            let err = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap_err();
            assert!(matches!(err, SubmitError::Store(_)), "{err:?}");
            assert!(
                TaskStore::new(&kv).find("job-1").unwrap().is_none(),
                "{nth}"
            );
            assert!(kling.sent.borrow().is_empty(), "Kling was not called");

            let retried = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap();
            assert!(retried.created, "{nth}");
            assert_eq!(retried.record.task_id.as_deref(), Some("86"));
        }
    }

    /// Kling keeps an external id unique while it holds the task: an id used again after
    /// retention deleted our record finds the earlier life's task, which is never taken
    /// for the new submission. Refused as a duplicate, or found after a create with no
    /// clear answer (Kling refuses the id while it holds that task, so ours was not
    /// made): `409`, and nothing is left that counts.
    #[test]
    fn a_task_kling_holds_from_before_the_id_s_first_submission_is_not_taken() {
        const DAY: u64 = 86_400_000;
        let now = 40 * DAY;
        let found = |created_at: u64| {
            format!(
                r#"{{"code":0,"message":"SUCCEED","data":{{"task_id":"86","task_status":"succeed","created_at":{created_at},"task_info":{{"external_task_id":"job-1"}}}}}}"#
            )
        };
        let exists = r#"{"code":1201,"message":"external_task_id already exists"}"#;
        let submit_at = |kv: &MemoryKv, kling: &Scripted| {
            let request = job_1();
            let clock = ManualClock(std::cell::Cell::new(now));
            submit(&request, &submit_config(), kv, kling, &clock, &|| {
                "n".into()
            })
        };

        let old = found(now - 10 * DAY);
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![Ok((400, exists)), Ok((200, old.as_str()))]);
        let err = submit_at(&kv, &kling).unwrap_err();
        assert!(matches!(err, SubmitError::ExternalIdTaken), "{err:?}");
        assert_eq!(
            crate::error::ApiError::from(err).status_and_code(),
            (409, "external_task_id_taken")
        );
        assert!(TaskStore::new(&kv).find("job-1").unwrap().is_none());
        assert!(
            TaskStore::new(&kv)
                .list(None, 10, None)
                .unwrap()
                .tasks
                .is_empty()
        );

        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![
            Ok((504, r#"{"code":5002,"message":"timeout"}"#)),
            Ok((200, old.as_str())),
        ]);
        let err = submit_at(&kv, &kling).unwrap_err();
        assert!(matches!(err, SubmitError::ExternalIdTaken), "{err:?}");
        assert!(TaskStore::new(&kv).find("job-1").unwrap().is_none());

        // Within the margin for Kling's clock (our clock hours fast): a concurrent
        // submit's task, taken.
        let recent = found(now - 6 * 60 * 60 * 1000);
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![Ok((400, exists)), Ok((200, recent.as_str()))]);
        let taken = submit_at(&kv, &kling).unwrap().record;
        assert_eq!(taken.task_id.as_deref(), Some("86"));
    }

    #[test]
    fn a_duplicate_external_id_refusal_binds_the_task_kling_has() {
        // Two submits of one id raced; Kling created the other one's and refuses ours.
        let found = r#"{"code":0,"message":"SUCCEED","data":{"task_id":"86","task_status":"processing","task_info":{"external_task_id":"job-1"}}}"#;
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![
            Ok((
                400,
                r#"{"code":1201,"message":"external_task_id already exists"}"#,
            )),
            Ok((200, found)),
        ]);
        let submitted = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap();
        assert!(!submitted.created);
        assert_eq!(submitted.record.task_id.as_deref(), Some("86"));
        assert!(TaskStore::new(&kv).find("job-1").unwrap().is_some());

        // Kling cannot be asked: the record stays (it may be the winner's) and the
        // caller gets a retryable error, not the refusal.
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![
            Ok((
                400,
                r#"{"code":1201,"message":"external_task_id already exists"}"#,
            )),
            Err(TransportError::Timeout),
        ]);
        let err = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap_err();
        assert!(
            matches!(err, SubmitError::Kling(KlingError::Transport(_))),
            "{err:?}"
        );
        let kept = TaskStore::new(&kv).find("job-1").unwrap().unwrap();
        assert_eq!(kept.status, TaskStatus::Submitting);

        // A 1201 for anything else is a refusal: nothing is left.
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![
            Ok((400, r#"{"code":1201,"message":"duration must be 5 or 10"}"#)),
            Ok((404, r#"{"code":1203,"message":"task not found"}"#)),
        ]);
        let err = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap_err();
        assert!(
            matches!(err, SubmitError::Kling(KlingError::Api(ref e)) if e.code == 1201),
            "{err:?}"
        );
        assert!(TaskStore::new(&kv).find("job-1").unwrap().is_none());

        // Also when Kling cannot be asked whether it has the task: the caller gets the
        // refusal, and a corrected request under the same id is free to go.
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![
            Ok((400, r#"{"code":1201,"message":"duration must be 5 or 10"}"#)),
            Err(TransportError::Timeout),
            Ok((200, CREATED)),
        ]);
        let err = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap_err();
        assert!(
            matches!(err, SubmitError::Kling(KlingError::Api(ref e)) if e.code == 1201),
            "{err:?}"
        );
        assert!(TaskStore::new(&kv).find("job-1").unwrap().is_none());
        assert!(
            crate::store::index::Index::pending(&kv)
                .entries()
                .unwrap()
                .is_empty()
        );
        let corrected = run(&kv, &kling, r#"{"prompt":"q"}"#, Some("job-1")).unwrap();
        assert!(corrected.created);
    }

    #[test]
    fn a_retry_of_a_submit_that_stopped_before_its_pending_entry_stores_it() {
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![
            Err(TransportError::Timeout),
            Err(TransportError::Timeout),
        ]);
        run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap();
        let pending = || crate::store::index::Index::pending(&kv).entries().unwrap();
        let entries = pending();
        assert_eq!(entries.len(), 1);
        // The instance stopped between the head and the pending entry: only the head.
        kv.delete(&format!("pending/{}", entries[0])).unwrap();
        assert!(pending().is_empty());

        let retried = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap();
        assert!(!retried.created, "Kling is not asked twice");
        assert_eq!(retried.record.status, TaskStatus::Submitting);
        assert_eq!(pending(), entries, "the reconciler will look it up");

        // Bound, with no entry left (a binding that stopped after its head, once a
        // give-up had released the submit's): the retry stores it again too.
        let kv2 = MemoryKv::default();
        let kling = Scripted::new(vec![Ok((200, CREATED))]);
        run(&kv2, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap();
        let index = crate::store::index::Index::pending(&kv2);
        for entry in index.entries().unwrap() {
            index.remove(&entry).unwrap();
        }
        let retried = run(&kv2, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap();
        assert_eq!(retried.record.status, TaskStatus::Submitted);
        assert_eq!(index.entries().unwrap().len(), 1);
    }

    #[test]
    fn an_idempotency_key_reused_with_another_body_is_a_conflict_and_changes_nothing() {
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![Ok((200, CREATED))]);
        run(
            &kv,
            &kling,
            r#"{"prompt":"p","duration":"5"}"#,
            Some("job-1"),
        )
        .unwrap();
        let before = kv.map.borrow().clone();
        // The same request in another key order, its id in the body: the same task.
        let same = r#"{"duration":"5","external_task_id":"job-1","prompt":"p"}"#;
        assert!(!run(&kv, &kling, same, None).unwrap().created);
        let err = run(
            &kv,
            &kling,
            r#"{"prompt":"q","duration":"5"}"#,
            Some("job-1"),
        )
        .unwrap_err();
        assert_eq!(err, SubmitError::IdempotencyConflict);
        // The same body for another kind is another request.
        let other_kind = SubmitRequest {
            kind: TaskKind::from_name("image-generation").unwrap(),
            body: br#"{"prompt":"p","duration":"5"}"#,
            idempotency_key: Some("job-1"),
            pipeline: None,
        };
        let clock = ManualClock(std::cell::Cell::new(1_000_000));
        let err = submit(&other_kind, &submit_config(), &kv, &kling, &clock, &|| {
            "n".into()
        });
        assert_eq!(err.unwrap_err(), SubmitError::IdempotencyConflict);
        assert_eq!(*kv.map.borrow(), before, "nothing changed");
        assert_eq!(kling.sent.borrow().len(), 1, "Kling was called once");
    }

    #[test]
    fn a_pipeline_step_never_takes_over_a_task_submitted_otherwise() {
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![Ok((200, CREATED))]);
        run(&kv, &kling, r#"{"prompt":"p"}"#, Some("promo-1")).unwrap();
        let step = StepRef {
            pipeline_id: "promo".into(),
            step: 1,
        };
        let as_step = SubmitRequest {
            kind: TaskKind::from_name("text2video").unwrap(),
            body: br#"{"prompt":"p"}"#,
            idempotency_key: Some("promo-1"),
            pipeline: Some(&step),
        };
        let clock = ManualClock(std::cell::Cell::new(1_000_000));
        let err = submit(&as_step, &submit_config(), &kv, &kling, &clock, &|| {
            "n".into()
        });
        assert_eq!(err.unwrap_err(), SubmitError::IdempotencyConflict);
    }

    #[test]
    fn already_exists_but_not_listed_yet_keeps_the_record_for_the_reconciler() {
        // Kling refuses the create (another submit of the id won) and does not list the
        // winner's task yet.
        let exists = r#"{"code":1201,"message":"external_task_id already exists"}"#;
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![
            Ok((400, exists)),
            Ok((404, r#"{"code":1203,"message":"not found"}"#)),
        ]);
        let submitted = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap();
        assert_eq!(submitted.record.status, TaskStatus::Submitting);
        assert_eq!(
            crate::store::index::Index::pending(&kv)
                .entries()
                .unwrap()
                .len(),
            1,
            "the reconciler binds it once Kling lists it"
        );

        // Any other invalid parameter is a refusal, and forgotten, even one about the id.
        for message in [
            "duration must be 5 or 10",
            "external_task_id length must be at most 32",
        ] {
            let kv = MemoryKv::default();
            let refused = format!(r#"{{"code":1201,"message":"{message}"}}"#);
            let kling = Scripted::new(vec![
                Ok((400, &refused)),
                Ok((404, r#"{"code":1203,"message":"not found"}"#)),
            ]);
            let err = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap_err();
            assert!(matches!(err, SubmitError::Kling(_)), "{err:?}");
            assert!(
                TaskStore::new(&kv).find("job-1").unwrap().is_none(),
                "{message}"
            );
        }
    }

    #[test]
    fn a_2xx_create_without_a_task_id_is_looked_up_not_forgotten() {
        let found = r#"{"code":0,"message":"SUCCEED","data":{"task_id":"86","task_status":"submitted","task_info":{"external_task_id":"job-1"}}}"#;
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![
            Ok((200, r#"{"code":0,"message":"SUCCEED","data":{}}"#)),
            Ok((200, found)),
        ]);
        let submitted = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap();
        assert_eq!(submitted.record.task_id.as_deref(), Some("86"));
        assert_eq!(submitted.record.status, TaskStatus::Submitted);

        // A 200 that is not Kling's at all (a proxy's page, a wrong kling_base_url) is no
        // acceptance: refused, and nothing is kept.
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![Ok((200, "<html>sign in</html>"))]);
        let err = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1")).unwrap_err();
        assert!(
            matches!(err, SubmitError::Kling(KlingError::InvalidResponse(200))),
            "{err:?}"
        );
        assert!(TaskStore::new(&kv).find("job-1").unwrap().is_none());
    }

    #[test]
    fn still_unknown_after_the_lookup_stays_submitting() {
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![
            Err(TransportError::Timeout),
            Err(TransportError::Timeout),
        ]);
        let record = run(&kv, &kling, r#"{"prompt":"p"}"#, Some("job-1"))
            .unwrap()
            .record;
        assert_eq!(
            (record.status, record.task_id),
            (TaskStatus::Submitting, None)
        );
    }

    #[test]
    fn invalid_requests_and_ids_never_reach_kling_or_the_store() {
        let kv = MemoryKv::default();
        let kling = Scripted::new(vec![]);
        let cases: [(&str, Option<&str>, SubmitError); 6] = [
            (
                r#"{"prompt":"p","callback_url":"https://evil"}"#,
                None,
                SubmitError::InvalidRequest(RequestError {
                    field: "callback_url".into(),
                    problem: "is set by kling-webhook (signed, pointing at its callback route); leave it out"
                        .into(),
                }),
            ),
            (
                r#"{"prompt":"p","external_task_id":"a b"}"#,
                None,
                SubmitError::InvalidExternalTaskId,
            ),
            (
                r#"{"prompt":"p"}"#,
                Some("a/b"),
                SubmitError::InvalidIdempotencyKey,
            ),
            (
                r#"{"prompt":"p","external_task_id":"lip-sync"}"#,
                None,
                SubmitError::InvalidExternalTaskId,
            ),
            (
                r#"{"prompt":"p"}"#,
                Some("reconcile"),
                SubmitError::InvalidIdempotencyKey,
            ),
            (
                r#"{"prompt":"p","external_task_id":"a"}"#,
                Some("b"),
                SubmitError::IdempotencyKeyMismatch,
            ),
        ];
        for (body, key, expected) in cases {
            assert_eq!(run(&kv, &kling, body, key).unwrap_err(), expected);
        }
        assert_eq!(kv.round_trips.get(), 0);
    }
}
