//! The append-only event log.

use rusqlite::types::Value;
use sqlx::{Row, SqliteConnection};

use super::{Statement, StoreResult, format_time, parse_json, parse_time};
use crate::model::{Event, NewEvent, Timestamp};

const INSERT: &str = "INSERT INTO events (time, type, object_kind, object_id, actor, scheme, source, outcome, data) ";

/// An event's columns, in the order of the `INSERT`s below.
pub(super) type EventRow = [Value; 9];

/// Most events one `INSERT` appends.
const MAX_ROWS_PER_INSERT: usize = 32;

/// The `INSERT`s appending `rows`, in order: several rows per statement (SQLite does a
/// statement's fixed work, `AUTOINCREMENT`'s bookkeeping among it, once for all of them), in
/// chunks of a power of two rows so that few statement shapes are kept prepared.
pub(super) fn append_all(rows: &[EventRow]) -> Vec<Statement> {
    let mut statements = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let chunk = MAX_ROWS_PER_INSERT.min(1 << rest.len().ilog2());
        let (taken, left) = rest.split_at(chunk);
        let mut statement = Statement::new(INSERT);
        statement.push("VALUES ");
        for (index, row) in taken.iter().enumerate() {
            statement.push(if index == 0 { "(" } else { ", (" }).bind_all(row.iter().cloned()).push(")");
        }
        statements.push(statement);
        rest = left;
    }
    statements
}

/// The `INSERT` appending `event` (appended at `time`) only if the statement run just before it
/// changed a row (SQLite's `changes()`).
pub(super) fn append_if_changed(time: &Timestamp, event: &NewEvent) -> Statement {
    let mut statement = Statement::new(INSERT);
    statement.push("SELECT ").bind_all(columns(time, event)).push(" WHERE changes() = 1");
    statement
}

/// An event's columns (appended at `time`).
pub(super) fn columns(time: &Timestamp, event: &NewEvent) -> EventRow {
    [
        format_time(time).into(),
        event.kind.clone().into(),
        event.object_kind.to_owned().into(),
        event.object_id.clone().into(),
        event.actor.clone().into(),
        event.scheme.clone().into(),
        event.source.clone().into(),
        event.outcome.clone().into(),
        event.data.to_string().into(),
    ]
}

pub(super) async fn latest_seq(connection: &mut SqliteConnection) -> StoreResult<i64> {
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM events").fetch_one(connection).await?;
    Ok(row.try_get("seq")?)
}

/// Events with a sequence number greater than `after`, oldest first.
pub async fn list_after(connection: &mut SqliteConnection, after: i64, limit: u32) -> StoreResult<Vec<Event>> {
    let rows = sqlx::query("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
        .bind(after)
        .bind(limit)
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Event {
                seq: row.try_get("seq")?,
                time: parse_time(row.try_get("time")?)?,
                kind: row.try_get("type")?,
                object_kind: row.try_get("object_kind")?,
                object_id: row.try_get("object_id")?,
                actor: row.try_get("actor")?,
                scheme: row.try_get("scheme")?,
                source: row.try_get("source")?,
                outcome: row.try_get("outcome")?,
                data: parse_json(row.try_get("data")?)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_temporary;

    #[tokio::test]
    async fn events_are_numbered_in_order_and_wake_subscribers_on_commit() {
        let (store, _directory) = open_temporary().await;
        let mut subscriber = store.subscribe_events();
        let mut transaction = store.begin().await.expect("begin");
        transaction.append_event(NewEvent::new("test.one", "test", "a"));
        transaction.append_event(NewEvent::new("test.two", "test", "b"));
        assert!(!subscriber.has_changed().expect("open"), "no wake-up before commit");
        transaction.commit().await.expect("commit");
        assert!(subscriber.has_changed().expect("open"));
        let latest = *subscriber.borrow_and_update();

        let events = list_after(&mut store.reader().await.expect("reader"), 0, 10).await.expect("list");
        let kinds: Vec<_> = events.iter().map(|event| event.kind.as_str()).collect();
        assert_eq!(kinds, ["test.one", "test.two"]);
        assert!(events[1].seq > events[0].seq);
        assert_eq!(latest, events[1].seq, "subscribers see the last event committed");
    }

    #[test]
    fn events_are_appended_in_few_statement_shapes() {
        let row = columns(&crate::store::now(), &NewEvent::new("test.row", "test", "a"));
        let mut shapes = std::collections::HashSet::new();
        for count in 0..=100 {
            let statements = append_all(&vec![row.clone(); count]);
            let rows: Vec<usize> = statements.iter().map(|statement| statement.values().len() / row.len()).collect();
            assert_eq!(rows.iter().sum::<usize>(), count);
            assert!(rows.iter().all(|rows| rows.is_power_of_two() && *rows <= MAX_ROWS_PER_INSERT), "{rows:?}");
            shapes.extend(statements.iter().map(|statement| statement.sql().to_owned()));
        }
        assert_eq!(shapes.len(), MAX_ROWS_PER_INSERT.ilog2() as usize + 1, "1, 2, 4, … rows per statement");
    }

    #[tokio::test]
    async fn a_transaction_and_a_batch_append_many_events_in_order() {
        let (store, _directory) = open_temporary().await;
        let count = 1207;
        let mut transaction = store.begin().await.expect("begin");
        for index in 0..count {
            transaction.append_event(NewEvent::new("test.many", "test", index.to_string()));
        }
        transaction.commit().await.expect("commit");
        let mut batch = store.batch();
        for index in count..2 * count {
            batch.append_event(NewEvent::new("test.many", "test", index.to_string()));
        }
        batch.commit().await.expect("commit");
        let events = list_after(&mut store.reader().await.expect("reader"), 0, 5000).await.expect("list");
        assert_eq!(events.len(), 2 * count);
        let in_order = events.iter().enumerate().all(|(index, event)| event.object_id == index.to_string());
        assert!(in_order, "events keep the order they were appended in");
        assert_eq!(*store.subscribe_events().borrow(), events[2 * count - 1].seq);
    }

    #[tokio::test]
    async fn dropped_transaction_leaves_nothing() {
        let (store, _directory) = open_temporary().await;
        {
            let mut transaction = store.begin().await.expect("begin");
            transaction.append_event(NewEvent::new("test.lost", "test", "a"));
        }
        let transaction = store.begin().await.expect("begin after rollback");
        transaction.commit().await.expect("commit");
        let events = list_after(&mut store.reader().await.expect("reader"), 0, 10).await.expect("list");
        assert!(events.is_empty());
    }
}
