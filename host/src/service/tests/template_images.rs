//! Template images: streamed uploads, downloads, refusals, interrupted uploads, and the image
//! reaching the driver when an instance needs the template pulled.

use crate::auth::Caller;
use bytes::Bytes;
use futures::TryStreamExt;
use serde_json::json;

use super::{create_and_wait, create_request, events_of_type, fast, start, start_with_settings, template};
use crate::model::{DiskFormat, TaskState, Template};
use crate::service::{NewTemplateVersion, Service, ServiceError};

/// A stream of `chunks`, as an HTTP body arrives.
fn body_of(chunks: Vec<Vec<u8>>) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures::stream::iter(chunks.into_iter().map(|chunk| Ok(Bytes::from(chunk))))
}

async fn template_with_version(service: &Service, name: &str) -> Template {
    template(service, name).await;
    let version = NewTemplateVersion { tag: "v1".into(), description: String::new(), size_bytes: 0 };
    service.create_template_version(&Caller::system(), name, version).await.expect("version")
}

/// Files left in the directory where uploads stream to.
fn incoming_files(fixture: &super::Fixture) -> usize {
    std::fs::read_dir(fixture.settings.template_images_dir.join(".incoming")).map_or(0, |entries| entries.count())
}

/// A qcow2 image of `size` bytes.
fn qcow2_image(size: usize) -> Vec<u8> {
    let mut image = b"QFI\xfb".to_vec();
    image.resize(size, 0x5a);
    image
}

#[tokio::test]
async fn an_image_is_streamed_to_disk_hashed_and_downloaded_unchanged() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template_with_version(service, "base").await;
    let image = qcow2_image(700_000);
    // The magic arrives split over two chunks.
    let chunks = vec![image[..2].to_vec(), image[2..300_000].to_vec(), image[300_000..].to_vec()];
    let uploaded =
        service.upload_template_image(&Caller::system(), "base", 1, body_of(chunks)).await.expect("uploaded");
    let version = &uploaded.versions[0];
    assert_eq!((version.size_bytes, version.format), (700_000, DiskFormat::Qcow2));
    use sha2::Digest as _;
    assert_eq!(version.image_sha256.as_deref(), Some(hex::encode(sha2::Sha256::digest(&image)).as_str()));
    assert!(version.image_uploaded_at.is_some());
    let stored = fixture.settings.template_images_dir.join(uploaded.id.to_string()).join("1.img");
    assert_eq!(std::fs::read(&stored).expect("stored image"), image);
    assert_eq!(incoming_files(&fixture), 0, "nothing left behind");
    assert_eq!(events_of_type(service, "template.image_uploaded").await.len(), 1);

    let download =
        service.download_template_image(&Caller::system(), &uploaded.id.to_string(), 1).await.expect("download");
    assert_eq!((download.size_bytes, download.format), (700_000, DiskFormat::Qcow2));
    let chunks: Vec<Bytes> = download.chunks.try_collect().await.expect("read");
    assert_eq!(chunks.concat(), image);

    let again = service.upload_template_image(&Caller::system(), "base", 1, body_of(vec![b"raw".to_vec()])).await;
    assert!(
        matches!(&again, Err(ServiceError::Conflict(message)) if message.contains("already has an image")),
        "{again:?}"
    );
    assert_eq!(std::fs::read(&stored).expect("stored image"), image, "the first image stays");
    assert_eq!(incoming_files(&fixture), 0);
}

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing() {
    let fixture = start_with_settings(fast(json!({ "hosts": 1 })), |settings| {
        settings.max_template_image_bytes = 1000;
    })
    .await;
    let service = &fixture.service;
    template_with_version(service, "base").await;
    let raw = body_of(vec![vec![0; 10]]);
    let check = |outcome: Result<Template, ServiceError>, expected: &str| match outcome {
        Err(error) => assert!(error.to_string().contains(expected), "{error:?} should mention {expected:?}"),
        Ok(template) => panic!("expected an error mentioning {expected:?}, got {template:?}"),
    };
    check(service.upload_template_image(&Caller::system(), "missing", 1, raw).await, "template 'missing' not found");
    check(
        service.upload_template_image(&Caller::system(), "base", 9, body_of(vec![vec![0; 10]])).await,
        "'base:9' not found",
    );
    check(service.upload_template_image(&Caller::system(), "base", 1, body_of(Vec::new())).await, "the image is empty");
    let too_large =
        service.upload_template_image(&Caller::system(), "base", 1, body_of(vec![vec![0; 600], vec![0; 600]])).await;
    assert!(
        matches!(&too_large, Err(ServiceError::TooLarge(message)) if message.contains("1000 bytes")),
        "{too_large:?}"
    );
    let broken = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"first part")),
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client went away")),
    ]);
    check(
        service.upload_template_image(&Caller::system(), "base", 1, broken).await,
        "broke off after 10 bytes: client went away",
    );

    assert_eq!(incoming_files(&fixture), 0, "refused uploads leave no file");
    let version = service.resolve_template(&Caller::system(), "base").await.expect("template").versions[0].clone();
    assert!(!version.has_image(), "{version:?}");
    let download = service.download_template_image(&Caller::system(), "base", 1).await;
    assert!(matches!(download, Err(ServiceError::NotFound { kind: "template image", .. })), "{download:?}");
    let raw = service
        .upload_template_image(&Caller::system(), "base", 1, body_of(vec![vec![7; 10]]))
        .await
        .expect("uploaded");
    assert_eq!(raw.versions[0].format, DiskFormat::Raw);
}

#[tokio::test]
async fn uploads_interrupted_by_a_crash_are_removed_at_start() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let incoming = fixture.settings.template_images_dir.join(".incoming");
    std::fs::create_dir_all(&incoming).expect("incoming directory");
    std::fs::write(incoming.join("interrupted.part"), b"half an image").expect("leftover");
    fixture.service.discard_incomplete_template_images().await.expect("cleaned");
    assert_eq!(incoming_files(&fixture), 0);
}

#[tokio::test]
async fn the_driver_reads_the_image_when_it_pulls_the_template() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template_with_version(service, "base").await;
    let image = qcow2_image(2 * 1024 * 1024 + 3);
    service.upload_template_image(&Caller::system(), "base", 1, body_of(vec![image.clone()])).await.expect("uploaded");
    let (task, _) = create_and_wait(service, create_request("base")).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    let cached = events_of_type(service, "host.template_cached").await;
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(cached[0].data["image_bytes_read"], json!(image.len()), "{:?}", cached[0].data);

    // A version without an image is pulled from an empty source, which the simulator accepts.
    template(service, "bare").await;
    let (task, _) = create_and_wait(service, create_request("bare")).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
}
