//! Kling callback bodies, raw bytes in, one [`TaskEvent`] out. Pure: no I/O.
//!
//! Accepted shapes (`../shared/kling-api.md`):
//! - Kling's flat callback: `{"task_id","task_status","task_info":{..},"task_result":{..},..}`;
//! - the same object wrapped as `{"code":0,"message":"success","data":{..}}`, as widely
//!   copied third-party guides show it;
//! - the newer "model in the path" API: `{"id","status":"succeeded","outputs":[..],"external_id",..}`.
//!
//! Only the id and the status are required; unknown fields are ignored, ids stay strings,
//! and an envelope's `message` never decides success.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::task::{
    Audio, Element, EventSource, Image, KlingJson, MAX_KLING_JSON_BYTES, MoreOutputs, TaskEvent,
    TaskStatus, Video, Voice,
};
use crate::validate::is_valid_task_id;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("body has no task id (`task_id`, or `id` in the newer shape)")]
    MissingTaskId,
    #[error("body has no task status (`task_status`, or `status` in the newer shape)")]
    MissingStatus,
    #[error("unknown task status; expected submitted, processing, succeed or failed")]
    UnknownStatus,
    #[error("task id must be 1 to 128 characters of A-Z a-z 0-9 . _ -")]
    InvalidTaskId,
    #[error("external_task_id must be a string or a whole number")]
    InvalidExternalTaskId,
}

/// Parses one callback body. See the module docs for the accepted shapes.
pub fn parse_callback(body: &[u8]) -> Result<TaskEvent, PayloadError> {
    parse_envelope(body).map(Parsed::into_event)
}

/// What decides a delivery (which task, which status, how new), read and checked before
/// its results: a repeat is recognised from this alone, and its results never read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub task_id: String,
    pub status: TaskStatus,
    pub external_task_id: Option<String>,
    pub created_at: Option<u64>,
    pub updated_at: Option<u64>,
}

/// A body whose envelope is read and valid; its results are read by [`Parsed::into_event`].
pub struct Parsed {
    envelope: Envelope,
    raw: RawCallback,
}

impl Parsed {
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The whole event: the envelope and every result the body carries.
    pub fn into_event(self) -> TaskEvent {
        if self.raw.is_flat() {
            self.raw.into_flat_event(self.envelope)
        } else {
            self.raw.into_new_standard_event(self.envelope)
        }
    }
}

/// Reads a body's envelope, leaving its results unread (kept as raw JSON). Every error
/// [`parse_callback`] can give, this gives.
pub fn parse_envelope(body: &[u8]) -> Result<Parsed, PayloadError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some() && first != Some(&b'{') {
        // Valid JSON that is not an object (`[]`, `"x"`, `1`) is a different mistake from
        // broken JSON; say which.
        return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => Err(PayloadError::NotAnObject),
            Err(e) => Err(PayloadError::InvalidJson(e.to_string())),
        };
    }
    let raw: RawCallback =
        serde_json::from_slice(body).map_err(|e| PayloadError::InvalidJson(e.to_string()))?;
    let raw = raw.unwrapped();
    let envelope = raw.envelope()?;
    Ok(Parsed { envelope, raw })
}

/// Every field any accepted shape may carry; each is optional here and checked after.
/// Only the id and the status decide whether a delivery can be judged: any other field
/// that is `null` or of another type than documented is read as absent (a list keeps
/// its readable elements), so a field Kling changes never loses the whole delivery.
#[derive(Deserialize, Default)]
struct RawCallback {
    // Flat (legacy) shape.
    #[serde(default, deserialize_with = "lenient")]
    task_id: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    task_status: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    task_status_msg: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    created_at: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    updated_at: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    final_unit_deduction: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    task_info: Option<RawTaskInfo>,
    // Kept as it arrived (see `kling_json`), and read into typed outputs from there.
    #[serde(default)]
    task_result: Option<Box<RawValue>>,
    // Third-party wrapper: read as a callback of its own when it is an object.
    #[serde(default)]
    data: Option<Box<RawValue>>,
    // Newer "model in the path" shape.
    #[serde(default, deserialize_with = "lenient")]
    id: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    status: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    message: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    create_time: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    update_time: Option<Lenient>,
    // Not lenient: the external id names the task a delivery is filed under.
    #[serde(default)]
    external_id: Option<Value>,
    #[serde(default)]
    outputs: Option<Box<RawValue>>,
    #[serde(default)]
    billing: Option<Box<RawValue>>,
    // Legacy billing (`{quota, list_price}`), kept as `billing`.
    #[serde(default)]
    final_balance_deduction: Option<Box<RawValue>>,
}

#[derive(Deserialize, Default)]
struct RawTaskInfo {
    // Not lenient: the external id names the task a delivery is filed under.
    #[serde(default)]
    external_task_id: Option<Value>,
    // The video a video-to-video task (advanced lip-sync) worked on.
    #[serde(default, deserialize_with = "lenient")]
    parent_video: Option<RawVideo>,
}

#[derive(Deserialize, Default)]
struct RawTaskResult {
    #[serde(default, deserialize_with = "lenient_list")]
    videos: Vec<RawVideo>,
    #[serde(default, deserialize_with = "lenient_list")]
    images: Vec<RawImage>,
    #[serde(default, deserialize_with = "lenient_list")]
    series_images: Vec<RawImage>,
    #[serde(default, deserialize_with = "lenient_list")]
    audios: Vec<RawAudio>,
    #[serde(default, deserialize_with = "lenient_list")]
    voices: Vec<RawVoice>,
    #[serde(default, deserialize_with = "lenient_list")]
    elements: Vec<RawElement>,
}

