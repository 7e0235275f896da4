//! The one index abstraction: a set of entries kept as one key per entry, so that adding
//! is one `set`, removing is one `delete`, and reading is one `list-keys`. Nothing is ever
//! read, changed and written back, so no interleaving of writers, however late their
//! writes land, can lose an entry another writer added: Spin's store needs no
//! compare-and-swap for it.
//!
//! An entry's name carries what makes it unique to the writer that added it (a submit's
//! nonce, a pipeline's generation, a due time), so a remover only ever deletes the exact
//! entry it judged, never a newer one for the same task.

use super::layout::{
    FINAL_PREFIX, LISTED_PREFIX, OUTBOX_PREFIX, PENDING_PREFIX, PIPELINES_PREFIX, TaskKey,
};
use super::{KeyValue, StoreError};

/// A set of entries under one key prefix.
#[derive(Clone, Copy)]
pub struct Index<'a> {
    kv: &'a dyn KeyValue,
    prefix: &'static str,
}

/// The value of an entry that carries nothing but its name.
pub const PRESENT: &[u8] = b"1";

impl<'a> Index<'a> {
    /// Tasks submitted here and not released by the reconciler:
    /// `pending/{due_ms}/{nonce}/{task key}`.
    pub fn pending(kv: &'a dyn KeyValue) -> Self {
        Self::new(kv, PENDING_PREFIX)
    }

    /// Pipelines not finished: `pipelines/{id}/{generation}`.
    pub fn pipelines(kv: &'a dyn KeyValue) -> Self {
        Self::new(kv, PIPELINES_PREFIX)
    }

    /// Notifications not yet answered with a 2xx: `outbox/{webhook_id}`, the value being
    /// the notification itself.
    pub fn outbox(kv: &'a dyn KeyValue) -> Self {
        Self::new(kv, OUTBOX_PREFIX)
    }

    /// Every task, for `GET /tasks`: `listed/{first_seen_ms}/{task key}`.
    pub fn listed(kv: &'a dyn KeyValue) -> Self {
        Self::new(kv, LISTED_PREFIX)
    }

    /// Final tasks by the day they became final, for retention:
    /// `final/{day}/{task key}`.
    pub fn finals(kv: &'a dyn KeyValue) -> Self {
        Self::new(kv, FINAL_PREFIX)
    }

    /// The key of a listing entry, for a caller that writes it in a batch of its own.
    pub fn listed_key(entry: &str) -> String {
        entry_key(LISTED_PREFIX, entry)
    }

    fn new(kv: &'a dyn KeyValue, prefix: &'static str) -> Self {
        Self { kv, prefix }
    }

    fn key(&self, entry: &str) -> String {
        entry_key(self.prefix, entry)
    }

    /// Adds an entry (one `set`). Adding it again is harmless.
    pub fn add(&self, entry: &str) -> Result<(), StoreError> {
        self.kv.set(&self.key(entry), PRESENT)
    }

    /// Adds an entry that carries a value (the outbox's notifications).
    pub fn put(&self, entry: &str, value: &[u8]) -> Result<(), StoreError> {
        self.kv.set(&self.key(entry), value)
    }

    /// The value of an entry; `None` once it is removed.
    pub fn value(&self, entry: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(&self.key(entry))
    }

    /// Removes exactly this entry (one `delete`).
    pub fn remove(&self, entry: &str) -> Result<(), StoreError> {
        self.kv.delete(&self.key(entry))
    }

    /// Every entry's name, in ascending order (one `list-keys`).
    pub fn entries(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.entries_among(&self.kv.keys_with_prefix(self.prefix)?))
    }

    fn entries_among(&self, keys: &[String]) -> Vec<String> {
        let mut entries: Vec<String> = keys
            .iter()
            .filter_map(|key| key.strip_prefix(self.prefix).map(str::to_string))
            .collect();
        entries.sort_unstable();
        entries
    }
}

