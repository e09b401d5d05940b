//! Backbone benchmarks (`cargo bench --bench backbone`): plugin load and call round trip,
//! create→running throughput through the API on a zero-delay simulated driver, and
//! `GET /v1/instances/{id}` throughput next to a bare axum handler in the same run.
//!
//! Prints one line per figure. Not a test: nothing here asserts a speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyperplane::config::Config;
use hyperplane::plugins::{
    ComponentSource, Driver, MemoryStateStore, PluginRuntime, ProviderSettings, RuntimeSettings,
};
use serde_json::{Value, json};

const TOKEN: &str = "bench-token";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    plugin_figures(scratch.path()).await?;
    api_figures(scratch.path()).await?;
    Ok(())
}

async fn plugin_figures(scratch: &std::path::Path) -> anyhow::Result<()> {
    let component: Arc<[u8]> = Arc::from(std::fs::read(env!("BUNDLED_DRIVER_SIM_WASM"))?);
    let settings = || {
        ProviderSettings {
        name: "bench".into(),
        component: ComponentSource::Bytes { label: "driver-sim".into(), bytes: component.clone() },
        config_json: json!({ "hosts": 4, "delays_ms": { "create": 0, "start": 0, "stop": 0, "restart": 0, "delete": 0, "pull": 0 }, "pull_bytes_per_sec": 0 })
            .to_string(),
        call_timeout: Duration::from_secs(30),
        memory_limit_bytes: 256 << 20,
        endpoints: Default::default(),
        allowed_http_hosts: Vec::new(),
        max_response_bytes: 16 << 20,
    }
    };
    let runtime =
        PluginRuntime::new(RuntimeSettings { cache_dir: Some(scratch.join("cache")), idle_instance_timeout: None })?;
    let state = Arc::new(MemoryStateStore::default());

    let started = Instant::now();
    Driver::load(&runtime, settings(), state.clone()).await?;
    println!("plugin load, compiling (cold cache):        {:>10.2} ms", started.elapsed().as_secs_f64() * 1e3);
    let rounds = 20;
    let started = Instant::now();
    let mut driver = None;
    for _ in 0..rounds {
        driver = Some(Driver::load(&runtime, settings(), state.clone()).await?);
    }
    println!(
        "plugin load, cached (deserialize+instantiate+init): {:>7.3} ms",
        started.elapsed().as_secs_f64() * 1e3 / rounds as f64
    );
    let driver = driver.context("loaded")?;
    // A fresh instance from the InstancePre, with `init` (load leaves one in the pool).
    let (mut instantiated, mut instantiating) = (0, Duration::ZERO);
    for _ in 0..rounds {
        let fresh = Driver::load(&runtime, settings(), state.clone()).await?;
        let before = fresh.statistics().idle_instances;
        let started = Instant::now();
        fresh.prewarm(8).await?;
        instantiating += started.elapsed();
        instantiated += fresh.statistics().idle_instances - before;
    }
    println!(
        "plugin instantiate (InstancePre -> instance + init):  {:>7.1} µs",
        instantiating.as_secs_f64() * 1e6 / instantiated.max(1) as f64
    );
    let calls = 5000;
    let started = Instant::now();
    for _ in 0..calls {
        let _ = driver.get_instance("missing").await;
    }
    let elapsed = started.elapsed();
    println!(
        "plugin call round trip (get-instance, one state read): {:>6.1} µs ({:.0} calls/s)",
        elapsed.as_secs_f64() * 1e6 / calls as f64,
        calls as f64 / elapsed.as_secs_f64()
    );
    let started = Instant::now();
    for _ in 0..calls {
        driver.list_hosts().await?;
    }
    let elapsed = started.elapsed();
    println!("plugin call round trip (list-hosts, 4 hosts):  {:>10.1} µs", elapsed.as_secs_f64() * 1e6 / calls as f64);
    Ok(())
}

