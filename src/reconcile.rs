//! Reconciling: asking Kling about submitted tasks whose callbacks never came, so that a
//! task reaches its true final state even when Kling's callback is lost.
//!
//! The pending index holds one entry per submission, named by when it is due, the
//! submission's nonce and the task (`pending/{due_ms}/{nonce}/{key}`). One run:
//! - reads the index (one `get-keys`) and takes what is due, oldest due first, so no
//!   entry can keep another from its turn;
//! - for each, reads the task and either releases the entry (the task is final, or the
//!   entry belongs to a submission that is not the task's current one), or asks Kling
//!   once and applies the answer through the same ledger rules as a callback (source
//!   `poll`);
//! - records every poll on the task whatever its outcome (`task:{key}:poll`), and moves
//!   the entry to its next due time, backing off exponentially up to [`MAX_POLL_GAP_MS`]:
//!   add the new entry, then remove the one it judged. Nothing is read-modify-written,
//!   so two runs at once can only leave a spare entry, which the next run folds in;
//! - gives a task up as `lost` when Kling keeps answering "not found" for it;
//! - stops starting new queries once its wall-time budget is spent, and reports what it
//!   left for the next run.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde::Serialize;

use crate::api::submit::SubmitError;
use crate::clock::Clock;
use crate::config::{KlingConfig, ReconcileLimits};
use crate::kling::catalog::TaskKind;
use crate::kling::client::{KlingClient, KlingError, TaskRef};
use crate::ledger::{PollState, TaskHead, Verdict};
use crate::notify::{Notification, Notifier};
use crate::outbound::HttpTransport;
use crate::pipeline::advance::{PipelineError, Submitter, Submitting, advance_if};
use crate::pipeline::progress::{
    Next, PIPELINE_WATCH_MS, PipelineFailure, PipelineView, STEP_LOST, STEP_NOT_SUBMITTED,
};
use crate::pipeline::spec::PipelineSpec;
use crate::store::index::{Index, PRESENT};
use crate::store::layout::TaskKey;
use crate::store::pending::{
    PendingEntry, SpareBy, added_before_a_binding, pending_entry, pending_submission,
    pending_value, spare_pending_entry,
};
use crate::store::pipelines::{PipelineStore, pipeline_entry};
use crate::store::retention::purge_expired;
use crate::store::tasks::{Forget, NewSubmission, RecordError, TaskStore, final_entry};
use crate::store::{KeyValue, StoreError};
use crate::task::{EventSource, TaskEvent, TaskRecord, TaskStatus};

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;
pub const DEFAULT_STALE_AFTER_SECS: u64 = 300;
/// Kling deletes results after 30 days; so do we, by default.
pub const DEFAULT_RETENTION_DAYS: u64 = 30;
/// Tasks one run deletes at most.
pub const MAX_PURGED_PER_RUN: usize = 50;
/// How long a task may stay `submitting` before a Kling that does not know it means the
/// create never went through. Longer than any submit takes (a create, and the lookup
/// that may follow it, each end within about three `kling_timeout_ms` of at most a
/// minute, a lookup in Kling's list of two pages six), so a submit in flight is rarely
/// given up. Correctness does not rest on it:
/// giving up deletes nothing, and whatever binds the task later tracks it again
/// ([`TaskStore::live_head`]).
pub const SUBMITTING_GRACE_MS: u64 = 10 * 60 * 1000;
/// The longest wait between two polls of one task.
pub const MAX_POLL_GAP_MS: u64 = 60 * 60 * 1000;
/// "Not found" answers in a row, over at least [`DEFAULT_LOST_AFTER_SECS`], before a
/// task is given up as `lost`.
pub const DEFAULT_LOST_AFTER_POLLS: u8 = 10;
pub const DEFAULT_LOST_AFTER_SECS: u64 = 24 * 60 * 60;
/// A run's wall-time budget: well under the 120 s the shipped schedulers allow a run.
pub const DEFAULT_BUDGET_SECS: u64 = 60;

#[derive(Debug, Clone, Copy)]
pub struct ReconcileOptions {
    /// Tasks one run asks Kling about at most (one query each; a task whose head it
    /// restores takes two, and counts once).
    pub limit: usize,
    /// A task is first due this long after its submission, and never sooner than this
    /// after its last news.
    pub stale_after_ms: u64,
    /// Final tasks whose day ended this long ago are deleted; `None` keeps them.
    pub retention_ms: Option<u64>,
    pub limits: ReconcileLimits,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct ReconcileReport {
    /// Tasks Kling was asked about.
    pub checked: usize,
    /// Tasks whose stored state changed.
    pub updated: usize,
    /// Tasks this run gave up as `lost`.
    pub lost: usize,
    /// Tasks still pending after the run.
    pub pending: usize,
    /// Pending tasks that were due but left for the next run (limit or budget).
    pub left_due: usize,
    /// Whether the run stopped because its wall-time budget was spent.
    pub budget_exhausted: bool,
    /// Final tasks deleted by retention.
    pub purged: usize,
    /// Pipelines whose next step this run submitted, or which it failed.
    pub pipelines_advanced: usize,
    /// Pipelines the reconciler still tracks after the run: running, or failed by a step
    /// given up as `lost` that Kling may still finish.
    pub pipelines_pending: usize,
    pub errors: Vec<ReconcileIssue>,
    /// Notifications sent from the outbox.
    pub notifications_sent: usize,
    /// Notifications still in the outbox after the run.
    pub notifications_pending: usize,
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

    /// A value under `bad` that does not parse, met while handling `key`: reported and
    /// passed over, never a reason for a run to stop.
    fn corrupt(key: &str, bad: &str) -> Self {
        Self::new(
            key,
            "store_corrupt",
            format!("the stored value under `{bad}` is not valid; skipped for now"),
        )
    }
}

/// The entries of one submission: normally one; a spare one where two runs moved it at
/// once. All are judged together and replaced by one.
struct Submission {
    key: TaskKey,
    nonce: String,
    due_ms: u64,
    entries: Vec<String>,
}

/// Groups the pending index's entries by submission, earliest due first.
fn submissions(entries: Vec<String>) -> Vec<Submission> {
    let mut grouped: Vec<Submission> = Vec::new();
    let mut group_of: HashMap<(String, String), usize> = HashMap::new();
    // Names sort by due time, so each group's first entry is its earliest.
    for entry in entries.iter().filter_map(|name| PendingEntry::parse(name)) {
        let id = (entry.key.as_str().to_string(), entry.nonce.clone());
        match group_of.entry(id) {
            Entry::Occupied(group) => grouped[*group.get()].entries.push(entry.name),
            Entry::Vacant(group) => {
                group.insert(grouped.len());
                grouped.push(Submission {
                    key: entry.key,
                    nonce: entry.nonce,
                    due_ms: entry.due_ms,
                    entries: vec![entry.name],
                });
            }
        }
    }
    grouped
}

/// Binds `task_id` to the submission a pending entry carries, as the late create answer
/// of the submit that made it would, and returns the head it leaves. Its spare entry is
/// due at `now` (the run's clock: a name of this run's own, never the create answer's,
/// which a releasing run may have listed).
fn bind_carried(
    kv: &dyn KeyValue,
    key: &TaskKey,
    submission: &crate::ledger::Submission,
    task_id: &str,
    now: u64,
) -> Result<Option<TaskHead>, StoreError> {
    let owner = NewSubmission {
        key,
        external_task_id: key.as_str(),
        kind: &submission.kind,
        pipeline: submission.pipeline.as_ref(),
        nonce: &submission.nonce,
        now_ms: submission.submitted_at,
        first_due_ms: now,
        body_digest: submission.body_digest.as_deref(),
        first_submitted_at: submission.first_submitted_at,
    };
    let store = TaskStore::new(kv);
    store.bind_submission(key, task_id, Some(&owner))?;
    store.head(key)
}

/// The submission one of `group`'s entries carries: the first that parses (a concurrent
/// run may have removed an entry, or an older build written `1`).
fn carried_submission(
    kv: &dyn KeyValue,
    group: &Submission,
) -> Result<Option<crate::ledger::Submission>, StoreError> {
    let index = Index::pending(kv);
    for entry in &group.entries {
        if let Some(submission) = index.value(entry)?.and_then(|v| pending_submission(&v)) {
            return Ok(Some(submission));
        }
    }
    Ok(None)
}

/// What a task's judgement leaves of its entries.
enum Judged {
    /// Final, its submission given up, or unknown to Kling past the grace: remove its
    /// entries.
    Release,
    /// Still pending: due again then.
    Due(u64),
    /// Kling asked us to back off: stop the run, leave the entries as they are.
    Stop,
}

/// `notifier`, when notifications are on, announces each change the run finds; it is
/// stored in the outbox before the task's pending entry is released, so no failure later
/// in the run can lose the announcement.
pub fn reconcile(
    kv: &dyn KeyValue,
    kling: &KlingConfig,
    transport: &dyn HttpTransport,
    clock: &dyn Clock,
    options: ReconcileOptions,
    notifier: Option<&Notifier<'_>>,
) -> Result<ReconcileReport, StoreError> {
    let started = clock.now_ms();
    let index = Index::pending(kv);
    let mut report = ReconcileReport::default();
    let pending = submissions(index.entries()?);
    let mut remaining = pending.len();
    let mut stopped = false;
    for submission in pending {
        if submission.due_ms > started {
            break; // sorted: nothing after is due either
        }
        if stopped || report.checked >= options.limit {
            report.left_due += 1;
            continue;
        }
        if clock.now_ms().saturating_sub(started) >= options.limits.budget_ms {
            report.budget_exhausted = true;
            report.left_due += 1;
            continue;
        }
        let poller = Poller {
            kv,
            kling,
            transport,
            clock,
            options: &options,
        };
        let mut keep_before_binding = false;
        let judged =
            match poller.judge(&submission, notifier, &mut report, &mut keep_before_binding) {
                // One value that does not parse must not stop every run: report it, and
                // look at the task again after the longest gap.
                Err(StoreError::Corrupt(bad)) => {
                    report
                        .errors
                        .push(ReconcileIssue::corrupt(submission.key.as_str(), &bad));
                    Judged::Due(clock.now_ms().saturating_add(MAX_POLL_GAP_MS))
                }
                judged => judged?,
            };
        match judged {
            Judged::Release => {
                remaining -= 1;
                for entry in &submission.entries {
                    index.remove(entry)?;
                }
            }
            Judged::Due(due_ms) => {
                // It carries the submission on, like the entries it replaces.
                let carried = match carried_submission(kv, &submission)? {
                    Some(carried) => Some(carried),
                    None => match TaskStore::new(kv).head(&submission.key) {
                        Ok(head) => head
                            .and_then(|head| head.submission)
                            .filter(|s| s.nonce == submission.nonce),
                        Err(StoreError::Corrupt(_)) => None,
                        Err(error) => return Err(error),
                    },
                };
                // The new entry first: at every moment at least one entry exists. A
                // concurrent run may already have added this very name: never remove it.
                // One that carries nothing gets a name of its own, so that it never
                // writes over the regular name carrying the submission (an overlapping
                // run moved the entries read here first, and the head names another).
                // A `.p` spare keeps its name, which says what wrote it: the regular
                // entry still carries the submission.
                let (next, value) = match &carried {
                    Some(carried) => (
                        pending_entry(&submission.key, &submission.nonce, due_ms),
                        pending_value(carried),
                    ),
                    None => (
                        spare_pending_entry(
                            &submission.key,
                            &submission.nonce,
                            due_ms,
                            SpareBy::Uncarried,
                        ),
                        PRESENT.to_vec(),
                    ),
                };
                index.put(&next, &value)?;
                // An entry a binding delivery wrote before its batch moves with the
                // task while it reads unbound (see `judge`).
                let spare = keep_before_binding.then(|| {
                    spare_pending_entry(
                        &submission.key,
                        &submission.nonce,
                        due_ms,
                        SpareBy::BeforeBinding,
                    )
                });
                if let Some(spare) = &spare {
                    index.put(spare, &value)?;
                }
                for entry in submission
                    .entries
                    .iter()
                    .filter(|e| **e != next && Some(*e) != spare.as_ref())
                {
                    index.remove(entry)?;
                }
            }
            Judged::Stop => {
                stopped = true;
                report.left_due += 1;
            }
        }
    }
    report.pending = remaining;
    // Retention is bounded by its own count, not the budget: a run that always spends
    // its budget must still purge.
    if let Some(retention) = options.retention_ms {
        let purged = purge_expired(
            kv,
            started.saturating_sub(retention),
            started,
            MAX_PURGED_PER_RUN,
        )?;
        report.purged = purged.tasks;
        for key in purged.corrupt {
            report.errors.push(ReconcileIssue::corrupt(&key, &key));
        }
    }
    Ok(report)
}

/// Asks Kling about one task and records what it said.
pub struct Poller<'a> {
    pub kv: &'a dyn KeyValue,
    pub kling: &'a KlingConfig,
    pub transport: &'a dyn HttpTransport,
    pub clock: &'a dyn Clock,
    pub options: &'a ReconcileOptions,
}

/// What one poll did to a task.
pub struct Polled {
    /// The task's new state, when the poll changed it (to notify, and to move its
    /// pipeline on).
    pub news: Option<TaskEvent>,
    pub record: Option<TaskRecord>,
    pub state: PollState,
    /// Kling's answer ended the task here: given up as never created. (A record that
    /// reads as none is not enough: a given-up head another submission's entry asks
    /// about reads as none whatever Kling says, and a head deleted while Kling was asked
    /// is asked about again from its entries.)
    pub gone: bool,
}

