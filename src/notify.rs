//! Notifications to the next system: when a task or a pipeline changes state, its record
//! is POSTed to `notify_url`, signed with Standard Webhooks headers.
//!
//! - `webhook-id` is deterministic and unique per content: `task_{id}_{status}_{digest}`
//!   (the digest covers what Kling reported: status, message, `updated_at`, outputs) or
//!   `pipeline_{id}_{status}_{step}`, so a receiver deduplicates what at-least-once
//!   delivery repeats (a duplicate callback, a reconcile that finds the same change) and
//!   never drops a real update (a `processing` refresh with new fields).
//! - The body is `{"type": "task.updated" | "pipeline.updated", "timestamp": RFC 3339,
//!   "data": record}`, the record exactly as `GET /tasks/{id}` or `GET /pipelines/{id}`
//!   serves it.
//! - A transactional outbox: every notification is stored (`outbox/{webhook_id}` in the
//!   `index` label, one key each) *before* it is sent, and deleted on the receiver's 2xx.
//!   An instance that stops mid-send loses nothing: each reconcile run sends what is
//!   due, `notify_retry_seconds` after a failure, doubling up to an hour.
//! - A notifier that met [`MAX_FAILURES_IN_A_ROW`] transport failures in a row stops
//!   sending for the rest of its request and only stores, so a dead receiver costs one
//!   timeout per attempt, not one per changed task.

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::config::NotifyConfig;
use crate::outbound::{HttpTransport, OutboundRequest};
use crate::pipeline::progress::PipelineView;
use crate::store::index::Index;
use crate::store::{KeyValue, StoreError, to_json};
use crate::task::TaskRecord;

/// How long one send may take.
pub const SEND_TIMEOUT_MS: u64 = 5_000;
/// The longest wait between two attempts.
pub const MAX_BACKOFF_MS: u64 = 60 * 60 * 1000;
/// Sends one reconcile run attempts at most, so a slow receiver cannot stall it.
pub const MAX_SENDS_PER_RUN: usize = 50;
/// Failures in a row after which a run stops trying: the receiver is down, and each
/// attempt would wait out the send timeout.
pub const MAX_FAILURES_IN_A_ROW: usize = 3;

/// One message, as signed and sent (its body is fixed when the change happens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub webhook_id: String,
    pub body: String,
}

impl Notification {
    pub fn task(record: &TaskRecord, now_ms: u64) -> Self {
        let id = match (&record.external_task_id, &record.task_id) {
            (Some(external), _) => external.clone(),
            (None, Some(task_id)) => format!("kling-{task_id}"),
            (None, None) => "unknown".into(),
        };
        Self::new(
            format!(
                "task_{id}_{}_{}",
                record.status.as_str(),
                content_digest(record)
            ),
            "task.updated",
            record,
            now_ms,
        )
    }

    pub fn pipeline(view: &PipelineView, now_ms: u64) -> Self {
        Self::new(
            format!(
                "pipeline_{}_{}_{}",
                view.id,
                view.status.as_str(),
                view.current_step
            ),
            "pipeline.updated",
            view,
            now_ms,
        )
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
        }
    }
}

