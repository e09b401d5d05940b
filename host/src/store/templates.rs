//! Templates and their versions.

use std::collections::HashMap;
use std::sync::LazyLock;

use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::rows::StoredRow;
use super::{ReadsTogether, Store, StoreError, StoreResult, format_time, parse_enum, parse_time, parse_uuid};
use crate::auth::identity::Project;
use crate::model::{DiskFormat, Template, TemplateFile, TemplateVersion};

fn from_row(row: &impl StoredRow) -> StoreResult<Template> {
    Ok(Template {
        id: parse_uuid(row.value("id")?)?,
        name: row.value("name")?,
        project_id: parse_uuid(row.value("project_id")?)?,
        arch: parse_enum(row.value("arch")?)?,
        description: row.value("description")?,
        versions: Vec::new(),
        created_at: parse_time(row.value("created_at")?)?,
        updated_at: parse_time(row.value("updated_at")?)?,
    })
}

/// A version from a row of [`VERSIONS_WITH_FILES`], without its files.
fn version_from_row(row: &impl StoredRow) -> StoreResult<TemplateVersion> {
    Ok(TemplateVersion {
        number: row.value("number")?,
        tag: row.value("tag")?,
        description: row.value("description")?,
        size_bytes: row.value::<i64>("version_size_bytes")? as u64,
        format: DiskFormat::Raw,
        image_sha256: None,
        image_uploaded_at: None,
        pulled_at: row.value::<Option<String>>("pulled_at")?.as_deref().map(parse_time).transpose()?,
        files: Vec::new(),
        created_at: parse_time(row.value("created_at")?)?,
    })
}

/// The read of every template, without its versions.
pub(super) const SELECT_ALL: &str = "SELECT * FROM templates";

/// Every version of a template with its files (one row per file, or one without a file for a
/// version that has none).
pub(super) const VERSIONS_WITH_FILES: &str = "SELECT v.template_id, v.number, v.tag, v.description, \
        v.size_bytes AS version_size_bytes, v.pulled_at, v.created_at, \
        f.name, f.kind, f.format, f.size_bytes, f.sha256, f.chunk_size, f.pushed_at, \
        (SELECT count(*) FROM file_chunks c WHERE c.template_id = f.template_id \
            AND c.number = f.number AND c.name = f.name) AS chunk_count \
    FROM template_versions v \
    LEFT JOIN template_files f ON f.template_id = v.template_id AND f.number = v.number";

/// Gives each template its versions from rows of [`VERSIONS_WITH_FILES`].
fn attach_versions(templates: &mut [Template], rows: &[impl StoredRow]) -> StoreResult<()> {
    let position: HashMap<Uuid, usize> =
        templates.iter().enumerate().map(|(index, template)| (template.id, index)).collect();
    let mut versions: HashMap<(Uuid, u32), (TemplateVersion, Vec<TemplateFile>)> = HashMap::new();
    let mut order = Vec::new();
    for row in rows {
        let key = (parse_uuid(row.value("template_id")?)?, row.value("number")?);
        if let std::collections::hash_map::Entry::Vacant(entry) = versions.entry(key) {
            entry.insert((version_from_row(row)?, Vec::new()));
            order.push(key);
        }
        if row.value::<Option<String>>("name")?.is_some()
            && let Some((_, files)) = versions.get_mut(&key)
        {
            files.push(super::registry::file_from_row(row)?.1);
        }
    }
    // In version then file name order, whatever the order of the rows.
    order.sort_by_key(|(_, number)| *number);
    for key in order {
        let (Some(index), Some((version, mut files))) = (position.get(&key.0), versions.remove(&key)) else { continue };
        files.sort_by(|one, other| one.name.cmp(&other.name));
        templates[*index].versions.push(version.with_files(files));
    }
    Ok(())
}

