//! Task heads, status slots, poll records and the task_id index over a [`KeyValue`]
//! store, with the task's entries in the listing and retention indexes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;

use super::index::{Index, PRESENT, sortable_ms};
use super::layout::{TaskKey, task_id_index};
use super::pending::{
    PendingEntry, SpareBy, add_pending, pending_entry, pending_submission, spare_pending_entry,
};
use super::pipelines::PipelineStore;
use super::{KeyValue, StoreError, get_json, to_json};
use crate::ledger::{
    LedgerError, PollState, Slot, Submission, TaskHead, Verdict, assemble, assemble_submission,
    judge,
};
use crate::task::{EventSource, StepRef, TaskEvent, TaskRecord, TaskStatus};
use crate::validate::{is_valid_external_task_id, is_valid_task_id};

pub const DAY_MS: u64 = 24 * 60 * 60 * 1000;

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

/// Listing entries one `GET /tasks` reads at most.
pub const MAX_SCAN: usize = 200;

/// Where a listing stopped: the listing entry (`{first_seen_ms}/{key}`) of the last task
/// examined; the next page starts below it. Shown base64url-encoded, so it is safe in a
/// query string. Entries only ever go down, so paging cannot loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    pub fn parse(text: &str) -> Option<Self> {
        let entry = String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
        task_of_listed_entry(&entry)?;
        Some(Self(entry))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(&self.0))
    }
}

/// The task key of a listing entry `{13 digits}/{key}`, if it is one.
fn task_of_listed_entry(entry: &str) -> Option<TaskKey> {
    let (ms, key) = entry.split_once('/')?;
    let valid_key =
        is_valid_external_task_id(key) || key.strip_prefix('#').is_some_and(is_valid_task_id);
    (ms.len() == 13 && ms.bytes().all(|b| b.is_ascii_digit()) && valid_key)
        .then(|| TaskKey::from_stored(key.to_string()))
}

/// The entry that lists a task first seen at `ms`.
pub fn listed_entry(key: &TaskKey, ms: u64) -> String {
    format!("{}/{}", sortable_ms(ms), key.as_str())
}

/// The entry that puts a task in the retention index of the day `ms` falls in.
pub fn final_entry(key: &TaskKey, ms: u64) -> String {
    format!("{:06}/{}", ms / DAY_MS, key.as_str())
}

#[derive(Debug)]
pub struct TaskPage {
    pub tasks: Vec<TaskRecord>,
    pub next_cursor: Option<Cursor>,
}

/// What an accepted delivery writes besides its slot. For news, the head (and, on the
/// task's first binding, the task_id index; for a task not submitted here, its listing
/// entry) goes into the same batch as the slot, before the
/// acknowledgement (see [`TaskStore::record_event_with_head`]). What is left for after it
/// ([`Bookkeeping::apply`]) is the retention entry of a task a poll made final, the
/// changed head of a delivery that was not news (a first binding by a stale delivery),
/// and a rejection's count (a key of its own: a head read before Kling answered is never
/// written back); a poll that is not news changes no head. Each is a key of this task alone: no delivery of another task waits on it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "bookkeeping does nothing until applied"]
pub struct Bookkeeping {
    key: TaskKey,
    head: TaskHead,
    /// Set on the task's first binding: `taskid:{task_id}` → `{key}`.
    index_task_id: Option<String>,
    /// News of a task not submitted here: its listing entry (`listed/`), written in the
    /// news batch, before the head that names it in `listed_at`.
    list_at: Option<u64>,
    /// A poll stored a final state: index the task for retention (`final/`).
    final_at: Option<u64>,
    /// Whether the delivery changed the head (a repeat of a bound task does not).
    head_changed: bool,
    /// Set when this delivery binds a task submitted here: once the binding is written,
    /// the task is tracked again if it was given up meanwhile, under this due time
    /// ([`TaskStore::track_binding`]).
    retrack_due: Option<u64>,
    /// The head and the task_id index went with the slot, before the acknowledgement.
    batched: bool,
    /// A final callback Kling contradicted: the task's count of them, this one included.
    rejected: Option<u64>,
}

impl Bookkeeping {
    /// Nothing left to write: news (written in its batch), or a repeat of a bound task.
    /// A repeat is answered from its one read, with no write at all (a write per repeat
    /// would cost as much as the store's whole work for news on Spin's SQLite store).
    pub fn changes_nothing(&self) -> bool {
        (self.batched || (!self.head_changed && self.index_task_id.is_none()))
            && self.final_at.is_none()
            && self.rejected.is_none()
    }

