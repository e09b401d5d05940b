//! Distribution onto hosts and each host's template cache budget, on the simulated driver:
//! one pull task per host under a batch, already cached hosts, targets by host and group,
//! cancellation, and least-recently-used eviction of templates no instance uses.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use uuid::Uuid;

use super::{create_and_wait, create_request, events_of_type, fast, group, start, template};
use crate::auth::Caller;
use crate::model::{Capacity, Task, TaskKind, TaskState};
use crate::service::{DistributeRequest, HostPatch, NewTemplateVersion, PushOptions, Service, ServiceError, TaskQuery};

const MIB: usize = 1024 * 1024;

/// A template with one version whose disk image is `mib` MiB.
async fn template_of_size(service: &Service, name: &str, mib: usize) {
    template(service, name).await;
    let version = NewTemplateVersion { tag: "v1".into(), description: String::new(), size_bytes: 0 };
    service.create_template_version(&Caller::system(), name, version).await.expect("version");
    let image = vec![name.len() as u8; mib * MIB];
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(image))]);
    service.push_template_file(&Caller::system(), name, 1, "disk", PushOptions::default(), body).await.expect("pushed");
}

async fn distribute(service: &Service, name: &str, hosts: &[&str]) -> Task {
    let request =
        DistributeRequest { hosts: hosts.iter().map(|host| host.to_string()).collect(), ..Default::default() };
    let batch = service.distribute_template(&Caller::system(), name, request).await.expect("distribution starts");
    service.wait_task(&Caller::system(), batch.id, Duration::from_secs(60)).await.expect("the batch ends")
}

async fn pulls_of(service: &Service, batch: Uuid) -> Vec<Task> {
    let query = TaskQuery { parent_id: Some(batch), limit: 100, ..Default::default() };
    service.list_tasks(&Caller::system(), query).await.expect("pulls")
}

/// Names of the templates cached on host `name`, sorted.
async fn cached_on(service: &Service, name: &str) -> Vec<String> {
    let hosts = service.list_hosts(&Caller::system()).await.expect("hosts");
    let host = hosts.iter().find(|host| host.name == name).expect("the host");
    let mut names: Vec<String> = host.cached_templates.iter().map(|cached| cached.name.clone()).collect();
    names.sort();
    names
}

async fn host_id(service: &Service, name: &str) -> Uuid {
    let hosts = service.list_hosts(&Caller::system()).await.expect("hosts");
    hosts.iter().find(|host| host.name == name).expect("the host").id
}

#[tokio::test]
async fn a_distribution_pulls_onto_every_host_once_with_a_task_each() {
    let fixture = start(fast(json!({ "hosts": 3 }))).await;
    let service = &fixture.service;
    template_of_size(service, "base", 2).await;

    let batch = distribute(service, "base", &[]).await;
    assert_eq!((batch.kind, batch.state), (TaskKind::Batch, TaskState::Succeeded), "{batch:?}");
    let pulls = pulls_of(service, batch.id).await;
    assert_eq!(pulls.len(), 3);
    for pull in &pulls {
        assert_eq!((pull.kind, pull.state), (TaskKind::TemplatePullToHost, TaskState::Succeeded), "{pull:?}");
        let result = pull.result.as_ref().expect("a result");
        assert_eq!(
            (result["already_cached"].as_bool(), result["bytes_read"].as_u64()),
            (Some(false), Some(2 * MIB as u64))
        );
    }
    assert_eq!(events_of_type(service, "host.template_cached").await.len(), 3);

    // Again: nothing to pull, every host says so.
    let again = distribute(service, "base", &[]).await;
    for pull in pulls_of(service, again.id).await {
        assert_eq!(pull.result.as_ref().expect("a result")["already_cached"], json!(true), "{pull:?}");
    }
    assert_eq!(events_of_type(service, "host.template_cached").await.len(), 3);
}

#[tokio::test]
async fn a_distribution_goes_to_named_hosts_or_a_group_and_refuses_what_it_cannot_do() {
    let fixture = start(fast(json!({ "hosts": 3 }))).await;
    let service = &fixture.service;
    template_of_size(service, "base", 1).await;
    let one = distribute(service, "base", &["sim-1"]).await;
    assert_eq!(pulls_of(service, one.id).await.len(), 1);
    assert_eq!(cached_on(service, "sim-1").await, ["base"]);
    assert!(cached_on(service, "sim-2").await.is_empty());

    group(service, "pool").await;
    let members = [host_id(service, "sim-3").await];
    service.set_group_membership(&Caller::system(), "pool", &members, true).await.expect("member");
    let request = DistributeRequest { group: Some("pool".into()), ..Default::default() };
    let batch = service.distribute_template(&Caller::system(), "base", request).await.expect("starts");
    service.wait_task(&Caller::system(), batch.id, Duration::from_secs(60)).await.expect("ends");
    assert_eq!(cached_on(service, "sim-3").await, ["base"]);

    let unknown = DistributeRequest { hosts: vec!["nowhere".into()], ..Default::default() };
    let refused = service.distribute_template(&Caller::system(), "base", unknown).await;
    assert!(matches!(refused, Err(ServiceError::NotFound { kind: "host", .. })), "{refused:?}");
    let no_tag = DistributeRequest { tag: Some("v9".into()), ..Default::default() };
    let refused = service.distribute_template(&Caller::system(), "base", no_tag).await;
    assert!(matches!(refused, Err(ServiceError::NotFound { .. })), "{refused:?}");
}

