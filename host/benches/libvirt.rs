//! The libvirt lifecycle benchmark (`cargo bench --bench libvirt`): N instances defined,
//! started, destroyed and undefined on libvirt's test driver over TCP, through Hyperplane's
//! API, next to libvirt's own Python binding doing the same against the same libvirtd in the
//! same run. Prints both times and their ratio. Not a test: nothing here asserts a speed.
//!
//! Through the API each lifecycle is what a CI client does: `POST /v1/instances?wait` (placed,
//! template found cached, overlay volume, define, start), then `DELETE /v1/instances/{id}?wait`
//! (destroy, undefine, overlay removed), with up to `IN_FLIGHT` lifecycles at a time (the test
//! driver's 100 GiB pool holds 100 one-GiB overlays), sent from a runtime and thread of their
//! own (`bench-client`) so that the CPU by thread tells the client's share from the server's. libvirt-python runs its lifecycles one
//! after the other on one connection: once as the issue defines them (no storage), once with
//! what Hyperplane's driver does for each instance: its overlay volume created and deleted and
//! its domain XML (metadata, disk, NIC, serial console, VNC) defined — the driver's six libvirt
//! calls per lifecycle, pool and backing volume looked up once, as a driver connection keeps
//! them; and that once more in `IN_FLIGHT` processes with a connection each, sharing the
//! lifecycles: what libvirtd gives a client as parallel as Hyperplane's that does nothing
//! between its calls.
//!
//! Each of the `ROUNDS` rounds starts the server, warms it (one unmeasured wave of `IN_FLIGHT`
//! lifecycles: a server that has been running has its driver instances and their libvirt
//! connections), runs the measured lifecycles and shuts the server down before libvirt-python's
//! turn: every open connection costs libvirtd at each wakeup (54 idle ones slowed
//! libvirt-python ~15%). The last line gives the median and range of the ratios, and how many
//! rounds met the goal.
//!
//! `tests/libvirt/setup.sh` (run from here) installs and starts libvirtd.

#[path = "common/proc_stat.rs"]
mod proc_stat;

#[path = "../../tests/libvirt/bed.rs"]
#[allow(dead_code)]
mod libvirt_bed;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use hyperplane::config::Config;
use proc_stat::{ThreadUse, idle_seconds, process_cpu_seconds, thread_use};
use serde_json::{Value, json};

/// The server binary's allocator (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-token";
const LIFECYCLES: usize = 200;
const ROUNDS: usize = 7;
const IN_FLIGHT: usize = 50;
const TEST_DRIVER_POOL: &str = "default-pool";
/// The goal for the ratio to bare libvirt-python: Hyperplane takes at most 1.1 times as long.
const GOAL: f64 = 1.1;

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
    let http = reqwest::Client::new();
    // The client (a CI system's requests) on a thread of its own, like a client process: the
    // by-thread figures then tell its CPU from the server's.
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let lifecycles = |base: &str, count: usize| {
        let (http, base) = (http.clone(), base.to_owned());
        let wave = client.spawn(async move { hyperplane_lifecycles(&http, &base, count).await });
        async move { wave.await? }
    };
    let libvirtd = libvirtd_pid()?;
    let connections_before = libvirtd_connections()?;
    let mut ratios = Vec::new();
    let mut ratios_as_driver = Vec::new();
    let mut ratios_in_parallel = Vec::new();
    for round in 1..=ROUNDS {
        let server = start_server(scratch.path(), &bed.tcp_address).await?;
        let base = format!("http://{}", server.address);
        if round == 1 {
            prepare(&http, &base).await?;
        }
        lifecycles(&base, IN_FLIGHT).await?;
        let writes_before = hyperplane::store::write_statistics();
        let before = CpuUse::now(libvirtd)?;
        let ours = lifecycles(&base, LIFECYCLES).await?;
        let after_ours = CpuUse::now(libvirtd)?;
        print_writer_use(&writes_before);
        println!("  by thread, per lifecycle: {}", after_ours.by_thread_since(&before));
        server.shutdown().await;
        let left_open = wait_for_connections_closed(connections_before).await?;
        let before_python = CpuUse::now(libvirtd)?;
        let python = python_lifecycles(&bed.python, &bed.test_uri, &[])?;
        let after_python = CpuUse::now(libvirtd)?;
        let driver_work = [TEST_DRIVER_POOL, template_volume];
        let python_as_driver = python_lifecycles(&bed.python, &bed.test_uri, &driver_work)?;
        let in_flight = IN_FLIGHT.to_string();
        let python_in_parallel =
            python_lifecycles(&bed.python, &bed.test_uri, &[&driver_work[..], &["--processes", &in_flight]].concat())?;
        println!(
            "  per lifecycle: Hyperplane {}; libvirt-python {} ({left_open} of Hyperplane's libvirt connections open)",
            after_ours.since(&before),
            after_python.since(&before_python)
        );
        println!(
            "round {round}: {LIFECYCLES} lifecycles (define, start, destroy, undefine), test driver over TCP: \
             Hyperplane API {ours:.3} s ({:.0}/s); libvirt-python {python:.3} s ({:.0}/s), ratio {:.2}; \
             libvirt-python doing what the driver does (overlay disk, its domain XML) {python_as_driver:.3} s, \
             ratio {:.2}; the same in {IN_FLIGHT} processes {python_in_parallel:.3} s, ratio {:.2}",
            LIFECYCLES as f64 / ours,
            LIFECYCLES as f64 / python,
            ours / python,
            ours / python_as_driver,
            ours / python_in_parallel,
        );
        ratios.push(ours / python);
        ratios_as_driver.push(ours / python_as_driver);
        ratios_in_parallel.push(ours / python_in_parallel);
    }
    println!(
        "{ROUNDS} rounds: ratio {}, {} of {ROUNDS} at or under the goal of {GOAL}; against libvirt-python \
         doing what the driver does {}; the same in {IN_FLIGHT} processes {}",
        median_and_range(&mut ratios),
        ratios.iter().filter(|ratio| **ratio <= GOAL).count(),
        median_and_range(&mut ratios_as_driver),
        median_and_range(&mut ratios_in_parallel)
    );
    client.shutdown_background();
    Ok(())
}

