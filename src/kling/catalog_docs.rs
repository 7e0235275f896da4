//! The documents generated from the [catalog](super::catalog): the README's kinds table
//! and `openapi.kinds.json` (the submit routes and request schemas that `build.rs` merges
//! into `openapi.json`). The tests here fail when either drifts from the catalog; run
//! them with `KLING_WEBHOOK_BLESS=1` to rewrite both.

use serde_json::{Map, Value, json};

use super::catalog::{CATALOG, Family, KindSpec, Query, Rule};
use super::request::own_fields;

const README: &str = "README.md";
const OPENAPI_KINDS: &str = "openapi.kinds.json";
const TABLE_START: &str = "<!-- kinds table: generated from src/kling/catalog.rs -->\n";
const TABLE_END: &str = "<!-- end of kinds table -->";

/// The kinds as a Markdown table.
pub fn markdown_table() -> String {
    let mut table = String::from(
        "| kind | family | Kling create path | Kling query | result |\n|---|---|---|---|---|\n",
    );
    for kind in CATALOG {
        let family = match kind.family {
            Family::Legacy => "legacy",
            Family::Api2 => "API 2.0",
        };
        let query = match kind.query {
            Query::ById => format!("`{}/{{id}}`", kind.create_path),
            Query::ByTaskIdOnly => format!("`{}/{{task_id}}` (task id only)", kind.create_path),
            Query::Tasks => "`/tasks?task_ids=` or `?external_task_ids=`".to_string(),
        };
        let outputs: Vec<&str> = kind.outputs.iter().map(|o| o.field()).collect();
        table.push_str(&format!(
            "| `{}` | {family} | `{}` | {query} | {} |\n",
            kind.name,
            kind.create_path,
            outputs.join(", ")
        ));
    }
    table
}

/// A component schema name for a kind's request (`/` is not allowed in one).
fn schema_name(kind: &KindSpec) -> String {
    format!("Request.{}", kind.name.replace('/', "."))
}

fn operation_id(kind: &KindSpec) -> String {
    let name: String = kind
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("submit_{name}")
}

/// A non-blank value, as [`Rule::Required`] reads one (the `Given` schema).
fn given() -> Value {
    json!({"$ref": "#/components/schemas/Given"})
}

/// `{properties: {a: {properties: {b: leaf}}}}` for the dot path `a.b`; when `required`,
/// each level requires the next, and every level below the top is an object.
fn at(path: &str, leaf: Value, required: bool) -> Value {
    let mut levels = path.rsplit('.').peekable();
    let mut schema = leaf;
    while let Some(segment) = levels.next() {
        schema = json!({ "properties": { segment: schema } });
        if required {
            schema["required"] = json!([segment]);
            if levels.peek().is_some() {
                schema["type"] = json!("object");
            }
        }
    }
    schema
}

/// `leaf`, or `null`: the validator reads a `null` field as one left out.
fn or_null(mut leaf: Value) -> Value {
    if let Some(kind) = leaf.get("type").and_then(Value::as_str).map(str::to_string) {
        leaf["type"] = json!([kind, "null"]);
        leaf
    } else if let Some(Value::Array(values)) = leaf.get_mut("enum") {
        values.push(Value::Null);
        leaf
    } else {
        json!({"anyOf": [leaf, {"type": "null"}]})
    }
}

/// A list of `min` to `max` entries (`usize::MAX`: no upper bound).
fn list(min: usize, max: usize) -> Value {
    let mut schema = json!({"type": "array", "minItems": min});
    if max != usize::MAX {
        schema["maxItems"] = json!(max);
    }
    schema
}

fn nonblank_string() -> Value {
    json!({"type": "string", "pattern": "\\S"})
}

/// A string that is no `data:` URI (the `not` names its type, so `null` passes it).
fn no_data_uri() -> Value {
    json!({"type": "string", "not": {"type": "string", "pattern": "^[Dd][Aa][Tt][Aa]:"}})
}

