//! SQLite called inline, on the calling thread (rusqlite): the small reads on hot paths, and the
//! batch committer's commits. sqlx runs each connection on a thread of its own, so every
//! statement through it is a round trip between threads: ~90 µs of CPU for a read by key
//! against ~4 µs inline, ~130 µs for a small write transaction against ~35 µs (`cargo bench
//! --bench sqlite_calls`). What runs here must be short (a read by key, a commit of prepared
//! statements): it holds the calling thread, a runtime worker, while it runs.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreResult;
use super::rows::InlineRow;

/// Idle connections kept; more are opened while more reads run at once, and closed after.
const MAX_IDLE: usize = 8;

/// sqlx's name for the database of a `sqlite::memory:` URL, shared by the connections of one
/// set of options: the inline connections open it by the same name.
const SQLX_IN_MEMORY_PREFIX: &str = "file:sqlx-in-memory-";

/// Read-only connections to the store's database, opened on demand.
pub(super) struct InlineReaders {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl InlineReaders {
    /// Readers of the database sqlx opens at `path` (its options' filename).
    pub(super) fn new(path: PathBuf) -> InlineReaders {
        InlineReaders { path, idle: Mutex::new(Vec::new()) }
    }

    /// Runs `read` in a read transaction (one snapshot for all its statements) on an idle
    /// connection.
    pub(super) fn read<T>(&self, read: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let connection = match idle {
            Some(connection) => connection,
            None => open(&self.path, Access::Read)?,
        };
        // Kept prepared, as each statement of `read` (rusqlite's `Transaction` prepares its
        // `BEGIN` and `COMMIT` anew each time: ~1% of the lifecycle benchmark's CPU).
        connection.prepare_cached("BEGIN")?.execute([])?;
        let answer = read(&connection);
        // Ends the read transaction, whatever `read` answered; on an error (of either) the
        // connection is closed rather than kept.
        connection.prepare_cached("COMMIT")?.execute([])?;
        let answer = answer?;
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(connection);
        }
        Ok(answer)
    }
}

/// The writer's connection for what the batch committer commits: the store uses it only while
/// it holds the write lock (the sqlx writer's slot), so it never waits for another writer.
pub(super) struct InlineWriter {
    path: PathBuf,
    connection: Mutex<Option<Connection>>,
}

/// Statements kept prepared on the writer: one per shape of write.
const WRITER_PREPARED_STATEMENTS: usize = 128;
/// Statements kept prepared on each reader: the reads of the hot paths (a task's context, the
/// fleet, …) are more than rusqlite's default of 16.
const READER_PREPARED_STATEMENTS: usize = 64;

impl InlineWriter {
    /// The writer of the database sqlx opens at `path` (its options' filename).
    pub(super) fn new(path: PathBuf) -> InlineWriter {
        InlineWriter { path, connection: Mutex::new(None) }
    }

    /// Runs `write` on the connection (opened on first use; `write` gets the error should that
    /// fail), outside any transaction: one left open (a failed `ROLLBACK`) is rolled back
    /// first, and one that `write` leaves open by panicking is rolled back before the panic
    /// goes on — before the caller gives up the write lock.
    pub(super) fn with<T>(&self, write: impl FnOnce(StoreResult<&Connection>) -> T) -> T {
        let mut slot = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
        end_transaction_left_open(&mut slot);
        let connection = match &mut *slot {
            Some(connection) => Ok(&*connection),
            empty => open_writer(&self.path).map(|opened| &*empty.insert(opened)),
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| write(connection))) {
            Ok(answer) => answer,
            Err(panic) => {
                end_transaction_left_open(&mut slot);
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// Rolls back a transaction left open on the writer's connection; a connection that cannot is
/// dropped (opened afresh on next use).
fn end_transaction_left_open(slot: &mut Option<Connection>) {
    if let Some(open) = slot.as_ref()
        && !open.is_autocommit()
        && open.execute_batch("ROLLBACK").is_err()
    {
        *slot = None;
    }
}

#[derive(PartialEq)]
enum Access {
    Read,
    Write,
}

/// A connection that may write to the database sqlx opened at `path`.
pub(super) fn open_writer(path: &Path) -> StoreResult<Connection> {
    open(path, Access::Write)
}

/// Whether sqlx's `path` names an in-memory database (which has no WAL).
pub(super) fn is_in_memory(path: &Path) -> bool {
    path.to_string_lossy().starts_with(SQLX_IN_MEMORY_PREFIX)
}

/// Opens the database sqlx opened at `path`, with the settings of sqlx's connections.
fn open(path: &Path, access: Access) -> StoreResult<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX;
    flags |= match access {
        Access::Read => OpenFlags::SQLITE_OPEN_READ_ONLY,
        Access::Write => OpenFlags::SQLITE_OPEN_READ_WRITE,
    };
    if is_in_memory(path) {
        flags |= OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE;
    }
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(Duration::from_secs(10))?;
    if access == Access::Write {
        connection.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
        connection.pragma_update(None, "wal_autocheckpoint", super::checkpoint::BACKSTOP_PAGES)?;
        connection.set_prepared_statement_cache_capacity(WRITER_PREPARED_STATEMENTS);
    } else {
        // A read-only open does not hold for an in-memory database, whose cache the readers
        // share with the connection that writes it.
        connection.pragma_update(None, "query_only", true)?;
        connection.set_prepared_statement_cache_capacity(READER_PREPARED_STATEMENTS);
    }
    Ok(connection)
}

/// The rows `sql` answers with `params`, owned; the statement stays prepared on the connection.
pub(super) fn fetch_all(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<InlineRow>> {
    let mut read = Vec::new();
    let mut statement = connection.prepare_cached(sql)?;
    read_rows(&mut statement, params, &mut read)?;
    Ok(read)
}

/// Runs the prepared `statement` with `params` and appends the rows it answers to `read`.
pub(super) fn read_rows(
    statement: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    read: &mut Vec<InlineRow>,
) -> StoreResult<()> {
    let columns = InlineRow::columns(statement);
    let mut rows = statement.query(params)?;
    while let Some(row) = rows.next()? {
        read.push(InlineRow::read(row, &columns)?);
    }
    Ok(())
}
