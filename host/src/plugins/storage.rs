//! Storage plugins (`hyperplane:storage/storage@0.1.0`): a pool of blob store component
//! instances behind [`BlobStore`], and the host side of `hyperplane:storage/streams`.
//!
//! The host owns the bytes on both sides of a call: `put` reads from a [`StorageSource`] (bytes
//! in memory or any async reader), `get` writes into a [`StorageSink`] (a bounded buffer or any
//! async writer), at most [`MAX_STREAM_PIECE_BYTES`] per call, so an object is never copied into
//! the guest whole. A plugin reaches its backend only through what the operator granted: one
//! preopened directory or outgoing HTTP to listed hosts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wasmtime::Store;
use wasmtime::component::{Instance as ComponentInstance, InstancePre, Linker, Resource};

use super::bindings::storage::hyperplane::storage::streams::{Host, HostByteSink, HostByteSource};
use super::bindings::storage::hyperplane::storage::types::{ByteRange, Error as StorageError, ObjectInfo, ObjectPage};
use super::bindings::storage::{BlobStoreExports, BlobStoreIndices};
use super::errors::{CallError, LoadError};
use super::http::OutgoingHttpAllowList;
use super::pool::{GuestExports, InstancePool, PoolSettings, PoolStatistics};
use super::runtime::{PluginRuntime, RuntimeShared};
use super::settings::ComponentSource;
use super::state::MemoryStateStore;
use super::store_data::{ProviderContext, StoreData};
use super::transfer::MIN_TRANSFER_BYTES_PER_SEC;
use super::version::check_storage_exports;

/// Largest piece one `read` of a source returns and one `write` into a sink accepts.
pub const MAX_STREAM_PIECE_BYTES: u32 = 1024 * 1024;

/// What the operator configured for one storage backend.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// The operator's name for the backend; labels its logs and metrics.
    pub name: String,
    pub component: ComponentSource,
    /// Passed to `init` on every fresh instance.
    pub config_json: String,
    /// Deadline of one call; a transfer gets its size at [`MIN_TRANSFER_BYTES_PER_SEC`] on top.
    pub call_timeout: Duration,
    pub memory_limit_bytes: usize,
    /// The one directory the plugin may use (created if missing), seen inside it as `/store`.
    pub granted_directory: Option<PathBuf>,
    /// Outgoing HTTP allow-list, as for drivers (`host[:port]`).
    pub allowed_http_hosts: Vec<String>,
    pub max_response_bytes: usize,
}

/// A loaded storage backend. Cheap to clone; clones share the instance pool.
#[derive(Clone)]
pub struct BlobStore {
    pool: Arc<InstancePool<BlobStoreExports>>,
    location: Arc<str>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BlobStore")
            .field("name", &self.pool.name())
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    /// Compiles the component (or takes it from the cache), links it against the storage world
    /// and runs `init` on a first instance.
    pub async fn load(runtime: &PluginRuntime, settings: StorageSettings) -> Result<BlobStore, LoadError> {
        let name: Arc<str> = settings.name.as_str().into();
        if let Some(directory) = &settings.granted_directory {
            std::fs::create_dir_all(directory)
                .map_err(|source| LoadError::GrantedDirectory { path: directory.clone(), source })?;
        }
        let http_allow_list = OutgoingHttpAllowList::parse(name.clone(), &settings.allowed_http_hosts)?;
        let context = Arc::new(ProviderContext {
            name,
            endpoints: Default::default(),
            http_allow_list,
            // Not reachable: the storage world imports no state interface.
            state_store: Arc::new(MemoryStateStore::new()),
            memory_limit_bytes: settings.memory_limit_bytes,
            auth: None,
            granted_directory: settings.granted_directory,
        });
        let (pool, info) = InstancePool::<BlobStoreExports>::load(
            runtime,
            PoolSettings {
                component: settings.component,
                context,
                config_json: settings.config_json,
                call_timeout: settings.call_timeout,
                max_response_bytes: settings.max_response_bytes,
            },
        )
        .await?;
        tracing::info!(storage = %pool.name(), location = %info.location, "loaded storage backend");
        Ok(BlobStore { pool, location: info.location.into() })
    }

    pub fn name(&self) -> &str {
        self.pool.name()
    }

    /// Where the backend keeps its objects, as its plugin describes it (no secret).
    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn statistics(&self) -> PoolStatistics {
        self.pool.statistics()
    }

