//! The provider's persistent key-value store (`hyperplane:host/state`), raw and typed as JSON.
//!
//! The host may run several instances of a component at once and discards instances after a
//! failure, so anything that must outlive one call or be seen by concurrent calls belongs here,
//! not in guest memory. [`KeyValueStore`] abstracts the store so driver logic can be tested
//! natively against [`MemoryStore`]; inside a component use [`HostStore`]. [`JsonState`] adds
//! serde on top, including an optimistic read-modify-write loop over compare-and-swap.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::driver_bindings::hyperplane::host::state::StateError;
use crate::types::{BackendError, Error as DriverError};

/// How often [`JsonState::update_json`] retries after losing a compare-and-swap race.
pub const MAX_UPDATE_ATTEMPTS: u32 = 100;

/// The operations of `hyperplane:host/state`, with the host's semantics.
pub trait KeyValueStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StateError>;
    /// Returns whether the key existed.
    fn delete(&self, key: &str) -> Result<bool, StateError>;
    /// All entries whose key starts with `prefix`, ordered by key.
    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError>;
    /// Writes `value` (deletes the key for `None`) only if the current value equals `expected`
    /// (`None`: the key is absent). Returns whether it wrote.
    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, value: Option<&[u8]>) -> Result<bool, StateError>;
}

/// The host's store, through the component's imports. Only usable inside a component.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostStore;

impl KeyValueStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        crate::driver_bindings::hyperplane::host::state::get(key)
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        crate::driver_bindings::hyperplane::host::state::set(key, value)
    }

    fn delete(&self, key: &str) -> Result<bool, StateError> {
        crate::driver_bindings::hyperplane::host::state::delete(key)
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        crate::driver_bindings::hyperplane::host::state::scan(prefix)
    }

    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, value: Option<&[u8]>) -> Result<bool, StateError> {
        crate::driver_bindings::hyperplane::host::state::compare_and_swap(key, expected, value)
    }
}

/// An in-memory store with the host's semantics, for native unit tests. Thread-safe, so tests
/// can simulate several component instances sharing one provider store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-written: every operation
        // is a single map call.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl KeyValueStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.entries().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.entries().insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<bool, StateError> {
        Ok(self.entries().remove(key).is_some())
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        Ok(self
            .entries()
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, value: Option<&[u8]>) -> Result<bool, StateError> {
        let mut entries = self.entries();
        if entries.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        match value {
            Some(value) => entries.insert(key.to_owned(), value.to_vec()),
            None => entries.remove(key),
        };
        Ok(true)
    }
}

impl<Store: KeyValueStore + ?Sized> KeyValueStore for &Store {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        (**self).get(key)
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        (**self).set(key, value)
    }

    fn delete(&self, key: &str) -> Result<bool, StateError> {
        (**self).delete(key)
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        (**self).scan(prefix)
    }

    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, value: Option<&[u8]>) -> Result<bool, StateError> {
        (**self).compare_and_swap(key, expected, value)
    }
}

impl<Store: KeyValueStore + ?Sized> KeyValueStore for std::sync::Arc<Store> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        (**self).get(key)
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        (**self).set(key, value)
    }

    fn delete(&self, key: &str) -> Result<bool, StateError> {
        (**self).delete(key)
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        (**self).scan(prefix)
    }

    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, value: Option<&[u8]>) -> Result<bool, StateError> {
        (**self).compare_and_swap(key, expected, value)
    }
}

/// Failures of [`JsonState`]. Converts into the driver [`DriverError`] with `?`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state store failed for key `{key}`: {source}")]
    Store { key: String, source: StateError },
    #[error("state value of key `{key}` is not valid: {message}")]
    Decode { key: String, message: String },
    #[error("state value for key `{key}` cannot be encoded: {message}")]
    Encode { key: String, message: String },
    #[error("state key `{key}` kept changing concurrently; gave up after {attempts} attempts")]
    Contended { key: String, attempts: u32 },
}

