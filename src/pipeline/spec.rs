//! A pipeline's description: ordered steps, each a Kling task kind and its request, and
//! which fields of the previous step's result fill which fields of the next request.
//!
//! ```json
//! {"id": "promo-7", "steps": [
//!   {"kind": "text2video", "request": {"prompt": "a cat on a skateboard"}},
//!   {"kind": "video-extend", "request": {"prompt": "it jumps"}},
//!   {"kind": "lip-sync", "request": {"input": {"mode": "text2video", "text": "hi"}},
//!    "inputs": {"input.video_id": "videos.0.id"}}
//! ]}
//! ```
//!
//! `inputs` maps a request field (dot path) to a field of an earlier step's task record
//! (dot path, numbers index lists): `videos.0.id`, `images.0.url` or `task_id` read the
//! previous step; `steps.0.audios.0.url_mp3` reads step 0. Left out, a step takes what
//! its kind's catalog entry names (`takes`) from the previous step, when that step's kind
//! produces it: `video_id` for `video-extend` and `video-to-audio` and `input.video_id`
//! for `lip-sync` from a video, `image` for `image2video` from an image, `sound_file`
//! for `avatar` from an audio. `"inputs": {}` takes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::kling::catalog::{CATALOG, KindSpec, Rule, TaskKind};
use crate::kling::request::{
    RequestError, comparable, digest_of, given, lookup, own_fields, set_path, validate,
};
use crate::task::TaskRecord;
use crate::validate::is_valid_external_task_id;

pub const MAX_STEPS: usize = 10;
/// A pipeline id leaves room for `-{step}` within an `external_task_id`'s 64 characters.
pub const MAX_ID_CHARS: usize = 60;

/// A pipeline as stored: written once, when it is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub id: String,
    pub steps: Vec<StepSpec>,
    /// Our clock, milliseconds.
    pub created_at: u64,
    /// Random, chosen by the creation that stored this description (see
    /// [`crate::store::pipelines::pipeline_entry`]).
    #[serde(default)]
    pub generation: String,
    /// The digest of the steps as the creating request gave them ([`steps_digest`]), so
    /// that the same id with other steps is refused, not answered with this pipeline.
    /// `None` in a description stored before this field: any steps match it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_digest: Option<String>,
}

impl PipelineSpec {
    /// Whether step `step` is one of this pipeline's. A step task past its last is an
    /// older pipeline's of the same id, left behind when the id was used again (a create
    /// checks only the steps it has for leftovers).
    pub fn has_step(&self, step: usize) -> bool {
        step < self.steps.len()
    }
}

