//! The template registry over HTTP and through the CLI: images pushed as a raw body and
//! downloaded back unchanged (whole and by range), refusals, a push cut short by a crash,
//! incremental pushes and pulls of a new tag (bytes measured), qcow2/raw conversion, revert,
//! delete and garbage collection, and the simulated driver reading the image when it pulls.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, fast_sim_config};

/// A qcow2 image of `size` bytes with a varying pattern.
fn qcow2_image(size: usize) -> Vec<u8> {
    let mut image = b"QFI\xfb".to_vec();
    image.extend((4..size).map(|index| (index % 251) as u8));
    image
}

async fn template_with_version(server: &Server, name: &str) -> String {
    let id = server.create_template(name).await["id"].as_str().expect("id").to_owned();
    let (status, body) = server.post(&format!("/v1/templates/{id}/versions"), json!({ "tag": "v1" })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    id
}

#[tokio::test]
async fn an_uploaded_image_downloads_unchanged_and_the_driver_reads_it_when_pulling() {
    let server = Server::start(&fast_sim_config()).await;
    let id = template_with_version(&server, "qcow-image").await;
    let image = qcow2_image(5 * 1024 * 1024 + 11);
    let path = format!("/v1/templates/{id}/versions/1/image");

    let (status, template) = server.send_bytes(Method::PUT, &path, image.clone().into()).await;
    assert_eq!(status, StatusCode::CREATED, "{template}");
    let version = &template["versions"][0];
    assert_eq!((version["size_bytes"].as_u64(), version["format"].as_str()), (Some(image.len() as u64), Some("qcow2")));
    let sha256 = version["image_sha256"].as_str().expect("sha256").to_owned();

    let (status, headers, downloaded) = server.get_bytes(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(downloaded == image, "the download equals the upload ({} bytes)", downloaded.len());
    assert_eq!(headers["etag"], format!("\"{sha256}\"").as_str());
    assert_eq!(headers["x-disk-format"], "qcow2");

    let (status, body) = server.send_bytes(Method::PUT, &path, b"another image".to_vec().into()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"].as_str().expect("message").contains("already has a file 'disk'"), "{body}");

    // One range, as HTTP asks for it.
    let client = reqwest::Client::new();
    let ranged = client
        .get(format!("{}{path}", server.url))
        .bearer_auth(crate::harness::TOKEN)
        .header("range", "bytes=1048570-1048599")
        .send()
        .await
        .expect("ranged download");
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    let content_range = ranged.headers()["content-range"].to_str().expect("ascii").to_owned();
    assert_eq!(content_range, format!("bytes 1048570-1048599/{}", image.len()));
    assert_eq!(ranged.bytes().await.expect("body").as_ref(), &image[1_048_570..1_048_600]);
    let outside = client
        .get(format!("{}{path}", server.url))
        .bearer_auth(crate::harness::TOKEN)
        .header("range", format!("bytes={}-", image.len()))
        .send()
        .await
        .expect("ranged download");
    assert_eq!(outside.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(outside.headers()["content-range"], format!("bytes */{}", image.len()).as_str());

    let (status, task) = server.post("/v1/instances?wait=60", json!({ "template": "qcow-image" })).await;
    assert_eq!((status, task["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{task}");
    let cached: Vec<Value> =
        server.events_since(0).await.into_iter().filter(|event| event["type"] == "host.template_cached").collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(cached[0]["data"]["image_bytes_read"], json!(image.len()), "{cached:?}");
}

#[tokio::test]
async fn bad_image_requests_name_the_problem() {
    let server = Server::start(&fast_sim_config()).await;
    let id = template_with_version(&server, "raw-image").await;
    for (method, path, expected_status, expected_fragment) in [
        (Method::PUT, "/v1/templates/nope/versions/1/image".to_owned(), StatusCode::NOT_FOUND, "template 'nope'"),
        (Method::PUT, format!("/v1/templates/{id}/versions/7/image"), StatusCode::NOT_FOUND, "raw-image:7"),
        (Method::PUT, format!("/v1/templates/{id}/versions/x/image"), StatusCode::NOT_FOUND, "positive integers"),
        (Method::GET, format!("/v1/templates/{id}/versions/1/image"), StatusCode::NOT_FOUND, "template file"),
        (Method::PUT, format!("/v1/templates/{id}/versions/1/image"), StatusCode::UNPROCESSABLE_ENTITY, "empty"),
    ] {
        let body = if method == Method::PUT && !expected_fragment.contains("empty") { vec![1; 16] } else { Vec::new() };
        let (status, answer) = server.send_bytes(method.clone(), &path, body.into()).await;
        assert_eq!(status, expected_status, "{method} {path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected_fragment), "{method} {path}: {answer}");
    }
    // A body that does not hash to the digest it was sent with is refused and leaves nothing.
    for (header, value) in [
        ("x-content-sha256", "00".repeat(32)),
        ("repr-digest", "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:".to_owned()),
    ] {
        let refused = reqwest::Client::new()
            .put(format!("{}/v1/templates/{id}/versions/1/image", server.url))
            .bearer_auth(crate::harness::TOKEN)
            .header(header, value)
            .body(vec![1_u8; 100])
            .send()
            .await
            .expect("sent");
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY, "{header}");
        let body: Value = refused.json().await.expect("json");
        assert!(body["error"]["message"].as_str().unwrap_or_default().contains("SHA-256"), "{body}");
    }
    // Images are not bound by the 4 MiB limit of JSON bodies.
    let image = vec![0x33; 6 * 1024 * 1024];
    let (status, template) =
        server.send_bytes(Method::PUT, &format!("/v1/templates/{id}/versions/1/image"), image.into()).await;
    assert_eq!(status, StatusCode::CREATED, "{template}");
    assert_eq!(template["versions"][0]["format"], "raw");
}

#[tokio::test]
async fn a_push_cut_short_by_a_crash_leaves_no_file_and_its_chunks_are_collected() {
    let mut server = Server::start(&fast_sim_config()).await;
    let id = template_with_version(&server, "crash-image").await;
    let path = format!("/v1/templates/{id}/versions/1/image");
    // More than a chunk arrives, then nothing more.
    let first_part = futures::stream::iter([Ok::<_, std::io::Error>(vec![9_u8; 1536 * 1024])]);
    let never_ending = first_part.chain(futures::stream::pending());
    let uploading = {
        let request = reqwest::Client::new()
            .put(format!("{}{path}", server.url))
            .bearer_auth(crate::harness::TOKEN)
            .body(reqwest::Body::wrap_stream(never_ending));
        tokio::spawn(async move { request.send().await })
    };
    let chunks = server.data_dir.join("blobs").join("chunks");
    let stored_objects = || walk_files(&chunks).len();
    let started = Instant::now();
    while stored_objects() == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the push never stored a chunk");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.restart();
    let _ = uploading.await;
    let (status, _, _) = server.get_bytes(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no partial file is visible");
    let template = server.get(&format!("/v1/templates/{id}")).await;
    assert_eq!(template["versions"][0]["image_sha256"], Value::Null, "{template}");
    assert_eq!(template["versions"][0]["files"], json!([]), "{template}");

    let (status, kept) = server.post("/v1/registry/gc", json!({})).await;
    assert_eq!((status, kept["chunks_deleted"].as_u64()), (StatusCode::OK, Some(0)), "young chunks are spared");
    // The crash may have come before or after the chunk was recorded: either way it goes.
    let (status, collected) = server.post("/v1/registry/gc?min_age_secs=0", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{collected}");
    let removed =
        collected["chunks_deleted"].as_u64().unwrap_or(0) + collected["orphan_objects_deleted"].as_u64().unwrap_or(0);
    assert_eq!((removed, collected["bytes_freed"].as_u64()), (1, Some(1024 * 1024)), "{collected}");
    assert_eq!(stored_objects(), 0);
}

fn walk_files(directory: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn hyperplane(server: &Server, arguments: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_hyperplane"))
        .args(["--url", &server.url, "--token", crate::harness::TOKEN, "--json"])
        .args(arguments)
        .output()
        .expect("run the hyperplane binary");
    assert!(output.status.success(), "hyperplane {arguments:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json output")
}

/// A 512 MiB image whose every MiB differs (so no chunk is shared by accident).
fn large_image() -> Vec<u8> {
    const MIB: usize = 1024 * 1024;
    let mut image = vec![0_u8; 512 * MIB];
    for (index, chunk) in image.chunks_mut(MIB).enumerate() {
        chunk.fill((index % 251) as u8);
        chunk[..8].copy_from_slice(&(index as u64).to_le_bytes());
    }
    image
}

#[tokio::test]
async fn a_new_tag_with_one_changed_mib_of_512_costs_one_mib_each_way() {
    const MIB: u64 = 1024 * 1024;
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("big").await;
    let work = tempfile::tempdir().expect("temporary directory");
    let first = work.path().join("v1.img");
    let mut image = large_image();
    std::fs::write(&first, &image).expect("v1 image");

    let pushed = hyperplane(&server, &["template", "push", "big", first.to_str().expect("path"), "--tag", "v1"]);
    assert_eq!((pushed["bytes_sent"].as_u64(), pushed["chunks"].as_u64()), (Some(512 * MIB), Some(512)), "{pushed}");

    // Tag v2 changes one MiB in the middle.
    image[300 * MIB as usize..301 * MIB as usize].fill(0xfe);
    let second = work.path().join("v2.img");
    std::fs::write(&second, &image).expect("v2 image");
    let pushed = hyperplane(&server, &["template", "push", "big", second.to_str().expect("path"), "--tag", "v2"]);
    assert_eq!((pushed["bytes_sent"].as_u64(), pushed["chunks_sent"].as_u64()), (Some(MIB), Some(1)), "{pushed}");
    println!("incremental push of v2: {} bytes sent for a {} byte image", pushed["bytes_sent"], image.len());

    // Pulling v2 onto a local copy of v1 downloads the changed MiB only, and the result is v2.
    let local = work.path().join("local.img");
    std::fs::copy(&first, &local).expect("a local v1");
    let pulled = hyperplane(&server, &["template", "pull", "big", local.to_str().expect("path"), "--tag", "v2"]);
    assert_eq!(pulled["bytes_downloaded"].as_u64(), Some(MIB), "{pulled}");
    println!("incremental pull of v2 onto v1: {} bytes downloaded", pulled["bytes_downloaded"]);
    assert!(std::fs::read(&local).expect("pulled") == image, "the pulled file is v2");
    let fresh = work.path().join("fresh.img");
    let pulled = hyperplane(&server, &["template", "pull", "big", fresh.to_str().expect("path")]);
    assert_eq!((pulled["bytes_downloaded"].as_u64(), pulled["tag"].as_str()), (Some(512 * MIB), Some("v2")));

    // Revert drops v2; collecting garbage then frees exactly its one chunk.
    let reverted = hyperplane(&server, &["template", "revert", "big"]);
    assert_eq!(reverted[0]["versions"].as_array().map(Vec::len), Some(1), "{reverted}");
    let collected = hyperplane(&server, &["template", "gc", "--min-age-secs", "0"]);
    assert_eq!((collected["chunks_deleted"].as_u64(), collected["bytes_freed"].as_u64()), (Some(1), Some(MIB)));
    let deleted = Command::new(env!("CARGO_BIN_EXE_hyperplane"))
        .args(["--url", &server.url, "--token", crate::harness::TOKEN, "template", "rm", "big"])
        .output()
        .expect("run");
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    let collected = hyperplane(&server, &["template", "gc", "--min-age-secs", "0"]);
    assert_eq!(collected["chunks_deleted"].as_u64(), Some(512), "{collected}");
}

#[tokio::test]
async fn the_cli_distributes_a_tag_to_every_host_and_shows_each_host() {
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("spread").await;
    let work = tempfile::tempdir().expect("temporary directory");
    let image = work.path().join("disk.img");
    std::fs::write(&image, vec![5_u8; 3 * 1024 * 1024]).expect("image");
    hyperplane(&server, &["template", "push", "spread", image.to_str().expect("path"), "--tag", "v1"]);

    let outcome = hyperplane(&server, &["template", "distribute", "spread", "--wait"]);
    assert_eq!(outcome["batch"]["state"], "succeeded", "{outcome}");
    let pulls = outcome["pulls"].as_array().expect("pulls");
    let hosts = server.get("/v1/hosts").await;
    assert_eq!(pulls.len(), hosts.as_array().map_or(0, Vec::len), "{outcome}");
    for pull in pulls {
        assert_eq!((pull["state"].as_str(), pull["result"]["bytes_read"].as_u64()), (Some("succeeded"), Some(3 << 20)));
    }
    let hosts = server.get("/v1/hosts").await;
    for host in hosts.as_array().expect("hosts") {
        assert_eq!(host["cached_templates"][0]["name"], "spread", "{host}");
        assert!(host["cached_templates"][0]["last_used_at"].is_string(), "{host}");
    }
}

#[tokio::test]
async fn the_cli_saves_a_running_instance_as_a_new_template() {
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("origin").await;
    let work = tempfile::tempdir().expect("temporary directory");
    let image = work.path().join("disk.img");
    std::fs::write(&image, vec![3_u8; 2 * 1024 * 1024]).expect("image");
    hyperplane(&server, &["template", "push", "origin", image.to_str().expect("path"), "--tag", "v1"]);
    let (status, task) = server.post("/v1/instances?wait=60", json!({ "template": "origin" })).await;
    assert_eq!((status, task["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{task}");
    let id = task["object_id"].as_str().expect("the instance").to_owned();

    let saved = hyperplane(&server, &["instance", "save", &id, "--new-template", "golden", "--tag", "v1", "--wait"]);
    assert_eq!(saved[0]["state"], "succeeded", "{saved}");
    assert_eq!(saved[0]["result"]["size_bytes"].as_u64(), Some(2 * 1024 * 1024), "{saved}");
    let golden = server.get("/v1/templates/golden").await;
    assert_eq!(golden["versions"][0]["tag"], "v1", "{golden}");
    let instance = server.get(&format!("/v1/instances/{id}")).await;
    assert_eq!(instance["state"], "terminated", "{instance}");
    let pulled = work.path().join("golden.img");
    hyperplane(&server, &["template", "pull", "golden", pulled.to_str().expect("path")]);
    assert_eq!(std::fs::metadata(&pulled).expect("pulled").len(), 2 * 1024 * 1024);
}

#[tokio::test]
async fn images_convert_between_raw_and_qcow2_on_push_and_pull() {
    // qemu-img comes with this kind of machine; the libvirt test bed installs it where it does not.
    crate::libvirt_bed::bed();
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("converted").await;
    let work = tempfile::tempdir().expect("temporary directory");
    let raw = work.path().join("disk.raw");
    let mut bytes = vec![0_u8; 4 * 1024 * 1024];
    bytes[1024 * 1024..1024 * 1024 + 11].copy_from_slice(b"hello world");
    std::fs::write(&raw, &bytes).expect("raw image");

    let pushed = hyperplane(
        &server,
        &["template", "push", "converted", raw.to_str().expect("path"), "--tag", "v1", "--convert-to", "qcow2"],
    );
    assert_eq!(pushed["file"]["format"], "qcow2", "{pushed}");
    let back = work.path().join("back.raw");
    let pulled =
        hyperplane(&server, &["template", "pull", "converted", back.to_str().expect("path"), "--convert-to", "raw"]);
    assert_eq!(pulled["tag"], "v1", "{pulled}");
    assert!(std::fs::read(&back).expect("converted back") == bytes, "raw → qcow2 → raw is lossless");
}
