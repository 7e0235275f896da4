//! Retention by day: the reconciler indexes every task it tracks by the day it found it
//! final (`final/{day}/{key}`), and a run deletes the tasks of whole past days, oldest
//! day first. Nothing pins it: an unfinished task is simply not in that index.
//!
//! A scan of the listing takes the rest: a listed task first seen before the cutoff
//! whose last news is older than the cutoff is purged if it is final (above all a task
//! not submitted here that a callback finished: callbacks write no retention entry, so
//! the hot path saves a store operation), or if it was not submitted here (no
//! reconciler will ever finish it). A pending task of ours is left to the reconciler,
//! which ends it (`lost` at worst) and indexes it then.

use super::index::{DefaultKeys, Index, default_keys};
use super::layout::TaskKey;
use super::pending::PendingEntry;
use super::pipelines::{PipelineStore, pipeline_entry};
use super::tasks::{DAY_MS, TaskStore, listed_entry};
use super::{KeyValue, StoreError};
use crate::ledger::TaskHead;
use crate::pipeline::progress::PIPELINE_WATCH_MS;
use crate::task::TaskRecord;

/// What one run deleted, and whether it stopped at its limit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Tasks deleted, a submission given up as never created and a head left with no
    /// state counted as tasks too.
    pub tasks: usize,
    pub more_left: bool,
    /// Tasks skipped because a value of theirs does not parse (reported, never a reason
    /// to stop: a run must get past them).
    pub corrupt: Vec<String>,
}

