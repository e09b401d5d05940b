//! Instances.

use std::collections::HashMap;

use sqlx::SqliteConnection;
use uuid::Uuid;

use super::rows::StoredRow;
use super::{
    PendingWrites, Statement, Store, StoreError, StoreResult, format_time, parse_enum, parse_json, parse_optional_uuid,
    parse_time, parse_uuid, to_json,
};
use crate::model::{Host, Instance, InstanceState, NewEvent, Task, TaskKind, TaskState, Template};

/// Conditions for listing instances, all combined with AND. `Some(vec![])`-style negations use
/// the `excluded_*` fields.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub states: Vec<InstanceState>,
    pub excluded_states: Vec<InstanceState>,
    pub host_id: Option<Uuid>,
    /// Only instances without a host yet.
    pub unplaced: bool,
    pub provider: Option<String>,
    pub template_id: Option<Uuid>,
    pub name: Option<String>,
    pub external_id: Option<String>,
    /// Only instances of these projects; `None`: of every project.
    pub projects: Option<Vec<Uuid>>,
    /// Only instances whose id sorts after this one (cursor pagination; ids are UUIDv7).
    pub after: Option<Uuid>,
    pub limit: Option<u32>,
}

fn from_row(row: &impl StoredRow) -> StoreResult<Instance> {
    let optional_uuid = |column: &str| parse_optional_uuid(row.value(column)?);
    Ok(Instance {
        id: parse_uuid(row.value("id")?)?,
        name: row.value("name")?,
        project_id: parse_uuid(row.value("project_id")?)?,
        external_id: row.value("external_id")?,
        state: parse_enum(row.value("state")?)?,
        template_id: optional_uuid("template_id")?,
        template_version: row.value("template_version")?,
        provider: row.value("provider")?,
        host_id: optional_uuid("host_id")?,
        requested_host_id: optional_uuid("requested_host_id")?,
        provider_id: row.value("provider_id")?,
        vcpu: row.value("vcpu")?,
        ram_mb: row.value::<i64>("ram_mb")? as u64,
        disk_gb: row.value::<i64>("disk_gb")? as u64,
        priority: row.value("priority")?,
        placement: parse_json(row.value("placement")?)?,
        ip: row.value("ip")?,
        mac: row.value("mac")?,
        vlan: row.value("vlan")?,
        metadata: parse_json(row.value("metadata")?)?,
        startup_script: row.value("startup_script")?,
        startup_result: row.value::<Option<String>>("startup_result")?.as_deref().map(parse_json).transpose()?,
        error: row.value("error")?,
        origin: parse_enum(row.value("origin")?)?,
        created_at: parse_time(row.value("created_at")?)?,
        updated_at: parse_time(row.value("updated_at")?)?,
    })
}

pub async fn get(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<Option<Instance>> {
    let row =
        sqlx::query("SELECT * FROM instances WHERE id = ?").bind(id.to_string()).fetch_optional(connection).await?;
    row.as_ref().map(from_row).transpose()
}

/// What a task on an instance reads before it acts: see [`get_in_context`].
#[derive(Debug, Clone)]
pub struct InstanceContext {
    pub instance: Instance,
    /// The host it is placed on.
    pub host: Option<Host>,
    /// The template it was made from, with versions, if asked for.
    pub template: Option<Template>,
    /// Its pending and running tasks, oldest first, if asked for.
    pub unfinished_tasks: Vec<Task>,
}

/// Which optional parts of an [`InstanceContext`] to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContextParts {
    pub template: bool,
    pub unfinished_tasks: bool,
}

/// The instance with its host and the `parts` asked for, read inline.
pub fn get_in_context(store: &Store, id: Uuid, parts: ContextParts) -> StoreResult<Option<InstanceContext>> {
    Ok(get_contexts(store, &[id], parts)?.remove(&id))
}

