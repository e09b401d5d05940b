//! Unit tests of the simulator on an in-memory store and a fake clock that never sleeps.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyperplane_guest::bytes::MemoryBytes;
use hyperplane_guest::state::{JsonState, KeyValueStore, MemoryStore};
use hyperplane_guest::types::{Arch, ByteSpan, KeyValue};

use super::*;
use crate::records::{CachedTemplateRecord, DeltaBase, HostLedger, ImageFormat, InstanceRecord};
use crate::transfer::{ByteWriter, DeltaReader, SimulatedDisk};

const START_MS: u64 = 1_000_000;

type SleepHook = Box<dyn FnMut() + Send>;

/// A clock that jumps forward on `sleep`, with scripted randomness and recorded progress.
#[derive(Default)]
struct FakeEnvironment {
    now_ms: AtomicU64,
    slept_ms: AtomicU64,
    progress: Mutex<Vec<(f32, String)>>,
    random_fractions: Mutex<VecDeque<f64>>,
    /// Runs at the start of every sleep, to look at the store mid-operation.
    on_sleep: Mutex<Option<SleepHook>>,
}

impl Environment for Arc<FakeEnvironment> {
    fn now_ms(&self) -> u64 {
        START_MS + self.now_ms.load(Ordering::SeqCst)
    }

    fn sleep(&self, duration: Duration) {
        if let Some(hook) = self.on_sleep.lock().expect("hook lock").as_mut() {
            hook();
        }
        self.now_ms.fetch_add(millis(duration), Ordering::SeqCst);
        self.slept_ms.fetch_add(millis(duration), Ordering::SeqCst);
    }

    fn report_progress(&self, fraction: f32, message: &str) {
        self.progress.lock().expect("progress lock").push((fraction, message.to_owned()));
    }

    fn random_fraction(&self) -> f64 {
        self.random_fractions.lock().expect("random lock").pop_front().unwrap_or(0.5)
    }
}

impl FakeEnvironment {
    fn advance(&self, milliseconds: u64) {
        self.now_ms.fetch_add(milliseconds, Ordering::SeqCst);
    }

    fn take_slept_ms(&self) -> u64 {
        self.slept_ms.swap(0, Ordering::SeqCst)
    }
}

struct Fixture {
    store: Arc<MemoryStore>,
    environment: Arc<FakeEnvironment>,
    simulator: Simulator<Arc<MemoryStore>, Arc<FakeEnvironment>>,
}

impl Fixture {
    fn new(config_json: &str) -> Fixture {
        let store = Arc::new(MemoryStore::new());
        let environment = Arc::new(FakeEnvironment::default());
        let settings = Settings::from_json(config_json).expect("valid test config");
        let simulator = Simulator::new(settings, Arc::clone(&store), Arc::clone(&environment));
        Fixture { store, environment, simulator }
    }

    /// Another component instance of the same provider: same store and clock.
    fn another_instance(&self) -> Simulator<Arc<MemoryStore>, Arc<FakeEnvironment>> {
        Simulator::new(self.simulator.settings().clone(), Arc::clone(&self.store), Arc::clone(&self.environment))
    }

    fn record(&self, instance_id: &str) -> Option<InstanceRecord> {
        JsonState::new(Arc::clone(&self.store)).get_json(&instance_key(instance_id)).expect("readable record")
    }

    fn put_record(&self, record: &InstanceRecord) {
        JsonState::new(Arc::clone(&self.store)).set_json(&instance_key(&record.id), record).expect("writable record");
    }

    fn ledger(&self, host_id: &str) -> HostLedger {
        JsonState::new(Arc::clone(&self.store))
            .get_json(&ledger_key(host_id))
            .expect("readable ledger")
            .unwrap_or_default()
    }

    /// Pulls `ubuntu` v1 to the host and creates a stopped instance on it.
    fn stopped_instance(&self, instance_id: &str, host_id: &str) -> Result<Instance, Error> {
        self.simulator.pull_template(host_id, &ubuntu(), &no_image(), None)?;
        self.simulator.create_instance(spec(instance_id, host_id, 2, 2048))
    }

    fn running_instance(&self, instance_id: &str, host_id: &str) -> Result<Instance, Error> {
        self.stopped_instance(instance_id, host_id)?;
        self.simulator.start_instance(instance_id)
    }
}

const ZERO_DELAYS: &str = r#"{"pull_bytes_per_sec": 0,
    "delays_ms": {"create": 0, "start": 0, "stop": 0, "restart": 0, "delete": 0, "pull": 0}}"#;

/// The grace period of graceful stops in tests: longer than any simulated shutdown.
const GRACE_MS: u32 = 60_000;

fn ubuntu() -> TemplateRef {
    TemplateRef { name: "ubuntu".into(), version: 1, tag: "24.04".into(), size_bytes: 2 << 30, format: DiskFormat::Raw }
}

/// The empty image the host passes for a template version without an image.
fn no_image() -> MemoryBytes {
    MemoryBytes::default()
}

fn spec(instance_id: &str, host_id: &str, vcpu: u32, ram_mb: u64) -> InstanceSpec {
    InstanceSpec {
        id: instance_id.into(),
        name: format!("{instance_id}-name"),
        host: host_id.into(),
        template: ubuntu(),
        vcpu,
        ram_mb,
        disk_gb: 20,
        mac: None,
        vlan: Some(12),
        metadata: vec![KeyValue { key: "owner".into(), value: "ci".into() }],
    }
}

fn error_kind(error: &Error) -> &'static str {
    match error {
        Error::NotFound(_) => "not-found",
        Error::Conflict(_) => "conflict",
        Error::Invalid(_) => "invalid",
        Error::Unsupported(_) => "unsupported",
        Error::Unavailable(_) => "unavailable",
        Error::Backend(_) => "backend",
    }
}

fn error_message(error: &Error) -> String {
    match error {
        Error::NotFound(message)
        | Error::Conflict(message)
        | Error::Invalid(message)
        | Error::Unsupported(message)
        | Error::Unavailable(message) => message.clone(),
        Error::Backend(backend) => format!("{}: {}", backend.code, backend.message),
    }
}

/// Asserts that `result` failed with `expected_kind` and a message containing `fragment`.
fn check_error<T: std::fmt::Debug>(result: Result<T, Error>, expected_kind: &str, fragment: &str) {
    match result {
        Err(error) => {
            assert_eq!(error_kind(&error), expected_kind, "{error:?}");
            assert!(error_message(&error).contains(fragment), "{error:?} does not mention {fragment:?}");
        }
        Ok(value) => panic!("expected {expected_kind} ({fragment}), got {value:?}"),
    }
}

#[test]
fn default_config_has_four_uniform_hosts() {
    let settings = Settings::from_json("{}").expect("defaults");
    let ids: Vec<&str> = settings.hosts.iter().map(|host| host.id.as_str()).collect();
    assert_eq!(ids, ["sim-1", "sim-2", "sim-3", "sim-4"]);
    assert!(settings.hosts.iter().all(|host| host.cpu == 16 && host.ram_mb == 65_536 && host.disk_gb == 500));
    assert!(settings.hosts.iter().all(|host| host.arch == Arch::Amd64 && !host.offline));
    assert_eq!(settings.delays.start, Duration::from_millis(300));
    assert_eq!(settings.failure_rate, 0.0);
    assert_eq!(settings.pull_bytes_per_sec, 1 << 30);
}