impl Poller<'_> {
    /// `keep_before_binding` is set when the group's entry a binding delivery wrote
    /// before its batch must move on with the task rather than go.
    fn judge(
        &self,
        submission: &Submission,
        notifier: Option<&Notifier<'_>>,
        report: &mut ReconcileReport,
        keep_before_binding: &mut bool,
    ) -> Result<Judged, StoreError> {
        let store = TaskStore::new(self.kv);
        let key = &submission.key;
        // A restored head comes with Kling's answer, which its poll applies: Kling is
        // asked once.
        let (stored, answered) = match store.head(key)? {
            Some(stored) => (stored, None),
            None => match self.restore_head(submission, report)? {
                Ok((head, found)) => (head, Some(found)),
                Err(judged) => return Ok(judged),
            },
        };
        // A head given up as never created (here, or by Kling's refusal) is judged as it
        // is stored: whoever binds it later tracks it again (`TaskStore::live_head`).
        let (head, given_up) = match store.live(key, stored.clone())? {
            Some(head) => (head, false),
            None => (stored, true),
        };
        // A delivery binding the task wrote an entry before its batch: while the task
        // reads unbound, only Kling's answer settles it (the delivery's tracking after
        // the batch may fail, its retry is then a repeat, and a give-up may come first),
        // so it is kept, moved to the task's next due time; once the task reads bound,
        // its own entries track it.
        *keep_before_binding = head.task_id.is_none()
            && submission
                .entries
                .iter()
                .any(|entry| added_before_a_binding(entry));
        let record = store.record(key, Some(head.clone()))?;
        if let Some(record) = record.as_ref().filter(|r| r.status.is_final()) {
            // A callback finished it: callbacks write no retention entry (one store
            // write fewer on the hot path), so the reconciler indexes it now; and the
            // callback's instance may have stopped before queueing the notification.
            Index::finals(self.kv).add(&final_entry(key, self.clock.now_ms()))?;
            if let Some(notifier) = notifier {
                notifier.ensure_notified(key, record)?;
            }
            return Ok(Judged::Release);
        }
        let now = self.clock.now_ms();
        // A head written while none was stored (a callback's, after retention took a
        // given-up head under a new submit) lacks the submission: the entry carries it,
        // and it is bound in as a late create answer would be.
        let head = match (&head.submission, &head.task_id) {
            (None, Some(task_id)) => match carried_submission(self.kv, submission)? {
                Some(sub) => bind_carried(self.kv, key, &sub, task_id, now)?.unwrap_or(head),
                None => head,
            },
            _ => head,
        };
        let Some(owner) = &head.submission else {
            // A head without its submission that nothing above could make whole (an
            // entry of an older build carries none): keep the entry rather than lose the
            // task; the next binding restores it.
            report.errors.push(ReconcileIssue::new(
                key.as_str(),
                "submission_record_missing",
                "the task's head lost its submission record; it is kept pending",
            ));
            return Ok(Judged::Due(now.saturating_add(MAX_POLL_GAP_MS)));
        };
        // This submission given up: Kling did not know the id (or refused this very
        // create). Whatever binds the task later tracks it again.
        if given_up && owner.nonce == submission.nonce && !*keep_before_binding {
            return Ok(Judged::Release);
        }
        // Any other entry of the id is judged with the task (the poll record defers it
        // while another entry polls): never released for the owner it names, which a
        // late write can change, only for what Kling says or a final state. One whose
        // record another, given-up submission overwrote asks Kling about the id once
        // more (a refusal of that one says nothing of this create).
        let previous = store.poll_state(key)?;
        // A callback that came recently, or a concurrent run that polled, defers it.
        let not_before = [
            head.last_news()
                .map(|at| at.saturating_add(self.options.stale_after_ms)),
            previous.as_ref().map(|p| p.next_poll_at),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        if not_before > now && answered.is_none() {
            return Ok(Judged::Due(not_before));
        }
        report.checked += 1;
        let previous = previous.unwrap_or_default();
        let polled = match self.poll_answered(key, head, previous, answered.map(|e| Ok(Some(e)))) {
            Ok(polled) => polled,
            Err(PollError::Store(e)) => return Err(e),
            Err(PollError::RateLimited { message, .. }) => {
                report.errors.push(ReconcileIssue::new(
                    key.as_str(),
                    "kling_rate_limited",
                    message,
                ));
                return Ok(Judged::Stop);
            }
        };
        if let Some(issue) = issue_of(key, &polled.state) {
            report.errors.push(issue);
        }
        if polled.news.is_some() {
            report.updated += 1;
            // Counted by the poll's own news: the record is the task's highest state,
            // which a final stored while Kling was asked outranks.
            if polled
                .news
                .as_ref()
                .is_some_and(|event| event.status == TaskStatus::Lost)
            {
                report.lost += 1;
            }
            if let (Some(record), Some(notifier)) = (&polled.record, notifier) {
                notifier.deliver(Notification::task(key, record, self.clock.now_ms()))?;
            }
        } else if let (Some(record), Some(notifier)) = (&polled.record, notifier)
            && record.source.is_some()
        {
            // Nothing new from Kling, but what is stored may never have been announced: a
            // callback whose instance stopped after the acknowledgement (a final one that
            // came while Kling was asked included), or a poll whose run stopped before
            // announcing it (its poll record could not be written). A record built from
            // the submission alone was never news.
            notifier.ensure_notified(key, record)?;
        }
        let finished = polled.gone || polled.record.as_ref().is_some_and(|r| r.status.is_final());
        Ok(if finished {
            if polled.record.is_some() {
                Index::finals(self.kv).add(&final_entry(key, now))?;
            }
            Judged::Release
        } else {
            Judged::Due(polled.state.next_poll_at)
        })
    }

    /// An entry whose head is gone: deleted by retention, with the task (its entries were
    /// released then, so this is rare), or as a given-up head of an earlier submission
    /// of the id, with no compare-and-swap to stop it taking the head a new submit
    /// wrote meanwhile. The entry carries its submission, so Kling is asked by the id:
    /// a task Kling has gets its head back (bound as a late create answer binds it) and
    /// is judged as usual; one Kling does not know past the grace is released.
    fn restore_head(
        &self,
        submission: &Submission,
        report: &mut ReconcileReport,
    ) -> Result<Result<(TaskHead, TaskEvent), Judged>, StoreError> {
        let key = &submission.key;
        // An entry of an older build carries nothing to ask Kling with.
        let Some(sub) = carried_submission(self.kv, submission)? else {
            return Ok(Err(Judged::Release));
        };
        let Some(kind) = TaskKind::from_name(&sub.kind) else {
            return Ok(Err(Judged::Release));
        };
        let now = self.clock.now_ms();
        // No poll record to back off with: a failed ask waits the longest gap.
        let later = Judged::Due(now.saturating_add(MAX_POLL_GAP_MS));
        let client = KlingClient::new(self.kling, self.transport, now / 1000);
        // A task from before our first submission of the id is another life's: not found.
        let answer = client
            .query(kind, TaskRef::External(key.as_str()))
            .map(|found| found.filter(|event| sub.may_have_made(event.created_at)));
        match answer {
            // Found: judged as usual from here on (and counted there).
            Ok(Some(found)) => Ok(bind_carried(self.kv, key, &sub, &found.task_id, now)?
                .map(|head| (head, found))
                .ok_or(later)),
            Ok(None) if now.saturating_sub(sub.submitted_at) > SUBMITTING_GRACE_MS => {
                report.checked += 1;
                Ok(Err(Judged::Release))
            }
            Err(KlingError::Api(e)) if matches!(e.code, 1302 | 1303) => {
                report.errors.push(ReconcileIssue::new(
                    key.as_str(),
                    "kling_rate_limited",
                    e.message,
                ));
                Ok(Err(Judged::Stop))
            }
            Ok(None) => {
                report.checked += 1;
                Ok(Err(later))
            }
            // Reported as a poll's error is: nothing else would show it.
            Err(error) => {
                report.checked += 1;
                report.errors.push(ReconcileIssue::new(
                    key.as_str(),
                    outcome_of(&error),
                    error.to_string(),
                ));
                Ok(Err(later))
            }
        }
    }

    /// Asks Kling once about a task submitted here, applies the answer, and records the
    /// poll on the task whatever its outcome. Used by the reconciler and by read repair.
    pub fn poll(
        &self,
        key: &TaskKey,
        head: TaskHead,
        previous: PollState,
    ) -> Result<Polled, PollError> {
        self.poll_answered(key, head, previous, None)
    }

    /// [`Self::poll`], with Kling's answer when it is in hand already (the one that
    /// restored the head), instead of asking again.
    fn poll_answered(
        &self,
        key: &TaskKey,
        head: TaskHead,
        previous: PollState,
        answered: Option<Result<Option<TaskEvent>, KlingError>>,
    ) -> Result<Polled, PollError> {
        let store = TaskStore::new(self.kv);
        let now = self.clock.now_ms();
        let mut state = PollState {
            polls: previous.polls.saturating_add(1),
            last_polled_at: now,
            next_poll_at: now.saturating_add(self.backoff_ms(previous.polls)),
            last_outcome: String::new(),
            last_error: None,
            // A streak of "not found" survives errors in between; only an answer ends it.
            not_found: previous.not_found,
            not_found_since: previous.not_found_since,
        };
        let Some(submission) = head.submission.clone() else {
            return Err(PollError::Store(StoreError::Corrupt(key.head())));
        };
        let Some(kind) = TaskKind::from_name(&submission.kind) else {
            // Not a kind this build knows: nothing to ask Kling; leave it be.
            state.last_outcome = "unknown_kind".into();
            store.save_poll_state(key, &state)?;
            return Ok(Polled {
                news: None,
                record: store.record(key, Some(head))?,
                state,
                gone: false,
            });
        };
        // A task left `submitting` has no Kling id yet: ask by external id.
        let id = match &head.task_id {
            Some(task_id) => TaskRef::Kling(task_id),
            None => TaskRef::External(key.as_str()),
        };
        let client = KlingClient::new(self.kling, self.transport, now / 1000);
        let mut news = None;
        // Given up (Kling does not know it): its entries go. Deleted while Kling was
        // asked: not brought back here (read repair shows none), but its entries stay,
        // and the reconciler's next judgement asks again from them (`restore_head`):
        // only retention's delete of a given-up head can take a live one, and Kling
        // knowing the task says this one is live.
        let (mut forgotten, mut deleted) = (false, false);
        let answer = answered.unwrap_or_else(|| client.query(kind, id));
        // Asked by our id: a task from before our first submission of it is another
        // life's of the id (retention deleted ours), so Kling does not have ours.
        let answer = match (&head.task_id, &head.submission) {
            (None, Some(submission)) => {
                answer.map(|found| found.filter(|e| submission.may_have_made(e.created_at)))
            }
            _ => answer,
        };
        match answer {
            // Kling's answer must be about this task: a task_id bound by mistake (or
            // forged) must not pour another task's result into this one.
            Ok(Some(event))
                if event
                    .external_task_id
                    .as_ref()
                    .is_some_and(|ext| head.external_task_id.as_ref() != Some(ext)) =>
            {
                state.last_outcome = "external_task_id_mismatch".into();
            }
            Ok(Some(mut event)) => {
                (state.not_found, state.not_found_since) = (0, None);
                event.source = EventSource::Poll;
                match self.apply_now(key, &event, now)? {
                    Applied::Verdict(Verdict::Apply(_)) => {
                        state.last_outcome = "changed".into();
                        news = Some(event);
                    }
                    Applied::Verdict(_) => state.last_outcome = "unchanged".into(),
                    Applied::OtherTask => state.last_outcome = "task_id_mismatch".into(),
                    Applied::Gone => {
                        state.last_outcome = "gone".into();
                        deleted = true;
                    }
                }
            }
            Ok(None) if head.task_id.is_none() => {
                if now.saturating_sub(submission.submitted_at) <= SUBMITTING_GRACE_MS {
                    state.last_outcome = "not_created_yet".into();
                } else {
                    match store.forget_unbound(key, &submission.nonce)? {
                        // The ambiguous create never went through: forgotten, so that
                        // the same external id can be submitted again without a second
                        // task.
                        Forget::Forgotten => {
                            state.last_outcome = "not_created".into();
                            forgotten = true;
                        }
                        Forget::Gone => {
                            state.last_outcome = "gone".into();
                            forgotten = true;
                        }
                        // Bound while Kling was asked (its create answer, or a callback),
                        // or submitted again: not this poll's to forget; the next poll
                        // asks by its task_id.
                        Forget::Bound | Forget::Superseded => {
                            state.last_outcome = "unchanged".into();
                        }
                    }
                }
            }
            Ok(None) => {
                state.last_outcome = "not_found".into();
                state.not_found = previous.not_found.saturating_add(1);
                let since = previous.not_found_since.unwrap_or(now);
                state.not_found_since = Some(since);
                let limits = &self.options.limits;
                if state.not_found >= limits.lost_after_polls
                    && now.saturating_sub(since) >= limits.lost_after_ms
                {
                    let event = lost_event(&head, key, &state, now);
                    // A final stored while Kling was asked beats `lost`.
                    match self.apply_now(key, &event, now)? {
                        Applied::Verdict(Verdict::Apply(_)) => {
                            state.last_outcome = "lost".into();
                            news = Some(event);
                        }
                        Applied::Gone => {
                            state.last_outcome = "gone".into();
                            deleted = true;
                        }
                        Applied::Verdict(_) | Applied::OtherTask => {}
                    }
                }
            }
            Err(KlingError::Api(e)) if matches!(e.code, 1302 | 1303) => {
                state.last_outcome = "kling_rate_limited".into();
                store.save_poll_state(key, &state)?;
                return Err(PollError::RateLimited {
                    message: e.message,
                    state,
                });
            }
            Err(error) => {
                state.last_outcome = outcome_of(&error);
                state.last_error = Some(error.to_string());
            }
        }
        if forgotten || deleted {
            return Ok(Polled {
                news: None,
                record: None,
                state,
                gone: forgotten,
            });
        }
        store.save_poll_state(key, &state)?;
        // The task as stored, its highest rank: news of a lower rank than a state a
        // callback stored meanwhile must not be shown (or announced) as the task's.
        let record = store.find_by_key(key)?;
        Ok(Polled {
            news,
            record,
            state,
            gone: false,
        })
    }

    /// Applies a poll's event to the head as it is now, not as it was before Kling
    /// answered (up to `kling_timeout_ms`): a callback stored meanwhile has news this
    /// poll must neither repeat nor write over, and a task deleted meanwhile is not
    /// brought back.
    fn apply_now(&self, key: &TaskKey, event: &TaskEvent, now: u64) -> Result<Applied, StoreError> {
        let store = TaskStore::new(self.kv);
        let Some(head) = store.head(key)? else {
            return Ok(Applied::Gone);
        };
        let head = if head.task_id.is_none() {
            // Kling's answer binds a task whose create answer never came; if it was given
            // up meanwhile, it is tracked again.
            let bound = store.bind_head(key, head, &event.task_id)?;
            if let Some(submission) = &bound.submission {
                store.track_binding(key, submission, now, SpareBy::Retrack)?;
            }
            bound
        } else {
            head
        };
        match store.record_event_with_head(key, Some(head), event, now, None) {
            Ok((verdict, bookkeeping)) => {
                bookkeeping.apply(self.kv)?;
                Ok(Applied::Verdict(verdict))
            }
            Err(RecordError::Store(e)) => Err(e),
            Err(RecordError::Ledger(_)) => Ok(Applied::OtherTask),
        }
    }

    /// The wait after `polls` earlier polls: `stale_after`, doubling, capped.
    fn backoff_ms(&self, polls: u32) -> u64 {
        let doubling = 1u64 << polls.min(20);
        self.options
            .stale_after_ms
            .saturating_mul(doubling)
            .min(MAX_POLL_GAP_MS)
    }
}

