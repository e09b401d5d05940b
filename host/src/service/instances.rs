//! Instance requests: create (with idempotency), list with filters and cursors, get, update,
//! actions and delete. Each long operation becomes a task; the work itself is in `lifecycle`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use super::lifecycle::change_state;
use super::projects::Demand;
use super::providers::{console_from_driver, service_error_from_call};
use super::{Service, ServiceError, ServiceResult};
use crate::auth::Caller;
use crate::auth::access::permission;
use crate::auth::identity::{DEFAULT_PROJECT_ID, Project, Quota};
use crate::auth::permissions::Resource;
use crate::config::MAX_STOP_GRACE_SECS;
use crate::model::{
    ConsoleEndpoint, Host, Instance, InstanceAction, InstanceOrigin, InstanceState, Labels, NewEvent,
    PlacementConstraints, Task, TaskKind, TaskState, Template, Timestamp,
};
use crate::plugins::Driver;
use crate::scheduler::LabelConstraint;
use crate::store::instances::{Column, InstanceFilter};
use crate::store::{self, PendingWrites};
use crate::tasks::NewTask;

/// `POST /v1/instances`: one or more instances of a template.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstances {
    /// Template name or id.
    pub template: String,
    /// Project (name or id) the instances belong to; default `default`.
    pub project: Option<String>,
    /// Template version by tag; default: the latest version.
    pub tag: Option<String>,
    /// Template version by number; default: the latest version.
    pub version: Option<u32>,
    /// Instance name; with `count` > 1 each gets a `-N` suffix. Default: `<template>-<id prefix>`.
    pub name: Option<String>,
    /// The caller's own identifier for the instance.
    pub external_id: Option<String>,
    /// Virtual CPUs (1–512, default 2).
    pub vcpu: Option<u32>,
    /// Memory in MiB (64–16777216, default 2048).
    pub ram_mb: Option<u64>,
    /// Disk in GiB (1–65536, default 20).
    pub disk_gb: Option<u64>,
    /// How many instances (1–1000, default 1).
    pub count: Option<u32>,
    /// Place on this host only.
    pub host_id: Option<Uuid>,
    /// MAC address of the instance's NIC (`52:54:00:12:34:56`, unicast); only with `count` 1.
    /// Default: chosen by the driver.
    pub mac: Option<String>,
    /// VLAN tag of the instance's NIC (1-4094); default untagged.
    pub vlan: Option<u16>,
    pub metadata: Option<Labels>,
    /// Script run in the instance once it is running (at most 64 KiB).
    pub startup_script: Option<String>,
    /// 1 (most urgent) to 10000 (least); default 1000. Requests wait in priority order.
    pub priority: Option<u32>,
    /// Node group (name or id); a full group overflows to its fallback group.
    pub group: Option<String>,
    /// Conditions on host labels: `key=value` or `key!=value`.
    pub host_labels: Option<Vec<String>>,
    /// A USB device group the host must have a free device of.
    pub usb_device: Option<String>,
    /// Prefer hosts running instances with this key.
    pub affinity_key: Option<String>,
    /// Never on a host running an instance with this key (e.g. one CI job's instances).
    pub anti_affinity_key: Option<String>,
}

impl CreateInstances {
    /// A request for `count` (default 1) instances of `template` with every other field unset.
    pub fn of_template(template: impl Into<String>) -> Self {
        CreateInstances {
            template: template.into(),
            project: None,
            tag: None,
            version: None,
            name: None,
            external_id: None,
            vcpu: None,
            ram_mb: None,
            disk_gb: None,
            count: None,
            host_id: None,
            mac: None,
            vlan: None,
            metadata: None,
            startup_script: None,
            priority: None,
            group: None,
            host_labels: None,
            usb_device: None,
            affinity_key: None,
            anti_affinity_key: None,
        }
    }
}

/// How an action runs: `force` for stop and restart, `grace_secs` for a graceful stop.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActionOptions {
    /// Power off at once instead of a graceful shutdown (`stop`, `restart`).
    pub force: bool,
    /// `stop`: seconds the guest gets to shut down before it is powered off (0-3600; default
    /// `instances.stop_grace_secs`).
    pub grace_secs: Option<f64>,
}

