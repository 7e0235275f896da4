//! Reconciling: asking Kling about submitted tasks whose callbacks never came, so that a
//! task reaches its true final state even when Kling's callback is lost.
//!
//! One run reads the pending index (cost grows with pending tasks, not with every task
//! ever stored), drops entries whose task is final or gone, queries Kling for the oldest
//! `limit` tasks whose last news is older than `stale_after`, applies each answer through
//! the same ledger rules as a callback (source `poll`), and removes what became final.
//! Two runs at once are harmless: the ledger makes every apply idempotent and monotonic,
//! and a removal lost to a concurrent run is only a stale entry.

use serde::Serialize;

use crate::api::pipelines::{PipelineError, Submitter, advance};
use crate::api::submit::SubmitError;
use crate::clock::Clock;
use crate::config::KlingConfig;
use crate::kling::client::{KlingClient, KlingError};
use crate::kling::kind::TaskKind;
use crate::ledger::{TaskHead, Verdict, assemble};
use crate::outbound::HttpTransport;
use crate::pipeline::progress::{Next, PipelineView};
use crate::store::layout::TaskKey;
use crate::store::pending::PendingIndex;
use crate::store::tasks::{RecordError, TaskStore};
use crate::store::{KeyValue, StoreError};
use crate::task::{EventSource, TaskRecord};

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;
pub const DEFAULT_STALE_AFTER_SECS: u64 = 300;
/// Kling deletes results after 30 days; so do we, by default.
pub const DEFAULT_RETENTION_DAYS: u64 = 30;
/// Tasks one run deletes at most.
pub const MAX_PURGED_PER_RUN: usize = 50;
/// How long a task may stay `submitting` before a Kling that does not know it means the
/// create never went through. Far longer than any submit takes (the pending index's
/// lease and Kling's timeouts), so an in-flight submit is never forgotten under it.
pub const SUBMITTING_GRACE_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Clone, Copy)]
pub struct ReconcileOptions {
    /// Kling queries one run makes at most.
    pub limit: usize,
    /// A task is due when its last news (callback, poll or submit) is at least this old.
    pub stale_after_ms: u64,
    /// Final tasks whose last news is older than this are deleted; `None` keeps them.
    pub retention_ms: Option<u64>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct ReconcileReport {
    /// Tasks Kling was asked about.
    pub checked: usize,
    /// Tasks whose stored state changed.
    pub updated: usize,
    /// Tasks still pending after the run.
    pub pending: usize,
    /// Final tasks deleted by retention.
    pub purged: usize,
    /// Pipelines whose next step this run submitted, or which it failed.
    pub pipelines_advanced: usize,
    /// Pipelines still running after the run.
    pub pipelines_pending: usize,
    pub errors: Vec<ReconcileIssue>,
    /// Notifications sent from the outbox.
    pub notifications_sent: usize,
    /// Notifications still in the outbox after the run.
    pub notifications_pending: usize,
    /// Tasks whose state this run changed, as they now stand (to notify).
    #[serde(skip)]
    pub changed_tasks: Vec<TaskRecord>,
    /// Pipelines this run moved on or found finished (to notify).
    #[serde(skip)]
    pub changed_pipelines: Vec<PipelineView>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ReconcileIssue {
    /// The task's `external_task_id` (for a pipeline, the pipeline's id).
    pub external_task_id: String,
    pub code: String,
    pub message: String,
}

impl ReconcileIssue {
    fn new(key: &str, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            external_task_id: key.to_string(),
            code: code.into(),
            message: message.into(),
        }
    }
}

struct Due {
    last_news: u64,
    key: TaskKey,
    head: TaskHead,
}

pub fn reconcile(
    kv: &dyn KeyValue,
    kling: &KlingConfig,
    transport: &dyn HttpTransport,
    clock: &dyn Clock,
    options: ReconcileOptions,
) -> Result<ReconcileReport, StoreError> {
    let now = clock.now_ms();
    let store = TaskStore::new(kv);
    let index = PendingIndex::tasks(kv, clock);
    let mut report = ReconcileReport::default();
    let mut done = Vec::new();
    let mut due = Vec::new();

    for entry in index.read()? {
        let key = TaskKey::from_stored(entry.clone());
        let head = store.head(&key)?;
        let record = store.record(&key, head.clone())?;
        match (head, record) {
            (Some(head), Some(record))
                if !record.status.is_final() && head.submission.is_some() =>
            {
                let last_news = [
                    head.last_delivery_at,
                    head.last_polled_at,
                    head.submission.as_ref().map(|s| s.submitted_at),
                ]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(0);
                if now.saturating_sub(last_news) >= options.stale_after_ms {
                    due.push(Due {
                        last_news,
                        key,
                        head,
                    });
                }
            }
            // Final, forgotten (refused), or not ours to query: nothing left to do.
            _ => done.push(entry),
        }
    }
    due.sort_by_key(|d| d.last_news);

    let client = KlingClient::new(kling, transport, now / 1000);
    for Due { key, head, .. } in due.into_iter().take(options.limit) {
        let Some(kind) = head
            .submission
            .as_ref()
            .and_then(|s| TaskKind::from_name(&s.kind))
        else {
            done.push(key.as_str().to_string());
            continue;
        };
        // A task left `submitting` has no Kling id yet: ask by external id.
        let id = head
            .task_id
            .clone()
            .unwrap_or_else(|| key.as_str().to_string());
        report.checked += 1;
        match client.query(kind, &id) {
            Ok(Some(mut event)) => {
                event.source = EventSource::Poll;
                let head = if head.task_id.is_none() {
                    store.bind_submission(&key, &event.task_id)?;
                    store.head(&key)?
                } else {
                    Some(head)
                };
                let (verdict, bookkeeping) =
                    match store.record_event_with_head(&key, head.clone(), &event, now) {
                        Ok(outcome) => outcome,
                        Err(RecordError::Store(e)) => return Err(e),
                        Err(RecordError::Ledger(e)) => {
                            report.errors.push(ReconcileIssue::new(
                                key.as_str(),
                                "task_id_mismatch",
                                e.to_string(),
                            ));
                            continue;
                        }
                    };
                bookkeeping.apply(kv)?;
                if matches!(verdict, Verdict::Apply(_)) {
                    report.updated += 1;
                    report
                        .changed_tasks
                        .push(assemble(Some(bookkeeping.head()), event.clone()));
                }
                if event.status.is_final() {
                    done.push(key.as_str().to_string());
                }
            }
            Ok(None)
                if head.task_id.is_none()
                    && head.submission.as_ref().is_some_and(|s| {
                        now.saturating_sub(s.submitted_at) > SUBMITTING_GRACE_MS
                    }) =>
            {
                // The ambiguous create never went through: forget it, so that the same
                // external id can be submitted again without creating a second task.
                store.forget_submission(&key)?;
                report.updated += 1;
                done.push(key.as_str().to_string());
                report.errors.push(ReconcileIssue::new(
                    key.as_str(),
                    "not_created",
                    "Kling has no task with this external_task_id: the create did not go through; submit it again",
                ));
            }
            // Still being submitted, or Kling has not caught up: ask again next run.
            Ok(None) if head.task_id.is_none() => {}
            Ok(None) => report.errors.push(ReconcileIssue::new(
                key.as_str(),
                "unknown_at_kling",
                "Kling no longer knows this task (results are deleted after 30 days)",
            )),
            Err(KlingError::Api(e)) if matches!(e.code, 1302 | 1303) => {
                report.errors.push(ReconcileIssue::new(
                    key.as_str(),
                    "kling_rate_limited",
                    e.message,
                ));
                break; // Kling asked us to back off: the next run continues.
            }
            Err(error) => {
                let code = match &error {
                    KlingError::Api(e) => format!("kling_{}", e.code),
                    KlingError::Transport(_) => "kling_unreachable".into(),
                    KlingError::InvalidResponse(_) => "kling_bad_response".into(),
                };
                report
                    .errors
                    .push(ReconcileIssue::new(key.as_str(), code, error.to_string()));
            }
        }
    }
    report.pending = index.remove(&done)?;
    if let Some(retention) = options.retention_ms {
        report.purged = store.purge_before(now.saturating_sub(retention), MAX_PURGED_PER_RUN)?;
    }
    Ok(report)
}

/// Moves on every pipeline not finished yet: submits the step after one that ended while
/// its callback's follow-up was lost, and drops finished (or forgotten) pipelines from
/// the index. Runs after the tasks, so a step the run just found finished moves on now.
pub fn reconcile_pipelines(
    submitter: &Submitter<'_>,
    report: &mut ReconcileReport,
) -> Result<(), StoreError> {
    let index = PendingIndex::pipelines(submitter.kv, submitter.clock);
    let mut done = Vec::new();
    for id in index.read()? {
        match advance(&id, submitter) {
            Ok(Some(advanced)) => {
                if advanced.changed {
                    report.pipelines_advanced += 1;
                }
                let finished = matches!(advanced.view.next(), Next::Finished(_));
                if finished {
                    done.push(id);
                }
                if advanced.changed || finished {
                    report.changed_pipelines.push(advanced.view);
                }
            }
            Ok(None) => done.push(id),
            Err(PipelineError::Store(e)) => return Err(e),
            Err(error) => {
                let rate_limited = matches!(
                    &error,
                    PipelineError::Step { error: SubmitError::Kling(e), .. } if e.is_rate_limited()
                );
                report.errors.push(ReconcileIssue::new(
                    &id,
                    "pipeline_step_not_submitted",
                    error.to_string(),
                ));
                if rate_limited {
                    break; // Kling asked us to back off: the next run continues.
                }
            }
        }
    }
    report.pipelines_pending = index.remove(&done)?;
    Ok(())
}
