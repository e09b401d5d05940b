//! Removing a cached template from a host, through the service and the real driver-sim
//! component: refusals at the edge, the task, the host's list, events and placement.

use crate::auth::Caller;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::{create_and_wait, create_request, events_of_type, fast, start, template};
use crate::model::{Host, TaskState};
use crate::plugins::ByteSource;
use crate::plugins::driver_types as driver;
use crate::service::{CreateInstances, Service, ServiceError};

async fn host_named(service: &Service, name: &str) -> Host {
    service
        .list_hosts(&Caller::system())
        .await
        .expect("hosts")
        .into_iter()
        .find(|host| host.name == name)
        .expect("host")
}

fn caches(host: &Host, template: &str) -> bool {
    host.cached_templates.iter().any(|cached| cached.name == template)
}

/// A running instance of `template` on `host`.
async fn instance_on(service: &Service, template: &str, host: Uuid) -> Uuid {
    let request = CreateInstances { host_id: Some(host), ..create_request(template) };
    let (task, id) = create_and_wait(service, request).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    id
}

async fn delete(service: &Service, id: Uuid) {
    let task = service.delete_instance(&Caller::system(), id).await.expect("accepted");
    let task = service.wait_task(&Caller::system(), task.id, Duration::from_secs(30)).await.expect("task");
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
}

fn refused_with<T: std::fmt::Debug>(outcome: Result<T, ServiceError>, expected: &str) -> ServiceError {
    match outcome {
        Err(error) => {
            assert!(error.to_string().contains(expected), "{error:?} lacks {expected:?}");
            error
        }
        Ok(value) => panic!("expected an error mentioning {expected:?}, got {value:?}"),
    }
}

async fn plan_host(service: &Service, template: &str) -> Option<Uuid> {
    service.plan_placement(&Caller::system(), create_request(template)).await.expect("plan").host_id
}

#[tokio::test]
async fn a_cached_template_is_removed_from_its_host_once_no_instance_uses_it() {
    let fixture = start(fast(json!({ "host_specs": [{ "id": "a" }, { "id": "b" }] }))).await;
    let service = &fixture.service;
    template(service, "base").await;
    template(service, "other").await;
    let a = host_named(service, "a").await;
    let b = host_named(service, "b").await;
    let user = instance_on(service, "base", a.id).await;
    // `a` is the fuller host, yet it has `base` cached: placement prefers it.
    let _filler = instance_on(service, "other", a.id).await;
    assert!(caches(&host_named(service, "a").await, "base"));
    assert_eq!(plan_host(service, "base").await, Some(a.id), "the host with the template cached is preferred");

    // In use by an instance on that host: refused at the edge, naming it.
    let error =
        refused_with(service.remove_template_from_host(&Caller::system(), "base", "a", None).await, &user.to_string());
    assert!(matches!(error, ServiceError::Conflict(_)), "{error:?}");
    delete(service, user).await;

    // Unknown template, unknown host, not cached there: not found, naming what is missing.
    let error = refused_with(service.remove_template_from_host(&Caller::system(), "nope", "a", None).await, "nope");
    assert!(matches!(error, ServiceError::NotFound { .. }), "{error:?}");
    let error =
        refused_with(service.remove_template_from_host(&Caller::system(), "base", "nowhere", None).await, "nowhere");
    assert!(matches!(error, ServiceError::NotFound { .. }), "{error:?}");
    let error =
        refused_with(service.remove_template_from_host(&Caller::system(), "base", "b", None).await, "on host 'b'");
    assert!(matches!(error, ServiceError::NotFound { .. }) && error.to_string().contains("'base'"), "{error:?}");
    let error =
        refused_with(service.remove_template_from_host(&Caller::system(), "base", "a", Some(7)).await, "'base:7'");
    assert!(matches!(error, ServiceError::NotFound { .. }), "{error:?}");

    let task =
        service.remove_template_from_host(&Caller::system(), "base", &a.id.to_string(), None).await.expect("accepted");
    assert_eq!(task.kind.as_str(), "template.remove_from_host");
    assert_eq!(task.object_id, Some(a.id));
    let task = service.wait_task(&Caller::system(), task.id, Duration::from_secs(30)).await.expect("task");
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");

    let host = host_named(service, "a").await;
    assert!(!caches(&host, "base"), "{:?}", host.cached_templates);
    assert!(caches(&host, "other"), "other templates stay: {:?}", host.cached_templates);
    let driver = service.providers().driver("sim").expect("loaded");
    let on_driver = driver.list_templates("a").await.expect("listed");
    assert!(!on_driver.iter().any(|cached| cached.name == "base"), "{on_driver:?}");
    let removed = events_of_type(service, "host.template_removed").await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(
        (removed[0].object_id.as_str(), &removed[0].data["template"]),
        (a.id.to_string().as_str(), &json!("base"))
    );
    // Placement no longer prefers `a` for `base`: the emptier host wins.
    assert_eq!(plan_host(service, "base").await, Some(b.id), "the removal is reflected in placement");
    // A reconciliation pass agrees with the driver.
    service.reconcile_all().await;
    assert!(!caches(&host_named(service, "a").await, "base"));

    // Removed: a second removal is not found.
    let error =
        refused_with(service.remove_template_from_host(&Caller::system(), "base", "a", None).await, "on host 'a'");
    assert!(matches!(error, ServiceError::NotFound { .. }), "{error:?}");
    // The next instance of `base` on `a` pulls it again.
    instance_on(service, "base", a.id).await;
    assert!(caches(&host_named(service, "a").await, "base"));
}

#[tokio::test]
async fn a_driver_that_refuses_the_removal_fails_the_task_with_its_message() {
    let fixture = start(fast(json!({ "host_specs": [{ "id": "a" }] }))).await;
    let service = &fixture.service;
    template(service, "base").await;
    let a = host_named(service, "a").await;
    let user = instance_on(service, "base", a.id).await;
    delete(service, user).await;

    // An instance we do not know of uses the template on the hypervisor.
    let driver = service.providers().driver("sim").expect("loaded").clone();
    let template_ref = driver::TemplateRef {
        name: "base".into(),
        version: 0,
        tag: String::new(),
        size_bytes: 0,
        format: driver::DiskFormat::Raw,
    };
    driver.pull_template("a", template_ref.clone(), ByteSource::empty(), None).await.expect("cached");
    let spec = driver::InstanceSpec {
        id: "stranger".into(),
        name: "stranger".into(),
        host: "a".into(),
        template: template_ref,
        vcpu: 1,
        ram_mb: 512,
        disk_gb: 1,
        mac: None,
        vlan: None,
        metadata: Vec::new(),
    };
    driver.create_instance(spec).await.expect("created on the driver");

    let task = service.remove_template_from_host(&Caller::system(), "base", "a", None).await.expect("accepted");
    let task = service.wait_task(&Caller::system(), task.id, Duration::from_secs(30)).await.expect("task");
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    let error = task.error.expect("error");
    assert_eq!(error.code, "conflict", "{error:?}");
    assert!(error.message.starts_with("remove-template: "), "{error:?}");
    assert!(caches(&host_named(service, "a").await, "base"), "a refused removal leaves the template listed");
    assert!(events_of_type(service, "host.template_removed").await.is_empty());
}