/// `PATCH /v1/instances/{id}`: fields absent are left as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstancePatch {
    pub name: Option<String>,
    pub external_id: Option<String>,
    /// Replaces the whole metadata map.
    pub metadata: Option<Labels>,
}

#[derive(Debug, Clone, Default)]
pub struct InstanceQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// `field=value` terms joined by `,` (AND); `state` also takes `!=` and `a|b` alternatives.
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstanceList {
    pub items: Vec<Instance>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Priority of requests that do not give one (1 is the most urgent, 10000 the least).
pub const DEFAULT_PRIORITY: u32 = 1000;
const DEFAULT_VCPU: u32 = 2;
const DEFAULT_RAM_MB: u64 = 2048;
const DEFAULT_DISK_GB: u64 = 20;
const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

fn check_range<T: PartialOrd + std::fmt::Display>(field: &str, value: T, min: T, max: T) -> ServiceResult<T> {
    if value < min || value > max {
        return Err(ServiceError::Invalid(format!("{field} must be between {min} and {max}, got {value}")));
    }
    Ok(value)
}

fn check_text(field: &str, value: &str, max_len: usize) -> ServiceResult<()> {
    if value.is_empty() {
        return Err(ServiceError::Invalid(format!("{field} must not be empty")));
    }
    if value.len() > max_len {
        return Err(ServiceError::Invalid(format!("{field} must be at most {max_len} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(ServiceError::Invalid(format!("{field} must not contain control characters")));
    }
    Ok(())
}

fn check_metadata(metadata: &Labels) -> ServiceResult<()> {
    if metadata.len() > 64 {
        return Err(ServiceError::Invalid("metadata must have at most 64 entries".into()));
    }
    for (key, value) in metadata {
        check_text("metadata key", key, 128)?;
        if value.len() > 4096 {
            return Err(ServiceError::Invalid(format!("metadata value of '{key}' must be at most 4096 bytes")));
        }
    }
    Ok(())
}

impl Service {
    /// Validates the request, creates the instances (`scheduling`) and their tasks in one
    /// transaction, and returns the task: a single create, or a batch over several.
    /// With an idempotency key already used for the same request, returns the original task.
    pub async fn create_instances(
        &self,
        caller: &Caller,
        request: CreateInstances,
        idempotency_key: Option<String>,
    ) -> ServiceResult<Task> {
        if let Some(key) = &idempotency_key {
            check_text("Idempotency-Key", key, 255)?;
        }
        let digest = hex::encode(Sha256::digest(serde_json::to_vec(&request).unwrap_or_default()));
        if let Some(task) = self.replay_idempotent(idempotency_key.as_deref(), &digest).await? {
            return Ok(task);
        }
        let accepted = self.accept(caller, &request).await?;
        let (template, count) = (&accepted.template, accepted.count);
        self.require(caller, Resource::Instance, "create", Some(accepted.project_id), None).await?;
        // Anka's model: running a template needs `template:pull` on it, and placing instances
        // `node:create_instance` (on the requested host, when one is named).
        let template_id = template.id.to_string();
        self.require(caller, Resource::Template, "pull", Some(template.project_id), Some(&template_id)).await?;
        let host_id = request.host_id.map(|id| id.to_string());
        self.require(caller, Resource::Node, "create_instance", Some(accepted.project_id), host_id.as_deref()).await?;

        let task = if idempotency_key.is_none()
            && accepted.mac.is_none()
            && accepted.project.as_ref().is_some_and(|project| project.quota == Quota::default())
        {
            // Nothing to check under the write lock: the writes go with the next group commit.
            // (Should the project be deleted meanwhile, the store refuses its new instances.)
            let mut batch = self.store().batch();
            let task = self.stage_creates(batch.writes(), caller, &accepted, &request, None, &digest)?;
            batch.commit().await.map_err(|error| match error {
                error if store::instances::is_missing_project(&error) => {
                    ServiceError::not_found("project", accepted.project_id)
                }
                error => error.into(),
            })?;
            task
        } else {
            let (mut transaction, project) = store::projects::begin_getting(self.store(), accepted.project_id).await?;
            // Checked again under the write lock: two retries racing with one key create one task.
            if let Some(task) = self.replay_idempotent_in(&mut transaction, idempotency_key.as_deref(), &digest).await?
            {
                return Ok(task);
            }
            let demand = Demand {
                instances: u64::from(count),
                vcpu: u64::from(accepted.vcpu) * u64::from(count),
                ram_mb: accepted.ram_mb * u64::from(count),
                template_bytes: 0,
            };
            self.check_project_quota(&mut transaction, accepted.project_id, project, demand).await?;
            // Under the write lock, so two requests for one MAC cannot both pass.
            if let Some(mac) = &accepted.mac
                && let Some(holder) = store::instances::live_with_mac(&mut transaction, mac).await?
            {
                return Err(ServiceError::Conflict(format!("mac {mac} is already used by instance {holder}")));
            }
            let task =
                self.stage_creates(transaction.writes(), caller, &accepted, &request, idempotency_key, &digest)?;
            transaction.commit().await?;
            task
        };
        self.want_placement();
        self.task_engine().wake();
        Ok(task)
    }

    /// Adds the instances of an accepted request, their `instance.created` events and their
    /// tasks to `writes`; answers the task to report: the batch over them, or the single create.
    fn stage_creates(
        &self,
        writes: &mut PendingWrites,
        caller: &Caller,
        accepted: &AcceptedRequest,
        request: &CreateInstances,
        idempotency_key: Option<String>,
        digest: &str,
    ) -> ServiceResult<Task> {
        let (template, count) = (&accepted.template, accepted.count);
        let now = store::now();
        let mut instances = Vec::with_capacity(count as usize);
        for index in 0..count {
            let id = Uuid::now_v7();
            let name = match (&request.name, count) {
                (Some(name), 1) => name.clone(),
                (Some(name), _) => format!("{name}-{}", index + 1),
                (None, _) => format!("{}-{}", template.name, &id.simple().to_string()[24..]),
            };
            instances.push(accepted.instance(request, id, name, now));
        }
        let tasks = self.task_engine();
        let batch = (count > 1).then(|| {
            tasks.create(
                writes,
                NewTask {
                    kind: TaskKind::Batch,
                    object_id: None,
                    parent_id: None,
                    input: json!({ "operation": "instance.create", "instances": instances.iter().map(|instance| instance.id).collect::<Vec<_>>() }),
                    idempotency_key: idempotency_key.clone(),
                    request_digest: Some(digest.to_owned()),
                    requested_by: caller.clone(),
                },
            )
        });
        let mut single = None;
        for instance in &instances {
            store::instances::defer_insert(writes, instance);
            writes.append_event(
                NewEvent::new("instance.created", "instance", instance.id)
                    .by(caller)
                    .data(json!({ "name": instance.name, "template": template.name, "state": instance.state })),
            );
            let task = tasks.create(
                writes,
                NewTask {
                    kind: TaskKind::InstanceCreate,
                    object_id: Some(instance.id),
                    parent_id: batch.as_ref().map(|batch| batch.id),
                    input: json!({ "instance_id": instance.id }),
                    idempotency_key: if batch.is_none() { idempotency_key.clone() } else { None },
                    request_digest: if batch.is_none() { Some(digest.to_owned()) } else { None },
                    requested_by: caller.clone(),
                },
            );
            single.get_or_insert(task);
        }
        batch.or(single).ok_or_else(|| ServiceError::Internal("no task created".into()))
    }

    /// Validates a creation request, naming the field at fault, and resolves what it refers to.
    pub(super) async fn accept(&self, caller: &Caller, request: &CreateInstances) -> ServiceResult<AcceptedRequest> {
        let named_project = match request.project.as_deref() {
            Some(reference) => Some(self.resolve_project(caller, reference).await?),
            None => None,
        };
        let project_id = named_project.as_ref().map_or(DEFAULT_PROJECT_ID, |project| project.id);
        let count = check_range("count", request.count.unwrap_or(1), 1, 1000)?;
        let vcpu = check_range("vcpu", request.vcpu.unwrap_or(DEFAULT_VCPU), 1, 512)?;
        let ram_mb = check_range("ram_mb", request.ram_mb.unwrap_or(DEFAULT_RAM_MB), 64, 16 * 1024 * 1024)?;
        let disk_gb = check_range("disk_gb", request.disk_gb.unwrap_or(DEFAULT_DISK_GB), 1, 65_536)?;
        if let Some(name) = &request.name {
            check_text("name", name, 128)?;
        }
        if let Some(external_id) = &request.external_id {
            check_text("external_id", external_id, 256)?;
        }
        if let Some(metadata) = &request.metadata {
            check_metadata(metadata)?;
        }
        if request.startup_script.as_ref().is_some_and(|script| script.len() > 64 * 1024) {
            return Err(ServiceError::Invalid("startup_script must be at most 65536 bytes".into()));
        }
        let priority = check_range("priority", request.priority.unwrap_or(DEFAULT_PRIORITY), 1, 10_000)?;
        let mac = request.mac.as_deref().map(normalize_mac).transpose()?;
        if mac.is_some() && count > 1 {
            return Err(ServiceError::Invalid("mac names one NIC: it needs count 1".into()));
        }
        let vlan = request.vlan.map(|vlan| check_range("vlan", vlan, 1, 4094)).transpose()?;
        let placement = self.check_placement(caller, request).await?;
        let (template, project) = match named_project {
            Some(project) => (self.resolve_template(caller, &request.template).await?, Some(project)),
            // The default project is read with the template.
            None => self.resolve_template_with_project(caller, &request.template, project_id).await?,
        };
        let version = match (request.version, &request.tag) {
            (Some(number), _) => Some(
                template
                    .versions
                    .iter()
                    .find(|version| version.number == number)
                    .ok_or_else(|| ServiceError::not_found("template version", format!("{}:{number}", template.name)))?
                    .number,
            ),
            (None, Some(tag)) => Some(
                template
                    .versions
                    .iter()
                    .find(|version| &version.tag == tag)
                    .ok_or_else(|| ServiceError::not_found("template tag", format!("{}:{tag}", template.name)))?
                    .number,
            ),
            (None, None) => template.latest_version().map(|version| version.number),
        };
        if let Some(host_id) = request.host_id {
            self.get_host(caller, host_id).await?;
        }
        Ok(AcceptedRequest {
            project_id,
            project,
            template,
            version,
            count,
            vcpu,
            ram_mb,
            disk_gb,
            priority,
            placement,
            mac,
            vlan,
        })
    }

    /// Validates where the request may go; names the field at fault.
    pub(super) async fn check_placement(
        &self,
        caller: &Caller,
        request: &CreateInstances,
    ) -> ServiceResult<PlacementConstraints> {
        let group_id = match &request.group {
            Some(group) => Some(self.resolve_group(caller, group).await?.id),
            None => None,
        };
        let host_labels = request.host_labels.clone().unwrap_or_default();
        if host_labels.len() > 32 {
            return Err(ServiceError::Invalid("host_labels must have at most 32 conditions".into()));
        }
        for label in &host_labels {
            LabelConstraint::parse(label)
                .map_err(|message| ServiceError::Invalid(format!("host_labels: {message}")))?;
        }
        for (field, value) in [
            ("usb_device", &request.usb_device),
            ("affinity_key", &request.affinity_key),
            ("anti_affinity_key", &request.anti_affinity_key),
        ] {
            if let Some(value) = value {
                check_text(field, value, 128)?;
            }
        }
        if request.affinity_key.is_some() && request.anti_affinity_key.is_some() {
            return Err(ServiceError::Invalid("give affinity_key or anti_affinity_key, not both".into()));
        }
        Ok(PlacementConstraints {
            group_id,
            host_labels,
            usb_device: request.usb_device.clone(),
            affinity_key: request.affinity_key.clone(),
            anti_affinity_key: request.anti_affinity_key.clone(),
        })
    }

    async fn replay_idempotent(&self, key: Option<&str>, digest: &str) -> ServiceResult<Option<Task>> {
        let Some(key) = key else { return Ok(None) };
        let found = store::tasks::get_by_idempotency_key(&mut *self.store().reader().await?, key).await?;
        check_replay(found, digest)
    }

    async fn replay_idempotent_in(
        &self,
        transaction: &mut store::WriteTx,
        key: Option<&str>,
        digest: &str,
    ) -> ServiceResult<Option<Task>> {
        let Some(key) = key else { return Ok(None) };
        check_replay(store::tasks::get_by_idempotency_key(transaction, key).await?, digest)
    }

    pub async fn get_instance(&self, caller: &Caller, id: Uuid) -> ServiceResult<Instance> {
        self.authorized_instance(caller, id, "list").await
    }

    /// An instance without a permission check, for Hyperplane's own work.
    pub(super) async fn find_instance(&self, id: Uuid) -> ServiceResult<Instance> {
        store::instances::get(&mut *self.store().reader().await?, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("instance", id))
    }

    /// The instance if the caller may `action` it; one the caller may not even see is not found.
    pub(super) async fn authorized_instance(
        &self,
        caller: &Caller,
        id: Uuid,
        action: &'static str,
    ) -> ServiceResult<Instance> {
        let instance = self.find_instance(id).await?;
        self.check_instance_access(caller, &instance, action).await?;
        Ok(instance)
    }

    /// `not found` unless the caller may see the instance, `forbidden` unless it may `action` it.
    async fn check_instance_access(
        &self,
        caller: &Caller,
        instance: &Instance,
        action: &'static str,
    ) -> ServiceResult<()> {
        let id_text = instance.id.to_string();
        if !caller.access.allows(permission(Resource::Instance, "list"), Some(instance.project_id), Some(&id_text)) {
            return Err(ServiceError::not_found("instance", instance.id));
        }
        if action != "list" {
            self.require(caller, Resource::Instance, action, Some(instance.project_id), Some(&id_text)).await?;
        }
        Ok(())
    }

    pub async fn list_instances(&self, caller: &Caller, query: InstanceQuery) -> ServiceResult<InstanceList> {
        let limit = check_range("limit", query.limit.unwrap_or(DEFAULT_PAGE), 1, MAX_PAGE)?;
        let mut filter = self.parse_instance_filter(caller, query.filter.as_deref().unwrap_or("")).await?;
        filter.projects = self.visible_projects(caller, Resource::Instance).await?;
        filter.after = query.cursor.as_deref().map(decode_cursor).transpose()?;
        filter.limit = Some(limit + 1);
        let mut items = store::instances::list(&mut *self.store().reader().await?, &filter).await?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|instance| encode_cursor(instance.id))
        } else {
            None
        };
        Ok(InstanceList { items, next_cursor })
    }

    /// Parses `field=value` terms. Without a `state` term, terminated instances are left out.
    async fn parse_instance_filter(&self, caller: &Caller, text: &str) -> ServiceResult<InstanceFilter> {
        let mut filter = InstanceFilter::default();
        let mut has_state_term = false;
        for term in text.split(',').map(str::trim).filter(|term| !term.is_empty()) {
            let (field, negated, value) = match term.split_once("!=") {
                Some((field, value)) => (field.trim(), true, value.trim()),
                None => match term.split_once('=') {
                    Some((field, value)) => (field.trim(), false, value.trim()),
                    None => return Err(ServiceError::Invalid(format!("filter term '{term}' is not field=value"))),
                },
            };
            if negated && field != "state" {
                return Err(ServiceError::Invalid(format!("filter field '{field}' does not support !=")));
            }
            match field {
                "state" => {
                    has_state_term = true;
                    let states = value
                        .split('|')
                        .map(|state| state.trim().parse::<InstanceState>().map_err(ServiceError::Invalid))
                        .collect::<ServiceResult<Vec<_>>>()?;
                    if negated { filter.excluded_states.extend(states) } else { filter.states.extend(states) }
                }
                "host" | "host_id" => filter.host_id = Some(self.resolve_host_id(caller, value).await?),
                "provider" => filter.provider = Some(value.to_owned()),
                "template" | "template_id" => {
                    filter.template_id = Some(self.resolve_template(caller, value).await?.id);
                }
                "name" => filter.name = Some(value.to_owned()),
                "external_id" => filter.external_id = Some(value.to_owned()),
                other => {
                    return Err(ServiceError::Invalid(format!(
                        "unknown filter field '{other}' (expected one of: state, host, provider, template, name, external_id)"
                    )));
                }
            }
        }
        if !has_state_term {
            filter.excluded_states.push(InstanceState::Terminated);
        }
        Ok(filter)
    }

    pub async fn update_instance(&self, caller: &Caller, id: Uuid, patch: InstancePatch) -> ServiceResult<Instance> {
        self.authorized_instance(caller, id, "update").await?;
        if let Some(name) = &patch.name {
            check_text("name", name, 128)?;
        }
        if let Some(external_id) = &patch.external_id {
            check_text("external_id", external_id, 256)?;
        }
        if let Some(metadata) = &patch.metadata {
            check_metadata(metadata)?;
        }
        let mut transaction = self.store().begin().await?;
        let mut instance = store::instances::get(&mut transaction, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("instance", id))?;
        let mut columns = Vec::new();
        if let Some(name) = patch.name.clone() {
            instance.name = name;
            columns.push(Column::Name);
        }
        if let Some(external_id) = patch.external_id.clone() {
            instance.external_id = Some(external_id);
            columns.push(Column::ExternalId);
        }
        if let Some(metadata) = patch.metadata.clone() {
            instance.metadata = metadata;
            columns.push(Column::Metadata);
        }
        instance.updated_at = store::now();
        store::instances::update(&mut transaction, &instance, &columns).await?;
        transaction.append_event(
            NewEvent::new("instance.updated", "instance", id)
                .by(caller)
                .data(serde_json::to_value(&patch).unwrap_or_default()),
        );
        transaction.commit().await?;
        Ok(instance)
    }

    /// Starts, stops, restarts, suspends or resumes an instance: a task, refused while another
    /// task works on it or when the instance is in a state the action does not apply to.
    pub async fn instance_action(
        &self,
        caller: &Caller,
        id: Uuid,
        action: InstanceAction,
        options: ActionOptions,
    ) -> ServiceResult<Task> {
        self.authorized_instance(caller, id, "update").await?;
        let grace_secs = match options.grace_secs {
            None => None,
            Some(_) if action != InstanceAction::Stop => {
                return Err(ServiceError::Invalid(format!("grace applies to the stop action only, not to {action}")));
            }
            Some(seconds) if seconds.is_finite() && (0.0..=MAX_STOP_GRACE_SECS).contains(&seconds) => Some(seconds),
            Some(seconds) => {
                return Err(ServiceError::Invalid(format!(
                    "grace must be between 0 and {MAX_STOP_GRACE_SECS} seconds, got {seconds}"
                )));
            }
        };
        let input = json!({ "instance_id": id, "force": options.force, "grace_secs": grace_secs });
        self.begin_instance_task(id, action.task_kind(), action.allowed_states(), action.as_str(), input, caller).await
    }

    /// Creates a task of `kind` on the instance in one transaction, refused (`conflict`) unless
    /// the instance has a host, is in one of the `allowed` states and no other task works on it.
    pub(super) async fn begin_instance_task(
        &self,
        id: Uuid,
        kind: TaskKind,
        allowed: &[InstanceState],
        operation: &str,
        input: serde_json::Value,
        caller: &Caller,
    ) -> ServiceResult<Task> {
        let mut transaction = self.store().begin().await?;
        let instance = store::instances::get(&mut transaction, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("instance", id))?;
        if !allowed.contains(&instance.state) || instance.host_id.is_none() {
            return Err(ServiceError::Conflict(format!(
                "cannot {operation} instance {id} while it is {}",
                instance.state
            )));
        }
        if let Some(active) = active_task(&mut transaction, id).await? {
            return Err(ServiceError::Conflict(format!(
                "instance {id} has a task in progress ({} {}); wait for it or cancel it",
                active.kind, active.id
            )));
        }
        let new = NewTask::on_object(kind, id, input, caller);
        let (task, started) = self.task_engine().create_started(transaction.writes(), new);
        transaction.commit().await?;
        self.task_engine().start_committed(started);
        Ok(task)
    }

    /// The instance's host and its provider's driver; `conflict` while it has no host yet.
    pub(super) async fn instance_driver(&self, instance: &Instance) -> ServiceResult<(Host, Driver)> {
        let host_id = instance.host_id.ok_or_else(|| {
            ServiceError::Conflict(format!("instance {} has no host yet (it is {})", instance.id, instance.state))
        })?;
        let host = self.load_host(host_id).await?;
        let driver = self.providers().driver(&host.provider)?.clone();
        Ok((host, driver))
    }

    /// Where the instance's console answers, live from its driver.
    pub async fn instance_console(&self, caller: &Caller, id: Uuid) -> ServiceResult<ConsoleEndpoint> {
        let instance = self.authorized_instance(caller, id, "update").await?;
        let (host, driver) = self.instance_driver(&instance).await?;
        if !driver.capabilities().console {
            return Err(ServiceError::Conflict(format!("provider '{}' offers no consoles", host.provider)));
        }
        let endpoint = driver
            .console(&instance.provider_instance_id())
            .await
            .map_err(|error| service_error_from_call("console", &error, "instance on its provider", id))?;
        Ok(console_from_driver(endpoint))
    }

    /// Deletes an instance: a task that first cancels whatever else works on the instance.
    /// Asking again while a delete is under way answers that delete's task.
    pub async fn delete_instance(&self, caller: &Caller, id: Uuid) -> ServiceResult<Task> {
        let found = store::instances::get_with_unfinished(self.store(), id, TaskKind::InstanceDelete)?;
        let (instance, deletes) = found.ok_or_else(|| ServiceError::not_found("instance", id))?;
        self.check_instance_access(caller, &instance, "delete").await?;
        if let Some(under_way) = deletes.into_iter().next() {
            return Ok(under_way);
        }
        if instance.state == InstanceState::Terminated {
            return Err(ServiceError::Conflict(format!("instance {id} is already terminated")));
        }
        // Nothing to check under the write lock: the store refuses a second unfinished delete
        // of the instance, so a request racing this one finds its task there. (Should a delete
        // end between the reads and the commit, the task created here finds the instance
        // terminated and succeeds at once.)
        let mut batch = self.store().batch();
        let (task, started) = self.task_engine().create_started(
            batch.writes(),
            NewTask::on_object(TaskKind::InstanceDelete, id, json!({ "instance_id": id }), caller),
        );
        // An instance nothing else works on is `terminating` from here (the task, should the
        // store find another task unfinished on it, makes it so once that one is cancelled).
        if instance.state != InstanceState::Terminating {
            let terminating = change_state(&mut instance.clone(), InstanceState::Terminating, Value::Null);
            store::instances::defer_state_change_when_idle(
                batch.writes(),
                id,
                instance.state,
                InstanceState::Terminating,
                terminating,
            );
        }
        match batch.commit().await {
            Ok(()) => {}
            Err(error) if store::tasks::is_second_unfinished_delete(&error) => {
                // The racing delete may already have ended: then the instance is terminated.
                return self
                    .unfinished_delete_of(id)
                    .await?
                    .ok_or_else(|| ServiceError::Conflict(format!("instance {id} was deleted meanwhile")));
            }
            Err(error) => return Err(error.into()),
        }
        self.task_engine().start_committed(started);
        Ok(task)
    }

    /// The pending or running delete task of an instance, if any.
    async fn unfinished_delete_of(&self, instance_id: Uuid) -> ServiceResult<Option<Task>> {
        let filter =
            store::tasks::TaskFilter { kind: Some(TaskKind::InstanceDelete), ..unfinished_tasks_of(instance_id) };
        let tasks = store::tasks::list(&mut *self.store().reader().await?, &filter).await?;
        Ok(tasks.into_iter().next())
    }
}

/// A creation request that passed validation, with its defaults applied.
pub(super) struct AcceptedRequest {
    pub(super) project_id: Uuid,
    /// The project as read while accepting (none: it does not exist).
    project: Option<Project>,
    pub(super) template: Template,
    pub(super) version: Option<u32>,
    pub(super) count: u32,
    vcpu: u32,
    ram_mb: u64,
    disk_gb: u64,
    priority: u32,
    placement: PlacementConstraints,
    /// Normalized to lowercase.
    mac: Option<String>,
    vlan: Option<u16>,
}

impl AcceptedRequest {
    /// One new instance of the request, waiting in `scheduling`.
    pub(super) fn instance(&self, request: &CreateInstances, id: Uuid, name: String, now: Timestamp) -> Instance {
        Instance {
            id,
            name,
            project_id: self.project_id,
            external_id: request.external_id.clone(),
            state: InstanceState::Scheduling,
            template_id: Some(self.template.id),
            template_version: self.version,
            provider: None,
            host_id: None,
            requested_host_id: request.host_id,
            provider_id: None,
            vcpu: self.vcpu,
            ram_mb: self.ram_mb,
            disk_gb: self.disk_gb,
            priority: self.priority,
            placement: self.placement.clone(),
            ip: None,
            mac: self.mac.clone(),
            vlan: self.vlan,
            metadata: request.metadata.clone().unwrap_or_default(),
            startup_script: request.startup_script.clone(),
            startup_result: None,
            error: None,
            origin: InstanceOrigin::Api,
            created_at: now,
            updated_at: now,
        }
    }
}

/// `xx:xx:xx:xx:xx:xx` (hex, `:` or `-`), unicast and not all zero, in lowercase with `:`.
fn normalize_mac(mac: &str) -> ServiceResult<String> {
    let invalid = || ServiceError::Invalid(format!("mac '{mac}' must be six hex bytes like 52:54:00:12:34:56"));
    let octets: Vec<u8> = mac
        .split([':', '-'])
        .map(|octet| if octet.len() == 2 { u8::from_str_radix(octet, 16).ok() } else { None })
        .collect::<Option<_>>()
        .ok_or_else(invalid)?;
    if octets.len() != 6 {
        return Err(invalid());
    }
    if octets[0] & 1 == 1 || octets.iter().all(|octet| *octet == 0) {
        return Err(ServiceError::Invalid(format!(
            "mac '{mac}' must be a unicast address other than 00:00:00:00:00:00"
        )));
    }
    Ok(octets.iter().map(|octet| format!("{octet:02x}")).collect::<Vec<_>>().join(":"))
}

fn check_replay(found: Option<(Task, Option<String>)>, digest: &str) -> ServiceResult<Option<Task>> {
    match found {
        None => Ok(None),
        Some((task, Some(original))) if original == digest => Ok(Some(task)),
        Some(_) => Err(ServiceError::Conflict(
            "Idempotency-Key was already used for a different request; use a new key".into(),
        )),
    }
}

/// The pending or running task working on an instance, if any (batches excluded).
pub(super) async fn active_task(
    connection: &mut sqlx::SqliteConnection,
    instance_id: Uuid,
) -> ServiceResult<Option<Task>> {
    let tasks = store::tasks::list(connection, &unfinished_tasks_of(instance_id)).await?;
    Ok(tasks.into_iter().next())
}

fn unfinished_tasks_of(instance_id: Uuid) -> store::tasks::TaskFilter {
    store::tasks::TaskFilter {
        states: vec![TaskState::Pending, TaskState::Running],
        object_id: Some(instance_id),
        ..Default::default()
    }
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> ServiceResult<Uuid> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| ServiceError::Invalid(format!("cursor '{cursor}' is not one this server issued")))
}
