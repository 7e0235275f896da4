//! The task ledger's rules, pure: what a delivery does to a task.
//!
//! A task's truth lives in one slot per status rank (`submitted`, `processing`, `final`);
//! each slot is written only by deliveries of its own rank, and a task's status is the
//! highest rank whose slot exists. So no interleaving of concurrent deliveries, on one
//! replica or many, can move a task backwards: a late `processing` can only ever write
//! the `processing` slot, never the `final` one.
//!
//! The task's *head* holds what is not truth: the binding to Kling's `task_id`, what was
//! already seen (so a duplicate is recognised from the head alone), and the delivery
//! counters. News writes it in one batch with the slot, after the slot in the batch's
//! order; a head lost to two batches that read the same head costs at most a count or
//! one extra slot write later, never a state.

use serde::{Deserialize, Serialize};

use crate::task::{EventSource, StepRef, TaskEvent, TaskRecord, TaskStatus, sequence};

/// The status ranks, each with a slot of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    Submitted,
    Processing,
    /// Our verdict that Kling lost the task: above every live state, below Kling's own
    /// final word, so a `succeed` that still comes wins whatever order the writes land in.
    Lost,
    Final,
}

impl Slot {
    /// Highest rank first: the order in which to look for a task's current state.
    pub const BY_RANK_DESC: [Slot; 4] =
        [Slot::Final, Slot::Lost, Slot::Processing, Slot::Submitted];
    /// Lowest rank first: the order in which retention deletes, so that no reader sees a
    /// task move backwards while it goes.
    pub const BY_RANK_ASC: [Slot; 4] = [Slot::Submitted, Slot::Processing, Slot::Lost, Slot::Final];

    pub fn of(status: TaskStatus) -> Self {
        match status {
            TaskStatus::Submitting | TaskStatus::Submitted => Slot::Submitted,
            TaskStatus::Processing => Slot::Processing,
            TaskStatus::Lost => Slot::Lost,
            TaskStatus::Succeed | TaskStatus::Failed => Slot::Final,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Slot::Submitted => "submitted",
            Slot::Processing => "processing",
            Slot::Lost => "lost",
            Slot::Final => "final",
        }
    }
}

/// What the head remembers of the slots written so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// `updated_at` of the stored `submitted` state (0 when Kling sent none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    #[serde(default, rename = "final", skip_serializing_if = "Option::is_none")]
    pub final_state: Option<FinalSeen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalSeen {
    pub status: TaskStatus,
    pub updated_at: u64,
}

/// What one delivery does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// News: write the event into this slot.
    Apply(Slot),
    /// The same news again (same status, not newer): nothing to write.
    Duplicate,
    /// Older news than what is stored (a lower rank, or another final after the first):
    /// nothing to write.
    Stale,
    /// A final callback that Kling contradicted (`verify_callbacks`): nothing written.
    Rejected,
    /// A status this build does not know (Kling added one): acknowledged, logged, and
    /// nothing written, so Kling does not retry what no retry can fix.
    Ignored,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Apply(_) => "applied",
            Verdict::Duplicate => "duplicate",
            Verdict::Stale => "stale",
            Verdict::Rejected => "rejected",
            Verdict::Ignored => "ignored",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("this external_task_id is bound to another Kling task_id")]
    BoundToAnotherTask,
}

/// Decides what `event` does given what the head has seen.
///
/// - `succeed`/`failed` are final: once one is stored, lower ranks and the other final
///   status are stale.
/// - `processing` beats `submitted`.
/// - Within one status, a larger `updated_at` refreshes the stored fields; an equal or
///   smaller one (or none) is a duplicate.
/// - A `succeed` without results never refreshes a stored final, whatever its
///   `updated_at`: it would write over the results ([`TaskEvent::lacks_results`]).
pub fn judge(seen: &Seen, event: &TaskEvent) -> Verdict {
    match judge_status(seen, event.status, event.updated_at) {
        Verdict::Apply(Slot::Final) if seen.final_state.is_some() && event.lacks_results() => {
            Verdict::Duplicate
        }
        verdict => verdict,
    }
}

