//! Suspend and resume, graceful stops with a grace period, snapshots and the console over
//! HTTP on the simulated driver.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, fast_sim_config};

async fn running_instance(server: &Server) -> String {
    server.create_template("ops-image").await;
    let (status, task) = server.post("/v1/instances?wait=60", json!({ "template": "ops-image" })).await;
    assert_eq!((status, task["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{task}");
    task["object_id"].as_str().expect("instance id").to_owned()
}

/// POSTs `path` and expects the task to succeed.
async fn succeeded(server: &Server, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, task) = server.request(method.clone(), path, body).await;
    assert_eq!((status, task["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{method} {path}: {task}");
    task
}

async fn state_of(server: &Server, id: &str) -> Value {
    server.get(&format!("/v1/instances/{id}")).await["state"].clone()
}

#[tokio::test]
async fn suspend_resume_and_a_stop_with_a_grace_period() {
    let server = Server::start(&fast_sim_config()).await;
    let id = running_instance(&server).await;
    succeeded(&server, Method::POST, &format!("/v1/instances/{id}/actions/suspend?wait=30"), None).await;
    assert_eq!(state_of(&server, &id).await, "suspended");
    let (status, body) = server.post(&format!("/v1/instances/{id}/actions/suspend"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    succeeded(&server, Method::POST, &format!("/v1/instances/{id}/actions/resume?wait=30"), None).await;
    assert_eq!(state_of(&server, &id).await, "running");

    for (query, expected_fragment) in [("grace=-2", "grace must be between 0 and 3600"), ("grace=soon", "grace")] {
        let (status, body) = server.post(&format!("/v1/instances/{id}/actions/stop?{query}"), json!({})).await;
        assert!(status.is_client_error(), "{query}: {status} {body}");
        assert!(body["error"]["message"].as_str().expect("message").contains(expected_fragment), "{query}: {body}");
    }
    succeeded(&server, Method::POST, &format!("/v1/instances/{id}/actions/stop?grace=0.5&wait=30"), None).await;
    assert_eq!(state_of(&server, &id).await, "stopped");
    let (status, body) = server.post(&format!("/v1/instances/{id}/actions/hibernate"), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn snapshots_over_http_with_every_refusal_named() {
    let server = Server::start(&fast_sim_config()).await;
    let id = running_instance(&server).await;
    let snapshots = format!("/v1/instances/{id}/snapshots");

    let (status, task) = server.post(&snapshots, json!({ "name": "clean", "description": "fresh" })).await;
    assert!(status == StatusCode::ACCEPTED || status == StatusCode::OK, "{status} {task}");
    let task = server.get(&format!("/v1/tasks/{}?wait=30", task["id"].as_str().expect("task id"))).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    for (body, expected_status, expected_fragment) in [
        (json!({ "name": "clean" }), StatusCode::CONFLICT, "already has a snapshot named 'clean'"),
        (json!({ "name": "no/slash" }), StatusCode::UNPROCESSABLE_ENTITY, "snapshot name 'no/slash' must be 1-64"),
        (json!({ "name": "" }), StatusCode::UNPROCESSABLE_ENTITY, "snapshot name '' must be"),
        (json!({ "nam": "typo" }), StatusCode::BAD_REQUEST, "nam"),
    ] {
        let (status, answer) = server.post(&snapshots, body.clone()).await;
        assert_eq!(status, expected_status, "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().expect("message").contains(expected_fragment), "{answer}");
    }

    succeeded(&server, Method::POST, &format!("/v1/instances/{id}/actions/stop?wait=30"), None).await;
    let listed = server.get(&snapshots).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!((listed[0]["name"].as_str(), listed[0]["state"].as_str()), (Some("clean"), Some("running")));

    succeeded(&server, Method::POST, &format!("{snapshots}/clean/revert?wait=30"), None).await;
    assert_eq!(state_of(&server, &id).await, "running", "the instance follows the snapshot's state");
    let (status, body) = server.post(&format!("{snapshots}/missing/revert"), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let console = server.get(&format!("/v1/instances/{id}/console")).await;
    assert_eq!((console["protocol"].as_str(), console["host"].as_str()), (Some("vnc"), Some("127.0.0.1")), "{console}");
    assert!(console["port"].as_u64().is_some_and(|port| port > 0), "{console}");

    succeeded(&server, Method::DELETE, &format!("{snapshots}/clean?wait=30"), None).await;
    assert_eq!(server.get(&snapshots).await, json!([]));
    let (status, body) = server.request(Method::DELETE, &format!("{snapshots}/clean"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let kinds: Vec<String> = server
        .events_since(0)
        .await
        .iter()
        .filter_map(|event| event["type"].as_str().filter(|kind| kind.contains("snapshot")).map(str::to_owned))
        .collect();
    assert_eq!(kinds, ["instance.snapshot_created", "instance.snapshot_reverted", "instance.snapshot_deleted"]);
}