#[test]
fn host_specs_override_uniform_hosts_and_inherit_sizes() {
    let settings = Settings::from_json(
        r#"{"cpu": 8, "arch": "arm64", "offline_hosts": ["b"],
            "host_specs": [{"id": "a", "cpu": 4}, {"id": "b", "ram_mb": 1024, "arch": "amd64"}, {"id": "c", "offline": true}]}"#,
    )
    .expect("valid");
    let summary: Vec<(&str, u32, u64, Arch, bool)> =
        settings.hosts.iter().map(|host| (host.id.as_str(), host.cpu, host.ram_mb, host.arch, host.offline)).collect();
    assert_eq!(
        summary,
        [("a", 4, 65_536, Arch::Arm64, false), ("b", 8, 1024, Arch::Amd64, true), ("c", 8, 65_536, Arch::Arm64, true)]
    );
}

#[test]
fn invalid_configs_name_the_problem() {
    let check = |json: &str, fragment: &str| check_error(Settings::from_json(json), "invalid", fragment);
    check(r#"{"hostz": 3}"#, "unknown field `hostz`");
    check(r#"{"delays_ms": {"start": "slow"}}"#, "delays_ms.start");
    check(r#"{"delays_ms": {"boot": 1}}"#, "unknown field `boot`");
    check(r#"{"arch": "sparc"}"#, "arch");
    check(r#"{"failure_rate": 1.5}"#, "failure_rate");
    check(r#"{"hosts": 2, "host_specs": [{"id": "a"}]}"#, "not both");
    check(r#"{"host_specs": [{"id": "a"}, {"id": "a"}]}"#, "duplicate host id `a`");
    check(r#"{"host_specs": [{"id": "a/b"}]}"#, "host_specs[0].id");
    check(r#"{"host_specs": [{"id": "a", "cpu": 0}]}"#, "host_specs[0]");
    check(r#"{"host_specs": [{"id": "a", "size": 1}]}"#, "unknown field `size`");
    check(r#"{"offline_hosts": ["sim-9"]}"#, "unknown host `sim-9`");
    check(r#"{"cpu": 0}"#, "cpu");
}

#[test]
fn list_hosts_reports_state_sizes_and_cached_templates() -> Result<(), Error> {
    let fixture = Fixture::new(r#"{"hosts": 2, "offline_hosts": ["sim-2"], "delays_ms": {"pull": 0}}"#);
    fixture.simulator.pull_template("sim-1", &ubuntu(), &no_image(), None)?;
    let hosts = fixture.simulator.list_hosts()?;
    assert_eq!(hosts.len(), 2);
    assert_eq!(
        (hosts[0].id.as_str(), hosts[0].state, hosts[0].hypervisor.as_str()),
        ("sim-1", HostState::Active, "driver-sim")
    );
    assert_eq!(hosts[0].cached_templates.len(), 1);
    assert_eq!(hosts[0].cached_templates[0].name, "ubuntu");
    assert_eq!((hosts[1].state, hosts[1].cached_templates.len()), (HostState::Offline, 0));
    Ok(())
}

#[test]
fn create_defines_a_stopped_instance_with_derived_addresses() -> Result<(), Error> {
    let fixture = Fixture::new("{}");
    fixture.simulator.pull_template("sim-1", &ubuntu(), &no_image(), None)?;
    fixture.environment.take_slept_ms();
    let instance = fixture.simulator.create_instance(spec("vm-1", "sim-1", 2, 2048))?;
    assert_eq!(fixture.environment.take_slept_ms(), 200);
    assert_eq!(
        (instance.id.as_str(), instance.host.as_str(), instance.state),
        ("vm-1", "sim-1", InstanceState::Stopped)
    );
    assert_eq!(instance.ip, None);
    assert_eq!(instance.mac, Some(mac_for("vm-1")));
    let record = fixture.record("vm-1").expect("persisted");
    assert_eq!((record.name.as_str(), record.vlan, record.power), ("vm-1-name", Some(12), PowerState::Stopped));
    assert_eq!(record.metadata, [("owner".to_owned(), "ci".to_owned())]);
    let ledger = fixture.ledger("sim-1");
    assert_eq!(ledger.allocated, Resources { vcpu: 2, ram_mb: 2048, disk_gb: 20 });
    assert!(ledger.pending_creates.is_empty());
    assert!(ledger.template_in_use("ubuntu/1"));

    let mut with_mac = spec("vm-2", "sim-1", 1, 512);
    with_mac.mac = Some("52:54:00:AA:BB:CC".into());
    assert_eq!(fixture.simulator.create_instance(with_mac)?.mac.as_deref(), Some("52:54:00:aa:bb:cc"));
    Ok(())
}

#[test]
fn create_refuses_bad_requests() -> Result<(), Error> {
    let fixture = Fixture::new(r#"{"offline_hosts": ["sim-4"]}"#);
    let simulator = &fixture.simulator;
    check_error(
        simulator.create_instance(spec("vm-1", "sim-1", 1, 512)),
        "conflict",
        "not cached on host sim-1; pull it first",
    );
    simulator.pull_template("sim-1", &ubuntu(), &no_image(), None)?;
    simulator.create_instance(spec("vm-1", "sim-1", 1, 512))?;
    check_error(simulator.create_instance(spec("vm-1", "sim-1", 1, 512)), "conflict", "vm-1 already exists");
    check_error(simulator.create_instance(spec("vm-2", "sim-9", 1, 512)), "not-found", "host sim-9");
    check_error(simulator.create_instance(spec("vm-2", "sim-4", 1, 512)), "unavailable", "sim-4 is offline");
    check_error(simulator.create_instance(spec("vm-2", "sim-1", 0, 512)), "invalid", "at least 1 vcpu");
    check_error(simulator.create_instance(spec("vm-2", "sim-1", 1, 0)), "invalid", "at least 1 vcpu");
    check_error(simulator.create_instance(spec("", "sim-1", 1, 512)), "invalid", "id must not be empty");
    check_error(simulator.create_instance(spec("vm-2", "sim-1", 17, 512)), "invalid", "can never fit");
    let mut bad_mac = spec("vm-2", "sim-1", 1, 512);
    bad_mac.mac = Some("nope".into());
    check_error(simulator.create_instance(bad_mac), "invalid", "not a MAC");
    assert!(fixture.record("vm-2").is_none());
    assert_eq!(fixture.ledger("sim-1").allocated.vcpu, 1);
    Ok(())
}

#[test]
fn capacity_is_respected_and_freed_by_delete() -> Result<(), Error> {
    let fixture = Fixture::new(ZERO_DELAYS);
    fixture.simulator.pull_template("sim-1", &ubuntu(), &no_image(), None)?;
    for number in 1..=4 {
        fixture.simulator.create_instance(spec(&format!("vm-{number}"), "sim-1", 4, 1024))?;
    }
    check_error(
        fixture.simulator.create_instance(spec("vm-5", "sim-1", 1, 1024)),
        "conflict",
        "16 of 16 vcpu allocated, 1 requested",
    );
    fixture.simulator.delete_instance("vm-2")?;
    fixture.simulator.create_instance(spec("vm-5", "sim-1", 4, 1024))?;

    let ram_bound = Fixture::new(r#"{"hosts": 1, "ram_mb": 4096, "delays_ms": {"create": 0, "pull": 0}}"#);
    ram_bound.simulator.pull_template("sim-1", &ubuntu(), &no_image(), None)?;
    ram_bound.simulator.create_instance(spec("a", "sim-1", 1, 3072))?;
    check_error(ram_bound.simulator.create_instance(spec("b", "sim-1", 1, 2048)), "conflict", "3072 of 4096 MB ram");
    Ok(())
}

#[test]
fn start_goes_through_starting_to_running_with_an_ip() -> Result<(), Error> {
    let fixture = Fixture::new("{}");
    fixture.stopped_instance("vm-1", "sim-1")?;
    fixture.environment.take_slept_ms();
    fixture.environment.progress.lock().expect("progress").clear();
    let observed_during_start = Arc::new(Mutex::new(Vec::new()));
    {
        let store = Arc::clone(&fixture.store);
        let environment = Arc::clone(&fixture.environment);
        let observed = Arc::clone(&observed_during_start);
        *fixture.environment.on_sleep.lock().expect("hook") = Some(Box::new(move || {
            let record: Option<InstanceRecord> =
                JsonState::new(Arc::clone(&store)).get_json(&instance_key("vm-1")).ok().flatten();
            if let Some(record) = record {
                observed.lock().expect("observed").push(record.power.observed_at(environment.now_ms()));
            }
        }));
    }
    let instance = fixture.simulator.start_instance("vm-1")?;
    assert_eq!(instance.state, InstanceState::Running);
    assert_eq!(instance.ip, Some(ip_for("vm-1")));
    assert_eq!(fixture.environment.take_slept_ms(), 300);
    let observed = observed_during_start.lock().expect("observed").clone();
    assert!(!observed.is_empty() && observed.iter().all(|state| *state == InstanceState::Starting), "{observed:?}");
    assert_eq!(fixture.record("vm-1").map(|record| record.power), Some(PowerState::Running));
    let progress = fixture.environment.progress.lock().expect("progress").clone();
    assert_eq!(progress.first().map(|(fraction, _)| *fraction), Some(0.0));
    assert_eq!(progress.last().map(|(fraction, _)| *fraction), Some(1.0));
    assert!(progress.iter().all(|(_, message)| message.contains("starting instance vm-1")));

    // Starting a running instance is a no-op.
    assert_eq!(fixture.simulator.start_instance("vm-1")?.state, InstanceState::Running);
    assert_eq!(fixture.environment.take_slept_ms(), 0);
    Ok(())
}

#[test]
fn transitions_complete_on_schedule_even_if_the_caller_died() -> Result<(), Error> {
    let fixture = Fixture::new("{}");
    fixture.stopped_instance("vm-1", "sim-1")?;
    let mut record = fixture.record("vm-1").expect("record");
    record.power = PowerState::Starting { running_at_ms: fixture.environment.now_ms() + 300 };
    fixture.put_record(&record);
    let before = fixture.simulator.get_instance("vm-1")?;
    assert_eq!((before.state, before.ip), (InstanceState::Starting, None));
    fixture.environment.advance(300);
    let after = fixture.simulator.get_instance("vm-1")?;
    assert_eq!((after.state, after.ip), (InstanceState::Running, Some(ip_for("vm-1"))));
    assert_eq!(fixture.simulator.list_instances()?[0].state, InstanceState::Running);
    Ok(())
}

#[test]
fn joining_a_transition_waits_for_it() -> Result<(), Error> {
    let fixture = Fixture::new("{}");
    fixture.stopped_instance("vm-1", "sim-1")?;
    let mut record = fixture.record("vm-1").expect("record");
    record.power = PowerState::Starting { running_at_ms: fixture.environment.now_ms() + 120 };
    fixture.put_record(&record);
    fixture.environment.take_slept_ms();
    assert_eq!(fixture.simulator.start_instance("vm-1")?.state, InstanceState::Running);
    assert_eq!(fixture.environment.take_slept_ms(), 120);
    check_error(fixture.simulator.stop_instance("vm-1-missing", false, GRACE_MS), "not-found", "vm-1-missing");
    Ok(())
}

#[test]
fn stop_is_graceful_or_forced() -> Result<(), Error> {
    let fixture = Fixture::new("{}");
    fixture.running_instance("vm-1", "sim-1")?;
    fixture.environment.take_slept_ms();
    let stopped = fixture.simulator.stop_instance("vm-1", false, GRACE_MS)?;
    assert_eq!((stopped.state, stopped.ip), (InstanceState::Stopped, None));
    assert_eq!(fixture.environment.take_slept_ms(), 200);
    assert_eq!(fixture.simulator.stop_instance("vm-1", false, GRACE_MS)?.state, InstanceState::Stopped);
    assert_eq!(fixture.environment.take_slept_ms(), 0);

    fixture.simulator.start_instance("vm-1")?;
    fixture.environment.take_slept_ms();
    assert_eq!(fixture.simulator.stop_instance("vm-1", true, GRACE_MS)?.state, InstanceState::Stopped);
    assert_eq!(fixture.environment.take_slept_ms(), 20);
    Ok(())
}

#[test]
fn stopping_a_starting_instance_needs_force() -> Result<(), Error> {
    let fixture = Fixture::new("{}");
    fixture.stopped_instance("vm-1", "sim-1")?;
    let mut record = fixture.record("vm-1").expect("record");
    record.power = PowerState::Starting { running_at_ms: fixture.environment.now_ms() + 300 };
    fixture.put_record(&record);
    check_error(
        fixture.simulator.stop_instance("vm-1", false, GRACE_MS),
        "conflict",
        "vm-1 is starting; stop it with force",
    );
    check_error(fixture.simulator.restart_instance("vm-1", false), "conflict", "vm-1 is starting");
    assert_eq!(fixture.simulator.stop_instance("vm-1", true, GRACE_MS)?.state, InstanceState::Stopped);
    Ok(())
}

#[test]
fn starting_a_stopping_instance_conflicts() -> Result<(), Error> {
    let fixture = Fixture::new("{}");
    fixture.running_instance("vm-1", "sim-1")?;
    let mut record = fixture.record("vm-1").expect("record");
    record.power = PowerState::Stopping { stopped_at_ms: fixture.environment.now_ms() + 200 };
    fixture.put_record(&record);
    check_error(fixture.simulator.start_instance("vm-1"), "conflict", "vm-1 is stopping; cannot start it");
    // A plain stop joins the stop under way.
    fixture.environment.take_slept_ms();
    assert_eq!(fixture.simulator.stop_instance("vm-1", false, GRACE_MS)?.state, InstanceState::Stopped);
    assert_eq!(fixture.environment.take_slept_ms(), 200);
    Ok(())
}

#[test]
fn restart_passes_through_stopping_and_starting() -> Result<(), Error> {
    let fixture = Fixture::new("{}");
    fixture.stopped_instance("vm-1", "sim-1")?;
    check_error(fixture.simulator.restart_instance("vm-1", false), "conflict", "stopped; start it instead");
    fixture.simulator.start_instance("vm-1")?;
    fixture.environment.take_slept_ms();
    let observed = Arc::new(Mutex::new(Vec::new()));
    {
        let store = Arc::clone(&fixture.store);
        let environment = Arc::clone(&fixture.environment);
        let observed = Arc::clone(&observed);
        *fixture.environment.on_sleep.lock().expect("hook") = Some(Box::new(move || {
            let record: Option<InstanceRecord> =
                JsonState::new(Arc::clone(&store)).get_json(&instance_key("vm-1")).ok().flatten();
            if let Some(record) = record {
                observed.lock().expect("observed").push(record.power.observed_at(environment.now_ms()));
            }
        }));
    }
    assert_eq!(fixture.simulator.restart_instance("vm-1", false)?.state, InstanceState::Running);
    assert_eq!(fixture.environment.take_slept_ms(), 400);
    let observed = observed.lock().expect("observed").clone();
    assert!(observed.contains(&InstanceState::Stopping) && observed.contains(&InstanceState::Starting), "{observed:?}");
    assert!(!observed.contains(&InstanceState::Running), "{observed:?}");
    Ok(())
}

#[test]
fn delete_removes_the_instance_and_frees_the_template() -> Result<(), Error> {
    let fixture = Fixture::new("{}");
    fixture.running_instance("vm-1", "sim-1")?;
    check_error(fixture.simulator.remove_template("sim-1", &ubuntu()), "conflict", "used by instances on host sim-1");
    fixture.environment.take_slept_ms();
    fixture.simulator.delete_instance("vm-1")?;
    assert_eq!(fixture.environment.take_slept_ms(), 100);
    check_error(fixture.simulator.get_instance("vm-1"), "not-found", "vm-1 does not exist");
    check_error(fixture.simulator.delete_instance("vm-1"), "not-found", "vm-1 does not exist");
    assert_eq!(fixture.ledger("sim-1"), HostLedger::default());
    fixture.simulator.remove_template("sim-1", &ubuntu())?;
    assert!(fixture.simulator.list_templates("sim-1")?.is_empty());
    check_error(fixture.simulator.remove_template("sim-1", &ubuntu()), "not-found", "not cached on host sim-1");
    Ok(())
}

#[test]
fn pull_takes_time_by_size_and_is_idempotent() -> Result<(), Error> {
    let fixture = Fixture::new(r#"{"offline_hosts": ["sim-2"], "pull_bytes_per_sec": 1073741824}"#);
    let cached = fixture.simulator.pull_template("sim-1", &ubuntu(), &no_image(), None)?;
    assert_eq!(
        (cached.name.as_str(), cached.version, cached.tag.as_str(), cached.size_bytes),
        ("ubuntu", 1, "24.04", 2 << 30)
    );
    assert_eq!(fixture.environment.take_slept_ms(), 500 + 2000);
    fixture.simulator.pull_template("sim-1", &ubuntu(), &no_image(), None)?;
    assert_eq!(fixture.environment.take_slept_ms(), 0);
    assert_eq!(fixture.simulator.list_templates("sim-1")?.len(), 1);
    assert!(fixture.simulator.list_templates("sim-3")?.is_empty());
    check_error(fixture.simulator.pull_template("sim-2", &ubuntu(), &no_image(), None), "unavailable", "offline");
    check_error(fixture.simulator.pull_template("sim-9", &ubuntu(), &no_image(), None), "not-found", "sim-9");
    check_error(fixture.simulator.list_templates("sim-2"), "unavailable", "offline");
    let nameless = TemplateRef { name: String::new(), ..ubuntu() };
    check_error(fixture.simulator.pull_template("sim-1", &nameless, &no_image(), None), "invalid", "name");
    Ok(())
}

#[test]
fn offline_hosts_refuse_operations_but_keep_their_inventory() -> Result<(), Error> {
    let fixture = Fixture::new(ZERO_DELAYS);
    fixture.running_instance("vm-1", "sim-1")?;
    let offline = Fixture {
        simulator: Simulator::new(
            Settings::from_json(r#"{"offline_hosts": ["sim-1"]}"#).expect("valid"),
            Arc::clone(&fixture.store),
            Arc::clone(&fixture.environment),
        ),
        store: Arc::clone(&fixture.store),
        environment: Arc::clone(&fixture.environment),
    };
    let simulator = &offline.simulator;
    assert_eq!(simulator.get_instance("vm-1")?.state, InstanceState::Running);
    assert_eq!(simulator.list_instances()?.len(), 1);
    check_error(simulator.start_instance("vm-1"), "unavailable", "host sim-1 is offline");
    check_error(simulator.stop_instance("vm-1", true, GRACE_MS), "unavailable", "host sim-1 is offline");
    check_error(simulator.restart_instance("vm-1", true), "unavailable", "host sim-1 is offline");
    check_error(simulator.delete_instance("vm-1"), "unavailable", "host sim-1 is offline");
    check_error(simulator.exec("vm-1", "echo hi", 0), "unavailable", "host sim-1 is offline");
    check_error(simulator.console("vm-1"), "unavailable", "host sim-1 is offline");
    check_error(simulator.remove_template("sim-1", &ubuntu()), "unavailable", "host sim-1 is offline");
    Ok(())
}

#[test]
fn injected_failures_are_backend_errors_that_change_nothing() -> Result<(), Error> {
    let fixture = Fixture::new(r#"{"failure_rate": 0.5, "delays_ms": {"create": 0, "pull": 0}}"#);
    fixture.environment.random_fractions.lock().expect("random").extend([0.9, 0.9, 0.1, 0.7]);
    fixture.stopped_instance("vm-1", "sim-1")?;
    check_error(fixture.simulator.start_instance("vm-1"), "backend", "1: simulated failure of start-instance");
    assert_eq!(fixture.simulator.get_instance("vm-1")?.state, InstanceState::Stopped);
    assert_eq!(fixture.simulator.start_instance("vm-1")?.state, InstanceState::Running);

    let always = Fixture::new(r#"{"failure_rate": 1.0}"#);
    check_error(always.simulator.pull_template("sim-1", &ubuntu(), &no_image(), None), "backend", "pull-template");
    assert!(always.simulator.list_templates("sim-1")?.is_empty());
    assert_eq!(always.environment.take_slept_ms(), 0);
    Ok(())
}

#[test]
fn exec_simulates_scripts_on_running_instances() -> Result<(), Error> {
    let fixture = Fixture::new(ZERO_DELAYS);
    fixture.stopped_instance("vm-1", "sim-1")?;
    check_error(fixture.simulator.exec("vm-1", "echo hi", 0), "conflict", "vm-1 is stopped; exec needs it running");
    check_error(fixture.simulator.console("vm-1"), "conflict", "console needs it running");
    fixture.simulator.start_instance("vm-1")?;
    let result = fixture.simulator.exec("vm-1", "hostname\necho hi\nexit 7", 0)?;
    assert_eq!((result.stdout.as_str(), result.exit_code, result.timed_out), ("vm-1-name\nhi\n", 7, false));
    let timed_out = fixture.simulator.exec("vm-1", "sleep 5", 1500)?;
    assert_eq!((timed_out.exit_code, timed_out.timed_out), (124, true));
    assert_eq!(fixture.environment.take_slept_ms(), 1500);
    let console = fixture.simulator.console("vm-1")?;
    assert_eq!(
        (console.protocol, console.host.as_str(), console.port),
        (ConsoleProtocol::Vnc, "127.0.0.1", console_port_for("vm-1"))
    );
    check_error(fixture.simulator.exec("vm-9", "true", 0), "not-found", "vm-9");
    Ok(())
}

#[test]
fn zero_delay_mode_never_sleeps_or_reports_progress() -> Result<(), Error> {
    let fixture = Fixture::new(ZERO_DELAYS);
    fixture.running_instance("vm-1", "sim-1")?;
    fixture.simulator.restart_instance("vm-1", false)?;
    fixture.simulator.restart_instance("vm-1", true)?;
    assert_eq!(fixture.simulator.stop_instance("vm-1", false, GRACE_MS)?.state, InstanceState::Stopped);
    fixture.simulator.delete_instance("vm-1")?;
    assert_eq!(fixture.environment.take_slept_ms(), 0);
    assert!(fixture.environment.progress.lock().expect("progress").is_empty());
    Ok(())
}

#[test]
fn stale_reservations_are_reclaimed() -> Result<(), Error> {
    let fixture = Fixture::new(r#"{"hosts": 1, "cpu": 4, "delays_ms": {"create": 0, "pull": 0}}"#);
    fixture.simulator.pull_template("sim-1", &ubuntu(), &no_image(), None)?;
    // A create that died after reserving 4 vcpus.
    let mut ledger = HostLedger::default();
    ledger.reserve(
        "ghost",
        PendingCreate {
            resources: Resources { vcpu: 4, ram_mb: 1024, disk_gb: 20 },
            template_usage_key: "ubuntu/1".into(),
            reserved_at_ms: fixture.environment.now_ms(),
        },
    );
    JsonState::new(Arc::clone(&fixture.store)).set_json(&ledger_key("sim-1"), &ledger)?;
    check_error(fixture.simulator.create_instance(spec("vm-1", "sim-1", 1, 512)), "conflict", "4 of 4 vcpu");
    fixture.environment.advance(STALE_RESERVATION_MS + 1);
    // The fast pre-check still sees the stale reservation; the reservation step reclaims it.
    let ledger_after_reclaim = {
        let mut reclaimed = fixture.ledger("sim-1");
        fixture.simulator.reclaim_stale_reservations("sim-1", &mut reclaimed, fixture.environment.now_ms())?;
        reclaimed
    };
    assert_eq!(ledger_after_reclaim, HostLedger::default());
    fixture.simulator.reserve_capacity(
        fixture.simulator.settings().host("sim-1").expect("host"),
        "vm-1",
        PendingCreate {
            resources: Resources { vcpu: 1, ram_mb: 512, disk_gb: 20 },
            template_usage_key: "ubuntu/1".into(),
            reserved_at_ms: fixture.environment.now_ms(),
        },
    )?;
    let ledger = fixture.ledger("sim-1");
    assert_eq!(ledger.allocated, Resources { vcpu: 1, ram_mb: 512, disk_gb: 20 });
    assert_eq!(ledger.pending_creates.keys().collect::<Vec<_>>(), ["vm-1"]);
    Ok(())
}

#[test]
fn concurrent_creates_never_overcommit_a_host() -> Result<(), Error> {
    let fixture = Fixture::new(r#"{"hosts": 1, "cpu": 16, "delays_ms": {"create": 0, "pull": 0}}"#);
    fixture.simulator.pull_template("sim-1", &ubuntu(), &no_image(), None)?;
    let simulators: Vec<_> = (0..8).map(|_| fixture.another_instance()).collect();
    let outcomes: Vec<Result<Instance, Error>> = std::thread::scope(|scope| {
        let workers: Vec<_> = simulators
            .iter()
            .enumerate()
            .map(|(worker, simulator)| {
                scope.spawn(move || {
                    (0..4)
                        .map(|attempt| {
                            simulator.create_instance(spec(&format!("vm-{worker}-{attempt}"), "sim-1", 3, 512))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().expect("worker")).collect()
    });
    let created = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(created, 5, "16 vcpu fit five 3-vcpu instances");
    assert!(outcomes.iter().filter_map(|outcome| outcome.as_ref().err()).all(|error| error_kind(error) == "conflict"));
    assert_eq!(fixture.simulator.list_instances()?.len(), 5);
    assert_eq!(fixture.ledger("sim-1").allocated.vcpu, 15);
    Ok(())
}

#[test]
fn concurrent_creates_of_one_id_make_one_instance() -> Result<(), Error> {
    let fixture = Fixture::new(r#"{"delays_ms": {"create": 0, "pull": 0}}"#);
    for host in ["sim-1", "sim-2"] {
        fixture.simulator.pull_template(host, &ubuntu(), &no_image(), None)?;
    }
    let simulators: Vec<_> = (0..8).map(|_| fixture.another_instance()).collect();
    let created = std::thread::scope(|scope| {
        let workers: Vec<_> = simulators
            .iter()
            .enumerate()
            .map(|(worker, simulator)| {
                let host = if worker % 2 == 0 { "sim-1" } else { "sim-2" };
                scope.spawn(move || simulator.create_instance(spec("same", host, 1, 512)).is_ok())
            })
            .collect();
        workers.into_iter().filter(|_| true).map(|worker| worker.join().expect("worker")).filter(|ok| *ok).count()
    });
    assert_eq!(created, 1);
    let total_vcpu = fixture.ledger("sim-1").allocated.vcpu + fixture.ledger("sim-2").allocated.vcpu;
    assert_eq!(total_vcpu, 1, "losers gave their reservations back");
    Ok(())
}

#[test]
fn template_removal_racing_creates_never_orphans_an_instance() -> Result<(), Error> {
    let fixture = Fixture::new(ZERO_DELAYS);
    for round in 0..50 {
        fixture.simulator.pull_template("sim-1", &ubuntu(), &no_image(), None)?;
        let creator = fixture.another_instance();
        let remover = fixture.another_instance();
        let instance_id = format!("vm-{round}");
        std::thread::scope(|scope| {
            scope.spawn(|| creator.create_instance(spec(&instance_id, "sim-1", 1, 256)).ok());
            scope.spawn(|| remover.remove_template("sim-1", &ubuntu()).ok());
        });
        let instance_exists = fixture.record(&instance_id).is_some();
        let template_cached = !fixture.simulator.list_templates("sim-1")?.is_empty();
        assert!(!instance_exists || template_cached, "round {round}: instance without its template");
        if instance_exists {
            fixture.simulator.delete_instance(&instance_id)?;
        }
    }
    assert_eq!(fixture.ledger("sim-1").allocated, Resources::default());
    Ok(())
}

#[test]
fn concurrent_power_operations_settle_consistently() -> Result<(), Error> {
    let fixture = Fixture::new(ZERO_DELAYS);
    fixture.stopped_instance("vm-1", "sim-1")?;
    let simulators: Vec<_> = (0..6).map(|_| fixture.another_instance()).collect();
    std::thread::scope(|scope| {
        for (worker, simulator) in simulators.iter().enumerate() {
            scope.spawn(move || {
                for _ in 0..20 {
                    let _ = match worker % 3 {
                        0 => simulator.start_instance("vm-1"),
                        1 => simulator.stop_instance("vm-1", true, GRACE_MS),
                        _ => simulator.restart_instance("vm-1", true),
                    };
                }
            });
        }
    });
    let state = fixture.simulator.get_instance("vm-1")?.state;
    assert!(matches!(state, InstanceState::Running | InstanceState::Stopped), "{state:?}");
    assert_eq!(fixture.store.scan("instance/").map(|entries| entries.len()).ok(), Some(1));
    Ok(())
}

#[test]
fn graceful_stop_honours_the_grace_period() -> Result<(), Error> {
    let fixture = Fixture::new("{}");
    fixture.running_instance("vm-1", "sim-1")?;
    fixture.environment.take_slept_ms();
    // The guest needs 200 ms to shut down; after 50 ms of grace it is powered off (20 ms).
    assert_eq!(fixture.simulator.stop_instance("vm-1", false, 50)?.state, InstanceState::Stopped);
    assert_eq!(fixture.environment.take_slept_ms(), 70);
    let too_long = MAX_STOP_GRACE_MS + 1;
    check_error(fixture.simulator.stop_instance("vm-1", false, too_long), "invalid", "exceeds the maximum");

    let stubborn = Fixture::new(r#"{"guests_ignore_shutdown": true}"#);
    stubborn.running_instance("vm-2", "sim-1")?;
    stubborn.environment.take_slept_ms();
    assert_eq!(stubborn.simulator.stop_instance("vm-2", false, 1000)?.state, InstanceState::Stopped);
    assert_eq!(stubborn.environment.take_slept_ms(), 1020, "the whole grace period, then the power-off");
    Ok(())
}

#[test]
fn suspend_and_resume_keep_the_guest_in_memory() -> Result<(), Error> {
    let fixture = Fixture::new(ZERO_DELAYS);
    fixture.stopped_instance("vm-1", "sim-1")?;
    check_error(fixture.simulator.suspend_instance("vm-1"), "conflict", "vm-1 is stopped; only a running instance");
    check_error(fixture.simulator.resume_instance("vm-1"), "conflict", "only a suspended instance can be resumed");
    let running = fixture.simulator.start_instance("vm-1")?;
    assert_eq!(fixture.simulator.resume_instance("vm-1")?.state, InstanceState::Running, "running stays running");

    let suspended = fixture.simulator.suspend_instance("vm-1")?;
    assert_eq!((suspended.state, &suspended.ip), (InstanceState::Suspended, &running.ip));
    assert_eq!(fixture.simulator.suspend_instance("vm-1")?.state, InstanceState::Suspended);
    check_error(fixture.simulator.start_instance("vm-1"), "conflict", "vm-1 is suspended; resume it instead");
    check_error(fixture.simulator.exec("vm-1", "true", 0), "conflict", "vm-1 is suspended");
    assert_eq!(fixture.simulator.list_instances()?[0].state, InstanceState::Suspended);
    assert_eq!(fixture.simulator.resume_instance("vm-1")?.state, InstanceState::Running);

    fixture.simulator.suspend_instance("vm-1")?;
    let stopped = fixture.simulator.stop_instance("vm-1", false, GRACE_MS)?;
    assert_eq!((stopped.state, stopped.ip), (InstanceState::Stopped, None), "a paused guest is powered off");
    check_error(fixture.simulator.suspend_instance("vm-9"), "not-found", "vm-9");
    Ok(())
}

#[test]
fn snapshots_are_kept_per_instance_and_reverted_to_their_state() -> Result<(), Error> {
    let fixture = Fixture::new(r#"{"delays_ms": {"snapshot": 150}}"#);
    fixture.running_instance("vm-1", "sim-1")?;
    fixture.running_instance("vm-2", "sim-1")?;
    fixture.environment.take_slept_ms();
    let first = fixture.simulator.create_snapshot("vm-1", "before-upgrade", "clean install")?;
    assert_eq!(
        (first.state, first.current, first.description.as_str()),
        (InstanceState::Running, true, "clean install")
    );
    assert_eq!(fixture.environment.take_slept_ms(), 150);
    check_error(fixture.simulator.create_snapshot("vm-1", "before-upgrade", ""), "conflict", "already has a snapshot");
    check_error(fixture.simulator.create_snapshot("vm-1", "", ""), "invalid", "snapshot name");
    fixture.simulator.create_snapshot("vm-2", "before-upgrade", "")?;

    fixture.simulator.stop_instance("vm-1", false, GRACE_MS)?;
    fixture.simulator.create_snapshot("vm-1", "powered-off", "")?;
    let listed: Vec<(String, InstanceState, bool)> = fixture
        .simulator
        .list_snapshots("vm-1")?
        .into_iter()
        .map(|snapshot| (snapshot.name, snapshot.state, snapshot.current))
        .collect();
    assert_eq!(
        listed,
        [
            ("before-upgrade".into(), InstanceState::Running, false),
            ("powered-off".into(), InstanceState::Stopped, true)
        ]
    );

    let reverted = fixture.simulator.revert_snapshot("vm-1", "before-upgrade")?;
    assert_eq!(reverted.state, InstanceState::Running);
    assert!(reverted.ip.is_some(), "{reverted:?}");
    let current: Vec<bool> =
        fixture.simulator.list_snapshots("vm-1")?.iter().map(|snapshot| snapshot.current).collect();
    assert_eq!(current, [true, false]);
    check_error(fixture.simulator.revert_snapshot("vm-1", "missing"), "not-found", "no snapshot named missing");

    fixture.simulator.delete_snapshot("vm-1", "before-upgrade")?;
    check_error(fixture.simulator.delete_snapshot("vm-1", "before-upgrade"), "not-found", "before-upgrade");
    assert_eq!(fixture.simulator.list_snapshots("vm-1")?.len(), 1);
    assert_eq!(fixture.simulator.get_instance("vm-1")?.state, InstanceState::Running, "deleting keeps the state");

    fixture.simulator.delete_instance("vm-1")?;
    check_error(fixture.simulator.list_snapshots("vm-1"), "not-found", "vm-1 does not exist");
    assert_eq!(fixture.store.scan("snapshots/").map(|entries| entries.len()).ok(), Some(1), "only vm-2's are left");
    Ok(())
}

#[test]
fn snapshots_need_a_settled_instance() -> Result<(), Error> {
    let fixture = Fixture::new("{}");
    fixture.running_instance("vm-1", "sim-1")?;
    let mut record = fixture.record("vm-1").expect("record");
    record.power = PowerState::Stopping { stopped_at_ms: fixture.environment.now_ms() + 200 };
    fixture.put_record(&record);
    check_error(fixture.simulator.create_snapshot("vm-1", "mid-stop", ""), "conflict", "vm-1 is stopping; wait");
    fixture.environment.advance(200);
    assert_eq!(fixture.simulator.create_snapshot("vm-1", "stopped", "")?.state, InstanceState::Stopped);
    Ok(())
}

/// A reader over bytes in memory that counts what was read and can fail at the end.
struct CountingImage {
    inner: MemoryBytes,
    bytes_read: AtomicU64,
    fail_at_end: bool,
}

impl CountingImage {
    fn new(bytes: Vec<u8>) -> Self {
        CountingImage { inner: MemoryBytes::new(bytes), bytes_read: AtomicU64::new(0), fail_at_end: false }
    }
}

impl ByteReader for CountingImage {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read(&self, max: u32) -> Result<Vec<u8>, String> {
        let chunk = self.inner.read(max)?;
        if chunk.is_empty() && self.fail_at_end {
            return Err("disk read error".into());
        }
        self.bytes_read.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        Ok(chunk)
    }
}

#[test]
fn pull_reads_the_whole_image_and_checks_it() -> Result<(), Error> {
    let fixture = Fixture::new(ZERO_DELAYS);
    let mut qcow2_bytes = QCOW2_MAGIC.to_vec();
    qcow2_bytes.resize(3 << 20, 7);
    let qcow2 = TemplateRef { size_bytes: 3 << 20, format: DiskFormat::Qcow2, ..ubuntu() };
    let image = CountingImage::new(qcow2_bytes.clone());
    assert_eq!(fixture.simulator.pull_template("sim-1", &qcow2, &image, None)?.size_bytes, 3 << 20);
    assert_eq!(image.bytes_read.load(Ordering::SeqCst), 3 << 20);
    let again = CountingImage::new(qcow2_bytes);
    fixture.simulator.pull_template("sim-1", &qcow2, &again, None)?;
    assert_eq!(again.bytes_read.load(Ordering::SeqCst), 0, "a cached template is not read again");

    let wrong_size = TemplateRef { size_bytes: 10, ..qcow2.clone() };
    check_error(
        fixture.simulator.pull_template("sim-2", &wrong_size, &CountingImage::new(vec![0; 11]), None),
        "invalid",
        "declares 10 bytes but its image has 11",
    );
    let not_qcow2 = TemplateRef { size_bytes: 8, ..qcow2.clone() };
    check_error(
        fixture.simulator.pull_template("sim-2", &not_qcow2, &CountingImage::new(vec![0; 8]), None),
        "invalid",
        "does not start with the qcow2 magic",
    );
    let raw = TemplateRef { size_bytes: 8, format: DiskFormat::Raw, ..ubuntu() };
    let failing = CountingImage { fail_at_end: true, ..CountingImage::new(vec![1; 8]) };
    check_error(fixture.simulator.pull_template("sim-2", &raw, &failing, None), "unavailable", "disk read error");
    assert!(fixture.simulator.list_templates("sim-2")?.is_empty(), "a failed pull caches nothing");
    fixture.simulator.pull_template("sim-2", &raw, &CountingImage::new(vec![1; 8]), None)?;
    assert_eq!(fixture.simulator.list_templates("sim-2")?.len(), 1);
    Ok(())
}

/// An image that must not be read: every read fails and is counted.
#[derive(Default)]
struct UnreadableImage {
    size: u64,
    reads: AtomicU64,
}

impl ByteReader for UnreadableImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, _max: u32) -> Result<Vec<u8>, String> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Err("the image must not be read".into())
    }
}

/// A delta in memory that counts the changed bytes read and can fail on read.
struct MemoryDelta {
    base: TemplateRef,
    size: u64,
    changes: Vec<ByteSpan>,
    data: CountingImage,
}

impl MemoryDelta {
    fn new(base: TemplateRef, size: u64, changes: &[(u64, u64)], data: Vec<u8>) -> Self {
        MemoryDelta {
            base,
            size,
            changes: changes.iter().map(|&(offset, length)| ByteSpan { offset, length }).collect(),
            data: CountingImage::new(data),
        }
    }

    fn bytes_read(&self) -> u64 {
        self.data.bytes_read.load(Ordering::SeqCst)
    }
}

impl DeltaReader for MemoryDelta {
    fn base(&self) -> TemplateRef {
        self.base.clone()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn changes(&self) -> Vec<ByteSpan> {
        self.changes.clone()
    }

    fn read(&self, max: u32) -> Result<Vec<u8>, String> {
        self.data.read(max)
    }
}

/// A sink in memory that keeps every write, and fails once it holds `fail_after` bytes.
#[derive(Default)]
struct MemorySink {
    writes: Mutex<Vec<Vec<u8>>>,
    fail_after: Option<usize>,
}

impl MemorySink {
    fn bytes(&self) -> Vec<u8> {
        self.writes.lock().expect("sink lock").concat()
    }

    fn largest_write(&self) -> usize {
        self.writes.lock().expect("sink lock").iter().map(Vec::len).max().unwrap_or(0)
    }
}

impl ByteWriter for MemorySink {
    fn write(&self, bytes: &[u8]) -> Result<(), String> {
        let mut writes = self.writes.lock().expect("sink lock");
        if self.fail_after.is_some_and(|limit| writes.iter().map(Vec::len).sum::<usize>() >= limit) {
            return Err("the client went away".into());
        }
        writes.push(bytes.to_vec());
        Ok(())
    }
}

const MIB: u64 = 1 << 20;

fn qcow2_template(version: u32, size_bytes: u64) -> TemplateRef {
    TemplateRef { version, tag: format!("v{version}"), size_bytes, format: DiskFormat::Qcow2, ..ubuntu() }
}

impl Fixture {
    fn cached_record(&self, host_id: &str, template: &TemplateRef) -> Option<CachedTemplateRecord> {
        JsonState::new(Arc::clone(&self.store))
            .get_json(&template_key(host_id, &template.name, template.version))
            .expect("readable template record")
    }

    /// Pulls `template` to `sim-1` and creates a stopped instance from it there.
    fn stopped_instance_of(&self, instance_id: &str, template: &TemplateRef) -> Result<Instance, Error> {
        self.simulator.pull_template("sim-1", template, &no_image(), None)?;
        self.simulator
            .create_instance(InstanceSpec { template: template.clone(), ..spec(instance_id, "sim-1", 1, 512) })
    }
}

#[test]
fn delta_pull_from_a_cached_base_reads_only_the_changes() -> Result<(), Error> {
    let fixture = Fixture::new(r#"{"pull_bytes_per_sec": 1048576, "delays_ms": {"pull": 100}}"#);
    let base = qcow2_template(1, 8 * MIB);
    fixture.simulator.pull_template("sim-1", &base, &no_image(), None)?;
    fixture.environment.take_slept_ms();

    let new = qcow2_template(2, 10 * MIB);
    let mut changed = QCOW2_MAGIC.to_vec();
    changed.resize(4 + 2 * MIB as usize, 9);
    let delta = MemoryDelta::new(base.clone(), 10 * MIB, &[(0, 4), (4 * MIB, 2 * MIB)], changed);
    let image = UnreadableImage { size: 10 * MIB, ..UnreadableImage::default() };
    let cached = fixture.simulator.pull_template("sim-1", &new, &image, Some(&delta))?;
    assert_eq!((cached.version, cached.size_bytes), (2, 10 * MIB));
    assert_eq!(image.reads.load(Ordering::SeqCst), 0, "a delta pull does not touch the image");
    assert_eq!(delta.bytes_read(), 2 * MIB + 4);
    assert_eq!(fixture.environment.take_slept_ms(), 100 + 2000, "time by the changed bytes only");
    let record = fixture.cached_record("sim-1", &new).expect("cached");
    assert_eq!(record.bytes_received, 2 * MIB + 4);
    assert_eq!(record.delta_base, Some(DeltaBase { name: "ubuntu".into(), version: 1 }));
    assert_eq!(record.template.format, ImageFormat::Qcow2);
    assert_eq!(fixture.cached_record("sim-1", &base).map(|record| record.delta_base), Some(None));
    assert_eq!(fixture.simulator.list_templates("sim-1")?.len(), 2);

    let again = MemoryDelta::new(base, 10 * MIB, &[(0, 4)], QCOW2_MAGIC.to_vec());
    fixture.simulator.pull_template("sim-1", &new, &image, Some(&again))?;
    assert_eq!((again.bytes_read(), image.reads.load(Ordering::SeqCst)), (0, 0), "cached: nothing read");
    Ok(())
}

#[test]
fn delta_pull_without_the_base_cached_reads_the_full_image() -> Result<(), Error> {
    let fixture = Fixture::new(ZERO_DELAYS);
    let base = qcow2_template(1, 4 * MIB);
    fixture.simulator.pull_template("sim-1", &base, &no_image(), None)?;
    let new = qcow2_template(2, 3 * MIB);
    let mut full = QCOW2_MAGIC.to_vec();
    full.resize(3 * MIB as usize, 5);
    for (host_id, delta_base) in [("sim-3", base.clone()), ("sim-1", TemplateRef { version: 7, ..base.clone() })] {
        let delta = MemoryDelta::new(delta_base, 3 * MIB, &[(0, 4)], QCOW2_MAGIC.to_vec());
        let image = CountingImage::new(full.clone());
        fixture.simulator.pull_template(host_id, &new, &image, Some(&delta))?;
        assert_eq!((delta.bytes_read(), image.bytes_read.load(Ordering::SeqCst)), (0, 3 * MIB), "{host_id}");
        let record = fixture.cached_record(host_id, &new).expect("cached");
        assert_eq!((record.bytes_received, record.delta_base), (3 * MIB, None), "{host_id}");
    }
    Ok(())
}

#[test]
fn bad_deltas_are_refused_and_cache_nothing() -> Result<(), Error> {
    let fixture = Fixture::new(ZERO_DELAYS);
    let base = qcow2_template(1, 4 * MIB);
    fixture.simulator.pull_template("sim-1", &base, &no_image(), None)?;
    let new = qcow2_template(2, 4 * MIB);
    let check = |delta: MemoryDelta, expected_kind: &str, fragment: &str| {
        let image = UnreadableImage::default();
        check_error(fixture.simulator.pull_template("sim-1", &new, &image, Some(&delta)), expected_kind, fragment);
        assert_eq!(image.reads.load(Ordering::SeqCst), 0, "{fragment}");
        assert!(fixture.cached_record("sim-1", &new).is_none(), "{fragment}: nothing cached");
    };
    let delta = |size: u64, changes: &[(u64, u64)], data_length: usize| {
        MemoryDelta::new(base.clone(), size, changes, vec![1; data_length])
    };
    check(delta(4 * MIB, &[(8, 16), (MIB, 10)], 20), "invalid", "2 changed spans cover 26 bytes but it delivered 20");
    check(delta(4 * MIB, &[(8, 16)], 17), "invalid", "cover 16 bytes but it delivered at least 17");
    check(delta(4 * MIB, &[(8, 16), (20, 4)], 20), "invalid", "span of 4 bytes at 20 is out of order, overlapping");
    check(delta(4 * MIB, &[(MIB, 1), (8, 1)], 2), "invalid", "span of 1 bytes at 8 is out of order");
    check(delta(4 * MIB, &[(4 * MIB - 1, 2)], 2), "invalid", "beyond its size 4194304");
    check(delta(5 * MIB, &[(8, 1)], 1), "invalid", "declares 4194304 bytes but the delta of template ubuntu v2");
    check(delta(4 * MIB, &[(0, 8)], 8), "invalid", "other than the qcow2 magic");
    let unreadable = MemoryDelta {
        data: CountingImage { fail_at_end: true, ..CountingImage::new(vec![1; 4]) },
        ..delta(4 * MIB, &[(8, 4)], 0)
    };
    check(unreadable, "unavailable", "disk read error");
    Ok(())
}

#[test]
fn records_written_before_deltas_and_exports_still_load() -> Result<(), serde_json::Error> {
    let old = r#"{"host": "sim-1", "template": {"name": "ubuntu", "version": 1, "tag": "24.04",
        "size_bytes": 8}, "pulled_at_ms": 5}"#;
    let record: CachedTemplateRecord = serde_json::from_str(old)?;
    assert_eq!((record.template.format, record.bytes_received, record.delta_base), (ImageFormat::Raw, 0, None));
    Ok(())
}

#[test]
fn export_disk_writes_the_simulated_disk_of_a_stopped_or_suspended_instance() -> Result<(), Error> {
    let fixture = Fixture::new(r#"{"pull_bytes_per_sec": 1048576, "delays_ms": {"pull": 0, "create": 0}}"#);
    let template = qcow2_template(1, 3 * MIB + 5);
    fixture.stopped_instance_of("vm-1", &template)?;
    fixture.environment.take_slept_ms();
    let sink = MemorySink::default();
    let exported = fixture.simulator.export_disk("vm-1", &sink)?;
    assert_eq!((exported.format, exported.size_bytes), (DiskFormat::Qcow2, 3 * MIB + 5));
    let bytes = sink.bytes();
    assert_eq!(bytes.len() as u64, 3 * MIB + 5);
    assert_eq!(&bytes[..4], QCOW2_MAGIC);
    assert_eq!(bytes, SimulatedDisk::new("vm-1", DiskFormat::Qcow2, 3 * MIB + 5).bytes(0, 3 * MIB + 5));
    assert!(sink.largest_write() as u64 <= MIB);
    assert_eq!(fixture.environment.take_slept_ms(), 3000, "the size at pull_bytes_per_sec");
    let again = MemorySink::default();
    fixture.simulator.export_disk("vm-1", &again)?;
    assert_eq!(again.bytes(), bytes, "deterministic");

    // Suspended works too; another id gives other bytes; no recorded size gives 1 MiB.
    let raw_unsized = TemplateRef { name: "scratch".into(), size_bytes: 0, format: DiskFormat::Raw, ..ubuntu() };
    fixture.stopped_instance_of("vm-2", &raw_unsized)?;
    fixture.simulator.start_instance("vm-2")?;
    fixture.simulator.suspend_instance("vm-2")?;
    let sink = MemorySink::default();
    let exported = fixture.simulator.export_disk("vm-2", &sink)?;
    assert_eq!((exported.format, exported.size_bytes), (DiskFormat::Raw, MIB));
    let other = sink.bytes();
    assert_eq!(other, SimulatedDisk::new("vm-2", DiskFormat::Raw, MIB).bytes(0, MIB));
    assert_ne!(&other[..4], QCOW2_MAGIC);
    assert_ne!(other[4..4096], bytes[4..4096]);
    Ok(())
}

#[test]
fn export_disk_refuses_running_and_unknown_instances_and_stops_on_a_failing_sink() -> Result<(), Error> {
    let fixture = Fixture::new(ZERO_DELAYS);
    fixture.stopped_instance_of("vm-1", &qcow2_template(1, 3 * MIB))?;
    fixture.simulator.start_instance("vm-1")?;
    let sink = MemorySink::default();
    check_error(
        fixture.simulator.export_disk("vm-1", &sink),
        "conflict",
        "vm-1 is running; export-disk needs it stopped",
    );
    check_error(fixture.simulator.export_disk("vm-9", &sink), "not-found", "vm-9");
    assert!(sink.bytes().is_empty());

    fixture.simulator.stop_instance("vm-1", true, GRACE_MS)?;
    let failing = MemorySink { fail_after: Some(MIB as usize), ..MemorySink::default() };
    check_error(fixture.simulator.export_disk("vm-1", &failing), "unavailable", "the client went away");
    assert_eq!(failing.bytes().len() as u64, MIB, "writing stops at the first failure");
    Ok(())
}

#[test]
fn the_simulated_disk_is_the_same_however_it_is_cut() {
    let disk = SimulatedDisk::new("vm-1", DiskFormat::Qcow2, 10_000);
    let whole = disk.bytes(0, 10_000);
    let pieces: Vec<u8> = [(0, 2), (2, 4097), (4097, 9_000), (9_000, 20_000)]
        .iter()
        .flat_map(|&(start, end)| disk.bytes(start, end))
        .collect();
    assert_eq!(pieces, whole);
    assert_eq!(&whole[..4], QCOW2_MAGIC);
    assert!(disk.bytes(10_000, 10_005).is_empty());
}
