//! The driver conformance suite: what every driver must do, checked through the real host
//! runtime and the real component. Each backend module instantiates every case with
//! `conformance_cases!` over a fixture that knows how to reach its backend.

use std::path::PathBuf;
use std::time::Duration;

use hyperplane::plugins::driver_types::{CachedTemplate, DriverError, InstanceSpec, InstanceState, TemplateRef};
use hyperplane::plugins::{ByteSource, CallError, Driver};
use uuid::Uuid;

/// A driver under test with a host to place instances on and a template cached there.
pub struct Fixture {
    pub driver: Driver,
    pub host: String,
    pub template: TemplateRef,
    /// A second template the suite may pull and remove.
    pub spare_template: TemplateRef,
    /// The image file pulls read (backends where the templates are already on the host may
    /// never read it).
    pub image: PathBuf,
}

impl Fixture {
    async fn pull(&self, template: &TemplateRef) -> Result<CachedTemplate, CallError> {
        let image = ByteSource::open_file(&self.image, "the conformance image").await.expect("the image opens");
        self.driver.pull_template(&self.host, template.clone(), image, None).await
    }
}

/// Instantiates every case of the suite as a `#[tokio::test]` calling `$fixture().await`.
#[macro_export]
macro_rules! conformance_cases {
    ($fixture:path) => {
        $crate::conformance_cases!(@cases $fixture;
            hosts_are_reported, lifecycle_round_trip, power_operations_are_idempotent_or_conflict,
            duplicate_id_conflicts, unknown_instance_is_not_found, invalid_spec_is_rejected,
            snapshots_round_trip, templates_pull_list_remove, listing_shows_created_instances);
    };
    (@cases $fixture:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture().await;
                $crate::conformance::$case(&fixture).await;
            }
        )*
    };
}

/// A fresh, unique instance spec on the fixture's host.
pub fn spec(fixture: &Fixture) -> InstanceSpec {
    spec_on(&fixture.host, &fixture.template)
}

/// A fresh, unique instance spec (1 vCPU, 256 MiB, a random MAC) on `host`.
pub fn spec_on(host: &str, template: &TemplateRef) -> InstanceSpec {
    let id = Uuid::new_v4().to_string();
    InstanceSpec {
        name: format!("conformance-{}", &id[..8]),
        id,
        host: host.to_owned(),
        template: template.clone(),
        vcpu: 1,
        ram_mb: 256,
        disk_gb: 1,
        mac: Some(format!("52:54:00:{:02x}:{:02x}:{:02x}", rand_byte(), rand_byte(), rand_byte())),
        vlan: None,
        metadata: Vec::new(),
    }
}

fn rand_byte() -> u8 {
    Uuid::new_v4().as_bytes()[0]
}

/// Creates an instance from `spec(fixture)`, the template pulled first.
async fn created(fixture: &Fixture) -> InstanceSpec {
    fixture.pull(&fixture.template).await.expect("pulled");
    let spec = spec(fixture);
    let instance = fixture.driver.create_instance(spec.clone()).await.expect("created");
    assert_eq!((instance.id.as_str(), instance.state), (spec.id.as_str(), InstanceState::Stopped));
    spec
}

fn assert_driver_error(
    result: Result<impl std::fmt::Debug, CallError>,
    expected: fn(&DriverError) -> bool,
    what: &str,
) {
    match result {
        Err(CallError::Driver(error)) if expected(&error) => {}
        other => panic!("{what}: expected a driver error of the right kind, got {other:?}"),
    }
}

fn is_not_found(error: &DriverError) -> bool {
    matches!(error, DriverError::NotFound(_))
}

fn is_conflict(error: &DriverError) -> bool {
    matches!(error, DriverError::Conflict(_))
}

fn is_invalid(error: &DriverError) -> bool {
    matches!(error, DriverError::Invalid(_))
}

pub async fn hosts_are_reported(fixture: &Fixture) {
    let hosts = fixture.driver.list_hosts().await.expect("hosts listed");
    let host = hosts.iter().find(|host| host.id == fixture.host).expect("the fixture's host is reported");
    assert!(host.cpu > 0 && host.ram_mb > 0, "{host:?}");
    assert!(!host.hypervisor.is_empty(), "{host:?}");
}

