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
    /// Upper bound of a pseudo-random pause before each operation, so that concurrent
    /// requests interleave at store calls.
    jitter: Duration,
    rng: u64,
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

    /// Pause up to `max` before each operation (seeded, so runs are reproducible).
    pub fn with_jitter(self, max: Duration, seed: u64) -> Self {
        {
            let mut state = self.state();
            state.jitter = max;
            state.rng = seed | 1;
        }
        self
    }

    pub fn get_now(&self, key: &str) -> Option<Vec<u8>> {
        self.state().map.get(key).cloned()
    }

    pub fn json(&self, key: &str) -> Option<serde_json::Value> {
        self.get_now(key)
            .map(|bytes| serde_json::from_slice(&bytes).expect("stored JSON"))
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
        let pause = {
            let mut state = self.state();
            if state.jitter.is_zero() {
                return;
            }
            // xorshift64
            let mut x = state.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.rng = x;
            state.jitter.mul_f64((x % 1000) as f64 / 1000.0)
        };
        tokio::time::sleep(pause).await;
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
