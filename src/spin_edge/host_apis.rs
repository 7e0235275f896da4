//! Spin's variables and key-value store behind the core's traits.

use std::cell::OnceCell;

use spin_sdk::key_value::{self, Store};
use spin_sdk::wit::wasi::keyvalue::{batch, store as wasi_kv};

use crate::config::Variables;
use crate::store::layout::{Label, label_of};
use crate::store::{KeyValue, StoreError};

pub struct SpinVariables;

impl Variables for SpinVariables {
    fn get(&self, name: &str) -> Option<String> {
        spin_sdk::variables::get(name)
            .ok()
            .filter(|value| !value.is_empty())
    }
}

/// Spin's stores, each label opened on first use (a callback opens only `default`,
/// unless it lists a new task). Every key goes to the label [`label_of`] names.
/// Batches go through `wasi:keyvalue`, whose buckets Spin opens on the same stores as
/// `fermyon:spin/key-value` (same label, same keys).
#[derive(Default)]
pub struct SpinKeyValue {
    stores: [OnceCell<Result<Store, StoreError>>; 3],
    buckets: [OnceCell<Result<wasi_kv::Bucket, StoreError>>; 3],
}

impl SpinKeyValue {
    fn store(&self, key: &str) -> Result<&Store, StoreError> {
        let label = label_of(key);
        let slot = Label::ALL.iter().position(|l| *l == label).unwrap_or(0);
        self.stores[slot]
            .get_or_init(|| Store::open(label.name()).map_err(|e| store_error(label, e)))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl SpinKeyValue {
    fn bucket(&self, key: &str) -> Result<&wasi_kv::Bucket, StoreError> {
        let label = label_of(key);
        let slot = Label::ALL.iter().position(|l| *l == label).unwrap_or(0);
        self.buckets[slot]
            .get_or_init(|| wasi_kv::open(label.name()).map_err(|e| bucket_error(label, e)))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl KeyValue for SpinKeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store(key)?
            .get(key)
            .map_err(|e| store_error(label_of(key), e))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.store(key)?
            .set(key, value)
            .map_err(|e| store_error(label_of(key), e))
    }

    fn set_all(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let Some((first, _)) = entries.first() else {
            return Ok(());
        };
        batch::set_many(self.bucket(first)?, entries).map_err(|e| bucket_error(label_of(first), e))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.store(key)?
            .delete(key)
            .map_err(|e| store_error(label_of(key), e))
    }

    fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = self
            .store(prefix)?
            .get_keys()
            .map_err(|e| store_error(label_of(prefix), e))?;
        keys.retain(|key| key.starts_with(prefix));
        Ok(keys)
    }
}

fn store_error(label: Label, error: key_value::Error) -> StoreError {
    match error {
        key_value::Error::AccessDenied | key_value::Error::NoSuchStore => {
            StoreError::NotConfigured(label.name())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn bucket_error(label: Label, error: wasi_kv::Error) -> StoreError {
    match error {
        wasi_kv::Error::AccessDenied | wasi_kv::Error::NoSuchStore => {
            StoreError::NotConfigured(label.name())
        }
        wasi_kv::Error::Other(other) => StoreError::Unavailable(other),
    }
}
