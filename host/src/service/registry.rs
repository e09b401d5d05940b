//! The template registry: a version's files (disk image, memory state, config) kept as
//! fixed-size chunks in the storage backend, each chunk once per content.
//!
//! Disk images change in place, so fixed-size chunks (like a block device's) find what changed
//! between two tags without content-defined boundaries. A chunk is stored under
//! `chunks/<first two hex digits>/<sha256>` and verified against its digest whenever it is
//! read. A push is visible only when its file row commits: chunks stored on the way and never
//! referenced are removed by garbage collection once older than the grace period.
//!
//! Two ways to push: a client streams the whole file (the host chunks it, storing only chunks
//! it does not have), or a client chunks the file itself, asks which chunks the template lacks,
//! uploads those and commits the file's chunk list — so a new tag costs only what changed.
//! Garbage collection holds the registry lock for writing while it deletes; storing a chunk
//! holds it for reading, so a chunk found stored is not deleted before it is referenced or
//! refreshed.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use super::projects::Demand;
use super::templates::commit_returning_template;
use super::{Service, ServiceError, ServiceResult, check_name};
use crate::auth::Caller;
use crate::auth::permissions::Resource;
use crate::config::{BUNDLED_STORAGE_FS, BUNDLED_STORAGE_S3, Config};
use crate::model::{DISK_FILE_NAME, DiskFormat, FileKind, NewEvent, Template, TemplateFile, TemplateVersion};
use crate::plugins::driver_types::ByteSpan;
use crate::plugins::storage_types::Error as StorageError;
use crate::plugins::{
    BlobStore, ByteSource, CallError, ComponentSource, ImageDelta, LoadError, PluginRuntime, StorageSettings,
    StorageSource,
};
use crate::store;

/// Chunks stored or read at once by one push or read.
const CHUNKS_IN_FLIGHT: usize = 4;
/// How many first bytes decide a disk's format.
const FORMAT_MAGIC_BYTES: usize = 4;
/// Most digests one "which chunks are missing" question or one manifest may carry (a 1 TiB
/// file at 4 MiB chunks).
pub const MAX_CHUNKS_PER_FILE: usize = 262_144;
/// Smallest and largest chunk sizes a client may choose.
pub const MIN_CHUNK_BYTES: u64 = 64 * 1024;
pub const MAX_CHUNK_BYTES: u64 = 16 * 1024 * 1024;

/// What a push of a file stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FilePushed {
    pub template: Template,
    pub file: TemplateFile,
    /// Bytes the client sent.
    pub bytes_received: u64,
    /// Bytes written to the storage backend (chunks it did not have).
    pub bytes_stored: u64,
    pub chunks: u64,
    pub chunks_stored: u64,
}

/// What a client says about a file it pushes as a stream.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// What the file holds; by default from its name.
    pub kind: Option<FileKind>,
    /// The SHA-256 (hex) the file must have; a push whose bytes hash otherwise is refused and
    /// leaves no file.
    pub sha256: Option<String>,
}

impl PushOptions {
    pub fn disk() -> PushOptions {
        PushOptions { kind: Some(FileKind::Disk), sha256: None }
    }
}

/// A file as a list of chunks: what a client commits after uploading the chunks the template
/// lacked, and what it reads to pull only the chunks it lacks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileManifest {
    #[serde(default)]
    pub kind: Option<FileKind>,
    pub size_bytes: u64,
    /// SHA-256 of the whole file (hex).
    pub sha256: String,
    /// Size of every chunk but the last (64 KiB to 16 MiB).
    pub chunk_size: u64,
    /// SHA-256 (hex) of each chunk, in order.
    pub chunks: Vec<String>,
}

/// `POST /v1/templates/{id}/chunks/missing`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChunkQuery {
    pub digests: Vec<String>,
}

/// What garbage collection removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct GarbageCollected {
    pub chunks_deleted: u64,
    pub bytes_freed: u64,
    /// Objects under `chunks/` with no chunk row (a crash between storing and recording).
    pub orphan_objects_deleted: u64,
}

/// A file (or a range of it) ready to stream.
pub struct FileDownload {
    pub file: TemplateFile,
    /// The bytes streamed: `offset..offset + length`.
    pub offset: u64,
    pub length: u64,
    pub bytes: BoxStream<'static, io::Result<Bytes>>,
}

