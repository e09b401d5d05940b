//! Statements as data: SQL text with `?` placeholders and the values bound to them, run on
//! either kind of connection — inline ([`super::inline`]: the batch committer's writes, reads on
//! hot paths) or through sqlx (a [`super::WriteTx`]'s connection, a reader). The repository
//! modules build each statement once, as a [`Statement`].

use rusqlite::types::Value;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments as _, SqliteConnection};

use super::StoreResult;
use super::rows::InlineRow;

/// One SQL statement and its bound values.
#[derive(Debug, Clone, Default)]
pub(crate) struct Statement {
    sql: String,
    values: Vec<Value>,
}

impl Statement {
    pub(crate) fn new(sql: &str) -> Statement {
        Statement { sql: sql.to_owned(), values: Vec::new() }
    }

    /// Appends SQL text.
    pub(crate) fn push(&mut self, sql: &str) -> &mut Statement {
        self.sql.push_str(sql);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub(crate) fn bind(&mut self, value: impl Into<Value>) -> &mut Statement {
        self.sql.push('?');
        self.values.push(value.into());
        self
    }

    /// Appends placeholders separated by `, `, bound to `values`.
    pub(crate) fn bind_all(&mut self, values: impl IntoIterator<Item = Value>) -> &mut Statement {
        for (index, value) in values.into_iter().enumerate() {
            if index > 0 {
                self.sql.push_str(", ");
            }
            self.bind(value);
        }
        self
    }

    /// Appends `'a', 'b', …`: see [`super::names`].
    pub(crate) fn push_names(&mut self, names: impl IntoIterator<Item = &'static str>) -> &mut Statement {
        self.sql.push_str(&super::names(names));
        self
    }

    /// Ends a list query: rows after the cursor id, in id (creation) order, at most `limit`.
    pub(crate) fn push_page(&mut self, after: Option<uuid::Uuid>, limit: Option<u32>) -> &mut Statement {
        if let Some(after) = after {
            self.push(" AND id > ").bind(after.to_string());
        }
        self.push(" ORDER BY id");
        if let Some(limit) = limit {
            self.push(" LIMIT ").bind(limit);
        }
        self
    }

    #[cfg(test)]
    pub(crate) fn sql(&self) -> &str {
        &self.sql
    }

    #[cfg(test)]
    pub(crate) fn values(&self) -> &[Value] {
        &self.values
    }

    /// Runs the statement through sqlx.
    pub(crate) async fn execute(&self, connection: &mut SqliteConnection) -> StoreResult<()> {
        run_together(connection, [self]).await.map(drop)
    }

    /// Runs the statement through sqlx; answers its rows.
    pub(crate) async fn fetch(&self, connection: &mut SqliteConnection) -> StoreResult<Vec<SqliteRow>> {
        run_together(connection, [self]).await
    }

    /// Runs the statement inline (see [`Statement::run_inline`]); answers its rows.
    pub(crate) fn fetch_inline(&self, connection: &rusqlite::Connection) -> StoreResult<Vec<InlineRow>> {
        let mut rows = Vec::new();
        self.run_inline(connection, &mut rows)?;
        Ok(rows)
    }

    /// Runs the statement inline, keeping it prepared on the connection, and appends the rows
    /// it answers (a `RETURNING` clause's) to `returned`.
    pub(crate) fn run_inline(
        &self,
        connection: &rusqlite::Connection,
        returned: &mut Vec<InlineRow>,
    ) -> StoreResult<()> {
        let mut prepared = connection.prepare_cached(&self.sql)?;
        if prepared.column_count() == 0 {
            prepared.execute(rusqlite::params_from_iter(&self.values))?;
            return Ok(());
        }
        super::inline::read_rows(&mut prepared, rusqlite::params_from_iter(&self.values), returned)
    }
}

/// Runs `statements` through sqlx, in order, in one round trip (one query of several
/// statements); answers the rows they answer.
pub(crate) async fn run_together<'s>(
    connection: &mut SqliteConnection,
    statements: impl IntoIterator<Item = &'s Statement>,
) -> StoreResult<Vec<SqliteRow>> {
    let mut sql = String::new();
    let mut arguments = SqliteArguments::default();
    let mut count = 0;
    for statement in statements {
        sql.push_str(&statement.sql);
        sql.push_str("; ");
        count += 1;
        for value in &statement.values {
            match value {
                Value::Null => arguments.add(Option::<i64>::None),
                Value::Integer(integer) => arguments.add(*integer),
                Value::Real(real) => arguments.add(*real),
                Value::Text(text) => arguments.add(text.clone()),
                Value::Blob(blob) => arguments.add(blob.clone()),
            }
            .map_err(sqlx::Error::Encode)?;
        }
    }
    if sql.is_empty() {
        return Ok(Vec::new());
    }
    // The query's text is the same for writes of the same shape (one task's outcome), so they
    // stay prepared; a large one (a create of hundreds of instances) would keep hundreds of
    // statements prepared, so it is prepared afresh.
    let cached = count <= MAX_CACHED_STATEMENTS;
    Ok(sqlx::query_with(&sql, arguments).persistent(cached).fetch_all(connection).await?)
}

/// Queries of more statements than this are not kept prepared.
const MAX_CACHED_STATEMENTS: usize = 64;