/// Every template with its versions and files, by name: one round trip, whatever the number of
/// templates.
pub async fn list(connection: &mut SqliteConnection) -> StoreResult<Vec<Template>> {
    let reads = read_all(ReadsTogether::new()).fetch(connection).await?;
    let [template_rows, version_rows] = <[_; 2]>::try_from(reads).map_err(|_| StoreError::Corrupt("reads".into()))?;
    list_from_reads(&template_rows, &version_rows)
}

/// Adds the two reads of every template (see [`list_from_reads`]).
pub(super) fn read_all(reads: ReadsTogether) -> ReadsTogether {
    reads
        .read(|query| {
            query.push(SELECT_ALL);
        })
        .read(|query| {
            query.push(VERSIONS_WITH_FILES);
        })
}

/// The templates (by name, with their versions and files) from the rows of [`read_all`]'s reads.
pub(super) fn list_from_reads(
    template_rows: &[impl StoredRow],
    version_rows: &[impl StoredRow],
) -> StoreResult<Vec<Template>> {
    let mut templates = template_rows.iter().map(from_row).collect::<StoreResult<Vec<_>>>()?;
    templates.sort_by(|one, other| one.name.cmp(&other.name));
    attach_versions(&mut templates, version_rows)?;
    Ok(templates)
}

