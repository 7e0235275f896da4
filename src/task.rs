//! What the component knows about a Kling task: statuses, results, one delivery's
//! news ([`TaskEvent`]) and the record the API serves ([`TaskRecord`]).

use serde::{Deserialize, Serialize};

/// A Kling task status. Kling's legacy API spells success `succeed`; its newer
/// "model in the path" API spells it `succeeded`: both parse to [`TaskStatus::Succeed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Ours, never Kling's: recorded, and Kling's create answer is not known yet.
    Submitting,
    Submitted,
    Processing,
    Succeed,
    Failed,
    /// Ours, never Kling's: Kling kept answering "not found" for a task submitted here
    /// (`lost_after_polls` times over at least `lost_after_seconds`). Final for the
    /// reconciler, but a later `succeed` or `failed` from Kling still wins.
    Lost,
}

impl TaskStatus {
    /// The statuses Kling sends.
    pub const ALL: [TaskStatus; 4] = [
        TaskStatus::Submitted,
        TaskStatus::Processing,
        TaskStatus::Succeed,
        TaskStatus::Failed,
    ];

    /// Parses a status as Kling sends it; `None` for anything unknown.
    pub fn from_kling(status: &str) -> Option<Self> {
        match status {
            "submitted" => Some(Self::Submitted),
            "processing" => Some(Self::Processing),
            "succeed" | "succeeded" => Some(Self::Succeed),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    /// Parses a status as this component spells it (`submitting` included).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Submitting,
            Self::Submitted,
            Self::Processing,
            Self::Succeed,
            Self::Failed,
            Self::Lost,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitting => "submitting",
            Self::Submitted => "submitted",
            Self::Processing => "processing",
            Self::Succeed => "succeed",
            Self::Failed => "failed",
            Self::Lost => "lost",
        }
    }

    /// No news will change it: Kling's `succeed` and `failed`, and our `lost`.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeed | Self::Failed | Self::Lost)
    }

    /// The status's rank in the ledger: a task only ever moves to a higher one.
    pub fn rank(self) -> u64 {
        match self {
            Self::Submitting => 0,
            Self::Submitted => 1,
            Self::Processing => 2,
            Self::Lost => 3,
            Self::Succeed | Self::Failed => 4,
        }
    }
}

/// Kling's `updated_at` (ms) fits in 13 digits until the year 2286.
const UPDATED_AT_SPAN: u64 = 10_000_000_000_000;

/// A task's place in its own history: the status rank, then Kling's `updated_at`
/// (`rank * 10^13 + updated_at`). The ledger only ever stores a state with a larger one,
/// so a receiver that keeps the largest it has applied can drop anything not larger: a
/// notification sent late, or by another replica, never moves it backwards. Below 2^53,
/// so exact in any JSON reader.
pub fn sequence(status: TaskStatus, updated_at: Option<u64>) -> u64 {
    status.rank() * UPDATED_AT_SPAN + updated_at.unwrap_or(0).min(UPDATED_AT_SPAN - 1)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Video {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Seconds, as Kling sends it: a string such as `"5.1"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_url: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_url: Option<String>,
    /// ai-multi-shot's three views (it sends no `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_3: Option<String>,
    /// omni-image: `single` or `series`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_type: Option<String>,
    /// API 2.0: the group an image belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
}

/// An audio (text-to-audio, video-to-audio), in Kling's legacy names; API 2.0's
/// `mp3_url`, `wav_url`, `mp3_duration`, `wav_duration` are read into the same fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audio {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_mp3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_wav: Option<String>,
    /// Seconds, as Kling sends it (a string, or a number kept as its text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_mp3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_wav: Option<String>,
}

/// A custom voice (custom-voices).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_by: Option<String>,
}

/// A custom element (advanced-custom-elements).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Element {
    /// Kling sends a JSON number beyond 2^53: kept digit for digit, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element_description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Kling's own JSON, byte for byte as it arrived (its `task_result` or `outputs`,
/// `billing`): whatever the typed fields do not know is still here.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KlingJson(pub Box<serde_json::value::RawValue>);

impl PartialEq for KlingJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for KlingJson {}

/// Kling's own JSON kept per task is at most this long; a longer one is left out (the
/// typed fields still hold its outputs) and the record says so.
pub const MAX_KLING_JSON_BYTES: usize = 64 * 1024;

/// Everything Kling reported of a task's results beyond `videos` and `images`. Empty
/// lists and absent values are not serialized, so a record shows what its kind makes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoreOutputs {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series_images: Vec<Image>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audios: Vec<Audio>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voices: Vec<Voice>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elements: Vec<Element>,
    /// Legacy `task_info.parent_video`: the video a video-to-video task (advanced
    /// lip-sync) worked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_video: Option<Video>,
    /// Legacy `task_result`, or API 2.0 `outputs`, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kling_result: Option<KlingJson>,
    /// API 2.0 `billing`, or the legacy `final_balance_deduction`, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<KlingJson>,
    /// `kling_result` or `billing` was longer than [`MAX_KLING_JSON_BYTES`] and is left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kling_json_cut: bool,
}

impl MoreOutputs {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Where a task event came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    /// Kling called us back.
    #[default]
    Callback,
    /// The reconciler asked Kling.
    Poll,
}

