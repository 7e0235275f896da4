//! Every kind of the catalog, end to end: submitted through the component with the
//! example `GET /kinds` gives, called back by the stand-in in the kind's own result shape
//! (and API family), and stored with every output of that kind. One test per kind, so a
//! failure names it; a test keeps this list equal to the catalog.

use std::time::{Duration, Instant};

use kling_standin::{CreateBehaviour, Script};
use serde_json::{Value, json};

use crate::support::components::kling_app;
use crate::support::deployment::{Auth, deploy_with, submit_request};
use crate::support::kv::Op;
use crate::support::requests::{authorized, authorized_json, get_task, request};
use crate::support::spin_host::SpinApp;

/// Every output list a record can carry.
const OUTPUTS: [&str; 6] = [
    "videos",
    "images",
    "series_images",
    "audios",
    "voices",
    "elements",
];

/// `GET /kinds`, without a token.
async fn kinds(app: &SpinApp) -> Vec<Value> {
    let reply = app
        .send(request("GET", "/kinds").body(bytes::Bytes::new()).unwrap())
        .await;
    reply.expect_json(200)["kinds"].as_array().unwrap().clone()
}

/// Submits `name`'s example, waits for the stand-in's final callback, and checks the
/// stored record against what the stand-in sent.
async fn submitted_called_back_and_stored(name: &str) {
    let d = deploy_with(Auth::ApiKey, None, &[]).await;
    let kinds = kinds(&d.app).await;
    let kind = kinds
        .iter()
        .find(|k| k["name"] == name)
        .unwrap_or_else(|| panic!("GET /kinds lists {name}"));
    let api2 = kind["family"] == "api-2.0";
    let route = format!("/tasks/{name}");
    assert_eq!(kind["submit"], format!("POST {route}"));

    let reply = d
        .app
        .send(submit_request(
            name,
            kind["example"].clone(),
            Some("job-kind"),
        ))
        .await;
    let record = reply.expect_json(202);
    assert_eq!(record["kind"], name);
    let task_id = record["task_id"].as_str().unwrap().to_string();

    // What reached Kling: its own path, the example unchanged but for our two fields,
    // which sit in `options` for API 2.0.
    let at_kling = d.standin.tasks_with_external_id("job-kind");
    assert_eq!(at_kling.len(), 1);
    let sent = &at_kling[0].request;
    assert_eq!(
        format!("POST {}", at_kling[0].kind.create_path),
        kind["kling"]["create"]
    );
    let own = if api2 { &sent["options"] } else { sent };
    assert_eq!(own["external_task_id"], "job-kind");
    assert!(
        own["callback_url"]
            .as_str()
            .unwrap()
            .contains("/callbacks/kling/job-kind?sig="),
        "{sent}"
    );
    for (field, value) in kind["example"].as_object().unwrap() {
        if field != "options" {
            assert_eq!(&sent[field], value, "{name}.{field}");
        }
    }
    if api2 {
        assert!(sent.get("callback_url").is_none(), "{sent}");
    }

    let done = d.wait_for("job-kind", "succeed").await;
    assert_eq!(
        (done["task_id"].as_str(), done["source"].as_str()),
        (Some(task_id.as_str()), Some("callback"))
    );
    let id = &task_id;
    let cdn = |suffix: &str| format!("https://cdn.standin.example/{id}{suffix}");
    let produced: Vec<&str> = kind["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    for output in OUTPUTS {
        let stored = &done[output];
        if !produced.contains(&output) {
            assert!(
                stored.as_array().is_none_or(|list| list.is_empty()),
                "{name} makes no {output}: {done}"
            );
            continue;
        }
        let first = &stored[0];
        match output {
            "videos" => {
                assert_eq!(first["id"], format!("{id}9"));
                assert_eq!(first["url"], cdn(".mp4"));
                assert_eq!(first["watermark_url"], cdn("-w.mp4"));
                assert_eq!(first["duration"], if api2 { "5" } else { "5.1" });
            }
            "images" if name == "ai-multi-shot" => {
                for n in 1..=3 {
                    assert_eq!(first[format!("url_{n}")], cdn(&format!("-{n}.png")));
                }
            }
            "images" => {
                assert_eq!(first["url"], cdn(".png"));
                assert_eq!(first["watermark_url"], cdn("-w.png"));
            }
            "series_images" => {
                assert_eq!(stored[1]["url"], cdn("-s1.png"));
                assert_eq!(done["images"][0]["result_type"], "series");
            }
            "audios" => {
                assert_eq!(first["url_mp3"], cdn(".mp3"));
                assert_eq!(first["url_wav"], cdn(".wav"));
                assert_eq!(first["duration_wav"], "5.0");
            }
            "voices" => {
                assert_eq!(first["voice_id"], format!("voice-{id}"));
                assert_eq!(first["voice_name"], kind["example"]["voice_name"]);
            }
            "elements" => {
                assert_eq!(first["element_id"], "829836802793406551", "digit for digit");
                assert_eq!(first["element_name"], kind["example"]["element_name"]);
            }
            other => unreachable!("{other}"),
        }
    }
    // Advanced lip-sync names the video it worked on; no other kind does.
    let parent = (name == "advanced-lip-sync")
        .then(|| json!({"id": format!("{id}7"), "url": cdn("-parent.mp4"), "duration": "5"}));
    assert_eq!(done.get("parent_video"), parent.as_ref(), "{done}");
    // Kling's own JSON, whole: `task_result`, or API 2.0 `outputs` and `billing`.
    let kling_result = &done["kling_result"];
    if api2 {
        assert_eq!(kling_result[0]["type"], "video", "{done}");
        assert_eq!(done["billing"], json!([{"type": "unit", "amount": "1"}]));
    } else {
        let keys: Vec<&String> = kling_result.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), produced.len(), "{kling_result}");
    }
    assert!(
        d.standin
            .deliveries()
            .iter()
            .all(|delivery| delivery.answered == Some(200))
    );
}