/// [`get_in_context`] for several instances in one read transaction (the ones found, by id).
pub fn get_contexts(store: &Store, ids: &[Uuid], parts: ContextParts) -> StoreResult<HashMap<Uuid, InstanceContext>> {
    // The ids go as one JSON array, so each statement's text is the same however many there are.
    let ids = super::to_json(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>());
    store.read_inline(|connection| {
        let read = |sql: &str| super::inline::fetch_all(connection, sql, [&ids]);
        let instance_rows = read("SELECT * FROM instances WHERE id IN (SELECT value FROM json_each(?1))")?;
        let hosts: HashMap<Uuid, Host> = read(&super::hosts::SELECT_OF_INSTANCES)?
            .iter()
            .map(|row| super::hosts::from_row(row).map(|host| (host.id, host)))
            .collect::<StoreResult<_>>()?;
        let mut unfinished_tasks: HashMap<Uuid, Vec<Task>> = HashMap::new();
        if parts.unfinished_tasks {
            for row in &read(&super::tasks::SELECT_UNFINISHED_OF_OBJECTS)? {
                let task = super::tasks::from_row(row)?;
                if let Some(object_id) = task.object_id {
                    unfinished_tasks.entry(object_id).or_default().push(task);
                }
            }
        }
        let templates: HashMap<Uuid, Template> = if parts.template {
            let [templates, versions] = &*super::templates::SELECT_OF_INSTANCES;
            super::templates::list_from_reads(&read(templates)?, &read(versions)?)?
                .into_iter()
                .map(|template| (template.id, template))
                .collect()
        } else {
            HashMap::new()
        };
        let mut contexts = HashMap::with_capacity(instance_rows.len());
        for row in &instance_rows {
            let instance = from_row(row)?;
            let host = instance.host_id.and_then(|host_id| hosts.get(&host_id)).cloned();
            let template = instance.template_id.and_then(|template_id| templates.get(&template_id)).cloned();
            let mut tasks = unfinished_tasks.remove(&instance.id).unwrap_or_default();
            tasks.sort_by_key(|task| task.id);
            contexts.insert(instance.id, InstanceContext { instance, host, template, unfinished_tasks: tasks });
        }
        Ok(contexts)
    })
}

/// The instance and its pending and running tasks of `kind` (oldest first), read inline in one
/// read transaction.
pub fn get_with_unfinished(store: &Store, id: Uuid, kind: TaskKind) -> StoreResult<Option<(Instance, Vec<Task>)>> {
    let id = id.to_string();
    store.read_inline(|connection| {
        let instance_rows = super::inline::fetch_all(connection, "SELECT * FROM instances WHERE id = ?1", [&id])?;
        let Some(instance) = instance_rows.first().map(from_row).transpose()? else { return Ok(None) };
        // Kind and states written into the statement (see `push_names`): one statement per kind.
        let tasks = format!(
            "SELECT * FROM tasks WHERE object_id = ?1 AND kind = '{}' AND state IN ('{}', '{}') ORDER BY id",
            kind.as_str(),
            TaskState::Pending.as_str(),
            TaskState::Running.as_str()
        );
        let tasks = super::inline::fetch_all(connection, &tasks, [&id])?;
        Ok(Some((instance, tasks.iter().map(super::tasks::from_row).collect::<StoreResult<Vec<_>>>()?)))
    })
}

pub async fn list(connection: &mut SqliteConnection, filter: &InstanceFilter) -> StoreResult<Vec<Instance>> {
    let rows = list_statement(filter).fetch(connection).await?;
    rows.iter().map(from_row).collect()
}

/// [`list`], inline (see [`Store::read_inline`]).
pub fn list_inline(store: &Store, filter: &InstanceFilter) -> StoreResult<Vec<Instance>> {
    store.read_inline(|connection| from_rows(&list_statement(filter).fetch_inline(connection)?))
}

/// The read of [`list`] (turn its rows into instances with [`from_rows`]).
pub(super) fn list_statement(filter: &InstanceFilter) -> Statement {
    let mut statement = Statement::new("SELECT * FROM instances WHERE 1 = 1");
    push_state_list(&mut statement, " AND state IN (", &filter.states);
    push_state_list(&mut statement, " AND state NOT IN (", &filter.excluded_states);
    if let Some(host_id) = filter.host_id {
        statement.push(" AND host_id = ").bind(host_id.to_string());
    }
    if filter.unplaced {
        statement.push(" AND host_id IS NULL");
    }
    if let Some(projects) = &filter.projects {
        statement.push(" AND project_id IN (NULL");
        for project in projects {
            statement.push(", ").bind(project.to_string());
        }
        statement.push(")");
    }
    if let Some(provider) = &filter.provider {
        statement.push(" AND provider = ").bind(provider.clone());
    }
    if let Some(template_id) = filter.template_id {
        statement.push(" AND template_id = ").bind(template_id.to_string());
    }
    if let Some(name) = &filter.name {
        statement.push(" AND name = ").bind(name.clone());
    }
    if let Some(external_id) = &filter.external_id {
        statement.push(" AND external_id = ").bind(external_id.clone());
    }
    statement.push_page(filter.after, filter.limit);
    statement
}

