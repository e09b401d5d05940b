//! `hyperplane:driver/transfer`: byte streams between the host and a driver — a template's image
//! (whole, or as an [`ImageDelta`] against a version the driver has) in `pull-template`, and the
//! sink an instance's disk is written into in `export-disk`. The host owns the data: a [`ByteSource`] reads a file or any reader
//! (or nothing) asynchronously, at most [`MAX_TRANSFER_READ_BYTES`] per `read`, so one read never
//! costs the guest more than that much memory; the guest's memory cap bounds the rest.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use wasmtime::component::Resource;

use super::bindings::hyperplane::driver::transfer::{Host, HostByteSink, HostByteSource, HostImageDelta};
use super::bindings::hyperplane::driver::types::{ByteSpan, TemplateRef};
use super::storage::StorageSink;
use super::store_data::StoreData;

/// Largest chunk one `read` returns.
pub const MAX_TRANSFER_READ_BYTES: u32 = 1024 * 1024;
/// The slowest transfer a call that reads a byte source is granted time for: such a call's
/// deadline is the provider's call timeout plus the source's size at this rate.
pub const MIN_TRANSFER_BYTES_PER_SEC: u64 = 32 * 1024 * 1024;

/// How many bytes a driver has read from a [`ByteSource`]; shared with the caller, which
/// keeps it after the source went to the driver.
#[derive(Debug, Clone, Default)]
pub struct DeliveredBytes(Arc<AtomicU64>);

impl DeliveredBytes {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A stream of bytes for a driver: a file's contents, any reader's, or nothing.
pub struct ByteSource {
    size: u64,
    file: Option<Box<dyn AsyncRead + Send + Unpin>>,
    description: String,
    delivered: DeliveredBytes,
}

impl std::fmt::Debug for ByteSource {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ByteSource")
            .field("size", &self.size)
            .field("description", &self.description)
            .field("delivered", &self.delivered.get())
            .finish_non_exhaustive()
    }
}

impl ByteSource {
    /// A source of no bytes.
    pub fn empty() -> ByteSource {
        ByteSource { size: 0, file: None, description: "nothing".into(), delivered: DeliveredBytes::default() }
    }

    /// The contents of the file at `path`, whose size is taken now. `description` names the
    /// data in errors the driver sees (never the path).
    pub async fn open_file(path: &Path, description: impl Into<String>) -> io::Result<ByteSource> {
        let file = tokio::fs::File::open(path).await?;
        let size = file.metadata().await?.len();
        Ok(ByteSource::from_reader(file, size, description))
    }

    /// The `size` bytes `reader` yields (a reader that ends early is an error the driver sees).
    pub fn from_reader(
        reader: impl AsyncRead + Send + Unpin + 'static,
        size: u64,
        description: impl Into<String>,
    ) -> ByteSource {
        ByteSource {
            size,
            file: Some(Box::new(reader)),
            description: description.into(),
            delivered: DeliveredBytes::default(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Counts the bytes the driver reads, also after the source was handed over.
    pub fn delivered(&self) -> DeliveredBytes {
        self.delivered.clone()
    }

    /// Extra time a call that reads this source gets on top of its call timeout.
    pub fn transfer_allowance(&self) -> Duration {
        Duration::from_secs_f64(self.size as f64 / MIN_TRANSFER_BYTES_PER_SEC as f64)
    }

    /// Reads up to `max` (at most [`MAX_TRANSFER_READ_BYTES`]) bytes, never past `size`; an
    /// empty vector at the end.
    async fn read_chunk(&mut self, max: u32) -> Result<Vec<u8>, String> {
        let delivered = self.delivered.get();
        let remaining = self.size.saturating_sub(delivered);
        let length = u64::from(max.min(MAX_TRANSFER_READ_BYTES)).min(remaining) as usize;
        let Some(file) = self.file.as_mut().filter(|_| length > 0) else { return Ok(Vec::new()) };
        let mut buffer = vec![0; length];
        let mut filled = 0;
        while filled < length {
            match file.read(&mut buffer[filled..]).await {
                Ok(0) => {
                    return Err(format!(
                        "{} ended after {} of {} bytes",
                        self.description,
                        delivered + filled as u64,
                        self.size
                    ));
                }
                Ok(count) => filled += count,
                Err(error) => return Err(format!("reading {}: {error}", self.description)),
            }
        }
        self.delivered.0.fetch_add(filled as u64, Ordering::Relaxed);
        Ok(buffer)
    }
}

/// A new template image as changes to a base version: the spans that differ and a reader of
/// their bytes, in order.
pub struct ImageDelta {
    base: TemplateRef,
    size: u64,
    changes: Vec<ByteSpan>,
    changed_bytes: ByteSource,
}

impl std::fmt::Debug for ImageDelta {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ImageDelta")
            .field("base", &self.base.name)
            .field("base_version", &self.base.version)
            .field("size", &self.size)
            .field("changes", &self.changes.len())
            .finish_non_exhaustive()
    }
}

impl ImageDelta {
    /// `changes` (ascending, not overlapping) of an image of `size` bytes built on `base`;
    /// `changed_bytes` yields exactly the bytes of `changes`, in order.
    pub fn new(base: TemplateRef, size: u64, changes: Vec<ByteSpan>, changed_bytes: ByteSource) -> ImageDelta {
        ImageDelta { base, size, changes, changed_bytes }
    }

    /// Counts the changed bytes the driver reads.
    pub fn delivered(&self) -> DeliveredBytes {
        self.changed_bytes.delivered()
    }

    /// How many bytes the changes hold.
    pub fn changed_size(&self) -> u64 {
        self.changed_bytes.size()
    }

    /// Extra time a call that reads the delta gets on top of its call timeout.
    pub fn transfer_allowance(&self) -> Duration {
        self.changed_bytes.transfer_allowance()
    }
}

impl Host for StoreData {}

impl HostImageDelta for StoreData {
    async fn base(&mut self, delta: Resource<ImageDelta>) -> wasmtime::Result<TemplateRef> {
        Ok(self.table.get(&delta)?.base.clone())
    }

    async fn size(&mut self, delta: Resource<ImageDelta>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&delta)?.size)
    }