/// One rule as JSON Schema; together (`allOf`) they accept what [`validate`] accepts.
///
/// [`validate`]: super::request::validate
fn rule_schema(rule: &Rule) -> Value {
    match *rule {
        Rule::Required(field) => at(field, given(), true),
        Rule::RequiredUnless(field, flag) => json!({"anyOf": [
            at(field, given(), true),
            at(flag, json!({"const": true}), true),
        ]}),
        Rule::RequiredIf(field, flag) => json!({"anyOf": [
            {"not": at(flag, json!({"const": true}), true)},
            at(field, given(), true),
        ]}),
        Rule::Absent(field) => json!({"not": at(field, given(), true)}),
        Rule::AnyOf(fields) => json!({
            "anyOf": fields.iter().map(|f| at(f, given(), true)).collect::<Vec<_>>()
        }),
        Rule::ExactlyOne(a, b) => json!({"oneOf": [at(a, given(), true), at(b, given(), true)]}),
        Rule::NotBoth(a, b) => {
            json!({"not": {"allOf": [at(a, given(), true), at(b, given(), true)]}})
        }
        Rule::Text(field, max) => optional(field, json!({"type": "string", "maxLength": max})),
        Rule::OneOf(field, values) => optional(field, json!({"enum": values})),
        Rule::Number(field, min, max) => optional(
            field,
            json!({"type": "number", "minimum": min, "maximum": max}),
        ),
        Rule::Integer(field, min, max) => optional(
            field,
            json!({"type": "integer", "minimum": min, "maximum": max}),
        ),
        Rule::StringValued(field) => optional(field, json!({"type": "string"})),
        Rule::NumberValued(field) => optional(field, json!({"type": "number"})),
        Rule::Object(field) => optional(field, json!({"type": "object"})),
        Rule::List(field, min, max) => optional(field, list(min, max)),
        Rule::ListOf(field, min, max, item) => {
            let value = if item.contains("image") {
                json!({"allOf": [nonblank_string(), no_data_uri()]})
            } else {
                nonblank_string()
            };
            let mut schema = list(min, max);
            schema["items"] = json!({
                "type": "object", "required": [item], "properties": { item: value }
            });
            optional(field, schema)
        }
        Rule::Image(field) => optional(field, no_data_uri()),
        Rule::ImageList(field, min, max) => {
            let mut schema = list(min, max);
            schema["items"] = no_data_uri();
            optional(field, schema)
        }
        // `maxLength` binds strings only, as the validator reads the entries.
        Rule::ListTexts(field, item, max) => optional(
            field,
            json!({"items": {"properties": { item: {"maxLength": max} }}}),
        ),
        Rule::Needs(field, other, value) => json!({"anyOf": [
            {"not": at(field, given(), true)},
            at(other, json!({"const": value}), true),
        ]}),
    }
}

/// A field checked only when present (and not `null`).
fn optional(field: &str, leaf: Value) -> Value {
    at(field, or_null(leaf), false)
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::Legacy => "legacy",
        Family::Api2 => "api2",
    }
}

/// What no request of the family may carry: the fields kling-webhook sets (in a
/// pipeline step, the external id too).
fn own_fields_schema(family: Family, in_step: bool) -> Value {
    let (callback, external) = own_fields(family);
    // Set means present and not `null` (the validator reads `null` as left out).
    let set = || json!({"not": {"type": "null"}});
    let mut set_by_us = vec![at("callback_url", set(), true)];
    if family == Family::Api2 {
        // API 2.0 takes both in `options`; an external id at the top is refused.
        set_by_us.push(at(callback, set(), true));
        set_by_us.push(at("external_task_id", set(), true));
    }
    if in_step {
        set_by_us.push(at(external, set(), true));
    }
    json!({"not": {"anyOf": set_by_us}})
}

fn own_fields_ref(family: Family, in_step: bool) -> Value {
    let place = if in_step { "Step" } else { "Submit" };
    json!({"$ref": format!("#/components/schemas/SetByUs.{place}.{}", family_name(family))})
}

fn request_schema(kind: &KindSpec) -> Value {
    let (_, external) = own_fields(kind.family);
    let mut all = vec![json!({"$ref": format!(
        "#/components/schemas/Submit.{}",
        family_name(kind.family)
    )})];
    all.extend(kind.rules.iter().copied().flatten().map(rule_schema));
    let outputs: Vec<&str> = kind.outputs.iter().map(|o| o.field()).collect();
    json!({
        "title": kind.name,
        "description": format!(
            "Kling's own request for `POST {}`, passed on with `{}` and `{}` set by kling-webhook. Its result carries {}.",
            kind.create_path,
            own_fields(kind.family).0,
            external,
            outputs.join(", ")
        ),
        "allOf": all,
    })
}

fn path_item(kind: &KindSpec) -> Value {
    let example: Value = serde_json::from_str(kind.example).expect("the catalog's example is JSON");
    let responses: Map<String, Value> = [
        ("200", "Submit200"),
        ("202", "Submit202"),
        ("400", "Submit400"),
        ("401", "Unauthorized"),
        ("402", "Submit402"),
        ("409", "Submit409"),
        ("413", "Submit413"),
        ("422", "Submit422"),
        ("429", "Submit429"),
        ("500", "Submit500"),
        ("502", "Submit502"),
        ("503", "Submit503"),
    ]
    .into_iter()
    .map(|(status, name)| {
        (
            status.to_string(),
            json!({"$ref": format!("#/components/responses/{name}")}),
        )
    })
    .collect();
    json!({"post": {
        "operationId": operation_id(kind),
        "tags": ["tasks"],
        "security": [{"bearer": []}],
        "summary": format!("Submit to Kling's POST {}", kind.create_path),
        "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
        "requestBody": {"required": true, "content": {"application/json": {
            "schema": {"$ref": format!("#/components/schemas/{}", schema_name(kind))},
            "example": example,
        }}},
        "responses": responses,
    }})
}