async fn api_figures(scratch: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::from_toml(&format!(
        r#"
listen = "127.0.0.1:0"
data_dir = {:?}
[log]
filter = "warn"
[reconcile]
interval_secs = 60
[tasks]
concurrency = 256
[[providers]]
name = "sim"
driver = "driver-sim"
config = {{ hosts = 16, cpu = 4096, ram_mb = 16777216, disk_gb = 1000000, delays_ms = {{ create = 0, start = 0, stop = 0, restart = 0, delete = 0, pull = 0 }}, pull_bytes_per_sec = 0 }}
"#,
        scratch.join("api-data").display().to_string()
    ))?;
    let server = hyperplane::server::start(config, Some(TOKEN.into())).await?;
    let base = format!("http://{}", server.address);
    let http = reqwest::Client::new();
    http.post(format!("{base}/v1/templates"))
        .bearer_auth(TOKEN)
        .body(json!({ "name": "bench", "arch": "amd64" }).to_string())
        .send()
        .await?
        .error_for_status()?;

    // create → running throughput: 10 concurrent batches of 100 instances.
    let total = 1000;
    let writes_before = hyperplane::store::write_statistics();
    let started = Instant::now();
    let batches = (0..10).map(|_| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let task: Value = http
                .post(format!("{base}/v1/instances?wait=600"))
                .bearer_auth(TOKEN)
                .body(json!({ "template": "bench", "count": total / 10, "vcpu": 1, "ram_mb": 512 }).to_string())
                .send()
                .await?
                .json()
                .await?;
            anyhow::ensure!(task["state"] == "succeeded", "batch ended {task}");
            Ok::<_, anyhow::Error>(())
        }
    });
    for result in futures::future::join_all(batches).await {
        result?;
    }
    let elapsed = started.elapsed();
    println!(
        "create→running via API, zero-delay driver-sim, SQLite: {total} instances in {:.2} s = {:.0} instances/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    print_writer_use(writes_before, total);

    // Placement alone: from the first `instance.created` to the last `instance.placed` event.
    let log = http.get(format!("{base}/v1/events?since=0")).bearer_auth(TOKEN).send().await?.text().await?;
    let events: Vec<Value> = log.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let time_of =
        |event: &Value| event["time"].as_str().and_then(|time| chrono::DateTime::parse_from_rfc3339(time).ok());
    let first_created = events.iter().filter(|event| event["type"] == "instance.created").filter_map(time_of).min();
    let placed: Vec<_> = events.iter().filter(|event| event["type"] == "instance.placed").filter_map(time_of).collect();
    if let (Some(first), Some(last)) = (first_created, placed.iter().max()) {
        let span = (*last - first).num_milliseconds().max(1) as f64 / 1e3;
        println!(
            "placed and committed via API (same run): {} instances in {span:.2} s = {:.0} placements/s",
            placed.len(),
            placed.len() as f64 / span
        );
    }

    // GET /v1/instances/{id} next to a bare axum handler answering the same body.
    let list: Value = http.get(format!("{base}/v1/instances?limit=1")).bearer_auth(TOKEN).send().await?.json().await?;
    let instance = list["items"][0].clone();
    let id = instance["id"].as_str().context("an instance")?.to_owned();
    let bare_address = start_bare_axum(instance).await?;
    let requests = 20_000;
    let concurrency = 32;
    let ours = requests_per_second(&http, &format!("{base}/v1/instances/{id}"), requests, concurrency).await?;
    let bare = requests_per_second(&http, &format!("http://{bare_address}/instance"), requests, concurrency).await?;
    println!(
        "GET /v1/instances/{{id}}: {ours:.0} req/s; bare axum handler, same body: {bare:.0} req/s; ratio {:.2}",
        ours / bare
    );
    server.shutdown().await;
    Ok(())
}

async fn start_bare_axum(body: Value) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let body = Arc::new(body);
    let app = axum::Router::new().route(
        "/instance",
        axum::routing::get(move || {
            let body = body.clone();
            async move { axum::Json(body.as_ref().clone()) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

async fn requests_per_second(
    http: &reqwest::Client,
    url: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let per_worker = requests / concurrency;
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (http, url) = (http.clone(), url.to_owned());
        async move {
            for _ in 0..per_worker {
                let response = http.get(&url).bearer_auth(TOKEN).send().await?;
                anyhow::ensure!(response.status().is_success(), "status {}", response.status());
                response.bytes().await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    for result in futures::future::join_all(workers).await {
        result?;
    }
    Ok((per_worker * concurrency) as f64 / started.elapsed().as_secs_f64())
}

/// What the single SQLite writer did since `before`, per instance.
fn print_writer_use(before: hyperplane::store::WriteStatistics, instances: usize) {
    let now = hyperplane::store::write_statistics();
    let transactions = now.transactions - before.transactions;
    let held = now.held - before.held;
    let waited = now.waited - before.waited;
    println!(
        "  writer (same run): {:.1} write transactions per instance, each held {:.0} µs on average; \
         {:.2} s held, {:.2} s waited for in all",
        transactions as f64 / instances as f64,
        held.as_secs_f64() * 1e6 / transactions.max(1) as f64,
        held.as_secs_f64(),
        waited.as_secs_f64()
    );
    for (at, count, held) in hyperplane::store::write_statistics_by_caller().into_iter().take(12) {
        println!("    {at}: {count} × {:.0} µs", held.as_secs_f64() * 1e6 / count.max(1) as f64);
    }
}