#[cfg(test)]
impl PipelineSpec {
    /// Pipeline `id` of `steps` text2video steps, generation `g`, created at 1: for tests.
    pub fn of_text2video_steps(id: &str, steps: usize) -> Self {
        Self {
            id: id.into(),
            steps: (0..steps)
                .map(|_| StepSpec {
                    kind: "text2video".into(),
                    request: Default::default(),
                    inputs: Default::default(),
                })
                .collect(),
            created_at: 1,
            generation: "g".into(),
            steps_digest: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    /// The task kind's name (`text2video`, ...), checked when the pipeline is created.
    pub kind: String,
    pub request: Map<String, Value>,
    /// Request field ← an earlier step's result field, both dot paths.
    pub inputs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("body must be a JSON object with `steps`: a list of {{kind, request, inputs}}")]
    InvalidBody,
    #[error("a pipeline has 1 to 10 steps")]
    StepCount,
    #[error("`steps[{0}].kind` is not a task kind this component submits")]
    UnknownKind(usize),
    #[error("`steps[{step}].request`: {error}")]
    InvalidRequest { step: usize, error: RequestError },
    /// A step whose request is not a JSON object: only the WIT function can send one (it
    /// takes the request as text, `request-json`); an HTTP body's is `InvalidBody`.
    #[error("`steps[{0}].request-json` must be a JSON object")]
    RequestNotAnObject(usize),
    #[error("`steps[{0}].request` nests more than {max} levels of objects and lists", max = MAX_REQUEST_NESTING)]
    RequestTooDeep(usize),
    #[error("`steps[{step}].request.{field}` is set by the pipeline; leave it out")]
    ExternalTaskIdInStep { step: usize, field: &'static str },
    #[error("`steps[{step}].inputs.{target}` is not valid: {problem}")]
    InvalidInput {
        step: usize,
        target: String,
        problem: &'static str,
    },
    #[error("pipeline `id` must be 1 to 60 characters of A-Z a-z 0-9 _ -")]
    InvalidId,
    #[error("`Idempotency-Key` and the body's `id` differ")]
    IdempotencyKeyMismatch,
}

/// The body of `POST /pipelines`, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Description {
    #[serde(default)]
    id: Option<String>,
    steps: Vec<StepDescription>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDescription {
    kind: String,
    request: Map<String, Value>,
    #[serde(default)]
    inputs: Option<BTreeMap<String, String>>,
}

/// A step as described by a caller: the WIT function's input, and each element of the
/// HTTP body's `steps`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewStep {
    pub kind: String,
    pub request: Map<String, Value>,
    /// `None`: the kind's obvious inputs (module docs).
    pub inputs: Option<BTreeMap<String, String>>,
}

/// Reads an HTTP body into an optional id and steps; [`build`] checks them.
pub fn parse_description(body: &[u8]) -> Result<(Option<String>, Vec<NewStep>), SpecError> {
    let description: Description =
        serde_json::from_slice(body).map_err(|_| SpecError::InvalidBody)?;
    let steps = description
        .steps
        .into_iter()
        .map(|s| NewStep {
            kind: s.kind,
            request: s.request,
            inputs: s.inputs,
        })
        .collect();
    Ok((description.id, steps))
}

/// Checks a described pipeline the way each step's submit would, so a pipeline that is
/// accepted does not fail later on a request Kling would obviously refuse. Fields filled
/// from a previous step are checked with a stand-in value.
pub fn build(id: String, steps: Vec<NewStep>, now_ms: u64) -> Result<PipelineSpec, SpecError> {
    if id.len() > MAX_ID_CHARS || !is_valid_external_task_id(&id) {
        return Err(SpecError::InvalidId);
    }
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return Err(SpecError::StepCount);
    }
    let digest = steps_digest(&steps);
    let mut built: Vec<StepSpec> = Vec::with_capacity(steps.len());
    for (index, step) in steps.into_iter().enumerate() {
        let kind = TaskKind::from_name(&step.kind).ok_or(SpecError::UnknownKind(index))?;
        if nesting(&step.request) > MAX_REQUEST_NESTING {
            return Err(SpecError::RequestTooDeep(index));
        }
        let (callback_field, external_field) = own_fields(kind.family());
        if lookup(&step.request, external_field).is_some() {
            return Err(SpecError::ExternalTaskIdInStep {
                step: index,
                field: external_field,
            });
        }
        let previous = built.last().and_then(|p| TaskKind::from_name(&p.kind));
        let first_step_problem = "the first step has no previous step to take it from";
        let inputs = step
            .inputs
            .unwrap_or_else(|| default_inputs(previous, kind, &step.request));
        if index == 0
            && let Some(target) = inputs.keys().next()
        {
            return Err(SpecError::InvalidInput {
                step: 0,
                target: target.clone(),
                problem: first_step_problem,
            });
        }
        let mut checked = step.request.clone();
        for (target, source) in &inputs {
            let invalid = |problem| SpecError::InvalidInput {
                step: index,
                target: target.clone(),
                problem,
            };
            if !is_path(source) {
                return Err(invalid("the source must be a dot path such as videos.0.id"));
            }
            let (producer, path) = if source.starts_with("steps.") {
                match step_source(source) {
                    Some((step, path)) if step < index => {
                        (TaskKind::from_name(&built[step].kind), path)
                    }
                    Some(_) => return Err(invalid("the source must be an earlier step")),
                    None => {
                        return Err(invalid(
                            "a step's source is `steps.{n}.{path}`, such as steps.0.videos.0.id",
                        ));
                    }
                }
            } else {
                (previous, source.as_str())
            };
            // A list of results the source step's kind never has (`audios` of a
            // text2video) would fail the step only after the steps before it were paid.
            let collection = path.split('.').next().unwrap_or_default();
            let has_it = |kind: &KindSpec| kind.outputs.iter().any(|o| o.field() == collection);
            if let Some(producer) = producer
                && CATALOG.iter().any(has_it)
                && !has_it(producer.spec())
            {
                return Err(invalid("the source step's kind has no such results"));
            }
            if !is_path(target) || target.split('.').any(|s| s.parse::<usize>().is_ok()) {
                return Err(invalid("the target must be a dot path of field names"));
            }
            // Nor anything inside one: `external_task_id.a` would make it an object.
            let within = |field: &str| {
                target
                    .strip_prefix(field)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            };
            if [
                callback_field,
                external_field,
                "callback_url",
                "external_task_id",
            ]
            .into_iter()
            .any(within)
            {
                return Err(invalid("this field is set by kling-webhook"));
            }
            if !set_path(
                &mut checked,
                target,
                Value::String("from-previous-step".into()),
            ) {
                return Err(invalid("the target crosses a field that is not an object"));
            }
        }
        let bytes = serde_json::to_vec(&checked).map_err(|_| SpecError::InvalidBody)?;
        validate(kind, &bytes).map_err(|error| SpecError::InvalidRequest { step: index, error })?;
        built.push(StepSpec {
            kind: step.kind,
            request: step.request,
            inputs,
        });
    }
    Ok(PipelineSpec {
        id,
        steps: built,
        created_at: now_ms,
        generation: String::new(),
        steps_digest: Some(digest),
    })
}