pub async fn lifecycle_round_trip(fixture: &Fixture) {
    let driver = &fixture.driver;
    let spec = created(fixture).await;
    let id = spec.id.as_str();
    let fetched = driver.get_instance(id).await.expect("fetched");
    assert_eq!((fetched.host.as_str(), fetched.state), (fixture.host.as_str(), InstanceState::Stopped));
    assert_eq!(fetched.mac, spec.mac, "the requested MAC is the instance's");

    assert_eq!(driver.start_instance(id).await.expect("started").state, InstanceState::Running);
    assert_eq!(driver.get_instance(id).await.expect("fetched").state, InstanceState::Running);
    if driver.capabilities().suspend {
        assert_eq!(driver.suspend_instance(id).await.expect("suspended").state, InstanceState::Suspended);
        assert_eq!(driver.get_instance(id).await.expect("fetched").state, InstanceState::Suspended);
        assert_eq!(driver.resume_instance(id).await.expect("resumed").state, InstanceState::Running);
    }
    assert_eq!(driver.restart_instance(id, false).await.expect("restarted").state, InstanceState::Running);
    assert_eq!(
        driver.stop_instance(id, true, Duration::ZERO).await.expect("powered off").state,
        InstanceState::Stopped
    );
    assert_eq!(driver.start_instance(id).await.expect("started again").state, InstanceState::Running);
    assert_eq!(
        driver.stop_instance(id, false, Duration::from_secs(10)).await.expect("shut down").state,
        InstanceState::Stopped
    );

    driver.delete_instance(id).await.expect("deleted");
    assert_driver_error(driver.get_instance(id).await, is_not_found, "get after delete");
    assert_driver_error(driver.delete_instance(id).await, is_not_found, "delete twice");
}

pub async fn power_operations_are_idempotent_or_conflict(fixture: &Fixture) {
    let driver = &fixture.driver;
    let spec = created(fixture).await;
    let id = spec.id.as_str();
    // Stopping a stopped instance answers it as it is.
    assert_eq!(
        driver.stop_instance(id, true, Duration::ZERO).await.expect("already stopped").state,
        InstanceState::Stopped
    );
    assert_driver_error(driver.restart_instance(id, false).await, is_conflict, "restart while stopped");
    if driver.capabilities().suspend {
        assert_driver_error(driver.suspend_instance(id).await, is_conflict, "suspend while stopped");
    }
    driver.start_instance(id).await.expect("started");
    assert_eq!(driver.start_instance(id).await.expect("already running").state, InstanceState::Running);
    // Deleting a running instance powers it off and removes it.
    driver.delete_instance(id).await.expect("deleted while running");
    assert_driver_error(driver.get_instance(id).await, is_not_found, "get after delete");
}

pub async fn duplicate_id_conflicts(fixture: &Fixture) {
    let spec = created(fixture).await;
    assert_driver_error(fixture.driver.create_instance(spec.clone()).await, is_conflict, "same id twice");
    fixture.driver.delete_instance(&spec.id).await.expect("deleted");
}

pub async fn unknown_instance_is_not_found(fixture: &Fixture) {
    let driver = &fixture.driver;
    let id = Uuid::new_v4().to_string();
    assert_driver_error(driver.get_instance(&id).await, is_not_found, "get");
    assert_driver_error(driver.start_instance(&id).await, is_not_found, "start");
    assert_driver_error(driver.stop_instance(&id, true, Duration::ZERO).await, is_not_found, "stop");
    assert_driver_error(driver.delete_instance(&id).await, is_not_found, "delete");
    if driver.capabilities().snapshots {
        assert_driver_error(driver.list_snapshots(&id).await, is_not_found, "list snapshots");
    }
}

pub async fn invalid_spec_is_rejected(fixture: &Fixture) {
    let driver = &fixture.driver;
    fixture.pull(&fixture.template).await.expect("pulled");
    let mut no_cpu = spec(fixture);
    no_cpu.vcpu = 0;
    assert_driver_error(driver.create_instance(no_cpu).await, is_invalid, "0 vcpu");
    let mut bad_mac = spec(fixture);
    bad_mac.mac = Some("not-a-mac".into());
    assert_driver_error(driver.create_instance(bad_mac).await, is_invalid, "malformed MAC");
    let mut unknown_host = spec(fixture);
    unknown_host.host = "no-such-host".into();
    assert_driver_error(driver.create_instance(unknown_host).await, is_not_found, "unknown host");
    let mut uncached = spec(fixture);
    uncached.template.name = "never-pulled".into();
    let result = driver.create_instance(uncached).await;
    assert!(
        matches!(result, Err(CallError::Driver(DriverError::Conflict(_) | DriverError::NotFound(_)))),
        "a template that is not cached: {result:?}"
    );
}

