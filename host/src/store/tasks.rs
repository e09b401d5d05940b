//! Durable tasks: every long operation is a row here before it starts.

use std::sync::LazyLock;

use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::rows::StoredRow;
use super::{
    PendingWrites, Statement, Store, StoreError, StoreResult, format_time, parse_enum, parse_json, parse_optional_time,
    parse_optional_uuid, parse_time, parse_uuid, to_json,
};
use crate::model::{Task, TaskError, TaskKind, TaskState, Timestamp};

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub states: Vec<TaskState>,
    pub kind: Option<TaskKind>,
    pub object_id: Option<Uuid>,
    pub parent_id: Option<Uuid>,
    /// Only tasks whose id sorts after this one (ids are UUIDv7, so this is creation order).
    pub after: Option<Uuid>,
    pub limit: Option<u32>,
}

pub(super) fn from_row(row: &impl StoredRow) -> StoreResult<Task> {
    let optional_uuid = |column: &str| parse_optional_uuid(row.value(column)?);
    let error = match (row.value::<Option<String>>("error_code")?, row.value::<Option<String>>("error_message")?) {
        (Some(code), message) => Some(TaskError { code, message: message.unwrap_or_default() }),
        _ => None,
    };
    Ok(Task {
        id: parse_uuid(row.value("id")?)?,
        kind: parse_enum(row.value("kind")?)?,
        state: parse_enum(row.value("state")?)?,
        object_id: optional_uuid("object_id")?,
        parent_id: optional_uuid("parent_id")?,
        progress: row.value::<f64>("progress")? as f32,
        message: row.value("message")?,
        input: parse_json(row.value("input")?)?,
        result: row.value::<Option<String>>("result")?.as_deref().map(parse_json).transpose()?,
        error,
        attempts: row.value("attempts")?,
        idempotency_key: row.value("idempotency_key")?,
        created_at: parse_time(row.value("created_at")?)?,
        started_at: parse_optional_time(row.value("started_at")?)?,
        ended_at: parse_optional_time(row.value("ended_at")?)?,
    })
}

/// Inserts `task`, sent with the commit (`request_digest`: of the request an idempotency key
/// stands for).
pub fn defer_insert(writes: &mut PendingWrites, task: &Task, request_digest: Option<String>) {
    let mut statement = Statement::new(
        "INSERT INTO tasks (id, kind, state, object_id, parent_id, progress, message, input, result, error_code, \
            error_message, attempts, idempotency_key, request_digest, created_at, started_at, ended_at) VALUES (",
    );
    statement.bind_all([
        task.id.to_string().into(),
        task.kind.as_str().to_owned().into(),
        task.state.as_str().to_owned().into(),
        task.object_id.map(|id| id.to_string()).into(),
        task.parent_id.map(|id| id.to_string()).into(),
        f64::from(task.progress).into(),
        task.message.clone().into(),
        task.input.to_string().into(),
        task.result.as_ref().map(to_json).into(),
        task.error.as_ref().map(|error| error.code.clone()).into(),
        task.error.as_ref().map(|error| error.message.clone()).into(),
        task.attempts.into(),
        task.idempotency_key.clone().into(),
        request_digest.into(),
        format_time(&task.created_at).into(),
        task.started_at.as_ref().map(format_time).into(),
        task.ended_at.as_ref().map(format_time).into(),
    ]);
    statement.push(")");
    writes.defer(statement);
}

/// Writes the task's progress and outcome columns.
pub async fn update(connection: &mut SqliteConnection, task: &Task) -> StoreResult<()> {
    update_statement(task).execute(connection).await
}

/// [`update`], sent with the commit.
pub fn defer_update(writes: &mut PendingWrites, task: &Task) {
    writes.defer(update_statement(task));
}

