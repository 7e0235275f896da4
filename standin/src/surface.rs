//! Kling's task endpoints as kling-api.md lists them, read on their own and not from the
//! component's catalog: a wrong create path, API family, query rule or result key in the
//! component fails against the stand-in as it would fail at Kling.

/// Kling's two API families (kling-api.md: legacy `/v1/...` with `model_name` in the
/// body; API 2.0 with the model in the path, API key only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Legacy,
    Api2,
}

/// A key of a legacy `task_result` ("Result shapes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKey {
    /// `videos`: `{id, url, watermark_url, duration}`.
    Videos,
    /// `images`: `{index, url, watermark_url}`.
    Images,
    /// ai-multi-shot's `images`: `url_1`, `url_2`, `url_3`.
    ImageViews,
    /// omni-image's `series_images`.
    SeriesImages,
    /// `audios`: `{id, url_mp3, url_wav, duration_mp3, duration_wav}`.
    Audios,
    /// `voices`: `{voice_id, voice_name, trial_url, owned_by}`.
    Voices,
    /// `elements`: `{element_id (a number beyond 2^53), element_name, ...}`.
    Elements,
}

impl ResultKey {
    pub fn name(self) -> &'static str {
        match self {
            ResultKey::Videos => "videos",
            ResultKey::Images | ResultKey::ImageViews => "images",
            ResultKey::SeriesImages => "series_images",
            ResultKey::Audios => "audios",
            ResultKey::Voices => "voices",
            ResultKey::Elements => "elements",
        }
    }
}

/// One asynchronous create endpoint.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub create_path: &'static str,
    pub family: Family,
    /// "query by task_id only": `GET {path}/{external_task_id}` finds nothing.
    pub task_id_only: bool,
    /// What a legacy success carries in `task_result` (API 2.0 answers `outputs[]`).
    pub results: &'static [ResultKey],
}

const fn legacy(create_path: &'static str, results: &'static [ResultKey]) -> Endpoint {
    Endpoint {
        create_path,
        family: Family::Legacy,
        task_id_only: false,
        results,
    }
}

const fn api2(create_path: &'static str) -> Endpoint {
    Endpoint {
        create_path,
        family: Family::Api2,
        task_id_only: false,
        // Its success answers `outputs[]` instead: every API 2.0 kind here makes video.
        results: &[],
    }
}

const VIDEOS: &[ResultKey] = &[ResultKey::Videos];
const IMAGES: &[ResultKey] = &[ResultKey::Images];

/// kling-api.md's "Main video endpoints", "The whole task surface (late 2026)" and
/// "API 2.0". (kolors-virtual-try-on "moved to the solutions family", whose paths the
/// contract does not give.)
pub static ENDPOINTS: &[Endpoint] = &[
    legacy("/v1/videos/text2video", VIDEOS),
    legacy("/v1/videos/image2video", VIDEOS),
    legacy("/v1/videos/multi-image2video", VIDEOS),
    legacy("/v1/videos/video-extend", VIDEOS),
    legacy("/v1/videos/lip-sync", VIDEOS),
    legacy("/v1/videos/effects", VIDEOS),
    legacy("/v1/images/generations", IMAGES),
    legacy("/v1/videos/omni-video", VIDEOS),
    legacy("/v1/videos/avatar/image2video", VIDEOS),
    legacy("/v1/videos/motion-control", VIDEOS),
    Endpoint {
        task_id_only: true,
        ..legacy("/v1/videos/advanced-lip-sync", VIDEOS)
    },
    legacy("/v1/videos/multi-elements", VIDEOS),
    legacy("/v1/audio/text-to-audio", &[ResultKey::Audios]),
    legacy(
        "/v1/audio/video-to-audio",
        &[ResultKey::Videos, ResultKey::Audios],
    ),
    legacy(
        "/v1/images/omni-image",
        &[ResultKey::Images, ResultKey::SeriesImages],
    ),
    legacy("/v1/images/multi-image2image", IMAGES),
    legacy("/v1/images/editing/expand", IMAGES),
    Endpoint {
        task_id_only: true,
        ..legacy("/v1/general/ai-multi-shot", &[ResultKey::ImageViews])
    },
    legacy("/v1/general/custom-voices", &[ResultKey::Voices]),
    legacy(
        "/v1/general/advanced-custom-elements",
        &[ResultKey::Elements],
    ),
    api2("/text-to-video/kling-3.0"),
    api2("/text-to-video/kling-3.0-turbo"),
    api2("/text-to-video/kling-2.6"),
    api2("/image-to-video/kling-3.0"),
    api2("/image-to-video/kling-3.0-turbo"),
    api2("/omni-video/kling-3.0-omni"),
    api2("/motion-control/kling-3.0"),
    api2("/motion-control/kling-2.6"),
];

/// The endpoint whose create path is `path`.
pub fn endpoint_at(path: &str) -> Option<&'static Endpoint> {
    ENDPOINTS
        .iter()
        .find(|endpoint| endpoint.create_path == path)
}
