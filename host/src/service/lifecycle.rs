//! What instance tasks do: drive the instance through its lifecycle with the provider's driver,
//! recording every state change with its event. Every step is idempotent, so a task resumed
//! after a restart simply runs again from the top.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use super::distribution::template_ref;
use super::providers::{instance_state_from_driver, is_conflict, is_not_found, task_error_from_call};
use super::{Service, ServiceError};
use crate::config::MAX_STOP_GRACE_SECS;
use crate::model::{ExecOutcome, Host, Instance, InstanceState, NewEvent, Task, TaskError, TaskKind, Template};
use crate::plugins::driver_types as driver;
use crate::plugins::{CallError, Driver, progress};
use crate::store;
use crate::store::instances::{Column, ContextParts, InstanceContext};
use crate::tasks::{FinalWrite, TaskContext, TaskHandler, TaskOutcome};

/// How long a startup script may run.
const STARTUP_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

pub(super) struct LifecycleHandler {
    pub(super) service: Service,
}

impl TaskHandler for LifecycleHandler {
    /// The instance a create or delete task works on, in context.
    type Prefetched = Option<InstanceContext>;

    async fn prefetch(&self, tasks: &[Task]) -> Vec<Option<InstanceContext>> {
        let starts_with_a_read = |task: &Task| matches!(task.kind, TaskKind::InstanceCreate | TaskKind::InstanceDelete);
        let ids: Vec<Uuid> =
            tasks.iter().filter(|task| starts_with_a_read(task)).filter_map(|task| task.object_id).collect();
        let parts = ContextParts {
            template: tasks.iter().any(|task| task.kind == TaskKind::InstanceCreate),
            unfinished_tasks: tasks.iter().any(|task| task.kind == TaskKind::InstanceDelete),
        };
        let contexts = match self.service.load_contexts(&ids, parts).await {
            Ok(contexts) => contexts,
            Err(error) => {
                tracing::warn!(error = %error, "reading the context of claimed tasks failed; each reads its own");
                HashMap::new()
            }
        };
        tasks
            .iter()
            .map(|task| task.object_id.filter(|_| starts_with_a_read(task)).and_then(|id| contexts.get(&id).cloned()))
            .collect()
    }

    async fn run(&self, task: Task, context: TaskContext, prefetched: Option<InstanceContext>) -> TaskOutcome {
        let Some(object_id) = task.object_id else {
            return TaskOutcome::Failed(failure("invalid_task", "task has no object"));
        };
        let instance_id = object_id;
        let sink_context = context.clone();
        let sink: progress::ProgressSink =
            Arc::new(move |fraction: f32, message: &str| sink_context.report_progress(fraction, message));
        let work = async {
            match task.kind {
                TaskKind::InstanceCreate => self.service.run_create(instance_id, &context, prefetched).await,
                TaskKind::InstanceStart => self.service.run_start(instance_id).await,
                TaskKind::InstanceStop => self.service.run_stop(instance_id, &task).await,
                TaskKind::InstanceRestart => self.service.run_restart(instance_id, &task).await,
                TaskKind::InstanceSuspend => self.service.run_suspend(instance_id).await,
                TaskKind::InstanceResume => self.service.run_resume(instance_id).await,
                TaskKind::SnapshotCreate => self.service.run_create_snapshot(instance_id, &task).await,
                TaskKind::SnapshotRevert => self.service.run_revert_snapshot(instance_id, &task).await,
                TaskKind::SnapshotDelete => self.service.run_delete_snapshot(instance_id, &task).await,
                TaskKind::InstanceDelete => self.service.run_delete(instance_id, task.id, &context, prefetched).await,
                TaskKind::TemplateRemoveFromHost => self.service.run_remove_template_from_host(object_id, &task).await,
                TaskKind::TemplatePullToHost => self.service.run_pull_to_host(object_id, &task, &context).await,
                TaskKind::InstanceSaveImage => self.service.run_save_image(instance_id, &task, &context).await,
                TaskKind::Batch => Err(Step::Failed(failure("invalid_task", "batches do not run"))),
            }
        };
        match progress::scope(sink, work).await {
            Ok(result) => TaskOutcome::Succeeded(result),
            Err(Step::Failed(error)) => TaskOutcome::Failed(error),
            Err(Step::Cancelled) => TaskOutcome::Cancelled("cancelled by request".into()),
        }
    }

