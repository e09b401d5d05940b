//! Reads run inline: SQLite called on the calling thread (rusqlite), for the small reads on hot
//! paths. sqlx runs each connection on a thread of its own, so every statement through it is a
//! round trip between threads: ~90 µs of CPU for a read by key against ~4 µs inline
//! (`cargo bench --bench sqlite_calls`). A read here must be short (by key, a few rows): it
//! holds the calling thread, a runtime worker, while it runs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::Value;
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
        let mut connection = match idle {
            Some(connection) => connection,
            None => self.open()?,
        };
        let transaction = connection.transaction()?;
        let answer = read(&transaction)?;
        transaction.commit()?;
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(connection);
        }
        Ok(answer)
    }

    fn open(&self) -> StoreResult<Connection> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if self.path.to_string_lossy().starts_with(SQLX_IN_MEMORY_PREFIX) {
            flags |= OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE;
        }
        let connection = Connection::open_with_flags(&self.path, flags)?;
        connection.busy_timeout(Duration::from_secs(10))?;
        Ok(connection)
    }
}

/// The rows `sql` answers with `params`, owned; the statement stays prepared on the connection.
pub(super) fn fetch_all(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<InlineRow>> {
    let mut statement = connection.prepare_cached(sql)?;
    let columns: Arc<[String]> = statement.column_names().into_iter().map(str::to_owned).collect();
    let mut rows = statement.query(params)?;
    let mut read = Vec::new();
    while let Some(row) = rows.next()? {
        let values = (0..columns.len()).map(|index| row.get::<_, Value>(index)).collect::<Result<_, _>>()?;
        read.push(InlineRow { columns: columns.clone(), values });
    }
    Ok(read)
}
