//! Spin's variables and key-value store behind the core's traits.

use std::cell::OnceCell;

use spin_sdk::wit::wasi::keyvalue::batch;
use spin_sdk::wit::wasi::keyvalue::store::{self as wasi_kv, Bucket};

use crate::config::{ConfigError, Variables};
use crate::store::layout::{Label, label_of};
use crate::store::{KeyValue, StoreError};

pub struct SpinVariables;

impl Variables for SpinVariables {
    fn get(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        use spin_sdk::variables::Error;
        match spin_sdk::variables::get(name) {
            Ok(value) => Ok(Some(value).filter(|value| !value.is_empty())),
            Err(Error::Undefined(_)) => Ok(None),
            // The provider (Vault, Azure Key Vault) did not answer: not "unset".
            Err(Error::Provider(_) | Error::Other(_)) => Err(ConfigError::Unavailable(name)),
            // A name Spin refuses: a build that asks for it is wrong, not the provider.
            Err(Error::InvalidName(_)) => Err(ConfigError::Invalid(
                name,
                "not a variable name Spin accepts",
            )),
        }
    }
}

/// Spin's stores through `wasi:keyvalue` (Spin 3.0 and later), whose `batch` writes a
/// slot and its head in one round trip. Every operation goes through it, so one bucket
/// per label serves the request: a callback opens only `default`. Every key goes to the
/// label [`label_of`] names.
#[derive(Default)]
pub struct SpinKeyValue {
    buckets: [OnceCell<Result<Bucket, StoreError>>; Label::ALL.len()],
}

impl SpinKeyValue {
    fn bucket(&self, key: &str) -> Result<&Bucket, StoreError> {
        let label = label_of(key);
        let slot = Label::ALL.iter().position(|l| *l == label).unwrap_or(0);
        self.buckets[slot]
            .get_or_init(|| wasi_kv::open(label.name()).map_err(|e| store_error(label, e)))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl KeyValue for SpinKeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.bucket(key)?
            .get(key)
            .map_err(|e| store_error(label_of(key), e))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.bucket(key)?
            .set(key, value)
            .map_err(|e| store_error(label_of(key), e))
    }

    fn set_all(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let Some((first, _)) = entries.first() else {
            return Ok(());
        };
        batch::set_many(self.bucket(first)?, entries).map_err(|e| store_error(label_of(first), e))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.bucket(key)?
            .delete(key)
            .map_err(|e| store_error(label_of(key), e))
    }

    /// Every key of the prefix's label (`list-keys`, following its cursor should a host
    /// page the answer), those starting with `prefix`.
    fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let bucket = self.bucket(prefix)?;
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = bucket
                .list_keys(cursor.as_deref())
                .map_err(|e| store_error(label_of(prefix), e))?;
            keys.extend(page.keys.into_iter().filter(|key| key.starts_with(prefix)));
            match page.cursor {
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => return Ok(keys),
            }
        }
    }
}

fn store_error(label: Label, error: wasi_kv::Error) -> StoreError {
    match error {
        wasi_kv::Error::AccessDenied | wasi_kv::Error::NoSuchStore => {
            StoreError::NotConfigured(label.name())
        }
        wasi_kv::Error::Other(other) => StoreError::Unavailable(other),
    }
}