/// `median (lowest–highest)` of `values`.
fn median_and_range(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    match (values.first(), values.get(values.len() / 2), values.last()) {
        (Some(lowest), Some(median), Some(highest)) => format!("median {median:.2} ({lowest:.2}–{highest:.2})"),
        _ => "none".into(),
    }
}

/// The bench template and the host's capacity (kept in the database across restarts).
async fn prepare(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    post(http, &format!("{base}/v1/templates"), json!({ "name": "bench", "arch": "amd64" })).await?;
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

/// `count` times create-and-wait then delete-and-wait, `IN_FLIGHT` at a time. Seconds from
/// the first request to the last answer.
async fn hyperplane_lifecycles(http: &reqwest::Client, base: &str, count: usize) -> anyhow::Result<f64> {
    use futures::StreamExt as _;
    let started = Instant::now();
    let lifecycles = futures::stream::iter(0..count)
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
    Ok(started.elapsed().as_secs_f64())
}

/// The writer's use since `before`, and its busiest callers since the process started.
fn print_writer_use(before: &hyperplane::store::WriteStatistics) {
    let writes = hyperplane::store::write_statistics();
    let transactions = writes.transactions - before.transactions;
    let held = writes.held - before.held;
    println!(
        "  writer: {:.1} write transactions per lifecycle, each held {:.0} µs on average; {:.2} s held in all",
        transactions as f64 / LIFECYCLES as f64,
        held.as_secs_f64() * 1e6 / transactions.max(1) as f64,
        held.as_secs_f64()
    );
    for (at, count, held) in hyperplane::store::write_statistics_by_caller().iter().take(6) {
        println!("    {at}: {count} since start, {:.0} µs each", held.as_secs_f64() * 1e6 / *count as f64);
    }
}

/// Established TCP connections to libvirtd's port (16509) on this machine.
fn libvirtd_connections() -> anyhow::Result<usize> {
    const ESTABLISHED: &str = "01";
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    // `sl local_address rem_address st ...`, addresses as hex `ip:port`.
    let count = table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[2].ends_with(":407D") && fields[3] == ESTABLISHED
        })
        .count();
    Ok(count)
}