impl From<Error> for DriverError {
    /// The store being unavailable or full is transient for the caller (`unavailable`); a value
    /// that does not decode is the driver's own backend failing (`backend`).
    fn from(error: Error) -> Self {
        match error {
            Error::Store { .. } | Error::Contended { .. } => DriverError::Unavailable(error.to_string()),
            Error::Decode { .. } | Error::Encode { .. } => {
                DriverError::Backend(BackendError { code: -1, message: error.to_string() })
            }
        }
    }
}

/// A decoded value together with the exact bytes it was read from, which is what
/// compare-and-swap compares against.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub bytes: Vec<u8>,
}

/// What an [`JsonState::update_json`] decision does to the key.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// Leave the key as it is.
    Keep,
    /// Store this value.
    Put(T),
    /// Delete the key.
    Remove,
}

/// Typed JSON access to a [`KeyValueStore`].
#[derive(Debug, Clone, Default)]
pub struct JsonState<Store> {
    store: Store,
}

/// Typed JSON access to the host's store.
pub fn host_state() -> JsonState<HostStore> {
    JsonState::new(HostStore)
}

impl<Store: KeyValueStore> JsonState<Store> {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The raw store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        Ok(self.get_versioned(key)?.map(|versioned| versioned.value))
    }

    /// Like [`Self::get_json`], keeping the bytes for a later [`Self::compare_and_swap_json`].
    pub fn get_versioned<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>, Error> {
        let bytes = self.store.get(key).map_err(|source| store_error(key, source))?;
        bytes.map(|bytes| Ok(Versioned { value: decode(key, &bytes)?, bytes })).transpose()
    }

    pub fn set_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), Error> {
        let bytes = encode(key, value)?;
        self.store.set(key, &bytes).map_err(|source| store_error(key, source))
    }

    /// Returns whether the key existed.
    pub fn delete(&self, key: &str) -> Result<bool, Error> {
        self.store.delete(key).map_err(|source| store_error(key, source))
    }

    /// All entries under `prefix`, ordered by key, decoded as `T`.
    pub fn scan_json<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, Error> {
        let entries = self.store.scan(prefix).map_err(|source| store_error(prefix, source))?;
        entries
            .into_iter()
            .map(|(key, bytes)| {
                let value = decode(&key, &bytes)?;
                Ok((key, value))
            })
            .collect()
    }

    /// Stores `value` only if the key is absent. Returns whether it wrote.
    pub fn insert_json_if_absent<T: Serialize>(&self, key: &str, value: &T) -> Result<bool, Error> {
        let bytes = encode(key, value)?;
        self.store.compare_and_swap(key, None, Some(&bytes)).map_err(|source| store_error(key, source))
    }

    /// Replaces (or deletes, for `None`) the value only if the key still holds `expected`
    /// (`None`: the key is absent). Returns whether it wrote.
    pub fn compare_and_swap_json<T: Serialize>(
        &self,
        key: &str,
        expected: Option<&Versioned<T>>,
        replacement: Option<&T>,
    ) -> Result<bool, Error> {
        let replacement = replacement.map(|value| encode(key, value)).transpose()?;
        self.store
            .compare_and_swap(key, expected.map(|versioned| versioned.bytes.as_slice()), replacement.as_deref())
            .map_err(|source| store_error(key, source))
    }

    /// Read-modify-write with optimistic concurrency: reads the key, asks `decide` what to do
    /// with the current value, and writes with compare-and-swap; when another writer got there
    /// first, reads again and asks again (up to [`MAX_UPDATE_ATTEMPTS`] times). `decide` may run
    /// several times, so it must not have side effects. Returns the value stored afterwards.
    pub fn update_json<T, E>(
        &self,
        key: &str,
        mut decide: impl FnMut(Option<&T>) -> Result<Change<T>, E>,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let current = self.get_versioned::<T>(key)?;
            let change = decide(current.as_ref().map(|versioned| &versioned.value))?;
            let expected = current.as_ref().map(|versioned| versioned.bytes.as_slice());
            let (replacement, stored) = match change {
                Change::Keep => return Ok(current.map(|versioned| versioned.value)),
                Change::Remove => (None, None),
                Change::Put(value) => (Some(encode(key, &value)?), Some(value)),
            };
            let wrote = self
                .store
                .compare_and_swap(key, expected, replacement.as_deref())
                .map_err(|source| store_error(key, source))?;
            if wrote {
                return Ok(stored);
            }
        }
        Err(Error::Contended { key: key.to_owned(), attempts: MAX_UPDATE_ATTEMPTS }.into())
    }
}