#[derive(Deserialize, Default)]
struct RawAudio {
    #[serde(default, deserialize_with = "lenient")]
    id: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    url_mp3: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    url_wav: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    duration_mp3: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    duration_wav: Option<Lenient>,
}

#[derive(Deserialize, Default)]
struct RawVoice {
    #[serde(default, deserialize_with = "lenient")]
    voice_id: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    voice_name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    trial_url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    owned_by: Option<Lenient>,
}

#[derive(Deserialize, Default)]
struct RawElement {
    #[serde(default, deserialize_with = "lenient")]
    element_id: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    element_name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    element_description: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    reference_type: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    status: Option<Lenient>,
}

#[derive(Deserialize, Default)]
struct RawVideo {
    #[serde(default, deserialize_with = "lenient")]
    id: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    duration: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    watermark_url: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawImage {
    #[serde(default, deserialize_with = "lenient")]
    index: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    watermark_url: Option<String>,
    // ai-multi-shot: three views of one subject.
    #[serde(default, deserialize_with = "lenient")]
    url_1: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    url_2: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    url_3: Option<String>,
    // omni-image.
    #[serde(default, deserialize_with = "lenient")]
    result_type: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    group_id: Option<Lenient>,
}

#[derive(Deserialize, Default)]
struct RawOutput {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    id: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    watermark_url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    duration: Option<Lenient>,
    // An image's group, and the legacy image fields, should an API 2.0 image carry them.
    #[serde(default, deserialize_with = "lenient")]
    group_id: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    index: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    url_1: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    url_2: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    url_3: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    result_type: Option<String>,
    // Audio, in API 2.0's names.
    #[serde(default, deserialize_with = "lenient")]
    mp3_url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    wav_url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    mp3_duration: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    wav_duration: Option<Lenient>,
    // Voice and element, in the legacy names (listed, not flattened: serde's flatten
    // would bring its buffering deserializer into the component).
    #[serde(default, deserialize_with = "lenient")]
    voice_id: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    voice_name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    trial_url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    owned_by: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    element_id: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    element_name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    element_description: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    reference_type: Option<Lenient>,
    #[serde(default, deserialize_with = "lenient")]
    status: Option<Lenient>,
}

/// A field read as absent when it is `null` or not of the documented type.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let value = Value::deserialize(deserializer)?;
    Ok(T::deserialize(value).ok())
}

/// A list of which only the readable elements are kept; anything but a list is empty.
fn lenient_list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(match Value::deserialize(deserializer)? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| T::deserialize(item).ok())
            .collect(),
        _ => Vec::new(),
    })
}

/// A scalar Kling documents as a string but that some senders emit as a number.
#[derive(Clone)]
enum Lenient {
    Text(String),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

/// Written out rather than `#[serde(untagged)]`, which would buffer every value through
/// serde's `Content` (code the component would carry for four scalars).
impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = Lenient;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E>(self, text: &str) -> Result<Lenient, E> {
                Ok(Lenient::Text(text.to_string()))
            }
            fn visit_string<E>(self, text: String) -> Result<Lenient, E> {
                Ok(Lenient::Text(text))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Lenient, E> {
                Ok(Lenient::Unsigned(n))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Lenient, E> {
                Ok(Lenient::Signed(n))
            }
            fn visit_f64<E>(self, x: f64) -> Result<Lenient, E> {
                Ok(Lenient::Float(x))
            }
        }
        deserializer.deserialize_any(Scalar)
    }
}

impl Lenient {
    /// Ids: a string, or an integer kept digit for digit. A float is not an id.
    fn into_id(self) -> Option<String> {
        match self {
            Lenient::Text(s) => Some(s),
            Lenient::Unsigned(n) => Some(n.to_string()),
            Lenient::Signed(_) | Lenient::Float(_) => None,
        }
    }

    /// Milliseconds: an integer or a string of digits.
    fn into_millis(self) -> Option<u64> {
        match self {
            Lenient::Unsigned(n) => Some(n),
            Lenient::Text(s) => s.trim().parse().ok(),
            Lenient::Signed(_) | Lenient::Float(_) => None,
        }
    }

    /// Free text such as `duration` (`"5.1"`) or `final_unit_deduction` (`"1"`).
    fn into_text(self) -> String {
        match self {
            Lenient::Text(s) => s,
            Lenient::Unsigned(n) => n.to_string(),
            Lenient::Signed(n) => n.to_string(),
            Lenient::Float(x) => x.to_string(),
        }
    }
}

impl RawCallback {
    /// A body that names no task but wraps one in `data` is read as that one: one level,
    /// never more (each level would be parsed again, and a body of nested `data` must
    /// not cost more than one).
    fn unwrapped(self) -> Self {
        let names_a_task =
            self.task_id.is_some() || self.task_status.is_some() || self.id.is_some();
        if !names_a_task
            && let Some(inner) = self
                .data
                .as_deref()
                .and_then(|data| serde_json::from_slice::<RawCallback>(data.get().as_bytes()).ok())
        {
            return inner;
        }
        self
    }