/// What applying a poll's event did.
enum Applied {
    Verdict(Verdict),
    /// The head is bound to another Kling task.
    OtherTask,
    /// The task was deleted while Kling was asked.
    Gone,
}

#[derive(Debug)]
pub enum PollError {
    Store(StoreError),
    /// Kling answered 1302/1303: ask nothing more now. `state`: the poll as recorded.
    RateLimited {
        message: String,
        state: PollState,
    },
}

impl From<StoreError> for PollError {
    fn from(error: StoreError) -> Self {
        PollError::Store(error)
    }
}

/// The final state a task that Kling no longer knows ends in.
fn lost_event(head: &TaskHead, key: &TaskKey, state: &PollState, now: u64) -> TaskEvent {
    let hours = now.saturating_sub(state.not_found_since.unwrap_or(now)) / 3_600_000;
    TaskEvent {
        task_id: head.task_id.clone().unwrap_or_default(),
        status: TaskStatus::Lost,
        status_msg: format!(
            "Kling answered \"not found\" to {} polls in a row over {hours} h: it does not know this task (a different kling_base_url region, or results older than 30 days)",
            state.not_found
        ),
        external_task_id: head
            .external_task_id
            .clone()
            .or_else(|| Some(key.as_str().to_string())),
        created_at: None,
        updated_at: None,
        videos: Vec::new(),
        images: Vec::new(),
        more: Default::default(),
        final_unit_deduction: None,
        source: EventSource::Poll,
    }
}

/// What a poll's outcome tells an operator, if anything.
fn issue_of(key: &TaskKey, state: &PollState) -> Option<ReconcileIssue> {
    let message = match state.last_outcome.as_str() {
        "changed" | "unchanged" | "not_created_yet" | "lost" | "gone" => return None,
        "not_created" => {
            "Kling has no task with this external_task_id: the create did not go through; submit it again"
        }
        "not_found" => {
            "Kling does not know this task (yet); it is given up as lost after repeated answers like this"
        }
        "task_id_mismatch" => {
            "Kling answered with another task_id than the one this task is bound to"
        }
        "external_task_id_mismatch" => "Kling answered about a task with another external_task_id",
        "unknown_kind" => "the task's kind is not known to this build",
        _ => state
            .last_error
            .as_deref()
            .unwrap_or("Kling could not be asked; the task is polled again later"),
    };
    Some(ReconcileIssue::new(
        key.as_str(),
        state.last_outcome.clone(),
        message,
    ))
}

/// A failed ask's outcome, as a poll records it and a run reports it.
fn outcome_of(error: &KlingError) -> String {
    match error {
        KlingError::Api(e) => format!("kling_{}", e.code),
        KlingError::Transport(_) => "kling_unreachable".into(),
        KlingError::InvalidResponse(_) | KlingError::MissingTaskId => "kling_bad_response".into(),
        KlingError::UnknownStatus => "kling_unknown_status".into(),
        KlingError::ApiKeyRequired => "kling_api_key_required".into(),
    }
}

/// Moves on every pipeline not finished yet: submits the step after one that ended while
/// its callback's follow-up was lost, and drops finished (or forgotten) pipelines from
/// the index. Runs after the tasks, so a step the run just found finished moves on now.
/// Past `deadline_ms` (the run's budget) the rest waits for the next run.
pub fn reconcile_pipelines(
    submitter: &Submitter<'_>,
    notifier: Option<&Notifier<'_>>,
    deadline_ms: u64,
    report: &mut ReconcileReport,
) -> Result<(), StoreError> {
    let index = Index::pipelines(submitter.kv);
    let store = PipelineStore::new(submitter.kv);
    let mut entries = index.entries()?;
    // A run starts at a pipeline drawn at random (entries sort by id), so that runs
    // whose budget ends early do not always leave the same pipelines for the next.
    if !entries.is_empty() {
        let draw = (submitter.new_id)().bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        let start = draw % entries.len();
        entries.rotate_left(start);
    }
    let mut remaining = entries.len();
    // Kling asked this run to back off (1302, 1303): a pipeline with a step to submit
    // waits for the next run; every other is still judged (a finished one announced and
    // let go).
    let mut backing_off = false;
    for entry in entries {
        if submitter.clock.now_ms() >= deadline_ms {
            report.budget_exhausted = true;
            break;
        }
        let Some((id, _generation)) = entry.split_once('/') else {
            index.remove(&entry)?;
            remaining -= 1;
            continue;
        };
        let spec = match store.spec(id) {
            Ok(spec) => spec.filter(|spec| pipeline_entry(&spec.id, &spec.generation) == entry),
            Err(StoreError::Corrupt(bad)) => {
                report.errors.push(ReconcileIssue::corrupt(id, &bad));
                continue;
            }
            Err(error) => return Err(error),
        };
        let watched_now = |spec: &PipelineSpec| {
            submitter.clock.now_ms() < spec.created_at.saturating_add(PIPELINE_WATCH_MS)
        };
        let submitting = if backing_off {
            Submitting::BackingOff
        } else {
            Submitting::Allowed
        };
        let finished = if let Some(spec) = spec {
            let watched = watched_now(&spec);
            match advance_if(id, submitter, submitting) {
                Ok(Some(advanced)) => {
                    if advanced.changed {
                        report.pipelines_advanced += 1;
                    }
                    // Queued before the entry can go: a finished pipeline is let go only
                    // once its notification is in the outbox.
                    if let Some(notifier) = notifier {
                        notifier.ensure_pipeline_notified(&advanced.view)?;
                    }
                    !stays_tracked(&advanced.view, watched)
                }
                Ok(None) => true,
                Err(PipelineError::Store(StoreError::Corrupt(bad))) => {
                    report.errors.push(ReconcileIssue::corrupt(id, &bad));
                    false
                }
                Err(PipelineError::Store(e)) => return Err(e),
                // Not submitted for as long as a pipeline is watched: it fails, and its
                // receiver hears so, instead of being retried for ever.
                Err(PipelineError::Step { step, error }) if !watched => {
                    let failure = PipelineFailure {
                        step,
                        code: STEP_NOT_SUBMITTED.into(),
                        message: format!(
                            "not submitted within 30 days of the pipeline's creation: {error}"
                        ),
                    };
                    store.fail(id, &failure)?;
                    if let (Some(notifier), Some(view)) = (notifier, store.view(id)?) {
                        notifier.ensure_pipeline_notified(&view)?;
                    }
                    true
                }
                Err(error) => {
                    let rate_limited = matches!(
                        &error,
                        PipelineError::Step { error: SubmitError::Kling(e), .. } if e.is_rate_limited()
                    );
                    report.errors.push(ReconcileIssue::new(
                        id,
                        "pipeline_step_not_submitted",
                        error.to_string(),
                    ));
                    backing_off |= rate_limited;
                    false
                }
            }
        } else {
            // Forgotten, or an entry of another creation of this id (forgotten, then
            // created again): not this pipeline's; the current one has its own entry.
            true
        };
        if finished {
            index.remove(&entry)?;
            remaining -= 1;
            // Judged from a view read before the remove. Whatever reopens a pipeline (a
            // step task's create answered after its refusal was stored) writes the task
            // and then adds this very entry, which the remove may just have taken: so the
            // pipeline is read again after it, and kept if it runs after all. No timing
            // is assumed: either this read sees the task, or the entry was added after
            // the remove.
            let reread = store.spec(id).and_then(|spec| {
                spec.filter(|spec| pipeline_entry(&spec.id, &spec.generation) == entry)
                    .map(|spec| Ok((store.view_of(&spec)?, watched_now(&spec))))
                    .transpose()
            });
            let runs = match reread {
                Ok(view) => view.is_some_and(|(view, watched)| stays_tracked(&view, watched)),
                Err(StoreError::Corrupt(_)) => false,
                // Cannot tell: kept, and the next run judges it again.
                Err(_) => true,
            };
            if runs {
                index.add(&entry)?;
                remaining += 1;
            }
        }
    }
    report.pipelines_pending = remaining;
    Ok(())
}

