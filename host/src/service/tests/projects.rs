//! Projects: isolation between them, quotas checked at create time, usage.

use std::time::Duration;

use super::{create_and_wait, create_request, fast, start, template};
use crate::auth::identity::Quota;
use crate::auth::{AdminToken, Caller};
use crate::model::{Arch, NewEvent, TaskState};
use crate::service::{CreateInstances, NewProject, NewRoleBinding, NewTemplate, NewUser, ProjectPatch, ServiceError};
use crate::store;

fn quota(max_instances: Option<u64>, max_vcpu: Option<u64>, max_template_bytes: Option<u64>) -> Quota {
    Quota { max_instances, max_vcpu, max_ram_mb: None, max_template_bytes }
}

#[tokio::test]
async fn quotas_refuse_what_would_exceed_them_and_usage_counts_live_instances() {
    let fixture = start(fast(serde_json::json!({ "hosts": 2 }))).await;
    let service = &fixture.service;
    let admin = Caller::admin("test", "");
    service
        .create_project(
            &admin,
            NewProject { name: "small".into(), description: String::new(), quota: quota(Some(2), Some(6), None) },
        )
        .await
        .expect("project");
    service
        .create_template(
            &admin,
            NewTemplate {
                name: "base".into(),
                arch: Arch::Amd64,
                description: String::new(),
                project: Some("small".into()),
            },
        )
        .await
        .expect("template");
    let request = |count: u32, vcpu: u32| CreateInstances {
        project: Some("small".into()),
        count: Some(count),
        vcpu: Some(vcpu),
        ..create_request("base")
    };

    let too_many = service.create_instances(&admin, request(3, 1), None).await;
    assert!(
        matches!(&too_many, Err(ServiceError::QuotaExceeded(message)) if message.contains("max_instances is 2: 0 used, 3 more requested")),
        "{too_many:?}"
    );
    let first = service.create_instances(&admin, request(1, 4), None).await.expect("fits");
    let too_big = service.create_instances(&admin, request(1, 4), None).await;
    assert!(
        matches!(&too_big, Err(ServiceError::QuotaExceeded(message)) if message.contains("max_vcpu is 6: 4 used, 4 more requested")),
        "{too_big:?}"
    );
    service.create_instances(&admin, request(1, 2), None).await.expect("fits exactly");
    let (_, usage) = service.project_usage(&admin, "small").await.expect("usage");
    assert_eq!((usage.instances, usage.vcpu), (2, 6));
    let full = service.create_instances(&admin, request(1, 1), None).await;
    assert!(matches!(full, Err(ServiceError::QuotaExceeded(_))), "{full:?}");

    // Deleting frees the quota once the instance is terminated.
    let first = service.wait_task(&admin, first.id, Duration::from_secs(30)).await.expect("created");
    let delete = service.delete_instance(&admin, first.object_id.expect("instance")).await.expect("delete");
    let delete = service.wait_task(&admin, delete.id, Duration::from_secs(30)).await.expect("deleted");
    assert_eq!(delete.state, TaskState::Succeeded);
    service.create_instances(&admin, request(1, 4), None).await.expect("room again");

    // Raising the quota lets more in; other projects are not limited by it.
    service
        .update_project(&admin, "small", ProjectPatch { description: None, quota: Some(quota(Some(10), None, None)) })
        .await
        .expect("raise");
    service.create_instances(&admin, request(1, 8), None).await.expect("unlimited vcpu now");
    template(service, "elsewhere").await;
    service
        .create_instances(&admin, CreateInstances { count: Some(5), ..create_request("elsewhere") }, None)
        .await
        .expect("the default project has no quota");
}