impl std::fmt::Debug for FileDownload {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FileDownload")
            .field("file", &self.file)
            .field("offset", &self.offset)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// A requested byte range: `first..=last`, or from `first` to the end, or the last `suffix`
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedRange {
    From { first: u64, last: Option<u64> },
    Suffix(u64),
}

/// The registry's part of the service: the storage backend and the lock garbage collection
/// takes.
pub(super) struct Registry {
    pub(super) blobs: BlobStore,
    pub(super) lock: tokio::sync::RwLock<()>,
    pub(super) chunk_bytes: u64,
    pub(super) gc_min_age: Duration,
    pub(super) max_file_bytes: u64,
}

fn chunk_key(digest: &str) -> String {
    format!("chunks/{}/{digest}", &digest[..2])
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

fn check_digest(field: &str, digest: &str) -> ServiceResult<()> {
    if !is_digest(digest) {
        return Err(ServiceError::Invalid(format!(
            "{field} '{digest}' is not a SHA-256 digest (64 lowercase hex digits)"
        )));
    }
    Ok(())
}

/// Storage failures as service errors (the backend's own words, never a secret).
fn storage_error(action: &str, error: CallError) -> ServiceError {
    tracing::error!(%error, "storage backend failed {action}");
    match error {
        CallError::Storage(StorageError::Unavailable(message)) => {
            ServiceError::Unavailable(format!("storage backend unavailable while {action}: {message}"))
        }
        other => ServiceError::Internal(format!("storage backend failed {action}: {other}")),
    }
}

fn find_version(template: &Template, number: u32) -> ServiceResult<&TemplateVersion> {
    template
        .versions
        .iter()
        .find(|version| version.number == number)
        .ok_or_else(|| ServiceError::not_found("template version", format!("{}:{number}", template.name)))
}

fn find_file<'a>(template: &Template, version: &'a TemplateVersion, name: &str) -> ServiceResult<&'a TemplateFile> {
    version
        .files
        .iter()
        .find(|file| file.name == name)
        .ok_or_else(|| ServiceError::not_found("template file", format!("{}:{}/{name}", template.name, version.number)))
}

fn file_exists(template: &Template, number: u32, name: &str) -> ServiceError {
    ServiceError::Conflict(format!(
        "version {number} of template '{}' already has a file '{name}'; files cannot be replaced, push a new version",
        template.name
    ))
}

/// The kind a file gets when the client does not say: `disk` for the disk, `config` for
/// `*.json`/`*.toml`/`*.yaml`, else `state`.
fn default_kind(name: &str) -> FileKind {
    if name == DISK_FILE_NAME {
        FileKind::Disk
    } else if [".json", ".toml", ".yaml", ".yml", ".xml", ".plist"].iter().any(|suffix| name.ends_with(suffix)) {
        FileKind::Config
    } else {
        FileKind::State
    }
}

/// Cuts a byte stream into pieces of exactly `size` bytes (the last may be shorter). A failure
/// of the stream comes with how many bytes it had yielded before.
fn rechunk<S>(body: S, size: usize) -> impl Stream<Item = Result<Bytes, (u64, String)>> + Send
where
    S: Stream<Item = Result<Bytes, String>> + Send + Unpin,
{
    let start = (body, BytesMut::new(), 0_u64, false);
    futures::stream::unfold(start, move |(mut body, mut buffer, mut received, mut ended)| async move {
        while !ended && buffer.len() < size {
            match body.next().await {
                Some(Ok(bytes)) => {
                    received += bytes.len() as u64;
                    buffer.extend_from_slice(&bytes);
                }
                Some(Err(error)) => return Some((Err((received, error)), (body, buffer, received, true))),
                None => ended = true,
            }
        }
        if buffer.is_empty() {
            return None;
        }
        let piece = buffer.split_to(size.min(buffer.len())).freeze();
        Some((Ok(piece), (body, buffer, received, ended)))
    })
}

impl Service {
    fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The storage backend's name and location, for status pages.
    pub fn storage_location(&self) -> (String, String) {
        let blobs = &self.registry().blobs;
        (blobs.name().to_owned(), blobs.location().to_owned())
    }

    /// Stores `chunk` unless it is stored already; returns its digest and whether it was written.
    async fn store_chunk(&self, chunk: Bytes) -> ServiceResult<(String, u64, bool)> {
        let size = chunk.len() as u64;
        let hashed = chunk.clone();
        let digest = tokio::task::spawn_blocking(move || sha256_hex(&hashed))
            .await
            .map_err(|error| ServiceError::Internal(format!("hashing a chunk: {error}")))?;
        let _collection_excluded = self.registry().lock.read().await;
        let now = store::now();
        if store::registry::touch_chunk(&mut *self.store().write_statement().await?, &digest, &now).await? {
            return Ok((digest, size, false));
        }
        self.registry()
            .blobs
            .put(&chunk_key(&digest), StorageSource::from_bytes(chunk))
            .await
            .map_err(|error| storage_error("storing a chunk", error))?;
        store::registry::insert_chunk(&mut *self.store().write_statement().await?, &digest, size, &now).await?;
        Ok((digest, size, true))
    }

