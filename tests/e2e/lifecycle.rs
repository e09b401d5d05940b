//! The VM lifecycle through the API on the simulated driver.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, fast_sim_config};

#[tokio::test]
async fn quick_start_create_three_then_stop_start_restart_delete() {
    let server = Server::start(&fast_sim_config()).await;
    assert_eq!(server.raw(Method::GET, "/health", "", None).await.0, StatusCode::OK);
    server.create_template("ubuntu-24.04").await;

    let (status, task) = server
        .post("/v1/instances?wait=60", json!({ "template": "ubuntu-24.04", "vcpu": 2, "ram_mb": 2048, "count": 3 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["kind"], "batch");
    assert_eq!(task["state"], "succeeded", "{task}");
    let instances = server.get("/v1/instances").await["items"].as_array().cloned().expect("items");
    assert_eq!(instances.len(), 3);
    for instance in &instances {
        assert_eq!(instance["state"], "running", "{instance}");
        assert!(instance["ip"].is_string(), "{instance}");
        assert!(instance["host_id"].is_string(), "{instance}");
    }

    let id = instances[0]["id"].as_str().expect("id");
    for (action, expected) in [("stop", "stopped"), ("start", "running"), ("restart", "running")] {
        let (status, task) = server.post(&format!("/v1/instances/{id}/actions/{action}?wait=30"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{action}: {task}");
        assert_eq!(task["state"], "succeeded", "{action}: {task}");
        assert_eq!(server.get(&format!("/v1/instances/{id}")).await["state"], expected, "after {action}");
    }
    // Stopping a stopped instance is refused, not queued.
    let (status, task) = server.post(&format!("/v1/instances/{id}/actions/stop?wait=30"), json!({})).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    let (status_again, body) = server.post(&format!("/v1/instances/{id}/actions/stop"), json!({})).await;
    assert_eq!((status, status_again), (StatusCode::OK, StatusCode::CONFLICT), "{body}");
    assert!(body["error"]["message"].as_str().expect("message").contains("stopped"), "{body}");

    let (status, task) = server.request(Method::DELETE, &format!("/v1/instances/{id}?wait=30"), None).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(server.get(&format!("/v1/instances/{id}")).await["state"], "terminated");
    assert_eq!(server.get("/v1/instances").await["items"].as_array().expect("items").len(), 2);
    let terminated = server.get("/v1/instances?filter=state=terminated").await;
    assert_eq!(terminated["items"].as_array().expect("items").len(), 1);
}

#[tokio::test]
async fn fifty_concurrent_creates_all_run_and_no_host_is_over_committed() {
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("ci-image").await;
    // 5 hosts x 20 vCPU = 100 vCPU: 50 instances of 2 vCPU fill the fleet exactly.
    let creates = (0..50).map(|index| {
        let server = &server;
        async move {
            server
                .post(
                    "/v1/instances",
                    json!({ "template": "ci-image", "vcpu": 2, "ram_mb": 1024, "name": format!("job-{index}") }),
                )
                .await
        }
    });
    let answers = futures::future::join_all(creates).await;
    let mut task_ids = Vec::new();
    for (status, task) in answers {
        assert_eq!(status, StatusCode::ACCEPTED, "{task}");
        task_ids.push(task["id"].as_str().expect("task id").to_owned());
    }
    for id in &task_ids {
        let task = server.get(&format!("/v1/tasks/{id}?wait=120")).await;
        assert_eq!(task["state"], "succeeded", "{task}");
    }
    let instances = server.get("/v1/instances?limit=1000").await["items"].as_array().cloned().expect("items");
    assert_eq!(instances.len(), 50);
    assert!(instances.iter().all(|instance| instance["state"] == "running"));
    let hosts = server.get("/v1/hosts").await;
    let hosts = hosts.as_array().expect("hosts");
    assert_eq!(hosts.len(), 5);
    let mut placed = 0;
    for host in hosts {
        let used = host["usage"]["vcpu"].as_u64().expect("usage");
        assert!(used <= host["cpu"].as_u64().expect("cpu"), "over-committed host: {host}");
        let on_host = instances.iter().filter(|instance| instance["host_id"] == host["id"]).count() as u64;
        assert_eq!(on_host * 2, used, "usage matches the instances on {}", host["name"]);
        placed += on_host;
    }
    assert_eq!(placed, 50);

    // The fleet is full: one more waits in `scheduling`, says why, and is placed as soon as
    // an instance is deleted.
    let (status, waiting) =
        server.post("/v1/instances", json!({ "template": "ci-image", "vcpu": 2, "ram_mb": 1024 })).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let waiting_id = waiting["id"].as_str().expect("task id").to_owned();
    let task = server
        .wait_until(&format!("/v1/tasks/{waiting_id}"), Duration::from_secs(10), |task| {
            task["message"].as_str().is_some_and(|message| message.contains("full"))
        })
        .await;
    assert_eq!(task["state"], "pending", "{task}");
    assert!(task["message"].as_str().expect("message").contains("5 full"), "{task}");
    let victim = instances[0]["id"].as_str().expect("id");
    let (status, _) = server.request(Method::DELETE, &format!("/v1/instances/{victim}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let task = server.get(&format!("/v1/tasks/{waiting_id}?wait=60")).await;
    assert_eq!(task["state"], "succeeded", "{task}");
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_returns_the_original_task() {
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("base").await;
    let send = |body: Value| {
        let server = &server;
        async move {
            let response = reqwest::Client::new()
                .post(format!("{}/v1/instances", server.url))
                .bearer_auth(crate::harness::TOKEN)
                .header("Idempotency-Key", "job-42-attempt")
                .body(body.to_string())
                .send()
                .await
                .expect("answer");
            let status = response.status();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let body = json!({ "template": "base", "count": 2 });
    let (first_status, first) = send(body.clone()).await;
    let (second_status, second) = send(body.clone()).await;
    assert_eq!(first_status, StatusCode::ACCEPTED, "{first}");
    assert!(second_status.is_success(), "{second}");
    assert_eq!(first["id"], second["id"]);
    let (status, conflict) = send(json!({ "template": "base", "count": 3 })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert!(conflict["error"]["message"].as_str().expect("message").contains("Idempotency-Key"));
    server.get(&format!("/v1/tasks/{}?wait=60", first["id"].as_str().expect("id"))).await;
    assert_eq!(server.all_instances().await.len(), 2, "the retry created nothing");
}

#[tokio::test]
async fn lists_page_with_cursors_filter_project_fields_and_stream_ndjson() {
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("alpha").await;
    server.create_template("beta").await;
    let (_, task) = server.post("/v1/instances?wait=60", json!({ "template": "alpha", "count": 5, "name": "a" })).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    let (_, task) = server
        .post(
            "/v1/instances?wait=60",
            json!({ "template": "beta", "name": "b", "external_id": "ext-1", "metadata": { "team": "ci" } }),
        )
        .await;
    assert_eq!(task["state"], "succeeded", "{task}");

    let mut seen = Vec::new();
    let mut path = "/v1/instances?limit=2".to_owned();
    loop {
        let page = server.get(&path).await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|item| item["id"].clone()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/instances?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    let unique: std::collections::HashSet<_> = seen.iter().map(Value::to_string).collect();
    assert_eq!(unique.len(), 6, "no instance is listed twice");

    let beta = server.get("/v1/instances?filter=template=beta").await;
    assert_eq!(beta["items"].as_array().expect("items").len(), 1);
    let by_external = server.get("/v1/instances?filter=external_id=ext-1,state=running").await;
    assert_eq!(by_external["items"][0]["metadata"]["team"], "ci");
    let named = server.get("/v1/instances?filter=name=a-3&fields=id,name").await;
    let only = named["items"][0].as_object().expect("object");
    assert_eq!(only.keys().cloned().collect::<Vec<_>>(), vec!["id".to_owned(), "name".to_owned()]);
    let host = named["items"][0]["id"].clone();
    assert!(host.is_string());

    let response = reqwest::Client::new()
        .get(format!("{}/v1/instances?filter=template=alpha&fields=id,state", server.url))
        .bearer_auth(crate::harness::TOKEN)
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.expect("body");
    let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).expect("json line")).collect();
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|line| line["state"] == "running"));

    let (status, renamed) = server
        .request(
            Method::PATCH,
            &format!("/v1/instances/{}", lines[0]["id"].as_str().expect("id")),
            Some(json!({ "name": "renamed" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["name"], "renamed");
    let stored = server.get(&format!("/v1/instances/{}", lines[0]["id"].as_str().expect("id"))).await;
    let kept = |instance: &Value| (instance["name"].clone(), instance["state"].clone(), instance["mac"].clone());
    assert_eq!(kept(&stored), kept(&renamed), "the rename is stored and the rest as it was");
    assert_eq!(stored["state"], "running");
}

#[tokio::test]
async fn a_requested_mac_and_vlan_reach_the_driver_and_bad_ones_are_refused() {
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("net-image").await;
    let (status, task) = server
        .post(
            "/v1/instances?wait=30",
            json!({ "template": "net-image", "name": "tagged", "mac": "52:54:00:AB:CD:EF", "vlan": 42 }),
        )
        .await;
    assert_eq!((status, task["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{task}");
    let instance = server.get("/v1/instances?filter=name=tagged").await["items"][0].clone();
    // The driver reports the MAC it gave the NIC: the requested one, normalized.
    assert_eq!((instance["mac"].as_str(), instance["vlan"].as_u64()), (Some("52:54:00:ab:cd:ef"), Some(42)));

    for (body, expected) in [
        (json!({ "template": "net-image", "mac": "52:54:00:ab:cd:ef" }), "already used by instance"),
        (json!({ "template": "net-image", "mac": "52:54:00:00:00:01", "count": 2 }), "needs count 1"),
        (json!({ "template": "net-image", "mac": "01:00:5e:00:00:01" }), "unicast"),
        (json!({ "template": "net-image", "mac": "52:54:00:00:01" }), "six hex bytes"),
        (json!({ "template": "net-image", "vlan": 4095 }), "vlan must be between 1 and 4094"),
    ] {
        let (status, body) = server.post("/v1/instances", body.clone()).await;
        assert!(status.is_client_error(), "{status} {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{message:?} should say {expected:?}");
    }
    // Once the first instance is gone, its MAC is free again.
    let id = instance["id"].as_str().expect("id");
    let (status, _) = server.request(Method::DELETE, &format!("/v1/instances/{id}?wait=30"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, task) =
        server.post("/v1/instances?wait=30", json!({ "template": "net-image", "mac": "52:54:00:ab:cd:ef" })).await;
    assert_eq!((status, task["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{task}");
}
