//! Spin's key-value store for the test host: in memory, shared by every instance that
//! is given the same handle (like replicas sharing one Redis), with an operation log and
//! fault injection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
    Delete,
    Exists,
    GetKeys,
}

#[derive(Default)]
struct State {
    map: BTreeMap<String, Vec<u8>>,
    log: Vec<(Op, String)>,
    fail_gets: usize,
    fail_sets: usize,
    fail_set_to: Option<String>,
    /// When set, each operation first yields to the scheduler a pseudo-random number
    /// of times (seeded), so concurrent requests interleave at store calls.
    interleave: bool,
    rng: u64,
    /// A fixed cost per operation, like a networked store's round trip.
    latency: Duration,
}

/// A shareable store. Cloning shares it.
#[derive(Clone, Default)]
pub struct KvStore(Arc<Mutex<State>>);

/// What the component sees when the store fails (Spin's `error::other`).
pub const INJECTED_FAILURE: &str = "injected store failure";

impl KvStore {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().expect("kv mutex")
    }

    /// The next `n` gets fail.
    pub fn fail_next_gets(&self, n: usize) {
        self.state().fail_gets = n;
    }

    /// The next `n` sets fail.
    pub fn fail_next_sets(&self, n: usize) {
        self.state().fail_sets = n;
    }

    /// The next set to exactly `key` fails.
    pub fn fail_next_set_to(&self, key: &str) {
        self.state().fail_set_to = Some(key.to_string());
    }

    /// Interleave concurrent requests at every store call (seeded: reproducible).
    pub fn interleaved(self, seed: u64) -> Self {
        {
            let mut state = self.state();
            state.interleave = true;
            state.rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        }
        self
    }

    /// Every operation costs `latency` (blocking the calling thread, as a synchronous
    /// store client does; meant for sequential benchmarks).
    pub fn with_latency(self, latency: Duration) -> Self {
        self.state().latency = latency;
        self
    }

    pub fn get_now(&self, key: &str) -> Option<Vec<u8>> {
        self.state().map.get(key).cloned()
    }

    pub fn json(&self, key: &str) -> Option<serde_json::Value> {
        self.get_now(key)
            .map(|bytes| serde_json::from_slice(&bytes).expect("stored JSON"))
    }

    /// Every entry of the component's pending index (`index:pending:{0..16}`).
    pub fn pending(&self) -> Vec<String> {
        let state = self.state();
        let mut all: Vec<String> = (0..16)
            .filter_map(|shard| state.map.get(&format!("index:pending:{shard}")))
            .flat_map(|bytes| serde_json::from_slice::<Vec<String>>(bytes).expect("pending shard"))
            .collect();
        all.sort();
        all
    }

    pub fn keys(&self) -> Vec<String> {
        self.state().map.keys().cloned().collect()
    }

    /// Every value, for "nothing changed" comparisons.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        self.state().map.clone()
    }

    pub fn log_len(&self) -> usize {
        self.state().log.len()
    }

    /// Operations logged since `start` (an earlier `log_len()`).
    pub fn ops_since(&self, start: usize) -> Vec<(Op, String)> {
        self.state().log[start..].to_vec()
    }

    async fn pause(&self) {
        let (yields, latency) = {
            let mut state = self.state();
            let yields = if state.interleave {
                // xorshift64
                let mut x = state.rng;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                state.rng = x;
                x % 8
            } else {
                0
            };
            (yields, state.latency)
        };
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.pause().await;
        let mut state = self.state();
        state.log.push((Op::Get, key.to_string()));
        if state.fail_gets > 0 {
            state.fail_gets -= 1;
            return Err(INJECTED_FAILURE.into());
        }
        Ok(state.map.get(key).cloned())
    }

    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.pause().await;
        let mut state = self.state();
        state.log.push((Op::Set, key.to_string()));
        if state.fail_sets > 0 {
            state.fail_sets -= 1;
            return Err(INJECTED_FAILURE.into());
        }
        if state.fail_set_to.as_deref() == Some(key) {
            state.fail_set_to = None;
            return Err(INJECTED_FAILURE.into());
        }
        state.map.insert(key.to_string(), value);
        Ok(())
    }

    pub async fn delete(&self, key: &str) {
        self.pause().await;
        let mut state = self.state();
        state.log.push((Op::Delete, key.to_string()));
        state.map.remove(key);
    }

    pub async fn exists(&self, key: &str) -> bool {
        self.pause().await;
        let mut state = self.state();
        state.log.push((Op::Exists, key.to_string()));
        state.map.contains_key(key)
    }

    pub async fn all_keys(&self) -> Vec<String> {
        self.pause().await;
        let mut state = self.state();
        state.log.push((Op::GetKeys, String::new()));
        state.map.keys().cloned().collect()
    }
}
