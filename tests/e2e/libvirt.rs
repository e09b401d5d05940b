//! A real guest on a real libvirtd (QEMU, software emulation), driven only through the API:
//! template upload, create, boot to the guest's ready line, snapshot and revert, save image
//! (suspend, then ACPI stop, the disk flattened into a new template), delete, removal of the
//! cached template from the host — and nothing of it left in libvirtd afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::Server;
use crate::libvirt_bed::{self, names, virsh, virsh_ok};

/// A transient `dir` storage pool of the test's own, destroyed (with its directory) on drop.
struct ScratchPool {
    name: String,
    directory: PathBuf,
    uri: String,
}

impl ScratchPool {
    fn create(uri: &str, name: &str) -> ScratchPool {
        let directory = std::env::temp_dir().join(name);
        let _ = virsh(uri, &["pool-destroy", name]);
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).expect("pool directory");
        let target = directory.to_str().expect("UTF-8 path");
        virsh_ok(uri, &["pool-create-as", name, "dir", "--target", target]);
        ScratchPool { name: name.to_owned(), directory, uri: uri.to_owned() }
    }

    fn volumes(&self) -> Vec<String> {
        virsh_ok(&self.uri, &["vol-list", &self.name])
            .lines()
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect()
    }
}

impl Drop for ScratchPool {
    fn drop(&mut self) {
        let _ = virsh(&self.uri, &["pool-destroy", &self.name]);
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Waits until `path` contains `needle`; answers the file's text.
async fn wait_for_text(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in {} after {timeout:?}; it has:\n{text}", path.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `line` to the raw TCP serial console at `address` until `needle` comes back (the guest
/// echoes what it is sent; the needle must be what only running the line prints). Answers what
/// was read.
async fn serial_exchange(address: &str, line: &str, needle: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect to the serial console");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} on the serial console; it sent:\n{}",
            String::from_utf8_lossy(&received)
        );
        // Again each round: the shell may not have been reading yet.
        stream.write_all(format!("{line}\n").as_bytes()).await.expect("write to the serial console");
        if let Ok(read) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer)).await {
            let read = read.expect("read from the serial console");
            assert!(read > 0, "the serial console closed");
            received.extend_from_slice(&buffer[..read]);
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

async fn succeeded(server: &Server, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, task) = server.request(method, path, body).await;
    assert_eq!(status, StatusCode::OK, "{path}: {task}");
    assert_eq!(task["state"], "succeeded", "{path}: {task}");
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_guest_boots_snapshots_is_saved_as_a_template_and_leaves_nothing_behind() {
    let bed = libvirt_bed::bed();
    let guest = libvirt_bed::guest_image();
    let qemu_uri = &bed.qemu_uri;
    let pool = ScratchPool::create(qemu_uri, "hyperplane-e2e-guest");
    let console_directory = tempfile::tempdir().expect("console log directory");
    let console_logs = console_directory.path();
    let server = Server::start(&format!(
        r#"
[reconcile]
interval_secs = 1

[[providers]]
name = "kvm"
driver = "driver-libvirt"
endpoints = {{ libvirtd = "unix://{socket}" }}
config = {{ hosts = [{{ name = "hv1", endpoint = "libvirtd", uri = "qemu:///system", pool = "{pool}", domain_type = "qemu", console_log_dir = "{logs}", serial_ports = "47100-47199" }}] }}
"#,
        socket = bed.socket_path.display(),
        pool = pool.name,
        logs = console_logs.display(),
    ))
    .await;
    let hosts = server.wait_until("/v1/hosts", Duration::from_secs(30), |hosts| {
        hosts.as_array().is_some_and(|hosts| hosts.iter().any(|host| host["state"] == "active"))
    });
    let hosts = hosts.await;
    assert!(hosts[0]["hypervisor"].as_str().is_some_and(|name| name.contains("QEMU")), "{hosts}");

    // The template: the guest's bootable disk, uploaded through the API.
    let template = server.create_template("tiny-guest").await;
    let template_id = template["id"].as_str().expect("template id");
    let (status, template) =
        server.post(&format!("/v1/templates/{template_id}/versions"), json!({ "tag": "v1" })).await;
    assert_eq!(status, StatusCode::CREATED, "{template}");
    let number = template["versions"][0]["number"].as_u64().expect("version number");
    let image = std::fs::read(&guest.boot_qcow2).expect("guest image");
    let (status, body) = server
        .send_bytes(Method::PUT, &format!("/v1/templates/{template_id}/versions/{number}/image"), image.into())
        .await;
    assert!(status.is_success(), "{status} {body}");

    // Create: pulled to the host as a volume, defined, booted.
    succeeded(
        &server,
        Method::POST,
        "/v1/instances?wait=180",
        Some(json!({
            "template": "tiny-guest", "vcpu": 1, "ram_mb": 256, "disk_gb": 1, "name": "tiny", "mac": "52:54:00:4a:b1:e7"
        })),
    )
    .await;
    let listed = server.get("/v1/instances?filter=name=tiny").await;
    let id = listed["items"][0]["id"].as_str().expect("the instance is listed").to_owned();
    let instance = server.get(&format!("/v1/instances/{id}")).await;
    assert_eq!(instance["state"], "running", "{instance}");
    let mac = instance["mac"].as_str().expect("a MAC").to_owned();
    assert_eq!(mac, "52:54:00:4a:b1:e7", "the requested MAC");
    let console_log = console_logs.join(format!("hp-{id}.log"));
    let console = wait_for_text(&console_log, &guest.ready_line, Duration::from_secs(90)).await;
    assert!(console.contains(&format!("nic eth0 {mac}")), "the guest sees the NIC with the instance's MAC:\n{console}");

    // The console endpoint is the serial console, on TCP: the guest's shell answers there.
    let endpoint = server.get(&format!("/v1/instances/{id}/console")).await;
    assert_eq!(endpoint["protocol"], "serial", "{endpoint}");
    let port = endpoint["port"].as_u64().filter(|port| (47100..=47199).contains(port)).expect("a port of the range");
    let address = format!("{}:{port}", endpoint["host"].as_str().expect("a host"));
    let answer = serial_exchange(&address, "echo hp-serial-$((6*7))", "hp-serial-42").await;
    assert!(answer.contains("hp-serial-42"), "{answer}");

    // Snapshot, revert.
    succeeded(
        &server,
        Method::POST,
        &format!("/v1/instances/{id}/snapshots?wait=120"),
        Some(json!({ "name": "booted", "description": "after the ready line" })),
    )
    .await;
    let snapshots = server.get(&format!("/v1/instances/{id}/snapshots")).await;
    assert_eq!(snapshots.as_array().map(|list| list.len()), Some(1), "{snapshots}");
    assert_eq!(snapshots[0]["name"], "booted", "{snapshots}");
    succeeded(&server, Method::POST, &format!("/v1/instances/{id}/snapshots/booted/revert?wait=120"), None).await;
    assert_eq!(server.get(&format!("/v1/instances/{id}")).await["state"], "running");

    // Save image of the running instance as a new template, keeping the instance: suspended
    // first; QEMU cannot hand out a paused disk, so it is resumed and stopped by ACPI (the
    // guest's power-button handler says so before it powers off), then its disk is flattened
    // by libvirt and streamed into the registry.
    let saved = succeeded(
        &server,
        Method::POST,
        &format!("/v1/instances/{id}/save?wait=180"),
        Some(json!({ "new_template": "tiny-saved", "tag": "v1", "keep_instance": true })),
    )
    .await;
    assert_eq!(server.get(&format!("/v1/instances/{id}")).await["state"], "stopped");
    wait_for_text(&console_log, "HYPERPLANE-GUEST-POWEROFF", Duration::from_secs(5)).await;
    let saved_template = server.get("/v1/templates/tiny-saved").await;
    let disk = &saved_template["versions"][0]["files"][0];
    assert_eq!((disk["name"].as_str(), disk["format"].as_str()), (Some("disk"), Some("qcow2")), "{saved_template}");
    assert_eq!(disk["size_bytes"], saved["result"]["size_bytes"], "{saved}");
    // The saved image is standalone: qemu-img sees no backing file in it.
    let (status, _, saved_image) = server.get_bytes("/v1/templates/tiny-saved/versions/1/image").await;
    assert_eq!(status, StatusCode::OK);
    let saved_path = std::env::temp_dir().join(format!("hyperplane-saved-{id}.qcow2"));
    std::fs::write(&saved_path, &saved_image).expect("write the saved image");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&saved_path)
        .output()
        .expect("qemu-img info");
    let _ = std::fs::remove_file(&saved_path);
    let info: Value = serde_json::from_slice(&info.stdout).expect("qemu-img info answers JSON");
    assert_eq!(info["format"], "qcow2", "{info}");
    assert!(info.get("backing-filename").is_none(), "no backing file: {info}");

    succeeded(&server, Method::DELETE, &format!("/v1/instances/{id}?wait=120"), None).await;
    assert_eq!(server.get(&format!("/v1/instances/{id}")).await["state"], "terminated");

    // Nothing of the instance is left: no domain.
    let domains = names(&virsh_ok(qemu_uri, &["list", "--all", "--name"]));
    assert!(!domains.iter().any(|name| name.contains(&id)), "domains left: {domains:?}");

    // The cached template is removed from the host through the API: then no volume is left.
    let host_id = hosts[0]["id"].as_str().expect("host id");
    let cached = server.get(&format!("/v1/hosts/{host_id}")).await;
    assert!(cached["cached_templates"].to_string().contains("tiny-guest"), "{cached}");
    succeeded(&server, Method::DELETE, &format!("/v1/templates/{template_id}/hosts/{host_id}?wait=60"), None).await;
    let host = server.get(&format!("/v1/hosts/{host_id}")).await;
    assert!(!host["cached_templates"].to_string().contains("tiny-guest"), "{host}");
    let volumes = pool.volumes();
    assert!(volumes.is_empty(), "volumes left: {volumes:?}");
}
