//! Concurrent deliveries for one task from several instances sharing one store (Spin
//! runs requests in parallel; replicas share one Redis): never a regression.

use crate::support::components::kling_app_with;
use crate::support::kv::KvStore;
use crate::support::requests::{STANDARD_VARIABLES, callback, flat, get_task};
use crate::support::spin_host::SpinApp;

const ROUNDS: u64 = 40;
const REPLICAS: usize = 4;

fn rank(status: Option<&str>) -> u8 {
    match status {
        None => 0,
        Some("submitted") => 1,
        Some("processing") => 2,
        Some("succeed" | "failed") => 3,
        Some(other) => panic!("unexpected status {other}"),
    }
}

/// A seeded shuffle (Fisher-Yates over xorshift), so a failing round can be replayed.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_of_every_status_never_move_a_task_backwards() {
    for round in 0..ROUNDS {
        let kv = KvStore::default().interleaved(round + 1);
        let replicas: Vec<SpinApp> = (0..REPLICAS)
            .map(|_| kling_app_with(&STANDARD_VARIABLES, kv.clone()))
            .collect();
        let final_status = if round % 2 == 0 { "succeed" } else { "failed" };
        let ext = format!("job-c{round}");
        let task_id = format!("77{round}");
        // Every status, each delivered twice, in a seeded order.
        let mut bodies: Vec<String> = ["submitted", "processing", final_status]
            .iter()
            .flat_map(|status| {
                let body = flat(&task_id, &ext, status, 10 * rank(Some(status)) as u64);
                [body.clone(), body]
            })
            .collect();
        shuffle(&mut bodies, round * 7919 + 1);

        // A reader polling the task throughout: what it sees must never go down.
        let reader = {
            let app = replicas[0].clone();
            let ext = ext.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..30 {
                    let reply = app.send(get_task(&ext)).await;
                    let json = (reply.status == 200).then(|| reply.json());
                    seen.push(rank(json.as_ref().and_then(|j| j["status"].as_str())));
                    tokio::task::yield_now().await;
                }
                seen
            })
        };
        let deliveries: Vec<_> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                let app = replicas[i % REPLICAS].clone();
                let ext = ext.clone();
                tokio::spawn(async move { app.send(callback(&ext, body)).await.status })
            })
            .collect();
        for delivery in deliveries {
            assert_eq!(delivery.await.unwrap(), 200, "round {round}");
        }
        let seen = reader.await.unwrap();
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "round {round}: a reader saw the task go backwards: {seen:?}"
        );

        let task = replicas[1].send(get_task(&task_id)).await.json();
        assert_eq!(task["status"], final_status, "round {round}");
        assert_eq!(
            kv.json(&format!("task:{ext}:final")).unwrap()["status"],
            final_status
        );
        assert_eq!(task["external_task_id"], ext.as_str());
        assert!(task["deliveries"].as_u64().unwrap() >= 1);
    }
}
