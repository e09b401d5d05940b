//! The service layer: the one internal API that every front-end (native REST API, façades,
//! CLI) calls. It validates requests, owns transactions (state change + event together),
//! creates tasks and runs them through the drivers.

mod distribution;
mod groups;
mod host_templates;
mod hosts;
mod identity;
mod instance_operations;
mod instances;
mod lifecycle;
mod placement;
mod projects;
mod providers;
mod reconcile;
mod registry;
mod save_image;
mod templates;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use distribution::DistributeRequest;
pub use groups::{GroupPatch, NewGroup};
pub use hosts::HostPatch;
pub use identity::{
    ApiKeyPatch, CreatedApiKey, NewApiKey, NewRole, NewRoleBinding, NewUser, NewUserGroup, StartedSession, UserPatch,
};
pub use instance_operations::NewSnapshot;
pub use instances::{ActionOptions, CreateInstances, InstanceList, InstancePatch, InstanceQuery};
pub use placement::PlacementExplanation;
pub use projects::{NewProject, ProjectPatch};
pub use providers::{ProviderRegistry, load_providers};
pub use registry::{
    ChunkQuery, FileDownload, FileManifest, FilePushed, GarbageCollected, MAX_CHUNK_BYTES, PushOptions, RequestedRange,
    load_storage,
};
pub use save_image::SaveImageRequest;
pub use templates::{NewTemplate, NewTemplateVersion};

use crate::auth::Caller;
use crate::auth::access::permission;
use crate::auth::permissions::Resource;
use crate::config::Config;
use crate::model::{Event, Task, TaskState};
use crate::plugins::BlobStore;
use crate::store::{self, Store, StoreError};
use crate::tasks::{EndedTasks, TaskEngine, TaskEngineError};

/// Every way a service call can fail. Front-ends map these to their own status codes in one
/// place each (see `api::error`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{kind} '{id}' not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller is authenticated but lacks the permission, which the message names.
    #[error("{0}")]
    Forbidden(String),
    /// A project quota would be exceeded; the message names the limit.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Credentials given to a service call (a login) are not valid.
    #[error("{0}")]
    Unauthorized(String),
    /// Too many failed attempts: retry after the duration.
    #[error("too many failed attempts; retry in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// A request body larger than the server accepts.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// A byte range that does not overlap the `size` bytes of what was asked for.
    #[error("the requested range is outside the {size} bytes of the file")]
    RangeNotSatisfiable { size: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn not_found(kind: &'static str, id: impl ToString) -> Self {
        ServiceError::NotFound { kind, id: id.to_string() }
    }

    /// The stable machine-readable code of the error (API error bodies, failed tasks).
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::NotFound { .. } => "not_found",
            ServiceError::Invalid(_) => "invalid_value",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::Forbidden(_) => "forbidden",
            ServiceError::QuotaExceeded(_) => "quota_exceeded",
            ServiceError::Unauthorized(_) => "unauthorized",
            ServiceError::Throttled(_) => "throttled",
            ServiceError::TooLarge(_) => "too_large",
            ServiceError::Unavailable(_) => "unavailable",
            ServiceError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            ServiceError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        tracing::error!(error = ?error, "store failure");
        ServiceError::Internal(error.to_string())
    }
}

