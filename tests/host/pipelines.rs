//! Pipelines end to end: the component submits step 0, and each step's callback (or the
//! reconciler) submits the next, against the Kling stand-in.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kling_standin::{CreateBehaviour, Script, StandIn};
use serde_json::{Value, json};

use crate::support::deployment::{Auth, Deployment, deploy, deploy_with, fast_standin, replicas};
use crate::support::kv::KvStore;
use crate::support::requests::{API_TOKEN, authorized, request};
use crate::support::spin_host::{Reply, SpinApp};

fn create_request(body: &Value) -> http::Request<Bytes> {
    request("POST", "/pipelines")
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

/// text2video, then video-extend, then lip-sync, each taking the previous video.
fn three_steps(id: &str) -> Value {
    json!({"id": id, "steps": [
        {"kind": "text2video", "request": {"prompt": "a fox in snow", "duration": "5"}},
        {"kind": "video-extend", "request": {"prompt": "it runs off"}},
        {"kind": "lip-sync", "request": {"input": {"mode": "text2video", "text": "hello", "voice_id": "v1", "voice_language": "en"}}},
    ]})
}

async fn create(app: &SpinApp, body: &Value) -> Reply {
    app.send(create_request(body)).await
}

/// Polls `GET /pipelines/{id}` until it is no longer `running`.
async fn wait_until_finished(app: &SpinApp, id: &str) -> Value {
    app.poll_json(
        || authorized("GET", &format!("/pipelines/{id}")),
        |reply| reply.status == 200 && reply.json()["status"] != "running",
    )
    .await
}

fn video_id(standin: &StandIn, external_task_id: &str) -> String {
    let tasks = standin.tasks_with_external_id(external_task_id);
    assert_eq!(
        tasks.len(),
        1,
        "exactly one Kling task for {external_task_id}"
    );
    // The stand-in's video ids are the task id followed by 9.
    format!("{}9", tasks[0].task_id)
}

fn request_of(standin: &StandIn, external_task_id: &str) -> Value {
    standin.tasks_with_external_id(external_task_id)[0]
        .request
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_step_pipeline_runs_to_the_end_each_step_taking_the_previous_video() {
    let d = deploy().await;
    let started = create(&d.app, &three_steps("promo")).await.expect_json(202);
    assert_eq!(started["id"], "promo");
    assert_eq!(started["status"], "running");
    assert_eq!(started["steps"][0]["external_task_id"], "promo-0");
    assert!(
        started["steps"][0]["task"]["task_id"].is_string(),
        "{started}"
    );
    assert!(started["steps"][1]["task"].is_null());

    let done = wait_until_finished(&d.app, "promo").await;
    assert_eq!(done["status"], "succeed", "{done}");
    assert_eq!(done["current_step"], 2);

    let first_video = video_id(&d.standin, "promo-0");
    let second_video = video_id(&d.standin, "promo-1");
    let last_video = video_id(&d.standin, "promo-2");
    assert_eq!(request_of(&d.standin, "promo-1")["video_id"], first_video);
    assert_eq!(request_of(&d.standin, "promo-1")["prompt"], "it runs off");
    let lip_sync = request_of(&d.standin, "promo-2");
    assert_eq!(lip_sync["input"]["video_id"], second_video);
    assert_eq!(lip_sync["input"]["text"], "hello");
    assert_eq!(done["outputs"]["videos"][0]["id"], last_video);
    assert_eq!(d.standin.tasks().len(), 3);
    for step in 0..3 {
        let task = &done["steps"][step]["task"];
        assert_eq!(task["status"], "succeed");
        assert_eq!(
            task["pipeline"],
            json!({"pipeline_id": "promo", "step": step})
        );
    }

    // Creating it again changes nothing and says so; under the same id with other steps
    // it is refused, and nothing changes either.
    let again = create(&d.app, &three_steps("promo")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["status"], "succeed");
    let mut other = three_steps("promo");
    other["steps"][1]["request"]["prompt"] = json!("it sleeps");
    let refused = create(&d.app, &other).await;
    let error = refused.expect_error(422, "idempotency_conflict", "other steps");
    assert_eq!(error["field"], "id");
    let stored = d.app.send(authorized("GET", "/pipelines/promo")).await;
    assert_eq!(stored.expect_json(200), again.json());
    assert_eq!(d.standin.tasks().len(), 3);
}

/// An image generation, then an image-to-video of that image: the default input of
/// image2video after an image generation is the first image's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_step_hands_its_image_to_image2video() {
    let d = deploy().await;
    let body = json!({"id": "still", "steps": [
        {"kind": "image-generation", "request": {"prompt": "a fox", "n": 1}},
        {"kind": "image2video", "request": {"prompt": "it moves"}},
    ]});
    create(&d.app, &body).await.expect_json(202);
    let done = wait_until_finished(&d.app, "still").await;
    assert_eq!(done["status"], "succeed", "{done}");
    let image_task = &d.standin.tasks_with_external_id("still-0")[0].task_id;
    let sent = request_of(&d.standin, "still-1");
    assert_eq!(
        sent["image"],
        format!("https://cdn.standin.example/{image_task}.png")
    );
    assert_eq!(sent["prompt"], "it moves");
    assert_eq!(
        done["steps"][0]["task"]["images"][0]["watermark_url"],
        format!("https://cdn.standin.example/{image_task}-w.png")
    );
}

/// Text to audio, then a talking avatar of that audio, then an extension of the avatar's
/// video, then a lip-sync of the extended video to step 0's audio: each step takes its
/// kind's default input from the previous one, and the last also reads step 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_becomes_a_talking_avatar_that_is_extended_and_lip_synced() {
    let d = deploy().await;
    let body = json!({"id": "talk", "steps": [
        {"kind": "text-to-audio", "request": {"prompt": "a warm hello", "duration": 5}},
        {"kind": "avatar", "request": {"image": "https://img.example/face.png"}},
        {"kind": "video-extend", "request": {"prompt": "she waves"}},
        {"kind": "lip-sync", "request": {"input": {"mode": "audio2video", "audio_type": "url"}},
         "inputs": {"input.video_id": "videos.0.id", "input.audio_url": "steps.0.audios.0.url_mp3"}},
    ]});
    create(&d.app, &body).await.expect_json(202);
    let done = wait_until_finished(&d.app, "talk").await;
    assert_eq!(done["status"], "succeed", "{done}");

    let audio_task = &d.standin.tasks_with_external_id("talk-0")[0].task_id;
    let audio_mp3 = format!("https://cdn.standin.example/{audio_task}.mp3");
    assert_eq!(done["steps"][0]["task"]["audios"][0]["url_mp3"], audio_mp3);
    let avatar = request_of(&d.standin, "talk-1");
    assert_eq!(avatar["sound_file"], audio_mp3);
    assert_eq!(avatar["image"], "https://img.example/face.png");
    assert!(avatar.get("audio_id").is_none());
    assert_eq!(
        request_of(&d.standin, "talk-2")["video_id"],
        video_id(&d.standin, "talk-1")
    );
    let lip_sync = request_of(&d.standin, "talk-3");
    assert_eq!(
        lip_sync["input"]["video_id"],
        video_id(&d.standin, "talk-2")
    );
    assert_eq!(
        lip_sync["input"]["audio_url"], audio_mp3,
        "step 0's, not the previous step's"
    );
    assert_eq!(
        done["outputs"]["videos"][0]["id"],
        video_id(&d.standin, "talk-3")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_middle_step_fails_the_pipeline_and_nothing_after_it_starts() {
    let d = deploy().await;
    d.standin.script(
        "doomed-1",
        Script {
            fails: true,
            ..Script::default()
        },
    );
    assert_eq!(create(&d.app, &three_steps("doomed")).await.status, 202);
    let done = wait_until_finished(&d.app, "doomed").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["current_step"], 1);
    assert_eq!(done["error"]["step"], 1);
    assert_eq!(done["error"]["code"], "step_failed");
    assert!(
        done["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(done["outputs"].is_null());
    // Step 1's failure is answered only once its instance is done, and that instance is
    // what would have started step 2 (no reconcile runs here).
    let failed = &d.standin.tasks_with_external_id("doomed-1")[0].task_id;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.standin.deliveries().iter().any(|delivery| {
        &delivery.task_id == failed && delivery.status == "failed" && delivery.answered.is_some()
    }) {
        assert!(
            Instant::now() < deadline,
            "doomed-1's failure never answered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(d.standin.tasks_with_external_id("doomed-2").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_kling_refuses_fails_the_pipeline_with_kling_s_reason() {
    let d = deploy().await;
    d.standin.script(
        "refused-1",
        Script {
            create: CreateBehaviour::Refuse {
                http: 400,
                code: 1301,
            },
            ..Script::default()
        },
    );
    assert_eq!(create(&d.app, &three_steps("refused")).await.status, 202);
    let done = wait_until_finished(&d.app, "refused").await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["step"], 1);
    assert_eq!(done["error"]["code"], "kling_content_rejected");
    assert!(done["steps"][1]["task"].is_null(), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_descriptions_and_refused_first_steps_store_nothing() {
    let d = deploy().await;
    let before = d.app.kv.snapshot();
    // A request of 125 levels: deeper than the stored description can hold (its body
    // is refused as a whole, as serde_json reads 127 levels).
    let mut too_deep = json!([]);
    for _ in 2..125 {
        too_deep = json!([too_deep]);
    }
    let cases = [
        (json!({"steps": []}), 400, "invalid_pipeline", "steps"),
        (
            json!({"steps": [{"kind": "text2video", "request": {"prompt": "a", "extra": too_deep}}]}),
            400,
            "invalid_pipeline",
            "steps",
        ),
        (
            json!({"steps": [{"kind": "text2video", "request": {"prompt": "a"}},
                             {"kind": "video-extend", "request": {"prompt": 7}}]}),
            400,
            "invalid_pipeline",
            "steps[1].request.prompt",
        ),
        (
            json!({"steps": [{"kind": "text2song", "request": {}}]}),
            400,
            "invalid_pipeline",
            "steps[0].kind",
        ),
        (
            json!({"id": "no spaces", "steps": [{"kind": "text2video", "request": {"prompt": "a"}}]}),
            400,
            "invalid_pipeline_id",
            "id",
        ),
        // A source that is no earlier step; an API 2.0 step naming its own external id.
        (
            json!({"steps": [{"kind": "text2video", "request": {"prompt": "a"}},
                             {"kind": "video-extend", "request": {}, "inputs": {"video_id": "steps.1.videos.0.id"}}]}),
            400,
            "invalid_pipeline",
            "steps[1].inputs.video_id",
        ),
        // A target path of 17 segments: a request that deep is refused, not built.
        (
            json!({"steps": [{"kind": "text2video", "request": {"prompt": "a"}},
                             {"kind": "text2video", "request": {"prompt": "b"}, "inputs": {"a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a": "videos.0.id"}}]}),
            400,
            "invalid_pipeline",
            "steps[1].inputs.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a",
        ),
        (
            json!({"steps": [{"kind": "text-to-video/kling-3.0", "request": {"prompt": "a", "options": {"external_task_id": "x"}}}]}),
            400,
            "invalid_pipeline",
            "steps[0].request.options.external_task_id",
        ),
        // A target inside a field kling-webhook sets.
        (
            json!({"steps": [{"kind": "text2video", "request": {"prompt": "a"}},
                             {"kind": "video-extend", "request": {}, "inputs": {"video_id": "videos.0.id", "external_task_id.a": "videos.0.id"}}]}),
            400,
            "invalid_pipeline",
            "steps[1].inputs.external_task_id.a",
        ),
    ];
    for (body, status, code, field) in cases {
        let reply = create(&d.app, &body).await;
        let error = reply.expect_error(status, code, &body.to_string());
        assert_eq!(error["field"], field, "{body}");
    }
    // Not JSON; an Idempotency-Key that differs from the body's id, or is no valid id.
    let with_key = |body: &str, key: &str| {
        request("POST", "/pipelines")
            .header("authorization", format!("Bearer {API_TOKEN}"))
            .header("idempotency-key", key)
            .body(Bytes::from(body.to_string()))
            .unwrap()
    };
    let one_step =
        json!({"id": "a", "steps": [{"kind": "text2video", "request": {"prompt": "a"}}]});
    for (request, code) in [
        (with_key("not json", "k"), "invalid_pipeline"),
        (
            with_key(&one_step.to_string(), "b"),
            "idempotency_key_mismatch",
        ),
        (
            with_key(
                &json!({"steps": one_step["steps"]}).to_string(),
                "has space",
            ),
            "invalid_pipeline_id",
        ),
    ] {
        d.app.send(request).await.expect_error(400, code, code);
    }
    let unauthenticated = d
        .app
        .send(
            request("POST", "/pipelines")
                .body(Bytes::from(three_steps("x").to_string()))
                .unwrap(),
        )
        .await;
    unauthenticated.expect_error(401, "unauthorized", "no bearer");
    let unauthenticated_read = d
        .app
        .send(request("GET", "/pipelines/a").body(Bytes::new()).unwrap())
        .await;
    unauthenticated_read.expect_error(401, "unauthorized", "no bearer on GET");
    for (method, path, status, code) in [
        ("GET", "/pipelines", 405, "method_not_allowed"),
        ("POST", "/pipelines/a", 405, "method_not_allowed"),
        ("GET", "/pipelines/no%20such", 404, "pipeline_not_found"),
        ("GET", "/pipelines/never-made", 404, "pipeline_not_found"),
    ] {
        d.app
            .send(authorized(method, path))
            .await
            .expect_error(status, code, path);
    }
    assert_eq!(d.app.kv.snapshot(), before, "nothing stored");
    assert!(d.standin.tasks().is_empty(), "Kling never called");

    // The store fails to take the pipeline: 503, so the client retries; nothing is left.
    d.app.kv.fail_next_set_to("pipeline:flaky");
    create(&d.app, &three_steps("flaky")).await.expect_error(
        503,
        "store_unavailable",
        "store down",
    );
    d.app
        .send(authorized("GET", "/pipelines/flaky"))
        .await
        .expect_error(404, "pipeline_not_found", "not stored");
    assert!(d.standin.tasks().is_empty(), "Kling never called");
    // The step 0 task cannot be recorded: the pipeline is forgotten again.
    d.app.kv.fail_next_set_to("task:flaky-0");
    create(&d.app, &three_steps("flaky")).await.expect_error(
        503,
        "store_unavailable",
        "step 0 not recorded",
    );
    assert!(d.app.kv.json("pipeline:flaky").is_none());
    assert!(d.standin.tasks().is_empty(), "Kling never called");
    let retried = create(&d.app, &three_steps("flaky")).await.expect_json(202);
    assert_eq!(retried["steps"][0]["external_task_id"], "flaky-0");

    // Kling refuses step 0: the caller gets Kling's reason and the id stays free.
    d.standin.script(
        "busy-0",
        Script {
            create: CreateBehaviour::Refuse {
                http: 429,
                code: 1303,
            },
            ..Script::default()
        },
    );
    let refused = create(&d.app, &three_steps("busy")).await;
    refused.expect_error(429, "kling_rate_limited", "step 0 refused");
    d.app
        .send(authorized("GET", "/pipelines/busy"))
        .await
        .expect_error(404, "pipeline_not_found", "forgotten");
}

/// A deployment whose reconcile runs poll every pending task, however recent.
async fn deploy_reconciling_every_run() -> Deployment {
    deploy_with(Auth::KeyPair, None, &[("stale_after_seconds", "0")]).await
}

/// A step Kling refuses for now (1303: too many running tasks) is tried again by every
/// reconcile run, and however many runs it takes, the step's id keeps one listing entry
/// and one give-up mark (not two more keys a run); once Kling takes it, the pipeline
/// runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_kling_refuses_for_now_is_retried_and_piles_up_nothing() {
    let d = deploy_reconciling_every_run().await;
    let busy = Script {
        create: CreateBehaviour::Refuse {
            http: 429,
            code: 1303,
        },
        ..Script::default()
    };
    d.standin.script("busy-1", busy);
    assert_eq!(create(&d.app, &three_steps("busy")).await.status, 202);
    let refused = || {
        d.standin
            .received()
            .iter()
            .filter(|r| r.method == "POST" && r.body["external_task_id"] == "busy-1")
            .count()
    };
    for run in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while refused() < run {
            assert!(Instant::now() < deadline, "step 1 never tried");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    }
    assert!(refused() >= 4, "the callback's try, then each run's");
    let keys = d.app.kv.keys();
    let of_step: Vec<&String> = keys.iter().filter(|k| k.contains("busy-1")).collect();
    let count = |pred: &dyn Fn(&str) -> bool| of_step.iter().filter(|k| pred(k)).count();
    assert_eq!(count(&|k| k.starts_with("listed/")), 1, "{of_step:?}");
    assert_eq!(count(&|k| k.contains(":forgotten:")), 1, "{of_step:?}");

    d.standin.script("busy-1", Script::default());
    d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    let done = wait_until_finished(&d.app, "busy").await;
    assert_eq!(done["status"], "succeed", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_moves_a_pipeline_on_when_a_step_s_final_callback_is_lost() {
    let d = deploy_reconciling_every_run().await;
    d.standin.script(
        "quiet-0",
        Script {
            drop: vec!["succeed"],
            ..Script::default()
        },
    );
    assert_eq!(create(&d.app, &three_steps("quiet")).await.status, 202);
    // Step 0 ends at Kling without telling us.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.standin.tasks_with_external_id("quiet-0")[0].status != "succeed" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(d.standin.tasks_with_external_id("quiet-1").is_empty());

    let report = d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert_eq!(report["pipelines_advanced"], 1, "{report}");
    assert_eq!(d.standin.tasks_with_external_id("quiet-1").len(), 1);
    let done = wait_until_finished(&d.app, "quiet").await;
    assert_eq!(done["status"], "succeed", "{done}");
    let report = d.app.ok_json(authorized("POST", "/tasks/reconcile")).await;
    assert_eq!(report["pipelines_pending"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_duplicated_reordered_callbacks_across_replicas_makes_one_task_per_step() {
    const PIPELINES: usize = 12;
    const REPLICAS: usize = 3;
    let standin = fast_standin().await;
    let kv = KvStore::default().interleaved(7);
    let replicas = replicas(&standin, &kv, REPLICAS).await;
    // Every step's callbacks come twice, odd steps' in reverse, and some finals are lost.
    let ids: Vec<String> = (0..PIPELINES).map(|i| format!("storm{i}")).collect();
    for (p, id) in ids.iter().enumerate() {
        for step in 0..3 {
            standin.script(
                &format!("{id}-{step}"),
                Script {
                    duplicate: true,
                    reverse: step % 2 == 1,
                    drop: if (p + step) % 5 == 0 {
                        vec!["succeed"]
                    } else {
                        Vec::new()
                    },
                    ..Script::default()
                },
            );
        }
    }
    let creates: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let app = replicas[i % REPLICAS].clone();
            let body = three_steps(id);
            tokio::spawn(async move { create(&app, &body).await.status })
        })
        .collect();
    for create in creates {
        assert_eq!(create.await.unwrap(), 202);
    }
    // Two replicas reconcile concurrently until every pipeline has finished.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (a, b) = tokio::join!(
            replicas[0].ok_json(authorized("POST", "/tasks/reconcile?limit=500")),
            replicas[1].ok_json(authorized("POST", "/tasks/reconcile?limit=500")),
        );
        if a["pipelines_pending"] == 0 && b["pipelines_pending"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pipelines still pending: {a} {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        let view = replicas[2]
            .ok_json(authorized("GET", &format!("/pipelines/{id}")))
            .await;
        assert_eq!(view["status"], "succeed", "{view}");
        for step in 0..3 {
            let ext = format!("{id}-{step}");
            assert_eq!(
                standin.tasks_with_external_id(&ext).len(),
                1,
                "exactly one Kling task for {ext}"
            );
        }
        assert_eq!(
            request_of(&standin, &format!("{id}-1"))["video_id"],
            video_id(&standin, &format!("{id}-0"))
        );
    }
    assert_eq!(standin.tasks().len(), PIPELINES * 3);
}