/// The digest of steps as a request gives them: each one's kind, request (compared as a
/// task submit's: [`comparable`]) and inputs, before any default is filled in, so a
/// retry matches whatever the catalog's defaults become. Step 0's inputs are left out:
/// it has none (any is refused), so `{}` and none are the same request there.
pub fn steps_digest(steps: &[NewStep]) -> String {
    let comparable: Vec<_> = steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let inputs = step.inputs.as_ref().filter(|_| index > 0);
            (&step.kind, comparable(&step.request), inputs)
        })
        .collect();
    digest_of(&comparable)
}

/// How deep a step's request may nest. serde_json reads 127 levels, and the stored
/// description holds each request three levels down (the description, `steps`, the step),
/// as the HTTP body does; the WIT export parses `request-json` on its own, so without this
/// it could store a description that no longer parses back.
const MAX_REQUEST_NESTING: usize = 124;

/// The levels of objects and lists in `request`, itself included. A loop, not recursion:
/// the component's stack is small (build.rs).
fn nesting(request: &Map<String, Value>) -> usize {
    let mut deepest = 1;
    let mut pending: Vec<(&Value, usize)> = request.values().map(|v| (v, 2)).collect();
    while let Some((value, level)) = pending.pop() {
        match value {
            Value::Object(map) => pending.extend(map.values().map(|v| (v, level + 1))),
            Value::Array(list) => pending.extend(list.iter().map(|v| (v, level + 1))),
            _ => continue,
        }
        deepest = deepest.max(level);
    }
    deepest
}

/// What a step takes from the previous one when its description names nothing: the
/// first of its kind's `takes` that the previous step's kind produces and the request
/// does not already answer.
fn default_inputs(
    previous: Option<TaskKind>,
    kind: TaskKind,
    request: &Map<String, Value>,
) -> BTreeMap<String, String> {
    let Some(produced) = previous.map(|p| p.spec().outputs) else {
        return BTreeMap::new();
    };
    kind.spec()
        .takes
        .iter()
        .filter(|(target, _, _)| !answered(kind, request, target))
        .find(|(_, output, _)| produced.contains(output))
        .map(|(target, _, source)| (target.to_string(), source.to_string()))
        .into_iter()
        .collect()
}

/// Whether `request` gives `target`, or the other field of an exactly-one pair of `kind`'s
/// rules: a default there would clash with the caller's. (Fields of an any-of may come
/// together: image2video's `image` and `image_tail` are the first and the last frame.)
fn answered(kind: TaskKind, request: &Map<String, Value>, target: &str) -> bool {
    let given = |field: &str| given(request, field);
    given(target)
        || kind
            .spec()
            .rules
            .iter()
            .copied()
            .flatten()
            .any(|rule| match *rule {
                Rule::ExactlyOne(a, b) => (a == target && given(b)) || (b == target && given(a)),
                _ => false,
            })
}

/// `steps.{n}.{path}`: a source reading step `n`, not the previous step.
fn step_source(source: &str) -> Option<(usize, &str)> {
    let rest = source.strip_prefix("steps.")?;
    let (step, path) = rest.split_once('.')?;
    Some((step.parse().ok()?, path))
}