/// Waits (up to 5 s) until the connections to libvirtd are back to `baseline`; answers how many
/// of the server's are still open.
async fn wait_for_connections_closed(baseline: usize) -> anyhow::Result<usize> {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let open = libvirtd_connections()?.saturating_sub(baseline);
        if open == 0 || Instant::now() > deadline {
            return Ok(open);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// CPU time used so far by this process, its waited-for children (the python runs) and
/// libvirtd, the threads of this process and of libvirtd by name, and the machine's idle time.
struct CpuUse {
    at: Instant,
    this_process: f64,
    children: f64,
    libvirtd: f64,
    threads: BTreeMap<String, ThreadUse>,
    libvirtd_threads: BTreeMap<String, ThreadUse>,
    idle: f64,
}

impl CpuUse {
    fn now(libvirtd: u32) -> anyhow::Result<CpuUse> {
        let (this_process, children) = process_cpu_seconds("self")?;
        let libvirtd = libvirtd.to_string();
        Ok(CpuUse {
            at: Instant::now(),
            this_process,
            children,
            libvirtd: process_cpu_seconds(&libvirtd)?.0,
            threads: thread_use("self"),
            libvirtd_threads: thread_use(&libvirtd),
            idle: idle_seconds()?,
        })
    }

    /// What each lifecycle cost between `earlier` and now, and how idle the machine was.
    fn since(&self, earlier: &CpuUse) -> String {
        let per_lifecycle = |seconds: f64| seconds * 1e3 / LIFECYCLES as f64;
        let switches = |use_: &CpuUse| use_.threads.values().map(|thread| thread.context_switches).sum::<u64>();
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get()) as f64;
        let elapsed = (self.at - earlier.at).as_secs_f64();
        format!(
            "CPU {:.2} ms in this process ({:.0} context switches), {:.2} ms in python, {:.2} ms in libvirtd \
             (busy {:.2} cores on average); the machine's {cores} cores {:.0}% idle",
            per_lifecycle(self.this_process - earlier.this_process),
            switches(self).saturating_sub(switches(earlier)) as f64 / LIFECYCLES as f64,
            per_lifecycle(self.children - earlier.children),
            per_lifecycle(self.libvirtd - earlier.libvirtd),
            (self.libvirtd - earlier.libvirtd) / elapsed,
            (self.idle - earlier.idle) * 100.0 / (elapsed * cores),
        )
    }

    /// CPU and context switches per lifecycle since `earlier`, by thread name (threads started
    /// since count in full): this process's, then libvirtd's.
    fn by_thread_since(&self, earlier: &CpuUse) -> String {
        format!(
            "{}; libvirtd: {}",
            threads_since(&self.threads, &earlier.threads),
            threads_since(&self.libvirtd_threads, &earlier.libvirtd_threads)
        )
    }
}

fn threads_since(now: &BTreeMap<String, ThreadUse>, earlier: &BTreeMap<String, ThreadUse>) -> String {
    let threads = now.iter().map(|(name, now)| {
        let before = earlier.get(name).copied().unwrap_or_default();
        format!(
            "{name} {:.2} ms ({:.0})",
            (now.cpu - before.cpu) * 1e3 / LIFECYCLES as f64,
            now.context_switches.saturating_sub(before.context_switches) as f64 / LIFECYCLES as f64
        )
    });
    threads.collect::<Vec<_>>().join(", ")
}

fn libvirtd_pid() -> anyhow::Result<u32> {
    let state = std::env::var("LIBVIRT_STATE_DIR").unwrap_or_else(|_| "/tmp/hyperplane-libvirt".into());
    let pid = std::fs::read_to_string(format!("{state}/libvirtd.pid")).context("reading libvirtd.pid")?;
    pid.trim().parse().context("libvirtd.pid holds a pid")
}

/// `tests/libvirt/lifecycle-python.py`: the same lifecycles through libvirt-python; with
/// `[pool, backing volume]` also the overlay volume Hyperplane's driver gives each instance, and
/// with `--processes K` after them in K processes.
fn python_lifecycles(python: &std::path::Path, uri: &str, options: &[&str]) -> anyhow::Result<f64> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/libvirt/lifecycle-python.py");
    let output = Command::new(python).arg(script).arg(uri).arg(LIFECYCLES.to_string()).args(options).output()?;
    anyhow::ensure!(output.status.success(), "libvirt-python failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("SECONDS="))
        .context("the python script printed no SECONDS=")?
        .parse()
        .context("SECONDS= is a number")
}