    /// Pushes a whole file as a stream: chunks it, stores the chunks the registry lacks and
    /// records the file on version `number`. Files cannot be replaced.
    pub async fn push_template_file<Body, BodyError>(
        &self,
        caller: &Caller,
        reference: &str,
        number: u32,
        name: &str,
        options: PushOptions,
        body: Body,
    ) -> ServiceResult<FilePushed>
    where
        Body: Stream<Item = Result<Bytes, BodyError>> + Send,
        BodyError: std::fmt::Display,
    {
        check_name("file name", name, 128)?;
        if let Some(expected) = &options.sha256 {
            check_digest("sha256", expected)?;
        }
        let template = self.authorized_template(caller, reference, "push_tag").await?;
        if find_version(&template, number)?.files.iter().any(|file| file.name == name) {
            return Err(file_exists(&template, number, name));
        }
        let chunk_bytes = self.registry().chunk_bytes;
        let limit = self.registry().max_file_bytes;
        let body = Box::pin(body.map_err(|error| error.to_string()));
        let mut whole_file = Sha256::new();
        let mut first_bytes = Vec::with_capacity(FORMAT_MAGIC_BYTES);
        let mut size_bytes: u64 = 0;
        let pieces = rechunk(body, chunk_bytes as usize).map(|piece| {
            let piece = piece.map_err(|(received, error)| {
                ServiceError::Invalid(format!("the upload broke off after {received} bytes: {error}"))
            })?;
            size_bytes = size_bytes.saturating_add(piece.len() as u64);
            if size_bytes > limit {
                return Err(ServiceError::TooLarge(format!(
                    "the file exceeds the limit of {limit} bytes (templates.max_image_gib)"
                )));
            }
            let missing = FORMAT_MAGIC_BYTES.saturating_sub(first_bytes.len()).min(piece.len());
            first_bytes.extend_from_slice(&piece[..missing]);
            whole_file.update(&piece);
            Ok(piece)
        });
        let stored: Vec<(String, u64, bool)> =
            pieces.map_ok(|piece| self.store_chunk(piece)).try_buffered(CHUNKS_IN_FLIGHT).try_collect().await?;
        if size_bytes == 0 {
            return Err(ServiceError::Invalid("the file is empty; send its bytes as the request body".into()));
        }
        let sha256 = hex::encode(whole_file.finalize());
        if let Some(expected) = options.sha256.filter(|expected| *expected != sha256) {
            return Err(ServiceError::Invalid(format!(
                "the upload's SHA-256 is {sha256}, not the {expected} it was sent with; it was not stored"
            )));
        }
        let kind = options.kind.unwrap_or_else(|| default_kind(name));
        let format = if kind == FileKind::Disk { DiskFormat::detect(&first_bytes) } else { DiskFormat::Raw };
        let file = TemplateFile {
            name: name.to_owned(),
            kind,
            format,
            size_bytes,
            sha256,
            chunk_size: chunk_bytes,
            chunk_count: stored.len() as u64,
            pushed_at: store::now(),
        };
        let digests: Vec<String> = stored.iter().map(|(digest, _, _)| digest.clone()).collect();
        let bytes_stored = stored.iter().filter(|(_, _, written)| *written).map(|(_, size, _)| size).sum();
        let chunks_stored = stored.iter().filter(|(_, _, written)| *written).count() as u64;
        let template = self.record_file(caller, &template, number, &file, &digests, bytes_stored).await?;
        Ok(FilePushed {
            template,
            file,
            bytes_received: size_bytes,
            bytes_stored,
            chunks: digests.len() as u64,
            chunks_stored,
        })
    }

    /// Records a file on a version with its chunks, checking the project's quota, in one
    /// transaction with its event.
    async fn record_file(
        &self,
        caller: &Caller,
        template: &Template,
        number: u32,
        file: &TemplateFile,
        digests: &[String],
        bytes_stored: u64,
    ) -> ServiceResult<Template> {
        let mut transaction = self.store().begin().await?;
        let current = store::templates::get(&mut transaction, template.id)
            .await?
            .ok_or_else(|| ServiceError::not_found("template", template.id))?;
        let version = find_version(&current, number)?;
        if version.files.iter().any(|existing| existing.name == file.name) {
            return Err(file_exists(template, number, &file.name));
        }
        let files_bytes: u64 = version.files.iter().map(|existing| existing.size_bytes).sum::<u64>() + file.size_bytes;
        let demand = Demand { template_bytes: files_bytes.saturating_sub(version.size_bytes), ..Demand::default() };
        self.check_quota(&mut transaction, template.project_id, demand).await?;
        store::registry::insert_file(&mut transaction, template.id, number, file, digests).await?;
        store::templates::set_version_size(&mut transaction, template.id, number, files_bytes).await?;
        transaction.append_event(NewEvent::new("template.file_pushed", "template", template.id).by(caller).data(
            json!({
                "number": number, "file": file.name, "kind": file.kind, "size_bytes": file.size_bytes,
                "sha256": file.sha256, "format": file.format, "chunks": digests.len(), "bytes_stored": bytes_stored,
            }),
        ));
        commit_returning_template(transaction, template.id).await
    }

