//! The task engine: durable rows for every long operation, a dispatcher that starts pending
//! tasks (bounded concurrency), cancellation, waiting, batches, and recovery after a restart.
//!
//! The engine knows nothing about instances: what a task does is the [`TaskHandler`]'s business
//! (the service layer). The engine owns task state transitions and their events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::{NewEvent, Task, TaskError, TaskKind, TaskState};
use crate::store::{self, Store, StoreError, WriteTx};

/// How a task ended, as decided by its handler.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Succeeded(Value),
    Failed(TaskError),
    Cancelled(String),
}

/// What a running task may use: its cancellation token and a progress reporter.
#[derive(Clone)]
pub struct TaskContext {
    pub task_id: Uuid,
    pub cancel: CancellationToken,
    store: Store,
    last_progress_write: Arc<Mutex<Option<Instant>>>,
}

impl TaskContext {
    /// Records progress; writes are throttled to one per second per task.
    pub fn report_progress(&self, fraction: f32, message: &str) {
        let fraction = fraction.clamp(0.0, 1.0);
        {
            let Ok(mut last) = self.last_progress_write.lock() else { return };
            if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let (store, task_id, message) = (self.store.clone(), self.task_id, message.to_owned());
        tokio::spawn(async move {
            if let Ok(mut transaction) = store.begin().await {
                let written = store::tasks::update_progress(&mut transaction, task_id, fraction, &message).await;
                if written.is_ok() {
                    let _ = transaction.commit().await;
                }
            }
        });
    }
}

/// Runs tasks of every kind but `batch`. Implemented by the service layer.
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs (or resumes: `task.attempts > 1`) the task. Must be idempotent across attempts.
    fn run(&self, task: Task, context: TaskContext) -> impl Future<Output = TaskOutcome> + Send;
    /// Called at every dispatch cycle before pending tasks are claimed (placement goes here).
    fn before_dispatch(&self) -> impl Future<Output = ()> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum TaskEngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("task {0} not found")]
    NotFound(Uuid),
}

/// A task about to be created.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub kind: TaskKind,
    pub object_id: Option<Uuid>,
    pub parent_id: Option<Uuid>,
    pub input: Value,
    pub idempotency_key: Option<String>,
    pub request_digest: Option<String>,
    pub actor: String,
}

impl NewTask {
    /// A task working on one object (an instance), with no idempotency key.
    pub fn on_object(kind: TaskKind, object_id: Uuid, input: Value, actor: &str) -> Self {
        NewTask {
            kind,
            object_id: Some(object_id),
            parent_id: None,
            input,
            idempotency_key: None,
            request_digest: None,
            actor: actor.into(),
        }
    }
}

struct Shared {
    store: Store,
    max_attempts: u32,
    permits: Arc<Semaphore>,
    wake: Notify,
    running: Mutex<HashMap<Uuid, CancellationToken>>,
    finished: broadcast::Sender<Uuid>,
    shutdown: CancellationToken,
}

#[derive(Clone)]
pub struct TaskEngine {
    shared: Arc<Shared>,
}