/// [`judge`], from the status and `updated_at` alone (a callback's envelope).
pub fn judge_status(seen: &Seen, status: TaskStatus, updated_at: Option<u64>) -> Verdict {
    let updated_at = updated_at.unwrap_or(0);
    let slot = Slot::of(status);
    // Within one status only a strictly newer `updated_at` is news.
    let refresh = |stored: u64| {
        if updated_at > stored {
            Verdict::Apply(slot)
        } else {
            Verdict::Duplicate
        }
    };
    if let Some(stored) = seen.final_state {
        return match slot {
            Slot::Final if status == stored.status => refresh(stored.updated_at),
            _ => Verdict::Stale,
        };
    }
    match slot {
        Slot::Final => Verdict::Apply(Slot::Final),
        // `lost` is ours: once written it is never refreshed.
        Slot::Lost => seen
            .lost
            .map_or(Verdict::Apply(slot), |_| Verdict::Duplicate),
        _ if seen.lost.is_some() => Verdict::Stale,
        Slot::Processing => seen.processing.map_or(Verdict::Apply(slot), refresh),
        Slot::Submitted => match (seen.processing, seen.submitted) {
            (Some(_), _) => Verdict::Stale,
            (None, stored) => stored.map_or(Verdict::Apply(slot), refresh),
        },
    }
}

/// A task's bookkeeping record: binding, what was seen, counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_task_id: Option<String>,
    #[serde(default)]
    pub seen: Seen,
    /// Callbacks that changed the task (repeats write nothing; see `receive`).
    #[serde(default)]
    pub deliveries: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_at: Option<u64>,
    /// When a poll (the reconciler's, or read repair's) last brought news of the task (our
    /// clock, ms). Every poll's time is in the poll record (`task:{key}:poll`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_polled_at: Option<u64>,
    /// Set when this component submitted the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<Submission>,
    /// A task not submitted here: the time its listing entry is named by
    /// (`listed/{ms}/{key}`), which every news of it writes in its batch, before this head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed_at: Option<u64>,
    /// [`crate::signatures::callback_url::sig_digest`] of the `sig` that last proved a news
    /// delivery of the task with the secret: a repeat on that URL is answered without
    /// reading the secret. A head write that drops it (one made from an older read) costs
    /// only that read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_sig_sha256: Option<String>,
}

/// A task this component submitted to Kling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    pub kind: String,
    /// 128 random bits chosen by the submit that wrote this record: its pending entry
    /// carries them, so the reconciler releases only the entry of this very submission.
    #[serde(default)]
    pub nonce: String,
    /// `submitting` until Kling's create answer binds a `task_id`, then `submitted`.
    pub status: TaskStatus,
    /// Our clock, milliseconds.
    pub submitted_at: u64,
    /// Set when a pipeline submitted the task as one of its steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<StepRef>,
    /// A digest of the request Kling was sent (without its external id), so a retry
    /// that reuses the `Idempotency-Key` with another body is refused, not answered
    /// with the first task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_digest: Option<String>,
    /// When the first submission of this id that this store remembers was made (this
    /// one, or the earliest of the given-up ones it replaced), our clock. `None` in a
    /// record of an older build: unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_submitted_at: Option<u64>,
}

/// How far Kling's clock (a task's `created_at`) may be behind ours before a task Kling
/// holds under our external id counts as older than our first submission of it. Half a
/// day: retention deletes a record a day after its task ended at the soonest, so a task
/// of an earlier life of the id is always older than that, and a component clock hours
/// fast still takes its own tasks.
pub const KLING_CLOCK_MARGIN_MS: u64 = 12 * 60 * 60 * 1000;

impl Submission {
    /// Whether a task Kling holds under this submission's external id, created at
    /// `created_at` (Kling's clock), can be one this store's submissions of the id made.
    /// Kling keeps an `external_task_id` unique for as long as it holds the task: an id
    /// used again after retention deleted our record of it can find the earlier life's
    /// task, which must never be taken for this one.
    pub fn may_have_made(&self, created_at: Option<u64>) -> bool {
        made_since(self.first_submitted_at, created_at)
    }
}