macro_rules! one_test_per_kind {
    ($($test:ident => $kind:literal,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                submitted_called_back_and_stored($kind).await;
            }
        )*

        const TESTED: &[&str] = &[$($kind),*];
    };
}

one_test_per_kind! {
    text2video => "text2video",
    image2video => "image2video",
    multi_image2video => "multi-image2video",
    video_extend => "video-extend",
    lip_sync => "lip-sync",
    effects => "effects",
    image_generation => "image-generation",
    omni_video => "omni-video",
    avatar => "avatar",
    motion_control => "motion-control",
    advanced_lip_sync => "advanced-lip-sync",
    multi_elements => "multi-elements",
    text_to_audio => "text-to-audio",
    video_to_audio => "video-to-audio",
    omni_image => "omni-image",
    multi_image2image => "multi-image2image",
    expand => "expand",
    ai_multi_shot => "ai-multi-shot",
    custom_voices => "custom-voices",
    advanced_custom_elements => "advanced-custom-elements",
    api2_text_to_video_kling_3_0 => "text-to-video/kling-3.0",
    api2_text_to_video_kling_3_0_turbo => "text-to-video/kling-3.0-turbo",
    api2_text_to_video_kling_2_6 => "text-to-video/kling-2.6",
    api2_image_to_video_kling_3_0 => "image-to-video/kling-3.0",
    api2_image_to_video_kling_3_0_turbo => "image-to-video/kling-3.0-turbo",
    api2_omni_video_kling_3_0_omni => "omni-video/kling-3.0-omni",
    api2_motion_control_kling_3_0 => "motion-control/kling-3.0",
    api2_motion_control_kling_2_6 => "motion-control/kling-2.6",
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_the_component_lists_has_its_test() {
    let listed: Vec<String> = kinds(&kling_app())
        .await
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed, TESTED,
        "a kind was added or removed: add or remove its test"
    );
}