    /// The writes left after the acknowledgement, in order: for a delivery that was not
    /// news, the task_id index and the head; then the retention entry, or the count of
    /// rejections.
    pub fn apply(&self, kv: &dyn KeyValue) -> Result<(), StoreError> {
        if !self.batched {
            if let Some(task_id) = &self.index_task_id {
                kv.set(&task_id_index(task_id), self.key.as_str().as_bytes())?;
            }
            if self.head_changed {
                kv.set(&self.key.head(), &to_json(&self.head))?;
            }
            self.track_binding(kv)?;
        }
        if let Some(ms) = self.final_at {
            Index::finals(kv).add(&final_entry(&self.key, ms))?;
        }
        if let Some(count) = self.rejected {
            kv.set(&self.key.rejected(), count.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// The batch that records news, in the order that is safe even for a store that
    /// applied it one entry at a time and stopped at a failure: the slot, then (first
    /// binding) the task_id index, then (a task not submitted here) the listing entry,
    /// then the head that says all were written. Stopping early leaves a
    /// slot or an entry the head does not know yet, which the sender's retry writes
    /// again; never a head claiming a slot, a binding or a listing that is missing.
    fn news_batch(&self, slot: Slot, event: &TaskEvent) -> Vec<(String, Vec<u8>)> {
        let mut batch = vec![(self.key.slot(slot), to_json(event))];
        if let Some(task_id) = &self.index_task_id {
            batch.push((
                task_id_index(task_id),
                self.key.as_str().as_bytes().to_vec(),
            ));
        }
        if let Some(ms) = self.list_at {
            batch.push((
                Index::listed_key(&listed_entry(&self.key, ms)),
                PRESENT.to_vec(),
            ));
        }
        batch.push((self.key.head(), to_json(&self.head)));
        batch
    }

    /// After the binding is written (see [`Self::retrack_due`]).
    fn track_binding(&self, kv: &dyn KeyValue) -> Result<(), StoreError> {
        match self.retracked() {
            Some((due_ms, submission)) => {
                TaskStore::new(kv).track_binding(&self.key, submission, due_ms, SpareBy::Retrack)
            }
            None => Ok(()),
        }
    }

    /// [`TaskStore::track`], before a news batch binds a task submitted here, under a
    /// name of its own ([`SpareBy::BeforeBinding`]).
    fn track_before_binding(&self, kv: &dyn KeyValue) -> Result<(), StoreError> {
        match self.retracked() {
            Some((due_ms, submission)) => {
                TaskStore::new(kv).track(&self.key, submission, due_ms, SpareBy::BeforeBinding)
            }
            None => Ok(()),
        }
    }

    /// The submission this delivery tracks again, and when its spare entry is due.
    fn retracked(&self) -> Option<(u64, &Submission)> {
        Some((self.retrack_due?, self.head.submission.as_ref()?))
    }

    /// The head as this delivery leaves it.
    pub fn head(&self) -> &TaskHead {
        &self.head
    }

    /// The task's store key.
    pub fn key(&self) -> &TaskKey {
        &self.key
    }
}

impl<'a> TaskStore<'a> {
    pub fn new(kv: &'a dyn KeyValue) -> Self {
        Self { kv }
    }

    /// The head as stored, a submission given up as never created included. Writers
    /// that bind a task read this; whoever asks whether the task exists reads
    /// [`Self::live_head`].
    pub fn head(&self, key: &TaskKey) -> Result<Option<TaskHead>, StoreError> {
        self.get_json(&key.head())
    }

    /// The head, unless it is a submission given up as never created: unbound, and its
    /// nonce marked (`task:{key}:forgotten:{nonce}`, [`Self::forget_unbound`]).
    ///
    /// Giving up writes nothing a binding writes, so no binding is ever lost to it, and
    /// no timing is assumed. The forgetter writes the mark and then reads the head;
    /// whatever binds writes the head and then tracks the task again with no read to
    /// decide it ([`Self::track_binding`]). A forgetter that reads the bound head keeps
    /// the task (and does the binder's part once more); a binding that lands after the
    /// give-up re-tracks it. This reader reads the head once more after the mark: a
    /// head bound before the mark was written is never taken for given up. Costs a read
    /// only for an unbound head.
    pub fn live_head(&self, key: &TaskKey) -> Result<Option<TaskHead>, StoreError> {
        match self.head(key)? {
            Some(head) => self.live(key, head),
            None => Ok(None),
        }
    }

    /// [`Self::live_head`], given the head just read.
    pub fn live(&self, key: &TaskKey, head: TaskHead) -> Result<Option<TaskHead>, StoreError> {
        let Some(nonce) = unbound_nonce(&head) else {
            return Ok(Some(head));
        };
        if !self.is_given_up(key, nonce)? {
            return Ok(Some(head));
        }
        let nonce = nonce.to_string();
        Ok(self
            .head(key)?
            .filter(|again| unbound_nonce(again) != Some(&nonce)))
    }

    /// The nonce of the submission `key`'s head records, if it was given up as never
    /// created.
    pub fn given_up_nonce(&self, key: &TaskKey) -> Result<Option<String>, StoreError> {
        let Some(head) = self.head(key)? else {
            return Ok(None);
        };
        match unbound_nonce(&head) {
            Some(nonce) if self.is_given_up(key, nonce)? => Ok(Some(nonce.to_string())),
            _ => Ok(None),
        }
    }

    /// Whether submission `nonce` of this key was given up as never created.
    pub fn is_given_up(&self, key: &TaskKey, nonce: &str) -> Result<bool, StoreError> {
        Ok(self.kv.get(&key.forgotten(nonce))?.is_some())
    }

    /// Once the binding of `submission`'s task is written (head first), by whatever
    /// binds it (a create answer, a delivery, a poll, or a give-up that finds the head
    /// bound): the task gets a spare pending entry (`by`, due at `due_ms`), is listed
    /// and its pipeline indexed again, with no read to decide it, since a give-up may
    /// have released them, or retention deleted a given-up head, its mark and its
    /// listing under this binding (a few writes, on rare paths). Then the submission's
    /// give-up mark goes: it must not outlive the binding, or a stale write that unbinds
    /// the head again would make a live task read given up. See [`Self::live_head`].
    pub fn track_binding(
        &self,
        key: &TaskKey,
        submission: &Submission,
        due_ms: u64,
        by: SpareBy,
    ) -> Result<(), StoreError> {
        self.track(key, submission, due_ms, by)?;
        self.kv.delete(&key.forgotten(&submission.nonce))
    }

    /// [`Self::track_binding`] but for the give-up mark: the spare pending entry, the
    /// listing entry and the pipeline's index entry. Written before a binding as well
    /// (never instead): a leftover of a binding that then failed is an entry of a task
    /// still given up, which the reconciler releases.
    fn track(
        &self,
        key: &TaskKey,
        submission: &Submission,
        due_ms: u64,
        by: SpareBy,
    ) -> Result<(), StoreError> {
        let entry = spare_pending_entry(key, &submission.nonce, due_ms, by);
        add_pending(self.kv, &entry, submission)?;
        self.track_again(key, submission.submitted_at, submission.pipeline.as_ref())
    }

    /// Lists a task submitted at `submitted_at` again, and indexes its pipeline again:
    /// a run may have let either go while the task looked given up (or its pipeline
    /// failed on a refusal stored while the task's create was on its way).
    fn track_again(
        &self,
        key: &TaskKey,
        submitted_at: u64,
        step: Option<&StepRef>,
    ) -> Result<(), StoreError> {
        Index::listed(self.kv).add(&listed_entry(key, submitted_at))?;
        if let Some(step) = step {
            let pipelines = PipelineStore::new(self.kv);
            if let Some(spec) = pipelines.spec(&step.pipeline_id)? {
                pipelines.index(&spec)?;
            }
        }
        Ok(())
    }

    /// [`Self::record_event_with_head`] after reading the head (tests' shorthand: the
    /// callback and the poll read the head themselves, each at the moment it must).
    #[cfg(test)]
    pub fn record_event(
        &self,
        key: &TaskKey,
        event: &TaskEvent,
        now_ms: u64,
    ) -> Result<(Verdict, Bookkeeping), RecordError> {
        let head = self.head(key)?;
        self.record_event_with_head(key, head, event, now_ms, None)
    }

    /// Applies one event through the ledger, the same way for callbacks and polls, to
    /// the head the caller has just read: refuse another Kling task, judge, and for news
    /// write the slot with its head in one batch of the default label (its slot, on the
    /// first binding the task_id index, for a task not submitted here its listing entry,
    /// and the head). Returns the verdict and what is left to write
    /// ([`Bookkeeping::apply`]; callbacks apply it after acknowledging). `sig_digest`: a
    /// callback's proven `sig`, which news keeps in the head.
    pub fn record_event_with_head(
        &self,
        key: &TaskKey,
        head: Option<TaskHead>,
        event: &TaskEvent,
        now_ms: u64,
        sig_digest: Option<String>,
    ) -> Result<(Verdict, Bookkeeping), RecordError> {
        if let Some(head) = &head {
            head.check_binding(event)?;
        }
        let seen = head.as_ref().map(|h| h.seen.clone()).unwrap_or_default();
        let verdict = judge(&seen, event);
        let mut bookkeeping = Self::bookkeeping(key, head, event, verdict, now_ms);
        if let (Verdict::Apply(_), Some(digest)) = (verdict, sig_digest) {
            bookkeeping.head.callback_sig_sha256 = Some(digest);
        }
        if let Verdict::Apply(slot) = verdict {
            // A binding of a task submitted here tracks it before its batch too: if that
            // fails, the 503's retry finds the head unbound and does it all again. After
            // the batch alone, a failed write would be answered as a repeat on the retry
            // and leave a bound task nothing polls. After the batch as well, under another
            // name, as the give-up protocol needs (`live_head`): a run that read the head
            // still unbound may release the first entry, never the second.
            bookkeeping.track_before_binding(self.kv)?;
            self.kv.set_all(&bookkeeping.news_batch(slot, event))?;
            bookkeeping.batched = true;
            bookkeeping.track_binding(self.kv)?;
        }
        Ok((verdict, bookkeeping))
    }

    /// Writes one slot alone (tests seed tasks with it; news writes its slot in a batch).
    #[cfg(test)]
    pub fn write_slot(
        &self,
        key: &TaskKey,
        slot: Slot,
        event: &TaskEvent,
    ) -> Result<(), StoreError> {
        self.kv.set(&key.slot(slot), &to_json(event))
    }

    /// The writes that record a delivery in the head (and bind the task on its first one).
    fn bookkeeping(
        key: &TaskKey,
        head: Option<TaskHead>,
        event: &TaskEvent,
        verdict: Verdict,
        now_ms: u64,
    ) -> Bookkeeping {
        let first_binding = head.as_ref().is_none_or(|h| h.task_id.is_none());
        // A submit lists its task before calling Kling. Any other task is listed by every
        // news of it, in the news batch, under the name its first one chose (kept in the
        // head's `listed_at`): one key more in the same round trip, and an entry that went
        // missing (an older build's, written after its answer; one retention removed under
        // a late delivery) comes back with the task's next news.
        let news = matches!(verdict, Verdict::Apply(_));
        let not_submitted_here = head.as_ref().is_none_or(|h| h.submission.is_none());
        let listed_at = head.as_ref().and_then(|h| h.listed_at);
        let became_final = matches!(verdict, Verdict::Apply(Slot::Final | Slot::Lost));
        let before = head.clone();
        let mut after = head
            .unwrap_or_default()
            .after_delivery(event, verdict, now_ms);
        // Kling's `created_at` makes concurrent first deliveries write one entry
        // (within 13 digits, so the entry keeps its shape and sorts by time). It is
        // kept at most a day ahead of our clock, not clamped to now: Kling's clock may
        // run a little ahead, while a date far in the future would hide the task from
        // retention's scan of the listing until then.
        let list_at = (news && not_submitted_here).then(|| {
            listed_at.unwrap_or_else(|| {
                event
                    .created_at
                    .filter(|ms| *ms < 10_000_000_000_000)
                    .map_or(now_ms, |ms| ms.min(now_ms.saturating_add(DAY_MS)))
            })
        });
        if list_at.is_some() {
            after.listed_at = list_at;
        }
        let binds_submission = first_binding && after.submission.is_some();
        // Kling's final word on a task submitted here that was given up as `lost`: the
        // reconciler released its entries then, so it is tracked again, and the next run
        // makes sure the change is announced even if this instance stops before it is.
        let final_after_lost = matches!(verdict, Verdict::Apply(Slot::Final))
            && after.submission.is_some()
            && before
                .as_ref()
                .is_some_and(|h| h.seen.lost.is_some() && h.seen.final_state.is_none());
        Bookkeeping {
            key: key.clone(),
            head_changed: before.as_ref() != Some(&after),
            head: after,
            index_task_id: first_binding.then(|| event.task_id.clone()),
            retrack_due: (binds_submission || final_after_lost).then_some(now_ms),
            list_at,
            // Only a poll (the reconciler, off the hot path) indexes a final task for
            // retention by day here. A final callback leaves it to the reconciler (a
            // task submitted here) or to retention's scan of the listing (any other):
            // one write fewer for the delivery that matters most.
            final_at: (became_final && event.source == EventSource::Poll).then_some(now_ms),
            batched: false,
            rejected: None,
        }
    }

    /// The bookkeeping of a callback refused by verification: one more rejection
    /// counted (`task:{key}:rejected`, read now), nothing else written. The count is a
    /// read-modify-write of a key of its own: two rejections at once may count one, and
    /// no head is ever written back from `head`, a read older than Kling's answer (it
    /// could undo a binding, or bring back a task deleted meanwhile).
    pub fn bookkeeping_rejected(
        &self,
        key: &TaskKey,
        head: TaskHead,
    ) -> Result<Bookkeeping, StoreError> {
        let counted = super::get_count(self.kv, &key.rejected())?.unwrap_or(0);
        Ok(Bookkeeping {
            key: key.clone(),
            head,
            index_task_id: None,
            retrack_due: None,
            list_at: None,
            final_at: None,
            head_changed: false,
            batched: false,
            rejected: Some(counted.saturating_add(1)),
        })
    }

    /// Deletes a task, its lowest rank first, so that while it goes no reader sees it
    /// move backwards; the head and the final state go last of the task's own keys.
    /// The caller removes its index entries afterwards: a failure here leaves them, and
    /// the next retention run finds the task again. Give-up marks are retention's to
    /// delete: it finds every one of the id in the `list-keys` it already made.
    pub fn delete_task(&self, key: &TaskKey, task_id: Option<&str>) -> Result<(), StoreError> {
        let (live, final_state) = Slot::BY_RANK_ASC.split_at(Slot::BY_RANK_ASC.len() - 1);
        for slot in live {
            self.kv.delete(&key.slot(*slot))?;
        }
        self.kv.delete(&key.poll())?;
        self.kv.delete(&key.notified())?;
        self.kv.delete(&key.rejected())?;
        self.kv.delete(&key.head())?;
        if let Some(task_id) = task_id {
            self.kv.delete(&task_id_index(task_id))?;
        }
        for slot in final_state {
            self.kv.delete(&key.slot(*slot))?;
        }
        Ok(())
    }

    /// Deletes a task and, when it ran a pipeline step, the pipeline with it (its view
    /// would otherwise show steps whose tasks are gone). A step past the last of the
    /// pipeline now stored under its id is an older pipeline's
    /// ([`PipelineSpec::has_step`](crate::pipeline::spec::PipelineSpec::has_step)): that
    /// pipeline is not its. No description, nothing to delete: the delete takes it last, and a create of the
    /// id meanwhile keeps what it stores (a failure or mark written after the description
    /// went is cleared by the next create of the id).
    pub fn purge(&self, key: &TaskKey, record: &TaskRecord) -> Result<(), StoreError> {
        if let Some(step) = &record.pipeline {
            let pipelines = PipelineStore::new(self.kv);
            match pipelines.spec(&step.pipeline_id) {
                Ok(Some(spec)) if !spec.has_step(step.step) => {}
                Ok(None) => {}
                Ok(Some(_)) | Err(StoreError::Corrupt(_)) => {
                    pipelines.delete(&step.pipeline_id)?;
                }
                Err(error) => return Err(error),
            }
        }
        self.delete_task(key, record.task_id.as_deref())
    }

    /// Every task, newest first, optionally of one status: one `list-keys` of the default
    /// label (its `listed/` entries), then the records of at most [`MAX_SCAN`] entries
    /// below `cursor`; `next_cursor` continues where it stopped.
    pub fn list(
        &self,
        status: Option<TaskStatus>,
        limit: usize,
        cursor: Option<&Cursor>,
    ) -> Result<TaskPage, StoreError> {
        let entries = Index::listed(self.kv).entries()?;
        let below = match cursor {
            Some(Cursor(after)) => entries.partition_point(|e| e < after),
            None => entries.len(),
        };
        let mut tasks: Vec<TaskRecord> = Vec::new();
        let mut listed_keys: Vec<TaskKey> = Vec::new();
        for (scanned, entry) in entries[..below].iter().rev().enumerate() {
            if tasks.len() == limit.max(1) || scanned == MAX_SCAN {
                return Ok(TaskPage {
                    tasks,
                    // The last entry examined: the next page starts below it.
                    next_cursor: Some(Cursor(entries[below - scanned].clone())),
                });
            }
            // An entry of another shape is not ours to serve; two entries of one task
            // (concurrent first deliveries without a `created_at`) list it once a page.
            let Some(key) = task_of_listed_entry(entry) else {
                continue;
            };
            if listed_keys.contains(&key) {
                continue;
            }
            // A record this build cannot read (a newer build's, an edit by hand) is left
            // out and logged, so one such record does not fail every page that holds it;
            // `GET /tasks/{id}` still answers it `store_corrupt`.
            let found = match self.find_by_key(&key) {
                Err(StoreError::Corrupt(stored)) => {
                    eprintln!("GET /tasks leaves out {stored}: it cannot be read");
                    None
                }
                found => found?,
            };
            if let Some(record) = found
                && status.is_none_or(|s| record.status == s)
            {
                tasks.push(record);
            }
            listed_keys.push(key);
        }
        Ok(TaskPage {
            tasks,
            next_cursor: None,
        })
    }

    /// What the reconciler last did with a task.
    pub fn poll_state(&self, key: &TaskKey) -> Result<Option<PollState>, StoreError> {
        self.get_json(&key.poll())
    }

    pub fn save_poll_state(&self, key: &TaskKey, state: &PollState) -> Result<(), StoreError> {
        self.kv.set(&key.poll(), &to_json(state))
    }

    /// Records a task about to be submitted, before Kling is called, so that a callback
    /// which outruns Kling's create answer finds it: the head, then its listing entry,
    /// then its pending entry (due at `first_due_ms`), each one `set`. A record whose
    /// pending entry is missing is never left: on any failure the caller forgets it.
    /// The pending entry carries the submission itself, so the reconciler can ask Kling
    /// about the task even if its head is deleted under it ([`Self::purge_given_up`]).
    pub fn record_submission(&self, submission: &NewSubmission<'_>) -> Result<(), StoreError> {
        let key = submission.key;
        let head = TaskHead {
            external_task_id: Some(submission.external_task_id.to_string()),
            submission: Some(submission.submission()),
            ..TaskHead::default()
        };
        self.kv.set(&key.head(), &to_json(&head))?;
        Index::listed(self.kv).add(&listed_entry(key, submission.now_ms))?;
        add_pending(
            self.kv,
            &submission.pending_entry(),
            &submission.submission(),
        )
    }

    /// Whether `key` is submitted as `step` of a pipeline (of any pipeline of that id) by
    /// a submission that counts: one Kling has (a bound head, or a spare pending entry,
    /// which a binder adds only once Kling has the task), or one recorded, not given up,
    /// whose nonce is not `discounted` (a caller's own; one given up before it). The head
    /// shows the last submission recorded, and may be a discounted one written over
    /// another's; every submission keeps pending entries of its own (written after its
    /// head) until it is forgotten or the reconciler releases them, so those are read too
    /// (one `list-keys`, then the value of each entry of `key`). A regular entry of a
    /// submission given up does not count (one its removal did not reach).
    pub fn submitted_as_step(
        &self,
        key: &TaskKey,
        step: &StepRef,
        discounted: &[&str],
    ) -> Result<bool, StoreError> {
        let of_step = |submission: &Submission| submission.pipeline.as_ref() == Some(step);
        let counts = |submission: &Submission, kling_has_it: bool| {
            of_step(submission)
                && (kling_has_it || !discounted.contains(&submission.nonce.as_str()))
        };
        if let Some(head) = self.live_head(key)?
            && (head.submission.as_ref()).is_some_and(|s| counts(s, head.task_id.is_some()))
        {
            return Ok(true);
        }
        let pending = Index::pending(self.kv);
        for entry in pending.entries()? {
            let Some(parsed) = PendingEntry::parse(&entry) else {
                continue;
            };
            let spare = parsed.is_spare();
            if parsed.key != *key || (!spare && self.is_given_up(key, &parsed.nonce)?) {
                continue;
            }
            let value = pending.value(&entry)?;
            if (value.as_deref().and_then(pending_submission)).is_some_and(|s| counts(&s, spare)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes a head given up as never created (submission `nonce`) and its poll
    /// record, if it is still that (read again first), and then `marks` (the key's give-up
    /// marks). With no compare-and-swap, a submit (or a binding) of the same id can
    /// still land its head between the read and the delete. Nothing is lost then: that
    /// submit's pending entry carries its submission, and the reconciler, finding no
    /// head, asks Kling and restores the head of a task Kling has
    /// (`reconcile`'s headless judgement). Returns whether it deleted.
    pub fn purge_given_up(
        &self,
        key: &TaskKey,
        nonce: &str,
        marks: &[String],
    ) -> Result<bool, StoreError> {
        let given_up = self
            .head(key)?
            .is_some_and(|head| unbound_nonce(&head) == Some(nonce));
        if given_up {
            self.kv.delete(&key.poll())?;
            self.kv.delete(&key.rejected())?;
            self.kv.delete(&key.head())?;
            for mark in marks {
                self.kv.delete(mark)?;
            }
        }
        Ok(given_up)
    }

    /// Stores the pending entry of `submission`, the task's current one, again (due
    /// `stale_after_ms` after it), for a retry that finds the task still `submitting`.
    pub fn ensure_pending(
        &self,
        key: &TaskKey,
        submission: &Submission,
        stale_after_ms: u64,
    ) -> Result<(), StoreError> {
        let due = submission.submitted_at.saturating_add(stale_after_ms);
        add_pending(
            self.kv,
            &pending_entry(key, &submission.nonce, due),
            submission,
        )
    }

    /// Binds Kling's `task_id` to a submitted task. Re-reads the head: a callback may have
    /// bound it (and counted deliveries) meanwhile.
    ///
    /// `owner` is the submission whose create (or lookup) found this Kling task: it takes
    /// the head's submission, nonce included. So the pending entry of the submit that
    /// owns the Kling task is the one the reconciler keeps, and a head that a concurrent
    /// submit of the same id deleted, or a late write left without its submission, is
    /// whole again.
    ///
    /// Once the head is written, the owner's task exists at Kling, so it is tracked
    /// whatever a reconciler decided while Kling was asked, with no read to decide it:
    /// the owner gets a spare pending entry of its own (due at its first due time),
    /// since a run may have released its entries while the head named another
    /// submission or while it looked given up; and the task is listed and its pipeline
    /// indexed again.
    pub fn bind_submission(
        &self,
        key: &TaskKey,
        task_id: &str,
        owner: Option<&NewSubmission<'_>>,
    ) -> Result<(), StoreError> {
        let mut head = self.head(key)?.unwrap_or_default();
        if let Some(owner) = owner {
            head.external_task_id = Some(owner.external_task_id.to_string());
            head.submission = Some(owner.submission());
        }
        self.bind_head(key, head, task_id)?;
        if let Some(owner) = owner {
            let submission = owner.submission();
            self.track_binding(key, &submission, owner.first_due_ms, SpareBy::Binding)?;
        }
        Ok(())
    }

    /// Binds `head`, as the caller has just read it, to Kling's `task_id` (unless it is
    /// bound already), writes the binding and the head, and returns the head written.
    pub fn bind_head(
        &self,
        key: &TaskKey,
        mut head: TaskHead,
        task_id: &str,
    ) -> Result<TaskHead, StoreError> {
        if head.task_id.is_none() {
            head.task_id = Some(task_id.to_string());
        }
        if let Some(submission) = &mut head.submission {
            submission.status = TaskStatus::Submitted;
        }
        self.kv
            .set(&task_id_index(task_id), key.as_str().as_bytes())?;
        self.kv.set(&key.head(), &to_json(&head))?;
        Ok(head)
    }

    /// Gives up a submission whose create never went through, if the head is still
    /// this submission's and still unbound: it is marked (`task:{key}:forgotten:{nonce}`),
    /// not deleted, so that a create answer or a callback that binds it meanwhile is never
    /// lost (see [`Self::live_head`] for why the mark comes first and the head is read
    /// after it). Its poll record goes: a submission of the same id again starts its
    /// polls afresh.
    pub fn forget_unbound(&self, key: &TaskKey, nonce: &str) -> Result<Forget, StoreError> {
        let judged = |head: &Option<TaskHead>| match head {
            None => Forget::Gone,
            Some(head) if unbound_nonce(head) == Some(nonce) => Forget::Forgotten,
            Some(head) if head.submission.as_ref().is_some_and(|s| s.nonce == nonce) => {
                Forget::Bound
            }
            Some(_) => Forget::Superseded,
        };
        match judged(&self.head(key)?) {
            Forget::Forgotten => {}
            kept => return Ok(kept),
        }
        self.kv.set(&key.forgotten(nonce), PRESENT)?;
        let head = self.head(key)?;
        let judged = judged(&head);
        match (judged, head.and_then(|h| h.submission)) {
            (Forget::Forgotten, _) => self.kv.delete(&key.poll())?,
            // Bound meanwhile. Another give-up may have released the task's entries
            // after its binder deleted no mark yet: the binder's part is done again here
            // (a spare entry too many is harmless), and this mark goes with it.
            (Forget::Bound, Some(submission)) => {
                let due = submission.submitted_at;
                self.track_binding(key, &submission, due, SpareBy::Retrack)?;
            }
            // Replaced meanwhile: the mark must not outlive this give-up either.
            _ => self.kv.delete(&key.forgotten(nonce))?,
        }
        Ok(judged)
    }

    /// Forgets a submission Kling refused: nothing may be left looking like a live task.
    /// The head is marked if it still names this nonce unbound, and this submission's
    /// pending entry goes (by name). Its listing entry stays while its marked head does:
    /// `GET /tasks` skips it, and retention's scan of the listing finds the head and
    /// deletes it with its mark. A head of another submission keeps its own listing
    /// entry, so this one's goes; a head of this one bound meanwhile (Kling has a task
    /// under this id after all, and a callback or a poll bound it) keeps both entries.
    ///
    /// `replacing`: a given-up submission of the same id this one's head was written
    /// over. Given up in turn, this one keeps its own listing entry and mark, and that
    /// one's go (its head is gone, and only a submit writes an unbound head, under a new
    /// nonce): retries refused like the one before them (a pipeline step's, on every
    /// reconcile run while Kling answers 1303 or 1102) pile up neither.
    pub fn forget_submission(
        &self,
        submission: &NewSubmission<'_>,
        replacing: Option<&Submission>,
    ) -> Result<(), StoreError> {
        let key = submission.key;
        match self.forget_unbound(key, submission.nonce)? {
            Forget::Bound => return Ok(()),
            Forget::Forgotten => {
                if let Some(previous) = replacing.filter(|p| p.nonce != submission.nonce) {
                    self.unlist_replaced(submission, previous)?;
                    self.kv.delete(&key.forgotten(&previous.nonce))?;
                }
            }
            Forget::Superseded | Forget::Gone => {
                Index::listed(self.kv).remove(&listed_entry(key, submission.now_ms))?;
            }
        }
        Index::pending(self.kv).remove(&submission.pending_entry())
    }

    /// Removes the listing entry of `previous`, a given-up submission whose head
    /// `submission`'s was written over, so that the id is listed once, at its newest
    /// submission. Should Kling bind `previous` after all, its binding lists it again
    /// ([`Self::track_binding`]).
    pub fn unlist_replaced(
        &self,
        submission: &NewSubmission<'_>,
        previous: &Submission,
    ) -> Result<(), StoreError> {
        let listed = listed_entry(submission.key, previous.submitted_at);
        if listed == listed_entry(submission.key, submission.now_ms) {
            return Ok(());
        }
        Index::listed(self.kv).remove(&listed)
    }

    /// A task by its key, whatever is stored of it (head, slots, or both).
    pub fn find_by_key(&self, key: &TaskKey) -> Result<Option<TaskRecord>, StoreError> {
        let head = self.live_head(key)?;
        self.record(key, head)
    }

    /// A task by Kling `task_id` or by `external_task_id`; external ids win a tie.
    pub fn find(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.find_parts(id)?.map(|(_, _, record)| record))
    }

    /// The task Kling's `task_id` is bound to (the `taskid:` index).
    pub fn key_of_task_id(&self, task_id: &str) -> Result<Option<TaskKey>, StoreError> {
        let Some(stored) = self.kv.get(&task_id_index(task_id))? else {
            return Ok(None);
        };
        String::from_utf8(stored)
            .map(|key| Some(TaskKey::from_stored(key)))
            .map_err(|_| StoreError::Corrupt(task_id_index(task_id)))
    }

    /// [`Self::find`], with the task's key and head.
    #[allow(clippy::type_complexity)]
    pub fn find_parts(
        &self,
        id: &str,
    ) -> Result<Option<(TaskKey, Option<TaskHead>, TaskRecord)>, StoreError> {
        if !is_valid_external_task_id(id) && !is_valid_task_id(id) {
            return Ok(None);
        }
        let with_head = |key: TaskKey, head: Option<TaskHead>| {
            Ok(self
                .record(&key, head.clone())?
                .map(|record| (key, head, record)))
        };
        if is_valid_external_task_id(id) {
            let key = TaskKey::external(id);
            if let Some(head) = self.live_head(&key)? {
                return with_head(key, Some(head));
            }
        }
        if let Some(key) = self.key_of_task_id(id)? {
            let head = self.live_head(&key)?;
            return with_head(key, head);
        }
        // No head or index yet (its bookkeeping was lost): the slots still hold the truth.
        let mut candidates = vec![TaskKey::kling(id)];
        if is_valid_external_task_id(id) {
            candidates.insert(0, TaskKey::external(id));
        }
        for key in candidates {
            if let Some(found) = with_head(key, None)? {
                return Ok(Some(found));
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

/// The nonce of a head's submission not bound to a Kling task yet.
fn unbound_nonce(head: &TaskHead) -> Option<&str> {
    match (&head.task_id, &head.submission) {
        (None, Some(submission)) => Some(&submission.nonce),
        _ => None,
    }
}

/// What [`TaskStore::forget_unbound`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forget {
    /// Unbound and this submission's: given up (marked).
    Forgotten,
    /// This submission's, bound to a Kling task (maybe meanwhile): kept.
    Bound,
    /// Another submission's: kept.
    Superseded,
    /// No head any more.
    Gone,
}

/// One submit's record, as [`TaskStore::record_submission`] writes it and
/// [`TaskStore::forget_submission`] takes it back.
pub struct NewSubmission<'a> {
    pub key: &'a TaskKey,
    pub external_task_id: &'a str,
    pub kind: &'a str,
    pub pipeline: Option<&'a StepRef>,
    /// 128 random bits of this submit's own.
    pub nonce: &'a str,
    pub now_ms: u64,
    /// When the reconciler should first ask Kling, if no callback came by then.
    pub first_due_ms: u64,
    /// See [`Submission::body_digest`].
    pub body_digest: Option<&'a str>,
    /// See [`Submission::first_submitted_at`].
    pub first_submitted_at: Option<u64>,
}

impl NewSubmission<'_> {
    /// What the head records of it (`submitting` until a Kling task is bound).
    fn submission(&self) -> Submission {
        Submission {
            kind: self.kind.to_string(),
            nonce: self.nonce.to_string(),
            status: TaskStatus::Submitting,
            submitted_at: self.now_ms,
            pipeline: self.pipeline.cloned(),
            body_digest: self.body_digest.map(str::to_string),
            first_submitted_at: self.first_submitted_at,
        }
    }

    fn pending_entry(&self) -> String {
        pending_entry(self.key, self.nonce, self.first_due_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{Between, MemoryKv};
    use crate::store::pending::PendingEntry;

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
            more: Default::default(),
            final_unit_deduction: None,
            source: Default::default(),
        }
    }

    #[test]
    fn news_is_one_batch_of_slot_binding_listing_and_head() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        let e = event("86", Some("job-1"), TaskStatus::Submitted);
        let (verdict, books) = store.record_event(&key, &e, 5).unwrap();
        assert_eq!(verdict, Verdict::Apply(Slot::Submitted));
        // One read (the head) and one batch: all of it before the acknowledgement.
        assert_eq!((kv.round_trips.get(), kv.sets.get()), (2, 1));
        assert_eq!(
            kv.keys(),
            [
                "listed/0000000000005/job-1",
                "task:job-1",
                "task:job-1:submitted",
                "taskid:86"
            ]
        );
        // Nothing is left for after it.
        assert!(books.changes_nothing(), "{books:?}");
        books.apply(&kv).unwrap();
        assert_eq!((kv.round_trips.get(), kv.sets.get()), (2, 1));

        // A repeat: its one read, and nothing to write.
        let (verdict, books) = store.record_event(&key, &e, 6).unwrap();
        assert_eq!(verdict, Verdict::Duplicate);
        assert!(books.changes_nothing());
        assert_eq!(
            (kv.round_trips.get(), kv.sets.get()),
            (3, 1),
            "one read more"
        );

        // Later news: no second binding; the same listing entry again, in the batch.
        let mut processing = e.clone();
        processing.status = TaskStatus::Processing;
        let (_, books) = store.record_event(&key, &processing, 7).unwrap();
        assert!(books.changes_nothing(), "{books:?}");
        let batch = books.news_batch(Slot::Processing, &processing);
        assert_eq!(
            batch.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            [
                "task:job-1:processing",
                "listed/0000000000005/job-1",
                "task:job-1"
            ]
        );
        assert_eq!(
            Index::listed(&kv).entries().unwrap(),
            [listed_entry(&key, 5)]
        );
        let head = store.head(&key).unwrap().unwrap();
        assert_eq!((head.listed_at, head.deliveries), (Some(5), 2));
    }

    #[test]
    fn a_poll_that_brings_no_news_writes_nothing() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        let mut polled = event("86", Some("job-1"), TaskStatus::Processing);
        polled.source = EventSource::Poll;
        let (verdict, books) = store.record_event(&key, &polled, 5).unwrap();
        assert_eq!(verdict, Verdict::Apply(Slot::Processing));
        assert_eq!(books.head().last_polled_at, Some(5), "news keeps its time");
        let sets = kv.sets.get();
        // The same answer again, and a lower one: the head stays as it is, so a poll
        // that read it before a slow Kling call cannot write an older head back.
        let mut lower = polled.clone();
        lower.status = TaskStatus::Submitted;
        for (answer, judged) in [(&polled, Verdict::Duplicate), (&lower, Verdict::Stale)] {
            let (verdict, books) = store.record_event(&key, answer, 9).unwrap();
            assert_eq!(verdict, judged);
            assert!(books.changes_nothing(), "{books:?}");
            books.apply(&kv).unwrap();
        }
        assert_eq!(kv.sets.get(), sets, "nothing written");
        assert_eq!(store.head(&key).unwrap().unwrap().last_polled_at, Some(5));
    }

    #[test]
    fn only_this_submission_s_unbound_head_is_forgotten_and_only_marked() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        let submission = submission(&key, "job-1", "n1", 1);
        store.record_submission(&submission).unwrap();
        // Another submission's nonce, then a binding: kept, and nothing written.
        let sets = kv.sets.get();
        assert_eq!(
            store.forget_unbound(&key, "n2").unwrap(),
            Forget::Superseded
        );
        store.bind_submission(&key, "86", None).unwrap();
        assert_eq!(store.forget_unbound(&key, "n1").unwrap(), Forget::Bound);
        assert_eq!(kv.sets.get(), sets + 2, "the binding and the head alone");
        assert!(store.live_head(&key).unwrap().is_some());
        // Its own, unbound: marked, not deleted; its poll record goes.
        store.record_submission(&submission).unwrap();
        store.save_poll_state(&key, &PollState::default()).unwrap();
        assert_eq!(store.forget_unbound(&key, "n1").unwrap(), Forget::Forgotten);
        assert_eq!(store.live_head(&key).unwrap(), None);
        assert_eq!(store.find("job-1").unwrap(), None, "no task to readers");
        assert!(
            store.head(&key).unwrap().is_some(),
            "the head is never deleted"
        );
        assert_eq!(store.poll_state(&key).unwrap(), None);
        // A submission of the same id again is live: the mark names another nonce.
        let again = self::submission(&key, "job-1", "n3", 2);
        store.record_submission(&again).unwrap();
        assert!(store.live_head(&key).unwrap().is_some());
        // Given up too: retention deletes the head with every mark of the id.
        assert_eq!(store.forget_unbound(&key, "n3").unwrap(), Forget::Forgotten);
        crate::store::retention::purge_expired(&kv, 10 * DAY_MS, 10 * DAY_MS, 10).unwrap();
        assert!(
            kv.keys().iter().all(|k| !k.starts_with("task:")),
            "{:?}",
            kv.keys()
        );
    }

    #[test]
    fn a_create_answered_after_its_task_was_forgotten_is_tracked_again() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        let first = submission(&key, "job-1", "n1", 1);
        store.record_submission(&first).unwrap();
        // The reconciler took the unanswered create for one that never went through:
        // it forgot the head and released the task's pending entry.
        assert_eq!(store.forget_unbound(&key, "n1").unwrap(), Forget::Forgotten);
        Index::pending(&kv).remove(&first.pending_entry()).unwrap();
        Index::listed(&kv)
            .remove(&listed_entry(&key, first.now_ms))
            .unwrap();

        // Kling's answer comes after all: the task exists, so it is tracked again.
        store.bind_submission(&key, "86", Some(&first)).unwrap();
        let head = store.live_head(&key).unwrap().unwrap();
        assert_eq!(head.task_id.as_deref(), Some("86"));
        assert_eq!(head.submission.map(|s| s.nonce).as_deref(), Some("n1"));
        assert_eq!(
            Index::pending(&kv).entries().unwrap(),
            [spare_pending_entry(
                &key,
                "n1",
                first.first_due_ms,
                SpareBy::Binding
            )]
        );
        assert_eq!(
            Index::listed(&kv).entries().unwrap(),
            [listed_entry(&key, first.now_ms)]
        );
        // Any answer writes the same, with no read to decide it: the binding, the head,
        // the owner's spare entry and its listing entry (the submit's, again).
        let other = TaskKey::external("job-2");
        let second = submission(&other, "job-2", "n2", 1);
        store.record_submission(&second).unwrap();
        let (trips, sets) = (kv.round_trips.get(), kv.sets.get());
        store.bind_submission(&other, "87", Some(&second)).unwrap();
        assert_eq!(
            (kv.round_trips.get() - trips, kv.sets.get() - sets),
            (6, 4),
            "the head read, four writes, and the owner's mark deleted"
        );
    }

    /// The task is bound to Kling's task and has a pending entry of its owner's.
    fn assert_bound_and_tracked(kv: &MemoryKv, key: &TaskKey, nonce: &str) {
        let store = TaskStore::new(kv);
        let head = store.live_head(key).unwrap().expect("the task is live");
        assert_eq!(head.task_id.as_deref(), Some("86"));
        let pending = Index::pending(kv).entries().unwrap();
        assert!(
            pending
                .iter()
                .any(|e| PendingEntry::parse(e).is_some_and(|p| p.nonce == nonce && p.key == *key)),
            "{pending:?}"
        );
    }

    #[test]
    fn a_create_answered_while_the_reconciler_gives_it_up_is_never_lost() {
        let key = TaskKey::external("job-1");
        let first = submission(&key, "job-1", "n1", 1);

        // The answer is written after the reconciler read the head, before its mark.
        let kv = MemoryKv::default();
        TaskStore::new(&kv).record_submission(&first).unwrap();
        let reconciler = Between::new(&kv).before("set", key.forgotten("n1"), || {
            TaskStore::new(&kv)
                .bind_submission(&key, "86", Some(&first))
                .unwrap();
        });
        let forgot = TaskStore::new(&reconciler)
            .forget_unbound(&key, "n1")
            .unwrap();
        assert_eq!(
            forgot,
            Forget::Bound,
            "the head read after the mark is bound"
        );
        assert_bound_and_tracked(&kv, &key, "n1");
        assert_eq!(
            kv.get(&key.forgotten("n1")).unwrap(),
            None,
            "no mark outlives it"
        );

        // The answer is written after the mark, and the run then releases the task's
        // entries: the binding tracks the task again.
        let kv = MemoryKv::default();
        TaskStore::new(&kv).record_submission(&first).unwrap();
        let forgot = TaskStore::new(&kv).forget_unbound(&key, "n1").unwrap();
        assert_eq!(forgot, Forget::Forgotten);
        Index::pending(&kv).remove(&first.pending_entry()).unwrap();
        TaskStore::new(&kv)
            .bind_submission(&key, "86", Some(&first))
            .unwrap();
        assert_bound_and_tracked(&kv, &key, "n1");

        // A reader that read the unbound head before the answer, and the mark of a
        // reconciler that has not read the head again yet after it, reads the head once
        // more: bound, so live.
        let kv = MemoryKv::default();
        TaskStore::new(&kv).record_submission(&first).unwrap();
        let reader = Between::new(&kv).before("get", key.forgotten("n1"), || {
            TaskStore::new(&kv)
                .bind_submission(&key, "86", Some(&first))
                .unwrap();
            kv.set(&key.forgotten("n1"), PRESENT).unwrap();
        });
        let live = TaskStore::new(&reader).live_head(&key).unwrap();
        assert_eq!(live.and_then(|h| h.task_id).as_deref(), Some("86"));
    }

    #[test]
    fn a_give_up_that_finds_the_head_bound_after_its_mark_tracks_the_task() {
        let kv = MemoryKv::default();
        let key = TaskKey::external("job-1");
        let first = submission(&key, "job-1", "n1", 1);
        TaskStore::new(&kv).record_submission(&first).unwrap();
        // Between this give-up's read and its mark, another give-up released the
        // task's entries, and a callback bound the head (and read no mark yet).
        let giving_up = Between::new(&kv).before("set", key.forgotten("n1"), || {
            for entry in Index::pending(&kv).entries().unwrap() {
                Index::pending(&kv).remove(&entry).unwrap();
            }
            let e = event("86", Some("job-1"), TaskStatus::Processing);
            let (_, books) = TaskStore::new(&kv).record_event(&key, &e, 5).unwrap();
            books.apply(&kv).unwrap();
        });
        let forgot = TaskStore::new(&giving_up)
            .forget_unbound(&key, "n1")
            .unwrap();
        assert_eq!(forgot, Forget::Bound);
        assert_bound_and_tracked(&kv, &key, "n1");
        assert_eq!(kv.get(&key.forgotten("n1")).unwrap(), None);
    }

    #[test]
    fn a_binding_whose_given_up_head_retention_deletes_meanwhile_is_still_tracked() {
        let kv = MemoryKv::default();
        let key = TaskKey::external("job-1");
        let first = submission(&key, "job-1", "n1", 1);
        TaskStore::new(&kv).record_submission(&first).unwrap();
        let forgot = TaskStore::new(&kv).forget_unbound(&key, "n1").unwrap();
        assert_eq!(forgot, Forget::Forgotten);
        Index::pending(&kv).remove(&first.pending_entry()).unwrap();
        // A callback read the given-up head; before its batch lands, retention deletes
        // the head and its mark. The callback reads no mark after its write.
        let callback = Between::new(&kv).before("set", key.head(), || {
            kv.delete(&key.head()).unwrap();
            kv.delete(&key.forgotten("n1")).unwrap();
        });
        let e = event("86", Some("job-1"), TaskStatus::Processing);
        let (_, books) = TaskStore::new(&callback).record_event(&key, &e, 5).unwrap();
        books.apply(&kv).unwrap();
        assert_bound_and_tracked(&kv, &key, "n1");
    }

    #[test]
    fn kling_s_final_after_lost_tracks_the_task_again_so_its_announcement_is_redone() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        let sub = submission(&key, "job-1", "n1", 1);
        store.record_submission(&sub).unwrap();
        store.bind_submission(&key, "86", Some(&sub)).unwrap();
        // The reconciler gave it up as lost and released its entries.
        let lost = event("86", Some("job-1"), TaskStatus::Lost);
        let (_, books) = store.record_event(&key, &lost, 10).unwrap();
        books.apply(&kv).unwrap();
        let pending = Index::pending(&kv);
        for entry in pending.entries().unwrap() {
            pending.remove(&entry).unwrap();
        }
        // A `processing` after it is stale and tracks nothing; Kling's final does.
        let late = event("86", Some("job-1"), TaskStatus::Processing);
        let (verdict, books) = store.record_event(&key, &late, 15).unwrap();
        assert_eq!(verdict, Verdict::Stale);
        books.apply(&kv).unwrap();
        assert!(pending.entries().unwrap().is_empty());
        let done = event("86", Some("job-1"), TaskStatus::Succeed);
        let (verdict, books) = store.record_event(&key, &done, 20).unwrap();
        assert_eq!(verdict, Verdict::Apply(Slot::Final));
        books.apply(&kv).unwrap();
        assert_eq!(
            pending.entries().unwrap(),
            [
                spare_pending_entry(&key, "n1", 20, SpareBy::BeforeBinding),
                spare_pending_entry(&key, "n1", 20, SpareBy::Retrack)
            ]
        );
    }

    #[test]
    fn a_callback_that_binds_a_task_given_up_tracks_it_again() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        let first = submission(&key, "job-1", "n1", 1);
        store.record_submission(&first).unwrap();
        assert_eq!(store.forget_unbound(&key, "n1").unwrap(), Forget::Forgotten);
        Index::pending(&kv).remove(&first.pending_entry()).unwrap();
        // Kling calls back after all (its create was late): the delivery binds the
        // task, which is pending again, due at once.
        let e = event("86", Some("job-1"), TaskStatus::Processing);
        let (verdict, books) = store.record_event(&key, &e, 500).unwrap();
        assert_eq!(verdict, Verdict::Apply(Slot::Processing));
        books.apply(&kv).unwrap();
        assert_bound_and_tracked(&kv, &key, "n1");
        assert_eq!(
            Index::pending(&kv).entries().unwrap(),
            [
                spare_pending_entry(&key, "n1", 500, SpareBy::BeforeBinding),
                spare_pending_entry(&key, "n1", 500, SpareBy::Retrack)
            ]
        );
        // The mark has done its work: a stale write that unbinds the head again (an
        // after-acknowledgement write of a head read before this binding) leaves a task
        // that is polled and bound again, not one read as given up.
        let unbound = TaskHead {
            external_task_id: Some("job-1".into()),
            submission: Some(first.submission()),
            ..TaskHead::default()
        };
        kv.set(&key.head(), &to_json(&unbound)).unwrap();
        assert!(store.live_head(&key).unwrap().is_some());
        // A task no one gave up: the binding costs its spare and listing entries (before
        // its batch and again after it) and one read more.
        let other = TaskKey::external("job-2");
        store
            .record_submission(&submission(&other, "job-2", "n2", 1))
            .unwrap();
        let (trips, sets) = (kv.round_trips.get(), kv.sets.get());
        let e = event("87", Some("job-2"), TaskStatus::Processing);
        let (_, books) = store.record_event(&other, &e, 500).unwrap();
        assert!(books.changes_nothing());
        assert_eq!(
            (kv.round_trips.get() - trips, kv.sets.get() - sets),
            (7, 5),
            "the head, the spare and listing entries, the batch, both again, the mark"
        );
    }