#[tokio::test]
async fn members_see_and_touch_only_their_projects() {
    let fixture = start(fast(serde_json::json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    let admin = Caller::admin("test", "");
    for name in ["red", "blue"] {
        service
            .create_project(
                &admin,
                NewProject { name: name.into(), description: String::new(), quota: Quota::default() },
            )
            .await
            .expect("project");
        service
            .create_template(
                &admin,
                NewTemplate {
                    name: format!("{name}-base"),
                    arch: Arch::Amd64,
                    description: String::new(),
                    project: Some(name.into()),
                },
            )
            .await
            .expect("template");
    }
    let blue_task = service
        .create_instances(&admin, CreateInstances { project: Some("blue".into()), ..create_request("blue-base") }, None)
        .await
        .expect("blue instance");
    let blue_instance = blue_task.object_id.expect("instance");
    service
        .create_user(
            &admin,
            NewUser {
                name: "rita".into(),
                password: Some("long enough".into()),
                display_name: String::new(),
                email: String::new(),
                groups: Vec::new(),
            },
        )
        .await
        .expect("user");
    service
        .grant_role(
            &admin,
            NewRoleBinding {
                role: "member".into(),
                user: Some("rita".into()),
                group: None,
                project: Some("red".into()),
                resource_ids: None,
            },
        )
        .await
        .expect("member of red");
    let credentials = service.credentials(AdminToken::new("t"));
    let rita = credentials.verify_password("rita", "long enough", "").await.expect("rita");
    let rita = service.caller(rita, "test", "").await.expect("caller");

    // Red is hers, blue does not exist for her.
    let templates: Vec<String> =
        service.list_templates(&rita).await.expect("templates").into_iter().map(|template| template.name).collect();
    assert_eq!(templates, vec!["red-base".to_owned()]);
    assert!(matches!(service.resolve_template(&rita, "blue-base").await, Err(ServiceError::NotFound { .. })));
    assert!(matches!(service.get_instance(&rita, blue_instance).await, Err(ServiceError::NotFound { .. })));
    assert!(matches!(service.delete_instance(&rita, blue_instance).await, Err(ServiceError::NotFound { .. })));
    assert!(matches!(service.get_task(&rita, blue_task.id).await, Err(ServiceError::NotFound { .. })));
    let projects: Vec<String> =
        service.list_projects(&rita).await.expect("projects").into_iter().map(|project| project.name).collect();
    assert_eq!(projects, vec!["red".to_owned()]);
    let into_blue = service
        .create_instances(&rita, CreateInstances { project: Some("blue".into()), ..create_request("red-base") }, None)
        .await;
    assert!(matches!(into_blue, Err(ServiceError::NotFound { kind: "project", .. })), "{into_blue:?}");
    // The default project is not hers either.
    let into_default = service.create_instances(&rita, create_request("red-base"), None).await;
    assert!(
        matches!(&into_default, Err(ServiceError::Forbidden(message)) if message.contains("instance:create")),
        "{into_default:?}"
    );

    // In red she runs instances, and sees them and their tasks.
    let task = service
        .create_instances(&rita, CreateInstances { project: Some("red".into()), ..create_request("red-base") }, None)
        .await
        .expect("red instance");
    assert!(service.get_task(&rita, task.id).await.is_ok());
    let listed = service.list_instances(&rita, Default::default()).await.expect("instances");
    assert_eq!(
        listed.items.iter().map(|instance| instance.id).collect::<Vec<_>>(),
        vec![task.object_id.expect("instance")]
    );
    // A member reads nodes but does not reconfigure them, nor manage projects.
    assert!(!service.list_hosts(&rita).await.expect("hosts").is_empty());
    let host = service.list_hosts(&rita).await.expect("hosts")[0].id;
    let change = service.update_host(&rita, host, Default::default()).await;
    assert!(
        matches!(&change, Err(ServiceError::Forbidden(message)) if message.contains("node:change_config")),
        "{change:?}"
    );
    let new_project = service
        .create_project(&rita, NewProject { name: "mine".into(), description: String::new(), quota: Quota::default() })
        .await;
    assert!(matches!(new_project, Err(ServiceError::Forbidden(_))));
    assert!(matches!(service.delete_project(&admin, "red").await, Err(ServiceError::Conflict(_))), "red is not empty");
}

#[tokio::test]
async fn creating_instances_needs_template_pull_and_node_create_instance() {
    let fixture = start(fast(serde_json::json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    let admin = Caller::admin("test", "");
    template(service, "base").await;
    service
        .create_user(
            &admin,
            NewUser {
                name: "ivan".into(),
                password: Some("long enough".into()),
                display_name: String::new(),
                email: String::new(),
                groups: Vec::new(),
            },
        )
        .await
        .expect("user");
    let grant = |permissions: &[&str], name: &str| crate::service::NewRole {
        name: name.into(),
        description: String::new(),
        permissions: permissions.iter().map(|permission| (*permission).to_owned()).collect(),
    };
    let credentials = service.credentials(AdminToken::new("t"));
    let ivan = credentials.verify_password("ivan", "long enough", "").await.expect("ivan");
    let attempt = |role: &'static str, permissions: &'static [&'static str]| {
        let (service, admin, ivan) = (service, admin.clone(), ivan.clone());
        async move {
            service.create_role(&admin, grant(permissions, role)).await.expect("role");
            let binding = NewRoleBinding {
                role: role.into(),
                user: Some("ivan".into()),
                group: None,
                project: None,
                resource_ids: None,
            };
            service.grant_role(&admin, binding).await.expect("grant");
            let caller = service.caller(ivan, "test", "").await.expect("caller");
            service.create_instances(&caller, create_request("base"), None).await
        }
    };
    let no_pull = attempt("creator", &["instance:create", "template:list"]).await;
    assert!(
        matches!(&no_pull, Err(ServiceError::Forbidden(message)) if message.contains("template:pull")),
        "{no_pull:?}"
    );
    let no_node = attempt("puller", &["template:pull"]).await;
    assert!(
        matches!(&no_node, Err(ServiceError::Forbidden(message)) if message.contains("node:create_instance")),
        "{no_node:?}"
    );
    attempt("placer", &["node:create_instance"]).await.expect("all three granted");
}

/// A create that checks nothing under the write lock commits after reading its project: should
/// the project be deleted in between, the store refuses the instance, and nothing of the
/// batch is written.
#[tokio::test]
async fn the_store_refuses_an_instance_of_a_project_deleted_before_its_commit() {
    let fixture = start(fast(serde_json::json!({ "hosts": 1 }))).await;
    let service = &fixture.service;
    let admin = Caller::admin("test", "");
    template(service, "base").await;
    let (_, existing) = create_and_wait(service, create_request("base")).await;
    let project = service
        .create_project(
            &admin,
            NewProject { name: "brief".into(), description: String::new(), quota: Quota::default() },
        )
        .await
        .expect("project");
    let store = service.store();
    let mut instance = store::instances::get(&mut store.reader().await.expect("reader"), existing)
        .await
        .expect("read")
        .expect("the instance");
    instance.id = uuid::Uuid::now_v7();
    instance.project_id = project.id;
    let stage = |instance: &crate::model::Instance| {
        let mut batch = store.batch();
        store::instances::defer_insert(batch.writes(), instance);
        batch.append_event(NewEvent::new("instance.created", "instance", instance.id));
        batch
    };
    let staged = stage(&instance);
    service.delete_project(&admin, "brief").await.expect("an empty project is deleted");
    let refused = staged.commit().await.expect_err("the project is gone");
    assert!(store::instances::is_missing_project(&refused), "{refused:?}");
    let mut reader = store.reader().await.expect("reader");
    assert!(store::instances::get(&mut reader, instance.id).await.expect("read").is_none(), "no instance");
    let events = store::events::list_after(&mut reader, 0, 10_000).await.expect("events");
    assert!(!events.iter().any(|event| event.object_id == instance.id.to_string()), "no event of it");

    // The same instance in a project that exists is written.
    instance.project_id = crate::auth::identity::DEFAULT_PROJECT_ID;
    stage(&instance).commit().await.expect("committed");
    assert!(store::instances::get(&mut reader, instance.id).await.expect("read").is_some());
}
