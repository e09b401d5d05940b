//! The task engine: durable rows for every long operation, a dispatcher that starts pending
//! tasks (bounded concurrency), cancellation, waiting, batches, and recovery after a restart.
//!
//! The engine knows nothing about instances: what a task does is the [`TaskHandler`]'s business
//! (the service layer). The engine owns task state transitions and their events.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::Caller;
use crate::model::{NewEvent, Task, TaskError, TaskKind, TaskState, Timestamp};
use crate::store::{self, PendingWrites, Store, StoreError, WriteTx};

/// How a task ended, as decided by its handler.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Succeeded(Value),
    Failed(TaskError),
    Cancelled(String),
}

/// A write a handler leaves to the engine: it is committed in the transaction that records the
/// task's outcome (see [`TaskContext::finish_with`]), so a task's last state change and its
/// completion are one transaction. It may run more than once if that transaction has to be
/// retried, so it must write the same thing every time. It only writes (sent with the commit).
pub trait FinalWrite: Send + Sync + 'static {
    fn write(&self, writes: &mut PendingWrites) -> Result<(), StoreError>;
}

type FinalWriteSlot = Arc<Mutex<Option<Box<dyn FinalWrite>>>>;

/// What a running task may use: its cancellation token and a progress reporter.
#[derive(Clone)]
pub struct TaskContext {
    pub task_id: Uuid,
    pub cancel: CancellationToken,
    store: Store,
    last_progress_write: Arc<Mutex<Option<Instant>>>,
    final_write: FinalWriteSlot,
}

impl TaskContext {
    /// Leaves `write` to be committed together with the task's outcome, whatever the outcome
    /// is, instead of in a transaction of its own (replacing an earlier one). Nothing of it is
    /// visible before the task has ended. After a crash before that commit, the task runs
    /// again (its steps are idempotent); after it, the task has ended and does not run again.
    pub fn finish_with(&self, write: impl FinalWrite) {
        if let Ok(mut slot) = self.final_write.lock() {
            *slot = Some(Box::new(write));
        }
    }

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
    /// What a task starts by reading, read for all the tasks started together.
    type Prefetched: Default + Send + 'static;
    /// Reads, once for all the tasks just started (one round trip instead of one per task), what
    /// each starts by reading: one value per task, in their order (the default for a task it
    /// has nothing for, or when the read failed: the task then reads for itself).
    fn prefetch(&self, tasks: &[Task]) -> impl Future<Output = Vec<Self::Prefetched>> + Send;
    /// Runs (or resumes: `task.attempts > 1`) the task, with what was read for it after it was
    /// started. Must be idempotent across attempts.
    fn run(
        &self,
        task: Task,
        context: TaskContext,
        prefetched: Self::Prefetched,
    ) -> impl Future<Output = TaskOutcome> + Send;
    /// Called at every dispatch cycle before pending tasks are claimed (placement goes here);
    /// answers whether it may have made pending tasks claimable.
    fn before_dispatch(&self) -> impl Future<Output = bool> + Send;
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
    /// Who asked for the task (its `task.created` event records the caller's actor, scheme
    /// and source).
    pub requested_by: Caller,
}

impl NewTask {
    /// A task working on one object (an instance), with no idempotency key.
    pub fn on_object(kind: TaskKind, object_id: Uuid, input: Value, requested_by: &Caller) -> Self {
        NewTask {
            kind,
            object_id: Some(object_id),
            parent_id: None,
            input,
            idempotency_key: None,
            request_digest: None,
            requested_by: requested_by.clone(),
        }
    }

    /// A batch about `object_id` (a template, say): its children are created with
    /// [`NewTask::in_batch`] and it ends when they all have.
    pub fn batch(object_id: Uuid, input: Value, requested_by: &Caller) -> Self {
        NewTask::on_object(TaskKind::Batch, object_id, input, requested_by)
    }

    /// This task as a child of batch `parent_id`.
    pub fn in_batch(self, parent_id: Uuid) -> Self {
        NewTask { parent_id: Some(parent_id), ..self }
    }
}

/// At most this many tasks are claimed in one write transaction.
const CLAIM_BATCH: usize = 16;

/// The dispatcher looks for claimable tasks at least this often, told of them or not.
const CLAIM_INTERVAL: Duration = Duration::from_secs(1);

/// How often the transaction recording a task's outcome is tried with the handler's final
/// write before the task is failed without it.
const FINAL_WRITE_ATTEMPTS: u32 = 3;

struct Shared {
    store: Store,
    max_attempts: u32,
    permits: Arc<Semaphore>,
    wake: Notify,
    /// Set when tasks may have become claimable since the last claim began: new tasks, a
    /// cancellation, a claim cut short by the permits. A dispatch cycle woken for another
    /// reason (a task ended) claims only when it is set, or when the last claim is
    /// [`CLAIM_INTERVAL`] old.
    work_signalled: AtomicBool,
    running: Mutex<HashMap<Uuid, CancellationToken>>,
    /// Tasks created running whose commit has landed, for the dispatcher to spawn.
    started: Mutex<Vec<ReadyToRun>>,
    waiters: Mutex<Waiters>,
    shutdown: CancellationToken,
}

