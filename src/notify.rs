//! Notifications to the next system: when a task or a pipeline changes state, its record
//! is POSTed to `notify_url`, signed with Standard Webhooks headers.
//!
//! - `webhook-id` is deterministic: `task_{id}_{status}` or
//!   `pipeline_{id}_{status}_{step}`, so a receiver deduplicates what at-least-once
//!   delivery repeats (a duplicate callback, a reconcile that finds the same change).
//! - The body is `{"type": "task.updated" | "pipeline.updated", "timestamp": RFC 3339,
//!   "data": record}`, the record exactly as `GET /tasks/{id}` or `GET /pipelines/{id}`
//!   serves it.
//! - Sends happen after Kling has its acknowledgement. One that fails is kept in the
//!   outbox (`outbox:{webhook_id}`, indexed like pending tasks) and retried by each
//!   reconcile run once due: `notify_retry_seconds` after the first failure, doubling up
//!   to an hour, until the receiver answers 2xx. Nothing is dropped.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock::Clock;
use crate::config::NotifyConfig;
use crate::outbound::{HttpTransport, OutboundRequest};
use crate::pipeline::progress::PipelineView;
use crate::store::layout::outbox_key;
use crate::store::pending::PendingIndex;
use crate::store::{KeyValue, StoreError, get_json, to_json};
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
            format!("task_{id}_{}", record.status.as_str()),
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
    pub config: &'a NotifyConfig,
    pub kv: &'a dyn KeyValue,
    pub transport: &'a dyn HttpTransport,
    pub clock: &'a dyn Clock,
}

impl Notifier<'_> {
    /// Sends now; a failed send goes to the outbox. An error means the outbox could not
    /// be written either.
    pub fn deliver(&self, notification: Notification) -> Result<(), StoreError> {
        if self.send(&notification).is_ok() {
            return Ok(());
        }
        let pending = Pending {
            notification,
            attempts: 1,
            next_attempt_at: self.clock.now_ms() + self.backoff_ms(1),
        };
        let id = &pending.notification.webhook_id;
        self.kv.set(&outbox_key(id), &to_json(&pending))?;
        PendingIndex::outbox(self.kv, self.clock).add(id)
    }

    /// Retries every notification in the outbox that is due.
    pub fn retry_due(&self) -> Result<OutboxReport, StoreError> {
        let index = PendingIndex::outbox(self.kv, self.clock);
        let now = self.clock.now_ms();
        let mut report = OutboxReport::default();
        let mut done = Vec::new();
        let (mut attempts, mut failures_in_a_row) = (0, 0);
        for id in index.read()? {
            let Some(mut pending) = get_json::<Pending>(self.kv, &outbox_key(&id))? else {
                done.push(id);
                continue;
            };
            if pending.next_attempt_at > now {
                continue;
            }
            if attempts == MAX_SENDS_PER_RUN || failures_in_a_row == MAX_FAILURES_IN_A_ROW {
                break;
            }
            attempts += 1;
            if self.send(&pending.notification).is_ok() {
                self.kv.delete(&outbox_key(&id))?;
                report.sent += 1;
                failures_in_a_row = 0;
                done.push(id);
            } else {
                pending.attempts += 1;
                pending.next_attempt_at = now + self.backoff_ms(pending.attempts);
                self.kv.set(&outbox_key(&id), &to_json(&pending))?;
                failures_in_a_row += 1;
            }
        }
        report.pending = index.remove(&done)?;
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
            Notifier {
                config: &self.config,
                kv: &self.kv,
                transport: &self.receiver,
                clock: &self.clock,
            }
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
        assert_eq!(header("webhook-id"), Some("task_job-1_succeed"));
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
    fn a_failed_send_waits_in_the_outbox_with_backoff_until_it_succeeds() {
        // Fails twice (500, 503), then succeeds.
        let fixture = Fixture::new(10_000, vec![500, 503]);
        let (kv, clock, receiver) = (&fixture.kv, &fixture.clock, &fixture.receiver);
        let notifier = fixture.notifier();
        let failed_at = clock.now_ms();
        notifier
            .deliver(Notification::task(&record(), failed_at))
            .unwrap();
        let pending: Pending = get_json(kv, "outbox:task_job-1_succeed").unwrap().unwrap();
        assert_eq!(pending.attempts, 1);
        assert_eq!(pending.next_attempt_at, failed_at + 1_000);
        // Adding to the outbox index waited out its lease (the clock moved on).
        clock.0.set(failed_at);

        // Not due yet: nothing is sent.
        assert_eq!(
            notifier.retry_due().unwrap(),
            OutboxReport {
                sent: 0,
                pending: 1
            }
        );
        assert_eq!(receiver.got.borrow().len(), 1);
        clock.0.set(clock.now_ms() + 1_000);
        assert_eq!(
            notifier.retry_due().unwrap(),
            OutboxReport {
                sent: 0,
                pending: 1
            }
        );
        let pending: Pending = get_json(kv, "outbox:task_job-1_succeed").unwrap().unwrap();
        assert_eq!(pending.attempts, 2);
        assert_eq!(pending.next_attempt_at, clock.now_ms() + 2_000, "doubled");
        clock.0.set(clock.now_ms() + 2_000);
        assert_eq!(
            notifier.retry_due().unwrap(),
            OutboxReport {
                sent: 1,
                pending: 0
            }
        );
        let got = receiver.got.borrow();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].body, got[2].body, "the same message each time");
        assert!(kv.get("outbox:task_job-1_succeed").unwrap().is_none());
    }

    #[test]
    fn a_run_stops_after_three_failures_in_a_row() {
        let fixture = Fixture::new(10_000, vec![500; 10]);
        let notifier = fixture.notifier();
        for n in 0..5 {
            let mut record = record();
            record.external_task_id = Some(format!("job-{n}"));
            notifier
                .deliver(Notification::task(&record, 10_000))
                .unwrap();
        }
        assert_eq!(fixture.receiver.got.borrow().len(), 5, "each tried once");
        fixture.clock.0.set(fixture.clock.now_ms() + 1_000);
        assert_eq!(
            notifier.retry_due().unwrap(),
            OutboxReport {
                sent: 0,
                pending: 5
            }
        );
        assert_eq!(
            fixture.receiver.got.borrow().len(),
            5 + MAX_FAILURES_IN_A_ROW,
            "the receiver is down: the run gave up after three"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }
}
