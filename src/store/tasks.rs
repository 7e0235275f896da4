//! Task heads, status slots and the task_id index over a [`KeyValue`] store.

use serde::de::DeserializeOwned;

use super::layout::{
    RECENT_HEAD, RECENT_OLDEST, TaskKey, pipeline_failure_key, pipeline_key, recent_page,
    task_id_index,
};
use super::{KeyValue, StoreError, get_json, to_json};
use crate::ledger::{
    LedgerError, Slot, Submission, TaskHead, Verdict, assemble, assemble_submission, judge,
};
use crate::task::{StepRef, TaskEvent, TaskRecord, TaskStatus};
use crate::validate::{is_valid_external_task_id, is_valid_task_id};

pub struct TaskStore<'a> {
    kv: &'a dyn KeyValue,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Entries per page of the recent-tasks log.
pub const RECENT_PAGE_SIZE: usize = 100;
/// Log entries one `GET /tasks` reads at most.
pub const MAX_SCAN: usize = 200;

/// Where a listing stopped: before entry `before` of page `page`. Shown as `{page}.{before}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub page: u64,
    pub before: usize,
}

impl Cursor {
    pub fn parse(text: &str) -> Option<Self> {
        let (page, before) = text.split_once('.')?;
        Some(Self {
            page: page.parse().ok()?,
            before: before.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.page, self.before)
    }
}

#[derive(Debug)]
pub struct TaskPage {
    pub tasks: Vec<TaskRecord>,
    pub next_cursor: Option<Cursor>,
}

/// Writes that follow an accepted delivery and may happen after the acknowledgement:
/// the task_id index (first binding only) and the head. Applied in order; the first
/// failure stops the rest, so the head never claims a binding whose index is missing.
/// The head is kept as a value and serialized only when applied, after the
/// acknowledgement; [`Bookkeeping::head`] is also what the task's record is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "bookkeeping does nothing until applied"]
pub struct Bookkeeping {
    key: TaskKey,
    head: TaskHead,
    /// Set on the task's first binding: `taskid:{task_id}` → `{key}`.
    index_task_id: Option<String>,
    /// A task seen for the first time, not submitted here: add it to the recent log.
    remember: bool,
}

impl Bookkeeping {
    pub fn apply(&self, kv: &dyn KeyValue) -> Result<(), StoreError> {
        if let Some(task_id) = &self.index_task_id {
            kv.set(&task_id_index(task_id), self.key.as_str().as_bytes())?;
        }
        kv.set(&self.key.head(), &to_json(&self.head))?;
        if self.remember {
            TaskStore::new(kv).remember(&self.key)?;
        }
        Ok(())
    }

    /// The head as this delivery leaves it.
    pub fn head(&self) -> &TaskHead {
        &self.head
    }

    /// The keys [`Self::apply`] writes, in order (the recent log aside).
    pub fn keys(&self) -> impl Iterator<Item = String> + '_ {
        self.index_task_id
            .iter()
            .map(|task_id| task_id_index(task_id))
            .chain(std::iter::once(self.key.head()))
    }
}

impl<'a> TaskStore<'a> {
    pub fn new(kv: &'a dyn KeyValue) -> Self {
        Self { kv }
    }

    pub fn head(&self, key: &TaskKey) -> Result<Option<TaskHead>, StoreError> {
        self.get_json(&key.head())
    }

    /// Applies one event through the ledger, the same way for callbacks and polls: read
    /// the head, refuse another Kling task, judge, write the slot for news. Returns the
    /// verdict and the head's bookkeeping (callbacks apply it after acknowledging).
    pub fn record_event(
        &self,
        key: &TaskKey,
        event: &TaskEvent,
        now_ms: u64,
    ) -> Result<(Verdict, Bookkeeping), RecordError> {
        let head = self.head(key)?;
        self.record_event_with_head(key, head, event, now_ms)
    }