pub async fn snapshots_round_trip(fixture: &Fixture) {
    let driver = &fixture.driver;
    if !driver.capabilities().snapshots {
        return;
    }
    let spec = created(fixture).await;
    let id = spec.id.as_str();
    driver.start_instance(id).await.expect("started");
    let first = driver.create_snapshot(id, "first", "before the change").await.expect("first snapshot");
    assert_eq!((first.name.as_str(), first.description.as_str()), ("first", "before the change"));
    assert_eq!(first.state, InstanceState::Running);
    assert_driver_error(driver.create_snapshot(id, "first", "").await, is_conflict, "duplicate snapshot name");
    driver.stop_instance(id, true, Duration::ZERO).await.expect("powered off");
    let second = driver.create_snapshot(id, "second", "").await.expect("second snapshot");
    assert_eq!(second.state, InstanceState::Stopped);

    let names: Vec<String> =
        driver.list_snapshots(id).await.expect("listed").into_iter().map(|snapshot| snapshot.name).collect();
    assert_eq!(names, ["first", "second"], "oldest first");

    let reverted = driver.revert_snapshot(id, "first").await.expect("reverted");
    assert_eq!(reverted.state, InstanceState::Running, "the instance is back in the snapshot's state");
    let current: Vec<String> = driver
        .list_snapshots(id)
        .await
        .expect("listed")
        .into_iter()
        .filter(|snapshot| snapshot.current)
        .map(|snapshot| snapshot.name)
        .collect();
    assert_eq!(current, ["first"]);
    assert_driver_error(driver.revert_snapshot(id, "missing").await, is_not_found, "revert to an unknown snapshot");

    driver.delete_snapshot(id, "first").await.expect("first deleted");
    assert_driver_error(driver.delete_snapshot(id, "first").await, is_not_found, "delete twice");
    let names: Vec<String> =
        driver.list_snapshots(id).await.expect("listed").into_iter().map(|snapshot| snapshot.name).collect();
    assert_eq!(names, ["second"]);
    // Deleting the instance takes its remaining snapshots with it.
    driver.delete_instance(id).await.expect("deleted with a snapshot");
    assert_driver_error(driver.list_snapshots(id).await, is_not_found, "snapshots of a deleted instance");
}

pub async fn templates_pull_list_remove(fixture: &Fixture) {
    let driver = &fixture.driver;
    let spare = fixture.spare_template.clone();
    let cached_names = |templates: Vec<CachedTemplate>| {
        templates.into_iter().map(|template| (template.name, template.version)).collect::<Vec<_>>()
    };
    let pulled = fixture.pull(&spare).await.expect("pulled");
    assert_eq!((pulled.name.as_str(), pulled.version), (spare.name.as_str(), spare.version));
    // Pulling again is a no-op answering the cached template.
    fixture.pull(&spare).await.expect("pulled again");
    let listed = cached_names(driver.list_templates(&fixture.host).await.expect("listed"));
    assert!(listed.contains(&(spare.name.clone(), spare.version)), "{listed:?}");

    driver.remove_template(&fixture.host, spare.clone()).await.expect("removed");
    let listed = cached_names(driver.list_templates(&fixture.host).await.expect("listed"));
    assert!(!listed.contains(&(spare.name.clone(), spare.version)), "{listed:?}");
    assert_driver_error(driver.remove_template(&fixture.host, spare).await, is_not_found, "remove twice");
}

pub async fn listing_shows_created_instances(fixture: &Fixture) {
    let driver = &fixture.driver;
    let first = created(fixture).await;
    let second = created(fixture).await;
    driver.start_instance(&second.id).await.expect("started");
    let listed = driver.list_instances().await.expect("listed");
    let state_of = |id: &str| listed.iter().find(|instance| instance.id == id).map(|instance| instance.state);
    assert_eq!(state_of(&first.id), Some(InstanceState::Stopped));
    assert_eq!(state_of(&second.id), Some(InstanceState::Running));
    let ids = [first.id, second.id];
    for id in &ids {
        driver.delete_instance(id).await.expect("deleted");
    }
    let listed = driver.list_instances().await.expect("listed");
    assert!(listed.iter().all(|instance| !ids.contains(&instance.id)), "deleted instances are not listed");
}
