//! Templates cached on hosts: removing a template (every cached version, or one) from a host's
//! cache. The request is checked at the edge (template, host, cached there, not in use by an
//! instance on that host) and answered with a task; the task calls the provider's
//! `remove-template` for each version, then updates the host's cached-template list and appends
//! one `host.template_removed` event per version in the same transaction. Placement reads that
//! list, so a removed template no longer draws instances to the host.

use serde_json::{Value, json};
use uuid::Uuid;

use super::distribution::cached_template_ref;
use super::lifecycle::{Step, StepResult, input_uuid};
use super::providers::{is_not_found, task_error_from_call};
use super::{Service, ServiceError, ServiceResult};
use crate::auth::Caller;
use crate::auth::permissions::Resource;
use crate::model::{CachedTemplate, Host, InstanceState, NewEvent, Task, TaskKind, TaskState, Template};
use crate::store;
use crate::tasks::NewTask;

impl Service {
    /// Removes template `reference` (id or name) from the cache of host `host` (id, name or
    /// `provider/name`): `version` only, or every version cached there. A task.
    pub async fn remove_template_from_host(
        &self,
        caller: &Caller,
        reference: &str,
        host: &str,
        version: Option<u32>,
    ) -> ServiceResult<Task> {
        let template = self.resolve_template(caller, reference).await?;
        let host_id = self.resolve_host_id(caller, host).await?;
        self.require_global(caller, Resource::Node, "delete_template", Some(&host_id.to_string())).await?;
        let mut transaction = self.store().begin().await?;
        let host =
            store::hosts::get(&mut transaction, host_id).await?.ok_or_else(|| ServiceError::not_found("host", host))?;
        let versions = cached_versions(&host, &template, version);
        if versions.is_empty() {
            return Err(not_cached(&template, version, &host));
        }
        check_not_in_use(&mut transaction, &template, &versions, &host).await?;
        let active = store::tasks::list(
            &mut transaction,
            &store::tasks::TaskFilter {
                states: vec![TaskState::Pending, TaskState::Running],
                object_id: Some(host.id),
                ..Default::default()
            },
        )
        .await?;
        if let Some(active) = active.iter().find(|task| task.kind == TaskKind::TemplateRemoveFromHost) {
            return Err(ServiceError::Conflict(format!(
                "host '{}' has a template removal in progress (task {}); wait for it or cancel it",
                host.name, active.id
            )));
        }
        let input = json!({
            "host_id": host.id,
            "template_id": template.id,
            "template": template.name,
            "versions": versions,
        });
        let task = self
            .task_engine()
            .create(transaction.writes(), NewTask::on_object(TaskKind::TemplateRemoveFromHost, host.id, input, caller));
        transaction.commit().await?;
        self.task_engine().wake();
        Ok(task)
    }

