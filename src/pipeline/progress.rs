//! Where a pipeline stands, derived from its steps' tasks: nothing about progress is
//! stored but the steps' own task records (and a failure that no task carries, such as
//! Kling refusing a step's request). Being derived, it cannot disagree with the tasks,
//! whatever order callbacks arrive in.

use serde::{Deserialize, Serialize};

use super::spec::PipelineSpec;
use crate::task::{Image, MoreOutputs, TaskRecord, TaskStatus, Video};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineStatus {
    Running,
    Succeed,
    Failed,
}

impl PipelineStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeed => "succeed",
            Self::Failed => "failed",
        }
    }
}

/// The failure code of a pipeline whose step was given up as `lost`: the one failure
/// Kling can still overturn.
pub const STEP_LOST: &str = "step_lost";

/// How long after its creation a pipeline that cannot move on is still tracked: one
/// failed by a step given up as `lost` (Kling may still finish it), and one whose next
/// step cannot be submitted for a reason that may pass (keys, balance, rate, Kling
/// down). Kling keeps results 30 days, so a later step could not be built from them
/// after that anyway: the reconciler then fails it (`step_not_submitted`) or lets it go,
/// and retention no longer keeps its steps for it.
pub const PIPELINE_WATCH_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// The failure code of a pipeline whose next step could not be submitted within
/// [`PIPELINE_WATCH_MS`].
pub const STEP_NOT_SUBMITTED: &str = "step_not_submitted";

/// Why a pipeline failed, when no step's task says so itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineFailure {
    pub step: usize,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    pub index: usize,
    pub kind: String,
    pub external_task_id: String,
    /// `None` until the step is submitted.
    pub task: Option<TaskRecord>,
}

/// A pipeline as `GET /pipelines/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineView {
    pub id: String,
    pub status: PipelineStatus,
    /// The step running now, or the one that ended the pipeline.
    pub current_step: usize,
    pub steps: Vec<StepView>,
    /// The last step's results, once the pipeline succeeded.
    pub outputs: Option<Outputs>,
    pub error: Option<PipelineFailure>,
    pub created_at: u64,
    /// The pipeline's place in its own history ([`pipeline_sequence`]): a receiver of
    /// its notifications keeps the largest it applied and drops any not larger.
    pub sequence: u64,
}

/// A step's span in [`pipeline_sequence`]: above what one step's place can reach (a
/// task's `sequence` is below 5 * 10^13: rank 4 at most, then an `updated_at` below 10^13).
const STEP_SPAN: u64 = 2 * 10 * 10_000_000_000_000;

/// Where a pipeline stands, as one number that grows with every state a notification
/// announces ([`PipelineView::is_announced`]), whatever replica sends it: the step it
/// stands at; then whether Kling has that step's task (a task that turns up after the
/// refusal stored for its step outranks the refusal); then the task's `sequence` (a late
/// `succeed` or `failed` over `lost`); then whether the pipeline ended there. A task still
/// `submitting` counts as none: its create may yet be refused, or given up and refused
/// again, which must outrank it. Below 2^53 for [`super::spec::MAX_STEPS`] steps, so
/// exact in any JSON reader.
pub fn pipeline_sequence(step: usize, task_sequence: Option<u64>, ended: bool) -> u64 {
    let step = u64::try_from(step).unwrap_or(u64::MAX);
    // Twice the task's `sequence` (at least 2 * 10^13 once Kling has the task), plus one
    // if the pipeline ended: a refusal, with no task, is 1.
    let within_step = task_sequence.map_or(0, |task| task.saturating_mul(2));
    step.saturating_mul(STEP_SPAN)
        .saturating_add(within_step)
        .saturating_add(u64::from(ended))
}

/// The last step's outputs, named as in its task record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outputs {
    pub videos: Vec<Video>,
    pub images: Vec<Image>,
    #[serde(flatten)]
    pub more: MoreOutputs,
}

/// What should happen next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Submit this step: the previous one succeeded (or it is the first).
    Submit(usize),
    /// A step is still running at Kling.
    Wait,
    /// Nothing more will happen.
    Finished(PipelineStatus),
}

