//! What a call into SQLite costs through sqlx and inline (`cargo bench --bench sqlite_calls`).
//!
//! sqlx runs every SQLite connection on a thread of its own: each query is a command sent to
//! that thread and rows and a result sent back, two thread wakeups at least. This bench runs the
//! same statements on one database file (WAL, `synchronous = NORMAL`, as the store opens it)
//! through a sqlx connection from a tokio runtime of two workers, as the server does, and
//! inline through rusqlite on the calling thread, and prints wall time, CPU time and context
//! switches per call. Not a test: nothing here asserts a speed.

#[path = "common/proc_stat.rs"]
mod proc_stat;

use std::time::Instant;

use sqlx::{ConnectOptions as _, Row as _};

const CALLS: usize = 5000;
const ROUNDS: usize = 3;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, state TEXT NOT NULL, data TEXT NOT NULL); \
                      CREATE INDEX IF NOT EXISTS items_state ON items (state)";
const INSERT: &str = "INSERT INTO items (id, state, data) VALUES (?1, 'new', ?2)";
const UPDATE: &str = "UPDATE items SET state = 'done' WHERE id = ?1";
const READ: &str = "SELECT state, data FROM items WHERE id = ?1";

fn main() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let path = scratch.path().join("bench.db");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    for round in 1..=ROUNDS {
        println!("round {round}, {CALLS} calls each:");
        runtime.block_on(through_sqlx(&path, round))?;
        inline(&path, round)?;
    }
    Ok(())
}

async fn through_sqlx(path: &std::path::Path, round: usize) -> anyhow::Result<()> {
    let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .connect()
        .await?;
    sqlx::raw_sql(SCHEMA).execute(&mut connection).await?;
    let measured = Measure::start();
    for _ in 0..CALLS {
        sqlx::query("SELECT 1").execute(&mut connection).await?;
    }
    measured.print("sqlx", "SELECT 1");
    let measured = Measure::start();
    for call in 0..CALLS {
        // The store's pattern: a transaction's writes sent with its COMMIT in one query.
        sqlx::query(&format!("BEGIN IMMEDIATE; {INSERT}; {UPDATE}; COMMIT"))
            .bind(format!("sqlx-{round}-{call}"))
            .bind("{\"a\": 1}")
            .execute(&mut connection)
            .await?;
    }
    measured.print("sqlx", "write transaction (insert, update) in one query");
    let measured = Measure::start();
    for call in 0..CALLS {
        let row = sqlx::query(READ).bind(format!("sqlx-{round}-{call}")).fetch_one(&mut connection).await?;
        anyhow::ensure!(row.try_get::<String, _>("state")? == "done", "the row was updated");
    }
    measured.print("sqlx", "read of one row by key");
    Ok(())
}

fn inline(path: &std::path::Path, round: usize) -> anyhow::Result<()> {
    let connection = rusqlite::Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "wal")?;
    connection.pragma_update(None, "synchronous", "normal")?;
    connection.execute_batch(SCHEMA)?;
    let measured = Measure::start();
    for _ in 0..CALLS {
        connection.prepare_cached("SELECT 1")?.query_row([], |row| row.get::<_, i64>(0))?;
    }
    measured.print("inline", "SELECT 1");
    let measured = Measure::start();
    for call in 0..CALLS {
        let id = format!("inline-{round}-{call}");
        connection.execute_batch("BEGIN IMMEDIATE")?;
        connection.prepare_cached(INSERT)?.execute((&id, "{\"a\": 1}"))?;
        connection.prepare_cached(UPDATE)?.execute([&id])?;
        connection.execute_batch("COMMIT")?;
    }
    measured.print("inline", "write transaction (insert, update)");
    let measured = Measure::start();
    for call in 0..CALLS {
        let id = format!("inline-{round}-{call}");
        let state: String = connection.prepare_cached(READ)?.query_row([&id], |row| row.get(0))?;
        anyhow::ensure!(state == "done", "the row was updated");
    }
    measured.print("inline", "read of one row by key");
    Ok(())
}

/// Wall time, this process's CPU time and its threads' context switches since `start`.
struct Measure {
    started: Instant,
    cpu: f64,
    switches: u64,
}

impl Measure {
    fn start() -> Measure {
        Measure { started: Instant::now(), cpu: cpu_seconds(), switches: context_switches() }
    }

    fn print(&self, way: &str, what: &str) {
        let per_call = |total: f64| total * 1e6 / CALLS as f64;
        println!(
            "  {way:>6}: {what}: {:.1} µs wall, {:.1} µs CPU, {:.1} context switches per call",
            per_call(self.started.elapsed().as_secs_f64()),
            per_call(cpu_seconds() - self.cpu),
            context_switches().saturating_sub(self.switches) as f64 / CALLS as f64,
        );
    }
}

/// User and system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    proc_stat::process_cpu_seconds("self").map_or(0.0, |(this_process, _)| this_process)
}

/// Context switches of all of this process's threads.
fn context_switches() -> u64 {
    proc_stat::thread_use("self").values().map(|thread| thread.context_switches).sum()
}