    async fn before_dispatch(&self) -> bool {
        self.service.place_waiting_instances().await.unwrap_or_else(|error| {
            tracing::error!(error = %error, "placement pass failed");
            false
        })
    }
}

/// Why a step stopped the task.
pub(super) enum Step {
    Failed(TaskError),
    Cancelled,
}

impl From<ServiceError> for Step {
    fn from(error: ServiceError) -> Self {
        // Tasks have always said "invalid" where the API says "invalid_value".
        let code = match &error {
            ServiceError::Invalid(_) => "invalid",
            other => other.code(),
        };
        Step::Failed(failure(code, &error.to_string()))
    }
}

impl From<store::StoreError> for Step {
    fn from(error: store::StoreError) -> Self {
        Step::from(ServiceError::from(error))
    }
}

pub(super) fn failure(code: &str, message: &str) -> TaskError {
    TaskError { code: code.into(), message: message.into() }
}

pub(super) type StepResult<T> = Result<T, Step>;

/// The id under `key` in the task's input; a task without one fails as `invalid_task`.
pub(super) fn input_uuid(task: &Task, key: &str) -> StepResult<Uuid> {
    task.input
        .get(key)
        .and_then(Value::as_str)
        .and_then(|text| Uuid::parse_str(text).ok())
        .ok_or_else(|| Step::Failed(failure("invalid_task", &format!("task has no {}", key.replace('_', " ")))))
}

impl Service {
    pub(super) async fn load_instance(&self, id: Uuid) -> StepResult<Instance> {
        Ok(store::instances::get(&mut *self.store().reader().await?, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("instance", id))?)
    }

    /// The instance's host (read now) and its provider's driver.
    pub(super) async fn placement_of(&self, instance: &Instance) -> StepResult<(Host, Driver)> {
        let host = match instance.host_id {
            Some(host_id) => Some(self.load_host(host_id).await?),
            None => None,
        };
        self.placement_in(instance, host)
    }

    /// The instance with its host and the `parts` asked for, read together (inline).
    fn load_in_context(&self, id: Uuid, parts: ContextParts) -> StepResult<InstanceContext> {
        Ok(store::instances::get_in_context(self.store(), id, parts)?
            .ok_or_else(|| ServiceError::not_found("instance", id))?)
    }

