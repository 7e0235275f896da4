//! Checking a create request before it costs a Kling call: what Kling would obviously
//! reject, named by field, by the kind's rules in the [catalog](super::catalog). The body
//! is otherwise passed to Kling unchanged.

use serde_json::{Map, Value};

use super::catalog::{Family, Rule, TaskKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct RequestError {
    pub field: String,
    pub problem: String,
}

fn problem(field: impl Into<String>, problem: impl Into<String>) -> RequestError {
    RequestError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Where a kind's request carries the fields kling-webhook sets.
pub fn own_fields(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::Legacy => ("callback_url", "external_task_id"),
        Family::Api2 => ("options.callback_url", "options.external_task_id"),
    }
}

/// Parses and checks a create request for `kind`; returns the JSON object to send.
pub fn validate(kind: TaskKind, body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    let request = object(body)?;
    for field in ["callback_url", own_fields(kind.family()).0] {
        if lookup(&request, field).is_some() {
            return Err(problem(
                field,
                "is set by kling-webhook (signed, pointing at its callback route); leave it out",
            ));
        }
    }
    // API 2.0 reads its external id from `options` only: one at the top would be passed
    // to Kling, ignored, and a retry would create a second task.
    if kind.family() == Family::Api2 && lookup(&request, "external_task_id").is_some() {
        return Err(problem(
            "external_task_id",
            "goes in `options.external_task_id` for API 2.0 kinds",
        ));
    }
    let rules = kind.spec().rules.iter().copied().flatten();
    checked(rules, request)
}

/// Parses and checks a request by `rules` (Kling's synchronous calls).
pub fn validate_by(rules: &[Rule], body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    checked(rules, object(body)?)
}

/// `request` once it passes every rule, with each [`Rule::Integer`] field written as an
/// integer: JSON has one number type, so `5.0` passes as the integer 5, but Kling reads
/// "integer" fields as its own integer type and may refuse `5.0` (1201), so Kling gets
/// `5`.
fn checked<'r>(
    rules: impl IntoIterator<Item = &'r Rule>,
    mut request: Map<String, Value>,
) -> Result<Map<String, Value>, RequestError> {
    let mut integers = Vec::new();
    for rule in rules {
        check(rule, &request)?;
        if let Rule::Integer(field, ..) = rule
            && let Some(n) = lookup(&request, field)
                .filter(|v| v.is_f64())
                .and_then(Value::as_f64)
        {
            // Checked: a whole number within the rule's range, which an i64 holds.
            integers.push((*field, n as i64));
        }
    }
    for (field, n) in integers {
        set_path(&mut request, field, n.into());
    }
    Ok(request)
}

fn object(body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(request)) => Ok(request),
        _ => Err(problem("body", "must be a JSON object")),
    }
}

/// A create request as two requests are compared (a retry's with the first's): without
/// its external id (which may come from the body or the `Idempotency-Key`), without null
/// fields, and without an API 2.0 `options` that holds nothing else. serde_json's maps
/// are sorted, so key order never matters.
pub fn comparable(body: &Map<String, Value>) -> Map<String, Value> {
    let mut request = body.clone();
    request.remove("external_task_id");
    if let Some(Value::Object(options)) = request.get_mut("options") {
        options.remove("external_task_id");
    }
    without_nulls(&mut request);
    if request
        .get("options")
        .is_some_and(|o| o.as_object().is_some_and(Map::is_empty))
    {
        request.remove("options");
    }
    request
}

/// Drops `null` fields, at any depth: validation reads them as left out, so a retry that
/// adds or drops one is the same request.
fn without_nulls(object: &mut Map<String, Value>) {
    object.retain(|_, value| !value.is_null());
    for value in object.values_mut() {
        if let Value::Object(inner) = value {
            without_nulls(inner);
        }
    }
}

