//! The storms: tasks submitted through replicas sharing one store; the stand-in
//! duplicates and reorders every task's callbacks (and drops some finals) while
//! reconciles run concurrently. Every task must end in its true final state, never
//! move backwards, be listed, and leave the pending index empty; its notifications,
//! applied by `sequence` as the README tells receivers, must end at that state. One
//! storm is large over an interleaving store; one is small over a store whose every
//! operation takes a random 0 to 2 s, so that concurrent writes land in any order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kling_standin::Script;
use serde_json::Value;

use crate::support::deployment::{fast_standin, list, replicas_with, text2video_as};
use crate::support::kv::KvStore;
use crate::support::receiver::{NOTIFY_SECRET, Receiver};
use crate::support::requests::{authorized, get_task};
use crate::support::spin_host::SpinApp;

/// A status's rank as `GET /tasks/{id}` shows it; 0 is "not found (yet)".
fn rank(status: &str) -> u8 {
    match status {
        "submitting" => 1,
        "submitted" => 2,
        "processing" => 3,
        _ => 4, // succeed, failed, lost
    }
}

/// The rank a notification's `sequence` carries (`sequence / 10^13`).
fn sequence_rank(status: &str) -> u64 {
    match status {
        "submitting" => 0,
        "submitted" => 1,
        "processing" => 2,
        "lost" => 3,
        _ => 4, // succeed, failed
    }
}

/// Whether Kling refreshes storm task `i`'s final.
fn refreshed(i: usize) -> bool {
    i % 5 == 2 || i % 20 == 10
}

