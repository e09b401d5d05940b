//! The component's export of `hyperplane:storage/blob-store`: an [`S3Store`] per instance,
//! talking to S3 over outgoing `wasi:http`.

use std::sync::{Arc, PoisonError, RwLock};

use hyperplane_guest::storage::{ByteRange, ByteSink, ByteSource, Error, Guest, ObjectInfo, ObjectPage, StoreInfo};

use crate::config::S3Settings;
use crate::store::S3Store;
use crate::wasi_http::WasiHttpTransport;

static STORE: RwLock<Option<Arc<S3Store<WasiHttpTransport>>>> = RwLock::new(None);

/// The store `init` configured; [`Error::Internal`] before `init`.
fn configured_store() -> Result<Arc<S3Store<WasiHttpTransport>>, Error> {
    STORE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| Error::Internal("the store was called before `init` on this instance".into()))
}

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
        *STORE.write().unwrap_or_else(PoisonError::into_inner) =
            Some(Arc::new(S3Store::new(settings, WasiHttpTransport)));
        Ok(StoreInfo { location })
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

hyperplane_guest::export_blob_store!(S3BlobStore);
