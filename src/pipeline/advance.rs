//! Advancing a pipeline: when a step's task has succeeded, submit the next step; when
//! Kling refuses a step, fail the pipeline. Called by the work after a callback's
//! acknowledgement and by the reconciler, never by a client.
//!
//! Exactly one Kling task per step, whatever the callbacks do: a step is submitted with
//! the `external_task_id` `{pipeline}-{step}`, so a second advance for the same step
//! (a duplicate callback, a concurrent replica, the reconciler) finds the first task, and
//! Kling itself refuses a second create of that id.

use crate::api::submit::{SubmitError, SubmitRequest, Submitted, submit};
use crate::clock::Clock;
use crate::config::SubmitConfig;
use crate::error::ApiError;
use crate::kling::catalog::TaskKind;
use crate::outbound::HttpTransport;
use crate::pipeline::progress::{self, Next, PipelineFailure, PipelineView, step_external_id};
use crate::pipeline::spec::{PipelineSpec, SpecError, request_for};
use crate::store::layout::TaskKey;
use crate::store::pipelines::PipelineStore;
use crate::store::tasks::TaskStore;
use crate::store::{KeyValue, StoreError};
use crate::task::{StepRef, TaskStatus};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Submitting a step failed; at creation, nothing was kept.
    #[error("step {step}: {error}")]
    Step { step: usize, error: SubmitError },
    /// A step's request could not be built from the previous step's result.
    #[error("step {step}: {message}")]
    Input { step: usize, message: String },
    /// A create under an id whose stored pipeline has other steps: an id (or
    /// `Idempotency-Key`) names one pipeline, as an `external_task_id` names one task.
    #[error("pipeline `{0}` was created with other steps")]
    IdempotencyConflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where submits happen: the same configuration, store, transport and clock as a task
/// submit.
pub struct Submitter<'a> {
    pub config: &'a SubmitConfig,
    pub kv: &'a dyn KeyValue,
    pub transport: &'a dyn HttpTransport,
    pub clock: &'a dyn Clock,
    /// 128 random bits, URL-safe: pipeline ids, generations, submit nonces.
    pub new_id: &'a dyn Fn() -> String,
}

#[cfg(test)]
impl<'a> Submitter<'a> {
    /// A submitter for unit tests, whose every new id (pipeline generation, nonce) is `g`.
    pub fn for_tests(
        config: &'a SubmitConfig,
        kv: &'a dyn KeyValue,
        transport: &'a dyn HttpTransport,
        clock: &'a dyn Clock,
    ) -> Self {
        fn same_id() -> String {
            "g".to_string()
        }
        Self {
            config,
            kv,
            transport,
            clock,
            new_id: &same_id,
        }
    }
}

/// A pipeline after [`advance`].
#[derive(Debug)]
pub struct Advanced {
    pub view: PipelineView,
    /// Whether this call submitted a step or failed the pipeline.
    pub changed: bool,
}

/// Moves a pipeline on if it can: submits the step after one that succeeded, or fails
/// the pipeline when Kling refuses that step's request (parameters or content) or the
/// previous result lacks an input. Other errors (auth, balance, rate limits, Kling or the
/// store unavailable) are returned and leave it as it was, for the reconciler to retry.
/// `None` for an unknown pipeline.
pub fn advance(id: &str, submitter: &Submitter<'_>) -> Result<Option<Advanced>, PipelineError> {
    advance_if(id, submitter, Submitting::Allowed)
}

/// Whether [`advance_if`] may submit a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitting {
    Allowed,
    /// Kling asked the caller to back off (1302, 1303): a pipeline with a step to
    /// submit is left as it is, and every other is judged as usual.
    BackingOff,
}

