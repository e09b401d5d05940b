//! Save image: an instance's disk becomes a new tag of an existing template or the first tag of
//! a new one (Anka's `POST /api/v1/image`). A task on the instance: suspend (or stop) it,
//! optionally revert the target's latest tag (or a named one), then the driver streams the disk
//! (`export-disk`) straight into a registry push — the driver captures, the host stores — and
//! on success the instance is deleted unless asked to keep it. A failure leaves the instance
//! (stopped or suspended) for inspection and no partial version file.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::lifecycle::{Step, StepResult, failure};
use super::providers::task_error_from_call;
use super::registry::{FilePushed, PushOptions};
use super::templates::NewTemplateVersion;
use super::{NewTemplate, Service, ServiceError, ServiceResult, check_name};
use crate::auth::Caller;
use crate::auth::permissions::Resource;
use crate::model::{DISK_FILE_NAME, Instance, InstanceState, Task, TaskKind};
use crate::plugins::StorageSink;
use crate::plugins::driver_types::ExportedDisk;
use crate::store;
use crate::tasks::{NewTask, TaskContext};

/// Bytes buffered between the driver writing a disk and the registry storing it.
const SAVE_PIPE_BYTES: usize = 4 * 1024 * 1024;

/// `POST /v1/instances/{id}/save`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveImageRequest {
    /// An existing template (name or id) to add the tag to (`target_vm_id`) …
    #[serde(default)]
    pub template: Option<String>,
    /// … or the name of a new template (`new_template_name`), created with the instance's
    /// template's architecture.
    #[serde(default)]
    pub new_template: Option<String>,
    /// The project of a new template (default: the instance's).
    #[serde(default)]
    pub project: Option<String>,
    /// The tag to create.
    pub tag: String,
    #[serde(default)]
    pub description: String,
    /// Suspend the instance before capturing its disk (default), else stop it.
    #[serde(default = "yes")]
    pub suspend: bool,
    /// First revert the target template's latest tag, or `revert_tag` (skipped when that tag
    /// does not exist).
    #[serde(default)]
    pub revert_before_push: bool,
    #[serde(default)]
    pub revert_tag: Option<String>,
    /// Keep the instance after a successful save (by default it is deleted, as in Anka).
    #[serde(default)]
    pub keep_instance: bool,
}

fn yes() -> bool {
    true
}

impl Service {
    /// Checks the request and answers the `instance.save_image` task.
    pub async fn save_instance_image(
        &self,
        caller: &Caller,
        id: Uuid,
        request: SaveImageRequest,
    ) -> ServiceResult<Task> {
        let instance = self.authorized_instance(caller, id, "update").await?;
        check_name("tag", &request.tag, 128)?;
        if request.description.len() > 4096 {
            return Err(ServiceError::Invalid("description must be at most 4096 bytes".into()));
        }
        let (target_id, target_name, project_id) = match (&request.template, &request.new_template) {
            (Some(reference), None) => {
                let template = self.authorized_template(caller, reference, "save_image").await?;
                self.require(
                    caller,
                    Resource::Template,
                    "push_tag",
                    Some(template.project_id),
                    Some(&template.id.to_string()),
                )
                .await?;
                let reverted_away = request.revert_before_push
                    && match &request.revert_tag {
                        Some(revert_tag) => revert_tag == &request.tag,
                        None => template.latest_version().is_some_and(|latest| latest.tag == request.tag),
                    };
                if template.versions.iter().any(|version| version.tag == request.tag) && !reverted_away {
                    return Err(ServiceError::Conflict(format!(
                        "template '{}' already has tag '{}'",
                        template.name, request.tag
                    )));
                }
                (Some(template.id), template.name, template.project_id)
            }
            (None, Some(name)) => {
                check_name("new_template", name, 128)?;
                let project_id = match &request.project {
                    Some(project) => self.project_for_create(caller, Some(project)).await?,
                    None => instance.project_id,
                };
                self.require(caller, Resource::Template, "create", Some(project_id), None).await?;
                if store::templates::get_by_name(&mut *self.store().reader().await?, name).await?.is_some() {
                    return Err(ServiceError::Conflict(format!("template '{name}' already exists")));
                }
                (None, name.clone(), project_id)
            }
            _ => {
                return Err(ServiceError::Invalid(
                    "give exactly one of template (an existing template) and new_template (a new one's name)".into(),
                ));
            }
        };
        if !matches!(instance.state, InstanceState::Running | InstanceState::Stopped | InstanceState::Suspended) {
            return Err(ServiceError::Conflict(format!(
                "instance {id} is {}; only running, stopped or suspended instances can be saved",
                instance.state
            )));
        }
        let (_, driver) = self.instance_driver(&instance).await?;
        if !driver.capabilities().export_disk {
            return Err(ServiceError::Invalid(format!(
                "the driver of instance {id} ({}) cannot export disks",
                instance.provider.as_deref().unwrap_or("unknown")
            )));
        }
        let arch = match instance.template_id {
            Some(template_id) => self.load_template(&template_id.to_string()).await?.arch,
            None => crate::model::Arch::Amd64,
        };
        let input = json!({
            "instance_id": id,
            "template_id": target_id,
            "template": target_name,
            "project_id": project_id,
            "arch": arch,
            "request": request,
        });
        let mut transaction = self.store().begin().await?;
        if let Some(active) = super::instances::active_task(&mut transaction, id).await? {
            return Err(ServiceError::Conflict(format!(
                "instance {id} has a {} task in progress ({}); wait for it or cancel it",
                active.kind, active.id
            )));
        }
        let task = self
            .task_engine()
            .create(transaction.writes(), NewTask::on_object(TaskKind::InstanceSaveImage, id, input, caller));
        transaction.commit().await?;
        self.task_engine().wake();
        Ok(task)
    }