    /// Kling's flat shape, as opposed to the newer one (`id`, `status`, `outputs`).
    fn is_flat(&self) -> bool {
        self.task_id.is_some() || self.task_status.is_some()
    }

    fn envelope(&self) -> Result<Envelope, PayloadError> {
        let (status, task_id, external_task_id, created_at, updated_at) = if self.is_flat() {
            (
                &self.task_status,
                &self.task_id,
                self.task_info
                    .as_ref()
                    .and_then(|info| info.external_task_id.as_ref()),
                &self.created_at,
                &self.updated_at,
            )
        } else {
            (
                &self.status,
                &self.id,
                self.external_id.as_ref(),
                &self.create_time,
                &self.update_time,
            )
        };
        Ok(Envelope {
            status: parse_status(status.as_deref())?,
            task_id: parse_task_id(task_id.clone())?,
            external_task_id: parse_external_task_id(external_task_id)?,
            created_at: created_at.clone().and_then(Lenient::into_millis),
            updated_at: updated_at.clone().and_then(Lenient::into_millis),
        })
    }

    fn into_flat_event(self, envelope: Envelope) -> TaskEvent {
        // Through a `Value`, like every lenient field: a repeated key keeps its last value
        // instead of refusing the whole result.
        let result: RawTaskResult = self
            .task_result
            .as_deref()
            .and_then(|raw| serde_json::from_slice::<Value>(raw.get().as_bytes()).ok())
            .and_then(|value| RawTaskResult::deserialize(value).ok())
            .unwrap_or_default();
        let mut more = MoreOutputs {
            series_images: result
                .series_images
                .into_iter()
                .map(|image| image.into_image(None))
                .collect(),
            audios: result
                .audios
                .into_iter()
                .map(RawAudio::into_audio)
                .collect(),
            voices: result
                .voices
                .into_iter()
                .map(RawVoice::into_voice)
                .collect(),
            elements: result
                .elements
                .into_iter()
                .map(RawElement::into_element)
                .collect(),
            ..MoreOutputs::default()
        };
        // An empty object (or one of nothing readable) is no parent video.
        more.parent_video = self
            .task_info
            .and_then(|info| info.parent_video)
            .map(RawVideo::into_video)
            .filter(|video| *video != Video::default());
        // Legacy billing sits beside the result: `final_balance_deduction`.
        more.keep_kling_json(self.task_result, self.final_balance_deduction);
        TaskEvent {
            task_id: envelope.task_id,
            status: envelope.status,
            status_msg: self.task_status_msg.unwrap_or_default(),
            external_task_id: envelope.external_task_id,
            created_at: envelope.created_at,
            updated_at: envelope.updated_at,
            videos: result
                .videos
                .into_iter()
                .map(RawVideo::into_video)
                .collect(),
            images: result
                .images
                .into_iter()
                .map(|image| image.into_image(None))
                .collect(),
            more,
            final_unit_deduction: self.final_unit_deduction.map(Lenient::into_text),
            source: EventSource::Callback,
        }
    }

    fn into_new_standard_event(self, envelope: Envelope) -> TaskEvent {
        let outputs: Vec<RawOutput> = self
            .outputs
            .as_deref()
            .map(|raw| list_of(raw.get()))
            .unwrap_or_default();
        let mut videos = Vec::new();
        let mut images = Vec::new();
        let mut more = MoreOutputs::default();
        for output in outputs {
            match output.kind.as_deref() {
                Some("image") => {
                    let position = u32::try_from(images.len()).ok();
                    images.push(
                        RawImage {
                            index: output.index,
                            url: output.url,
                            watermark_url: output.watermark_url,
                            url_1: output.url_1,
                            url_2: output.url_2,
                            url_3: output.url_3,
                            result_type: output.result_type,
                            group_id: output.group_id,
                        }
                        .into_image(position),
                    )
                }
                Some("audio") => more.audios.push(Audio {
                    id: output.id.and_then(Lenient::into_id),
                    url_mp3: output.mp3_url.or(output.url),
                    url_wav: output.wav_url,
                    duration_mp3: output
                        .mp3_duration
                        .or(output.duration)
                        .map(Lenient::into_text),
                    duration_wav: output.wav_duration.map(Lenient::into_text),
                }),
                Some("voice") => more.voices.push(
                    RawVoice {
                        voice_id: output.voice_id.or(output.id),
                        voice_name: output.voice_name,
                        trial_url: output.trial_url,
                        owned_by: output.owned_by,
                    }
                    .into_voice(),
                ),
                Some("element") => more.elements.push(
                    RawElement {
                        element_id: output.element_id.or(output.id),
                        element_name: output.element_name,
                        element_description: output.element_description,
                        reference_type: output.reference_type,
                        status: output.status,
                    }
                    .into_element(),
                ),
                // A video, or an output with no type (older bodies).
                Some("video") | None => videos.push(Video {
                    id: output.id.and_then(Lenient::into_id),
                    url: output.url,
                    duration: output.duration.map(Lenient::into_text),
                    watermark_url: output.watermark_url,
                }),
                // A type this build does not know: not taken for something it is not;
                // it stays in `kling_result`.
                Some(_) => {}
            }
        }
        more.keep_kling_json(self.outputs, self.billing);
        TaskEvent {
            task_id: envelope.task_id,
            status: envelope.status,
            status_msg: self.message.unwrap_or_default(),
            external_task_id: envelope.external_task_id,
            created_at: envelope.created_at,
            updated_at: envelope.updated_at,
            videos,
            images,
            more,
            final_unit_deduction: None,
            source: EventSource::Callback,
        }
    }
}

