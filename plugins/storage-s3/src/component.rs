//! The component's export of `hyperplane:storage/blob-store`: an [`S3Store`] per instance,
//! talking to S3 over outgoing `wasi:http`.

use hyperplane_guest::storage::{
    ByteRange, ByteSink, ByteSource, ConfiguredStore, Error, Guest, ObjectInfo, ObjectPage, StoreInfo,
};

use crate::config::S3Settings;
use crate::store::S3Store;
use crate::wasi_http::WasiHttpTransport;

static STORE: ConfiguredStore<S3Store<WasiHttpTransport>> = ConfiguredStore::new();

/// The exported blob store.
pub struct S3BlobStore;

impl Guest for S3BlobStore {
    fn init(config: String) -> Result<StoreInfo, Error> {
        let settings = S3Settings::from_config(&config)?;
        let location = settings.location();
        hyperplane_guest::log::info(
            "storage-s3 ready",
            &[("location", &location), ("endpoint", &settings.endpoint.authority)],
        );
        STORE.configure(S3Store::new(settings, WasiHttpTransport));
        Ok(StoreInfo { location })
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

hyperplane_guest::export_blob_store!(S3BlobStore);
