//! Notifications to the next system: when a task or a pipeline changes state, its record
//! is POSTed to `notify_url`, signed with Standard Webhooks headers.
//!
//! - `webhook-id` is deterministic and unique per content: `task_{id}_{status}_{digest}`
//!   (the digest covers what Kling reported: status, message, `updated_at`, outputs),
//!   `pipeline_{id}_running_{step}_{created_at}` (a step started) or
//!   `pipeline_{id}_{status}_{step}_{digest}` (the pipeline ended; the digest covers its
//!   error, its last step's `sequence` and its `created_at`: an id used again after
//!   retention deleted the pipeline is another pipeline),
//!   so a receiver deduplicates what at-least-once delivery repeats (a duplicate
//!   callback, a reconcile that finds the same change) and never drops a real update (a
//!   `processing` refresh with new fields, a step given up as `lost` that Kling then
//!   reports `failed`).
//! - The body is `{"type": "task.updated" | "pipeline.updated", "timestamp": RFC 3339,
//!   "data": record}`, the record exactly as `GET /tasks/{id}` or `GET /pipelines/{id}`
//!   serves it.
//! - A transactional outbox: every notification is stored (`outbox/{webhook_id}` in the
//!   `index` label, one key each) *before* it is sent, and deleted on the receiver's 2xx.
//!   An instance that stops mid-send loses nothing: each reconcile run sends what is
//!   due, `notify_retry_seconds` after a failure, doubling up to an hour.
//! - A notifier that met [`MAX_FAILURES_IN_A_ROW`] failures in a row (no answer, or any
//!   answer but a 2xx or a 4xx other than 408 and 429) stops sending for the rest of its request and only stores, so a dead
//!   receiver costs one timeout per attempt, not one per changed task. A 4xx refuses
//!   that notification only (it waits in the outbox, backing off): the receiver is up,
//!   so the others still go.
//! - A task's notifications go out in status order: each send reads the task's highest
//!   stored state and sends that instead when it is newer than what was queued, so a
//!   late `processing` never follows its `succeed` from one sender. Every record carries
//!   its `sequence` (status rank, then Kling's `updated_at`): a receiver keeps the
//!   largest it applied per task and drops the rest, which also orders what two
//!   replicas send at once.
//! - A 2xx for a task writes `task:{key}:notified` (that sequence). The reconciler,
//!   releasing a final task, queues its final notification again when that marker is
//!   lower: an instance that died between acknowledging a callback and queueing its
//!   notification loses nothing. A poll of a task it tracks that brings nothing new does
//!   the same for a stored state not final yet (a callback's or a poll's).
//! - A 2xx for a pipeline writes `pipeline:{id}:notified` (its `webhook-id`). Every
//!   reconcile run queues, for each pipeline it still tracks, the notification of the
//!   pipeline as it is when that marker names another one and the outbox holds none,
//!   before it lets a finished pipeline go: a step started or a pipeline ended whose
//!   notification was never queued still goes out.

use std::cell::{Cell, RefCell};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::config::NotifyConfig;
use crate::outbound::{HttpTransport, OutboundRequest};
use crate::pipeline::progress::{Next, PipelineView};
use crate::store::index::Index;
use crate::store::layout::TaskKey;
use crate::store::pipelines::PipelineStore;
use crate::store::tasks::TaskStore;
use crate::store::{KeyValue, StoreError, get_count, to_json};
use crate::task::TaskRecord;
use crate::validate::is_valid_external_task_id;

/// How long one send may take.
pub const SEND_TIMEOUT_MS: u64 = 5_000;
/// The longest wait between two attempts.
pub const MAX_BACKOFF_MS: u64 = 60 * 60 * 1000;
/// Sends one reconcile run attempts at most, so a slow receiver cannot stall it.
pub const MAX_SENDS_PER_RUN: usize = 50;
/// Failures in a row after which a run stops trying: the receiver is down, and each
/// attempt would wait out the send timeout.
pub const MAX_FAILURES_IN_A_ROW: usize = 3;

/// One message, as signed and sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub webhook_id: String,
    pub body: String,
    /// A task's notification: which task, and the sequence of the state it carries, so
    /// that a send can carry the task's newer state instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<NotifiedTask>,
    /// A pipeline's notification: the pipeline's id, marked as notified on a 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifiedTask {
    /// The task's store key ([`TaskKey`]).
    pub key: String,
    pub sequence: u64,
}

impl Notification {
    /// `record`'s notification; `key` is the task's store key (a callback's record may
    /// name no external id even where the task is stored under one).
    pub fn task(key: &TaskKey, record: &TaskRecord, now_ms: u64) -> Self {
        // The id names a key (`outbox/{webhook_id}`): an external id outside our format
        // (a task submitted elsewhere) is not used.
        let id = match (&record.external_task_id, &record.task_id) {
            (Some(external), _) if is_valid_external_task_id(external) => external.clone(),
            (_, Some(task_id)) => format!("kling-{task_id}"),
            (_, None) => "unknown".into(),
        };
        let mut notification = Self::new(
            format!(
                "task_{id}_{}_{}",
                record.status.as_str(),
                content_digest(record)
            ),
            "task.updated",
            record,
            now_ms,
        );
        notification.task = Some(NotifiedTask {
            key: key.as_str().to_string(),
            sequence: record.sequence,
        });
        notification
    }

