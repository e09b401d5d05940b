//! Bad input gets a clear 4xx that names the problem, never a 500, and leaves nothing behind.

use reqwest::{Method, StatusCode};

use crate::harness::{Server, TOKEN, fast_sim_config};

/// `(method, path, body, expected status, fragment the error message must contain)`.
type Case = (Method, &'static str, &'static str, StatusCode, &'static str);

#[tokio::test]
async fn bad_requests_are_refused_with_a_message_naming_the_problem_and_change_nothing() {
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("good").await;
    let events_before = server.events_since(0).await.len();
    let missing = "0190a0a0-0000-7000-8000-000000000000";
    let host_path = format!("/v1/hosts/{missing}");
    let instance_path = format!("/v1/instances/{missing}");
    let action_path = format!("/v1/instances/{missing}/actions/start");
    let unknown_host_body = format!(r#"{{"template":"good","host_id":"{missing}"}}"#);
    let leaked = |text: &str| -> &'static str { Box::leak(text.to_owned().into_boxed_str()) };
    let cases: Vec<Case> = vec![
        (Method::POST, "/v1/instances", r#"{"template": "good", "#, StatusCode::BAD_REQUEST, "invalid JSON"),
        (Method::POST, "/v1/instances", "", StatusCode::BAD_REQUEST, "empty"),
        (Method::POST, "/v1/instances", r#"[1, 2]"#, StatusCode::BAD_REQUEST, "invalid JSON"),
        (Method::POST, "/v1/instances", r#"{"template": "good", "vcpus": 2}"#, StatusCode::BAD_REQUEST, "vcpus"),
        (Method::POST, "/v1/instances", r#"{"template": "good", "vcpu": "two"}"#, StatusCode::BAD_REQUEST, "vcpu"),
        (Method::POST, "/v1/instances", r#"{"template": "good", "vcpu": -1}"#, StatusCode::BAD_REQUEST, "vcpu"),
        (Method::POST, "/v1/instances", r#"{"vcpu": 2}"#, StatusCode::BAD_REQUEST, "template"),
        (
            Method::POST,
            "/v1/instances",
            r#"{"template": "good", "vcpu": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "vcpu must be between 1 and 512",
        ),
        (
            Method::POST,
            "/v1/instances",
            r#"{"template": "good", "ram_mb": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "ram_mb",
        ),
        (
            Method::POST,
            "/v1/instances",
            r#"{"template": "good", "count": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "count",
        ),
        (
            Method::POST,
            "/v1/instances",
            r#"{"template": "good", "count": 100000}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "count",
        ),
        (
            Method::POST,
            "/v1/instances",
            r#"{"template": "good", "name": ""}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (Method::POST, "/v1/instances", r#"{"template": "nope"}"#, StatusCode::NOT_FOUND, "template 'nope'"),
        (Method::POST, "/v1/instances", r#"{"template": "good", "tag": "v9"}"#, StatusCode::NOT_FOUND, "good:v9"),
        (Method::POST, "/v1/instances", leaked(&unknown_host_body), StatusCode::NOT_FOUND, "host"),
        (
            Method::POST,
            "/v1/instances",
            r#"{"template": "good", "host_id": "not-a-uuid"}"#,
            StatusCode::BAD_REQUEST,
            "host_id",
        ),
        (Method::POST, "/v1/instances?wait=soon", r#"{"template": "good"}"#, StatusCode::BAD_REQUEST, "wait"),
        (Method::POST, "/v1/instances?wait=-1", r#"{"template": "good"}"#, StatusCode::BAD_REQUEST, "wait"),
        (
            Method::POST,
            "/v1/placement/plan",
            r#"{"template": "good", "vcpu": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "vcpu",
        ),
        (
            Method::POST,
            "/v1/instances",
            r#"{"template": "good", "priority": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "priority",
        ),
        (
            Method::POST,
            "/v1/instances",
            r#"{"template": "good", "host_labels": ["=x"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "host_labels",
        ),
        (Method::POST, "/v1/groups", r#"{"name": "g", "fallback_group": "missing"}"#, StatusCode::NOT_FOUND, "missing"),
        (Method::POST, "/v1/groups", r#"{"name": "Bad Group"}"#, StatusCode::UNPROCESSABLE_ENTITY, "Bad Group"),
        (Method::POST, "/v1/templates", r#"{"name": "x", "arch": "sparc"}"#, StatusCode::BAD_REQUEST, "sparc"),
        (
            Method::POST,
            "/v1/templates",
            r#"{"name": "bad name!", "arch": "amd64"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (Method::POST, "/v1/templates", r#"{"name": "good", "arch": "amd64"}"#, StatusCode::CONFLICT, "already exists"),
        (Method::POST, "/v1/templates/nope/versions", r#"{"tag": "v1"}"#, StatusCode::NOT_FOUND, "template 'nope'"),
        (Method::GET, leaked(&instance_path), "", StatusCode::NOT_FOUND, missing),
        (Method::GET, "/v1/instances/not-a-uuid", "", StatusCode::NOT_FOUND, "not-a-uuid"),
        (Method::DELETE, leaked(&instance_path), "", StatusCode::NOT_FOUND, missing),
        (Method::POST, leaked(&action_path), "{}", StatusCode::NOT_FOUND, missing),
        (Method::PATCH, leaked(&instance_path), r#"{"name": "x"}"#, StatusCode::NOT_FOUND, missing),
        (Method::GET, leaked(&host_path), "", StatusCode::NOT_FOUND, missing),
        (Method::PATCH, leaked(&host_path), r#"{"drain": true}"#, StatusCode::BAD_REQUEST, "drain"),
        (Method::GET, "/v1/instances?filter=colour=red", "", StatusCode::UNPROCESSABLE_ENTITY, "colour"),
        (Method::GET, "/v1/instances?filter=state=runing", "", StatusCode::UNPROCESSABLE_ENTITY, "runing"),
        (Method::GET, "/v1/instances?filter=host=nowhere", "", StatusCode::NOT_FOUND, "nowhere"),
        (Method::GET, "/v1/instances?cursor=garbage", "", StatusCode::UNPROCESSABLE_ENTITY, "cursor"),
        (Method::GET, "/v1/instances?limit=0", "", StatusCode::UNPROCESSABLE_ENTITY, "limit"),
        (Method::GET, "/v1/instances?limit=many", "", StatusCode::BAD_REQUEST, "limit"),
        (Method::GET, "/v1/instances?fields=id,colour", "", StatusCode::BAD_REQUEST, "colour"),
        (Method::GET, "/v1/instances?colour=red", "", StatusCode::BAD_REQUEST, "colour"),
        (Method::GET, "/v1/tasks?state=done", "", StatusCode::BAD_REQUEST, "done"),
        (Method::GET, "/v1/events?since=-5", "", StatusCode::BAD_REQUEST, "since"),
        (Method::GET, "/v1/nothing-here", "", StatusCode::NOT_FOUND, "/v1/nothing-here"),
        (Method::PUT, "/v1/instances", "{}", StatusCode::METHOD_NOT_ALLOWED, "PUT"),
    ];
    // Failed changes on existing routes are recorded in the audit trail.
    let audited_changes = cases
        .iter()
        .filter(|(method, _, _, status, _)| *method != Method::GET && *status != StatusCode::METHOD_NOT_ALLOWED)
        .count();
    for (method, path, body, expected_status, fragment) in cases {
        let (status, answer) = server.raw(method.clone(), path, body, Some(TOKEN)).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, expected_status, "{method} {path} {body}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{method} {path}: error code in {answer}");
        assert!(message.contains(fragment), "{method} {path} {body}: message {message:?} should name {fragment:?}");
    }

    // Nothing was written by any of them: no instance, no task, no event but the audit trail's
    // record of each failed call.
    assert!(server.all_instances().await.is_empty());
    assert_eq!(server.get("/v1/tasks").await, serde_json::json!([]));
    let events_after = server.events_since(0).await;
    let (audited, new_events): (Vec<_>, Vec<_>) = events_after[events_before..]
        .iter()
        .filter(|event| event["object_kind"] != "host")
        .partition(|event| event["type"] == "audit.call_failed");
    assert!(new_events.is_empty(), "bad requests wrote events: {new_events:?}");
    assert_eq!(audited.len(), audited_changes, "each failed change is in the audit trail: {audited:?}");
}

/// A bad `?wait=` is refused before the operation starts: the instance is left as it was.
#[tokio::test]
async fn a_bad_wait_starts_nothing() {
    let server = Server::start(&fast_sim_config()).await;
    server.create_template("good").await;
    let (status, task) = server.post("/v1/instances?wait=30", serde_json::json!({ "template": "good" })).await;
    assert_eq!((status.as_u16(), task["state"].as_str()), (200, Some("succeeded")), "{task}");
    let instance = format!("/v1/instances/{}", task["object_id"].as_str().expect("instance id"));
    for path in [format!("{instance}?wait=-1"), format!("{instance}/actions/stop?wait=-1")] {
        let method = if path.contains("actions") { Method::POST } else { Method::DELETE };
        let (status, answer) = server.raw(method.clone(), &path, "{}", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {answer}");
    }
    assert_eq!(server.get(&instance).await["state"], "running");
    let tasks = server.get("/v1/tasks").await;
    assert_eq!(tasks.as_array().map(Vec::len), Some(1), "only the create task: {tasks}");
}

#[tokio::test]
async fn every_route_but_health_needs_the_token() {
    let server = Server::start(&fast_sim_config()).await;
    for path in ["/v1/instances", "/v1/hosts", "/v1/providers", "/metrics", "/v1/openapi.json", "/v1/events"] {
        let (status, answer) = server.raw(Method::GET, path, "", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {answer}");
        assert!(answer["error"]["message"].as_str().expect("message").contains("Bearer"));
        let (status, _) = server.raw(Method::GET, path, "", Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, health) = server.raw(Method::GET, "/health", "", None).await;
    assert_eq!((status, health["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (status, openapi) = server.raw(Method::GET, "/v1/openapi.json", "", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/instances",
        "/v1/instances/{id}",
        "/v1/instances/{id}/actions/{action}",
        "/v1/tasks/{id}",
        "/v1/events",
        "/v1/hosts/{id}",
        "/v1/templates/{id}/versions",
        "/v1/templates/{id}/versions/{number}/image",
        "/v1/templates/{id}/hosts/{host_id}",
        "/v1/instances/{id}/snapshots",
        "/v1/instances/{id}/snapshots/{name}",
        "/v1/instances/{id}/snapshots/{name}/revert",
        "/v1/instances/{id}/console",
        "/v1/providers",
    ] {
        assert!(openapi["paths"][path].is_object(), "openapi documents {path}");
    }
    // Query parameters are documented as such, path parameters as path parameters.
    let parameter_places = |path: &str, method: &str| -> Vec<(String, String)> {
        let parameters = openapi["paths"][path][method]["parameters"].as_array().cloned().unwrap_or_default();
        parameters.iter().map(|parameter| (parameter["name"].to_string(), parameter["in"].to_string())).collect()
    };
    assert!(parameter_places("/v1/events", "get").iter().all(|(_, place)| place == "\"query\""));
    let task = parameter_places("/v1/tasks/{id}", "get");
    assert!(
        task.contains(&("\"id\"".into(), "\"path\"".into())) && task.contains(&("\"wait\"".into(), "\"query\"".into())),
        "{task:?}"
    );
    let (status, metrics) = server.raw(Method::GET, "/metrics", "", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().expect("text").to_owned();
    assert!(metrics.contains("hyperplane_http_requests_total"), "{metrics}");
    assert!(metrics.contains("hyperplane_plugin_call_duration_seconds"), "{metrics}");
}
