//! Checking a create request before it costs a Kling call: what Kling would obviously
//! reject, named by field. The body is otherwise passed to Kling unchanged.

use serde_json::{Map, Value};

use super::kind::TaskKind;

pub const MAX_PROMPT_CHARS: usize = 2500;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct RequestError {
    pub field: String,
    pub problem: &'static str,
}

fn problem(field: impl Into<String>, problem: &'static str) -> RequestError {
    RequestError {
        field: field.into(),
        problem,
    }
}

/// Parses and checks a create request for `kind`; returns the JSON object to send.
pub fn validate(kind: TaskKind, body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return Err(problem("body", "must be a JSON object"));
    };
    if request.contains_key("callback_url") {
        return Err(problem(
            "callback_url",
            "is set by kling-webhook (signed, pointing at its callback route); leave it out",
        ));
    }
    for field in ["prompt", "negative_prompt"] {
        if let Some(value) = request.get(field) {
            let Some(text) = value.as_str() else {
                return Err(problem(field, "must be a string"));
            };
            if text.chars().count() > MAX_PROMPT_CHARS {
                return Err(problem(field, "is longer than 2500 characters"));
            }
        }
    }
    if let Some(duration) = request.get("duration")
        && !duration.is_string()
    {
        return Err(problem("duration", "must be a string, such as \"5\""));
    }
    if let Some(mode) = request.get("mode")
        && !matches!(mode.as_str(), Some("std" | "pro"))
    {
        return Err(problem("mode", "must be \"std\" or \"pro\""));
    }
    check_images(&request)?;
    check_required(kind, &request)?;
    Ok(request)
}

/// Kling takes an image as a URL or as raw base64: a `data:` URI prefix is refused.
fn check_images(request: &Map<String, Value>) -> Result<(), RequestError> {
    let mut images: Vec<(String, &Value)> = ["image", "image_tail"]
        .into_iter()
        .filter_map(|field| request.get(field).map(|v| (field.to_string(), v)))
        .collect();
    if let Some(Value::Array(list)) = request.get("image_list") {
        for (i, item) in list.iter().enumerate() {
            if let Some(image) = item.get("image") {
                images.push((format!("image_list[{i}].image"), image));
            }
        }
    }
    for (field, image) in images {
        if image.as_str().is_some_and(|s| s.starts_with("data:")) {
            return Err(problem(
                field,
                "must be a URL or raw base64 without a `data:` prefix",
            ));
        }
    }
    Ok(())
}

fn non_empty_str(request: &Map<String, Value>, field: &str) -> bool {
    request
        .get(field)
        .and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty())
}

fn require(request: &Map<String, Value>, field: &'static str) -> Result<(), RequestError> {
    if non_empty_str(request, field) {
        Ok(())
    } else {
        Err(problem(field, "is required"))
    }
}

