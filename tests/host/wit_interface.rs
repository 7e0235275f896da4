//! The `kling:video/tasks` interface the component exports beside its HTTP handler:
//! loaded and called through wasmtime, so a build that stops exporting the published
//! interface (or changes it) fails here.

use kling_standin::{CreateBehaviour, Script};
use wasmtime::Store;

use crate::support::components::kling_app;
use crate::support::deployment::{Deployment, deploy, valid_body};
use crate::support::requests::{callback, flat};
use crate::support::spin_host::{HostState, SpinApp};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/video",
        world: "kling-video",
        exports: { default: async },
    });
}

use bindings::KlingVideoPre;
use bindings::kling::video::types::{Error, Output, TaskStatus};

async fn instance(app: &SpinApp) -> (Store<HostState>, bindings::KlingVideo) {
    let mut store = app.new_store();
    let pre = KlingVideoPre::new(app.instance_pre().clone())
        .expect("the component exports kling:video/tasks@0.2.0");
    let instance = pre
        .instantiate_async(&mut store)
        .await
        .expect("instantiate");
    (store, instance)
}

/// The WIT `start-pipeline` in an instance of its own.
async fn start_pipeline(
    app: &SpinApp,
    id: Option<&str>,
    steps: &[bindings::kling::video::types::PipelineStep],
) -> Result<bindings::kling::video::types::Pipeline, Error> {
    let (mut store, video) = instance(app).await;
    video
        .kling_video_tasks()
        .call_start_pipeline(&mut store, id, steps)
        .await
        .unwrap()
}

