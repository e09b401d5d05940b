//! Template images over HTTP: upload as a raw body, download it back unchanged, refusals, an
//! upload cut short by a crash, and the simulated driver reading the image when it pulls.

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
    assert!(body["error"]["message"].as_str().expect("message").contains("already has an image"), "{body}");

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
        (Method::GET, format!("/v1/templates/{id}/versions/1/image"), StatusCode::NOT_FOUND, "template image"),
        (Method::PUT, format!("/v1/templates/{id}/versions/1/image"), StatusCode::UNPROCESSABLE_ENTITY, "empty"),
    ] {
        let body = if method == Method::PUT && !expected_fragment.contains("empty") { vec![1; 16] } else { Vec::new() };
        let (status, answer) = server.send_bytes(method.clone(), &path, body.into()).await;
        assert_eq!(status, expected_status, "{method} {path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected_fragment), "{method} {path}: {answer}");
    }
    // Images are not bound by the 4 MiB limit of JSON bodies.
    let image = vec![0x33; 6 * 1024 * 1024];
    let (status, template) =
        server.send_bytes(Method::PUT, &format!("/v1/templates/{id}/versions/1/image"), image.into()).await;
    assert_eq!(status, StatusCode::CREATED, "{template}");
    assert_eq!(template["versions"][0]["format"], "raw");
}

#[tokio::test]
async fn an_upload_cut_short_by_a_crash_leaves_no_image_and_no_file() {
    let mut server = Server::start(&fast_sim_config()).await;
    let id = template_with_version(&server, "crash-image").await;
    let path = format!("/v1/templates/{id}/versions/1/image");
    let first_part = futures::stream::iter([Ok::<_, std::io::Error>(vec![9_u8; 64 * 1024])]);
    let never_ending = first_part.chain(futures::stream::pending());
    let uploading = {
        let request = reqwest::Client::new()
            .put(format!("{}{path}", server.url))
            .bearer_auth(crate::harness::TOKEN)
            .body(reqwest::Body::wrap_stream(never_ending));
        tokio::spawn(async move { request.send().await })
    };
    let incoming = server.data_dir.join("templates").join(".incoming");
    let started = Instant::now();
    while std::fs::read_dir(&incoming).map_or(0, |entries| entries.count()) == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the upload never reached the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.restart();
    let _ = uploading.await;
    assert_eq!(std::fs::read_dir(&incoming).map_or(0, |entries| entries.count()), 0, "the partial upload is gone");
    let (status, _, _) = server.get_bytes(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let template = server.get(&format!("/v1/templates/{id}")).await;
    assert_eq!(template["versions"][0]["image_sha256"], Value::Null, "{template}");
}
