//! The template registry on the real `storage-fs` component: streamed pushes cut into chunks,
//! incremental pushes by chunk, downloads and ranges, refusals that leave nothing, corrupted
//! chunks, revert, garbage collection, the legacy image import, and the image reaching the
//! driver when an instance needs the template pulled.

use std::path::PathBuf;

use bytes::Bytes;
use futures::TryStreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Fixture, create_and_wait, create_request, events_of_type, fast, start, start_with_settings, template};
use crate::auth::Caller;
use crate::model::{DiskFormat, FileKind, TaskState, Template};
use crate::service::{
    ChunkQuery, FileManifest, FilePushed, NewTemplateVersion, PushOptions, RequestedRange, Service, ServiceError,
};

const MIB: usize = 1024 * 1024;

/// A stream of `pieces`, as an HTTP body arrives.
fn body_of(pieces: Vec<Vec<u8>>) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures::stream::iter(pieces.into_iter().map(|piece| Ok(Bytes::from(piece))))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn add_version(service: &Service, name: &str, tag: &str) -> Template {
    let version = NewTemplateVersion { tag: tag.into(), description: String::new(), size_bytes: 0 };
    service.create_template_version(&Caller::system(), name, version).await.expect("version")
}

async fn template_with_version(service: &Service, name: &str) -> Template {
    template(service, name).await;
    add_version(service, name, "v1").await
}

async fn push(
    service: &Service,
    name: &str,
    number: u32,
    file: &str,
    bytes: &[u8],
) -> Result<FilePushed, ServiceError> {
    service
        .push_template_file(
            &Caller::system(),
            name,
            number,
            file,
            PushOptions::default(),
            body_of(vec![bytes.to_vec()]),
        )
        .await
}

async fn download(service: &Service, name: &str, number: u32, file: &str, range: Option<RequestedRange>) -> Vec<u8> {
    let download =
        service.download_template_file(&Caller::system(), name, number, file, range).await.expect("download starts");
    let pieces: Vec<Bytes> = download.bytes.try_collect().await.expect("download completes");
    pieces.concat()
}

/// The chunk objects storage-fs keeps for the registry.
fn chunk_objects(fixture: &Fixture) -> Vec<PathBuf> {
    let root = fixture.directory.path().join("data/blobs/chunks");
    let mut objects = Vec::new();
    for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for object in std::fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
            objects.push(object.path());
        }
    }
    objects.sort();
    objects
}

/// A qcow2-looking image of `size` bytes whose every MiB differs.
fn qcow2_image(size: usize) -> Vec<u8> {
    let mut image: Vec<u8> = (0..size).map(|index| (index / MIB) as u8 ^ (index % 251) as u8).collect();
    image[..4].copy_from_slice(b"QFI\xfb");
    image
}

#[tokio::test]
async fn a_pushed_file_is_chunked_deduplicated_and_read_back_unchanged() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template_with_version(service, "base").await;
    let image = qcow2_image(3 * MIB + 5);
    // The magic arrives split over two pieces.
    let pieces = vec![image[..2].to_vec(), image[2..300_000].to_vec(), image[300_000..].to_vec()];
    let pushed = service
        .push_template_file(&Caller::system(), "base", 1, "disk", PushOptions::default(), body_of(pieces))
        .await
        .expect("pushed");
    assert_eq!((pushed.bytes_received, pushed.bytes_stored), (image.len() as u64, image.len() as u64));
    assert_eq!((pushed.chunks, pushed.chunks_stored), (4, 4));
    let version = &pushed.template.versions[0];
    assert_eq!((version.size_bytes, version.format), (image.len() as u64, DiskFormat::Qcow2));
    assert_eq!(version.image_sha256.as_deref(), Some(sha256_hex(&image).as_str()));
    assert_eq!(version.files.len(), 1);
    assert_eq!((version.files[0].kind, version.files[0].chunk_count), (FileKind::Disk, 4));
    assert_eq!(chunk_objects(&fixture).len(), 4);
    assert_eq!(events_of_type(service, "template.file_pushed").await.len(), 1);

    assert_eq!(download(service, "base", 1, "disk", None).await, image);
    let range = RequestedRange::From { first: MIB as u64 - 10, last: Some(2 * MIB as u64 + 9) };
    assert_eq!(download(service, "base", 1, "disk", Some(range)).await, image[MIB - 10..2 * MIB + 10]);
    assert_eq!(download(service, "base", 1, "disk", Some(RequestedRange::Suffix(7))).await, image[image.len() - 7..]);
    let outside = service
        .download_template_file(
            &Caller::system(),
            "base",
            1,
            "disk",
            Some(RequestedRange::From { first: 9 * MIB as u64, last: None }),
        )
        .await;
    assert!(matches!(outside, Err(ServiceError::RangeNotSatisfiable { size }) if size == image.len() as u64));

    // Another file of the same version with the same content costs no storage; replacing a
    // file is refused.
    let config = push(service, "base", 1, "vm.json", &image).await.expect("second file");
    assert_eq!((config.file.kind, config.bytes_stored), (FileKind::Config, 0));
    assert_eq!(chunk_objects(&fixture).len(), 4);
    let again = push(service, "base", 1, "disk", b"raw").await;
    assert!(matches!(&again, Err(ServiceError::Conflict(message)) if message.contains("already has a file 'disk'")));
    assert_eq!(download(service, "base", 1, "disk", None).await, image, "the first file stays");
}

