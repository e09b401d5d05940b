//! The driver's operations against libvirt's built-in test driver (`test:///default`) over TCP:
//! instance life cycle with our domain XML, snapshots, errors. The test driver keeps its state
//! only while a connection is open, so each test holds a `keeper` connection through which it
//! also creates the template volume (the test driver cannot upload).

mod common;

use common::{TEST_DRIVER_URI, TestDriver, connect, driver, instance_id};
use driver_libvirt::domain_xml::template_volume_xml;
use driver_libvirt::driver::template_volume_name;
use hyperplane_guest::types::{ConsoleProtocol, DiskFormat, Error, InstanceSpec, InstanceState, KeyValue, TemplateRef};

const TEST_HOST: &str = r#""uri": "test:///default", "pool": "default-pool", "network": "default""#;

fn template() -> TemplateRef {
    TemplateRef { name: "tiny".into(), version: 1, tag: "v1".into(), size_bytes: 4096, format: DiskFormat::Raw }
}

fn spec(id: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.to_owned(),
        name: "web-1".into(),
        host: "lv-1".into(),
        template: template(),
        vcpu: 1,
        ram_mb: 128,
        disk_gb: 1,
        mac: Some("52:54:00:aa:bb:01".into()),
        vlan: None,
        metadata: vec![KeyValue { key: "team".into(), value: "core".into() }],
    }
}

/// A driver plus an open connection that keeps the test driver's state alive, with the
/// template volume present.
fn setup() -> (TestDriver, driver_libvirt::client::Client<std::net::TcpStream>) {
    let mut keeper = connect(TEST_DRIVER_URI);
    let pool = keeper.storage_pool_lookup_by_name("default-pool").expect("test pool");
    let name = template_volume_name("tiny", 1);
    // Tests run in parallel on the shared test driver: another may have created it first.
    if let Err(error) = keeper.storage_vol_create_xml(&pool, &template_volume_xml(&name, 4096), 0) {
        keeper.storage_vol_lookup_by_name(&pool, &name).unwrap_or_else(|_| panic!("template volume: {error:?}"));
    }
    (driver(TEST_HOST), keeper)
}

fn assert_state(driver: &TestDriver, id: &str, expected: InstanceState) {
    let instance = driver.get_instance(id).unwrap_or_else(|error| panic!("get {id}: {error:?}"));
    assert_eq!(instance.state, expected, "{instance:?}");
}

#[test]
fn host_report_lists_the_test_host_and_its_templates() {
    let (driver, _keeper) = setup();
    let hosts = driver.list_hosts().expect("list hosts");
    let [host] = hosts.as_slice() else { panic!("one host expected: {hosts:?}") };
    assert_eq!(host.state, hyperplane_guest::types::HostState::Active, "{host:?}");
    assert!(host.cpu > 0 && host.ram_mb > 0, "{host:?}");
    assert!(host.hypervisor.contains("libvirt"), "{host:?}");
    assert!(host.cached_templates.iter().any(|cached| cached.name == "tiny" && cached.version == 1), "{host:?}");
}

