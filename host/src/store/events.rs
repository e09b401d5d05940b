//! The append-only event log.

use sqlx::query_builder::Separated;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::{StoreResult, format_time, parse_json, parse_time};
use crate::model::{Event, NewEvent, Timestamp};

/// Events per `INSERT`: nine bound values each, far below SQLite's limit of 32,766.
const EVENTS_PER_STATEMENT: usize = 500;

/// Pushes the `INSERT`s appending `events` (with the time each was appended).
pub(super) fn push_appends(query: &mut QueryBuilder<'static, Sqlite>, events: &[&(Timestamp, NewEvent)]) {
    for chunk in events.chunks(EVENTS_PER_STATEMENT) {
        query.push("INSERT INTO events (time, type, object_kind, object_id, actor, scheme, source, outcome, data) ");
        query.push_values(chunk, |mut row, (time, event)| bind_event(&mut row, time, event));
        query.push("; ");
    }
}

/// Pushes the `INSERT` appending `event` (appended at `time`) only if the statement pushed just
/// before it changed a row (SQLite's `changes()`).
pub(super) fn push_append_if_changed(query: &mut QueryBuilder<'static, Sqlite>, time: &Timestamp, event: &NewEvent) {
    query.push("INSERT INTO events (time, type, object_kind, object_id, actor, scheme, source, outcome, data) SELECT ");
    bind_event(&mut query.separated(", "), time, event);
    query.push(" WHERE changes() = 1; ");
}

/// Binds an event's columns, in the order of the `INSERT`s above.
fn bind_event(values: &mut Separated<'_, 'static, Sqlite, &'static str>, time: &Timestamp, event: &NewEvent) {
    values
        .push_bind(format_time(time))
        .push_bind(event.kind.clone())
        .push_bind(event.object_kind)
        .push_bind(event.object_id.clone())
        .push_bind(event.actor.clone())
        .push_bind(event.scheme.clone())
        .push_bind(event.source.clone())
        .push_bind(event.outcome.clone())
        .push_bind(event.data.to_string());
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

    #[tokio::test]
    async fn a_transaction_appends_more_events_than_one_statement_holds() {
        let (store, _directory) = open_temporary().await;
        let count = EVENTS_PER_STATEMENT * 2 + 7;
        let mut transaction = store.begin().await.expect("begin");
        for index in 0..count {
            transaction.append_event(NewEvent::new("test.many", "test", index.to_string()));
        }
        transaction.commit().await.expect("commit");
        let events = list_after(&mut store.reader().await.expect("reader"), 0, 5000).await.expect("list");
        assert_eq!(events.len(), count);
        let in_order = events.iter().enumerate().all(|(index, event)| event.object_id == index.to_string());
        assert!(in_order, "events keep the order they were appended in");
        assert_eq!(*store.subscribe_events().borrow(), events[count - 1].seq);
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