impl From<TaskEngineError> for ServiceError {
    fn from(error: TaskEngineError) -> Self {
        match error {
            TaskEngineError::NotFound(id) => ServiceError::not_found("task", id),
            TaskEngineError::Store(error) => error.into(),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// Checks an operator-chosen name: 1 to `max_len` characters of letters, digits, `.`, `_` and
/// `-`; the error names `field` and the value.
pub(crate) fn check_name(field: &str, name: &str, max_len: usize) -> ServiceResult<()> {
    let valid = !name.is_empty()
        && name.len() <= max_len
        && name.chars().all(|character| character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-'));
    if !valid {
        return Err(ServiceError::Invalid(format!(
            "{field} '{name}' must be 1-{max_len} characters of letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// Settings of the service that come from the operator's configuration.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub reconcile_interval: Duration,
    pub host_offline_after: Duration,
    pub task_concurrency: usize,
    pub task_max_attempts: u32,
    /// The grace period of a graceful stop that does not give one.
    pub default_stop_grace: Duration,
    /// Where template images were kept before the registry (`<data_dir>/templates`).
    pub template_images_dir: PathBuf,
    pub max_template_image_bytes: u64,
    /// The size of the chunks pushed files are cut into.
    pub template_chunk_bytes: u64,
    /// Garbage collection spares unreferenced chunks younger than this.
    pub template_gc_grace: Duration,
    /// A session ends after this long unused …
    pub session_idle_timeout: Duration,
    /// … and after this long whatever its use.
    pub session_max_lifetime: Duration,
}

impl ServiceSettings {
    pub fn from_config(config: &Config) -> Self {
        let reconcile_interval = Duration::from_secs_f64(config.reconcile.interval_secs);
        ServiceSettings {
            reconcile_interval,
            host_offline_after: Duration::from_secs_f64(config.reconcile.host_offline_after_secs),
            task_concurrency: config.tasks.concurrency,
            task_max_attempts: config.tasks.max_attempts,
            default_stop_grace: Duration::from_secs_f64(config.instances.stop_grace_secs),
            template_images_dir: config.template_images_dir(),
            max_template_image_bytes: config.templates.max_image_gib.saturating_mul(1 << 30),
            template_chunk_bytes: config.templates.chunk_size_kib.saturating_mul(1024),
            template_gc_grace: Duration::from_secs_f64(config.templates.gc_grace_secs),
            session_idle_timeout: Duration::from_secs_f64(config.auth.session_idle_timeout_secs),
            session_max_lifetime: Duration::from_secs_f64(config.auth.session_max_lifetime_secs),
        }
    }
}

/// Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    tasks: TaskEngine,
    providers: ProviderRegistry,
    settings: ServiceSettings,
    shutdown: CancellationToken,
    login_throttle: identity::LoginThrottle,
    registry: registry::Registry,
    /// Whether instances may be waiting for a host: set by a create request and by a
    /// placement pass that leaves some waiting; a pass runs only when it is set.
    placement_wanted: std::sync::atomic::AtomicBool,
}

impl Service {
    /// A service over `store`, driving `providers` and keeping template files in `blobs`.
    pub fn new(store: Store, providers: ProviderRegistry, blobs: BlobStore, settings: ServiceSettings) -> Service {
        let tasks = TaskEngine::new(store.clone(), settings.task_concurrency, settings.task_max_attempts);
        let login_throttle = identity::LoginThrottle::default();
        let shutdown = CancellationToken::new();
        let registry = registry::Registry {
            blobs,
            lock: tokio::sync::RwLock::new(()),
            chunk_bytes: settings.template_chunk_bytes,
            gc_min_age: settings.template_gc_grace,
            max_file_bytes: settings.max_template_image_bytes,
        };
        // Set at start: instances may have been waiting when the server stopped.
        let placement_wanted = std::sync::atomic::AtomicBool::new(true);
        let inner = Inner { store, tasks, providers, settings, shutdown, login_throttle, registry, placement_wanted };
        Service { inner: Arc::new(inner) }
    }

    /// Recovers interrupted tasks, takes a first inventory of every provider, then starts the
    /// task dispatcher and the reconciliation loop.
    pub async fn start(&self) -> ServiceResult<()> {
        self.ensure_builtin_roles().await?;
        self.import_legacy_template_images().await?;
        let resumed = self.inner.tasks.recover().await?;
        if resumed > 0 {
            tracing::info!(resumed, "resuming tasks interrupted by the last shutdown");
        }
        self.reconcile_all().await;
        self.inner.tasks.start(Arc::new(lifecycle::LifecycleHandler { service: self.clone() }));
        let service = self.clone();
        tokio::spawn(async move { service.reconcile_loop().await });
        Ok(())
    }

    /// Stops background work; running tasks are left to be resumed on the next start.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.shutdown();
    }

    /// Cancelled when the service shuts down; long-lived streams end on it.
    pub fn stopping(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    fn login_throttle(&self) -> &identity::LoginThrottle {
        &self.inner.login_throttle
    }

    pub(crate) fn providers(&self) -> &ProviderRegistry {
        &self.inner.providers
    }

    pub(crate) fn task_engine(&self) -> &TaskEngine {
        &self.inner.tasks
    }

    // ----- tasks -----

    pub async fn get_task(&self, caller: &Caller, id: Uuid) -> ServiceResult<Task> {
        let task = store::tasks::get(&mut *self.inner.store.reader().await?, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("task", id))?;
        if !self.may_see_task(caller, &task, "list").await? {
            return Err(ServiceError::not_found("task", id));
        }
        Ok(task)
    }

    /// Task endings from now on, for [`Service::wait_started_task`].
    pub fn subscribe_task_endings(&self) -> EndedTasks {
        self.inner.tasks.subscribe_ended()
    }

    /// Waits up to `wait` for a task the caller has just started (and so may see) to end,
    /// listening to `ended` subscribed before the start; answers the task as it is then.
    pub async fn wait_started_task(&self, task: Task, ended: EndedTasks, wait: Duration) -> ServiceResult<Task> {
        Ok(self.inner.tasks.wait_from(task, ended, wait).await?)
    }

    /// Waits up to `wait` for the task to end; answers the task as it is then.
    pub async fn wait_task(&self, caller: &Caller, id: Uuid, wait: Duration) -> ServiceResult<Task> {
        let ended = self.inner.tasks.subscribe_ended();
        let task = self.get_task(caller, id).await?;
        Ok(self.inner.tasks.wait_from(task, ended, wait).await?)
    }

    /// Whether the caller has `task:<action>` for the task: everywhere, or in the project of
    /// the instance (or the first instance of the batch) it works on.
    async fn may_see_task(&self, caller: &Caller, task: &Task, action: &'static str) -> ServiceResult<bool> {
        let needed = permission(Resource::Task, action);
        if caller.access.allows(needed, None, None) {
            return Ok(true);
        }
        let instance_id = task.object_id.or_else(|| {
            let first = task.input.get("instances")?.as_array()?.first()?.as_str()?;
            Uuid::parse_str(first).ok()
        });
        let Some(instance_id) = instance_id else { return Ok(false) };
        let instance = store::instances::get(&mut *self.inner.store.reader().await?, instance_id).await?;
        Ok(instance.is_some_and(|instance| caller.access.allows(needed, Some(instance.project_id), None)))
    }

    /// Tasks the caller may see, oldest first.
    pub async fn list_tasks(&self, caller: &Caller, query: TaskQuery) -> ServiceResult<Vec<Task>> {
        self.visible_projects(caller, Resource::Task).await?;
        let filter = store::tasks::TaskFilter {
            states: query.state.into_iter().collect(),
            object_id: query.object_id,
            parent_id: query.parent_id,
            after: query.after,
            limit: Some(query.limit),
            ..Default::default()
        };
        let tasks = store::tasks::list(&mut *self.inner.store.reader().await?, &filter).await?;
        let mut visible = Vec::with_capacity(tasks.len());
        for task in tasks {
            if self.may_see_task(caller, &task, "list").await? {
                visible.push(task);
            }
        }
        Ok(visible)
    }

    /// Cancels a task; a task that already ended is answered as it is.
    pub async fn cancel_task(&self, caller: &Caller, id: Uuid) -> ServiceResult<Task> {
        let task = self.get_task(caller, id).await?;
        if !self.may_see_task(caller, &task, "cancel").await? {
            return Err(ServiceError::Forbidden(format!("{} lacks the permission task:cancel", caller.actor())));
        }
        Ok(self.inner.tasks.cancel(id).await?)
    }

    // ----- events -----

    /// Events after `since`, oldest first: all of them with `event:list` everywhere, else the
    /// caller's own (its audit trail). A page may hold fewer than `limit` events then; the
    /// last sequence number read is returned to continue from.
    pub async fn events_after(&self, caller: &Caller, since: i64, limit: u32) -> ServiceResult<(Vec<Event>, i64)> {
        let everything = caller.access.allows(permission(Resource::Event, "list"), None, None);
        if !everything && caller.access.projects_with(permission(Resource::Event, "list")).is_empty() {
            self.require(caller, Resource::Event, "list", None, None).await?;
        }
        let events = store::events::list_after(&mut *self.inner.store.reader().await?, since, limit).await?;
        let last = events.last().map_or(since, |event| event.seq);
        if everything {
            return Ok((events, last));
        }
        Ok((events.into_iter().filter(|event| event.actor == caller.actor()).collect(), last))
    }

    /// Changes whenever events were committed; its value is the newest sequence number.
    pub fn watch_events(&self) -> watch::Receiver<i64> {
        self.inner.store.subscribe_events()
    }
}

#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub state: Option<TaskState>,
    pub object_id: Option<Uuid>,
    pub parent_id: Option<Uuid>,
    pub after: Option<Uuid>,
    pub limit: u32,
}