/// [`Submission::may_have_made`] for a first submission at `first_submitted_at`.
pub fn made_since(first_submitted_at: Option<u64>, created_at: Option<u64>) -> bool {
    match (first_submitted_at, created_at) {
        (Some(first), Some(created)) => created.saturating_add(KLING_CLOCK_MARGIN_MS) >= first,
        _ => true,
    }
}

impl TaskHead {
    /// The latest news of the task on our clock: a callback, a poll, or its submission.
    pub fn last_news(&self) -> Option<u64> {
        [
            self.last_delivery_at,
            self.last_polled_at,
            self.submission.as_ref().map(|s| s.submitted_at),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Rejects an event for another Kling task than the one this head is bound to.
    pub fn check_binding(&self, event: &TaskEvent) -> Result<(), LedgerError> {
        self.check_binding_to(&event.task_id)
    }

    /// [`Self::check_binding`] for Kling's `task_id` alone.
    pub fn check_binding_to(&self, task_id: &str) -> Result<(), LedgerError> {
        match &self.task_id {
            Some(bound) if bound != task_id => Err(LedgerError::BoundToAnotherTask),
            _ => Ok(()),
        }
    }

    /// The head after an accepted delivery of `event` judged `verdict`, at `now_ms`.
    pub fn after_delivery(mut self, event: &TaskEvent, verdict: Verdict, now_ms: u64) -> Self {
        if self.task_id.is_none() {
            self.task_id = Some(event.task_id.clone());
        }
        if self.external_task_id.is_none() {
            self.external_task_id = event.external_task_id.clone();
        }
        if let Verdict::Apply(slot) = verdict {
            let updated_at = event.updated_at.unwrap_or(0);
            match slot {
                Slot::Submitted => self.seen.submitted = Some(updated_at),
                Slot::Processing => self.seen.processing = Some(updated_at),
                Slot::Lost => self.seen.lost = Some(updated_at),
                Slot::Final => {
                    self.seen.final_state = Some(FinalSeen {
                        status: event.status,
                        updated_at,
                    })
                }
            }
        }
        match (event.source, verdict) {
            // Only news counts: a repeat of a bound task is not even written back.
            (EventSource::Callback, Verdict::Apply(_)) => {
                self.deliveries += 1;
                self.last_delivery_at = Some(now_ms);
            }
            (EventSource::Poll, Verdict::Apply(_)) => self.last_polled_at = Some(now_ms),
            // A poll that brought nothing new leaves the head as it is: its time is in the
            // poll record, and every head write can lose what a concurrent delivery wrote
            // (a final's record of itself above all).
            (_, _) => {}
        }
        self
    }
}

/// The reconciler's polls of one task (`task:{key}:poll`), written after every poll
/// whatever its outcome, so a task whose polls keep failing backs off instead of taking
/// the front of every run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollState {
    pub polls: u32,
    /// Our clock, ms.
    pub last_polled_at: u64,
    /// Our clock, ms: the reconciler asks again from then on.
    pub next_poll_at: u64,
    /// What the last poll found: `changed`, `unchanged`, `not_found`, or an error code.
    pub last_outcome: String,
    /// What went wrong, when the last poll failed (Kling's message, or the transport's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// "Not found" answers in a row, and when the first of them came.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub not_found: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_found_since: Option<u64>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// The record the API serves: the highest-ranked stored state plus the head's counters.
pub fn assemble(head: Option<&TaskHead>, current: TaskEvent) -> TaskRecord {
    TaskRecord {
        sequence: sequence(current.status, current.updated_at),
        external_task_id: current
            .external_task_id
            .or_else(|| head.and_then(|h| h.external_task_id.clone())),
        task_id: Some(current.task_id),
        kind: head
            .and_then(|h| h.submission.as_ref())
            .map(|s| s.kind.clone()),
        status: current.status,
        status_msg: current.status_msg,
        videos: current.videos,
        images: current.images,
        more: current.more,
        created_at: current.created_at,
        updated_at: current.updated_at,
        final_unit_deduction: current.final_unit_deduction,
        source: Some(current.source),
        deliveries: head.map_or(0, |h| h.deliveries),
        last_delivery_at: head.and_then(|h| h.last_delivery_at),
        pipeline: head
            .and_then(|h| h.submission.as_ref())
            .and_then(|s| s.pipeline.clone()),
        reconcile: None,
    }
}

/// The record of a task submitted but not yet reported on by Kling.
pub fn assemble_submission(head: &TaskHead, submission: &Submission) -> TaskRecord {
    TaskRecord {
        sequence: sequence(submission.status, None),
        task_id: head.task_id.clone(),
        external_task_id: head.external_task_id.clone(),
        kind: Some(submission.kind.clone()),
        status: submission.status,
        status_msg: String::new(),
        videos: Vec::new(),
        images: Vec::new(),
        more: Default::default(),
        created_at: None,
        updated_at: None,
        final_unit_deduction: None,
        source: None,
        deliveries: head.deliveries,
        last_delivery_at: head.last_delivery_at,
        pipeline: submission.pipeline.clone(),
        reconcile: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(status: TaskStatus, updated_at: u64) -> TaskEvent {
        TaskEvent {
            task_id: "t1".into(),
            status,
            status_msg: String::new(),
            external_task_id: Some("ext".into()),
            created_at: Some(1),
            updated_at: Some(updated_at),
            // A success carries its results (see `a_success_without_results_...`).
            videos: (status == Succeed)
                .then(|| crate::task::Video {
                    url: Some(format!("https://cdn.example/{updated_at}.mp4")),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            images: vec![],
            more: Default::default(),
            final_unit_deduction: None,
            source: Default::default(),
        }
    }

    #[test]
    fn a_success_without_results_never_refreshes_a_final() {
        let bare = |updated_at| TaskEvent {
            videos: vec![],
            ..event(Succeed, updated_at)
        };
        assert!(bare(31).lacks_results());
        assert!(!event(Succeed, 31).lacks_results());
        let raw = |json: &str| TaskEvent {
            more: crate::task::MoreOutputs {
                kling_result: Some(crate::task::KlingJson(
                    serde_json::value::RawValue::from_string(json.into()).unwrap(),
                )),
                ..Default::default()
            },
            ..bare(31)
        };
        for nothing in [
            "{}",
            "[]",
            "null",
            r#"{"videos":[]}"#,
            r#"{ "videos": null, "images": {} }"#,
        ] {
            assert!(raw(nothing).lacks_results(), "{nothing}");
        }
        for something in [r#"{"new_kind":[{"url":"u"}]}"#, r#"[{"type":"video"}]"#] {
            assert!(!raw(something).lacks_results(), "{something}");
        }
        assert!(
            !event(Failed, 31).lacks_results(),
            "a failure has none to lack"
        );
        let seen = Seen {
            final_state: Some(FinalSeen {
                status: Succeed,
                updated_at: 30,
            }),
            ..Seen::default()
        };
        assert_eq!(judge(&seen, &bare(31)), Verdict::Duplicate);
        assert_eq!(
            judge(&seen, &event(Succeed, 31)),
            Verdict::Apply(Slot::Final)
        );
        // The first final is stored whatever it carries.
        assert_eq!(
            judge(&Seen::default(), &bare(31)),
            Verdict::Apply(Slot::Final)
        );
    }

    use TaskStatus::*;

    /// Applies events in order the way the component does, returning the stored slots.
    fn replay(events: &[TaskEvent]) -> (TaskHead, Vec<(Slot, TaskEvent)>) {
        let mut head = TaskHead::default();
        let mut slots: Vec<(Slot, TaskEvent)> = vec![];
        for (now, e) in (1..).zip(events) {
            head.check_binding(e).unwrap();
            let verdict = judge(&head.seen, e);
            if let Verdict::Apply(slot) = verdict {
                slots.retain(|(s, _)| *s != slot);
                slots.push((slot, e.clone()));
            }
            head = head.after_delivery(e, verdict, now);
        }
        (head, slots)
    }

    fn current(slots: &[(Slot, TaskEvent)]) -> TaskEvent {
        slots.iter().max_by_key(|(s, _)| *s).unwrap().1.clone()
    }

    #[test]
    fn every_order_of_a_lifecycle_ends_in_its_final_state() {
        for final_status in [Succeed, Failed] {
            let lifecycle = [
                event(Submitted, 10),
                event(Processing, 20),
                event(final_status, 30),
            ];
            for order in [
                [0, 1, 2],
                [0, 2, 1],
                [1, 0, 2],
                [1, 2, 0],
                [2, 0, 1],
                [2, 1, 0],
            ] {
                let events: Vec<_> = order.iter().map(|&i| lifecycle[i].clone()).collect();
                let (head, slots) = replay(&events);
                assert_eq!(current(&slots).status, final_status, "{order:?}");
                // News is a delivery of a higher rank than every earlier one.
                let news = order
                    .iter()
                    .enumerate()
                    .filter(|(n, i)| order[..*n].iter().all(|earlier| earlier < i))
                    .count();
                assert_eq!(head.deliveries, news as u64, "{order:?}");
            }
        }
    }

    #[test]
    fn a_final_state_is_never_left() {
        let seen = Seen {
            final_state: Some(FinalSeen {
                status: Succeed,
                updated_at: 30,
            }),
            ..Seen::default()
        };
        assert_eq!(judge(&seen, &event(Submitted, 99)), Verdict::Stale);
        assert_eq!(judge(&seen, &event(Processing, 99)), Verdict::Stale);
        assert_eq!(judge(&seen, &event(Failed, 99)), Verdict::Stale);
        assert_eq!(judge(&seen, &event(Succeed, 30)), Verdict::Duplicate);
        assert_eq!(judge(&seen, &event(Succeed, 29)), Verdict::Duplicate);
        assert_eq!(
            judge(&seen, &event(Succeed, 31)),
            Verdict::Apply(Slot::Final)
        );
    }

    #[test]
    fn processing_beats_submitted_and_refreshes_only_when_newer() {
        let seen = Seen {
            processing: Some(20),
            ..Seen::default()
        };
        assert_eq!(judge(&seen, &event(Submitted, 99)), Verdict::Stale);
        assert_eq!(judge(&seen, &event(Processing, 20)), Verdict::Duplicate);
        assert_eq!(
            judge(&seen, &event(Processing, 21)),
            Verdict::Apply(Slot::Processing)
        );
        assert_eq!(
            judge(&seen, &event(Succeed, 1)),
            Verdict::Apply(Slot::Final)
        );
    }

    #[test]
    fn a_missing_updated_at_never_refreshes() {
        let seen = Seen {
            submitted: Some(0),
            ..Seen::default()
        };
        let mut e = event(Submitted, 0);
        e.updated_at = None;
        assert_eq!(judge(&seen, &e), Verdict::Duplicate);
        assert_eq!(judge(&Seen::default(), &e), Verdict::Apply(Slot::Submitted));
    }

    #[test]
    fn duplicates_change_nothing() {
        let e = event(Processing, 20);
        let (head_once, slots_once) = replay(std::slice::from_ref(&e));
        let (head_thrice, slots_thrice) = replay(&[e.clone(), e.clone(), e]);
        assert_eq!(slots_once, slots_thrice);
        assert_eq!(head_thrice, head_once);
    }

    #[test]
    fn a_head_bound_to_one_task_rejects_another() {
        let head = TaskHead::default().after_delivery(
            &event(Submitted, 1),
            Verdict::Apply(Slot::Submitted),
            5,
        );
        assert_eq!(head.task_id.as_deref(), Some("t1"));
        let mut other = event(Processing, 2);
        other.task_id = "t2".into();
        assert_eq!(
            head.check_binding(&other),
            Err(LedgerError::BoundToAnotherTask)
        );
        assert_eq!(head.check_binding(&event(Processing, 2)), Ok(()));
    }

    #[test]
    fn the_record_takes_the_state_from_the_slot_and_counts_from_the_head() {
        let head = TaskHead {
            deliveries: 4,
            last_delivery_at: Some(77),
            external_task_id: Some("ext".into()),
            ..TaskHead::default()
        };
        let mut state = event(Succeed, 30);
        state.external_task_id = None;
        let record = assemble(Some(&head), state);
        assert_eq!(record.status, Succeed);
        assert_eq!(record.external_task_id.as_deref(), Some("ext"));
        assert_eq!((record.deliveries, record.last_delivery_at), (4, Some(77)));
    }
}