/// The external id of a step's task: derived, so submitting a step twice finds the first.
pub fn step_external_id(pipeline_id: &str, step: usize) -> String {
    format!("{pipeline_id}-{step}")
}

/// `tasks[i]` is step `i`'s task; the list may stop early (steps not reached are `None`).
pub fn view(
    spec: &PipelineSpec,
    tasks: &[Option<TaskRecord>],
    failure: Option<PipelineFailure>,
) -> PipelineView {
    let steps: Vec<StepView> = spec
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| StepView {
            index,
            kind: step.kind.clone(),
            external_task_id: step_external_id(&spec.id, index),
            task: tasks.get(index).cloned().flatten(),
        })
        .collect();
    let status_of = |i: usize| steps.get(i).and_then(|s| s.task.as_ref()).map(|t| t.status);
    let last = steps.len().saturating_sub(1);
    // The first step that has not succeeded is where the pipeline stands.
    let current = (0..steps.len())
        .find(|&i| status_of(i) != Some(TaskStatus::Succeed))
        .unwrap_or(last);
    let failed_task = steps.iter().find_map(|s| {
        let task = s.task.as_ref()?;
        // A step given up as lost (see `TaskStatus::Lost`) fails the pipeline, until Kling
        // reports it after all (a late `succeed` beats `lost`, and the pipeline runs on).
        let code = match task.status {
            TaskStatus::Failed => "step_failed",
            TaskStatus::Lost => STEP_LOST,
            _ => return None,
        };
        Some(PipelineFailure {
            step: s.index,
            code: code.into(),
            message: if task.status_msg.is_empty() {
                "Kling reported the task as failed".into()
            } else {
                task.status_msg.clone()
            },
        })
    });
    // A stored failure says the step could not be submitted. A task of this very step
    // there after all (a concurrent advance created it while Kling refused ours, in
    // words not read as a duplicate id) runs, and outranks it: state is derived.
    let failure = failure.filter(|failure| {
        let ran = steps
            .get(failure.step)
            .and_then(|s| s.task.as_ref())
            .and_then(|task| task.pipeline.as_ref())
            .is_some_and(|step| step.pipeline_id == spec.id && step.step == failure.step);
        !ran
    });
    let error = failed_task.or(failure);
    let status = match (&error, status_of(last)) {
        (Some(_), _) => PipelineStatus::Failed,
        (None, Some(TaskStatus::Succeed)) => PipelineStatus::Succeed,
        (None, _) => PipelineStatus::Running,
    };
    let outputs = (status == PipelineStatus::Succeed).then(|| {
        let last = steps.last().and_then(|s| s.task.as_ref());
        Outputs {
            videos: last.map(|t| t.videos.clone()).unwrap_or_default(),
            images: last.map(|t| t.images.clone()).unwrap_or_default(),
            more: last.map(|t| t.more.clone()).unwrap_or_default(),
        }
    });
    let current_step = error.as_ref().map_or(current, |e| e.step);
    let sequence = pipeline_sequence(
        current_step,
        task_at_kling(&steps, current_step).map(|task| task.sequence),
        status != PipelineStatus::Running,
    );
    PipelineView {
        id: spec.id.clone(),
        status,
        current_step,
        steps,
        outputs,
        error,
        created_at: spec.created_at,
        sequence,
    }
}

/// Step `step`'s task once Kling has it: not while its create is on its way
/// (`submitting`), which may yet be refused.
fn task_at_kling(steps: &[StepView], step: usize) -> Option<&TaskRecord> {
    steps
        .get(step)
        .and_then(|s| s.task.as_ref())
        .filter(|task| task.status != TaskStatus::Submitting)
}

impl PipelineView {
    pub fn next(&self) -> Next {
        if self.status != PipelineStatus::Running {
            return Next::Finished(self.status);
        }
        match self.steps.get(self.current_step).map(|s| &s.task) {
            Some(None) => Next::Submit(self.current_step),
            Some(Some(_)) => Next::Wait,
            // A stored description without steps (never written by `build`).
            None => Next::Finished(PipelineStatus::Failed),
        }
    }

