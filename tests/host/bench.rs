//! Benchmark: a Kling callback end to end in the wasmtime host (instantiate, handle,
//! key-value traffic), beside the baseline component that answers 200 after one
//! key-value write, in the same run. Prints figures; asserts nothing about time.
//!
//! `cargo test -p host-tests --test host -- --ignored --nocapture bench`
//! (`BENCH_TASKS` sets how many task lifecycles to run, default 1000; `BENCH_SUBMITS`
//! how many submits, default 100.)

use std::time::Duration;

use crate::support::components::{components, kling_app_with};
use crate::support::deployment::{Auth, deploy_on, text2video_as};
use crate::support::kv::KvStore;
use crate::support::requests::{STANDARD_VARIABLES, callback, flat, request};
use crate::support::spin_host::{SpinApp, Timing};

struct Series {
    response: Vec<Duration>,
    done: Vec<Duration>,
}

impl Series {
    fn new() -> Self {
        Self {
            response: Vec::new(),
            done: Vec::new(),
        }
    }

    fn push(&mut self, timing: Timing) {
        self.response.push(timing.response);
        self.done.push(timing.done);
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(label: &str, series: &mut Series) -> (Duration, Duration) {
    let r50 = percentile(&mut series.response, 0.5);
    let d50 = percentile(&mut series.done, 0.5);
    println!(
        "  {label:<34} response p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs | done p50 {:>8.1} µs  p99 {:>8.1} µs",
        micros(r50),
        micros(percentile(&mut series.response, 0.9)),
        micros(percentile(&mut series.response, 0.99)),
        micros(d50),
        micros(percentile(&mut series.done, 0.99)),
    );
    (r50, d50)
}

async fn run(latency: Duration, tasks: usize) {
    let kling = kling_app_with(
        &STANDARD_VARIABLES,
        KvStore::default().with_latency(latency),
    );
    let baseline = SpinApp::new::<&str, &str>(
        &components().baseline,
        &[],
        KvStore::default().with_latency(latency),
    );
    let mut ours = Series::new();
    let mut theirs = Series::new();
    let mut duplicates = Series::new();
    // Warm-up: page in code, settle allocators.
    for i in 0..50 {
        let ext = format!("warm-{i}");
        kling
            .send(callback(&ext, flat("1", &ext, "submitted", 1)))
            .await;
        baseline
            .send(callback(&ext, flat("1", &ext, "submitted", 1)))
            .await;
    }
    for task in 0..tasks {
        let ext = format!("bench-{task}");
        let task_id = format!("86{task:08}");
        for (status, at) in [("submitted", 1), ("processing", 2), ("succeed", 3)] {
            let body = flat(&task_id, &ext, status, at);
            // Alternate who goes first so drift hurts both equally.
            if task % 2 == 0 {
                ours.push(kling.send_timed(callback(&ext, body.clone())).await.1);
                theirs.push(baseline.send_timed(callback(&ext, body)).await.1);
            } else {
                theirs.push(baseline.send_timed(callback(&ext, body.clone())).await.1);
                ours.push(kling.send_timed(callback(&ext, body)).await.1);
            }
        }
        let duplicate = flat(&task_id, &ext, "succeed", 3);
        duplicates.push(kling.send_timed(callback(&ext, duplicate)).await.1);
    }
    let health = kling
        .send(request("GET", "/health").body(Default::default()).unwrap())
        .await;
    assert_eq!(health.status, 200);

    println!(
        "store latency per operation: {} µs, {} tasks x 3 callbacks",
        latency.as_micros(),
        tasks
    );
    let (ours_r, ours_d) = report("kling-webhook, new deliveries", &mut ours);
    report("kling-webhook, duplicate deliveries", &mut duplicates);
    let (base_r, base_d) = report("baseline (one write, then 200)", &mut theirs);
    println!(
        "  ratio kling/baseline at p50: response {:.2}x, done {:.2}x",
        ours_r.as_secs_f64() / base_r.as_secs_f64(),
        ours_d.as_secs_f64() / base_d.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn bench_callback_vs_baseline() {
    let tasks = std::env::var("BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = &components().wasm_dir;
    for name in ["kling_webhook.wasm", "bench_baseline.wasm"] {
        let size = std::fs::metadata(dir.join(name)).unwrap().len();
        println!("{name}: {size} bytes ({:.0} KiB)", size as f64 / 1024.0);
    }
    // In memory (the host's own cost), then ~Redis-like 0.7 ms per store operation
    // (`../shared/wasm-host-notes.md`).
    run(Duration::ZERO, tasks).await;
    run(Duration::from_micros(700), tasks / 5).await;
}

/// Submit latency (`POST /tasks/text2video` against the stand-in, over loopback), in
/// memory and at ~Redis latency. The lease design slept 300 ms per submit to read its
/// pending-index shard back; one key per entry needs no wait.
///
/// `cargo test -p host-tests --test host -- --ignored --nocapture bench_submit`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn bench_submit() {
    let submits: usize = std::env::var("BENCH_SUBMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for latency in [Duration::ZERO, Duration::from_micros(700)] {
        let d = deploy_on(
            KvStore::default().with_latency(latency),
            Auth::ApiKey,
            None,
            &[],
        )
        .await;
        let mut times = Series::new();
        for i in 0..submits {
            let ext = format!("bench-submit-{i}");
            d.standin.script(
                &ext,
                kling_standin::Script {
                    drop: vec!["submitted", "processing", "succeed", "failed"],
                    ..Default::default()
                },
            );
            let (reply, timing) = d.app.send_timed(text2video_as(&ext)).await;
            assert_eq!(reply.status, 202);
            times.push(timing);
        }
        println!(
            "submit, store latency {} µs per operation, {submits} submits:",
            latency.as_micros()
        );
        report("POST /tasks/text2video", &mut times);
    }
}