/// [`advance`], submitting nothing while `submitting` is [`Submitting::BackingOff`].
pub fn advance_if(
    id: &str,
    submitter: &Submitter<'_>,
    submitting: Submitting,
) -> Result<Option<Advanced>, PipelineError> {
    let store = PipelineStore::new(submitter.kv);
    let Some(spec) = store.spec(id)? else {
        return Ok(None);
    };
    let view = store.view_of(&spec)?;
    let step = match view.next() {
        Next::Submit(step) if submitting == Submitting::Allowed => step,
        next => {
            if next == Next::Wait {
                keep_a_submitting_step_pending(&spec, &view, submitter)?;
            }
            return Ok(Some(Advanced {
                view,
                changed: false,
            }));
        }
    };
    // A pipeline with a step to submit is indexed first, whoever moves it on: one that
    // a run released as finished (a step given up as `lost` that Kling then finished)
    // is running again, and if this submit fails the reconciler must retry it.
    store.index(&spec)?;
    // The steps before this one, as just read; this step's outcome completes the view.
    let mut tasks: Vec<_> = view.steps[..step].iter().map(|s| s.task.clone()).collect();
    let failure = match submit_step(&spec, Some(&view), step, submitter) {
        Ok(submitted) => {
            tasks.push(Some(submitted.record));
            None
        }
        Err(StepError::Input(message)) => Some(PipelineFailure {
            step,
            code: "input_missing".into(),
            message,
        }),
        // The step's external id names a task submitted otherwise (by a client, or by
        // another pipeline of the same id): never adopt it.
        Err(StepError::Submit(SubmitError::IdempotencyConflict)) => Some(PipelineFailure {
            step,
            code: "idempotency_conflict".into(),
            message: format!(
                "{} is already a task submitted with another request",
                step_external_id(id, step)
            ),
        }),
        // The request built from the earlier steps' results is not one the kind takes
        // (a source that is an object where a URL belongs, an empty or too long text):
        // the same results build the same request on every retry. Or Kling holds the
        // step's id from an earlier pipeline of this id: it refuses every retry too.
        Err(StepError::Submit(
            error @ (SubmitError::InvalidRequest(_) | SubmitError::ExternalIdTaken),
        )) => {
            let error = ApiError::from(error);
            Some(PipelineFailure {
                step,
                code: error.status_and_code().1.into(),
                message: error.message(),
            })
        }
        Err(StepError::Submit(SubmitError::Kling(error))) if error.is_request_refused() => {
            // A concurrent advance of the same step may have created its task, and this
            // refusal be Kling's duplicate-id answer in words we do not recognise: a
            // step whose task is there is running, not refused.
            let key = TaskKey::external(&step_external_id(id, step));
            if TaskStore::new(submitter.kv).find_by_key(&key)?.is_some() {
                return Ok(Some(Advanced {
                    view: store.view_of(&spec)?,
                    changed: false,
                }));
            }
            // Kling refused the request itself: retrying cannot help. Anything else
            // (keys, balance, rate, Kling down) is left for the reconciler to retry.
            let error = ApiError::from(SubmitError::Kling(error));
            Some(PipelineFailure {
                step,
                code: error.status_and_code().1.into(),
                message: error.message(),
            })
        }
        // The store down, not the step: never counted against the step's 30 days.
        Err(StepError::Submit(SubmitError::Store(error @ StoreError::Unavailable(_)))) => {
            return Err(error.into());
        }
        Err(StepError::Submit(error)) => return Err(PipelineError::Step { step, error }),
    };
    if let Some(failure) = &failure {
        store.fail(id, failure)?;
    }
    Ok(Some(Advanced {
        view: progress::view(&spec, &tasks, failure),
        changed: true,
    }))
}

/// Makes sure the running step is pending if its create has not come back (its task
/// `submitting`) and no reconcile run has polled it yet. A submit cut short between
/// writing its head and its pending entry leaves a task no run looks at; a client's
/// retry stores the entry again, but nobody retries a step, so the pipeline would wait
/// on it for ever. The entry is the submit's own (same name, same value): where it is
/// already, nothing new is written. Once a run has polled the task (its poll record),
/// the run has moved its entry along, and writing the first name again would only add a
/// spare for the next run to fold.
fn keep_a_submitting_step_pending(
    spec: &PipelineSpec,
    view: &PipelineView,
    submitter: &Submitter<'_>,
) -> Result<(), StoreError> {
    let step = view.current_step;
    let submitting = view
        .steps
        .get(step)
        .and_then(|s| s.task.as_ref())
        .is_some_and(|task| task.status == TaskStatus::Submitting);
    if !submitting {
        return Ok(());
    }
    let key = TaskKey::external(&step_external_id(&spec.id, step));
    let tasks = TaskStore::new(submitter.kv);
    if tasks.poll_state(&key)?.is_some() {
        return Ok(());
    }
    if let Some(submission) = tasks.live_head(&key)?.and_then(|head| head.submission) {
        tasks.ensure_pending(&key, &submission, submitter.config.stale_after_ms)?;
    }
    Ok(())
}

