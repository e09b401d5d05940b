//! Persistence: sqlx on SQLite (WAL) with embedded migrations, and one repository module per
//! table. The only module that knows SQL.
//!
//! Writes go through [`WriteTx`], a transaction on the sqlx writer connection; [`WriteBatch`],
//! writes committed inline by the store's batch committer together with the other batches
//! waiting at that moment (group commit); or [`Store::transact`], reads, a decision and its
//! writes inline on the writer in one transaction. All three hold one write lock: every state
//! change and the events describing it commit together, and readers are woken only after the
//! commit. Reads use a separate pool and never block behind writers (WAL); the small reads of
//! hot paths run inline on the calling thread instead ([`inline`]), without sqlx's round trip
//! to a connection thread.

mod checkpoint;
pub mod events;
pub mod fleet;
pub mod groups;
pub mod hosts;
pub mod identity;
mod inline;
pub mod instances;
pub mod plugin_state;
pub mod projects;
pub mod registry;
mod rows;
mod statement;
pub mod tasks;
pub mod templates;

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous};
use sqlx::{Column as _, ConnectOptions as _, Connection as _, QueryBuilder, Row as _, Sqlite, SqliteConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::model::{NewEvent, Timestamp};
use rows::InlineRow;
pub(crate) use statement::Statement;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// From a read run inline ([`inline`]).
    #[error("database error")]
    Inline(#[from] rusqlite::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored value is not readable: {0}")]
    Corrupt(String),
    /// The writer could not be had for a group of batches (the error, as text: each batch of
    /// the group gets it).
    #[error("the database writer is unavailable: {0}")]
    WriterUnavailable(String),
    /// Work run on a blocking thread ended without an answer: it panicked, or the runtime is
    /// shutting down.
    #[error("database work ended without an answer: {0}")]
    Interrupted(#[from] tokio::task::JoinError),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A statement the database refused: a constraint or a trigger's `RAISE`.
pub(crate) struct Refusal<'e> {
    pub message: &'e str,
    pub unique_violation: bool,
}

impl StoreError {
    /// What the database said, when it refused a statement (through sqlx or inline).
    pub(crate) fn refusal(&self) -> Option<Refusal<'_>> {
        match self {
            StoreError::Database(sqlx::Error::Database(database)) => {
                Some(Refusal { message: database.message(), unique_violation: database.is_unique_violation() })
            }
            StoreError::Inline(rusqlite::Error::SqliteFailure(error, Some(message))) => Some(Refusal {
                message,
                unique_violation: error.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE,
            }),
            _ => None,
        }
    }
}

/// The database: one writer connection, a pool of readers, read-only connections for reads run
/// inline, and the latest event sequence number for anyone waiting on new events.
#[derive(Clone)]
pub struct Store {
    writer: Arc<ConnectionPool>,
    readers: Arc<ConnectionPool>,
    inline_readers: Arc<inline::InlineReaders>,
    inline_writer: Arc<inline::InlineWriter>,
    latest_event: watch::Sender<i64>,
    batches: mpsc::UnboundedSender<QueuedBatch>,
}

const READER_CONNECTIONS: usize = 8;

impl Store {
    /// Opens (creating if needed) the database at `url` and applies migrations.
    pub async fn open(url: &str) -> StoreResult<Store> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .pragma("wal_autocheckpoint", checkpoint::BACKSTOP_PAGES.to_string())
            .busy_timeout(Duration::from_secs(10));
        let path = options.get_filename().to_owned();
        // An in-memory database has no WAL to checkpoint.
        let checkpoints = if inline::is_in_memory(&path) {
            None
        } else {
            Some(checkpoint::Trigger::start(path.clone()).map_err(sqlx::Error::Io)?)
        };
        let writer = ConnectionPool::new(options.clone(), 1, checkpoints);
        let latest = {
            let mut connection = writer.acquire().await?;
            sqlx::migrate!("./migrations").run(&mut *connection).await?;
            events::latest_seq(&mut connection).await?
        };
        let inline_readers = Arc::new(inline::InlineReaders::new(path.clone()));
        let inline_writer = Arc::new(inline::InlineWriter::new(path));
        // `query_only` too: a read-only open does not hold for an in-memory database.
        let reader_options = options.read_only(true).pragma("query_only", "ON");
        let readers = ConnectionPool::new(reader_options, READER_CONNECTIONS, None);
        let (latest_event, _) = watch::channel(latest);
        let (batches, queued) = mpsc::unbounded_channel();
        tokio::spawn(commit_batches(writer.clone(), inline_writer.clone(), latest_event.clone(), queued));
        Ok(Store { writer, readers, inline_readers, inline_writer, latest_event, batches })
    }

    /// A connection for reads.
    pub async fn reader(&self) -> StoreResult<Connection> {
        self.readers.acquire().await
    }

    /// Runs `read` inline, on this thread, in a read transaction (see [`inline`]): for short
    /// reads only.
    pub(crate) fn read_inline<T>(&self, read: impl FnOnce(&rusqlite::Connection) -> StoreResult<T>) -> StoreResult<T> {
        self.inline_readers.read(read)
    }

    /// [`Store::read_inline`] on a blocking thread, for a read that may be long (the whole
    /// fleet): a runtime worker is not held while it runs.
    pub(crate) async fn read_blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let readers = self.inline_readers.clone();
        let reading = tokio::task::spawn_blocking(move || readers.read(read));
        reading.await?
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE` on the single writer, so transactions
    /// never fail to upgrade and placement decisions see every committed instance).
    #[track_caller]
    pub fn begin(&self) -> impl Future<Output = StoreResult<WriteTx>> + Send + '_ {
        let caller = std::panic::Location::caller();
        async move { self.begin_at(caller).await }
    }

    async fn begin_at(&self, caller: &'static std::panic::Location<'static>) -> StoreResult<WriteTx> {
        let (mut connection, acquired) = acquire_writer(&self.writer).await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *connection).await?;
        Ok(self.write_transaction(connection, acquired, caller))
    }

    /// [`Store::begin`], sending the transaction's first statement (pushed by `first`) with the
    /// `BEGIN` in one round trip; answers the transaction and the rows of that statement.
    #[track_caller]
    pub(crate) fn begin_with(
        &self,
        first: impl FnOnce(&mut QueryBuilder<'static, Sqlite>),
    ) -> impl Future<Output = StoreResult<(WriteTx, Vec<SqliteRow>)>> + Send + '_ {
        let caller = std::panic::Location::caller();
        let mut query = QueryBuilder::new("BEGIN IMMEDIATE; ");
        first(&mut query);
        async move {
            let (connection, acquired) = acquire_writer(&self.writer).await?;
            // Dropped on an error: rolled back (or the connection discarded if `BEGIN` failed).
            let mut transaction = self.write_transaction(connection, acquired, caller);
            let rows = query.build().fetch_all(&mut *transaction).await?;
            Ok((transaction, rows))
        }
    }

    /// Runs `work` in one write transaction on the writer, inline on a blocking thread, under
    /// the write lock: what it reads on the connection it gets is what its writes (deferred to
    /// the [`PendingWrites`] it gets, committed after it) change, with no round trip in between.
    /// For a read, a decision and its writes (a placement pass); `work` answering an error
    /// writes nothing. Once started, it runs to its end even if the caller stops waiting.
    #[track_caller]
    pub(crate) fn transact<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Connection, &mut PendingWrites) -> StoreResult<T> + Send + 'static,
    ) -> impl Future<Output = StoreResult<T>> + Send + '_ {
        let caller = std::panic::Location::caller();
        let (pool, writer, latest_event) = (self.writer.clone(), self.inline_writer.clone(), self.latest_event.clone());
        async move {
            let runtime = tokio::runtime::Handle::current();
            let transacting = tokio::task::spawn_blocking(move || {
                // Taken on the blocking thread, so the lock is not held while that thread waits
                // to be scheduled (a third of a placement pass's time under it on a busy machine).
                let (_lock, acquired) = runtime.block_on(lock_writer(&pool))?;
                writer.with(|connection| {
                    commit_recorded(connection?, &latest_event, acquired, &[caller], |connection| {
                        let mut writes = PendingWrites::default();
                        let answer = work(connection, &mut writes)?;
                        let (_, newest_event) = write_all(connection, &[&writes])?;
                        Ok((answer, newest_event))
                    })
                })
            });
            transacting.await?
        }
    }

    fn write_transaction(
        &self,
        connection: Connection,
        acquired: Instant,
        caller: &'static std::panic::Location<'static>,
    ) -> WriteTx {
        WriteTx {
            connection: Some(connection),
            latest_event: self.latest_event.clone(),
            writes: PendingWrites::default(),
            acquired,
            caller,
        }
    }

    /// A write transaction that only writes: its statements and events are collected, and
    /// [`WriteBatch::commit`] hands them to the batch committer, which commits every batch
    /// waiting at that moment in one transaction, inline (a [`WriteTx`] holds the writer from
    /// `BEGIN` on, a round trip per statement).
    #[track_caller]
    pub fn batch(&self) -> WriteBatch {
        WriteBatch {
            queue: self.batches.clone(),
            writes: PendingWrites::default(),
            caller: std::panic::Location::caller(),
        }
    }

    /// The writer connection outside a transaction, for one write statement that carries no
    /// event: SQLite commits it on its own (atomically), which saves the `BEGIN` and `COMMIT`
    /// round trips of a [`WriteTx`].
    #[track_caller]
    pub fn write_statement(&self) -> impl Future<Output = StoreResult<SingleWrite>> + Send + '_ {
        let caller = std::panic::Location::caller();
        async move { self.write_statement_at(caller).await }
    }

    async fn write_statement_at(&self, caller: &'static std::panic::Location<'static>) -> StoreResult<SingleWrite> {
        let (connection, acquired) = acquire_writer(&self.writer).await?;
        Ok(SingleWrite { connection, acquired, caller })
    }

    /// Sequence number of the newest committed event; changes after every commit that appended.
    pub fn subscribe_events(&self) -> watch::Receiver<i64> {
        self.latest_event.subscribe()
    }

    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}

/// Reads sent to a connection in one round trip (one query of several statements): each is
/// wrapped as `SELECT <n> AS read_index, * FROM (<read>)`, which tells its rows apart. The
/// order of rows within a read is not kept.
pub(crate) struct ReadsTogether {
    query: QueryBuilder<'static, Sqlite>,
    reads: usize,
}

impl ReadsTogether {
    pub(crate) fn new() -> ReadsTogether {
        ReadsTogether { query: QueryBuilder::new(""), reads: 0 }
    }

    /// Adds a read: `push` pushes one `SELECT`, without a `;`.
    pub(crate) fn read(mut self, push: impl FnOnce(&mut QueryBuilder<'static, Sqlite>)) -> ReadsTogether {
        self.query.push(format_args!("SELECT {} AS read_index, * FROM (", self.reads));
        push(&mut self.query);
        self.query.push("); ");
        self.reads += 1;
        self
    }

    /// The rows of each read, in the order the reads were added.
    pub(crate) async fn fetch(mut self, connection: &mut SqliteConnection) -> StoreResult<Vec<Vec<SqliteRow>>> {
        let rows = self.query.build().fetch_all(connection).await?;
        let mut reads: Vec<Vec<SqliteRow>> = (0..self.reads).map(|_| Vec::new()).collect();
        for row in rows {
            let index: i64 = row.try_get("read_index")?;
            let read = usize::try_from(index).ok().and_then(|index| reads.get_mut(index));
            read.ok_or_else(|| StoreError::Corrupt(format!("read_index {index}")))?.push(row);
        }
        Ok(reads)
    }
}

/// The write lock (the writer connection's slot), and when it was had. Whoever holds it may
/// write, through the sqlx writer connection or inline.
async fn lock_writer(writer: &Arc<ConnectionPool>) -> StoreResult<(OwnedSemaphorePermit, Instant)> {
    let asked = Instant::now();
    let lock = writer.slot().await?;
    let acquired = Instant::now();
    if let Some(checkpoints) = &writer.checkpoints {
        checkpoints.write_begins();
    }
    WRITE_STATISTICS.wait_nanos.fetch_add((acquired - asked).as_nanos() as u64, Ordering::Relaxed);
    Ok((lock, acquired))
}

/// The writer connection, outside any transaction, and when it was acquired.
async fn acquire_writer(writer: &Arc<ConnectionPool>) -> StoreResult<(Connection, Instant)> {
    let (lock, acquired) = lock_writer(writer).await?;
    let mut connection = writer.connection_in(lock).await?;
    if writer.interrupted_commit.swap(false, Ordering::AcqRel) {
        // Ends the transaction a commit cancelled half-way may have left open; an error only
        // means there was none.
        let _ = sqlx::query("ROLLBACK").execute(&mut *connection).await;
    }
    Ok((connection, acquired))
}

/// Connections opened on demand up to a limit and handed out one at a time, in the order they
/// were asked for. Unlike sqlx's pool, a connection given back is idle at once: no health
/// check, which on SQLite is one more round trip to the connection's thread per use.
struct ConnectionPool {
    options: SqliteConnectOptions,
    idle: std::sync::Mutex<Vec<SqliteConnection>>,
    slots: Arc<Semaphore>,
    /// Set when a commit was cancelled half-way (see [`CommitInFlight`]): the next user of the
    /// writer rolls back first.
    interrupted_commit: AtomicBool,
    /// The writer's: told whenever the write lock is taken (see [`checkpoint`]).
    checkpoints: Option<checkpoint::Trigger>,
}

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);

impl ConnectionPool {
    fn new(
        options: SqliteConnectOptions,
        size: usize,
        checkpoints: Option<checkpoint::Trigger>,
    ) -> Arc<ConnectionPool> {
        Arc::new(ConnectionPool {
            options,
            idle: std::sync::Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(size)),
            interrupted_commit: AtomicBool::new(false),
            checkpoints,
        })
    }

    async fn acquire(self: &Arc<Self>) -> StoreResult<Connection> {
        let slot = self.slot().await?;
        self.connection_in(slot).await
    }

    /// A slot: the right to use one of the connections.
    async fn slot(&self) -> StoreResult<OwnedSemaphorePermit> {
        match tokio::time::timeout(ACQUIRE_TIMEOUT, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_closed)) => Err(sqlx::Error::PoolClosed.into()),
            Err(_elapsed) => Err(sqlx::Error::PoolTimedOut.into()),
        }
    }

    /// A connection for the holder of `slot`.
    async fn connection_in(self: &Arc<Self>, slot: OwnedSemaphorePermit) -> StoreResult<Connection> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let connection = match idle {
            Some(connection) => connection,
            None => self.options.connect().await?,
        };
        Ok(Connection { connection: Some(connection), pool: self.clone(), _slot: slot })
    }

    /// Refuses new acquisitions and closes the idle connections.
    async fn close(&self) {
        self.slots.close();
        let idle = self.idle.lock().map(|mut idle| std::mem::take(&mut *idle)).unwrap_or_default();
        for connection in idle {
            let _ = connection.close().await;
        }
    }
}

/// A connection lent by the store; given back when dropped.
pub struct Connection {
    connection: Option<SqliteConnection>,
    pool: Arc<ConnectionPool>,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    /// Drops the connection instead of giving it back (its state is unknown); the pool opens a
    /// new one when needed.
    fn discard(mut self) {
        self.connection = None;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take()
            && !self.pool.slots.is_closed()
            && let Ok(mut idle) = self.pool.idle.lock()
        {
            idle.push(connection);
        }
    }
}

impl Deref for Connection {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.connection.as_ref().expect("a lent connection is present until dropped")
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.connection.as_mut().expect("a lent connection is present until dropped")
    }
}

/// How much the single writer was used since the process started: what benchmarks print to
/// say where the writer's time goes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriteStatistics {
    /// Write transactions (and single write statements) that ended.
    pub transactions: u64,
    /// Time they held the writer connection, summed.
    pub held: Duration,
    /// Time callers waited for the writer connection, summed.
    pub waited: Duration,
}

struct WriteCounters {
    transactions: AtomicU64,
    held_nanos: AtomicU64,
    wait_nanos: AtomicU64,
}

static WRITE_STATISTICS: WriteCounters =
    WriteCounters { transactions: AtomicU64::new(0), held_nanos: AtomicU64::new(0), wait_nanos: AtomicU64::new(0) };

/// The writer's use so far, summed over every [`Store`] of the process.
pub fn write_statistics() -> WriteStatistics {
    WriteStatistics {
        transactions: WRITE_STATISTICS.transactions.load(Ordering::Relaxed),
        held: Duration::from_nanos(WRITE_STATISTICS.held_nanos.load(Ordering::Relaxed)),
        waited: Duration::from_nanos(WRITE_STATISTICS.wait_nanos.load(Ordering::Relaxed)),
    }
}

type CallerCounts = std::collections::HashMap<&'static std::panic::Location<'static>, (u64, Duration)>;

static BY_CALLER: std::sync::Mutex<Option<CallerCounts>> = std::sync::Mutex::new(None);

/// Write transactions and the time they held the writer, by the line that began them.
pub fn write_statistics_by_caller() -> Vec<(String, u64, Duration)> {
    let counts = BY_CALLER.lock().map(|counts| counts.clone().unwrap_or_default()).unwrap_or_default();
    let mut lines: Vec<_> =
        counts.into_iter().map(|(at, (count, held))| (format!("{}:{}", at.file(), at.line()), count, held)).collect();
    lines.sort_by_key(|line| std::cmp::Reverse(line.2));
    lines
}

/// One use of the writer since `acquired`, by the writes begun at `callers` (a group commit
/// charges each batch its share).
fn record_write(acquired: Instant, callers: &[&'static std::panic::Location<'static>]) {
    let held = acquired.elapsed();
    WRITE_STATISTICS.transactions.fetch_add(1, Ordering::Relaxed);
    WRITE_STATISTICS.held_nanos.fetch_add(held.as_nanos() as u64, Ordering::Relaxed);
    if let Ok(mut counts) = BY_CALLER.lock() {
        let share = held / callers.len().max(1) as u32;
        for caller in callers {
            let entry = counts.get_or_insert_default().entry(caller).or_default();
            entry.0 += 1;
            entry.1 += share;
        }
    }
}

/// The writer connection held for single statements outside a transaction
/// ([`Store::write_statement`]).
pub struct SingleWrite {
    connection: Connection,
    acquired: Instant,
    caller: &'static std::panic::Location<'static>,
}

impl Drop for SingleWrite {
    fn drop(&mut self) {
        record_write(self.acquired, &[self.caller]);
    }
}

impl Deref for SingleWrite {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.connection
    }
}

impl DerefMut for SingleWrite {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.connection
    }
}

/// Writes that need no answer, sent to the writer with the commit: write statements (deferred
/// by the store's `defer_*` functions) and then events, in the order they were added.
#[derive(Default)]
pub struct PendingWrites {
    statements: Vec<Statement>,
    events: Vec<events::EventRow>,
}

impl PendingWrites {
    /// Appends an event: written with the commit, in the order appended.
    pub fn append_event(&mut self, event: NewEvent) {
        self.append_event_at(&now(), event);
    }

    /// [`PendingWrites::append_event`], dated `time` (when what it records happened).
    pub fn append_event_at(&mut self, time: &Timestamp, event: NewEvent) {
        self.events.push(events::columns(time, &event));
    }

    /// Adds a statement, sent with the commit (again if a failed group commit retries this
    /// batch alone).
    pub(crate) fn defer(&mut self, statement: Statement) {
        self.statements.push(statement);
    }

    /// The `INSERT`s of the appended events, sent after the deferred statements (built at
    /// each commit: a batch retried alone builds them again).
    fn event_appends(&self) -> Vec<Statement> {
        events::append_all(&self.events)
    }
}

/// Runs `work` inline on the writer `connection` (locked at `acquired`) in one transaction
/// (`BEGIN IMMEDIATE`, …, `COMMIT`; rolled back on an error), then records the writer's use
/// and wakes event subscribers. `work` answers its answer and the newest event's number.
fn commit_recorded<T>(
    connection: &rusqlite::Connection,
    latest_event: &watch::Sender<i64>,
    acquired: Instant,
    callers: &[&'static std::panic::Location<'static>],
    work: impl FnOnce(&rusqlite::Connection) -> StoreResult<(T, Option<i64>)>,
) -> StoreResult<T> {
    let committed = (|| {
        connection.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let committed = work(connection).and_then(|answer| {
            connection.prepare_cached("COMMIT")?.execute([])?;
            Ok(answer)
        });
        if committed.is_err() && !connection.is_autocommit() {
            connection.execute_batch("ROLLBACK")?;
        }
        committed
    })();
    record_write(acquired, callers);
    let (answer, newest_event) = committed?;
    publish_newest_event(latest_event, newest_event);
    Ok(answer)
}

/// Runs the statements and events of each of `writes`, in order, on the writer `connection`
/// in a transaction. Answers, for each of `writes`, the rows its statements returned, and the
/// sequence number of the newest event (read once, so events appended need not each answer
/// theirs).
fn write_all(
    connection: &rusqlite::Connection,
    writes: &[&PendingWrites],
) -> StoreResult<(Vec<Vec<InlineRow>>, Option<i64>)> {
    let mut returned = Vec::with_capacity(writes.len());
    for batch in writes {
        let mut rows = Vec::new();
        let appends = batch.event_appends();
        for statement in batch.statements.iter().chain(&appends) {
            statement.run_inline(connection, &mut rows)?;
        }
        returned.push(rows);
    }
    let newest_event = connection.prepare_cached("SELECT max(seq) FROM events")?.query_row([], |row| row.get(0))?;
    Ok((returned, newest_event))
}

/// See [`Store::batch`]. Dropping it without [`WriteBatch::commit`] writes nothing.
pub struct WriteBatch {
    queue: mpsc::UnboundedSender<QueuedBatch>,
    writes: PendingWrites,
    caller: &'static std::panic::Location<'static>,
}

impl WriteBatch {
    pub fn writes(&mut self) -> &mut PendingWrites {
        &mut self.writes
    }

    pub fn append_event(&mut self, event: NewEvent) {
        self.writes.append_event(event);
    }

    /// Commits the writes, together with the other batches waiting for the writer: answers
    /// once they are committed (or failed: then nothing of this batch is written). A caller
    /// cancelled while waiting leaves the batch to be committed all the same.
    pub async fn commit(self) -> StoreResult<()> {
        self.commit_returning().await.map(drop)
    }

    /// [`WriteBatch::commit`], answering the rows its statements returned: a claim of tasks
    /// is a batch that answers what it took.
    pub(crate) async fn commit_returning(self) -> StoreResult<Vec<InlineRow>> {
        let (done, outcome) = oneshot::channel();
        let batch = QueuedBatch { writes: self.writes, caller: self.caller, done };
        self.queue.send(batch).map_err(|_| sqlx::Error::PoolClosed)?;
        outcome.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

struct QueuedBatch {
    writes: PendingWrites,
    caller: &'static std::panic::Location<'static>,
    done: oneshot::Sender<StoreResult<Vec<InlineRow>>>,
}

/// At most this many batches share one transaction.
const BATCHES_PER_COMMIT: usize = 64;

/// The batch committer, one task per store (group commit): takes the next batch, lets the
/// tasks ready to run go first, waits for the write lock, and commits the batch inline with
/// every batch that arrived meanwhile in one transaction. Should that transaction fail, each
/// of its batches is committed alone, so one bad batch fails only itself. Runs until the store
/// is dropped.
async fn commit_batches(
    writer: Arc<ConnectionPool>,
    inline_writer: Arc<inline::InlineWriter>,
    latest_event: watch::Sender<i64>,
    mut queue: mpsc::UnboundedReceiver<QueuedBatch>,
) {
    while let Some(first) = queue.recv().await {
        // The tasks ready to run go first: what they queue meanwhile commits with this group
        // (under load, fewer and larger transactions: a third as many, and 10-15% less CPU
        // per lifecycle in `cargo bench --bench libvirt`).
        tokio::task::yield_now().await;
        let lock = lock_writer(&writer).await;
        let mut group = vec![first];
        while group.len() < BATCHES_PER_COMMIT
            && let Ok(next) = queue.try_recv()
        {
            group.push(next);
        }
        let committing = std::panic::AssertUnwindSafe(|| match lock {
            Ok((_lock, acquired)) => inline_writer.with(|connection| match connection {
                Ok(connection) => commit_group(connection, &latest_event, acquired, group),
                Err(error) => fail_group(group, &error),
            }),
            Err(error) => fail_group(group, &error),
        });
        // A panic fails the group's batches (their answers are dropped), not the committer.
        if std::panic::catch_unwind(committing).is_err() {
            tracing::error!("committing a group of write batches panicked; its batches failed");
        }
    }
}

/// Commits `group` inline on the writer `connection` (locked at `acquired`), then answers each
/// batch.
fn commit_group(
    connection: &rusqlite::Connection,
    latest_event: &watch::Sender<i64>,
    acquired: Instant,
    mut group: Vec<QueuedBatch>,
) {
    let writes: Vec<_> = group.iter().map(|batch| &batch.writes).collect();
    let callers: Vec<_> = group.iter().map(|batch| batch.caller).collect();
    let commit = |writes: &[&PendingWrites], acquired, callers: &[_]| {
        commit_recorded(connection, latest_event, acquired, callers, |connection| write_all(connection, writes))
    };
    match commit(&writes, acquired, &callers) {
        Ok(returned) => {
            for (batch, rows) in group.into_iter().zip(returned) {
                let _ = batch.done.send(Ok(rows));
            }
        }
        Err(error) if group.len() == 1 => {
            let _ = group.remove(0).done.send(Err(error));
        }
        Err(_) => {
            for batch in group {
                let committed = commit(&[&batch.writes], Instant::now(), &[batch.caller]);
                let _ = batch.done.send(committed.map(|mut returned| returned.pop().unwrap_or_default()));
            }
        }
    }
}

/// Fails each batch of `group`: the writer could not be had.
fn fail_group(group: Vec<QueuedBatch>, error: &StoreError) {
    let reason = match error {
        StoreError::Database(source) => source.to_string(),
        other => other.to_string(),
    };
    for batch in group {
        let _ = batch.done.send(Err(StoreError::WriterUnavailable(reason.clone())));
    }
}

/// Tells event subscribers about events up to `newest_event`, if that is news.
fn publish_newest_event(latest_event: &watch::Sender<i64>, newest_event: Option<i64>) {
    if let Some(seq) = newest_event {
        latest_event.send_if_modified(|latest| {
            let newer = seq > *latest;
            if newer {
                *latest = seq;
            }
            newer
        });
    }
}

/// Commits the transaction on the writer `connection`: sends `writes` with the `COMMIT`, wakes
/// event subscribers and records the writer's use. A failed commit is rolled back before the
/// connection is given back.
async fn commit_transaction(
    mut connection: Connection,
    writes: &PendingWrites,
    latest_event: &watch::Sender<i64>,
    acquired: Instant,
    caller: &'static std::panic::Location<'static>,
) -> StoreResult<()> {
    let newest_event = Statement::new("SELECT max(seq) AS newest_event FROM events");
    let commit = Statement::new("COMMIT");
    let in_flight = CommitInFlight(Some(connection.pool.clone()));
    let appends = writes.event_appends();
    let statements = writes.statements.iter().chain(&appends).chain([&newest_event, &commit]);
    let committed = statement::run_together(&mut connection, statements).await;
    in_flight.finished();
    if committed.is_err() && sqlx::query("ROLLBACK").execute(&mut *connection).await.is_err() {
        // The connection is broken: start afresh.
        connection.discard();
    } else {
        drop(connection);
    }
    record_write(acquired, &[caller]);
    let rows = committed?;
    let newest = rows.iter().find(|row| row.columns().first().is_some_and(|column| column.name() == "newest_event"));
    publish_newest_event(latest_event, newest.map(|row| row.try_get("newest_event")).transpose()?.flatten());
    Ok(())
}

/// Armed while a transaction's commit runs: when its caller is cancelled (a client hung up),
/// the future is dropped at the `await` and a failed commit's transaction may still be open on
/// the writer. Dropped armed, it tells the writer's next user to roll back first.
struct CommitInFlight(Option<Arc<ConnectionPool>>);

impl CommitInFlight {
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for CommitInFlight {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.interrupted_commit.store(true, Ordering::Release);
        }
    }
}

/// A write transaction. Dropping it without [`WriteTx::commit`] rolls back.
pub struct WriteTx {
    connection: Option<Connection>,
    latest_event: watch::Sender<i64>,
    /// Sent with the commit.
    writes: PendingWrites,
    acquired: Instant,
    caller: &'static std::panic::Location<'static>,
}

impl WriteTx {
    /// Appends an event in this transaction: written with the commit, in the order appended.
    pub fn append_event(&mut self, event: NewEvent) {
        self.writes.append_event(event);
    }

    /// Writes sent with the commit. Statements deferred here are not seen by reads in this
    /// transaction: defer only writes that nothing later in it reads.
    pub fn writes(&mut self) -> &mut PendingWrites {
        &mut self.writes
    }

    pub async fn commit(mut self) -> StoreResult<()> {
        let Some(connection) = self.connection.take() else { return Ok(()) };
        commit_transaction(connection, &self.writes, &self.latest_event, self.acquired, self.caller).await
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            record_write(self.acquired, &[self.caller]);
            // Roll back on the runtime; the writer connection is given back afterwards, or
            // dropped if the rollback failed (or there is no runtime to run it on).
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if sqlx::query("ROLLBACK").execute(&mut *connection).await.is_err() {
                        connection.discard();
                    }
                });
            } else {
                connection.discard();
            }
        }
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.connection.as_deref().expect("transaction is open until commit or drop")
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.connection.as_deref_mut().expect("transaction is open until commit or drop")
    }
}

/// Current time, truncated to milliseconds so that what is stored is what is returned.
pub fn now() -> Timestamp {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

pub(crate) fn format_time(time: &Timestamp) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn parse_time(text: &str) -> StoreResult<Timestamp> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| StoreError::Corrupt(format!("timestamp '{text}': {error}")))
}

pub(crate) fn parse_optional_time(text: Option<String>) -> StoreResult<Option<Timestamp>> {
    text.as_deref().map(parse_time).transpose()
}

pub(crate) fn parse_uuid(text: &str) -> StoreResult<uuid::Uuid> {
    uuid::Uuid::parse_str(text).map_err(|error| StoreError::Corrupt(format!("uuid '{text}': {error}")))
}

/// `'a', 'b', …`: names of an enum's variants (fixed, without quotes) written into a statement
/// instead of bound. SQLite plans with them; a bound value that the planner compares with a
/// partial index's condition (such as `kind = ?` with migration 0009's) makes it prepare the
/// statement again at every execution with another value.
fn names(names: impl IntoIterator<Item = &'static str>) -> String {
    let quoted: Vec<String> = names
        .into_iter()
        .map(|name| {
            debug_assert!(!name.contains('\''), "a name written into SQL: {name}");
            format!("'{name}'")
        })
        .collect();
    quoted.join(", ")
}

pub(crate) fn parse_optional_uuid(text: Option<String>) -> StoreResult<Option<uuid::Uuid>> {
    text.as_deref().map(parse_uuid).transpose()
}

pub(crate) fn parse_enum<T: FromStr<Err = String>>(text: &str) -> StoreResult<T> {
    text.parse().map_err(StoreError::Corrupt)
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt(format!("json: {error}")))
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
pub(crate) async fn open_temporary() -> (Store, tempfile::TempDir) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", directory.path().join("test.db").display());
    (Store::open(&url).await.expect("open store"), directory)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statement that fails when the commit sends it.
    fn defer_failing_statement(writes: &mut PendingWrites) {
        writes.defer(Statement::new("INSERT INTO no_such_table VALUES (1)"));
    }

    async fn event_kinds(store: &Store) -> Vec<String> {
        let events = events::list_after(&mut store.reader().await.expect("reader"), 0, 100).await.expect("list");
        events.into_iter().map(|event| event.kind).collect()
    }

    #[tokio::test]
    async fn lookups_by_batch_and_by_external_id_use_indexes_that_hold_no_nulls() {
        let (store, _directory) = open_temporary().await;
        let (plans, partial) = store
            .read_inline(|connection| {
                let mut plans = Vec::new();
                for sql in [
                    "SELECT state, COUNT(*) AS count FROM tasks WHERE parent_id = ?1 GROUP BY state",
                    "SELECT * FROM instances WHERE external_id = ?1",
                ] {
                    let rows = inline::fetch_all(connection, &format!("EXPLAIN QUERY PLAN {sql}"), ["x"])?;
                    let details: StoreResult<Vec<String>> =
                        rows.iter().map(|row| rows::StoredRow::value::<String>(row, "detail")).collect();
                    plans.push(details?.join("; "));
                }
                let mut partial = Vec::new();
                for (table, index) in [("tasks", "tasks_by_parent"), ("instances", "instances_by_external_id")] {
                    for row in inline::fetch_all(connection, &format!("PRAGMA index_list({table})"), [])? {
                        if rows::StoredRow::value::<String>(&row, "name")? == index {
                            partial.push(rows::StoredRow::value::<i64>(&row, "partial")? == 1);
                        }
                    }
                }
                Ok((plans, partial))
            })
            .expect("read");
        assert!(plans[0].contains("USING INDEX tasks_by_parent"), "{}", plans[0]);
        assert!(plans[1].contains("USING INDEX instances_by_external_id"), "{}", plans[1]);
        assert_eq!(partial, [true, true], "neither index holds the rows without a value");
    }

    #[tokio::test]
    async fn readers_see_what_was_committed_and_only_read_in_a_file_or_in_memory() {
        let (on_disk, _directory) = open_temporary().await;
        let in_memory = Store::open("sqlite::memory:").await.expect("open in memory");
        for (database, store) in [("on disk", on_disk), ("in memory", in_memory)] {
            let count = |store: &Store| {
                store.read_inline(|connection| {
                    let rows = inline::fetch_all(connection, "SELECT count(*) AS events FROM events", [])?;
                    rows.first().map(|row| rows::StoredRow::value::<i64>(row, "events")).transpose()
                })
            };
            assert_eq!(count(&store).expect("read"), Some(0));
            let mut batch = store.batch();
            batch.append_event(NewEvent::new("test.seen", "test", "a"));
            batch.commit().await.expect("commit");
            assert_eq!(count(&store).expect("read"), Some(1), "the committed event is seen");
            // A write that would succeed on a writable connection.
            let write = "INSERT INTO events (time, type, object_kind, object_id, actor) VALUES ('', '', '', '', '')";
            let refused = store.read_inline(|connection| inline::fetch_all(connection, write, []));
            assert!(refused.is_err(), "inline connections only read ({database})");
            let mut reader = store.reader().await.expect("reader");
            let refused = sqlx::query(write).execute(&mut *reader).await;
            assert!(refused.is_err(), "reader connections only read ({database})");
        }
    }

    #[tokio::test]
    async fn a_failed_batch_writes_nothing_and_the_writer_goes_on() {
        let (store, _directory) = open_temporary().await;
        let mut batch = store.batch();
        batch.append_event(NewEvent::new("test.lost", "test", "a"));
        defer_failing_statement(batch.writes());
        assert!(batch.commit().await.is_err(), "the failing statement fails the commit");

        let mut batch = store.batch();
        batch.append_event(NewEvent::new("test.kept", "test", "b"));
        batch.commit().await.expect("the next batch commits");
        assert_eq!(event_kinds(&store).await, ["test.kept"]);
        assert_eq!(*store.subscribe_events().borrow(), 1, "subscribers see the kept event only");
    }

    #[tokio::test]
    async fn a_transaction_run_inline_commits_what_it_decided_on_what_it_read_or_nothing() {
        let (store, _directory) = open_temporary().await;
        let mut batch = store.batch();
        batch.append_event(NewEvent::new("test.first", "test", "a"));
        batch.commit().await.expect("commit");
        let count_events = |connection: &rusqlite::Connection| {
            let rows = inline::fetch_all(connection, "SELECT count(*) AS events FROM events", [])?;
            rows.first().map(|row| rows::StoredRow::value::<i64>(row, "events")).transpose()
        };
        let seen = store
            .transact(move |connection, writes| {
                let seen = count_events(connection)?;
                writes.append_event(NewEvent::new("test.second", "test", "a"));
                Ok(seen)
            })
            .await
            .expect("transact");
        assert_eq!(seen, Some(1), "the work reads what was committed before it");

        let refused = store
            .transact(|_, writes| {
                writes.append_event(NewEvent::new("test.lost", "test", "a"));
                Err::<(), _>(StoreError::Corrupt("decided against".into()))
            })
            .await;
        assert!(matches!(refused, Err(StoreError::Corrupt(_))), "the work's own error: {refused:?}");
        let failed = store
            .transact(|_, writes| {
                writes.append_event(NewEvent::new("test.lost", "test", "a"));
                defer_failing_statement(writes);
                Ok(())
            })
            .await;
        assert!(failed.is_err(), "a failing write fails the transaction");
        assert_eq!(event_kinds(&store).await, ["test.first", "test.second"], "failed work wrote nothing");
        assert_eq!(*store.subscribe_events().borrow(), 2, "subscribers see the committed events");
    }

    #[tokio::test]
    async fn a_panic_in_inline_work_rolls_back_before_the_write_lock_is_given_up() {
        let (store, _directory) = open_temporary().await;
        let panicked = store
            .transact(|connection, _| -> StoreResult<()> {
                connection.execute_batch(
                    "INSERT INTO events (time, type, object_kind, object_id, actor) VALUES ('', 'test.lost', '', '', '')",
                )?;
                panic!("a bug in the work");
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Interrupted(_))), "{panicked:?}");
        // The next writer does not wait for a transaction the panic left open.
        let begun = tokio::time::timeout(Duration::from_secs(2), store.begin()).await;
        let mut transaction = begun.expect("the writer is free").expect("begin");
        transaction.append_event(NewEvent::new("test.kept", "test", "a"));
        transaction.commit().await.expect("commit");
        assert_eq!(event_kinds(&store).await, ["test.kept"]);
    }

    #[tokio::test]
    async fn batches_waiting_together_commit_together_and_a_bad_one_fails_alone() {
        let (store, _directory) = open_temporary().await;
        // Holding the writer makes the batches queue up: the committer takes them as one group.
        let transaction = store.begin().await.expect("begin");
        let commits: Vec<_> = ["test.first", "test.bad", "test.third"]
            .into_iter()
            .map(|kind| {
                let mut batch = store.batch();
                batch.append_event(NewEvent::new(kind, "test", "a"));
                if kind == "test.bad" {
                    defer_failing_statement(batch.writes());
                }
                tokio::spawn(batch.commit())
            })
            .collect();
        tokio::task::yield_now().await;
        transaction.commit().await.expect("commit");
        let mut outcomes = Vec::new();
        for commit in commits {
            outcomes.push(commit.await.expect("joined").is_ok());
        }
        assert_eq!(outcomes, [true, false, true], "only the bad batch failed");
        assert_eq!(event_kinds(&store).await, ["test.first", "test.third"]);
        assert_eq!(*store.subscribe_events().borrow(), 2, "subscribers see the committed events");
    }

    #[tokio::test]
    async fn batches_committed_together_each_get_the_rows_of_their_own_statements() {
        let (store, _directory) = open_temporary().await;
        // Holding the writer makes the batches queue up: the committer takes them as one group.
        let transaction = store.begin().await.expect("begin");
        let commits: Vec<_> = ["first", "second", "third"]
            .into_iter()
            .map(|key| {
                let mut batch = store.batch();
                batch.append_event(NewEvent::new("test.written", "test", key));
                let mut insert = Statement::new("INSERT INTO plugin_state (provider, key, value) VALUES ('provider', ");
                insert.bind(key.to_owned()).push(", x'00') RETURNING key");
                batch.writes().defer(insert);
                tokio::spawn(batch.commit_returning())
            })
            .collect();
        tokio::task::yield_now().await;
        transaction.commit().await.expect("commit");
        for (commit, key) in commits.into_iter().zip(["first", "second", "third"]) {
            let rows = commit.await.expect("joined").expect("committed");
            let keys: Vec<String> = rows.iter().map(|row| rows::StoredRow::value(row, "key").expect("key")).collect();
            assert_eq!(keys, [key], "a batch's rows are its own, without its events'");
        }
        assert_eq!(event_kinds(&store).await.len(), 3);
    }

    #[tokio::test]
    async fn a_batch_on_a_closed_store_fails_with_the_writer_unavailable() {
        let (store, _directory) = open_temporary().await;
        store.close().await;
        let committed = store.batch().commit().await;
        assert!(
            matches!(&committed, Err(StoreError::WriterUnavailable(reason)) if reason.contains("closed")),
            "{committed:?}"
        );
    }

    #[tokio::test]
    async fn the_first_statement_sent_with_begin_is_part_of_the_transaction() {
        let (store, _directory) = open_temporary().await;
        let (transaction, rows) = store
            .begin_with(|query| {
                query.push(
                    "INSERT INTO plugin_state (provider, key, value) VALUES ('provider', 'key', x'00') RETURNING key",
                );
            })
            .await
            .expect("begin with an insert");
        assert_eq!(rows.len(), 1, "the statement's rows are answered");
        drop(transaction);
        let failed = store.begin_with(|query| {
            query.push("SELECT * FROM no_such_table");
        });
        assert!(failed.await.is_err(), "a failing first statement fails the begin");

        let transaction = store.begin().await.expect("the writer is free again");
        transaction.commit().await.expect("commit");
        let stored = plugin_state::get(&mut store.reader().await.expect("reader"), "provider", "key").await;
        assert_eq!(stored.expect("read"), None, "the dropped transaction took its first statement with it");
    }

    #[tokio::test]
    async fn a_failed_commit_rolls_back_what_the_transaction_wrote_before() {
        let (store, _directory) = open_temporary().await;
        let mut transaction = store.begin().await.expect("begin");
        plugin_state::set(&mut transaction, "provider", "key", b"value").await.expect("written in the transaction");
        transaction.append_event(NewEvent::new("test.lost", "test", "a"));
        defer_failing_statement(transaction.writes());
        assert!(transaction.commit().await.is_err());

        let stored = plugin_state::get(&mut store.reader().await.expect("reader"), "provider", "key").await;
        assert_eq!(stored.expect("read"), None, "the direct write was rolled back");
        assert!(event_kinds(&store).await.is_empty());
        let transaction = store.begin().await.expect("the writer is free again");
        transaction.commit().await.expect("commit");
    }

    #[tokio::test]
    async fn a_transaction_left_open_by_a_cancelled_commit_is_ended_before_the_writer_is_used_again() {
        let (store, _directory) = open_temporary().await;
        {
            // What a commit cancelled after its `BEGIN` leaves behind: an open transaction on
            // the writer, and its guard dropped armed.
            let mut writer = store.write_statement().await.expect("writer");
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *writer).await.expect("begin");
            plugin_state::set(&mut writer, "provider", "key", b"lost").await.expect("written in it");
            drop(CommitInFlight(Some(writer.connection.pool.clone())));
        }
        let mut transaction = store.begin().await.expect("the writer begins again");
        transaction.append_event(NewEvent::new("test.kept", "test", "b"));
        transaction.commit().await.expect("commit");
        assert_eq!(event_kinds(&store).await, ["test.kept"]);
        let stored = plugin_state::get(&mut store.reader().await.expect("reader"), "provider", "key").await;
        assert_eq!(stored.expect("read"), None, "the open transaction was rolled back, not committed");
    }

    #[tokio::test]
    async fn readers_beyond_the_pool_size_wait_their_turn() {
        let (store, _directory) = open_temporary().await;
        let reads = (0..READER_CONNECTIONS * 3).map(|_| {
            let store = store.clone();
            async move {
                let mut reader = store.reader().await?;
                events::latest_seq(&mut reader).await
            }
        });
        let results = futures::future::join_all(reads).await;
        assert!(results.iter().all(|result| matches!(result, Ok(0))), "every read answered: {results:?}");
    }
}
