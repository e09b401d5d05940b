//! Service tests: the real service over a temporary SQLite database and the real driver-sim
//! component, without HTTP. Reconciliation, cancellation, failures and host settings here;
//! the template registry, instance operations and templates cached on hosts in their own modules.

mod distribution;
mod host_templates;
mod identity;
mod instance_operations;
mod projects;
mod registry;
mod save_image;

use crate::auth::Caller;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::{
    ActionOptions, CreateInstances, HostPatch, NewTemplate, Service, ServiceSettings, load_providers, load_storage,
};
use crate::config::Config;
use crate::model::{Arch, InstanceAction, InstanceOrigin, InstanceState, Task, TaskState};
use crate::plugins::driver_types as driver;
use crate::plugins::{ByteSource, PluginRuntime, RuntimeSettings};
use crate::store::{self, Store};

struct Fixture {
    service: Service,
    settings: ServiceSettings,
    _runtime: PluginRuntime,
    directory: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.service.inner.shutdown.cancel();
        self.service.inner.tasks.shutdown();
    }
}

/// A started service whose only provider, `sim`, is driver-sim with `sim_config`.
async fn start(sim_config: serde_json::Value) -> Fixture {
    start_with_settings(sim_config, |_| {}).await
}

/// [`start`], with the service's settings adjusted by `adjust` first.
async fn start_with_settings(sim_config: serde_json::Value, adjust: impl FnOnce(&mut ServiceSettings)) -> Fixture {
    let directory = tempfile::tempdir().expect("temporary directory");
    let config = Config::from_toml(&format!(
        "data_dir = {:?}\n[reconcile]\ninterval_secs = 3600\nhost_offline_after_secs = 7200\n[[providers]]\nname = \"sim\"\ndriver = \"driver-sim\"\nconfig = {}\n",
        directory.path().join("data").display().to_string(),
        toml_inline(&sim_config)
    ))
    .expect("valid config");
    let store = Store::open(&format!("sqlite://{}", directory.path().join("test.db").display())).await.expect("store");
    let cache = std::env::temp_dir().join("hyperplane-service-tests-plugin-cache");
    let runtime =
        PluginRuntime::new(RuntimeSettings { cache_dir: Some(cache), idle_instance_timeout: None }).expect("runtime");
    let providers = load_providers(&config, &runtime, &store).await;
    let mut settings = ServiceSettings::from_config(&config);
    adjust(&mut settings);
    let blobs = load_storage(&config, &runtime).await.expect("the storage backend loads");
    let service = Service::new(store, providers, blobs, settings.clone());
    service.start().await.expect("service starts");
    Fixture { service, settings, _runtime: runtime, directory }
}

/// JSON object → TOML inline table (enough for the simulator's settings).
fn toml_inline(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(fields) => format!(
            "{{ {} }}",
            fields.iter().map(|(key, value)| format!("{key} = {}", toml_inline(value))).collect::<Vec<_>>().join(", ")
        ),
        serde_json::Value::Array(items) => {
            format!("[{}]", items.iter().map(toml_inline).collect::<Vec<_>>().join(", "))
        }
        other => other.to_string(),
    }
}

fn fast(mut config: serde_json::Value) -> serde_json::Value {
    config["delays_ms"] = json!({ "create": 5, "start": 5, "stop": 5, "restart": 5, "delete": 5, "pull": 5 });
    config
}

/// Operations of 10 ms, but a start of `start_ms`: the window a test acts in while a create runs.
fn slow_start(mut config: serde_json::Value, start_ms: u64) -> serde_json::Value {
    config["delays_ms"] =
        json!({ "create": 10, "start": start_ms, "stop": 10, "restart": 10, "delete": 10, "pull": 10 });
    config
}