    /// Removes template `reference` (`version` only, or every version) from every host that
    /// caches it: a batch with one removal task per host. Hosts where an instance uses it are
    /// left alone and named in the batch's input (`skipped`).
    pub async fn remove_template_from_all_hosts(
        &self,
        caller: &Caller,
        reference: &str,
        version: Option<u32>,
    ) -> ServiceResult<Task> {
        let template = self.resolve_template(caller, reference).await?;
        let mut transaction = self.store().begin().await?;
        let hosts = store::hosts::list(&mut transaction).await?;
        let mut targets = Vec::new();
        let mut skipped = Vec::new();
        for host in hosts {
            let versions = cached_versions(&host, &template, version);
            if versions.is_empty() {
                continue;
            }
            self.require_global(caller, Resource::Node, "delete_template", Some(&host.id.to_string())).await?;
            match check_not_in_use(&mut transaction, &template, &versions, &host).await {
                Ok(()) => targets.push((host, versions)),
                Err(error) => {
                    skipped.push(json!({ "host_id": host.id, "host": host.name, "reason": error.to_string() }))
                }
            }
        }
        if targets.is_empty() && skipped.is_empty() {
            return Err(ServiceError::not_found("cached template", &template.name));
        }
        if targets.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "template '{}' is in use on every host that caches it",
                template.name
            )));
        }
        let input = json!({
            "operation": "template.remove_from_hosts", "template": template.name,
            "hosts": targets.iter().map(|(host, _)| host.id).collect::<Vec<_>>(), "skipped": skipped,
        });
        let batch = self.task_engine().create(transaction.writes(), NewTask::batch(template.id, input, caller));
        for (host, versions) in targets {
            let input = json!({
                "host_id": host.id, "host": host.name, "template_id": template.id, "template": template.name,
                "versions": versions,
            });
            let removal =
                NewTask::on_object(TaskKind::TemplateRemoveFromHost, host.id, input, caller).in_batch(batch.id);
            self.task_engine().create(transaction.writes(), removal);
        }
        transaction.commit().await?;
        self.task_engine().wake();
        Ok(batch)
    }

    // ----- what the task does -----

    /// Removes each requested version still cached on the host through its driver, then
    /// records what was removed. A version the driver no longer has counts as removed (an
    /// earlier attempt of this task, or the hypervisor lost it).
    pub(super) async fn run_remove_template_from_host(&self, host_id: Uuid, task: &Task) -> StepResult<Value> {
        let template_id = input_uuid(task, "template_id")?;
        let requested: Vec<u32> = task
            .input
            .get("versions")
            .and_then(Value::as_array)
            .map(|versions| versions.iter().filter_map(Value::as_u64).map(|number| number as u32).collect())
            .unwrap_or_default();
        let template = self.load_template(&template_id.to_string()).await?;
        let host = self.load_host(host_id).await?;
        let driver = self.providers().driver(&host.provider)?.clone();
        let cached: Vec<CachedTemplate> = host
            .cached_templates
            .iter()
            .filter(|cached| cached.name == template.name && requested.contains(&cached.version))
            .cloned()
            .collect();
        let versions: Vec<u32> = cached.iter().map(|cached| cached.version).collect();
        check_not_in_use(&mut *self.store().reader().await?, &template, &versions, &host).await?;

        let mut removed = Vec::new();
        let mut failed = None;
        for cached in &cached {
            match driver.remove_template(&host.name, cached_template_ref(Some(&template), cached)).await {
                Ok(()) => removed.push(cached.version),
                Err(error) if is_not_found(&error) => removed.push(cached.version),
                Err(error) => {
                    failed = Some(task_error_from_call("remove-template", &error));
                    break;
                }
            }
        }
        self.record_removed_templates(host.id, &template, &removed).await?;
        match failed {
            Some(error) => Err(Step::Failed(error)),
            None => Ok(json!({ "host_id": host.id, "template_id": template.id, "removed_versions": removed })),
        }
    }

    /// Drops the removed versions from the host's cached templates, with one
    /// `host.template_removed` event each, in one transaction.
    async fn record_removed_templates(&self, host_id: Uuid, template: &Template, removed: &[u32]) -> StepResult<()> {
        if removed.is_empty() {
            return Ok(());
        }
        let mut transaction = self.store().begin().await?;
        let mut host = store::hosts::get(&mut transaction, host_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("host", host_id))?;
        for &version in removed {
            let before = host.cached_templates.len();
            host.cached_templates.retain(|cached| !(cached.name == template.name && cached.version == version));
            if host.cached_templates.len() != before {
                transaction.append_event(NewEvent::new("host.template_removed", "host", host_id).data(json!({
                    "template": template.name,
                    "template_id": template.id,
                    "version": version,
                })));
            }
        }
        host.updated_at = store::now();
        store::hosts::update_cached_templates(&mut transaction, &host).await?;
        transaction.commit().await?;
        Ok(())
    }
}

/// The versions of `template` cached on `host`: `version` only, or all of them.
fn cached_versions(host: &Host, template: &Template, version: Option<u32>) -> Vec<u32> {
    let mut versions: Vec<u32> = host
        .cached_templates
        .iter()
        .filter(|cached| cached.name == template.name && version.is_none_or(|wanted| cached.version == wanted))
        .map(|cached| cached.version)
        .collect();
    versions.sort_unstable();
    versions.dedup();
    versions
}

/// `not found`, naming the template (and version) and the host.
fn not_cached(template: &Template, version: Option<u32>, host: &Host) -> ServiceError {
    let template = match version {
        Some(version) => format!("{}:{version}", template.name),
        None => template.name.clone(),
    };
    // Reads "cached template '<template>' on host '<host>' not found".
    ServiceError::NotFound { kind: "cached template", id: format!("{template}' on host '{}", host.name) }
}

/// `conflict` when an instance on `host` that is not terminated uses one of `versions`.
async fn check_not_in_use(
    connection: &mut sqlx::SqliteConnection,
    template: &Template,
    versions: &[u32],
    host: &Host,
) -> ServiceResult<()> {
    let instances = store::instances::list(
        connection,
        &store::instances::InstanceFilter {
            excluded_states: vec![InstanceState::Terminated],
            host_id: Some(host.id),
            template_id: Some(template.id),
            ..Default::default()
        },
    )
    .await?;
    let user = instances.iter().find(|instance| versions.contains(&instance.template_version.unwrap_or(0)));
    match user {
        Some(instance) => Err(ServiceError::Conflict(format!(
            "template '{}' v{} is still used on host '{}' by instance '{}' ({}, {})",
            template.name,
            instance.template_version.unwrap_or(0),
            host.name,
            instance.name,
            instance.id,
            instance.state
        ))),
        None => Ok(()),
    }
}