    /// Whether a notification announces this state: the pipeline ended, or a step after
    /// the first runs at Kling. Step 0 started is `POST /pipelines`' own answer. A step
    /// whose create is still on its way (its task `submitting`) waits until Kling has it
    /// (the reconciler announces it then, if its create answer does not): it may yet be
    /// refused, and [`pipeline_sequence`] ranks it below that refusal.
    pub fn is_announced(&self) -> bool {
        match self.next() {
            Next::Finished(_) => true,
            Next::Wait => {
                self.current_step > 0 && task_at_kling(&self.steps, self.current_step).is_some()
            }
            Next::Submit(_) => false,
        }
    }

    /// Step `step`'s task, whose result may feed later steps.
    pub fn task(&self, step: usize) -> Option<&TaskRecord> {
        self.steps.get(step).and_then(|s| s.task.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(steps: usize) -> PipelineSpec {
        PipelineSpec::of_text2video_steps("p", steps)
    }

    fn task(status: TaskStatus) -> Option<TaskRecord> {
        Some(TaskRecord {
            task_id: Some("1".into()),
            status_msg: if status == TaskStatus::Failed {
                "content rejected".into()
            } else {
                String::new()
            },
            videos: vec![Video {
                id: Some(format!("{status:?}")),
                ..Video::default()
            }],
            ..TaskRecord::example(status)
        })
    }

    #[test]
    fn a_pipeline_moves_step_by_step() {
        use TaskStatus::*;
        let spec = spec(3);
        let cases: Vec<(Vec<Option<TaskRecord>>, PipelineStatus, usize, Next)> = vec![
            (vec![], PipelineStatus::Running, 0, Next::Submit(0)),
            (
                vec![task(Processing)],
                PipelineStatus::Running,
                0,
                Next::Wait,
            ),
            (
                vec![task(Succeed)],
                PipelineStatus::Running,
                1,
                Next::Submit(1),
            ),
            (
                vec![task(Succeed), task(Submitting)],
                PipelineStatus::Running,
                1,
                Next::Wait,
            ),
            (
                vec![task(Succeed), task(Failed)],
                PipelineStatus::Failed,
                1,
                Next::Finished(PipelineStatus::Failed),
            ),
            (
                vec![task(Succeed), task(Succeed), task(Succeed)],
                PipelineStatus::Succeed,
                2,
                Next::Finished(PipelineStatus::Succeed),
            ),
        ];
        for (tasks, status, current, next) in cases {
            let view = view(&spec, &tasks, None);
            assert_eq!(
                (view.status, view.current_step, view.next()),
                (status, current, next),
                "{:?}",
                tasks
                    .iter()
                    .map(|t| t.as_ref().map(|t| t.status))
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn outputs_are_the_last_steps_and_a_failure_names_its_step() {
        use TaskStatus::*;
        let done = view(&spec(2), &[task(Succeed), task(Succeed)], None);
        assert_eq!(
            done.outputs.unwrap().videos[0].id.as_deref(),
            Some("Succeed")
        );
        let failed = view(&spec(2), &[task(Succeed), task(Failed)], None);
        let error = failed.error.unwrap();
        assert_eq!(
            (error.step, error.message.as_str()),
            (1, "content rejected")
        );
        assert!(failed.outputs.is_none());

        let refused = PipelineFailure {
            step: 1,
            code: "kling_invalid_request".into(),
            message: "bad".into(),
        };
        let view = view(&spec(2), &[task(Succeed)], Some(refused.clone()));
        assert_eq!(
            (view.status, view.current_step, view.error),
            (PipelineStatus::Failed, 1, Some(refused))
        );
    }

    /// Step `step`'s task at `status`, Kling's clock at `updated_at`, as the ledger
    /// leaves it (its `sequence` set).
    fn step_task(step: usize, status: TaskStatus, updated_at: u64) -> Option<TaskRecord> {
        Some(TaskRecord {
            updated_at: Some(updated_at),
            sequence: crate::task::sequence(status, Some(updated_at)),
            pipeline: Some(crate::task::StepRef {
                pipeline_id: "p".into(),
                step,
            }),
            ..TaskRecord::example(status)
        })
    }

    #[test]
    fn a_pipeline_s_sequence_grows_with_every_move_it_can_make() {
        use TaskStatus::*;
        let spec = spec(3);
        let refused = |step| PipelineFailure {
            step,
            code: "kling_invalid_request".into(),
            message: "bad".into(),
        };
        let done = |step| step_task(step, Succeed, 9_000_000_000_000);
        // Every state a 3-step pipeline can pass through, in an order it can take them
        // (one history with each way back from a failure that the ledger allows).
        let history: Vec<(Vec<Option<TaskRecord>>, Option<PipelineFailure>)> = vec![
            (vec![], None),
            (vec![step_task(0, Submitting, 0)], None),
            (vec![step_task(0, Submitted, 5)], None),
            (vec![step_task(0, Processing, 5)], None),
            (vec![step_task(0, Processing, 6)], None),
            // Given up as lost: the pipeline fails; then Kling reports it failed...
            (vec![step_task(0, Lost, 7)], None),
            (vec![step_task(0, Failed, 8)], None),
            // ...or (another history from `lost`) succeeded: the pipeline runs on.
            (vec![done(0)], None),
            // Step 1's create gets no clear answer, and is given up; the submit of it
            // again is refused: failed. Then step 1's own task turns up after all.
            (vec![done(0), step_task(1, Submitting, 0)], None),
            (vec![done(0)], Some(refused(1))),
            (vec![done(0), step_task(1, Submitted, 3)], Some(refused(1))),
            (vec![done(0), step_task(1, Processing, 4)], None),
            (vec![done(0), done(1)], None),
            (vec![done(0), done(1), step_task(2, Processing, 1)], None),
            (vec![done(0), done(1), step_task(2, Lost, 2)], None),
            (vec![done(0), done(1), done(2)], None),
        ];
        // Never lower from one state to the next, and higher from one announced state to
        // the next: a receiver that drops what is not larger drops no update.
        let mut last: Option<(u64, PipelineStatus)> = None;
        let mut last_announced: Option<u64> = None;
        for (tasks, failure) in history {
            let view = view(&spec, &tasks, failure);
            let at = format!("{:?} at step {}", view.status, view.current_step);
            if let Some((before, _)) = last {
                assert!(
                    view.sequence >= before,
                    "{} after {before}: {at}",
                    view.sequence
                );
            }
            if view.is_announced() {
                if let Some(before) = last_announced {
                    assert!(
                        view.sequence > before,
                        "{} after {before}: {at}",
                        view.sequence
                    );
                }
                last_announced = Some(view.sequence);
            }
            last = Some((view.sequence, view.status));
        }
        assert_eq!(
            last.map(|(_, status)| status),
            Some(PipelineStatus::Succeed)
        );
        // Whatever a step's task reached, the next step starts above it.
        let newest_task = crate::task::sequence(Succeed, Some(u64::MAX));
        assert!(pipeline_sequence(1, Some(newest_task), true) < pipeline_sequence(2, None, false));
        // The largest a pipeline can reach stays exact in JSON (below 2^53).
        let top = pipeline_sequence(
            super::super::spec::MAX_STEPS - 1,
            Some(crate::task::sequence(Succeed, Some(u64::MAX))),
            true,
        );
        assert!(top < 1 << 53, "{top}");
    }

    #[test]
    fn a_step_is_announced_once_kling_has_it_and_a_pipeline_once_it_ends() {
        use TaskStatus::*;
        let spec = spec(2);
        let done = step_task(0, Succeed, 9);
        let refused = PipelineFailure {
            step: 1,
            code: "kling_invalid_request".into(),
            message: "bad".into(),
        };
        for (tasks, failure, announced) in [
            (vec![step_task(0, Submitted, 1)], None, false),
            (vec![done.clone()], None, false),
            (vec![done.clone(), step_task(1, Submitting, 0)], None, false),
            (vec![done.clone(), step_task(1, Submitted, 1)], None, true),
            (vec![done.clone()], Some(refused), true),
            (vec![done.clone(), step_task(1, Failed, 2)], None, true),
            (vec![done.clone(), step_task(1, Succeed, 2)], None, true),
        ] {
            let view = view(&spec, &tasks, failure);
            assert_eq!(
                view.is_announced(),
                announced,
                "{:?} at step {}",
                view.status,
                view.current_step
            );
        }
    }

    #[test]
    fn step_ids_are_derived_from_the_pipeline() {
        assert_eq!(step_external_id("promo-7", 2), "promo-7-2");
    }
}