fn check_required(kind: TaskKind, request: &Map<String, Value>) -> Result<(), RequestError> {
    match kind {
        TaskKind::Text2Video => {
            let multi_shot = request.get("multi_shot").and_then(Value::as_bool) == Some(true);
            if multi_shot {
                Ok(())
            } else {
                require(request, "prompt")
            }
        }
        TaskKind::Image2Video => {
            if non_empty_str(request, "image") || non_empty_str(request, "image_tail") {
                Ok(())
            } else {
                Err(problem("image", "or `image_tail` is required"))
            }
        }
        TaskKind::MultiImage2Video => {
            let list = request.get("image_list").and_then(Value::as_array);
            match list {
                Some(list) if (1..=4).contains(&list.len()) => {
                    for (i, item) in list.iter().enumerate() {
                        if item
                            .get("image")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        {
                            return Err(problem(format!("image_list[{i}].image"), "is required"));
                        }
                    }
                    require(request, "prompt")
                }
                _ => Err(problem(
                    "image_list",
                    "must hold 1 to 4 `{\"image\": ...}` entries",
                )),
            }
        }
        TaskKind::VideoExtend => require(request, "video_id"),
        TaskKind::LipSync => {
            let Some(Value::Object(input)) = request.get("input") else {
                return Err(problem("input", "is required (an object)"));
            };
            if !non_empty_str(input, "video_id") && !non_empty_str(input, "video_url") {
                return Err(problem(
                    "input.video_id",
                    "or `input.video_url` is required",
                ));
            }
            match input.get("mode").and_then(Value::as_str) {
                Some("text2video" | "audio2video") => Ok(()),
                _ => Err(problem(
                    "input.mode",
                    "must be \"text2video\" or \"audio2video\"",
                )),
            }
        }
        TaskKind::Effects => {
            require(request, "effect_scene")?;
            match request.get("input") {
                Some(Value::Object(_)) => Ok(()),
                _ => Err(problem("input", "is required (an object)")),
            }
        }
        TaskKind::ImageGeneration => require(request, "prompt"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(kind: TaskKind, body: Value) -> Result<(), RequestError> {
        validate(kind, body.to_string().as_bytes()).map(|_| ())
    }

    #[test]
    fn valid_requests_of_every_kind_pass_unchanged() {
        let cases = [
            (
                TaskKind::Text2Video,
                json!({"prompt": "a cat", "duration": "5", "mode": "pro", "model_name": "kling-v2-1"}),
            ),
            (
                TaskKind::Text2Video,
                json!({"multi_shot": true, "multi_prompt": [{"prompt": "x"}]}),
            ),
            (TaskKind::Image2Video, json!({"image": "https://img/1.png"})),
            (TaskKind::Image2Video, json!({"image_tail": "iVBORw0KGgo="})),
            (
                TaskKind::MultiImage2Video,
                json!({"image_list": [{"image": "https://a"}, {"image": "https://b"}], "prompt": "p"}),
            ),
            (
                TaskKind::VideoExtend,
                json!({"video_id": "867283741759111300"}),
            ),
            (
                TaskKind::LipSync,
                json!({"input": {"video_id": "1", "mode": "audio2video", "audio_type": "url"}}),
            ),
            (
                TaskKind::Effects,
                json!({"effect_scene": "hug", "input": {"images": ["a", "b"]}}),
            ),
            (
                TaskKind::ImageGeneration,
                json!({"prompt": "a dog", "n": 2}),
            ),
        ];
        for (kind, body) in cases {
            let parsed = validate(kind, body.to_string().as_bytes()).unwrap();
            assert_eq!(Value::Object(parsed), body, "{}", kind.name());
        }
    }

    #[test]
    fn each_obvious_mistake_names_its_field() {
        let long = "x".repeat(2501);
        let cases = [
            (TaskKind::Text2Video, json!([1]), "body"),
            (
                TaskKind::Text2Video,
                json!({"prompt": "p", "callback_url": "https://x"}),
                "callback_url",
            ),
            (TaskKind::Text2Video, json!({}), "prompt"),
            (TaskKind::Text2Video, json!({"prompt": long}), "prompt"),
            (
                TaskKind::Text2Video,
                json!({"prompt": "p", "negative_prompt": long}),
                "negative_prompt",
            ),
            (TaskKind::Text2Video, json!({"prompt": 5}), "prompt"),
            (
                TaskKind::Text2Video,
                json!({"prompt": "p", "duration": 5}),
                "duration",
            ),
            (
                TaskKind::Text2Video,
                json!({"prompt": "p", "mode": "fast"}),
                "mode",
            ),
            (TaskKind::Image2Video, json!({}), "image"),
            (
                TaskKind::Image2Video,
                json!({"image": "data:image/png;base64,iVBOR"}),
                "image",
            ),
            (
                TaskKind::Image2Video,
                json!({"image": "u", "image_tail": "data:image/png;base64,x"}),
                "image_tail",
            ),
            (
                TaskKind::MultiImage2Video,
                json!({"prompt": "p"}),
                "image_list",
            ),
            (
                TaskKind::MultiImage2Video,
                json!({"prompt": "p", "image_list": [{"image":"a"},{"image":"b"},{"image":"c"},{"image":"d"},{"image":"e"}]}),
                "image_list",
            ),
            (
                TaskKind::MultiImage2Video,
                json!({"prompt": "p", "image_list": [{"image":"a"},{"url":"b"}]}),
                "image_list[1].image",
            ),
            (
                TaskKind::MultiImage2Video,
                json!({"prompt": "p", "image_list": [{"image":"data:x"}]}),
                "image_list[0].image",
            ),
            (
                TaskKind::MultiImage2Video,
                json!({"image_list": [{"image":"a"}]}),
                "prompt",
            ),
            (TaskKind::VideoExtend, json!({}), "video_id"),
            (TaskKind::LipSync, json!({}), "input"),
            (
                TaskKind::LipSync,
                json!({"input": {"mode": "text2video"}}),
                "input.video_id",
            ),
            (
                TaskKind::LipSync,
                json!({"input": {"video_id": "1", "mode": "sing"}}),
                "input.mode",
            ),
            (TaskKind::Effects, json!({"input": {}}), "effect_scene"),
            (TaskKind::Effects, json!({"effect_scene": "hug"}), "input"),
            (TaskKind::ImageGeneration, json!({"prompt": " "}), "prompt"),
        ];
        for (kind, body, field) in cases {
            let err = check(kind, body.clone()).unwrap_err();
            assert_eq!(err.field, field, "{} {body}", kind.name());
        }
    }

    #[test]
    fn a_2500_character_prompt_is_fine() {
        assert_eq!(
            check(TaskKind::Text2Video, json!({"prompt": "é".repeat(2500)})),
            Ok(())
        );
    }
}
