//! Users, user groups, roles and role bindings, API keys and sessions.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::{StoreResult, format_time, parse_json, parse_optional_time, parse_time, parse_uuid, to_json};
use crate::auth::identity::{ApiKey, Role, RoleBinding, Session, User, UserGroup};
use crate::model::Timestamp;

// ----- users -----

fn user_from_row(row: &SqliteRow) -> StoreResult<User> {
    let password_hash: Option<String> = row.try_get("password_hash")?;
    let groups: Option<String> = row.try_get("group_names")?;
    Ok(User {
        id: parse_uuid(row.try_get("id")?)?,
        name: row.try_get("name")?,
        display_name: row.try_get("display_name")?,
        email: row.try_get("email")?,
        has_password: password_hash.is_some(),
        disabled: row.try_get("disabled")?,
        external_issuer: row.try_get("external_issuer")?,
        external_subject: row.try_get("external_subject")?,
        groups: groups.map(|names| names.split('\n').map(str::to_owned).collect()).unwrap_or_default(),
        last_login_at: parse_optional_time(row.try_get("last_login_at")?)?,
        created_at: parse_time(row.try_get("created_at")?)?,
        updated_at: parse_time(row.try_get("updated_at")?)?,
        password_hash,
    })
}

const SELECT_USERS: &str = "SELECT users.*, \
     (SELECT group_concat(name, char(10)) FROM (SELECT user_groups.name FROM user_group_members \
       JOIN user_groups ON user_groups.id = user_group_members.group_id \
       WHERE user_group_members.user_id = users.id ORDER BY user_groups.name)) AS group_names \
     FROM users";

pub async fn list_users(connection: &mut SqliteConnection) -> StoreResult<Vec<User>> {
    let rows = sqlx::query(&format!("{SELECT_USERS} ORDER BY name")).fetch_all(connection).await?;
    rows.iter().map(user_from_row).collect()
}