    /// Which of `digests` the template lacks: the chunks a client must upload before committing
    /// a manifest. Only the template's own chunks count, so nothing is learnt of other data.
    pub async fn missing_template_chunks(
        &self,
        caller: &Caller,
        reference: &str,
        query: ChunkQuery,
    ) -> ServiceResult<Vec<String>> {
        let template = self.authorized_template(caller, reference, "push_tag").await?;
        if query.digests.len() > MAX_CHUNKS_PER_FILE {
            return Err(ServiceError::Invalid(format!("at most {MAX_CHUNKS_PER_FILE} digests per question")));
        }
        for digest in &query.digests {
            check_digest("digest", digest)?;
        }
        let granted =
            store::registry::granted_chunk_sizes(&mut *self.store().reader().await?, template.id, &query.digests)
                .await?;
        let mut missing: Vec<String> =
            query.digests.into_iter().filter(|digest| !granted.contains_key(digest)).collect();
        missing.sort_unstable();
        missing.dedup();
        Ok(missing)
    }

    /// Stores one chunk for the template after checking that its bytes hash to `digest`.
    pub async fn upload_template_chunk(
        &self,
        caller: &Caller,
        reference: &str,
        digest: &str,
        bytes: Bytes,
    ) -> ServiceResult<bool> {
        check_digest("digest", digest)?;
        let template = self.authorized_template(caller, reference, "push_tag").await?;
        if bytes.is_empty() || bytes.len() as u64 > MAX_CHUNK_BYTES {
            return Err(ServiceError::Invalid(format!("a chunk must be 1 to {MAX_CHUNK_BYTES} bytes")));
        }
        let (stored_digest, _, written) = self.store_chunk(bytes).await?;
        if stored_digest != digest {
            return Err(ServiceError::Invalid(format!(
                "the chunk's bytes hash to {stored_digest}, not to {digest}; it was not accepted"
            )));
        }
        store::registry::grant_chunk(&mut *self.store().write_statement().await?, template.id, digest).await?;
        Ok(written)
    }