#[tokio::test]
async fn bad_pushes_are_refused_and_leave_no_file() {
    let fixture = start_with_settings(fast(json!({ "hosts": 1 })), |settings| {
        settings.max_template_image_bytes = 1000;
    })
    .await;
    let service = &fixture.service;
    template_with_version(service, "base").await;
    let check = |outcome: Result<FilePushed, ServiceError>, expected: &str| match outcome {
        Err(error) => assert!(error.to_string().contains(expected), "{error:?} should mention {expected:?}"),
        Ok(pushed) => panic!("expected an error mentioning {expected:?}, got {pushed:?}"),
    };
    check(push(service, "missing", 1, "disk", &[0; 10]).await, "template 'missing' not found");
    check(push(service, "base", 9, "disk", &[0; 10]).await, "'base:9' not found");
    check(push(service, "base", 1, "../disk", &[0; 10]).await, "file name '../disk'");
    check(push(service, "base", 1, "disk", &[]).await, "the file is empty");
    let too_large = service
        .push_template_file(
            &Caller::system(),
            "base",
            1,
            "disk",
            PushOptions::default(),
            body_of(vec![vec![0; 600], vec![0; 600]]),
        )
        .await;
    assert!(matches!(&too_large, Err(ServiceError::TooLarge(message)) if message.contains("1000 bytes")));
    let broken = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"first part")),
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client went away")),
    ]);
    check(
        service.push_template_file(&Caller::system(), "base", 1, "disk", PushOptions::default(), broken).await,
        "broke off after 10 bytes: client went away",
    );

    let declared = PushOptions { kind: None, sha256: Some(sha256_hex(b"other bytes")) };
    check(
        service.push_template_file(&Caller::system(), "base", 1, "disk", declared, body_of(vec![vec![1; 10]])).await,
        "not the",
    );

    let version = service.resolve_template(&Caller::system(), "base").await.expect("template").versions[0].clone();
    assert!(version.files.is_empty() && !version.has_image(), "{version:?}");
    let download = service.download_template_file(&Caller::system(), "base", 1, "disk", None).await;
    assert!(matches!(download, Err(ServiceError::NotFound { kind: "template file", .. })), "{download:?}");
    let matching = PushOptions { kind: None, sha256: Some(sha256_hex(&[7; 10])) };
    let raw = service
        .push_template_file(&Caller::system(), "base", 1, "disk", matching, body_of(vec![vec![7; 10]]))
        .await
        .expect("pushed with the right digest");
    assert_eq!(raw.template.versions[0].format, DiskFormat::Raw);
}

