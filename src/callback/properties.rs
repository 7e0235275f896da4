//! Property tests (native only): the ledger through the real receive path, and the
//! parser on arbitrary input.

use proptest::prelude::*;

use super::parse::parse_callback;
use super::receive::{Body, Callback, receive};
use crate::config::{CallbackConfig, Secret};
use crate::kling::catalog::{CATALOG, Family, KindSpec, Output};
use crate::ledger::Verdict;
use crate::signatures::callback_url;
use crate::signatures::standard_webhooks::WebhookHeaders;
use crate::store::memory::MemoryKv;
use crate::store::tasks::TaskStore;
use crate::task::TaskStatus;

const STATUSES: [&str; 4] = ["submitted", "processing", "succeed", "failed"];

/// One delivery: a status, Kling's `updated_at`, and a message that tells versions apart.
#[derive(Debug, Clone)]
struct Event {
    status: usize,
    updated_at: u64,
    tag: u8,
}

fn rank(status: usize) -> u8 {
    [1, 2, 3, 3][status]
}

/// The ledger's order, stated independently of its code: the state is the highest rank
/// delivered; among finals the first final status delivered wins; within the winning
/// status the largest `updated_at` wins, the earliest delivery on a tie.
fn expected(events: &[Event]) -> (TaskStatus, String) {
    let top = events
        .iter()
        .map(|e| rank(e.status))
        .max()
        .expect("at least one event");
    let winning_status = events
        .iter()
        .find(|e| rank(e.status) == top)
        .unwrap()
        .status;
    let mut best: Option<&Event> = None;
    for e in events.iter().filter(|e| e.status == winning_status) {
        if best.is_none_or(|b| e.updated_at > b.updated_at) {
            best = Some(e);
        }
    }
    let best = best.unwrap();
    (
        TaskStatus::from_kling(STATUSES[best.status]).unwrap(),
        format!("v{}", best.tag),
    )
}

/// `body`, delivered for `job-p` on its correctly signed URL through the receive path.
fn receive_for_job_p(kv: &MemoryKv, body: Vec<u8>) -> crate::callback::receive::Received {
    let body = Body::Bytes(body);
    let secret = Secret::new("s");
    let sig = callback_url::sign(&secret, "job-p");
    let callback = Callback {
        external_task_id: Some("job-p"),
        sig: Some(&sig),
        content_type: None,
        webhook: WebhookHeaders::default(),
        body: &body,
    };
    let config = || {
        Ok(CallbackConfig {
            callback_secret: crate::config::KeyRing::single(secret.clone()),
            webhook_secret: None,
        })
    };
    receive(
        &callback,
        &config,
        kv,
        &crate::callback::receive::tests::no_kling(),
        1,
    )
    .expect("a valid delivery is accepted")
}

fn deliver(kv: &MemoryKv, event: &Event) -> bool {
    // A success carries its results: one without them never refreshes a final.
    let result = if STATUSES[event.status] == "succeed" {
        r#","task_result":{"videos":[{"url":"https://cdn.example/v.mp4"}]}"#
    } else {
        ""
    };
    let body = format!(
        r#"{{"task_id":"86","task_status":"{}","task_status_msg":"v{}","updated_at":{}{result}}}"#,
        STATUSES[event.status], event.tag, event.updated_at
    );
    let received = receive_for_job_p(kv, body.into_bytes());
    // News leaves bookkeeping; a repeat (the task is bound by its first delivery, which
    // is always news) leaves none, so nothing is written after the answer.
    let news = matches!(received.verdict, Verdict::Apply(_));
    match received.bookkeeping {
        Some(bookkeeping) if news => bookkeeping.apply(kv).expect("memory store"),
        None if !news => {}
        other => panic!("{:?} with bookkeeping {other:?}", received.verdict),
    }
    news
}

