//! An example of a component that drives kling-webhook through `kling:video/tasks`
//! instead of HTTP: it has no Kling keys, no callback route and no store of its own.
//! Composed with kling-webhook (`wac plug`, or Spin's component dependencies), every
//! call below runs kling-webhook's own code: validation, signing, idempotency, storage.
//!
//! - `POST /videos` `{"prompt": "..."}`: starts a text2video (`submit`); 202 with its id.
//! - `GET /videos/{id}`: where it stands (`get`).
//! - `POST /promos` `{"id": "...", "prompt": "...", "then": "..."}`: a text2video, then a
//!   video-extend of its video (`start-pipeline`).
//! - `GET /promos/{id}`: the pipeline (`get-pipeline`).
//!
//! Every route wants `Authorization: Bearer {api_token}` (any of its space-separated
//! values), as kling-webhook's own task API does: these routes spend Kling credits.
#![cfg(target_arch = "wasm32")]

mod bindings {
    spin_sdk::wit_bindgen::generate!({
        world: "client",
        path: "../../wit/video",
        runtime_path: "::spin_sdk::wit_bindgen::rt",
    });
}

use bindings::kling::video::tasks;
use bindings::kling::video::types::{
    Error, Output, Pipeline, PipelineStatus, PipelineStep, Task, TaskStatus,
};
use futures::StreamExt;
use serde_json::{Value, json};
use spin_sdk::http::{IncomingRequest, Method, Response};
use spin_sdk::http_component;

/// The largest body read: the starter's requests are a few short fields.
const MAX_BODY_BYTES: usize = 64 * 1024;

#[http_component]
async fn handle(request: IncomingRequest) -> Response {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .into_iter()
            .next()
            .and_then(|value| String::from_utf8(value).ok())
    };
    // Under `/starter/...` Spin passes the rest of the path in `spin-path-info`.
    let path = header("spin-path-info")
        .or_else(|| request.path_with_query())
        .unwrap_or_default();
    let path = path
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    // The bearer first, from the headers alone: nothing of an unauthorized request's
    // body is read.
    match authorized(header("authorization").as_deref()) {
        Ok(true) => {}
        Ok(false) => {
            return reply(
                401,
                json!({"error": "send Authorization: Bearer {api_token}"}),
            );
        }
        Err(()) => return reply(503, json!({"error": "api_token could not be read; retry"})),
    }
    let declared = header("content-length").and_then(|length| length.parse::<usize>().ok());
    let method = request.method();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (method, segments.as_slice()) {
        (Method::Post, ["videos"]) => match read_body(request, declared).await {
            Ok(body) => start_video(&body),
            Err(refused) => refused,
        },
        (Method::Get, ["videos", id]) => show_video(id),
        (Method::Post, ["promos"]) => match read_body(request, declared).await {
            Ok(body) => start_promo(&body),
            Err(refused) => refused,
        },
        (Method::Get, ["promos", id]) => show_promo(id),
        _ => reply(404, json!({"error": "not found"})),
    }
}

/// The body, read as a stream and never past [`MAX_BODY_BYTES`] (a larger declared
/// length is refused unread); else the answer: 413 too large, 400 unreadable.
async fn read_body(request: IncomingRequest, declared: Option<usize>) -> Result<Vec<u8>, Response> {
    let too_large = || reply(413, json!({"error": "the body is larger than 64 KiB"}));
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let mut stream = request.into_body_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return Err(reply(400, json!({"error": "the body could not be read"})));
        };
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
    }
    Ok(body)
}

/// Whether `authorization` carries one of `api_token`'s values as its bearer. Unset, or
/// shorter than 16 bytes, nothing is authorized; a provider that cannot answer is an
/// error (503), not a wrong token.
fn authorized(authorization: Option<&str>) -> Result<bool, ()> {
    use spin_sdk::variables::Error;
    let Some(presented) = authorization.and_then(|value| value.strip_prefix("Bearer ")) else {
        return Ok(false);
    };
    let tokens = match spin_sdk::variables::get("api_token") {
        Ok(tokens) => tokens,
        // Unset (or a name Spin refuses): nothing is authorized.
        Err(Error::Undefined(_) | Error::InvalidName(_)) => String::new(),
        Err(Error::Provider(_) | Error::Other(_)) => return Err(()),
    };
    Ok(tokens
        .split_whitespace()
        .filter(|token| token.len() >= 16)
        .fold(false, |found, token| {
            found | same(token.as_bytes(), presented.as_bytes())
        }))
}