#[tokio::test]
async fn a_new_tag_pushed_by_chunks_uploads_only_what_changed() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template_with_version(service, "base").await;
    let size = 16 * MIB;
    let first = qcow2_image(size);
    push(service, "base", 1, "disk", &first).await.expect("v1");

    // v2 differs in one MiB; the client chunks it itself and uploads only what is missing.
    let mut second = first.clone();
    second[5 * MIB..6 * MIB].fill(0xee);
    add_version(service, "base", "v2").await;
    let digests: Vec<String> = second.chunks(MIB).map(sha256_hex).collect();
    let missing = service
        .missing_template_chunks(&Caller::system(), "base", ChunkQuery { digests: digests.clone() })
        .await
        .expect("asked");
    assert_eq!(missing, vec![digests[5].clone()]);
    let mut uploaded = 0;
    for (chunk, digest) in second.chunks(MIB).zip(&digests) {
        if missing.contains(digest) {
            uploaded += chunk.len();
            let stored = service
                .upload_template_chunk(&Caller::system(), "base", digest, Bytes::copy_from_slice(chunk))
                .await
                .expect("uploaded");
            assert!(stored);
        }
    }
    assert_eq!(uploaded, MIB);
    let manifest = FileManifest {
        kind: None,
        size_bytes: size as u64,
        sha256: sha256_hex(&second),
        chunk_size: MIB as u64,
        chunks: digests.clone(),
    };
    let committed =
        service.commit_template_file(&Caller::system(), "base", 2, "disk", manifest.clone()).await.expect("committed");
    assert_eq!(committed.file.format, DiskFormat::Qcow2);
    assert_eq!(download(service, "base", 2, "disk", None).await, second);
    assert_eq!(chunk_objects(&fixture).len(), 17, "16 chunks of v1 and the changed one");

    // The same change pushed as a whole stream stores only the changed chunk too.
    add_version(service, "base", "v3").await;
    let mut third = first.clone();
    third[9 * MIB..10 * MIB].fill(0xab);
    let pushed = push(service, "base", 3, "disk", &third).await.expect("v3");
    assert_eq!((pushed.bytes_received, pushed.bytes_stored, pushed.chunks_stored), (size as u64, MIB as u64, 1));

    // A manifest naming a chunk never uploaded for the template, or the wrong digest, is refused.
    add_version(service, "base", "v4").await;
    let foreign = sha256_hex(b"somebody else's data");
    let mut bad = manifest.clone();
    bad.chunks[0] = foreign;
    let refused = service.commit_template_file(&Caller::system(), "base", 4, "disk", bad).await;
    assert!(matches!(&refused, Err(ServiceError::Invalid(message)) if message.contains("not uploaded")), "{refused:?}");
    let mut short = manifest;
    short.size_bytes += MIB as u64;
    let refused = service.commit_template_file(&Caller::system(), "base", 4, "disk", short).await;
    assert!(
        matches!(&refused, Err(ServiceError::Invalid(message)) if message.contains("has 17 chunks")),
        "{refused:?}"
    );
    let lying = service
        .upload_template_chunk(&Caller::system(), "base", &sha256_hex(b"claimed"), Bytes::from_static(b"actual"))
        .await;
    assert!(matches!(&lying, Err(ServiceError::Invalid(message)) if message.contains("hash to")), "{lying:?}");
}

#[tokio::test]
async fn a_corrupted_chunk_is_detected_when_read() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template_with_version(service, "base").await;
    let image = qcow2_image(2 * MIB);
    push(service, "base", 1, "disk", &image).await.expect("pushed");
    let objects = chunk_objects(&fixture);
    let mut corrupted = std::fs::read(&objects[1]).expect("chunk");
    corrupted[100] ^= 0xff;
    std::fs::write(&objects[1], corrupted).expect("corrupt it");

    let download = service.download_template_file(&Caller::system(), "base", 1, "disk", None).await.expect("starts");
    let read: Result<Vec<Bytes>, std::io::Error> = download.bytes.try_collect().await;
    let error = read.expect_err("the corruption is found");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("is corrupted in storage"), "{error}");
}

