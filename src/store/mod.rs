//! Persistence behind a small trait, so the core never names Spin.
//!
//! - [`KeyValue`]: the operations the component uses (Spin's stores in the component,
//!   an in-memory map in unit tests).
//! - [`layout`]: every key the component writes, and which store label holds it.
//! - [`index`]: the one index abstraction: a set with one key per entry, no
//!   read-modify-write (pending tasks, unfinished pipelines, the outbox, the listing,
//!   retention by day).
//! - [`tasks`]: reading and writing task heads, status slots and the task_id index.
//! - [`pending`]: the pending index's entries: their names and the submission each carries.
//! - [`pipelines`]: a pipeline's description and its refusal.

pub mod index;
pub mod layout;
pub mod pending;
pub mod pipelines;
pub mod retention;
pub mod tasks;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A key-value store with Spin's semantics: last write wins, no read-then-write
/// transaction (only [`KeyValue::set_all`]'s all-or-nothing batch). One
/// handle reaches every label: [`layout::label_of`] says which label a key lives in, and
/// the Spin edge routes each operation there.
pub trait KeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Writes every entry in one round trip; all keys are of one label. On Spin this is
    /// `wasi:keyvalue/batch`'s `set-many`, which its WIT promises neither atomic nor
    /// ordered: Spin's SQLite store runs it as one transaction and its Redis store as one
    /// `MSET` (all or nothing), its Azure Cosmos store one entry at a time in order.
    /// Callers order the entries so that the last holds too (a slot and a binding
    /// before the head that records them); a store that is neither (DynamoDB's batch
    /// write) is not supported for the `default` label.
    fn set_all(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError>;
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Every key starting with `prefix` (one `list-keys` of the prefix's label).
    fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened or did not answer; worth retrying.
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
    /// The component is not allowed to use the store (missing `key_value_stores`).
    #[error(
        "key-value store `{0}` is not available to this component (key_value_stores, and a runtime-config entry for labels other than default)"
    )]
    NotConfigured(&'static str),
    /// A value under one of our keys is not what we wrote.
    #[error("stored value under `{0}` is not valid")]
    Corrupt(String),
}

/// Reads a JSON value we wrote; anything else under our key is [`StoreError::Corrupt`].
pub(crate) fn get_json<T: DeserializeOwned>(
    kv: &dyn KeyValue,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match kv.get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| StoreError::Corrupt(key.to_string())),
    }
}

/// Reads a count we wrote as decimal text; anything else under the key reads as none (a
/// count is bookkeeping: an unreadable one starts again).
pub(crate) fn get_count(kv: &dyn KeyValue, key: &str) -> Result<Option<u64>, StoreError> {
    Ok(kv
        .get(key)?
        .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok()))
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("stored types serialize to JSON")
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-memory [`KeyValue`] for unit tests, counting round trips.
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    /// The store, with another instance's work done just before one of this instance's
    /// operations on a key: the interleavings that last-write-wins stores allow.
    pub struct Between<'a> {
        kv: &'a MemoryKv,
        hooks: RefCell<Vec<Hook<'a>>>,
    }

    /// Before this operation ("get", "set" or "delete") of this key: this work.
    pub type Hook<'a> = (&'static str, String, Box<dyn FnOnce() + 'a>);

    impl<'a> Between<'a> {
        pub fn new(kv: &'a MemoryKv) -> Self {
            Self {
                kv,
                hooks: RefCell::default(),
            }
        }

        /// Before this instance's next `op` ("get", "set" or "delete") of `key`.
        pub fn before(self, op: &'static str, key: String, then: impl FnOnce() + 'a) -> Self {
            self.hooks.borrow_mut().push((op, key, Box::new(then)));
            self
        }

        fn run(&self, op: &str, key: &str) {
            let position = self
                .hooks
                .borrow()
                .iter()
                .position(|(o, k, _)| *o == op && k == key);
            if let Some(position) = position {
                let (_, _, then) = self.hooks.borrow_mut().remove(position);
                then();
            }
        }
    }

    impl KeyValue for Between<'_> {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.run("get", key);
            self.kv.get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.run("set", key);
            self.kv.set(key, value)
        }
        fn set_all(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            for (key, _) in entries {
                self.run("set", key);
            }
            self.kv.set_all(entries)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.run("delete", key);
            self.kv.delete(key)
        }
        fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
            self.kv.keys_with_prefix(prefix)
        }
    }

    #[derive(Default)]
    pub struct MemoryKv {
        pub map: RefCell<BTreeMap<String, Vec<u8>>>,
        pub round_trips: Cell<usize>,
        pub fail_next: Cell<bool>,
        /// Fail the set with this 1-based number (counted from the last reset).
        pub fail_nth_set: Cell<Option<usize>>,
        /// Fail the next single `set` of a key starting with this.
        pub fail_set_starting: RefCell<Option<String>>,
        pub sets: Cell<usize>,
    }

    impl MemoryKv {
        fn trip(&self) -> Result<(), StoreError> {
            self.round_trips.set(self.round_trips.get() + 1);
            if self.fail_next.replace(false) {
                return Err(StoreError::Unavailable("injected".into()));
            }
            Ok(())
        }

        pub fn keys(&self) -> Vec<String> {
            self.map.borrow().keys().cloned().collect()
        }
    }

    impl KeyValue for MemoryKv {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.trip()?;
            Ok(self.map.borrow().get(key).cloned())
        }

        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.trip()?;
            self.sets.set(self.sets.get() + 1);
            if self.fail_nth_set.get() == Some(self.sets.get()) {
                return Err(StoreError::Unavailable("injected".into()));
            }
            let armed = self.fail_set_starting.borrow().clone();
            if armed.is_some_and(|prefix| key.starts_with(&prefix)) {
                self.fail_set_starting.replace(None);
                return Err(StoreError::Unavailable("injected".into()));
            }
            self.map
                .borrow_mut()
                .insert(key.to_string(), value.to_vec());
            Ok(())
        }

        /// One round trip and one counted set, all or nothing (like Spin's stores).
        fn set_all(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            self.trip()?;
            self.sets.set(self.sets.get() + 1);
            if self.fail_nth_set.get() == Some(self.sets.get()) {
                return Err(StoreError::Unavailable("injected".into()));
            }
            let mut map = self.map.borrow_mut();
            for (key, value) in entries {
                map.insert(key.clone(), value.clone());
            }
            Ok(())
        }

        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.trip()?;
            self.map.borrow_mut().remove(key);
            Ok(())
        }

        fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
            self.trip()?;
            Ok(self
                .map
                .borrow()
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        }
    }
}
