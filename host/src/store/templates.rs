//! Templates and their versions.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::{StoreResult, format_time, parse_enum, parse_time, parse_uuid};
use crate::model::{DiskFormat, Template, TemplateVersion, Timestamp};

fn from_row(row: &SqliteRow) -> StoreResult<Template> {
    Ok(Template {
        id: parse_uuid(row.try_get("id")?)?,
        name: row.try_get("name")?,
        project_id: parse_uuid(row.try_get("project_id")?)?,
        arch: parse_enum(row.try_get("arch")?)?,
        description: row.try_get("description")?,
        versions: Vec::new(),
        created_at: parse_time(row.try_get("created_at")?)?,
        updated_at: parse_time(row.try_get("updated_at")?)?,
    })
}

fn version_from_row(row: &SqliteRow) -> StoreResult<TemplateVersion> {
    Ok(TemplateVersion {
        number: row.try_get("number")?,
        tag: row.try_get("tag")?,
        description: row.try_get("description")?,
        size_bytes: row.try_get::<i64, _>("size_bytes")? as u64,
        format: parse_enum(row.try_get("format")?)?,
        image_sha256: row.try_get("image_sha256")?,
        image_uploaded_at: row
            .try_get::<Option<String>, _>("image_uploaded_at")?
            .as_deref()
            .map(parse_time)
            .transpose()?,
        created_at: parse_time(row.try_get("created_at")?)?,
    })
}

async fn with_versions(connection: &mut SqliteConnection, mut template: Template) -> StoreResult<Template> {
    let rows = sqlx::query("SELECT * FROM template_versions WHERE template_id = ? ORDER BY number")
        .bind(template.id.to_string())
        .fetch_all(connection)
        .await?;
    template.versions = rows.iter().map(version_from_row).collect::<StoreResult<_>>()?;
    Ok(template)
}

pub async fn list(connection: &mut SqliteConnection) -> StoreResult<Vec<Template>> {
    let rows = sqlx::query("SELECT * FROM templates ORDER BY name").fetch_all(&mut *connection).await?;
    let mut templates = Vec::with_capacity(rows.len());
    for row in &rows {
        templates.push(with_versions(connection, from_row(row)?).await?);
    }
    Ok(templates)
}

pub async fn get(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<Option<Template>> {
    let row = sqlx::query("SELECT * FROM templates WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(&mut *connection)
        .await?;
    match row {
        Some(row) => Ok(Some(with_versions(connection, from_row(&row)?).await?)),
        None => Ok(None),
    }
}

pub async fn get_by_name(connection: &mut SqliteConnection, name: &str) -> StoreResult<Option<Template>> {
    let row = sqlx::query("SELECT * FROM templates WHERE name = ?").bind(name).fetch_optional(&mut *connection).await?;
    match row {
        Some(row) => Ok(Some(with_versions(connection, from_row(&row)?).await?)),
        None => Ok(None),
    }
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
        "INSERT INTO template_versions (template_id, number, tag, description, size_bytes, format, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(template_id.to_string())
    .bind(version.number)
    .bind(&version.tag)
    .bind(&version.description)
    .bind(version.size_bytes as i64)
    .bind(version.format.as_str())
    .bind(format_time(&version.created_at))
    .execute(&mut *connection)
    .await?;
    sqlx::query("UPDATE templates SET updated_at = ? WHERE id = ?")
        .bind(format_time(&version.created_at))
        .bind(template_id.to_string())
        .execute(connection)
        .await?;
    Ok(())
}

/// Records a version's uploaded image, unless it has one already. Returns whether it did.
pub async fn set_version_image(
    connection: &mut SqliteConnection,
    template_id: Uuid,
    number: u32,
    image: &VersionImage,
) -> StoreResult<bool> {
    let updated = sqlx::query(
        "UPDATE template_versions SET size_bytes = ?, format = ?, image_sha256 = ?, image_uploaded_at = ? \
         WHERE template_id = ? AND number = ? AND image_sha256 IS NULL",
    )
    .bind(image.size_bytes as i64)
    .bind(image.format.as_str())
    .bind(&image.sha256)
    .bind(format_time(&image.uploaded_at))
    .bind(template_id.to_string())
    .bind(number)
    .execute(&mut *connection)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("UPDATE templates SET updated_at = ? WHERE id = ?")
        .bind(format_time(&image.uploaded_at))
        .bind(template_id.to_string())
        .execute(connection)
        .await?;
    Ok(true)
}

/// What is recorded about an uploaded image.
#[derive(Debug, Clone)]
pub struct VersionImage {
    pub size_bytes: u64,
    pub format: DiskFormat,
    pub sha256: String,
    pub uploaded_at: Timestamp,
}
