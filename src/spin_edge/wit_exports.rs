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
use crate::api::submit::{SubmitError, SubmitRequest, submit};
use crate::callback::parse::parse_callback;
use crate::config::SubmitConfig;
use crate::error::ApiError;
use crate::kling::client::KlingError;
use crate::kling::kind::TaskKind;
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
}

bindings::export!(Exports with_types_in bindings);

/// The one mapping from the core's errors to the WIT variant.
fn to_wit(error: ApiError) -> wit::Error {
    let message = error.message();
    match error {
        ApiError::Submit(SubmitError::Kling(KlingError::Api(e))) => {
            let kling = wit::KlingError {
                code: e.code,
                message: e.message,
                request_id: e.request_id,
            };
            if matches!(kling.code, 1302 | 1303) {
                wit::Error::RateLimited((kling, 1))
            } else {
                wit::Error::Kling(kling)
            }
        }
        ApiError::Submit(
            SubmitError::InvalidRequest(_)
            | SubmitError::InvalidExternalTaskId
            | SubmitError::InvalidIdempotencyKey
            | SubmitError::IdempotencyKeyMismatch,
        ) => wit::Error::InvalidRequest(message),
        ApiError::Config(_) => wit::Error::Config(message),
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
        TaskStatus::Failed => wit::TaskStatus::Failed,
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