/// Deletes at most `max` tasks that ended before `cutoff_ms` (whole days), and their
/// index entries. `now_ms` bounds how long a pipeline that cannot move on keeps its
/// steps ([`PIPELINE_WATCH_MS`]).
pub fn purge_expired(
    kv: &dyn KeyValue,
    cutoff_ms: u64,
    now_ms: u64,
    max: usize,
) -> Result<Purged, StoreError> {
    let store = TaskStore::new(kv);
    let finals = Index::finals(kv);
    let listed = Index::listed(kv);
    let keys = default_keys(kv)?;
    let (listed_entries, final_entries) = (&keys.listed, &keys.finals);
    // Whole days: everything before the start of the cutoff's day.
    let cutoff_day = cutoff_ms / DAY_MS;
    let cutoff_ms = cutoff_day * DAY_MS;
    let mut purged = Purged::default();
    let mut done: Vec<String> = Vec::new();
    let mut stale = StalePending::new(kv);

    // Whole past days, oldest first (entries sort by day).
    let expired = final_entries
        .iter()
        .filter_map(|entry| {
            let (day, key) = entry.split_once('/')?;
            let day: u64 = day.parse().ok()?;
            (day < cutoff_day).then(|| (entry.clone(), key.to_string()))
        })
        .collect::<Vec<_>>();
    for (entry, key) in expired {
        if purged.tasks == max {
            purged.more_left = true;
            return Ok(purged);
        }
        let key = TaskKey::from_stored(key);
        if !done.contains(&key.as_str().to_string()) {
            stale.list_before_reading()?;
            let read = store.live_head(&key).and_then(|head| {
                let last_news = head.as_ref().and_then(TaskHead::last_news);
                Ok(store.record(&key, head)?.map(|record| (record, last_news)))
            });
            let found = match read {
                // Left as it is (its entries too), reported once per run.
                Err(StoreError::Corrupt(_)) => {
                    purged.corrupt.push(key.as_str().to_string());
                    done.push(key.as_str().to_string());
                    continue;
                }
                found => found?,
            };
            if let Some((record, last_news)) = found {
                // Indexed as final, so its record is final; anything else is left alone.
                // So is a step of a pipeline still running: its later steps are built
                // from it (the listing scan takes it once the pipeline has finished).
                // And a task with news since that day (given up as `lost`, then finished
                // by Kling after all): the listing scan takes it by its last news.
                if !record.status.is_final()
                    || last_news.is_some_and(|at| at >= cutoff_ms)
                    || runs_a_live_pipeline(kv, &record, now_ms)?
                {
                    finals.remove(&entry)?;
                    continue;
                }
                purge_task(kv, &mut stale, &keys, &key, &record)?;
                purged.tasks += 1;
            }
            let removed = remove_listed(&listed, listed_entries, &key)?;
            relist_if_written_back(kv, &listed, &key, &removed, now_ms)?;
            done.push(key.as_str().to_string());
        }
        finals.remove(&entry)?;
    }

    // The listing scan: listed before the cutoff, and no retention entry took it above.
    for entry in listed_entries {
        let Some((ms, key)) = entry.split_once('/') else {
            continue;
        };
        match ms.parse::<u64>() {
            Ok(ms) if ms < cutoff_ms => {}
            Ok(_) => break,     // sorted: everything after is newer
            Err(_) => continue, // not an entry of ours
        }
        if done.iter().any(|d| d == key) {
            continue;
        }
        if purged.tasks == max {
            purged.more_left = true;
            return Ok(purged);
        }
        let key = TaskKey::from_stored(key.to_string());
        stale.list_before_reading()?;
        // A head given up as never created reads as no head; its nonce is kept to
        // delete it.
        let read = store.head(&key).and_then(|stored| {
            let nonce = stored
                .as_ref()
                .and_then(|h| h.submission.as_ref())
                .map(|s| s.nonce.clone());
            let head = stored.map_or(Ok(None), |head| store.live(&key, head))?;
            let given_up = nonce.filter(|_| head.is_none());
            Ok((given_up, head.clone(), store.record(&key, head)?))
        });
        let (given_up, head, record) = match read {
            Err(StoreError::Corrupt(_)) => {
                purged.corrupt.push(key.as_str().to_string());
                continue;
            }
            read => read?,
        };
        // No head: only slots of a task not submitted here are left (a submit writes
        // the head first), and it was first seen before the cutoff.
        let expired = match (&head, &record) {
            (None, _) => true,
            // A head with no state (a delivery wrote it back while a run deleted the
            // task): as old as its last news, like any task, so that a delivery landing
            // now is not deleted under its acknowledgement.
            (Some(head), None) => head.last_news().is_none_or(|at| at < cutoff_ms),
            (Some(head), Some(record)) => {
                head.last_news().is_some_and(|at| at < cutoff_ms)
                    && (record.status.is_final() || head.submission.is_none())
            }
        };
        if !expired {
            continue;
        }
        if let Some(record) = &record
            && runs_a_live_pipeline(kv, record, now_ms)?
        {
            continue;
        }
        // Each counts toward `max`, what it leaves as much as a task: a run's work is
        // bounded by its count (retention is not by the run's budget).
        if let Some(record) = &record {
            purge_task(kv, &mut stale, &keys, &key, record)?;
        } else if let Some(nonce) = given_up {
            if !store.purge_given_up(&key, &nonce, &keys.marks_of(&key))? {
                continue; // submitted again meanwhile: the new submission's now
            }
        } else {
            // No record: a head left with none (a late delivery wrote it back while a
            // run deleted the task, and that run deleted its slot) goes, and so do marks
            // a give-up left behind it.
            if let Some(head) = &head {
                store.delete_task(&key, head.task_id.as_deref())?;
            }
            delete_all(kv, &keys.marks_of(&key))?;
        }
        purged.tasks += 1;
        listed.remove(entry)?;
        relist_if_written_back(kv, &listed, &key, std::slice::from_ref(entry), now_ms)?;
        done.push(key.as_str().to_string());
    }
    Ok(purged)
}

/// Whether `record` is a step of a pipeline the reconciler still holds: indexed, and
/// within [`PIPELINE_WATCH_MS`] of its creation. Purging it would take the pipeline with
/// it (see [`TaskStore::purge`]), and the step's result feeds the steps after it. A
/// finished pipeline is held too until the reconciler lets it go, which it does only
/// once its end's notification is queued (a step that ended by a callback whose
/// instance stopped after the 200 is announced by that run); one failed by a step given
/// up as `lost` stays indexed, and held, for the watch, since Kling may still finish
/// that step. A pipeline that is not indexed goes (a delete that stopped halfway, its
/// failure gone and its description left, must not read as running for ever); so does
/// one older than the watch (a deployment that cannot submit never fails it).
fn runs_a_live_pipeline(
    kv: &dyn KeyValue,
    record: &TaskRecord,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let Some(step) = &record.pipeline else {
        return Ok(false);
    };
    let pipelines = PipelineStore::new(kv);
    let spec = match pipelines.spec(&step.pipeline_id) {
        Ok(Some(spec)) => spec,
        // A pipeline that cannot be read cannot run on either.
        Ok(None) | Err(StoreError::Corrupt(_)) => return Ok(false),
        Err(error) => return Err(error),
    };
    if !spec.has_step(step.step) || now_ms >= spec.created_at.saturating_add(PIPELINE_WATCH_MS) {
        return Ok(false);
    }
    let entry = pipeline_entry(&spec.id, &spec.generation);
    Ok(Index::pipelines(kv).value(&entry)?.is_some())
}