#[test]
fn instance_life_cycle_define_start_suspend_resume_stop_delete() {
    let (driver, _keeper) = setup();
    let id = instance_id();
    let created = driver.create_instance(&spec(&id)).expect("create");
    assert_eq!((created.state, created.mac.as_deref()), (InstanceState::Stopped, Some("52:54:00:aa:bb:01")));
    assert!(matches!(driver.create_instance(&spec(&id)), Err(Error::Conflict(_))), "a second create conflicts");

    assert_eq!(driver.start_instance(&id).expect("start").state, InstanceState::Running);
    assert_state(&driver, &id, InstanceState::Running);
    let listed = driver.list_instances().expect("list");
    assert!(listed.iter().any(|instance| instance.id == id && instance.state == InstanceState::Running), "{listed:?}");
    assert!(!listed.iter().any(|instance| instance.id == "test"), "foreign domains are not reported");

    assert_eq!(driver.suspend_instance(&id).expect("suspend").state, InstanceState::Suspended);
    assert_state(&driver, &id, InstanceState::Suspended);
    assert_eq!(driver.suspend_instance(&id).expect("suspend again").state, InstanceState::Suspended, "idempotent");
    assert_eq!(driver.resume_instance(&id).expect("resume").state, InstanceState::Running);
    assert_eq!(driver.resume_instance(&id).expect("resume again").state, InstanceState::Running, "idempotent");
    assert_eq!(driver.restart_instance(&id, true).expect("forced restart").state, InstanceState::Running);
    assert_eq!(driver.restart_instance(&id, false).expect("reboot").state, InstanceState::Running);
    let running = driver.get_instance(&id).expect("get running");
    assert_eq!(running.mac.as_deref(), Some("52:54:00:aa:bb:01"));
    // The test driver invents a DHCP lease for each NIC of a network.
    assert!(running.ip.as_deref().is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()), "{running:?}");

    assert_eq!(driver.stop_instance(&id, false, 2000).expect("graceful stop").state, InstanceState::Stopped);
    assert_state(&driver, &id, InstanceState::Stopped);
    assert!(matches!(driver.restart_instance(&id, false), Err(Error::Conflict(_))), "restart of a stopped instance");
    assert_eq!(driver.start_instance(&id).expect("start again").state, InstanceState::Running);
    assert_eq!(driver.stop_instance(&id, true, 0).expect("forced stop").state, InstanceState::Stopped);

    driver.delete_instance(&id).expect("delete");
    assert!(matches!(driver.get_instance(&id), Err(Error::NotFound(message)) if message.contains("libvirt error 42")));
    assert!(!driver.list_instances().expect("list").iter().any(|instance| instance.id == id));
}

#[test]
fn snapshots_create_list_revert_delete() {
    let (driver, _keeper) = setup();
    let id = instance_id();
    driver.create_instance(&spec(&id)).expect("create");
    driver.start_instance(&id).expect("start");

    let first = driver.create_snapshot(&id, "first", "before <change>").expect("snapshot first");
    assert_eq!((first.name.as_str(), first.description.as_str(), first.current), ("first", "before <change>", true));
    assert_eq!(first.state, InstanceState::Running);
    assert!(first.created_at > 1_600_000_000, "{first:?}");
    assert!(matches!(driver.create_snapshot(&id, "first", ""), Err(Error::Conflict(_))));
    driver.stop_instance(&id, true, 0).expect("stop");
    driver.create_snapshot(&id, "second", "stopped").expect("snapshot second");

    let snapshots = driver.list_snapshots(&id).expect("list snapshots");
    let names: Vec<(&str, bool)> =
        snapshots.iter().map(|snapshot| (snapshot.name.as_str(), snapshot.current)).collect();
    assert_eq!(names, vec![("first", false), ("second", true)]);
    assert_eq!(snapshots[1].state, InstanceState::Stopped);

    let reverted = driver.revert_snapshot(&id, "first").expect("revert");
    assert_eq!(reverted.state, InstanceState::Running, "reverting to a running snapshot runs the instance");
    assert!(
        driver.list_snapshots(&id).expect("list").iter().any(|snapshot| snapshot.name == "first" && snapshot.current)
    );

    driver.delete_snapshot(&id, "second").expect("delete snapshot");
    assert!(
        matches!(driver.delete_snapshot(&id, "second"), Err(Error::NotFound(message)) if message.contains("libvirt error 72"))
    );
    assert_eq!(driver.list_snapshots(&id).expect("list").len(), 1);
    driver.delete_instance(&id).expect("delete with its snapshots");
}

#[test]
fn errors_map_to_driver_variants() {
    let (driver, _keeper) = setup();
    let missing = instance_id();
    for result in [driver.start_instance(&missing), driver.get_instance(&missing), driver.suspend_instance(&missing)] {
        assert!(matches!(&result, Err(Error::NotFound(message)) if message.contains("libvirt error 42")), "{result:?}");
    }
    assert!(matches!(driver.delete_instance(&missing), Err(Error::NotFound(_))));
    assert!(matches!(driver.list_snapshots(&missing), Err(Error::NotFound(_))));

    let mut without_template = spec(&instance_id());
    without_template.template.name = "absent".into();
    assert!(
        matches!(driver.create_instance(&without_template), Err(Error::Conflict(message)) if message.contains("pull it first"))
    );
    let mut bad_id = spec("../etc");
    bad_id.host = "lv-1".into();
    assert!(matches!(driver.create_instance(&bad_id), Err(Error::Invalid(_))));
    let mut unknown_host = spec(&instance_id());
    unknown_host.host = "elsewhere".into();
    assert!(matches!(driver.create_instance(&unknown_host), Err(Error::NotFound(_))));

    let id = instance_id();
    driver.create_instance(&spec(&id)).expect("create");
    let suspended = driver.suspend_instance(&id);
    assert!(matches!(&suspended, Err(Error::Conflict(message)) if message.contains("stopped")), "{suspended:?}");
    assert!(matches!(driver.console(&id), Err(Error::Conflict(_))), "no vnc port while stopped");
    assert!(matches!(driver.exec(&id), Err(Error::Unsupported(_))));
    assert!(
        matches!(driver.remove_template("lv-1", &template()), Err(Error::Conflict(message)) if message.contains("still used")),
        "parallel tests' instances use the template too: the message may name any of them"
    );
    driver.delete_instance(&id).expect("delete");
}

