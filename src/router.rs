//! Which route a path names. Pure; methods are checked by the dispatcher.

use crate::kling::catalog::{Rule, TaskKind};

/// Kling's synchronous calls, passed through (`POST /kling/{name}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlingCall {
    /// `/v1/videos/identify-face`: the `session_id` of advanced-lip-sync and multi-elements.
    IdentifyFace,
    /// `/v1/audio/tts`.
    Tts,
}

impl KlingCall {
    /// Kling's path.
    pub fn path(self) -> &'static str {
        match self {
            KlingCall::IdentifyFace => "/v1/videos/identify-face",
            KlingCall::Tts => "/v1/audio/tts",
        }
    }

    /// What Kling would obviously refuse (`../shared/kling-api.md`).
    pub fn rules(self) -> &'static [Rule] {
        match self {
            KlingCall::IdentifyFace => &[
                Rule::ExactlyOne("video_id", "video_url"),
                Rule::StringValued("video_id"),
                Rule::StringValued("video_url"),
            ],
            KlingCall::Tts => &[
                Rule::Required("text"),
                Rule::Text("text", 1000),
                Rule::Required("voice_id"),
                Rule::StringValued("voice_id"),
                Rule::Required("voice_language"),
                Rule::StringValued("voice_language"),
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Health,
    /// `GET /openapi.json`: this API, described in OpenAPI 3.1.
    OpenApi,
    /// `POST /callbacks/kling/{external_task_id}` or `POST /callbacks/kling`.
    Callback {
        external_task_id: Option<&'a str>,
    },
    /// `POST /tasks/{kind}`: submit a task of a known kind (an API 2.0 kind's name is two
    /// segments, `text-to-video/kling-3.0`).
    Submit {
        kind: TaskKind,
    },
    /// `GET /tasks/{id}` (Kling `task_id` or `external_task_id`); `POST` answers 405
    /// `unknown_kind`, as the segment is not a kind.
    Task {
        id: &'a str,
    },
    /// `GET /tasks?status=&limit=&cursor=`: recent tasks, newest first.
    Tasks,
    /// `POST /tasks/reconcile?limit=`: ask Kling about tasks whose callbacks never came.
    Reconcile,
    /// `POST /pipelines`: start a pipeline.
    Pipelines,
    /// `GET /pipelines/{id}`.
    Pipeline {
        id: &'a str,
    },
    /// `GET /kinds`: the catalog.
    Kinds,
    /// `POST /kling/identify-face`, `POST /kling/tts`.
    Kling(KlingCall),
}

impl<'a> Route<'a> {
    pub fn parse(path: &'a str) -> Option<Self> {
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        match segments.as_slice() {
            ["health"] => Some(Route::Health),
            ["openapi.json"] => Some(Route::OpenApi),
            ["callbacks", "kling"] => Some(Route::Callback {
                external_task_id: None,
            }),
            ["callbacks", "kling", id] if !id.is_empty() => Some(Route::Callback {
                external_task_id: Some(id),
            }),
            ["tasks"] => Some(Route::Tasks),
            ["tasks", "reconcile"] => Some(Route::Reconcile),
            ["tasks", segment] => match TaskKind::from_name(segment) {
                Some(kind) => Some(Route::Submit { kind }),
                None if !segment.is_empty() => Some(Route::Task { id: segment }),
                None => None,
            },
            ["tasks", family, model] => TaskKind::all()
                .find(|kind| kind.name().split_once('/') == Some((family, model)))
                .map(|kind| Route::Submit { kind }),
            ["pipelines"] => Some(Route::Pipelines),
            ["pipelines", id] if !id.is_empty() => Some(Route::Pipeline { id }),
            ["kinds"] => Some(Route::Kinds),
            ["kling", "identify-face"] => Some(Route::Kling(KlingCall::IdentifyFace)),
            ["kling", "tts"] => Some(Route::Kling(KlingCall::Tts)),
            _ => None,
        }
    }

    /// The methods a route answers, as an `Allow` header lists them.
    pub fn allow(&self) -> &'static str {
        match self {
            Route::Health
            | Route::OpenApi
            | Route::Tasks
            | Route::Task { .. }
            | Route::Pipeline { .. }
            | Route::Kinds => "GET",
            Route::Submit { .. }
            | Route::Callback { .. }
            | Route::Reconcile
            | Route::Pipelines
            | Route::Kling(_) => "POST",
        }
    }

    /// A `/tasks/{segment}` that is a route of its own, so no task id may be it.
    /// Derived from [`Route::parse`], so a route added under `/tasks/` is reserved too.
    pub fn is_reserved_task_segment(segment: &str) -> bool {
        !matches!(
            Route::parse(&format!("/tasks/{segment}")),
            Some(Route::Task { .. })
        )
    }

    pub fn allows(&self, method: &str) -> bool {
        self.allow().split(", ").any(|m| m == method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/health"), Some(Route::Health));
        assert_eq!(Route::parse("/openapi.json"), Some(Route::OpenApi));
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
        assert_eq!(
            Route::parse("/tasks/video-extend"),
            Some(Route::Submit {
                kind: TaskKind::from_name("video-extend").unwrap()
            })
        );
        assert_eq!(
            Route::parse("/tasks/text-to-video/kling-3.0-turbo"),
            Some(Route::Submit {
                kind: TaskKind::from_name("text-to-video/kling-3.0-turbo").unwrap()
            })
        );
        assert!(
            !Route::Submit {
                kind: TaskKind::from_name("effects").unwrap()
            }
            .allows("GET")
        );
        assert_eq!(Route::parse("/kinds"), Some(Route::Kinds));
        assert_eq!(
            Route::parse("/kling/tts"),
            Some(Route::Kling(KlingCall::Tts))
        );
        assert!(Route::is_reserved_task_segment("image-generation"));
        assert!(Route::is_reserved_task_segment("reconcile"));
        assert!(!Route::is_reserved_task_segment("86"));
        assert!(!Route::Health.allows("POST"));
        assert_eq!(Route::parse("/tasks"), Some(Route::Tasks));
        assert_eq!(Route::parse("/tasks/reconcile"), Some(Route::Reconcile));
        assert_eq!(Route::parse("/pipelines"), Some(Route::Pipelines));
        assert_eq!(
            Route::parse("/pipelines/promo-7"),
            Some(Route::Pipeline { id: "promo-7" })
        );
        assert!(Route::Pipelines.allows("POST") && !Route::Pipelines.allows("GET"));
        for unknown in [
            "",
            "/",
            "/tasks/",
            "/tasks/a/b",
            "/tasks/text-to-video/kling-9",
            "/tasks/text-to-video/kling-3.0/x",
            "/kling/generations",
            "/callbacks/kling/",
            "/callbacks/kling/a/b",
            "/healthz",
            "/pipelines/",
            "/pipelines/a/b",
            "health",
        ] {
            assert_eq!(Route::parse(unknown), None, "{unknown}");
        }
    }
}