    /// [`Self::record_event`] for a caller that has just read the head itself.
    pub fn record_event_with_head(
        &self,
        key: &TaskKey,
        head: Option<TaskHead>,
        event: &TaskEvent,
        now_ms: u64,
    ) -> Result<(Verdict, Bookkeeping), RecordError> {
        if let Some(head) = &head {
            head.check_binding(event)?;
        }
        let seen = head.as_ref().map(|h| h.seen.clone()).unwrap_or_default();
        let verdict = judge(&seen, event);
        if let Verdict::Apply(slot) = verdict {
            self.write_slot(key, slot, event)?;
        }
        Ok((
            verdict,
            Self::bookkeeping(key, head, event, verdict, now_ms),
        ))
    }

    pub fn write_slot(
        &self,
        key: &TaskKey,
        slot: Slot,
        event: &TaskEvent,
    ) -> Result<(), StoreError> {
        self.kv.set(&key.slot(slot), &to_json(event))
    }

    /// The writes that record a delivery in the head (and bind the task on its first one).
    pub fn bookkeeping(
        key: &TaskKey,
        head: Option<TaskHead>,
        event: &TaskEvent,
        verdict: Verdict,
        now_ms: u64,
    ) -> Bookkeeping {
        let first_binding = head.as_ref().is_none_or(|h| h.task_id.is_none());
        let submitted_here = head.as_ref().is_some_and(|h| h.submission.is_some());
        Bookkeeping {
            key: key.clone(),
            head: head
                .unwrap_or_default()
                .after_delivery(event, verdict, now_ms),
            index_task_id: first_binding.then(|| event.task_id.clone()),
            remember: first_binding && !submitted_here,
        }
    }

    /// The head's bookkeeping for a callback refused by verification: counted as rejected,
    /// nothing else changes.
    pub fn bookkeeping_rejected(key: &TaskKey, head: Option<TaskHead>) -> Bookkeeping {
        let mut head = head.unwrap_or_default();
        head.rejected += 1;
        Bookkeeping {
            key: key.clone(),
            head,
            index_task_id: None,
            remember: false,
        }
    }

