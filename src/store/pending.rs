//! The pending index's entries: `pending/{due_ms}/{nonce}/{key}`, one or more per task
//! submitted here that is not final yet, each carrying its submission, so that the
//! reconciler can ask Kling about a task whatever is left of its head. Which entries
//! exist, and when they go, is `reconcile`'s and the binders' (`tasks`) business; this
//! module only names them and reads them back.

use super::index::{Index, sortable_ms};
use super::layout::TaskKey;
use super::{KeyValue, StoreError, to_json};
use crate::ledger::Submission;
use crate::task::TaskStatus;

/// A task's entry in the pending index: due at `due_ms`, for the submission `nonce`.
pub fn pending_entry(key: &TaskKey, nonce: &str, due_ms: u64) -> String {
    format!("{}/{nonce}/{}", sortable_ms(due_ms), key.as_str())
}

/// Who adds a spare pending entry: see [`spare_pending_entry`].
#[derive(Debug, Clone, Copy)]
pub enum SpareBy {
    /// A submit's create answer (or lookup) binding its task.
    Binding,
    /// A delivery or a poll binding a task given up meanwhile.
    Retrack,
    /// A delivery about to bind a task submitted here, before its batch: a name of its
    /// own, so that a run that reads the head still unbound and releases this one never
    /// takes the entry written after the binding ([`SpareBy::Retrack`]).
    BeforeBinding,
    /// The reconciler moving a task on when none of the entries it read carries the
    /// submission (any more: an overlapping run may have moved them first): a name of
    /// its own, so that this entry, which carries nothing, never writes over the one
    /// the other run wrote under the regular name with the submission.
    Uncarried,
}

/// A pending entry added beside the submission's own, by a binder: the nonce carries a
/// suffix (`.b`, `.r`, `.p`, `.u`) that the reconciler's regular names never have, so a run
/// that listed its own entries can never remove this one by its name. The reconciler
/// folds it into the submission's entries ([`PendingEntry::parse`]), and moves a `.p` on
/// to the task's next due time while the task reads unbound.
pub fn spare_pending_entry(key: &TaskKey, nonce: &str, due_ms: u64, by: SpareBy) -> String {
    let suffix = match by {
        SpareBy::Binding => "b",
        SpareBy::Retrack => "r",
        SpareBy::BeforeBinding => "p",
        SpareBy::Uncarried => "u",
    };
    pending_entry(key, &format!("{nonce}.{suffix}"), due_ms)
}

/// Whether `entry` is a [`SpareBy::BeforeBinding`] entry: a delivery that had Kling's
/// word that the task exists wrote it before binding the task. Only Kling's answer (or
/// the task's end) may take it while the task reads unbound: that delivery's tracking
/// after its batch may never come, since the retry of a failed write is a repeat.
pub fn added_before_a_binding(entry: &str) -> bool {
    entry
        .split('/')
        .nth(1)
        .is_some_and(|nonce| nonce.ends_with(".p"))
}

/// A pending entry, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    pub name: String,
    pub due_ms: u64,
    pub nonce: String,
    pub key: TaskKey,
}

impl PendingEntry {
    /// Whether a binder added this entry beside the submission's own
    /// ([`spare_pending_entry`]).
    pub fn is_spare(&self) -> bool {
        self.name
            .split('/')
            .nth(1)
            .is_some_and(|nonce| nonce.contains('.'))
    }

    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.splitn(3, '/');
        let due_ms = parts.next()?.parse().ok()?;
        // A spare entry's suffix is not part of the nonce (nonces are base64url: no `.`).
        let nonce = parts.next()?.split('.').next()?.to_string();
        let key = TaskKey::from_stored(parts.next()?.to_string());
        Some(Self {
            name: name.to_string(),
            due_ms,
            nonce,
            key,
        })
    }
}

/// Adds a pending entry whose value is the submission it tracks.
pub(super) fn add_pending(
    kv: &dyn KeyValue,
    entry: &str,
    submission: &Submission,
) -> Result<(), StoreError> {
    Index::pending(kv).put(entry, &pending_value(submission))
}

/// A pending entry's value: the submission as it was submitted (`submitting`: the same
/// bytes whoever writes it again).
pub fn pending_value(submission: &Submission) -> Vec<u8> {
    to_json(&Submission {
        status: TaskStatus::Submitting,
        ..submission.clone()
    })
}

/// The submission a pending entry carries (`None` for an entry of an older build, whose
/// value is `1`).
pub fn pending_submission(value: &[u8]) -> Option<Submission> {
    serde_json::from_slice(value).ok()
}
