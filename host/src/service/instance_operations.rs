//! Snapshots of instances: listed live from the driver; created, reverted to and deleted as
//! tasks, each recorded with its event (a revert together with the state it returns the
//! instance to). Requests are checked against the driver's list first, so an unknown snapshot
//! is `not found` and a name in use a `conflict` before any task exists.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::lifecycle::{STATE_COLUMNS, Step, StepResult, failure};
use super::providers::{
    instance_state_from_driver, is_conflict, is_not_found, service_error_from_call, snapshot_from_driver,
    task_error_from_call,
};
use super::{Service, ServiceError, ServiceResult, check_name};
use crate::auth::Caller;
use crate::model::{Instance, InstanceState, NewEvent, Snapshot, Task, TaskKind};
use crate::plugins::Driver;

/// `POST /v1/instances/{id}/snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSnapshot {
    /// 1-64 characters of letters, digits, `.`, `_` and `-`; unique per instance.
    pub name: String,
    /// At most 1024 bytes.
    #[serde(default)]
    pub description: String,
}

const MAX_SNAPSHOT_NAME_CHARS: usize = 64;
const MAX_SNAPSHOT_DESCRIPTION_BYTES: usize = 1024;
/// States in which an instance can be snapshotted.
const SNAPSHOT_STATES: &[InstanceState] = &[InstanceState::Running, InstanceState::Stopped, InstanceState::Suspended];
/// States in which an instance's snapshots can be reverted to or deleted.
const SNAPSHOT_CHANGE_STATES: &[InstanceState] =
    &[InstanceState::Running, InstanceState::Stopped, InstanceState::Suspended, InstanceState::Error];

fn check_snapshot_name(name: &str) -> ServiceResult<()> {
    check_name("snapshot name", name, MAX_SNAPSHOT_NAME_CHARS)
}

impl Service {
    /// The instance's snapshots, oldest first, live from its driver.
    pub async fn list_snapshots(&self, caller: &Caller, id: Uuid) -> ServiceResult<Vec<Snapshot>> {
        let instance = self.get_instance(caller, id).await?;
        let driver = self.snapshot_driver(&instance).await?;
        self.snapshots_on_driver(&instance, &driver).await
    }

    /// Snapshots a running, stopped or suspended instance: a task.
    pub async fn create_snapshot(&self, caller: &Caller, id: Uuid, request: NewSnapshot) -> ServiceResult<Task> {
        check_snapshot_name(&request.name)?;
        if request.description.len() > MAX_SNAPSHOT_DESCRIPTION_BYTES {
            return Err(ServiceError::Invalid(format!(
                "snapshot description must be at most {MAX_SNAPSHOT_DESCRIPTION_BYTES} bytes"
            )));
        }
        if request.description.chars().any(|character| character.is_control() && character != '\n') {
            return Err(ServiceError::Invalid("snapshot description must not contain control characters".into()));
        }
        let instance = self.authorized_instance(caller, id, "update").await?;
        let driver = self.snapshot_driver(&instance).await?;
        if self.snapshots_on_driver(&instance, &driver).await?.iter().any(|snapshot| snapshot.name == request.name) {
            return Err(ServiceError::Conflict(format!(
                "instance {id} already has a snapshot named '{}'",
                request.name
            )));
        }
        let input = json!({ "instance_id": id, "name": request.name, "description": request.description });
        self.begin_instance_task(id, TaskKind::SnapshotCreate, SNAPSHOT_STATES, "snapshot", input, caller).await
    }

    /// Returns the instance to a snapshot, in the state the snapshot holds: a task.
    pub async fn revert_snapshot(&self, caller: &Caller, id: Uuid, name: &str) -> ServiceResult<Task> {
        self.check_snapshot_exists(caller, id, name).await?;
        let input = json!({ "instance_id": id, "name": name });
        self.begin_instance_task(id, TaskKind::SnapshotRevert, SNAPSHOT_CHANGE_STATES, "revert", input, caller).await
    }

    /// Deletes a snapshot; the instance stays as it is: a task.
    pub async fn delete_snapshot(&self, caller: &Caller, id: Uuid, name: &str) -> ServiceResult<Task> {
        self.check_snapshot_exists(caller, id, name).await?;
        let input = json!({ "instance_id": id, "name": name });
        let operation = "delete a snapshot of";
        self.begin_instance_task(id, TaskKind::SnapshotDelete, SNAPSHOT_CHANGE_STATES, operation, input, caller).await
    }

    /// The instance's driver, when it has a host and its provider supports snapshots.
    async fn snapshot_driver(&self, instance: &Instance) -> ServiceResult<Driver> {
        let (host, driver) = self.instance_driver(instance).await?;
        if !driver.capabilities().snapshots {
            return Err(ServiceError::Conflict(format!("provider '{}' does not support snapshots", host.provider)));
        }
        Ok(driver)
    }