/// The most segments a dot path may have: Kling's deepest field and a source such as
/// `steps.0.videos.0.id` need a handful. A path is also how deep the request it builds is,
/// and the component's stack is small (build.rs).
const MAX_PATH_SEGMENTS: usize = 16;

fn is_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').count() <= MAX_PATH_SEGMENTS
        && path.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// The value at a dot path of a task record, if there is one.
fn get_path(record: &TaskRecord, path: &str) -> Option<Value> {
    let mut value = serde_json::to_value(record).ok()?;
    for segment in path.split('.') {
        value = match value {
            Value::Object(mut map) => map.remove(segment)?,
            Value::Array(mut list) => {
                let index = segment.parse::<usize>().ok()?;
                (index < list.len()).then(|| list.swap_remove(index))?
            }
            _ => return None,
        };
    }
    (!value.is_null()).then_some(value)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the earlier step's result has no `{source_path}` for `{target}`")]
pub struct MissingInput {
    pub target: String,
    pub source_path: String,
}

/// The request to send for step `index`, with its inputs filled from earlier steps'
/// tasks (`task(n)` is step `n`'s).
pub fn request_for<'a>(
    step: &StepSpec,
    index: usize,
    task: &dyn Fn(usize) -> Option<&'a TaskRecord>,
) -> Result<Map<String, Value>, MissingInput> {
    let mut request = step.request.clone();
    for (target, source) in &step.inputs {
        let missing = || MissingInput {
            target: target.clone(),
            source_path: source.clone(),
        };
        let (from, path) = match step_source(source) {
            Some((from, path)) if from < index => (Some(from), path),
            Some(_) => return Err(missing()),
            None => (index.checked_sub(1), source.as_str()),
        };
        let value = from
            .and_then(task)
            .and_then(|record| get_path(record, path))
            .ok_or_else(missing)?;
        if !set_path(&mut request, target, value) {
            return Err(missing());
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{TaskStatus, Video};
    use serde_json::json;

    fn steps(value: Value) -> Vec<NewStep> {
        let body = json!({ "steps": value }).to_string();
        parse_description(body.as_bytes()).unwrap().1
    }

    fn three_steps() -> Vec<NewStep> {
        steps(json!([
            {"kind": "text2video", "request": {"prompt": "a cat"}},
            {"kind": "video-extend", "request": {"prompt": "it jumps"}},
            {"kind": "lip-sync", "request": {"input": {"mode": "text2video", "text": "hi"}}},
        ]))
    }

    fn succeeded(video_id: &str) -> TaskRecord {
        TaskRecord {
            external_task_id: Some("p-0".into()),
            kind: Some("text2video".into()),
            videos: vec![Video {
                id: Some(video_id.into()),
                url: Some("https://cdn/v.mp4".into()),
                duration: Some("5".into()),
                watermark_url: None,
            }],
            deliveries: 1,
            ..TaskRecord::example(TaskStatus::Succeed)
        }
    }

    #[test]
    fn an_audio_feeds_an_avatar_and_any_step_reads_any_earlier_one() {
        let spec = build(
            "p".into(),
            steps(json!([
                {"kind": "text-to-audio", "request": {"prompt": "hello", "duration": 5}},
                {"kind": "avatar", "request": {"image": "https://img/face.png"}},
                {"kind": "video-extend", "request": {"prompt": "more"}},
                {"kind": "video-to-audio", "request": {},
                 "inputs": {"video_id": "steps.1.videos.0.id"}},
                {"kind": "text-to-video/kling-3.0", "request": {"prompt": "p"},
                 "inputs": {"options.watermark_info.audio": "steps.0.audios.0.url_wav"}},
            ])),
            7,
        )
        .unwrap();
        let inputs = |step: usize| {
            spec.steps[step]
                .inputs
                .clone()
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            inputs(1),
            [("sound_file".to_string(), "audios.0.url_mp3".to_string())]
        );
        assert_eq!(
            inputs(2),
            [("video_id".to_string(), "videos.0.id".to_string())]
        );

        let mut audio = TaskRecord::example(TaskStatus::Succeed);
        audio.more.audios = vec![crate::task::Audio {
            url_mp3: Some("https://cdn/a.mp3".into()),
            url_wav: Some("https://cdn/a.wav".into()),
            ..Default::default()
        }];
        let avatar = succeeded("avatar-video");
        let extended = succeeded("extended-video");
        let records = [&audio, &avatar, &extended];
        let task = |n: usize| records.get(n).copied();
        let request = request_for(&spec.steps[1], 1, &task).unwrap();
        assert_eq!(request["sound_file"], "https://cdn/a.mp3");
        let request = request_for(&spec.steps[3], 3, &task).unwrap();
        assert_eq!(
            request["video_id"], "avatar-video",
            "step 1's, not step 2's"
        );
        let request = request_for(&spec.steps[4], 4, &task).unwrap();
        assert_eq!(
            request["options"]["watermark_info"]["audio"],
            "https://cdn/a.wav"
        );

        // Only an earlier step can be read.
        let err = build(
            "p".into(),
            steps(json!([
                {"kind": "text2video", "request": {"prompt": "a"}},
                {"kind": "video-extend", "request": {}, "inputs": {"video_id": "steps.1.videos.0.id"}},
            ])),
            7,
        )
        .unwrap_err();
        assert!(
            matches!(err, SpecError::InvalidInput { step: 1, problem, .. } if problem.contains("earlier")),
            "{err:?}"
        );
        // An API 2.0 step's own fields are in `options`.
        let err = build(
            "p".into(),
            steps(json!([
                {"kind": "text-to-video/kling-3.0", "request": {"prompt": "a", "options": {"external_task_id": "x"}}},
            ])),
            7,
        )
        .unwrap_err();
        assert_eq!(
            err,
            SpecError::ExternalTaskIdInStep {
                step: 0,
                field: "options.external_task_id"
            }
        );
    }

    #[test]
    fn step_sources_are_checked_and_defaults_never_clash_with_the_request() {
        let first = json!({"kind": "text2video", "request": {"prompt": "a"}});
        for source in [
            "steps.0",
            "steps.x.videos.0.id",
            "steps.99999999999999999999.id",
            "steps.1.videos.0.id",
        ] {
            let err = build(
                "p".into(),
                steps(json!([first, {"kind": "video-extend", "request": {}, "inputs": {"video_id": source}}])),
                7,
            )
            .unwrap_err();
            assert!(
                matches!(err, SpecError::InvalidInput { step: 1, .. }),
                "{source}: {err:?}"
            );
        }
        // A list of results the source step's kind never has: refused up front, by the
        // previous step or by `steps.{n}`; one it has is taken.
        let avatar = |source: &str| {
            build(
                "p".into(),
                steps(json!([
                    first,
                    {"kind": "text-to-audio", "request": {"prompt": "a", "duration": 5}},
                    {"kind": "avatar", "request": {"image": "https://f.png"}, "inputs": {"sound_file": source}},
                ])),
                7,
            )
        };
        for source in ["steps.0.audios.0.url_mp3", "steps.1.videos.0.url"] {
            let err = avatar(source).unwrap_err();
            assert!(
                matches!(err, SpecError::InvalidInput { step: 2, problem, .. } if problem.contains("no such results")),
                "{source}: {err:?}"
            );
        }
        assert!(avatar("audios.0.url_mp3").is_ok());
        assert!(avatar("steps.1.audios.0.url_mp3").is_ok());
        // The caller's `video_url` answers video-to-audio's exactly-one pair: no default.
        let spec = build(
            "p".into(),
            steps(
                json!([first, {"kind": "video-to-audio", "request": {"video_url": "https://v"}}]),
            ),
            7,
        )
        .unwrap();
        assert!(spec.steps[1].inputs.is_empty());
        // The caller's own `image` is kept; a last frame still takes the first from before.
        let image_step = |request: Value| {
            build(
                "p".into(),
                steps(json!([
                    {"kind": "image-generation", "request": {"prompt": "a"}},
                    {"kind": "image2video", "request": request},
                ])),
                7,
            )
            .unwrap()
            .steps[1]
                .inputs
                .clone()
        };
        assert!(image_step(json!({"image": "https://mine.png"})).is_empty());
        assert_eq!(
            image_step(json!({"image_tail": "https://last.png"}))["image"],
            "images.0.url"
        );
        assert_eq!(image_step(json!({"image": ""}))["image"], "images.0.url");
        // ai-multi-shot's views are no single image: image2video must be told, up front.
        let err = build(
            "p".into(),
            steps(json!([
                {"kind": "ai-multi-shot", "request": {"element_frontal_image": "https://f.png"}},
                {"kind": "image2video", "request": {}},
            ])),
            7,
        )
        .unwrap_err();
        assert!(
            matches!(&err, SpecError::InvalidRequest { step: 1, error } if error.field == "image"),
            "{err:?}"
        );
    }

    #[test]
    fn video_steps_take_the_previous_video_by_default() {
        let spec = build("p".into(), three_steps(), 7).unwrap();
        assert!(spec.steps[0].inputs.is_empty());
        let previous = succeeded("v-1");
        let extend = request_for(&spec.steps[1], 1, &|_| Some(&previous)).unwrap();
        assert_eq!(extend["video_id"], "v-1");
        assert_eq!(extend["prompt"], "it jumps");
        let lip_sync = request_for(&spec.steps[2], 2, &|_| Some(&previous)).unwrap();
        assert_eq!(lip_sync["input"]["video_id"], "v-1");
        assert_eq!(
            lip_sync["input"]["text"], "hi",
            "the rest of `input` is kept"
        );
    }

    #[test]
    fn explicit_inputs_take_any_field_and_an_empty_map_takes_none() {
        let spec = build(
            "p".into(),
            steps(json!([
                {"kind": "text2video", "request": {"prompt": "a"}},
                {"kind": "lip-sync", "request": {"input": {"mode": "audio2video", "audio_url": "https://a/b.mp3"}},
                 "inputs": {"input.video_url": "videos.0.url"}},
                {"kind": "text2video", "request": {"prompt": "b"}, "inputs": {}},
            ])),
            7,
        )
        .unwrap();
        let record = succeeded("v");
        let request = request_for(&spec.steps[1], 1, &|_| Some(&record)).unwrap();
        assert_eq!(request["input"]["video_url"], "https://cdn/v.mp4");
        assert!(request["input"].get("video_id").is_none());
        assert!(spec.steps[2].inputs.is_empty());
    }

    /// `{"prompt": "a", "extra": [[...]]}` with `levels` levels in all.
    fn request_nested(levels: usize) -> Map<String, Value> {
        let mut extra = json!([]);
        for _ in 2..levels {
            extra = json!([extra]);
        }
        let mut request = Map::new();
        request.insert("prompt".into(), json!("a"));
        request.insert("extra".into(), extra);
        request
    }

    #[test]
    fn a_request_is_stored_only_as_deep_as_its_description_parses_back() {
        assert_eq!(nesting(&request_nested(124)), 124);
        // As the WIT export hands steps over: each request parsed on its own.
        let step = |levels| NewStep {
            kind: "text2video".into(),
            request: request_nested(levels),
            inputs: None,
        };
        let spec = build("p".into(), vec![step(124)], 7).unwrap();
        let stored = serde_json::to_vec(&spec).unwrap();
        assert_eq!(
            serde_json::from_slice::<PipelineSpec>(&stored).unwrap(),
            spec
        );

        let err = build("p".into(), vec![step(1), step(125)], 7).unwrap_err();
        assert_eq!(err, SpecError::RequestTooDeep(1));
        assert!(err.to_string().contains("more than 124 levels"), "{err}");
        // Over HTTP the body holds the request where the stored description does.
        let body = |levels| {
            json!({"steps": [{"kind": "text2video", "request": request_nested(levels)}]})
                .to_string()
        };
        assert!(parse_description(body(124).as_bytes()).is_ok());
        assert_eq!(
            parse_description(body(125).as_bytes()),
            Err(SpecError::InvalidBody)
        );
    }

    #[test]
    fn a_path_of_more_than_16_segments_is_refused() {
        let deep = ["a"; 17].join(".");
        for inputs in [
            json!({ deep.clone(): "videos.0.id" }),
            json!({ "prompt": deep }),
        ] {
            let err = build(
                "p".into(),
                steps(json!([
                    {"kind": "text2video", "request": {"prompt": "a"}},
                    {"kind": "text2video", "request": {"prompt": "b"}, "inputs": inputs},
                ])),
                7,
            )
            .unwrap_err();
            assert!(
                matches!(&err, SpecError::InvalidInput { step: 1, .. }),
                "{err:?}"
            );
        }
        let sixteen = ["a"; 16].join(".");
        build(
            "p".into(),
            steps(json!([
                {"kind": "text2video", "request": {"prompt": "a"}},
                {"kind": "text2video", "request": {"prompt": "b"}, "inputs": { sixteen: "videos.0.id" }},
            ])),
            7,
        )
        .unwrap();
    }

    #[test]
    fn an_image_feeds_image2video() {
        let spec = build(
            "p".into(),
            steps(json!([
                {"kind": "image-generation", "request": {"prompt": "a"}},
                {"kind": "image2video", "request": {"prompt": "move"}},
            ])),
            7,
        )
        .unwrap();
        assert_eq!(spec.steps[1].inputs["image"], "images.0.url");
    }

    #[test]
    fn a_missing_source_is_named() {
        let spec = build("p".into(), three_steps(), 7).unwrap();
        let mut previous = succeeded("v");
        previous.videos.clear();
        assert_eq!(
            request_for(&spec.steps[1], 1, &|_| Some(&previous)).unwrap_err(),
            MissingInput {
                target: "video_id".into(),
                source_path: "videos.0.id".into()
            }
        );
    }

    #[test]
    fn invalid_descriptions_are_named() {
        let cases: Vec<(Value, SpecError)> = vec![
            (json!([]), SpecError::StepCount),
            (
                json!([{"kind": "text2audio", "request": {}}]),
                SpecError::UnknownKind(0),
            ),
            (
                json!([{"kind": "text2video", "request": {"prompt": "a", "external_task_id": "x"}}]),
                SpecError::ExternalTaskIdInStep {
                    step: 0,
                    field: "external_task_id",
                },
            ),
            (
                json!([{"kind": "text2video", "request": {"prompt": "a"}, "inputs": {"prompt": "task_id"}}]),
                SpecError::InvalidInput {
                    step: 0,
                    target: "prompt".into(),
                    problem: "the first step has no previous step to take it from",
                },
            ),
            (
                json!([{"kind": "text2video", "request": {"prompt": "a"}},
                       {"kind": "video-extend", "request": {}, "inputs": {"callback_url": "videos.0.url"}}]),
                SpecError::InvalidInput {
                    step: 1,
                    target: "callback_url".into(),
                    problem: "this field is set by kling-webhook",
                },
            ),
            (
                json!([{"kind": "text2video", "request": {"prompt": "a"}},
                       {"kind": "video-extend", "request": {}, "inputs": {"video_id": "videos.0.id", "external_task_id.a": "videos.0.id"}}]),
                SpecError::InvalidInput {
                    step: 1,
                    target: "external_task_id.a".into(),
                    problem: "this field is set by kling-webhook",
                },
            ),
            (
                json!([{"kind": "text2video", "request": {"prompt": "a"}},
                       {"kind": "text-to-video/kling-3.0", "request": {"prompt": "b"}, "inputs": {"options.external_task_id.x": "videos.0.id"}}]),
                SpecError::InvalidInput {
                    step: 1,
                    target: "options.external_task_id.x".into(),
                    problem: "this field is set by kling-webhook",
                },
            ),
            (
                json!([{"kind": "text2video", "request": {"prompt": "a"}},
                       {"kind": "video-extend", "request": {}, "inputs": {"video_id": "videos..id"}}]),
                SpecError::InvalidInput {
                    step: 1,
                    target: "video_id".into(),
                    problem: "the source must be a dot path such as videos.0.id",
                },
            ),
            (
                // video-extend without inputs after an image has no video_id.
                json!([{"kind": "image-generation", "request": {"prompt": "a"}},
                       {"kind": "video-extend", "request": {}}]),
                SpecError::InvalidRequest {
                    step: 1,
                    error: validate(TaskKind::from_name("video-extend").unwrap(), b"{}")
                        .unwrap_err(),
                },
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                build("p".into(), steps(value.clone()), 7).unwrap_err(),
                expected,
                "{value}"
            );
        }
        assert_eq!(
            build("a.b".into(), three_steps(), 7).unwrap_err(),
            SpecError::InvalidId
        );
        assert_eq!(
            build("x".repeat(61), three_steps(), 7).unwrap_err(),
            SpecError::InvalidId
        );
        for body in [&b"[]"[..], b"{}", br#"{"steps":[],"extra":1}"#, b"nope"] {
            assert!(
                matches!(parse_description(body), Err(SpecError::InvalidBody)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