/// Whether the reconciler keeps a pipeline in its index: it is not finished, or a step
/// given up as `lost` ended it while it is `watched` (Kling may still finish that step,
/// and a late `succeed` beats `lost`: its next step is then submitted even if the
/// callback's follow-up never ran, for as long as Kling keeps a task's results).
fn stays_tracked(view: &PipelineView, watched: bool) -> bool {
    let overturnable = view.error.as_ref().is_some_and(|e| e.code == STEP_LOST) && watched;
    !matches!(view.next(), Next::Finished(_)) || overturnable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::manual::ManualClock;
    use crate::config::NotifyConfig;
    use crate::config::tests::submit_config;
    use crate::notify::Notifier;
    use crate::outbound::scripted::{Meanwhile, Scripted};
    use crate::signatures::standard_webhooks::WebhookSecret;
    use crate::store::memory::MemoryKv;
    use std::cell::{Cell, RefCell};

    fn options() -> ReconcileOptions {
        ReconcileOptions {
            limit: 50,
            stale_after_ms: 0,
            retention_ms: None,
            limits: ReconcileLimits {
                lost_after_polls: 3,
                lost_after_ms: 0,
                budget_ms: 60_000,
            },
        }
    }

    /// One run with [`options`] and notifications off.
    fn reconcile_once(
        kv: &MemoryKv,
        kling: &dyn HttpTransport,
        clock: &ManualClock,
    ) -> Result<ReconcileReport, StoreError> {
        reconcile(kv, &submit_config().kling, kling, clock, options(), None)
    }

    #[test]
    fn a_run_never_removes_the_entry_a_concurrent_run_just_added() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        bound(&kv, &key, "n1", "86");
        // Another run polled it, moved it to t = 50, and has not removed the old entry.
        let polled = PollState {
            polls: 1,
            last_polled_at: 5,
            next_poll_at: 50,
            ..PollState::default()
        };
        store.save_poll_state(&key, &polled).unwrap();
        Index::pending(&kv)
            .add(&pending_entry(&key, "n1", 50))
            .unwrap();

        let clock = ManualClock(Cell::new(10));
        let kling = Scripted::new(vec![]);
        let report = reconcile_once(&kv, &kling, &clock).unwrap();
        assert_eq!(report.checked, 0, "not due: the other run polled it");
        assert_eq!(
            Index::pending(&kv).entries().unwrap(),
            [pending_entry(&key, "n1", 50)],
            "the other run's entry survives"
        );
    }

    /// Kling's answer for task 86 under `job-1`, still processing.
    const FOUND_86: &str = r#"{"code":0,"message":"SUCCEED","data":{"task_id":"86","task_status":"processing","task_info":{"external_task_id":"job-1"}}}"#;
    const NOT_FOUND: &str = r#"{"code":1203,"message":"task not found"}"#;
    /// Kling's callback for task 86 under `job-1`, processing.
    const FOUND_86_CALLBACK: &str = r#"{"task_id":"86","task_status":"processing","updated_at":1,"task_info":{"external_task_id":"job-1"}}"#;

    /// A text2video submit of `key` at t = 0, first due at once.
    fn submission<'a>(key: &'a TaskKey, nonce: &'a str) -> NewSubmission<'a> {
        NewSubmission {
            key,
            external_task_id: key.as_str(),
            kind: "text2video",
            pipeline: None,
            nonce,
            now_ms: 0,
            first_due_ms: 0,
            body_digest: None,
            first_submitted_at: None,
        }
    }

    /// `key` recorded by a submit whose create has not answered.
    fn recorded(kv: &MemoryKv, key: &TaskKey, nonce: &str) {
        TaskStore::new(kv)
            .record_submission(&submission(key, nonce))
            .unwrap();
    }

    /// `key` submitted, its create answered with `task_id`.
    fn bound(kv: &MemoryKv, key: &TaskKey, nonce: &str, task_id: &str) {
        recorded(kv, key, nonce);
        TaskStore::new(kv)
            .bind_submission(key, task_id, Some(&submission(key, nonce)))
            .unwrap();
    }

    fn has_entry_of(kv: &MemoryKv, nonce: &str) -> bool {
        Index::pending(kv)
            .entries()
            .unwrap()
            .iter()
            .any(|e| PendingEntry::parse(e).is_some_and(|p| p.nonce == nonce))
    }

    fn notify_config() -> NotifyConfig {
        NotifyConfig {
            url: "https://next.example/hooks".into(),
            secrets: vec![
                WebhookSecret::parse("whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI=").unwrap(),
            ],
            retry_after_ms: 1_000,
            outside_allowed_origin: false,
        }
    }

    fn ids_sent(receiver: &Scripted) -> Vec<String> {
        receiver
            .sent
            .borrow()
            .iter()
            .map(|request| {
                let (_, id) = request
                    .headers
                    .iter()
                    .find(|(name, _)| *name == "webhook-id")
                    .unwrap();
                id.clone()
            })
            .collect()
    }

    #[test]
    fn news_whose_announcement_was_cut_short_is_announced_by_the_next_poll() {
        let kv = MemoryKv::default();
        let key = TaskKey::external("job-1");
        bound(&kv, &key, "n1", "86");
        let notify = notify_config();
        let receiver = Scripted::new(vec![Ok((200, "")), Ok((200, ""))]);
        let clock = ManualClock(Cell::new(10));
        let notifier = Notifier::new(&notify, &kv, &receiver, &clock);
        let run = |kling: &Scripted| {
            reconcile(
                &kv,
                &submit_config().kling,
                kling,
                &clock,
                options(),
                Some(&notifier),
            )
        };
        // The poll stores Kling's `processing`, then cannot write its poll record: the
        // run stops before announcing it.
        kv.fail_set_starting.replace(Some(key.poll()));
        assert!(run(&Scripted::new(vec![Ok((200, FOUND_86))])).is_err());
        assert!(ids_sent(&receiver).is_empty());
        assert!(has_entry_of(&kv, "n1"));
        // The next poll brings nothing new, and announces what is stored, once.
        for _ in 0..2 {
            clock.0.set(clock.0.get() + MAX_POLL_GAP_MS);
            run(&Scripted::new(vec![Ok((200, FOUND_86))])).unwrap();
            let sent = ids_sent(&receiver);
            assert!(
                matches!(&sent[..], [id] if id.starts_with("task_job-1_processing_")),
                "{sent:?}"
            );
        }
    }

    #[test]
    fn a_poll_that_binds_a_task_given_up_meanwhile_tracks_it_again() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        recorded(&kv, &key, "n1");
        let head = store.head(&key).unwrap().unwrap();
        // Read repair asks Kling; meanwhile a run gives the task up and releases it.
        assert_eq!(store.forget_unbound(&key, "n1").unwrap(), Forget::Forgotten);
        for entry in Index::pending(&kv).entries().unwrap() {
            Index::pending(&kv).remove(&entry).unwrap();
        }
        // Kling lists it after all: the poll binds it, and tracks it again.
        let polled = poll_once(&kv, &key, head, FOUND_86, 10);
        assert!(polled.news.is_some());
        let live = store.live_head(&key).unwrap().unwrap();
        assert_eq!(live.task_id.as_deref(), Some("86"));
        assert!(
            has_entry_of(&kv, "n1"),
            "{:?}",
            Index::pending(&kv).entries()
        );
    }

    /// One poll of `key`, read as `head`, at `now`, Kling answering `answer`.
    fn poll_once(kv: &MemoryKv, key: &TaskKey, head: TaskHead, answer: &str, now: u64) -> Polled {
        let kling = Scripted::new(vec![Ok((200, answer))]);
        let (config, clock) = (submit_config(), ManualClock(Cell::new(now)));
        let poller = Poller {
            kv,
            kling: &config.kling,
            transport: &kling,
            clock: &clock,
            options: &options(),
        };
        poller.poll(key, head, PollState::default()).ok().unwrap()
    }

    /// A task Kling holds under our id from before the id's first submission here (an
    /// id used again after retention deleted its earlier life) is not ours: the poll
    /// takes it for "not found" and binds nothing.
    #[test]
    fn a_poll_by_our_id_does_not_take_a_task_from_before_the_id_s_first_submission() {
        const DAY: u64 = 86_400_000;
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        store
            .record_submission(&NewSubmission {
                now_ms: 40 * DAY,
                first_submitted_at: Some(40 * DAY),
                ..submission(&key, "n1")
            })
            .unwrap();
        let head = store.head(&key).unwrap().unwrap();
        let old = format!(
            r#"{{"code":0,"message":"SUCCEED","data":{{"task_id":"86","task_status":"succeed","created_at":{},"task_info":{{"external_task_id":"job-1"}}}}}}"#,
            30 * DAY
        );
        let polled = poll_once(&kv, &key, head, &old, 40 * DAY + 1);
        assert!(polled.news.is_none());
        assert_eq!(polled.state.last_outcome, "not_created_yet");
        assert_eq!(store.head(&key).unwrap().unwrap().task_id, None);
        assert_eq!(store.key_of_task_id("86").unwrap(), None);
    }

    /// Leaves `key`'s binding delivery's entry, written before its batch and due at
    /// `due_ms`, as its only pending entry (the give-up or the run before released the
    /// others); returns its name.
    fn only_the_entry_before_a_batch(kv: &MemoryKv, key: &TaskKey, due_ms: u64) -> String {
        let sub = TaskStore::new(kv)
            .head(key)
            .unwrap()
            .unwrap()
            .submission
            .unwrap();
        for entry in Index::pending(kv).entries().unwrap() {
            Index::pending(kv).remove(&entry).unwrap();
        }
        let entry = spare_pending_entry(key, &sub.nonce, due_ms, SpareBy::BeforeBinding);
        Index::pending(kv)
            .put(&entry, &pending_value(&sub))
            .unwrap();
        entry
    }

    /// A run that reads the head given up while a late delivery (Kling confirmed it) is
    /// binding the task: the delivery's entry written before its batch makes the run ask
    /// Kling instead of releasing it, since the delivery's tracking after the batch may
    /// fail and its retry is then a repeat, leaving a bound task nothing polls. The entry
    /// moves with the task's due time (so polls back off) until the task reads bound.
    #[test]
    fn an_entry_a_binding_delivery_wrote_is_settled_by_kling_not_released_unasked() {
        let past_grace = SUBMITTING_GRACE_MS + 10;
        // Polls back off from a minute.
        let polls_back_off = || ReconcileOptions {
            stale_after_ms: 60_000,
            ..options()
        };
        let not_found = Ok((404, NOT_FOUND));
        let down = Ok((500, r#"{"code":5000,"message":"down"}"#));
        let spares = |kv: &MemoryKv| -> Vec<String> {
            Index::pending(kv)
                .entries()
                .unwrap()
                .into_iter()
                .filter(|e| added_before_a_binding(e))
                .collect()
        };
        for (kling_says, bound, kept) in [
            (Ok((200, FOUND_86)), true, true),
            (not_found, false, false),
            (down, false, true),
        ] {
            let kv = MemoryKv::default();
            let store = TaskStore::new(&kv);
            let key = TaskKey::external("job-1");
            recorded(&kv, &key, "n1");
            // Given up, its entries released; then the delivery's entry before its batch.
            assert_eq!(store.forget_unbound(&key, "n1").unwrap(), Forget::Forgotten);
            let before_batch = only_the_entry_before_a_batch(&kv, &key, 5);

            let kling = Scripted::new(vec![kling_says]);
            let clock = ManualClock(Cell::new(past_grace));
            let run = |kling: &Scripted| {
                reconcile(
                    &kv,
                    &submit_config().kling,
                    kling,
                    &clock,
                    polls_back_off(),
                    None,
                )
                .unwrap()
            };
            run(&kling);
            assert_eq!(kling.sent.borrow().len(), 1, "Kling is asked");
            let live = store.live_head(&key).unwrap();
            assert_eq!(
                live.and_then(|h| h.task_id).as_deref(),
                bound.then_some("86")
            );
            assert_eq!(
                has_entry_of(&kv, "n1"),
                kept,
                "{:?}",
                Index::pending(&kv).entries()
            );
            if !kept {
                continue;
            }
            // Kept while the task read given up at the judgement, moved to its next due.
            let moved = spares(&kv);
            assert!(moved.len() == 1 && moved[0] != before_batch, "{moved:?}");
            // Not asked again before then, however many runs; once the task reads bound,
            // the run lets the delivery's entry go, after writing the task's own.
            let quiet = Scripted::new(vec![]);
            run(&quiet);
            assert!(quiet.sent.borrow().is_empty());
            let left = if bound { vec![] } else { moved.clone() };
            assert_eq!(spares(&kv), left);
            if !bound {
                // Due again: asked once more, and still down, moved on again.
                let due = PendingEntry::parse(&moved[0]).unwrap().due_ms;
                clock.0.set(due);
                let kling = Scripted::new(vec![Ok((500, r#"{"code":5000,"message":"down"}"#))]);
                run(&kling);
                assert_eq!(kling.sent.borrow().len(), 1);
                let again = spares(&kv);
                assert!(again.len() == 1 && again != moved, "{again:?}");
            }
            assert!(
                has_entry_of(&kv, "n1"),
                "{:?}",
                Index::pending(&kv).entries()
            );
        }
    }

    /// Not given up yet when a run judges it, but unbound: the delivery's entry still moves
    /// on with the task, so a give-up right after cannot release the task unasked.
    #[test]
    fn an_unbound_task_keeps_its_binding_delivery_s_entry_until_it_reads_bound() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        recorded(&kv, &key, "n1");
        only_the_entry_before_a_batch(&kv, &key, 0);
        // Within the grace, Kling does not list it yet.
        let clock = ManualClock(Cell::new(10));
        let kling = Scripted::new(vec![Ok((404, NOT_FOUND))]);
        reconcile_once(&kv, &kling, &clock).unwrap();
        let entries = Index::pending(&kv).entries().unwrap();
        assert!(
            entries.iter().any(|e| added_before_a_binding(e)),
            "{entries:?}"
        );
        // Given up now (a refused retry, say): the next run asks Kling, never releases
        // it unasked.
        assert_eq!(store.forget_unbound(&key, "n1").unwrap(), Forget::Forgotten);
        clock.0.set(SUBMITTING_GRACE_MS + 20);
        let kling = Scripted::new(vec![Ok((200, FOUND_86))]);
        reconcile_once(&kv, &kling, &clock).unwrap();
        assert_eq!(kling.sent.borrow().len(), 1);
        let live = store.live_head(&key).unwrap();
        assert_eq!(live.and_then(|h| h.task_id).as_deref(), Some("86"));
    }

    /// A bound task whose only entry is the one its binding delivery wrote before its
    /// batch (the write after the batch failed): a run that stops halfway keeps it; it
    /// goes only once the task's own next entry is written.
    #[test]
    fn a_bound_task_s_last_entry_goes_only_after_its_next_is_written() {
        let kv = MemoryKv::default();
        let key = TaskKey::external("job-1");
        bound(&kv, &key, "n1", "86");
        let before_batch = only_the_entry_before_a_batch(&kv, &key, 5);
        let clock = ManualClock(Cell::new(10));
        // Stopped while judging (its poll record), or while writing the next entry.
        for stops_at in [key.poll(), "pending/".to_string()] {
            kv.fail_set_starting.replace(Some(stops_at));
            let kling = Scripted::new(vec![Ok((200, FOUND_86))]);
            assert!(reconcile_once(&kv, &kling, &clock).is_err());
            assert_eq!(
                Index::pending(&kv).entries().unwrap(),
                std::slice::from_ref(&before_batch)
            );
        }
        let kling = Scripted::new(vec![Ok((200, FOUND_86))]);
        reconcile_once(&kv, &kling, &clock).unwrap();
        let entries = Index::pending(&kv).entries().unwrap();
        assert!(
            !entries.iter().any(|e| added_before_a_binding(e)),
            "{entries:?}"
        );
        assert!(has_entry_of(&kv, "n1"), "{entries:?}");
    }

    #[test]
    fn a_submission_given_up_over_another_s_record_is_asked_about_once_more() {
        let past_grace = SUBMITTING_GRACE_MS + 1;
        for (kling_says, bound) in [(Ok((200, FOUND_86)), true), (Ok((404, NOT_FOUND)), false)] {
            let kv = MemoryKv::default();
            let store = TaskStore::new(&kv);
            let key = TaskKey::external("job-1");
            // Two submits of one id: n2's record over n1's; n1's create went out with no
            // answer, and Kling refused n2's (say 1303): n2 is given up.
            recorded(&kv, &key, "n1");
            recorded(&kv, &key, "n2");
            assert_eq!(store.forget_unbound(&key, "n2").unwrap(), Forget::Forgotten);
            Index::pending(&kv)
                .remove(&pending_entry(&key, "n2", 0))
                .unwrap();

            let kling = Scripted::new(vec![kling_says]);
            let clock = ManualClock(Cell::new(past_grace));
            reconcile_once(&kv, &kling, &clock).unwrap();
            assert_eq!(kling.sent.borrow().len(), 1, "n1's entry asks Kling");
            let live = store.live_head(&key).unwrap();
            if bound {
                // n1's task exists: bound, and tracked by the head's submission.
                assert_eq!(live.and_then(|h| h.task_id).as_deref(), Some("86"));
                assert!(
                    has_entry_of(&kv, "n2"),
                    "{:?}",
                    Index::pending(&kv).entries()
                );
            } else {
                assert_eq!(live, None);
                assert!(Index::pending(&kv).entries().unwrap().is_empty());
            }
        }
        // Kling cannot answer: the entry stays, still carrying its submission.
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        recorded(&kv, &key, "n1");
        recorded(&kv, &key, "n2");
        store.forget_unbound(&key, "n2").unwrap();
        Index::pending(&kv)
            .remove(&pending_entry(&key, "n2", 0))
            .unwrap();
        let kling = Scripted::new(vec![Ok((500, r#"{"code":5000,"message":"down"}"#))]);
        let clock = ManualClock(Cell::new(past_grace));
        reconcile_once(&kv, &kling, &clock).unwrap();
        assert!(has_entry_of(&kv, "n1"), "kept: Kling said nothing");
        let entry = Index::pending(&kv).entries().unwrap().remove(0);
        let carried = Index::pending(&kv).value(&entry).unwrap().unwrap();
        assert_eq!(
            pending_submission(&carried).map(|s| s.nonce).as_deref(),
            Some("n1")
        );

        // A submission given up over its own record is released without asking Kling.
        let kv = MemoryKv::default();
        let key = TaskKey::external("job-1");
        recorded(&kv, &key, "n1");
        TaskStore::new(&kv).forget_unbound(&key, "n1").unwrap();
        let kling = Scripted::new(vec![]);
        let clock = ManualClock(Cell::new(past_grace));
        reconcile_once(&kv, &kling, &clock).unwrap();
        assert!(kling.sent.borrow().is_empty());
        assert!(Index::pending(&kv).entries().unwrap().is_empty());
    }

    /// Kling's answer for task `86{n}` under `job-{n}`, still processing.
    fn found(n: u32) -> String {
        format!(
            r#"{{"code":0,"message":"SUCCEED","data":{{"task_id":"86{n}","task_status":"processing","task_info":{{"external_task_id":"job-{n}"}}}}}}"#
        )
    }

    #[test]
    fn a_restored_task_counts_once_against_the_run_s_limit() {
        let kv = MemoryKv::default();
        for n in 1..=3 {
            let key = TaskKey::external(&format!("job-{n}"));
            recorded(&kv, &key, &format!("n{n}"));
            kv.delete(&key.head()).unwrap();
        }
        // Each restored task: one ask by the id, whose answer its poll applies.
        let answers: Vec<String> = [1, 2].into_iter().map(found).collect();
        let kling = Scripted::new(answers.iter().map(|a| Ok((200, a.as_str()))).collect());
        let clock = ManualClock(Cell::new(SUBMITTING_GRACE_MS + 1));
        let options = ReconcileOptions {
            limit: 2,
            ..options()
        };
        let report = reconcile(&kv, &submit_config().kling, &kling, &clock, options, None).unwrap();
        assert_eq!((report.checked, report.left_due), (2, 1), "{report:?}");
        assert_eq!(kling.sent.borrow().len(), 2, "Kling asked once per task");
        assert_eq!(
            report.updated, 2,
            "the answer that restored each is applied"
        );
        for n in 1..=2 {
            let record = TaskStore::new(&kv)
                .find(&format!("86{n}"))
                .unwrap()
                .unwrap();
            assert_eq!(record.status, TaskStatus::Processing);
        }
    }

    /// A task whose head is gone is asked about by its id: when Kling cannot answer, the
    /// run says so, as for any poll, and keeps the entry.
    #[test]
    fn a_failed_ask_for_a_task_without_a_head_is_reported() {
        let kv = MemoryKv::default();
        let key = TaskKey::external("job-1");
        recorded(&kv, &key, "n1");
        kv.delete(&key.head()).unwrap();
        let kling = Scripted::new(vec![Ok((
            500,
            r#"{"code":5000,"message":"internal error","request_id":"r"}"#,
        ))]);
        let clock = ManualClock(Cell::new(10));
        let report = reconcile_once(&kv, &kling, &clock).unwrap();
        let codes: Vec<_> = report.errors.iter().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, ["kling_5000"], "{report:?}");
        assert!(has_entry_of(&kv, "n1"), "kept pending");
    }

    #[test]
    fn a_moved_entry_carries_the_submission_any_of_its_entries_carries() {
        let kv = MemoryKv::default();
        let key = TaskKey::external("job-1");
        recorded(&kv, &key, "n1");
        let sub = TaskStore::new(&kv)
            .head(&key)
            .unwrap()
            .unwrap()
            .submission
            .unwrap();
        // The head is another submit's by now, so only the entries can say.
        recorded(&kv, &key, "n2");
        // The group's first entry carries nothing (an older build's, or one a
        // concurrent run removed); the other carries the submission.
        let first = spare_pending_entry(&key, "n1", 0, SpareBy::Binding);
        Index::pending(&kv).put(&first, PRESENT).unwrap();
        let kling = Scripted::new(vec![Ok((404, NOT_FOUND)), Ok((404, NOT_FOUND))]);
        let clock = ManualClock(Cell::new(10));
        reconcile_once(&kv, &kling, &clock).unwrap();
        let entries: Vec<String> = Index::pending(&kv)
            .entries()
            .unwrap()
            .into_iter()
            .filter(|e| PendingEntry::parse(e).is_some_and(|p| p.nonce == "n1"))
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        let carried = Index::pending(&kv).value(&entries[0]).unwrap().unwrap();
        assert_eq!(pending_submission(&carried), Some(sub));
    }

    /// Two runs judge one entry: the other moves it on, with the submission, while this
    /// one polls; this one then finds nothing left that carries the submission (the
    /// head is another submit's) and must not write over the other's entry with one
    /// that carries nothing.
    #[test]
    fn an_entry_an_overlapping_run_moved_keeps_its_submission() {
        use crate::store::memory::Between;
        let kv = MemoryKv::default();
        let key = TaskKey::external("job-1");
        recorded(&kv, &key, "n1");
        let sub = TaskStore::new(&kv).head(&key).unwrap().unwrap().submission;
        recorded(&kv, &key, "n2");
        let of_n1 = |kv: &MemoryKv| -> Vec<String> {
            Index::pending(kv)
                .entries()
                .unwrap()
                .into_iter()
                .filter(|e| PendingEntry::parse(e).is_some_and(|p| p.nonce == "n1"))
                .collect()
        };
        let kling = Scripted::new((0..4).map(|_| Ok((404, NOT_FOUND))).collect());
        let clock = ManualClock(Cell::new(10));
        // The other run goes while this one records its poll.
        let racing = Between::new(&kv).before("set", key.poll(), || {
            reconcile_once(&kv, &kling, &clock).unwrap();
        });
        reconcile(
            &racing,
            &submit_config().kling,
            &kling,
            &clock,
            options(),
            None,
        )
        .unwrap();
        let carried: Vec<_> = of_n1(&kv)
            .iter()
            .filter_map(|e| Index::pending(&kv).value(e).unwrap())
            .filter_map(|v| pending_submission(&v))
            .collect();
        assert_eq!(carried, vec![sub.unwrap()], "{:?}", of_n1(&kv));
    }

    #[test]
    fn a_head_a_callback_wrote_with_no_submission_is_made_whole_from_the_entry() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        recorded(&kv, &key, "n3");
        kv.delete(&key.head()).unwrap();
        // A callback finds no head: it writes one of its own, bound, with no submission.
        let event: TaskEvent =
            crate::callback::parse::parse_callback(FOUND_86_CALLBACK.as_bytes()).unwrap();
        let (_, books) = store.record_event(&key, &event, 5).unwrap();
        books.apply(&kv).unwrap();
        assert!(store.head(&key).unwrap().unwrap().submission.is_none());

        let kling = Scripted::new(vec![Ok((200, FOUND_86))]);
        let clock = ManualClock(Cell::new(SUBMITTING_GRACE_MS + 1));
        let report = reconcile_once(&kv, &kling, &clock).unwrap();
        assert!(report.errors.is_empty(), "{report:?}");
        let head = store.head(&key).unwrap().unwrap();
        let nonce = head.submission.map(|s| s.nonce);
        assert_eq!(nonce.as_deref(), Some("n3"));
        assert_eq!(kling.sent.borrow().len(), 1, "then polled as usual");
    }

    #[test]
    fn a_head_deleted_while_kling_is_asked_keeps_its_entries_and_comes_back() {
        let kv = MemoryKv::default();
        let key = TaskKey::external("job-1");
        recorded(&kv, &key, "n1");
        // Kling, asked while retention deletes the head (from its read of an earlier,
        // given-up head of the id).
        let kling = Meanwhile::new(vec![Ok((200, FOUND_86))], || {
            kv.delete(&key.head()).unwrap();
        });
        let clock = ManualClock(Cell::new(SUBMITTING_GRACE_MS + 1));
        reconcile_once(&kv, &kling, &clock).unwrap();
        assert_eq!(
            TaskStore::new(&kv).head(&key).unwrap(),
            None,
            "not brought back here"
        );
        assert!(has_entry_of(&kv, "n1"), "Kling has it: kept");
        // The next run asks from the entry and restores it.
        let kling = Scripted::new(vec![Ok((200, FOUND_86)), Ok((200, FOUND_86))]);
        clock.0.set(clock.0.get() + MAX_POLL_GAP_MS);
        reconcile_once(&kv, &kling, &clock).unwrap();
        let head = TaskStore::new(&kv).live_head(&key).unwrap().unwrap();
        assert_eq!(head.task_id.as_deref(), Some("86"));
    }

    #[test]
    fn a_head_deleted_under_a_live_submission_comes_back_from_its_entry() {
        let past_grace = SUBMITTING_GRACE_MS + 1;
        let error = Ok((500, r#"{"code":5000,"message":"down"}"#));
        for (kling_says, outcome) in [
            (Ok((200, FOUND_86)), "restored"),
            (error, "kept"),
            // A 404 that is not Kling's "no such task" says nothing about the task.
            (
                Ok((404, r#"{"code":1202,"message":"wrong method"}"#)),
                "kept",
            ),
            (Ok((404, "<html>Not Found</html>")), "kept"),
            (Ok((404, NOT_FOUND)), "released"),
        ] {
            let kv = MemoryKv::default();
            let store = TaskStore::new(&kv);
            let key = TaskKey::external("job-1");
            recorded(&kv, &key, "n3");
            // Retention, from a read of an earlier given-up head, deletes this one.
            kv.delete(&key.head()).unwrap();

            let kling = Scripted::new(vec![kling_says, Ok((200, FOUND_86))]);
            let clock = ManualClock(Cell::new(past_grace));
            reconcile_once(&kv, &kling, &clock).unwrap();
            let head = store.live_head(&key).unwrap();
            match outcome {
                "restored" => {
                    let head = head.expect("restored");
                    assert_eq!(head.task_id.as_deref(), Some("86"));
                    let nonce = head.submission.map(|s| s.nonce);
                    assert_eq!(nonce.as_deref(), Some("n3"), "its own submission");
                    assert!(has_entry_of(&kv, "n3"));
                    assert_eq!(
                        store.find("86").unwrap().unwrap().kind.as_deref(),
                        Some("text2video")
                    );
                }
                "kept" => {
                    assert_eq!(head, None);
                    assert!(has_entry_of(&kv, "n3"), "Kling said nothing: kept");
                }
                _ => {
                    assert_eq!(head, None);
                    assert!(Index::pending(&kv).entries().unwrap().is_empty());
                }
            }
        }
    }

    #[test]
    fn a_corrupt_task_is_reported_and_skipped_and_the_run_goes_on() {
        let kv = MemoryKv::default();
        for (ext, nonce) in [("bad", "n0"), ("good", "n1")] {
            bound(&kv, &TaskKey::external(ext), nonce, &format!("t-{ext}"));
        }
        // The oldest due task's head is not what we wrote.
        kv.set("task:bad", b"not json").unwrap();
        let clock = ManualClock(Cell::new(10));
        let answer = serde_json::json!({"code": 0, "message": "ok", "data": {
            "task_id": "t-good", "task_status": "succeed",
            "task_info": {"external_task_id": "good"}, "updated_at": 3,
            "task_result": {"videos": [{"id": "v", "url": "https://cdn.example/v.mp4"}]}
        }})
        .to_string();
        let kling = Scripted::new(vec![Ok((200, &answer))]);
        let report = reconcile_once(&kv, &kling, &clock).unwrap();
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(
            (
                report.errors[0].external_task_id.as_str(),
                report.errors[0].code.as_str()
            ),
            ("bad", "store_corrupt")
        );
        assert_eq!(
            (report.checked, report.updated),
            (1, 1),
            "the next task was polled"
        );
        let entries = Index::pending(&kv).entries().unwrap();
        assert_eq!(
            entries,
            [pending_entry(
                &TaskKey::external("bad"),
                "n0",
                10 + MAX_POLL_GAP_MS
            )],
            "the bad one waits its turn; the good one is released"
        );
    }

    #[test]
    fn entries_group_by_submission_earliest_due_first() {
        let key = TaskKey::external("job-1");
        let names = vec![
            pending_entry(&key, "n1", 5),
            pending_entry(&TaskKey::external("job-2"), "n2", 6),
            pending_entry(&key, "n1", 7),
            pending_entry(&key, "n0", 8),
            "not an entry".to_string(),
        ];
        let mut sorted = names.clone();
        sorted.sort();
        let groups = submissions(sorted);
        let summary: Vec<_> = groups
            .iter()
            .map(|g| (g.key.as_str(), g.nonce.as_str(), g.due_ms, g.entries.len()))
            .collect();
        assert_eq!(
            summary,
            [
                ("job-1", "n1", 5, 2),
                ("job-2", "n2", 6, 1),
                ("job-1", "n0", 8, 1)
            ]
        );
    }

    mod pipelines {
        use super::*;
        use crate::api::pipelines::{NewPipeline, create};
        use crate::pipeline::advance::advance;
        use crate::pipeline::spec::{NewStep, parse_description};
        use crate::task::{StepRef, TaskEvent, Video};

        /// Kling's answer to the create of step `step` of pipeline `id`.
        fn created(id: &str, step: usize) -> String {
            format!(
                r#"{{"code":0,"message":"SUCCEED","data":{{"task_id":"t-{id}-{step}","task_status":"submitted"}}}}"#
            )
        }

        /// Pipeline `id` (text2video, then video-extend), step 0 submitted.
        fn create_pipeline(kv: &MemoryKv, clock: &ManualClock, id: &str) {
            let (_, steps) = parse_description(
                br#"{"steps":[{"kind":"text2video","request":{"prompt":"a"}},
                              {"kind":"video-extend","request":{"prompt":"b"}}]}"#,
            )
            .unwrap();
            let config = submit_config();
            let answer = created(id, 0);
            let kling = Scripted::new(vec![Ok((200, &answer))]);
            let submitter = Submitter::for_tests(&config, kv, &kling, clock);
            let new = NewPipeline {
                id: Some(id.into()),
                steps,
                idempotency_key: None,
            };
            assert!(create(new, &submitter).unwrap().created);
        }

        /// Kling reports step `step` of pipeline `id` with `status`, the way a callback
        /// stores it.
        fn report_step(kv: &MemoryKv, id: &str, step: usize, status: TaskStatus) {
            let external = format!("{id}-{step}");
            let event = TaskEvent {
                task_id: format!("t-{external}"),
                status,
                status_msg: String::new(),
                external_task_id: Some(external.clone()),
                created_at: None,
                updated_at: Some(5 + step as u64),
                videos: vec![Video {
                    id: Some(format!("v-{external}")),
                    ..Video::default()
                }],
                images: Vec::new(),
                more: Default::default(),
                final_unit_deduction: None,
                source: EventSource::Callback,
            };
            let key = TaskKey::external(&external);
            let (_, books) = TaskStore::new(kv).record_event(&key, &event, 6).unwrap();
            books.apply(kv).unwrap();
        }

        /// One pipeline pass: Kling answers each step submit with `kling`'s answers, the
        /// notification receiver with `receiver`'s.
        fn run(
            kv: &MemoryKv,
            clock: &ManualClock,
            kling: &Scripted,
            receiver: &Scripted,
        ) -> Result<ReconcileReport, StoreError> {
            let (config, notify) = (submit_config(), notify_config());
            let submitter = Submitter::for_tests(&config, kv, kling, clock);
            let notifier = Notifier::new(&notify, kv, receiver, clock);
            let mut report = ReconcileReport::default();
            reconcile_pipelines(&submitter, Some(&notifier), u64::MAX, &mut report)?;
            Ok(report)
        }

        fn new_pipeline(id: &str) -> NewPipeline<'static> {
            let (_, steps) = parse_description(
                br#"{"steps":[{"kind":"text2video","request":{"prompt":"a"}},
                              {"kind":"video-extend","request":{"prompt":"b"}}]}"#,
            )
            .unwrap();
            NewPipeline {
                id: Some(id.into()),
                steps,
                idempotency_key: None,
            }
        }

        /// `new_pipeline`'s steps with step 1's prompt `prompt`.
        fn other_steps(prompt: &str) -> Vec<NewStep> {
            let mut steps = new_pipeline("p").steps;
            steps[1].request.insert("prompt".into(), prompt.into());
            steps
        }

        /// Pipelines `ids` (`create_pipeline`'s), each with step 0 succeeded and step 1
        /// to submit.
        fn at_step_1(ids: &[&str]) -> (MemoryKv, ManualClock) {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            for id in ids {
                create_pipeline(&kv, &clock, id);
                report_step(&kv, id, 0, TaskStatus::Succeed);
            }
            (kv, clock)
        }

        /// Kling asks the run to back off while it submits one pipeline's step: the
        /// pipelines after it with nothing to submit are still judged, a finished one
        /// announced and let go; the one with a step to submit waits for the next run.
        #[test]
        fn a_rate_limited_step_leaves_the_other_pipelines_judged() {
            let (kv, clock) = at_step_1(&["a", "b", "c"]);
            report_step(&kv, "b", 1, TaskStatus::Succeed);
            let kling = Scripted::new(vec![Ok((429, BUSY))]);
            let receiver = Scripted::new(vec![Ok((200, "")), Ok((200, ""))]);
            let (config, notify) = (submit_config(), notify_config());
            // A draw that starts the run at a: the rate limit comes before b is judged.
            let starts_at_a = || "i".to_string();
            let submitter = Submitter {
                new_id: &starts_at_a,
                ..Submitter::for_tests(&config, &kv, &kling, &clock)
            };
            let notifier = Notifier::new(&notify, &kv, &receiver, &clock);
            let mut report = ReconcileReport::default();
            reconcile_pipelines(&submitter, Some(&notifier), u64::MAX, &mut report).unwrap();
            let sent = kling.sent.borrow();
            assert_eq!(sent.len(), 1, "one create, then no more");
            assert!(
                String::from_utf8_lossy(&sent[0].body).contains(r#""external_task_id":"a-1""#),
                "a first"
            );
            let left: Vec<String> = Index::pipelines(&kv)
                .entries()
                .unwrap()
                .into_iter()
                .map(|e| e.split('/').next().unwrap_or_default().to_string())
                .collect();
            assert_eq!(left, ["a", "c"], "b finished and was let go: {report:?}");
            assert!(
                PipelineStore::new(&kv).notified("b").unwrap().is_some(),
                "b's end announced first"
            );
        }

        /// Each run starts at a pipeline drawn at random: a run that Kling stops after
        /// one create does not always leave the same pipelines for the next.
        #[test]
        fn a_run_starts_at_a_pipeline_drawn_at_random() {
            let (kv, clock) = at_step_1(&["a", "b", "c"]);
            let config = submit_config();
            let first_create = |draw: &'static str| {
                let kling = Scripted::new(vec![Ok((429, BUSY))]);
                let new_id = move || draw.to_string();
                let submitter = Submitter {
                    new_id: &new_id,
                    ..Submitter::for_tests(&config, &kv, &kling, &clock)
                };
                let mut report = ReconcileReport::default();
                reconcile_pipelines(&submitter, None, u64::MAX, &mut report).unwrap();
                let sent = kling.sent.borrow();
                assert_eq!(sent.len(), 1, "one create, then the run backs off");
                let body: serde_json::Value = serde_json::from_slice(&sent[0].body).unwrap();
                body["external_task_id"].as_str().unwrap().to_string()
            };
            // Draws that land on each pipeline in turn ("g" is 103, "h" 104, "i" 105).
            assert_eq!(["g", "h", "i"].map(first_create), ["b-1", "c-1", "a-1"]);
        }

        #[test]
        fn a_known_id_answers_its_pipeline_only_to_the_same_steps() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            create_pipeline(&kv, &clock, "p");
            let before = kv.map.borrow().clone();
            let config = submit_config();
            let none = Scripted::new(Vec::new());
            let submitter = Submitter::for_tests(&config, &kv, &none, &clock);
            let retried = create(new_pipeline("p"), &submitter).unwrap();
            assert!(!retried.created);
            let other = NewPipeline {
                steps: other_steps("c"),
                ..new_pipeline("p")
            };
            match create(other, &submitter) {
                Err(PipelineError::IdempotencyConflict(id)) => assert_eq!(id, "p"),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("a pipeline answered to other steps"),
            }
            assert_eq!(*kv.map.borrow(), before, "nothing changed");
            assert!(none.sent.borrow().is_empty());
        }

        #[test]
        fn a_retry_is_the_same_steps_whatever_its_floats_nulls_key_order_and_step_0_inputs() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            let steps = |body: &[u8]| parse_description(body).unwrap().1;
            let first = br#"{"steps":[{"kind":"text2video",
                "request":{"prompt":"a","cfg_scale":0.9215686321258545}}]}"#;
            let config = submit_config();
            let answer = created("p", 0);
            let kling = Scripted::new(vec![Ok((200, &answer))]);
            let submitter = Submitter::for_tests(&config, &kv, &kling, &clock);
            let new = |steps| NewPipeline {
                id: Some("p".into()),
                steps,
                idempotency_key: None,
            };
            assert!(create(new(steps(first)), &submitter).unwrap().created);
            for retry in [
                &first[..],
                br#"{"steps":[{"request":{"cfg_scale":0.9215686321258545,"prompt":"a",
                    "negative_prompt":null},"kind":"text2video","inputs":{}}]}"#,
            ] {
                let again = create(new(steps(retry)), &submitter);
                assert!(
                    !again.unwrap().created,
                    "{}",
                    String::from_utf8_lossy(retry)
                );
            }
            let other = br#"{"steps":[{"kind":"text2video",
                "request":{"prompt":"a","cfg_scale":0.9215686321258546}}]}"#;
            assert!(matches!(
                create(new(steps(other)), &submitter),
                Err(PipelineError::IdempotencyConflict(_))
            ));
            // A description stored before its steps had a digest matches any steps.
            let store = PipelineStore::new(&kv);
            let mut older = store.spec("p").unwrap().unwrap();
            older.steps_digest = None;
            store.save_spec(&older).unwrap();
            assert!(!create(new(steps(other)), &submitter).unwrap().created);
        }

        #[test]
        fn a_known_id_with_other_steps_still_lists_a_pipeline_no_run_looks_at() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            // A create stored its description and stopped before indexing it.
            let mut spec =
                crate::pipeline::spec::build("p".into(), new_pipeline("p").steps, 1_000).unwrap();
            spec.generation = "g".into();
            PipelineStore::new(&kv).save_spec(&spec).unwrap();
            let config = submit_config();
            let none = Scripted::new(Vec::new());
            let submitter = Submitter::for_tests(&config, &kv, &none, &clock);
            let other = NewPipeline {
                steps: other_steps("c"),
                ..new_pipeline("p")
            };
            assert!(matches!(
                create(other, &submitter),
                Err(PipelineError::IdempotencyConflict(_))
            ));
            assert_eq!(Index::pipelines(&kv).entries().unwrap(), ["p/g"]);
            assert!(none.sent.borrow().is_empty());
        }

        #[test]
        fn a_create_whose_step_0_fails_while_another_body_is_kept_is_a_conflict() {
            use crate::store::memory::Between;
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            // Both found no description. The other create (other steps) stores its own
            // over ours and submits step 0 before ours records its step 0, which Kling
            // then refuses: the pipeline kept is the other's, and ours must not be told
            // its steps were taken.
            let racing = Between::new(&kv).before("set", "task:p-0".into(), || {
                other_create_of_steps_submits_step_0(&kv, other_steps("c"))
            });
            let kling = Scripted::new(vec![Ok((429, BUSY))]);
            match create_p(&racing, &kling, &clock) {
                Err(PipelineError::IdempotencyConflict(id)) => assert_eq!(id, "p"),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("the other's pipeline answered to our steps"),
            }
            let stored = PipelineStore::new(&kv).spec("p").unwrap().unwrap();
            assert_eq!(stored.generation, "other");
            assert_eq!(stored.steps[1].request["prompt"], "c");
            // Ours names a generation no longer stored, which the next run lets go.
            assert_eq!(Index::pipelines(&kv).entries().unwrap(), ["p/g", "p/other"]);
        }

        #[test]
        fn an_id_is_free_again_only_once_every_step_task_of_its_last_pipeline_is_gone() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            create_pipeline(&kv, &clock, "p");
            report_step(&kv, "p", 0, TaskStatus::Succeed);
            report_step(&kv, "p", 1, TaskStatus::Succeed);
            // Retention deleted step 0 (and with it the description) a day before step 1.
            for key in kv.keys() {
                if key.starts_with("pipeline:p") || key.starts_with("task:p-0") {
                    kv.delete(&key).unwrap();
                }
            }
            let config = submit_config();
            let kling = Scripted::new(Vec::new());
            let submitter = Submitter::for_tests(&config, &kv, &kling, &clock);
            let refused_for_step_1 = || {
                let before = kv.map.borrow().clone();
                let refused = create(new_pipeline("p"), &submitter).err();
                assert!(
                    matches!(
                        refused,
                        Some(PipelineError::Step {
                            step: 1,
                            error: SubmitError::IdempotencyConflict
                        })
                    ),
                    "{refused:?}"
                );
                assert_eq!(*kv.map.borrow(), before, "nothing stored");
                assert!(kling.sent.borrow().is_empty(), "Kling not asked");
            };
            refused_for_step_1();
            // Retention deletes step 1 too, its head before its final slot: halfway, the
            // slot it has left is still the old pipeline's step.
            kv.delete("task:p-1").unwrap();
            refused_for_step_1();
            // Done: the id is free.
            for key in kv.keys() {
                if key.starts_with("task:p-1") {
                    kv.delete(&key).unwrap();
                }
            }
            create_pipeline(&kv, &clock, "p");
        }

        #[test]
        fn a_create_retried_after_step_0_was_made_adopts_it() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            create_pipeline(&kv, &clock, "p");
            // The create failed after Kling made step 0 (a store error): it forgot the
            // description, and the client retries.
            for key in kv.keys() {
                if key.starts_with("pipeline:p") {
                    kv.delete(&key).unwrap();
                }
            }
            let config = submit_config();
            let kling = Scripted::new(Vec::new());
            let submitter = Submitter::for_tests(&config, &kv, &kling, &clock);
            let created = create(new_pipeline("p"), &submitter).unwrap();
            assert!(created.created);
            assert_eq!(
                created.view.steps[0]
                    .task
                    .as_ref()
                    .unwrap()
                    .task_id
                    .as_deref(),
                Some("t-p-0")
            );
            assert!(kling.sent.borrow().is_empty(), "no second step 0");
        }

        #[test]
        fn a_create_that_finds_a_concurrent_create_s_step_returns_that_pipeline() {
            use crate::store::memory::Between;
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            // The other create lands after this one found no description, before it
            // looks at step 1's task (which the other's step 0 must end to start).
            let racing = Between::new(&kv).before("get", "task:p-1".into(), || {
                create_pipeline(&kv, &clock, "p");
                report_step(&kv, "p", 0, TaskStatus::Succeed);
                report_step(&kv, "p", 1, TaskStatus::Processing);
            });
            let config = submit_config();
            let kling = Scripted::new(Vec::new());
            let submitter = Submitter::for_tests(&config, &racing, &kling, &clock);
            let created = create(new_pipeline("p"), &submitter).unwrap();
            assert!(!created.created);
            assert_eq!(created.view.id, "p");
            assert!(kling.sent.borrow().is_empty(), "no second step 0");
        }

        /// Kling's answer to a create while the account is rate limited.
        const BUSY: &str = r#"{"code":1303,"message":"busy"}"#;

        /// Pipeline `p` (text2video, then video-extend) created through `kv`, Kling
        /// answering as `kling` does.
        fn create_p(
            kv: &dyn KeyValue,
            kling: &dyn HttpTransport,
            clock: &ManualClock,
        ) -> Result<crate::api::pipelines::Created, PipelineError> {
            let config = submit_config();
            create(
                new_pipeline("p"),
                &Submitter::for_tests(&config, kv, kling, clock),
            )
        }

        /// A failure and a notified mark an earlier pipeline of the id left behind it
        /// (written just after retention took its description) are not the new one's.
        #[test]
        fn a_new_pipeline_of_an_id_inherits_no_failure_or_mark_left_behind() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            kv.set(
                "pipeline:p:failure",
                br#"{"step":1,"code":"step_failed","message":"old"}"#,
            )
            .unwrap();
            kv.set("pipeline:p:notified", b"old-webhook-id").unwrap();
            let answer = created("p", 0);
            let kling = Scripted::new(vec![Ok((200, answer.as_str()))]);
            let made = create_p(&kv, &kling, &clock).unwrap();
            assert!(made.created);
            assert_eq!(made.view.error, None);
            assert_eq!(kv.get("pipeline:p:failure").unwrap(), None);
            assert_eq!(kv.get("pipeline:p:notified").unwrap(), None);
        }

        /// What a concurrent create of pipeline `p` does once it has found no
        /// description: stores its own (generation `other`), indexes it, and records and
        /// binds its step 0 (Kling task `t-p-0`).
        fn other_create_submits_step_0(kv: &MemoryKv) {
            other_create_of_steps_submits_step_0(kv, new_pipeline("p").steps);
        }

        /// The same, the other create's steps being `steps`.
        fn other_create_of_steps_submits_step_0(kv: &MemoryKv, steps: Vec<NewStep>) {
            let mut spec = crate::pipeline::spec::build("p".into(), steps, 1_000).unwrap();
            spec.generation = "other".into();
            let store = PipelineStore::new(kv);
            store.save_spec(&spec).unwrap();
            store.index(&spec).unwrap();
            other_submits_step_0(kv);
        }

        /// Another submitter of pipeline `p`'s step 0 records and binds it (Kling task
        /// `t-p-0`).
        fn other_submits_step_0(kv: &MemoryKv) {
            other_step_0(kv, true, true);
        }

        /// Another submitter of pipeline `p`'s step 0 (nonce `other`): `record`s it,
        /// and if `bind`, Kling's create answer binds it to task `t-p-0`.
        fn other_step_0(kv: &MemoryKv, record: bool, bind: bool) {
            let key = TaskKey::external("p-0");
            let step = StepRef {
                pipeline_id: "p".into(),
                step: 0,
            };
            let submission = crate::store::tasks::NewSubmission {
                key: &key,
                external_task_id: "p-0",
                kind: "text2video",
                pipeline: Some(&step),
                nonce: "other",
                now_ms: 1_000,
                first_due_ms: 1_000,
                body_digest: None,
                first_submitted_at: None,
            };
            let tasks = TaskStore::new(kv);
            if record {
                tasks.record_submission(&submission).unwrap();
            }
            if bind {
                tasks
                    .bind_submission(&key, "t-p-0", Some(&submission))
                    .unwrap();
            }
        }

        #[test]
        fn a_create_whose_step_0_fails_keeps_a_concurrent_create_s_pipeline() {
            use crate::store::memory::Between;
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            // Both creates found no description. Ours stored its own over the other's,
            // and Kling refused its step 0 (rate limited); the other's step 0 is recorded
            // and bound just before our forget deletes the description they share.
            let racing = Between::new(&kv).before("delete", "pipeline:p".into(), || {
                other_create_submits_step_0(&kv)
            });
            let kling = Scripted::new(vec![Ok((429, BUSY))]);
            let found = create_p(&racing, &kling, &clock).unwrap();
            assert!(!found.created);
            assert_eq!(
                found.view.steps[0]
                    .task
                    .as_ref()
                    .unwrap()
                    .task_id
                    .as_deref(),
                Some("t-p-0"),
                "the other create's step 0"
            );
            // Stored and tracked: a reconcile run keeps it, and submits step 1 when step 0
            // ends.
            let none = Scripted::new(Vec::new());
            assert_eq!(run(&kv, &clock, &none, &none).unwrap().pipelines_pending, 1);
            report_step(&kv, "p", 0, TaskStatus::Succeed);
            let answer = created("p", 1);
            let kling = Scripted::new(vec![Ok((200, &answer))]);
            let receiver = Scripted::new(vec![Ok((200, ""))]);
            let report = run(&kv, &clock, &kling, &receiver).unwrap();
            assert_eq!(report.pipelines_advanced, 1);
            let view = crate::api::pipelines::get("p", &kv).unwrap().unwrap();
            assert_eq!(view.current_step, 1);
        }

        #[test]
        fn a_create_whose_step_0_fails_leaves_a_pipeline_whose_step_0_another_has_in_place() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            // The other create stored its description first, and its step 0 is recorded
            // while ours is on its way; Kling refuses ours, and the store then fails the
            // next write of the description (a write-back would be that write).
            let kling = Meanwhile::new(vec![Ok((429, BUSY))], || {
                other_submits_step_0(&kv);
                kv.fail_set_starting.replace(Some("pipeline:p".into()));
            });
            // Not deleted and written back (which would fail here): never deleted.
            let found = create_p(&kv, &kling, &clock).unwrap();
            assert!(!found.created);
            let view = crate::api::pipelines::get("p", &kv).unwrap().unwrap();
            assert_eq!(
                view.steps[0].task.as_ref().unwrap().task_id.as_deref(),
                Some("t-p-0")
            );
            assert_eq!(Index::pipelines(&kv).entries().unwrap(), ["p/g"]);
        }

        #[test]
        fn a_create_whose_step_0_record_hides_another_s_keeps_that_pipeline() {
            use crate::store::memory::Between;
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            // Both creates found step 0 unrecorded; the other's record lands just before
            // ours writes the same head over it. Kling refuses ours, and ours is given up:
            // the head now shows only ours, given up, while the other's create is on its
            // way to Kling.
            let racing = Between::new(&kv)
                .before("set", "task:p-0".into(), || other_step_0(&kv, true, false));
            let kling = Scripted::new(vec![Ok((429, BUSY))]);
            let found = create_p(&racing, &kling, &clock).unwrap();
            assert!(!found.created);
            // The other's create answer comes: its task is the pipeline's step 0.
            other_step_0(&kv, false, true);
            let view = crate::api::pipelines::get("p", &kv).unwrap().unwrap();
            assert_eq!(
                view.steps[0].task.as_ref().unwrap().task_id.as_deref(),
                Some("t-p-0")
            );
            assert_eq!(Index::pipelines(&kv).entries().unwrap(), ["p/g"]);
        }

        fn refused(created: Result<crate::api::pipelines::Created, PipelineError>) {
            assert!(
                matches!(
                    created,
                    Err(PipelineError::Step {
                        step: 0,
                        error: SubmitError::Kling(_)
                    })
                ),
                "{:?}",
                created.map(|c| c.view)
            );
        }

        #[test]
        fn a_retry_refused_again_is_not_kept_for_the_pending_entry_its_first_attempt_left() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            let config = submit_config();
            // Kling refuses every create (rate limited), and the pending entries there
            // were when the first one was sent are put back after it: a refused submit
            // whose entry's removal never happened.
            let entries = RefCell::new(Vec::new());
            let kling = Meanwhile::new(vec![Ok((429, BUSY)), Ok((429, BUSY))], || {
                let mut entries = entries.borrow_mut();
                if entries.is_empty() {
                    *entries = (kv.map.borrow().iter())
                        .filter(|(key, _)| key.starts_with("pending/"))
                        .map(|(key, value)| (key.clone(), value.clone()))
                        .collect();
                }
            });
            let first = Submitter::for_tests(&config, &kv, &kling, &clock);
            refused(create(new_pipeline("p"), &first));
            assert!(!entries.borrow().is_empty(), "the first attempt's entry");
            for (key, value) in entries.borrow().iter() {
                kv.set(key, value).unwrap();
            }
            // The client's retry (its own generation and nonce) is refused too: its
            // submit replaces the given-up one and deletes its mark, and the entry left
            // is still the first attempt's, nobody else's.
            let retry = Submitter {
                new_id: &|| "retry".to_string(),
                ..Submitter::for_tests(&config, &kv, &kling, &clock)
            };
            refused(create(new_pipeline("p"), &retry));
            assert!(crate::api::pipelines::get("p", &kv).unwrap().is_none());
        }

        #[test]
        fn a_pending_entry_of_a_given_up_submission_is_nobody_s() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            // Another submission of step 0 was given up (its mark written), and its head
            // is gone, but a run stopped before removing its pending entry.
            other_step_0(&kv, true, false);
            kv.set(&TaskKey::external("p-0").forgotten("other"), b"1")
                .unwrap();
            kv.delete("task:p-0").unwrap();
            let kling = Scripted::new(vec![Ok((429, BUSY))]);
            refused(create_p(&kv, &kling, &clock));
            assert!(crate::api::pipelines::get("p", &kv).unwrap().is_none());
        }

        #[test]
        fn a_spare_entry_of_another_s_step_0_counts_though_its_submission_was_given_up() {
            use crate::store::memory::Between;
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            // The other submission of step 0 was given up, then found at Kling by a
            // delivery (its spare entry); our record is written over its head, and Kling
            // refuses ours.
            let racing = Between::new(&kv).before("set", "task:p-0".into(), || {
                other_step_0(&kv, true, false);
                kv.set(&TaskKey::external("p-0").forgotten("other"), b"1")
                    .unwrap();
                let (name, value) = (kv.map.borrow().iter())
                    .find(|(key, _)| key.starts_with("pending/") && key.contains("/other/"))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .unwrap();
                kv.set(&name.replace("/other/", "/other.r/"), &value)
                    .unwrap();
            });
            let kling = Scripted::new(vec![Ok((429, BUSY))]);
            assert!(!create_p(&racing, &kling, &clock).unwrap().created);
        }

        #[test]
        fn a_create_whose_store_failed_after_kling_bound_its_step_0_keeps_the_pipeline() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            // Kling creates step 0; the binding's head is written, its spare pending
            // entry is not.
            let answer = created("p", 0);
            let kling = Meanwhile::new(vec![Ok((200, &answer))], || {
                kv.fail_set_starting.replace(Some("pending/".into()));
            });
            let kept = create_p(&kv, &kling, &clock).unwrap();
            assert!(!kept.created, "kept after the failure, not created");
            assert_eq!(
                kept.view.steps[0].task.as_ref().unwrap().task_id.as_deref(),
                Some("t-p-0")
            );
            assert_eq!(Index::pipelines(&kv).entries().unwrap(), ["p/g"]);
        }

        #[test]
        fn a_submission_given_up_before_the_create_counts_once_kling_has_it() {
            use crate::store::memory::Between;
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            // Another submission of step 0 was given up as never created; the create
            // reads it so. While the create is on its way, a delivery finds it at Kling
            // and binds it (its spare entry), and then the create's record is written
            // over its head, and Kling refuses the create.
            other_step_0(&kv, true, false);
            kv.set(&TaskKey::external("p-0").forgotten("other"), b"1")
                .unwrap();
            let racing = Between::new(&kv)
                .before("set", "task:p-0".into(), || other_step_0(&kv, false, true));
            let kling = Scripted::new(vec![Ok((429, BUSY))]);
            assert!(!create_p(&racing, &kling, &clock).unwrap().created);
        }

        #[test]
        fn a_create_whose_index_write_fails_indexes_the_pipeline_another_has_step_0_of() {
            use crate::store::memory::Between;
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            // Both found no description; the other create stored and indexed its own and
            // Kling bound its step 0 before ours wrote its description over it, and then
            // ours fails to index.
            kv.fail_set_starting.replace(Some("pipelines/p/g".into()));
            let racing = Between::new(&kv).before("set", "pipeline:p".into(), || {
                other_create_submits_step_0(&kv)
            });
            let none = Scripted::new(Vec::new());
            assert!(!create_p(&racing, &none, &clock).unwrap().created);
            // The stored description (ours) is indexed: the other's entry names a
            // generation no longer stored, which the next run lets go.
            assert_eq!(Index::pipelines(&kv).entries().unwrap(), ["p/g", "p/other"]);
        }

        #[test]
        fn a_create_whose_index_write_fails_keeps_a_concurrent_create_s_pipeline() {
            use crate::store::memory::Between;
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            kv.fail_set_starting.replace(Some("pipelines/p/g".into()));
            let racing = Between::new(&kv).before("delete", "pipeline:p".into(), || {
                other_create_submits_step_0(&kv)
            });
            let none = Scripted::new(Vec::new());
            let found = create_p(&racing, &none, &clock).unwrap();
            assert!(!found.created);
            assert!(none.sent.borrow().is_empty());
            let view = crate::api::pipelines::get("p", &kv).unwrap().unwrap();
            assert_eq!(
                view.steps[0].task.as_ref().unwrap().task_id.as_deref(),
                Some("t-p-0")
            );
        }

        /// Creates pipeline `p`: Kling creates step 0, and the store fails the binding's
        /// write. Returns the create's error.
        fn create_whose_step_0_binding_fails(
            kv: &MemoryKv,
            clock: &ManualClock,
        ) -> Option<PipelineError> {
            let config = submit_config();
            let answer = created("p", 0);
            let kling = Meanwhile::new(vec![Ok((200, &answer))], || kv.fail_next.set(true));
            let submitter = Submitter::for_tests(&config, kv, &kling, clock);
            create(new_pipeline("p"), &submitter).err()
        }

        #[test]
        fn a_create_whose_binding_failed_is_not_taken_for_a_concurrent_one_its_retry_adopts_it() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            let config = submit_config();
            // Step 0's record is this create's own: a 5xx, so the client retries.
            let failed = create_whose_step_0_binding_fails(&kv, &clock);
            assert!(
                matches!(
                    failed,
                    Some(PipelineError::Step {
                        step: 0,
                        error: SubmitError::Store(_)
                    })
                ),
                "{failed:?}"
            );
            let none = Scripted::new(Vec::new());
            let retry = Submitter::for_tests(&config, &kv, &none, &clock);
            assert!(create(new_pipeline("p"), &retry).unwrap().created);
            assert!(
                none.sent.borrow().is_empty(),
                "step 0 adopted, not sent again"
            );
        }

        /// A create refused at step 0 as submitted with another request.
        fn assert_step_0_conflict(refused: Option<PipelineError>) {
            assert!(
                matches!(
                    refused,
                    Some(PipelineError::Step {
                        step: 0,
                        error: SubmitError::IdempotencyConflict
                    })
                ),
                "{refused:?}"
            );
        }

        /// The same failed create, retried with another first step: the task the failed
        /// create left is not adopted for a step 0 it was not made for.
        #[test]
        fn a_retry_with_another_step_0_does_not_adopt_the_failed_create_s_task() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            let config = submit_config();
            assert!(create_whose_step_0_binding_fails(&kv, &clock).is_some());
            let mut other = new_pipeline("p");
            other.steps[0]
                .request
                .insert("prompt".into(), "a dog".into());
            let none = Scripted::new(Vec::new());
            let retry = Submitter::for_tests(&config, &kv, &none, &clock);
            let refused = create(other, &retry).err();
            assert_step_0_conflict(refused);
            assert!(none.sent.borrow().is_empty());
        }

        #[test]
        fn a_task_submitted_otherwise_under_step_0_s_id_is_not_taken_for_a_concurrent_create() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            let key = TaskKey::external("p-0");
            let plain = crate::store::tasks::NewSubmission {
                key: &key,
                external_task_id: "p-0",
                kind: "text2video",
                pipeline: None,
                nonce: "client",
                now_ms: 1_000,
                first_due_ms: 1_000,
                body_digest: None,
                first_submitted_at: None,
            };
            let tasks = TaskStore::new(&kv);
            tasks.record_submission(&plain).unwrap();
            tasks
                .bind_submission(&key, "t-client", Some(&plain))
                .unwrap();
            let none = Scripted::new(Vec::new());
            let refused = create_p(&kv, &none, &clock).err();
            assert_step_0_conflict(refused);
            assert!(crate::api::pipelines::get("p", &kv).unwrap().is_none());
            assert!(Index::pipelines(&kv).entries().unwrap().is_empty());
            assert!(none.sent.borrow().is_empty());
        }

        #[test]
        fn a_create_retried_after_its_instance_stopped_before_indexing_gets_step_0_submitted() {
            use crate::store::memory::Between;
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            let config = submit_config();
            let none = Scripted::new(Vec::new());
            // The first create stores the description, then its instance stops before
            // the index write (a panic stands for the stop).
            let stopping = Between::new(&kv).before("set", "pipelines/p/g".into(), || {
                panic!("the instance stops here")
            });
            let first = Submitter::for_tests(&config, &stopping, &none, &clock);
            let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                create(new_pipeline("p"), &first)
            }));
            assert!(stopped.is_err());
            assert!(Index::pipelines(&kv).entries().unwrap().is_empty());

            // The client's retry finds the pipeline and answers it as it is...
            let retry = Submitter::for_tests(&config, &kv, &none, &clock);
            let again = create(new_pipeline("p"), &retry).unwrap();
            assert!(!again.created);
            assert!(again.view.steps[0].task.is_none());
            assert!(none.sent.borrow().is_empty());
            // ...and the next reconcile run submits step 0.
            let answer = created("p", 0);
            let kling = Scripted::new(vec![Ok((200, &answer))]);
            let receiver = Scripted::new(Vec::new());
            let report = run(&kv, &clock, &kling, &receiver).unwrap();
            assert_eq!(report.pipelines_advanced, 1);
            assert_eq!(kling.sent.borrow().len(), 1, "step 0 sent once");
            let view = crate::api::pipelines::get("p", &kv).unwrap().unwrap();
            assert_eq!(
                view.steps[0].task.as_ref().unwrap().task_id.as_deref(),
                Some("t-p-0")
            );
        }

        #[test]
        fn a_step_start_and_an_end_whose_sender_stopped_are_still_announced_once() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            create_pipeline(&kv, &clock, "p");
            report_step(&kv, "p", 0, TaskStatus::Succeed);
            // The callback's follow-up submitted step 1, then stopped before queueing
            // its notification.
            let config = submit_config();
            let answer = created("p", 1);
            let kling = Scripted::new(vec![Ok((200, &answer))]);
            let submitter = Submitter::for_tests(&config, &kv, &kling, &clock);
            assert!(advance("p", &submitter).unwrap().unwrap().changed);

            let receiver = Scripted::new(vec![Ok((200, "")), Ok((200, ""))]);
            let none = Scripted::new(vec![]);
            run(&kv, &clock, &none, &receiver).unwrap();
            assert_eq!(ids_sent(&receiver), ["pipeline_p_running_1_1000"]);
            run(&kv, &clock, &none, &receiver).unwrap();
            assert_eq!(
                ids_sent(&receiver).len(),
                1,
                "a receiver took it: not again"
            );

            report_step(&kv, "p", 1, TaskStatus::Succeed);
            let report = run(&kv, &clock, &none, &receiver).unwrap();
            let sent = ids_sent(&receiver);
            assert_eq!(sent.len(), 2, "{sent:?}");
            assert!(sent[1].starts_with("pipeline_p_succeed_1_"), "{sent:?}");
            assert_eq!(report.pipelines_pending, 0, "released once announced");
            assert!(Index::outbox(&kv).entries().unwrap().is_empty());
        }

        #[test]
        fn a_finished_pipeline_is_released_only_once_its_notification_is_stored() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            create_pipeline(&kv, &clock, "p");
            report_step(&kv, "p", 0, TaskStatus::Failed);
            let none = Scripted::new(vec![]);

            // The outbox write fails: the run fails, and the pipeline stays tracked.
            kv.sets.set(0);
            kv.fail_nth_set.set(Some(1));
            assert!(run(&kv, &clock, &none, &none).is_err());
            kv.fail_nth_set.set(None);
            assert_eq!(Index::pipelines(&kv).entries().unwrap(), ["p/g"]);
            assert!(none.sent.borrow().is_empty(), "nothing sent unstored");

            // The receiver refuses it: stored, so the pipeline can go; the outbox retries.
            let refusing = Scripted::new(vec![Ok((500, ""))]);
            let report = run(&kv, &clock, &none, &refusing).unwrap();
            assert_eq!(report.pipelines_pending, 0);
            let queued = Index::outbox(&kv).entries().unwrap();
            assert_eq!(queued.len(), 1, "{queued:?}");
            assert!(queued[0].starts_with("pipeline_p_failed_0_"), "{queued:?}");
        }

        #[test]
        fn a_pipeline_failed_by_a_lost_step_stays_tracked_and_runs_on_when_kling_finishes_it() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            create_pipeline(&kv, &clock, "p");
            report_step(&kv, "p", 0, TaskStatus::Lost);
            let receiver = Scripted::new(vec![Ok((200, "")), Ok((200, ""))]);
            let none = Scripted::new(vec![]);
            let report = run(&kv, &clock, &none, &receiver).unwrap();
            assert_eq!(report.pipelines_pending, 1, "lost can be overturned: kept");
            assert!(ids_sent(&receiver)[0].starts_with("pipeline_p_failed_0_"));

            // Kling finishes step 0 after all; the callback's follow-up never ran.
            report_step(&kv, "p", 0, TaskStatus::Succeed);
            let answer = created("p", 1);
            let kling = Scripted::new(vec![Ok((200, &answer))]);
            let report = run(&kv, &clock, &kling, &receiver).unwrap();
            assert_eq!(report.pipelines_advanced, 1, "step 1 submitted by the run");
            assert_eq!(kling.sent.borrow().len(), 1);
            assert_eq!(ids_sent(&receiver)[1], "pipeline_p_running_1_1000");
            assert_eq!(report.pipelines_pending, 1);

            // Not for ever: once Kling no longer keeps its results, a lost step's
            // pipeline is let go.
            create_pipeline(&kv, &clock, "q");
            report_step(&kv, "q", 0, TaskStatus::Lost);
            let receiver = Scripted::new(vec![Ok((200, ""))]);
            assert_eq!(
                run(&kv, &clock, &none, &receiver)
                    .unwrap()
                    .pipelines_pending,
                2
            );
            clock.0.set(1_000 + PIPELINE_WATCH_MS);
            let receiver = Scripted::new(vec![]);
            let report = run(&kv, &clock, &none, &receiver).unwrap();
            assert_eq!(report.pipelines_pending, 1, "p runs on; q is let go");
            assert_eq!(Index::pipelines(&kv).entries().unwrap(), ["p/g"]);
        }

        #[test]
        fn a_pipeline_whose_next_step_cannot_be_submitted_fails_after_the_watch() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            create_pipeline(&kv, &clock, "p");
            report_step(&kv, "p", 0, TaskStatus::Succeed);
            let down = r#"{"code":5000,"message":"down"}"#;
            let receiver = Scripted::new(vec![Ok((200, ""))]);
            let kling = Scripted::new(vec![Ok((500, down))]);
            let report = run(&kv, &clock, &kling, &receiver).unwrap();
            assert_eq!(report.errors[0].code, "pipeline_step_not_submitted");
            assert_eq!(report.pipelines_pending, 1, "retried by the next run");

            clock.0.set(1_000 + PIPELINE_WATCH_MS);
            let kling = Scripted::new(vec![Ok((500, down))]);
            let report = run(&kv, &clock, &kling, &receiver).unwrap();
            assert_eq!(report.pipelines_pending, 0, "given up, and let go");
            let view = PipelineStore::new(&kv).view("p").unwrap().unwrap();
            let error = view.error.unwrap();
            assert_eq!((error.step, error.code.as_str()), (1, STEP_NOT_SUBMITTED));
            let sent = ids_sent(&receiver);
            assert!(sent[0].starts_with("pipeline_p_failed_1_"), "{sent:?}");
        }

        /// A store that fails while the step is recorded is the store's trouble, not
        /// the step's: past the watch too, the pipeline is not failed for it.
        #[test]
        fn a_store_failure_while_submitting_a_step_never_fails_the_pipeline() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            create_pipeline(&kv, &clock, "p");
            report_step(&kv, "p", 0, TaskStatus::Succeed);
            clock.0.set(1_000 + PIPELINE_WATCH_MS);
            kv.fail_set_starting.replace(Some("task:p-1".into()));
            let receiver = Scripted::new(vec![Ok((200, ""))]);
            // The run answers the store's error (503), as for any store failure; the
            // next run tries the step again.
            let run = run(&kv, &clock, &Scripted::new(vec![]), &receiver);
            assert!(matches!(run, Err(StoreError::Unavailable(_))), "{run:?}");
            let view = PipelineStore::new(&kv).view("p").unwrap().unwrap();
            assert_eq!(
                (view.status, view.error),
                (crate::pipeline::progress::PipelineStatus::Running, None)
            );
        }

        #[test]
        fn one_unreadable_pipeline_or_step_does_not_stop_the_others() {
            let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
            for id in ["a", "b", "c"] {
                create_pipeline(&kv, &clock, id);
                report_step(&kv, id, 0, TaskStatus::Failed);
            }
            kv.set("pipeline:a", b"not json").unwrap();
            kv.set("task:b-0", b"not json").unwrap();
            let receiver = Scripted::new(vec![Ok((200, ""))]);
            let report = run(&kv, &clock, &Scripted::new(vec![]), &receiver).unwrap();
            let mut issues: Vec<_> = report
                .errors
                .iter()
                .map(|e| (e.external_task_id.as_str(), e.code.as_str()))
                .collect();
            issues.sort(); // a run starts at a pipeline drawn at random
            assert_eq!(issues, [("a", "store_corrupt"), ("b", "store_corrupt")]);
            assert_eq!(
                Index::pipelines(&kv).entries().unwrap(),
                ["a/g", "b/g"],
                "kept for a later look; c, which failed, released"
            );
            let sent = ids_sent(&receiver);
            assert!(
                sent.len() == 1 && sent[0].starts_with("pipeline_c_failed_0_"),
                "{sent:?}"
            );
        }
    }
}