/// The pending entries of tasks retention deletes: none should be left (the reconciler
/// releases a task's entries once it is final), but one that outlived its task would
/// otherwise find no head and bring the task back from Kling (which keeps it 30 days).
/// Removed before the task, from one listing of the pending index made before retention
/// reads its first task (and only if it reads one): an entry added after that read is
/// never in it. So a delivery that lands between retention's read of a task and its
/// delete (a `lost` task's late final, which tracks the task again) keeps its entries,
/// and the next run asks Kling about the task, as for any entry whose head is gone; and
/// an entry a new submit of the same id adds is never taken.
struct StalePending<'a> {
    kv: &'a dyn KeyValue,
    listed: Option<Vec<String>>,
}

impl<'a> StalePending<'a> {
    fn new(kv: &'a dyn KeyValue) -> Self {
        Self { kv, listed: None }
    }

    /// Lists the pending index, once: called before each task retention reads.
    fn list_before_reading(&mut self) -> Result<(), StoreError> {
        if self.listed.is_none() {
            self.listed = Some(Index::pending(self.kv).entries()?);
        }
        Ok(())
    }

    fn remove_entries_of(&mut self, key: &TaskKey) -> Result<(), StoreError> {
        let index = Index::pending(self.kv);
        for entry in self.listed.iter().flatten() {
            if PendingEntry::parse(entry).is_some_and(|p| p.key == *key) {
                index.remove(entry)?;
            }
        }
        Ok(())
    }
}

/// Deletes a task retention found expired: its leftover pending entries first, then the
/// task (with its pipeline), then every give-up mark of its id.
fn purge_task(
    kv: &dyn KeyValue,
    stale: &mut StalePending<'_>,
    keys: &DefaultKeys,
    key: &TaskKey,
    record: &TaskRecord,
) -> Result<(), StoreError> {
    stale.remove_entries_of(key)?;
    TaskStore::new(kv).purge(key, record)?;
    delete_all(kv, &keys.marks_of(key))
}

fn delete_all(kv: &dyn KeyValue, keys: &[String]) -> Result<(), StoreError> {
    keys.iter().try_for_each(|key| kv.delete(key))
}

/// A delivery that lands while retention deletes its task writes the task back: one that
/// read the head before the delete (a task submitted here included, which no delivery
/// lists), or one that found none and lists it under the name its first delivery chose,
/// often the very entry removed here. So the head is read once more after the listing
/// entries went, and a head there now is listed again under the same names (under now
/// if it had none): a later run finds it, and the listing scan deletes it once its news
/// is as old as the cutoff (a head with no state included). A head written after this
/// read lists itself if its task was not submitted here (every news batch of such a task
/// holds its listing entry); a task submitted here whose delivery read its head before
/// the delete and writes after this read (one kept waiting on Kling by
/// `verify_callbacks`, `retention_days` after its last news) is left unlisted, still served by
/// its id: no listing entry goes into its news batches just for that. One read per
/// deleted task, in retention only.
fn relist_if_written_back(
    kv: &dyn KeyValue,
    listed: &Index<'_>,
    key: &TaskKey,
    removed: &[String],
    now_ms: u64,
) -> Result<(), StoreError> {
    if kv.get(&key.head())?.is_none() {
        return Ok(());
    }
    if removed.is_empty() {
        return listed.add(&listed_entry(key, now_ms));
    }
    removed.iter().try_for_each(|entry| listed.add(entry))
}

