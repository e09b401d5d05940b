//! Per-provider key-value state that plugins keep through `hyperplane:host/state`.

use sqlx::{Row, SqliteConnection};

use super::StoreResult;

pub async fn get(connection: &mut SqliteConnection, provider: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
    let row = sqlx::query("SELECT value FROM plugin_state WHERE provider = ? AND key = ?")
        .bind(provider)
        .bind(key)
        .fetch_optional(connection)
        .await?;
    Ok(row.map(|row| row.try_get("value")).transpose()?)
}

pub async fn set(connection: &mut SqliteConnection, provider: &str, key: &str, value: &[u8]) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO plugin_state (provider, key, value) VALUES (?, ?, ?) \
         ON CONFLICT (provider, key) DO UPDATE SET value = excluded.value",
    )
    .bind(provider)
    .bind(key)
    .bind(value)
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn delete(connection: &mut SqliteConnection, provider: &str, key: &str) -> StoreResult<bool> {
    let result = sqlx::query("DELETE FROM plugin_state WHERE provider = ? AND key = ?")
        .bind(provider)
        .bind(key)
        .execute(connection)
        .await?;
    Ok(result.rows_affected() > 0)
}

/// Sets (`value` some) or deletes (`value` none) the entry if it is `expected` now (none: absent),
/// in one statement; returns whether it was.
pub async fn compare_and_swap(
    connection: &mut SqliteConnection,
    provider: &str,
    key: &str,
    expected: Option<&[u8]>,
    value: Option<&[u8]>,
) -> StoreResult<bool> {
    let query = match (expected, value) {
        (None, None) => return Ok(get(connection, provider, key).await?.is_none()),
        (None, Some(value)) => sqlx::query(
            "INSERT INTO plugin_state (provider, key, value) VALUES (?, ?, ?) ON CONFLICT (provider, key) DO NOTHING",
        )
        .bind(provider)
        .bind(key)
        .bind(value),
        (Some(expected), Some(value)) => {
            sqlx::query("UPDATE plugin_state SET value = ? WHERE provider = ? AND key = ? AND value = ?")
                .bind(value)
                .bind(provider)
                .bind(key)
                .bind(expected)
        }
        (Some(expected), None) => sqlx::query("DELETE FROM plugin_state WHERE provider = ? AND key = ? AND value = ?")
            .bind(provider)
            .bind(key)
            .bind(expected),
    };
    Ok(query.execute(connection).await?.rows_affected() == 1)
}

/// Entries whose key starts with `prefix`, ordered by key.
pub async fn scan(
    connection: &mut SqliteConnection,
    provider: &str,
    prefix: &str,
) -> StoreResult<Vec<(String, Vec<u8>)>> {
    // A range scan on the primary key; `prefix || x'ff…'` bounds every key with that prefix.
    let rows = sqlx::query(
        "SELECT key, value FROM plugin_state WHERE provider = ? AND key >= ? AND substr(key, 1, length(?)) = ? ORDER BY key",
    )
    .bind(provider)
    .bind(prefix)
    .bind(prefix)
    .bind(prefix)
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| Ok((row.try_get("key")?, row.try_get("value")?))).collect()
}

/// Total number of keys and bytes a provider stores, for quotas.
pub async fn usage(connection: &mut SqliteConnection, provider: &str) -> StoreResult<(u64, u64)> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS keys, COALESCE(SUM(length(key) + length(value)), 0) AS bytes FROM plugin_state WHERE provider = ?",
    )
    .bind(provider)
    .fetch_one(connection)
    .await?;
    Ok((row.try_get::<i64, _>("keys")? as u64, row.try_get::<i64, _>("bytes")? as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_temporary;

    #[tokio::test]
    async fn compare_and_swap_writes_only_what_was_expected() {
        let (store, _directory) = open_temporary().await;
        let mut writer = store.write_statement().await.expect("writer");
        let cas = compare_and_swap;
        assert!(cas(&mut writer, "p", "k", None, None).await.expect("cas"), "absent as expected");
        assert!(cas(&mut writer, "p", "k", None, Some(b"one")).await.expect("cas"));
        assert!(!cas(&mut writer, "p", "k", None, Some(b"two")).await.expect("cas"), "no longer absent");
        assert!(!cas(&mut writer, "p", "k", None, None).await.expect("cas"));
        assert!(!cas(&mut writer, "p", "k", Some(b"two"), Some(b"three")).await.expect("cas"));
        assert!(cas(&mut writer, "p", "k", Some(b"one"), Some(b"one")).await.expect("cas"), "same value");
        assert!(cas(&mut writer, "p", "k", Some(b"one"), Some(b"two")).await.expect("cas"));
        assert_eq!(get(&mut writer, "p", "k").await.expect("get").as_deref(), Some(&b"two"[..]));
        assert!(!cas(&mut writer, "p", "k", Some(b"one"), None).await.expect("cas"));
        assert!(!cas(&mut writer, "q", "k", Some(b"two"), None).await.expect("cas"), "another provider's key");
        assert!(cas(&mut writer, "p", "k", Some(b"two"), None).await.expect("cas"));
        assert_eq!(get(&mut writer, "p", "k").await.expect("get"), None);
    }
}
