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
use crate::api::pipelines::{self, NewPipeline, Submitter};
use crate::api::submit::{SubmitRequest, submit};
use crate::callback::parse::parse_callback;
use crate::config::SubmitConfig;
use crate::error::ApiError;
use crate::kling::kind::TaskKind;
use crate::pipeline::progress::{PipelineStatus, PipelineView};
use crate::pipeline::spec::NewStep;
use crate::store::tasks::TaskStore;
use crate::task::{Image, TaskEvent, TaskRecord, TaskStatus, Video};

struct Exports;

impl Guest for Exports {
    fn submit(
        kind: wit::TaskKind,
        request_json: String,
        external_task_id: Option<String>,
    ) -> Result<wit::Task, wit::Error> {
        let config = SubmitConfig::load(&SpinVariables).map_err(|e| to_wit(e.into()))?;
        let request = SubmitRequest {
            kind: kind_from_wit(kind),
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
            .map_err(|e| wit::Error::InvalidPayload(e.to_string()))
    }

    fn get(id: String) -> Result<Option<wit::Task>, wit::Error> {
        TaskStore::new(&SpinKeyValue::default())
            .find(&id)
            .map(|task| task.map(task_to_wit))
            .map_err(|e| to_wit(e.into()))
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
}

fn step_from_wit(index: usize, step: wit::PipelineStep) -> Result<NewStep, wit::Error> {
    let request = match serde_json::from_str(&step.request_json) {
        Ok(serde_json::Value::Object(request)) => request,
        _ => {
            return Err(wit::Error::InvalidRequest(format!(
                "steps[{index}].request-json must be a JSON object"
            )));
        }
    };
    Ok(NewStep {
        kind: kind_from_wit(step.kind).name().to_string(),
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

/// The one mapping from the core's errors to the WIT variant, following the HTTP
/// mapping (`ApiError::status_and_code`) so both surfaces agree.
fn to_wit(error: ApiError) -> wit::Error {
    let message = error.message();
    if let Some(e) = error.kling_error() {
        let kling = wit::KlingError {
            code: e.code,
            message: e.message.clone(),
            request_id: e.request_id.clone(),
        };
        return match error.retry_after_secs() {
            Some(secs) => wit::Error::RateLimited((kling, secs)),
            None => wit::Error::Kling(kling),
        };
    }
    match error.status_and_code() {
        (_, "config_missing" | "config_invalid") => wit::Error::Config(message),
        (400 | 404 | 413 | 422, _) => wit::Error::InvalidRequest(message),
        _ => wit::Error::Unavailable(message),
    }
}

fn kind_from_wit(kind: wit::TaskKind) -> TaskKind {
    match kind {
        wit::TaskKind::Text2video => TaskKind::Text2Video,
        wit::TaskKind::Image2video => TaskKind::Image2Video,
        wit::TaskKind::MultiImage2video => TaskKind::MultiImage2Video,
        wit::TaskKind::VideoExtend => TaskKind::VideoExtend,
        wit::TaskKind::LipSync => TaskKind::LipSync,
        wit::TaskKind::Effects => TaskKind::Effects,
        wit::TaskKind::ImageGeneration => TaskKind::ImageGeneration,
    }
}

fn kind_to_wit(kind: TaskKind) -> wit::TaskKind {
    match kind {
        TaskKind::Text2Video => wit::TaskKind::Text2video,
        TaskKind::Image2Video => wit::TaskKind::Image2video,
        TaskKind::MultiImage2Video => wit::TaskKind::MultiImage2video,
        TaskKind::VideoExtend => wit::TaskKind::VideoExtend,
        TaskKind::LipSync => wit::TaskKind::LipSync,
        TaskKind::Effects => wit::TaskKind::Effects,
        TaskKind::ImageGeneration => wit::TaskKind::ImageGeneration,
    }
}

fn status_to_wit(status: TaskStatus) -> wit::TaskStatus {
    match status {
        TaskStatus::Submitting => wit::TaskStatus::Submitting,
        TaskStatus::Submitted => wit::TaskStatus::Submitted,
        TaskStatus::Processing => wit::TaskStatus::Processing,
        TaskStatus::Succeed => wit::TaskStatus::Succeed,
        // kling:video@0.1.0 has no `lost`; its status_msg says why it failed.
        TaskStatus::Failed | TaskStatus::Lost => wit::TaskStatus::Failed,
    }
}

fn videos_to_wit(videos: Vec<Video>) -> Vec<wit::Video> {
    videos
        .into_iter()
        .map(|v| wit::Video {
            id: v.id,
            url: v.url,
            duration: v.duration,
            watermark_url: v.watermark_url,
        })
        .collect()
}

fn images_to_wit(images: Vec<Image>) -> Vec<wit::Image> {
    images
        .into_iter()
        .map(|i| wit::Image {
            index: i.index,
            url: i.url,
        })
        .collect()
}

fn task_to_wit(task: TaskRecord) -> wit::Task {
    wit::Task {
        task_id: task.task_id,
        external_task_id: task.external_task_id,
        kind: task
            .kind
            .as_deref()
            .and_then(TaskKind::from_name)
            .map(kind_to_wit),
        status: status_to_wit(task.status),
        status_msg: task.status_msg,
        videos: videos_to_wit(task.videos),
        images: images_to_wit(task.images),
        created_at: task.created_at,
        updated_at: task.updated_at,
        deliveries: task.deliveries,
    }
}

fn event_to_wit(event: TaskEvent) -> wit::TaskEvent {
    wit::TaskEvent {
        task_id: event.task_id,
        external_task_id: event.external_task_id,
        status: status_to_wit(event.status),
        status_msg: event.status_msg,
        videos: videos_to_wit(event.videos),
        images: images_to_wit(event.images),
        created_at: event.created_at,
        updated_at: event.updated_at,
    }
}
