//! The pending index: every task this component submitted that is not final yet, so the
//! reconciler's cost grows with pending tasks, not with every task ever stored.
//!
//! A stale entry is harmless (the reconciler drops entries whose task is final or gone);
//! a missing one would leave a task whose callback never comes unreconciled forever. Spin's
//! store has no compare-and-swap, so two read-modify-writes can overwrite each other.
//! The index is sharded over [`SHARDS`] keys to divide contention. Losing an addition is
//! prevented by a lease: every writer of a shard writes within
//! [`LEASE_MS`] of its read, or not at all; an adder then reads its shard back after
//! [`LEASE_MS`] + [`MARGIN_MS`], when no write based on a read older than its own can
//! still land, and appends again if its entry was overwritten. Removals (the reconciler)
//! need no read-back: a lost removal is only a stale entry.

use super::{KeyValue, StoreError};
use crate::clock::Clock;

/// The index is split over this many keys, `index:pending:{0..16}`, by a hash of the
/// task key, so concurrent submits rarely touch the same key.
pub const SHARDS: u64 = 16;
/// The longest a writer may take from reading a shard to writing it.
pub const LEASE_MS: u64 = 250;
/// Slack for a write still in flight when its lease ran out.
pub const MARGIN_MS: u64 = 50;
const ATTEMPTS: u64 = 10;

/// The shard key of the index named `name`: `index:{name}:{shard}`.
pub fn shard_key(name: &str, shard: u64) -> String {
    format!("index:{name}:{shard}")
}

/// FNV-1a: stable across builds and platforms (unlike std's hasher).
fn hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A set of keys the reconciler must visit, kept without compare-and-swap (see above).
/// Three exist: submitted tasks not final yet, pipelines not finished, and notifications
/// whose send failed.
pub struct PendingIndex<'a> {
    kv: &'a dyn KeyValue,
    clock: &'a dyn Clock,
    name: &'static str,
}

impl<'a> PendingIndex<'a> {
    /// Tasks submitted here and not final yet: `index:pending:{shard}`.
    pub fn tasks(kv: &'a dyn KeyValue, clock: &'a dyn Clock) -> Self {
        Self {
            kv,
            clock,
            name: "pending",
        }
    }

    /// Pipelines not finished yet: `index:pipelines:{shard}`.
    pub fn pipelines(kv: &'a dyn KeyValue, clock: &'a dyn Clock) -> Self {
        Self {
            kv,
            clock,
            name: "pipelines",
        }
    }

    /// Notifications whose send failed: `index:outbox:{shard}`.
    pub fn outbox(kv: &'a dyn KeyValue, clock: &'a dyn Clock) -> Self {
        Self {
            kv,
            clock,
            name: "outbox",
        }
    }

    fn read_shard(&self, shard: u64) -> Result<Vec<String>, StoreError> {
        let key = shard_key(self.name, shard);
        match self.kv.get(&key)? {
            None => Ok(Vec::new()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt(key)),
        }
    }

