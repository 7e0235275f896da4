//! Spin's variables and key-value store behind the core's traits.

use std::cell::OnceCell;

use spin_sdk::key_value::{self, Store};

use crate::config::Variables;
use crate::store::{KeyValue, StoreError};

pub struct SpinVariables;

impl Variables for SpinVariables {
    fn get(&self, name: &str) -> Option<String> {
        spin_sdk::variables::get(name)
            .ok()
            .filter(|value| !value.is_empty())
    }
}

/// Spin's `default` store, opened on first use (routes that need no store never open it).
#[derive(Default)]
pub struct SpinKeyValue {
    store: OnceCell<Result<Store, StoreError>>,
}

impl SpinKeyValue {
    fn store(&self) -> Result<&Store, StoreError> {
        self.store
            .get_or_init(|| Store::open_default().map_err(store_error))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl KeyValue for SpinKeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store()?.get(key).map_err(store_error)
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.store()?.set(key, value).map_err(store_error)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.store()?.delete(key).map_err(store_error)
    }
}

fn store_error(error: key_value::Error) -> StoreError {
    match error {
        key_value::Error::AccessDenied | key_value::Error::NoSuchStore => StoreError::NotConfigured,
        other => StoreError::Unavailable(other.to_string()),
    }
}
