//! Fleet management through the API: drain, groups with fallback, labels, anti-affinity,
//! priority, and placement you can ask about.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, fast_sim_config};

async fn hosts(server: &Server) -> Vec<Value> {
    server.get("/v1/hosts").await.as_array().cloned().expect("hosts")
}

async fn patch(server: &Server, path: &str, body: Value) -> Value {
    let (status, answer) = server.request(Method::PATCH, path, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "PATCH {path}: {answer}");
    answer
}

async fn create_and_wait(server: &Server, body: Value) -> Value {
    let (status, task) = server.post("/v1/instances?wait=60", body).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["state"], "succeeded", "{task}");
    task
}

async fn host_of(server: &Server, task: &Value) -> String {
    let instance = task["object_id"].as_str().expect("single instance task");
    server.get(&format!("/v1/instances/{instance}")).await["host_id"].as_str().expect("placed").to_owned()
}

#[tokio::test]
async fn drain_groups_labels_and_anti_affinity_steer_placement() {
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("fleet").await;
    let all = hosts(&server).await;
    let id = |index: usize| all[index]["id"].as_str().expect("id").to_owned();

    // Draining: running instances stay, new ones go elsewhere.
    let first = create_and_wait(&server, json!({ "template": "fleet", "host_id": id(0) })).await;
    let drained = patch(&server, &format!("/v1/hosts/{}", id(0)), json!({ "draining": true })).await;
    assert_eq!(drained["state"], "draining");
    for _ in 0..3 {
        let task = create_and_wait(&server, json!({ "template": "fleet" })).await;
        assert_ne!(host_of(&server, &task).await, id(0));
    }
    let still = server.get(&format!("/v1/instances/{}", first["object_id"].as_str().expect("id"))).await;
    assert_eq!(still["state"], "running");

    // Groups: "small" holds one instance, then overflows to "big"; a cycle is refused.
    let (status, big) = server.post("/v1/groups", json!({ "name": "big", "strategy": "pack" })).await;
    assert_eq!(status, StatusCode::CREATED, "{big}");
    let (status, small) = server.post("/v1/groups", json!({ "name": "small", "fallback_group": "big" })).await;
    assert_eq!(status, StatusCode::CREATED, "{small}");
    let (status, _) = server.post("/v1/groups/small/hosts", json!({ "host_ids": [id(1)] })).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.post("/v1/groups/big/hosts", json!({ "host_ids": [id(2), id(3)] })).await;
    assert_eq!(status, StatusCode::OK);
    patch(&server, &format!("/v1/hosts/{}", id(1)), json!({ "capacity": { "mode": "number", "max_instances": 1 } }))
        .await;
    let used_on_small = hosts(&server).await[1]["usage"]["instances"].as_u64().expect("usage");
    let in_group: Vec<String> = {
        let mut placed = Vec::new();
        for _ in 0..2 {
            let task = create_and_wait(&server, json!({ "template": "fleet", "group": "small" })).await;
            placed.push(host_of(&server, &task).await);
        }
        placed
    };
    if used_on_small == 0 {
        assert_eq!(in_group[0], id(1), "the group's own host first");
    }
    assert!(in_group[1] == id(2) || in_group[1] == id(3), "then its fallback: {in_group:?}");
    let (status, cycle) =
        server.request(Method::PATCH, "/v1/groups/big", Some(json!({ "fallback_group": "small" }))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{cycle}");
    assert!(cycle["error"]["message"].as_str().expect("message").contains("cycle"));

    // Labels and anti-affinity.
    patch(&server, &format!("/v1/hosts/{}", id(4)), json!({ "labels": { "gpu": "yes" } })).await;
    let task = create_and_wait(&server, json!({ "template": "fleet", "host_labels": ["gpu=yes"] })).await;
    assert_eq!(host_of(&server, &task).await, id(4));
    let (_, batch) = server
        .post("/v1/instances?wait=60", json!({ "template": "fleet", "count": 3, "anti_affinity_key": "job-9" }))
        .await;
    assert_eq!(batch["state"], "succeeded", "{batch}");
    let job = server.get("/v1/instances?limit=1000").await;
    let job_hosts: HashSet<&str> = job["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|instance| instance["placement"]["anti_affinity_key"] == "job-9")
        .map(|instance| instance["host_id"].as_str().expect("placed"))
        .collect();
    assert_eq!(job_hosts.len(), 3, "one job's instances on different hosts");
    // A later pass sees the running ones too: the three hosts that take instances are taken.
    let (status, late) =
        server.post("/v1/instances", json!({ "template": "fleet", "anti_affinity_key": "job-9" })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{late}");
    let late_instance = late["object_id"].as_str().expect("instance");
    let waiting = server
        .wait_until(&format!("/v1/tasks/{}", late["id"].as_str().expect("task")), Duration::from_secs(10), |task| {
            task["message"].as_str().is_some_and(|message| message.contains("anti-affinity"))
        })
        .await;
    assert_eq!(waiting["state"], "pending", "{waiting}");
    let explained = server.get(&format!("/v1/instances/{late_instance}/placement")).await;
    assert_eq!(explained["ruled_out"]["anti_affinity"], 3, "{explained}");
    let (status, _) = server.request(Method::DELETE, &format!("/v1/instances/{late_instance}?wait=30"), None).await;
    assert_eq!(status, StatusCode::OK);
    // A USB device: the instance takes the host's only free one.
    patch(&server, &format!("/v1/hosts/{}", id(3)), json!({ "usb_devices": { "iphone": 1 } })).await;
    let task = create_and_wait(&server, json!({ "template": "fleet", "usb_device": "iphone" })).await;
    assert_eq!(host_of(&server, &task).await, id(3));
    let usb = &server.get(&format!("/v1/hosts/{}", id(3))).await["usb_devices"]["iphone"];
    assert_eq!(usb, &json!({ "total": 1, "busy": 1, "available": 0 }));
    let (status, plan) =
        server.post("/v1/placement/plan", json!({ "template": "fleet", "usb_device": "iphone" })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(plan["ruled_out"], json!({ "draining": 1, "missing_usb_device": 4 }), "{plan}");

    let (status, refused) = server.post("/v1/instances", json!({ "template": "fleet", "host_labels": ["gpu"] })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let (status, refused) = server.post("/v1/instances", json!({ "template": "fleet", "group": "nope" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{refused}");

    // Membership and deletion.
    let listed = server.get("/v1/groups").await;
    assert_eq!(listed.as_array().expect("groups").len(), 2);
    assert_eq!(server.get("/v1/groups/big").await["hosts"].as_array().expect("hosts").len(), 2);
    let (status, big) = server.request(Method::DELETE, &format!("/v1/groups/big/hosts/{}", id(2)), None).await;
    assert_eq!(status, StatusCode::OK, "{big}");
    assert_eq!(big["hosts"], json!([id(3)]));
    let host = server.get(&format!("/v1/hosts/{}", id(3))).await;
    assert_eq!(host["groups"], json!([big["id"]]));
    let (status, _) = server.request(Method::DELETE, "/v1/groups/big", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server.request(Method::GET, "/v1/groups/big", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(server.get("/v1/groups/small").await["fallback_group_id"], Value::Null, "the fallback is cleared");
}

#[tokio::test]
async fn a_waiting_request_explains_itself_and_the_more_urgent_one_goes_first() {
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("busy").await;
    // Fill the fleet: 5 hosts x 20 vCPU.
    let (_, full) = server.post("/v1/instances?wait=60", json!({ "template": "busy", "vcpu": 20, "count": 5 })).await;
    assert_eq!(full["state"], "succeeded", "{full}");

    let (status, plan) = server.post("/v1/placement/plan", json!({ "template": "busy", "vcpu": 4 })).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert!(plan["host_id"].is_null(), "{plan}");
    assert_eq!(plan["ruled_out"]["full"], 5, "{plan}");

    let (_, lazy) = server.post("/v1/instances", json!({ "template": "busy", "vcpu": 20, "priority": 5000 })).await;
    let (_, urgent) = server.post("/v1/instances", json!({ "template": "busy", "vcpu": 20, "priority": 10 })).await;
    let urgent_instance = urgent["object_id"].as_str().expect("instance").to_owned();
    let lazy_instance = lazy["object_id"].as_str().expect("instance").to_owned();
    let explained = server.get(&format!("/v1/instances/{urgent_instance}/placement")).await;
    assert_eq!(explained["queue_position"], 0, "{explained}");
    assert_eq!(explained["queue_length"], 2, "{explained}");
    assert_eq!(explained["ruled_out"]["full"], 5, "{explained}");
    assert!(explained["summary"].as_str().expect("summary").contains("5 full"), "{explained}");
    let explained = server.get(&format!("/v1/instances/{lazy_instance}/placement")).await;
    assert_eq!(explained["queue_position"], 1, "{explained}");

    // One host frees up: the urgent request takes it although it came later.
    let victim = server.get("/v1/instances?limit=1").await["items"][0]["id"].as_str().expect("id").to_owned();
    let (status, _) = server.request(Method::DELETE, &format!("/v1/instances/{victim}?wait=30"), None).await;
    assert_eq!(status, StatusCode::OK);
    let urgent = server.get(&format!("/v1/tasks/{}?wait=30", urgent["id"].as_str().expect("task"))).await;
    assert_eq!(urgent["state"], "succeeded", "{urgent}");
    let lazy = server.get(&format!("/v1/tasks/{}", lazy["id"].as_str().expect("task"))).await;
    assert_eq!(lazy["state"], "pending", "{lazy}");
    let plan_after = server.post("/v1/placement/plan", json!({ "template": "busy", "vcpu": 1 })).await.1;
    assert_eq!(plan_after["ruled_out"]["full"], 5, "the lazy request still waits; nothing fits: {plan_after}");
    assert_eq!(server.all_instances().await.len(), 7, "plans created nothing");
}