#[tokio::test]
async fn revert_removes_the_latest_or_a_tag_and_later_and_gc_keeps_referenced_chunks_only() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template(service, "base").await;
    for (number, tag) in [(1, "v1"), (2, "v2"), (3, "v3"), (4, "v4")] {
        add_version(service, "base", tag).await;
        let mut image = qcow2_image(2 * MIB);
        image[MIB..].fill(number as u8);
        push(service, "base", number, "disk", &image).await.expect("pushed");
    }
    assert_eq!(chunk_objects(&fixture).len(), 5, "the first MiB is shared");

    let reverted = service.revert_template(&Caller::system(), "base", None).await.expect("reverted");
    let tags: Vec<&str> = reverted.versions.iter().map(|version| version.tag.as_str()).collect();
    assert_eq!(tags, ["v1", "v2", "v3"]);
    let reverted = service.revert_template(&Caller::system(), "base", Some("v2")).await.expect("reverted");
    assert_eq!(reverted.versions.len(), 1);
    let missing = service.revert_template(&Caller::system(), "base", Some("v9")).await;
    assert!(matches!(missing, Err(ServiceError::NotFound { .. })), "{missing:?}");
    assert_eq!(events_of_type(service, "template.reverted").await.len(), 2);

    // Within the grace period nothing goes; with none, only what v1 does not reference.
    let spared = service.collect_garbage(&Caller::system(), None).await.expect("collected");
    assert_eq!((spared.chunks_deleted, chunk_objects(&fixture).len()), (0, 5));
    let collected = service.collect_garbage(&Caller::system(), Some(std::time::Duration::ZERO)).await.expect("gc");
    assert_eq!((collected.chunks_deleted, collected.bytes_freed), (3, 3 * MIB as u64));
    assert_eq!(chunk_objects(&fixture).len(), 2);
    let mut first = qcow2_image(2 * MIB);
    first[MIB..].fill(1);
    assert_eq!(download(service, "base", 1, "disk", None).await, first, "v1 is intact");

    // An object with no chunk row (a crash between storing and recording) goes too.
    let orphan = fixture.directory.path().join("data/blobs/chunks/ab").join("ab".repeat(32));
    std::fs::create_dir_all(orphan.parent().expect("parent")).expect("directory");
    std::fs::write(&orphan, b"left over").expect("orphan");
    // Left by a crash a while ago: a file written this very millisecond is not older than a
    // cutoff of now.
    let a_minute_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    std::fs::File::options().write(true).open(&orphan).and_then(|file| file.set_modified(a_minute_ago)).expect("mtime");
    let collected = service.collect_garbage(&Caller::system(), Some(std::time::Duration::ZERO)).await.expect("gc");
    assert_eq!((collected.chunks_deleted, collected.orphan_objects_deleted), (0, 1));
    assert!(!orphan.exists());
}

#[tokio::test]
async fn a_version_in_use_cannot_be_reverted() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template_with_version(service, "base").await;
    push(service, "base", 1, "disk", &qcow2_image(MIB)).await.expect("pushed");
    let (task, _) = create_and_wait(service, create_request("base")).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    let refused = service.revert_template(&Caller::system(), "base", None).await;
    assert!(matches!(&refused, Err(ServiceError::Conflict(message)) if message.contains("1 instances")), "{refused:?}");
}

#[tokio::test]
async fn the_driver_reads_the_image_when_it_pulls_the_template() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template_with_version(service, "base").await;
    let image = qcow2_image(2 * MIB + 3);
    push(service, "base", 1, "disk", &image).await.expect("pushed");
    let (task, _) = create_and_wait(service, create_request("base")).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    let cached = events_of_type(service, "host.template_cached").await;
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(cached[0].data["image_bytes_read"], json!(image.len()), "{:?}", cached[0].data);
    let pulled = service.resolve_template(&Caller::system(), "base").await.expect("template");
    assert!(pulled.versions[0].pulled_at.is_some());

    // A version without an image is pulled from an empty source, which the simulator accepts.
    template(service, "bare").await;
    let (task, _) = create_and_wait(service, create_request("bare")).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
}

#[tokio::test]
async fn images_from_before_the_registry_are_imported_at_start() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    let template = template_with_version(service, "old").await;
    let image = qcow2_image(MIB + 77);
    let legacy = fixture.settings.template_images_dir.join(template.id.to_string());
    std::fs::create_dir_all(&legacy).expect("legacy directory");
    std::fs::write(legacy.join("1.img"), &image).expect("legacy image");
    // What migration 0005 makes of an image uploaded before: a file with no chunks yet.
    let file = crate::model::TemplateFile {
        name: "disk".into(),
        kind: FileKind::Disk,
        format: DiskFormat::Qcow2,
        size_bytes: image.len() as u64,
        sha256: sha256_hex(&image),
        chunk_size: 0,
        chunk_count: 0,
        pushed_at: crate::store::now(),
    };
    let mut transaction = service.store().begin().await.expect("transaction");
    crate::store::registry::insert_file(&mut transaction, template.id, 1, &file, &[]).await.expect("file row");
    transaction.commit().await.expect("commit");

    service.import_legacy_template_images().await.expect("imported");
    assert_eq!(download(service, "old", 1, "disk", None).await, image);
    assert!(!legacy.join("1.img").exists(), "the data directory copy is gone");
}
