//! Save image on the simulated driver: a running instance's disk becomes a new tag of an
//! existing template (with revert-before-push) or of a new template; the instance is deleted
//! afterwards unless kept; requests that cannot work are refused up front.

use serde_json::json;

use super::{create_and_wait, create_request, events_of_type, fast, start};
use crate::auth::Caller;
use crate::model::{DiskFormat, InstanceState, TaskState};
use crate::service::{NewTemplateVersion, PushOptions, SaveImageRequest, Service, ServiceError};

fn save(template: Option<&str>, new_template: Option<&str>, tag: &str) -> SaveImageRequest {
    SaveImageRequest {
        template: template.map(str::to_owned),
        new_template: new_template.map(str::to_owned),
        project: None,
        tag: tag.into(),
        description: "saved".into(),
        suspend: true,
        revert_before_push: false,
        revert_tag: None,
        keep_instance: false,
    }
}

/// A template `name` with a pushed `v1` of `mib` MiB.
async fn template_with_image(service: &Service, name: &str, mib: usize) {
    super::template(service, name).await;
    let version = NewTemplateVersion { tag: "v1".into(), description: String::new(), size_bytes: 0 };
    service.create_template_version(&Caller::system(), name, version).await.expect("version");
    let mut image = vec![7_u8; mib << 20];
    image[..4].copy_from_slice(b"QFI\xfb");
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(image))]);
    service.push_template_file(&Caller::system(), name, 1, "disk", PushOptions::default(), body).await.expect("pushed");
}

async fn run(service: &Service, id: uuid::Uuid, request: SaveImageRequest) -> crate::model::Task {
    let task = service.save_instance_image(&Caller::system(), id, request).await.expect("accepted");
    service.wait_task(&Caller::system(), task.id, std::time::Duration::from_secs(60)).await.expect("ends")
}

#[tokio::test]
async fn a_running_instance_becomes_a_new_tag_and_is_deleted_afterwards() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template_with_image(service, "base", 3).await;
    let (created, id) = create_and_wait(service, create_request("base")).await;
    assert_eq!(created.state, TaskState::Succeeded, "{created:?}");

    let task = run(service, id, save(Some("base"), None, "v2")).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    let result = task.result.expect("a result");
    assert_eq!((result["version"].as_u64(), result["size_bytes"].as_u64()), (Some(2), Some(3 << 20)), "{result}");
    let template = service.resolve_template(&Caller::system(), "base").await.expect("template");
    let saved = &template.versions[1];
    assert_eq!((saved.tag.as_str(), saved.description.as_str(), saved.format), ("v2", "saved", DiskFormat::Qcow2));
    assert_eq!(service.get_instance(&Caller::system(), id).await.expect("instance").state, InstanceState::Terminated);
    let states: Vec<String> = events_of_type(service, "instance.state_changed")
        .await
        .iter()
        .filter_map(|event| event.data["to"].as_str().map(str::to_owned))
        .collect();
    assert!(states.contains(&"suspended".to_owned()), "suspended before the capture: {states:?}");

    // The saved tag is a template like any other: an instance boots from it.
    let (again, _) = create_and_wait(service, create_request("base")).await;
    assert_eq!(again.state, TaskState::Succeeded, "{again:?}");
}

#[tokio::test]
async fn save_to_a_new_template_keeps_the_instance_when_asked_and_reverts_before_push() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template_with_image(service, "base", 1).await;
    let (_, id) = create_and_wait(service, create_request("base")).await;

    let mut request = save(None, Some("golden"), "first");
    request.keep_instance = true;
    request.suspend = false;
    let task = run(service, id, request).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    let golden = service.resolve_template(&Caller::system(), "golden").await.expect("the new template");
    assert_eq!(golden.versions.len(), 1);
    assert_eq!(service.get_instance(&Caller::system(), id).await.expect("kept").state, InstanceState::Stopped);

    // Saving again with revert-before-push replaces the latest tag.
    let mut request = save(Some("golden"), None, "second");
    request.revert_before_push = true;
    request.keep_instance = true;
    let task = run(service, id, request).await;
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    let golden = service.resolve_template(&Caller::system(), "golden").await.expect("template");
    let tags: Vec<&str> = golden.versions.iter().map(|version| version.tag.as_str()).collect();
    assert_eq!(tags, ["second"]);
}

#[tokio::test]
async fn save_requests_that_cannot_work_are_refused_up_front() {
    let fixture = start(fast(json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    template_with_image(service, "base", 1).await;
    let (_, id) = create_and_wait(service, create_request("base")).await;
    let check = |outcome: Result<crate::model::Task, ServiceError>, expected: &str| match outcome {
        Err(error) => assert!(error.to_string().contains(expected), "{error:?} should mention {expected:?}"),
        Ok(task) => panic!("expected a refusal mentioning {expected:?}, got {task:?}"),
    };
    let system = Caller::system();
    check(service.save_instance_image(&system, id, save(Some("base"), None, "v1")).await, "already has tag 'v1'");
    check(service.save_instance_image(&system, id, save(None, Some("base"), "x")).await, "already exists");
    check(service.save_instance_image(&system, id, save(None, None, "x")).await, "exactly one of");
    check(service.save_instance_image(&system, id, save(Some("base"), Some("n"), "x")).await, "exactly one of");
    check(service.save_instance_image(&system, id, save(Some("missing"), None, "x")).await, "not found");
    check(service.save_instance_image(&system, id, save(Some("base"), None, "bad tag")).await, "tag 'bad tag'");
    check(service.save_instance_image(&system, uuid::Uuid::now_v7(), save(Some("base"), None, "x")).await, "not found");
}