    /// Records a file from chunks the template already has (see
    /// [`Service::missing_template_chunks`]). The file's SHA-256 is checked by reading the
    /// chunks back from storage.
    pub async fn commit_template_file(
        &self,
        caller: &Caller,
        reference: &str,
        number: u32,
        name: &str,
        manifest: FileManifest,
    ) -> ServiceResult<FilePushed> {
        check_name("file name", name, 128)?;
        check_digest("sha256", &manifest.sha256)?;
        let template = self.authorized_template(caller, reference, "push_tag").await?;
        if find_version(&template, number)?.files.iter().any(|file| file.name == name) {
            return Err(file_exists(&template, number, name));
        }
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&manifest.chunk_size) {
            return Err(ServiceError::Invalid(format!(
                "chunk_size must be {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES} bytes"
            )));
        }
        if manifest.size_bytes == 0 || manifest.size_bytes > self.registry().max_file_bytes {
            return Err(ServiceError::Invalid(format!(
                "size_bytes must be 1 to {} bytes (templates.max_image_gib)",
                self.registry().max_file_bytes
            )));
        }
        let expected_chunks = manifest.size_bytes.div_ceil(manifest.chunk_size);
        if manifest.chunks.len() as u64 != expected_chunks {
            return Err(ServiceError::Invalid(format!(
                "a file of {} bytes in chunks of {} has {expected_chunks} chunks, not {}",
                manifest.size_bytes,
                manifest.chunk_size,
                manifest.chunks.len()
            )));
        }
        for digest in &manifest.chunks {
            check_digest("chunk", digest)?;
        }
        let sizes =
            store::registry::granted_chunk_sizes(&mut *self.store().reader().await?, template.id, &manifest.chunks)
                .await?;
        let mut missing: Vec<&String> = manifest.chunks.iter().filter(|digest| !sizes.contains_key(*digest)).collect();
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            return Err(ServiceError::Invalid(format!(
                "{} chunks are not uploaded for this template, e.g. {}; upload them first",
                missing.len(),
                missing[0]
            )));
        }
        let last = manifest.chunks.len() - 1;
        for (position, digest) in manifest.chunks.iter().enumerate() {
            let expected = if position == last {
                manifest.size_bytes - manifest.chunk_size * last as u64
            } else {
                manifest.chunk_size
            };
            if sizes[digest] != expected {
                return Err(ServiceError::Invalid(format!(
                    "chunk {position} ({digest}) has {} bytes, a file of this size needs {expected} there",
                    sizes[digest]
                )));
            }
        }
        // Every chunk was checked against its digest when it was uploaded and is checked again
        // whenever it is read, so the file's content is what the digests say. Re-reading the
        // whole file here to check the declared SHA-256 would make a new tag cost its full size
        // (2 s per GiB measured), not the chunks that changed; readers check it end to end.
        let first_chunk = vec![(manifest.chunks[0].clone(), sizes[&manifest.chunks[0]])];
        let mut first = self.chunk_stream(first_chunk, 0, FORMAT_MAGIC_BYTES as u64, format!("{name} being committed"));
        let first_bytes = match first.next().await {
            Some(piece) => piece.map_err(|error| ServiceError::Internal(error.to_string()))?.to_vec(),
            None => Vec::new(),
        };
        let sha256 = manifest.sha256.clone();
        let kind = manifest.kind.unwrap_or_else(|| default_kind(name));
        let file = TemplateFile {
            name: name.to_owned(),
            kind,
            format: if kind == FileKind::Disk { DiskFormat::detect(&first_bytes) } else { DiskFormat::Raw },
            size_bytes: manifest.size_bytes,
            sha256,
            chunk_size: manifest.chunk_size,
            chunk_count: manifest.chunks.len() as u64,
            pushed_at: store::now(),
        };
        let template = self.record_file(caller, &template, number, &file, &manifest.chunks, 0).await?;
        let chunks = manifest.chunks.len() as u64;
        Ok(FilePushed { template, file, bytes_received: 0, bytes_stored: 0, chunks, chunks_stored: 0 })
    }

    /// The chunk list of a file, for a client that pulls only the chunks it lacks.
    pub async fn template_file_manifest(
        &self,
        caller: &Caller,
        reference: &str,
        number: u32,
        name: &str,
    ) -> ServiceResult<FileManifest> {
        let template = self.authorized_template(caller, reference, "get_config").await?;
        let file = find_file(&template, find_version(&template, number)?, name)?.clone();
        let chunks =
            store::registry::file_chunks(&mut *self.store().reader().await?, template.id, number, name).await?;
        Ok(FileManifest {
            kind: Some(file.kind),
            size_bytes: file.size_bytes,
            sha256: file.sha256,
            chunk_size: file.chunk_size,
            chunks: chunks.into_iter().map(|(digest, _)| digest).collect(),
        })
    }

    /// One chunk of the template's files, verified.
    pub async fn download_template_chunk(
        &self,
        caller: &Caller,
        reference: &str,
        digest: &str,
    ) -> ServiceResult<Bytes> {
        check_digest("digest", digest)?;
        let template = self.authorized_template(caller, reference, "get_config").await?;
        let sizes = store::registry::granted_chunk_sizes(
            &mut *self.store().reader().await?,
            template.id,
            std::slice::from_ref(&digest.to_owned()),
        )
        .await?;
        let Some(size) = sizes.get(digest).copied() else {
            return Err(ServiceError::not_found("chunk", format!("{}/{digest}", template.name)));
        };
        read_chunk(self.registry().blobs.clone(), digest.to_owned(), size, Arc::from(template.name.as_str()))
            .await
            .map_err(|error| ServiceError::Internal(error.to_string()))
    }

    /// A file of a version, or `range` of it, as a stream of verified chunks.
    pub async fn download_template_file(
        &self,
        caller: &Caller,
        reference: &str,
        number: u32,
        name: &str,
        range: Option<RequestedRange>,
    ) -> ServiceResult<FileDownload> {
        let template = self.authorized_template(caller, reference, "get_config").await?;
        let file = find_file(&template, find_version(&template, number)?, name)?.clone();
        let (offset, length) = resolve_range(range, file.size_bytes)?;
        let chunks =
            store::registry::file_chunks(&mut *self.store().reader().await?, template.id, number, name).await?;
        store::templates::mark_version_pulled(&mut *self.store().write_statement().await?, template.id, number).await?;
        let description = format!("{}:{number}/{name}", template.name);
        let bytes = self.chunk_stream(chunks, offset, length, description);
        Ok(FileDownload { file, offset, length, bytes })
    }

    /// The disk image of a version as a driver reads it in `pull-template`, or nothing when the
    /// version has none.
    pub(super) async fn template_image_source(
        &self,
        template: &Template,
        version: &TemplateVersion,
    ) -> ServiceResult<ByteSource> {
        let Some(disk) = version.disk() else { return Ok(ByteSource::empty()) };
        let chunks = store::registry::file_chunks(
            &mut *self.store().reader().await?,
            template.id,
            version.number,
            DISK_FILE_NAME,
        )
        .await?;
        store::templates::mark_version_pulled(&mut *self.store().write_statement().await?, template.id, version.number)
            .await?;
        let description = format!("the image of template {} v{}", template.name, version.number);
        let stream = self.chunk_stream(chunks, 0, disk.size_bytes, description.clone());
        Ok(ByteSource::from_reader(tokio_util::io::StreamReader::new(stream), disk.size_bytes, description))
    }

    /// The disk image of `version` as changes to the disk image of `base` (both chunked with the
    /// same chunk size): the spans whose chunks differ, and a source of just their bytes. `None`
    /// when either has no disk image or their chunk sizes differ.
    pub(super) async fn template_image_delta(
        &self,
        template: &Template,
        base: &TemplateVersion,
        version: &TemplateVersion,
    ) -> ServiceResult<Option<ImageDelta>> {
        let (Some(base_disk), Some(disk)) = (base.disk(), version.disk()) else { return Ok(None) };
        if base_disk.chunk_size != disk.chunk_size || disk.chunk_size == 0 {
            return Ok(None);
        }
        let mut reader = self.store().reader().await?;
        let base_chunks = store::registry::file_chunks(&mut reader, template.id, base.number, DISK_FILE_NAME).await?;
        let chunks = store::registry::file_chunks(&mut reader, template.id, version.number, DISK_FILE_NAME).await?;
        drop(reader);
        let (spans, changed) = changed_spans(&base_chunks, &chunks, disk.chunk_size);
        let changed_bytes: u64 = changed.iter().map(|(_, size)| size).sum();
        let description =
            format!("the changes of template {} v{} since v{}", template.name, version.number, base.number);
        let stream = self.chunk_stream(changed, 0, changed_bytes, description.clone());
        let source = ByteSource::from_reader(tokio_util::io::StreamReader::new(stream), changed_bytes, description);
        let base_ref = super::distribution::template_ref(template, Some(base));
        Ok(Some(ImageDelta::new(base_ref, disk.size_bytes, spans, source)))
    }

    /// `length` bytes from `offset` of a file made of `chunks`, read a few chunks ahead.
    fn chunk_stream(
        &self,
        chunks: Vec<(String, u64)>,
        offset: u64,
        length: u64,
        description: String,
    ) -> BoxStream<'static, io::Result<Bytes>> {
        let blobs = self.registry().blobs.clone();
        let description: Arc<str> = description.into();
        let end = offset + length;
        let mut chunk_start = 0_u64;
        let mut needed = Vec::new();
        for (digest, size) in chunks {
            let chunk_end = chunk_start + size;
            if chunk_end > offset && chunk_start < end {
                let skip = offset.saturating_sub(chunk_start) as usize;
                let take = (end.min(chunk_end) - chunk_start) as usize;
                needed.push((digest, size, skip, take));
            }
            chunk_start = chunk_end;
        }
        futures::stream::iter(needed)
            .map(move |(digest, size, skip, take)| {
                let (blobs, description) = (blobs.clone(), description.clone());
                async move { Ok::<_, io::Error>(read_chunk(blobs, digest, size, description).await?.slice(skip..take)) }
            })
            .buffered(CHUNKS_IN_FLIGHT)
            .boxed()
    }

    /// Removes the latest version of a template, or version `tag` and every later one (Anka's
    /// registry revert). Refused while an instance uses one of them. Their chunks are freed by
    /// the next garbage collection.
    pub async fn revert_template(
        &self,
        caller: &Caller,
        reference: &str,
        tag: Option<&str>,
    ) -> ServiceResult<Template> {
        let template = self.authorized_template(caller, reference, "delete_revert").await?;
        let from = match tag {
            Some(tag) => {
                template
                    .versions
                    .iter()
                    .find(|version| version.tag == tag)
                    .ok_or_else(|| ServiceError::not_found("template version", format!("{}:{tag}", template.name)))?
                    .number
            }
            None => {
                template
                    .latest_version()
                    .ok_or_else(|| ServiceError::Conflict(format!("template '{}' has no versions", template.name)))?
                    .number
            }
        };
        let mut transaction = self.store().begin().await?;
        let users = store::instances::count_using_template_versions(&mut transaction, template.id, from).await?;
        if users > 0 {
            return Err(ServiceError::Conflict(format!(
                "{users} instances use version {from} or later of template '{}'; delete them first",
                template.name
            )));
        }
        let removed = store::templates::delete_versions_from(&mut transaction, template.id, from).await?;
        transaction.append_event(
            NewEvent::new("template.reverted", "template", template.id)
                .by(caller)
                .data(json!({ "removed_versions": removed })),
        );
        commit_returning_template(transaction, template.id).await
    }

    /// Deletes chunks no file references that are older than `min_age` (default: the configured
    /// grace period, which covers pushes in progress), then objects under `chunks/` that have no
    /// chunk row and are as old.
    pub async fn collect_garbage(&self, caller: &Caller, min_age: Option<Duration>) -> ServiceResult<GarbageCollected> {
        self.require_global(caller, Resource::Template, "delete_revert", None).await?;
        let min_age = min_age.unwrap_or(self.registry().gc_min_age);
        let _no_pushes = self.registry().lock.write().await;
        let cutoff = store::now() - chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::MAX);
        let mut collected = GarbageCollected::default();
        loop {
            let candidates =
                store::registry::collectable_chunks(&mut *self.store().reader().await?, &cutoff, 1000).await?;
            if candidates.is_empty() {
                break;
            }
            for (digest, size) in candidates {
                let forgotten = store::registry::delete_chunk_if_collectable(
                    &mut *self.store().write_statement().await?,
                    &digest,
                    &cutoff,
                )
                .await?;
                if forgotten {
                    self.registry()
                        .blobs
                        .delete(&chunk_key(&digest))
                        .await
                        .map_err(|error| storage_error("deleting a chunk", error))?;
                    collected.chunks_deleted += 1;
                    collected.bytes_freed += size;
                }
            }
        }
        let cutoff_ms = cutoff.timestamp_millis().max(0) as u64;
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .registry()
                .blobs
                .list("chunks/", cursor.as_deref(), 1000)
                .await
                .map_err(|error| storage_error("listing chunks", error))?;
            for object in &page.objects {
                let digest = object.key.rsplit('/').next().unwrap_or_default();
                let known = is_digest(digest)
                    && store::registry::chunk_exists(&mut *self.store().reader().await?, digest).await?;
                if !known && object.modified_ms < cutoff_ms {
                    self.registry()
                        .blobs
                        .delete(&object.key)
                        .await
                        .map_err(|error| storage_error("deleting an orphan object", error))?;
                    collected.orphan_objects_deleted += 1;
                    collected.bytes_freed += object.size;
                }
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut transaction = self.store().begin().await?;
        transaction.append_event(
            NewEvent::new("registry.garbage_collected", "registry", Uuid::nil())
                .by(caller)
                .data(serde_json::to_value(&collected).unwrap_or_default()),
        );
        transaction.commit().await?;
        Ok(collected)
    }

    /// Chunks into the storage backend the images uploaded before the registry existed, which
    /// are still in `<data_dir>/templates/<template id>/<number>.img`, then removes those files.
    pub(super) async fn import_legacy_template_images(&self) -> ServiceResult<()> {
        let files = store::registry::unchunked_files(&mut *self.store().reader().await?).await?;
        let legacy_directory = self.inner.settings.template_images_dir.clone();
        for (template_id, number, name) in files {
            let path = legacy_directory.join(template_id.to_string()).join(format!("{number}.img"));
            let file = tokio::fs::File::open(&path).await.map_err(|error| {
                ServiceError::Internal(format!("importing template image {}: {error}", path.display()))
            })?;
            let body = tokio_util::io::ReaderStream::new(file);
            let stored: Vec<(String, u64, bool)> =
                rechunk(body.map_err(|error| error.to_string()), self.registry().chunk_bytes as usize)
                    .map_err(|(received, error)| {
                        ServiceError::Internal(format!("reading {} after {received} bytes: {error}", path.display()))
                    })
                    .map_ok(|piece| self.store_chunk(piece))
                    .try_buffered(CHUNKS_IN_FLIGHT)
                    .try_collect()
                    .await?;
            let digests: Vec<String> = stored.into_iter().map(|(digest, _, _)| digest).collect();
            let mut transaction = self.store().begin().await?;
            store::registry::set_file_chunks(
                &mut transaction,
                template_id,
                number,
                &name,
                self.registry().chunk_bytes,
                &digests,
            )
            .await?;
            transaction.commit().await?;
            tracing::info!(%template_id, number, chunks = digests.len(), "imported a template image into the registry");
            let _ = tokio::fs::remove_file(&path).await;
        }
        Ok(())
    }
}

