//! Shapes of the identifiers the component accepts. They end up in URLs and in
//! key-value keys, so they are checked before either is built.

/// `external_task_id`: 1 to 64 characters of `[A-Za-z0-9_-]` (URL-safe, and never
/// contains the `:` that separates parts of our keys).
pub fn is_valid_external_task_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Kling `task_id`: Kling sends long numeric strings; we accept 1 to 128 characters of
/// `[A-Za-z0-9._-]` so that other id styles (UUIDs) still fit, and nothing that could
/// break a key or a URL.
pub fn is_valid_task_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The id a create names: the body's, or the `Idempotency-Key`, or a fresh one. `None`
/// when the body and the key name different ids. Shapes are the caller's to check.
pub fn choose_id(
    in_body: Option<&str>,
    idempotency_key: Option<&str>,
    new_id: &dyn Fn() -> String,
) -> Option<String> {
    match (in_body, idempotency_key) {
        (Some(a), Some(b)) if a != b => None,
        (Some(id), _) | (None, Some(id)) => Some(id.to_string()),
        (None, None) => Some(new_id()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_task_ids() {
        assert!(is_valid_external_task_id("a"));
        assert!(is_valid_external_task_id("Job_2026-11-26"));
        assert!(is_valid_external_task_id(&"x".repeat(64)));
        assert!(!is_valid_external_task_id(""));
        assert!(!is_valid_external_task_id(&"x".repeat(65)));
        for bad in ["a b", "a/b", "a:b", "a.b", "é", "a%2F", "a?"] {
            assert!(!is_valid_external_task_id(bad), "{bad}");
        }
    }

    #[test]
    fn task_ids() {
        assert!(is_valid_task_id("867283741759111202"));
        assert!(is_valid_task_id("0b7e1c9e-2f4a-4d8e-9c1b-1a2b3c4d5e6f"));
        assert!(!is_valid_task_id(""));
        assert!(!is_valid_task_id(&"1".repeat(129)));
        for bad in ["1 2", "1:2", "1/2", "#1"] {
            assert!(!is_valid_task_id(bad), "{bad}");
        }
    }
}
