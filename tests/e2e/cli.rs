//! The `hyperplane` command line against a real server, and `serve`'s configuration errors.

use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{Server, TOKEN, fast_sim_config};

fn hyperplane(server: &Server, arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyperplane"))
        .args(["--url", &server.url, "--token", TOKEN])
        .args(arguments)
        .output()
        .expect("run the hyperplane binary")
}

fn succeed(server: &Server, arguments: &[&str]) -> String {
    let output = hyperplane(server, arguments);
    assert!(output.status.success(), "hyperplane {arguments:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[tokio::test]
async fn client_commands_drive_the_server_with_tables_and_json() {
    let server = Server::start(&fast_sim_config()).await;
    let created = succeed(&server, &["template", "create", "cli-image", "--arch", "amd64"]);
    assert!(created.contains("cli-image"), "{created}");
    let task = succeed(&server, &["instance", "create", "--template", "cli-image", "--count", "2", "--wait", "--json"]);
    let task: Value = serde_json::from_str(&task).expect("json");
    assert_eq!(task[0]["state"], "succeeded", "{task}");
    let created = &["instance", "create", "--template", "cli-image", "--name", "tagged", "--disk-gb", "5"];
    let tagged =
        succeed(&server, &[&created[..], &["--mac", "52:54:00:0c:11:01", "--vlan", "7", "--wait", "--json"]].concat());
    let tagged: Value = serde_json::from_str(&tagged).expect("json");
    let tagged_id = tagged[0]["object_id"].as_str().expect("the instance").to_owned();
    let shown: Value =
        serde_json::from_str(&succeed(&server, &["instance", "get", &tagged_id, "--json"])).expect("json");
    assert_eq!(
        (shown[0]["mac"].as_str(), shown[0]["vlan"].as_u64(), shown[0]["disk_gb"].as_u64()),
        (Some("52:54:00:0c:11:01"), Some(7), Some(5))
    );
    succeed(&server, &["instance", "delete", &tagged_id, "--wait"]);

    let listed: Value = serde_json::from_str(&succeed(&server, &["instance", "list", "--json"])).expect("json");
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), 2);
    let table = succeed(&server, &["instance", "list", "--filter", "state=running"]);
    assert!(table.contains("running") && table.contains("NAME"), "{table}");
    let id = listed[0]["id"].as_str().expect("id");

    let suspended = succeed(&server, &["instance", "suspend", id, "--wait"]);
    assert!(suspended.contains("succeeded"), "{suspended}");
    let resumed = succeed(&server, &["instance", "resume", id, "--wait"]);
    assert!(resumed.contains("succeeded"), "{resumed}");
    let snapshot =
        succeed(&server, &["instance", "snapshot", "create", id, "before", "--description", "clean", "--wait"]);
    assert!(snapshot.contains("succeeded"), "{snapshot}");
    let snapshots = succeed(&server, &["instance", "snapshot", "list", id]);
    assert!(
        snapshots.contains("before") && snapshots.contains("clean") && snapshots.contains("CURRENT"),
        "{snapshots}"
    );
    let reverted = succeed(&server, &["instance", "snapshot", "revert", id, "before", "--wait"]);
    assert!(reverted.contains("succeeded"), "{reverted}");
    let removed = succeed(&server, &["instance", "snapshot", "delete", id, "before", "--wait"]);
    assert!(removed.contains("succeeded"), "{removed}");
    let snapshots: Value =
        serde_json::from_str(&succeed(&server, &["instance", "snapshot", "list", id, "--json"])).expect("json");
    assert_eq!(snapshots, serde_json::json!([]));
    let console = succeed(&server, &["instance", "console", id]);
    assert!(console.contains("vnc") && console.contains("PORT"), "{console}");
    let stopped = succeed(&server, &["instance", "stop", id, "--grace", "5", "--wait"]);
    assert!(stopped.contains("succeeded"), "{stopped}");
    let shown: Value = serde_json::from_str(&succeed(&server, &["instance", "get", id, "--json"])).expect("json");
    assert_eq!(shown[0]["state"], "stopped");
    let deleted = succeed(&server, &["instance", "delete", id, "--wait"]);
    assert!(deleted.contains("instance.delete"), "{deleted}");

    let hosts = succeed(&server, &["host", "list"]);
    assert!(hosts.contains("sim-1") && hosts.contains("active"), "{hosts}");
    let events = succeed(&server, &["events"]);
    assert!(events.contains("instance.state_changed") && events.contains("template.created"), "{events}");

    let missing = hyperplane(&server, &["instance", "get", "0190a0a0-0000-7000-8000-000000000000"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let refused = Command::new(env!("CARGO_BIN_EXE_hyperplane"))
        .args(["--url", &server.url, "--token", "wrong", "host", "list"])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
}

#[test]
fn serve_refuses_a_bad_configuration_naming_the_key() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let file = directory.path().join("bad.toml");
    std::fs::write(&file, "[plugins]\nmemory_limt_mib = 3\n").expect("write");
    let serve = |extra_environment: Option<(&str, &str)>, config: &std::path::Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hyperplane"));
        command.args(["serve", "--config"]).arg(config).arg("--data-dir").arg(directory.path().join("data"));
        if let Some((key, value)) = extra_environment {
            command.env(key, value);
        }
        command.output().expect("run")
    };
    let output = serve(None, &file);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("memory_limt_mib"), "{message}");

    let good = directory.path().join("good.toml");
    std::fs::write(&good, "").expect("write");
    let output = serve(Some(("HYPERPLANE_PLUGINS__MEMORY_LIMIT_MIB", "0")), &good);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("plugins.memory_limit_mib"), "an environment override is validated too: {message}");
}
