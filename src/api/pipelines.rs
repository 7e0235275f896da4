//! `POST /pipelines` (create and submit step 0) and `GET /pipelines/{id}`. Moving a
//! pipeline on is [`crate::pipeline::advance`].

use crate::api::submit::{SubmitError, recorded_digest};
use crate::kling::catalog::TaskKind;
use crate::kling::client::check_auth;
use crate::ledger::Slot;
pub use crate::pipeline::advance::{PipelineError, Submitter};
use crate::pipeline::advance::{StepError, submit_step};
use crate::pipeline::progress::{self, Next, PipelineView, step_external_id};
use crate::pipeline::spec::{NewStep, PipelineSpec, SpecError, build};
use crate::store::layout::TaskKey;
use crate::store::pipelines::PipelineStore;
use crate::store::tasks::TaskStore;
use crate::store::{KeyValue, StoreError};
use crate::task::StepRef;
use crate::validate::{choose_id, is_valid_external_task_id};
use std::cell::RefCell;

/// What `POST /pipelines` and the WIT `create-pipeline` take.
pub struct NewPipeline<'a> {
    pub id: Option<String>,
    pub steps: Vec<NewStep>,
    pub idempotency_key: Option<&'a str>,
}

pub struct Created {
    pub view: PipelineView,
    /// `false` when this create answers a pipeline it found rather than made, with the
    /// same steps ([`existing`]): one stored under this id already, or, after this
    /// create's own step 0 or index write failed, one whose step 0 another submitter had
    /// recorded or Kling has ([`forget_unless_taken`]). Its index entry may have been
    /// written again (see [`existing`]).
    pub created: bool,
}

/// Validates every step, stores the description, indexes the pipeline for the
/// reconciler, and submits step 0. If step 0 fails, the pipeline is forgotten and the
/// error returned, so a retry, or a corrected request, can use the same id (unless
/// another submitter has recorded step 0 meanwhile: [`forget_unless_taken`]). A step 0
/// that Kling made before a store error stopped this create keeps the pipeline if its
/// binding was written, and is else the retry's to adopt.
pub fn create(new: NewPipeline<'_>, submitter: &Submitter<'_>) -> Result<Created, PipelineError> {
    let id = choose_id(new.id.as_deref(), new.idempotency_key, submitter.new_id)
        .ok_or(SpecError::IdempotencyKeyMismatch)?;
    let mut spec = build(id, new.steps, submitter.clock.now_ms())?;
    let store = PipelineStore::new(submitter.kv);
    if let Some(existing) = existing(&store, &spec)? {
        return Ok(existing);
    }
    // A later API 2.0 step this deployment cannot submit must not fail the pipeline after
    // earlier steps have cost Kling credits: say so before anything is stored.
    for (step, spec_step) in spec.steps.iter().enumerate() {
        if let Some(kind) = TaskKind::from_name(&spec_step.kind) {
            check_auth(&submitter.config.kling.auth, kind).map_err(|e| PipelineError::Step {
                step,
                error: SubmitError::Kling(e),
            })?;
        }
    }
    // An id is free again only once retention has deleted every step task of the
    // pipeline that used it before: one left over (retention deletes each by the day it
    // ended) would be taken for this pipeline's own, its result fed to the next step.
    // Step 0 is not looked at: it ended first, so retention takes it first, and a step 0
    // left by a create of this very pipeline that failed after Kling made the task
    // (a store error) is adopted by the retry, as a submit retry adopts its task.
    let tasks = TaskStore::new(submitter.kv);
    for step in 1..spec.steps.len() {
        let key = TaskKey::external(&step_external_id(&spec.id, step));
        // A head, or its final state left without it: retention deletes every other
        // state and then the head before the final slot (so that no reader sees a task
        // move backwards while it goes), and a pipeline reads a step by its states.
        if tasks.live_head(&key)?.is_some() || submitter.kv.get(&key.slot(Slot::Final))?.is_some() {
            // Or a concurrent create of this very pipeline got there first.
            if let Some(existing) = existing(&store, &spec)? {
                return Ok(existing);
            }
            return Err(PipelineError::Step {
                step,
                error: SubmitError::IdempotencyConflict,
            });
        }
    }
    // A step 0 left by an earlier create of this id that failed after Kling made the
    // task is adopted only by a retry of that create: recorded with another request
    // (no inputs: it is the request as given, digested as its submit digests it, from
    // the bytes it is sent as), it is refused before anything is stored.
    let step_0_digest = || {
        let kind = TaskKind::from_name(&spec.steps[0].kind)?;
        recorded_digest(kind, &spec.steps[0].request)
    };
    if let Some(head) = tasks.live_head(&TaskKey::external(&step_external_id(&spec.id, 0)))?
        && let Some(recorded) = &head.submission
        && recorded
            .pipeline
            .as_ref()
            .is_some_and(|s| s.pipeline_id == spec.id && s.step == 0)
        && let (Some(recorded), Some(wanted)) = (&recorded.body_digest, step_0_digest())
        && *recorded != wanted
    {
        if let Some(existing) = existing(&store, &spec)? {
            return Ok(existing);
        }
        return Err(PipelineError::Step {
            step: 0,
            error: SubmitError::IdempotencyConflict,
        });
    }
    // This creation's own generation: its index entry names it, so a reconciler that
    // judged an earlier pipeline of the same id never removes this one's entry.
    spec.generation = (submitter.new_id)();
    // A submission of step 0 given up before this create (an earlier attempt's, refused)
    // is discounted unless Kling has it after all: its pending entries may outlive it,
    // and this create's own submit, refused in turn, may delete its give-up mark.
    let given_up = tasks.given_up_nonce(&TaskKey::external(&step_external_id(&spec.id, 0)))?;
    // A failure or notified mark an earlier pipeline of this id left behind (an advance
    // or a send that read its description just before retention deleted it) is not
    // this pipeline's.
    store.delete_marks(&spec.id)?;
    store.save_spec(&spec)?;
    if let Err(error) = store.index(&spec) {
        let discounted = [given_up.as_deref()];
        return forget_unless_taken(&store, &tasks, &spec, &discounted)?.ok_or(error.into());
    }
    // The nonce step 0's submit draws, to tell its record from another submitter's.
    let nonce = RefCell::new(None);
    let drawing = || nonce.borrow_mut().insert((submitter.new_id)()).clone();
    match submit_step(
        &spec,
        None,
        0,
        &Submitter {
            new_id: &drawing,
            ..*submitter
        },
    ) {
        // Nothing else of it exists yet: its view is step 0's task.
        Ok(submitted) => Ok(Created {
            view: progress::view(&spec, &[Some(submitted.record)], None),
            created: true,
        }),
        Err(error) => forget_unless_taken(
            &store,
            &tasks,
            &spec,
            &[given_up.as_deref(), nonce.borrow().as_deref()],
        )?
        .ok_or(match error {
            StepError::Submit(error) => PipelineError::Step { step: 0, error },
            StepError::Input(message) => PipelineError::Input { step: 0, message },
        }),
    }
}