/// Instances from the rows of [`list_statement`], in id order.
pub(super) fn from_rows(rows: &[impl StoredRow]) -> StoreResult<Vec<Instance>> {
    let mut instances = rows.iter().map(from_row).collect::<StoreResult<Vec<_>>>()?;
    instances.sort_by_key(|instance| instance.id);
    Ok(instances)
}

fn push_state_list(statement: &mut Statement, prefix: &str, states: &[InstanceState]) {
    if states.is_empty() {
        return;
    }
    statement.push(prefix).push_names(states.iter().map(|state| state.as_str())).push(")");
}

pub async fn insert(connection: &mut SqliteConnection, instance: &Instance) -> StoreResult<()> {
    insert_statement(instance).execute(connection).await
}

/// What the database answers an instance of a project that does not exist (migration 0007).
const MISSING_PROJECT: &str = "instance of a missing project";

/// Whether `error` is the refusal of an instance whose project does not exist.
pub fn is_missing_project(error: &StoreError) -> bool {
    error.refusal().is_some_and(|refusal| refusal.message == MISSING_PROJECT)
}

/// [`insert`], sent with the commit.
pub fn defer_insert(writes: &mut PendingWrites, instance: &Instance) {
    writes.defer(insert_statement(instance));
}

fn insert_statement(instance: &Instance) -> Statement {
    let mut statement = Statement::new(
        "INSERT INTO instances (id, project_id, name, external_id, state, template_id, template_version, provider, \
            host_id, requested_host_id, provider_id, vcpu, ram_mb, disk_gb, priority, placement, ip, mac, vlan, metadata, \
            startup_script, startup_result, error, origin, created_at, updated_at) VALUES (",
    );
    statement.bind_all([
        instance.id.to_string().into(),
        instance.project_id.to_string().into(),
        instance.name.clone().into(),
        instance.external_id.clone().into(),
        instance.state.as_str().to_owned().into(),
        instance.template_id.map(|id| id.to_string()).into(),
        instance.template_version.into(),
        instance.provider.clone().into(),
        instance.host_id.map(|id| id.to_string()).into(),
        instance.requested_host_id.map(|id| id.to_string()).into(),
        instance.provider_id.clone().into(),
        instance.vcpu.into(),
        (instance.ram_mb as i64).into(),
        (instance.disk_gb as i64).into(),
        instance.priority.into(),
        to_json(&instance.placement).into(),
        instance.ip.clone().into(),
        instance.mac.clone().into(),
        instance.vlan.into(),
        to_json(&instance.metadata).into(),
        instance.startup_script.clone().into(),
        instance.startup_result.as_ref().map(to_json).into(),
        instance.error.clone().into(),
        instance.origin.as_str().to_owned().into(),
        format_time(&instance.created_at).into(),
        format_time(&instance.updated_at).into(),
    ]);
    statement.push(")");
    statement
}

/// The live (not terminated) instance that has `mac`, if any.
pub async fn live_with_mac(connection: &mut SqliteConnection, mac: &str) -> StoreResult<Option<Uuid>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT id FROM instances WHERE mac = ? AND state != 'terminated' LIMIT 1")
            .bind(mac)
            .fetch_optional(connection)
            .await?;
    row.map(|(id,)| parse_uuid(&id)).transpose()
}

/// How many live (not terminated) instances use version `from` or a later one of the template.
pub async fn count_using_template_versions(
    connection: &mut SqliteConnection,
    template_id: Uuid,
    from: u32,
) -> StoreResult<u64> {
    let (count,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM instances WHERE template_id = ? AND template_version >= ? AND state != 'terminated'",
    )
    .bind(template_id.to_string())
    .bind(from)
    .fetch_one(connection)
    .await?;
    Ok(count as u64)
}

/// The templates (name, version) live instances on the host use.
pub async fn templates_in_use_on_host(
    connection: &mut SqliteConnection,
    host_id: Uuid,
) -> StoreResult<std::collections::HashSet<(String, u32)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT DISTINCT templates.name, instances.template_version FROM instances \
         JOIN templates ON templates.id = instances.template_id \
         WHERE instances.host_id = ? AND instances.state != 'terminated' AND instances.template_version IS NOT NULL",
    )
    .bind(host_id.to_string())
    .fetch_all(connection)
    .await?;
    Ok(rows.into_iter().map(|(name, version)| (name, version as u32)).collect())
}

