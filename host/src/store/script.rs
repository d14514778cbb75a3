//! Several statements sent to the database in one round trip.
//!
//! sqlx's SQLite driver runs every statement on the connection's own
//! thread: each is a hand-over to that thread and back, ~0.1 ms on a busy
//! 2-core machine against a few µs for the statement itself. A write turn
//! holds SQLite's one writer for all of its round trips, and every other
//! tenant's write waits for it. Statements of a turn that do not need each
//! other's answers to be written can instead go as one [`Script`]: on
//! SQLite one multi-statement text with one argument list, which the
//! driver's thread runs statement after statement and answers in one
//! stream (each statement's rows, then its "done" with the rows it
//! changed). On PostgreSQL, whose protocol prepares one statement at a
//! time, a script runs its statements one by one on the same connection:
//! the same results, as many round trips as before.
//!
//! Each statement is written as on its own (`$1, $2, ...` or `?`, see
//! `sql::Params`); on SQLite the script rewrites its placeholders into one
//! run of anonymous `?`, repeating an argument where its `$n` recurs. (Not
//! the numbered `?NNN` form: SQLite finds each named parameter by a linear
//! scan of the statement's names, quadratic in big statements.) A statement
//! later in a script sees what the earlier ones wrote, as it would if sent
//! alone. The first statement that fails ends the script; its error is the
//! script's, and what the statements before it wrote stays in the
//! transaction, which the caller then rolls back as after any failed
//! statement.

use futures_util::TryStreamExt;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{AnyConnection, Arguments, Either, Execute, Executor};

use crate::store::Backend;
use crate::store::error::{Result, StoreError};

/// What one statement of a [`Script`] answered.
#[derive(Default)]
pub(crate) struct Answer {
    /// The rows it returned (a `SELECT`, a `RETURNING`), in order.
    pub rows: Vec<AnyRow>,
    /// The rows it changed.
    pub rows_affected: u64,
}

/// Statements to send together (see the module docs).
pub(crate) struct Script<'q> {
    backend: Backend,
    statements: Vec<(String, AnyArguments<'q>)>,
}

/// Where a statement's [`Answer`] is in [`Script::run`]'s result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(usize);

impl<'q> Script<'q> {
    pub fn new(backend: Backend) -> Script<'q> {
        Script { backend, statements: Vec::new() }
    }

    /// Add a statement with its arguments bound (`sqlx::query(..).bind(..)`).
    pub fn push(&mut self, mut query: sqlx::query::Query<'q, sqlx::Any, AnyArguments<'q>>) -> Result<Slot> {
        let sql = query.sql().to_owned();
        let args = query.take_arguments().map_err(sqlx::Error::Encode)?.unwrap_or_default();
        Ok(self.push_with(sql, args))
    }

    /// Add a statement whose text is built at run time, with its arguments
    /// (a `sqlx::query(&text)` would borrow a text that the script outlives).
    pub fn push_with(&mut self, sql: String, args: AnyArguments<'q>) -> Slot {
        self.statements.push((sql, args));
        Slot(self.statements.len() - 1)
    }

    /// Whether no statement was added.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Run the statements in order; one [`Answer`] per statement, indexed
    /// by the [`Slot`]s [`Script::push`] gave.
    pub async fn run(self, conn: &mut AnyConnection) -> Result<Answers> {
        self.run_between(conn, &[], &[]).await
    }

    /// [`Script::run`] between statements of no arguments and no answer
    /// (`BEGIN IMMEDIATE` and `COMMIT`, a savepoint and its release), sent
    /// in the same round trip on SQLite (see `ScriptTx`); only the script's
    /// own statements answer. On PostgreSQL each is a statement of its own.
    pub(crate) async fn run_between(
        self,
        conn: &mut AnyConnection,
        before: &[&str],
        after: &[&str],
    ) -> Result<Answers> {
        let expected = self.statements.len();
        let answers = match self.backend {
            Backend::Sqlite if expected + before.len() + after.len() > 0 => {
                let (body, args) = self.joined()?;
                let sql: Vec<&str> = before
                    .iter()
                    .copied()
                    .chain(Some(body.as_str()).filter(|b| !b.is_empty()))
                    .chain(after.iter().copied())
                    .collect();
                let mut answers = collect(conn.fetch_many(sqlx::query_with(&sql.join(";\n"), args))).await?;
                let framed = expected + before.len() + after.len();
                if answers.len() != framed {
                    return Err(StoreError::Corrupt(format!(
                        "a script of {framed} statements answered for {}",
                        answers.len()
                    )));
                }
                answers.truncate(answers.len() - after.len());
                answers.drain(..before.len());
                answers
            }
            Backend::Sqlite => Vec::new(),
            Backend::Postgres => {
                for statement in before {
                    sqlx::query(statement).execute(&mut *conn).await?;
                }
                let mut answers = Vec::with_capacity(expected);
                for (sql, args) in self.statements {
                    answers.extend(collect(conn.fetch_many(sqlx::query_with(&sql, args))).await?);
                }
                for statement in after {
                    sqlx::query(statement).execute(&mut *conn).await?;
                }
                if answers.len() != expected {
                    return Err(StoreError::Corrupt(format!(
                        "a script of {expected} statements answered for {}",
                        answers.len()
                    )));
                }
                answers
            }
        };
        Ok(Answers(answers))
    }

    /// SQLite: the statements as one text with anonymous placeholders, and
    /// the arguments in the order those appear.
    fn joined(self) -> Result<(String, AnyArguments<'q>)> {
        let mut sql = String::new();
        let mut args = AnyArguments::default();
        for (text, own) in self.statements {
            if !sql.is_empty() {
                sql.push_str(";\n");
            }
            let order = anonymize(&text, &mut sql)?;
            let values = &own.values.0;
            args.reserve(order.len(), 0);
            for i in order {
                let value = values.get(i).ok_or_else(|| {
                    StoreError::Invalid(format!("a statement has no argument {} for its placeholder", i + 1))
                })?;
                args.values.0.push(value.clone());
            }
        }
        Ok((sql, args))
    }
}

