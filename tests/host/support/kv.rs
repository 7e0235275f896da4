//! Spin's key-value store for the test host: in memory, shared by every instance that
//! is given the same handle (like replicas sharing one Redis), one map per store label
//! (`get-keys` sees only its label's), with an operation log and fault injection:
//! failures, interleaving, a fixed latency, and a slow store whose operations each take a
//! random 0 to N ms and so complete out of the order they were issued in, plus single
//! writes that land long after they were issued.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
    /// One `set-many`, logged once per key (in the batch's order) under this op.
    SetMany,
    Delete,
    Exists,
    GetKeys,
}

/// The labels a component may open, as Spin's `key_value_stores` and runtime config
/// would allow them.
pub const LABELS: [&str; 2] = ["default", "index"];

#[derive(Default)]
struct State {
    /// label → its keys. Keys of the component are unique across labels, so the test
    /// helpers below address them by key alone.
    maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    log: Vec<(Op, String)>,
    fail_gets: usize,
    fail_sets: usize,
    fail_set_to: Option<String>,
    fail_set_prefix: Option<String>,
    /// When set, each operation first yields to the scheduler a pseudo-random number
    /// of times (seeded), so concurrent requests interleave at store calls.
    interleave: bool,
    rng: u64,
    /// A fixed cost per operation, like a networked store's round trip.
    latency: Duration,
    /// Each operation first waits a random 0 to this long (async, so concurrent
    /// operations overtake each other).
    max_delay: Duration,
    /// The next writes (set or delete) to a key matching this pattern land once the
    /// test lets them through.
    late_writes: Vec<(String, Arc<Notify>)>,
    /// Writes held by `late_writes` (issued, not necessarily landed).
    late_writes_issued: usize,
}