/// Forgets this creation's pipeline (its index write or its step 0 failed) so the id
/// can be used again, unless this pipeline's step 0 is taken: recorded by another
/// submitter (a concurrent create of the same id, or a reconcile run), or had by Kling
/// ([`TaskStore::submitted_as_step`]; `discounted`: this creation's own submission,
/// left unbound by a store error, and one given up before it). The creates share the
/// description's key, so that pipeline is kept (and indexed, as stored) and answered as
/// it is. Step 0 is looked at before the delete and again after it, and a description
/// the delete took is written back (this create's, unless another create has stored its
/// own since). A task submitted otherwise under the step's id never counts. What no look
/// can see: the other's step 0 recorded only after the second look, its description
/// already deleted (no compare-and-swap; the README says so).
fn forget_unless_taken(
    store: &PipelineStore<'_>,
    tasks: &TaskStore<'_>,
    spec: &PipelineSpec,
    discounted: &[Option<&str>],
) -> Result<Option<Created>, PipelineError> {
    let discounted: Vec<&str> = discounted.iter().flatten().copied().collect();
    let key = TaskKey::external(&step_external_id(&spec.id, 0));
    let step_0 = StepRef {
        pipeline_id: spec.id.clone(),
        step: 0,
    };
    let taken = || tasks.submitted_as_step(&key, &step_0, &discounted);
    if !taken()? {
        store.forget(spec)?;
        if !taken()? {
            return Ok(None);
        }
    }
    match store.spec(&spec.id)? {
        Some(stored) => store.index(&stored)?,
        None => {
            store.save_spec(spec)?;
            store.index(spec)?;
        }
    }
    existing(store, spec)
}

/// The pipeline already stored under `wanted`'s id, as it is, if it was created with
/// `wanted`'s steps (their digests; else `IdempotencyConflict`: a retry must repeat its
/// request, as a submit's must). One whose step 0 has no task is
/// indexed again (one idempotent write): a create cut short between storing the
/// description and indexing it (the instance stopped, or the index write and the
/// clean-up both failed) left it where no reconcile run looks, and this retry is the
/// only one who knows. Only step 0: a later step without a task may belong to a
/// pipeline that failed and that retention is half-way through deleting (its failure
/// record goes first), which must not run again.
fn existing(
    store: &PipelineStore<'_>,
    wanted: &PipelineSpec,
) -> Result<Option<Created>, PipelineError> {
    let Some(spec) = store.spec(&wanted.id)? else {
        return Ok(None);
    };
    let view = store.view_of(&spec)?;
    // Repaired whatever this request asks: a pipeline no run looks at blocks its id.
    if matches!(view.next(), Next::Submit(0)) {
        store.index(&spec)?;
    }
    if let (Some(stored), Some(wanted)) = (&spec.steps_digest, &wanted.steps_digest)
        && stored != wanted
    {
        return Err(PipelineError::IdempotencyConflict(spec.id));
    }
    Ok(Some(Created {
        view,
        created: false,
    }))
}

pub fn get(id: &str, kv: &dyn KeyValue) -> Result<Option<PipelineView>, StoreError> {
    if !is_valid_external_task_id(id) {
        return Ok(None);
    }
    PipelineStore::new(kv).view(id)
}
