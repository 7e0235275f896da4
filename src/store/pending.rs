//! The pending index: every task this component submitted that is not final yet, so the
//! reconciler's cost grows with pending tasks, not with every task ever stored.
//!
//! A stale entry is harmless (the reconciler drops entries whose task is final or gone);
//! a missing one would leave a task whose callback never comes unreconciled forever. Spin's
//! store has no compare-and-swap, so two read-modify-writes can overwrite each other.
//! Losing an addition is prevented by a lease: every writer of the index writes within
//! [`LEASE_MS`] of its read, or not at all; an adder then reads the index back after
//! [`LEASE_MS`] + [`MARGIN_MS`], when no write based on a read older than its own can
//! still land, and appends again if its entry was overwritten. Removals (the reconciler)
//! need no read-back: a lost removal is only a stale entry.

use super::layout::TaskKey;
use super::{KeyValue, StoreError};
use crate::clock::Clock;

pub const PENDING_INDEX: &str = "index:pending";
/// The longest a writer may take from reading the index to writing it.
pub const LEASE_MS: u64 = 250;
/// Slack for a write still in flight when its lease ran out.
pub const MARGIN_MS: u64 = 50;
const ATTEMPTS: usize = 5;

pub struct PendingIndex<'a> {
    kv: &'a dyn KeyValue,
    clock: &'a dyn Clock,
}

impl<'a> PendingIndex<'a> {
    pub fn new(kv: &'a dyn KeyValue, clock: &'a dyn Clock) -> Self {
        Self { kv, clock }
    }

    pub fn read(&self) -> Result<Vec<String>, StoreError> {
        match self.kv.get(PENDING_INDEX)? {
            None => Ok(Vec::new()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|_| StoreError::Corrupt(PENDING_INDEX.into())),
        }
    }

    fn write(&self, entries: &[String]) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(entries).expect("strings serialize");
        self.kv.set(PENDING_INDEX, &bytes)
    }

    /// Adds a task and returns once its entry has survived every concurrent writer.
    pub fn add(&self, key: &TaskKey) -> Result<(), StoreError> {
        for _ in 0..ATTEMPTS {
            let read_at = self.clock.now_ms();
            let mut entries = self.read()?;
            if !entries.iter().any(|e| e == key.as_str()) {
                if self.clock.now_ms().saturating_sub(read_at) > LEASE_MS {
                    continue; // too slow to write safely: read again
                }
                entries.push(key.as_str().to_string());
                self.write(&entries)?;
            }
            self.clock.sleep_ms(LEASE_MS + MARGIN_MS);
            if self.read()?.iter().any(|e| e == key.as_str()) {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(
            "the pending index kept changing under us".into(),
        ))
    }

    /// Removes entries, re-reading first so that only what was asked is removed. Returns
    /// how many remain. Skips the write (leaving stale entries) if it could not be made
    /// within the lease.
    pub fn remove(&self, done: &[String]) -> Result<usize, StoreError> {
        let read_at = self.clock.now_ms();
        let entries = self.read()?;
        let remaining: Vec<String> = entries
            .iter()
            .filter(|e| !done.contains(e))
            .cloned()
            .collect();
        if remaining.len() != entries.len()
            && self.clock.now_ms().saturating_sub(read_at) <= LEASE_MS
        {
            self.write(&remaining)?;
        }
        Ok(remaining.len())
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
        let index = PendingIndex::new(&kv, &clock);
        for key in ["a", "b", "a", "c"] {
            index.add(&TaskKey::external(key)).unwrap();
        }
        assert_eq!(index.read().unwrap(), ["a", "b", "c"]);
        assert_eq!(index.remove(&["b".into(), "zz".into()]).unwrap(), 2);
        assert_eq!(index.read().unwrap(), ["a", "c"]);
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
        let index = PendingIndex::new(&kv, &clock);
        index.add(&TaskKey::external("mine")).unwrap();
        assert_eq!(index.read().unwrap(), ["other", "mine"]);
        assert!(
            clock.now_ms() >= 2 * (LEASE_MS + MARGIN_MS),
            "it waited out the lease twice"
        );
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
        kv.set(PENDING_INDEX, br#"["a","b"]"#).unwrap();
        let clock = SlowClock(Cell::new(0));
        let index = PendingIndex::new(&kv, &clock);
        assert_eq!(index.remove(&["a".into()]).unwrap(), 1);
        assert_eq!(
            index.read().unwrap(),
            ["a", "b"],
            "removal skipped: a stale entry, harmless"
        );
        assert!(
            index.add(&TaskKey::external("c")).is_err(),
            "never wrote late; gave up"
        );
        assert_eq!(index.read().unwrap(), ["a", "b"]);
    }
}
