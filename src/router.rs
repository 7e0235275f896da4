//! Which route a path names. Pure; methods are checked by the dispatcher.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Health,
    /// `POST /callbacks/kling/{external_task_id}` or `POST /callbacks/kling`.
    Callback {
        external_task_id: Option<&'a str>,
    },
    /// `GET /tasks/{id}`: Kling `task_id` or `external_task_id`.
    Task {
        id: &'a str,
    },
}

impl<'a> Route<'a> {
    pub fn parse(path: &'a str) -> Option<Self> {
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        match segments.as_slice() {
            ["health"] => Some(Route::Health),
            ["callbacks", "kling"] => Some(Route::Callback {
                external_task_id: None,
            }),
            ["callbacks", "kling", id] if !id.is_empty() => Some(Route::Callback {
                external_task_id: Some(id),
            }),
            ["tasks", id] if !id.is_empty() => Some(Route::Task { id }),
            _ => None,
        }
    }

    /// The one method each route answers.
    pub fn method(&self) -> &'static str {
        match self {
            Route::Health | Route::Task { .. } => "GET",
            Route::Callback { .. } => "POST",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/health"), Some(Route::Health));
        assert_eq!(
            Route::parse("/callbacks/kling"),
            Some(Route::Callback {
                external_task_id: None
            })
        );
        assert_eq!(
            Route::parse("/callbacks/kling/job-1"),
            Some(Route::Callback {
                external_task_id: Some("job-1")
            })
        );
        assert_eq!(Route::parse("/tasks/86"), Some(Route::Task { id: "86" }));
        for unknown in [
            "",
            "/",
            "/tasks",
            "/tasks/",
            "/tasks/a/b",
            "/callbacks/kling/",
            "/callbacks/kling/a/b",
            "/healthz",
            "health",
        ] {
            assert_eq!(Route::parse(unknown), None, "{unknown}");
        }
    }
}
