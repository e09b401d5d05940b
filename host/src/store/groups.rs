//! Node groups and their member hosts.

use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::rows::StoredRow;
use super::{StoreResult, format_time, parse_enum, parse_optional_uuid, parse_time, parse_uuid};
use crate::model::Group;

fn from_row(row: &impl StoredRow) -> StoreResult<Group> {
    Ok(Group {
        id: parse_uuid(row.value("id")?)?,
        name: row.value("name")?,
        project_id: parse_uuid(row.value("project_id")?)?,
        description: row.value("description")?,
        fallback_group_id: parse_optional_uuid(row.value("fallback_group_id")?)?,
        strategy: parse_enum(row.value("strategy")?)?,
        hosts: Vec::new(),
        created_at: parse_time(row.value("created_at")?)?,
        updated_at: parse_time(row.value("updated_at")?)?,
    })
}

async fn with_hosts(connection: &mut SqliteConnection, mut groups: Vec<Group>) -> StoreResult<Vec<Group>> {
    let rows = sqlx::query("SELECT host_id, group_id FROM host_groups ORDER BY host_id").fetch_all(connection).await?;
    for row in &rows {
        let group_id = parse_uuid(row.try_get("group_id")?)?;
        if let Some(group) = groups.iter_mut().find(|group| group.id == group_id) {
            group.hosts.push(parse_uuid(row.try_get("host_id")?)?);
        }
    }
    Ok(groups)
}

/// The read of every group without its member hosts (turn its rows into groups with
/// [`without_hosts_from_rows`]).
pub(super) const SELECT_ALL_WITHOUT_HOSTS: &str = "SELECT * FROM groups";

/// Groups (their `hosts` empty) from the rows of [`SELECT_ALL_WITHOUT_HOSTS`], by name.
pub(super) fn without_hosts_from_rows(rows: &[impl StoredRow]) -> StoreResult<Vec<Group>> {
    let mut groups = rows.iter().map(from_row).collect::<StoreResult<Vec<_>>>()?;
    groups.sort_by(|one, other| one.name.cmp(&other.name));
    Ok(groups)
}

pub async fn list(connection: &mut SqliteConnection) -> StoreResult<Vec<Group>> {
    let rows = sqlx::query("SELECT * FROM groups ORDER BY name").fetch_all(&mut *connection).await?;
    let groups = rows.iter().map(from_row).collect::<StoreResult<Vec<_>>>()?;
    with_hosts(connection, groups).await
}

pub async fn get(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<Option<Group>> {
    let row =
        sqlx::query("SELECT * FROM groups WHERE id = ?").bind(id.to_string()).fetch_optional(&mut *connection).await?;
    let Some(row) = row else { return Ok(None) };
    Ok(with_hosts(connection, vec![from_row(&row)?]).await?.pop())
}

pub async fn get_by_name(connection: &mut SqliteConnection, name: &str) -> StoreResult<Option<Group>> {
    let row = sqlx::query("SELECT * FROM groups WHERE name = ?").bind(name).fetch_optional(&mut *connection).await?;
    let Some(row) = row else { return Ok(None) };
    Ok(with_hosts(connection, vec![from_row(&row)?]).await?.pop())
}

pub async fn insert(connection: &mut SqliteConnection, group: &Group) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO groups (id, project_id, name, description, fallback_group_id, strategy, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(group.id.to_string())
    .bind(group.project_id.to_string())
    .bind(&group.name)
    .bind(&group.description)
    .bind(group.fallback_group_id.map(|id| id.to_string()))
    .bind(group.strategy.as_str())
    .bind(format_time(&group.created_at))
    .bind(format_time(&group.updated_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn update(connection: &mut SqliteConnection, group: &Group) -> StoreResult<()> {
    sqlx::query(
        "UPDATE groups SET name = ?, description = ?, fallback_group_id = ?, strategy = ?, updated_at = ? WHERE id = ?",
    )
    .bind(&group.name)
    .bind(&group.description)
    .bind(group.fallback_group_id.map(|id| id.to_string()))
    .bind(group.strategy.as_str())
    .bind(format_time(&group.updated_at))
    .bind(group.id.to_string())
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn delete(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<bool> {
    let result = sqlx::query("DELETE FROM groups WHERE id = ?").bind(id.to_string()).execute(connection).await?;
    Ok(result.rows_affected() > 0)
}