/// The task's state, progress and outcome as they are in `task`.
fn update_statement(task: &Task) -> Statement {
    let mut statement = Statement::new("UPDATE tasks SET state = ");
    statement
        .bind(task.state.as_str().to_owned())
        .push(", progress = ")
        .bind(f64::from(task.progress))
        .push(", message = ")
        .bind(task.message.clone())
        .push(", result = ")
        .bind(task.result.as_ref().map(to_json))
        .push(", error_code = ")
        .bind(task.error.as_ref().map(|error| error.code.clone()))
        .push(", error_message = ")
        .bind(task.error.as_ref().map(|error| error.message.clone()))
        .push(", attempts = ")
        .bind(task.attempts)
        .push(", started_at = ")
        .bind(task.started_at.as_ref().map(format_time))
        .push(", ended_at = ")
        .bind(task.ended_at.as_ref().map(format_time))
        .push(" WHERE id = ")
        .bind(task.id.to_string());
    statement
}

/// Claims a task for running: writes its state, attempts and start time only if it is still
/// pending. Returns whether cancellation was requested, or `None` when it was not pending.
/// Progress only; cheap enough to call often.
pub async fn update_progress(
    connection: &mut SqliteConnection,
    id: Uuid,
    progress: f32,
    message: &str,
) -> StoreResult<()> {
    sqlx::query("UPDATE tasks SET progress = ?, message = ? WHERE id = ? AND state = 'running'")
        .bind(f64::from(progress))
        .bind(message)
        .bind(id.to_string())
        .execute(connection)
        .await?;
    Ok(())
}

pub async fn get(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<Option<Task>> {
    let row = sqlx::query("SELECT * FROM tasks WHERE id = ?").bind(id.to_string()).fetch_optional(connection).await?;
    row.as_ref().map(from_row).transpose()
}

/// The task created with this idempotency key, and the digest of the request that created it.
pub async fn get_by_idempotency_key(
    connection: &mut SqliteConnection,
    key: &str,
) -> StoreResult<Option<(Task, Option<String>)>> {
    let row = sqlx::query("SELECT * FROM tasks WHERE idempotency_key = ?").bind(key).fetch_optional(connection).await?;
    row.as_ref().map(|row| Ok((from_row(row)?, row.try_get("request_digest")?))).transpose()
}

pub async fn list(connection: &mut SqliteConnection, filter: &TaskFilter) -> StoreResult<Vec<Task>> {
    let rows = list_statement(filter).fetch(connection).await?;
    rows.iter().map(from_row).collect()
}

/// Whether `error` is the refusal of a second unfinished delete task of one instance (see
/// migration 0009).
pub fn is_second_unfinished_delete(error: &StoreError) -> bool {
    error.refusal().is_some_and(|refusal| refusal.unique_violation && refusal.message.ends_with("tasks.object_id"))
}

fn list_statement(filter: &TaskFilter) -> Statement {
    let mut statement = Statement::new("SELECT * FROM tasks WHERE 1 = 1");
    if !filter.states.is_empty() {
        statement.push(" AND state IN (").push_names(filter.states.iter().map(|state| state.as_str())).push(")");
    }
    if let Some(kind) = filter.kind {
        statement.push(" AND kind = ").push_names([kind.as_str()]);
    }
    if let Some(object_id) = filter.object_id {
        statement.push(" AND object_id = ").bind(object_id.to_string());
    }
    if let Some(parent_id) = filter.parent_id {
        statement.push(" AND parent_id = ").bind(parent_id.to_string());
    }
    statement.push_page(filter.after, filter.limit);
    statement
}

/// The read of the pending and running tasks of the objects of `?1` (a JSON array of ids).
pub(super) static SELECT_UNFINISHED_OF_OBJECTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM tasks WHERE state IN ('{}', '{}') AND object_id IN (SELECT value FROM json_each(?1))",
        TaskState::Pending.as_str(),
        TaskState::Running.as_str()
    )
});