    /// [`Self::load_in_context`] for several instances at once (the ones found, by id).
    async fn load_contexts(
        &self,
        ids: &[Uuid],
        parts: ContextParts,
    ) -> super::ServiceResult<HashMap<Uuid, InstanceContext>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(store::instances::get_contexts(self.store(), ids, parts)?)
    }

    /// The host (read with the instance) and the driver of a placed instance.
    fn placement_in(&self, instance: &Instance, host: Option<Host>) -> StepResult<(Host, Driver)> {
        let Some(host_id) = instance.host_id else {
            return Err(Step::Failed(failure("not_placed", "instance has no host yet")));
        };
        let host = host.ok_or_else(|| ServiceError::not_found("host", host_id))?;
        let driver = self.providers().driver(&host.provider)?.clone();
        Ok((host, driver))
    }

    /// A placed instance, its host and its provider's driver, read together.
    pub(super) async fn load_placed(&self, id: Uuid) -> StepResult<(Instance, Host, Driver)> {
        let InstanceContext { instance, host, .. } = self.load_in_context(id, ContextParts::default())?;
        let (host, driver) = self.placement_in(&instance, host)?;
        Ok((instance, host, driver))
    }

    /// Writes the instance's new state (its [`STATE_COLUMNS`]) and an `instance.state_changed`
    /// event together.
    async fn set_state(&self, instance: &mut Instance, state: InstanceState, data: Value) -> StepResult<()> {
        self.set_state_recording(instance, state, data, None, STATE_COLUMNS).await
    }

    /// [`Self::set_state`] writing `columns`, appending `also` in the same transaction.
    pub(super) async fn set_state_recording(
        &self,
        instance: &mut Instance,
        state: InstanceState,
        data: Value,
        also: Option<NewEvent>,
        columns: &[Column],
    ) -> StepResult<()> {
        let event = change_state(instance, state, data);
        let mut batch = self.store().batch();
        store::instances::defer_update(batch.writes(), instance, columns);
        batch.append_event(event);
        if let Some(also) = also {
            batch.append_event(also);
        }
        batch.commit().await?;
        Ok(())
    }

    /// The task's last state change: like [`Self::set_state`], but left to the task engine to
    /// commit together with the task's outcome (one write transaction instead of two).
    fn set_final_state(
        &self,
        context: &TaskContext,
        instance: &mut Instance,
        state: InstanceState,
        data: Value,
        columns: &'static [Column],
    ) {
        let event = change_state(instance, state, data);
        context.finish_with(InstanceStateWrite { instance: instance.clone(), columns, event });
    }

    async fn fail_instance(&self, instance: &mut Instance, error: &TaskError) -> StepResult<()> {
        instance.error = Some(error.message.clone());
        self.set_state(instance, InstanceState::Error, json!({ "error": error })).await
    }

    /// Creates the instance; `prefetched`: its context (with its template) read since the task
    /// was claimed.
    async fn run_create(
        &self,
        id: Uuid,
        context: &TaskContext,
        prefetched: Option<InstanceContext>,
    ) -> StepResult<Value> {
        let loaded = match prefetched {
            Some(loaded) => loaded,
            None => self.load_in_context(id, ContextParts { template: true, ..Default::default() })?,
        };
        let InstanceContext { mut instance, host, template, .. } = loaded;
        if instance.state == InstanceState::Running {
            return Ok(json!({ "instance_id": id }));
        }
        if context.cancel.is_cancelled() || instance.host_id.is_none() {
            self.abandon_create(&mut instance).await?;
            return Err(Step::Cancelled);
        }
        let result = match self.placement_in(&instance, host) {
            Ok((host, driver)) => self.create_on_driver(&mut instance, &host, &driver, template, context).await,
            Err(step) => Err(step),
        };
        match result {
            Ok(()) => Ok(json!({ "instance_id": id, "host_id": instance.host_id, "ip": instance.ip })),
            Err(Step::Cancelled) => {
                self.abandon_create(&mut instance).await?;
                Err(Step::Cancelled)
            }
            Err(Step::Failed(error)) => {
                // Leave nothing half-created behind on the hypervisor.
                if let Ok((_, driver)) = self.placement_of(&instance).await
                    && let Err(cleanup) = driver.delete_instance(&instance.provider_instance_id()).await
                    && !is_not_found(&cleanup)
                {
                    tracing::warn!(instance = %id, error = %cleanup, "cleanup after a failed create failed");
                }
                self.fail_instance(&mut instance, &error).await?;
                Err(Step::Failed(error))
            }
        }
    }

    /// Creates and starts the placed instance from `template` (read with it; `None` for an
    /// instance without one).
    async fn create_on_driver(
        &self,
        instance: &mut Instance,
        host: &Host,
        driver: &Driver,
        template: Option<Template>,
        context: &TaskContext,
    ) -> StepResult<()> {
        if let (Some(template_id), None) = (instance.template_id, &template) {
            return Err(ServiceError::not_found("template", template_id).into());
        }
        let version = template.as_ref().and_then(|template| {
            template.versions.iter().find(|version| Some(version.number) == instance.template_version)
        });
        let template_ref = match &template {
            Some(template) => template_ref(template, version),
            None => driver::TemplateRef {
                name: String::new(),
                version: 0,
                tag: String::new(),
                size_bytes: 0,
                format: driver::DiskFormat::Raw,
            },
        };
        let id = instance.provider_instance_id();
        if let Some(template) = &template {
            if !is_cached_on(host, &template_ref) && driver.capabilities().templates {
                self.set_state(instance, InstanceState::Pulling, json!({ "host": host.name })).await?;
            }
            self.ensure_cached(host, driver, template, version, None).await?;
        }
        check_cancelled(context)?;

        // (Already `starting` when placed on a host that held the template.)
        if instance.state != InstanceState::Starting {
            self.set_state(instance, InstanceState::Starting, json!({ "host": host.name })).await?;
        }
        let spec = driver::InstanceSpec {
            id: id.clone(),
            name: instance.name.clone(),
            host: host.name.clone(),
            template: template_ref,
            vcpu: instance.vcpu,
            ram_mb: instance.ram_mb,
            disk_gb: instance.disk_gb,
            mac: instance.mac.clone(),
            vlan: instance.vlan,
            metadata: instance
                .metadata
                .iter()
                .map(|(key, value)| driver::KeyValue { key: key.clone(), value: value.clone() })
                .collect(),
        };
        match driver.create_instance(spec).await {
            Ok(_) => {}
            // Created by an earlier attempt of this task.
            Err(error) if is_conflict(&error) && driver.get_instance(&id).await.is_ok() => {}
            Err(error) => return Err(Step::Failed(task_error_from_call("create-instance", &error))),
        }
        check_cancelled(context)?;
        let running = self.start_on_driver(driver, &id).await?;
        // Without one in the request, the driver chose the MAC.
        let columns = if instance.mac == running.mac { STATE_COLUMNS } else { STATE_AND_MAC_COLUMNS };
        instance.ip = running.ip.clone();
        instance.mac = running.mac.clone();
        instance.error = None;
        let ip = json!({ "ip": instance.ip });
        let script = instance.startup_script.clone().filter(|_| instance.startup_result.is_none());
        let Some(script) = script else {
            // Nothing more to do: `running` is committed with the task's success.
            self.set_final_state(context, instance, InstanceState::Running, ip, columns);
            return Ok(());
        };
        self.set_state_recording(instance, InstanceState::Running, ip, None, columns).await?;
        let outcome = if driver.capabilities().exec {
            match driver.exec(&id, &script, STARTUP_SCRIPT_TIMEOUT.as_millis() as u32).await {
                Ok(result) => ExecOutcome {
                    stdout: result.stdout,
                    stderr: result.stderr,
                    exit_code: result.exit_code,
                    timed_out: result.timed_out,
                },
                Err(error) => ExecOutcome {
                    stdout: String::new(),
                    stderr: task_error_from_call("exec", &error).message,
                    exit_code: -1,
                    timed_out: matches!(error, CallError::Timeout { .. }),
                },
            }
        } else {
            ExecOutcome {
                stdout: String::new(),
                stderr: "the provider's driver cannot run scripts".into(),
                exit_code: -1,
                timed_out: false,
            }
        };
        instance.startup_result = Some(outcome.clone());
        instance.updated_at = store::now();
        let mut transaction = self.store().begin().await?;
        store::instances::update(&mut transaction, instance, &[Column::StartupResult]).await?;
        transaction.append_event(
            NewEvent::new("instance.startup_script_finished", "instance", instance.id)
                .data(json!({ "exit_code": outcome.exit_code, "timed_out": outcome.timed_out })),
        );
        transaction.commit().await?;
        Ok(())
    }

    /// Starts the instance; one that already runs (an earlier attempt) is fine.
    async fn start_on_driver(&self, driver: &Driver, id: &str) -> StepResult<driver::Instance> {
        let started = driver.start_instance(id).await;
        already_there_on_conflict(driver, id, "start-instance", driver::InstanceState::Running, started).await
    }

    /// A creation cancelled before or during its work: remove what exists, end as terminated.
    async fn abandon_create(&self, instance: &mut Instance) -> StepResult<()> {
        if instance.host_id.is_some()
            && let Ok((_, driver)) = self.placement_of(instance).await
            && let Err(error) = driver.delete_instance(&instance.provider_instance_id()).await
            && !is_not_found(&error)
        {
            return Err(Step::Failed(task_error_from_call("delete-instance", &error)));
        }
        self.set_state(instance, InstanceState::Terminated, json!({ "reason": "creation cancelled" })).await
    }

    /// Starts a stopped instance.
    async fn run_start(&self, id: Uuid) -> StepResult<Value> {
        let (mut instance, _, driver) = self.load_placed(id).await?;
        self.set_state(&mut instance, InstanceState::Starting, Value::Null).await?;
        match self.start_on_driver(&driver, &instance.provider_instance_id()).await {
            Ok(running) => {
                instance.ip = running.ip;
                instance.error = None;
                let ip = json!({ "ip": instance.ip });
                self.set_state(&mut instance, InstanceState::Running, ip).await?;
                Ok(json!({ "instance_id": id }))
            }
            Err(step) => self.settle_after_failure(&mut instance, &driver, step).await,
        }
    }

    pub(super) async fn run_stop(&self, id: Uuid, task: &Task) -> StepResult<Value> {
        let force = task.input.get("force").and_then(Value::as_bool).unwrap_or(false);
        let grace = match task.input.get("grace_secs").and_then(Value::as_f64) {
            Some(seconds) => Duration::from_secs_f64(seconds.clamp(0.0, MAX_STOP_GRACE_SECS)),
            None => self.inner.settings.default_stop_grace,
        };
        let (mut instance, _, driver) = self.load_placed(id).await?;
        self.set_state(&mut instance, InstanceState::Stopping, Value::Null).await?;
        let provider_id = instance.provider_instance_id();
        let stopped = driver.stop_instance(&provider_id, force, grace).await;
        match already_there_on_conflict(&driver, &provider_id, "stop-instance", driver::InstanceState::Stopped, stopped)
            .await
        {
            Ok(_) => {
                instance.ip = None;
                self.set_state(&mut instance, InstanceState::Stopped, Value::Null).await?;
                Ok(json!({ "instance_id": id }))
            }
            Err(step) => self.settle_after_failure(&mut instance, &driver, step).await,
        }
    }

    pub(super) async fn run_suspend(&self, id: Uuid) -> StepResult<Value> {
        self.pause_or_continue(id, "suspend-instance", driver::InstanceState::Suspended).await
    }

    pub(super) async fn run_resume(&self, id: Uuid) -> StepResult<Value> {
        self.pause_or_continue(id, "resume-instance", driver::InstanceState::Running).await
    }

    /// Suspends (`target` suspended) or resumes (`target` running) the instance in memory.
    async fn pause_or_continue(
        &self,
        id: Uuid,
        function: &'static str,
        target: driver::InstanceState,
    ) -> StepResult<Value> {
        let (mut instance, _, driver) = self.load_placed(id).await?;
        let provider_id = instance.provider_instance_id();
        let changed = match target {
            driver::InstanceState::Suspended => driver.suspend_instance(&provider_id).await,
            _ => driver.resume_instance(&provider_id).await,
        };
        match already_there_on_conflict(&driver, &provider_id, function, target, changed).await {
            Ok(current) => {
                instance.ip = current.ip.or(instance.ip.take());
                instance.error = None;
                let state = instance_state_from_driver(current.state);
                let ip = json!({ "ip": instance.ip });
                self.set_state(&mut instance, state, ip).await?;
                Ok(json!({ "instance_id": id }))
            }
            Err(step) => self.settle_after_failure(&mut instance, &driver, step).await,
        }
    }

    async fn run_restart(&self, id: Uuid, task: &Task) -> StepResult<Value> {
        let force = task.input.get("force").and_then(Value::as_bool).unwrap_or(false);
        let (mut instance, _, driver) = self.load_placed(id).await?;
        self.set_state(&mut instance, InstanceState::Starting, json!({ "reason": "restart" })).await?;
        match driver.restart_instance(&instance.provider_instance_id(), force).await {
            Ok(running) => {
                instance.ip = running.ip;
                let ip = json!({ "ip": instance.ip });
                self.set_state(&mut instance, InstanceState::Running, ip).await?;
                Ok(json!({ "instance_id": id }))
            }
            Err(error) => {
                let step = Step::Failed(task_error_from_call("restart-instance", &error));
                self.settle_after_failure(&mut instance, &driver, step).await
            }
        }
    }

    /// After a failed action, records what the driver says the instance is now (or `error`).
    pub(super) async fn settle_after_failure(
        &self,
        instance: &mut Instance,
        driver: &Driver,
        step: Step,
    ) -> StepResult<Value> {
        let Step::Failed(error) = step else { return Err(step) };
        match driver.get_instance(&instance.provider_instance_id()).await {
            Ok(current) => {
                let state = instance_state_from_driver(current.state);
                self.set_state(instance, state, json!({ "error": error })).await?;
            }
            Err(_) => self.fail_instance(instance, &error).await?,
        }
        Err(Step::Failed(error))
    }

    /// Deletes the instance; `prefetched`: its context (with its unfinished tasks) read since
    /// the task was claimed.
    pub(super) async fn run_delete(
        &self,
        id: Uuid,
        own_task: Uuid,
        context: &TaskContext,
        prefetched: Option<InstanceContext>,
    ) -> StepResult<Value> {
        let mut loaded = match prefetched {
            Some(loaded) => loaded,
            None => self.load_in_context(id, ContextParts { unfinished_tasks: true, ..Default::default() })?,
        };
        let others: Vec<Uuid> =
            loaded.unfinished_tasks.iter().map(|task| task.id).filter(|task| *task != own_task).collect();
        if !others.is_empty() {
            self.cancel_and_wait(&others).await?;
            // They may have changed the instance: read it again.
            loaded = self.load_in_context(id, ContextParts::default())?;
        }
        let InstanceContext { mut instance, host, .. } = loaded;
        if instance.state == InstanceState::Terminated {
            return Ok(json!({ "instance_id": id }));
        }
        if instance.state != InstanceState::Terminating {
            // (Usually done by the request, unless another task was at work on the instance.)
            self.set_state(&mut instance, InstanceState::Terminating, Value::Null).await?;
        }
        if instance.host_id.is_some() {
            let (_, driver) = self.placement_in(&instance, host)?;
            if let Err(error) = driver.delete_instance(&instance.provider_instance_id()).await
                && !is_not_found(&error)
            {
                let error = task_error_from_call("delete-instance", &error);
                self.fail_instance(&mut instance, &error).await?;
                return Err(Step::Failed(error));
            }
        }
        instance.ip = None;
        // Committed with the task's success.
        self.set_final_state(context, &mut instance, InstanceState::Terminated, Value::Null, STATE_COLUMNS);
        Ok(json!({ "instance_id": id }))
    }

    /// Cancels the tasks and waits until they have ended.
    async fn cancel_and_wait(&self, tasks: &[Uuid]) -> StepResult<()> {
        for task in tasks {
            self.task_engine().cancel(*task).await.map_err(ServiceError::from)?;
        }
        for task in tasks {
            self.task_engine().wait(*task, Duration::from_secs(3600)).await.map_err(ServiceError::from)?;
        }
        Ok(())
    }
}