    #[test]
    fn a_create_answered_after_a_run_released_its_owner_s_entries_is_still_tracked() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        // Two submits of one id; the head names the second when a run judges the
        // first's entry, and releases it as another submission's.
        let first = submission(&key, "job-1", "n1", 1);
        let second = submission(&key, "job-1", "n2", 2);
        store.record_submission(&first).unwrap();
        store.record_submission(&second).unwrap();
        Index::pending(&kv).remove(&first.pending_entry()).unwrap();
        // The first's create answer makes it the owner.
        store.bind_submission(&key, "86", Some(&first)).unwrap();
        assert_bound_and_tracked(&kv, &key, "n1");
    }

    #[test]
    fn a_task_submitted_here_is_not_listed_again_by_its_news() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        store
            .record_submission(&submission(&key, "job-1", "n", 1))
            .unwrap();
        let sets = kv.sets.get();
        let e = event("86", Some("job-1"), TaskStatus::Processing);
        let (_, books) = store.record_event(&key, &e, 5).unwrap();
        assert!(books.changes_nothing(), "{books:?}");
        // The batch, and (this news binds the task) its spare pending entry and its
        // listing entry again, under the submit's name, before the batch and after it.
        assert_eq!(kv.sets.get(), sets + 5);
        // Listed by its submit only: the news batch holds no listing entry.
        let batch = books.news_batch(Slot::Processing, &e);
        assert!(
            batch.iter().all(|(k, _)| !k.starts_with("listed/")),
            "{batch:?}"
        );
        assert_eq!(
            Index::listed(&kv).entries().unwrap(),
            [listed_entry(&key, 1)]
        );
        assert_eq!(store.head(&key).unwrap().unwrap().listed_at, None);
    }

    #[test]
    fn a_listing_entry_that_went_missing_comes_back_with_the_next_news() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        let e = event("86", Some("job-1"), TaskStatus::Processing);
        let (verdict, _) = store.record_event(&key, &e, 5).unwrap();
        assert_eq!(verdict, Verdict::Apply(Slot::Processing));
        // As an older build's after-the-answer write that failed, or retention's removal
        // under a late delivery, would leave it: a head naming an entry that is gone.
        Index::listed(&kv).remove(&listed_entry(&key, 5)).unwrap();
        let mut done = e.clone();
        done.status = TaskStatus::Succeed;
        let (verdict, books) = store.record_event(&key, &done, 9).unwrap();
        assert_eq!(verdict, Verdict::Apply(Slot::Final));
        assert!(books.changes_nothing(), "{books:?}");
        assert_eq!(
            Index::listed(&kv).entries().unwrap(),
            [listed_entry(&key, 5)]
        );
    }

    #[test]
    fn a_failed_batch_is_an_error_and_the_sender_s_retry_is_news() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        kv.fail_nth_set.set(Some(1));
        let e = event("86", Some("job-1"), TaskStatus::Succeed);
        assert!(store.record_event(&key, &e, 5).is_err());
        // Nothing claims the delivery was seen, so the retry is judged news and lands.
        let (verdict, _) = store.record_event(&key, &e, 6).unwrap();
        assert_eq!(verdict, Verdict::Apply(Slot::Final));
        assert_eq!(
            store.find("86").unwrap().map(|r| r.status),
            Some(TaskStatus::Succeed)
        );
    }

    #[test]
    fn a_failed_batch_lists_nothing_and_the_retry_lists_the_task_once() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        let e = event("86", Some("job-1"), TaskStatus::Processing);
        kv.fail_nth_set.set(Some(1));
        assert!(store.record_event(&key, &e, 5).is_err());
        assert!(kv.keys().is_empty(), "{:?}", kv.keys());

        let (verdict, _) = store.record_event(&key, &e, 9).unwrap();
        assert_eq!(verdict, Verdict::Apply(Slot::Processing));
        assert_eq!(
            Index::listed(&kv).entries().unwrap(),
            [listed_entry(&key, 9)]
        );
    }

    /// So a store that applied the batch one entry at a time, in order, and stopped at a
    /// failure leaves a slot, a binding or a listing entry the head does not know yet,
    /// never a head that claims a missing one.
    #[test]
    fn the_batch_is_the_slot_then_the_binding_then_the_listing_then_the_head() {
        let key = TaskKey::external("job-1");
        let e = event("86", Some("job-1"), TaskStatus::Succeed);
        let books = TaskStore::bookkeeping(&key, None, &e, Verdict::Apply(Slot::Final), 5);
        let keys: Vec<String> = books
            .news_batch(Slot::Final, &e)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "task:job-1:final",
                "taskid:86",
                "listed/0000000000005/job-1",
                "task:job-1"
            ]
        );
    }

    #[test]
    fn a_first_seen_date_is_at_most_a_day_ahead_and_kling_s_otherwise() {
        let key = TaskKey::external("job-1");
        let now = 10 * DAY_MS;
        for (created_at, listed_at) in [(now + 5, now + 5), (now + 3 * DAY_MS, now + DAY_MS)] {
            let mut e = event("86", Some("job-1"), TaskStatus::Processing);
            e.created_at = Some(created_at);
            let kv = MemoryKv::default();
            let (_, books) = TaskStore::new(&kv).record_event(&key, &e, now).unwrap();
            assert!(books.changes_nothing());
            assert_eq!(
                Index::listed(&kv).entries().unwrap(),
                [listed_entry(&key, listed_at)]
            );
        }
    }

    #[test]
    fn a_failed_index_write_after_the_ack_leaves_the_head_unbound() {
        // A delivery that is not news but binds (a stale one for a head left unbound)
        // writes its binding and head after the acknowledgement, index first.
        let key = TaskKey::external("job-1");
        let e = event("86", Some("job-1"), TaskStatus::Submitted);
        let plan = TaskStore::bookkeeping(&key, None, &e, Verdict::Stale, 5);
        // The first write fails: nothing is written.
        let kv = MemoryKv::default();
        kv.fail_next.set(true);
        assert!(plan.apply(&kv).is_err());
        assert!(kv.keys().is_empty(), "{:?}", kv.keys());
        // The second fails: the index is there, and no head claims a binding.
        let kv = MemoryKv::default();
        kv.fail_nth_set.set(Some(2));
        assert!(plan.apply(&kv).is_err());
        assert_eq!(kv.keys(), ["taskid:86"]);
    }

    #[test]
    fn find_serves_by_either_id_and_prefers_the_highest_rank() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-1");
        let submitted = event("86", Some("job-1"), TaskStatus::Submitted);
        let succeed = event("86", Some("job-1"), TaskStatus::Succeed);
        store.write_slot(&key, Slot::Submitted, &submitted).unwrap();
        let (_, books) = store.record_event(&key, &succeed, 9).unwrap();
        books.apply(&kv).unwrap();

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

    /// A submission of `ext` at `now_ms` with nonce `n-{ext}`.
    fn submission<'a>(
        key: &'a TaskKey,
        ext: &'a str,
        nonce: &'a str,
        now_ms: u64,
    ) -> NewSubmission<'a> {
        NewSubmission {
            key,
            external_task_id: ext,
            kind: "text2video",
            pipeline: None,
            nonce,
            now_ms,
            first_due_ms: now_ms + 100,
            body_digest: None,
            first_submitted_at: None,
        }
    }

    #[test]
    fn a_submission_is_served_until_kling_reports_and_then_the_report_wins() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-s");
        let ours = submission(&key, "job-s", "n1", 5);
        store.record_submission(&ours).unwrap();
        let record = store.find("job-s").unwrap().unwrap();
        assert_eq!(
            (record.status, record.task_id, record.kind.as_deref()),
            (TaskStatus::Submitting, None, Some("text2video"))
        );
        assert_eq!(
            Index::pending(&kv).entries().unwrap(),
            ["0000000000105/n1/job-s"]
        );
        assert_eq!(
            Index::listed(&kv).entries().unwrap(),
            ["0000000000005/job-s"]
        );

        store.bind_submission(&key, "86", None).unwrap();
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
    }

    #[test]
    fn forgetting_a_submission_takes_only_its_own_keys() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-s");
        let first = submission(&key, "job-s", "n1", 5);
        store.record_submission(&first).unwrap();
        // A second submit of the same id (a retry) recorded itself meanwhile.
        let second = submission(&key, "job-s", "n2", 9);
        store.record_submission(&second).unwrap();

        store.forget_submission(&first, None).unwrap();
        let head = store.head(&key).unwrap().unwrap();
        assert_eq!(
            head.submission.unwrap().nonce,
            "n2",
            "the newer record stays"
        );
        assert_eq!(
            Index::pending(&kv).entries().unwrap(),
            ["0000000000109/n2/job-s"]
        );
        assert_eq!(
            Index::listed(&kv).entries().unwrap(),
            ["0000000000009/job-s"]
        );

        store.forget_submission(&second, None).unwrap();
        assert_eq!(store.find("job-s").unwrap(), None);
        assert!(Index::pending(&kv).entries().unwrap().is_empty());
        assert!(store.list(None, 10, None).unwrap().tasks.is_empty());
        // The marked head stays listed until retention deletes it, its mark with it.
        assert_eq!(
            Index::listed(&kv).entries().unwrap(),
            ["0000000000009/job-s"]
        );
        let purged = crate::store::retention::purge_expired(&kv, DAY_MS, DAY_MS, 10).unwrap();
        assert_eq!(purged.tasks, 1, "a submission given up counts as one");
        assert!(kv.keys().is_empty(), "{:?}", kv.keys());
    }

    #[test]
    fn two_submits_of_one_id_leave_the_bound_task_with_its_owners_entry() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::external("job-s");
        let a = submission(&key, "job-s", "nA", 5);
        let b = submission(&key, "job-s", "nB", 6);
        store.record_submission(&a).unwrap();
        store.record_submission(&b).unwrap(); // B's head lands last
        store.bind_submission(&key, "86", Some(&a)).unwrap(); // A's create succeeded
        store.forget_submission(&b, None).unwrap(); // B was refused (say 1303)
        let head = store
            .head(&key)
            .unwrap()
            .expect("the created task's head stays");
        assert_eq!(head.task_id.as_deref(), Some("86"));
        assert_eq!(head.submission.unwrap().nonce, "nA", "its owner's nonce");
        assert_eq!(
            Index::pending(&kv).entries().unwrap(),
            ["0000000000105/nA.b/job-s", "0000000000105/nA/job-s"],
            "the submit's entry, and its binding's"
        );

        // B forgot first: A's binding writes the whole head again.
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        store.record_submission(&a).unwrap();
        store.record_submission(&b).unwrap();
        store.forget_submission(&b, None).unwrap();
        store.bind_submission(&key, "86", Some(&a)).unwrap();
        let head = store.head(&key).unwrap().unwrap();
        assert_eq!(
            (head.task_id.as_deref(), head.submission.map(|s| s.nonce)),
            (Some("86"), Some("nA".to_string()))
        );
    }

    /// Submits tasks `job-0` .. `job-{count-1}` at t = i, and reports `outcome(i)` for
    /// each through the ledger where it is `Some` (at t = i too).
    fn submitted_tasks(kv: &MemoryKv, count: u64, outcome: impl Fn(u64) -> Option<TaskStatus>) {
        let store = TaskStore::new(kv);
        for i in 0..count {
            let ext = format!("job-{i}");
            let key = TaskKey::external(&ext);
            let nonce = format!("n{i}");
            store
                .record_submission(&submission(&key, &ext, &nonce, i))
                .unwrap();
            if let Some(status) = outcome(i) {
                let e = event(&format!("{i}"), Some(&ext), status);
                let (_, books) = store.record_event(&key, &e, i).unwrap();
                books.apply(kv).unwrap();
            }
        }
    }

    fn external_ids(tasks: &[TaskRecord]) -> Vec<String> {
        tasks
            .iter()
            .map(|t| t.external_task_id.clone().unwrap())
            .collect()
    }

    #[test]
    fn listing_is_newest_first_filtered_by_status_and_pages_with_a_cursor() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        // Every third has succeeded.
        submitted_tasks(&kv, 250, |i| (i % 3 == 0).then_some(TaskStatus::Succeed));

        let first = store.list(None, 5, None).unwrap();
        assert_eq!(
            external_ids(&first.tasks),
            ["job-249", "job-248", "job-247", "job-246", "job-245"]
        );

        let mut seen = Vec::new();
        let mut cursor: Option<Cursor> = None;
        loop {
            let page = store
                .list(Some(TaskStatus::Succeed), 30, cursor.as_ref())
                .unwrap();
            seen.extend(external_ids(&page.tasks));
            assert!(page.tasks.iter().all(|t| t.status == TaskStatus::Succeed));
            match page.next_cursor {
                Some(next) => {
                    let parsed = Cursor::parse(&next.to_string()).unwrap();
                    assert!(cursor.as_ref().is_none_or(|c| parsed.0 < c.0), "moves down");
                    cursor = Some(parsed);
                }
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
    fn a_listing_reads_a_bounded_number_of_entries_and_cursors_are_checked() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        submitted_tasks(&kv, 300, |_| None);
        let page = store.list(Some(TaskStatus::Failed), 10, None).unwrap();
        assert!(page.tasks.is_empty());
        let next = page.next_cursor.expect("stopped after MAX_SCAN entries");
        assert_eq!(next.0, listed_entry(&TaskKey::external("job-100"), 100));
        for bad in [
            "",
            "x",
            "!!!",
            &URL_SAFE_NO_PAD.encode("12/job-1"),
            &URL_SAFE_NO_PAD.encode("0000000000001/a:b"),
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    /// One record that cannot be read leaves the listing whole: every page around it is
    /// served, the record left out.
    #[test]
    fn a_listing_leaves_out_a_record_it_cannot_read() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        submitted_tasks(&kv, 5, |_| None);
        kv.set("task:job-2", b"not json").unwrap();
        let page = store.list(None, 10, None).unwrap();
        assert_eq!(
            external_ids(&page.tasks),
            ["job-4", "job-3", "job-1", "job-0"]
        );
        assert_eq!(
            store.find("job-2"),
            Err(StoreError::Corrupt("task:job-2".into()))
        );
    }

    #[test]
    fn a_task_first_seen_by_callback_is_listed_once() {
        let kv = MemoryKv::default();
        let store = TaskStore::new(&kv);
        let key = TaskKey::kling("99");
        let mut e = event("99", None, TaskStatus::Processing);
        e.created_at = Some(42);
        for now in [50, 60] {
            // Two first deliveries at once, on two clocks: both read no head.
            let (verdict, books) = store
                .record_event_with_head(&key, None, &e, now, None)
                .unwrap();
            assert_eq!(verdict, Verdict::Apply(Slot::Processing));
            books.apply(&kv).unwrap();
        }
        assert_eq!(Index::listed(&kv).entries().unwrap(), ["0000000000042/#99"]);
        assert_eq!(store.list(None, 10, None).unwrap().tasks.len(), 1);
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
