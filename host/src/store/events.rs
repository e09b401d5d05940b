//! The append-only event log.

use sqlx::{Row, SqliteConnection};

use super::{StoreResult, format_time, now, parse_json, parse_time};
use crate::model::{Event, NewEvent};

pub(super) async fn append(connection: &mut SqliteConnection, event: &NewEvent) -> StoreResult<i64> {
    let row = sqlx::query(
        "INSERT INTO events (time, type, object_kind, object_id, actor, scheme, source, outcome, data) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(format_time(&now()))
    .bind(&event.kind)
    .bind(event.object_kind)
    .bind(&event.object_id)
    .bind(&event.actor)
    .bind(&event.scheme)
    .bind(&event.source)
    .bind(&event.outcome)
    .bind(event.data.to_string())
    .fetch_one(connection)
    .await?;
    Ok(row.try_get("seq")?)
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
        let first = transaction.append_event(NewEvent::new("test.one", "test", "a")).await.expect("append");
        let second = transaction.append_event(NewEvent::new("test.two", "test", "b")).await.expect("append");
        assert!(second > first);
        assert!(!subscriber.has_changed().expect("open"), "no wake-up before commit");
        transaction.commit().await.expect("commit");
        assert!(subscriber.has_changed().expect("open"));
        assert_eq!(*subscriber.borrow_and_update(), second);

        let events = list_after(&mut store.reader().await.expect("reader"), first, 10).await.expect("list");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "test.two");
    }

    #[tokio::test]
    async fn dropped_transaction_leaves_nothing() {
        let (store, _directory) = open_temporary().await;
        {
            let mut transaction = store.begin().await.expect("begin");
            transaction.append_event(NewEvent::new("test.lost", "test", "a")).await.expect("append");
        }
        let transaction = store.begin().await.expect("begin after rollback");
        transaction.commit().await.expect("commit");
        let events = list_after(&mut store.reader().await.expect("reader"), 0, 10).await.expect("list");
        assert!(events.is_empty());
    }
}