    async fn snapshots_on_driver(&self, instance: &Instance, driver: &Driver) -> ServiceResult<Vec<Snapshot>> {
        let snapshots = driver.list_snapshots(&instance.provider_instance_id()).await.map_err(|error| {
            service_error_from_call("list-snapshots", &error, "instance on its provider", instance.id)
        })?;
        Ok(snapshots.into_iter().map(snapshot_from_driver).collect())
    }

    /// `not found` unless the instance has a snapshot named `name`.
    async fn check_snapshot_exists(&self, caller: &Caller, id: Uuid, name: &str) -> ServiceResult<()> {
        check_snapshot_name(name)?;
        let instance = self.authorized_instance(caller, id, "update").await?;
        let driver = self.snapshot_driver(&instance).await?;
        if !self.snapshots_on_driver(&instance, &driver).await?.iter().any(|snapshot| snapshot.name == name) {
            return Err(ServiceError::not_found("snapshot", format!("{id}/{name}")));
        }
        Ok(())
    }

    // ----- what the tasks do -----

    pub(super) async fn run_create_snapshot(&self, id: Uuid, task: &Task) -> StepResult<Value> {
        let name = snapshot_name_of(task)?;
        let description = task.input.get("description").and_then(Value::as_str).unwrap_or_default();
        let (instance, _, driver) = self.load_placed(id).await?;
        let provider_id = instance.provider_instance_id();
        let snapshot = match driver.create_snapshot(&provider_id, name, description).await {
            Ok(snapshot) => snapshot_from_driver(snapshot),
            // Created by an earlier attempt of this task.
            Err(error) if is_conflict(&error) => driver
                .list_snapshots(&provider_id)
                .await
                .ok()
                .and_then(|snapshots| snapshots.into_iter().find(|snapshot| snapshot.name == name))
                .map(snapshot_from_driver)
                .ok_or_else(|| Step::Failed(task_error_from_call("create-snapshot", &error)))?,
            Err(error) => return Err(Step::Failed(task_error_from_call("create-snapshot", &error))),
        };
        let event = NewEvent::new("instance.snapshot_created", "instance", id).data(json!({
            "name": snapshot.name,
            "description": snapshot.description,
            "state": snapshot.state,
        }));
        self.record_event(event).await?;
        Ok(json!({ "instance_id": id, "snapshot": snapshot }))
    }

    pub(super) async fn run_revert_snapshot(&self, id: Uuid, task: &Task) -> StepResult<Value> {
        let name = snapshot_name_of(task)?;
        let (mut instance, _, driver) = self.load_placed(id).await?;
        match driver.revert_snapshot(&instance.provider_instance_id(), name).await {
            Ok(reverted) => {
                let state = instance_state_from_driver(reverted.state);
                instance.ip = reverted.ip;
                instance.error = None;
                let event = NewEvent::new("instance.snapshot_reverted", "instance", id)
                    .data(json!({ "name": name, "state": state }));
                let data = json!({ "reason": "snapshot reverted", "snapshot": name, "ip": instance.ip });
                self.set_state_recording(&mut instance, state, data, Some(event), STATE_COLUMNS).await?;
                Ok(json!({ "instance_id": id, "snapshot": name, "state": state }))
            }
            Err(error) => {
                let step = Step::Failed(task_error_from_call("revert-snapshot", &error));
                self.settle_after_failure(&mut instance, &driver, step).await
            }
        }
    }

    pub(super) async fn run_delete_snapshot(&self, id: Uuid, task: &Task) -> StepResult<Value> {
        let name = snapshot_name_of(task)?;
        let (instance, _, driver) = self.load_placed(id).await?;
        match driver.delete_snapshot(&instance.provider_instance_id(), name).await {
            // Not found: deleted by an earlier attempt of this task.
            Ok(()) => {}
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(Step::Failed(task_error_from_call("delete-snapshot", &error))),
        }
        self.record_event(NewEvent::new("instance.snapshot_deleted", "instance", id).data(json!({ "name": name })))
            .await?;
        Ok(json!({ "instance_id": id, "snapshot": name }))
    }

    /// Appends an event that comes with no state change.
    async fn record_event(&self, event: NewEvent) -> StepResult<()> {
        let mut transaction = self.store().begin().await?;
        transaction.append_event(event);
        transaction.commit().await?;
        Ok(())
    }
}

fn snapshot_name_of(task: &Task) -> StepResult<&str> {
    task.input
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Step::Failed(failure("invalid_task", "task has no snapshot name")))
}