/// A mutable column of an instance. A write sets only the columns its caller changed (and
/// `updated_at`): a task's state change leaves a client's concurrent rename as it is, and an
/// index over a column not written is not touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Name,
    ExternalId,
    State,
    Provider,
    HostId,
    Ip,
    Mac,
    Metadata,
    StartupResult,
    Error,
}

/// Writes the instance's `columns` (and `updated_at`) as they are in `instance`.
pub async fn update(connection: &mut SqliteConnection, instance: &Instance, columns: &[Column]) -> StoreResult<()> {
    update_statement(instance, columns).execute(connection).await
}

/// [`update`], sent with the commit.
pub fn defer_update(writes: &mut PendingWrites, instance: &Instance, columns: &[Column]) {
    writes.defer(update_statement(instance, columns));
}

/// Moves the instance from state `from` to `to` (`updated_at` set to `time`), with `event`,
/// sent with the commit — if at that moment it is still `from` and no task but its deletion is
/// unfinished on it; otherwise nothing is written. For a delete request that finds the instance
/// idle: it is `terminating` from the request on.
pub fn defer_state_change_when_idle(
    writes: &mut PendingWrites,
    instance_id: Uuid,
    from: InstanceState,
    to: InstanceState,
    event: NewEvent,
) {
    let time = super::now();
    let mut change = Statement::new("UPDATE instances SET state = ");
    change.push_names([to.as_str()]).push(", updated_at = ").bind(format_time(&time));
    change.push(" WHERE id = ").bind(instance_id.to_string()).push(" AND state = ").push_names([from.as_str()]);
    change
        .push(
            " AND NOT EXISTS (SELECT 1 FROM tasks WHERE object_id = instances.id \
               AND state IN ('pending', 'running') AND kind != ",
        )
        .push_names([TaskKind::InstanceDelete.as_str()])
        .push(")");
    writes.defer(change);
    writes.defer(super::events::append_if_changed(&time, &event));
}

/// The `UPDATE` of the instance's `columns` (and `updated_at`) as they are in `instance`.
fn update_statement(instance: &Instance, columns: &[Column]) -> Statement {
    let mut statement = Statement::new("UPDATE instances SET ");
    for column in columns {
        match column {
            Column::Name => statement.push("name = ").bind(instance.name.clone()),
            Column::ExternalId => statement.push("external_id = ").bind(instance.external_id.clone()),
            Column::State => statement.push("state = ").bind(instance.state.as_str().to_owned()),
            Column::Provider => statement.push("provider = ").bind(instance.provider.clone()),
            Column::HostId => statement.push("host_id = ").bind(instance.host_id.map(|id| id.to_string())),
            Column::Ip => statement.push("ip = ").bind(instance.ip.clone()),
            Column::Mac => statement.push("mac = ").bind(instance.mac.clone()),
            Column::Metadata => statement.push("metadata = ").bind(to_json(&instance.metadata)),
            Column::StartupResult => {
                statement.push("startup_result = ").bind(instance.startup_result.as_ref().map(to_json))
            }
            Column::Error => statement.push("error = ").bind(instance.error.clone()),
        };
        statement.push(", ");
    }
    statement.push("updated_at = ").bind(format_time(&instance.updated_at));
    statement.push(" WHERE id = ").bind(instance.id.to_string());
    statement
}

/// Per host, how many live instances carry each affinity key.
pub type AffinityKeys = HashMap<Uuid, HashMap<String, u32>>;

/// The read of the [`AffinityKeys`] (`affinity_key`, else `anti_affinity_key`: both share one
/// key space), counted in SQL so that placement does not load every instance; turn its rows
/// into keys with [`affinity_keys_from_rows`].
pub(super) const SELECT_AFFINITY_KEYS: &str = "SELECT host_id, key, COUNT(*) AS count FROM ( \
         SELECT host_id, COALESCE(json_extract(placement, '$.affinity_key'), \
                                  json_extract(placement, '$.anti_affinity_key')) AS key \
         FROM instances WHERE host_id IS NOT NULL AND state != 'terminated' \
     ) WHERE key IS NOT NULL GROUP BY host_id, key";

pub(super) fn affinity_keys_from_rows(rows: &[impl StoredRow]) -> StoreResult<AffinityKeys> {
    let mut keys = AffinityKeys::new();
    for row in rows {
        let host_id = parse_uuid(row.value("host_id")?)?;
        keys.entry(host_id).or_default().insert(row.value("key")?, row.value("count")?);
    }
    Ok(keys)
}
