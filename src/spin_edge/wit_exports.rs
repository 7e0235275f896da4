//! The `kling:video/tasks` export: the same core calls as the HTTP routes, for other
//! components. Errors map to the WIT `error` variant here, and only here.

mod bindings {
    spin_sdk::wit_bindgen::generate!({
        world: "kling-video",
        path: "wit/video",
        runtime_path: "::spin_sdk::wit_bindgen::rt",
        pub_export_macro: true,
    });
}

use bindings::exports::kling::video::tasks::Guest;
use bindings::kling::video::types as wit;

use super::host_apis::{SpinKeyValue, SpinVariables};
use super::outbound::SpinOutbound;
use super::{HostClock, new_id};
use crate::api::pipelines::{self, NewPipeline, PipelineError, Submitter};
use crate::api::submit::{SubmitError, SubmitRequest, submit};
use crate::api::tasks;
use crate::callback::parse::parse_callback;
use crate::callback::receive::CallbackError;
use crate::config::SubmitConfig;
use crate::error::ApiError;
use crate::kling::catalog::TaskKind;
use crate::pipeline::progress::{PipelineStatus, PipelineView};
use crate::pipeline::spec::{NewStep, SpecError};
use crate::task::{Image, MoreOutputs, TaskEvent, TaskRecord, TaskStatus, Video};

struct Exports;

impl Guest for Exports {
    fn submit(
        kind: String,
        request_json: String,
        external_task_id: Option<String>,
    ) -> Result<wit::Task, wit::Error> {
        let kind = kind_from_wit(&kind)?;
        let config = SubmitConfig::load(&SpinVariables).map_err(|e| to_wit(e.into()))?;
        let request = SubmitRequest {
            kind,
            body: request_json.as_bytes(),
            idempotency_key: external_task_id.as_deref(),
            pipeline: None,
        };
        submit(
            &request,
            &config,
            &SpinKeyValue::default(),
            &SpinOutbound,
            &HostClock,
            &new_id,
        )
        .map(|submitted| task_to_wit(submitted.record))
        .map_err(|e| to_wit(e.into()))
    }

    fn parse(body: Vec<u8>) -> Result<wit::TaskEvent, wit::Error> {
        parse_callback(&body)
            .map(event_to_wit)
            .map_err(|e| to_wit(CallbackError::Payload(e).into()))
    }

    /// As `GET /tasks/{id}`, read repair included; what a repair brought is announced
    /// (notifications, a pipeline's next step) before the call returns, since a WIT call
    /// has no response to send first.
    fn get(id: String) -> Result<Option<wit::Task>, wit::Error> {
        super::with_env(|env| match tasks::show_task(&id, env) {
            Ok(shown) => {
                let task = task_to_wit(shown.record.clone());
                crate::after_ack::run(shown.after_ack(), env);
                Ok(Some(task))
            }
            Err(ApiError::TaskNotFound) => Ok(None),
            Err(error) => Err(to_wit(error)),
        })
    }

    fn start_pipeline(
        id: Option<String>,
        steps: Vec<wit::PipelineStep>,
    ) -> Result<wit::Pipeline, wit::Error> {
        let config = SubmitConfig::load(&SpinVariables).map_err(|e| to_wit(e.into()))?;
        let steps = steps
            .into_iter()
            .enumerate()
            .map(|(index, step)| step_from_wit(index, step))
            .collect::<Result<Vec<_>, _>>()?;
        let kv = SpinKeyValue::default();
        let submitter = Submitter {
            config: &config,
            kv: &kv,
            transport: &SpinOutbound,
            clock: &HostClock,
            new_id: &new_id,
        };
        let new = NewPipeline {
            id,
            steps,
            idempotency_key: None,
        };
        pipelines::create(new, &submitter)
            .map(|created| pipeline_to_wit(created.view))
            .map_err(|e| to_wit(e.into()))
    }

    fn get_pipeline(id: String) -> Result<Option<wit::Pipeline>, wit::Error> {
        pipelines::get(&id, &SpinKeyValue::default())
            .map(|view| view.map(pipeline_to_wit))
            .map_err(|e| to_wit(e.into()))
    }

