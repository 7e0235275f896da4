//! The served API document is `openapi.json` (written by hand) with `openapi.kinds.json`
//! (generated from the kinds catalog by its tests) merged in. Shared by `build.rs`, which
//! embeds it, and the host tests, which check every exchange against it.

use serde_json::Value;

/// Adds `extra`'s entries to `base`, object by object (`paths`, `components.schemas`, ...).
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, extra) => *base = extra,
    }
}

/// The served document, from the two files in `dir`.
pub fn document(dir: &std::path::Path) -> Value {
    let read = |name: &str| -> Value {
        let path = dir.join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
    };
    let mut document = read("openapi.json");
    merge(&mut document, read("openapi.kinds.json"));
    document
}