#[tokio::test]
async fn cancelling_a_distribution_cancels_the_pulls() {
    let mut config = fast(json!({ "hosts": 2 }));
    config["pull_bytes_per_sec"] = json!(MIB);
    let fixture = start(config).await;
    let service = &fixture.service;
    template_of_size(service, "slow", 8).await;
    let batch =
        service.distribute_template(&Caller::system(), "slow", DistributeRequest::default()).await.expect("starts");
    // Each host's pull reports the bytes delivered so far.
    let started = std::time::Instant::now();
    loop {
        let pulls = pulls_of(service, batch.id).await;
        if pulls.iter().any(|pull| pull.progress > 0.0 && pull.message.as_deref().is_some_and(|m| m.contains("MiB"))) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no progress reported: {pulls:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.cancel_task(&Caller::system(), batch.id).await.expect("cancelled");
    let batch = service.wait_task(&Caller::system(), batch.id, Duration::from_secs(30)).await.expect("ends");
    assert_eq!(batch.state, TaskState::Cancelled, "{batch:?}");
    for pull in pulls_of(service, batch.id).await {
        assert_eq!(pull.state, TaskState::Cancelled, "{pull:?}");
    }
    assert!(cached_on(service, "sim-1").await.is_empty());
}

#[tokio::test]
async fn a_cache_budget_evicts_the_least_recently_used_template_no_instance_uses() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    let budget = Capacity { template_cache_mb: Some(4), ..Default::default() };
    let patch = HostPatch { capacity: Some(budget), ..Default::default() };
    service.update_host(&Caller::system(), host_id(service, "sim-1").await, patch).await.expect("budget set");
    for name in ["first", "second", "third"] {
        template_of_size(service, name, 2).await;
    }
    template_of_size(service, "huge", 5).await;

    distribute(service, "first", &[]).await;
    distribute(service, "second", &[]).await;
    assert_eq!(cached_on(service, "sim-1").await, ["first", "second"]);
    // An instance of `first` makes it recently used and in use.
    let (task, _) = create_and_wait(service, create_request("first")).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");

    // `third` needs room: `second` is the least recently used template not in use.
    let batch = distribute(service, "third", &[]).await;
    assert_eq!(batch.state, TaskState::Succeeded, "{batch:?}");
    assert_eq!(cached_on(service, "sim-1").await, ["first", "third"]);
    let evicted = events_of_type(service, "host.template_evicted").await;
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].data["template"], "second", "{:?}", evicted[0].data);

    // Larger than the whole budget: refused with the reason.
    let batch = distribute(service, "huge", &[]).await;
    assert_eq!(batch.state, TaskState::Failed, "{batch:?}");
    let pull = &pulls_of(service, batch.id).await[0];
    let error = pull.error.as_ref().expect("an error");
    assert_eq!(error.code, "cache_budget_exceeded", "{error:?}");
    assert!(error.message.contains("larger than the template cache budget"), "{error:?}");

    // Everything cached is in use: nothing can go.
    let (task, _) = create_and_wait(service, create_request("third")).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    let batch = distribute(service, "second", &[]).await;
    let pull = &pulls_of(service, batch.id).await[0];
    assert!(pull.error.as_ref().expect("an error").message.contains("in use"), "{pull:?}");
    assert_eq!(cached_on(service, "sim-1").await, ["first", "third"]);
}

#[tokio::test]
async fn a_new_tag_pulled_onto_a_host_with_the_previous_one_moves_only_the_changed_chunks() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template_of_size(service, "base", 16).await;
    distribute(service, "base", &[]).await;

    // v2 differs from v1 in two chunks, one of them the last.
    let mut image = vec![b"base".len() as u8; 16 * MIB];
    image[3 * MIB..4 * MIB].fill(0xaa);
    image[15 * MIB + 10] = 0xbb;
    let version = NewTemplateVersion { tag: "v2".into(), description: String::new(), size_bytes: 0 };
    service.create_template_version(&Caller::system(), "base", version).await.expect("v2");
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(image))]);
    service
        .push_template_file(&Caller::system(), "base", 2, "disk", PushOptions::default(), body)
        .await
        .expect("pushed");

    let batch = distribute(service, "base", &["sim-1"]).await;
    let pull = &pulls_of(service, batch.id).await[0];
    assert_eq!(pull.state, TaskState::Succeeded, "{pull:?}");
    let result = pull.result.as_ref().expect("a result");
    assert_eq!(result["bytes_read"].as_u64(), Some(2 * MIB as u64), "only the two changed chunks: {result}");
    let cached = events_of_type(service, "host.template_cached").await;
    assert_eq!(cached.last().expect("cached").data["image_bytes_read"], json!(2 * MIB), "{cached:?}");
}

#[tokio::test]
async fn a_template_is_removed_from_every_host_that_caches_it_but_not_where_it_is_used() {
    let fixture = start(fast(json!({ "hosts": 3 }))).await;
    let service = &fixture.service;
    template_of_size(service, "base", 1).await;
    distribute(service, "base", &[]).await;
    let mut request = create_request("base");
    request.host_id = Some(host_id(service, "sim-2").await);
    let (task, _) = create_and_wait(service, request).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");

    let batch = service.remove_template_from_all_hosts(&Caller::system(), "base", None).await.expect("starts");
    assert_eq!(batch.input["skipped"][0]["host"], "sim-2", "{:?}", batch.input);
    let batch = service.wait_task(&Caller::system(), batch.id, Duration::from_secs(60)).await.expect("ends");
    assert_eq!(batch.state, TaskState::Succeeded, "{batch:?}");
    assert_eq!(pulls_of(service, batch.id).await.len(), 2);
    assert!(cached_on(service, "sim-1").await.is_empty());
    assert_eq!(cached_on(service, "sim-2").await, ["base"]);
    assert!(cached_on(service, "sim-3").await.is_empty());

    let again = service.remove_template_from_all_hosts(&Caller::system(), "base", None).await;
    assert!(matches!(&again, Err(ServiceError::Conflict(message)) if message.contains("in use")), "{again:?}");
}
