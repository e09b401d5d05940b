//! `hyperplane:host/state`: the per-provider key-value store shared by all instances of a
//! provider, backed by a [`PluginStateStore`] that lives outside the plugin runtime.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::bindings::hyperplane::host::state::{Host, StateError};
use super::store_data::StoreData;

/// Longest key a plugin may use, in bytes.
pub const MAX_STATE_KEY_BYTES: usize = 512;
/// Largest value a plugin may store under one key, in bytes.
pub const MAX_STATE_VALUE_BYTES: usize = 1024 * 1024;

/// Persistent storage of plugin state, partitioned by provider name. The SQL store implements
/// it for production; [`MemoryStateStore`] serves tests.
#[async_trait]
pub trait PluginStateStore: Send + Sync + 'static {
    async fn get(&self, provider: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    async fn set(&self, provider: &str, key: &str, value: &[u8]) -> Result<(), String>;
    /// Returns whether the key existed.
    async fn delete(&self, provider: &str, key: &str) -> Result<bool, String>;
    /// All entries whose key starts with `prefix`, ordered by key.
    async fn scan(&self, provider: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, String>;
    /// Writes `value` (deletes for `None`) only if the current value equals `expected`
    /// (`None`: absent). Returns whether it wrote.
    async fn compare_and_swap(
        &self,
        provider: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<bool, String>;
}

/// An in-memory [`PluginStateStore`] for tests and throwaway setups.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    entries_by_provider_and_key: Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryStateStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_entries<R>(&self, action: impl FnOnce(&mut BTreeMap<(String, String), Vec<u8>>) -> R) -> Result<R, String> {
        let mut entries =
            self.entries_by_provider_and_key.lock().map_err(|_| "memory state store is poisoned".to_string())?;
        Ok(action(&mut entries))
    }
}

#[async_trait]
impl PluginStateStore for MemoryStateStore {
    async fn get(&self, provider: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.with_entries(|entries| entries.get(&(provider.to_string(), key.to_string())).cloned())
    }

    async fn set(&self, provider: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.with_entries(|entries| {
            entries.insert((provider.to_string(), key.to_string()), value.to_vec());
        })
    }

    async fn delete(&self, provider: &str, key: &str) -> Result<bool, String> {
        self.with_entries(|entries| entries.remove(&(provider.to_string(), key.to_string())).is_some())
    }

    async fn scan(&self, provider: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.with_entries(|entries| {
            entries
                .range((provider.to_string(), prefix.to_string())..)
                .take_while(|((entry_provider, key), _)| entry_provider == provider && key.starts_with(prefix))
                .map(|((_, key), value)| (key.clone(), value.clone()))
                .collect()
        })
    }

    async fn compare_and_swap(
        &self,
        provider: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<bool, String> {
        self.with_entries(|entries| {
            let entry_key = (provider.to_string(), key.to_string());
            if entries.get(&entry_key).map(Vec::as_slice) != expected {
                return false;
            }
            match value {
                Some(value) => entries.insert(entry_key, value.to_vec()),
                None => entries.remove(&entry_key),
            };
            true
        })
    }
}

fn check_key(key: &str) -> Result<(), StateError> {
    if key.len() > MAX_STATE_KEY_BYTES {
        return Err(StateError::TooLarge(format!(
            "key of {} bytes exceeds the limit of {MAX_STATE_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), StateError> {
    if value.len() > MAX_STATE_VALUE_BYTES {
        return Err(StateError::TooLarge(format!(
            "value of {} bytes exceeds the limit of {MAX_STATE_VALUE_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}

impl Host for StoreData {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, StateError>> {
        if let Err(error) = check_key(&key) {
            return Ok(Err(error));
        }
        let provider = &self.provider;
        Ok(provider.state_store.get(&provider.name, &key).await.map_err(StateError::Unavailable))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), StateError>> {
        if let Err(error) = check_key(&key).and_then(|()| check_value(&value)) {
            return Ok(Err(error));
        }
        let provider = &self.provider;
        Ok(provider.state_store.set(&provider.name, &key, &value).await.map_err(StateError::Unavailable))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, StateError>> {
        if let Err(error) = check_key(&key) {
            return Ok(Err(error));
        }
        let provider = &self.provider;
        Ok(provider.state_store.delete(&provider.name, &key).await.map_err(StateError::Unavailable))
    }

    async fn scan(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<(String, Vec<u8>)>, StateError>> {
        if let Err(error) = check_key(&prefix) {
            return Ok(Err(error));
        }
        let provider = &self.provider;
        Ok(provider.state_store.scan(&provider.name, &prefix).await.map_err(StateError::Unavailable))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) -> wasmtime::Result<Result<bool, StateError>> {
        let checked = check_key(&key)
            .and_then(|()| expected.as_deref().map_or(Ok(()), check_value))
            .and_then(|()| value.as_deref().map_or(Ok(()), check_value));
        if let Err(error) = checked {
            return Ok(Err(error));
        }
        let provider = &self.provider;
        Ok(provider
            .state_store
            .compare_and_swap(&provider.name, &key, expected.as_deref(), value.as_deref())
            .await
            .map_err(StateError::Unavailable))
    }
}