impl TaskEngine {
    pub fn new(store: Store, concurrency: usize, max_attempts: u32) -> Self {
        let (finished, _) = broadcast::channel(4096);
        TaskEngine {
            shared: Arc::new(Shared {
                store,
                max_attempts,
                permits: Arc::new(Semaphore::new(concurrency)),
                wake: Notify::new(),
                running: Mutex::new(HashMap::new()),
                finished,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Inserts a pending task (and its `task.created` event) in the caller's transaction.
    /// Call [`TaskEngine::wake`] after the commit.
    pub async fn create(&self, transaction: &mut WriteTx, new: NewTask) -> Result<Task, StoreError> {
        let task = Task {
            id: Uuid::now_v7(),
            kind: new.kind,
            state: TaskState::Pending,
            object_id: new.object_id,
            parent_id: new.parent_id,
            progress: 0.0,
            message: None,
            input: new.input,
            result: None,
            error: None,
            attempts: 0,
            idempotency_key: new.idempotency_key,
            created_at: store::now(),
            started_at: None,
            ended_at: None,
        };
        store::tasks::insert(transaction, &task, new.request_digest.as_deref()).await?;
        transaction
            .append_event(
                NewEvent::new("task.created", "task", task.id)
                    .actor(new.actor)
                    .data(json!({ "kind": task.kind, "object_id": task.object_id, "parent_id": task.parent_id })),
            )
            .await?;
        Ok(task)
    }

    /// Asks the dispatcher to look for work now.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Puts tasks interrupted by a crash or restart back in the queue, or fails them once they
    /// have been interrupted `max_attempts` times. Finishes batches whose children all ended.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let store = &self.shared.store;
        let interrupted = store::tasks::list(
            &mut *store.reader().await?,
            &store::tasks::TaskFilter { states: vec![TaskState::Running], ..Default::default() },
        )
        .await?;
        let count = interrupted.len();
        for mut task in interrupted {
            let mut transaction = store.begin().await?;
            if task.attempts >= self.shared.max_attempts {
                let error = TaskError {
                    code: "interrupted".into(),
                    message: format!("interrupted by {} server restarts", task.attempts),
                };
                finish_in(&mut transaction, &mut task, TaskOutcome::Failed(error)).await?;
            } else {
                task.state = TaskState::Pending;
                task.message = Some("resumed after a server restart".into());
                store::tasks::update(&mut transaction, &task).await?;
                transaction.append_event(NewEvent::new("task.resumed", "task", task.id)).await?;
            }
            transaction.commit().await?;
        }
        let batches = store::tasks::list(
            &mut *store.reader().await?,
            &store::tasks::TaskFilter {
                states: vec![TaskState::Pending, TaskState::Running],
                kind: Some(TaskKind::Batch),
                ..Default::default()
            },
        )
        .await?;
        for batch in batches {
            let mut transaction = store.begin().await?;
            finish_batch_if_done(&mut transaction, batch.id).await?;
            transaction.commit().await?;
        }
        Ok(count)
    }

    /// Starts the dispatcher loop. It runs until [`TaskEngine::shutdown`].
    pub fn start<H: TaskHandler>(&self, handler: Arc<H>) {
        let engine = self.clone();
        tokio::spawn(async move { engine.dispatch_loop(handler).await });
    }

    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
        for token in self.running_tokens() {
            token.cancel();
        }
    }

    fn running_tokens(&self) -> Vec<CancellationToken> {
        self.shared.running.lock().map(|running| running.values().cloned().collect()).unwrap_or_default()
    }

    async fn dispatch_loop<H: TaskHandler>(self, handler: Arc<H>) {
        loop {
            if self.shared.shutdown.is_cancelled() {
                return;
            }
            handler.before_dispatch().await;
            if let Err(error) = self.claim_and_spawn(&handler).await {
                tracing::error!(error = %error, "task dispatch failed");
            }
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.shared.shutdown.cancelled() => return,
            }
        }
    }

    async fn claim_and_spawn<H: TaskHandler>(&self, handler: &Arc<H>) -> Result<(), StoreError> {
        let available = self.shared.permits.available_permits();
        if available == 0 {
            return Ok(());
        }
        let store = &self.shared.store;
        let candidates = store::tasks::claimable(&mut *store.reader().await?, available as u32).await?;
        for (mut task, cancel_requested) in candidates {
            let Ok(permit) = self.shared.permits.clone().try_acquire_owned() else { break };
            let mut transaction = store.begin().await?;
            // Re-read inside the write transaction: the task may have been cancelled meanwhile.
            match store::tasks::get(&mut transaction, task.id).await? {
                Some(current) if current.state == TaskState::Pending => {}
                _ => continue,
            }
            task.state = TaskState::Running;
            task.attempts += 1;
            task.started_at.get_or_insert_with(store::now);
            store::tasks::update(&mut transaction, &task).await?;
            transaction
                .append_event(NewEvent::new("task.started", "task", task.id).data(json!({ "attempt": task.attempts })))
                .await?;
            transaction.commit().await?;

            let cancel = CancellationToken::new();
            if cancel_requested {
                cancel.cancel();
            }
            if let Ok(mut running) = self.shared.running.lock() {
                running.insert(task.id, cancel.clone());
            }
            let context = TaskContext {
                task_id: task.id,
                cancel,
                store: store.clone(),
                last_progress_write: Arc::new(Mutex::new(None)),
            };
            let (engine, handler) = (self.clone(), handler.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let kind = task.kind;
                let span = tracing::info_span!("task", id = %task.id, kind = %kind, attempt = task.attempts);
                let outcome = tracing::Instrument::instrument(handler.run(task.clone(), context), span).await;
                drop(permit);
                if engine.shared.shutdown.is_cancelled() && matches!(outcome, TaskOutcome::Cancelled(_)) {
                    // Shutting down: leave the task running so recovery resumes it on the next start.
                    return;
                }
                let state = engine.finish(task, outcome).await;
                metrics::histogram!("hyperplane_task_duration_seconds", "kind" => kind.as_str(), "state" => state.as_str())
                    .record(started.elapsed().as_secs_f64());
                engine.wake();
            });
        }
        Ok(())
    }