/// Whether the host's last report lists the template version in its cache.
pub(super) fn is_cached_on(host: &Host, template: &driver::TemplateRef) -> bool {
    host.cached_templates.iter().any(|cached| cached.name == template.name && cached.version == template.version)
}

/// What a task's state change writes: the state and what the driver reports with it.
pub(super) const STATE_COLUMNS: &[Column] = &[Column::State, Column::Ip, Column::Error];
/// [`STATE_COLUMNS`] and the MAC, for the create that learnt the MAC the driver chose.
const STATE_AND_MAC_COLUMNS: &[Column] = &[Column::State, Column::Ip, Column::Mac, Column::Error];

/// Sets the instance's state in memory and returns the `instance.state_changed` event for it,
/// with `data` merged into the event's `from` and `to`.
pub(super) fn change_state(instance: &mut Instance, state: InstanceState, data: Value) -> NewEvent {
    let from = instance.state;
    instance.state = state;
    instance.updated_at = store::now();
    let mut event_data = json!({ "from": from, "to": state });
    if let (Value::Object(event), Value::Object(extra)) = (&mut event_data, data) {
        event.extend(extra);
    }
    NewEvent::new("instance.state_changed", "instance", instance.id).data(event_data)
}

/// An instance's last state change in a task and its event, committed by the task engine with
/// the task's outcome (a retried transaction writes the same row and event again).
struct InstanceStateWrite {
    instance: Instance,
    columns: &'static [Column],
    event: NewEvent,
}

impl FinalWrite for InstanceStateWrite {
    fn write(&self, writes: &mut store::PendingWrites) -> Result<(), store::StoreError> {
        store::instances::defer_update(writes, &self.instance, self.columns);
        writes.append_event(self.event.clone());
        Ok(())
    }
}

/// A power call's outcome, where a `conflict` is no failure when the instance is already in
/// `target` (an earlier attempt of the task got it there).
async fn already_there_on_conflict(
    driver: &Driver,
    id: &str,
    function: &str,
    target: driver::InstanceState,
    outcome: Result<driver::Instance, CallError>,
) -> StepResult<driver::Instance> {
    match outcome {
        Ok(instance) => Ok(instance),
        Err(error) if is_conflict(&error) => match driver.get_instance(id).await {
            Ok(current) if current.state == target => Ok(current),
            _ => Err(Step::Failed(task_error_from_call(function, &error))),
        },
        Err(error) => Err(Step::Failed(task_error_from_call(function, &error))),
    }
}

fn check_cancelled(context: &TaskContext) -> StepResult<()> {
    if context.cancel.is_cancelled() { Err(Step::Cancelled) } else { Ok(()) }
}
