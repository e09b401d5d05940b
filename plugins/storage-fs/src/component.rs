//! The component's export of `hyperplane:storage/blob-store`: an [`FsStore`] per instance.

use std::sync::{Arc, PoisonError, RwLock};

use hyperplane_guest::storage::{ByteRange, ByteSink, ByteSource, Error, Guest, ObjectInfo, ObjectPage, StoreInfo};

use crate::FsStore;

static STORE: RwLock<Option<Arc<FsStore>>> = RwLock::new(None);

/// The store `init` configured; [`Error::Internal`] before `init`.
fn configured_store() -> Result<Arc<FsStore>, Error> {
    STORE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| Error::Internal("the store was called before `init` on this instance".into()))
}

/// The exported blob store.
pub struct FsBlobStore;

impl Guest for FsBlobStore {
    fn init(config: String) -> Result<StoreInfo, Error> {
        let store = FsStore::from_config(&config)?;
        let info = store.info();
        *STORE.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(store));
        hyperplane_guest::log::info("storage-fs ready", &[("location", &info.location)]);
        Ok(info)
    }

    fn put(key: String, data: &ByteSource) -> Result<ObjectInfo, Error> {
        configured_store()?.put(&key, data)
    }

    fn get(key: String, range: Option<ByteRange>, sink: &ByteSink) -> Result<u64, Error> {
        configured_store()?.get(&key, range, sink)
    }

    fn stat(key: String) -> Result<Option<ObjectInfo>, Error> {
        configured_store()?.stat(&key)
    }

    fn delete(key: String) -> Result<(), Error> {
        configured_store()?.delete(&key)
    }

    fn list(prefix: String, cursor: Option<String>, limit: u32) -> Result<ObjectPage, Error> {
        configured_store()?.list(&prefix, cursor.as_deref(), limit)
    }
}

hyperplane_guest::export_blob_store!(FsBlobStore);
