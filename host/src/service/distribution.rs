//! Templates onto hosts: distribution (a batch task with one pull per host, each with its own
//! progress and error, cancelable), the pull every instance creation needs, and each host's
//! template cache budget with least-recently-used eviction.
//!
//! A pull first makes room: while the host's cached templates and the new one exceed its
//! `capacity.template_cache_mb`, the least recently used template that no live instance on the
//! host uses is removed through the driver (`host.template_evicted`). The driver reads the image
//! through a host-provided stream from the registry; the host reports the bytes it delivered as
//! the task's progress.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::lifecycle::{Step, StepResult, failure, input_uuid};
use super::providers::{cached_templates_from_driver, disk_format_to_driver, is_not_found, task_error_from_call};
use super::{Service, ServiceError, ServiceResult};
use crate::auth::Caller;
use crate::auth::permissions::Resource;
use crate::model::{CachedTemplate, Host, HostState, NewEvent, Task, TaskKind, Template, TemplateVersion};
use crate::plugins::driver_types as driver;
use crate::plugins::{ByteSource, Driver, ImageDelta};
use crate::store;
use crate::tasks::{NewTask, TaskContext};

/// How precisely a cached template's last use is recorded.
const LAST_USE_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// How often a running pull reports the bytes delivered.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// `POST /v1/templates/{id}/distribute`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DistributeRequest {
    /// The tag to distribute (default: the latest version).
    #[serde(default)]
    pub tag: Option<String>,
    /// Hosts (id, name or `provider/name`); with neither `hosts` nor `group`, every active host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Every host of this node group.
    #[serde(default)]
    pub group: Option<String>,
}