/// An API 2.0 task whose create answer was lost and whose callbacks never come is found
/// by the reconciler through `GET /tasks?external_task_ids=`, and ends with its outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_2_task_is_reconciled_by_external_id() {
    let d = deploy_with(Auth::ApiKey, None, &[("stale_after_seconds", "0")]).await;
    let silent = Script {
        drop: vec!["submitted", "processing", "succeed", "failed"],
        ..Script::default()
    };
    // Kling creates it but answers 5002, and cannot be asked right then either.
    d.standin.script(
        "job-v2",
        Script {
            create: CreateBehaviour::CreateThenTimeout,
            query_error: Some((500, 5000)),
            ..silent.clone()
        },
    );
    let body = json!({"prompt": "a paper boat", "settings": {"duration": 5}});
    let submitted = d
        .app
        .send(submit_request(
            "text-to-video/kling-3.0",
            body,
            Some("job-v2"),
        ))
        .await
        .expect_json(202);
    assert_eq!(
        (submitted["status"].as_str(), &submitted["task_id"]),
        (Some("submitting"), &Value::Null)
    );
    d.standin.script("job-v2", silent);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d
        .standin
        .tasks_with_external_id("job-v2")
        .iter()
        .any(|t| t.status == "succeed")
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let report = d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert_eq!(
        (report["checked"].as_u64(), report["updated"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    // The submit's lookup, then the reconciler's: both by our id, through `/tasks`.
    let asked: Vec<String> = d
        .standin
        .received()
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| format!("{}?{}", r.path, r.query))
        .collect();
    assert_eq!(
        asked,
        [
            "/tasks?external_task_ids=job-v2",
            "/tasks?external_task_ids=job-v2"
        ]
    );
    let task = d.app.send(get_task("job-v2")).await.expect_json(200);
    let kling_id = d.standin.tasks_with_external_id("job-v2")[0]
        .task_id
        .clone();
    assert_eq!(
        (
            task["status"].as_str(),
            task["source"].as_str(),
            task["task_id"].as_str()
        ),
        (Some("succeed"), Some("poll"), Some(kling_id.as_str()))
    );
    assert_eq!(
        task["videos"][0]["url"],
        format!("https://cdn.standin.example/{kling_id}.mp4")
    );
}

/// API 2.0 takes an API key only: with only AK/SK configured the component says so and
/// stores nothing; Kling is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_2_kind_without_an_api_key_is_refused_and_leaves_nothing() {
    let d = deploy_with(Auth::KeyPair, None, &[]).await;
    let reply = d
        .app
        .send(submit_request(
            "omni-video/kling-3.0-omni",
            json!({"prompt": "p"}),
            Some("job-ak"),
        ))
        .await;
    let error = reply.expect_json(500);
    assert_eq!(error["error"]["code"], "kling_api_key_required");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kling_api_key")
    );
    assert!(d.standin.received().is_empty());
    // Nothing stored: no store operation at all, not a write undone.
    assert_eq!(d.app.kv.log_len(), 0);

    // A pipeline whose later step is API 2.0 is refused before step 0 costs anything.
    let pipeline = json!({"id": "mixed", "steps": [
        {"kind": "text2video", "request": {"prompt": "a fox"}},
        {"kind": "omni-video/kling-3.0-omni", "request": {"prompt": "and then"}},
    ]});
    let reply = d.app.send(authorized_json("/pipelines", &pipeline)).await;
    assert_eq!(
        reply.expect_json(500)["error"]["code"],
        "kling_api_key_required"
    );
    assert!(d.standin.received().is_empty());
    // Only the read that looks for a pipeline of that id: nothing written.
    let ops: Vec<Op> = d
        .app
        .kv
        .ops_since(0)
        .into_iter()
        .map(|(op, _)| op)
        .collect();
    assert_eq!(ops, [Op::Get], "{ops:?}");
}

/// A generated external id is 128 random bits, and the signed callback URL is never
/// echoed in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_external_id_is_128_bits_and_the_signed_url_is_never_echoed() {
    let d = deploy_with(Auth::ApiKey, None, &[]).await;
    for kind in ["text2video", "text-to-video/kling-3.0"] {
        let reply = d
            .app
            .send(submit_request(kind, json!({"prompt": "a fox"}), None))
            .await;
        let text = String::from_utf8_lossy(&reply.body).to_string();
        let record = reply.expect_json(202);
        let ext = record["external_task_id"].as_str().unwrap();
        assert_eq!(ext.len(), 22, "128 random bits, base64url");
        assert!(
            !text.contains("callback_url") && !text.contains("sig="),
            "{text}"
        );
        let sent = &d.standin.tasks_with_external_id(ext)[0].request;
        assert!(sent.to_string().contains("sig="), "{sent}");
    }
}