    async fn changes(&mut self, delta: Resource<ImageDelta>) -> wasmtime::Result<Vec<ByteSpan>> {
        Ok(self.table.get(&delta)?.changes.clone())
    }

    async fn read(&mut self, delta: Resource<ImageDelta>, max: u32) -> wasmtime::Result<Result<Vec<u8>, String>> {
        Ok(self.table.get_mut(&delta)?.changed_bytes.read_chunk(max).await)
    }

    async fn drop(&mut self, delta: Resource<ImageDelta>) -> wasmtime::Result<()> {
        self.table.delete(delta)?;
        Ok(())
    }
}

/// A driver writes an instance's disk into the same sink storage plugins read objects into.
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

impl HostByteSource for StoreData {
    async fn size(&mut self, source: Resource<ByteSource>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&source)?.size)
    }

    async fn read(&mut self, source: Resource<ByteSource>, max: u32) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let source = self.table.get_mut(&source)?;
        Ok(source.read_chunk(max).await)
    }

    async fn drop(&mut self, source: Resource<ByteSource>) -> wasmtime::Result<()> {
        self.table.delete(source)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_file_in_capped_chunks_and_counts_them() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("image.img");
        let bytes: Vec<u8> = (0..(MAX_TRANSFER_READ_BYTES as usize + 10)).map(|index| index as u8).collect();
        std::fs::write(&path, &bytes).expect("write the file");
        let mut source = ByteSource::open_file(&path, "the image").await.expect("opens");
        let delivered = source.delivered();
        assert_eq!(source.size(), bytes.len() as u64);
        let first = source.read_chunk(u32::MAX).await.expect("reads");
        assert_eq!(first.len(), MAX_TRANSFER_READ_BYTES as usize, "capped at the chunk limit");
        let second = source.read_chunk(u32::MAX).await.expect("reads");
        assert_eq!([first, second].concat(), bytes);
        assert_eq!(source.read_chunk(100).await, Ok(Vec::new()));
        assert_eq!(delivered.get(), bytes.len() as u64);
        assert_eq!(ByteSource::empty().read_chunk(100).await, Ok(Vec::new()));
    }

    #[tokio::test]
    async fn a_file_that_shrank_is_an_error_naming_the_data() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("image.img");
        std::fs::write(&path, [1_u8; 100]).expect("write the file");
        let mut source = ByteSource::open_file(&path, "the image of ubuntu v1").await.expect("opens");
        std::fs::write(&path, [1_u8; 10]).expect("truncate the file");
        let error = source.read_chunk(1000).await.expect_err("the file is short");
        assert_eq!(error, "the image of ubuntu v1 ended after 10 of 100 bytes");
    }
}