/// A task this process has started (claimed, or created running): its cancellation token and
/// its permit.
type ReadyToRun = (Task, CancellationToken, OwnedSemaphorePermit);

/// What [`TaskEngine::start_committed`] does with a task from [`TaskEngine::create_started`]
/// once the commit that creates it has landed: start it at once, in this process, if it was
/// created running, or wake the dispatcher to claim it if it was created pending (no permit was
/// free). Dropped instead (the commit failed), it gives its permit back and forgets its
/// cancellation token.
pub struct StartOnCommit {
    engine: TaskEngine,
    ready: Option<ReadyToRun>,
}

impl Drop for StartOnCommit {
    fn drop(&mut self) {
        if let Some((task, _, _)) = self.ready.take()
            && let Ok(mut running) = self.engine.shared.running.lock()
        {
            running.remove(&task.id);
        }
    }
}

/// How long the news of a task is kept for a waiter that read it just before.
const ENDED_KEPT_FOR: Duration = Duration::from_secs(10);

/// At most this many tasks' news are kept.
const ENDED_KEPT_AT_MOST: usize = 10_000;

/// Who waits on which task, and what happened to tasks lately: each waiter is woken by its own
/// task only. A waiter marks the time ([`EndedTasks`]), reads the task, then listens; what
/// happened to the task in between is found among the recent news.
#[derive(Default)]
struct Waiters {
    /// Told the task as recorded when it ends, or nothing when a child of a batch ended (the
    /// batch's progress changed: read it again).
    by_task: HashMap<Uuid, Vec<oneshot::Sender<Option<Arc<Task>>>>>,
    /// The latest news of each task, kept for [`ENDED_KEPT_FOR`]: when, and the task if it ended.
    news: HashMap<Uuid, (Instant, Option<Arc<Task>>)>,
    /// When each of `news` came, oldest first.
    news_order: VecDeque<(Instant, Uuid)>,
}

/// What a waiter learns when it starts listening.
enum Listening {
    Ended(Arc<Task>),
    /// A batch's progress changed since the waiter's mark: read it again.
    Changed,
    Waiting(oneshot::Receiver<Option<Arc<Task>>>),
}

impl Waiters {
    fn listen(&mut self, id: Uuid, since: Instant) -> Listening {
        match self.news.get(&id) {
            Some((_, Some(task))) => return Listening::Ended(task.clone()),
            Some((at, None)) if *at >= since => return Listening::Changed,
            _ => {}
        }
        let (tell, told) = oneshot::channel();
        let listeners = self.by_task.entry(id).or_default();
        // Waiters that timed out are gone.
        listeners.retain(|listener| !listener.is_closed());
        listeners.push(tell);
        Listening::Waiting(told)
    }

    /// Tells the task's waiters: it ended (`Some`, as recorded) or, a batch, changed (`None`).
    fn tell(&mut self, id: Uuid, task: Option<Arc<Task>>) {
        let now = Instant::now();
        while let Some((at, old)) = self.news_order.front()
            && (now.duration_since(*at) > ENDED_KEPT_FOR || self.news_order.len() >= ENDED_KEPT_AT_MOST)
        {
            if self.news.get(old).is_some_and(|(latest, _)| latest == at) {
                self.news.remove(old);
            }
            self.news_order.pop_front();
        }
        self.news.insert(id, (now, task.clone()));
        self.news_order.push_back((now, id));
        for listener in self.by_task.remove(&id).unwrap_or_default() {
            let _ = listener.send(task.clone());
        }
    }
}

/// A mark in time taken before a task is read or created: [`TaskEngine::wait_from`] then
/// misses nothing that happened to it since.
pub struct EndedTasks {
    since: Instant,
}

#[derive(Clone)]
pub struct TaskEngine {
    shared: Arc<Shared>,
}