/// Removes the task's listing entries; returns their names.
fn remove_listed(
    listed: &Index<'_>,
    entries: &[String],
    key: &TaskKey,
) -> Result<Vec<String>, StoreError> {
    let mut removed = Vec::new();
    for entry in entries {
        if entry
            .split_once('/')
            .is_some_and(|(_, k)| k == key.as_str())
        {
            listed.remove(entry)?;
            removed.push(entry.clone());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Slot;
    use crate::store::memory::{Between, MemoryKv};
    use crate::store::tasks::NewSubmission;
    use crate::task::{EventSource, StepRef, TaskEvent, TaskStatus};

    const DAY: u64 = DAY_MS;

    fn event(task_id: &str, ext: &str, status: TaskStatus) -> TaskEvent {
        TaskEvent {
            task_id: task_id.into(),
            status,
            status_msg: String::new(),
            external_task_id: Some(ext.into()),
            created_at: None,
            updated_at: Some(1),
            videos: vec![],
            images: vec![],
            more: Default::default(),
            final_unit_deduction: None,
            source: Default::default(),
        }
    }

    /// Submits `ext` at `at` and, if `status` is given, reports it at `at` too.
    fn task(kv: &MemoryKv, ext: &str, at: u64, status: Option<TaskStatus>, step: Option<&StepRef>) {
        let store = TaskStore::new(kv);
        let key = TaskKey::external(ext);
        store
            .record_submission(&NewSubmission {
                key: &key,
                external_task_id: ext,
                kind: "text2video",
                pipeline: step,
                nonce: "n",
                now_ms: at,
                first_due_ms: at,
                body_digest: None,
                first_submitted_at: None,
            })
            .unwrap();
        if let Some(status) = status {
            let mut e = event(&format!("t-{ext}"), ext, status);
            // Tasks whose name ends in an odd digit are finished by the reconciler's poll
            // (indexed by day); the others by a callback (found by the listing scan).
            if ext.ends_with(['1', '3', '5', '7', '9']) {
                e.source = EventSource::Poll;
            }
            let (_, books) = store.record_event(&key, &e, at).unwrap();
            books.apply(kv).unwrap();
        }
    }

    fn exists(kv: &MemoryKv, ext: &str) -> bool {
        TaskStore::new(kv).find(ext).unwrap().is_some()
    }

    #[test]
    fn a_purged_task_takes_any_pending_entry_and_give_up_mark_left_with_it() {
        let kv = MemoryKv::default();
        // Final by a poll (indexed by day) and by a callback (found by the listing scan),
        // each with the pending entry the reconciler never got to release.
        task(&kv, "job-1", 0, Some(TaskStatus::Succeed), None);
        task(&kv, "job-2", 0, Some(TaskStatus::Succeed), None);
        // Given up once, then bound after all: the mark of that give-up goes too.
        kv.set(&TaskKey::external("job-1").forgotten("n"), b"1")
            .unwrap();
        // A mark with no head left behind it, under an expired listing entry.
        let orphan = TaskKey::external("job-3");
        Index::listed(&kv).add("0000000000000/job-3").unwrap();
        kv.set(&orphan.forgotten("n9"), b"1").unwrap();
        // A task still running keeps its entries.
        task(&kv, "job-4", 0, Some(TaskStatus::Processing), None);
        let of = |ext: &str| {
            Index::pending(&kv)
                .entries()
                .unwrap()
                .into_iter()
                .filter(|e| PendingEntry::parse(e).is_some_and(|p| p.key.as_str() == ext))
                .count()
        };
        assert!(of("job-1") > 0 && of("job-2") > 0);
        let running = of("job-4");
        assert!(running > 0);

        let purged = purge_expired(&kv, 2 * DAY, 2 * DAY, 10).unwrap();
        assert_eq!(purged.tasks, 3, "job-3's mark counts as one");
        assert_eq!((of("job-1"), of("job-2"), of("job-4")), (0, 0, running));
        assert_eq!(kv.get(&orphan.forgotten("n9")).unwrap(), None);
        let bound_after_a_give_up = TaskKey::external("job-1").forgotten("n");
        assert_eq!(kv.get(&bound_after_a_give_up).unwrap(), None);
        assert!(exists(&kv, "job-4"));
    }

    #[test]
    fn whole_past_days_go_and_an_unfinished_task_pins_nothing() {
        let kv = MemoryKv::default();
        task(&kv, "never-done", 0, Some(TaskStatus::Processing), None);
        for i in 0..30 {
            task(
                &kv,
                &format!("old-{i}"),
                DAY + i,
                Some(TaskStatus::Succeed),
                None,
            );
        }
        task(&kv, "today-1", 3 * DAY + 5, Some(TaskStatus::Failed), None);
        let step = StepRef {
            pipeline_id: "p".into(),
            step: 0,
        };
        task(&kv, "p-0", 2 * DAY, Some(TaskStatus::Failed), Some(&step));
        kv.set("pipeline:p", b"{}").unwrap();

        // Cutoff: the start of day 3; at most 20 a run.
        let first = purge_expired(&kv, 3 * DAY + 7, 3 * DAY + 7, 20).unwrap();
        assert_eq!(
            first,
            Purged {
                tasks: 20,
                more_left: true,
                corrupt: Vec::new(),
            }
        );
        let second = purge_expired(&kv, 3 * DAY + 7, 3 * DAY + 7, 20).unwrap();
        assert_eq!(
            second,
            Purged {
                tasks: 11,
                more_left: false,
                corrupt: Vec::new(),
            }
        );
        assert!((0..30).all(|i| !exists(&kv, &format!("old-{i}"))));
        assert!(!exists(&kv, "p-0"));
        assert_eq!(
            kv.get("pipeline:p").unwrap(),
            None,
            "the pipeline went with its step"
        );
        assert!(exists(&kv, "today-1"), "its day has not ended");
        assert!(
            exists(&kv, "never-done"),
            "pending: the reconciler's to end"
        );
        // Only the survivors are listed, and only the survivor that ended (by a poll)
        // is indexed.
        let store = TaskStore::new(&kv);
        assert_eq!(store.list(None, 100, None).unwrap().tasks.len(), 2);
        assert_eq!(Index::finals(&kv).entries().unwrap().len(), 1);
        // Pending entries are the reconciler's: it releases those of a task that is gone.
        let left: Vec<String> = kv
            .keys()
            .into_iter()
            .filter(|k| k.contains("old-") && !k.starts_with("pending/"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn step_of(pipeline: &str, step: usize) -> StepRef {
        StepRef {
            pipeline_id: pipeline.into(),
            step,
        }
    }

    #[test]
    fn a_step_of_a_pipeline_still_running_is_kept_with_its_pipeline() {
        use crate::store::pipelines::PipelineStore;
        let kv = MemoryKv::default();
        let pipelines = PipelineStore::new(&kv);
        let spec = crate::pipeline::spec::PipelineSpec::of_text2video_steps("p", 2);
        pipelines.save_spec(&spec).unwrap();
        pipelines.index(&spec).unwrap();
        // Step 0 succeeded long ago, and is indexed both ways (by day and listed); step 1
        // is refused for a reason that leaves the pipeline running (balance, rate).
        task(
            &kv,
            "p-0",
            0,
            Some(TaskStatus::Succeed),
            Some(&step_of("p", 0)),
        );
        Index::finals(&kv).add("000000/p-0").unwrap();

        // Ten days of retention, twenty days after the pipeline began.
        assert_eq!(purge_expired(&kv, 10 * DAY, 20 * DAY, 10).unwrap().tasks, 0);
        assert!(exists(&kv, "p-0"), "a running pipeline's step stays");
        assert!(pipelines.spec("p").unwrap().is_some(), "and its pipeline");

        // Step 1 ran and failed: the pipeline has finished, but until the reconciler
        // lets it go (its end announced first), it keeps its steps.
        task(
            &kv,
            "p-1",
            DAY,
            Some(TaskStatus::Failed),
            Some(&step_of("p", 1)),
        );
        assert_eq!(purge_expired(&kv, 10 * DAY, 20 * DAY, 10).unwrap().tasks, 0);
        assert!(exists(&kv, "p-0") && exists(&kv, "p-1"));
        // Let go: it goes with its steps.
        Index::pipelines(&kv)
            .remove(&pipeline_entry(&spec.id, &spec.generation))
            .unwrap();
        assert_eq!(purge_expired(&kv, 10 * DAY, 20 * DAY, 10).unwrap().tasks, 2);
        assert!(!exists(&kv, "p-0") && !exists(&kv, "p-1"));
        assert_eq!(pipelines.spec("p").unwrap(), None);

        // Not for ever: past the watch, a pipeline that cannot move on (a deployment
        // that cannot submit never fails it) keeps nothing.
        let stuck = crate::pipeline::spec::PipelineSpec::of_text2video_steps("s", 2);
        pipelines.save_spec(&stuck).unwrap();
        pipelines.index(&stuck).unwrap();
        task(
            &kv,
            "s-0",
            0,
            Some(TaskStatus::Succeed),
            Some(&step_of("s", 0)),
        );
        assert_eq!(purge_expired(&kv, 10 * DAY, 29 * DAY, 10).unwrap().tasks, 0);
        assert_eq!(purge_expired(&kv, 10 * DAY, 31 * DAY, 10).unwrap().tasks, 1);
        assert_eq!(pipelines.spec("s").unwrap(), None);
    }

    /// An id used again after retention took an old pipeline's first steps: the old
    /// pipeline's step past the new one's last did not block the create, is not held by
    /// the new pipeline, and takes nothing of it when retention deletes it.
    #[test]
    fn an_older_pipeline_s_step_past_the_last_leaves_the_new_pipeline_of_its_id_alone() {
        use crate::store::pipelines::PipelineStore;
        let kv = MemoryKv::default();
        let pipelines = PipelineStore::new(&kv);
        // The old pipeline's step 2 ended on day 1; its description and first steps are gone.
        task(
            &kv,
            "p-2",
            DAY,
            Some(TaskStatus::Succeed),
            Some(&step_of("p", 2)),
        );
        // The new pipeline `p`, two steps, running: step 0 done, step 1 not yet.
        let spec = crate::pipeline::spec::PipelineSpec::of_text2video_steps("p", 2);
        pipelines.save_spec(&spec).unwrap();
        pipelines.index(&spec).unwrap();
        task(
            &kv,
            "p-0",
            5 * DAY,
            Some(TaskStatus::Succeed),
            Some(&step_of("p", 0)),
        );

        assert_eq!(purge_expired(&kv, 3 * DAY, 3 * DAY, 10).unwrap().tasks, 1);
        assert!(!exists(&kv, "p-2"), "not the running pipeline's step");
        assert!(exists(&kv, "p-0"));
        assert_eq!(
            pipelines.spec("p").unwrap(),
            Some(spec),
            "the new pipeline stays"
        );
    }

    #[test]
    fn a_pipeline_the_reconciler_no_longer_tracks_does_not_hold_its_steps() {
        use crate::store::pipelines::PipelineStore;
        let kv = MemoryKv::default();
        let pipelines = PipelineStore::new(&kv);
        // A refused step 1 failed it and the reconciler let it go; then a purge deleted
        // its failure and stopped before its description: read alone, it looks running.
        pipelines
            .save_spec(&crate::pipeline::spec::PipelineSpec::of_text2video_steps(
                "q", 2,
            ))
            .unwrap();
        task(
            &kv,
            "q-0",
            0,
            Some(TaskStatus::Succeed),
            Some(&step_of("q", 0)),
        );
        assert_eq!(purge_expired(&kv, 40 * DAY, 40 * DAY, 10).unwrap().tasks, 1);
        assert!(!exists(&kv, "q-0"));
        assert_eq!(pipelines.spec("q").unwrap(), None, "the delete is finished");
    }

    #[test]
    fn the_listing_scan_takes_what_lost_its_retention_entry() {
        let kv = MemoryKv::default();
        // Finished by a poll, which indexes it by day; then that entry is lost.
        task(&kv, "done-1", 0, Some(TaskStatus::Succeed), None);
        task(&kv, "ours-pending", 0, Some(TaskStatus::Processing), None);
        assert_eq!(Index::finals(&kv).entries().unwrap().len(), 1);
        for entry in Index::finals(&kv).entries().unwrap() {
            Index::finals(&kv).remove(&entry).unwrap();
        }
        // A task not submitted here that never finished.
        let store = TaskStore::new(&kv);
        let key = TaskKey::kling("77");
        let mut e = event("77", "x", TaskStatus::Processing);
        e.external_task_id = None;
        let (_, books) = store.record_event(&key, &e, 10).unwrap();
        books.apply(&kv).unwrap();

        assert_eq!(purge_expired(&kv, 2 * DAY, 2 * DAY, 10).unwrap().tasks, 2);
        assert!(!exists(&kv, "done-1"));
        assert!(!exists(&kv, "77"));
        assert!(exists(&kv, "ours-pending"));
    }

    #[test]
    fn a_value_that_does_not_parse_is_reported_and_passed_over() {
        let kv = MemoryKv::default();
        for ext in ["bad-1", "good-3"] {
            task(&kv, ext, 0, Some(TaskStatus::Succeed), None);
        }
        task(&kv, "bad-2", 0, Some(TaskStatus::Succeed), None);
        kv.set("task:bad-1", b"not json").unwrap();
        kv.set("task:bad-2", b"not json").unwrap();
        let purged = purge_expired(&kv, 2 * DAY, 2 * DAY, 10).unwrap();
        assert_eq!(purged.tasks, 1, "{purged:?}");
        assert!(!exists(&kv, "good-3"));
        assert_eq!(
            purged.corrupt,
            ["bad-1", "bad-2"],
            "both passes skip and say so"
        );
    }

    #[test]
    fn a_run_lists_the_default_label_once() {
        let kv = MemoryKv::default();
        task(&kv, "fresh-1", 5 * DAY, Some(TaskStatus::Succeed), None);
        task(&kv, "fresh-2", 5 * DAY, None, None);
        kv.round_trips.set(0);
        assert_eq!(
            purge_expired(&kv, 5 * DAY, 5 * DAY, 10).unwrap(),
            Purged::default()
        );
        assert_eq!(kv.round_trips.get(), 1, "one list-keys, nothing else");
    }

    /// Records the order of deletes.
    #[derive(Default)]
    struct Deletes {
        inner: MemoryKv,
        deleted: std::cell::RefCell<Vec<String>>,
    }

    impl KeyValue for Deletes {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.inner.set(key, value)
        }
        fn set_all(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            self.inner.set_all(entries)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.deleted.borrow_mut().push(key.to_string());
            self.inner.delete(key)
        }
        fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
            self.inner.keys_with_prefix(prefix)
        }
    }

    /// A delivery of `ext` (first seen by callback, Kling's `created_at` 5) stored at `at`.
    fn delivered(kv: &MemoryKv, ext: &str, status: TaskStatus, at: u64) {
        let mut e = event(&format!("t-{ext}"), ext, status);
        e.created_at = Some(5);
        e.source = EventSource::Callback;
        let (_, books) = TaskStore::new(kv)
            .record_event(&TaskKey::external(ext), &e, at)
            .unwrap();
        books.apply(kv).unwrap();
    }

    #[test]
    fn a_task_a_late_delivery_writes_back_while_it_goes_is_deleted_by_a_later_run() {
        // Late news lands just before the listing entry it names goes (a head and a
        // slot written back), or just before the final slot goes (a head and no slot).
        for (ext, before_delete, late) in [
            (
                "job-2",
                "listed/0000000000005/job-2",
                TaskStatus::Processing,
            ),
            ("job-4", "task:job-4:final", TaskStatus::Succeed),
        ] {
            let kv = MemoryKv::default();
            delivered(&kv, ext, TaskStatus::Succeed, 5);
            let between = Between::new(&kv).before("delete", before_delete.into(), || {
                delivered(&kv, ext, late, 2 * DAY)
            });
            assert_eq!(
                purge_expired(&between, 2 * DAY, 2 * DAY, 10).unwrap().tasks,
                1
            );
            assert!(
                kv.get(&format!("task:{ext}")).unwrap().is_some(),
                "written back"
            );
            purge_expired(&kv, 10 * DAY, 10 * DAY, 10).unwrap();
            let left: Vec<String> = kv.keys().into_iter().filter(|k| k.contains(ext)).collect();
            assert!(left.is_empty(), "{ext}: {left:?}");
        }

        // A task submitted here (no delivery lists it), final by a poll (indexed by
        // day): a delivery that read its head before the delete writes it back.
        let kv = MemoryKv::default();
        task(&kv, "job-5", 0, Some(TaskStatus::Succeed), None);
        let (head, done) = (kv.get("task:job-5").unwrap(), kv.get("task:job-5:final"));
        let between =
            Between::new(&kv).before("delete", "listed/0000000000000/job-5".into(), || {
                kv.set_all(&[
                    ("task:job-5:final".into(), done.unwrap().unwrap()),
                    ("task:job-5".into(), head.unwrap()),
                ])
                .unwrap()
            });
        assert_eq!(
            purge_expired(&between, 2 * DAY, 2 * DAY, 10).unwrap().tasks,
            1
        );
        assert!(exists(&kv, "job-5"), "written back");
        purge_expired(&kv, 10 * DAY, 10 * DAY, 10).unwrap();
        let left: Vec<String> = kv
            .keys()
            .into_iter()
            .filter(|k| k.contains("job-5"))
            .collect();
        assert!(left.iter().all(|k| k.starts_with("pending/")), "{left:?}");
    }

    /// A delivery that tracks the task again (a `lost` task's late final) lands after
    /// retention read the task and before it deletes it: its pending entry outlives the
    /// delete, so the next run brings the acknowledged final back from Kling.
    #[test]
    fn a_pending_entry_added_after_the_task_was_read_outlives_its_delete() {
        use crate::store::index::PRESENT;
        use crate::store::pending::{SpareBy, spare_pending_entry};
        let kv = MemoryKv::default();
        task(&kv, "job-6", 0, Some(TaskStatus::Succeed), None);
        let key = TaskKey::external("job-6");
        let retracked = spare_pending_entry(&key, "n", 2 * DAY, SpareBy::Retrack);
        let between = Between::new(&kv).before("get", "task:job-6:final".into(), || {
            Index::pending(&kv).put(&retracked, PRESENT).unwrap()
        });
        let purged = purge_expired(&between, 2 * DAY, 2 * DAY, 10).unwrap();
        assert_eq!(purged.tasks, 1);
        assert!(!exists(&kv, "job-6"));
        assert!(
            Index::pending(&kv).value(&retracked).unwrap().is_some(),
            "the late delivery's entry is kept"
        );
    }

    /// Given up as `lost` by a poll on day 0 (indexed by that day), then finished by
    /// Kling's callback on day 3: kept until its last news is `retention_days` old.
    #[test]
    fn a_lost_task_kling_finished_later_is_kept_by_its_last_news() {
        let kv = MemoryKv::default();
        task(&kv, "job-1", 0, Some(TaskStatus::Lost), None);
        assert_eq!(Index::finals(&kv).entries().unwrap().len(), 1);
        let mut done = event("t-job-1", "job-1", TaskStatus::Succeed);
        done.updated_at = Some(2);
        let (_, books) = TaskStore::new(&kv)
            .record_event(&TaskKey::external("job-1"), &done, 3 * DAY)
            .unwrap();
        books.apply(&kv).unwrap();

        assert_eq!(purge_expired(&kv, 2 * DAY, 2 * DAY, 10).unwrap().tasks, 0);
        let kept = TaskStore::new(&kv).find("job-1").unwrap().unwrap();
        assert_eq!(kept.status, TaskStatus::Succeed);
        assert!(
            Index::finals(&kv).entries().unwrap().is_empty(),
            "its day's entry went"
        );
        // Its last news is old enough now: the listing scan takes it.
        assert_eq!(purge_expired(&kv, 4 * DAY, 4 * DAY, 10).unwrap().tasks, 1);
        assert!(!exists(&kv, "job-1"));
    }

    #[test]
    fn a_head_with_no_state_is_kept_while_its_news_is_recent() {
        let kv = MemoryKv::default();
        delivered(&kv, "job-6", TaskStatus::Processing, 5);
        delivered(&kv, "job-6", TaskStatus::Succeed, 3 * DAY);
        for slot in ["processing", "final"] {
            kv.delete(&format!("task:job-6:{slot}")).unwrap();
        }
        // Listed long ago, but its last news is newer than the cutoff: kept.
        purge_expired(&kv, 2 * DAY, 2 * DAY, 10).unwrap();
        assert!(kv.get("task:job-6").unwrap().is_some());
        purge_expired(&kv, 4 * DAY, 4 * DAY, 10).unwrap();
        assert_eq!(kv.get("task:job-6").unwrap(), None);
    }

    #[test]
    fn a_task_is_deleted_from_its_lowest_rank_to_its_highest() {
        let kv = Deletes::default();
        task(&kv.inner, "job", 0, Some(TaskStatus::Processing), None);
        let store = TaskStore::new(&kv.inner);
        let key = TaskKey::external("job");
        let done = event("t-job", "job", TaskStatus::Succeed);
        store.write_slot(&key, Slot::Final, &done).unwrap();
        Index::finals(&kv.inner).add("000000/job").unwrap();

        purge_expired(&kv, 2 * DAY, 2 * DAY, 10).unwrap();
        let deleted = kv.deleted.borrow();
        let task_keys: Vec<&str> = deleted
            .iter()
            .map(String::as_str)
            .filter(|k| k.starts_with("task"))
            .collect();
        assert_eq!(
            task_keys,
            [
                "task:job:submitted",
                "task:job:processing",
                "task:job:lost",
                "task:job:poll",
                "task:job:notified",
                "task:job:rejected",
                "task:job",
                "taskid:t-job",
                "task:job:final"
            ]
        );
        assert_eq!(
            deleted.last().map(String::as_str),
            Some("final/000000/job"),
            "the entry last"
        );
    }
}
