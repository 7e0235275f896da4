//! What Kling refuses in a create body (`1201`), read from kling-api.md on its own and not
//! from the component's catalog: a request the component lets through that Kling would
//! refuse fails here as it would fail at Kling, so a wrong rule in the catalog, or a
//! pipeline step that fills a field with the wrong type, shows in the tests.
//!
//! Only what kling-api.md states is checked (required fields, the types it calls out,
//! the `data:` prefix it forbids); ranges and model names are left to the component.

use serde_json::Value;

/// The field Kling's `1201` would be about, or `None` for a body Kling takes.
pub fn refused_field(create_path: &str, body: &Value) -> Option<&'static str> {
    let has = |field: &str| present(&body[field]);
    let first_missing = |fields: &[&'static str]| fields.iter().copied().find(|f| !has(f));
    match create_path {
        "/v1/videos/text2video" | "/v1/videos/omni-video" => {
            // "`prompt` ... unless multi-shot".
            let multi_shot = body["multi_shot"] == Value::Bool(true);
            if !multi_shot && !has("prompt") {
                return Some("prompt");
            }
            // omni-video: "`multi_shot` + `shot_type` + `multi_prompt`".
            if multi_shot && create_path.ends_with("omni-video") && !has("multi_prompt") {
                return Some("multi_prompt");
            }
            legacy_duration(body)
        }
        "/v1/videos/image2video" => {
            if !has("image") && !has("image_tail") {
                return Some("image");
            }
            ["image", "image_tail"]
                .into_iter()
                .find(|f| body[*f].as_str().is_some_and(|v| v.starts_with("data:")))
                .or_else(|| legacy_duration(body))
        }
        "/v1/videos/multi-image2video" => {
            first_missing(&["image_list", "prompt"]).or_else(|| list_of(body, "image_list", 4))
        }
        "/v1/videos/video-extend" => first_missing(&["video_id"]),
        "/v1/videos/lip-sync" => {
            let input = &body["input"];
            if !present(&input["video_id"]) && !present(&input["video_url"]) {
                Some("input.video_id")
            } else if !present(&input["mode"]) {
                Some("input.mode")
            } else {
                None
            }
        }
        "/v1/videos/effects" => first_missing(&["effect_scene", "input"]),
        // "exactly one of `audio_id` / `sound_file`; no `model_name`".
        "/v1/videos/avatar/image2video" => first_missing(&["image"])
            .or_else(|| (has("audio_id") == has("sound_file")).then_some("audio_id"))
            .or_else(|| has("model_name").then_some("model_name")),
        "/v1/videos/motion-control" => {
            first_missing(&["image_url", "video_url", "character_orientation", "mode"])
        }
        "/v1/videos/advanced-lip-sync" => first_missing(&["session_id", "face_choose"]),
        "/v1/videos/multi-elements" => first_missing(&["session_id", "edit_mode", "prompt"]),
        // "`duration` a NUMBER 3.0..10.0".
        "/v1/audio/text-to-audio" => first_missing(&["prompt", "duration"])
            .or_else(|| (!body["duration"].is_number()).then_some("duration")),
        "/v1/audio/video-to-audio" => (has("video_id") == has("video_url")).then_some("video_id"),
        "/v1/images/omni-image" => first_missing(&["prompt"]),
        "/v1/images/multi-image2image" => first_missing(&["subject_image_list"])
            .or_else(|| list_of(body, "subject_image_list", 4)),
        "/v1/images/editing/expand" => first_missing(&[
            "image",
            "up_expansion_ratio",
            "down_expansion_ratio",
            "left_expansion_ratio",
            "right_expansion_ratio",
        ]),
        "/v1/general/ai-multi-shot" => first_missing(&["element_frontal_image"]),
        "/v1/general/custom-voices" => first_missing(&["voice_name"])
            .or_else(|| (!has("voice_url") && !has("video_id")).then_some("voice_url")),
        "/v1/general/advanced-custom-elements" => {
            first_missing(&["element_name", "element_description", "reference_type"])
        }
        // API 2.0: "`prompt or contents[...]`, `settings{... duration 3..15 (integer)}`".
        path if !path.starts_with("/v1/") => {
            if !has("prompt") && !has("contents") {
                Some("prompt")
            } else if present(&body["settings"]["duration"])
                && !body["settings"]["duration"].is_u64()
            {
                Some("settings.duration")
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Set: not missing, not `null`, not an empty string or list.
fn present(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => true,
    }
}

/// The legacy family's `duration` is a STRING (`"5"`), when given.
fn legacy_duration(body: &Value) -> Option<&'static str> {
    (present(&body["duration"]) && !body["duration"].is_string()).then_some("duration")
}

/// `field` is a list of 1 to `most` items.
fn list_of(body: &Value, field: &'static str, most: usize) -> Option<&'static str> {
    let fits = body[field]
        .as_array()
        .is_some_and(|items| (1..=most).contains(&items.len()));
    (!fits).then_some(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_kling_api_md_calls_out_is_refused_and_the_rest_taken() {
        let cases = [
            (
                "/v1/videos/text2video",
                json!({"prompt": "p", "duration": "5"}),
                None,
            ),
            (
                "/v1/videos/text2video",
                json!({"prompt": "p", "duration": 5}),
                Some("duration"),
            ),
            (
                "/v1/videos/text2video",
                json!({"negative_prompt": "n"}),
                Some("prompt"),
            ),
            ("/v1/videos/text2video", json!({"multi_shot": true}), None),
            (
                "/v1/videos/omni-video",
                json!({"multi_shot": true}),
                Some("multi_prompt"),
            ),
            (
                "/v1/videos/image2video",
                json!({"image_tail": "https://i"}),
                None,
            ),
            (
                "/v1/videos/image2video",
                json!({"image": "data:image/png;base64,AA"}),
                Some("image"),
            ),
            (
                "/v1/videos/multi-image2video",
                json!({"image_list": [], "prompt": "p"}),
                Some("image_list"),
            ),
            (
                "/v1/videos/avatar/image2video",
                json!({"image": "i", "audio_id": "a", "sound_file": "s"}),
                Some("audio_id"),
            ),
            (
                "/v1/videos/avatar/image2video",
                json!({"image": "i", "audio_id": "a", "model_name": "m"}),
                Some("model_name"),
            ),
            (
                "/v1/videos/avatar/image2video",
                json!({"image": "i", "sound_file": "s"}),
                None,
            ),
            (
                "/v1/audio/text-to-audio",
                json!({"prompt": "p", "duration": "5"}),
                Some("duration"),
            ),
            (
                "/v1/audio/text-to-audio",
                json!({"prompt": "p", "duration": 5.5}),
                None,
            ),
            ("/v1/audio/video-to-audio", json!({}), Some("video_id")),
            (
                "/v1/videos/lip-sync",
                json!({"input": {"video_url": "u"}}),
                Some("input.mode"),
            ),
            (
                "/text-to-video/kling-3.0",
                json!({"prompt": "p", "settings": {"duration": "5"}}),
                Some("settings.duration"),
            ),
            (
                "/text-to-video/kling-3.0",
                json!({"contents": [{"type": "text"}], "settings": {"duration": 5}}),
                None,
            ),
            ("/v1/images/generations", json!({}), None),
        ];
        for (path, body, refused) in cases {
            assert_eq!(refused_field(path, &body), refused, "{path} {body}");
        }
    }
}