/// The readable elements of a JSON list; anything but a list is empty.
fn list_of<T: DeserializeOwned>(text: &str) -> Vec<T> {
    match serde_json::from_slice::<Value>(text.as_bytes()) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .filter_map(|item| T::deserialize(item).ok())
            .collect(),
        _ => Vec::new(),
    }
}

impl MoreOutputs {
    /// Keeps Kling's own result and billing JSON as they arrived, each up to
    /// [`MAX_KLING_JSON_BYTES`]; a longer one is left out and `kling_json_cut` set.
    fn keep_kling_json(&mut self, result: Option<Box<RawValue>>, billing: Option<Box<RawValue>>) {
        let mut keep = |raw: Option<Box<RawValue>>| match raw {
            Some(raw) if raw.get() == "null" => None,
            Some(raw) if raw.get().len() > MAX_KLING_JSON_BYTES => {
                self.kling_json_cut = true;
                None
            }
            raw => raw.map(KlingJson),
        };
        let result = keep(result);
        let billing = keep(billing);
        self.kling_result = result;
        self.billing = billing;
    }
}

impl RawImage {
    /// `position`: the index to give an image that names none (API 2.0 lists them).
    fn into_image(self, position: Option<u32>) -> Image {
        Image {
            index: self
                .index
                .and_then(Lenient::into_millis)
                .and_then(|n| u32::try_from(n).ok())
                .or(position),
            url: self.url,
            watermark_url: self.watermark_url,
            url_1: self.url_1,
            url_2: self.url_2,
            url_3: self.url_3,
            result_type: self.result_type,
            group_id: self.group_id.and_then(Lenient::into_id),
        }
    }
}

impl RawAudio {
    fn into_audio(self) -> Audio {
        Audio {
            id: self.id.and_then(Lenient::into_id),
            url_mp3: self.url_mp3,
            url_wav: self.url_wav,
            duration_mp3: self.duration_mp3.map(Lenient::into_text),
            duration_wav: self.duration_wav.map(Lenient::into_text),
        }
    }
}

impl RawVoice {
    fn into_voice(self) -> Voice {
        Voice {
            voice_id: self.voice_id.and_then(Lenient::into_id),
            voice_name: self.voice_name,
            trial_url: self.trial_url,
            owned_by: self.owned_by.map(Lenient::into_text),
        }
    }
}

impl RawElement {
    fn into_element(self) -> Element {
        Element {
            element_id: self.element_id.and_then(Lenient::into_id),
            element_name: self.element_name,
            element_description: self.element_description,
            reference_type: self.reference_type.map(Lenient::into_text),
            status: self.status.map(Lenient::into_text),
        }
    }
}

impl RawVideo {
    fn into_video(self) -> Video {
        Video {
            id: self.id.and_then(Lenient::into_id),
            url: self.url,
            duration: self.duration.map(Lenient::into_text),
            watermark_url: self.watermark_url,
        }
    }
}

fn parse_status(status: Option<&str>) -> Result<TaskStatus, PayloadError> {
    let status = status.ok_or(PayloadError::MissingStatus)?;
    TaskStatus::from_kling(status).ok_or(PayloadError::UnknownStatus)
}

fn parse_task_id(id: Option<Lenient>) -> Result<String, PayloadError> {
    let id = id.ok_or(PayloadError::MissingTaskId)?;
    let id = id.into_id().ok_or(PayloadError::InvalidTaskId)?;
    if is_valid_task_id(&id) {
        Ok(id)
    } else {
        Err(PayloadError::InvalidTaskId)
    }
}