/// Equal bytes, compared without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn start_video(body: &[u8]) -> Response {
    let Some(prompt) = prompt(body, "prompt") else {
        return reply(400, json!({"error": "send {\"prompt\": \"...\"}"}));
    };
    let request = json!({ "prompt": prompt, "duration": "5" }).to_string();
    match tasks::submit("text2video", &request, None) {
        Ok(task) => reply(202, task_json(&task)),
        Err(error) => error_reply(error),
    }
}

fn show_video(id: &str) -> Response {
    match tasks::get(id) {
        Ok(Some(task)) => reply(200, task_json(&task)),
        Ok(None) => reply(404, json!({"error": "no such video"})),
        Err(error) => error_reply(error),
    }
}

fn start_promo(body: &[u8]) -> Response {
    let (Some(first), Some(then)) = (prompt(body, "prompt"), prompt(body, "then")) else {
        return reply(
            400,
            json!({"error": "send {\"prompt\": \"...\", \"then\": \"...\"}"}),
        );
    };
    let id = prompt(body, "id");
    let steps = [
        PipelineStep {
            kind: "text2video".into(),
            request_json: json!({ "prompt": first }).to_string(),
            inputs: None,
        },
        // No inputs given: video-extend takes the previous video's id as `video_id`.
        PipelineStep {
            kind: "video-extend".into(),
            request_json: json!({ "prompt": then }).to_string(),
            inputs: None,
        },
    ];
    match tasks::start_pipeline(id.as_deref(), &steps) {
        Ok(pipeline) => reply(202, pipeline_json(&pipeline)),
        Err(error) => error_reply(error),
    }
}

fn show_promo(id: &str) -> Response {
    match tasks::get_pipeline(id) {
        Ok(Some(pipeline)) => reply(200, pipeline_json(&pipeline)),
        Ok(None) => reply(404, json!({"error": "no such promo"})),
        Err(error) => error_reply(error),
    }
}

fn prompt(body: &[u8], field: &str) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get(field)?.as_str().map(str::to_string)
}

fn task_json(task: &Task) -> Value {
    let status = match task.status {
        TaskStatus::Submitting => "submitting",
        TaskStatus::Submitted => "submitted",
        TaskStatus::Processing => "processing",
        TaskStatus::Succeed => "succeed",
        TaskStatus::Failed => "failed",
        TaskStatus::Lost => "lost",
    };
    let video_url = task.outputs.iter().find_map(|output| match output {
        Output::Video(video) => video.url.clone(),
        _ => None,
    });
    json!({
        "id": task.external_task_id,
        "status": status,
        "video_url": video_url,
    })
}

fn pipeline_json(pipeline: &Pipeline) -> Value {
    let status = match pipeline.status {
        PipelineStatus::Running => "running",
        PipelineStatus::Succeed => "succeed",
        PipelineStatus::Failed => "failed",
    };
    json!({
        "id": pipeline.id,
        "status": status,
        "step": pipeline.current_step,
        "videos": pipeline.tasks.iter().flatten().map(task_json).collect::<Vec<_>>(),
        "error": pipeline.error.as_ref().map(|e| e.message.clone()),
    })
}

fn error_reply(error: Error) -> Response {
    let (status, message) = match error {
        Error::InvalidRequest(m) | Error::InvalidPayload(m) => (400, m),
        Error::Kling(k) => (502, k.message),
        Error::RateLimited((k, _)) => (429, k.message),
        Error::Unavailable(m) | Error::Config(m) => (503, m),
    };
    reply(status, json!({ "error": message }))
}

fn reply(status: u16, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())
        .build()
}
