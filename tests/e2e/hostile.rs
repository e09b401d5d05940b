//! Hostile driver components are contained: each misbehaviour fails its own calls with a clear
//! error, is reported on the provider, and the server keeps serving everyone else meanwhile.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, hostile_component};

/// `(provider name, behaviour, words one of which the reported error must contain)`.
const HOSTILE: &[(&str, &str, &[&str])] = &[
    ("spinner", "infinite-loop", &["deadline", "timed out", "timeout"]),
    ("hog", "memory-bomb", &["memory"]),
    ("crasher", "trap", &["trap", "panic"]),
    ("snoop", "ungranted-endpoint", &["not granted", "not-granted"]),
    ("flood", "huge-response", &["too large", "memory"]),
];

fn config() -> String {
    let mut config = String::from(
        r#"
[plugins]
call_timeout_secs = 3
memory_limit_mib = 64
max_response_mib = 4

[reconcile]
interval_secs = 0.5

[[providers]]
name = "sim"
driver = "driver-sim"
config = { hosts = 2, delays_ms = { create = 10, start = 10, stop = 10, restart = 10, delete = 10, pull = 10 } }
"#,
    );
    for (name, behavior, _) in HOSTILE {
        config.push_str(&format!(
            "\n[[providers]]\nname = \"{name}\"\ndriver = {:?}\nconfig = {{ behavior = \"{behavior}\" }}\n",
            hostile_component()
        ));
    }
    config
}

#[tokio::test]
async fn each_hostile_plugin_is_contained_and_reported_while_the_server_keeps_serving() {
    let server = Server::start(&config()).await;

    // While the hostile providers are being called over and over by reconciliation, every
    // other request is answered promptly.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(4) {
        let asked = Instant::now();
        let (status, _) = server.raw(Method::GET, "/health", "", None).await;
        assert_eq!(status, StatusCode::OK);
        server.get("/v1/instances").await;
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(slowest < Duration::from_secs(2), "a request waited {slowest:?} behind a hostile plugin");

    let providers = server.get("/v1/providers").await;
    let providers = providers.as_array().expect("providers");
    for (name, behavior, words) in HOSTILE {
        let provider = providers.iter().find(|provider| provider["name"] == *name).expect("provider listed");
        let error = provider["last_error"].as_str().unwrap_or_default().to_lowercase();
        assert!(
            words.iter().any(|word| error.contains(word)),
            "{behavior}: provider {name} should report one of {words:?}, reports {provider}"
        );
    }

    // The well-behaved provider still works end to end.
    server.create_template("safe").await;
    let (status, task) = server.post("/v1/instances?wait=60", json!({ "template": "safe" })).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["state"], "succeeded", "{task}");
    let hosts: Vec<Value> = server.get("/v1/hosts").await.as_array().cloned().expect("hosts");
    assert!(hosts.iter().all(|host| host["provider"] == "sim"), "hostile providers reported no hosts: {hosts:?}");

    let (_, metrics) = server.raw(Method::GET, "/metrics", "", Some(crate::harness::TOKEN)).await;
    let metrics = metrics.as_str().expect("text").to_owned();
    for (name, _, _) in HOSTILE {
        assert!(
            metrics.lines().any(|line| line.starts_with("hyperplane_plugin_call_failures_total")
                && line.contains(&format!("provider=\"{name}\""))),
            "failures of {name} are counted"
        );
    }
}