#[test]
fn serial_consoles_over_tcp_get_a_port_each_and_give_it_back() {
    let (_, _keeper) = setup();
    let driver = driver(&format!(r#"{TEST_HOST}, "serial_ports": "7100-7101", "address": "192.0.2.7""#));
    let (first, second, third) = (instance_id(), instance_id(), instance_id());
    let mut ports = Vec::new();
    for id in [&first, &second] {
        driver.create_instance(&spec(id)).expect("create");
        let stopped = driver.console(id);
        assert!(
            matches!(&stopped, Err(Error::Conflict(message)) if message.contains("serial console is not listening")),
            "{stopped:?}"
        );
        driver.start_instance(id).expect("start");
        let console = driver.console(id).expect("console");
        assert_eq!((console.protocol, console.host.as_str()), (ConsoleProtocol::Serial, "192.0.2.7"));
        ports.push(console.port);
    }
    ports.sort_unstable();
    assert_eq!(ports, [7100, 7101], "one port each");

    let full = driver.create_instance(&spec(&third));
    assert!(matches!(&full, Err(Error::Conflict(message)) if message.contains("7100-7101")), "{full:?}");
    let first_port = driver.console(&first).expect("console").port;
    driver.delete_instance(&first).expect("delete");
    driver.create_instance(&spec(&third)).expect("create with the port given back");
    driver.start_instance(&third).expect("start");
    assert_eq!(driver.console(&third).expect("console").port, first_port);
    for id in [&second, &third] {
        driver.delete_instance(id).expect("delete");
    }
}

#[test]
fn unreachable_host_is_offline_not_an_error() {
    struct RefusingConnector;
    impl driver_libvirt::driver::Connector for RefusingConnector {
        type Stream = std::net::TcpStream;
        fn open(&self, endpoint: &str) -> Result<std::net::TcpStream, Error> {
            Err(Error::Unavailable(format!("libvirt endpoint '{endpoint}' is unreachable")))
        }
    }
    let settings =
        driver_libvirt::config::Settings::from_json(r#"{"hosts": [{"name": "gone", "endpoint": "nowhere"}]}"#)
            .expect("settings");
    let driver = driver_libvirt::driver::LibvirtDriver::new(
        settings,
        RefusingConnector,
        hyperplane_guest::state::MemoryStore::new(),
    );
    let hosts = driver.list_hosts().expect("list hosts answers");
    assert_eq!(hosts[0].state, hyperplane_guest::types::HostState::Offline);
    assert!(matches!(driver.list_instances(), Err(Error::Unavailable(_))));
}

#[test]
fn overlays_left_by_an_interrupted_create_are_replaced_or_removed() {
    let (driver, mut keeper) = setup();
    let pool = keeper.storage_pool_lookup_by_name("default-pool").expect("pool");
    let orphan_xml = |id: &str| template_volume_xml(&format!("hp-{id}.qcow2"), 1024);

    let recreated = instance_id();
    keeper.storage_vol_create_xml(&pool, &orphan_xml(&recreated), 0).expect("orphan overlay");
    let created = driver.create_instance(&spec(&recreated));
    assert!(created.is_ok(), "{created:?}");
    driver.delete_instance(&recreated).expect("delete");

    let removed = instance_id();
    keeper.storage_vol_create_xml(&pool, &orphan_xml(&removed), 0).expect("orphan overlay");
    assert!(matches!(driver.delete_instance(&removed), Err(Error::NotFound(_))));
    assert!(keeper.storage_vol_lookup_by_name(&pool, &format!("hp-{removed}.qcow2")).is_err(), "orphan removed");
}

/// libvirt calls (round trips) per operation on a warm connection, counted by the driver; the
/// bounds are the documented ones (`lib.rs`), so a change that adds round trips shows here.
#[test]
fn calls_per_operation_on_a_warm_connection() {
    let (driver, _keeper) = setup();
    // Warm up: the connection, its pool handle, capabilities and undefine flags.
    let warm = instance_id();
    driver.create_instance(&spec(&warm)).expect("create");
    driver.start_instance(&warm).expect("start");
    driver.delete_instance(&warm).expect("delete");

    let mut counts = Vec::new();
    let mut count = |label: &'static str, operation: &mut dyn FnMut()| {
        let before = driver.libvirt_calls();
        operation();
        counts.push((label, driver.libvirt_calls() - before));
    };
    let id = instance_id();
    count("create", &mut || drop(driver.create_instance(&spec(&id)).expect("create")));
    count("start", &mut || drop(driver.start_instance(&id).expect("start")));
    count("start (running)", &mut || drop(driver.start_instance(&id).expect("start again")));
    count("get", &mut || drop(driver.get_instance(&id).expect("get")));
    count("stop (force)", &mut || drop(driver.stop_instance(&id, true, 0).expect("stop")));
    count("delete (stopped)", &mut || driver.delete_instance(&id).expect("delete"));
    let running = instance_id();
    let mut without_mac = spec(&running);
    without_mac.mac = None;
    let mut chosen_mac = None;
    count("create (no mac)", &mut || chosen_mac = driver.create_instance(&without_mac).expect("create").mac);
    let chosen_mac = chosen_mac.expect("a mac was chosen");
    assert!(chosen_mac.starts_with("52:54:00:"), "{chosen_mac}");
    assert_eq!(driver.get_instance(&running).expect("get").mac, Some(chosen_mac), "the domain has it");
    driver.start_instance(&running).expect("start");
    count("delete (running)", &mut || driver.delete_instance(&running).expect("delete"));
    eprintln!("libvirt calls per operation: {counts:?}");
    assert_eq!(
        counts,
        vec![
            // Overlay, define (the template's path known from the warm-up's create).
            ("create", 2),
            ("start", 1),
            // create refused, then the state: already running is success.
            ("start (running)", 2),
            ("get", 3),
            ("stop (force)", 2),
            // destroy (refused: not running), overlay, undefine (the refused flags remembered
            // from the warm-up).
            ("delete (stopped)", 3),
            // The driver picks the MAC as libvirt would (52:54:00 + 3 random bytes).
            ("create (no mac)", 2),
            // destroy, overlay, undefine.
            ("delete (running)", 3),
        ]
    );
}

/// Delete finds the overlay where the domain's disk says it is when the provider's `pool` was
/// changed since the create (the fallback when the host's pool has no such volume).
#[test]
fn delete_removes_the_overlay_from_the_pool_the_domain_names() {
    let (creator, mut keeper) = setup();
    let other_pool = common::unique_name("hp-other-pool");
    let other = keeper
        .storage_pool_create_xml(&format!(
            "<pool type='dir'><name>{other_pool}</name><target><path>/{other_pool}</path></target></pool>"
        ))
        .expect("a second pool on the test driver");
    let id = instance_id();
    creator.create_instance(&spec(&id)).expect("create");
    creator.start_instance(&id).expect("start");
    let moved = driver(&format!(r#""uri": "test:///default", "pool": "{other_pool}", "network": "default""#));
    moved.delete_instance(&id).expect("delete through a provider whose pool changed");
    let pool = keeper.storage_pool_lookup_by_name("default-pool").expect("pool");
    assert!(keeper.storage_vol_lookup_by_name(&pool, &format!("hp-{id}.qcow2")).is_err(), "overlay removed");
    assert!(matches!(creator.get_instance(&id), Err(Error::NotFound(_))));
    // A missing domain: `not-found` from the built handle, for every operation.
    assert!(
        matches!(moved.delete_instance(&id), Err(Error::NotFound(message)) if message.contains("libvirt error 42"))
    );
    assert!(matches!(moved.stop_instance(&id, true, 0), Err(Error::NotFound(_))));
    assert!(matches!(moved.console(&id), Err(Error::NotFound(_))));
    keeper.storage_pool_destroy(&other).expect("remove the transient pool");
}