/// An empty or `null` external id means "none" (Kling sends `""` when the submitter set
/// none); a whole number is read digit for digit; any other string is kept as it came
/// (a task submitted elsewhere may use any id Kling takes: the receiver files one outside
/// our key format under Kling's `task_id`); anything else is refused, since the external
/// id decides which task the delivery is filed under.
fn parse_external_task_id(id: Option<&Value>) -> Result<Option<String>, PayloadError> {
    match id {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if id.is_empty() => Ok(None),
        Some(Value::String(id)) => Ok(Some(id.clone())),
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err(PayloadError::InvalidExternalTaskId),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flat callback exactly as `../shared/kling-api.md` shows it.
    const KLING_DOC_FLAT: &str = r#"{"task_id":"867283741759111202","task_status":"succeed","task_status_msg":"",
 "created_at":1722769557708,"updated_at":1722769600123,"final_unit_deduction":"1",
 "task_info":{"parent_video":{"id":"p1","url":"https://p/1.mp4","duration":"5"},"external_task_id":"job-1"},
 "task_result":{"images":[{"index":0,"url":"https://i/0.png"}],
                "videos":[{"id":"867283741759111300","url":"https://v/1.mp4","duration":"5.1"}]}}"#;

    /// The newer API's body as `../shared/kling-api.md` shows it (its signature example).
    const KLING_DOC_NEW_STANDARD: &str = r#"{"id":"1234567890","status":"succeeded","message":"","create_time":1781080778802,"update_time":1781080794151}"#;

    #[test]
    fn parses_the_documented_flat_callback() {
        let event = parse_callback(KLING_DOC_FLAT.as_bytes()).unwrap();
        assert_eq!(
            event,
            TaskEvent {
                task_id: "867283741759111202".into(),
                status: TaskStatus::Succeed,
                status_msg: String::new(),
                external_task_id: Some("job-1".into()),
                created_at: Some(1722769557708),
                updated_at: Some(1722769600123),
                videos: vec![Video {
                    id: Some("867283741759111300".into()),
                    url: Some("https://v/1.mp4".into()),
                    duration: Some("5.1".into()),
                    watermark_url: None,
                }],
                images: vec![Image {
                    index: Some(0),
                    url: Some("https://i/0.png".into()),
                    ..Image::default()
                }],
                more: MoreOutputs {
                    kling_result: Some(KlingJson(
                        // Kling's `task_result`, byte for byte.
                        RawValue::from_string(
                            KLING_DOC_FLAT[KLING_DOC_FLAT.find(r#"{"images""#).unwrap()..]
                                .trim_end_matches('}')
                                .to_string()
                                + "}",
                        )
                        .unwrap(),
                    )),
                    // `task_info.parent_video`: kept, typed like the results' videos.
                    parent_video: Some(Video {
                        id: Some("p1".into()),
                        url: Some("https://p/1.mp4".into()),
                        duration: Some("5".into()),
                        watermark_url: None,
                    }),
                    ..MoreOutputs::default()
                },
                final_unit_deduction: Some("1".into()),
                source: EventSource::Callback,
            }
        );
    }

    #[test]
    fn the_wrapped_shape_parses_to_the_same_event_and_its_message_is_ignored() {
        let wrapped = format!(r#"{{"code":0,"message":"success","data":{KLING_DOC_FLAT}}}"#);
        let flat = parse_callback(KLING_DOC_FLAT.as_bytes()).unwrap();
        assert_eq!(parse_callback(wrapped.as_bytes()).unwrap(), flat);

        // "SUCCEED" in an envelope says nothing about the task: the status decides.
        let failed = r#"{"code":0,"message":"SUCCEED","data":{"task_id":"1","task_status":"failed","task_status_msg":"bad prompt"}}"#;
        let event = parse_callback(failed.as_bytes()).unwrap();
        assert_eq!(event.status, TaskStatus::Failed);
        assert_eq!(event.status_msg, "bad prompt");
    }

    #[test]
    fn parses_the_documented_new_standard_body() {
        let event = parse_callback(KLING_DOC_NEW_STANDARD.as_bytes()).unwrap();
        assert_eq!(event.task_id, "1234567890");
        assert_eq!(event.status, TaskStatus::Succeed);
        assert_eq!(event.created_at, Some(1781080778802));
        assert_eq!(event.updated_at, Some(1781080794151));
        assert_eq!(event.external_task_id, None);
    }

    #[test]
    fn new_standard_outputs_become_videos_and_images() {
        let body = r#"{"id":"9","status":"processing","external_id":"ext_9","message":"rendering",
            "outputs":[{"type":"video","id":"v1","url":"https://v","watermark_url":"https://w","duration":"10"},
                       {"type":"image","url":"https://i0"},{"type":"image","url":"https://i1"}],
            "billing":[{"x":1}]}"#;
        let event = parse_callback(body.as_bytes()).unwrap();
        assert_eq!(event.status, TaskStatus::Processing);
        assert_eq!(event.status_msg, "rendering");
        assert_eq!(event.external_task_id.as_deref(), Some("ext_9"));
        assert_eq!(
            event.videos,
            [Video {
                id: Some("v1".into()),
                url: Some("https://v".into()),
                duration: Some("10".into()),
                watermark_url: Some("https://w".into()),
            }]
        );
        assert_eq!(event.images.len(), 2);
        assert_eq!(event.images[1].index, Some(1));
    }

    #[test]
    fn minimal_bodies_with_empty_or_missing_parts_are_accepted() {
        for body in [
            r#"{"task_id":"1","task_status":"submitted"}"#,
            r#"{"task_id":"1","task_status":"submitted","task_info":{},"task_result":{}}"#,
            r#"{"task_id":"1","task_status":"submitted","task_info":null,"task_result":null}"#,
            r#"{"task_id":"1","task_status":"submitted","unknown":{"deep":[1,2]},"final_balance_deduction":{"quota":"1","list_price":"2"}}"#,
            r#"{"task_id":"1","task_status":"submitted","task_info":{"external_task_id":""}}"#,
            r#"{"task_id":"1","task_status":"submitted","task_info":{"parent_video":"v.mp4"}}"#,
            r#"{"task_id":"1","task_status":"submitted","task_info":{"parent_video":null}}"#,
            r#"{"task_id":"1","task_status":"submitted","task_info":{"parent_video":{}}}"#,
            r#"{"task_id":"1","task_status":"submitted","task_info":{"parent_video":{"url":7}}}"#,
        ] {
            let event = parse_callback(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(event.task_id, "1");
            assert_eq!(event.status, TaskStatus::Submitted);
            assert_eq!(event.external_task_id, None);
            assert!(event.videos.is_empty() && event.images.is_empty());
            assert_eq!(event.more.parent_video, None);
        }
    }

    #[test]
    fn ids_larger_than_two_to_the_53_keep_every_digit() {
        let body = r#"{"task_id":"9007199254740993123","task_status":"processing","task_result":{"videos":[{"id":9007199254740993}]}}"#;
        let event = parse_callback(body.as_bytes()).unwrap();
        assert_eq!(event.task_id, "9007199254740993123");
        assert_eq!(event.videos[0].id.as_deref(), Some("9007199254740993"));
        // An integer task id (not what Kling sends, but seen in hand-written tests) keeps its digits.
        let body = r#"{"task_id":867283741759111202,"task_status":"processing"}"#;
        assert_eq!(
            parse_callback(body.as_bytes()).unwrap().task_id,
            "867283741759111202"
        );
    }

    #[test]
    fn numbers_where_kling_sends_strings_and_strings_where_it_sends_numbers_are_read() {
        let body = r#"{"task_id":"1","task_status":"succeed","created_at":"1722769557708","final_unit_deduction":2,
            "task_result":{"videos":[{"id":"v","duration":5.1}]}}"#;
        let event = parse_callback(body.as_bytes()).unwrap();
        assert_eq!(event.created_at, Some(1722769557708));
        assert_eq!(event.final_unit_deduction.as_deref(), Some("2"));
        assert_eq!(event.videos[0].duration.as_deref(), Some("5.1"));
    }

    #[test]
    fn optional_fields_of_an_unexpected_type_are_read_as_absent() {
        let body = r#"{"task_id":"86","task_status":"succeed","task_status_msg":null,
            "created_at":"soon","updated_at":1722769600123,"final_unit_deduction":{"n":1},
            "task_info":{"external_task_id":12345678901234567890},
            "task_result":{"videos":[{"id":"v1","url":"https://v/1.mp4"},"junk",{"id":7.5,"duration":5}],
                           "images":[{"index":"0","url":"https://i/0.png"},{"index":-1}]}}"#;
        let event = parse_callback(body.as_bytes()).unwrap();
        assert_eq!(event.status_msg, "");
        assert_eq!(event.created_at, None);
        assert_eq!(event.updated_at, Some(1722769600123));
        assert_eq!(event.final_unit_deduction, None);
        assert_eq!(
            event.external_task_id.as_deref(),
            Some("12345678901234567890"),
            "a numeric id digit for digit"
        );
        assert_eq!(
            event.videos.len(),
            2,
            "the readable elements: {:?}",
            event.videos
        );
        assert_eq!(event.videos[0].url.as_deref(), Some("https://v/1.mp4"));
        assert_eq!(
            (
                event.videos[1].id.clone(),
                event.videos[1].duration.as_deref()
            ),
            (None, Some("5"))
        );
        assert_eq!(event.images[0].index, Some(0));
        assert_eq!(event.images[1].index, None);

        for null_result in [r#""videos":null"#, r#""videos":"none""#] {
            let body = format!(
                r#"{{"task_id":"86","task_status":"succeed","task_result":{{{null_result}}}}}"#
            );
            assert!(parse_callback(body.as_bytes()).unwrap().videos.is_empty());
        }
        let new_standard =
            r#"{"id":"9","status":"succeeded","external_id":42,"outputs":null,"message":7}"#;
        let event = parse_callback(new_standard.as_bytes()).unwrap();
        assert_eq!(event.external_task_id.as_deref(), Some("42"));
        assert!(event.videos.is_empty());
        assert_eq!(event.status_msg, "");

        // Any string is kept as it came (the receiver decides where it is filed).
        for id in ["has space", "order#7/a:b"] {
            let body = format!(
                r#"{{"task_id":"1","task_status":"succeed","task_info":{{"external_task_id":"{id}"}}}}"#
            );
            let event = parse_callback(body.as_bytes()).unwrap();
            assert_eq!(event.external_task_id.as_deref(), Some(id));
        }
        // The external id decides where a delivery is filed: never guessed.
        for garbled in [r#"{"a":1}"#, "true", "1.5", "-3"] {
            let body = format!(r#"{{"id":"9","status":"succeeded","external_id":{garbled}}}"#);
            assert_eq!(
                parse_callback(body.as_bytes()),
                Err(PayloadError::InvalidExternalTaskId),
                "{garbled}"
            );
        }
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let cases: &[(&str, PayloadError)] = &[
            (r#"{"task_status":"succeed"}"#, PayloadError::MissingTaskId),
            (r#"{"task_id":"1"}"#, PayloadError::MissingStatus),
            (
                r#"{"task_id":"1","task_status":"done"}"#,
                PayloadError::UnknownStatus,
            ),
            (r#"{"id":"1"}"#, PayloadError::MissingStatus),
            (
                r#"{"task_id":"","task_status":"succeed"}"#,
                PayloadError::InvalidTaskId,
            ),
            (
                r#"{"task_id":1.5,"task_status":"succeed"}"#,
                PayloadError::InvalidTaskId,
            ),
            (
                r#"{"task_id":"a/b","task_status":"succeed"}"#,
                PayloadError::InvalidTaskId,
            ),
            (
                r#"{"code":0,"message":"success","data":{}}"#,
                PayloadError::MissingStatus,
            ),
            ("[1,2]", PayloadError::NotAnObject),
            ("\"succeed\"", PayloadError::NotAnObject),
        ];
        for (body, expected) in cases {
            assert_eq!(
                parse_callback(body.as_bytes()).as_ref(),
                Err(expected),
                "{body}"
            );
        }
    }

    #[test]
    fn broken_json_is_invalid_json() {
        let truncated = &KLING_DOC_FLAT.as_bytes()[..KLING_DOC_FLAT.len() / 2];
        for body in [
            truncated,
            b"",
            b"{",
            b"not json",
            b"{\"task_id\":\"1\",}",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse_callback(body), Err(PayloadError::InvalidJson(_))),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Every output Kling sends, typed, and Kling's own JSON kept byte for byte.
    #[test]
    fn nothing_kling_returns_is_dropped() {
        let task_result = r#"{"audios":[{"id":"a1","url_mp3":"https://a/1.mp3","url_wav":"https://a/1.wav","duration_mp3":"3.2","duration_wav":3.25}],
 "series_images":[{"index":0,"url":"https://s/0.png","watermark_url":"https://s/0w.png"}],
 "voices":[{"voice_id":"829836802793406552","voice_name":"Ann","trial_url":"https://t/1.mp3","owned_by":"kling"}],
 "elements":[{"element_id":829836802793406551,"element_name":"hero","element_description":"d","reference_type":"image_refer","status":"succeed","extra":{"kept":true}}],
 "something_new":[1,2,3]}"#;
        let body = format!(
            r#"{{"task_id":"86","task_status":"succeed","task_info":{{"external_task_id":"job-a"}},"task_result":{task_result}}}"#
        );
        let event = parse_callback(body.as_bytes()).unwrap();
        let more = &event.more;
        assert_eq!(
            more.audios,
            [Audio {
                id: Some("a1".into()),
                url_mp3: Some("https://a/1.mp3".into()),
                url_wav: Some("https://a/1.wav".into()),
                duration_mp3: Some("3.2".into()),
                duration_wav: Some("3.25".into()),
            }]
        );
        assert_eq!(
            more.series_images[0].watermark_url.as_deref(),
            Some("https://s/0w.png")
        );
        assert_eq!(
            more.voices[0].voice_id.as_deref(),
            Some("829836802793406552")
        );
        assert_eq!(
            more.elements[0].element_id.as_deref(),
            Some("829836802793406551"),
            "beyond 2^53, digit for digit"
        );
        let kept = more.kling_result.as_ref().unwrap().0.get();
        assert_eq!(kept, task_result, "verbatim, unknown keys included");
        assert!(!more.kling_json_cut);

        // Stored and read back (a slot), then served: the record shows it all.
        let stored: TaskEvent =
            serde_json::from_slice(&serde_json::to_vec(&event).unwrap()).unwrap();
        assert_eq!(stored, event);
        let record = crate::ledger::assemble(None, stored);
        let served = serde_json::to_value(&record).unwrap();
        assert_eq!(served["audios"][0]["url_wav"], "https://a/1.wav");
        assert_eq!(served["elements"][0]["element_id"], "829836802793406551");
        assert_eq!(served["kling_result"]["something_new"][2], 3);
        assert_eq!(
            served["kling_result"]["elements"][0]["element_id"].to_string(),
            "829836802793406551"
        );
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains(task_result), "served byte for byte: {text}");
    }

    #[test]
    fn api_2_outputs_are_read_into_the_same_shapes_and_billing_is_kept() {
        let outputs = r#"[{"type":"video","id":"v","url":"https://v.mp4","duration":5},
 {"type":"audio","id":"a","mp3_url":"https://a.mp3","wav_url":"https://a.wav","mp3_duration":4.5,"wav_duration":"4.5"},
 {"type":"image","url":"https://i.png","watermark_url":"https://iw.png","group_id":"g"},
 {"type":"voice","voice_id":"vo","voice_name":"Ann"},
 {"type":"element","element_id":829836802793406551,"element_name":"hero"}]"#;
        let billing = r#"[{"type":"unit","amount":"1.5"}]"#;
        let body = format!(
            r#"{{"id":"t1","status":"succeeded","external_id":"job-b","outputs":{outputs},"billing":{billing}}}"#
        );
        let event = parse_callback(body.as_bytes()).unwrap();
        assert_eq!(event.status, TaskStatus::Succeed);
        assert_eq!(event.videos.len(), 1, "the audio is not a video");
        assert_eq!(event.videos[0].url.as_deref(), Some("https://v.mp4"));
        assert_eq!(
            event.more.audios,
            [Audio {
                id: Some("a".into()),
                url_mp3: Some("https://a.mp3".into()),
                url_wav: Some("https://a.wav".into()),
                duration_mp3: Some("4.5".into()),
                duration_wav: Some("4.5".into()),
            }]
        );
        assert_eq!(
            event.images[0].watermark_url.as_deref(),
            Some("https://iw.png")
        );
        assert_eq!(event.more.voices[0].voice_name.as_deref(), Some("Ann"));
        assert_eq!(
            event.more.elements[0].element_id.as_deref(),
            Some("829836802793406551")
        );
        assert_eq!(event.more.kling_result.as_ref().unwrap().0.get(), outputs);
        assert_eq!(event.more.billing.as_ref().unwrap().0.get(), billing);
    }

    #[test]
    fn kling_json_over_64_kib_is_left_out_and_flagged_but_its_outputs_stay() {
        let padding = "x".repeat(MAX_KLING_JSON_BYTES);
        let body = format!(
            r#"{{"task_id":"86","task_status":"succeed","task_result":{{"audios":[{{"url_mp3":"https://a.mp3"}}],"note":"{padding}"}}}}"#
        );
        let event = parse_callback(body.as_bytes()).unwrap();
        assert!(event.more.kling_result.is_none());
        assert!(event.more.kling_json_cut);
        assert_eq!(
            event.more.audios[0].url_mp3.as_deref(),
            Some("https://a.mp3")
        );
        let served = serde_json::to_value(crate::ledger::assemble(None, event)).unwrap();
        assert_eq!(served["kling_json_cut"], true);
    }

    /// A finished video task's record gains `kling_result` and nothing else; a task with
    /// no result gains nothing.
    #[test]
    fn a_video_record_gains_only_kling_s_own_json() {
        let new_fields = [
            "audios",
            "series_images",
            "voices",
            "elements",
            "kling_result",
            "billing",
            "kling_json_cut",
        ];
        let served = |body: &str| {
            let event = parse_callback(body.as_bytes()).unwrap();
            serde_json::to_value(crate::ledger::assemble(None, event)).unwrap()
        };
        let running = served(r#"{"task_id":"86","task_status":"processing"}"#);
        for field in new_fields {
            assert!(running.get(field).is_none(), "{field}: {running}");
        }
        let done = served(KLING_DOC_FLAT);
        for field in new_fields {
            assert_eq!(
                done.get(field).is_some(),
                field == "kling_result",
                "{field}: {done}"
            );
        }
        assert!(done["images"][0].get("watermark_url").is_none());
    }

    /// `data` is unwrapped once: nested wrappers are not a task, and cost one parse.
    #[test]
    fn a_wrapped_body_is_unwrapped_once_with_its_outputs() {
        let wrapped = r#"{"code":0,"message":"SUCCEED","data":{"task_id":"86","task_status":"succeed","task_result":{"audios":[{"url_mp3":"https://a.mp3"}]},"final_balance_deduction":{"quota":"1","list_price":"2"}}}"#;
        let event = parse_callback(wrapped.as_bytes()).unwrap();
        assert_eq!(
            event.more.audios[0].url_mp3.as_deref(),
            Some("https://a.mp3")
        );
        assert_eq!(
            event.more.billing.as_ref().unwrap().0.get(),
            r#"{"quota":"1","list_price":"2"}"#
        );
        let twice = format!(r#"{{"data":{wrapped}}}"#);
        assert_eq!(
            parse_callback(twice.as_bytes()),
            Err(PayloadError::MissingStatus)
        );
        let deep = format!("{}{}", r#"{"data":"#.repeat(20_000), "}".repeat(20_000));
        assert!(
            parse_callback(deep.as_bytes()).is_err(),
            "refused, not a crash"
        );
    }

    #[test]
    fn api_2_outputs_of_unknown_or_missing_type() {
        let body = r#"{"id":"t","status":"succeeded","outputs":[{"type":"hologram","url":"https://h"},{"url":"https://v.mp4"},{"type":"voice","id":"vo"},{"type":"element","id":829836802793406551},{"type":"image","url":"https://i.png","group_id":"g1"}],"billing":null}"#;
        let event = parse_callback(body.as_bytes()).unwrap();
        assert_eq!(
            event.videos.len(),
            1,
            "a typeless output is a video; a hologram is not"
        );
        assert_eq!(event.videos[0].url.as_deref(), Some("https://v.mp4"));
        assert_eq!(event.more.voices[0].voice_id.as_deref(), Some("vo"));
        assert_eq!(
            event.more.elements[0].element_id.as_deref(),
            Some("829836802793406551")
        );
        assert_eq!(event.images[0].group_id.as_deref(), Some("g1"));
        assert!(
            event
                .more
                .kling_result
                .as_ref()
                .unwrap()
                .0
                .get()
                .contains("hologram")
        );
        assert!(event.more.billing.is_none(), "null is nothing");
    }

    #[test]
    fn odd_results_lose_nothing_else() {
        // A result that is not an object, outputs that are not a list, a repeated key.
        let text =
            parse_callback(br#"{"task_id":"86","task_status":"succeed","task_result":"done"}"#)
                .unwrap();
        assert_eq!(
            text.more.kling_result.as_ref().unwrap().0.get(),
            r#""done""#
        );
        let not_a_list =
            parse_callback(br#"{"id":"86","status":"succeeded","outputs":{"url":"x"}}"#).unwrap();
        assert!(not_a_list.videos.is_empty());
        assert!(not_a_list.more.kling_result.is_some());
        let repeated = parse_callback(
            br#"{"task_id":"86","task_status":"succeed","task_result":{"audios":[{"url_mp3":"a"}],"audios":[{"url_mp3":"b"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            repeated.more.audios[0].url_mp3.as_deref(),
            Some("b"),
            "the last wins"
        );
        let multi_shot = parse_callback(
            br#"{"task_id":"86","task_status":"succeed","task_result":{"images":[{"index":0,"url_1":"u1","url_2":"u2","url_3":"u3"}]}}"#,
        )
        .unwrap();
        assert_eq!(multi_shot.images[0].url_3.as_deref(), Some("u3"));
    }
}