/// Whether `key` contains the pieces of `pattern` between its `*`s, in order.
fn matches(key: &str, pattern: &str) -> bool {
    let mut rest = key;
    for piece in pattern.split('*') {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

impl State {
    /// Whether a failure armed for a write to `key` (`fail_next_set_to`,
    /// `fail_next_set_starting`) fires; each fires once.
    fn take_armed_failure(&mut self, key: &str) -> bool {
        let mut fired = false;
        if self.fail_set_to.as_deref() == Some(key) {
            self.fail_set_to = None;
            fired = true;
        }
        if self
            .fail_set_prefix
            .as_deref()
            .is_some_and(|prefix| key.starts_with(prefix))
        {
            self.fail_set_prefix = None;
            fired = true;
        }
        fired
    }

    /// xorshift64: seeded, so a run is reproducible.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
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

    /// The next set to a key starting with `prefix` fails (a key whose end is a digest).
    pub fn fail_next_set_starting(&self, prefix: &str) {
        self.state().fail_set_prefix = Some(prefix.to_string());
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

    /// A slow store: every operation waits a random 0 to `max` (seeded) before it
    /// takes effect, so concurrent writes complete out of order.
    pub fn slow(self, max: Duration, seed: u64) -> Self {
        {
            let mut state = self.state();
            state.max_delay = max;
            state.rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        }
        self
    }

    /// The next write (set or delete) to a key containing `pattern` (`*` for any run of
    /// characters) lands late, once the test calls `notify_one` on the gate returned: a
    /// retransmit, a failover, a queue behind a lock. The test decides what happens
    /// meanwhile, with no timing.
    pub fn hold_next_write_to(&self, pattern: &str) -> Arc<Notify> {
        let gate = Arc::new(Notify::new());
        (self.state().late_writes).push((pattern.to_string(), gate.clone()));
        gate
    }

    /// How many writes [`Self::hold_next_write_to`] has held (issued, not necessarily
    /// landed).
    pub fn late_writes_issued(&self) -> usize {
        self.state().late_writes_issued
    }

    /// Every operation costs `latency` (blocking the calling thread, as a synchronous
    /// store client does; meant for sequential benchmarks).
    pub fn with_latency(self, latency: Duration) -> Self {
        self.state().latency = latency;
        self
    }

    pub fn get_now(&self, key: &str) -> Option<Vec<u8>> {
        self.state()
            .maps
            .values()
            .find_map(|map| map.get(key).cloned())
    }

    /// Deletes `key` from whichever label holds it, as another writer would.
    pub fn remove_now(&self, key: &str) {
        for map in self.state().maps.values_mut() {
            map.remove(key);
        }
    }

    pub fn json(&self, key: &str) -> Option<serde_json::Value> {
        self.get_now(key)
            .map(|bytes| serde_json::from_slice(&bytes).expect("stored JSON"))
    }

    /// The tasks in the component's pending index (`pending/{due}/{nonce}/{key}` in the
    /// `index` label), each once, sorted.
    pub fn pending(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .label_keys("index")
            .iter()
            .filter_map(|k| k.strip_prefix("pending/"))
            .filter_map(|rest| rest.splitn(3, '/').nth(2).map(str::to_string))
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The keys of one label.
    pub fn label_keys(&self, label: &str) -> Vec<String> {
        self.state()
            .maps
            .get(label)
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every key of every label.
    pub fn keys(&self) -> Vec<String> {
        self.snapshot().into_keys().collect()
    }

    /// Every value of every label, for "nothing changed" comparisons.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        self.state()
            .maps
            .values()
            .flat_map(|map| map.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    }

    pub fn log_len(&self) -> usize {
        self.state().log.len()
    }

    /// Operations logged since `start` (an earlier `log_len()`).
    pub fn ops_since(&self, start: usize) -> Vec<(Op, String)> {
        self.state().log[start..].to_vec()
    }

    /// Waits before an operation takes effect: interleaving, latency, the slow store's
    /// random delay, and a late write's delay.
    async fn pause(&self, write_to: Option<&str>) {
        let (yields, latency, delay, held) = {
            let mut state = self.state();
            let yields = if state.interleave {
                state.next_random() % 8
            } else {
                0
            };
            let delay = if state.max_delay.is_zero() {
                Duration::ZERO
            } else {
                let max = u64::try_from(state.max_delay.as_micros()).unwrap_or(u64::MAX);
                Duration::from_micros(state.next_random() % (max + 1))
            };
            let held = if let Some(key) = write_to
                && let Some(at) = state
                    .late_writes
                    .iter()
                    .position(|(pattern, _)| matches(key, pattern))
            {
                state.late_writes_issued += 1;
                Some(state.late_writes.remove(at).1)
            } else {
                None
            };
            (yields, state.latency, delay, held)
        };
        if let Some(gate) = held {
            gate.notified().await;
        }
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    pub async fn get(&self, label: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.pause(None).await;
        let mut state = self.state();
        state.log.push((Op::Get, key.to_string()));
        if state.fail_gets > 0 {
            state.fail_gets -= 1;
            return Err(INJECTED_FAILURE.into());
        }
        Ok(state.maps.get(label).and_then(|m| m.get(key)).cloned())
    }

    pub async fn set(&self, label: &str, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.pause(Some(key)).await;
        let mut state = self.state();
        state.log.push((Op::Set, key.to_string()));
        if state.fail_sets > 0 {
            state.fail_sets -= 1;
            return Err(INJECTED_FAILURE.into());
        }
        if state.take_armed_failure(key) {
            return Err(INJECTED_FAILURE.into());
        }
        state
            .maps
            .entry(label.to_string())
            .or_default()
            .insert(key.to_string(), value);
        Ok(())
    }

    /// A batch: one operation whose writes land together, or fail together when any of
    /// its keys would fail alone.
    pub async fn set_many(
        &self,
        label: &str,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<(), String> {
        // A late write delays the whole batch when any of its keys is meant.
        let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        self.pause(Some(&keys.join("\n"))).await;
        let mut state = self.state();
        for (key, _) in &entries {
            state.log.push((Op::SetMany, key.clone()));
        }
        if state.fail_sets > 0 {
            state.fail_sets -= 1;
            return Err(INJECTED_FAILURE.into());
        }
        // Every armed failure the batch meets is spent, as each would be by a set.
        let mut failed = false;
        for (key, _) in &entries {
            failed |= state.take_armed_failure(key);
        }
        if failed {
            return Err(INJECTED_FAILURE.into());
        }
        let map = state.maps.entry(label.to_string()).or_default();
        for (key, value) in entries {
            map.insert(key, value);
        }
        Ok(())
    }

    pub async fn delete(&self, label: &str, key: &str) {
        self.pause(Some(key)).await;
        let mut state = self.state();
        state.log.push((Op::Delete, key.to_string()));
        if let Some(map) = state.maps.get_mut(label) {
            map.remove(key);
        }
    }

    pub async fn exists(&self, label: &str, key: &str) -> bool {
        self.pause(None).await;
        let mut state = self.state();
        state.log.push((Op::Exists, key.to_string()));
        state.maps.get(label).is_some_and(|m| m.contains_key(key))
    }

    pub async fn all_keys(&self, label: &str) -> Vec<String> {
        self.pause(None).await;
        let mut state = self.state();
        state.log.push((Op::GetKeys, label.to_string()));
        state
            .maps
            .get(label)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}