/// 16 hex digits of SHA-256 over `value`'s JSON: what a record keeps of the request it
/// was made from, to tell a retry from another request. Taken from the request as
/// parsed, never from one read back from the store (serde_json's default float parsing
/// may not give back the float it wrote).
pub fn digest_of(value: &impl serde::Serialize) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The value at a dot path, if any (`null` counts as absent).
pub fn lookup<'a>(request: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut segments = path.split('.');
    let mut value = request.get(segments.next()?)?;
    for segment in segments {
        value = value.as_object()?.get(segment)?;
    }
    (!value.is_null()).then_some(value)
}

/// Sets `value` at a dot path, creating objects on the way (a `null` on the way is a field
/// left out, as [`lookup`] reads it); `false`, and nothing set, if the path crosses
/// another value.
pub fn set_path(object: &mut Map<String, Value>, path: &str, value: Value) -> bool {
    let (parents, last) = match path.rsplit_once('.') {
        Some((parents, last)) => (Some(parents), last),
        None => (None, path),
    };
    let mut current = object;
    for segment in parents.into_iter().flat_map(|p| p.split('.')) {
        let next = current.entry(segment.to_string()).or_insert(Value::Null);
        if next.is_null() {
            *next = Value::Object(Map::new());
        }
        match next.as_object_mut() {
            Some(inner) => current = inner,
            None => return false,
        }
    }
    current.insert(last.to_string(), value);
    true
}

/// Whether `field` is given as [`Rule::Required`] reads it: non-blank, non-empty, not `null`.
pub fn given(request: &Map<String, Value>, field: &str) -> bool {
    match lookup(request, field) {
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Array(list)) => !list.is_empty(),
        Some(_) => true,
        None => false,
    }
}

