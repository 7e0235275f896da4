//! Every asynchronous Kling task kind this component submits, as data: its Kling paths,
//! API family, what a request must hold, and what its result carries. Validation,
//! submit, reconcile, pipelines, `GET /kinds`, the WIT interface and the test stand-in all
//! read this table; adding a kind is one entry here (and a row in the tests).
//!
//! Sources: `../shared/kling-api.md`, "The whole task surface (late 2026)". Rules are the
//! ones Kling would obviously refuse; anything else is passed to Kling unchanged.

/// Which of Kling's two API families a kind belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `/v1/...`, `model_name` in the body, top-level `callback_url`/`external_task_id`,
    /// JWT or API key, results in `task_result`, status `succeed`.
    Legacy,
    /// "API 2.0": the model in the path, `options.callback_url`/`options.external_task_id`,
    /// API key only, queried through `GET /tasks?task_ids=`, results in `outputs[]`.
    Api2,
}

/// How Kling looks up one task of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `GET {create path}/{task_id or external_task_id}`.
    ById,
    /// `GET {create path}/{task_id}` only; an `external_task_id` is found by listing
    /// `GET {create path}?pageNum=1&pageSize=500`.
    ByTaskIdOnly,
    /// `GET /tasks?task_ids=` or `GET /tasks?external_task_ids=` (API 2.0).
    Tasks,
}

/// The kinds of output a task's result carries (the task record's lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Videos,
    Images,
    /// ai-multi-shot's: three views of one subject per image (`url_1`..`url_3`, no `url`),
    /// stored in `images` but no image to hand on by default.
    ImageViews,
    SeriesImages,
    Audios,
    Voices,
    Elements,
}

impl Output {
    /// The task record's field, and the API 2.0 `outputs[].type`.
    pub fn field(self) -> &'static str {
        match self {
            Output::Videos => "videos",
            Output::Images | Output::ImageViews => "images",
            Output::SeriesImages => "series_images",
            Output::Audios => "audios",
            Output::Voices => "voices",
            Output::Elements => "elements",
        }
    }
}