/// Loads the storage backend the operator configured (`[storage]`): the bundled `storage-fs`
/// over `<data_dir>/blobs` unless told otherwise.
pub async fn load_storage(config: &Config, runtime: &PluginRuntime) -> Result<BlobStore, LoadError> {
    let storage = &config.storage;
    let component = match storage.plugin.as_str() {
        BUNDLED_STORAGE_FS => ComponentSource::Bytes {
            label: BUNDLED_STORAGE_FS.into(),
            bytes: Arc::from(&include_bytes!(env!("BUNDLED_STORAGE_FS_WASM"))[..]),
        },
        BUNDLED_STORAGE_S3 => ComponentSource::Bytes {
            label: BUNDLED_STORAGE_S3.into(),
            bytes: Arc::from(&include_bytes!(env!("BUNDLED_STORAGE_S3_WASM"))[..]),
        },
        path => ComponentSource::File(path.into()),
    };
    let mib = |value: u64| (value as usize).saturating_mul(1024 * 1024);
    let settings = StorageSettings {
        name: "storage".into(),
        component,
        config_json: storage.config.to_string(),
        call_timeout: Duration::from_secs_f64(storage.call_timeout_secs.unwrap_or(config.plugins.call_timeout_secs)),
        memory_limit_bytes: mib(storage.memory_limit_mib.unwrap_or(config.plugins.memory_limit_mib)),
        granted_directory: config.storage_directory(),
        allowed_http_hosts: storage.allowed_http_hosts.clone(),
        max_response_bytes: mib(config.plugins.max_response_mib),
    };
    BlobStore::load(runtime, settings).await
}