/// One host whose starts take `start_ms`, and a create of an instance of template `base` that
/// has run for `after_ms`: its task and instance id.
async fn create_under_way(start_ms: u64, after_ms: u64) -> (Fixture, Task, Uuid) {
    let fixture = start(slow_start(json!({ "hosts": 1 }), start_ms)).await;
    template(&fixture.service, "base").await;
    let create =
        fixture.service.create_instances(&Caller::system(), create_request("base"), None).await.expect("accepted");
    let instance_id = create.object_id.expect("instance");
    tokio::time::sleep(Duration::from_millis(after_ms)).await;
    (fixture, create, instance_id)
}

fn create_request(template: &str) -> CreateInstances {
    CreateInstances { vcpu: Some(2), ram_mb: Some(1024), ..CreateInstances::of_template(template) }
}

async fn create_and_wait(service: &Service, request: CreateInstances) -> (Task, Uuid) {
    let task = service.create_instances(&Caller::system(), request, None).await.expect("accepted");
    let task = service.wait_task(&Caller::system(), task.id, Duration::from_secs(30)).await.expect("task");
    (task.clone(), task.object_id.expect("instance task"))
}

/// A group named `name`, with no members and no fallback.
async fn group(service: &Service, name: &str) {
    let group = super::groups::NewGroup {
        name: name.into(),
        description: String::new(),
        fallback_group: None,
        strategy: Default::default(),
        project: None,
    };
    service.create_group(&Caller::system(), group).await.expect("group");
}

async fn template(service: &Service, name: &str) {
    service
        .create_template(
            &Caller::system(),
            NewTemplate { name: name.into(), arch: Arch::Amd64, description: String::new(), project: None },
        )
        .await
        .expect("template");
}

async fn events_of_type(service: &Service, kind: &str) -> Vec<crate::model::Event> {
    service
        .events_after(&Caller::system(), 0, 10_000)
        .await
        .expect("events")
        .0
        .into_iter()
        .filter(|event| event.kind == kind)
        .collect()
}

