//! Suspend and resume, graceful stops with their grace period, snapshots and the console,
//! through the service and the real driver-sim component.

use crate::auth::Caller;
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use super::{create_and_wait, create_request, events_of_type, fast, start, start_with_settings, template};
use crate::model::{ConsoleProtocol, InstanceAction, InstanceState, Task, TaskState};
use crate::service::{ActionOptions, NewSnapshot, Service, ServiceError};

/// A running instance of a fresh template `base`.
async fn running_instance(service: &Service) -> Uuid {
    template(service, "base").await;
    let (task, id) = create_and_wait(service, create_request("base")).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    id
}

async fn finished(service: &Service, task: Result<Task, ServiceError>) -> Task {
    let task = task.expect("accepted");
    service.wait_task(&Caller::system(), task.id, Duration::from_secs(30)).await.expect("task")
}

async fn act(service: &Service, id: Uuid, action: InstanceAction, options: ActionOptions) -> Task {
    let task = finished(service, service.instance_action(&Caller::system(), id, action, options).await).await;
    assert_eq!(task.state, TaskState::Succeeded, "{action}: {task:?}");
    task
}

fn check_refused<T: std::fmt::Debug>(outcome: Result<T, ServiceError>, expected_fragment: &str) {
    match outcome {
        Err(error) => assert!(error.to_string().contains(expected_fragment), "{error:?} lacks {expected_fragment:?}"),
        Ok(value) => panic!("expected an error mentioning {expected_fragment:?}, got {value:?}"),
    }
}

#[tokio::test]
async fn suspend_and_resume_keep_the_instance_and_its_address() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    let id = running_instance(service).await;
    let ip = service.get_instance(&Caller::system(), id).await.expect("instance").ip;
    act(service, id, InstanceAction::Suspend, ActionOptions::default()).await;
    let suspended = service.get_instance(&Caller::system(), id).await.expect("instance");
    assert_eq!((suspended.state, &suspended.ip), (InstanceState::Suspended, &ip));
    check_refused(
        service.instance_action(&Caller::system(), id, InstanceAction::Suspend, ActionOptions::default()).await,
        "cannot suspend instance",
    );
    check_refused(
        service.instance_action(&Caller::system(), id, InstanceAction::Start, ActionOptions::default()).await,
        "while it is suspended",
    );
    // A reconciliation pass agrees with the driver: no drift.
    service.reconcile_all().await;
    assert!(events_of_type(service, "instance.drift").await.is_empty());
    act(service, id, InstanceAction::Resume, ActionOptions::default()).await;
    assert_eq!(service.get_instance(&Caller::system(), id).await.expect("instance").state, InstanceState::Running);

    act(service, id, InstanceAction::Suspend, ActionOptions::default()).await;
    act(service, id, InstanceAction::Stop, ActionOptions::default()).await;
    let stopped = service.get_instance(&Caller::system(), id).await.expect("instance");
    assert_eq!((stopped.state, stopped.ip), (InstanceState::Stopped, None));
}

#[tokio::test]
async fn a_graceful_stop_waits_its_grace_period_for_a_guest_that_ignores_it() {
    let mut config = fast(json!({ "hosts": 1, "guests_ignore_shutdown": true }));
    config["delays_ms"]["stop"] = json!(0);
    let fixture =
        start_with_settings(config, |settings| settings.default_stop_grace = Duration::from_millis(300)).await;
    let service = &fixture.service;
    let id = running_instance(service).await;

    let started = Instant::now();
    act(service, id, InstanceAction::Stop, ActionOptions::default()).await;
    assert!(started.elapsed() >= Duration::from_millis(300), "the default grace: {:?}", started.elapsed());
    act(service, id, InstanceAction::Start, ActionOptions::default()).await;
    let started = Instant::now();
    act(service, id, InstanceAction::Stop, ActionOptions { force: false, grace_secs: Some(0.0) }).await;
    assert!(started.elapsed() < Duration::from_millis(300), "no grace at all: {:?}", started.elapsed());

    act(service, id, InstanceAction::Start, ActionOptions::default()).await;
    let system = Caller::system();
    let refused = |grace_secs| {
        service.instance_action(&system, id, InstanceAction::Stop, ActionOptions { force: false, grace_secs })
    };
    check_refused(refused(Some(-1.0)).await, "grace must be between 0 and 3600 seconds, got -1");
    check_refused(refused(Some(f64::NAN)).await, "grace must be between 0 and 3600");
    check_refused(refused(Some(3601.0)).await, "got 3601");
    let grace_on_restart = ActionOptions { force: false, grace_secs: Some(5.0) };
    check_refused(
        service.instance_action(&Caller::system(), id, InstanceAction::Restart, grace_on_restart).await,
        "grace applies to the stop action only",
    );
}