/// What a pull onto a host did.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Pulled {
    pub(super) already_cached: bool,
    pub(super) bytes_read: u64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Service {
    /// Pulls a version of a template onto hosts: a batch task (`template.distribute`) with one
    /// child task per host (`template.pull_to_host`). Cancelling the batch cancels the pulls.
    pub async fn distribute_template(
        &self,
        caller: &Caller,
        reference: &str,
        request: DistributeRequest,
    ) -> ServiceResult<Task> {
        let template = self.authorized_template(caller, reference, "pull").await?;
        let version = match &request.tag {
            Some(tag) => template
                .versions
                .iter()
                .find(|version| &version.tag == tag)
                .ok_or_else(|| ServiceError::not_found("template version", format!("{}:{tag}", template.name)))?,
            None => template
                .latest_version()
                .ok_or_else(|| ServiceError::Conflict(format!("template '{}' has no versions", template.name)))?,
        };
        let hosts = self.distribution_targets(caller, &request).await?;
        if hosts.is_empty() {
            return Err(ServiceError::Invalid("no active host to distribute to".into()));
        }
        for host in &hosts {
            self.require_global(caller, Resource::Node, "distribute", Some(&host.id.to_string())).await?;
            if host.arch != template.arch {
                return Err(ServiceError::Invalid(format!(
                    "host '{}' is {} and template '{}' is {}",
                    host.name, host.arch, template.name, template.arch
                )));
            }
        }
        let mut transaction = self.store().begin().await?;
        let input = json!({
            "operation": "template.distribute", "template": template.name, "version": version.number,
            "hosts": hosts.iter().map(|host| host.id).collect::<Vec<_>>(),
        });
        let batch = self.task_engine().create(transaction.writes(), NewTask::batch(template.id, input, caller));
        for host in &hosts {
            let input = json!({
                "host_id": host.id, "host": host.name, "template_id": template.id, "template": template.name,
                "version": version.number,
            });
            let pull = NewTask::on_object(TaskKind::TemplatePullToHost, host.id, input, caller).in_batch(batch.id);
            self.task_engine().create(transaction.writes(), pull);
        }
        transaction.commit().await?;
        self.task_engine().wake();
        Ok(batch)
    }

    /// The hosts a distribution goes to, each once.
    async fn distribution_targets(&self, caller: &Caller, request: &DistributeRequest) -> ServiceResult<Vec<Host>> {
        let mut ids = Vec::new();
        for reference in &request.hosts {
            ids.push(self.resolve_host_id(caller, reference).await?);
        }
        if let Some(group) = &request.group {
            ids.extend(self.resolve_group(caller, group).await?.hosts);
        }
        let hosts = self.load_hosts().await?;
        if request.hosts.is_empty() && request.group.is_none() {
            return Ok(hosts.into_iter().filter(|host| host.state == HostState::Active).collect());
        }
        let mut targets: Vec<Host> = hosts.into_iter().filter(|host| ids.contains(&host.id)).collect();
        targets.sort_by_key(|host| ids.iter().position(|id| *id == host.id));
        Ok(targets)
    }

    /// The task of one host in a distribution.
    pub(super) async fn run_pull_to_host(
        &self,
        host_id: Uuid,
        task: &Task,
        context: &TaskContext,
    ) -> StepResult<Value> {
        let template_id = input_uuid(task, "template_id")?;
        let number = task.input.get("version").and_then(Value::as_u64).unwrap_or(0) as u32;
        let template = self.load_template(&template_id.to_string()).await?;
        let version =
            template.versions.iter().find(|version| version.number == number).ok_or_else(|| {
                Step::Failed(failure("not_found", &format!("{}:{number} was removed", template.name)))
            })?;
        let host = self.load_host(host_id).await?;
        let driver = self.providers().driver(&host.provider)?.clone();
        let pulled = self.ensure_cached(&host, &driver, &template, Some(version), Some(context)).await?;
        Ok(json!({
            "host_id": host.id, "host": host.name, "template": template.name, "version": number,
            "already_cached": pulled.already_cached, "bytes_read": pulled.bytes_read,
        }))
    }

    /// Makes sure `version` of `template` (a template without versions: version 0, no image) is
    /// cached on `host`: nothing to do when it is, else room is made within the host's budget
    /// and the driver pulls it. Progress (bytes the driver read) goes to `context`.
    pub(super) async fn ensure_cached(
        &self,
        host: &Host,
        driver: &Driver,
        template: &Template,
        version: Option<&TemplateVersion>,
        context: Option<&TaskContext>,
    ) -> StepResult<Pulled> {
        let template_ref = template_ref(template, version);
        let cached = host
            .cached_templates
            .iter()
            .any(|cached| cached.name == template.name && cached.version == template_ref.version);
        if cached || !driver.capabilities().templates {
            // Recorded to the minute: a burst of creations from one template costs one write.
            let recently_used = host.cached_templates.iter().any(|cached| {
                cached.name == template.name
                    && cached.version == template_ref.version
                    && cached.last_used_at.is_some_and(|used| store::now() - used < LAST_USE_RESOLUTION)
            });
            if cached && !recently_used {
                self.mark_template_used(host.id, &template.name, template_ref.version).await?;
            }
            return Ok(Pulled { already_cached: true, bytes_read: 0 });
        }
        let (image, delta) = match version {
            Some(version) => {
                self.make_room(host, driver, template, version).await?;
                let delta = match self.delta_base(host, driver, template, version) {
                    Some(base) => self.template_image_delta(template, base, version).await?,
                    None => None,
                };
                (self.template_image_source(template, version).await?, delta)
            }
            None => (ByteSource::empty(), None),
        };
        // The driver reads one or the other; progress counts whichever it reads.
        let size = image.size();
        let (delivered, delta_delivered) = (image.delivered(), delta.as_ref().map(ImageDelta::delivered));
        let delta_size = delta.as_ref().map_or(0, ImageDelta::changed_size);
        let read = move || delivered.get() + delta_delivered.as_ref().map_or(0, |bytes| bytes.get());
        let pull = driver.pull_template(&host.name, template_ref, image, delta);
        let pulled = match context {
            Some(context) => {
                let mut pull = std::pin::pin!(pull);
                loop {
                    tokio::select! {
                        pulled = &mut pull => break pulled,
                        () = tokio::time::sleep(PROGRESS_INTERVAL) => {
                            let read = read();
                            // A delta pull reads the changes only.
                            let total = if delta_size > 0 && read <= delta_size && size > delta_size { delta_size } else { size };
                            let fraction = if total == 0 { 0.0 } else { read as f32 / total as f32 };
                            context.report_progress(fraction, &format!("{:.1} of {:.1} MiB", mib(read), mib(total)));
                        }
                        () = context.cancel.cancelled() => return Err(Step::Cancelled),
                    }
                }
            }
            None => pull.await,
        }
        .map_err(|error| Step::Failed(task_error_from_call("pull-template", &error)))?;
        let bytes_read = read();
        self.record_cached_template(host.id, pulled, bytes_read).await?;
        Ok(Pulled { already_cached: false, bytes_read })
    }

    /// The version a delta pull of `version` builds on: the newest other version of the
    /// template the host has cached, when its driver does delta pulls.
    fn delta_base<'a>(
        &self,
        host: &Host,
        driver: &Driver,
        template: &'a Template,
        version: &TemplateVersion,
    ) -> Option<&'a TemplateVersion> {
        if !driver.capabilities().delta_pull {
            return None;
        }
        template
            .versions
            .iter()
            .filter(|candidate| candidate.number != version.number && candidate.disk().is_some())
            .filter(|candidate| {
                host.cached_templates
                    .iter()
                    .any(|cached| cached.name == template.name && cached.version == candidate.number)
            })
            .max_by_key(|candidate| candidate.number)
    }

    /// Evicts least recently used templates no live instance on the host uses until `version`
    /// fits the host's template cache budget; fails when it cannot.
    async fn make_room(
        &self,
        host: &Host,
        driver: &Driver,
        template: &Template,
        version: &TemplateVersion,
    ) -> StepResult<()> {
        let Some(budget_mib) = host.capacity.template_cache_mb else { return Ok(()) };
        let budget = budget_mib.saturating_mul(1024 * 1024);
        if version.size_bytes > budget {
            return Err(Step::Failed(failure(
                "cache_budget_exceeded",
                &format!(
                    "{}:{} ({:.1} MiB) is larger than the template cache budget of host '{}' ({budget_mib} MiB)",
                    template.name,
                    version.tag,
                    mib(version.size_bytes),
                    host.name
                ),
            )));
        }
        let in_use = store::instances::templates_in_use_on_host(&mut *self.store().reader().await?, host.id).await?;
        let mut candidates: Vec<&CachedTemplate> = host
            .cached_templates
            .iter()
            .filter(|cached| !in_use.contains(&(cached.name.clone(), cached.version)))
            .collect();
        // Never used first, then the oldest use.
        candidates.sort_by_key(|cached| cached.last_used_at);
        let mut used: u64 = host.cached_templates.iter().map(|cached| cached.size_bytes).sum();
        let mut candidates = candidates.into_iter();
        while used + version.size_bytes > budget {
            let Some(victim) = candidates.next() else {
                return Err(Step::Failed(failure(
                    "cache_budget_exceeded",
                    &format!(
                        "host '{}' cannot make room for {}:{} within its template cache budget of {budget_mib} MiB: \
                         the templates cached there are in use",
                        host.name, template.name, version.tag
                    ),
                )));
            };
            let owner = self.load_template(&victim.name).await.ok();
            match driver.remove_template(&host.name, cached_template_ref(owner.as_ref(), victim)).await {
                Ok(()) => {}
                Err(error) if is_not_found(&error) => {}
                Err(error) => return Err(Step::Failed(task_error_from_call("remove-template", &error))),
            }
            self.forget_cached_template(host.id, victim, "host.template_evicted").await?;
            used = used.saturating_sub(victim.size_bytes);
        }
        Ok(())
    }

    /// Drops a template from the host's cached list with an event of `kind`.
    pub(super) async fn forget_cached_template(
        &self,
        host_id: Uuid,
        cached: &CachedTemplate,
        kind: &'static str,
    ) -> ServiceResult<()> {
        let mut transaction = self.store().begin().await?;
        let mut host = store::hosts::get(&mut transaction, host_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("host", host_id))?;
        host.cached_templates.retain(|other| !(other.name == cached.name && other.version == cached.version));
        host.updated_at = store::now();
        store::hosts::update_cached_templates(&mut transaction, &host).await?;
        transaction.append_event(NewEvent::new(kind, "host", host_id).data(json!({
            "template": cached.name, "version": cached.version, "size_bytes": cached.size_bytes,
            "last_used_at": cached.last_used_at,
        })));
        transaction.commit().await?;
        Ok(())
    }

    /// Records a template the driver cached on the host, used now.
    pub(super) async fn record_cached_template(
        &self,
        host_id: Uuid,
        pulled: driver::CachedTemplate,
        image_bytes_read: u64,
    ) -> ServiceResult<()> {
        let mut transaction = self.store().begin().await?;
        let mut host = store::hosts::get(&mut transaction, host_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("host", host_id))?;
        for mut template in cached_templates_from_driver(std::slice::from_ref(&pulled), &[]) {
            template.last_used_at = Some(store::now());
            host.cached_templates
                .retain(|cached| !(cached.name == template.name && cached.version == template.version));
            transaction.append_event(NewEvent::new("host.template_cached", "host", host_id).data(json!({
                "template": template.name,
                "version": template.version,
                "image_bytes_read": image_bytes_read,
            })));
            host.cached_templates.push(template);
        }
        host.updated_at = store::now();
        store::hosts::update_cached_templates(&mut transaction, &host).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Notes that the host used a cached template now (eviction spares recent ones).
    async fn mark_template_used(&self, host_id: Uuid, name: &str, number: u32) -> ServiceResult<()> {
        let mut transaction = self.store().begin().await?;
        let Some(mut host) = store::hosts::get(&mut transaction, host_id).await? else { return Ok(()) };
        let Some(cached) =
            host.cached_templates.iter_mut().find(|cached| cached.name == name && cached.version == number)
        else {
            return Ok(());
        };
        cached.last_used_at = Some(store::now());
        store::hosts::update_cached_templates(&mut transaction, &host).await?;
        transaction.commit().await?;
        Ok(())
    }
}

/// A template cached on a host as drivers know it; the format comes from the template's version
/// when the template still has it (raw otherwise).
pub(super) fn cached_template_ref(owner: Option<&Template>, cached: &CachedTemplate) -> driver::TemplateRef {
    let version = owner.and_then(|owner| owner.versions.iter().find(|version| version.number == cached.version));
    driver::TemplateRef {
        name: cached.name.clone(),
        version: cached.version,
        tag: cached.tag.clone(),
        size_bytes: cached.size_bytes,
        format: version.map_or(driver::DiskFormat::Raw, |version| disk_format_to_driver(version.format)),
    }
}

/// A version of a template as drivers know it (version 0 for a template without versions).
pub(super) fn template_ref(template: &Template, version: Option<&TemplateVersion>) -> driver::TemplateRef {
    driver::TemplateRef {
        name: template.name.clone(),
        version: version.map_or(0, |version| version.number),
        tag: version.map(|version| version.tag.clone()).unwrap_or_default(),
        size_bytes: version.map_or(0, |version| version.size_bytes),
        format: version.map_or(driver::DiskFormat::Raw, |version| disk_format_to_driver(version.format)),
    }
}
