//! `openapi.json` kept true: every request the tests send to the component, in the
//! wasmtime host and on real Spin, and every answer, is checked against the document.
//!
//! - An answer's status must be one the operation lists, and its JSON body must match
//!   that response's schema (the component's own objects are closed there, so a field
//!   added without documenting it fails here).
//! - A request the component accepted (2xx) must match the operation's parameters and
//!   request body: the document may not be stricter than the component.
//! - A path or method the document does not have must be answered 404 or 405 with the
//!   `Error` body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde_json::{Value, json};

use super::spin_host::Reply;

#[path = "../../../build/merge_openapi.rs"]
mod merge_openapi;

/// The document as the component serves it: `openapi.json` with `openapi.kinds.json`.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| merge_openapi::document(super::real_spin::workspace()))
}

/// A validator for the schema at `pointer` in the document (its `$ref`s resolve
/// against the whole document), compiled once.
fn validator(pointer: &str) -> Arc<jsonschema::Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(validator) = cache.lock().unwrap().get(pointer) {
        return validator.clone();
    }
    // The schema itself as the root, with the document's components beside it so that
    // its `#/components/...` references resolve.
    let schema = document()
        .pointer(pointer)
        .unwrap_or_else(|| panic!("openapi.json has nothing at {pointer}"));
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": document()["components"].clone(),
        "allOf": [schema],
    });
    let validator = Arc::new(
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| {
                panic!("openapi.json: the schema at {pointer} does not compile: {e}")
            }),
    );
    cache
        .lock()
        .unwrap()
        .insert(pointer.to_string(), validator.clone());
    validator
}

/// `~` and `/` escaped for a JSON pointer segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The document's path template for `path`: literal segments win over `{parameters}`.
fn template_for(path: &str) -> Option<(String, HashMap<String, String>)> {
    let segments: Vec<&str> = path.split('/').collect();
    let paths = document()["paths"].as_object()?;
    paths
        .keys()
        .filter_map(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                return None;
            }
            let mut params = HashMap::new();
            let mut literals = 0;
            for (part, segment) in parts.iter().zip(&segments) {
                if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    if segment.is_empty() {
                        return None;
                    }
                    params.insert(name.to_string(), percent_decode(segment));
                } else if part == segment {
                    literals += 1;
                } else {
                    return None;
                }
            }
            Some((literals, template.clone(), params))
        })
        .max_by_key(|(literals, _, _)| *literals)
        .map(|(_, template, params)| (template, params))
}

fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

fn fail(context: &str, problem: impl std::fmt::Display) -> ! {
    panic!("openapi.json disagrees with the component: {context}: {problem}")
}

fn check_json(pointer: &str, value: &Value, context: &str) {
    let validator = validator(pointer);
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if !errors.is_empty() {
        fail(
            context,
            format!("{}\n  value: {value}", errors.join("\n  ")),
        );
    }
}

/// Checks one exchange (see the module's documentation).
pub fn check(request: &http::request::Parts, body: &Bytes, reply: &Reply) {
    let method = request.method.as_str().to_ascii_lowercase();
    let path = request.uri.path();
    let context = format!(
        "{} {} -> {}",
        request.method,
        request
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or(path),
        reply.status
    );
    let reply_json = || -> Value {
        serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| fail(&context, format!("the answer is not JSON: {e}")))
    };
    let operation = template_for(path).and_then(|(template, params)| {
        let pointer = format!("/paths/{}/{method}", escape(&template));
        document()
            .pointer(&pointer)
            .map(|operation| (pointer, operation.clone(), params))
    });
    let Some((pointer, operation, path_params)) = operation else {
        if !matches!(reply.status, 404 | 405) {
            fail(
                &context,
                "no such operation in the document, yet not 404/405",
            );
        }
        check_json("/components/schemas/Error", &reply_json(), &context);
        return;
    };

    // The answer.
    let status = reply.status.to_string();
    let Some(response) = operation["responses"].get(&status) else {
        fail(&context, format!("{pointer} does not list status {status}"));
    };
    // A `$ref`erenced response is validated in place, where its `$ref`s resolve.
    let response_pointer = match response.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference.trim_start_matches('#').to_string(),
        None => format!("{pointer}/responses/{status}"),
    };
    let response = document()
        .pointer(&response_pointer)
        .unwrap_or_else(|| fail(&context, format!("dangling {response_pointer}")))
        .clone();
    let content_type = reply
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match response["content"].as_object() {
        Some(content) if !content.is_empty() => {
            let media = content_type.split(';').next().unwrap_or("").trim();
            if !content.contains_key(media) {
                fail(
                    &context,
                    format!("content-type {content_type:?} not documented"),
                );
            }
            if media == "application/json" {
                check_json(
                    &format!("{response_pointer}/content/application~1json/schema"),
                    &reply_json(),
                    &context,
                );
            }
        }
        _ => {
            if !reply.body.is_empty() {
                fail(&context, "a body where the document has none");
            }
        }
    }

    // The request, when the component accepted it.
    if !(200..300).contains(&reply.status) {
        return;
    }
    let query: HashMap<String, String> = request
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    // The path item's parameters, then the operation's (which override by name and place).
    let item_pointer = pointer.rsplit_once('/').map_or("", |(item, _)| item);
    let mut params: Vec<(String, Value)> = Vec::new();
    for base in [item_pointer, pointer.as_str()] {
        let list = document()
            .pointer(&format!("{base}/parameters"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (index, param) in list.into_iter().enumerate() {
            params.retain(|(_, p)| !(p["name"] == param["name"] && p["in"] == param["in"]));
            params.push((format!("{base}/parameters/{index}"), param));
        }
    }
    for (param_pointer, param) in &params {
        let name = param["name"].as_str().unwrap_or_default();
        let value = match param["in"].as_str() {
            Some("path") => path_params.get(name).cloned(),
            Some("query") => query.get(name).cloned(),
            Some("header") => request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            _ => continue,
        };
        let Some(value) = value else {
            if param["required"] == true {
                fail(
                    &context,
                    format!("required parameter {name} missing, yet accepted"),
                );
            }
            continue;
        };
        let schema = format!("{param_pointer}/schema");
        let typed = match document()
            .pointer(&format!("{schema}/type"))
            .and_then(Value::as_str)
        {
            Some("integer") => value
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or(Value::String(value)),
            _ => Value::String(value),
        };
        check_json(&schema, &typed, &format!("{context} (parameter {name})"));
    }
    if let Some(content) = operation["requestBody"]["content"].as_object()
        && !body.is_empty()
        && let Some(json_body) = content.get("application/json")
        && json_body.get("schema").is_some()
    {
        let value = serde_json::from_slice::<Value>(body)
            .unwrap_or_else(|e| fail(&context, format!("accepted a body that is not JSON: {e}")));
        check_json(
            &format!("{pointer}/requestBody/content/application~1json/schema"),
            &value,
            &format!("{context} (accepted request body)"),
        );
    }
}