#[tokio::test]
async fn snapshots_are_created_reverted_to_and_deleted_through_tasks() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    let id = running_instance(service).await;
    let snapshot = |name: &str| NewSnapshot { name: name.into(), description: format!("{name} description") };

    let created =
        finished(service, service.create_snapshot(&Caller::system(), id, snapshot("before-upgrade")).await).await;
    assert_eq!(created.state, TaskState::Succeeded, "{created:?}");
    assert_eq!(created.result.as_ref().expect("result")["snapshot"]["state"], "running");
    check_refused(
        service.create_snapshot(&Caller::system(), id, snapshot("before-upgrade")).await,
        "already has a snapshot",
    );
    check_refused(
        service.create_snapshot(&Caller::system(), id, snapshot("has space")).await,
        "snapshot name 'has space'",
    );
    check_refused(service.create_snapshot(&Caller::system(), id, snapshot(&"x".repeat(65))).await, "1-64 characters");
    check_refused(service.create_snapshot(&Caller::system(), Uuid::now_v7(), snapshot("a")).await, "not found");

    act(service, id, InstanceAction::Stop, ActionOptions::default()).await;
    let listed = service.list_snapshots(&Caller::system(), id).await.expect("listed");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].state, listed[0].current),
        ("before-upgrade", InstanceState::Running, true)
    );
    assert_eq!(listed[0].description, "before-upgrade description");

    let reverted = finished(service, service.revert_snapshot(&Caller::system(), id, "before-upgrade").await).await;
    assert_eq!(reverted.state, TaskState::Succeeded, "{reverted:?}");
    let instance = service.get_instance(&Caller::system(), id).await.expect("instance");
    assert_eq!(instance.state, InstanceState::Running, "the snapshot's state");
    assert!(instance.ip.is_some(), "{instance:?}");
    let reverted_events = events_of_type(service, "instance.snapshot_reverted").await;
    assert_eq!(reverted_events.len(), 1);
    let state_changes = events_of_type(service, "instance.state_changed").await;
    let last_change = state_changes.last().expect("a state change");
    assert_eq!(
        (last_change.data["to"].as_str(), last_change.data["snapshot"].as_str()),
        (Some("running"), Some("before-upgrade"))
    );
    assert_eq!(last_change.seq + 1, reverted_events[0].seq, "written together");
    check_refused(service.revert_snapshot(&Caller::system(), id, "missing").await, "snapshot '");

    let deleted = finished(service, service.delete_snapshot(&Caller::system(), id, "before-upgrade").await).await;
    assert_eq!(deleted.state, TaskState::Succeeded, "{deleted:?}");
    assert!(service.list_snapshots(&Caller::system(), id).await.expect("listed").is_empty());
    let missing = service.delete_snapshot(&Caller::system(), id, "before-upgrade").await;
    assert!(matches!(missing, Err(ServiceError::NotFound { kind: "snapshot", .. })), "{missing:?}");
    assert_eq!(events_of_type(service, "instance.snapshot_created").await.len(), 1);
    assert_eq!(events_of_type(service, "instance.snapshot_deleted").await.len(), 1);
}

#[tokio::test]
async fn snapshots_and_consoles_need_a_placed_instance() {
    let fixture = start(fast(json!({ "hosts": 1, "cpu": 2 }))).await;
    let service = &fixture.service;
    let id = running_instance(service).await;
    let console = service.instance_console(&Caller::system(), id).await.expect("console");
    assert_eq!((console.protocol, console.host.as_str()), (ConsoleProtocol::Vnc, "127.0.0.1"));

    // The only host is full: the next instance waits without a host.
    let waiting = service.create_instances(&Caller::system(), create_request("base"), None).await.expect("accepted");
    let waiting_id = waiting.object_id.expect("instance");
    let snapshot = NewSnapshot { name: "early".into(), description: String::new() };
    check_refused(service.create_snapshot(&Caller::system(), waiting_id, snapshot).await, "has no host yet");
    check_refused(service.list_snapshots(&Caller::system(), waiting_id).await, "has no host yet");
    check_refused(service.instance_console(&Caller::system(), waiting_id).await, "has no host yet");

    act(service, id, InstanceAction::Stop, ActionOptions::default()).await;
    check_refused(service.instance_console(&Caller::system(), id).await, "console needs it running");
}