    /// Stores what `source` yields under `key`, atomically.
    pub async fn put(&self, key: &str, source: StorageSource) -> Result<ObjectInfo, CallError> {
        let timeout = self.transfer_timeout(source.size.unwrap_or(0));
        self.pool
            .call_within("put", timeout, move |mut instance| async move {
                // `data` is a borrow: the host keeps the source and drops it after the call.
                let result = match instance.store.data_mut().table.push(source) {
                    Ok(source) => {
                        let lent = Resource::new_borrow(source.rep());
                        let result = instance.exports.call_put(&mut instance.store, key, lent).await;
                        let _ = instance.store.data_mut().table.delete(source);
                        result
                    }
                    Err(error) => Err(error.into()),
                };
                (instance, result)
            })
            .await
    }

    /// Writes the object (or `range` of it) into `sink`; returns how many bytes it wrote.
    pub async fn get(&self, key: &str, range: Option<ByteRange>, sink: StorageSink) -> Result<u64, CallError> {
        let timeout = self.transfer_timeout(sink.limit.unwrap_or(0));
        self.pool
            .call_within("get", timeout, move |mut instance| async move {
                let result = match instance.store.data_mut().table.push(sink) {
                    Ok(sink) => {
                        let lent = Resource::new_borrow(sink.rep());
                        let result = instance.exports.call_get(&mut instance.store, key, range, lent).await;
                        instance.store.data_mut().take_back_sink(sink).await;
                        result
                    }
                    Err(error) => Err(error.into()),
                };
                (instance, result)
            })
            .await
    }

    /// The object (or `range` of it) in memory, refusing more than `max_bytes`.
    pub async fn get_bytes(&self, key: &str, range: Option<ByteRange>, max_bytes: u64) -> Result<Vec<u8>, CallError> {
        let (sink, buffer) = StorageSink::buffer(max_bytes);
        self.get(key, range, sink).await?;
        Ok(buffer.take())
    }

    pub async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, CallError> {
        self.pool
            .call("stat", move |mut instance| async move {
                let result = instance.exports.call_stat(&mut instance.store, key).await;
                (instance, result)
            })
            .await
    }

    /// Removes the object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), CallError> {
        self.pool
            .call("delete", move |mut instance| async move {
                let result = instance.exports.call_delete(&mut instance.store, key).await;
                (instance, result)
            })
            .await
    }

    /// One page of the objects under `prefix`, after `cursor`.
    pub async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<ObjectPage, CallError> {
        self.pool
            .call("list", move |mut instance| async move {
                let result = instance.exports.call_list(&mut instance.store, prefix, cursor, limit).await;
                (instance, result)
            })
            .await
    }

    fn transfer_timeout(&self, size: u64) -> Duration {
        self.pool.call_timeout.saturating_add(Duration::from_secs_f64(size as f64 / MIN_TRANSFER_BYTES_PER_SEC as f64))
    }
}

/// Bytes the host hands to a storage plugin's `put`.
pub struct StorageSource {
    size: Option<u64>,
    reader: Box<dyn AsyncRead + Send + Unpin>,
    description: String,
    delivered: u64,
}