fn event() -> impl Strategy<Value = Event> {
    (0..4usize, 0..4u64, any::<u8>()).prop_map(|(status, updated_at, tag)| Event {
        status,
        updated_at,
        tag,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_stored_state_is_the_maximum_by_the_ledger_s_order(events in prop::collection::vec(event(), 1..12)) {
        let kv = MemoryKv::default();
        let news = events.iter().filter(|e| deliver(&kv, e)).count();
        let record = TaskStore::new(&kv).find("job-p").unwrap().unwrap();
        prop_assert_eq!((record.status, record.status_msg), expected(&events));
        // `deliveries` counts the deliveries that changed the task.
        prop_assert_eq!(record.deliveries, news as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn the_parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_callback(&bytes);
    }

    #[test]
    fn the_parser_never_panics_on_json_shaped_input(
        text in r#"\{("(task_id|task_status|id|status|data|task_info|task_result|videos|outputs|updated_at|external_id)":(\{|\[|"[a-z0-9]{0,20}"|-?[0-9]{1,25}(\.[0-9]+)?|null|true)[,\}\]]{0,3}){0,8}"#
    ) {
        let _ = parse_callback(text.as_bytes());
    }
}

/// Any JSON value: what Kling could put in `task_result` or `outputs`, known keys
/// (with any shape) and unknown ones, numbers beyond 2^53 included.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z0-9:/. ]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                "(videos|images|series_images|audios|voices|elements|url|url_mp3|mp3_url|element_id|type|[a-z_]{1,8})",
                inner,
                0..6
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Delivers `body` for `job-p` and returns the task as the API serves it.
fn stored_after(body: String) -> serde_json::Value {
    let kv = MemoryKv::default();
    let received = receive_for_job_p(&kv, body.into_bytes());
    if let Some(bookkeeping) = received.bookkeeping {
        bookkeeping.apply(&kv).expect("memory store");
    }
    let record = TaskStore::new(&kv).find("job-p").unwrap().expect("stored");
    serde_json::to_value(record).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever Kling sends as a result, in either API family, is stored and served
    /// whole: `kling_result` equals what was sent.
    #[test]
    fn any_result_kling_sends_round_trips_through_parse_and_store(result in json_value(), api_2 in any::<bool>()) {
        let body = if api_2 {
            format!(r#"{{"id":"86","status":"succeeded","outputs":{result}}}"#)
        } else {
            format!(r#"{{"task_id":"86","task_status":"succeed","task_result":{result}}}"#)
        };
        let served = stored_after(body);
        if result.is_null() {
            prop_assert!(served.get("kling_result").is_none());
        } else {
            prop_assert_eq!(&served["kling_result"], &result);
        }
    }
}

/// The typed fields of each output type: (legacy name, API 2.0 name, stored name).
fn output_fields(output: Output) -> &'static [(&'static str, &'static str)] {
    match output {
        Output::Videos => &[
            ("id", "id"),
            ("url", "url"),
            ("watermark_url", "watermark_url"),
            ("duration", "duration"),
        ],
        Output::Images | Output::SeriesImages | Output::ImageViews => &[
            ("url", "url"),
            ("watermark_url", "watermark_url"),
            ("url_1", "url_1"),
            ("url_2", "url_2"),
            ("url_3", "url_3"),
            ("result_type", "result_type"),
            ("group_id", "group_id"),
        ],
        // API 2.0 names them otherwise; both are stored under the legacy names.
        Output::Audios => &[
            ("id", "id"),
            ("url_mp3", "mp3_url"),
            ("url_wav", "wav_url"),
            ("duration_mp3", "mp3_duration"),
            ("duration_wav", "wav_duration"),
        ],
        Output::Voices => &[
            ("voice_id", "voice_id"),
            ("voice_name", "voice_name"),
            ("trial_url", "trial_url"),
            ("owned_by", "owned_by"),
        ],
        Output::Elements => &[
            ("element_name", "element_name"),
            ("element_description", "element_description"),
            ("reference_type", "reference_type"),
            ("status", "status"),
        ],
    }
}

/// One output of type `output` as Kling could send it, in both families' names, and as
/// it must be stored: random values for any subset of its fields, an unknown field, and
/// for an element a numeric `element_id` beyond 2^53.
fn one_output(
    output: Output,
) -> impl Strategy<Value = (serde_json::Value, serde_json::Value, serde_json::Value)> {
    use serde_json::{Map, Value};
    let fields = output_fields(output);
    (
        prop::collection::vec(prop::option::of("[a-z0-9:/._-]{1,12}"), fields.len()),
        prop::option::of(any::<u32>()),
        any::<u64>(),
    )
        .prop_map(move |(values, index, element_id)| {
            let (mut legacy, mut api2, mut stored) = (Map::new(), Map::new(), Map::new());
            for ((legacy_name, api2_name), value) in fields.iter().zip(values) {
                if let Some(value) = value {
                    legacy.insert(legacy_name.to_string(), value.clone().into());
                    api2.insert(api2_name.to_string(), value.clone().into());
                    stored.insert(legacy_name.to_string(), value.into());
                }
            }
            match output {
                Output::Images | Output::SeriesImages | Output::ImageViews => {
                    if let Some(index) = index {
                        for map in [&mut legacy, &mut api2, &mut stored] {
                            map.insert("index".into(), index.into());
                        }
                    }
                }
                Output::Elements => {
                    legacy.insert("element_id".into(), element_id.into());
                    api2.insert("element_id".into(), element_id.into());
                    stored.insert("element_id".into(), element_id.to_string().into());
                }
                _ => {}
            }
            legacy.insert("unknown_field".into(), "kept in kling_result".into());
            api2.insert("type".into(), output.field().trim_end_matches('s').into());
            (
                Value::Object(legacy),
                Value::Object(api2),
                Value::Object(stored),
            )
        })
}

/// A kind of the catalog and a result of it: 0 to 3 outputs of each type it makes (API
/// 2.0: of each type API 2.0 has, as `outputs` may carry any).
#[allow(clippy::type_complexity)]
fn kind_and_result() -> impl Strategy<
    Value = (
        &'static KindSpec,
        Vec<(
            Output,
            Vec<(serde_json::Value, serde_json::Value, serde_json::Value)>,
        )>,
    ),
> {
    (0..CATALOG.len()).prop_flat_map(|i| {
        let kind = &CATALOG[i];
        let types: &[Output] = match kind.family {
            Family::Legacy => kind.outputs,
            Family::Api2 => &[
                Output::Videos,
                Output::Images,
                Output::Audios,
                Output::Voices,
                Output::Elements,
            ],
        };
        let lists: Vec<_> = types
            .iter()
            .map(|&output| {
                prop::collection::vec(one_output(output), 0..3).prop_map(move |list| (output, list))
            })
            .collect();
        (Just(kind), lists)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever outputs a kind's result carries, in its family's shape, every typed field
    /// is stored (under one name whichever family sent it) and Kling's JSON is kept whole.
    #[test]
    fn every_output_field_of_every_kind_is_stored((kind, result) in kind_and_result()) {
        use serde_json::{Value, json};
        let api_2 = kind.family == Family::Api2;
        let sent: Value = if api_2 {
            Value::Array(result.iter().flat_map(|(_, list)| list.iter().map(|o| o.1.clone())).collect())
        } else {
            Value::Object(
                result
                    .iter()
                    .map(|(output, list)| {
                        (output.field().to_string(), Value::Array(list.iter().map(|o| o.0.clone()).collect()))
                    })
                    .collect(),
            )
        };
        let body = if api_2 {
            json!({"id": "86", "status": "succeeded", "outputs": sent})
        } else {
            json!({"task_id": "86", "task_status": "succeed", "task_result": sent})
        };
        let served = stored_after(body.to_string());
        for (output, list) in &result {
            let mut expected: Vec<Value> = list.iter().map(|o| o.2.clone()).collect();
            if api_2 && *output == Output::Images {
                // API 2.0 images name no index: they are numbered as listed.
                for (position, image) in expected.iter_mut().enumerate() {
                    image.as_object_mut().unwrap().entry("index").or_insert(position.into());
                }
            }
            let stored = served.get(output.field()).cloned().unwrap_or(json!([]));
            prop_assert_eq!(stored, Value::Array(expected), "{} {}", kind.name, output.field());
        }
        prop_assert_eq!(&served["kling_result"], &sent);
    }
}
