//! Removing a cached template from a host over HTTP (and the CLI), on the simulated driver:
//! refusals, the task, the host's list and the event.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, TOKEN, fast_sim_config};

fn cached_names(host: &Value) -> Vec<String> {
    host["cached_templates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|cached| cached["name"].as_str().map(str::to_owned))
        .collect()
}

/// Creates a running instance of `template`; answers its id and host id.
async fn running_instance(server: &Server, template: &str, host_id: Option<&str>) -> (String, String) {
    let mut request = json!({ "template": template });
    if let Some(host_id) = host_id {
        request["host_id"] = json!(host_id);
    }
    let (status, task) = server.post("/v1/instances?wait=60", request).await;
    assert_eq!((status, task["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{task}");
    let id = task["object_id"].as_str().or(task["result"]["instance_id"].as_str()).expect("instance id").to_owned();
    let instance = server.get(&format!("/v1/instances/{id}")).await;
    (id, instance["host_id"].as_str().expect("placed").to_owned())
}

async fn delete_instance(server: &Server, id: &str) {
    let (status, task) = server.request(Method::DELETE, &format!("/v1/instances/{id}?wait=60"), None).await;
    assert_eq!((status, task["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{task}");
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_cached_template_is_removed_from_a_host_over_http_and_the_cli() {
    let server = Server::start(&fast_sim_config()).await;
    let template_id = server.create_template("cached-image").await["id"].as_str().expect("id").to_owned();
    let (instance, host_id) = running_instance(&server, "cached-image", None).await;
    let host = server.get(&format!("/v1/hosts/{host_id}")).await;
    assert!(cached_names(&host).contains(&"cached-image".to_owned()), "{host}");
    let other_host = server
        .get("/v1/hosts")
        .await
        .as_array()
        .expect("hosts")
        .iter()
        .find(|other| other["id"] != host_id.as_str())
        .and_then(|other| other["id"].as_str().map(str::to_owned))
        .expect("a second host");
    let path = format!("/v1/templates/{template_id}/hosts/{host_id}");

    // Still used: 409 naming the instance.
    let (status, body) = server.request(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(message(&body).contains(&instance), "{body}");
    delete_instance(&server, &instance).await;

    // Unknown template or host, not cached on that host, a bad version: refused before any task.
    let (status, body) = server.request(Method::DELETE, &format!("/v1/templates/nope/hosts/{host_id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let unknown_host = "0190a0a0-0000-7000-8000-000000000000";
    let (status, body) =
        server.request(Method::DELETE, &format!("/v1/templates/{template_id}/hosts/{unknown_host}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) =
        server.request(Method::DELETE, &format!("/v1/templates/{template_id}/hosts/{other_host}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(message(&body).contains("cached-image") && message(&body).contains("on host"), "{body}");
    let (status, body) = server.request(Method::DELETE, &format!("{path}?version=2"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = server.request(Method::DELETE, &format!("{path}?version=two"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        server
            .get("/v1/tasks")
            .await
            .as_array()
            .expect("tasks")
            .iter()
            .all(|task| task["kind"] != "template.remove_from_host")
    );

    // Accepted: 202 with the task, which removes the template from the host.
    let (status, task) = server.request(Method::DELETE, &path, None).await;
    assert!(status == StatusCode::ACCEPTED || status == StatusCode::OK, "{status} {task}");
    assert_eq!(
        (task["kind"].as_str(), task["object_id"].as_str()),
        (Some("template.remove_from_host"), Some(host_id.as_str()))
    );
    let task = server.get(&format!("/v1/tasks/{}?wait=30", task["id"].as_str().expect("task id"))).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    let host = server.get(&format!("/v1/hosts/{host_id}")).await;
    assert!(!cached_names(&host).contains(&"cached-image".to_owned()), "{host}");
    let removed: Vec<Value> =
        server.events_since(0).await.into_iter().filter(|event| event["type"] == "host.template_removed").collect();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(
        (removed[0]["object_id"].as_str(), removed[0]["data"]["template"].as_str()),
        (Some(host_id.as_str()), Some("cached-image"))
    );
    let (status, body) = server.request(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "removed already: {body}");

    // The CLI: cached again by a new instance, removed by name with --wait.
    let (instance, _) = running_instance(&server, "cached-image", Some(&host_id)).await;
    delete_instance(&server, &instance).await;
    let host_name = host["name"].as_str().expect("host name");
    let output = Command::new(env!("CARGO_BIN_EXE_hyperplane"))
        .args(["--url", &server.url, "--token", TOKEN, "--json", "template", "rm-from-host", "cached-image", host_name])
        .args(["--version", "0", "--wait"])
        .output()
        .expect("run the hyperplane binary");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let task: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(task[0]["state"], "succeeded", "{task}");
    assert!(!cached_names(&server.get(&format!("/v1/hosts/{host_id}")).await).contains(&"cached-image".to_owned()));
}
