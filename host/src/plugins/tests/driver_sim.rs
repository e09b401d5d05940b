//! driver-sim through the real component: lifecycle round trip, shared state across
//! instances, progress, the compiled-component cache, and measured timings.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::support::{DRIVER_SIM_WASM, provider_settings, shared_runtime};
use crate::plugins::driver_types::{DiskFormat, DriverError, InstanceSpec, InstanceState, TemplateRef};
use crate::plugins::{
    ByteSource, CacheOutcome, CallError, Driver, LoadError, MemoryStateStore, PluginRuntime, PluginStateStore,
    RuntimeSettings, progress,
};

/// The grace period of graceful stops in tests.
const GRACE: Duration = Duration::from_secs(60);

fn instant_config() -> serde_json::Value {
    json!({
        "hosts": 2,
        "delays_ms": { "create": 0, "start": 0, "stop": 0, "restart": 0, "delete": 0, "pull": 0 },
    })
}

fn template() -> TemplateRef {
    TemplateRef {
        name: "ubuntu".to_string(),
        version: 1,
        tag: "24.04".to_string(),
        size_bytes: 1 << 20,
        format: DiskFormat::Raw,
    }
}

fn spec(id: &str, host: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.to_string(),
        name: id.to_string(),
        host: host.to_string(),
        template: template(),
        vcpu: 2,
        ram_mb: 2048,
        disk_gb: 20,
        mac: None,
        vlan: None,
        metadata: Vec::new(),
    }
}

/// The first simulated host, with the test template pulled onto it.
async fn host_with_template(driver: &Driver) -> String {
    let host = driver.list_hosts().await.expect("hosts listed")[0].id.clone();
    driver.pull_template(&host, template(), ByteSource::empty(), None).await.expect("template pulled");
    host
}

async fn load_sim(name: &str, config: serde_json::Value) -> (Driver, Arc<MemoryStateStore>) {
    let state = Arc::new(MemoryStateStore::new());
    let driver = Driver::load(shared_runtime(), provider_settings(name, DRIVER_SIM_WASM, config), state.clone())
        .await
        .expect("driver-sim loads");
    (driver, state)
}

#[tokio::test]
async fn lifecycle_round_trip_through_the_component() {
    let (driver, state) = load_sim("sim-round-trip", instant_config()).await;
    assert_eq!(driver.name(), "sim-round-trip");
    assert!(driver.capabilities().exec);

    let hosts = driver.list_hosts().await.expect("hosts listed");
    assert_eq!(hosts.len(), 2);
    let host = hosts[0].id.clone();
    let missing_template = driver.create_instance(spec("vm-1", &host)).await;
    assert!(matches!(missing_template, Err(CallError::Driver(DriverError::Conflict(_)))), "{missing_template:?}");
    let pulled = driver.pull_template(&host, template(), ByteSource::empty(), None).await.expect("template pulled");
    assert_eq!((pulled.name.as_str(), pulled.version), ("ubuntu", 1));
    let cached = driver.list_templates(&host).await.expect("templates listed");
    assert_eq!(cached.iter().map(|template| template.name.as_str()).collect::<Vec<_>>(), vec!["ubuntu"]);

    let created = driver.create_instance(spec("vm-1", &host)).await.expect("created");
    assert_eq!(
        (created.id.as_str(), created.host.as_str(), created.state),
        ("vm-1", host.as_str(), InstanceState::Stopped)
    );
    let conflict = driver.create_instance(spec("vm-1", &host)).await;
    assert!(matches!(conflict, Err(CallError::Driver(DriverError::Conflict(_)))), "{conflict:?}");

    let started = driver.start_instance("vm-1").await.expect("started");
    assert_eq!(started.state, InstanceState::Running);
    assert_eq!(driver.get_instance("vm-1").await.expect("fetched").state, InstanceState::Running);
    let listed = driver.list_instances().await.expect("listed");
    assert_eq!(listed.iter().map(|instance| instance.id.as_str()).collect::<Vec<_>>(), vec!["vm-1"]);
    assert!(
        !state.scan("sim-round-trip", "").await.expect("scan").is_empty(),
        "the sim keeps its state in the host store"
    );

    let stopped = driver.stop_instance("vm-1", true, GRACE).await.expect("stopped");
    assert_eq!(stopped.state, InstanceState::Stopped);
    driver.delete_instance("vm-1").await.expect("deleted");
    let missing = driver.get_instance("vm-1").await;
    assert!(matches!(missing, Err(CallError::Driver(DriverError::NotFound(_)))), "{missing:?}");
    assert_eq!(driver.statistics().instances_discarded, 0, "driver errors keep the instance");
}