#[tokio::test]
async fn reconciliation_records_instances_gone_changed_or_appeared_behind_our_back() {
    let fixture = start(fast(json!({ "hosts": 2 }))).await;
    let service = &fixture.service;
    template(service, "base").await;
    let (task, gone) = create_and_wait(service, create_request("base")).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    let (_, stopped) = create_and_wait(service, create_request("base")).await;
    let driver = service.providers().driver("sim").expect("loaded").clone();

    // Behind our back: one deleted, one stopped, one created that we never asked for.
    driver.delete_instance(&gone.to_string()).await.expect("deleted on the driver");
    driver.stop_instance(&stopped.to_string(), true, Duration::ZERO).await.expect("stopped on the driver");
    let host = service.list_hosts(&Caller::system()).await.expect("hosts")[0].name.clone();
    let template_ref = driver::TemplateRef {
        name: "rogue".into(),
        version: 0,
        tag: String::new(),
        size_bytes: 0,
        format: driver::DiskFormat::Raw,
    };
    driver.pull_template(&host, template_ref.clone(), ByteSource::empty(), None).await.expect("pulled");
    let spec = driver::InstanceSpec {
        id: "rogue-1".into(),
        name: "rogue".into(),
        host: host.clone(),
        template: template_ref,
        vcpu: 1,
        ram_mb: 512,
        disk_gb: 1,
        mac: None,
        vlan: None,
        metadata: Vec::new(),
    };
    driver.create_instance(spec).await.expect("created on the driver");

    service.reconcile_all().await;

    let gone = service.get_instance(&Caller::system(), gone).await.expect("still recorded");
    assert_eq!(gone.state, InstanceState::Terminated);
    assert!(gone.error.as_deref().is_some_and(|error| error.contains("disappeared")), "{gone:?}");
    assert_eq!(service.get_instance(&Caller::system(), stopped).await.expect("recorded").state, InstanceState::Stopped);
    let discovered: Vec<_> = store::instances::list(
        &mut service.store().reader().await.expect("reader"),
        &store::instances::InstanceFilter::default(),
    )
    .await
    .expect("list")
    .into_iter()
    .filter(|instance| instance.origin == InstanceOrigin::Discovered)
    .collect();
    assert_eq!(discovered.len(), 1, "{discovered:?}");
    assert_eq!(discovered[0].name, "rogue-1");
    assert_eq!(discovered[0].state, InstanceState::Stopped);

    let kinds: Vec<String> = events_of_type(service, "instance.drift")
        .await
        .iter()
        .map(|event| event.data["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    for kind in ["gone", "state", "appeared"] {
        assert!(kinds.iter().any(|seen| seen == kind), "drift {kind} recorded: {kinds:?}");
    }
    // A second pass finds nothing new.
    service.reconcile_all().await;
    assert_eq!(events_of_type(service, "instance.drift").await.len(), 3);
}

/// The states a create goes through: `pulling` while the host fetches the template; placed on
/// a host that holds it, `starting` with the placement itself (one write less).
#[tokio::test]
async fn a_create_pulls_a_missing_template_and_starts_with_its_placement_on_a_host_holding_it() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template(service, "base").await;
    let (_, first) = create_and_wait(service, create_request("base")).await;
    let (_, second) = create_and_wait(service, create_request("base")).await;
    let events = service.events_after(&Caller::system(), 0, 10_000).await.expect("events").0;
    let changes_of = |id: Uuid| -> Vec<(String, String)> {
        events
            .iter()
            .filter(|event| event.kind == "instance.state_changed" && event.object_id == id.to_string())
            .map(|event| {
                (
                    event.data["from"].as_str().unwrap_or("").to_owned(),
                    event.data["to"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let expected = |states: &[&str]| -> Vec<(String, String)> {
        states.windows(2).map(|pair| (pair[0].to_owned(), pair[1].to_owned())).collect()
    };
    assert_eq!(changes_of(first), expected(&["scheduling", "pulling", "starting", "running"]));
    assert_eq!(changes_of(second), expected(&["scheduling", "starting", "running"]));
    let placed = events
        .iter()
        .find(|event| event.kind == "instance.placed" && event.object_id == second.to_string())
        .expect("placed");
    let starting = events
        .iter()
        .find(|event| event.kind == "instance.state_changed" && event.object_id == second.to_string())
        .expect("starting");
    assert_eq!(placed.seq + 1, starting.seq, "written together");
    assert_eq!(starting.data["host"], placed.data["host"], "{starting:?}");
}

/// What a task reads of its instance inline, in one read transaction, is what the separate reads
/// through sqlx give.
#[tokio::test]
async fn an_instance_read_in_context_matches_its_parts_read_one_by_one() {
    // A slow stop keeps a task unfinished while the instance is read.
    let delays = json!({ "create": 5, "start": 5, "stop": 3000, "restart": 5, "delete": 5, "pull": 5 });
    let fixture = start(json!({ "hosts": 2, "delays_ms": delays })).await;
    let service = &fixture.service;
    template(service, "base").await;
    template(service, "second").await;
    let (_, id) = create_and_wait(service, create_request("base")).await;
    let (_, second) = create_and_wait(service, create_request("second")).await;
    let stop = service
        .instance_action(&Caller::system(), id, InstanceAction::Stop, ActionOptions::default())
        .await
        .expect("stop accepted");
    // Read once the stop has begun: then nothing changes for its 3 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while service.get_instance(&Caller::system(), id).await.expect("get").state != InstanceState::Stopping {
        assert!(std::time::Instant::now() < deadline, "the stop began");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut reader = service.store().reader().await.expect("reader");
    // One snapshot for every read below through sqlx; the contexts are read inline.
    sqlx::query("BEGIN").execute(&mut *reader).await.expect("begin");
    let all = store::instances::ContextParts { template: true, unfinished_tasks: true };
    let context = store::instances::get_in_context(service.store(), id, all).expect("read").expect("found");
    let instance = store::instances::get(&mut reader, id).await.expect("read").expect("found");
    let host = store::hosts::get(&mut reader, instance.host_id.expect("placed")).await.expect("read");
    let template_id = instance.template_id.expect("from a template");
    let template = store::templates::get(&mut reader, template_id).await.expect("read");
    let filter = store::tasks::TaskFilter {
        states: vec![TaskState::Pending, TaskState::Running],
        object_id: Some(id),
        ..Default::default()
    };
    let tasks = store::tasks::list(&mut reader, &filter).await.expect("read");
    assert_eq!(json(&context.instance), json(&instance));
    assert_eq!(json(&context.host), json(&host));
    assert_eq!(json(&context.template), json(&template));
    assert_eq!(json(&context.unfinished_tasks), json(&tasks));
    assert_eq!(tasks.iter().map(|task| task.id).collect::<Vec<_>>(), vec![stop.id], "the stop is under way");

    let lean = store::instances::get_in_context(service.store(), id, Default::default()).expect("read");
    let lean = lean.expect("found");
    assert!(lean.template.is_none() && lean.unfinished_tasks.is_empty(), "{lean:?}");
    assert_eq!(json(&lean.host), json(&host));
    let unknown = store::instances::get_in_context(service.store(), Uuid::now_v7(), all).expect("read");
    assert!(unknown.is_none(), "an unknown instance is none");

    // Several at once (as for the tasks of a claim): each as read alone; unknown ones left out.
    let mut together =
        store::instances::get_contexts(service.store(), &[second, Uuid::now_v7(), id], all).expect("read together");
    assert_eq!(together.len(), 2, "{together:?}");
    for one in [id, second] {
        let alone = store::instances::get_in_context(service.store(), one, all).expect("read").expect("found");
        let read_together = together.remove(&one).expect("read together");
        assert_eq!(json(&read_together.instance), json(&alone.instance));
        assert_eq!(json(&read_together.host), json(&alone.host));
        assert_eq!(json(&read_together.template), json(&alone.template));
        assert_eq!(json(&read_together.unfinished_tasks), json(&alone.unfinished_tasks));
    }
    sqlx::query("COMMIT").execute(&mut *reader).await.expect("commit");
}

/// What placement reads of the fleet inline is what the separate reads through sqlx give.
#[tokio::test]
async fn the_fleet_read_inline_matches_its_parts_read_one_by_one() {
    let fixture = start(fast(json!({ "hosts": 2, "cpu": 2 }))).await;
    let service = &fixture.service;
    template(service, "base").await;
    group(service, "pool").await;
    let hosts = service.list_hosts(&Caller::system()).await.expect("hosts");
    service.set_group_membership(&Caller::system(), "pool", &[hosts[0].id], true).await.expect("member");
    for key in ["ci", "web"] {
        let request = CreateInstances { affinity_key: Some(key.into()), ..create_request("base") };
        let (task, _) = create_and_wait(service, request).await;
        assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    }
    // Both hosts are full: this one waits.
    let waiting = service.create_instances(&Caller::system(), create_request("base"), None).await.expect("accepted");

    let filter = store::instances::InstanceFilter {
        states: vec![InstanceState::Scheduling],
        unplaced: true,
        ..Default::default()
    };
    // Nothing changes the fleet from here on: the placement pass that found no room is over.
    let fleet = service.store().read_inline(|connection| store::fleet::read(connection, &filter)).expect("read");
    let mut reader = service.store().reader().await.expect("reader");
    // One snapshot for every read below.
    sqlx::query("BEGIN").execute(&mut *reader).await.expect("begin");
    let waiting_instances = store::instances::list(&mut reader, &filter).await.expect("read");
    let hosts = store::hosts::list(&mut reader).await.expect("read");
    let mut groups = store::groups::list(&mut reader).await.expect("read");
    let template = store::templates::get_by_name(&mut reader, "base").await.expect("read").expect("found");
    let live =
        store::instances::InstanceFilter { excluded_states: vec![InstanceState::Terminated], ..Default::default() };
    let mut affinity_keys = store::instances::AffinityKeys::new();
    for instance in store::instances::list(&mut reader, &live).await.expect("read") {
        if let (Some(host_id), Some(key)) = (instance.host_id, instance.placement.affinity_key) {
            *affinity_keys.entry(host_id).or_default().entry(key).or_default() += 1;
        }
    }
    sqlx::query("COMMIT").execute(&mut *reader).await.expect("commit");
    assert_eq!(
        waiting_instances.iter().map(|instance| instance.id).collect::<Vec<_>>(),
        [waiting.object_id.expect("instance")]
    );
    assert_eq!(json(&fleet.waiting), json(&waiting_instances));
    assert_eq!(json(&fleet.hosts), json(&hosts));
    assert!(groups.iter().all(|group| !group.hosts.is_empty()), "members are listed one by one");
    groups.iter_mut().for_each(|group| group.hosts.clear());
    assert_eq!(json(&fleet.groups), json(&groups));
    assert_eq!(affinity_keys.len(), 2, "{affinity_keys:?}");
    assert_eq!(fleet.affinity_keys, affinity_keys);
    assert_eq!(json(&fleet.templates), json(&[template]));
}

/// A template read with a project in one round trip is what the separate reads give.
#[tokio::test]
async fn a_template_read_with_a_project_matches_the_reads_one_by_one() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template(service, "base").await;
    let mut reader = service.store().reader().await.expect("reader");
    let default = crate::auth::identity::DEFAULT_PROJECT_ID;
    let template = store::templates::get_by_name(&mut reader, "base").await.expect("read").expect("found");
    let project = store::projects::get(&mut reader, default).await.expect("read").expect("found");
    for reference in ["base".to_owned(), template.id.to_string()] {
        let (found, with) = store::templates::get_with_project(service.store(), &reference, default).expect("read");
        assert_eq!(json(&found), json(&Some(&template)), "{reference}");
        assert_eq!(json(&with), json(&Some(&project)), "{reference}");
    }
    let (none, missing) = store::templates::get_with_project(service.store(), "nothing", Uuid::now_v7()).expect("read");
    assert!(none.is_none() && missing.is_none());
}

#[tokio::test]
async fn a_request_that_fits_nowhere_waits_and_can_be_cancelled() {
    let fixture = start(fast(json!({ "hosts": 1, "cpu": 2 }))).await;
    let service = &fixture.service;
    template(service, "base").await;
    let (task, _) = create_and_wait(service, create_request("base")).await;
    assert_eq!(task.state, TaskState::Succeeded);

    let waiting = service.create_instances(&Caller::system(), create_request("base"), None).await.expect("accepted");
    let still = service.wait_task(&Caller::system(), waiting.id, Duration::from_millis(500)).await.expect("task");
    assert_eq!(still.state, TaskState::Pending);
    // A wait that times out answers the task as it is then, with why it waits.
    assert!(still.message.as_deref().is_some_and(|message| message.contains("1 full")), "{still:?}");
    assert_eq!(
        service.get_instance(&Caller::system(), still.object_id.expect("instance")).await.expect("instance").state,
        InstanceState::Scheduling
    );

    service.cancel_task(&Caller::system(), waiting.id).await.expect("cancel");
    let cancelled = service.wait_task(&Caller::system(), waiting.id, Duration::from_secs(10)).await.expect("task");
    assert_eq!(cancelled.state, TaskState::Cancelled, "{cancelled:?}");
    let instance =
        service.get_instance(&Caller::system(), cancelled.object_id.expect("instance")).await.expect("instance");
    assert_eq!(instance.state, InstanceState::Terminated);
}

#[tokio::test]
async fn deleting_an_instance_while_it_is_being_created_cancels_the_creation_and_leaves_nothing() {
    let (fixture, create, instance_id) = create_under_way(1500, 300).await;
    let service = &fixture.service;
    let delete = service.delete_instance(&Caller::system(), instance_id).await.expect("accepted");
    let delete = service.wait_task(&Caller::system(), delete.id, Duration::from_secs(30)).await.expect("task");
    assert_eq!(delete.state, TaskState::Succeeded, "{delete:?}");
    let create = service.get_task(&Caller::system(), create.id).await.expect("task");
    assert!(create.state.is_final(), "{create:?}");
    assert_eq!(
        service.get_instance(&Caller::system(), instance_id).await.expect("instance").state,
        InstanceState::Terminated
    );
    let driver = service.providers().driver("sim").expect("loaded");
    assert!(driver.list_instances().await.expect("listed").is_empty(), "nothing left on the hypervisor");
}

#[tokio::test]
async fn a_rename_while_the_instance_is_created_outlives_the_create() {
    let (fixture, create, instance_id) = create_under_way(600, 200).await;
    let service = &fixture.service;
    let metadata: crate::model::Labels = [("team".to_owned(), "storage".to_owned())].into();
    let patch = super::instances::InstancePatch {
        name: Some("renamed".into()),
        external_id: Some("ticket-7".into()),
        metadata: Some(metadata.clone()),
    };
    let patched = service.update_instance(&Caller::system(), instance_id, patch).await.expect("patched");
    assert_eq!(patched.state, InstanceState::Starting, "patched while the create runs");
    let create = service.wait_task(&Caller::system(), create.id, Duration::from_secs(30)).await.expect("task");
    assert_eq!(create.state, TaskState::Succeeded, "{create:?}");
    let instance = service.get_instance(&Caller::system(), instance_id).await.expect("instance");
    assert_eq!(instance.state, InstanceState::Running);
    assert!(instance.mac.is_some(), "the MAC the driver chose is written with the create's outcome");
    assert_eq!(
        (instance.name.as_str(), instance.external_id.as_deref(), &instance.metadata),
        ("renamed", Some("ticket-7"), &metadata),
        "the create's writes left the client's changes as they were"
    );
}

#[tokio::test]
async fn deletes_racing_for_one_instance_share_one_task() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template(service, "base").await;
    let (created, instance_id) = create_and_wait(service, create_request("base")).await;
    assert_eq!(created.state, TaskState::Succeeded, "{created:?}");
    // Holding the writer makes both requests find no delete under way and then wait, with
    // their tasks, for the same group commit.
    let writer = service.store().begin().await.expect("begin");
    let requests: Vec<_> = (0..2)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.delete_instance(&Caller::system(), instance_id).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer.commit().await.expect("commit");
    let mut answered = Vec::new();
    for request in requests {
        answered.push(request.await.expect("joined").expect("accepted").id);
    }
    assert_eq!(answered[0], answered[1], "the second request answers the first one's task");
    let filter = store::tasks::TaskFilter {
        kind: Some(crate::model::TaskKind::InstanceDelete),
        object_id: Some(instance_id),
        ..Default::default()
    };
    let deletes = store::tasks::list(&mut service.store().reader().await.expect("reader"), &filter).await;
    assert_eq!(deletes.expect("listed").len(), 1, "one delete task was created");
    let delete = service.wait_task(&Caller::system(), answered[0], Duration::from_secs(30)).await.expect("task");
    assert_eq!(delete.state, TaskState::Succeeded, "{delete:?}");
}

/// A value as JSON, to compare what reads answer field by field.
fn json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("json")
}

/// The states an instance went through, from its `instance.state_changed` events.
async fn states_of(service: &Service, instance_id: Uuid) -> Vec<String> {
    let changes = events_of_type(service, "instance.state_changed").await;
    let of_instance = changes.into_iter().filter(|event| event.object_id == instance_id.to_string());
    of_instance.map(|event| event.data["to"].as_str().unwrap_or_default().to_owned()).collect()
}

#[tokio::test]
async fn a_delete_request_makes_an_idle_instance_terminating_at_once_and_leaves_a_busy_one_to_its_task() {
    // Slow stops and deletes keep tasks at work while the instances are read.
    let delays = json!({ "create": 5, "start": 5, "stop": 2000, "restart": 5, "delete": 1500, "pull": 5 });
    let fixture = start(json!({ "hosts": 1, "delays_ms": delays })).await;
    let service = &fixture.service;
    template(service, "base").await;
    let state = |id| async move { service.get_instance(&Caller::system(), id).await.expect("instance").state };

    let (_, idle) = create_and_wait(service, create_request("base")).await;
    let delete = service.delete_instance(&Caller::system(), idle).await.expect("accepted");
    assert_eq!(state(idle).await, InstanceState::Terminating, "terminating as the request answers");
    let again = service.delete_instance(&Caller::system(), idle).await.expect("accepted again");
    assert_eq!(again.id, delete.id, "asking again answers the delete under way");
    let delete = service.wait_task(&Caller::system(), delete.id, Duration::from_secs(30)).await.expect("task");
    assert_eq!(delete.state, TaskState::Succeeded, "{delete:?}");
    assert_eq!(states_of(service, idle).await, ["pulling", "starting", "running", "terminating", "terminated"]);

    let (_, busy) = create_and_wait(service, create_request("base")).await;
    let stop = InstanceAction::Stop;
    service.instance_action(&Caller::system(), busy, stop, ActionOptions::default()).await.expect("stop accepted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = state(busy).await;
    let delete = service.delete_instance(&Caller::system(), busy).await.expect("accepted");
    assert_eq!(state(busy).await, before, "a request leaves an instance with a task at work to the delete task");
    let delete = service.wait_task(&Caller::system(), delete.id, Duration::from_secs(30)).await.expect("task");
    assert_eq!(delete.state, TaskState::Succeeded, "{delete:?}");
    let states = states_of(service, busy).await;
    assert_eq!(states.iter().filter(|state| *state == "terminating").count(), 1, "{states:?}");
    assert_eq!(states.last().map(String::as_str), Some("terminated"), "{states:?}");
}

#[tokio::test]
async fn a_failing_driver_fails_the_task_marks_the_instance_and_cleans_up() {
    let mut config = fast(json!({ "hosts": 1 }));
    config["failure_rate"] = json!(1.0);
    let fixture = start(config).await;
    let service = &fixture.service;
    template(service, "base").await;
    let (task, instance_id) = create_and_wait(service, create_request("base")).await;
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    let error = task.error.expect("error");
    assert_eq!(error.code, "backend");
    assert!(error.message.contains("simulated failure"), "{error:?}");
    let instance = service.get_instance(&Caller::system(), instance_id).await.expect("instance");
    assert_eq!(instance.state, InstanceState::Error);
    assert!(instance.error.is_some_and(|message| message.contains("simulated failure")));
}

#[tokio::test]
async fn draining_and_offline_hosts_take_no_new_instances() {
    let config = fast(json!({ "host_specs": [{ "id": "a" }, { "id": "b" }, { "id": "c", "offline": true }] }));
    let fixture = start(config).await;
    let service = &fixture.service;
    template(service, "base").await;
    let hosts = service.list_hosts(&Caller::system()).await.expect("hosts");
    let by_name = |name: &str| hosts.iter().find(|host| host.name == name).expect("host").clone();
    assert_eq!(by_name("c").state, crate::model::HostState::Offline);
    let drained = service
        .update_host(&Caller::system(), by_name("a").id, HostPatch { draining: Some(true), ..Default::default() })
        .await
        .expect("drain");
    assert_eq!(drained.state, crate::model::HostState::Draining);
    for _ in 0..3 {
        let (task, instance_id) = create_and_wait(service, create_request("base")).await;
        assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
        let instance = service.get_instance(&Caller::system(), instance_id).await.expect("instance");
        assert_eq!(instance.host_id, Some(by_name("b").id), "only the active host takes instances");
    }
    assert_eq!(events_of_type(service, "host.state_changed").await.len(), 1, "draining is an event");
}