/// What one delivery (a callback, or a poll) says about a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Kling's task id: a long numeric string, never a number (it exceeds 2^53).
    pub task_id: String,
    pub status: TaskStatus,
    #[serde(default)]
    pub status_msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_task_id: Option<String>,
    /// Kling's clock, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
    /// Kling's clock, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<u64>,
    #[serde(default)]
    pub videos: Vec<Video>,
    #[serde(default)]
    pub images: Vec<Image>,
    /// Every other output, and Kling's own JSON.
    #[serde(default, skip_serializing_if = "MoreOutputs::is_empty")]
    pub more: MoreOutputs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_unit_deduction: Option<String>,
    #[serde(default)]
    pub source: EventSource,
}

impl TaskEvent {
    /// A `succeed` that carries no output at all: Kling may send one ("`task_result` may
    /// be missing or `{}`"; API 2.0's own example success has no `outputs`). Kling's
    /// record holds the results, and a results-less success never stands in for them.
    pub fn lacks_results(&self) -> bool {
        let more = &self.more;
        self.status == TaskStatus::Succeed
            && self.videos.is_empty()
            && self.images.is_empty()
            && more.series_images.is_empty()
            && more.audios.is_empty()
            && more.voices.is_empty()
            && more.elements.is_empty()
            // Outputs of a type this build does not read are kept verbatim.
            && more
                .kling_result
                .as_ref()
                .is_none_or(|json| holds_nothing(json.0.get()))
            && !more.kling_json_cut
    }
}

/// Kling's raw `task_result` or `outputs` with nothing in it: `null`, `[]`, `{}`, or an
/// object whose every member is one of those (`{"videos":[]}`, `{"videos":null}`).
fn holds_nothing(raw: &str) -> bool {
    use serde_json::Value;
    let empty = |value: &Value| match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(members) => members.is_empty(),
        _ => false,
    };
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(members)) => members.values().all(empty),
        Ok(value) => empty(&value),
        Err(_) => false,
    }
}

/// A task as `GET /tasks/{id}` returns it. Only ever written: the store keeps events and
/// heads, and a record is assembled from them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskRecord {
    /// `None` while the task is `submitting` and Kling's id is not known yet.
    pub task_id: Option<String>,
    pub external_task_id: Option<String>,
    /// The kind it was submitted as (`text2video`, ...), for tasks this component submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub status: TaskStatus,
    pub status_msg: String,
    pub videos: Vec<Video>,
    pub images: Vec<Image>,
    /// `series_images`, `audios`, `voices`, `elements`, `parent_video`, `kling_result`,
    /// `billing`, each shown only when Kling sent it. (Serialized only: a record is never read back.)
    #[serde(flatten)]
    pub more: MoreOutputs,
    pub created_at: Option<u64>,
    pub updated_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_unit_deduction: Option<String>,
    /// Where the current state came from: `callback`, or `poll` (the reconciler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EventSource>,
    /// Callbacks that changed this task (a duplicate or a late one writes nothing, so
    /// it is not counted).
    pub deliveries: u64,
    /// When the last callback that changed the task arrived, milliseconds on our clock.
    pub last_delivery_at: Option<u64>,
    /// The pipeline step this task runs, for tasks a pipeline submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<StepRef>,
    /// [`sequence`] of the stored state: larger is newer.
    #[serde(default)]
    pub sequence: u64,
    /// The reconciler's polls of this task (`GET /tasks/{id}` only, once polled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<crate::ledger::PollState>,
}

#[cfg(test)]
impl TaskRecord {
    /// A record of Kling task `86` in `status` with nothing else, for tests to fill in.
    pub fn example(status: TaskStatus) -> Self {
        Self {
            task_id: Some("86".into()),
            external_task_id: None,
            kind: None,
            status,
            status_msg: String::new(),
            videos: Vec::new(),
            images: Vec::new(),
            more: MoreOutputs::default(),
            created_at: None,
            updated_at: None,
            final_unit_deduction: None,
            source: None,
            deliveries: 0,
            last_delivery_at: None,
            pipeline: None,
            sequence: 0,
            reconcile: None,
        }
    }
}

/// A step of a pipeline: the pipeline's id and the step's index (0-based).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRef {
    pub pipeline_id: String,
    pub step: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_kling_spelling() {
        for status in TaskStatus::ALL {
            assert_eq!(TaskStatus::from_kling(status.as_str()), Some(status));
        }
        assert_eq!(
            TaskStatus::from_kling("succeeded"),
            Some(TaskStatus::Succeed)
        );
        assert_eq!(TaskStatus::from_kling("SUCCEED"), None);
        assert_eq!(TaskStatus::from_kling("done"), None);
    }

    #[test]
    fn only_succeed_and_failed_are_final() {
        let finals: Vec<_> = TaskStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(finals, [TaskStatus::Succeed, TaskStatus::Failed]);
    }

    #[test]
    fn a_higher_rank_outranks_any_updated_at_and_within_a_rank_newer_is_larger() {
        use TaskStatus::*;
        let max = Some(u64::MAX);
        assert!(sequence(Processing, Some(1)) > sequence(Submitted, max));
        assert!(sequence(Lost, None) > sequence(Processing, max));
        assert!(sequence(Succeed, None) > sequence(Lost, max));
        assert_eq!(sequence(Succeed, Some(5)), sequence(Failed, Some(5)));
        assert!(sequence(Processing, Some(2)) > sequence(Processing, Some(1)));
        assert!(sequence(Submitted, None) > sequence(Submitting, None));
        assert!(sequence(Succeed, max) < 1 << 53, "exact in JSON");
    }
}
