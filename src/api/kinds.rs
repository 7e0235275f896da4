//! `GET /kinds`: the catalog, so a client can see what it may submit and where it goes.

use serde_json::{Value, json};

use crate::kling::catalog::{CATALOG, Family, Query};

pub fn kinds() -> Value {
    let kinds: Vec<Value> = CATALOG
        .iter()
        .map(|kind| {
            let query = match kind.query {
                Query::ById => format!("GET {}/{{task_id or external_task_id}}", kind.create_path),
                Query::ByTaskIdOnly => format!("GET {}/{{task_id}}", kind.create_path),
                Query::Tasks => "GET /tasks?task_ids= or ?external_task_ids=".to_string(),
            };
            let outputs: Vec<&str> = kind.outputs.iter().map(|o| o.field()).collect();
            json!({
                "name": kind.name,
                "submit": format!("POST /tasks/{}", kind.name),
                "family": match kind.family {
                    Family::Legacy => "legacy",
                    Family::Api2 => "api-2.0",
                },
                "kling": {"create": format!("POST {}", kind.create_path), "query": query},
                "outputs": outputs,
                // The catalog's examples are JSON (a catalog test parses each).
                "example": serde_json::from_str::<Value>(kind.example).unwrap_or(Value::Null),
            })
        })
        .collect();
    json!({ "kinds": kinds })
}