    /// Records the outcome of a task that ran; retries the write until it succeeds so that no
    /// task is left running.
    async fn finish(&self, mut task: Task, outcome: TaskOutcome) -> TaskState {
        let id = task.id;
        loop {
            let result: Result<(), StoreError> = async {
                let mut transaction = self.shared.store.begin().await?;
                finish_in(&mut transaction, &mut task, outcome.clone()).await?;
                transaction.commit().await
            }
            .await;
            match result {
                Ok(()) => break,
                Err(error) => {
                    tracing::error!(task = %id, error = %error, "recording the task's outcome failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if let Ok(mut running) = self.shared.running.lock() {
            running.remove(&id);
        }
        let _ = self.shared.finished.send(id);
        if let Some(parent) = task.parent_id {
            let _ = self.shared.finished.send(parent);
        }
        task.state
    }

    /// Requests cancellation: a running task sees its token cancelled; a pending one is
    /// started at once with a cancelled token so its handler can clean up. Cancelling a batch
    /// cancels its children. Returns the task as it is now.
    pub async fn cancel(&self, id: Uuid) -> Result<Task, TaskEngineError> {
        let store = &self.shared.store;
        let task = store::tasks::get(&mut *store.reader().await?, id).await?.ok_or(TaskEngineError::NotFound(id))?;
        if task.state.is_final() {
            return Ok(task);
        }
        let children = if task.kind == TaskKind::Batch {
            store::tasks::list(
                &mut *store.reader().await?,
                &store::tasks::TaskFilter { parent_id: Some(id), ..Default::default() },
            )
            .await?
        } else {
            Vec::new()
        };
        let mut transaction = store.begin().await?;
        for target in std::iter::once(&task).chain(children.iter().filter(|child| !child.state.is_final())) {
            store::tasks::request_cancel(&mut transaction, target.id).await?;
            transaction.append_event(NewEvent::new("task.cancel_requested", "task", target.id)).await?;
        }
        transaction.commit().await?;
        if let Ok(running) = self.shared.running.lock() {
            for target in std::iter::once(&task).chain(children.iter()) {
                if let Some(token) = running.get(&target.id) {
                    token.cancel();
                }
            }
        }
        self.wake();
        store::tasks::get(&mut *store.reader().await?, id).await?.ok_or(TaskEngineError::NotFound(id))
    }

    /// Waits until the task has ended or `timeout` passed; returns the task as it is then.
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> Result<Task, TaskEngineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut finished = self.shared.finished.subscribe();
        loop {
            let task = store::tasks::get(&mut *self.shared.store.reader().await?, id)
                .await?
                .ok_or(TaskEngineError::NotFound(id))?;
            if task.state.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(task);
            }
            loop {
                match tokio::time::timeout_at(deadline, finished.recv()).await {
                    // Time is up: answer the task as it is now (progress, message), not as it was.
                    Err(_) => break,
                    Ok(Ok(finished_id)) if finished_id != id => continue,
                    // Ours finished, or we lagged behind and must re-read.
                    Ok(_) => break,
                }
            }
        }
    }
}

/// Writes the final state of `task` and its event; ends its batch when it was the last child.
async fn finish_in(transaction: &mut WriteTx, task: &mut Task, outcome: TaskOutcome) -> Result<(), StoreError> {
    task.ended_at = Some(store::now());
    match outcome {
        TaskOutcome::Succeeded(result) => {
            task.state = TaskState::Succeeded;
            task.progress = 1.0;
            task.message = None;
            task.result = Some(result);
            task.error = None;
        }
        TaskOutcome::Failed(error) => {
            task.state = TaskState::Failed;
            task.message = Some(error.message.clone());
            task.error = Some(error);
        }
        TaskOutcome::Cancelled(reason) => {
            task.state = TaskState::Cancelled;
            task.error = Some(TaskError { code: "cancelled".into(), message: reason.clone() });
            task.message = Some(reason);
        }
    }
    store::tasks::update(transaction, task).await?;
    transaction
        .append_event(
            NewEvent::new(format!("task.{}", task.state), "task", task.id)
                .data(json!({ "kind": task.kind, "object_id": task.object_id, "error": task.error })),
        )
        .await?;
    if let Some(parent) = task.parent_id {
        finish_batch_if_done(transaction, parent).await?;
    }
    Ok(())
}

/// A batch ends when all its children have: succeeded if all did, else failed (or cancelled
/// when every unsuccessful child was cancelled).
async fn finish_batch_if_done(transaction: &mut WriteTx, batch_id: Uuid) -> Result<(), StoreError> {
    let Some(mut batch) = store::tasks::get(transaction, batch_id).await? else { return Ok(()) };
    if batch.state.is_final() {
        return Ok(());
    }
    let counts = store::tasks::count_children_by_state(transaction, batch_id).await?;
    let total: u32 = counts.iter().map(|(_, count)| count).sum();
    let done: u32 = counts.iter().filter(|(state, _)| state.is_final()).map(|(_, count)| count).sum();
    if done < total {
        batch.state = TaskState::Running;
        batch.started_at.get_or_insert_with(store::now);
        batch.progress = done as f32 / total.max(1) as f32;
        batch.message = Some(format!("{done} of {total} done"));
        store::tasks::update(transaction, &batch).await?;
        return Ok(());
    }
    let children =
        store::tasks::list(transaction, &store::tasks::TaskFilter { parent_id: Some(batch_id), ..Default::default() })
            .await?;
    let failed: Vec<&Task> = children.iter().filter(|child| child.state != TaskState::Succeeded).collect();
    let results: Vec<Value> = children.iter().map(|child| child.result.clone().unwrap_or(Value::Null)).collect();
    let outcome = if failed.is_empty() {
        TaskOutcome::Succeeded(
            json!({ "tasks": children.iter().map(|child| child.id).collect::<Vec<_>>(), "results": results }),
        )
    } else if failed.iter().all(|child| child.state == TaskState::Cancelled) {
        TaskOutcome::Cancelled(format!("{} of {} tasks cancelled", failed.len(), children.len()))
    } else {
        let first = failed.iter().find_map(|child| child.error.clone());
        TaskOutcome::Failed(TaskError {
            code: "batch_failed".into(),
            message: format!(
                "{} of {} tasks failed{}",
                failed.len(),
                children.len(),
                first.map(|error| format!("; first error: {}", error.message)).unwrap_or_default()
            ),
        })
    };
    Box::pin(finish_in(transaction, &mut batch, outcome)).await
}
