//! The template registry's chunk index: which chunks are stored, which a template may reference,
//! and the chunk lists of template files.

use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::rows::StoredRow;
use super::{StoreResult, format_time, parse_enum, parse_time, parse_uuid};
use crate::model::{TemplateFile, Timestamp};

/// Most digests bound in one statement (SQLite allows 32766 variables).
const MAX_DIGESTS_PER_STATEMENT: usize = 5000;

/// Notes that `digest` was reused now, so garbage collection spares it; returns whether it is
/// stored.
pub async fn touch_chunk(connection: &mut SqliteConnection, digest: &str, now: &Timestamp) -> StoreResult<bool> {
    let updated = sqlx::query("UPDATE chunks SET stored_at = ? WHERE digest = ?")
        .bind(format_time(now))
        .bind(digest)
        .execute(connection)
        .await?;
    Ok(updated.rows_affected() == 1)
}

/// Records a chunk stored in the backend (or refreshes its time).
pub async fn insert_chunk(
    connection: &mut SqliteConnection,
    digest: &str,
    size_bytes: u64,
    now: &Timestamp,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO chunks (digest, size_bytes, stored_at) VALUES (?, ?, ?) \
         ON CONFLICT (digest) DO UPDATE SET stored_at = excluded.stored_at",
    )
    .bind(digest)
    .bind(size_bytes as i64)
    .bind(format_time(now))
    .execute(connection)
    .await?;
    Ok(())
}

/// Lets the template reference a stored chunk.
pub async fn grant_chunk(connection: &mut SqliteConnection, template_id: Uuid, digest: &str) -> StoreResult<()> {
    sqlx::query("INSERT OR IGNORE INTO template_chunks (template_id, digest) VALUES (?, ?)")
        .bind(template_id.to_string())
        .bind(digest)
        .execute(connection)
        .await?;
    Ok(())
}

/// The sizes of those of `digests` (deduplicated) that the template may reference, by digest.
pub async fn granted_chunk_sizes(
    connection: &mut SqliteConnection,
    template_id: Uuid,
    digests: &[String],
) -> StoreResult<std::collections::HashMap<String, u64>> {
    let mut sizes = std::collections::HashMap::with_capacity(digests.len());
    for batch in digests.chunks(MAX_DIGESTS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT chunks.digest, chunks.size_bytes FROM template_chunks \
             JOIN chunks ON chunks.digest = template_chunks.digest WHERE template_chunks.template_id = ",
        );
        query.push_bind(template_id.to_string()).push(" AND template_chunks.digest IN (");
        let mut separated = query.separated(", ");
        for digest in batch {
            separated.push_bind(digest);
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *connection).await? {
            sizes.insert(row.try_get("digest")?, row.try_get::<i64, _>("size_bytes")? as u64);
        }
    }
    Ok(sizes)
}

/// Records a file of a version with its chunks in order.
pub async fn insert_file(
    connection: &mut SqliteConnection,
    template_id: Uuid,
    number: u32,
    file: &TemplateFile,
    digests: &[String],
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO template_files (template_id, number, name, kind, format, size_bytes, sha256, chunk_size, pushed_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(template_id.to_string())
    .bind(number)
    .bind(&file.name)
    .bind(file.kind.as_str())
    .bind(file.format.as_str())
    .bind(file.size_bytes as i64)
    .bind(&file.sha256)
    .bind(file.chunk_size as i64)
    .bind(format_time(&file.pushed_at))
    .execute(&mut *connection)
    .await?;
    insert_file_chunks(&mut *connection, template_id, number, &file.name, digests).await?;
    // What a template's files reference, it may reference again in later versions.
    sqlx::query(
        "INSERT OR IGNORE INTO template_chunks (template_id, digest)          SELECT DISTINCT template_id, digest FROM file_chunks WHERE template_id = ? AND number = ? AND name = ?",
    )
    .bind(template_id.to_string())
    .bind(number)
    .bind(&file.name)
    .execute(connection)
    .await?;
    Ok(())
}

/// Gives a file its chunk list (a file from the data directory once chunked).
pub async fn set_file_chunks(
    connection: &mut SqliteConnection,
    template_id: Uuid,
    number: u32,
    name: &str,
    chunk_size: u64,
    digests: &[String],
) -> StoreResult<()> {
    sqlx::query("DELETE FROM file_chunks WHERE template_id = ? AND number = ? AND name = ?")
        .bind(template_id.to_string())
        .bind(number)
        .bind(name)
        .execute(&mut *connection)
        .await?;
    sqlx::query("UPDATE template_files SET chunk_size = ? WHERE template_id = ? AND number = ? AND name = ?")
        .bind(chunk_size as i64)
        .bind(template_id.to_string())
        .bind(number)
        .bind(name)
        .execute(&mut *connection)
        .await?;
    insert_file_chunks(connection, template_id, number, name, digests).await
}

async fn insert_file_chunks(
    connection: &mut SqliteConnection,
    template_id: Uuid,
    number: u32,
    name: &str,
    digests: &[String],
) -> StoreResult<()> {
    // Four variables per row.
    for (batch_index, batch) in digests.chunks(MAX_DIGESTS_PER_STATEMENT / 2).enumerate() {
        let first_position = batch_index * (MAX_DIGESTS_PER_STATEMENT / 2);
        let mut query =
            QueryBuilder::<Sqlite>::new("INSERT INTO file_chunks (template_id, number, name, position, digest) ");
        query.push_values(batch.iter().enumerate(), |mut row, (offset, digest)| {
            row.push_bind(template_id.to_string())
                .push_bind(number)
                .push_bind(name)
                .push_bind((first_position + offset) as i64)
                .push_bind(digest);
        });
        query.build().execute(&mut *connection).await?;
    }
    Ok(())
}

/// A file's chunks in order, with their sizes.
pub async fn file_chunks(
    connection: &mut SqliteConnection,
    template_id: Uuid,
    number: u32,
    name: &str,
) -> StoreResult<Vec<(String, u64)>> {
    let rows = sqlx::query(
        "SELECT file_chunks.digest, chunks.size_bytes FROM file_chunks JOIN chunks ON chunks.digest = file_chunks.digest \
         WHERE template_id = ? AND number = ? AND name = ? ORDER BY position",
    )
    .bind(template_id.to_string())
    .bind(number)
    .bind(name)
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| Ok((row.try_get("digest")?, row.try_get::<i64, _>("size_bytes")? as u64))).collect()
}