/// One check on a create request. Fields are dot paths into the JSON body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// A non-blank string, a non-empty list or an object.
    Required(&'static str),
    /// [`Rule::Required`] unless the boolean field is `true` (multi-shot takes its
    /// prompts from `multi_prompt`).
    RequiredUnless(&'static str, &'static str),
    /// Required when the boolean field is `true` (multi-shot's `multi_prompt`).
    RequiredIf(&'static str, &'static str),
    /// Not taken by this kind (avatar has no `model_name`): Kling refuses it.
    Absent(&'static str),
    /// At least one of these is given.
    AnyOf(&'static [&'static str]),
    /// Exactly one of the two is given.
    ExactlyOne(&'static str, &'static str),
    /// Not both.
    NotBoth(&'static str, &'static str),
    /// If present: a string of at most this many characters.
    Text(&'static str, usize),
    /// If present: one of these strings.
    OneOf(&'static str, &'static [&'static str]),
    /// If present: a JSON number within the (whole-number) bounds.
    Number(&'static str, i64, i64),
    /// If present: an integer within the bounds.
    Integer(&'static str, i64, i64),
    /// If present: a string (Kling's legacy `duration` is `"5"`, not `5`).
    StringValued(&'static str),
    /// If present: a JSON number.
    NumberValued(&'static str),
    /// If present: an object.
    Object(&'static str),
    /// If present: a list of this many entries (`usize::MAX`: no upper bound).
    List(&'static str, usize, usize),
    /// If present: a list of this many objects, each with a non-blank string `item`.
    ListOf(&'static str, usize, usize, &'static str),
    /// If present: an image as a URL or raw base64, never a `data:` URI.
    Image(&'static str),
    /// If present: a list of this many such images.
    ImageList(&'static str, usize, usize),
    /// If present: each entry's `item` (see [`Rule::ListOf`]) holds at most this many
    /// characters.
    ListTexts(&'static str, &'static str, usize),
    /// If the first is given, the second must be this string.
    Needs(&'static str, &'static str, &'static str),
}

/// A kind of Kling task.
#[derive(Debug, PartialEq)]
pub struct KindSpec {
    /// The name in `POST /tasks/{name}` and in task records. An API 2.0 kind is named by
    /// its Kling path, model included (`text-to-video/kling-3.0`).
    pub name: &'static str,
    pub family: Family,
    /// Kling's create path.
    pub create_path: &'static str,
    pub query: Query,
    pub rules: &'static [&'static [Rule]],
    /// What its result carries.
    pub outputs: &'static [Output],
    /// The smallest request Kling accepts, as JSON (docs, `GET /kinds`, tests).
    pub example: &'static str,
    /// Request fields a pipeline step of this kind fills, by default, from the previous
    /// step when that step's kind produces the output: (field, output, source path).
    pub takes: &'static [(&'static str, Output, &'static str)],
}

const PROMPTS: &[Rule] = &[
    Rule::Text("prompt", 2500),
    Rule::Text("negative_prompt", 2500),
    Rule::StringValued("duration"),
];
const MODES: &[Rule] = &[Rule::OneOf("mode", &["std", "pro", "4k"])];
/// Kling's documented ranges for text2video (kling-api.md); image2video takes the same
/// `cfg_scale` and `sound`. Model names are not checked: Kling adds models faster than a
/// deployed component is upgraded, and answers 1201 for one it does not know.
const SCALE_AND_SOUND: &[Rule] = &[
    Rule::Number("cfg_scale", 0, 1),
    Rule::OneOf("sound", &["on", "off"]),
];
const API2: &[Rule] = &[
    Rule::AnyOf(&["prompt", "contents"]),
    Rule::Text("prompt", 3072),
    Rule::List("contents", 1, usize::MAX),
    Rule::Object("settings"),
    Rule::Integer("settings.duration", 3, 15),
    Rule::OneOf("settings.resolution", &["720p", "1080p", "4k"]),
    Rule::OneOf("settings.audio", &["native", "original", "off"]),
    Rule::Object("options"),
];
const VIDEO_IN: (&str, Output, &str) = ("video_id", Output::Videos, "videos.0.id");

const fn legacy(
    name: &'static str,
    create_path: &'static str,
    rules: &'static [&'static [Rule]],
    outputs: &'static [Output],
    example: &'static str,
) -> KindSpec {
    KindSpec {
        name,
        family: Family::Legacy,
        create_path,
        query: Query::ById,
        rules,
        outputs,
        example,
        takes: &[],
    }
}

const fn api2(name: &'static str, create_path: &'static str, example: &'static str) -> KindSpec {
    KindSpec {
        name,
        family: Family::Api2,
        create_path,
        query: Query::Tasks,
        rules: &[API2],
        outputs: &[Output::Videos],
        example,
        takes: &[],
    }
}

const VIDEOS: &[Output] = &[Output::Videos];
const IMAGES: &[Output] = &[Output::Images];

/// Every kind, in the order `GET /kinds` lists them.
pub static CATALOG: &[KindSpec] = &[
    legacy(
        "text2video",
        "/v1/videos/text2video",
        &[
            PROMPTS,
            MODES,
            SCALE_AND_SOUND,
            &[
                Rule::RequiredUnless("prompt", "multi_shot"),
                Rule::OneOf("aspect_ratio", &["16:9", "9:16", "1:1"]),
            ],
        ],
        VIDEOS,
        r#"{"prompt":"a cat on a skateboard"}"#,
    ),
    KindSpec {
        takes: &[("image", Output::Images, "images.0.url")],
        ..legacy(
            "image2video",
            "/v1/videos/image2video",
            &[
                PROMPTS,
                MODES,
                SCALE_AND_SOUND,
                &[
                    Rule::AnyOf(&["image", "image_tail"]),
                    Rule::Image("image"),
                    Rule::Image("image_tail"),
                ],
            ],
            VIDEOS,
            r#"{"image":"https://example.com/cat.png"}"#,
        )
    },
    legacy(
        "multi-image2video",
        "/v1/videos/multi-image2video",
        &[
            PROMPTS,
            MODES,
            &[
                Rule::Required("image_list"),
                Rule::ListOf("image_list", 1, 4, "image"),
                Rule::Required("prompt"),
            ],
        ],
        VIDEOS,
        r#"{"image_list":[{"image":"https://example.com/a.png"}],"prompt":"they dance"}"#,
    ),
    KindSpec {
        takes: &[VIDEO_IN],
        ..legacy(
            "video-extend",
            "/v1/videos/video-extend",
            &[PROMPTS, &[Rule::Required("video_id")]],
            VIDEOS,
            r#"{"video_id":"867283741759111300"}"#,
        )
    },
    KindSpec {
        takes: &[("input.video_id", Output::Videos, "videos.0.id")],
        ..legacy(
            "lip-sync",
            "/v1/videos/lip-sync",
            &[&[
                Rule::Required("input"),
                Rule::Object("input"),
                Rule::ExactlyOne("input.video_id", "input.video_url"),
                Rule::Required("input.mode"),
                Rule::OneOf("input.mode", &["text2video", "audio2video"]),
            ]],
            VIDEOS,
            r#"{"input":{"video_id":"867283741759111300","mode":"text2video","text":"hello"}}"#,
        )
    },
    legacy(
        "effects",
        "/v1/videos/effects",
        &[&[
            Rule::Required("effect_scene"),
            Rule::Required("input"),
            Rule::Object("input"),
            // A scene takes one image or two (kling-api.md).
            Rule::ExactlyOne("input.image", "input.images"),
            Rule::Image("input.image"),
            Rule::ImageList("input.images", 2, 2),
        ]],
        VIDEOS,
        r#"{"effect_scene":"hug","input":{"images":["https://example.com/a.png","https://example.com/b.png"]}}"#,
    ),
    legacy(
        "image-generation",
        "/v1/images/generations",
        &[PROMPTS, &[Rule::Required("prompt"), Rule::Image("image")]],
        IMAGES,
        r#"{"prompt":"a red fox"}"#,
    ),
    legacy(
        "omni-video",
        "/v1/videos/omni-video",
        &[
            PROMPTS,
            MODES,
            &[
                Rule::RequiredUnless("prompt", "multi_shot"),
                Rule::RequiredIf("multi_prompt", "multi_shot"),
                Rule::OneOf("sound", &["on", "off"]),
                Rule::ListOf("multi_prompt", 1, 6, "prompt"),
                Rule::ListTexts("multi_prompt", "prompt", 512),
                Rule::List("voice_list", 1, 2),
                Rule::NotBoth("voice_list", "element_list"),
                Rule::Needs("voice_list", "sound", "on"),
                // "3".."15" (kling-video-o1: to "10", which Kling checks).
                Rule::OneOf(
                    "duration",
                    &[
                        "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
                    ],
                ),
            ],
        ],
        VIDEOS,
        r#"{"model_name":"kling-v3-omni","prompt":"a lighthouse at dusk","duration":"5"}"#,
    ),
    KindSpec {
        takes: &[("sound_file", Output::Audios, "audios.0.url_mp3")],
        ..legacy(
            "avatar",
            "/v1/videos/avatar/image2video",
            &[&[
                Rule::Required("image"),
                Rule::Image("image"),
                Rule::ExactlyOne("audio_id", "sound_file"),
                Rule::Text("prompt", 2500),
                Rule::Absent("model_name"),
            ]],
            VIDEOS,
            r#"{"image":"https://example.com/face.png","sound_file":"https://example.com/hello.mp3"}"#,
        )
    },
    legacy(
        "motion-control",
        "/v1/videos/motion-control",
        &[
            PROMPTS,
            MODES,
            &[
                Rule::Required("image_url"),
                Rule::Required("video_url"),
                Rule::Required("character_orientation"),
                Rule::Required("mode"),
            ],
        ],
        VIDEOS,
        r#"{"image_url":"https://example.com/me.png","video_url":"https://example.com/dance.mp4","character_orientation":"image","mode":"std"}"#,
    ),
    KindSpec {
        query: Query::ByTaskIdOnly,
        ..legacy(
            "advanced-lip-sync",
            "/v1/videos/advanced-lip-sync",
            &[&[
                Rule::Required("session_id"),
                Rule::Required("face_choose"),
                Rule::List("face_choose", 1, 1),
            ]],
            VIDEOS,
            r#"{"session_id":"s-1","face_choose":[{"face_id":"0","sound_file":"https://example.com/hello.mp3"}]}"#,
        )
    },
    legacy(
        "multi-elements",
        "/v1/videos/multi-elements",
        &[
            PROMPTS,
            &[
                Rule::Required("session_id"),
                Rule::Required("edit_mode"),
                Rule::OneOf("edit_mode", &["addition", "swap", "removal"]),
                Rule::Required("prompt"),
            ],
        ],
        VIDEOS,
        r#"{"session_id":"s-1","edit_mode":"removal","prompt":"remove the hat"}"#,
    ),
    legacy(
        "text-to-audio",
        "/v1/audio/text-to-audio",
        &[&[
            Rule::Required("prompt"),
            Rule::Text("prompt", 200),
            Rule::Required("duration"),
            Rule::Number("duration", 3, 10),
        ]],
        &[Output::Audios],
        r#"{"prompt":"rain on a tin roof","duration":5}"#,
    ),
    KindSpec {
        takes: &[VIDEO_IN],
        ..legacy(
            "video-to-audio",
            "/v1/audio/video-to-audio",
            &[&[Rule::ExactlyOne("video_id", "video_url")]],
            &[Output::Videos, Output::Audios],
            r#"{"video_id":"867283741759111300"}"#,
        )
    },
    legacy(
        "omni-image",
        "/v1/images/omni-image",
        &[&[
            Rule::Required("prompt"),
            Rule::Text("prompt", 2500),
            Rule::OneOf("result_type", &["single", "series"]),
            Rule::Integer("n", 1, 9),
        ]],
        &[Output::Images, Output::SeriesImages],
        r#"{"prompt":"a storyboard of a heist","result_type":"series"}"#,
    ),
    legacy(
        "multi-image2image",
        "/v1/images/multi-image2image",
        &[&[
            Rule::Required("subject_image_list"),
            Rule::ListOf("subject_image_list", 1, 4, "subject_image"),
            Rule::Text("prompt", 2500),
        ]],
        IMAGES,
        r#"{"subject_image_list":[{"subject_image":"https://example.com/a.png"}]}"#,
    ),
    legacy(
        "expand",
        "/v1/images/editing/expand",
        &[&[
            Rule::Required("image"),
            Rule::Image("image"),
            Rule::Required("up_expansion_ratio"),
            Rule::Required("down_expansion_ratio"),
            Rule::Required("left_expansion_ratio"),
            Rule::Required("right_expansion_ratio"),
            Rule::NumberValued("up_expansion_ratio"),
            Rule::NumberValued("down_expansion_ratio"),
            Rule::NumberValued("left_expansion_ratio"),
            Rule::NumberValued("right_expansion_ratio"),
        ]],
        IMAGES,
        r#"{"image":"https://example.com/a.png","up_expansion_ratio":0.1,"down_expansion_ratio":0.1,"left_expansion_ratio":0.2,"right_expansion_ratio":0.2}"#,
    ),
    KindSpec {
        query: Query::ByTaskIdOnly,
        ..legacy(
            "ai-multi-shot",
            "/v1/general/ai-multi-shot",
            &[&[
                Rule::Required("element_frontal_image"),
                Rule::Image("element_frontal_image"),
            ]],
            &[Output::ImageViews],
            r#"{"element_frontal_image":"https://example.com/front.png"}"#,
        )
    },
    legacy(
        "custom-voices",
        "/v1/general/custom-voices",
        &[&[
            Rule::Required("voice_name"),
            Rule::Text("voice_name", 20),
            Rule::AnyOf(&["voice_url", "video_id"]),
        ]],
        &[Output::Voices],
        r#"{"voice_name":"narrator","voice_url":"https://example.com/voice.mp3"}"#,
    ),
    legacy(
        "advanced-custom-elements",
        "/v1/general/advanced-custom-elements",
        &[&[
            Rule::Required("element_name"),
            Rule::Required("element_description"),
            Rule::Required("reference_type"),
        ]],
        &[Output::Elements],
        r#"{"element_name":"mascot","element_description":"a blue fox","reference_type":"image_refer","element_image_list":{"frontal_image":"https://example.com/f.png"}}"#,
    ),
    api2(
        "text-to-video/kling-3.0",
        "/text-to-video/kling-3.0",
        r#"{"prompt":"a paper boat in the rain","settings":{"duration":5,"resolution":"1080p"}}"#,
    ),
    api2(
        "text-to-video/kling-3.0-turbo",
        "/text-to-video/kling-3.0-turbo",
        r#"{"prompt":"a paper boat in the rain"}"#,
    ),
    api2(
        "text-to-video/kling-2.6",
        "/text-to-video/kling-2.6",
        r#"{"prompt":"a paper boat in the rain"}"#,
    ),
    api2(
        "image-to-video/kling-3.0",
        "/image-to-video/kling-3.0",
        r#"{"contents":[{"type":"image","url":"https://example.com/cat.png"}]}"#,
    ),
    api2(
        "image-to-video/kling-3.0-turbo",
        "/image-to-video/kling-3.0-turbo",
        r#"{"contents":[{"type":"image","url":"https://example.com/cat.png"}]}"#,
    ),
    api2(
        "omni-video/kling-3.0-omni",
        "/omni-video/kling-3.0-omni",
        r#"{"prompt":"a lighthouse at dusk"}"#,
    ),
    api2(
        "motion-control/kling-3.0",
        "/motion-control/kling-3.0",
        r#"{"contents":[{"type":"image","url":"https://example.com/me.png"},{"type":"video","url":"https://example.com/dance.mp4"}]}"#,
    ),
    api2(
        "motion-control/kling-2.6",
        "/motion-control/kling-2.6",
        r#"{"contents":[{"type":"image","url":"https://example.com/me.png"},{"type":"video","url":"https://example.com/dance.mp4"}]}"#,
    ),
];

/// A kind of the [`CATALOG`]: cheap to copy, compared by entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskKind(u8);

impl std::fmt::Debug for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TaskKind {
    pub fn all() -> impl Iterator<Item = TaskKind> {
        (0..CATALOG.len()).map(|i| TaskKind(i as u8))
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::all().find(|kind| kind.name() == name)
    }

    pub fn spec(self) -> &'static KindSpec {
        &CATALOG[usize::from(self.0)]
    }

    /// The name used in `POST /tasks/{kind}` and in task records.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn family(self) -> Family {
        self.spec().family
    }

    /// Kling's create endpoint.
    pub fn path(self) -> &'static str {
        self.spec().create_path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_round_trip_and_unknown_names_are_none() {
        for kind in TaskKind::all() {
            assert_eq!(TaskKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(TaskKind::all().count(), CATALOG.len());
        assert!(CATALOG.len() < 256, "TaskKind indexes with a u8");
        assert_eq!(TaskKind::from_name("hologram"), None);
        let image = TaskKind::from_name("image-generation").unwrap();
        assert_eq!(image.path(), "/v1/images/generations");
    }

    /// The contract (`../shared/kling-api.md`, "The whole task surface"), written out
    /// again by hand: the stand-in and the docs read the catalog, so this is what holds
    /// the catalog itself to Kling's paths, lookups and result shapes.
    #[test]
    fn the_catalog_is_the_contract_kind_for_kind() {
        use Output::*;
        use Query::*;
        let contract: [(&str, &str, Query, &[Output]); 28] = [
            ("text2video", "/v1/videos/text2video", ById, &[Videos]),
            ("image2video", "/v1/videos/image2video", ById, &[Videos]),
            (
                "multi-image2video",
                "/v1/videos/multi-image2video",
                ById,
                &[Videos],
            ),
            ("video-extend", "/v1/videos/video-extend", ById, &[Videos]),
            ("lip-sync", "/v1/videos/lip-sync", ById, &[Videos]),
            ("effects", "/v1/videos/effects", ById, &[Videos]),
            (
                "image-generation",
                "/v1/images/generations",
                ById,
                &[Images],
            ),
            ("omni-video", "/v1/videos/omni-video", ById, &[Videos]),
            ("avatar", "/v1/videos/avatar/image2video", ById, &[Videos]),
            (
                "motion-control",
                "/v1/videos/motion-control",
                ById,
                &[Videos],
            ),
            (
                "advanced-lip-sync",
                "/v1/videos/advanced-lip-sync",
                ByTaskIdOnly,
                &[Videos],
            ),
            (
                "multi-elements",
                "/v1/videos/multi-elements",
                ById,
                &[Videos],
            ),
            ("text-to-audio", "/v1/audio/text-to-audio", ById, &[Audios]),
            (
                "video-to-audio",
                "/v1/audio/video-to-audio",
                ById,
                &[Videos, Audios],
            ),
            (
                "omni-image",
                "/v1/images/omni-image",
                ById,
                &[Images, SeriesImages],
            ),
            (
                "multi-image2image",
                "/v1/images/multi-image2image",
                ById,
                &[Images],
            ),
            ("expand", "/v1/images/editing/expand", ById, &[Images]),
            (
                "ai-multi-shot",
                "/v1/general/ai-multi-shot",
                ByTaskIdOnly,
                &[ImageViews],
            ),
            (
                "custom-voices",
                "/v1/general/custom-voices",
                ById,
                &[Voices],
            ),
            (
                "advanced-custom-elements",
                "/v1/general/advanced-custom-elements",
                ById,
                &[Elements],
            ),
            (
                "text-to-video/kling-3.0",
                "/text-to-video/kling-3.0",
                Tasks,
                &[Videos],
            ),
            (
                "text-to-video/kling-3.0-turbo",
                "/text-to-video/kling-3.0-turbo",
                Tasks,
                &[Videos],
            ),
            (
                "text-to-video/kling-2.6",
                "/text-to-video/kling-2.6",
                Tasks,
                &[Videos],
            ),
            (
                "image-to-video/kling-3.0",
                "/image-to-video/kling-3.0",
                Tasks,
                &[Videos],
            ),
            (
                "image-to-video/kling-3.0-turbo",
                "/image-to-video/kling-3.0-turbo",
                Tasks,
                &[Videos],
            ),
            (
                "omni-video/kling-3.0-omni",
                "/omni-video/kling-3.0-omni",
                Tasks,
                &[Videos],
            ),
            (
                "motion-control/kling-3.0",
                "/motion-control/kling-3.0",
                Tasks,
                &[Videos],
            ),
            (
                "motion-control/kling-2.6",
                "/motion-control/kling-2.6",
                Tasks,
                &[Videos],
            ),
        ];
        assert_eq!(CATALOG.len(), contract.len(), "a kind not in the contract");
        for (kind, (name, path, query, outputs)) in CATALOG.iter().zip(contract) {
            assert_eq!(
                (kind.name, kind.create_path, kind.query, kind.outputs),
                (name, path, query, outputs),
            );
            let family = if path.starts_with("/v1/") {
                Family::Legacy
            } else {
                Family::Api2
            };
            assert_eq!(kind.family, family, "{name}");
        }
    }

    #[test]
    fn names_and_paths_are_unique_and_api_2_kinds_are_named_by_their_path() {
        for (i, kind) in CATALOG.iter().enumerate() {
            assert!(
                CATALOG[..i]
                    .iter()
                    .all(|k| k.name != kind.name && k.create_path != kind.create_path),
                "{} is listed twice",
                kind.name
            );
            // API 2.0 kinds are named by their path; legacy names are one path segment.
            match kind.family {
                Family::Api2 => assert_eq!(Some(kind.name), kind.create_path.strip_prefix('/')),
                Family::Legacy => {
                    assert!(!kind.name.contains('/') && kind.create_path.starts_with("/v1/"))
                }
            }
        }
    }
}
