//! Nothing lost, by construction: a write that lands long after it was issued, tasks
//! that Kling no longer knows, read repair, and a run's wall-time budget.

use std::net::SocketAddr;
use std::time::Duration;

use kling_standin::{Config, Script, StandIn};
use serde_json::{Value, json};

use crate::support::components::kling_app_with;
use crate::support::deployment::{
    Auth, deploy_on, deploy_silent, list, silent, text2video_as, until_kling_finished,
};
use crate::support::kv::KvStore;
use crate::support::requests::{API_TOKEN, CALLBACK_SECRET, authorized, get_task};
use crate::support::spin_host::SpinApp;

async fn reconcile(app: &SpinApp, query: &str) -> Value {
    app.ok_json(authorized("POST", &format!("/tasks/reconcile{query}")))
        .await
}

async fn status(app: &SpinApp, id: &str) -> Value {
    app.send(get_task(id)).await.expect_json(200)
}

/// Waits until the stand-in holds every task it has as final.
/// Runs reconcile until nothing is pending (at most `runs` times); returns the last report.
async fn reconcile_until_idle(app: &SpinApp, runs: usize) -> Value {
    let mut last = Value::Null;
    for _ in 0..runs {
        last = reconcile(app, "?limit=500").await;
        if last["pending"] == 0 {
            break;
        }
    }
    last
}