/// `openapi.kinds.json`: everything in the API document that the catalog decides.
pub fn openapi_kinds() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut first_steps = Vec::new();
    for kind in CATALOG {
        paths.insert(format!("/tasks/{}", kind.name), path_item(kind));
        schemas.insert(schema_name(kind), request_schema(kind));
        first_steps.push(json!({"properties": {
            "kind": {"const": kind.name},
            "request": {"allOf": [
                {"$ref": format!("#/components/schemas/{}", schema_name(kind))},
                own_fields_ref(kind.family, true),
            ]},
        }}));
    }
    for family in [Family::Legacy, Family::Api2] {
        let name = family_name(family);
        let (_, external) = own_fields(family);
        let mut submit = vec![
            json!({"type": "object"}),
            own_fields_ref(family, false),
            optional(
                external,
                json!({"$ref": "#/components/schemas/ExternalTaskId"}),
            ),
        ];
        if family == Family::Api2 {
            // `options` holds `callback_url` and `external_task_id`: an object, or left out.
            submit.push(at("options", json!({"type": ["object", "null"]}), false));
        }
        schemas.insert(format!("Submit.{name}"), json!({"allOf": submit}));
        schemas.insert(
            format!("SetByUs.Submit.{name}"),
            own_fields_schema(family, false),
        );
        schemas.insert(
            format!("SetByUs.Step.{name}"),
            own_fields_schema(family, true),
        );
    }
    schemas.insert(
        "Given".into(),
        json!({"not": {"type": "null"}, "pattern": "\\S", "minItems": 1}),
    );
    let names: Vec<&str> = CATALOG.iter().map(|k| k.name).collect();
    let mut reserved: Vec<&str> = names.iter().copied().filter(|n| !n.contains('/')).collect();
    reserved.push("reconcile");
    schemas.insert(
        "KindName".into(),
        json!({"type": "string", "enum": names, "description": "A kind of `GET /kinds`."}),
    );
    schemas.insert(
        "ExternalTaskId".into(),
        json!({
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{1,64}$",
            "not": {"enum": reserved},
            "description": "1 to 64 of `[A-Za-z0-9_-]`, and not a kind's name or `reconcile` (those are routes of their own under `/tasks/`).",
        }),
    );
    schemas.insert(
        "FirstPipelineStepRequest".into(),
        json!({
            "description": "The first step: its request is checked exactly as a submit of its kind; it has no `inputs` (there is no earlier step).",
            "type": "object",
            "required": ["kind", "request"],
            "additionalProperties": false,
            "properties": {"kind": {"$ref": "#/components/schemas/KindName"}, "request": true},
            "oneOf": first_steps,
        }),
    );
    json!({
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": {"IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": false,
                "description": "The task's `external_task_id` if the body names none (must equal the body's if both are given).",
                "schema": {"$ref": "#/components/schemas/ExternalTaskId"},
            }},
        },
    })
}

fn workspace_file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn bless() -> bool {
    std::env::var_os("KLING_WEBHOOK_BLESS").is_some()
}

#[test]
fn the_readme_kinds_table_is_the_catalog() {
    let readme = std::fs::read_to_string(workspace_file(README)).unwrap();
    let start = readme
        .find(TABLE_START)
        .expect("the README marks its kinds table")
        + TABLE_START.len();
    let end = start
        + readme[start..]
            .find(TABLE_END)
            .expect("the table's end marker");
    let table = markdown_table();
    if readme[start..end] != table && bless() {
        let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
        std::fs::write(workspace_file(README), updated).unwrap();
        return;
    }
    assert_eq!(
        readme[start..end],
        table,
        "the README's kinds table differs from the catalog: run with KLING_WEBHOOK_BLESS=1"
    );
}

#[test]
fn openapi_kinds_json_is_the_catalog() {
    let expected = openapi_kinds();
    let path = workspace_file(OPENAPI_KINDS);
    let stored: Option<Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    if stored.as_ref() != Some(&expected) && bless() {
        let text = serde_json::to_string_pretty(&expected).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        return;
    }
    assert!(
        stored.as_ref() == Some(&expected),
        "{OPENAPI_KINDS} differs from the catalog: run with KLING_WEBHOOK_BLESS=1"
    );
}