impl std::fmt::Debug for StorageSource {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StorageSource")
            .field("size", &self.size)
            .field("description", &self.description)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl StorageSource {
    /// Bytes already in memory.
    pub fn from_bytes(bytes: impl Into<bytes::Bytes>) -> StorageSource {
        let bytes: bytes::Bytes = bytes.into();
        let size = bytes.len() as u64;
        StorageSource::from_reader(std::io::Cursor::new(bytes), Some(size), "the object")
    }

    /// What `reader` yields; when `size` is given, a reader that ends early or yields more is an
    /// error the plugin sees (and then abandons the object). `description` names the data in
    /// those errors.
    pub fn from_reader(
        reader: impl AsyncRead + Send + Unpin + 'static,
        size: Option<u64>,
        description: impl Into<String>,
    ) -> StorageSource {
        StorageSource { size, reader: Box::new(reader), description: description.into(), delivered: 0 }
    }

    /// Reads up to `max` bytes (at most [`MAX_STREAM_PIECE_BYTES`]), filling the piece unless
    /// the reader ends; an empty vector at the end.
    async fn read_piece(&mut self, max: u32) -> Result<Vec<u8>, String> {
        let mut length = max.min(MAX_STREAM_PIECE_BYTES) as usize;
        if let Some(size) = self.size {
            // One byte past the announced size shows a reader that yields too much.
            length = length.min(size.saturating_sub(self.delivered).saturating_add(1) as usize);
        }
        let mut piece = vec![0; length];
        let mut filled = 0;
        while filled < length {
            match self.reader.read(&mut piece[filled..]).await {
                Ok(0) => break,
                Ok(count) => filled += count,
                Err(error) => return Err(format!("reading {}: {error}", self.description)),
            }
        }
        piece.truncate(filled);
        self.delivered += filled as u64;
        match self.size {
            Some(size) if self.delivered > size => {
                Err(format!("{} is longer than its announced {size} bytes", self.description))
            }
            Some(size) if filled == 0 && self.delivered < size && length > 0 => {
                Err(format!("{} ended after {} of {size} bytes", self.description, self.delivered))
            }
            _ => Ok(piece),
        }
    }
}

/// Where a storage plugin's `get` writes: a buffer of bounded size or any async writer.
pub struct StorageSink {
    target: SinkTarget,
    /// Most bytes accepted; more is an error the plugin sees.
    limit: Option<u64>,
    written: Arc<AtomicU64>,
}

enum SinkTarget {
    Buffer(SinkBuffer),
    Writer(Box<dyn AsyncWrite + Send + Unpin>),
}

/// The bytes a buffer sink collected; readable after the call.
#[derive(Clone, Default)]
pub struct SinkBuffer(Arc<Mutex<Vec<u8>>>);

impl SinkBuffer {
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl std::fmt::Debug for StorageSink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StorageSink")
            .field("limit", &self.limit)
            .field("written", &self.written.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl StorageSink {
    /// A sink collecting at most `limit` bytes in memory.
    pub fn buffer(limit: u64) -> (StorageSink, SinkBuffer) {
        let buffer = SinkBuffer::default();
        let sink = StorageSink {
            target: SinkTarget::Buffer(buffer.clone()),
            limit: Some(limit),
            written: Arc::new(AtomicU64::new(0)),
        };
        (sink, buffer)
    }

    /// A sink writing into `writer` (such as one half of a `tokio::io::duplex` whose other half
    /// streams an HTTP response), at most `limit` bytes when given.
    pub fn writer(writer: impl AsyncWrite + Send + Unpin + 'static, limit: Option<u64>) -> StorageSink {
        StorageSink { target: SinkTarget::Writer(Box::new(writer)), limit, written: Arc::new(AtomicU64::new(0)) }
    }

    /// Counts the bytes written, also after the sink went to the plugin.
    pub fn written(&self) -> Arc<AtomicU64> {
        self.written.clone()
    }

    /// Ends the stream for a reader on the other side of a writer sink.
    pub(super) async fn finish(&mut self) {
        if let SinkTarget::Writer(writer) = &mut self.target {
            let _ = writer.shutdown().await;
        }
    }

    pub(super) async fn write_piece(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        if bytes.len() > MAX_STREAM_PIECE_BYTES as usize {
            return Err(format!("a write may carry at most {MAX_STREAM_PIECE_BYTES} bytes"));
        }
        let written = self.written.load(Ordering::Relaxed).saturating_add(bytes.len() as u64);
        if let Some(limit) = self.limit.filter(|limit| written > *limit) {
            return Err(format!("the object is longer than the {limit} bytes asked for"));
        }
        match &mut self.target {
            SinkTarget::Buffer(buffer) => {
                buffer.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(&bytes)
            }
            SinkTarget::Writer(writer) => {
                writer.write_all(&bytes).await.map_err(|error| format!("the receiver went away: {error}"))?
            }
        }
        self.written.store(written, Ordering::Relaxed);
        Ok(())
    }
}

impl Host for StoreData {}

impl StoreData {
    /// Takes back a sink lent to the guest for one call and ends its stream.
    pub(super) async fn take_back_sink(&mut self, sink: Resource<StorageSink>) {
        if let Ok(mut sink) = self.table.delete(sink) {
            sink.finish().await;
        }
    }
}

impl HostByteSource for StoreData {
    async fn size(&mut self, source: Resource<StorageSource>) -> wasmtime::Result<Option<u64>> {
        Ok(self.table.get(&source)?.size)
    }

    async fn read(&mut self, source: Resource<StorageSource>, max: u32) -> wasmtime::Result<Result<Vec<u8>, String>> {
        Ok(self.table.get_mut(&source)?.read_piece(max).await)
    }

    async fn drop(&mut self, source: Resource<StorageSource>) -> wasmtime::Result<()> {
        self.table.delete(source)?;
        Ok(())
    }
}

impl HostByteSink for StoreData {
    async fn write(&mut self, sink: Resource<StorageSink>, bytes: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        Ok(self.table.get_mut(&sink)?.write_piece(bytes).await)
    }

    async fn drop(&mut self, sink: Resource<StorageSink>) -> wasmtime::Result<()> {
        self.table.get_mut(&sink)?.finish().await;
        self.table.delete(sink)?;
        Ok(())
    }
}

impl GuestExports for BlobStoreExports {
    type Indices = BlobStoreIndices;
    type InitOutput = super::bindings::storage::hyperplane::storage::types::StoreInfo;

    fn linker(runtime: &RuntimeShared) -> &Linker<StoreData> {
        &runtime.storage_linker
    }

    fn check_exports<'a>(label: &str, export_names: impl Iterator<Item = &'a str>) -> Result<(), LoadError> {
        check_storage_exports(label, export_names)
    }

    fn world() -> &'static str {
        "hyperplane:storage@0.1.0"
    }

