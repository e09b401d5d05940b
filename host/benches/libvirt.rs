//! The libvirt lifecycle benchmark (`cargo bench --bench libvirt`): N instances defined,
//! started, destroyed and undefined on libvirt's test driver over TCP, through Hyperplane's
//! API, next to libvirt's own Python binding doing the same against the same libvirtd in the
//! same run. Prints both times and their ratio. Not a test: nothing here asserts a speed.
//!
//! Through the API each lifecycle is what a CI client does: `POST /v1/instances?wait` (placed,
//! template found cached, overlay volume, define, start), then `DELETE /v1/instances/{id}?wait`
//! (destroy, undefine, overlay removed), with up to `IN_FLIGHT` lifecycles at a time (the test
//! driver's 100 GiB pool holds 100 one-GiB overlays). libvirt-python runs its lifecycles one
//! after the other on one connection: once as the issue defines them (no storage), once with
//! the overlay volume Hyperplane's driver creates and deletes for each instance.
//!
//! `tests/libvirt/setup.sh` (run from here) installs and starts libvirtd.

#[path = "../../tests/libvirt/bed.rs"]
#[allow(dead_code)]
mod libvirt_bed;

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use hyperplane::config::Config;
use serde_json::{Value, json};

const TOKEN: &str = "bench-token";
const LIFECYCLES: usize = 200;
const ROUNDS: usize = 3;
const IN_FLIGHT: usize = 50;
const TEST_DRIVER_POOL: &str = "default-pool";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bed = libvirt_bed::bed();
    // The test driver forgets everything when its last connection closes: hold one.
    let _holder = libvirt_bed::ConnectionHolder::open(&bed.test_uri);
    // The test driver takes no uploads: the template ("bench", no versions: version 0) is put on
    // the host as a pull would leave it, before the server first lists the host.
    let template_volume = "hyperplane-template-bench-v0";
    if libvirt_bed::virsh(&bed.test_uri, &["vol-info", template_volume, "--pool", TEST_DRIVER_POOL]).is_err() {
        libvirt_bed::virsh(&bed.test_uri, &["vol-create-as", TEST_DRIVER_POOL, template_volume, "4096"])
            .map_err(anyhow::Error::msg)?;
    }
    let scratch = tempfile::tempdir()?;
    let server = start_server(scratch.path(), &bed.tcp_address).await?;
    let base = format!("http://{}", server.address);
    let http = reqwest::Client::new();
    post(&http, &format!("{base}/v1/templates"), json!({ "name": "bench", "arch": "amd64" })).await?;
    // Count instances, not the test driver's 3 GiB of RAM.
    let hosts: Value = http.get(format!("{base}/v1/hosts")).bearer_auth(TOKEN).send().await?.json().await?;
    let host_id = hosts[0]["id"].as_str().context("the test host is listed")?;
    let response = http
        .patch(format!("{base}/v1/hosts/{host_id}"))
        .bearer_auth(TOKEN)
        .body(json!({ "capacity": { "mode": "number", "max_instances": 1000 } }).to_string())
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "PATCH host: {}", response.text().await?);

    for round in 1..=ROUNDS {
        let ours = hyperplane_lifecycles(&http, &base).await?;
        let python = python_lifecycles(&bed.python, &bed.test_uri, &[])?;
        let python_with_disk = python_lifecycles(&bed.python, &bed.test_uri, &[TEST_DRIVER_POOL, template_volume])?;
        println!(
            "round {round}: {LIFECYCLES} lifecycles (define, start, destroy, undefine), test driver over TCP: \
             Hyperplane API {ours:.3} s ({:.0}/s); libvirt-python {python:.3} s ({:.0}/s), ratio {:.2}; \
             libvirt-python with the same overlay disk {python_with_disk:.3} s, ratio {:.2}",
            LIFECYCLES as f64 / ours,
            LIFECYCLES as f64 / python,
            ours / python,
            ours / python_with_disk,
        );
    }
    server.shutdown().await;
    Ok(())
}

async fn start_server(
    scratch: &std::path::Path,
    libvirt_tcp: &str,
) -> anyhow::Result<hyperplane::server::RunningServer> {
    let config = Config::from_toml(&format!(
        r#"
listen = "127.0.0.1:0"
data_dir = {data_dir:?}
[log]
filter = "warn"
[reconcile]
interval_secs = 60
[tasks]
concurrency = 256
[[providers]]
name = "libvirt"
driver = "driver-libvirt"
endpoints = {{ libvirtd = "tcp://{libvirt_tcp}" }}
config = {{ hosts = [{{ name = "test-host", endpoint = "libvirtd", uri = "test:///default", pool = "default-pool" }}] }}
"#,
        data_dir = scratch.join("data").display().to_string(),
    ))?;
    hyperplane::server::start(config, Some(TOKEN.into())).await
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<Value> {
    let response = http.post(url).bearer_auth(TOKEN).body(body.to_string()).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    anyhow::ensure!(status.is_success(), "POST {url}: {status} {body}");
    Ok(body)
}

/// `LIFECYCLES` times create-and-wait then delete-and-wait, `IN_FLIGHT` at a time. Seconds
/// from the first request to the last answer.
async fn hyperplane_lifecycles(http: &reqwest::Client, base: &str) -> anyhow::Result<f64> {
    use futures::StreamExt as _;
    let writes_before = hyperplane::store::write_statistics();
    let started = Instant::now();
    let lifecycles = futures::stream::iter(0..LIFECYCLES)
        .map(|_| async move {
            let task = post(
                http,
                &format!("{base}/v1/instances?wait=600"),
                json!({ "template": "bench", "vcpu": 1, "ram_mb": 256, "disk_gb": 1 }),
            )
            .await?;
            anyhow::ensure!(task["state"] == "succeeded", "create ended {task}");
            let id = task["object_id"].as_str().context("the create task names its instance")?;
            let url = format!("{base}/v1/instances/{id}?wait=600");
            let task: Value = http.delete(&url).bearer_auth(TOKEN).send().await?.json().await?;
            anyhow::ensure!(task["state"] == "succeeded", "delete ended {task}");
            Ok(())
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<anyhow::Result<()>>>()
        .await;
    for result in lifecycles {
        result?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let writes = hyperplane::store::write_statistics();
    let transactions = writes.transactions - writes_before.transactions;
    let held = writes.held - writes_before.held;
    println!(
        "  writer: {:.1} write transactions per lifecycle, each held {:.0} µs on average; {:.2} s held in all",
        transactions as f64 / LIFECYCLES as f64,
        held.as_secs_f64() * 1e6 / transactions.max(1) as f64,
        held.as_secs_f64()
    );
    Ok(elapsed)
}

/// `tests/libvirt/lifecycle-python.py`: the same lifecycles through libvirt-python; with
/// `[pool, backing volume]` also the overlay volume Hyperplane's driver gives each instance.
fn python_lifecycles(python: &std::path::Path, uri: &str, disk: &[&str]) -> anyhow::Result<f64> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/libvirt/lifecycle-python.py");
    let output = Command::new(python).arg(script).arg(uri).arg(LIFECYCLES.to_string()).args(disk).output()?;
    anyhow::ensure!(output.status.success(), "libvirt-python failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("SECONDS="))
        .context("the python script printed no SECONDS=")?
        .parse()
        .context("SECONDS= is a number")
}