fn check(rule: &Rule, request: &Map<String, Value>) -> Result<(), RequestError> {
    let at = |field: &str| lookup(request, field);
    match *rule {
        Rule::Required(field) if !given(request, field) => Err(problem(field, "is required")),
        Rule::RequiredUnless(field, flag)
            if !given(request, field) && at(flag).and_then(Value::as_bool) != Some(true) =>
        {
            Err(problem(
                field,
                format!("is required unless `{flag}` is true"),
            ))
        }
        Rule::RequiredIf(field, flag)
            if !given(request, field) && at(flag).and_then(Value::as_bool) == Some(true) =>
        {
            Err(problem(field, format!("is required when `{flag}` is true")))
        }
        Rule::Absent(field) if given(request, field) => {
            Err(problem(field, "is not taken by this kind"))
        }
        Rule::AnyOf(fields) if !fields.iter().any(|f| given(request, f)) => {
            let (first, others) = fields.split_first().unwrap_or((&"", &[]));
            let others: Vec<String> = others.iter().map(|f| format!("`{f}`")).collect();
            Err(problem(
                *first,
                format!("or {} is required", others.join(" or ")),
            ))
        }
        Rule::ExactlyOne(a, b) if given(request, a) == given(request, b) => Err(problem(
            a,
            format!("or `{b}` is required, exactly one of them"),
        )),
        Rule::NotBoth(a, b) if given(request, a) && given(request, b) => {
            Err(problem(a, format!("cannot be given with `{b}`")))
        }
        Rule::Text(field, max) => match at(field) {
            Some(Value::String(text)) if text.chars().count() > max => {
                Err(problem(field, format!("is longer than {max} characters")))
            }
            Some(Value::String(_)) | None => Ok(()),
            Some(_) => Err(problem(field, "must be a string")),
        },
        Rule::OneOf(field, values) => match at(field) {
            Some(value) if !value.as_str().is_some_and(|s| values.contains(&s)) => {
                let values: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
                Err(problem(
                    field,
                    format!("must be one of {}", values.join(", ")),
                ))
            }
            _ => Ok(()),
        },
        Rule::Number(field, min, max) => match at(field) {
            Some(value)
                if !value
                    .as_f64()
                    .is_some_and(|n| (min as f64..=max as f64).contains(&n)) =>
            {
                Err(problem(
                    field,
                    format!("must be a number from {min} to {max}"),
                ))
            }
            _ => Ok(()),
        },
        Rule::Integer(field, min, max) => match at(field) {
            // JSON has one number type: 5.0 is the integer 5, as JSON Schema says too.
            Some(value)
                if !value.as_f64().is_some_and(|n| {
                    n.fract() == 0.0 && (min as f64..=max as f64).contains(&n)
                }) =>
            {
                Err(problem(
                    field,
                    format!("must be an integer from {min} to {max}"),
                ))
            }
            _ => Ok(()),
        },
        Rule::StringValued(field) => match at(field) {
            Some(value) if !value.is_string() => {
                Err(problem(field, "must be a string, such as \"5\""))
            }
            _ => Ok(()),
        },
        Rule::NumberValued(field) => match at(field) {
            Some(value) if !value.is_number() => Err(problem(field, "must be a number")),
            _ => Ok(()),
        },
        Rule::Object(field) => match at(field) {
            Some(value) if !value.is_object() => Err(problem(field, "must be an object")),
            _ => Ok(()),
        },
        Rule::List(field, min, max) => match at(field) {
            Some(Value::Array(list)) if (min..=max).contains(&list.len()) => Ok(()),
            Some(_) if max == usize::MAX => Err(problem(
                field,
                format!("must be a list of at least {min} entries"),
            )),
            Some(_) => Err(problem(
                field,
                format!("must be a list of {min} to {max} entries"),
            )),
            None => Ok(()),
        },
        Rule::ListOf(field, min, max, item) => match at(field) {
            Some(Value::Array(list)) if (min..=max).contains(&list.len()) => {
                for (i, entry) in list.iter().enumerate() {
                    let name = format!("{field}[{i}].{item}");
                    match entry.get(item).and_then(Value::as_str) {
                        Some(s) if !s.trim().is_empty() && item.contains("image") => {
                            check_image(&name, s)?;
                        }
                        Some(s) if !s.trim().is_empty() => {}
                        _ => return Err(problem(name, "is required")),
                    }
                }
                Ok(())
            }
            Some(_) => Err(problem(
                field,
                format!("must hold {min} to {max} `{{\"{item}\": ...}}` entries"),
            )),
            None => Ok(()),
        },
        Rule::Image(field) => match at(field) {
            Some(Value::String(image)) => check_image(field, image),
            Some(_) => Err(problem(field, "must be a string: a URL or raw base64")),
            None => Ok(()),
        },
        Rule::ImageList(field, min, max) => match at(field) {
            Some(Value::Array(list)) if (min..=max).contains(&list.len()) => {
                list.iter().enumerate().try_for_each(|(i, image)| {
                    let name = format!("{field}[{i}]");
                    match image.as_str() {
                        Some(image) => check_image(&name, image),
                        None => Err(problem(name, "must be a string: a URL or raw base64")),
                    }
                })
            }
            Some(_) => Err(problem(
                field,
                format!("must be a list of {min} to {max} images"),
            )),
            None => Ok(()),
        },
        Rule::ListTexts(field, item, max) => match at(field) {
            Some(Value::Array(list)) => list.iter().enumerate().try_for_each(|(i, entry)| {
                match entry.get(item).and_then(Value::as_str) {
                    Some(text) if text.chars().count() > max => Err(problem(
                        format!("{field}[{i}].{item}"),
                        format!("is longer than {max} characters"),
                    )),
                    _ => Ok(()),
                }
            }),
            _ => Ok(()),
        },
        Rule::Needs(field, other, value)
            if given(request, field) && at(other).and_then(Value::as_str) != Some(value) =>
        {
            Err(problem(field, format!("needs `{other}` \"{value}\"")))
        }
        _ => Ok(()),
    }
}

