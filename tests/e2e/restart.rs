//! Crash the server in the middle of work; after the restart nothing is lost or doubled.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::harness::Server;

#[tokio::test]
async fn a_crash_during_creates_leaves_every_instance_accounted_for_once_and_every_task_ended() {
    // Slow transitions so that the crash lands in the middle of the work.
    let config = r#"
[reconcile]
interval_secs = 0.5

[[providers]]
name = "sim"
driver = "driver-sim"
config = { hosts = 4, cpu = 64, ram_mb = 262144, delays_ms = { create = 300, start = 600, stop = 100, restart = 100, delete = 50, pull = 200 } }
"#;
    let mut server = Server::start(config).await;
    server.create_template("crashy").await;
    let mut task_ids = Vec::new();
    for index in 0..20 {
        let (status, task) =
            server.post("/v1/instances", json!({ "template": "crashy", "name": format!("c-{index}") })).await;
        assert!(status.is_success(), "{task}");
        task_ids.push(task["id"].as_str().expect("id").to_owned());
    }
    // Let some work start, then crash.
    server
        .wait_until("/v1/tasks?state=running", Duration::from_secs(20), |tasks| {
            tasks.as_array().is_some_and(|tasks| !tasks.is_empty())
        })
        .await;
    server.kill();
    server.restart();

    for id in &task_ids {
        let task = server.get(&format!("/v1/tasks/{id}?wait=120")).await;
        assert!(matches!(task["state"].as_str(), Some("succeeded")), "task ended well after the restart: {task}");
    }
    let unfinished = server.get("/v1/tasks?state=running").await;
    assert_eq!(unfinished, json!([]));
    let pending = server.get("/v1/tasks?state=pending").await;
    assert_eq!(pending, json!([]));

    // Two reconciliation passes later, the provider and the database still agree: exactly
    // the 20 instances, none discovered behind our back, none gone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let instances = server.all_instances().await;
    let names: HashSet<&str> = instances.iter().map(|instance| instance["name"].as_str().expect("name")).collect();
    assert_eq!(instances.len(), 20, "{instances:?}");
    assert_eq!(names.len(), 20);
    assert!(
        instances.iter().all(|instance| instance["state"] == "running" && instance["origin"] == "api"),
        "{instances:?}"
    );
    let events = server.events_since(0).await;
    assert!(events.iter().any(|event| event["type"] == "task.resumed"), "the crash interrupted running tasks");
    assert!(events.iter().all(|event| event["type"] != "instance.drift"), "no drift after the restart");
}