#[tokio::test]
async fn parse_reads_every_shape_without_touching_the_store() {
    let app = kling_app();
    let (mut store, video) = instance(&app).await;
    let tasks = video.kling_video_tasks();
    let flat_body = flat("867283741759111202", "job-w", "succeed", 7);
    let event = tasks
        .call_parse(&mut store, flat_body.as_bytes())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.task_id, "867283741759111202");
    assert_eq!(event.status, TaskStatus::Succeed);
    assert_eq!(event.external_task_id.as_deref(), Some("job-w"));
    assert!(
        matches!(&event.outputs[..], [Output::Video(v)] if v.duration.as_deref() == Some("5.1")),
        "{:?}",
        event.outputs
    );
    assert!(
        event
            .kling_result_json
            .is_some_and(|json| json.contains("5.1"))
    );

    // API 2.0, every output type, in the record's order; billing kept verbatim.
    let newer = br#"{"id":"1","status":"succeeded","outputs":[
        {"type":"audio","id":"a","mp3_url":"https://a.mp3","wav_url":"https://a.wav"},
        {"type":"video","url":"u"},{"type":"image","url":"i","group_id":"g"},
        {"type":"voice","voice_id":"vo"},{"type":"element","element_id":829836802793406551}],
        "billing":[{"amount":1}]}"#;
    let event = tasks.call_parse(&mut store, newer).await.unwrap().unwrap();
    assert_eq!(event.status, TaskStatus::Succeed);
    match &event.outputs[..] {
        [
            Output::Video(video),
            Output::Image(image),
            Output::Audio(audio),
            Output::Voice(voice),
            Output::Element(element),
        ] => {
            assert_eq!(video.url.as_deref(), Some("u"));
            assert_eq!(image.group_id.as_deref(), Some("g"));
            assert_eq!(audio.url_wav.as_deref(), Some("https://a.wav"));
            assert_eq!(voice.voice_id.as_deref(), Some("vo"));
            assert_eq!(element.element_id.as_deref(), Some("829836802793406551"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(event.billing_json.as_deref(), Some(r#"[{"amount":1}]"#));

    let bad = tasks.call_parse(&mut store, b"{not json").await.unwrap();
    assert!(
        matches!(&bad, Err(Error::InvalidPayload(m)) if m.starts_with("invalid_json: ")),
        "{bad:?}"
    );
    // A status this build does not know: the code tells the caller to acknowledge it.
    let unknown = br#"{"task_id":"9","task_status":"queued"}"#;
    let unknown = tasks.call_parse(&mut store, unknown).await.unwrap();
    assert!(
        matches!(&unknown, Err(Error::InvalidPayload(m)) if m.starts_with("unknown_status: ")),
        "{unknown:?}"
    );
    assert_eq!(app.kv.log_len(), 0, "parse is pure");
}

/// WIT calls run on the same 128 KiB stack as HTTP requests (build.rs): a callback body
/// and a request nested as deep as serde_json parses are taken, never a trap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_and_submit_take_json_as_deep_as_the_parser_goes() {
    let d = deploy().await;
    let nested = |levels: usize| format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
    let body = format!(
        r#"{{"task_id":"9","task_status":"succeed","task_result":{{"x":{}}}}}"#,
        nested(125)
    );
    let (mut store, video) = instance(&d.app).await;
    let event = video
        .kling_video_tasks()
        .call_parse(&mut store, body.as_bytes())
        .await
        .expect("no trap");
    assert_eq!(event.unwrap().status, TaskStatus::Succeed);
    let request = format!(r#"{{"prompt":"a cat","x":{}}}"#, nested(126));
    let task = submit(&d, "text2video", &request, Some("deep-wit")).await;
    assert_eq!(task.unwrap().status, TaskStatus::Submitted);
}

#[tokio::test]
async fn get_serves_tasks_by_either_id() {
    let app = kling_app();
    let (mut store, video) = instance(&app).await;
    assert!(
        video
            .kling_video_tasks()
            .call_get(&mut store, "job-g")
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
    app.send(callback("job-g", flat("9090", "job-g", "processing", 3)))
        .await;
    let (mut store, video) = instance(&app).await;
    for id in ["job-g", "9090"] {
        let task = video
            .kling_video_tasks()
            .call_get(&mut store, id)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (task.status, task.deliveries),
            (TaskStatus::Processing, 1),
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_repairs_a_stale_task_as_the_http_route_does() {
    use crate::support::deployment::{deploy_silent, silent, until_kling_finished};
    use crate::support::kv::KvStore;
    let d = deploy_silent(KvStore::default(), &[("stale_after_seconds", "0")]).await;
    // Kling finishes the task and never calls back; no reconcile runs.
    d.submit_scripted("repair-wit", silent()).await;
    until_kling_finished(&d.standin).await;
    let queries = d.standin.received().len();
    let get = || async {
        let (mut store, video) = instance(&d.app).await;
        video
            .kling_video_tasks()
            .call_get(&mut store, "repair-wit")
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    let task = get().await;
    assert_eq!(task.status, TaskStatus::Succeed, "asked Kling: {task:?}");
    assert_eq!(d.standin.received().len(), queries + 1, "asked once");
    // Stored, as the HTTP route stores it: final now, so asked nothing more.
    assert_eq!(get().await.status, TaskStatus::Succeed);
    assert_eq!(d.standin.received().len(), queries + 1);
    let http = d
        .app
        .ok_json(crate::support::requests::get_task("repair-wit"))
        .await;
    assert_eq!(
        (http["status"].as_str(), http["source"].as_str()),
        (Some("succeed"), Some("poll"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_get_repairs_is_announced_before_it_returns() {
    use crate::notify::deploy_notifying_with;
    use crate::support::deployment::{silent, until_kling_finished};
    use crate::support::receiver::Receiver;
    let receiver = Receiver::start(0).await;
    let d = deploy_notifying_with(&receiver, &[("stale_after_seconds", "0")]).await;
    d.submit_scripted("repair-told", silent()).await;
    until_kling_finished(&d.standin).await;
    let (mut store, video) = instance(&d.app).await;
    let task = video
        .kling_video_tasks()
        .call_get(&mut store, "repair-told")
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Succeed);
    // No callback came and no run ran: only `get`'s own follow-up can have sent it, and
    // it is there as `get` returns.
    let told = receiver
        .accepted()
        .into_iter()
        .find(|m| m.webhook_id.starts_with("task_repair-told_succeed"))
        .expect("announced before get returned");
    assert_eq!(told.body["data"]["source"], "poll");
}

async fn submit(
    d: &Deployment,
    kind: &str,
    json: &str,
    ext: Option<&str>,
) -> Result<bindings::kling::video::types::Task, Error> {
    let (mut store, video) = instance(&d.app).await;
    video
        .kling_video_tasks()
        .call_submit(&mut store, &kind.to_string(), json, ext)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_behaves_like_the_http_route() {
    let d = deploy().await;
    let task = submit(
        &d,
        "text2video",
        &valid_body("text2video").to_string(),
        Some("job-wit"),
    )
    .await
    .unwrap();
    assert_eq!(
        (task.status, task.kind),
        (TaskStatus::Submitted, Some("text2video".to_string()))
    );
    assert_eq!(task.external_task_id.as_deref(), Some("job-wit"));
    let again = submit(
        &d,
        "text2video",
        &valid_body("text2video").to_string(),
        Some("job-wit"),
    )
    .await
    .unwrap();
    assert_eq!(again.task_id, task.task_id);
    assert_eq!(
        d.standin.tasks_with_external_id("job-wit").len(),
        1,
        "idempotent"
    );
    d.wait_for("job-wit", "succeed").await;

    let invalid = submit(&d, "text2video", r#"{"prompt":"p","duration":5}"#, None).await;
    assert!(
        matches!(&invalid, Err(Error::InvalidRequest(m)) if m.contains("duration")),
        "{invalid:?}"
    );
    // The kind is a string of the catalog: a new kind needs no WIT change, a wrong one
    // is refused before anything is stored.
    let unknown = submit(&d, "text2hologram", r#"{"prompt":"p"}"#, Some("job-holo")).await;
    assert!(
        matches!(&unknown, Err(Error::InvalidRequest(m)) if m.starts_with("invalid_kind: ") && m.contains("text2hologram")),
        "{unknown:?}"
    );
    assert!(d.app.kv.json("task:job-holo").is_none());
    // The external id's errors name the argument, not HTTP's `Idempotency-Key`.
    let before = d.app.kv.snapshot();
    let body = valid_body("text2video").to_string();
    let reserved = submit(&d, "text2video", &body, Some("reconcile")).await;
    assert!(
        matches!(&reserved, Err(Error::InvalidRequest(m)) if m.starts_with("invalid_idempotency_key: `external-task-id`")),
        "{reserved:?}"
    );
    let mut named = valid_body("text2video");
    named["external_task_id"] = "job-a".into();
    let differing = submit(&d, "text2video", &named.to_string(), Some("job-b")).await;
    assert!(
        matches!(&differing, Err(Error::InvalidRequest(m)) if m.starts_with("idempotency_key_mismatch: `external-task-id`")),
        "{differing:?}"
    );
    // A deployment setting: API 2.0 kinds need kling_api_key, which this one lacks.
    let newer = "text-to-video/kling-3.0-turbo";
    let unset = submit(&d, newer, &valid_body(newer).to_string(), Some("job-2")).await;
    assert!(
        matches!(&unset, Err(Error::Config(m)) if m.starts_with("kling_api_key_required: ")),
        "{unset:?}"
    );
    assert_eq!(
        d.app.kv.snapshot(),
        before,
        "refused before anything is stored"
    );
    let (mut store, video) = instance(&d.app).await;
    let kinds = video
        .kling_video_tasks()
        .call_kinds(&mut store)
        .await
        .unwrap();
    assert!(kinds.len() > 20, "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "text-to-video/kling-3.0"));

    match refused_submit(&d, "job-busy-wit", 429, 1303).await {
        Err(Error::RateLimited((kling, retry_after))) => {
            assert_eq!((kling.code, retry_after), (1303, 1));
            assert!(kling.request_id.is_some());
        }
        other => panic!("{other:?}"),
    }
    let refused = refused_submit(&d, "job-content", 400, 1301).await;
    assert!(
        matches!(&refused, Err(Error::Kling(k)) if k.code == 1301),
        "{refused:?}"
    );
    // Kling's maintenance is worth retrying, as over HTTP (503 `kling_maintenance`).
    let down = refused_submit(&d, "job-maintenance", 503, 5001).await;
    assert!(
        matches!(&down, Err(Error::Unavailable(m)) if m.starts_with("kling_maintenance: ") && m.contains("5001")),
        "{down:?}"
    );
    // Kling's own trouble is worth retrying, whatever its HTTP status; so is a code this
    // build has no name for, as over HTTP (502 `kling_unavailable`) and in a pipeline.
    let odd = refused_submit(&d, "job-odd-status", 400, 5000).await;
    assert!(matches!(&odd, Err(Error::Unavailable(_))), "{odd:?}");
    // A gateway's 502 in JSON with no Kling code is Kling being unreachable.
    let gateway = refused_submit(&d, "job-gateway", 502, 0).await;
    assert!(
        matches!(&gateway, Err(Error::Unavailable(_))),
        "{gateway:?}"
    );
    for http in [400, 502] {
        let unknown = refused_submit(&d, &format!("job-unknown-code-{http}"), http, 1206).await;
        assert!(
            matches!(&unknown, Err(Error::Unavailable(m)) if m.starts_with("kling_unavailable: ") && m.contains("1206")),
            "{unknown:?}"
        );
    }
}

/// Submits under `ext` after scripting the stand-in to refuse it with `http` and `code`.
async fn refused_submit(
    d: &Deployment,
    ext: &str,
    http: u16,
    code: i64,
) -> Result<bindings::kling::video::types::Task, Error> {
    d.standin.script(
        ext,
        Script {
            create: CreateBehaviour::Refuse { http, code },
            ..Script::default()
        },
    );
    submit(
        d,
        "text2video",
        &valid_body("text2video").to_string(),
        Some(ext),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_pipeline_chains_steps_like_the_http_route() {
    use bindings::kling::video::types::{PipelineStatus, PipelineStep, StepInput};
    let d = deploy().await;
    let steps = [
        PipelineStep {
            kind: "text2video".into(),
            request_json: r#"{"prompt":"a fox"}"#.into(),
            inputs: None,
        },
        PipelineStep {
            kind: "lip-sync".into(),
            request_json: r#"{"input":{"mode":"audio2video","audio_type":"url","audio_url":"https://a.example/hi.mp3"}}"#.into(),
            inputs: Some(vec![StepInput {
                target: "input.video_url".into(),
                source: "videos.0.url".into(),
            }]),
        },
    ];
    let started = start_pipeline(&d.app, Some("wit-p"), &steps).await.unwrap();
    assert_eq!(
        (started.id.as_str(), started.status, started.tasks.len()),
        ("wit-p", PipelineStatus::Running, 2)
    );
    assert!(started.tasks[0].is_some() && started.tasks[1].is_none());

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let done = loop {
        let (mut store, video) = instance(&d.app).await;
        let pipeline = video
            .kling_video_tasks()
            .call_get_pipeline(&mut store, "wit-p")
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if pipeline.status != PipelineStatus::Running {
            break pipeline;
        }
        assert!(std::time::Instant::now() < deadline, "{pipeline:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(done.status, PipelineStatus::Succeed, "{done:?}");
    let first = done.tasks[0].as_ref().unwrap();
    let lip_sync = &d.standin.tasks_with_external_id("wit-p-1")[0].request;
    let Some(Output::Video(video)) = first.outputs.first() else {
        panic!("{first:?}")
    };
    assert_eq!(lip_sync["input"]["video_url"], video.url.clone().unwrap());

    // Started again: the same steps are answered with the pipeline, other steps refused.
    let again = start_pipeline(&d.app, Some("wit-p"), &steps).await;
    assert!(
        matches!(&again, Ok(p) if p.status == PipelineStatus::Succeed),
        "{again:?}"
    );
    let mut other = steps.clone();
    other[0].request_json = r#"{"prompt":"a cat"}"#.into();
    let refused = start_pipeline(&d.app, Some("wit-p"), &other).await;
    assert!(
        matches!(&refused, Err(Error::InvalidRequest(m)) if m.starts_with("idempotency_conflict: ") && m.contains("other steps")),
        "{refused:?}"
    );
    assert_eq!(d.standin.tasks().len(), 2);

    let not_an_object = [PipelineStep {
        kind: "text2video".into(),
        request_json: "[1]".into(),
        inputs: None,
    }];
    // `levels` levels of objects and lists in all: the stored description holds a request
    // three levels down, and serde_json reads 127.
    let nested = |levels: usize| PipelineStep {
        kind: "text2video".into(),
        request_json: format!(
            r#"{{"prompt":"a","extra":{}{}}}"#,
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        ),
        inputs: None,
    };
    let too_deep = [nested(125)];
    for (id, steps, named) in [
        ("bad id", &steps[..], "id"),
        ("not-object", &not_an_object[..], "steps[0].request-json"),
        ("too-deep", &too_deep[..], "steps[0].request"),
    ] {
        let invalid = start_pipeline(&d.app, Some(id), steps).await;
        assert!(
            matches!(&invalid, Err(Error::InvalidRequest(m)) if m.contains(named)),
            "{invalid:?}"
        );
        assert!(d.app.kv.json(&format!("pipeline:{id}")).is_none());
        assert!(d.app.kv.json(&format!("task:{id}-0")).is_none());
        assert!(
            d.standin
                .tasks_with_external_id(&format!("{id}-0"))
                .is_empty()
        );
    }
    // The deepest request accepted is stored so that it reads back.
    let deepest = start_pipeline(&d.app, Some("deepest"), &[nested(124)]).await;
    assert!(deepest.is_ok(), "{deepest:?}");
    let (mut store, video) = instance(&d.app).await;
    let read_back = video
        .kling_video_tasks()
        .call_get_pipeline(&mut store, "deepest")
        .await
        .unwrap();
    assert!(
        matches!(&read_back, Ok(Some(p)) if p.id == "deepest"),
        "{read_back:?}"
    );

    let (mut store, video) = instance(&d.app).await;
    let unknown = video
        .kling_video_tasks()
        .call_get_pipeline(&mut store, "nope")
        .await
        .unwrap()
        .unwrap();
    assert!(unknown.is_none());
}