/// identify-face and tts are Kling's synchronous calls: passed through with the
/// deployment's credentials, checked first, Kling's refusals mapped like a submit's, and
/// nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_face_and_tts_pass_through_and_store_nothing() {
    let d = deploy_with(Auth::KeyPair, None, &[]).await;
    let call = |path: &str, body: Value| authorized_json(path, &body);
    let face = d
        .app
        .send(call(
            "/kling/identify-face",
            json!({"video_id": "867283741759111300"}),
        ))
        .await
        .expect_json(200);
    assert!(face["session_id"].is_string(), "{face}");
    assert_eq!(face["face_data"][0]["face_id"], "0");
    let speech = d
        .app
        .send(call(
            "/kling/tts",
            json!({"text": "hello", "voice_id": "v1", "voice_language": "en"}),
        ))
        .await
        .expect_json(200);
    assert!(
        speech["task_result"]["audios"][0]["url"].is_string(),
        "{speech}"
    );
    let paths: Vec<String> = d
        .standin
        .received()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(paths, ["/v1/videos/identify-face", "/v1/audio/tts"]);
    let jwt = d.standin.received()[0].authorization.clone().unwrap();
    assert_eq!(jwt.split('.').count(), 3, "the same JWT as a submit");

    // Checked before Kling is called; Kling's own refusal kept, as for a submit.
    let long = d
        .app
        .send(call(
            "/kling/tts",
            json!({"text": "x".repeat(1001), "voice_id": "v1", "voice_language": "en"}),
        ))
        .await
        .expect_json(400);
    assert_eq!(
        (
            long["error"]["code"].as_str(),
            long["error"]["field"].as_str()
        ),
        (Some("invalid_request"), Some("text"))
    );
    let both = d
        .app
        .send(call(
            "/kling/identify-face",
            json!({"video_id": "1", "video_url": "https://v"}),
        ))
        .await
        .expect_json(400);
    assert_eq!(both["error"]["field"], "video_id");
    // kling-api.md: tts takes `voice_language` as well as `voice_id`.
    let no_language = d
        .app
        .send(call("/kling/tts", json!({"text": "hi", "voice_id": "v1"})))
        .await
        .expect_json(400);
    assert_eq!(
        (
            no_language["error"]["code"].as_str(),
            no_language["error"]["field"].as_str()
        ),
        (Some("invalid_request"), Some("voice_language"))
    );
    assert_eq!(d.standin.received().len(), 2);
    let refused = d
        .app
        .send(call(
            "/kling/tts",
            json!({"text": "hi", "voice_id": "unknown-voice", "voice_language": "en"}),
        ))
        .await
        .expect_json(400);
    assert_eq!(refused["error"]["code"], "kling_invalid_request");
    assert_eq!(refused["error"]["kling"]["code"], 1201);

    // The bearer first: without it, Kling is not called.
    let anonymous = d
        .app
        .send(
            request("POST", "/kling/tts")
                .body(bytes::Bytes::from(
                    r#"{"text":"hi","voice_id":"v1","voice_language":"en"}"#,
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(d.standin.received().len(), 3);
    assert_eq!(d.app.kv.log_len(), 0, "nothing stored");
}

/// A success that comes without its results (kling-api.md: "`task_result` may be missing
/// or `{}`"; API 2.0's own example success has no `outputs`) is stored with the results
/// Kling's record holds, in both families, before its 200: never a success without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_that_comes_without_results_is_stored_with_kling_s() {
    let d = deploy_with(Auth::ApiKey, None, &[]).await;
    let kinds = kinds(&d.app).await;
    for (name, id) in [
        ("text2video", "bare-legacy"),
        ("text-to-video/kling-3.0", "bare-api2"),
    ] {
        let kind = kinds.iter().find(|k| k["name"] == name).unwrap();
        d.standin.script(
            id,
            Script {
                bare_success: true,
                ..Script::default()
            },
        );
        let reply = d
            .app
            .send(submit_request(name, kind["example"].clone(), Some(id)))
            .await;
        let task_id = reply.expect_json(202)["task_id"]
            .as_str()
            .unwrap()
            .to_string();
        let done = d.wait_for(id, "succeed").await;
        assert_eq!(
            done["videos"][0]["url"],
            format!("https://cdn.standin.example/{task_id}.mp4"),
            "{name}: {done}"
        );
        // The stand-in records a delivery once it has the answer.
        let deadline = Instant::now() + Duration::from_secs(30);
        let success = loop {
            let success = d
                .standin
                .deliveries()
                .into_iter()
                .find(|delivery| delivery.task_id == task_id && delivery.status == "succeed");
            if let Some(success) = success {
                break success;
            }
            assert!(Instant::now() < deadline, "{name}: never delivered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(success.answered, Some(200), "{name}");
    }
}