#[tokio::test]
async fn pull_streams_the_image_file_to_the_driver() {
    let (driver, _state) = load_sim("sim-image", instant_config()).await;
    let host = driver.list_hosts().await.expect("hosts listed")[0].id.clone();
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("1.img");
    let mut image = b"QFI\xfb".to_vec();
    image.resize(3 * 1024 * 1024 + 17, 0xab);
    std::fs::write(&path, &image).expect("write the image");

    let source = ByteSource::open_file(&path, "the image of ubuntu v1").await.expect("opens");
    let delivered = source.delivered();
    let qcow2 = TemplateRef { size_bytes: image.len() as u64, format: DiskFormat::Qcow2, ..template() };
    let pulled = driver.pull_template(&host, qcow2.clone(), source, None).await.expect("pulled");
    assert_eq!(pulled.size_bytes, image.len() as u64);
    assert_eq!(delivered.get(), image.len() as u64, "the driver read the whole image");

    let wrong_size = TemplateRef { version: 2, size_bytes: 5, ..qcow2 };
    let source = ByteSource::open_file(&path, "the image of ubuntu v2").await.expect("opens");
    let refused = driver.pull_template(&host, wrong_size, source, None).await;
    assert!(
        matches!(&refused, Err(CallError::Driver(DriverError::Invalid(message))) if message.contains("declares 5 bytes")),
        "{refused:?}"
    );
    assert_eq!(driver.statistics().instances_discarded, 0);
}

#[tokio::test]
async fn suspend_resume_and_snapshots_through_the_component() {
    let (driver, _state) = load_sim("sim-snapshots", instant_config()).await;
    let host = host_with_template(&driver).await;
    driver.create_instance(spec("vm-s", &host)).await.expect("created");
    driver.start_instance("vm-s").await.expect("started");
    assert_eq!(driver.suspend_instance("vm-s").await.expect("suspended").state, InstanceState::Suspended);
    assert_eq!(driver.resume_instance("vm-s").await.expect("resumed").state, InstanceState::Running);

    let snapshot = driver.create_snapshot("vm-s", "first", "running").await.expect("snapshot");
    assert_eq!((snapshot.state, snapshot.current), (InstanceState::Running, true));
    driver.stop_instance("vm-s", false, GRACE).await.expect("stopped");
    let reverted = driver.revert_snapshot("vm-s", "first").await.expect("reverted");
    assert_eq!(reverted.state, InstanceState::Running);
    let listed = driver.list_snapshots("vm-s").await.expect("listed");
    assert_eq!(listed.iter().map(|snapshot| snapshot.name.as_str()).collect::<Vec<_>>(), ["first"]);
    driver.delete_snapshot("vm-s", "first").await.expect("deleted");
    let missing = driver.delete_snapshot("vm-s", "first").await;
    assert!(matches!(missing, Err(CallError::Driver(DriverError::NotFound(_)))), "{missing:?}");
}

#[tokio::test]
async fn a_graceful_stop_gets_its_grace_period_on_top_of_the_call_timeout() {
    let config = json!({ "hosts": 1, "guests_ignore_shutdown": true,
        "delays_ms": { "create": 0, "start": 0, "stop": 0, "restart": 0, "delete": 0, "pull": 0 } });
    let mut settings = provider_settings("sim-grace", DRIVER_SIM_WASM, config);
    settings.call_timeout = Duration::from_millis(300);
    let driver = Driver::load(shared_runtime(), settings, Arc::new(MemoryStateStore::new())).await.expect("loads");
    let host = host_with_template(&driver).await;
    driver.create_instance(spec("vm-g", &host)).await.expect("created");
    driver.start_instance("vm-g").await.expect("started");
    let started = Instant::now();
    let stopped = driver.stop_instance("vm-g", false, Duration::from_millis(500)).await.expect("stopped in time");
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert!(started.elapsed() >= Duration::from_millis(500), "the guest ignored the shutdown: {:?}", started.elapsed());
}

#[tokio::test]
async fn concurrent_calls_share_state_across_instances() {
    let (driver, _state) = load_sim("sim-concurrent", instant_config()).await;
    let host = host_with_template(&driver).await;
    let creations = (0..8).map(|index| {
        let driver = driver.clone();
        let spec = spec(&format!("vm-{index}"), &host);
        tokio::spawn(async move { driver.create_instance(spec).await })
    });
    for creation in futures::future::join_all(creations).await {
        creation.expect("task joined").expect("created");
    }
    assert_eq!(driver.list_instances().await.expect("listed").len(), 8);
    assert!(driver.statistics().instances_created >= 1);
}

#[tokio::test]
async fn invalid_config_fails_init_with_the_driver_error() {
    let state = Arc::new(MemoryStateStore::new());
    let settings = provider_settings("sim-bad-config", DRIVER_SIM_WASM, json!({ "no_such_key": true }));
    let error = Driver::load(shared_runtime(), settings, state).await.expect_err("init refuses the config");
    match error {
        LoadError::Init { provider, source: CallError::Driver(DriverError::Invalid(_)) } => {
            assert_eq!(provider, "sim-bad-config")
        }
        other => panic!("unexpected error: {other:?}"),
    }
}