/// Kling takes an image as a URL or as raw base64: a `data:` URI prefix is refused.
fn check_image(field: &str, image: &str) -> Result<(), RequestError> {
    if image
        .get(..5)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("data:"))
    {
        Err(problem(
            field,
            "must be a URL or raw base64 without a `data:` prefix",
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kling::catalog::CATALOG;
    use serde_json::json;

    fn k(name: &str) -> TaskKind {
        TaskKind::from_name(name).unwrap()
    }

    fn check(kind: TaskKind, body: Value) -> Result<(), RequestError> {
        validate(kind, body.to_string().as_bytes()).map(|_| ())
    }

    #[test]
    fn valid_requests_of_every_kind_pass_unchanged() {
        let cases = [
            (
                k("text2video"),
                json!({"prompt": "a cat", "duration": "5", "mode": "pro", "model_name": "kling-v2-1"}),
            ),
            (
                k("text2video"),
                json!({"multi_shot": true, "multi_prompt": [{"prompt": "x"}]}),
            ),
            (k("image2video"), json!({"image": "https://img/1.png"})),
            (
                k("text2video"),
                json!({"prompt": "p", "cfg_scale": 0.5, "aspect_ratio": "9:16", "sound": "on"}),
            ),
            (
                k("image2video"),
                json!({"image": "u", "cfg_scale": 1, "sound": "off"}),
            ),
            (
                k("effects"),
                json!({"effect_scene": "cheers", "input": {"image": "https://a.png"}}),
            ),
            (k("image2video"), json!({"image_tail": "iVBORw0KGgo="})),
            (
                k("multi-image2video"),
                json!({"image_list": [{"image": "https://a"}, {"image": "https://b"}], "prompt": "p"}),
            ),
            (k("video-extend"), json!({"video_id": "867283741759111300"})),
            (
                k("lip-sync"),
                json!({"input": {"video_id": "1", "mode": "audio2video", "audio_type": "url"}}),
            ),
            (
                k("effects"),
                json!({"effect_scene": "hug", "input": {"images": ["a", "b"]}}),
            ),
            (k("image-generation"), json!({"prompt": "a dog", "n": 2})),
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
            (k("text2video"), json!([1]), "body"),
            (
                k("text2video"),
                json!({"prompt": "p", "callback_url": "https://x"}),
                "callback_url",
            ),
            (k("text2video"), json!({}), "prompt"),
            (k("text2video"), json!({"prompt": long}), "prompt"),
            (
                k("text2video"),
                json!({"prompt": "p", "negative_prompt": long}),
                "negative_prompt",
            ),
            (k("text2video"), json!({"prompt": 5}), "prompt"),
            (
                k("text2video"),
                json!({"prompt": "p", "duration": 5}),
                "duration",
            ),
            (
                k("text2video"),
                json!({"prompt": "p", "mode": "fast"}),
                "mode",
            ),
            (
                k("text2video"),
                json!({"prompt": "p", "cfg_scale": 2}),
                "cfg_scale",
            ),
            (
                k("text2video"),
                json!({"prompt": "p", "cfg_scale": "0.5"}),
                "cfg_scale",
            ),
            (
                k("text2video"),
                json!({"prompt": "p", "aspect_ratio": "4:3"}),
                "aspect_ratio",
            ),
            (
                k("text2video"),
                json!({"prompt": "p", "sound": true}),
                "sound",
            ),
            (
                k("image2video"),
                json!({"image": "u", "cfg_scale": -0.1}),
                "cfg_scale",
            ),
            (k("image2video"), json!({}), "image"),
            (
                k("image2video"),
                json!({"image": "data:image/png;base64,iVBOR"}),
                "image",
            ),
            (
                k("image2video"),
                json!({"image": "u", "image_tail": "data:image/png;base64,x"}),
                "image_tail",
            ),
            (k("multi-image2video"), json!({"prompt": "p"}), "image_list"),
            (
                k("multi-image2video"),
                json!({"prompt": "p", "image_list": [{"image":"a"},{"image":"b"},{"image":"c"},{"image":"d"},{"image":"e"}]}),
                "image_list",
            ),
            (
                k("multi-image2video"),
                json!({"prompt": "p", "image_list": [{"image":"a"},{"url":"b"}]}),
                "image_list[1].image",
            ),
            (
                k("multi-image2video"),
                json!({"prompt": "p", "image_list": [{"image":"data:x"}]}),
                "image_list[0].image",
            ),
            (
                k("multi-image2video"),
                json!({"image_list": [{"image":"a"}]}),
                "prompt",
            ),
            (k("video-extend"), json!({}), "video_id"),
            (k("lip-sync"), json!({}), "input"),
            (
                k("lip-sync"),
                json!({"input": {"mode": "text2video"}}),
                "input.video_id",
            ),
            (
                k("lip-sync"),
                json!({"input": {"video_id": "1", "mode": "sing"}}),
                "input.mode",
            ),
            (k("effects"), json!({"input": {}}), "effect_scene"),
            (k("effects"), json!({"effect_scene": "hug"}), "input"),
            (
                k("effects"),
                json!({"effect_scene": "hug", "input": {}}),
                "input.image",
            ),
            (
                k("effects"),
                json!({"effect_scene": "hug", "input": {"image": "a", "images": ["a", "b"]}}),
                "input.image",
            ),
            (
                k("effects"),
                json!({"effect_scene": "hug", "input": {"images": ["a"]}}),
                "input.images",
            ),
            (
                k("effects"),
                json!({"effect_scene": "hug", "input": {"images": ["a", "DATA:image/png;base64,x"]}}),
                "input.images[1]",
            ),
            (k("image-generation"), json!({"prompt": " "}), "prompt"),
            (
                k("image2video"),
                json!({"image": "Data:image/png;base64,iVBOR"}),
                "image",
            ),
            (
                k("multi-image2image"),
                json!({"subject_image_list": [{"subject_image": "data:image/png;base64,x"}]}),
                "subject_image_list[0].subject_image",
            ),
            (
                k("multi-image2image"),
                json!({"subject_image_list": [{"image": "https://a"}]}),
                "subject_image_list[0].subject_image",
            ),
            (
                k("advanced-lip-sync"),
                json!({"session_id": "s", "face_choose": [{"face_id": "0"}, {"face_id": "1"}]}),
                "face_choose",
            ),
            (
                k("omni-video"),
                json!({"prompt": "p", "duration": "20"}),
                "duration",
            ),
            (
                k("omni-video"),
                json!({"prompt": "p", "voice_list": [{"voice_id": "v"}]}),
                "voice_list",
            ),
            (
                k("omni-video"),
                json!({"multi_shot": true, "multi_prompt": [{"prompt": "x".repeat(513)}]}),
                "multi_prompt[0].prompt",
            ),
        ];
        for (kind, body, field) in cases {
            let err = check(kind, body.clone()).unwrap_err();
            assert_eq!(err.field, field, "{} {body}", kind.name());
        }
    }

    #[test]
    fn every_kind_s_example_passes_and_its_required_fields_are_named_when_missing() {
        for spec in CATALOG {
            let kind = k(spec.name);
            let example: Value = serde_json::from_str(spec.example).unwrap();
            let parsed = validate(kind, spec.example.as_bytes()).unwrap();
            assert_eq!(Value::Object(parsed), example, "{}", spec.name);
            let Value::Object(example) = example else {
                unreachable!()
            };
            // Without any one required top-level field, the request names that field.
            for rule in spec.rules.iter().copied().flatten() {
                if let Rule::Required(field) = rule
                    && !field.contains('.')
                {
                    let mut without = example.clone();
                    without.remove(*field);
                    let err = check(kind, Value::Object(without)).unwrap_err();
                    assert_eq!(err.field, *field, "{}", spec.name);
                }
            }
        }
    }

    #[test]
    fn rules_of_the_new_kinds() {
        let cases = [
            // Exactly one of `audio_id` / `sound_file`.
            ("avatar", json!({"image": "i"}), Some("audio_id")),
            (
                "avatar",
                json!({"image": "i", "audio_id": "a", "sound_file": "s"}),
                Some("audio_id"),
            ),
            ("avatar", json!({"image": "i", "audio_id": "a"}), None),
            // "no `model_name`".
            (
                "avatar",
                json!({"image": "i", "audio_id": "a", "model_name": "kling-v2-6"}),
                Some("model_name"),
            ),
            (
                "avatar",
                json!({"image": "i", "audio_id": "a", "model_name": null}),
                None,
            ),
            // Multi-shot takes its prompts from `multi_prompt`.
            (
                "omni-video",
                json!({"multi_shot": true}),
                Some("multi_prompt"),
            ),
            (
                "omni-video",
                json!({"multi_shot": true, "multi_prompt": [{"prompt": "p"}]}),
                None,
            ),
            (
                "omni-video",
                json!({"multi_shot": false, "prompt": "p"}),
                None,
            ),
            ("video-to-audio", json!({}), Some("video_id")),
            (
                "video-to-audio",
                json!({"video_id": "1", "video_url": "u"}),
                Some("video_id"),
            ),
            ("video-to-audio", json!({"video_url": "u"}), None),
            // text-to-audio: a 200-character prompt, a NUMBER duration of 3 to 10.
            (
                "text-to-audio",
                json!({"prompt": "x".repeat(201)}),
                Some("prompt"),
            ),
            (
                "text-to-audio",
                json!({"prompt": "x", "duration": "5"}),
                Some("duration"),
            ),
            (
                "text-to-audio",
                json!({"prompt": "x", "duration": 10.5}),
                Some("duration"),
            ),
            (
                "text-to-audio",
                json!({"prompt": "x", "duration": 3.5}),
                None,
            ),
            ("omni-image", json!({"prompt": "p", "n": 10}), Some("n")),
            (
                "omni-image",
                json!({"prompt": "p", "result_type": "grid"}),
                Some("result_type"),
            ),
            (
                "omni-video",
                json!({"prompt": "p", "voice_list": [{}], "element_list": [{}]}),
                Some("voice_list"),
            ),
            (
                "omni-video",
                json!({"multi_shot": true, "multi_prompt": [{"prompt": "a"}, {"text": "b"}]}),
                Some("multi_prompt[1].prompt"),
            ),
            (
                "custom-voices",
                json!({"voice_name": "x".repeat(21), "video_id": "1"}),
                Some("voice_name"),
            ),
            (
                "custom-voices",
                json!({"voice_name": "n"}),
                Some("voice_url"),
            ),
            (
                "multi-elements",
                json!({"session_id": "s", "edit_mode": "paint", "prompt": "p"}),
                Some("edit_mode"),
            ),
            (
                "expand",
                json!({"image": "i", "up_expansion_ratio": 0.1, "down_expansion_ratio": 0.1, "left_expansion_ratio": 0.1, "right_expansion_ratio": "wide"}),
                Some("right_expansion_ratio"),
            ),
            // API 2.0: the callback goes in `options`, which kling-webhook fills.
            (
                "text-to-video/kling-3.0",
                json!({"prompt": "p", "options": {"callback_url": "https://x"}}),
                Some("options.callback_url"),
            ),
            (
                "text-to-video/kling-3.0",
                json!({"prompt": "p", "callback_url": "https://x"}),
                Some("callback_url"),
            ),
            (
                "text-to-video/kling-3.0",
                json!({"prompt": "p", "settings": {"duration": "5"}}),
                Some("settings.duration"),
            ),
            (
                "text-to-video/kling-3.0",
                json!({"prompt": "x".repeat(3073)}),
                Some("prompt"),
            ),
            (
                "text-to-video/kling-3.0",
                json!({"prompt": "x".repeat(3072), "settings": {"duration": 15}}),
                None,
            ),
            ("image-to-video/kling-3.0", json!({}), Some("prompt")),
            // Kling would ignore an API 2.0 external id at the top: a retry would pay twice.
            (
                "text-to-video/kling-3.0",
                json!({"prompt": "p", "external_task_id": "job-1"}),
                Some("external_task_id"),
            ),
            (
                "text-to-video/kling-3.0",
                json!({"prompt": "p", "options": {"external_task_id": "job-1"}}),
                None,
            ),
            // JSON has one number type: 5.0 is an integer (Kling gets 5); 5.5 is not.
            (
                "text-to-video/kling-3.0",
                json!({"prompt": "p", "settings": {"duration": 5.0}}),
                None,
            ),
            (
                "text-to-video/kling-3.0",
                json!({"prompt": "p", "settings": {"duration": 5.5}}),
                Some("settings.duration"),
            ),
            // `null` is a field left out, wherever it is.
            (
                "text-to-video/kling-3.0",
                json!({"prompt": "p", "options": null, "settings": {"audio": null}}),
                None,
            ),
            (
                "text2video",
                json!({"prompt": "p", "mode": null, "duration": null, "callback_url": null}),
                None,
            ),
            ("text2video", json!({"prompt": null}), Some("prompt")),
            (
                "expand",
                json!({"image": "i", "up_expansion_ratio": 3, "down_expansion_ratio": 0, "left_expansion_ratio": 0, "right_expansion_ratio": "0"}),
                Some("right_expansion_ratio"),
            ),
        ];
        for (name, body, field) in cases {
            let result = check(k(name), body.clone());
            assert_eq!(
                result.as_ref().err().map(|e| e.field.as_str()),
                field,
                "{name} {body}: {result:?}"
            );
        }
    }

    #[test]
    fn set_path_creates_objects_reads_null_as_absent_and_never_crosses_a_value() {
        let mut object = json!({"options": null, "input": "text"})
            .as_object()
            .unwrap()
            .clone();
        assert!(set_path(&mut object, "options.callback_url", json!("u")));
        assert!(set_path(&mut object, "a.b.c", json!(1)));
        assert!(set_path(&mut object, "top", json!(true)));
        assert!(!set_path(&mut object, "input.video_id", json!("v")));
        assert_eq!(
            Value::Object(object),
            json!({"options": {"callback_url": "u"}, "input": "text", "a": {"b": {"c": 1}}, "top": true})
        );
    }

    /// Kling reads its integer fields as integers: a `5.0` that passed goes out as `5`,
    /// and the request is otherwise what was sent.
    #[test]
    fn an_integer_written_with_a_fraction_reaches_kling_as_an_integer() {
        let sent = |kind, body: Value| validate(k(kind), body.to_string().as_bytes()).unwrap();
        let api2 = sent(
            "text-to-video/kling-3.0",
            json!({"prompt": "p", "settings": {"duration": 5.0, "resolution": "720p"}}),
        );
        assert_eq!(
            Value::Object(api2).to_string(),
            r#"{"prompt":"p","settings":{"duration":5,"resolution":"720p"}}"#
        );
        let omni_image = sent("omni-image", json!({"prompt": "p", "n": 3.0}));
        assert_eq!(
            Value::Object(omni_image).to_string(),
            r#"{"n":3,"prompt":"p"}"#
        );
        // Already an integer, or a field no integer rule names: untouched.
        let untouched = json!({"prompt": "p", "n": 3, "cfg": 0.5});
        assert_eq!(
            Value::Object(sent("omni-image", untouched.clone())),
            untouched
        );
    }

    #[test]
    fn a_2500_character_prompt_is_fine() {
        assert_eq!(
            check(k("text2video"), json!({"prompt": "é".repeat(2500)})),
            Ok(())
        );
    }
}