/// What retention reads of `default`, from one `list-keys` (there it returns every key
/// of every task).
pub struct DefaultKeys {
    pub listed: Vec<String>,
    pub finals: Vec<String>,
    /// Every give-up mark (`task:{key}:forgotten:{nonce}`), deleted with its task.
    pub marks: Vec<String>,
}

impl DefaultKeys {
    /// The give-up marks of one task.
    pub fn marks_of(&self, key: &TaskKey) -> Vec<String> {
        let prefix = format!("task:{}:forgotten:", key.as_str());
        self.marks
            .iter()
            .filter(|mark| mark.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

/// The listing's entries, the finals' and the give-up marks, from one `list-keys` of
/// `default`, where all live.
pub fn default_keys(kv: &dyn KeyValue) -> Result<DefaultKeys, StoreError> {
    // Every key of `default`: the empty prefix is in that label (tested below).
    let keys = kv.keys_with_prefix("")?;
    Ok(DefaultKeys {
        listed: Index::listed(kv).entries_among(&keys),
        finals: Index::finals(kv).entries_among(&keys),
        marks: keys
            .iter()
            .filter(|k| k.starts_with("task:") && k.contains(":forgotten:"))
            .cloned()
            .collect(),
    })
}

/// The store key of an entry: its index's prefix, then its name.
fn entry_key(prefix: &str, entry: &str) -> String {
    format!("{prefix}{entry}")
}

/// Milliseconds as a fixed-width decimal, so that entries sort by time as strings.
pub fn sortable_ms(ms: u64) -> String {
    format!("{ms:013}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryKv;

    #[test]
    fn entries_are_one_key_each_and_removal_takes_only_the_named_one() {
        let kv = MemoryKv::default();
        let pending = Index::pending(&kv);
        pending.add("0000000000002/n2/job-1").unwrap();
        pending.add("0000000000001/n1/job-1").unwrap();
        pending.add("0000000000001/n1/job-1").unwrap();
        Index::pipelines(&kv).add("p/g").unwrap();
        assert_eq!(
            pending.entries().unwrap(),
            ["0000000000001/n1/job-1", "0000000000002/n2/job-1"]
        );
        // Each operation is one round trip, and none reads before writing.
        kv.round_trips.set(0);
        pending.remove("0000000000001/n1/job-1").unwrap();
        assert_eq!(kv.round_trips.get(), 1);
        assert_eq!(pending.entries().unwrap(), ["0000000000002/n2/job-1"]);
        assert_eq!(Index::pipelines(&kv).entries().unwrap(), ["p/g"]);
    }

    #[test]
    fn the_listing_and_the_finals_are_listed_together_in_one_round_trip() {
        use crate::store::layout::{Label, label_of};
        for prefix in ["", LISTED_PREFIX, FINAL_PREFIX] {
            assert_eq!(label_of(prefix), Label::Default, "{prefix:?}");
        }
        let kv = MemoryKv::default();
        Index::listed(&kv).add("0000000000002/b").unwrap();
        Index::listed(&kv).add("0000000000001/a").unwrap();
        Index::finals(&kv).add("20000/a").unwrap();
        kv.set("task:a", b"{}").unwrap();
        kv.set("task:a:forgotten:n1", b"1").unwrap();
        kv.set("task:ab:forgotten:n2", b"1").unwrap();
        kv.round_trips.set(0);
        let keys = default_keys(&kv).unwrap();
        assert_eq!(kv.round_trips.get(), 1);
        assert_eq!(keys.listed, ["0000000000001/a", "0000000000002/b"]);
        assert_eq!(keys.finals, ["20000/a"]);
        assert_eq!(
            keys.marks_of(&TaskKey::external("a")),
            ["task:a:forgotten:n1"]
        );
    }

    #[test]
    fn times_sort_as_strings() {
        assert!(sortable_ms(999) < sortable_ms(1_000));
        assert_eq!(sortable_ms(1_764_000_000_000).len(), 13);
    }
}