    /// The driver writes the instance's disk into one end of a pipe; a registry push of the
    /// version's disk file reads the other.
    async fn export_into_registry(
        &self,
        instance: &Instance,
        template: &str,
        version: u32,
    ) -> StepResult<(ExportedDisk, FilePushed)> {
        let (_, driver) = self.placement_of(instance).await?;
        let (writer, reader) = tokio::io::duplex(SAVE_PIPE_BYTES);
        let sink = StorageSink::writer(writer, None);
        let body = tokio_util::io::ReaderStream::new(reader);
        let (system, provider_id) = (Caller::system(), instance.provider_instance_id());
        let push = self.push_template_file(&system, template, version, DISK_FILE_NAME, PushOptions::disk(), body);
        let export = driver.export_disk(&provider_id, sink, instance.disk_gb.saturating_mul(1 << 30));
        let (exported, pushed) = tokio::join!(export, push);
        let exported = exported.map_err(|error| Step::Failed(task_error_from_call("export-disk", &error)))?;
        Ok((exported, pushed?))
    }

    /// What the `instance.save_image` task does.
    pub(super) async fn run_save_image(&self, id: Uuid, task: &Task, context: &TaskContext) -> StepResult<Value> {
        let request: SaveImageRequest = task
            .input
            .get("request")
            .cloned()
            .and_then(|request| serde_json::from_value(request).ok())
            .ok_or_else(|| Step::Failed(failure("invalid_task", "task has no save request")))?;
        let instance = self.load_instance(id).await?;
        if instance.state == InstanceState::Running {
            if request.suspend {
                self.run_suspend(id).await?;
            } else {
                self.run_stop(id, task).await?;
            }
        }
        let template_name = task.input.get("template").and_then(Value::as_str).unwrap_or_default().to_owned();
        let template = match self.load_template(&template_name).await {
            Ok(template) => template,
            Err(ServiceError::NotFound { .. }) if task.input.get("template_id").is_some_and(Value::is_null) => {
                let project = task.input.get("project_id").and_then(Value::as_str).map(str::to_owned);
                let arch = task.input.get("arch").cloned().and_then(|arch| serde_json::from_value(arch).ok());
                let new = NewTemplate {
                    name: template_name.clone(),
                    arch: arch.unwrap_or(crate::model::Arch::Amd64),
                    description: format!("saved from instance {}", instance.name),
                    project,
                };
                self.create_template(&Caller::system(), new).await?
            }
            Err(error) => return Err(error.into()),
        };
        if request.revert_before_push {
            let tag = request.revert_tag.as_deref();
            let exists = match tag {
                Some(tag) => template.versions.iter().any(|version| version.tag == tag),
                None => template.latest_version().is_some(),
            };
            // A retried task may find its own new tag as the latest: never revert that.
            let own_tag = template.latest_version().is_some_and(|latest| latest.tag == request.tag && tag.is_none());
            if exists && !own_tag {
                self.revert_template(&Caller::system(), &template.name, tag).await?;
            }
        }
        let template = self.load_template(&template.name).await?;
        let version = match template.versions.iter().find(|version| version.tag == request.tag) {
            Some(version) if version.disk().is_some() => {
                return Ok(json!({ "instance_id": id, "template": template.name, "version": version.number }));
            }
            Some(version) => version.number,
            None => {
                let new = NewTemplateVersion {
                    tag: request.tag.clone(),
                    description: request.description.clone(),
                    size_bytes: 0,
                };
                let updated = self.create_template_version(&Caller::system(), &template.name, new).await?;
                updated.latest_version().map_or(1, |latest| latest.number)
            }
        };

        let instance = self.load_instance(id).await?;
        let (exported, pushed) = match self.export_into_registry(&instance, &template.name, version).await {
            // Some hypervisors cannot read a paused instance's disk (QEMU keeps its write lock):
            // stop it cleanly instead and capture again.
            Err(Step::Failed(error)) if error.code == "conflict" && instance.state == InstanceState::Suspended => {
                tracing::info!(instance = %id, reason = %error.message, "cannot export a suspended disk; stopping");
                self.run_resume(id).await?;
                self.run_stop(id, task).await?;
                let instance = self.load_instance(id).await?;
                self.export_into_registry(&instance, &template.name, version).await?
            }
            outcome => outcome?,
        };
        if pushed.file.size_bytes != exported.size_bytes {
            return Err(Step::Failed(failure(
                "export_incomplete",
                &format!(
                    "the driver reported {} bytes but the registry received {}",
                    exported.size_bytes, pushed.file.size_bytes
                ),
            )));
        }
        // As in Anka, the saved instance is gone afterwards (in this task, so nothing can start it
        // in between), unless asked to keep it.
        let deleted = !request.keep_instance;
        if deleted {
            self.run_delete(id, task.id, context, None).await?;
        }
        Ok(json!({
            "instance_id": id, "template": template.name, "template_id": template.id, "version": version,
            "tag": request.tag, "size_bytes": pushed.file.size_bytes, "sha256": pushed.file.sha256,
            "format": pushed.file.format, "bytes_stored": pushed.bytes_stored, "instance_deleted": deleted,
        }))
    }
}
