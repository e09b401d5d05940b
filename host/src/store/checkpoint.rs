//! WAL checkpoints off the write path. SQLite's own (automatic) checkpoint runs in the
//! connection whose commit takes the WAL past its threshold, while that connection still holds
//! the write lock: it copies the WAL's pages into the database and syncs both files, and every
//! other write waits for it. Instead, the store checkpoints on a thread of its own a short while
//! after writes: PASSIVE, so it never waits for a reader or a writer, and writes go on while it
//! runs. The writers keep SQLite's automatic checkpoint only as a backstop, at
//! [`BACKSTOP_PAGES`], should this thread fall behind.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::Duration;

use rusqlite::Connection;

/// How long after a write the checkpoint runs: the writes of that while are checkpointed
/// together (under load, a checkpoint every this long).
const DELAY: Duration = Duration::from_millis(100);

/// The writers' automatic checkpoint threshold in pages (SQLite's default is 1,000): reached
/// only if the checkpoint thread falls behind.
pub(super) const BACKSTOP_PAGES: u32 = 10_000;

/// Tells the checkpoint thread that a write is under way; the thread ends once every trigger
/// of its store is dropped.
#[derive(Clone)]
pub(super) struct Trigger(SyncSender<()>);

impl Trigger {
    /// Starts the checkpoint thread of the database at `path`.
    pub(super) fn start(path: PathBuf) -> std::io::Result<Trigger> {
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpoint_after_writes(path, woken))?;
        Ok(Trigger(wake))
    }

    /// A write begins: a checkpoint follows. Never blocks (a wake-up already pending covers it).
    pub(super) fn write_begins(&self) {
        let _ = self.0.try_send(());
    }
}

fn checkpoint_after_writes(path: PathBuf, woken: Receiver<()>) {
    let mut connection: Option<Connection> = None;
    while woken.recv().is_ok() {
        std::thread::sleep(DELAY);
        // Writes that began while this slept are in this checkpoint; a later one wakes it again.
        match woken.try_recv() {
            Ok(()) | Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => return,
        }
        let checkpointed = match &connection {
            Some(open) => checkpoint(open),
            None => super::inline::open_writer(&path).and_then(|opened| checkpoint(connection.insert(opened))),
        };
        if let Err(error) = checkpointed {
            tracing::warn!(%error, "WAL checkpoint failed; retried after the next write");
            connection = None;
        }
    }
}

/// Copies into the database what the WAL holds that no reader still needs from it.
fn checkpoint(connection: &Connection) -> super::StoreResult<()> {
    let (blocked, wal_pages, copied): (i64, i64, i64) =
        connection
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
    tracing::trace!(blocked, wal_pages, copied, "WAL checkpoint");
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::NewEvent;
    use crate::store::open_temporary;

    #[tokio::test]
    async fn writes_reach_the_database_file_without_a_writer_checkpointing() {
        let (store, directory) = open_temporary().await;
        let database = directory.path().join("test.db");
        let size = || std::fs::metadata(&database).expect("database file").len();
        let before = size();
        // Far fewer pages than the writers' backstop: only the checkpoint thread copies them.
        for round in 0..20 {
            let mut batch = store.batch();
            for index in 0..100 {
                batch.append_event(NewEvent::new("test.checkpoint", "test", format!("{round}-{index}")));
            }
            batch.commit().await.expect("commit");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while size() <= before && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(size() > before, "the WAL was checkpointed into the database file ({before} bytes before and after)");
    }
}