    /// Appends a task to the recent-tasks log. Spin's store has no compare-and-swap, so
    /// the append is read back and retried if a concurrent append overwrote it; a loss
    /// in the remaining race only hides the task from `GET /tasks`, never from
    /// `GET /tasks/{id}`.
    pub fn remember(&self, key: &TaskKey) -> Result<(), StoreError> {
        for _ in 0..3 {
            let newest: u64 = self.get_json(RECENT_HEAD)?.unwrap_or(0);
            let mut entries: Vec<String> = self.get_json(&recent_page(newest))?.unwrap_or_default();
            if entries.iter().any(|e| e == key.as_str()) {
                return Ok(());
            }
            let page = if entries.len() >= RECENT_PAGE_SIZE {
                self.kv.set(RECENT_HEAD, &to_json(&(newest + 1)))?;
                entries.clear();
                newest + 1
            } else {
                newest
            };
            entries.push(key.as_str().to_string());
            self.kv.set(&recent_page(page), &to_json(&entries))?;
            let stored: Vec<String> = self.get_json(&recent_page(page))?.unwrap_or_default();
            if stored.iter().any(|e| e == key.as_str()) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Deletes final tasks whose last news is older than `cutoff_ms` (record, slots, index),
    /// oldest first, at most `max_purged` per call and reading at most [`MAX_SCAN`] log
    /// entries. Log pages older than the newest are dropped once nothing in them is left.
    /// Returns how many tasks were deleted.
    pub fn purge_before(&self, cutoff_ms: u64, max_purged: usize) -> Result<usize, StoreError> {
        let newest: u64 = self.get_json(RECENT_HEAD)?.unwrap_or(0);
        let oldest: u64 = self.get_json(RECENT_OLDEST)?.unwrap_or(0);
        let (mut purged, mut scanned) = (0, 0);
        let mut all_gone_so_far = true;
        for page in oldest..=newest {
            let entries: Vec<String> = self.get_json(&recent_page(page))?.unwrap_or_default();
            let mut page_gone = true;
            for entry in entries {
                if purged == max_purged || scanned == MAX_SCAN {
                    return Ok(purged);
                }
                scanned += 1;
                let key = TaskKey::from_stored(entry);
                let head = self.head(&key)?;
                match self.record(&key, head.clone())? {
                    None => {}
                    Some(record) if record.status.is_final() => {
                        let last_news = head
                            .as_ref()
                            .and_then(|h| {
                                [
                                    h.last_delivery_at,
                                    h.last_polled_at,
                                    h.submission.as_ref().map(|s| s.submitted_at),
                                ]
                                .into_iter()
                                .flatten()
                                .max()
                            })
                            .unwrap_or(0);
                        if last_news < cutoff_ms {
                            // A pipeline goes with its steps: its view would otherwise
                            // show steps whose tasks are gone.
                            if let Some(step) = &record.pipeline {
                                self.kv.delete(&pipeline_failure_key(&step.pipeline_id))?;
                                self.kv.delete(&pipeline_key(&step.pipeline_id))?;
                            }
                            self.delete_task(&key, record.task_id.as_deref())?;
                            purged += 1;
                        } else {
                            page_gone = false;
                        }
                    }
                    Some(_) => page_gone = false,
                }
            }
            // Only a page that no submit appends to any more, and with nothing older left.
            all_gone_so_far &= page_gone;
            if all_gone_so_far && page < newest {
                self.kv.delete(&recent_page(page))?;
                self.kv.set(RECENT_OLDEST, &to_json(&(page + 1)))?;
            }
        }
        Ok(purged)
    }

    fn delete_task(&self, key: &TaskKey, task_id: Option<&str>) -> Result<(), StoreError> {
        for slot in Slot::BY_RANK_DESC {
            self.kv.delete(&key.slot(slot))?;
        }
        if let Some(task_id) = task_id {
            self.kv.delete(&task_id_index(task_id))?;
        }
        // The head last: a failure above leaves a task that the next run finds again.
        self.kv.delete(&key.head())
    }

    /// Recent tasks, newest first, optionally of one status. Reads at most
    /// [`MAX_SCAN`] log entries per call; `next_cursor` continues where it stopped.
    pub fn list(
        &self,
        status: Option<TaskStatus>,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<TaskPage, StoreError> {
        let (mut page, mut before) = match cursor {
            Some(cursor) => (cursor.page, cursor.before),
            None => (self.get_json(RECENT_HEAD)?.unwrap_or(0), usize::MAX),
        };
        let mut tasks = Vec::new();
        let mut scanned = 0;
        loop {
            let entries: Vec<String> = self.get_json(&recent_page(page))?.unwrap_or_default();
            let mut i = before.min(entries.len());
            while i > 0 {
                if tasks.len() == limit || scanned == MAX_SCAN {
                    return Ok(TaskPage {
                        tasks,
                        next_cursor: Some(Cursor { page, before: i }),
                    });
                }
                i -= 1;
                scanned += 1;
                let key = TaskKey::from_stored(entries[i].clone());
                if let Some(record) = self.find_by_key(&key)?
                    && status.is_none_or(|s| record.status == s)
                {
                    tasks.push(record);
                }
            }
            if page == 0 {
                return Ok(TaskPage {
                    tasks,
                    next_cursor: None,
                });
            }
            page -= 1;
            before = usize::MAX;
        }
    }

    /// Records a task about to be submitted, before Kling is called, so that a callback
    /// which outruns Kling's create answer finds it.
    pub fn record_submission(
        &self,
        key: &TaskKey,
        external_task_id: &str,
        kind: &str,
        pipeline: Option<&StepRef>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let head = TaskHead {
            external_task_id: Some(external_task_id.to_string()),
            submission: Some(Submission {
                kind: kind.to_string(),
                status: TaskStatus::Submitting,
                submitted_at: now_ms,
                pipeline: pipeline.cloned(),
            }),
            ..TaskHead::default()
        };
        self.kv.set(&key.head(), &to_json(&head))
    }

    /// Binds Kling's `task_id` to a submitted task. Re-reads the head: a callback may have
    /// bound it (and counted deliveries) meanwhile.
    pub fn bind_submission(&self, key: &TaskKey, task_id: &str) -> Result<(), StoreError> {
        let mut head = self.head(key)?.unwrap_or_default();
        if head.task_id.is_none() {
            head.task_id = Some(task_id.to_string());
        }
        if let Some(submission) = &mut head.submission {
            submission.status = TaskStatus::Submitted;
        }
        self.kv
            .set(&task_id_index(task_id), key.as_str().as_bytes())?;
        self.kv.set(&key.head(), &to_json(&head))
    }

    /// Forgets a submission Kling refused: nothing may be left looking like a live task.
    pub fn forget_submission(&self, key: &TaskKey) -> Result<(), StoreError> {
        self.kv.delete(&key.head())
    }

    /// A task by its key, whatever is stored of it (head, slots, or both).
    pub fn find_by_key(&self, key: &TaskKey) -> Result<Option<TaskRecord>, StoreError> {
        let head = self.head(key)?;
        self.record(key, head)
    }

    /// A task by Kling `task_id` or by `external_task_id`; external ids win a tie.
    pub fn find(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        if !is_valid_external_task_id(id) && !is_valid_task_id(id) {
            return Ok(None);
        }
        if is_valid_external_task_id(id) {
            let key = TaskKey::external(id);
            if let Some(head) = self.head(&key)? {
                return self.record(&key, Some(head));
            }
        }
        if let Some(stored) = self.kv.get(&task_id_index(id))? {
            let key = String::from_utf8(stored)
                .map(TaskKey::from_stored)
                .map_err(|_| StoreError::Corrupt(task_id_index(id)))?;
            let head = self.head(&key)?;
            return self.record(&key, head);
        }
        // No head or index yet (its bookkeeping was lost): the slots still hold the truth.
        let mut candidates = vec![TaskKey::kling(id)];
        if is_valid_external_task_id(id) {
            candidates.insert(0, TaskKey::external(id));
        }
        for key in candidates {
            if let Some(record) = self.record(&key, None)? {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// The record of a task whose head the caller has read: the highest-ranked stored
    /// state with the head's counters or, before Kling reported anything, its submission.
    pub fn record(
        &self,
        key: &TaskKey,
        head: Option<TaskHead>,
    ) -> Result<Option<TaskRecord>, StoreError> {
        for slot in Slot::BY_RANK_DESC {
            if let Some(state) = self.get_json::<TaskEvent>(&key.slot(slot))? {
                return Ok(Some(assemble(head.as_ref(), state)));
            }
        }
        // Kling has not reported on it yet: what we submitted.
        Ok(head.and_then(|head| {
            let submission = head.submission.clone()?;
            Some(assemble_submission(&head, &submission))
        }))
    }

    fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        get_json(self.kv, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryKv;

    fn event(task_id: &str, ext: Option<&str>, status: TaskStatus) -> TaskEvent {
        TaskEvent {
            task_id: task_id.into(),
            status,
            status_msg: String::new(),
            external_task_id: ext.map(Into::into),
            created_at: None,
            updated_at: Some(1),
            videos: vec![],
            images: vec![],
            final_unit_deduction: None,
            source: Default::default(),
        }
    }

    #[test]
    fn bookkeeping_binds_once_then_only_updates_the_head() {
        let key = TaskKey::external("job-1");
        let e = event("86", Some("job-1"), TaskStatus::Submitted);
        let first = TaskStore::bookkeeping(&key, None, &e, Verdict::Apply(Slot::Submitted), 5);
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            ["taskid:86", "task:job-1"]
        );

        let kv = MemoryKv::default();
        first.apply(&kv).unwrap();
        let head = TaskStore::new(&kv).head(&key).unwrap();
        let second = TaskStore::bookkeeping(&key, head, &e, Verdict::Duplicate, 6);
        assert_eq!(second.keys().collect::<Vec<_>>(), ["task:job-1"]);
    }

    #[test]
    fn a_failed_index_write_leaves_the_head_unbound() {
        let key = TaskKey::external("job-1");
        let e = event("86", Some("job-1"), TaskStatus::Submitted);
        let kv = MemoryKv::default();
        kv.fail_next.set(true);
        let plan = TaskStore::bookkeeping(&key, None, &e, Verdict::Apply(Slot::Submitted), 5);
        assert!(plan.apply(&kv).is_err());
        assert!(kv.keys().is_empty(), "{:?}", kv.keys());
    }

    #[test]
    fn find_serves_by_either_id_and_prefers_the_highest_rank() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        let submitted = event("86", Some("job-1"), TaskStatus::Submitted);
        let succeed = event("86", Some("job-1"), TaskStatus::Succeed);
        store.write_slot(&key, Slot::Final, &succeed).unwrap();
        store.write_slot(&key, Slot::Submitted, &submitted).unwrap();
        TaskStore::bookkeeping(&key, None, &succeed, Verdict::Apply(Slot::Final), 9)
            .apply(&kv)
            .unwrap();

        for id in ["job-1", "86"] {
            let record = store.find(id).unwrap().unwrap();
            assert_eq!(record.status, TaskStatus::Succeed, "{id}");
            assert_eq!(record.deliveries, 1);
        }
        assert_eq!(store.find("nope").unwrap(), None);
        assert_eq!(store.find("a/b").unwrap(), None);
    }

    #[test]
    fn find_reaches_slots_whose_bookkeeping_was_lost() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let e = event("86", None, TaskStatus::Processing);
        store
            .write_slot(&TaskKey::kling("86"), Slot::Processing, &e)
            .unwrap();
        let e = event("87", Some("job-7"), TaskStatus::Processing);
        store
            .write_slot(&TaskKey::external("job-7"), Slot::Processing, &e)
            .unwrap();

        let record = store.find("86").unwrap().unwrap();
        assert_eq!(
            (record.status, record.deliveries),
            (TaskStatus::Processing, 0)
        );
        assert_eq!(
            store.find("job-7").unwrap().unwrap().task_id.as_deref(),
            Some("87")
        );
    }

    #[test]
    fn a_submission_is_served_until_kling_reports_and_then_the_report_wins() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-s");
        store
            .record_submission(&key, "job-s", "text2video", None, 5)
            .unwrap();
        let record = store.find("job-s").unwrap().unwrap();
        assert_eq!(
            (record.status, record.task_id, record.kind.as_deref()),
            (TaskStatus::Submitting, None, Some("text2video"))
        );

        store.bind_submission(&key, "86").unwrap();
        let record = store.find("86").unwrap().unwrap();
        assert_eq!(
            (record.status, record.task_id.as_deref()),
            (TaskStatus::Submitted, Some("86"))
        );

        let e = event("86", Some("job-s"), TaskStatus::Processing);
        store.write_slot(&key, Slot::Processing, &e).unwrap();
        let record = store.find("job-s").unwrap().unwrap();
        assert_eq!(
            (record.status, record.kind.as_deref()),
            (TaskStatus::Processing, Some("text2video"))
        );

        store
            .forget_submission(&TaskKey::external("job-s"))
            .unwrap();
        assert_eq!(kv.get("task:job-s").unwrap(), None);
    }

    /// Submits tasks `job-0` .. `job-{count-1}` at t = i, listed in the recent log, and
    /// reports `outcome(i)` for each through the ledger where it is `Some`.
    fn submitted_tasks(kv: &MemoryKv, count: u64, outcome: impl Fn(u64) -> Option<TaskStatus>) {
        let store = TaskStore::new(kv);
        for i in 0..count {
            let ext = format!("job-{i}");
            let key = TaskKey::external(&ext);
            store
                .record_submission(&key, &ext, "text2video", None, i)
                .unwrap();
            store.remember(&key).unwrap();
            if let Some(status) = outcome(i) {
                let e = event(&format!("{i}"), Some(&ext), status);
                let (_, books) = store.record_event(&key, &e, i).unwrap();
                books.apply(kv).unwrap();
            }
        }
    }

    #[test]
    fn retention_takes_a_pipeline_with_its_steps() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("p-0");
        let step = StepRef {
            pipeline_id: "p".into(),
            step: 0,
        };
        store
            .record_submission(&key, "p-0", "text2video", Some(&step), 1)
            .unwrap();
        store.remember(&key).unwrap();
        let (_, books) = store
            .record_event(&key, &event("86", Some("p-0"), TaskStatus::Failed), 2)
            .unwrap();
        books.apply(&kv).unwrap();
        kv.set("pipeline:p", b"{}").unwrap();
        kv.set("pipeline:p:failure", b"{}").unwrap();
        kv.set("pipeline:other", b"{}").unwrap();

        assert_eq!(store.purge_before(3, 10).unwrap(), 1);
        assert_eq!(kv.get("pipeline:p").unwrap(), None);
        assert_eq!(kv.get("pipeline:p:failure").unwrap(), None);
        assert!(kv.get("pipeline:other").unwrap().is_some());
    }

    #[test]
    fn listing_is_newest_first_filtered_by_status_and_pages_with_a_cursor() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        // 250 tasks over three pages; every third has succeeded.
        submitted_tasks(&kv, 250, |i| (i % 3 == 0).then_some(TaskStatus::Succeed));
        assert_eq!(kv.get(RECENT_HEAD).unwrap().as_deref(), Some(&b"2"[..]));

        let first = store.list(None, 5, None).unwrap();
        let exts: Vec<_> = first
            .tasks
            .iter()
            .map(|t| t.external_task_id.clone().unwrap())
            .collect();
        assert_eq!(
            exts,
            ["job-249", "job-248", "job-247", "job-246", "job-245"]
        );

        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.list(Some(TaskStatus::Succeed), 30, cursor).unwrap();
            seen.extend(
                page.tasks
                    .iter()
                    .map(|t| t.external_task_id.clone().unwrap()),
            );
            assert!(page.tasks.iter().all(|t| t.status == TaskStatus::Succeed));
            match page.next_cursor {
                Some(next) => cursor = Some(Cursor::parse(&next.to_string()).unwrap()),
                None => break,
            }
        }
        let expected: Vec<String> = (0..250)
            .rev()
            .filter(|i| i % 3 == 0)
            .map(|i| format!("job-{i}"))
            .collect();
        assert_eq!(seen, expected, "every matching task once, newest first");
    }