/// A file from a row of `template_files` (plus its `chunk_count`), with its version number.
pub(super) fn file_from_row(row: &impl StoredRow) -> StoreResult<(u32, TemplateFile)> {
    Ok((
        row.value("number")?,
        TemplateFile {
            name: row.value("name")?,
            kind: parse_enum(row.value("kind")?)?,
            format: parse_enum(row.value("format")?)?,
            size_bytes: row.value::<i64>("size_bytes")? as u64,
            sha256: row.value("sha256")?,
            chunk_size: row.value::<i64>("chunk_size")? as u64,
            chunk_count: row.value::<i64>("chunk_count")? as u64,
            pushed_at: parse_time(row.value("pushed_at")?)?,
        },
    ))
}

/// Files recorded before the registry whose bytes are still in the data directory.
pub async fn unchunked_files(connection: &mut SqliteConnection) -> StoreResult<Vec<(Uuid, u32, String)>> {
    let rows =
        sqlx::query("SELECT template_id, number, name FROM template_files WHERE chunk_size = 0 AND size_bytes > 0")
            .fetch_all(connection)
            .await?;
    rows.iter()
        .map(|row| Ok((parse_uuid(row.try_get("template_id")?)?, row.try_get("number")?, row.try_get("name")?)))
        .collect()
}

/// Up to `limit` chunks no file references that were last stored or reused before `cutoff`.
pub async fn collectable_chunks(
    connection: &mut SqliteConnection,
    cutoff: &Timestamp,
    limit: u32,
) -> StoreResult<Vec<(String, u64)>> {
    let rows = sqlx::query(
        "SELECT digest, size_bytes FROM chunks WHERE stored_at < ? \
         AND NOT EXISTS (SELECT 1 FROM file_chunks WHERE file_chunks.digest = chunks.digest) LIMIT ?",
    )
    .bind(format_time(cutoff))
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| Ok((row.try_get("digest")?, row.try_get::<i64, _>("size_bytes")? as u64))).collect()
}

/// Forgets a chunk if it is still unreferenced and old; returns whether it did (then its object
/// may be deleted).
pub async fn delete_chunk_if_collectable(
    connection: &mut SqliteConnection,
    digest: &str,
    cutoff: &Timestamp,
) -> StoreResult<bool> {
    let deleted = sqlx::query(
        "DELETE FROM chunks WHERE digest = ? AND stored_at < ? \
         AND NOT EXISTS (SELECT 1 FROM file_chunks WHERE file_chunks.digest = chunks.digest)",
    )
    .bind(digest)
    .bind(format_time(cutoff))
    .execute(connection)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Whether a chunk is recorded as stored.
pub async fn chunk_exists(connection: &mut SqliteConnection, digest: &str) -> StoreResult<bool> {
    Ok(sqlx::query("SELECT 1 FROM chunks WHERE digest = ?").bind(digest).fetch_optional(connection).await?.is_some())
}