pub(crate) enum StepError {
    Input(String),
    Submit(SubmitError),
}

pub(crate) fn submit_step(
    spec: &PipelineSpec,
    view: Option<&PipelineView>,
    step: usize,
    submitter: &Submitter<'_>,
) -> Result<Submitted, StepError> {
    let step_spec = &spec.steps[step];
    let task = |n: usize| view.and_then(|v| v.task(n));
    let request =
        request_for(step_spec, step, &task).map_err(|e| StepError::Input(e.to_string()))?;
    let body = serde_json::to_vec(&request).map_err(|e| StepError::Input(e.to_string()))?;
    let external_task_id = step_external_id(&spec.id, step);
    let kind = TaskKind::from_name(&step_spec.kind)
        .ok_or_else(|| StepError::Input(format!("unknown kind {}", step_spec.kind)))?;
    let pipeline = StepRef {
        pipeline_id: spec.id.clone(),
        step,
    };
    submit(
        &SubmitRequest {
            kind,
            body: &body,
            idempotency_key: Some(&external_task_id),
            pipeline: Some(&pipeline),
        },
        submitter.config,
        submitter.kv,
        submitter.transport,
        submitter.clock,
        // The idempotency key names the id; this only draws the submit's nonce.
        submitter.new_id,
    )
    .map_err(StepError::Submit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pipelines::{NewPipeline, create, get};
    use crate::clock::manual::ManualClock;
    use crate::config::tests::submit_config;
    use crate::outbound::scripted::Scripted;
    use crate::pipeline::progress::PipelineStatus;
    use crate::pipeline::spec::parse_description;
    use crate::store::index::Index;
    use crate::store::layout::PIPELINES_PREFIX;
    use crate::store::layout::TaskKey;
    use crate::store::memory::{Between, MemoryKv};
    use crate::store::tasks::TaskStore;
    use crate::task::{EventSource, StepRef, TaskEvent, TaskStatus, Video};
    use std::cell::Cell;

    const CREATED: &str =
        r#"{"code":0,"message":"SUCCEED","data":{"task_id":"86","task_status":"submitted"}}"#;

    /// A two-step pipeline (text2video, then video-extend) whose step 0 has succeeded.
    fn step_0_succeeded(kv: &MemoryKv, clock: &ManualClock) {
        step_0_succeeded_of(
            kv,
            clock,
            br#"{"steps":[{"kind":"text2video","request":{"prompt":"a"}},
                          {"kind":"video-extend","request":{"prompt":"b"}}]}"#,
        );
    }

    /// Pipeline `p` of `description`, whose step 0 (Kling task 86) has succeeded with
    /// video `v-86`.
    fn step_0_succeeded_of(kv: &MemoryKv, clock: &ManualClock, description: &[u8]) {
        let (_, steps) = parse_description(description).unwrap();
        let config = submit_config();
        let kling = Scripted::new(vec![Ok((200, CREATED))]);
        let submitter = Submitter::for_tests(&config, kv, &kling, clock);
        let new = NewPipeline {
            id: Some("p".into()),
            steps,
            idempotency_key: None,
        };
        assert!(create(new, &submitter).unwrap().created);
        let done = TaskEvent {
            task_id: "86".into(),
            status: TaskStatus::Succeed,
            status_msg: String::new(),
            external_task_id: Some("p-0".into()),
            created_at: None,
            updated_at: Some(5),
            videos: vec![Video {
                id: Some("v-86".into()),
                url: Some("https://cdn.example/v.mp4".into()),
                ..Video::default()
            }],
            images: Vec::new(),
            more: Default::default(),
            final_unit_deduction: None,
            source: EventSource::Callback,
        };
        let key = TaskKey::external("p-0");
        let (_, books) = TaskStore::new(kv).record_event(&key, &done, 6).unwrap();
        books.apply(kv).unwrap();
    }

    fn advance_with(
        kv: &MemoryKv,
        clock: &ManualClock,
        answer: (u16, &str),
    ) -> Result<Option<Advanced>, PipelineError> {
        let config = submit_config();
        let kling = Scripted::new(vec![Ok(answer)]);
        let submitter = Submitter::for_tests(&config, kv, &kling, clock);
        let advanced = advance("p", &submitter);
        let sent: serde_json::Value = serde_json::from_slice(&kling.sent.borrow()[0].body).unwrap();
        assert_eq!(sent["video_id"], "v-86", "step 1 takes step 0's video");
        assert_eq!(sent["external_task_id"], "p-1");
        advanced
    }

    /// The advance that submitted step 1 stopped between its head and its pending entry
    /// (and before Kling was called): the next advance (a reconcile run's) stores the
    /// entry, so the reconciler asks Kling about the step and it cannot wait for ever.
    #[test]
    fn a_step_whose_submit_stopped_before_its_pending_entry_is_made_pending() {
        let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
        step_0_succeeded(&kv, &clock);
        let config = submit_config();
        let silent = Scripted::new(vec![Err(crate::outbound::TransportError::Timeout); 2]);
        let submitter = Submitter::for_tests(&config, &kv, &silent, &clock);
        advance("p", &submitter).unwrap();
        let pending = || Index::pending(&kv).entries().unwrap();
        let step_1: Vec<String> = pending()
            .into_iter()
            .filter(|e| e.ends_with("/p-1"))
            .collect();
        assert_eq!(step_1.len(), 1, "{:?}", pending());
        kv.delete(&format!("pending/{}", step_1[0])).unwrap();

        let kling = Scripted::new(Vec::new());
        let submitter = Submitter::for_tests(&config, &kv, &kling, &clock);
        let advanced = advance("p", &submitter).unwrap().unwrap();
        assert_eq!(advanced.view.next(), Next::Wait);
        assert!(
            kling.sent.borrow().is_empty(),
            "Kling is not asked to create it again"
        );
        let again: Vec<String> = pending()
            .into_iter()
            .filter(|e| e.ends_with("/p-1"))
            .collect();
        assert_eq!(again, step_1, "the submit's own entry");

        // Once a run has polled it, the run moves its entry along: nothing is added.
        kv.delete(&format!("pending/{}", step_1[0])).unwrap();
        let polled = crate::ledger::PollState {
            polls: 1,
            last_polled_at: 1_000,
            next_poll_at: 60_000,
            last_outcome: "not_created_yet".into(),
            ..Default::default()
        };
        TaskStore::new(&kv)
            .save_poll_state(&TaskKey::external("p-1"), &polled)
            .unwrap();
        advance("p", &submitter).unwrap();
        assert!(
            pending().iter().all(|e| !e.ends_with("/p-1")),
            "{:?}",
            pending()
        );
    }

    #[test]
    fn a_pipeline_moved_on_after_a_run_released_it_is_indexed_again() {
        let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
        step_0_succeeded(&kv, &clock);
        // Step 0 had been given up as lost, so a run released the pipeline as failed;
        // Kling's succeed came later, and the next step cannot be submitted yet.
        let index = Index::pipelines(&kv);
        for entry in index.entries().unwrap() {
            index.remove(&entry).unwrap();
        }
        let error = advance_with(&kv, &clock, (500, r#"{"code":5000,"message":"down"}"#));
        assert!(
            matches!(error, Err(PipelineError::Step { step: 1, .. })),
            "{error:?}"
        );
        assert_eq!(
            index.entries().unwrap(),
            ["p/g"],
            "the reconciler will retry it"
        );
    }

    #[test]
    fn a_step_request_its_kind_does_not_take_fails_the_pipeline_before_kling_is_asked() {
        let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
        // Step 1's image is step 0's whole video object: fine as a path up front (the
        // check fills it with a stand-in string), not a URL once filled.
        step_0_succeeded_of(
            &kv,
            &clock,
            br#"{"steps":[{"kind":"text2video","request":{"prompt":"a"}},
                          {"kind":"image2video","request":{},"inputs":{"image":"videos.0"}}]}"#,
        );
        let config = submit_config();
        let kling = Scripted::new(vec![]);
        let submitter = Submitter::for_tests(&config, &kv, &kling, &clock);
        let failed = advance("p", &submitter).unwrap().unwrap();
        assert!(failed.changed);
        assert_eq!(failed.view.status, PipelineStatus::Failed);
        let error = failed.view.error.unwrap();
        assert_eq!((error.step, error.code.as_str()), (1, "invalid_request"));
        assert!(error.message.contains("image"), "{}", error.message);
        assert!(kling.sent.borrow().is_empty(), "step 1 never reached Kling");
        let stored = get("p", &kv).unwrap().unwrap();
        assert_eq!(stored.status, PipelineStatus::Failed, "and it stays failed");
    }

    /// Another advance's submit of step 1 of `p`, bound to Kling task 87 by its create
    /// answer; `recorded`: its `submitting` record was stored first (else the answer
    /// finds the head gone and stores it whole).
    fn other_advance_submits_step_1(kv: &MemoryKv, recorded: bool) {
        let key = TaskKey::external("p-1");
        let step = StepRef {
            pipeline_id: "p".into(),
            step: 1,
        };
        let winner = crate::store::tasks::NewSubmission {
            key: &key,
            external_task_id: "p-1",
            kind: "video-extend",
            pipeline: Some(&step),
            nonce: "winner",
            now_ms: 1_000,
            first_due_ms: 1_000,
            body_digest: None,
            first_submitted_at: None,
        };
        let store = TaskStore::new(kv);
        if recorded {
            store.record_submission(&winner).unwrap();
        }
        store.bind_submission(&key, "87", Some(&winner)).unwrap();
    }

    /// Kling as a concurrent advance of the same step leaves it: that advance's create
    /// lands while ours is on its way, and ours is refused in words we do not read as
    /// "duplicate", while the lookup does not list the winner's task yet.
    struct RacedByAnotherAdvance<'a> {
        kv: &'a MemoryKv,
        sent: Cell<usize>,
    }

    impl HttpTransport for RacedByAnotherAdvance<'_> {
        fn send(
            &self,
            _: crate::outbound::OutboundRequest,
        ) -> Result<crate::outbound::OutboundResponse, crate::outbound::TransportError> {
            let n = self.sent.get();
            self.sent.set(n + 1);
            let (status, body) = if n == 0 {
                other_advance_submits_step_1(self.kv, true);
                (400, r#"{"code":1201,"message":"task id conflict"}"#)
            } else {
                (404, r#"{"code":1203,"message":"task not found"}"#)
            };
            Ok(crate::outbound::OutboundResponse {
                status,
                body: body.as_bytes().to_vec(),
            })
        }
    }

    #[test]
    fn a_refusal_while_another_advance_created_the_step_does_not_fail_the_pipeline() {
        let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
        step_0_succeeded(&kv, &clock);
        let config = submit_config();
        let kling = RacedByAnotherAdvance {
            kv: &kv,
            sent: Cell::new(0),
        };
        let submitter = Submitter::for_tests(&config, &kv, &kling, &clock);
        let advanced = advance("p", &submitter).unwrap().unwrap();
        assert!(!advanced.changed);
        assert_eq!(advanced.view.status, PipelineStatus::Running);
        assert_eq!(
            advanced.view.task(1).and_then(|t| t.task_id.as_deref()),
            Some("87"),
            "the winner's task is the step's"
        );
        let stored = get("p", &kv).unwrap().unwrap();
        assert_eq!(
            (stored.status, stored.error),
            (PipelineStatus::Running, None)
        );
    }

    /// Pipeline `p` whose step 1 our advance found refused while another advance's
    /// create of it is on its way at Kling: both advances found no task, and ours (whose
    /// record the head holds) is refused with no task listed yet, so ours is given up
    /// and the refusal stored. The pipeline reads failed.
    fn step_1_refused_while_another_create_is_on_its_way(kv: &MemoryKv, clock: &ManualClock) {
        step_0_succeeded(kv, clock);
        let kling = Scripted::new(vec![
            Ok((400, r#"{"code":1201,"message":"task id conflict"}"#)),
            Ok((404, r#"{"code":1203,"message":"task not found"}"#)),
        ]);
        let config = submit_config();
        let submitter = Submitter::for_tests(&config, kv, &kling, clock);
        let refused = advance("p", &submitter).unwrap().unwrap();
        assert_eq!(refused.view.status, PipelineStatus::Failed);
    }

    #[test]
    fn a_refusal_stored_before_another_advance_s_create_answered_is_outranked_by_its_task() {
        let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
        step_1_refused_while_another_create_is_on_its_way(&kv, &clock);
        // The other's create answer comes: its task is the step's.
        other_advance_submits_step_1(&kv, false);
        let view = get("p", &kv).unwrap().unwrap();
        assert_eq!((view.status, view.error), (PipelineStatus::Running, None));
        assert_eq!(view.current_step, 1);
        // Tracked again, even if a run let it go as failed in between.
        let index = Index::pipelines(&kv);
        for entry in index.entries().unwrap() {
            index.remove(&entry).unwrap();
        }
        kv.delete("task:p-1").unwrap();
        other_advance_submits_step_1(&kv, false);
        assert_eq!(index.entries().unwrap(), ["p/g"]);
    }

    #[test]
    fn a_run_letting_a_pipeline_go_as_its_step_s_create_answers_keeps_it() {
        let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
        step_1_refused_while_another_create_is_on_its_way(&kv, &clock);
        let config = submit_config();
        // A run lets it go; just before its remove, the other advance's create answers,
        // and its binding adds the very entry the remove takes.
        let entry = format!("{PIPELINES_PREFIX}p/g");
        let run = Between::new(&kv).before("delete", entry, || {
            other_advance_submits_step_1(&kv, false);
        });
        let idle = Scripted::new(vec![]);
        let submitter = Submitter::for_tests(&config, &run, &idle, &clock);
        let mut report = crate::reconcile::ReconcileReport::default();
        crate::reconcile::reconcile_pipelines(&submitter, None, u64::MAX, &mut report).unwrap();
        assert_eq!(
            get("p", &kv).unwrap().unwrap().status,
            PipelineStatus::Running
        );
        assert_eq!(
            Index::pipelines(&kv).entries().unwrap(),
            ["p/g"],
            "still tracked"
        );
    }

    #[test]
    fn only_a_refused_request_fails_the_pipeline_other_errors_wait_for_the_reconciler() {
        let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(1_000)));
        step_0_succeeded(&kv, &clock);
        for (http, code) in [
            (402, 1102),
            (401, 1004),
            (429, 1303),
            (500, 5000),
            (503, 5001),
        ] {
            let body = format!(r#"{{"code":{code},"message":"no"}}"#);
            let error = advance_with(&kv, &clock, (http, &body)).unwrap_err();
            assert!(
                matches!(error, PipelineError::Step { step: 1, .. }),
                "{code}: {error:?}"
            );
            let view = get("p", &kv).unwrap().unwrap();
            assert_eq!(
                (view.status, view.error),
                (PipelineStatus::Running, None),
                "{code}"
            );
        }
        let refused = advance_with(&kv, &clock, (400, r#"{"code":1301,"message":"unsafe"}"#))
            .unwrap()
            .unwrap();
        assert!(refused.changed);
        assert_eq!(refused.view.status, PipelineStatus::Failed);
        let error = refused.view.error.unwrap();
        assert_eq!(
            (error.step, error.code.as_str()),
            (1, "kling_content_rejected")
        );
    }

    /// Kling holds step 1's id from an earlier pipeline of this id (created before this
    /// pipeline's first submission of it): every retry would be refused, so the
    /// pipeline fails, naming why, and the old task is not taken for the step.
    #[test]
    fn a_step_id_kling_holds_from_an_earlier_pipeline_fails_the_pipeline() {
        const DAY: u64 = 86_400_000;
        let (kv, clock) = (MemoryKv::default(), ManualClock(Cell::new(40 * DAY)));
        step_0_succeeded(&kv, &clock);
        let old = format!(
            r#"{{"code":0,"data":{{"task_id":"77","task_status":"succeed","created_at":{},"task_info":{{"external_task_id":"p-1"}}}}}}"#,
            10 * DAY
        );
        let config = submit_config();
        let kling = Scripted::new(vec![
            Ok((
                400,
                r#"{"code":1201,"message":"external_task_id already exists"}"#,
            )),
            Ok((200, old.as_str())),
        ]);
        let submitter = Submitter::for_tests(&config, &kv, &kling, &clock);
        let failed = advance("p", &submitter).unwrap().unwrap();
        assert_eq!(failed.view.status, PipelineStatus::Failed);
        let error = failed.view.error.unwrap();
        assert_eq!(
            (error.step, error.code.as_str()),
            (1, "external_task_id_taken")
        );
        assert!(TaskStore::new(&kv).find("77").unwrap().is_none());
    }
}
