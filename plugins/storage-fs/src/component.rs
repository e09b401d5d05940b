//! The component's export of `hyperplane:storage/blob-store`: an [`FsStore`] per instance.

use hyperplane_guest::storage::{
    ByteRange, ByteSink, ByteSource, ConfiguredStore, Error, Guest, ObjectInfo, ObjectPage, StoreInfo,
};

use crate::FsStore;

static STORE: ConfiguredStore<FsStore> = ConfiguredStore::new();

/// The exported blob store.
pub struct FsBlobStore;

impl Guest for FsBlobStore {
    fn init(config: String) -> Result<StoreInfo, Error> {
        let store = FsStore::from_config(&config)?;
        let info = store.info();
        STORE.configure(store);
        hyperplane_guest::log::info("storage-fs ready", &[("location", &info.location)]);
        Ok(info)
    }

    fn put(key: String, data: &ByteSource) -> Result<ObjectInfo, Error> {
        STORE.get()?.put(&key, data)
    }

    fn get(key: String, range: Option<ByteRange>, sink: &ByteSink) -> Result<u64, Error> {
        STORE.get()?.get(&key, range, sink)
    }

    fn stat(key: String) -> Result<Option<ObjectInfo>, Error> {
        STORE.get()?.stat(&key)
    }

    fn delete(key: String) -> Result<(), Error> {
        STORE.get()?.delete(&key)
    }

    fn list(prefix: String, cursor: Option<String>, limit: u32) -> Result<ObjectPage, Error> {
        STORE.get()?.list(&prefix, cursor.as_deref(), limit)
    }
}

hyperplane_guest::export_blob_store!(FsBlobStore);