    fn kinds() -> Vec<String> {
        TaskKind::all()
            .map(|kind| kind.name().to_string())
            .collect()
    }
}

fn step_from_wit(index: usize, step: wit::PipelineStep) -> Result<NewStep, wit::Error> {
    let request = match serde_json::from_str(&step.request_json) {
        Ok(serde_json::Value::Object(request)) => request,
        _ => {
            let error = PipelineError::Spec(SpecError::RequestNotAnObject(index));
            return Err(to_wit(error.into()));
        }
    };
    // The pipeline checks the kind (and names the step) when it is built.
    Ok(NewStep {
        kind: step.kind,
        request,
        inputs: step.inputs.map(|inputs| {
            inputs
                .into_iter()
                .map(|input| (input.target, input.source))
                .collect()
        }),
    })
}

fn pipeline_to_wit(view: PipelineView) -> wit::Pipeline {
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    wit::Pipeline {
        id: view.id,
        status: match view.status {
            PipelineStatus::Running => wit::PipelineStatus::Running,
            PipelineStatus::Succeed => wit::PipelineStatus::Succeed,
            PipelineStatus::Failed => wit::PipelineStatus::Failed,
        },
        current_step: to_u32(view.current_step),
        tasks: view
            .steps
            .into_iter()
            .map(|step| step.task.map(task_to_wit))
            .collect(),
        error: view.error.map(|e| wit::PipelineFailure {
            step: to_u32(e.step),
            code: e.code,
            message: e.message,
        }),
    }
}

bindings::export!(Exports with_types_in bindings);

/// The one mapping from the core's errors to the WIT variant, and it follows the HTTP
/// mapping (`ApiError::status_and_code`): Kling's rate limits are `rate-limited`; what
/// HTTP answers as Kling's own trouble (`kling_unavailable`, `kling_maintenance`: a 5xxx
/// code, a code this build does not know, a 5xx from a gateway) is `unavailable`, worth
/// retrying, as a pipeline's step retries it; any other Kling answer is `kling`, with
/// Kling's code. Every message starts with the HTTP API's machine-readable code,
/// `{code}: {message}`, so a caller branches on the same codes over both surfaces
/// (`idempotency_conflict` and `store_corrupt` included, which share a variant with
/// others).
fn to_wit(error: ApiError) -> wit::Error {
    let (status, code) = error.status_and_code();
    let message = format!("{code}: {}", wit_message(&error));
    if let ApiError::Callback(CallbackError::Payload(_)) = error {
        return wit::Error::InvalidPayload(message);
    }
    if let Some(e) = error.kling_error() {
        let kling = wit::KlingError {
            code: e.code,
            message: e.message.clone(),
            request_id: e.request_id.clone(),
        };
        return match (error.retry_after_secs(), code) {
            (Some(secs), _) => wit::Error::RateLimited((kling, secs)),
            (None, "kling_unavailable" | "kling_maintenance") => wit::Error::Unavailable(message),
            (None, _) => wit::Error::Kling(kling),
        };
    }
    match (status, code) {
        // A deployment setting (a variable, or a store label the manifest lacks), not
        // worth retrying.
        (
            _,
            "config_missing" | "config_invalid" | "kling_api_key_required" | "store_not_configured",
        ) => wit::Error::Config(message),
        (400 | 404 | 409 | 413 | 422, _) => wit::Error::InvalidRequest(message),
        _ => wit::Error::Unavailable(message),
    }
}

/// The error's message, naming the WIT argument where HTTP's names its header.
fn wit_message(error: &ApiError) -> String {
    match error {
        ApiError::Submit(
            SubmitError::InvalidIdempotencyKey | SubmitError::IdempotencyKeyMismatch,
        ) => error
            .message()
            .replace("`Idempotency-Key`", "`external-task-id`"),
        _ => error.message(),
    }
}