/// The lease design (a read-modify-write of index shards, guarded by a 250 ms lease and
/// a 300 ms read-back) lost a submitted task here: the reconciler's write of a shard,
/// issued in time, landed after concurrent submits had added to that shard and read
/// their entries back. Each index entry is its own key now, so no late write can take
/// another entry with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_lands_late_loses_no_pending_task() {
    let d = deploy_on(
        KvStore::default(),
        Auth::KeyPair,
        None,
        &[("stale_after_seconds", "0")],
    )
    .await;
    d.submit_scripted("late-0", Script::default()).await;
    d.wait_for("late-0", "succeed").await;

    // The reconciler's write to the pending index releasing late-0 lands late, after
    // the submits, which start once it is on its way.
    let late = d.app.kv.hold_next_write_to("pending/*/late-0");
    let run = {
        let app = d.app.clone();
        tokio::spawn(async move { app.send(authorized("POST", "/tasks/reconcile")).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while d.app.kv.late_writes_issued() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never released late-0"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Meanwhile, submits whose callbacks never come.
    let exts: Vec<String> = (1..=64).map(|i| format!("late-{i}")).collect();
    for ext in &exts {
        d.standin.script(ext, silent());
    }
    let submits: Vec<_> = exts
        .iter()
        .map(|ext| {
            let (app, ext) = (d.app.clone(), ext.clone());
            tokio::spawn(async move { app.send(text2video_as(&ext)).await.status })
        })
        .collect();
    for submit in submits {
        assert_eq!(submit.await.unwrap(), 202);
    }
    late.notify_one();
    assert_eq!(run.await.unwrap().status, 200);

    until_kling_finished(&d.standin).await;
    let last = reconcile_until_idle(&d.app, 3).await;
    assert_eq!(last["pending"], 0, "{last}");
    let unfinished: Vec<&String> = {
        let mut unfinished = Vec::new();
        for ext in &exts {
            if status(&d.app, ext).await["status"] != "succeed" {
                unfinished.push(ext);
            }
        }
        unfinished
    };
    assert!(
        unfinished.is_empty(),
        "never reconciled: {unfinished:?} (their pending entries were lost)"
    );
}

/// The variables of a deployment over `kv` that talks to `standin`.
fn app_for(standin: &StandIn, kv: &KvStore, extra: &[(&str, &str)]) -> SpinApp {
    let mut variables = vec![
        ("callback_secret", CALLBACK_SECRET.to_string()),
        ("api_token", API_TOKEN.to_string()),
        ("kling_api_key", standin.config().api_key.clone().unwrap()),
        ("kling_base_url", standin.base_url()),
        ("public_base_url", "http://127.0.0.1:9".to_string()),
        ("kling_timeout_ms", "10000".to_string()),
    ];
    for (name, value) in extra {
        variables.retain(|(n, _)| n != name);
        variables.push((name, value.to_string()));
    }
    kling_app_with(&variables, kv.clone())
}

/// Tasks Kling answers "not found" for (here: submitted in one region, then the
/// deployment's `kling_base_url` moved to another) used to keep the oldest `last_news`
/// forever and fill the first `limit` slots of every run. Now every poll moves a task
/// to its next due time, so ordinary tasks get their turn, and the unknown ones end
/// `lost` after `lost_after_polls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_kling_does_not_know_cannot_starve_the_others_and_end_lost() {
    let kv = KvStore::default();
    let limits = [
        ("stale_after_seconds", "0"),
        ("lost_after_polls", "3"),
        ("lost_after_seconds", "0"),
    ];
    let region_a = StandIn::start(Config::default(), SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let in_a = app_for(&region_a, &kv, &limits);
    let unknown: Vec<String> = (0..60).map(|i| format!("moved-{i}")).collect();
    for ext in &unknown {
        region_a.script(ext, silent());
        in_a.send(text2video_as(ext)).await.expect_json(202);
    }

    let region_b = StandIn::start(
        Config {
            first_task_id: 967_283_741_759_111_202,
            ..Config::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    let in_b = app_for(&region_b, &kv, &limits);
    let ordinary: Vec<String> = (0..3).map(|i| format!("ordinary-{i}")).collect();
    for ext in &ordinary {
        region_b.script(ext, silent());
        in_b.send(text2video_as(ext)).await.expect_json(202);
    }
    until_kling_finished(&region_b).await;

    // Four runs of 50, as the issue measured: every ordinary task is final.
    for _ in 0..4 {
        reconcile(&in_b, "?limit=50").await;
    }
    for ext in &ordinary {
        assert_eq!(status(&in_b, ext).await["status"], "succeed", "{ext}");
    }

    // The unknown ones are given up, each after three "not found" answers.
    let last = reconcile_until_idle(&in_b, 6).await;
    assert_eq!(last["pending"], 0, "{last}");
    let lost = status(&in_b, "moved-7").await;
    assert_eq!(lost["status"], "lost", "{lost}");
    assert!(
        lost["status_msg"]
            .as_str()
            .is_some_and(|m| m.contains("not found")),
        "{lost}"
    );
    assert_eq!(lost["reconcile"]["polls"], 3, "{lost}");
    let listed = list(&in_b, "?status=lost&limit=100").await;
    assert_eq!(listed["tasks"].as_array().unwrap().len(), unknown.len());
    assert!(kv.pending().is_empty(), "{:?}", kv.pending());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_stale_task_asks_kling_once_and_serves_the_truth() {
    let d = deploy_silent(KvStore::default(), &[("stale_after_seconds", "0")]).await;
    d.submit_scripted("repair-me", silent()).await;
    until_kling_finished(&d.standin).await;
    let queries = d.standin.received().len();

    // No reconcile ever runs: the read itself finds the task finished.
    let task = status(&d.app, "repair-me").await;
    assert_eq!(
        (task["status"].as_str(), task["source"].as_str()),
        (Some("succeed"), Some("poll")),
        "{task}"
    );
    assert_eq!(task["reconcile"]["polls"], 1);
    assert_eq!(d.standin.received().len(), queries + 1, "asked once");
    // Final now: reading again asks nothing.
    assert_eq!(status(&d.app, "repair-me").await["status"], "succeed");
    assert_eq!(d.standin.received().len(), queries + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_poll_record_is_not_written_serves_what_the_store_holds() {
    let kv = KvStore::default();
    let d = deploy_silent(kv.clone(), &[("stale_after_seconds", "0")]).await;
    d.submit_scripted("repair-me", silent()).await;
    until_kling_finished(&d.standin).await;
    // The read's poll stores Kling's `succeed`, then fails to write its poll record.
    kv.fail_next_set_to("task:repair-me:poll");
    let task = status(&d.app, "repair-me").await;
    assert_eq!(
        (task["status"].as_str(), task["source"].as_str()),
        (Some("succeed"), Some("poll")),
        "the store's state, not the one read before the poll: {task}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_repair_is_misconfigured_serves_the_stored_task() {
    let d = deploy_silent(
        KvStore::default(),
        &[("stale_after_seconds", "0"), ("lost_after_polls", "many")],
    )
    .await;
    d.submit_scripted("misread", silent()).await;
    until_kling_finished(&d.standin).await;
    let queries = d.standin.received().len();
    // Only the repair needs `lost_after_polls`: the read serves what is stored.
    assert_eq!(status(&d.app, "misread").await["status"], "submitted");
    assert_eq!(d.standin.received().len(), queries, "Kling was not asked");
    // A run, which needs it, says so.
    d.app
        .send(authorized("POST", "/tasks/reconcile"))
        .await
        .expect_error(500, "config_invalid", "lost_after_polls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_repair_kling_rate_limits_serves_the_stored_task_and_its_polls() {
    let d = deploy_silent(KvStore::default(), &[("stale_after_seconds", "0")]).await;
    let busy = Script {
        query_error: Some((429, 1302)),
        ..silent()
    };
    d.submit_scripted("busy", busy).await;
    until_kling_finished(&d.standin).await;
    // Each read's repair is refused: the task is served as stored, with the poll as it
    // was just recorded.
    for polls in 1..=2 {
        let task = status(&d.app, "busy").await;
        assert_eq!(task["status"], "submitted");
        assert_eq!(
            (
                &task["reconcile"]["polls"],
                &task["reconcile"]["last_outcome"]
            ),
            (&json!(polls), &json!("kling_rate_limited")),
            "{task}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_task_is_served_as_stored_without_asking_kling() {
    let d = deploy_silent(KvStore::default(), &[("stale_after_seconds", "3600")]).await;
    d.submit_scripted("fresh", silent()).await;
    until_kling_finished(&d.standin).await;
    let queries = d.standin.received().len();
    assert_eq!(status(&d.app, "fresh").await["status"], "submitted");
    assert_eq!(d.standin.received().len(), queries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_stops_at_its_budget_and_the_next_one_goes_on() {
    // Every store operation takes up to 150 ms: a run of a 1 s budget cannot do all.
    let kv = KvStore::default().slow(Duration::from_millis(150), 7);
    let d = deploy_silent(
        kv,
        &[
            ("stale_after_seconds", "0"),
            ("reconcile_budget_seconds", "1"),
        ],
    )
    .await;
    let exts: Vec<String> = (0..12).map(|i| format!("budget-{i}")).collect();
    for ext in &exts {
        d.submit_scripted(ext, silent()).await;
    }
    until_kling_finished(&d.standin).await;
    let first = reconcile(&d.app, "").await;
    assert_eq!(first["budget_exhausted"], true, "{first}");
    assert!(first["left_due"].as_u64().unwrap() > 0, "{first}");
    let last = reconcile_until_idle(&d.app, 20).await;
    assert_eq!(last["pending"], 0, "{last}");
    for ext in &exts {
        assert_eq!(status(&d.app, ext).await["status"], "succeed", "{ext}");
    }
}