impl TaskEngine {
    pub fn new(store: Store, concurrency: usize, max_attempts: u32) -> Self {
        TaskEngine {
            shared: Arc::new(Shared {
                store,
                max_attempts,
                permits: Arc::new(Semaphore::new(concurrency)),
                wake: Notify::new(),
                work_signalled: AtomicBool::new(true),
                running: Mutex::new(HashMap::new()),
                started: Mutex::new(Vec::new()),
                waiters: Mutex::new(Waiters::default()),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Inserts a pending task (and its `task.created` event) with the commit of `writes` (of a
    /// transaction or a batch): later reads in a transaction do not see it. Call
    /// [`TaskEngine::wake`] after the commit.
    pub fn create(&self, writes: &mut PendingWrites, new: NewTask) -> Task {
        insert(writes, new, None)
    }

    /// [`TaskEngine::create`] for a task that may run at once (not a batch, not an instance
    /// creation waiting for placement): when a permit is free it is created running, its
    /// `task.started` event with it, and starts as soon as its commit has landed, without
    /// waiting for a claim. Hand the [`StartOnCommit`] to [`TaskEngine::start_committed`]
    /// after the commit.
    pub fn create_started(&self, writes: &mut PendingWrites, new: NewTask) -> (Task, StartOnCommit) {
        let Ok(permit) = self.shared.permits.clone().try_acquire_owned() else {
            return (self.create(writes, new), StartOnCommit { engine: self.clone(), ready: None });
        };
        let task = insert(writes, new, Some(store::now()));
        let cancel = self.register_running(task.id, false);
        (task.clone(), StartOnCommit { engine: self.clone(), ready: Some((task, cancel, permit)) })
    }

    /// Starts a task from [`TaskEngine::create_started`] whose commit has landed.
    pub fn start_committed(&self, mut start: StartOnCommit) {
        let Some(ready) = start.ready.take() else {
            // Created pending: the dispatcher claims it.
            self.wake();
            return;
        };
        if let Ok(mut queue) = self.shared.started.lock() {
            queue.push(ready);
        }
        // Nothing new to claim: the dispatcher only spawns what it is handed.
        self.shared.wake.notify_one();
    }

    /// Asks the dispatcher to look for work now (tasks may have become claimable).
    pub fn wake(&self) {
        self.shared.work_signalled.store(true, Ordering::Release);
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
                transaction.append_event(NewEvent::new("task.resumed", "task", task.id));
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
        let mut last_claim: Option<Instant> = None;
        loop {
            if self.shared.shutdown.is_cancelled() {
                return;
            }
            self.spawn_started(&handler).await;
            let placed = handler.before_dispatch().await;
            let signalled = self.shared.work_signalled.swap(false, Ordering::AcqRel);
            if placed || signalled || last_claim.is_none_or(|claimed| claimed.elapsed() >= CLAIM_INTERVAL) {
                last_claim = Some(Instant::now());
                if let Err(error) = self.claim_and_spawn(&handler).await {
                    tracing::error!(error = %error, "task dispatch failed");
                }
            }
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep(CLAIM_INTERVAL) => {}
                _ = self.shared.shutdown.cancelled() => return,
            }
            // The tasks ready to run go first: the work they add is placed and claimed with
            // what woke the dispatcher.
            tokio::task::yield_now().await;
        }
    }

    /// Claims as many claimable tasks as there are free permits, up to [`CLAIM_BATCH`] in one
    /// write transaction (one statement claims them all), spawns them, and goes on with the
    /// next ones. Small batches let the tasks just started write between two claims instead of
    /// all queueing behind one long claim.
    async fn claim_and_spawn<H: TaskHandler>(&self, handler: &Arc<H>) -> Result<(), StoreError> {
        loop {
            // One permit is split off for each task started; the rest go back when dropped.
            let Some((mut permits, available)) = self.free_permits(CLAIM_BATCH) else {
                // Every permit is taken: what is left waits for the next task that ends.
                self.shared.work_signalled.store(true, Ordering::Release);
                return Ok(());
            };
            let started = store::tasks::claim(&self.shared.store, available as u32, &store::now()).await?;
            if started.is_empty() {
                return Ok(());
            }
            let full = started.len() == available;
            let mut claimed = Vec::with_capacity(started.len());
            for (task, cancel_requested) in started {
                // Never short: the claim started at most `available` tasks.
                let Some(permit) = permits.split(1) else { break };
                // Cancellable from here: a cancellation requested while the prefetch reads
                // reaches the task.
                let cancel = self.register_running(task.id, cancel_requested);
                claimed.push((task, cancel, permit));
            }
            self.prefetch_and_spawn(handler, claimed).await;
            if !full {
                return Ok(());
            }
        }
    }

    /// Up to `wanted` free permits, taken together, and how many; none when every permit is
    /// taken. Requests take permits too ([`TaskEngine::create_started`]): the count can fall
    /// between looking and taking.
    fn free_permits(&self, wanted: usize) -> Option<(OwnedSemaphorePermit, usize)> {
        loop {
            let available = self.shared.permits.available_permits().min(wanted);
            if available == 0 {
                return None;
            }
            if let Ok(permits) = self.shared.permits.clone().try_acquire_many_owned(available as u32) {
                return Some((permits, available));
            }
        }
    }

    /// Spawns the tasks created running since the last cycle ([`TaskEngine::start_committed`]).
    async fn spawn_started<H: TaskHandler>(&self, handler: &Arc<H>) {
        let started = self.shared.started.lock().map(|mut queue| std::mem::take(&mut *queue)).unwrap_or_default();
        if !started.is_empty() {
            self.prefetch_and_spawn(handler, started).await;
        }
    }

    /// Reads what the tasks start by reading, once for all, and spawns them.
    async fn prefetch_and_spawn<H: TaskHandler>(&self, handler: &Arc<H>, ready: Vec<ReadyToRun>) {
        let tasks: Vec<Task> = ready.iter().map(|(task, _, _)| task.clone()).collect();
        let mut prefetched = handler.prefetch(&tasks).await.into_iter();
        let ready = ready
            .into_iter()
            .map(|(task, cancel, permit)| (task, cancel, permit, prefetched.next().unwrap_or_default()))
            .collect();
        self.spawn_claimed(handler, ready);
    }

    /// The cancellation token of a task this process starts, where [`TaskEngine::cancel`] finds it.
    fn register_running(&self, task_id: Uuid, cancel_requested: bool) -> CancellationToken {
        let cancel = CancellationToken::new();
        if cancel_requested {
            cancel.cancel();
        }
        if let Ok(mut running) = self.shared.running.lock() {
            running.insert(task_id, cancel.clone());
        }
        cancel
    }

    fn spawn_claimed<H: TaskHandler>(
        &self,
        handler: &Arc<H>,
        claimed: Vec<(Task, CancellationToken, OwnedSemaphorePermit, H::Prefetched)>,
    ) {
        let store = &self.shared.store;
        for (task, cancel, permit, prefetched) in claimed {
            let final_write = FinalWriteSlot::default();
            let context = TaskContext {
                task_id: task.id,
                cancel,
                store: store.clone(),
                last_progress_write: Arc::new(Mutex::new(None)),
                final_write: final_write.clone(),
            };
            let (engine, handler) = (self.clone(), handler.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let kind = task.kind;
                let span = tracing::info_span!("task", id = %task.id, kind = %kind, attempt = task.attempts);
                let outcome =
                    tracing::Instrument::instrument(handler.run(task.clone(), context, prefetched), span).await;
                drop(permit);
                if engine.shared.shutdown.is_cancelled() && matches!(outcome, TaskOutcome::Cancelled(_)) {
                    // Shutting down: leave the task running so recovery resumes it on the next start.
                    return;
                }
                let final_write = final_write.lock().ok().and_then(|mut slot| slot.take());
                let state = engine.finish(task, outcome, final_write).await;
                metrics::histogram!("hyperplane_task_duration_seconds", "kind" => kind.as_str(), "state" => state.as_str())
                    .record(started.elapsed().as_secs_f64());
                // A dispatch cycle: a permit is free, and instances waiting for room get a pass.
                engine.shared.wake.notify_one();
            });
        }
    }

    /// Records the outcome of a task that ran, with the handler's final write if it left one;
    /// retries until it succeeds so that no task is left running. A final write that keeps
    /// failing is given up after [`FINAL_WRITE_ATTEMPTS`] tries: the task then fails.
    async fn finish(
        &self,
        mut task: Task,
        mut outcome: TaskOutcome,
        mut final_write: Option<Box<dyn FinalWrite>>,
    ) -> TaskState {
        let id = task.id;
        let mut failures = 0;
        loop {
            let result: Result<(), StoreError> = async {
                let mut ended = task.clone();
                if ended.parent_id.is_none() {
                    // Nothing to read: one round trip on the writer.
                    let mut batch = self.shared.store.batch();
                    if let Some(write) = &final_write {
                        write.write(batch.writes())?;
                    }
                    write_outcome(batch.writes(), &mut ended, outcome.clone());
                    batch.commit().await?;
                } else {
                    let mut transaction = self.shared.store.begin().await?;
                    if let Some(write) = &final_write {
                        write.write(transaction.writes())?;
                    }
                    finish_in(&mut transaction, &mut ended, outcome.clone()).await?;
                    transaction.commit().await?;
                }
                task = ended;
                Ok(())
            }
            .await;
            match result {
                Ok(()) => break,
                Err(error) => {
                    tracing::error!(task = %id, error = %error, "recording the task's outcome failed; retrying");
                    failures += 1;
                    if failures >= FINAL_WRITE_ATTEMPTS && final_write.take().is_some() {
                        outcome = TaskOutcome::Failed(TaskError {
                            code: "internal".into(),
                            message: format!("recording the task's final state failed: {error}"),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if let Ok(mut running) = self.shared.running.lock() {
            running.remove(&id);
        }
        if let Ok(mut waiters) = self.shared.waiters.lock() {
            waiters.tell(id, Some(Arc::new(task.clone())));
            if let Some(parent) = task.parent_id {
                waiters.tell(parent, None);
            }
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
            transaction.append_event(NewEvent::new("task.cancel_requested", "task", target.id));
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
        let ended = self.subscribe_ended();
        let task = self.read(id).await?;
        self.wait_from(task, ended, timeout).await
    }

    /// A mark for [`TaskEngine::wait_from`]: take it before reading (or creating) the task, so
    /// that an ending in between is not missed.
    pub fn subscribe_ended(&self) -> EndedTasks {
        EndedTasks { since: Instant::now() }
    }

    /// Waits until `task` (as read after `ended` was taken) has ended or `timeout` passed;
    /// answers the task as it is then.
    pub async fn wait_from(
        &self,
        mut task: Task,
        ended: EndedTasks,
        timeout: Duration,
    ) -> Result<Task, TaskEngineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut since = ended.since;
        while !task.state.is_final() {
            let listening = self.shared.waiters.lock().ok().map(|mut waiters| waiters.listen(task.id, since));
            let told = match listening {
                Some(Listening::Ended(recorded)) => return Ok(Arc::unwrap_or_clone(recorded)),
                Some(Listening::Waiting(told)) => told,
                Some(Listening::Changed) => {
                    since = Instant::now();
                    task = self.read(task.id).await?;
                    continue;
                }
                // A poisoned lock: no one can tell; read again when the time is up.
                None => {
                    tokio::time::sleep_until(deadline).await;
                    return self.read(task.id).await;
                }
            };
            match tokio::time::timeout_at(deadline, told).await {
                Ok(Ok(Some(recorded))) => return Ok(Arc::unwrap_or_clone(recorded)),
                // A batch that moved on: read it again.
                Ok(_) => {
                    since = Instant::now();
                    task = self.read(task.id).await?;
                }
                // Time is up: answer the task as it is now (progress, message), not as it was.
                Err(_) => return self.read(task.id).await,
            }
        }
        Ok(task)
    }

    async fn read(&self, id: Uuid) -> Result<Task, TaskEngineError> {
        store::tasks::get(&mut *self.shared.store.reader().await?, id).await?.ok_or(TaskEngineError::NotFound(id))
    }
}

/// Inserts a new task with the commit of `writes`: pending, or running since `started_at` (its
/// first attempt), with its `task.created` event and, running, its `task.started` one.
fn insert(writes: &mut PendingWrites, new: NewTask, started_at: Option<Timestamp>) -> Task {
    let task = Task {
        id: Uuid::now_v7(),
        kind: new.kind,
        state: if started_at.is_some() { TaskState::Running } else { TaskState::Pending },
        object_id: new.object_id,
        parent_id: new.parent_id,
        progress: 0.0,
        message: None,
        input: new.input,
        result: None,
        error: None,
        attempts: u32::from(started_at.is_some()),
        idempotency_key: new.idempotency_key,
        created_at: started_at.unwrap_or_else(store::now),
        started_at,
        ended_at: None,
    };
    store::tasks::defer_insert(writes, &task, new.request_digest);
    writes.append_event_at(
        &task.created_at,
        NewEvent::new("task.created", "task", task.id)
            .by(&new.requested_by)
            .data(json!({ "kind": task.kind, "object_id": task.object_id, "parent_id": task.parent_id })),
    );
    if let Some(started_at) = &task.started_at {
        // What a claim appends (`store::tasks::claim`).
        let started = NewEvent::new("task.started", "task", task.id).data(json!({ "attempt": task.attempts }));
        writes.append_event_at(started_at, started);
    }
    task
}

/// Sets the final state of `task` from `outcome`.
fn record_outcome(task: &mut Task, outcome: TaskOutcome) {
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
}

/// Ends `task` with `outcome`: its row and its `task.<state>` event, sent with the commit.
fn write_outcome(writes: &mut PendingWrites, task: &mut Task, outcome: TaskOutcome) {
    record_outcome(task, outcome);
    store::tasks::defer_update(writes, task);
    writes.append_event(outcome_event(task));
}

fn outcome_event(task: &Task) -> NewEvent {
    NewEvent::new(format!("task.{}", task.state), "task", task.id)
        .data(json!({ "kind": task.kind, "object_id": task.object_id, "error": task.error }))
}

/// Writes the final state of `task` and its event; ends its batch when it was the last child.
async fn finish_in(transaction: &mut WriteTx, task: &mut Task, outcome: TaskOutcome) -> Result<(), StoreError> {
    let Some(parent) = task.parent_id else {
        write_outcome(transaction.writes(), task, outcome);
        return Ok(());
    };
    // The batch counts its children's states: this one's is written before.
    record_outcome(task, outcome);
    store::tasks::update(transaction, task).await?;
    transaction.append_event(outcome_event(task));
    finish_batch_if_done(transaction, parent).await
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::store::open_temporary;

    /// Appends one `test.final` event: stands in for a handler's last state change.
    struct FinalEvent(Option<String>);

    impl FinalWrite for FinalEvent {
        fn write(&self, writes: &mut PendingWrites) -> Result<(), StoreError> {
            if let Some(error) = &self.0 {
                return Err(StoreError::Corrupt(error.clone()));
            }
            writes.append_event(NewEvent::new("test.final", "test", "x"));
            Ok(())
        }
    }

    /// Leaves a final write and succeeds; blocks first while `hold` is set (a task in flight
    /// when the server stops).
    struct Handler {
        runs: AtomicU32,
        /// Claims whose tasks were prefetched, and tasks run with another task's prefetch.
        prefetches: AtomicU32,
        mismatched_prefetches: AtomicU32,
        /// How long a prefetch takes.
        prefetch_time: Duration,
        hold: std::sync::atomic::AtomicBool,
        failing_write: bool,
    }

    impl Handler {
        fn new(hold: bool, failing_write: bool) -> Arc<Self> {
            Arc::new(Handler {
                runs: AtomicU32::new(0),
                prefetches: AtomicU32::new(0),
                mismatched_prefetches: AtomicU32::new(0),
                prefetch_time: Duration::ZERO,
                hold: hold.into(),
                failing_write,
            })
        }
    }

    impl TaskHandler for Handler {
        /// The id of the task it was read for.
        type Prefetched = Option<Uuid>;

        async fn prefetch(&self, tasks: &[Task]) -> Vec<Option<Uuid>> {
            self.prefetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.prefetch_time).await;
            tasks.iter().map(|task| Some(task.id)).collect()
        }

        async fn run(&self, task: Task, context: TaskContext, prefetched: Option<Uuid>) -> TaskOutcome {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if prefetched != Some(task.id) {
                self.mismatched_prefetches.fetch_add(1, Ordering::SeqCst);
            }
            context.finish_with(FinalEvent(self.failing_write.then(|| "refused".to_string())));
            if self.hold.load(Ordering::SeqCst) {
                context.cancel.cancelled().await;
                return TaskOutcome::Cancelled("stopping".into());
            }
            TaskOutcome::Succeeded(json!({ "done": true }))
        }

        async fn before_dispatch(&self) -> bool {
            false
        }
    }

    async fn create_task(engine: &TaskEngine, store: &Store) -> Uuid {
        let mut transaction = store.begin().await.expect("begin");
        let task = engine.create(
            transaction.writes(),
            NewTask::on_object(TaskKind::InstanceStart, Uuid::now_v7(), json!({}), &Caller::system()),
        );
        transaction.commit().await.expect("commit");
        engine.wake();
        task.id
    }

    /// A task created with [`TaskEngine::create_started`], committed and handed over.
    async fn create_started_task(engine: &TaskEngine, store: &Store) -> Task {
        let mut transaction = store.begin().await.expect("begin");
        let (task, start) = engine.create_started(
            transaction.writes(),
            NewTask::on_object(TaskKind::InstanceStop, Uuid::now_v7(), json!({}), &Caller::system()),
        );
        transaction.commit().await.expect("commit");
        engine.start_committed(start);
        task
    }

    async fn event_kinds(store: &Store) -> Vec<String> {
        let events =
            store::events::list_after(&mut store.reader().await.expect("reader"), 0, 1000).await.expect("events");
        events.into_iter().map(|event| event.kind).collect()
    }

    #[tokio::test]
    async fn a_final_write_commits_with_the_outcome_and_the_task_does_not_run_again() {
        let (store, _directory) = open_temporary().await;
        let engine = TaskEngine::new(store.clone(), 4, 3);
        let handler = Handler::new(false, false);
        engine.start(handler.clone());
        let id = create_task(&engine, &store).await;
        let task = engine.wait(id, Duration::from_secs(10)).await.expect("wait");
        assert_eq!(task.state, TaskState::Succeeded);
        let kinds = event_kinds(&store).await;
        let final_at = kinds.iter().position(|kind| kind == "test.final").expect("final write committed");
        assert_eq!(kinds[final_at + 1], "task.succeeded", "the final write and the outcome are one commit: {kinds:?}");
        engine.shutdown();

        // A restart finds nothing to resume: the task ended with its final write.
        let engine = TaskEngine::new(store.clone(), 4, 3);
        assert_eq!(engine.recover().await.expect("recover"), 0);
        engine.start(handler.clone());
        engine.wake();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
        assert_eq!(event_kinds(&store).await.iter().filter(|kind| *kind == "test.final").count(), 1);
        engine.shutdown();
    }

    #[tokio::test]
    async fn a_final_write_not_committed_before_a_stop_is_redone_when_the_task_resumes() {
        let (store, _directory) = open_temporary().await;
        let engine = TaskEngine::new(store.clone(), 4, 3);
        let held = Handler::new(true, false);
        engine.start(held.clone());
        let id = create_task(&engine, &store).await;
        for _ in 0..100 {
            if held.runs.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(held.runs.load(Ordering::SeqCst), 1);
        engine.shutdown();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let task = store::tasks::get(&mut store.reader().await.expect("reader"), id).await.expect("get").expect("task");
        assert_eq!(task.state, TaskState::Running, "left running for recovery");
        assert!(
            !event_kinds(&store).await.contains(&"test.final".to_string()),
            "the final write waits for the outcome"
        );

        let engine = TaskEngine::new(store.clone(), 4, 3);
        assert_eq!(engine.recover().await.expect("recover"), 1);
        let handler = Handler::new(false, false);
        engine.start(handler.clone());
        let task = engine.wait(id, Duration::from_secs(10)).await.expect("wait");
        assert_eq!(task.state, TaskState::Succeeded);
        assert_eq!(task.attempts, 2);
        assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
        assert_eq!(event_kinds(&store).await.iter().filter(|kind| *kind == "test.final").count(), 1);
        engine.shutdown();
    }

    #[tokio::test]
    async fn a_final_write_that_keeps_failing_fails_the_task_instead_of_leaving_it_running() {
        let (store, _directory) = open_temporary().await;
        let engine = TaskEngine::new(store.clone(), 4, 3);
        engine.start(Handler::new(false, true));
        let id = create_task(&engine, &store).await;
        let task = engine.wait(id, Duration::from_secs(20)).await.expect("wait");
        assert_eq!(task.state, TaskState::Failed);
        assert_eq!(task.error.expect("error").code, "internal");
        engine.shutdown();
    }

    #[tokio::test]
    async fn a_waiter_is_told_of_its_own_task_even_one_that_ended_after_it_was_read() {
        let (store, _directory) = open_temporary().await;
        let engine = TaskEngine::new(store.clone(), 8, 3);
        let first = create_task(&engine, &store).await;
        let second = create_task(&engine, &store).await;
        // Read while pending, before the engine runs anything.
        let mark = engine.subscribe_ended();
        let stale = engine.read(first).await.expect("read");
        assert_eq!(stale.state, TaskState::Pending);
        let waiting_on_second = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.wait(second, Duration::from_secs(60)).await })
        };
        engine.start(Handler::new(false, false));
        engine.wait(first, Duration::from_secs(10)).await.expect("wait");
        // Listening only now, after the ending: told from the recent news, not at the timeout.
        let told =
            tokio::time::timeout(Duration::from_secs(20), engine.wait_from(stale, mark, Duration::from_secs(60)));
        assert_eq!(told.await.expect("told before the timeout").expect("wait").state, TaskState::Succeeded);
        let second = tokio::time::timeout(Duration::from_secs(20), waiting_on_second).await.expect("told");
        assert_eq!(second.expect("joined").expect("wait").state, TaskState::Succeeded);
        engine.shutdown();
    }

    #[tokio::test]
    async fn pending_tasks_are_claimed_together_and_each_starts_once() {
        let (store, _directory) = open_temporary().await;
        let engine = TaskEngine::new(store.clone(), 8, 3);
        let mut ids = Vec::new();
        for _ in 0..6 {
            ids.push(create_task(&engine, &store).await);
        }
        let handler = Handler::new(false, false);
        engine.start(handler.clone());
        for id in &ids {
            assert_eq!(engine.wait(*id, Duration::from_secs(10)).await.expect("wait").state, TaskState::Succeeded);
        }
        assert_eq!(handler.runs.load(Ordering::SeqCst), 6);
        // Claimed together (the engine started with all six pending): read for together.
        assert_eq!(handler.prefetches.load(Ordering::SeqCst), 1, "one prefetch for the claim");
        assert_eq!(handler.mismatched_prefetches.load(Ordering::SeqCst), 0, "each task got its own");
        let events = store::events::list_after(&mut store.reader().await.expect("reader"), 0, 100).await.expect("list");
        let started: Vec<_> = events.iter().filter(|event| event.kind == "task.started").collect();
        let mut started_ids: Vec<_> = started.iter().map(|event| event.object_id.clone()).collect();
        started_ids.sort();
        assert_eq!(started_ids, ids.iter().map(Uuid::to_string).collect::<Vec<_>>(), "one start each");
        for event in started {
            let task = engine.read(event.object_id.parse().expect("a task id")).await.expect("task");
            assert_eq!((event.object_kind.as_str(), event.actor.as_str()), ("task", "system"));
            assert_eq!(event.data, json!({ "attempt": 1 }));
            assert_eq!(Some(event.time), task.started_at, "appended when the task started");
        }
        let last = events.last().expect("events").seq;
        assert_eq!(*store.subscribe_events().borrow(), last, "subscribers saw every event");
        engine.shutdown();
    }

    #[tokio::test]
    async fn a_task_cancelled_while_its_prefetch_reads_is_cancelled() {
        let (store, _directory) = open_temporary().await;
        let engine = TaskEngine::new(store.clone(), 8, 3);
        let id = create_task(&engine, &store).await;
        let mut handler = Handler::new(true, false);
        Arc::get_mut(&mut handler).expect("not shared yet").prefetch_time = Duration::from_millis(500);
        engine.start(handler.clone());
        // Claimed (running), its prefetch under way: cancelled now.
        let deadline = Instant::now() + Duration::from_secs(5);
        while engine.read(id).await.expect("task").state != TaskState::Running {
            assert!(Instant::now() < deadline, "claimed within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(handler.runs.load(Ordering::SeqCst), 0, "still prefetching");
        engine.cancel(id).await.expect("cancel");
        // The handler holds until its token is cancelled.
        let ended = engine.wait(id, Duration::from_secs(10)).await.expect("wait");
        assert_eq!(ended.state, TaskState::Cancelled);
        engine.shutdown();
    }
    #[tokio::test]
    async fn a_task_created_started_starts_with_its_commit_without_a_claim() {
        let (store, _directory) = open_temporary().await;
        let engine = TaskEngine::new(store.clone(), 4, 3);
        // Created before the dispatcher starts: its first claim holds the free permits while
        // it runs.
        let task = create_started_task(&engine, &store).await;
        let handler = Handler::new(false, false);
        engine.start(handler.clone());
        assert_eq!((task.state, task.attempts), (TaskState::Running, 1));
        assert_eq!(task.started_at, Some(task.created_at));
        let ended = engine.wait(task.id, Duration::from_secs(10)).await.expect("wait");
        assert_eq!(ended.state, TaskState::Succeeded);
        assert_eq!((ended.attempts, ended.started_at), (1, task.started_at));
        assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
        assert_eq!(handler.mismatched_prefetches.load(Ordering::SeqCst), 0, "read for before it ran");
        // Started in the commit that created it: its start is the event right after its
        // creation, at the same time, not a claim's later one.
        let events = store::events::list_after(&mut store.reader().await.expect("reader"), 0, 100).await.expect("list");
        let kinds: Vec<&str> = events.iter().map(|event| event.kind.as_str()).collect();
        assert_eq!(kinds, ["task.created", "task.started", "test.final", "task.succeeded"]);
        assert_eq!(events[1].data, json!({ "attempt": 1 }));
        assert_eq!(events[1].time, task.created_at);
        assert_eq!(events[1].seq, events[0].seq + 1);
        engine.shutdown();
    }

    #[tokio::test]
    async fn with_no_permit_free_a_task_created_started_waits_for_a_claim() {
        let (store, _directory) = open_temporary().await;
        let engine = TaskEngine::new(store.clone(), 1, 3);
        let first = create_started_task(&engine, &store).await;
        let second = create_started_task(&engine, &store).await;
        let handler = Handler::new(true, false);
        engine.start(handler.clone());
        assert_eq!(first.state, TaskState::Running, "took the one permit");
        assert_eq!((second.state, second.attempts, second.started_at), (TaskState::Pending, 0, None));
        let deadline = Instant::now() + Duration::from_secs(5);
        while handler.runs.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the first runs within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(engine.read(second.id).await.expect("task").state, TaskState::Pending, "no permit yet");
        // The first ends (cancelled while held): its permit goes to the second, by a claim.
        handler.hold.store(false, Ordering::SeqCst);
        engine.cancel(first.id).await.expect("cancel");
        assert_eq!(engine.wait(first.id, Duration::from_secs(10)).await.expect("wait").state, TaskState::Cancelled);
        let second = engine.wait(second.id, Duration::from_secs(10)).await.expect("wait");
        assert_eq!((second.state, second.attempts), (TaskState::Succeeded, 1));
        assert_eq!(handler.runs.load(Ordering::SeqCst), 2);
        engine.shutdown();
    }

    #[tokio::test]
    async fn a_task_created_started_whose_commit_failed_gives_its_permit_back() {
        let (store, _directory) = open_temporary().await;
        let engine = TaskEngine::new(store.clone(), 1, 3);
        let mut transaction = store.begin().await.expect("begin");
        let (task, start) = engine.create_started(
            transaction.writes(),
            NewTask::on_object(TaskKind::InstanceStop, Uuid::now_v7(), json!({}), &Caller::system()),
        );
        assert_eq!(engine.shared.permits.available_permits(), 0);
        assert_eq!(engine.running_tokens().len(), 1, "cancellable from its creation");
        drop(transaction);
        drop(start);
        assert_eq!(engine.shared.permits.available_permits(), 1, "the permit is back");
        assert!(engine.running_tokens().is_empty(), "nothing left to cancel");
        assert!(matches!(engine.read(task.id).await, Err(TaskEngineError::NotFound(_))), "nothing written");
        engine.shutdown();
    }
}