#[tokio::test]
async fn progress_of_a_call_reaches_the_task_scope() {
    let config = json!({ "hosts": 1, "delays_ms": { "create": 0, "start": 60, "stop": 0, "restart": 0, "delete": 0, "pull": 0 } });
    let (driver, _state) = load_sim("sim-progress", config).await;
    let host = host_with_template(&driver).await;
    driver.create_instance(spec("vm-p", &host)).await.expect("created");

    let reports = Arc::new(Mutex::new(Vec::<(f32, String)>::new()));
    let sink_reports = reports.clone();
    let sink: progress::ProgressSink = Arc::new(move |fraction, message: &str| {
        sink_reports.lock().expect("not poisoned").push((fraction, message.to_string()));
    });
    let started = progress::scope(sink, driver.start_instance("vm-p")).await.expect("started");
    assert_eq!(started.state, InstanceState::Running);
    let reports = reports.lock().expect("not poisoned").clone();
    assert!(reports.len() >= 2, "{reports:?}");
    assert!(reports.iter().all(|(fraction, _)| (0.0..=1.0).contains(fraction)));
    assert!(reports.iter().any(|(_, message)| message.contains("vm-p")), "{reports:?}");
}

#[tokio::test]
async fn second_load_uses_the_disk_cache() {
    let cache_directory = tempfile::tempdir().expect("temporary directory");
    let settings =
        || RuntimeSettings { cache_dir: Some(cache_directory.path().to_path_buf()), idle_instance_timeout: None };
    let state: Arc<MemoryStateStore> = Arc::new(MemoryStateStore::new());

    let first_runtime = PluginRuntime::new(settings()).expect("runtime");
    let first =
        Driver::load(&first_runtime, provider_settings("cache-1", DRIVER_SIM_WASM, instant_config()), state.clone())
            .await
            .expect("loads");
    assert_eq!(first.cache_outcome(), CacheOutcome::Compiled);
    let cached_files: Vec<_> = std::fs::read_dir(cache_directory.path())
        .expect("cache directory readable")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached_files.len(), 1, "{cached_files:?}");
    assert!(cached_files[0].ends_with(".cwasm") && cached_files[0].len() == 64 + 6, "{cached_files:?}");

    let again =
        Driver::load(&first_runtime, provider_settings("cache-2", DRIVER_SIM_WASM, instant_config()), state.clone())
            .await
            .expect("loads");
    assert_eq!(again.cache_outcome(), CacheOutcome::MemoryHit);

    // A fresh process (runtime) finds the compiled component on disk and does not compile.
    let second_runtime = PluginRuntime::new(settings()).expect("runtime");
    let second = Driver::load(&second_runtime, provider_settings("cache-3", DRIVER_SIM_WASM, instant_config()), state)
        .await
        .expect("loads");
    assert_eq!(second.cache_outcome(), CacheOutcome::DiskHit);
    assert_eq!(second_runtime.cache_statistics().compiled, 0);
    assert_eq!(second_runtime.cache_statistics().disk_hits, 1);
    assert!(!second.list_hosts().await.expect("the deserialized component works").is_empty());
}

/// Instances unused for longer than the runtime's idle timeout are dropped when the pool is
/// next used; without a timeout they are kept.
#[tokio::test]
async fn idle_instances_are_dropped_after_the_idle_timeout() {
    for (timeout, idle_after) in [(Some(Duration::from_millis(50)), 1), (None, 3)] {
        let runtime =
            PluginRuntime::new(RuntimeSettings { cache_dir: None, idle_instance_timeout: timeout }).expect("runtime");
        let state = Arc::new(MemoryStateStore::new());
        let driver = Driver::load(&runtime, provider_settings("sim-idle", DRIVER_SIM_WASM, instant_config()), state)
            .await
            .expect("driver-sim loads");
        driver.prewarm(3).await.expect("prewarmed");
        assert_eq!(driver.statistics().idle_instances, 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
        driver.list_hosts().await.expect("hosts listed");
        assert_eq!(driver.statistics().idle_instances, idle_after, "idle timeout {timeout:?}");
    }
}

/// Not an assertion on speed: prints the cost of a fresh instance and of a call round trip.
/// `cargo test -p hyperplane --lib plugins::tests::driver_sim::timings -- --nocapture`
#[tokio::test]
async fn timings() {
    let (driver, _state) = load_sim("sim-timings", instant_config()).await;
    let host = host_with_template(&driver).await;
    driver.create_instance(spec("vm-t", &host)).await.expect("created");

    let idle_before = driver.statistics().idle_instances;
    let started = Instant::now();
    driver.prewarm(crate::plugins::MAX_IDLE_INSTANCES_PER_PROVIDER).await.expect("prewarmed");
    let instantiated = driver.statistics().idle_instances - idle_before;
    let per_instance = started.elapsed() / u32::try_from(instantiated.max(1)).unwrap_or(1);

    let rounds = 500u32;
    let started = Instant::now();
    for _ in 0..rounds {
        driver.get_instance("vm-t").await.expect("fetched");
    }
    let per_call = started.elapsed() / rounds;
    println!(
        "driver-sim: instantiate + init {per_instance:?} per instance ({instantiated} instances); \
         get-instance round trip {per_call:?} per call ({rounds} calls)"
    );
    assert!(per_call < Duration::from_secs(1));
}
