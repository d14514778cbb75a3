//! Small helpers shared by the query modules: placeholders for chunked
//! `IN (...)` lists and multi-row `VALUES`, dynamic argument lists, paging,
//! and reading columns of an [`AnyRow`].
//!
//! Queries with a few parameters are written once with `$1, $2, ...`, which
//! both PostgreSQL and sqlx's SQLite driver understand. Statements with many
//! parameters use [`Params`] (see there why). Batches are cut into chunks
//! whose sizes are powers of two, so a handful of SQL texts cover every batch
//! size and each stays in the per-connection prepared-statement cache.

use serde::de::DeserializeOwned;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Arguments, Row};

use crate::store::Backend;
use crate::store::error::{Result, StoreError};

/// Most rows per multi-row `INSERT`. 128 rows of up to 10 columns stay far
/// below SQLite's 32766 and PostgreSQL's 65535 bind-parameter limits.
pub(crate) const MAX_ROWS_PER_INSERT: usize = 128;
/// Most ids in one `IN (...)` list.
pub(crate) const MAX_IN_LIST: usize = 256;
/// Largest page a list call returns: an unbounded page would load a whole
/// tenant into memory for one request.
pub(crate) const MAX_PAGE: u32 = 1000;

/// Split `n` items into consecutive chunks of power-of-two sizes, none larger
/// than `max` (a power of two). Returns `(start, len)` pairs.
pub(crate) fn pow2_chunks(n: usize, max: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let rest = n - start;
        let mut len = max;
        while len > rest {
            len /= 2;
        }
        out.push((start, len));
        start += len;
    }
    out
}

/// Placeholders for statements with many parameters (multi-row inserts,
/// long `IN` lists), numbered `$1, $2, ...` on PostgreSQL and anonymous `?`
/// on SQLite. SQLite looks up each named parameter by a linear scan of the
/// statement's names, so binding N `$k` parameters costs O(N²): 1 ms for a
/// 1024-parameter insert, more than the insert itself. Anonymous ones are
/// bound by position. (A statement must not mix the two styles: sqlx numbers
/// anonymous parameters separately.)
pub(crate) struct Params {
    anonymous: bool,
    next: usize,
}

impl Params {
    pub fn new(backend: Backend) -> Params {
        Params { anonymous: backend == Backend::Sqlite, next: 1 }
    }

    /// The next placeholder.
    pub fn one(&mut self) -> String {
        let n = self.next;
        self.next += 1;
        if self.anonymous { "?".to_owned() } else { format!("${n}") }
    }

    /// `n` placeholders separated by commas.
    pub fn list(&mut self, n: usize) -> String {
        (0..n).map(|_| self.one()).collect::<Vec<_>>().join(", ")
    }

    /// `(..), (..)`: `rows` groups of `cols` placeholders.
    pub fn rows(&mut self, rows: usize, cols: usize) -> String {
        (0..rows).map(|_| format!("({})", self.list(cols))).collect::<Vec<_>>().join(", ")
    }
}

/// A bind argument of a query assembled at run time.
#[derive(Clone, Debug)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// A query whose text and arguments are built together, so each placeholder
/// number matches its argument.
pub(crate) struct Builder<'a> {
    pub sql: String,
    args: Vec<Arg<'a>>,
}

impl<'a> Builder<'a> {
    pub fn new(sql: &str) -> Self {
        Builder { sql: sql.to_owned(), args: Vec::new() }
    }

    /// Append an argument and return its placeholder.
    pub fn arg(&mut self, a: Arg<'a>) -> String {
        self.args.push(a);
        format!("${}", self.args.len())
    }

    /// Append `text` followed by a placeholder for `a`.
    pub fn push_arg(&mut self, text: &str, a: Arg<'a>) {
        let p = self.arg(a);
        self.sql.push_str(text);
        self.sql.push_str(&p);
    }

    pub fn push(&mut self, text: &str) {
        self.sql.push_str(text);
    }

    /// The text and its arguments, for a `script::Script`.
    pub fn into_statement(self) -> Result<(String, AnyArguments<'a>)> {
        let mut args = AnyArguments::default();
        for a in self.args {
            match a {
                Arg::Text(s) => args.add(s),
                Arg::Int(i) => args.add(i),
            }
            .map_err(sqlx::Error::Encode)?;
        }
        Ok((self.sql, args))
    }

    /// The query, arguments bound in order.
    pub fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut q = sqlx::query(&self.sql);
        for a in &self.args {
            q = match a {
                Arg::Text(s) => q.bind(*s),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

/// Clamp a requested page size to `1..=MAX_PAGE`.
pub(crate) fn page_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, MAX_PAGE))
}

/// Read a BIGINT 0/1 column as a bool.
pub(crate) fn get_bool(row: &AnyRow, col: &str) -> Result<bool> {
    Ok(row.try_get::<i64, _>(col)? != 0)
}

/// Read a JSON text column.
pub(crate) fn get_json<T: DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
}

/// Encode a value as JSON text for a column.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("not representable as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_covering_everything() {
        let c = pow2_chunks(1000, 128);
        assert_eq!(c.iter().map(|(_, l)| l).sum::<usize>(), 1000);
        assert!(c.iter().all(|(_, l)| l.is_power_of_two() && *l <= 128));
        assert_eq!(c[0], (0, 128));
        assert!(pow2_chunks(0, 128).is_empty());
        assert_eq!(pow2_chunks(3, 128), vec![(0, 2), (2, 1)]);
    }

    #[test]
    fn placeholders_are_numbered_on_postgres_and_anonymous_on_sqlite() {
        let mut pg = Params::new(Backend::Postgres);
        assert_eq!(pg.one(), "$1");
        assert_eq!(pg.rows(2, 2), "($2, $3), ($4, $5)");
        let mut lite = Params::new(Backend::Sqlite);
        assert_eq!(lite.one(), "?");
        assert_eq!(lite.list(2), "?, ?");
    }
}