pub async fn get(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<Option<Template>> {
    get_where(connection, "id", id.to_string()).await
}

pub async fn get_by_name(connection: &mut SqliteConnection, name: &str) -> StoreResult<Option<Template>> {
    get_where(connection, "name", name.to_owned()).await
}

/// The template whose `column` is `value`, if any, with its versions and files: one round trip.
async fn get_where(connection: &mut SqliteConnection, column: &str, value: String) -> StoreResult<Option<Template>> {
    let reads = read_where(ReadsTogether::new(), column, value).fetch(connection).await?;
    let [template_rows, version_rows] = <[_; 2]>::try_from(reads).map_err(|_| StoreError::Corrupt("reads".into()))?;
    from_reads(&template_rows, &version_rows)
}

/// Adds the two reads of the template whose `column` is `value` (see [`from_reads`]).
fn read_where(reads: ReadsTogether, column: &str, value: String) -> ReadsTogether {
    reads
        .read(|query| {
            query.push(format_args!("SELECT * FROM templates WHERE {column} = ")).push_bind(value.clone());
        })
        .read(|query| {
            query
                .push(format_args!(
                    "{VERSIONS_WITH_FILES} WHERE v.template_id = (SELECT id FROM templates WHERE {column} = "
                ))
                .push_bind(value)
                .push(")");
        })
}

/// The template `reference` names — by id, or else by name — and the project `project_id`, read
/// inline in one read transaction.
pub fn get_with_project(
    store: &Store,
    reference: &str,
    project_id: Uuid,
) -> StoreResult<(Option<Template>, Option<Project>)> {
    let (column, value) = match Uuid::parse_str(reference) {
        Ok(id) => ("id", id.to_string()),
        Err(_) => ("name", reference.to_owned()),
    };
    store.read_inline(|connection| {
        let read = |sql: &str, value: &str| super::inline::fetch_all(connection, sql, [value]);
        let template_rows = read(&format!("SELECT * FROM templates WHERE {column} = ?1"), &value)?;
        let version_rows = read(
            &format!("{VERSIONS_WITH_FILES} WHERE v.template_id = (SELECT id FROM templates WHERE {column} = ?1)"),
            &value,
        )?;
        let project_rows = read("SELECT * FROM projects WHERE id = ?1", &project_id.to_string())?;
        let project = project_rows.first().map(super::projects::from_row).transpose()?;
        Ok((from_reads(&template_rows, &version_rows)?, project))
    })
}

/// The reads of the templates (with versions and files) the instances of `?1` (a JSON array of
/// ids) were made from (see [`list_from_reads`]).
pub(super) static SELECT_OF_INSTANCES: LazyLock<[String; 2]> = LazyLock::new(|| {
    let templates = "(SELECT template_id FROM instances WHERE id IN (SELECT value FROM json_each(?1)))";
    [
        format!("SELECT * FROM templates WHERE id IN {templates}"),
        format!("{VERSIONS_WITH_FILES} WHERE v.template_id IN {templates}"),
    ]
});

/// The template (with its versions and files) from the rows of a template read and of its
/// versions' read.
pub(super) fn from_reads(
    template_rows: &[impl StoredRow],
    version_rows: &[impl StoredRow],
) -> StoreResult<Option<Template>> {
    let Some(row) = template_rows.first() else { return Ok(None) };
    let mut templates = [from_row(row)?];
    attach_versions(&mut templates, version_rows)?;
    let [template] = templates;
    Ok(Some(template))
}

pub async fn insert(connection: &mut SqliteConnection, template: &Template) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO templates (id, project_id, name, arch, description, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(template.id.to_string())
    .bind(template.project_id.to_string())
    .bind(&template.name)
    .bind(template.arch.as_str())
    .bind(&template.description)
    .bind(format_time(&template.created_at))
    .bind(format_time(&template.updated_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn insert_version(
    connection: &mut SqliteConnection,
    template_id: Uuid,
    version: &TemplateVersion,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO template_versions (template_id, number, tag, description, size_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(template_id.to_string())
    .bind(version.number)
    .bind(&version.tag)
    .bind(&version.description)
    .bind(version.size_bytes as i64)
    .bind(format_time(&version.created_at))
    .execute(&mut *connection)
    .await?;
    touch(connection, template_id).await
}

/// Notes that the template changed now.
async fn touch(connection: &mut SqliteConnection, template_id: Uuid) -> StoreResult<()> {
    sqlx::query("UPDATE templates SET updated_at = ? WHERE id = ?")
        .bind(format_time(&super::now()))
        .bind(template_id.to_string())
        .execute(connection)
        .await?;
    Ok(())
}

/// Deletes a template and its versions; terminated instances forget it.
pub async fn delete(connection: &mut SqliteConnection, template_id: Uuid) -> StoreResult<()> {
    sqlx::query("UPDATE instances SET template_id = NULL WHERE template_id = ? AND state = 'terminated'")
        .bind(template_id.to_string())
        .execute(&mut *connection)
        .await?;
    sqlx::query("DELETE FROM templates WHERE id = ?").bind(template_id.to_string()).execute(connection).await?;
    Ok(())
}

/// Deletes version `from` and every later version of the template (their files go with them);
/// returns the numbers deleted.
pub async fn delete_versions_from(
    connection: &mut SqliteConnection,
    template_id: Uuid,
    from: u32,
) -> StoreResult<Vec<u32>> {
    let rows = sqlx::query("DELETE FROM template_versions WHERE template_id = ? AND number >= ? RETURNING number")
        .bind(template_id.to_string())
        .bind(from)
        .fetch_all(&mut *connection)
        .await?;
    touch(connection, template_id).await?;
    let mut numbers = rows.iter().map(|row| row.try_get::<u32, _>("number")).collect::<Result<Vec<_>, _>>()?;
    numbers.sort_unstable();
    Ok(numbers)
}

/// Sets the version's size (the sum of its files) and notes when the template changed.
pub async fn set_version_size(
    connection: &mut SqliteConnection,
    template_id: Uuid,
    number: u32,
    size_bytes: u64,
) -> StoreResult<()> {
    sqlx::query("UPDATE template_versions SET size_bytes = ? WHERE template_id = ? AND number = ?")
        .bind(size_bytes as i64)
        .bind(template_id.to_string())
        .bind(number)
        .execute(&mut *connection)
        .await?;
    touch(connection, template_id).await
}

/// Records that the version was pulled or downloaded now.
pub async fn mark_version_pulled(connection: &mut SqliteConnection, template_id: Uuid, number: u32) -> StoreResult<()> {
    sqlx::query("UPDATE template_versions SET pulled_at = ? WHERE template_id = ? AND number = ?")
        .bind(format_time(&super::now()))
        .bind(template_id.to_string())
        .bind(number)
        .execute(connection)
        .await?;
    Ok(())
}