/// 16 hex digits of SHA-256 over what Kling reported of a task (not our counters, which
/// differ between the callback and the reconciler finding the same news).
fn content_digest(record: &TaskRecord) -> String {
    let content = json!([
        record.status.as_str(),
        record.status_msg,
        record.updated_at,
        record.videos,
        record.images,
        record.final_unit_deduction,
    ]);
    let digest = Sha256::digest(content.to_string().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
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
        }
    }

    /// Stores the notification in the outbox, then sends it, and deletes it on a 2xx.
    /// An error means it could not be stored (nothing was sent then).
    pub fn deliver(&self, notification: Notification) -> Result<(), StoreError> {
        let pending = Pending {
            notification,
            attempts: 0,
            next_attempt_at: self.clock.now_ms(),
        };
        Index::outbox(self.kv).put(&pending.notification.webhook_id, &to_json(&pending))?;
        self.attempt(pending)?;
        Ok(())
    }

    /// Sends one stored notification unless the receiver is down; removes it on a 2xx,
    /// else stores when to try again. Returns whether it was sent.
    fn attempt(&self, mut pending: Pending) -> Result<bool, StoreError> {
        if self.receiver_down() {
            return Ok(false);
        }
        let outbox = Index::outbox(self.kv);
        let id = pending.notification.webhook_id.clone();
        if self.send(&pending.notification).is_ok() {
            self.failures_in_a_row.set(0);
            // Sent: a failed removal only means it is sent once more (same id).
            if let Err(error) = outbox.remove(&id) {
                eprintln!("notification {id} was sent but stays in the outbox: {error}");
            }
            return Ok(true);
        }
        self.failures_in_a_row.set(self.failures_in_a_row.get() + 1);
        pending.attempts += 1;
        pending.next_attempt_at = self
            .clock
            .now_ms()
            .saturating_add(self.backoff_ms(pending.attempts));
        outbox.put(&id, &to_json(&pending))?;
        Ok(false)
    }

    fn receiver_down(&self) -> bool {
        self.failures_in_a_row.get() >= MAX_FAILURES_IN_A_ROW
    }

    /// Sends every notification in the outbox that is due, at most
    /// [`MAX_SENDS_PER_RUN`], none once the receiver is down, and none after
    /// `deadline_ms` (the run's budget).
    pub fn retry_due(&self, deadline_ms: u64) -> Result<OutboxReport, StoreError> {
        let outbox = Index::outbox(self.kv);
        let now = self.clock.now_ms();
        let mut report = OutboxReport::default();
        let mut attempts = 0;
        for id in outbox.entries()? {
            // Removed since the listing (sent by another run), or not ours: skip.
            let Some(pending) = outbox
                .value(&id)?
                .and_then(|bytes| serde_json::from_slice::<Pending>(&bytes).ok())
            else {
                continue;
            };
            if pending.next_attempt_at > now
                || attempts == MAX_SENDS_PER_RUN
                || self.receiver_down()
                || self.clock.now_ms() >= deadline_ms
            {
                report.pending += 1;
                continue;
            }
            attempts += 1;
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

    fn send(&self, notification: &Notification) -> Result<(), String> {
        let timestamp = i64::try_from(self.clock.now_ms() / 1000).unwrap_or(i64::MAX);
        let body = notification.body.as_bytes();
        let signature = self
            .config
            .secret
            .sign(&notification.webhook_id, timestamp, body);
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
            .map_err(|e| e.to_string())?;
        if (200..300).contains(&response.status) {
            Ok(())
        } else {
            Err(format!("the receiver answered HTTP {}", response.status))
        }
    }
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
    use crate::task::TaskStatus;
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
                    secret: WebhookSecret::parse(WHSEC).unwrap(),
                    retry_after_ms: 1_000,
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
    }

    fn record() -> TaskRecord {
        serde_json::from_value(json!({
            "task_id": "86", "external_task_id": "job-1", "status": "succeed",
            "status_msg": "", "videos": [], "images": [], "created_at": null,
            "updated_at": null, "deliveries": 1, "last_delivery_at": null
        }))
        .unwrap()
    }

    #[test]
    fn a_notification_is_signed_with_a_deterministic_id() {
        let fixture = Fixture::new(1_781_080_794_000, vec![]);
        let (kv, clock, receiver) = (&fixture.kv, &fixture.clock, &fixture.receiver);
        fixture
            .notifier()
            .deliver(Notification::task(&record(), clock.now_ms()))
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
        assert!(kv.keys().is_empty(), "a sent notification leaves nothing");
    }

    #[test]
    fn webhook_ids_are_unique_per_content_not_per_counter() {
        let id = |record: &TaskRecord| Notification::task(record, 0).webhook_id;
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
        let notification = Notification::task(&record(), 10_000);
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
        let notification = Notification::task(&record(), failed_at);
        let id = notification.webhook_id.clone();
        notifier.deliver(notification).unwrap();
        let pending = fixture.pending(&id).unwrap();
        assert_eq!(pending.attempts, 1);
        assert_eq!(pending.next_attempt_at, failed_at + 1_000);

        // Not due yet: nothing is sent.
        assert_eq!(
            notifier.retry_due(u64::MAX).unwrap(),
            OutboxReport {
                sent: 0,
                pending: 1
            }
        );
        assert_eq!(receiver.got.borrow().len(), 1);
        clock.0.set(clock.now_ms() + 1_000);
        assert_eq!(
            notifier.retry_due(u64::MAX).unwrap(),
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
            notifier.retry_due(u64::MAX).unwrap(),
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

    #[test]
    fn a_dead_receiver_is_tried_three_times_a_request_and_nothing_is_dropped() {
        let fixture = Fixture::new(10_000, vec![500; 10]);
        let notifier = fixture.notifier();
        for n in 0..5 {
            let mut record = record();
            record.external_task_id = Some(format!("job-{n}"));
            notifier
                .deliver(Notification::task(&record, 10_000))
                .unwrap();
        }
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

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }
}
