//! Helpers for storage plugins (`hyperplane:storage/storage@0.1.0`).
//!
//! [`ObjectSource`] and [`ObjectSink`] abstract the host's `byte-source` and `byte-sink` so
//! that a store's logic runs natively in unit tests against [`MemorySource`] and
//! [`MemorySink`]; inside a component the host's resources implement them.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

pub use crate::storage_bindings::exports::hyperplane::storage::blob_store::Guest;
pub use crate::storage_bindings::hyperplane::storage::streams::{ByteSink, ByteSource};
pub use crate::storage_bindings::hyperplane::storage::types::{ByteRange, Error, ObjectInfo, ObjectPage, StoreInfo};

/// The size of the pieces a store should ask a source for (the host serves at most 1 MiB per
/// read) and hand to a sink.
pub const PIECE_BYTES: u32 = 1024 * 1024;

/// The store `init` configured on this component instance, for the exported functions to use:
/// `static STORE: ConfiguredStore<MyStore> = ConfiguredStore::new();`.
#[derive(Debug)]
pub struct ConfiguredStore<Store> {
    store: RwLock<Option<Arc<Store>>>,
}

impl<Store> ConfiguredStore<Store> {
    pub const fn new() -> Self {
        ConfiguredStore { store: RwLock::new(None) }
    }

    /// Replaces the configured store (`init` may run again on the same instance).
    pub fn configure(&self, store: Store) {
        *self.store.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(store));
    }

    /// The configured store; [`Error::Internal`] before `init`.
    pub fn get(&self) -> Result<Arc<Store>, Error> {
        self.store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| Error::Internal("the store was called before `init` on this instance".into()))
    }
}

impl<Store> Default for ConfiguredStore<Store> {
    fn default() -> Self {
        ConfiguredStore::new()
    }
}

/// The operations of `streams.byte-source`, with the host's semantics.
pub trait ObjectSource {
    /// Total length, when the host knows it.
    fn size(&self) -> Option<u64>;
    /// Up to `max` bytes; an empty vector at the end.
    fn read(&self, max: u32) -> Result<Vec<u8>, String>;
}

/// The operations of `streams.byte-sink`.
pub trait ObjectSink {
    /// Takes all of `bytes`; fails when the receiver went away.
    fn write(&self, bytes: &[u8]) -> Result<(), String>;
}

impl ObjectSource for ByteSource {
    fn size(&self) -> Option<u64> {
        ByteSource::size(self)
    }

    fn read(&self, max: u32) -> Result<Vec<u8>, String> {
        ByteSource::read(self, max)
    }
}

impl ObjectSink for ByteSink {
    fn write(&self, bytes: &[u8]) -> Result<(), String> {
        ByteSink::write(self, bytes)
    }
}

/// Bytes in memory, read like a `byte-source`, for native unit tests. `fail_after` makes the
/// source fail once that many bytes were read (an upload that breaks off).
#[derive(Debug, Default)]
pub struct MemorySource {
    bytes: Vec<u8>,
    known_size: bool,
    fail_after: Option<usize>,
    position: Mutex<usize>,
}

impl MemorySource {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        MemorySource { bytes: bytes.into(), known_size: true, fail_after: None, position: Mutex::new(0) }
    }

    /// A source whose `size` is `None`, like a chunked HTTP upload.
    pub fn without_size(mut self) -> Self {
        self.known_size = false;
        self
    }

    /// A source that fails once `after` bytes were read.
    pub fn failing_after(mut self, after: usize) -> Self {
        self.fail_after = Some(after);
        self
    }
}

impl ObjectSource for MemorySource {
    fn size(&self) -> Option<u64> {
        self.known_size.then_some(self.bytes.len() as u64)
    }

    fn read(&self, max: u32) -> Result<Vec<u8>, String> {
        let mut position = self.position.lock().unwrap_or_else(PoisonError::into_inner);
        if self.fail_after.is_some_and(|after| *position >= after) {
            return Err("the client went away".into());
        }
        let start = *position;
        let mut end = start.saturating_add(max as usize).min(self.bytes.len());
        if let Some(after) = self.fail_after {
            end = end.min(after.max(start));
        }
        *position = end;
        Ok(self.bytes[start..end].to_vec())
    }
}

/// A sink collecting what it is given, for native unit tests.
#[derive(Debug, Default)]
pub struct MemorySink {
    bytes: Mutex<Vec<u8>>,
}

impl MemorySink {
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ObjectSink for MemorySink {
    fn write(&self, bytes: &[u8]) -> Result<(), String> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_there_only_once_configured() {
        let store: ConfiguredStore<u32> = ConfiguredStore::new();
        assert!(matches!(store.get(), Err(Error::Internal(_))));
        store.configure(7);
        assert_eq!(store.get().map(|store| *store).ok(), Some(7));
    }

    #[test]
    fn memory_source_reads_in_pieces_and_can_break_off() {
        let source = MemorySource::new(vec![7u8; 10]);
        assert_eq!(source.read(4).map(|piece| piece.len()), Ok(4));
        assert_eq!(source.read(100).map(|piece| piece.len()), Ok(6));
        assert_eq!(source.read(100), Ok(Vec::new()));

        let breaking = MemorySource::new(vec![1u8; 10]).failing_after(5);
        assert_eq!(breaking.read(100).map(|piece| piece.len()), Ok(5));
        assert!(breaking.read(100).is_err());
    }
}