/// Starts up to `limit` pending tasks the dispatcher may start now, oldest first, and appends
/// their `task.started` events, in one batch (one query of the next group commit): running, one more
/// attempt, `started_at` set on the first. Batches never run themselves, and an instance
/// creation waits until placement gave its instance a host (unless cancelled). Answers the
/// started tasks, oldest first, each with whether cancellation was requested.
pub async fn claim(store: &Store, limit: u32, now: &Timestamp) -> StoreResult<Vec<(Task, bool)>> {
    let now = format_time(now);
    let mut batch = store.batch();
    // The tasks taken are noted in a table of the writer connection's own (`temp`), so that
    // the statements after the claim, sent with it, find them.
    let writes = batch.writes();
    writes.defer(Statement::new("CREATE TEMP TABLE IF NOT EXISTS claimed_tasks (id TEXT PRIMARY KEY)"));
    writes.defer(Statement::new("DELETE FROM temp.claimed_tasks"));
    let mut take = Statement::new(
        "INSERT INTO temp.claimed_tasks \
             SELECT t.id FROM tasks t LEFT JOIN instances i ON i.id = t.object_id \
             WHERE t.state = 'pending' AND t.kind != 'batch' \
               AND (t.kind != 'instance.create' OR i.host_id IS NOT NULL OR t.cancel_requested = 1) \
             ORDER BY t.id LIMIT ",
    );
    take.bind(limit);
    writes.defer(take);
    let mut start = Statement::new(
        "UPDATE tasks SET state = 'running', attempts = attempts + 1, started_at = COALESCE(started_at, ",
    );
    start.bind(now.clone()).push(") WHERE id IN (SELECT id FROM temp.claimed_tasks) RETURNING *");
    writes.defer(start);
    // What `NewEvent::new("task.started", "task", id).data(json!({ "attempt": attempts }))`
    // appends.
    let mut started = Statement::new("INSERT INTO events (time, type, object_kind, object_id, actor, data) SELECT ");
    started.bind(now).push(
        ", 'task.started', 'task', id, 'system', json_object('attempt', attempts) FROM tasks \
         WHERE id IN (SELECT id FROM temp.claimed_tasks) ORDER BY id",
    );
    writes.defer(started);
    let rows = batch.commit_returning().await?;
    let mut claimed = rows
        .iter()
        .map(|row| Ok((from_row(row)?, row.value("cancel_requested")?)))
        .collect::<StoreResult<Vec<(Task, bool)>>>()?;
    // Ids are UUIDv7: their order is the order of creation.
    claimed.sort_by_key(|(task, _)| task.id);
    Ok(claimed)
}

pub async fn request_cancel(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<()> {
    sqlx::query("UPDATE tasks SET cancel_requested = 1 WHERE id = ?").bind(id.to_string()).execute(connection).await?;
    Ok(())
}

pub async fn is_cancel_requested(connection: &mut SqliteConnection, id: Uuid) -> StoreResult<bool> {
    let row = sqlx::query("SELECT cancel_requested FROM tasks WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(connection)
        .await?;
    Ok(row.map(|row| row.try_get("cancel_requested")).transpose()?.unwrap_or(false))
}

/// Sets the message of the pending creation task of an instance (why it waits), when it
/// changed; sent with the commit.
pub fn defer_pending_create_message(writes: &mut PendingWrites, instance_id: Uuid, message: String) {
    let mut statement = Statement::new("UPDATE tasks SET message = ");
    statement
        .bind(message.clone())
        .push(" WHERE object_id = ")
        .bind(instance_id.to_string())
        .push(" AND kind = 'instance.create' AND state = 'pending' AND (message IS NULL OR message != ")
        .bind(message)
        .push(")");
    writes.defer(statement);
}

/// How many children of a batch are in each state.
pub async fn count_children_by_state(
    connection: &mut SqliteConnection,
    parent_id: Uuid,
) -> StoreResult<Vec<(TaskState, u32)>> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS count FROM tasks WHERE parent_id = ? GROUP BY state")
        .bind(parent_id.to_string())
        .fetch_all(connection)
        .await?;
    rows.iter().map(|row| Ok((parse_enum(row.try_get("state")?)?, row.try_get("count")?))).collect()
}
