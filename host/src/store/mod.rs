//! Persistence: sqlx on SQLite (WAL) with embedded migrations, and one repository module per
//! table. The only module that knows SQL.
//!
//! Writes go through [`WriteTx`], a transaction on the single writer connection: every state
//! change and the events describing it commit together, and readers are woken only after
//! the commit. Reads use a separate pool and never block behind writers (WAL).

pub mod events;
pub mod groups;
pub mod hosts;
pub mod identity;
pub mod instances;
pub mod plugin_state;
pub mod projects;
pub mod registry;
pub mod tasks;
pub mod templates;

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::watch;

use crate::model::{NewEvent, Timestamp};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored value is not readable: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The database: one writer connection, a pool of readers, and the latest event sequence
/// number for anyone waiting on new events.
#[derive(Clone)]
pub struct Store {
    writer: SqlitePool,
    readers: SqlitePool,
    latest_event: watch::Sender<i64>,
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies migrations.
    pub async fn open(url: &str) -> StoreResult<Store> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.read_only(true))
            .await?;
        let latest = events::latest_seq(&mut *writer.acquire().await?).await?;
        let (latest_event, _) = watch::channel(latest);
        Ok(Store { writer, readers, latest_event })
    }

    /// A connection for reads.
    pub async fn reader(&self) -> StoreResult<PoolConnection<Sqlite>> {
        Ok(self.readers.acquire().await?)
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE` on the single writer, so transactions
    /// never fail to upgrade and placement decisions see every committed instance).
    #[track_caller]
    pub fn begin(&self) -> impl Future<Output = StoreResult<WriteTx>> + Send + '_ {
        let caller = std::panic::Location::caller();
        async move { self.begin_at(caller).await }
    }

    async fn begin_at(&self, caller: &'static std::panic::Location<'static>) -> StoreResult<WriteTx> {
        let asked = Instant::now();
        let mut connection = self.writer.acquire().await?;
        let acquired = Instant::now();
        WRITE_STATISTICS.wait_nanos.fetch_add((acquired - asked).as_nanos() as u64, Ordering::Relaxed);
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *connection).await?;
        Ok(WriteTx {
            connection: Some(connection),
            latest_event: self.latest_event.clone(),
            appended_up_to: None,
            acquired,
            caller,
        })
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
        let asked = Instant::now();
        let connection = self.writer.acquire().await?;
        let acquired = Instant::now();
        WRITE_STATISTICS.wait_nanos.fetch_add((acquired - asked).as_nanos() as u64, Ordering::Relaxed);
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

fn record_write(acquired: Instant, caller: &'static std::panic::Location<'static>) {
    let held = acquired.elapsed();
    WRITE_STATISTICS.transactions.fetch_add(1, Ordering::Relaxed);
    WRITE_STATISTICS.held_nanos.fetch_add(held.as_nanos() as u64, Ordering::Relaxed);
    if let Ok(mut counts) = BY_CALLER.lock() {
        let entry = counts.get_or_insert_default().entry(caller).or_default();
        entry.0 += 1;
        entry.1 += held;
    }
}

/// The writer connection held for single statements outside a transaction
/// ([`Store::write_statement`]).
pub struct SingleWrite {
    connection: PoolConnection<Sqlite>,
    acquired: Instant,
    caller: &'static std::panic::Location<'static>,
}

impl Drop for SingleWrite {
    fn drop(&mut self) {
        record_write(self.acquired, self.caller);
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

/// A write transaction. Dropping it without [`WriteTx::commit`] rolls back.
pub struct WriteTx {
    connection: Option<PoolConnection<Sqlite>>,
    latest_event: watch::Sender<i64>,
    appended_up_to: Option<i64>,
    acquired: Instant,
    caller: &'static std::panic::Location<'static>,
}

impl WriteTx {
    /// Appends an event in this transaction; returns its sequence number.
    pub async fn append_event(&mut self, event: NewEvent) -> StoreResult<i64> {
        let seq = events::append(self, &event).await?;
        self.appended_up_to = Some(seq);
        Ok(seq)
    }

    pub async fn commit(mut self) -> StoreResult<()> {
        if let Some(mut connection) = self.connection.take() {
            let committed = sqlx::query("COMMIT").execute(&mut *connection).await;
            drop(connection);
            record_write(self.acquired, self.caller);
            committed?;
        }
        if let Some(seq) = self.appended_up_to {
            self.latest_event.send_if_modified(|latest| {
                let newer = seq > *latest;
                if newer {
                    *latest = seq;
                }
                newer
            });
        }
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            record_write(self.acquired, self.caller);
            // Roll back on the runtime; the writer connection returns to the pool afterwards.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *connection).await;
                });
            } else {
                connection.close_on_drop();
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

/// Ends a list query: rows after the cursor id, in id (creation) order, at most `limit`.
pub(crate) fn push_page(query: &mut sqlx::QueryBuilder<'_, Sqlite>, after: Option<uuid::Uuid>, limit: Option<u32>) {
    if let Some(after) = after {
        query.push(" AND id > ").push_bind(after.to_string());
    }
    query.push(" ORDER BY id");
    if let Some(limit) = limit {
        query.push(" LIMIT ").push_bind(limit);
    }
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
