//! Every key the component writes, and the store label that holds it. The README's "Key
//! layout" section mirrors this.
//!
//! Label `default`, the tasks themselves:
//!
//! | key | value | written by |
//! |---|---|---|
//! | `task:{key}` | head: binding, what was seen, counters, the submission ([`TaskHead`]) | submits; every delivery that was news, in one batch with its slot; after it, the first binding by a delivery that was not news |
//! | `task:{key}:submitted` / `:processing` / `:lost` / `:final` | the latest state of that rank ([`TaskEvent`]) | only deliveries (or polls) of that rank |
//! | `task:{key}:poll` | the reconciler's polls of the task ([`PollState`]) | reconcile and read repair |
//! | `task:{key}:notified` | the `sequence` of the task's last notification a receiver took | the notifier, on a 2xx |
//! | `task:{key}:rejected` | how many final callbacks Kling contradicted (`verify_callbacks`) | the rejection, after its acknowledgement (a key of its own: a count read before Kling answered never writes a head back) |
//! | `task:{key}:forgotten:{nonce}` | `1`: that submission was given up as never created | the reconciler (Kling does not know it), or the submit Kling refused; deleted by whatever binds the task after all, or by retention with the head |
//! | `taskid:{task_id}` | `{key}` | the first binding |
//! | `pipeline:{id}` | a pipeline's description ([`PipelineSpec`]) | `POST /pipelines`, once |
//! | `pipeline:{id}:failure` | why a pipeline failed, when no step's task says it | a refused or unbuildable step; the reconciler, for a step not submitted within 30 days |
//! | `pipeline:{id}:notified` | the `webhook-id` of the pipeline's last notification a receiver took | the notifier, on a 2xx |
//! | `listed/{first_seen_ms}/{key}` | `1`: the task is in `GET /tasks` and retention's scan | a submit, and its create answer again (and a callback or poll that binds a task given up meanwhile); every news of a task not submitted here, in its batch, under the name its first chose (the head's `listed_at`); removed by retention |
//! | `final/{day}/{key}` | `1`: retention's index by day | the reconciler, when a task it tracks is final (callbacks write none: retention's scan of `listed/` finds a task not submitted here); removed by retention, with the task |
//!
//! The listing lives beside the tasks so that a task's first callback lists it in the
//! same batch as its state: one transaction on SQLite, one `MSET` on Redis, and never a
//! task stored but missing from `GET /tasks`. The price is that `GET /tasks` and
//! retention read the keys of this whole label (Spin's `list-keys` has no prefix), about
//! five per task, where a label of their own held one.
//!
//! Label `index`, the work still to do (small: it holds only what is outstanding, so its
//! `get-keys` costs what the reconciler has to do, not what was ever stored):
//!
//! | key | value | added by | removed by |
//! |---|---|---|---|
//! | `pending/{due_ms}/{nonce}/{key}` | the submission ([`Submission`]: enough to ask Kling with no head) | a submit; its create answer, as `{nonce}.b` (the owner's own entry); a callback or poll that binds a task submitted here, as `{nonce}.r` (a callback also as `{nonce}.p`, before its batch; suffixed names are never a run's own) | the reconciler, once the task is final, its submission given up, or Kling does not know the id (a poll moves it to a later due time: add, then remove); retention, with a task it deletes |
//! | `pipelines/{id}/{generation}` | `1` | `POST /pipelines`; an advance with a step to submit; a step's create answered after its task was forgotten | the reconciler, once the pipeline finished (one failed by a `lost` step: 30 days after its creation) |
//! | `outbox/{webhook_id}` | the notification ([`Pending`]) | every notification, before it is sent | its 2xx |
//!
//! `{key}` is the task's `external_task_id`, or `#` followed by Kling's `task_id` for a
//! task reported without one (`#` cannot occur in an external id, so the two never
//! collide). No id may contain `/` or `:`, so every key splits unambiguously.
//!
//! A pipeline's steps are tasks whose `external_task_id` is `{id}-{step}`.
//!
//! [`TaskHead`]: crate::ledger::TaskHead
//! [`PipelineSpec`]: crate::pipeline::spec::PipelineSpec
//! [`Pending`]: crate::notify::Pending
//! [`TaskEvent`]: crate::task::TaskEvent
//! [`PollState`]: crate::ledger::PollState
//! [`Submission`]: crate::ledger::Submission

use crate::ledger::Slot;

/// The part of a task's keys that names the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskKey(String);

