//! Throwaway databases for tests: [`TempSqlite`], a SQLite file under the
//! system temp folder, and [`TempPostgres`], a fresh PostgreSQL database.
//! Both are removed when the guard is dropped, also when a test panics
//! (dropping runs during unwinding).
//!
//! PostgreSQL is reached at `CAIRN_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres` (the developers' machines
//! and CI run one there). When it is unreachable, [`TempPostgres::create`]
//! fails with a message saying so: tests must not skip silently.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sqlx::{Connection, Executor, PgConnection};

use crate::store::Store;

/// The variable naming the PostgreSQL server for tests.
pub const POSTGRES_URL_ENV: &str = "CAIRN_TEST_POSTGRES_URL";
/// The server used when the variable is unset.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn random_suffix() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// A SQLite file path that nothing else uses; the file (and its WAL and
/// shared-memory files) is deleted on drop.
#[derive(Debug)]
pub struct TempSqlite {
    path: PathBuf,
}

impl TempSqlite {
    /// A new unique path (the file is created by [`Store::open`]).
    pub fn new() -> TempSqlite {
        let name = format!("cairn-test-{}-{}.db", std::process::id(), random_suffix());
        TempSqlite { path: std::env::temp_dir().join(name) }
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a string, for [`Store::open`].
    pub fn url(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Open a store on this file.
    pub async fn open(&self) -> anyhow::Result<Store> {
        Store::open(&self.url()).await.with_context(|| format!("opening SQLite store at {}", self.path.display()))
    }
}

impl Default for TempSqlite {
    fn default() -> Self {
        TempSqlite::new()
    }
}

impl Drop for TempSqlite {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A fresh PostgreSQL database `cairn_test_<random>`, dropped (`WITH
/// (FORCE)`, so open connections do not keep it alive) when this guard is.
#[derive(Debug)]
pub struct TempPostgres {
    admin_url: String,
    name: String,
    url: String,
}

impl TempPostgres {
    /// Create the database on the server named by [`POSTGRES_URL_ENV`].
    pub async fn create() -> anyhow::Result<TempPostgres> {
        let admin_url = std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let mut conn = PgConnection::connect(&admin_url).await.with_context(|| {
            format!(
                "PostgreSQL at {admin_url} is unreachable: start it, or point {POSTGRES_URL_ENV} at a server \
                 where this user may create databases"
            )
        })?;
        let name = format!("cairn_test_{}", random_suffix());
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .with_context(|| format!("creating database {name} at {admin_url}"))?;
        let _ = conn.close().await;
        let url = with_database(&admin_url, &name);
        Ok(TempPostgres { admin_url, name, url })
    }

    /// The URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Open a store on this database.
    pub async fn open(&self) -> anyhow::Result<Store> {
        Store::open(&self.url).await.with_context(|| format!("opening PostgreSQL store {}", self.name))
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside (or while unwinding out of)
        // a runtime: do the work on a thread with a runtime of its own.
        let admin = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    if let Err(e) = conn.execute(sql.as_str()).await {
                        eprintln!("could not drop test database: {e}");
                    }
                    let _ = conn.close().await;
                }
            });
        });
        let _ = worker.join();
    }
}

/// `url` with its database name replaced by `name` (query string kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_swapped_in_the_url() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(with_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }
}
