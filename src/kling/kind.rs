//! The kinds of task the component submits, and their Kling endpoints.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    Text2Video,
    Image2Video,
    MultiImage2Video,
    VideoExtend,
    LipSync,
    Effects,
    ImageGeneration,
}

impl TaskKind {
    pub const ALL: [TaskKind; 7] = [
        TaskKind::Text2Video,
        TaskKind::Image2Video,
        TaskKind::MultiImage2Video,
        TaskKind::VideoExtend,
        TaskKind::LipSync,
        TaskKind::Effects,
        TaskKind::ImageGeneration,
    ];

    /// The name used in `POST /tasks/{kind}` and in task records.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Text2Video => "text2video",
            TaskKind::Image2Video => "image2video",
            TaskKind::MultiImage2Video => "multi-image2video",
            TaskKind::VideoExtend => "video-extend",
            TaskKind::LipSync => "lip-sync",
            TaskKind::Effects => "effects",
            TaskKind::ImageGeneration => "image-generation",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Kling's create endpoint; `{path}/{id}` queries a task by `task_id` or `external_task_id`.
    pub fn path(self) -> &'static str {
        match self {
            TaskKind::Text2Video => "/v1/videos/text2video",
            TaskKind::Image2Video => "/v1/videos/image2video",
            TaskKind::MultiImage2Video => "/v1/videos/multi-image2video",
            TaskKind::VideoExtend => "/v1/videos/video-extend",
            TaskKind::LipSync => "/v1/videos/lip-sync",
            TaskKind::Effects => "/v1/videos/effects",
            TaskKind::ImageGeneration => "/v1/images/generations",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_none() {
        for kind in TaskKind::ALL {
            assert_eq!(TaskKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(TaskKind::from_name("omni-video"), None);
        assert_eq!(TaskKind::ImageGeneration.path(), "/v1/images/generations");
    }
}
