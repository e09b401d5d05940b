//! Template images: a version's disk image, uploaded once as a stream and kept at
//! `<images dir>/<template id>/<number>.img`.
//!
//! An upload streams into `<images dir>/.incoming/` (hashed, sized and its format detected from
//! its first bytes on the way, never held in memory) and is renamed into place inside the
//! transaction that records it on the version, so an interrupted or refused upload leaves no
//! image. Whatever a crash left in the incoming directory is removed at start-up.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use super::projects::Demand;
use super::{Service, ServiceError, ServiceResult};
use crate::auth::Caller;
use crate::model::{DiskFormat, NewEvent, Template, TemplateVersion};
use crate::plugins::ByteSource;
use crate::store::{self, templates::VersionImage};

/// Where uploads stream to until they are complete, under the images directory.
const INCOMING_DIRECTORY: &str = ".incoming";
/// Size of the chunks a download is streamed in.
const DOWNLOAD_CHUNK_BYTES: usize = 256 * 1024;
/// How many first bytes decide the format.
const FORMAT_MAGIC_BYTES: usize = 4;

/// A version's image, ready to stream.
pub struct TemplateImageDownload {
    pub size_bytes: u64,
    pub sha256: String,
    pub format: DiskFormat,
    pub chunks: BoxStream<'static, io::Result<Bytes>>,
}

impl std::fmt::Debug for TemplateImageDownload {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TemplateImageDownload")
            .field("size_bytes", &self.size_bytes)
            .field("sha256", &self.sha256)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// An upload that streamed completely into its incoming file.
struct ReceivedImage {
    size_bytes: u64,
    sha256: String,
    format: DiskFormat,
}

impl Service {
    /// Streams `body` into the image of version `number` of the template, recording its size,
    /// SHA-256 and format on the version. A version has at most one image: a second upload is a
    /// conflict.
    pub async fn upload_template_image<Body, BodyError>(
        &self,
        caller: &Caller,
        reference: &str,
        number: u32,
        body: Body,
    ) -> ServiceResult<Template>
    where
        Body: Stream<Item = Result<Bytes, BodyError>> + Send,
        BodyError: std::fmt::Display,
    {
        let template = self.authorized_template(caller, reference, "push_tag").await?;
        if find_version(&template, number)?.has_image() {
            return Err(image_exists(&template, number));
        }
        let incoming_directory = self.inner.settings.template_images_dir.join(INCOMING_DIRECTORY);
        create_directory(&incoming_directory).await?;
        let incoming_path = incoming_directory.join(format!("{}.part", Uuid::new_v4()));
        let recorded = match self.receive_image(&incoming_path, body).await {
            Ok(received) => self.record_image(&template, number, &incoming_path, received, caller).await,
            Err(error) => Err(error),
        };
        if recorded.is_err() {
            remove_file_quietly(&incoming_path).await;
        }
        recorded
    }

    /// The image of version `number`, as a stream of chunks.
    pub async fn download_template_image(
        &self,
        caller: &Caller,
        reference: &str,
        number: u32,
    ) -> ServiceResult<TemplateImageDownload> {
        let template = self.authorized_template(caller, reference, "get_config").await?;
        let version = find_version(&template, number)?;
        let Some(sha256) = version.image_sha256.clone() else {
            return Err(ServiceError::not_found("template image", format!("{}:{number}", template.name)));
        };
        let path = self.template_image_path(template.id, number);
        let file = tokio::fs::File::open(&path).await.map_err(|error| image_io_error("opening", &path, &error))?;
        let chunks = futures::stream::try_unfold(file, |mut file| async move {
            let mut buffer = vec![0; DOWNLOAD_CHUNK_BYTES];
            let length = file.read(&mut buffer).await?;
            if length == 0 {
                return Ok(None);
            }
            buffer.truncate(length);
            Ok(Some((Bytes::from(buffer), file)))
        });
        Ok(TemplateImageDownload {
            size_bytes: version.size_bytes,
            sha256,
            format: version.format,
            chunks: chunks.boxed(),
        })
    }

    /// What a driver reads in `pull-template`: the version's image, or nothing without one.
    pub(super) async fn template_image_source(
        &self,
        template: &Template,
        version: &TemplateVersion,
    ) -> ServiceResult<ByteSource> {
        if !version.has_image() {
            return Ok(ByteSource::empty());
        }
        let path = self.template_image_path(template.id, version.number);
        let description = format!("the image of template {} v{}", template.name, version.number);
        ByteSource::open_file(&path, description).await.map_err(|error| image_io_error("opening", &path, &error))
    }

    /// Removes uploads a crash or shutdown interrupted.
    pub(super) async fn discard_incomplete_template_images(&self) -> ServiceResult<()> {
        let incoming_directory = self.inner.settings.template_images_dir.join(INCOMING_DIRECTORY);
        match tokio::fs::remove_dir_all(&incoming_directory).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(image_io_error("cleaning", &incoming_directory, &error)),
        }
    }

