//! Stored rows, however they were read: through sqlx (a [`SqliteRow`]) or inline on the calling
//! thread ([`InlineRow`], see [`super::inline`]). The repository modules decode both with one
//! `from_row` each, written against [`StoredRow`].

use std::sync::Arc;

use rusqlite::types::{FromSql, Value, ValueRef};
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::{StoreError, StoreResult};

/// A row whose columns are read by name.
pub(crate) trait StoredRow {
    fn value<'r, T: StoredValue<'r>>(&'r self, column: &str) -> StoreResult<T>;
}

/// A value a column is read as.
pub(crate) trait StoredValue<'r>: Sized {
    fn from_sqlx(row: &'r SqliteRow, column: &str) -> StoreResult<Self>;
    fn from_inline(value: &'r Value) -> Result<Self, String>;
}

impl StoredRow for SqliteRow {
    fn value<'r, T: StoredValue<'r>>(&'r self, column: &str) -> StoreResult<T> {
        T::from_sqlx(self, column)
    }
}

/// A row read inline, with its columns' names.
#[derive(Debug, Clone)]
pub(crate) struct InlineRow {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl InlineRow {
    /// The names of the columns `statement` answers, shared by its rows.
    pub(super) fn columns(statement: &rusqlite::Statement<'_>) -> Arc<[String]> {
        statement.column_names().into_iter().map(str::to_owned).collect()
    }

    /// `row`, owned, answered by a statement with `columns`.
    pub(super) fn read(row: &rusqlite::Row<'_>, columns: &Arc<[String]>) -> rusqlite::Result<InlineRow> {
        let values = (0..columns.len()).map(|index| row.get::<_, Value>(index)).collect::<Result<_, _>>()?;
        Ok(InlineRow { columns: columns.clone(), values })
    }
}

impl StoredRow for InlineRow {
    fn value<'r, T: StoredValue<'r>>(&'r self, column: &str) -> StoreResult<T> {
        let index = self.columns.iter().position(|name| name == column);
        let value = index.and_then(|index| self.values.get(index));
        let value = value.ok_or_else(|| StoreError::Corrupt(format!("no column {column}")))?;
        T::from_inline(value).map_err(|error| StoreError::Corrupt(format!("column {column}: {error}")))
    }
}

/// Owned values: what sqlx and rusqlite both decode.
macro_rules! owned_values {
    ($($value:ty),*) => {$(
        impl<'r> StoredValue<'r> for $value {
            fn from_sqlx(row: &'r SqliteRow, column: &str) -> StoreResult<Self> {
                Ok(row.try_get(column)?)
            }
            fn from_inline(value: &'r Value) -> Result<Self, String> {
                <$value as FromSql>::column_result(ValueRef::from(value)).map_err(|error| error.to_string())
            }
        }
    )*};
}

owned_values!(String, Option<String>, i64, Option<i64>, i32, Option<i32>, u32, Option<u32>, u16, Option<u16>);
owned_values!(f64, bool);

impl<'r> StoredValue<'r> for &'r str {
    fn from_sqlx(row: &'r SqliteRow, column: &str) -> StoreResult<Self> {
        Ok(row.try_get(column)?)
    }
    fn from_inline(value: &'r Value) -> Result<Self, String> {
        match value {
            Value::Text(text) => Ok(text),
            other => Err(format!("{:?} is not text", other.data_type())),
        }
    }
}

impl<'r> StoredValue<'r> for Option<&'r str> {
    fn from_sqlx(row: &'r SqliteRow, column: &str) -> StoreResult<Self> {
        Ok(row.try_get(column)?)
    }
    fn from_inline(value: &'r Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => <&str>::from_inline(other).map(Some),
        }
    }
}