fn store_error(key: &str, source: StateError) -> Error {
    Error::Store { key: key.to_owned(), source }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|error| Error::Decode { key: key.to_owned(), message: error.to_string() })
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|error| Error::Encode { key: key.to_owned(), message: error.to_string() })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn state() -> JsonState<MemoryStore> {
        JsonState::new(MemoryStore::new())
    }

    #[test]
    fn json_round_trip_and_scan_by_prefix() -> Result<(), Error> {
        let state = state();
        state.set_json("instance/a", &1_u32)?;
        state.set_json("instance/b", &2_u32)?;
        state.set_json("instances", &3_u32)?;
        state.set_json("template/a", &4_u32)?;
        assert_eq!(state.get_json::<u32>("instance/b")?, Some(2));
        assert_eq!(state.get_json::<u32>("instance/c")?, None);
        let scanned: Vec<(String, u32)> = state.scan_json("instance/")?;
        assert_eq!(scanned, vec![("instance/a".to_owned(), 1), ("instance/b".to_owned(), 2)]);
        assert!(state.delete("instance/a")?);
        assert!(!state.delete("instance/a")?);
        Ok(())
    }

    #[test]
    fn compare_and_swap_checks_the_exact_previous_value() -> Result<(), Error> {
        let state = state();
        assert!(state.insert_json_if_absent("key", &1_u32)?);
        assert!(!state.insert_json_if_absent("key", &2_u32)?);
        let first = state.get_versioned::<u32>("key")?.ok_or(Error::Contended { key: "key".into(), attempts: 0 })?;
        assert!(state.compare_and_swap_json("key", Some(&first), Some(&5))?);
        assert!(!state.compare_and_swap_json("key", Some(&first), Some(&6))?);
        assert_eq!(state.get_json::<u32>("key")?, Some(5));
        Ok(())
    }

    #[test]
    fn undecodable_values_name_the_key() {
        let state = state();
        state.store().set("broken", b"{not json").ok();
        match state.get_json::<u32>("broken") {
            Err(Error::Decode { key, .. }) => assert_eq!(key, "broken"),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn concurrent_updates_never_lose_an_increment() {
        // Under heavy contention an update may give up (`Contended`); every update that
        // reported success must be in the final count, and none twice.
        let state = Arc::new(JsonState::new(MemoryStore::new()));
        let acknowledged = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (state, acknowledged) = (Arc::clone(&state), Arc::clone(&acknowledged));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let updated = state.update_json::<u64, Error>("counter", |current| {
                            Ok(Change::Put(current.copied().unwrap_or(0) + 1))
                        });
                        if updated.is_ok() {
                            acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().ok();
        }
        let acknowledged = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
        assert!(acknowledged > 0);
        assert_eq!(state.get_json::<u64>("counter").ok().flatten(), Some(acknowledged));
    }

    #[test]
    fn update_can_keep_or_remove() -> Result<(), Error> {
        let state = state();
        state.set_json("key", &1_u32)?;
        let kept = state.update_json::<u32, Error>("key", |_| Ok(Change::Keep))?;
        assert_eq!(kept, Some(1));
        let removed = state.update_json::<u32, Error>("key", |_| Ok(Change::Remove))?;
        assert_eq!(removed, None);
        assert_eq!(state.get_json::<u32>("key")?, None);
        Ok(())
    }
}
