//! Every key the component writes. The README's "Key layout" section mirrors this.
//!
//! | key | value | written by |
//! |---|---|---|
//! | `task:{key}` | head: binding, what was seen, counters ([`TaskHead`]) | every accepted delivery, after the acknowledgement |
//! | `task:{key}:submitted` / `:processing` / `:final` | the latest state of that rank ([`TaskEvent`]) | only deliveries of that rank, before the acknowledgement |
//! | `taskid:{task_id}` | `{key}` | the first delivery that binds the task, after the acknowledgement |
//! | `index:recent` | the newest page number of the recent-tasks log | appends that open a page |
//! | `index:recent:{n}` | up to 100 task `{key}`s, oldest first | submits, and first bindings of tasks not submitted here |
//! | `index:recent:oldest` | the oldest page retention has not emptied | retention |
//! | `index:pending:{0..16}` | keys of submitted tasks not final yet | submits (add), reconcile (remove) |
//! | `pipeline:{id}` | a pipeline's description ([`PipelineSpec`]) | `POST /pipelines`, once |
//! | `pipeline:{id}:failure` | why a pipeline failed, when no step's task says it | a refused step |
//! | `index:pipelines:{0..16}` | ids of pipelines not finished yet | `POST /pipelines` (add), reconcile (remove) |
//! | `outbox:{webhook_id}` | a notification whose send failed ([`Pending`]) | the send (add), reconcile (retry, delete) |
//! | `index:outbox:{0..16}` | the outbox's webhook ids | the send (add), reconcile (remove) |
//!
//! `{key}` is the task's `external_task_id`, or `#` followed by Kling's `task_id` for a
//! task reported without one (`#` cannot occur in an external id, so the two never
//! collide).
//!
//! A pipeline's steps are tasks whose `external_task_id` is `{id}-{step}`.
//!
//! [`TaskHead`]: crate::ledger::TaskHead
//! [`PipelineSpec`]: crate::pipeline::spec::PipelineSpec
//! [`Pending`]: crate::notify::Pending
//! [`TaskEvent`]: crate::task::TaskEvent

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
}

pub fn task_id_index(task_id: &str) -> String {
    format!("taskid:{task_id}")
}

/// The newest page of the recent-tasks log (`GET /tasks` reads it backwards).
pub const RECENT_HEAD: &str = "index:recent";
/// The oldest page of the log that retention has not emptied yet.
pub const RECENT_OLDEST: &str = "index:recent:oldest";

pub fn recent_page(page: u64) -> String {
    format!("index:recent:{page}")
}

pub fn pipeline_key(id: &str) -> String {
    format!("pipeline:{id}")
}

pub fn pipeline_failure_key(id: &str) -> String {
    format!("pipeline:{id}:failure")
}

pub fn outbox_key(webhook_id: &str) -> String {
    format!("outbox:{webhook_id}")
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
        assert_eq!(
            outbox_key("task_job-1_succeed"),
            "outbox:task_job-1_succeed"
        );
    }
}