async fn reconcile(app: &SpinApp) -> serde_json::Value {
    app.ok_json(authorized("POST", "/tasks/reconcile?limit=500"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_duplicated_reordered_and_lost_callbacks_ends_every_task_in_its_true_state() {
    storm(KvStore::default().interleaved(2026), 200, 4, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_over_a_slow_reordering_store_loses_nothing() {
    storm(
        KvStore::default().slow(Duration::from_secs(2), 2026),
        12,
        3,
        12,
    )
    .await;
}

/// Nine submits of one id at once, over three replicas and a store whose every
/// operation takes up to 200 ms in any order: Kling creates one task, every answer that
/// names a task names that one, and it ends `succeed`, listed once, nothing left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_of_one_id_over_a_slow_reordering_store_make_one_task() {
    let standin = fast_standin().await;
    let kv = KvStore::default().slow(Duration::from_millis(200), 7);
    let replicas = replicas_with(&standin, &kv, 3, &[]).await;
    let submits: Vec<_> = (0..9)
        .map(|i| {
            let app = replicas[i % 3].clone();
            tokio::spawn(async move { app.send(text2video_as("same-1")).await })
        })
        .collect();
    let mut answered = Vec::new();
    for submit in submits {
        let reply = submit.await.unwrap();
        assert!(matches!(reply.status, 200 | 202), "{reply:?}");
        answered.push(reply.json()["task_id"].clone());
    }
    let at_kling = standin.tasks_with_external_id("same-1");
    assert_eq!(at_kling.len(), 1, "one task at Kling");
    let task_id = at_kling[0].task_id.as_str();
    assert!(
        answered.iter().all(|t| t.is_null() || t == task_id),
        "{answered:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = reconcile(&replicas[0]).await;
        let task = replicas[1].ok_json(get_task("same-1")).await;
        if task["status"] == "succeed" && last["pending"] == 0 {
            assert_eq!(task["task_id"], task_id);
            break;
        }
        assert!(Instant::now() < deadline, "{task} {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = list(&replicas[2], "?limit=100").await;
    let same: Vec<&Value> = (listed["tasks"].as_array().unwrap().iter())
        .filter(|t| t["external_task_id"] == "same-1")
        .collect();
    assert_eq!(same.len(), 1, "{listed}");
}

async fn storm(kv: KvStore, tasks: usize, replica_count: usize, batch_size: usize) {
    let standin = fast_standin().await;
    let receiver = Receiver::start(0).await;
    let origin = receiver.origin();
    let notifying = [
        ("notify_url", receiver.url()),
        ("notify_origin", origin.as_str()),
        ("notify_secret", NOTIFY_SECRET),
        ("notify_retry_seconds", "0"),
    ];
    let replicas = replicas_with(&standin, &kv, replica_count, &notifying).await;

    // Every task's callbacks are duplicated; odd ones arrive in reverse; every tenth
    // final is never delivered, every third task fails, and every fifth (and every
    // twentieth from the tenth on, whose final is never delivered) has its final
    // refreshed by Kling (sent again, duplicated, with a newer `updated_at`).
    let exts: Vec<String> = (0..tasks).map(|i| format!("storm-{i}")).collect();
    for (i, ext) in exts.iter().enumerate() {
        let fails = i % 3 == 0;
        let mut drop = Vec::new();
        if i % 10 == 0 {
            drop = vec!["succeed", "failed"];
        }
        standin.script(
            ext,
            Script {
                fails,
                duplicate: true,
                reverse: i % 2 == 1,
                refresh: refreshed(i),
                drop,
                ..Script::default()
            },
        );
    }

    // Concurrent reconciles and a reader that must never see a task go back.
    let storming = Arc::new(AtomicBool::new(true));
    let reconcilers: Vec<_> = replicas[..2]
        .iter()
        .cloned()
        .map(|app| {
            let storming = storming.clone();
            tokio::spawn(async move {
                while storming.load(Ordering::Relaxed) {
                    reconcile(&app).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    let reader = {
        let app = replicas[replica_count - 1].clone();
        let watched: Vec<String> = exts.iter().step_by(17).cloned().collect();
        let storming = storming.clone();
        tokio::spawn(async move {
            let mut highest = vec![0u8; watched.len()];
            while storming.load(Ordering::Relaxed) {
                for (i, ext) in watched.iter().enumerate() {
                    let reply = app.send(get_task(ext)).await;
                    // Not found yet ranks lowest: a task once found never is again.
                    let r = match reply.status {
                        200 => rank(reply.json()["status"].as_str().unwrap()),
                        404 => 0,
                        other => panic!("{ext}: {other} {:?}", reply.body),
                    };
                    assert!(
                        r >= highest[i],
                        "{ext} went back from rank {} to {r}",
                        highest[i]
                    );
                    highest[i] = r;
                }
            }
        })
    };

    // Submit through the replicas, a batch at a time.
    let started = Instant::now();
    for batch in exts.chunks(batch_size) {
        let submits: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, ext)| {
                let app = replicas[i % replica_count].clone();
                let ext = ext.clone();
                // A client that retries a 503 with the same Idempotency-Key.
                tokio::spawn(async move {
                    for _ in 0..5 {
                        let status = app.send(text2video_as(&ext)).await.status;
                        if status != 503 {
                            return status;
                        }
                    }
                    503
                })
            })
            .collect();
        for submit in submits {
            assert_eq!(submit.await.unwrap(), 202);
        }
    }
    // Let the stand-in finish every task and its callbacks.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !standin.callbacks_done()
        || standin
            .tasks()
            .iter()
            .any(|t| !matches!(t.status, "succeed" | "failed"))
    {
        assert!(Instant::now() < deadline, "the stand-in did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    storming.store(false, Ordering::Relaxed);
    for reconciler in reconcilers {
        reconciler.await.unwrap();
    }
    reader.await.unwrap();

    // One last run picks up whatever is left (lost finals, queued notifications).
    let mut last = reconcile(&replicas[0]).await;
    for _ in 0..5 {
        if last["pending"] == 0 && last["notifications_pending"] == 0 {
            break;
        }
        last = reconcile(&replicas[0]).await;
    }
    assert_eq!(last["pending"], 0, "{last}");
    assert_eq!(last["notifications_pending"], 0, "{last}");
    assert_eq!(kv.pending(), Vec::<String>::new());

    assert_eq!(
        standin.tasks().len(),
        tasks,
        "exactly one Kling task per submit"
    );
    // A receiver that keeps, per task, the largest `sequence` it applied.
    assert_eq!(receiver.forged(), 0, "every notification verified");
    let mut applied: HashMap<String, (u64, String)> = HashMap::new();
    let mut late = 0;
    let messages = receiver.accepted();
    for message in &messages {
        let data = &message.body["data"];
        let ext = data["external_task_id"].as_str().unwrap().to_string();
        let sequence = data["sequence"].as_u64().unwrap();
        let status = data["status"].as_str().unwrap().to_string();
        assert_eq!(
            sequence / 10_000_000_000_000,
            sequence_rank(&status),
            "{ext}: {sequence} does not name {status}"
        );
        match applied.get(&ext) {
            Some((kept, _)) if *kept >= sequence => late += usize::from(*kept > sequence),
            _ => {
                applied.insert(ext, (sequence, status));
            }
        }
    }
    for task in standin.tasks() {
        let ext = task.external_task_id.clone().unwrap();
        let stored = replicas[1].send(get_task(&task.task_id)).await.json();
        assert_eq!(stored["status"], task.status, "{ext}");
        assert_eq!(stored["external_task_id"], ext.as_str());
        // Kling's latest version of it, or (two writers storing one final at once, the
        // last write wins) the version before a refresh.
        let i: usize = ext["storm-".len()..].parse().unwrap();
        let (refreshed, final_sent) = (refreshed(i), !i.is_multiple_of(10));
        let stored_at = stored["updated_at"].as_u64().unwrap();
        assert!(
            stored_at == task.updated_at || (refreshed && stored_at + 500 == task.updated_at),
            "{ext}: stored {stored_at}, Kling's {}",
            task.updated_at
        );
        // Two replicas refreshing one final at once may leave either version in the
        // slot (the status is the same); the receiver keeps the newer of the two.
        let (kept, status) = applied
            .get(&ext)
            .unwrap_or_else(|| panic!("{ext}: never notified"));
        assert_eq!(
            status, task.status,
            "{ext}: the notifications end at the true state"
        );
        assert!(
            *kept >= stored["sequence"].as_u64().unwrap(),
            "{ext}: the receiver kept {kept}, older than the stored {}",
            stored["sequence"]
        );
        // And what it keeps is Kling's latest version (a refresh Kling sent included; one
        // whose final is never sent may be polled just before its refresh, and released).
        if final_sent || !refreshed {
            assert_eq!(*kept, 4 * 10_000_000_000_000 + task.updated_at, "{ext}");
        }
    }
    // The listing is complete: every task once, paging down with the cursor.
    let mut listed: Vec<String> = Vec::new();
    let mut query = "?limit=100".to_string();
    loop {
        let page = list(&replicas[0], &query).await;
        listed.extend(
            page["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["external_task_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=100&cursor={cursor}"),
            None => break,
        }
    }
    listed.sort();
    let mut expected = exts.clone();
    expected.sort();
    assert_eq!(listed, expected, "every task listed, once");
    println!(
        "storm: {tasks} tasks through {replica_count} replicas in {:?}, {} callbacks sent, \
         {} notifications ({late} overtaken by a newer one and dropped by sequence)",
        started.elapsed(),
        standin.deliveries().len(),
        messages.len(),
    );
}