    fn template_image_path(&self, template_id: Uuid, number: u32) -> PathBuf {
        self.inner.settings.template_images_dir.join(template_id.to_string()).join(format!("{number}.img"))
    }

    /// Writes `body` to `path`, hashing and counting it, within the configured size limit.
    async fn receive_image<Body, BodyError>(&self, path: &Path, body: Body) -> ServiceResult<ReceivedImage>
    where
        Body: Stream<Item = Result<Bytes, BodyError>> + Send,
        BodyError: std::fmt::Display,
    {
        let limit = self.inner.settings.max_template_image_bytes;
        let mut file = tokio::fs::File::create(path).await.map_err(|error| image_io_error("creating", path, &error))?;
        let mut hasher = Sha256::new();
        let mut size_bytes: u64 = 0;
        let mut first_bytes = Vec::with_capacity(FORMAT_MAGIC_BYTES);
        let mut body = std::pin::pin!(body.map_err(|error| error.to_string()));
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|error| {
                ServiceError::Invalid(format!("the image upload broke off after {size_bytes} bytes: {error}"))
            })?;
            size_bytes = size_bytes.saturating_add(chunk.len() as u64);
            if size_bytes > limit {
                return Err(ServiceError::TooLarge(format!(
                    "the image exceeds the limit of {limit} bytes (templates.max_image_gib)"
                )));
            }
            let missing = FORMAT_MAGIC_BYTES.saturating_sub(first_bytes.len()).min(chunk.len());
            first_bytes.extend_from_slice(&chunk[..missing]);
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|error| image_io_error("writing", path, &error))?;
        }
        if size_bytes == 0 {
            return Err(ServiceError::Invalid("the image is empty; send the disk image as the request body".into()));
        }
        file.sync_all().await.map_err(|error| image_io_error("writing", path, &error))?;
        Ok(ReceivedImage {
            size_bytes,
            sha256: hex::encode(hasher.finalize()),
            format: DiskFormat::detect(&first_bytes),
        })
    }

    /// Records the received image on the version and moves it into place, in one transaction.
    async fn record_image(
        &self,
        template: &Template,
        number: u32,
        incoming_path: &Path,
        received: ReceivedImage,
        caller: &Caller,
    ) -> ServiceResult<Template> {
        let image_path = self.template_image_path(template.id, number);
        if let Some(template_directory) = image_path.parent() {
            create_directory(template_directory).await?;
        }
        let image = VersionImage {
            size_bytes: received.size_bytes,
            format: received.format,
            sha256: received.sha256,
            uploaded_at: store::now(),
        };
        let mut transaction = self.store().begin().await?;
        let declared = find_version(template, number)?.size_bytes;
        let demand = Demand { template_bytes: image.size_bytes.saturating_sub(declared), ..Demand::default() };
        self.check_quota(&mut transaction, template.project_id, demand).await?;
        if !store::templates::set_version_image(&mut transaction, template.id, number, &image).await? {
            return Err(image_exists(template, number));
        }
        tokio::fs::rename(incoming_path, &image_path)
            .await
            .map_err(|error| image_io_error("storing", &image_path, &error))?;
        let committed = async {
            transaction
                .append_event(NewEvent::new("template.image_uploaded", "template", template.id).by(caller).data(
                    json!({ "number": number, "size_bytes": image.size_bytes, "sha256": image.sha256, "format": image.format }),
                ))
                .await?;
            let updated = store::templates::get(&mut transaction, template.id)
                .await?
                .ok_or_else(|| ServiceError::not_found("template", template.id))?;
            transaction.commit().await?;
            Ok::<_, ServiceError>(updated)
        }
        .await;
        if committed.is_err() {
            remove_file_quietly(&image_path).await;
        }
        committed
    }
}

fn find_version(template: &Template, number: u32) -> ServiceResult<&TemplateVersion> {
    template
        .versions
        .iter()
        .find(|version| version.number == number)
        .ok_or_else(|| ServiceError::not_found("template version", format!("{}:{number}", template.name)))
}

fn image_exists(template: &Template, number: u32) -> ServiceError {
    ServiceError::Conflict(format!(
        "version {number} of template '{}' already has an image; images cannot be replaced, create a new version",
        template.name
    ))
}

fn image_io_error(action: &str, path: &Path, error: &io::Error) -> ServiceError {
    tracing::error!(path = %path.display(), %error, "template image {action} failed");
    ServiceError::Internal(format!("{action} template image {}: {error}", path.display()))
}

async fn create_directory(directory: &Path) -> ServiceResult<()> {
    tokio::fs::create_dir_all(directory)
        .await
        .map_err(|error| image_io_error("creating the directory of", directory, &error))
}

async fn remove_file_quietly(path: &Path) {
    if let Err(error) = tokio::fs::remove_file(path).await
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "could not remove an unfinished template image");
    }
}