/// The spans of a file made of `chunks` that differ from one made of `base_chunks` (same chunk
/// size), adjacent ones merged, and the chunks that hold their bytes, in order.
fn changed_spans(
    base_chunks: &[(String, u64)],
    chunks: &[(String, u64)],
    chunk_size: u64,
) -> (Vec<ByteSpan>, Vec<(String, u64)>) {
    let mut spans: Vec<ByteSpan> = Vec::new();
    let mut changed = Vec::new();
    for (position, (digest, size)) in chunks.iter().enumerate() {
        let unchanged = base_chunks
            .get(position)
            .is_some_and(|(base_digest, base_size)| base_digest == digest && base_size == size);
        if unchanged {
            continue;
        }
        let offset = position as u64 * chunk_size;
        match spans.last_mut() {
            Some(last) if last.offset + last.length == offset => last.length += size,
            _ => spans.push(ByteSpan { offset, length: *size }),
        }
        changed.push((digest.clone(), *size));
    }
    (spans, changed)
}

/// Reads one chunk and checks it against its digest and size.
async fn read_chunk(blobs: BlobStore, digest: String, size: u64, description: Arc<str>) -> io::Result<Bytes> {
    let bytes = blobs
        .get_bytes(&chunk_key(&digest), None, size)
        .await
        .map_err(|error| io::Error::other(format!("reading chunk {digest} of {description} from storage: {error}")))?;
    let bytes = Bytes::from(bytes);
    let checked = bytes.clone();
    let actual = tokio::task::spawn_blocking(move || sha256_hex(&checked)).await.map_err(io::Error::other)?;
    if actual != digest || bytes.len() as u64 != size {
        tracing::error!(%digest, %actual, size = bytes.len(), "a stored chunk is corrupted");
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("chunk {digest} of {description} is corrupted in storage (its bytes hash to {actual})"),
        ));
    }
    Ok(bytes)
}