fn kind_from_wit(kind: &str) -> Result<TaskKind, wit::Error> {
    TaskKind::from_name(kind).ok_or_else(|| to_wit(ApiError::NotAKind(kind.to_string())))
}

fn status_to_wit(status: TaskStatus) -> wit::TaskStatus {
    match status {
        TaskStatus::Submitting => wit::TaskStatus::Submitting,
        TaskStatus::Submitted => wit::TaskStatus::Submitted,
        TaskStatus::Processing => wit::TaskStatus::Processing,
        TaskStatus::Succeed => wit::TaskStatus::Succeed,
        TaskStatus::Failed => wit::TaskStatus::Failed,
        TaskStatus::Lost => wit::TaskStatus::Lost,
    }
}

fn image_to_wit(i: Image) -> wit::Image {
    wit::Image {
        index: i.index,
        url: i.url,
        watermark_url: i.watermark_url,
        url_1: i.url_1,
        url_2: i.url_2,
        url_3: i.url_3,
        result_type: i.result_type,
        group_id: i.group_id,
    }
}

/// Every output, typed, in the record's order.
fn outputs_to_wit(videos: Vec<Video>, images: Vec<Image>, more: MoreOutputs) -> Outputs {
    let mut outputs = Vec::new();
    outputs.extend(videos.into_iter().map(|v| {
        wit::Output::Video(wit::Video {
            id: v.id,
            url: v.url,
            duration: v.duration,
            watermark_url: v.watermark_url,
        })
    }));
    outputs.extend(
        images
            .into_iter()
            .map(|i| wit::Output::Image(image_to_wit(i))),
    );
    outputs.extend(
        more.series_images
            .into_iter()
            .map(|i| wit::Output::SeriesImage(image_to_wit(i))),
    );
    outputs.extend(more.audios.into_iter().map(|a| {
        wit::Output::Audio(wit::Audio {
            id: a.id,
            url_mp3: a.url_mp3,
            url_wav: a.url_wav,
            duration_mp3: a.duration_mp3,
            duration_wav: a.duration_wav,
        })
    }));
    outputs.extend(more.voices.into_iter().map(|v| {
        wit::Output::Voice(wit::Voice {
            voice_id: v.voice_id,
            voice_name: v.voice_name,
            trial_url: v.trial_url,
            owned_by: v.owned_by,
        })
    }));
    outputs.extend(more.elements.into_iter().map(|e| {
        wit::Output::Element(wit::Element {
            element_id: e.element_id,
            element_name: e.element_name,
            element_description: e.element_description,
            reference_type: e.reference_type,
            status: e.status,
        })
    }));
    Outputs {
        outputs,
        kling_result_json: more.kling_result.map(|json| json.0.get().to_string()),
        billing_json: more.billing.map(|json| json.0.get().to_string()),
    }
}

struct Outputs {
    outputs: Vec<wit::Output>,
    kling_result_json: Option<String>,
    billing_json: Option<String>,
}

fn task_to_wit(task: TaskRecord) -> wit::Task {
    let outputs = outputs_to_wit(task.videos, task.images, task.more);
    wit::Task {
        task_id: task.task_id,
        external_task_id: task.external_task_id,
        kind: task.kind,
        status: status_to_wit(task.status),
        status_msg: task.status_msg,
        outputs: outputs.outputs,
        kling_result_json: outputs.kling_result_json,
        billing_json: outputs.billing_json,
        created_at: task.created_at,
        updated_at: task.updated_at,
        deliveries: task.deliveries,
    }
}

fn event_to_wit(event: TaskEvent) -> wit::TaskEvent {
    let outputs = outputs_to_wit(event.videos, event.images, event.more);
    wit::TaskEvent {
        task_id: event.task_id,
        external_task_id: event.external_task_id,
        status: status_to_wit(event.status),
        status_msg: event.status_msg,
        outputs: outputs.outputs,
        kling_result_json: outputs.kling_result_json,
        billing_json: outputs.billing_json,
        created_at: event.created_at,
        updated_at: event.updated_at,
    }
}