    fn write_shard(&self, shard: u64, entries: &[String]) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(entries).expect("strings serialize");
        self.kv.set(&shard_key(self.name, shard), &bytes)
    }

    /// Every pending task key, shard by shard.
    pub fn read(&self) -> Result<Vec<String>, StoreError> {
        let mut all = Vec::new();
        for shard in 0..SHARDS {
            all.extend(self.read_shard(shard)?);
        }
        Ok(all)
    }

    /// Adds a task and returns once its entry has survived every concurrent writer.
    pub fn add(&self, key: &str) -> Result<(), StoreError> {
        let hash = hash(key);
        let shard = hash % SHARDS;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                // Adders that collided back off by different amounts, so they do not
                // collide again in lockstep.
                self.clock
                    .sleep_ms(hash.wrapping_add(attempt.wrapping_mul(7919)) % LEASE_MS);
            }
            let read_at = self.clock.now_ms();
            let mut entries = self.read_shard(shard)?;
            if !entries.iter().any(|e| e == key) {
                if self.clock.now_ms().saturating_sub(read_at) > LEASE_MS {
                    continue; // too slow to write safely: read again
                }
                entries.push(key.to_string());
                self.write_shard(shard, &entries)?;
            }
            self.clock.sleep_ms(LEASE_MS + MARGIN_MS);
            if self.read_shard(shard)?.iter().any(|e| e == key) {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(
            "the pending index kept changing under us".into(),
        ))
    }

    /// Removes entries, re-reading each shard first so that only what was asked is
    /// removed. Returns how many remain. A shard whose write could not be made within the
    /// lease is left as it was (stale entries, harmless).
    pub fn remove(&self, done: &[String]) -> Result<usize, StoreError> {
        let mut remaining_total = 0;
        for shard in 0..SHARDS {
            let read_at = self.clock.now_ms();
            let entries = self.read_shard(shard)?;
            let remaining: Vec<String> = entries
                .iter()
                .filter(|e| !done.contains(e))
                .cloned()
                .collect();
            let in_time = self.clock.now_ms().saturating_sub(read_at) <= LEASE_MS;
            if remaining.len() != entries.len() && in_time {
                self.write_shard(shard, &remaining)?;
                remaining_total += remaining.len();
            } else {
                remaining_total += entries.len();
            }
        }
        Ok(remaining_total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::manual::ManualClock;
    use crate::store::memory::MemoryKv;
    use std::cell::Cell;

    #[test]
    fn add_is_idempotent_and_remove_removes_only_what_was_asked() {
        let kv = MemoryKv::default();
        let clock = ManualClock(Cell::new(0));
        let index = PendingIndex::tasks(&kv, &clock);
        for key in ["a", "b", "a", "c"] {
            index.add(key).unwrap();
        }
        let mut all = index.read().unwrap();
        all.sort();
        assert_eq!(all, ["a", "b", "c"]);
        assert_eq!(index.remove(&["b".into(), "zz".into()]).unwrap(), 2);
        let mut all = index.read().unwrap();
        all.sort();
        assert_eq!(all, ["a", "c"]);
    }

    /// A store where another writer overwrites the index with what it read before our
    /// write, once, right after our write: the lost-update interleaving.
    struct Overwriting {
        inner: MemoryKv,
        stale: std::cell::RefCell<Option<Vec<u8>>>,
    }

    impl KeyValue for Overwriting {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.inner.set(key, value)?;
            if let Some(stale) = self.stale.borrow_mut().take() {
                self.inner.set(key, &stale)?;
            }
            Ok(())
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key)
        }
    }

    #[test]
    fn an_addition_overwritten_by_a_concurrent_writer_is_appended_again() {
        let kv = Overwriting {
            inner: MemoryKv::default(),
            stale: std::cell::RefCell::new(Some(br#"["other"]"#.to_vec())),
        };
        let clock = ManualClock(Cell::new(0));
        let index = PendingIndex::tasks(&kv, &clock);
        index.add("mine").unwrap();
        assert_eq!(index.read().unwrap(), ["other", "mine"]);
        assert!(
            clock.now_ms() >= 2 * (LEASE_MS + MARGIN_MS),
            "it waited out the lease twice"
        );
    }

    #[test]
    fn keys_spread_over_the_shards() {
        let used: std::collections::BTreeSet<u64> = (0..200)
            .map(|i| hash(&format!("storm-{i}")) % SHARDS)
            .collect();
        assert_eq!(used.len() as u64, SHARDS);
    }

    /// A clock that jumps past the lease between a read and the write.
    struct SlowClock(Cell<u64>);

    impl Clock for SlowClock {
        fn now_ms(&self) -> u64 {
            self.0.set(self.0.get() + LEASE_MS + 1);
            self.0.get()
        }
        fn sleep_ms(&self, _: u64) {}
    }

    #[test]
    fn writers_that_outlive_their_lease_do_not_write() {
        let kv = MemoryKv::default();
        kv.set(&shard_key("pending", 3), br#"["a","b"]"#).unwrap();
        let clock = SlowClock(Cell::new(0));
        let index = PendingIndex::tasks(&kv, &clock);
        assert_eq!(index.remove(&["a".into()]).unwrap(), 2, "nothing removed");
        assert_eq!(
            index.read().unwrap(),
            ["a", "b"],
            "removal skipped: a stale entry, harmless"
        );
        assert!(index.add("c").is_err(), "never wrote late; gave up");
        assert_eq!(index.read().unwrap(), ["a", "b"]);
    }
}