pub async fn get_user(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<Option<User>> {
    let row =
        sqlx::query(&format!("{SELECT_USERS} WHERE id = ?")).bind(id.to_string()).fetch_optional(connection).await?;
    row.as_ref().map(user_from_row).transpose()
}

pub async fn get_user_by_name(connection: &mut SqliteConnection, name: &str) -> StoreResult<Option<User>> {
    let row = sqlx::query(&format!("{SELECT_USERS} WHERE name = ?")).bind(name).fetch_optional(connection).await?;
    row.as_ref().map(user_from_row).transpose()
}

pub async fn get_user_by_external(
    connection: &mut SqliteConnection,
    issuer: &str,
    subject: &str,
) -> StoreResult<Option<User>> {
    let row = sqlx::query(&format!("{SELECT_USERS} WHERE external_issuer = ? AND external_subject = ?"))
        .bind(issuer)
        .bind(subject)
        .fetch_optional(connection)
        .await?;
    row.as_ref().map(user_from_row).transpose()
}

/// Inserts or updates (by id) a user; group membership is separate.
pub async fn save_user(connection: &mut SqliteConnection, user: &User) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO users (id, name, display_name, email, password_hash, disabled, external_issuer, \
           external_subject, last_login_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, display_name = excluded.display_name, \
           email = excluded.email, password_hash = excluded.password_hash, disabled = excluded.disabled, \
           last_login_at = excluded.last_login_at, updated_at = excluded.updated_at",
    )
    .bind(user.id.to_string())
    .bind(&user.name)
    .bind(&user.display_name)
    .bind(&user.email)
    .bind(&user.password_hash)
    .bind(user.disabled)
    .bind(&user.external_issuer)
    .bind(&user.external_subject)
    .bind(user.last_login_at.as_ref().map(format_time))
    .bind(format_time(&user.created_at))
    .bind(format_time(&user.updated_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn delete_user(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<bool> {
    let result = sqlx::query("DELETE FROM users WHERE id = ?").bind(id.to_string()).execute(connection).await?;
    Ok(result.rows_affected() > 0)
}

pub async fn set_last_login(connection: &mut SqliteConnection, id: Uuid, at: &Timestamp) -> StoreResult<()> {
    sqlx::query("UPDATE users SET last_login_at = ? WHERE id = ?")
        .bind(format_time(at))
        .bind(id.to_string())
        .execute(connection)
        .await?;
    Ok(())
}

// ----- user groups -----

fn user_group_from_row(row: &SqliteRow) -> StoreResult<UserGroup> {
    let members: Option<String> = row.try_get("member_names")?;
    Ok(UserGroup {
        id: parse_uuid(row.try_get("id")?)?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        members: members.map(|names| names.split('\n').map(str::to_owned).collect()).unwrap_or_default(),
        created_at: parse_time(row.try_get("created_at")?)?,
        updated_at: parse_time(row.try_get("updated_at")?)?,
    })
}

const SELECT_USER_GROUPS: &str = "SELECT user_groups.*, \
     (SELECT group_concat(name, char(10)) FROM (SELECT users.name FROM user_group_members \
       JOIN users ON users.id = user_group_members.user_id \
       WHERE user_group_members.group_id = user_groups.id ORDER BY users.name)) AS member_names \
     FROM user_groups";

pub async fn list_user_groups(connection: &mut SqliteConnection) -> StoreResult<Vec<UserGroup>> {
    let rows = sqlx::query(&format!("{SELECT_USER_GROUPS} ORDER BY name")).fetch_all(connection).await?;
    rows.iter().map(user_group_from_row).collect()
}

pub async fn get_user_group_by_name(connection: &mut SqliteConnection, name: &str) -> StoreResult<Option<UserGroup>> {
    let row =
        sqlx::query(&format!("{SELECT_USER_GROUPS} WHERE name = ?")).bind(name).fetch_optional(connection).await?;
    row.as_ref().map(user_group_from_row).transpose()
}

pub async fn insert_user_group(connection: &mut SqliteConnection, group: &UserGroup) -> StoreResult<()> {
    sqlx::query("INSERT INTO user_groups (id, name, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?)")
        .bind(group.id.to_string())
        .bind(&group.name)
        .bind(&group.description)
        .bind(format_time(&group.created_at))
        .bind(format_time(&group.updated_at))
        .execute(connection)
        .await?;
    Ok(())
}

pub async fn delete_user_group(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<bool> {
    let result = sqlx::query("DELETE FROM user_groups WHERE id = ?").bind(id.to_string()).execute(connection).await?;
    Ok(result.rows_affected() > 0)
}

pub async fn add_member(connection: &mut SqliteConnection, group_id: Uuid, user_id: Uuid) -> StoreResult<()> {
    sqlx::query("INSERT OR IGNORE INTO user_group_members (group_id, user_id) VALUES (?, ?)")
        .bind(group_id.to_string())
        .bind(user_id.to_string())
        .execute(connection)
        .await?;
    Ok(())
}

pub async fn remove_member(connection: &mut SqliteConnection, group_id: Uuid, user_id: Uuid) -> StoreResult<bool> {
    let result = sqlx::query("DELETE FROM user_group_members WHERE group_id = ? AND user_id = ?")
        .bind(group_id.to_string())
        .bind(user_id.to_string())
        .execute(connection)
        .await?;
    Ok(result.rows_affected() > 0)
}

// ----- roles and bindings -----

fn role_from_row(row: &SqliteRow) -> StoreResult<Role> {
    Ok(Role {
        id: parse_uuid(row.try_get("id")?)?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        permissions: parse_json(row.try_get("permissions")?)?,
        builtin: row.try_get("builtin")?,
        created_at: parse_time(row.try_get("created_at")?)?,
        updated_at: parse_time(row.try_get("updated_at")?)?,
    })
}

pub async fn list_roles(connection: &mut SqliteConnection) -> StoreResult<Vec<Role>> {
    let rows = sqlx::query("SELECT * FROM roles ORDER BY name").fetch_all(connection).await?;
    rows.iter().map(role_from_row).collect()
}

pub async fn get_role_by_name(connection: &mut SqliteConnection, name: &str) -> StoreResult<Option<Role>> {
    let row = sqlx::query("SELECT * FROM roles WHERE name = ?").bind(name).fetch_optional(connection).await?;
    row.as_ref().map(role_from_row).transpose()
}

/// Inserts or updates (by name) a role.
pub async fn save_role(connection: &mut SqliteConnection, role: &Role) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO roles (id, name, description, permissions, builtin, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET description = excluded.description, \
         permissions = excluded.permissions, builtin = excluded.builtin, updated_at = excluded.updated_at",
    )
    .bind(role.id.to_string())
    .bind(&role.name)
    .bind(&role.description)
    .bind(to_json(&role.permissions))
    .bind(role.builtin)
    .bind(format_time(&role.created_at))
    .bind(format_time(&role.updated_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn delete_role(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<bool> {
    let result = sqlx::query("DELETE FROM roles WHERE id = ?").bind(id.to_string()).execute(connection).await?;
    Ok(result.rows_affected() > 0)
}

fn binding_from_row(row: &SqliteRow) -> StoreResult<RoleBinding> {
    let resource_ids: Option<String> = row.try_get("resource_ids")?;
    Ok(RoleBinding {
        id: parse_uuid(row.try_get("id")?)?,
        role: row.try_get("role_name")?,
        user: row.try_get("user_name")?,
        group: row.try_get("group_name")?,
        project: row.try_get("project_name")?,
        resource_ids: resource_ids.as_deref().map(parse_json).transpose()?,
        created_at: parse_time(row.try_get("created_at")?)?,
    })
}

const SELECT_BINDINGS: &str = "SELECT role_bindings.*, roles.name AS role_name, users.name AS user_name, \
       user_groups.name AS group_name, projects.name AS project_name \
     FROM role_bindings JOIN roles ON roles.id = role_bindings.role_id \
     LEFT JOIN users ON users.id = role_bindings.user_id \
     LEFT JOIN user_groups ON user_groups.id = role_bindings.group_id \
     LEFT JOIN projects ON projects.id = role_bindings.project_id";

pub async fn list_bindings(connection: &mut SqliteConnection) -> StoreResult<Vec<RoleBinding>> {
    let rows = sqlx::query(&format!("{SELECT_BINDINGS} ORDER BY role_bindings.created_at, role_bindings.id"))
        .fetch_all(connection)
        .await?;
    rows.iter().map(binding_from_row).collect()
}

/// A binding with its role's permissions, project id and resource ids: what access is made of.
#[derive(Debug, Clone)]
pub struct EffectiveBinding {
    pub permissions: Vec<String>,
    pub project_id: Option<Uuid>,
    pub resource_ids: Option<Vec<String>>,
}

/// The bindings of a user, directly or through the named groups (`None`: the user's groups).
pub async fn effective_bindings(
    connection: &mut SqliteConnection,
    user_id: Uuid,
    only_groups: Option<&[String]>,
) -> StoreResult<Vec<EffectiveBinding>> {
    let mut query = sqlx::QueryBuilder::new(
        "SELECT roles.permissions, role_bindings.project_id, role_bindings.resource_ids FROM role_bindings \
         JOIN roles ON roles.id = role_bindings.role_id WHERE ",
    );
    match only_groups {
        None => {
            query.push("role_bindings.user_id = ").push_bind(user_id.to_string());
            query
                .push(" OR role_bindings.group_id IN (SELECT group_id FROM user_group_members WHERE user_id = ")
                .push_bind(user_id.to_string())
                .push(")");
        }
        Some(groups) => {
            // A key acts with its groups, and only those its user is still a member of.
            query.push(
                "role_bindings.group_id IN (SELECT user_groups.id FROM user_groups JOIN user_group_members \
                 ON user_group_members.group_id = user_groups.id WHERE user_group_members.user_id = ",
            );
            query.push_bind(user_id.to_string()).push(" AND user_groups.name IN (");
            let mut names = query.separated(", ");
            for group in groups {
                names.push_bind(group.clone());
            }
            if groups.is_empty() {
                names.push("NULL");
            }
            query.push("))");
        }
    }
    let rows = query.build().fetch_all(connection).await?;
    rows.iter()
        .map(|row| {
            let project_id: Option<String> = row.try_get("project_id")?;
            let resource_ids: Option<String> = row.try_get("resource_ids")?;
            Ok(EffectiveBinding {
                permissions: parse_json(row.try_get("permissions")?)?,
                project_id: project_id.as_deref().map(parse_uuid).transpose()?,
                resource_ids: resource_ids.as_deref().map(parse_json).transpose()?,
            })
        })
        .collect()
}

/// A new binding, by ids.
#[derive(Debug, Clone)]
pub struct NewBinding {
    pub id: Uuid,
    pub role_id: Uuid,
    pub user_id: Option<Uuid>,
    pub group_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub resource_ids: Option<Vec<String>>,
    pub created_at: Timestamp,
}

pub async fn insert_binding(connection: &mut SqliteConnection, binding: &NewBinding) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO role_bindings (id, role_id, user_id, group_id, project_id, resource_ids, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(binding.id.to_string())
    .bind(binding.role_id.to_string())
    .bind(binding.user_id.map(|id| id.to_string()))
    .bind(binding.group_id.map(|id| id.to_string()))
    .bind(binding.project_id.map(|id| id.to_string()))
    .bind(binding.resource_ids.as_ref().map(to_json))
    .bind(format_time(&binding.created_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn delete_binding(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<bool> {
    let result = sqlx::query("DELETE FROM role_bindings WHERE id = ?").bind(id.to_string()).execute(connection).await?;
    Ok(result.rows_affected() > 0)
}

// ----- API keys -----

fn api_key_from_row(row: &SqliteRow) -> StoreResult<ApiKey> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        user: row.try_get("user_name")?,
        description: row.try_get("description")?,
        groups: parse_json(row.try_get("groups")?)?,
        expires_at: parse_optional_time(row.try_get("expires_at")?)?,
        revoked_at: parse_optional_time(row.try_get("revoked_at")?)?,
        last_used_at: parse_optional_time(row.try_get("last_used_at")?)?,
        created_at: parse_time(row.try_get("created_at")?)?,
        user_id: parse_uuid(row.try_get("user_id")?)?,
        secret_hash: row.try_get("secret_hash")?,
    })
}

const SELECT_KEYS: &str =
    "SELECT api_keys.*, users.name AS user_name FROM api_keys JOIN users ON users.id = api_keys.user_id";

/// Keys of one user, or of everyone.
pub async fn list_api_keys(connection: &mut SqliteConnection, user_id: Option<Uuid>) -> StoreResult<Vec<ApiKey>> {
    let rows = match user_id {
        Some(user_id) => {
            sqlx::query(&format!("{SELECT_KEYS} WHERE api_keys.user_id = ? ORDER BY api_keys.id"))
                .bind(user_id.to_string())
                .fetch_all(connection)
                .await?
        }
        None => sqlx::query(&format!("{SELECT_KEYS} ORDER BY api_keys.id")).fetch_all(connection).await?,
    };
    rows.iter().map(api_key_from_row).collect()
}

pub async fn get_api_key(connection: &mut SqliteConnection, id: &str) -> StoreResult<Option<ApiKey>> {
    let row = sqlx::query(&format!("{SELECT_KEYS} WHERE api_keys.id = ?")).bind(id).fetch_optional(connection).await?;
    row.as_ref().map(api_key_from_row).transpose()
}

/// Inserts or updates (by id) a key.
pub async fn save_api_key(connection: &mut SqliteConnection, key: &ApiKey) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, user_id, description, secret_hash, groups, expires_at, revoked_at, \
           last_used_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET description = excluded.description, groups = excluded.groups, \
           expires_at = excluded.expires_at, revoked_at = excluded.revoked_at, last_used_at = excluded.last_used_at",
    )
    .bind(&key.id)
    .bind(key.user_id.to_string())
    .bind(&key.description)
    .bind(&key.secret_hash)
    .bind(to_json(&key.groups))
    .bind(key.expires_at.as_ref().map(format_time))
    .bind(key.revoked_at.as_ref().map(format_time))
    .bind(key.last_used_at.as_ref().map(format_time))
    .bind(format_time(&key.created_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn touch_api_key(connection: &mut SqliteConnection, id: &str, at: &Timestamp) -> StoreResult<()> {
    sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
        .bind(format_time(at))
        .bind(id)
        .execute(connection)
        .await?;
    Ok(())
}

// ----- sessions -----

fn session_from_row(row: &SqliteRow) -> StoreResult<Session> {
    Ok(Session {
        id: parse_uuid(row.try_get("id")?)?,
        user: row.try_get("user_name")?,
        source: row.try_get("source")?,
        created_at: parse_time(row.try_get("created_at")?)?,
        last_seen_at: parse_time(row.try_get("last_seen_at")?)?,
        expires_at: parse_time(row.try_get("expires_at")?)?,
        ends_at: parse_time(row.try_get("ends_at")?)?,
        revoked_at: parse_optional_time(row.try_get("revoked_at")?)?,
        user_id: parse_uuid(row.try_get("user_id")?)?,
    })
}

const SELECT_SESSIONS: &str =
    "SELECT sessions.*, users.name AS user_name FROM sessions JOIN users ON users.id = sessions.user_id";

pub async fn insert_session(connection: &mut SqliteConnection, session: &Session, token_hash: &str) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO sessions (id, token_hash, user_id, source, created_at, last_seen_at, expires_at, ends_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(session.id.to_string())
    .bind(token_hash)
    .bind(session.user_id.to_string())
    .bind(&session.source)
    .bind(format_time(&session.created_at))
    .bind(format_time(&session.last_seen_at))
    .bind(format_time(&session.expires_at))
    .bind(format_time(&session.ends_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn get_session_by_token_hash(
    connection: &mut SqliteConnection,
    token_hash: &str,
) -> StoreResult<Option<Session>> {
    let row = sqlx::query(&format!("{SELECT_SESSIONS} WHERE token_hash = ?"))
        .bind(token_hash)
        .fetch_optional(connection)
        .await?;
    row.as_ref().map(session_from_row).transpose()
}

/// Live sessions of one user, or of everyone.
pub async fn list_sessions(
    connection: &mut SqliteConnection,
    user_id: Option<Uuid>,
    now: &Timestamp,
) -> StoreResult<Vec<Session>> {
    let mut query = sqlx::QueryBuilder::new(SELECT_SESSIONS);
    query.push(" WHERE sessions.revoked_at IS NULL AND sessions.expires_at > ").push_bind(format_time(now));
    if let Some(user_id) = user_id {
        query.push(" AND sessions.user_id = ").push_bind(user_id.to_string());
    }
    query.push(" ORDER BY sessions.created_at");
    let rows = query.build().fetch_all(connection).await?;
    rows.iter().map(session_from_row).collect()
}

/// Records a use: the idle expiry moves on, never past the session's end.
pub async fn touch_session(
    connection: &mut SqliteConnection,
    id: Uuid,
    at: &Timestamp,
    expires_at: &Timestamp,
) -> StoreResult<()> {
    sqlx::query("UPDATE sessions SET last_seen_at = ?, expires_at = min(?, ends_at) WHERE id = ?")
        .bind(format_time(at))
        .bind(format_time(expires_at))
        .bind(id.to_string())
        .execute(connection)
        .await?;
    Ok(())
}

pub async fn revoke_session(connection: &mut SqliteConnection, id: Uuid, at: &Timestamp) -> StoreResult<bool> {
    let result = sqlx::query("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
        .bind(format_time(at))
        .bind(id.to_string())
        .execute(connection)
        .await?;
    Ok(result.rows_affected() > 0)
}

/// Ends every session of a user (password change, user disabled).
pub async fn revoke_sessions_of_user(
    connection: &mut SqliteConnection,
    user_id: Uuid,
    at: &Timestamp,
) -> StoreResult<u64> {
    let result = sqlx::query("UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL")
        .bind(format_time(at))
        .bind(user_id.to_string())
        .execute(connection)
        .await?;
    Ok(result.rows_affected())
}