    pub fn pipeline(view: &PipelineView, now_ms: u64) -> Self {
        let (id, status, step) = (&view.id, view.status.as_str(), view.current_step);
        let webhook_id = match view.next() {
            Next::Finished(_) => format!("pipeline_{id}_{status}_{step}_{}", ending_digest(view)),
            Next::Submit(_) | Next::Wait => {
                format!("pipeline_{id}_{status}_{step}_{}", view.created_at)
            }
        };
        let mut notification = Self::new(webhook_id, "pipeline.updated", view, now_ms);
        notification.pipeline = Some(id.clone());
        notification
    }

    fn new(webhook_id: String, kind: &str, data: &impl Serialize, now_ms: u64) -> Self {
        let body = json!({
            "type": kind,
            "timestamp": rfc3339(now_ms),
            "data": data,
        });
        Self {
            webhook_id,
            body: body.to_string(),
            task: None,
            pipeline: None,
        }
    }
}

/// 16 hex digits of SHA-256 over how a pipeline ended: its error, and the `sequence` of
/// the task of the step that ended it (so `failed` at one step for another reason, or
/// a refreshed result, is another notification), and when the pipeline was created.
fn ending_digest(view: &PipelineView) -> String {
    let sequence = view.task(view.current_step).map(|task| task.sequence);
    let content = json!([view.error, sequence, view.created_at]);
    let digest = Sha256::digest(content.to_string().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// 16 hex digits of SHA-256 over what Kling reported of a task (not our counters, which
/// differ between the callback and the reconciler finding the same news).
fn content_digest(record: &TaskRecord) -> String {
    let mut content = json!([
        record.status.as_str(),
        record.status_msg,
        record.updated_at,
        record.videos,
        record.images,
        record.final_unit_deduction,
    ]);
    // The typed outputs beyond videos and images, only when there are any (a video
    // task's ids stay what they were before these were kept). Not Kling's own JSON: a
    // callback keeps it byte for byte, a poll re-serialized, so the same news would get
    // two ids.
    let more = &record.more;
    let typed = (
        &more.series_images,
        &more.audios,
        &more.voices,
        &more.elements,
    );
    if !(typed.0.is_empty() && typed.1.is_empty() && typed.2.is_empty() && typed.3.is_empty())
        && let Some(items) = content.as_array_mut()
    {
        // As text: the same serializer the response uses (a `Value` would be another
        // copy of it in the component).
        items.push(serde_json::to_string(&typed).unwrap_or_default().into());
    }
    let digest = Sha256::digest(content.to_string().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores `notification` in the outbox without sending it, unless it is queued already
/// (with its attempts and backoff): for a request that cannot tell whether notifications
/// are on (their variables could not be read). A reconcile run that finds them on sends
/// it; with them off, runs never touch the outbox, so it waits there until they are on.
pub fn queue_unsent(
    kv: &dyn KeyValue,
    notification: Notification,
    now_ms: u64,
) -> Result<(), StoreError> {
    let outbox = Index::outbox(kv);
    if outbox.value(&notification.webhook_id)?.is_some() {
        return Ok(());
    }
    let pending = Pending::due(notification, now_ms);
    outbox.put(&pending.notification.webhook_id, &to_json(&pending))
}

/// A notification waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub notification: Notification,
    /// Failed sends so far.
    pub attempts: u32,
    /// Our clock, milliseconds.
    pub next_attempt_at: u64,
}

impl Pending {
    /// A notification not tried yet, due at `now_ms`.
    fn due(notification: Notification, now_ms: u64) -> Self {
        Self {
            notification,
            attempts: 0,
            next_attempt_at: now_ms,
        }
    }
}

/// What an outbox run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OutboxReport {
    pub sent: usize,
    pub pending: usize,
}

pub struct Notifier<'a> {
    config: &'a NotifyConfig,
    kv: &'a dyn KeyValue,
    transport: &'a dyn HttpTransport,
    clock: &'a dyn Clock,
    /// Sends that failed in a row during this request.
    failures_in_a_row: Cell<usize>,
    /// Outbox entries [`Self::retry_due`] tried during this request: a run passes over
    /// the outbox twice, and tries each entry once.
    retried: RefCell<Vec<String>>,
}

impl<'a> Notifier<'a> {
    pub fn new(
        config: &'a NotifyConfig,
        kv: &'a dyn KeyValue,
        transport: &'a dyn HttpTransport,
        clock: &'a dyn Clock,
    ) -> Self {
        Self {
            config,
            kv,
            transport,
            clock,
            failures_in_a_row: Cell::new(0),
            retried: RefCell::new(Vec::new()),
        }
    }

    /// Stores the notification in the outbox, then sends it, and deletes it on a 2xx.
    /// An error means it could not be stored (nothing was sent then).
    pub fn deliver(&self, notification: Notification) -> Result<(), StoreError> {
        let pending = Pending::due(notification, self.clock.now_ms());
        Index::outbox(self.kv).put(&pending.notification.webhook_id, &to_json(&pending))?;
        self.attempt(pending)?;
        Ok(())
    }

    /// Queues a task's notification of `record` again unless a receiver took it (or it is
    /// queued): the reconciler calls this before releasing a final task, and for a task
    /// whose poll brought nothing new, so a notification whose sender died before
    /// queueing it still goes out. (An older state's notification still queued is not
    /// looked for: the outbox sends the highest state anyway, so this may send once more.)
    pub fn ensure_notified(&self, key: &TaskKey, record: &TaskRecord) -> Result<(), StoreError> {
        let notified = get_count(self.kv, &key.notified())?;
        if notified.is_some_and(|sequence| sequence >= record.sequence) {
            return Ok(());
        }
        let notification = Notification::task(key, record, self.clock.now_ms());
        if Index::outbox(self.kv)
            .value(&notification.webhook_id)?
            .is_some()
        {
            return Ok(()); // queued: the outbox's own retries take it from here
        }
        self.deliver(notification)
    }

    /// Queues the notification of `view`, the pipeline as it is now, unless a receiver
    /// took it or it is queued, and unless this state is not announced
    /// ([`PipelineView::is_announced`]). The reconciler calls this for every pipeline it
    /// tracks, before it lets a finished one go, so one whose notification was never
    /// queued (its sender stopped first) still goes out.
    pub fn ensure_pipeline_notified(&self, view: &PipelineView) -> Result<(), StoreError> {
        if !view.is_announced() {
            return Ok(());
        }
        let notification = Notification::pipeline(view, self.clock.now_ms());
        let taken = PipelineStore::new(self.kv).notified(&view.id)?;
        if taken.as_deref() == Some(notification.webhook_id.as_str())
            || Index::outbox(self.kv)
                .value(&notification.webhook_id)?
                .is_some()
        {
            return Ok(());
        }
        self.deliver(notification)
    }

    /// Sends one stored notification unless the receiver is down; removes it on a 2xx,
    /// else stores when to try again. Returns whether it was sent. A task's notification
    /// carries the task's highest stored state: when that is newer than what was queued,
    /// it is sent instead, and the queued entry is replaced (the new one added first).
    fn attempt(&self, pending: Pending) -> Result<bool, StoreError> {
        if self.receiver_down() {
            return Ok(false);
        }
        let outbox = Index::outbox(self.kv);
        let judged = pending.notification.webhook_id.clone();
        let (mut pending, stored) = self.newest(pending)?;
        let id = pending.notification.webhook_id.clone();
        let sent = self.send(&pending.notification);
        if let Err(failed) = &sent {
            // The receiver's status or the transport's error: never the URL's query,
            // nor a signature.
            eprintln!(
                "notification {id} was not sent, and stays in the outbox: {}",
                failed.why
            );
        }
        if sent.is_ok() {
            self.failures_in_a_row.set(0);
            // Sent: a failed write here only means it is sent once more (same id). A
            // task retention deleted meanwhile gets no mark: nothing would delete it.
            if let Some(task) = pending.notification.task.as_ref().filter(|_| stored) {
                let key = TaskKey::from_stored(task.key.clone());
                if let Err(error) = self
                    .kv
                    .set(&key.notified(), task.sequence.to_string().as_bytes())
                {
                    eprintln!("notification {id} was sent but not marked: {error}");
                }
            }
            // A lost mark costs one repeat of this notification (same id), no more. A
            // pipeline retention deleted meanwhile gets none: nothing would delete it.
            if let Some(pipeline) = &pending.notification.pipeline {
                let pipelines = PipelineStore::new(self.kv);
                let marked = match pipelines.spec(pipeline) {
                    Ok(Some(_)) => pipelines.mark_notified(pipeline, &id),
                    Ok(None) | Err(StoreError::Corrupt(_)) => Ok(()),
                    Err(error) => Err(error),
                };
                if let Err(error) = marked {
                    eprintln!("notification {id} was sent but not marked: {error}");
                }
            }
            // Both names carry content the receiver now has (or newer).
            for name in [&judged, &id] {
                if let Err(error) = outbox.remove(name) {
                    eprintln!("notification {name} was sent but stays in the outbox: {error}");
                }
            }
            return Ok(true);
        }
        // A receiver that refused this notification (a 4xx) is up: the others still go.
        // The count of failures in a row is left as it was, so answers mixed with
        // timeouts still stop the sends after three timeouts.
        if !sent.is_err_and(|failed| failed.receiver_up) {
            self.failures_in_a_row.set(self.failures_in_a_row.get() + 1);
        }
        pending.attempts += 1;
        pending.next_attempt_at = self
            .clock
            .now_ms()
            .saturating_add(self.backoff_ms(pending.attempts));
        outbox.put(&id, &to_json(&pending))?;
        if judged != id {
            outbox.remove(&judged)?;
        }
        Ok(false)
    }

    /// `pending`, or the notification of its task's newer stored state; and whether
    /// the task is still stored.
    fn newest(&self, pending: Pending) -> Result<(Pending, bool), StoreError> {
        let Some(task) = &pending.notification.task else {
            return Ok((pending, false));
        };
        let key = TaskKey::from_stored(task.key.clone());
        let stored = match TaskStore::new(self.kv).find_by_key(&key) {
            Ok(stored) => stored,
            // One unreadable task must not hold up the outbox: send what was queued.
            Err(StoreError::Corrupt(bad)) => {
                eprintln!(
                    "notification of {}: `{bad}` is not valid; sent as queued",
                    task.key
                );
                return Ok((pending, false));
            }
            Err(error) => return Err(error),
        };
        match stored {
            Some(record) if record.sequence > task.sequence => {
                let notification = Notification::task(&key, &record, self.clock.now_ms());
                Ok((
                    Pending {
                        notification,
                        ..pending
                    },
                    true,
                ))
            }
            stored => Ok((pending, stored.is_some())),
        }
    }

    fn receiver_down(&self) -> bool {
        self.failures_in_a_row.get() >= MAX_FAILURES_IN_A_ROW
    }

    /// Sends every notification in the outbox that is due, at most
    /// [`MAX_SENDS_PER_RUN`] and each once over this request's passes, none once the
    /// receiver is down, and none after `deadline_ms`.
    pub fn retry_due(&self, deadline_ms: u64) -> Result<OutboxReport, StoreError> {
        let outbox = Index::outbox(self.kv);
        let now = self.clock.now_ms();
        let mut report = OutboxReport::default();
        for id in outbox.entries()? {
            // What stops this pass is judged before an entry is read, so that a large
            // outbox (a receiver down for a day) costs a run one listing, not a read of
            // every entry, and leaves the run its budget for the polls.
            if self.retried.borrow().len() >= MAX_SENDS_PER_RUN
                || self.retried.borrow().contains(&id)
                || self.receiver_down()
                || self.clock.now_ms() >= deadline_ms
            {
                report.pending += 1;
                continue;
            }
            // Removed since the listing (sent by another run), or not ours: skip.
            let Some(pending) = outbox
                .value(&id)?
                .and_then(|bytes| serde_json::from_slice::<Pending>(&bytes).ok())
            else {
                continue;
            };
            if pending.next_attempt_at > now {
                report.pending += 1;
                continue;
            }
            self.retried.borrow_mut().push(id);
            if self.attempt(pending)? {
                report.sent += 1;
            } else {
                report.pending += 1;
            }
        }
        Ok(report)
    }

    /// The wait after `attempts` failed sends: the configured base, doubling, capped.
    fn backoff_ms(&self, attempts: u32) -> u64 {
        let doubling = 1u64 << attempts.saturating_sub(1).min(20);
        self.config
            .retry_after_ms
            .saturating_mul(doubling)
            .min(MAX_BACKOFF_MS)
    }

    fn send(&self, notification: &Notification) -> Result<(), SendFailure> {
        let timestamp = i64::try_from(self.clock.now_ms() / 1000).unwrap_or(i64::MAX);
        let body = notification.body.as_bytes();
        // One signature per secret, space-separated, as Standard Webhooks defines.
        let signature = self
            .config
            .secrets
            .iter()
            .map(|secret| secret.sign(&notification.webhook_id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" ");
        let response = self
            .transport
            .send(OutboundRequest {
                method: "POST",
                url: self.config.url.clone(),
                headers: vec![
                    ("content-type", "application/json".into()),
                    ("webhook-id", notification.webhook_id.clone()),
                    ("webhook-timestamp", timestamp.to_string()),
                    ("webhook-signature", signature),
                ],
                body: body.to_vec(),
                timeout_ms: SEND_TIMEOUT_MS,
            })
            .map_err(|e| SendFailure {
                why: if self.config.outside_allowed_origin {
                    format!(
                        "{e} (notify_url is not under notify_origin, the only notification host spin.toml allows)"
                    )
                } else {
                    e.to_string()
                },
                receiver_up: false,
            })?;
        match response.status {
            200..300 => Ok(()),
            status => Err(SendFailure {
                why: format!("the receiver answered HTTP {status}"),
                // 408 and 429 ask for a later try, as a receiver that is down does.
                receiver_up: (400..500).contains(&status) && !matches!(status, 408 | 429),
            }),
        }
    }
}

/// Why a notification was not taken.
struct SendFailure {
    /// The receiver's status or the transport's error, for the log.
    why: String,
    /// The receiver answered, refusing this notification (a 4xx): it is not down.
    receiver_up: bool,
}

/// `2026-11-26T21:07:10.123Z` from milliseconds since the epoch.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::manual::ManualClock;
    use crate::outbound::{OutboundResponse, TransportError};
    use crate::signatures::standard_webhooks::{WebhookHeaders, WebhookSecret, verify};
    use crate::store::memory::MemoryKv;
    use crate::task::{TaskEvent, TaskStatus};
    use std::cell::{Cell, RefCell};

    const WHSEC: &str = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI=";

    /// A receiver that answers each send with the next status (then 200).
    struct Receiver {
        statuses: RefCell<Vec<u16>>,
        got: RefCell<Vec<OutboundRequest>>,
    }

    impl HttpTransport for Receiver {
        fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, TransportError> {
            self.got.borrow_mut().push(request);
            let status = self.statuses.borrow_mut().pop().unwrap_or(200);
            Ok(OutboundResponse {
                status,
                body: Vec::new(),
            })
        }
    }

    /// A store, a clock, a receiver answering `statuses` in turn, and a notifier over them.
    struct Fixture {
        kv: MemoryKv,
        clock: ManualClock,
        receiver: Receiver,
        config: NotifyConfig,
    }

    impl Fixture {
        fn new(now_ms: u64, mut statuses: Vec<u16>) -> Self {
            statuses.reverse();
            Self {
                kv: MemoryKv::default(),
                clock: ManualClock(Cell::new(now_ms)),
                receiver: Receiver {
                    statuses: RefCell::new(statuses),
                    got: RefCell::default(),
                },
                config: NotifyConfig {
                    url: "https://next.example/hooks".into(),
                    secrets: vec![WebhookSecret::parse(WHSEC).unwrap()],
                    retry_after_ms: 1_000,
                    outside_allowed_origin: false,
                },
            }
        }

        fn notifier(&self) -> Notifier<'_> {
            Notifier::new(&self.config, &self.kv, &self.receiver, &self.clock)
        }

        /// The outbox entry of `id`, if any.
        fn pending(&self, id: &str) -> Option<Pending> {
            crate::store::get_json(&self.kv, &format!("outbox/{id}")).unwrap()
        }

        /// The sequence a receiver last took for the task `key`.
        fn notified(&self, key: &str) -> Option<u64> {
            let bytes = self.kv.get(&format!("task:{key}:notified")).unwrap()?;
            Some(String::from_utf8(bytes).unwrap().parse().unwrap())
        }

        /// Stores `event` as the task's news (the way a callback does).
        fn store(&self, event: &TaskEvent) -> TaskRecord {
            let key = TaskKey::external("job-1");
            let tasks = TaskStore::new(&self.kv);
            let (_, bookkeeping) = tasks.record_event(&key, event, 1).unwrap();
            bookkeeping.apply(&self.kv).unwrap();
            tasks.find_by_key(&key).unwrap().unwrap()
        }

        /// Stores `processing` and queues its notification, whose first send the
        /// receiver refuses; returns the queued webhook id.
        fn queue_refused_processing(&self) -> String {
            let processing = self.store(&event(TaskStatus::Processing, 20));
            let queued = note(&processing, self.clock.now_ms());
            let queued_id = queued.webhook_id.clone();
            self.notifier().deliver(queued).unwrap();
            assert!(self.pending(&queued_id).is_some(), "queued");
            queued_id
        }

        /// The statuses of the task notifications the receiver got, in order.
        fn statuses_sent(&self) -> Vec<String> {
            self.receiver
                .got
                .borrow()
                .iter()
                .map(|request| {
                    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
                    body["data"]["status"].as_str().unwrap().to_string()
                })
                .collect()
        }
    }

    /// The notification of a record whose task is stored under its external id.
    fn note(record: &TaskRecord, now_ms: u64) -> Notification {
        let key = TaskKey::external(record.external_task_id.as_deref().unwrap());
        Notification::task(&key, record, now_ms)
    }

    fn record() -> TaskRecord {
        TaskRecord {
            external_task_id: Some("job-1".into()),
            deliveries: 1,
            sequence: crate::task::sequence(TaskStatus::Succeed, None),
            ..TaskRecord::example(TaskStatus::Succeed)
        }
    }

    fn event(status: TaskStatus, updated_at: u64) -> TaskEvent {
        TaskEvent {
            task_id: "86".into(),
            status,
            status_msg: String::new(),
            external_task_id: Some("job-1".into()),
            created_at: None,
            updated_at: Some(updated_at),
            videos: Vec::new(),
            images: Vec::new(),
            more: Default::default(),
            final_unit_deduction: None,
            source: Default::default(),
        }
    }

    #[test]
    fn a_late_notification_carries_the_tasks_highest_state_so_none_goes_backwards() {
        let fixture = Fixture::new(10_000, vec![]);
        let processing = fixture.store(&event(TaskStatus::Processing, 20));
        // `succeed` lands while the `processing` delivery's notification is on its way.
        let succeed = fixture.store(&event(TaskStatus::Succeed, 30));
        let notifier = fixture.notifier();
        notifier.deliver(note(&succeed, 10_000)).unwrap();
        notifier.deliver(note(&processing, 10_000)).unwrap();
        assert_eq!(fixture.statuses_sent(), ["succeed", "succeed"]);
        let ids: Vec<String> = fixture
            .receiver
            .got
            .borrow()
            .iter()
            .map(|r| {
                r.headers
                    .iter()
                    .find(|(n, _)| *n == "webhook-id")
                    .unwrap()
                    .1
                    .clone()
            })
            .collect();
        assert_eq!(
            ids[0], ids[1],
            "the same content, the same id: deduplicated"
        );
        assert_eq!(fixture.notified("job-1"), Some(succeed.sequence));
        assert_eq!(
            fixture
                .kv
                .keys()
                .iter()
                .filter(|k| k.starts_with("outbox/"))
                .count(),
            0
        );
    }

    #[test]
    fn a_queued_notification_is_replaced_by_the_newer_state_when_it_is_retried() {
        // The receiver refuses the first send.
        let fixture = Fixture::new(10_000, vec![500]);
        let queued_id = fixture.queue_refused_processing();
        let failed = fixture.store(&event(TaskStatus::Failed, 30));
        fixture.clock.0.set(20_000);
        let report = fixture.notifier().retry_due(u64::MAX).unwrap();
        assert_eq!(
            report,
            OutboxReport {
                sent: 1,
                pending: 0
            }
        );
        assert_eq!(fixture.statuses_sent(), ["processing", "failed"]);
        assert!(
            fixture.pending(&queued_id).is_none(),
            "the judged entry is gone"
        );
        assert_eq!(fixture.notified("job-1"), Some(failed.sequence));
    }

    #[test]
    fn a_failed_send_of_a_newer_state_queues_it_in_place_of_the_judged_one() {
        let fixture = Fixture::new(10_000, vec![500, 500]);
        let queued_id = fixture.queue_refused_processing();
        let succeed = fixture.store(&event(TaskStatus::Succeed, 30));
        let newer_id = note(&succeed, 0).webhook_id;
        fixture.clock.0.set(20_000);
        let report = fixture.notifier().retry_due(u64::MAX).unwrap();
        assert_eq!(
            report,
            OutboxReport {
                sent: 0,
                pending: 1
            }
        );
        assert!(fixture.pending(&queued_id).is_none(), "replaced");
        let newer = fixture.pending(&newer_id).expect("the newer state waits");
        assert_eq!(newer.attempts, 2, "the attempts carry over");
        assert_eq!(fixture.statuses_sent(), ["processing", "succeed"]);
        assert_eq!(fixture.notified("job-1"), None, "no receiver took anything");
    }

    #[test]
    fn an_unreadable_task_does_not_hold_up_the_outbox() {
        let fixture = Fixture::new(10_000, vec![500]);
        let queued_id = fixture.queue_refused_processing();
        fixture.kv.set("task:job-1", b"not json").unwrap();
        fixture.clock.0.set(20_000);
        let report = fixture.notifier().retry_due(u64::MAX).unwrap();
        assert_eq!(
            report,
            OutboxReport {
                sent: 1,
                pending: 0
            },
            "sent as queued"
        );
        assert!(fixture.pending(&queued_id).is_none());
    }

    #[test]
    fn a_final_state_queued_or_taken_is_not_queued_again() {
        let fixture = Fixture::new(10_000, vec![500]);
        let key = TaskKey::external("job-1");
        let succeed = fixture.store(&event(TaskStatus::Succeed, 30));
        // Queued by the callback's instance, its first send refused.
        fixture.notifier().deliver(note(&succeed, 10_000)).unwrap();
        fixture.notifier().ensure_notified(&key, &succeed).unwrap();
        assert_eq!(
            fixture.statuses_sent(),
            ["succeed"],
            "the outbox retries it, not this"
        );
        // A receiver took a newer state of it (the mark is higher).
        let mut older = succeed.clone();
        older.sequence -= 1;
        fixture
            .kv
            .set(
                "task:job-1:notified",
                succeed.sequence.to_string().as_bytes(),
            )
            .unwrap();
        fixture
            .kv
            .delete(&format!("outbox/{}", note(&succeed, 0).webhook_id))
            .unwrap();
        fixture.notifier().ensure_notified(&key, &older).unwrap();
        assert_eq!(fixture.statuses_sent(), ["succeed"]);
    }

    #[test]
    fn a_final_state_no_receiver_took_is_queued_again_and_only_then() {
        let fixture = Fixture::new(10_000, vec![]);
        let key = TaskKey::external("job-1");
        // The callback's instance died after the acknowledgement: nothing was queued.
        let succeed = fixture.store(&event(TaskStatus::Succeed, 30));
        let notifier = fixture.notifier();
        notifier.ensure_notified(&key, &succeed).unwrap();
        assert_eq!(fixture.statuses_sent(), ["succeed"]);
        assert_eq!(fixture.notified("job-1"), Some(succeed.sequence));
        notifier.ensure_notified(&key, &succeed).unwrap();
        assert_eq!(
            fixture.statuses_sent(),
            ["succeed"],
            "taken: not sent again"
        );
    }

    #[test]
    fn a_notification_is_signed_with_a_deterministic_id() {
        let fixture = Fixture::new(1_781_080_794_000, vec![]);
        let (kv, clock, receiver) = (&fixture.kv, &fixture.clock, &fixture.receiver);
        fixture
            .notifier()
            .deliver(note(&record(), clock.now_ms()))
            .unwrap();
        let sent = &receiver.got.borrow()[0];
        let header = |name: &str| {
            sent.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        let id = header("webhook-id").unwrap();
        assert!(
            id.starts_with("task_job-1_succeed_") && id.len() == 35,
            "{id}"
        );
        let headers = WebhookHeaders {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
        };
        let secret = WebhookSecret::parse(WHSEC).unwrap();
        verify(&secret, &headers, &sent.body, 1_781_080_794).unwrap();
        let mut tampered = sent.body.clone();
        tampered[10] ^= 1;
        assert!(verify(&secret, &headers, &tampered, 1_781_080_794).is_err());
        let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(body["type"], "task.updated");
        assert_eq!(body["timestamp"], "2026-06-10T08:39:54.000Z");
        assert_eq!(body["data"]["status"], TaskStatus::Succeed.as_str());
        assert_eq!(body["data"]["sequence"], record().sequence);
        assert!(
            kv.keys().is_empty(),
            "a sent notification of a task not stored leaves nothing, not even a mark"
        );
    }

    #[test]
    fn with_two_secrets_a_receiver_holding_either_verifies() {
        const OTHER: &str = "whsec_aHVudGVyMi1odW50ZXIyLWh1bnRlcjI=";
        let mut fixture = Fixture::new(1_781_080_794_000, vec![]);
        fixture
            .config
            .secrets
            .push(WebhookSecret::parse(OTHER).unwrap());
        fixture.notifier().deliver(note(&record(), 0)).unwrap();
        let sent = &fixture.receiver.got.borrow()[0];
        let header = |name: &str| {
            sent.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        let headers = WebhookHeaders {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
        };
        assert_eq!(headers.signature.unwrap().split(' ').count(), 2);
        for secret in [WHSEC, OTHER] {
            let secret = WebhookSecret::parse(secret).unwrap();
            verify(&secret, &headers, &sent.body, 1_781_080_794).unwrap();
        }
    }

    #[test]
    fn a_notification_queued_unsent_keeps_an_entry_already_queued() {
        let f = Fixture::new(10, vec![500]);
        let processing = f.store(&event(TaskStatus::Processing, 20));
        let queued = note(&processing, 10);
        let id = queued.webhook_id.clone();
        f.notifier().deliver(queued.clone()).unwrap();
        let backing_off = f.pending(&id).unwrap();
        assert_eq!(backing_off.attempts, 1, "refused once, waiting to retry");
        queue_unsent(&f.kv, queued.clone(), 10).unwrap();
        assert_eq!(
            f.pending(&id),
            Some(backing_off),
            "its attempts and backoff kept"
        );

        let fresh = Fixture::new(10, vec![]);
        queue_unsent(&fresh.kv, queued, 10).unwrap();
        let waiting = fresh.pending(&id).unwrap();
        assert_eq!((waiting.attempts, waiting.next_attempt_at), (0, 10));
        assert!(fresh.receiver.got.borrow().is_empty(), "stored, not sent");
    }

    #[test]
    fn webhook_ids_are_unique_per_content_not_per_counter() {
        let id = |record: &TaskRecord| note(record, 0).webhook_id;
        let base = record();
        let mut counted = base.clone();
        counted.deliveries = 7;
        assert_eq!(id(&base), id(&counted), "the same news found twice");
        let mut refreshed = base.clone();
        refreshed.updated_at = Some(99);
        assert_ne!(id(&base), id(&refreshed), "a refresh is news");
        let mut other = base.clone();
        other.status = TaskStatus::Failed;
        assert!(id(&other).starts_with("task_job-1_failed_"));
        // An external id outside our format (a task submitted elsewhere) names no key.
        let mut elsewhere = base.clone();
        elsewhere.external_task_id = Some("order#7/a:b".into());
        let id = id(&elsewhere);
        assert!(id.starts_with("task_kling-"), "{id}");
        assert!(!id.contains(['/', ':', '#']), "{id}");
    }

    #[test]
    fn a_pipeline_s_ids_tell_its_updates_apart_and_only_them() {
        use crate::pipeline::progress::view;
        use crate::pipeline::spec::PipelineSpec;
        let spec = PipelineSpec::of_text2video_steps("p", 2);
        let step = |status, updated_at| {
            Some(TaskRecord {
                updated_at: Some(updated_at),
                sequence: crate::task::sequence(status, Some(updated_at)),
                ..TaskRecord::example(status)
            })
        };
        let id = |tasks: &[Option<TaskRecord>]| {
            Notification::pipeline(&view(&spec, tasks, None), 0).webhook_id
        };
        let running = id(&[step(TaskStatus::Succeed, 1), step(TaskStatus::Submitted, 2)]);
        assert_eq!(running, "pipeline_p_running_1_1");
        assert_eq!(
            id(&[
                step(TaskStatus::Succeed, 1),
                step(TaskStatus::Processing, 3)
            ]),
            running,
            "a step's progress is not the pipeline's news"
        );
        let lost = id(&[step(TaskStatus::Succeed, 1), step(TaskStatus::Lost, 4)]);
        let failed = id(&[step(TaskStatus::Succeed, 1), step(TaskStatus::Failed, 5)]);
        assert!(lost.starts_with("pipeline_p_failed_1_"), "{lost}");
        assert!(failed.starts_with("pipeline_p_failed_1_"), "{failed}");
        assert_ne!(
            lost, failed,
            "given up as lost, then failed by Kling: two updates"
        );
        assert_eq!(
            failed,
            id(&[step(TaskStatus::Succeed, 1), step(TaskStatus::Failed, 5)]),
            "the same ending found twice"
        );
        // The id used again once retention deleted the pipeline: another pipeline, whose
        // updates a receiver that remembers ids must not drop as repeats.
        let again = PipelineSpec {
            created_at: 2,
            ..spec.clone()
        };
        for tasks in [
            &[step(TaskStatus::Succeed, 1), step(TaskStatus::Submitted, 2)][..],
            &[step(TaskStatus::Succeed, 1), step(TaskStatus::Failed, 5)][..],
        ] {
            assert_ne!(
                Notification::pipeline(&view(&again, tasks, None), 0).webhook_id,
                id(tasks)
            );
        }
        let refused = crate::pipeline::progress::PipelineFailure {
            step: 0,
            code: "invalid_request".into(),
            message: "refused".into(),
        };
        assert_ne!(
            Notification::pipeline(&view(&again, &[], Some(refused.clone())), 0).webhook_id,
            Notification::pipeline(&view(&spec, &[], Some(refused)), 0).webhook_id,
        );

        let note = Notification::pipeline(&view(&spec, &[step(TaskStatus::Succeed, 1)], None), 0);
        assert_eq!(note.pipeline.as_deref(), Some("p"), "marked on a 2xx");

        // Marked on a 2xx while the pipeline is stored; never for one deleted meanwhile.
        let f = Fixture::new(10, vec![200, 200]);
        let pipelines = PipelineStore::new(&f.kv);
        f.notifier().deliver(note.clone()).unwrap();
        assert_eq!(pipelines.notified("p").unwrap(), None, "deleted: no mark");
        pipelines.save_spec(&spec).unwrap();
        f.notifier().deliver(note.clone()).unwrap();
        assert_eq!(pipelines.notified("p").unwrap(), Some(note.webhook_id));
    }

    /// A receiver that looks into the outbox when a notification arrives.
    struct Peeking<'a> {
        kv: &'a MemoryKv,
        stored_when_sent: RefCell<Vec<bool>>,
    }

    impl HttpTransport for Peeking<'_> {
        fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, TransportError> {
            let id = request
                .headers
                .iter()
                .find(|(n, _)| *n == "webhook-id")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let stored = self.kv.get(&format!("outbox/{id}")).unwrap().is_some();
            self.stored_when_sent.borrow_mut().push(stored);
            Err(TransportError::Timeout) // the instance "dies" before the answer
        }
    }

    #[test]
    fn a_notification_is_stored_before_it_is_sent() {
        let fixture = Fixture::new(10_000, vec![]);
        let peeking = Peeking {
            kv: &fixture.kv,
            stored_when_sent: RefCell::default(),
        };
        let notifier = Notifier::new(&fixture.config, &fixture.kv, &peeking, &fixture.clock);
        let notification = note(&record(), 10_000);
        let id = notification.webhook_id.clone();
        notifier.deliver(notification).unwrap();
        assert_eq!(*peeking.stored_when_sent.borrow(), [true]);
        assert!(
            fixture.pending(&id).is_some(),
            "still there for the next run"
        );
    }

    #[test]
    fn a_failed_send_waits_in_the_outbox_with_backoff_until_it_succeeds() {
        // Fails twice (500, 503), then succeeds.
        let fixture = Fixture::new(10_000, vec![500, 503]);
        let (kv, clock, receiver) = (&fixture.kv, &fixture.clock, &fixture.receiver);
        let notifier = fixture.notifier();
        let failed_at = clock.now_ms();
        let notification = note(&record(), failed_at);
        let id = notification.webhook_id.clone();
        notifier.deliver(notification).unwrap();
        let pending = fixture.pending(&id).unwrap();
        assert_eq!(pending.attempts, 1);
        assert_eq!(pending.next_attempt_at, failed_at + 1_000);

        // Not due yet: nothing is sent.
        assert_eq!(
            // Each run is a request of its own.
            fixture.notifier().retry_due(u64::MAX).unwrap(),
            OutboxReport {
                sent: 0,
                pending: 1
            }
        );
        assert_eq!(receiver.got.borrow().len(), 1);
        clock.0.set(clock.now_ms() + 1_000);
        assert_eq!(
            // Each run is a request of its own.
            fixture.notifier().retry_due(u64::MAX).unwrap(),
            OutboxReport {
                sent: 0,
                pending: 1
            }
        );
        let pending = fixture.pending(&id).unwrap();
        assert_eq!(pending.attempts, 2);
        assert_eq!(pending.next_attempt_at, clock.now_ms() + 2_000, "doubled");
        clock.0.set(clock.now_ms() + 2_000);
        assert_eq!(
            // Each run is a request of its own.
            fixture.notifier().retry_due(u64::MAX).unwrap(),
            OutboxReport {
                sent: 1,
                pending: 0
            }
        );
        let got = receiver.got.borrow();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].body, got[2].body, "the same message each time");
        assert!(kv.keys().is_empty(), "{:?}", kv.keys());
    }

    /// Delivers the notifications of `count` tasks, `job-0`, `job-1`, ...
    fn deliver_tasks(notifier: &Notifier<'_>, count: usize) {
        for n in 0..count {
            let mut record = record();
            record.external_task_id = Some(format!("job-{n}"));
            notifier.deliver(note(&record, 10_000)).unwrap();
        }
    }

    /// A receiver that refuses some notifications (a 4xx) is up: the others still go,
    /// in the same request, and the refused ones wait in the outbox.
    #[test]
    fn notifications_a_receiver_refuses_do_not_hold_up_the_others() {
        let fixture = Fixture::new(10_000, vec![400, 422, 404, 410, 200, 200]);
        let notifier = fixture.notifier();
        deliver_tasks(&notifier, 6);
        assert_eq!(fixture.receiver.got.borrow().len(), 6, "every one tried");
        assert_eq!(fixture.kv.keys().len(), 4, "the four refused wait");
        // 408 and 429 ask for a later try, as a receiver that is down does.
        let fixture = Fixture::new(10_000, vec![429, 408, 503, 200]);
        deliver_tasks(&fixture.notifier(), 4);
        assert_eq!(fixture.receiver.got.borrow().len(), MAX_FAILURES_IN_A_ROW);
    }

    #[test]
    fn a_dead_receiver_is_tried_three_times_a_request_and_nothing_is_dropped() {
        let fixture = Fixture::new(10_000, vec![500; 10]);
        let notifier = fixture.notifier();
        deliver_tasks(&notifier, 5);
        assert_eq!(
            fixture.receiver.got.borrow().len(),
            MAX_FAILURES_IN_A_ROW,
            "after three failures in a row the rest are only stored"
        );
        assert_eq!(fixture.kv.keys().len(), 5, "every one kept");
        fixture.clock.0.set(fixture.clock.now_ms() + 1_000);
        // The next run tries again, three at most while the receiver stays down.
        let next_run = fixture.notifier();
        assert_eq!(
            next_run.retry_due(u64::MAX).unwrap(),
            OutboxReport {
                sent: 0,
                pending: 5
            }
        );
        assert_eq!(
            fixture.receiver.got.borrow().len(),
            2 * MAX_FAILURES_IN_A_ROW
        );
    }

    /// A receiver down for long fills the outbox; a run reads only the entries it tries,
    /// so a large outbox costs it one listing, not a read of every entry.
    #[test]
    fn a_run_over_a_large_outbox_reads_only_what_it_tries() {
        let fixture = Fixture::new(10_000, vec![500; 300]);
        deliver_tasks(&fixture.notifier(), 200);
        fixture.clock.0.set(fixture.clock.now_ms() + 1_000);
        fixture.kv.round_trips.set(0);
        let report = fixture.notifier().retry_due(u64::MAX).unwrap();
        assert_eq!(
            report,
            OutboxReport {
                sent: 0,
                pending: 200
            }
        );
        let trips = fixture.kv.round_trips.get();
        assert!(trips < 40, "{trips} store round trips for three tries");
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }

    /// The same news from a callback (Kling's JSON byte for byte) and from a poll (the
    /// same JSON re-serialized) gets one id; other outputs get another.
    #[test]
    fn ids_follow_the_typed_outputs_not_the_formatting_of_kling_s_json() {
        use crate::task::{Audio, KlingJson};
        use serde_json::value::RawValue;
        let with = |audio_url: &str, raw: &str| {
            let mut record = record();
            record.more.audios = vec![Audio {
                url_mp3: Some(audio_url.into()),
                ..Audio::default()
            }];
            record.more.kling_result = Some(KlingJson(RawValue::from_string(raw.into()).unwrap()));
            note(&record, 1).webhook_id
        };
        let callback = with(
            "https://a.mp3",
            r#"{ "audios": [ {"url_mp3": "https://a.mp3"} ] }"#,
        );
        let poll = with(
            "https://a.mp3",
            r#"{"audios":[{"url_mp3":"https://a.mp3"}]}"#,
        );
        assert_eq!(callback, poll);
        assert_ne!(callback, with("https://b.mp3", r#"{}"#));
        assert_ne!(callback, note(&record(), 1).webhook_id, "an audio is news");
    }
}