impl TaskKey {
    /// For a task known by its (already validated) external id.
    pub fn external(external_task_id: &str) -> Self {
        Self(external_task_id.to_string())
    }

    /// For a task Kling reported without an external id.
    pub fn kling(task_id: &str) -> Self {
        Self(format!("#{task_id}"))
    }

    /// Restores a key read from the `taskid:` index.
    pub fn from_stored(key: String) -> Self {
        Self(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn head(&self) -> String {
        format!("task:{}", self.0)
    }

    pub fn slot(&self, slot: Slot) -> String {
        format!("task:{}:{}", self.0, slot.name())
    }

    /// The reconciler's record of its polls of this task.
    pub fn poll(&self) -> String {
        format!("task:{}:poll", self.0)
    }

    /// The `sequence` of the last notification of this task a receiver acknowledged.
    pub fn notified(&self) -> String {
        format!("task:{}:notified", self.0)
    }

    /// How many final callbacks of this task Kling contradicted (`verify_callbacks`):
    /// a count of its own, so that counting never writes the head.
    pub fn rejected(&self) -> String {
        format!("task:{}:rejected", self.0)
    }

    /// The mark of submission `nonce` given up as never created: a key of its own per
    /// submission, so that giving one up writes nothing a binding (or another
    /// submission's give-up) writes. See [`TaskStore::live_head`].
    ///
    /// [`TaskStore::live_head`]: super::tasks::TaskStore::live_head
    pub fn forgotten(&self, nonce: &str) -> String {
        format!("task:{}:forgotten:{nonce}", self.0)
    }
}

pub fn task_id_index(task_id: &str) -> String {
    format!("taskid:{task_id}")
}

pub const PENDING_PREFIX: &str = "pending/";
pub const PIPELINES_PREFIX: &str = "pipelines/";
pub const OUTBOX_PREFIX: &str = "outbox/";
pub const LISTED_PREFIX: &str = "listed/";
pub const FINAL_PREFIX: &str = "final/";

/// The store labels, as `key_value_stores` in `spin.toml` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Default,
    Index,
}

impl Label {
    pub const ALL: [Label; 2] = [Label::Default, Label::Index];

    pub fn name(self) -> &'static str {
        match self {
            Label::Default => "default",
            Label::Index => "index",
        }
    }
}

/// The label a key (or a key prefix) lives in.
pub fn label_of(key: &str) -> Label {
    if [PENDING_PREFIX, PIPELINES_PREFIX, OUTBOX_PREFIX]
        .iter()
        .any(|p| key.starts_with(p))
    {
        Label::Index
    } else {
        Label::Default
    }
}

pub fn pipeline_key(id: &str) -> String {
    format!("pipeline:{id}")
}

pub fn pipeline_failure_key(id: &str) -> String {
    format!("pipeline:{id}:failure")
}

pub fn pipeline_notified_key(id: &str) -> String {
    format!("pipeline:{id}:notified")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_as_documented() {
        let key = TaskKey::external("job-1");
        assert_eq!(key.head(), "task:job-1");
        assert_eq!(key.slot(Slot::Submitted), "task:job-1:submitted");
        assert_eq!(key.slot(Slot::Processing), "task:job-1:processing");
        assert_eq!(key.slot(Slot::Final), "task:job-1:final");
        assert_eq!(TaskKey::kling("86").head(), "task:#86");
        assert_eq!(task_id_index("86"), "taskid:86");
        assert_eq!(pipeline_key("p"), "pipeline:p");
        assert_eq!(pipeline_failure_key("p"), "pipeline:p:failure");
        assert_eq!(pipeline_notified_key("p"), "pipeline:p:notified");
        assert_eq!(key.poll(), "task:job-1:poll");
        assert_eq!(key.notified(), "task:job-1:notified");
        assert_eq!(key.rejected(), "task:job-1:rejected");
    }

    #[test]
    fn every_key_lives_in_its_label() {
        for (key, label) in [
            ("task:job-1", Label::Default),
            ("task:job-1:final", Label::Default),
            ("taskid:86", Label::Default),
            ("pipeline:p", Label::Default),
            ("pipeline:p:notified", Label::Default),
            ("pending/0000000000001/n/job-1", Label::Index),
            ("pipelines/p/g", Label::Index),
            ("outbox/task_job-1_succeed_ab", Label::Index),
            ("listed/0000000000001/job-1", Label::Default),
            ("final/20424/job-1", Label::Default),
        ] {
            assert_eq!(label_of(key), label, "{key}");
        }
    }
}
