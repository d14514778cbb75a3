//! Which process does the work stored in a SQLite file.
//!
//! Claims (of events, run steps, schedules) carry leases, and on SQLite the
//! server that starts releases every lease it finds: they can only be left
//! over from a previous run of the one process that serves the file. A
//! second `cairn serve` on the same file would release the first one's live
//! claims and process the same events twice, so it is refused: the serving
//! process holds an exclusive advisory lock (`flock`) on `<file>.serve-lock`
//! for as long as it runs. The kernel drops the lock when the process exits,
//! however it exits (a SIGKILL included), so a restart never finds a stale
//! lock. Other commands that open the file (`cairn tenant create`, tests
//! reading it) take no lock: they claim no work.
//!
//! PostgreSQL needs none of this: its claims are row locks with leases, and
//! several processes share one database by design.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::store::{Backend, Result, Store, StoreError};

/// Held by the one process serving a SQLite file; dropping it releases it.
#[derive(Debug)]
pub struct SqliteOwner {
    _file: File,
    path: PathBuf,
}

impl SqliteOwner {
    /// The lock file this owner holds.
    pub fn lock_path(&self) -> &Path {
        &self.path
    }
}

impl Store {
    /// Become the one process that serves this store's SQLite file: take the
    /// lock, then release the claims a previous run left behind. `None` for
    /// PostgreSQL and for in-memory databases, which need no owner.
    ///
    /// Fails with a message naming the process that serves the file when
    /// another one does.
    pub async fn take_ownership(&self) -> Result<Option<SqliteOwner>> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let Some(db_file) = self.sqlite_file().await? else { return Ok(None) };
        let mut lock_path = db_file.clone().into_os_string();
        lock_path.push(".serve-lock");
        let path = PathBuf::from(lock_path);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::Invalid(format!("cannot open the lock file {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
                return Err(StoreError::Invalid(format!(
                    "another Cairn server{who} is already serving the SQLite database {}: a SQLite file is served \
                     by one process at a time. Stop the other process, or use PostgreSQL \
                     (CAIRN_DATABASE_URL=postgres://...) to run several",
                    db_file.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::Invalid(format!("cannot lock {}: {e}", path.display())));
            }
        }
        // Who holds it, for the message another process would print.
        let _ = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| write!(file, "{}", std::process::id()));
        self.release_stale_claims().await?;
        Ok(Some(SqliteOwner { _file: file, path }))
    }

    /// The file of the main SQLite database, `None` in memory.
    async fn sqlite_file(&self) -> Result<Option<PathBuf>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as("PRAGMA database_list").fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .find(|(_, name, _)| name == "main")
            .map(|(_, _, file)| file)
            .filter(|f| !f.is_empty())
            .map(PathBuf::from))
    }

    /// Make claims left by a previous run of the owning process claimable
    /// right away: with one process per file, no live process holds them.
    async fn release_stale_claims(&self) -> Result<()> {
        for stale in [
            "UPDATE events SET lease_until = NULL WHERE processed = 0 AND lease_until IS NOT NULL",
            "UPDATE workflow_runs SET lease_until = NULL WHERE status = 'waiting' AND lease_until IS NOT NULL",
            "UPDATE workflows SET schedule_lease_until = NULL WHERE schedule_lease_until IS NOT NULL",
        ] {
            sqlx::query(stale).execute(&self.pool).await?;
        }
        Ok(())
    }
}