    fn indices(instance_pre: &InstancePre<StoreData>) -> wasmtime::Result<Self::Indices> {
        BlobStoreIndices::new(instance_pre)
    }

    fn load(
        indices: &Self::Indices,
        store: &mut Store<StoreData>,
        instance: &ComponentInstance,
    ) -> wasmtime::Result<Self> {
        indices.load(store, instance)
    }

    async fn init(
        &self,
        store: &mut Store<StoreData>,
        config_json: &str,
    ) -> wasmtime::Result<Result<Self::InitOutput, CallError>> {
        Ok(self.call_init(store, config_json).await?.map_err(CallError::Storage))
    }
}

impl From<StorageError> for CallError {
    fn from(error: StorageError) -> Self {
        CallError::Storage(error)
    }
}

/// Renders a storage plugin's WIT error as `kind: message`.
pub fn describe_storage_error(error: &StorageError) -> String {
    match error {
        StorageError::NotFound(message) => format!("not found: {message}"),
        StorageError::Invalid(message) => format!("invalid request: {message}"),
        StorageError::InvalidConfig(message) => format!("invalid configuration: {message}"),
        StorageError::Denied(message) => format!("denied: {message}"),
        StorageError::Unavailable(message) => format!("backend unavailable: {message}"),
        StorageError::Internal(message) => format!("internal error: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_source_reads_full_pieces_and_checks_its_announced_size() {
        let bytes: Vec<u8> = (0..(MAX_STREAM_PIECE_BYTES as usize + 10)).map(|index| index as u8).collect();
        let mut source = StorageSource::from_bytes(bytes.clone());
        let first = source.read_piece(u32::MAX).await.expect("reads");
        assert_eq!(first.len(), MAX_STREAM_PIECE_BYTES as usize, "capped at the piece limit");
        let second = source.read_piece(u32::MAX).await.expect("reads");
        assert_eq!([first, second].concat(), bytes);
        assert_eq!(source.read_piece(100).await, Ok(Vec::new()));

        let mut short = StorageSource::from_reader(std::io::Cursor::new(vec![1_u8; 10]), Some(20), "the upload");
        assert_eq!(short.read_piece(100).await.map(|piece| piece.len()), Ok(10));
        assert_eq!(short.read_piece(100).await, Err("the upload ended after 10 of 20 bytes".to_owned()));

        let mut long = StorageSource::from_reader(std::io::Cursor::new(vec![1_u8; 30]), Some(20), "the upload");
        assert_eq!(long.read_piece(100).await, Err("the upload is longer than its announced 20 bytes".to_owned()));

        let mut unsized_source = StorageSource::from_reader(std::io::Cursor::new(vec![1_u8; 30]), None, "the upload");
        assert_eq!(unsized_source.read_piece(100).await.map(|piece| piece.len()), Ok(30));
    }

    #[tokio::test]
    async fn a_buffer_sink_refuses_more_than_its_limit() {
        let (mut sink, buffer) = StorageSink::buffer(5);
        assert_eq!(sink.write_piece(vec![1, 2, 3]).await, Ok(()));
        assert_eq!(
            sink.write_piece(vec![4, 5, 6]).await,
            Err("the object is longer than the 5 bytes asked for".into())
        );
        assert_eq!(buffer.take(), vec![1, 2, 3]);
    }
}
