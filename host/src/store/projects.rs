//! Projects, their quotas and what they use.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::rows::StoredRow;
use super::{Store, StoreResult, WriteTx, format_time, parse_time, parse_uuid};
use crate::auth::identity::{Project, Quota, Usage};

fn limit(row: &impl StoredRow, column: &str) -> StoreResult<Option<u64>> {
    let value: Option<i64> = row.value(column)?;
    Ok(value.map(|value| value.max(0) as u64))
}

pub(super) fn from_row(row: &impl StoredRow) -> StoreResult<Project> {
    Ok(Project {
        id: parse_uuid(row.value("id")?)?,
        name: row.value("name")?,
        description: row.value("description")?,
        quota: Quota {
            max_instances: limit(row, "max_instances")?,
            max_vcpu: limit(row, "max_vcpu")?,
            max_ram_mb: limit(row, "max_ram_mb")?,
            max_template_bytes: limit(row, "max_template_bytes")?,
        },
        created_at: parse_time(row.value("created_at")?)?,
        updated_at: parse_time(row.value("updated_at")?)?,
    })
}

pub async fn list(connection: &mut SqliteConnection) -> StoreResult<Vec<Project>> {
    let rows = sqlx::query("SELECT * FROM projects ORDER BY name").fetch_all(connection).await?;
    rows.iter().map(from_row).collect()
}

pub async fn get(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<Option<Project>> {
    let row =
        sqlx::query("SELECT * FROM projects WHERE id = ?").bind(id.to_string()).fetch_optional(connection).await?;
    row.as_ref().map(from_row).transpose()
}

/// Pushes the read of [`get`] (for [`super::ReadsTogether`]; its row becomes a project with
/// `from_row`).
pub(super) fn push_get(query: &mut QueryBuilder<'static, Sqlite>, id: Uuid) {
    query.push("SELECT * FROM projects WHERE id = ").push_bind(id.to_string());
}

/// Begins a write transaction with [`get`] sent with its `BEGIN` in one round trip.
pub async fn begin_getting(store: &Store, id: Uuid) -> StoreResult<(WriteTx, Option<Project>)> {
    let (transaction, rows) = store.begin_with(|query| push_get(query, id)).await?;
    Ok((transaction, rows.first().map(from_row).transpose()?))
}

pub async fn get_by_name(connection: &mut SqliteConnection, name: &str) -> StoreResult<Option<Project>> {
    let row = sqlx::query("SELECT * FROM projects WHERE name = ?").bind(name).fetch_optional(connection).await?;
    row.as_ref().map(from_row).transpose()
}

/// Inserts or updates (by id) a project.
pub async fn save(connection: &mut SqliteConnection, project: &Project) -> StoreResult<()> {
    let as_i64 = |value: Option<u64>| value.map(|value| value.min(i64::MAX as u64) as i64);
    sqlx::query(
        "INSERT INTO projects (id, name, description, max_instances, max_vcpu, max_ram_mb, max_template_bytes, \
           created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description, \
           max_instances = excluded.max_instances, max_vcpu = excluded.max_vcpu, max_ram_mb = excluded.max_ram_mb, \
           max_template_bytes = excluded.max_template_bytes, updated_at = excluded.updated_at",
    )
    .bind(project.id.to_string())
    .bind(&project.name)
    .bind(&project.description)
    .bind(as_i64(project.quota.max_instances))
    .bind(as_i64(project.quota.max_vcpu))
    .bind(as_i64(project.quota.max_ram_mb))
    .bind(as_i64(project.quota.max_template_bytes))
    .bind(format_time(&project.created_at))
    .bind(format_time(&project.updated_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn delete(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<bool> {
    let result = sqlx::query("DELETE FROM projects WHERE id = ?").bind(id.to_string()).execute(connection).await?;
    Ok(result.rows_affected() > 0)
}

/// What the project uses: instances not terminated (and their vcpu and ram), template bytes.
pub async fn usage(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<Usage> {
    let instances = sqlx::query(
        "SELECT count(*) AS instances, coalesce(sum(vcpu), 0) AS vcpu, coalesce(sum(ram_mb), 0) AS ram_mb \
         FROM instances WHERE project_id = ? AND state <> 'terminated'",
    )
    .bind(id.to_string())
    .fetch_one(&mut *connection)
    .await?;
    let templates = sqlx::query(
        "SELECT coalesce(sum(template_versions.size_bytes), 0) AS bytes FROM template_versions \
         JOIN templates ON templates.id = template_versions.template_id WHERE templates.project_id = ?",
    )
    .bind(id.to_string())
    .fetch_one(connection)
    .await?;
    let count =
        |row: &SqliteRow, column: &str| -> StoreResult<u64> { Ok(row.try_get::<i64, _>(column)?.max(0) as u64) };
    Ok(Usage {
        instances: count(&instances, "instances")?,
        vcpu: count(&instances, "vcpu")?,
        ram_mb: count(&instances, "ram_mb")?,
        template_bytes: count(&templates, "bytes")?,
    })
}

/// Whether anything still belongs to the project.
pub async fn is_empty(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<bool> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM instances WHERE project_id = ?1 AND state <> 'terminated') \
              + (SELECT count(*) FROM templates WHERE project_id = ?1) \
              + (SELECT count(*) FROM groups WHERE project_id = ?1) AS owned",
    )
    .bind(id.to_string())
    .fetch_one(connection)
    .await?;
    Ok(row.try_get::<i64, _>("owned")? == 0)
}