/// The bytes `range` selects of a file of `size` bytes: `(offset, length)`; a range outside
/// the file is [`ServiceError::RangeNotSatisfiable`].
pub fn resolve_range(range: Option<RequestedRange>, size: u64) -> ServiceResult<(u64, u64)> {
    let unsatisfiable = || ServiceError::RangeNotSatisfiable { size };
    match range {
        None => Ok((0, size)),
        Some(RequestedRange::From { first, last }) => {
            if first >= size || last.is_some_and(|last| last < first) {
                return Err(unsatisfiable());
            }
            let last = last.unwrap_or(size - 1).min(size - 1);
            Ok((first, last - first + 1))
        }
        Some(RequestedRange::Suffix(length)) => {
            if length == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            let length = length.min(size);
            Ok((size - length, length))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rechunking_makes_equal_pieces_whatever_the_body_pieces() {
        let body = futures::stream::iter(
            [vec![1_u8; 3], vec![2; 10], vec![3; 1], vec![4; 6]].map(|bytes| Ok::<_, String>(Bytes::from(bytes))),
        );
        let pieces: Vec<Bytes> = rechunk(body, 4).map_err(|(_, error)| error).try_collect().await.expect("no error");
        let lengths: Vec<usize> = pieces.iter().map(Bytes::len).collect();
        assert_eq!(lengths, [4, 4, 4, 4, 4]);
        assert_eq!(pieces.concat(), [vec![1; 3], vec![2; 10], vec![3; 1], vec![4; 6]].concat());
        let empty = futures::stream::iter(Vec::<Result<Bytes, String>>::new());
        assert_eq!(rechunk(empty, 4).count().await, 0);
    }

    #[test]
    fn ranges_resolve_like_http() {
        let check = |range, expected: Result<(u64, u64), ()>| {
            assert_eq!(resolve_range(range, 100).map_err(|_| ()), expected, "{range:?}");
        };
        check(None, Ok((0, 100)));
        check(Some(RequestedRange::From { first: 10, last: Some(19) }), Ok((10, 10)));
        check(Some(RequestedRange::From { first: 90, last: None }), Ok((90, 10)));
        check(Some(RequestedRange::From { first: 90, last: Some(500) }), Ok((90, 10)));
        check(Some(RequestedRange::Suffix(30)), Ok((70, 30)));
        check(Some(RequestedRange::Suffix(300)), Ok((0, 100)));
        check(Some(RequestedRange::From { first: 100, last: None }), Err(()));
        check(Some(RequestedRange::From { first: 20, last: Some(10) }), Err(()));
        check(Some(RequestedRange::Suffix(0)), Err(()));
    }

    #[test]
    fn changed_spans_merge_neighbours_and_cover_growth() {
        let chunk = |digest: &str, size: u64| (digest.to_owned(), size);
        let base = [chunk("a", 4), chunk("b", 4), chunk("c", 4), chunk("d", 2)];
        let new = [chunk("a", 4), chunk("x", 4), chunk("y", 4), chunk("d", 4), chunk("e", 1)];
        let (spans, changed) = changed_spans(&base, &new, 4);
        let spans: Vec<(u64, u64)> = spans.iter().map(|span| (span.offset, span.length)).collect();
        assert_eq!(spans, [(4, 13)], "b, c changed; d grew; e is new: one run");
        assert_eq!(changed.iter().map(|(digest, _)| digest.as_str()).collect::<Vec<_>>(), ["x", "y", "d", "e"]);
        let (spans, changed) = changed_spans(&new, &new, 4);
        assert!(spans.is_empty() && changed.is_empty());
        let (spans, _) = changed_spans(&[], &[chunk("a", 4), chunk("b", 3)], 4);
        assert_eq!(spans.iter().map(|span| (span.offset, span.length)).collect::<Vec<_>>(), [(0, 7)]);
    }

    #[test]
    fn file_kinds_default_by_name() {
        assert_eq!(default_kind("disk"), FileKind::Disk);
        assert_eq!(default_kind("vm.json"), FileKind::Config);
        assert_eq!(default_kind("memory.state"), FileKind::State);
    }
}