/// The answers of a script's statements.
#[derive(Default)]
pub(crate) struct Answers(Vec<Answer>);

impl Answers {
    /// The answer of the statement at `slot`.
    pub fn take(&mut self, slot: Slot) -> Answer {
        self.0.get_mut(slot.0).map(std::mem::take).unwrap_or_default()
    }
}

/// Read a `fetch_many` stream into one answer per statement: its rows come
/// first, then its "done".
async fn collect(
    mut stream: futures_util::stream::BoxStream<'_, sqlx::Result<Either<sqlx::any::AnyQueryResult, AnyRow>>>,
) -> Result<Vec<Answer>> {
    let mut answers = Vec::new();
    let mut current = Answer::default();
    while let Some(item) = stream.try_next().await? {
        match item {
            Either::Right(row) => current.rows.push(row),
            Either::Left(done) => {
                current.rows_affected = done.rows_affected();
                answers.push(std::mem::take(&mut current));
            }
        }
    }
    Ok(answers)
}

/// Append `text` to `out` with each placeholder (`$n` or `?`) made an
/// anonymous `?`; returns, for each placeholder in order, the index of the
/// statement's own argument it stands for. Quoted text (`'...'`, `"..."`)
/// is copied as it is: `'$[1]'` is a JSON path, not a parameter.
fn anonymize(text: &str, out: &mut String) -> Result<Vec<usize>> {
    let mut order = Vec::new();
    let mut anonymous = 0;
    let mut chars = text.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((_, c)) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                out.push(c);
            }
            '?' => {
                if chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) {
                    return Err(StoreError::Invalid("a script statement uses a `?NNN` placeholder".into()));
                }
                order.push(anonymous);
                anonymous += 1;
                out.push('?');
            }
            '$' if chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) => {
                let mut n = 0usize;
                while let Some(&(_, d)) = chars.peek() {
                    let Some(digit) = d.to_digit(10) else { break };
                    n = n * 10 + digit as usize;
                    chars.next();
                }
                if n == 0 {
                    return Err(StoreError::Invalid("a script statement uses the placeholder `$0`".into()));
                }
                order.push(n - 1);
                out.push('?');
            }
            _ => out.push(c),
        }
    }
    if anonymous > 0 && order.len() != anonymous {
        return Err(StoreError::Invalid("a script statement mixes `?` and `$n` placeholders".into()));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use sqlx::Row;

    use super::*;
    use crate::store::Store;
    use crate::store::testing::{TempPostgres, TempSqlite};

    fn rewrite(text: &str) -> (String, Vec<usize>) {
        let mut out = String::new();
        let order = anonymize(text, &mut out).unwrap();
        (out, order)
    }

    #[test]
    fn numbered_placeholders_become_anonymous_in_order_of_use() {
        assert_eq!(
            rewrite("UPDATE t SET a = $3, b = $1 WHERE c = $3 AND d = $10"),
            ("UPDATE t SET a = ?, b = ? WHERE c = ? AND d = ?".into(), vec![2, 0, 2, 9])
        );
        assert_eq!(rewrite("SELECT ?, ?"), ("SELECT ?, ?".into(), vec![0, 1]));
    }

    #[test]
    fn quoted_text_is_not_a_placeholder() {
        assert_eq!(
            rewrite("SELECT json_extract(value, '$[1]'), \"$2\", '?' FROM json_each($1)"),
            ("SELECT json_extract(value, '$[1]'), \"$2\", '?' FROM json_each(?)".into(), vec![0])
        );
    }

    #[test]
    fn mixed_or_numbered_question_marks_are_refused() {
        assert!(anonymize("SELECT ?, $1", &mut String::new()).is_err());
        assert!(anonymize("SELECT ?1", &mut String::new()).is_err());
        assert!(anonymize("SELECT $0", &mut String::new()).is_err());
    }

    /// The same script on both backends: answers per statement, later
    /// statements seeing earlier writes, a failure ending it.
    async fn script_answers_each_statement(store: &Store) {
        let mut conn = store.pool().acquire().await.unwrap();
        sqlx::query("CREATE TABLE script_t (k TEXT PRIMARY KEY, n BIGINT NOT NULL)").execute(&mut *conn).await.unwrap();
        let mut script = Script::new(store.backend());
        let insert = script
            .push(sqlx::query("INSERT INTO script_t (k, n) VALUES ($1, $2), ($3, $2)").bind("a").bind(5_i64).bind("b"))
            .unwrap();
        let bump =
            script.push(sqlx::query("UPDATE script_t SET n = n + $1 WHERE k = $2").bind(1_i64).bind("a")).unwrap();
        let read = script.push(sqlx::query("SELECT k, n FROM script_t WHERE n >= $1 ORDER BY k").bind(5_i64)).unwrap();
        let none = script.push(sqlx::query("DELETE FROM script_t WHERE k = $1").bind("zz")).unwrap();
        let mut answers = script.run(&mut conn).await.unwrap();
        assert_eq!(answers.take(insert).rows_affected, 2);
        assert_eq!(answers.take(bump).rows_affected, 1);
        let rows = answers.take(read).rows;
        let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(got, vec![("a".into(), 6), ("b".into(), 5)]);
        assert_eq!(answers.take(none).rows_affected, 0);

        let mut failing = Script::new(store.backend());
        failing.push(sqlx::query("UPDATE script_t SET n = 0 WHERE k = $1").bind("b")).unwrap();
        failing.push(sqlx::query("INSERT INTO script_t (k, n) VALUES ($1, $2)").bind("a").bind(1_i64)).unwrap();
        failing.push(sqlx::query("UPDATE script_t SET n = 100 WHERE k = $1").bind("a")).unwrap();
        assert!(failing.run(&mut conn).await.is_err(), "the duplicate key fails the script");
        let a: i64 = sqlx::query_scalar("SELECT n FROM script_t WHERE k = 'a'").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(a, 6, "no statement after the failing one ran");
        assert!(Script::new(store.backend()).run(&mut conn).await.unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn a_script_answers_each_statement_on_sqlite() {
        let db = TempSqlite::new();
        script_answers_each_statement(&db.open().await.unwrap()).await;
    }

    #[tokio::test]
    async fn a_script_answers_each_statement_on_postgres() {
        let db = TempPostgres::create().await.unwrap();
        script_answers_each_statement(&db.open().await.unwrap()).await;
    }
}