    #[test]
    fn a_listing_reads_a_bounded_number_of_entries() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        submitted_tasks(&kv, 300, |_| None);
        let page = store.list(Some(TaskStatus::Failed), 10, None).unwrap();
        assert!(page.tasks.is_empty());
        assert_eq!(
            page.next_cursor,
            Some(Cursor {
                page: 0,
                before: 100
            }),
            "stopped after {MAX_SCAN} entries"
        );
    }

    #[test]
    fn retention_deletes_old_final_tasks_only_and_drops_emptied_pages() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        // 150 tasks over two pages, submitted at t = i; the odd ones finished.
        submitted_tasks(&kv, 150, |i| (i % 2 == 1).then_some(TaskStatus::Succeed));
        // Old enough: everything before t = 120; at most 10 per call.
        assert_eq!(store.purge_before(120, 10).unwrap(), 10);
        assert!(store.find("job-1").unwrap().is_none());
        assert!(
            store.find("1").unwrap().is_none(),
            "the task_id index went too"
        );
        assert!(store.find("job-0").unwrap().is_some(), "not final: kept");
        assert!(store.find("job-121").unwrap().is_some(), "too recent: kept");
        let mut total = 10;
        loop {
            let n = store.purge_before(120, 10).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, 60, "the odd tasks below 120");
        // Page 0 still holds unfinished tasks: not dropped.
        assert!(kv.get("index:recent:0").unwrap().is_some());
        assert_eq!(kv.get(RECENT_OLDEST).unwrap(), None);
    }

    #[test]
    fn pages_emptied_by_retention_are_dropped_but_never_the_newest() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        submitted_tasks(&kv, 250, |_| Some(TaskStatus::Failed));
        while store.purge_before(1000, 50).unwrap() > 0 {}
        assert_eq!(kv.get("index:recent:0").unwrap(), None);
        assert_eq!(kv.get("index:recent:1").unwrap(), None);
        assert!(
            kv.get("index:recent:2").unwrap().is_some(),
            "submits still append here"
        );
        assert_eq!(kv.get(RECENT_OLDEST).unwrap().as_deref(), Some(&b"2"[..]));
        assert!(store.list(None, 100, None).unwrap().tasks.is_empty());
    }

    #[test]
    fn remembering_twice_keeps_one_entry() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        store.remember(&key).unwrap();
        store.remember(&key).unwrap();
        assert_eq!(
            kv.get("index:recent:0").unwrap().as_deref(),
            Some(&br#"["job-1"]"#[..])
        );
    }

    #[test]
    fn corrupt_values_are_reported_not_guessed() {
        let kv = MemoryKv::default();
        kv.set("task:job-1", b"not json").unwrap();
        assert_eq!(
            TaskStore::new(&kv).find("job-1"),
            Err(StoreError::Corrupt("task:job-1".into()))
        );
    }
}
