//! The customer store: tenants and their API keys, contacts, companies,
//! deals, tasks, notes, the event log and pipeline queue, plugin versions,
//! installs and their state, score thresholds, the history of plugin calls,
//! and versioned workflows with their durable runs, over sqlx on SQLite (the
//! embedded default, one file) or PostgreSQL (several host processes sharing
//! one database).
//!
//! Every function that touches tenant data takes the tenant id and filters on
//! it, so an id of another tenant behaves exactly like an id that does not
//! exist: lookups return `None`, mutations `false` or `None`.
//!
//! ## Time
//! Business times the store writes (`created_at`, `updated_at`, event times,
//! task, note and score-change times) come from the store's [`Clock`]
//! ([`Store::with_clock`]), so a test or the demo running on a manual clock
//! sees one consistent time. Leases on claimed work (events, runs,
//! schedules) use the system clock ([`now_ms`]) whatever the clock: they say
//! whether a worker process is still alive, which business time cannot.
//!
//! ## Layout
//! - this file: [`Store`], opening a database, backend detection, migrations,
//!   ids and clocks.
//! - `error`: [`StoreError`].
//! - `value`: [`Value`] and [`Properties`], typed property values and their JSON.
//! - `sql`: placeholders, chunking and row helpers shared by the queries.
//! - `script`: several statements in one round trip ([`ScriptTx`]).
//! - `tenants`: tenants and hashed API keys.
//! - `contacts`: contacts, tags, score and lifecycle stage; the events their
//!   changes emit (`contact_created`, `property_changed`, ...).
//! - `crm`: companies, deals, tasks and notes.
//! - `events`: durable event ingest (batches, group commit), the pipeline
//!   queue, event reads and the contact timeline.
//! - `plugins`: plugin versions and bytes, installs, per-install state.
//! - `automation`: lifecycle score thresholds.
//! - `batch`: batched reads and one-transaction writes for the pipeline.
//! - `invocations`: recorded plugin calls.
//! - `install_history`: every change of the version an install runs.
//! - `workflows`: versioned workflow definitions, activation, due schedules.
//! - `runs`: workflow runs (enrollment rules, due timers, progress, retries)
//!   and their step records.
//! - [`write_gate`]: SQLite's one writer, shared fairly between tenants.
//! - [`testing`]: throwaway SQLite files and PostgreSQL databases for tests.
//!
//! ## Why sqlx's `Any` driver
//! One set of queries serves both backends: `$N` placeholders work on both
//! (statements with hundreds of parameters use `?` on SQLite, see `sql`),
//! and the schema sticks to types `Any` reads on both (TEXT, BIGINT, DOUBLE
//! PRECISION, BLOB/BYTEA; JSON as TEXT, times as epoch ms, booleans as 0/1).
//! The few real differences (row locks, `BEGIN IMMEDIATE`, BYTEA) are a
//! [`Backend`] match or a migration file. The cost, an argument and row
//! conversion per query, is small next to a database round trip.
//!
//! Migrations live in `host/migrations/{sqlite,postgres}` and are embedded
//! with `sqlx::migrate!`; [`Store::open`] applies them.

mod automation;
mod batch;
mod coalesce;
mod contacts;
mod crm;
mod error;
mod events;
mod install_history;
mod invocations;
mod ownership;
mod plugins;
mod runs;
mod script;
mod sql;
mod tenants;
#[doc(hidden)]
pub mod testing;
mod value;
mod workflows;
mod write_gate;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyTransactionManager};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Transaction, TransactionManager};
use tokio::sync::{Mutex as AsyncMutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::clock::Clock;
use write_gate::WriteGate;
pub(crate) use write_gate::Writer;

pub use automation::LifecycleThreshold;
pub use batch::{ContactUpdate, History, StageChange};
pub use contacts::{Contact, ContactFilter, ContactPatch, DEFAULT_STAGE, MAX_TAG, MAX_TAGS, NewContact, ScoreChange};
pub use crm::{
    Company, CompanyPatch, DEFAULT_DEAL_STAGE, Deal, DealFilter, DealPatch, MAX_NOTE, NewCompany, NewDeal, NewTask,
    Note, Task, TaskFilter, TaskPatch,
};
pub use error::{Result, StoreError};
pub use events::{
    CLAIM_LEASE_MS, Event, MAX_EVENTS_PER_BATCH, MAX_IDEMPOTENCY_KEY, MAX_KIND, MAX_RECENT, NewEvent, TimelineEntry,
};
pub use install_history::InstallChange;
pub use invocations::{
    InputStatus, InvocationCounts, InvocationFilter, InvocationRecord, MAX_ERROR_MESSAGE, MAX_INPUT_JSON,
    MAX_OUTPUT_JSON,
};
pub use ownership::SqliteOwner;
pub use plugins::{Install, InstallPatch, MAX_CONFIG_BYTES, MAX_STATE_KEY, MAX_STATE_VALUE, NewInstall, PluginVersion};
pub use runs::{
    DueClaim, EnrollOutcome, Enrollment, MAX_ENROLLMENT_KEY, MAX_STEP_JSON, Run, RunFilter, RunProgress, RunStep,
};
pub use tenants::{KEY_PREFIX, MAX_TIME_ZONE, Principal, Tenant};
pub use value::{MAX_PROPERTIES_BYTES, MAX_PROPERTY_NAME, Properties, TIMESTAMP_KEY, Value, merge_properties};
pub use workflows::{MAX_DEFINITION_BYTES, MAX_WORKFLOW_NAME, Workflow, WorkflowVersion};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Connections of a SQLite file's read pool: concurrent reads under WAL.
/// Writes have a connection of their own (see `Store::write_conn`).
const SQLITE_READ_CONNECTIONS: u32 = 7;
/// Connections per PostgreSQL pool, per host process.
const POSTGRES_CONNECTIONS: u32 = 16;
/// How long a query waits for a PostgreSQL connection before failing as
/// "unavailable" (the API's 503). The pool's default, 30 s, is how long a
/// client would hang while the server restarts: the pool keeps retrying the
/// refused connection until then.
const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a SQLite connection waits for the write lock before failing with
/// "database is locked".
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;
/// SQLite page cache per connection, KiB. The default 8 MiB is outgrown by
/// the event indexes early on, and every miss is a system call.
const SQLITE_CACHE_KIB: u32 = 16 << 10;
/// How often the WAL is copied back into the database file. Done by a
/// background task so that no commit pays for it: a checkpoint fsyncs the
/// database file, 5 to 25 ms on the CI machines, inside whichever commit
/// crossed the threshold when SQLite does it itself. Often, so that each
/// copies little: its writes and fsync still compete with the commits for
/// the disk, and a second's worth of WAL made some commits wait for them.
/// `cairn bench --noisy-only` (3 runs each, same sitting): a tenant's p99
/// alone 8.3–12.5 ms checkpointing every second, 6.0–6.2 ms every 200 ms;
/// the full `cairn bench` throughputs unchanged within noise.
const SQLITE_CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// WAL pages after which a commit checkpoints anyway (a backstop, should the
/// background task fall behind): about 40 MiB.
const SQLITE_WAL_BACKSTOP_PAGES: u32 = 10_000;

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// An embedded SQLite file (or an in-memory database).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend a database URL names: `postgres://` or `postgresql://`
    /// means PostgreSQL; anything else is a SQLite URL or file path.
    pub fn detect(url: &str) -> Backend {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// One page of a list, with the cursor for the next one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items of this page, in the list's order (id, that is creation,
    /// order unless the list call says otherwise).
    pub items: Vec<T>,
    /// Pass this as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// The customer store. Cheap to clone: clones share its connection pools.
#[derive(Clone, Debug)]
pub struct Store {
    /// Reads, and writes on PostgreSQL and on an in-memory SQLite database
    /// (a SQLite file writes on `write_conn`).
    pool: AnyPool,
    /// A SQLite file's write connection: one connection of its own, which
    /// only the holder of the write gate's turn uses (it comes with the
    /// turn, [`WriteTurn`]); `None` elsewhere, and once the store is
    /// closed. Why one connection: SQLite drops a connection's whole page
    /// cache when it begins a transaction after another connection wrote,
    /// so writes that took turns on the read pool's connections each began
    /// cold and read the b-tree pages of every table and index they touched
    /// again (from the WAL or the OS, a system call each), inside the turn
    /// every other tenant waits for. One writer keeps them cached between
    /// turns, and a turn never waits for a connection that reads hold.
    ///
    /// Why not a pool of one: sqlx pings every connection given back to its
    /// pool, a round trip to the connection's thread in a task of its own,
    /// after every write turn. Held here, the connection goes from turn to
    /// turn with nothing in between. Measured (`cairn bench --noisy-only`,
    /// B alone, two alternated rounds each): the process used 0.68 / 0.76
    /// cores against 0.86 / 0.90 with the pool; the turns themselves were
    /// no shorter beyond the noise (the ping mostly ran while the next
    /// writer was being woken).
    write_conn: Option<Arc<AsyncMutex<Option<AnyConnection>>>>,
    backend: Backend,
    /// Business time (see the module docs); the system clock unless
    /// [`Store::with_clock`] says otherwise.
    clock: Clock,
    /// SQLite's background checkpointer, stopped when the last clone goes.
    _checkpointer: Option<Arc<AbortOnDrop>>,
    /// SQLite admits one writer at a time. Writers of this process queue
    /// here, in order, instead of in SQLite's busy handler, which sleeps in
    /// growing steps (up to 100 ms) and lets a waiter starve: under load a
    /// plugin's host call waiting for the lock ran past its deadline.
    /// `None` on PostgreSQL (row locks, many writers).
    write_gate: Option<Arc<WriteGate>>,
    /// Small writes of one tenant queued at the write gate together share a
    /// turn (see [`coalesce`]). `None` on PostgreSQL.
    groups: Option<Arc<coalesce::Groups>>,
    /// How long a claim (of events, a run, a schedule) stays reserved for
    /// the process that made it: how soon another node resumes the work of
    /// one that died. [`CLAIM_LEASE_MS`] unless [`Store::with_claim_lease`].
    claim_lease_ms: i64,
}

/// A write transaction, holding the SQLite write gate until it ends.
/// Dereferences to the connection, like sqlx's `Transaction`.
pub(crate) struct WriteTx {
    // Declared before the turn, so dropped first: a transaction dropped
    // unfinished has queued its rollback on the write connection before the
    // next writer can have it.
    tx: Tx,
    _turn: WriteTurn,
}

/// The transaction of a [`WriteTx`].
enum Tx {
    /// On a connection of a pool (PostgreSQL, in-memory SQLite).
    Pooled(Transaction<'static, Any>),
    /// On a SQLite file's write connection.
    Held(HeldTx),
}

/// A SQLite file's write connection, locked by the turn that holds it.
type HeldConn = OwnedMappedMutexGuard<Option<AnyConnection>, AnyConnection>;

/// A transaction on the held write connection; rolled back when dropped
/// before it ended, as sqlx's `Transaction` is (the rollback is queued on
/// the connection's thread, ahead of anything the next writer sends).
struct HeldTx {
    conn: HeldConn,
    open: bool,
}

impl Drop for HeldTx {
    fn drop(&mut self) {
        if self.open {
            AnyTransactionManager::start_rollback(&mut self.conn);
        }
    }
}

/// The connection a [`WriteTurn`] writes on.
enum TurnConn {
    /// A SQLite file's write connection, which comes with the turn.
    Held(HeldConn),
    /// One taken from the pool for the turn's statements (PostgreSQL,
    /// in-memory SQLite).
    Pooled(PoolConnection<Any>),
}

/// This process's turn to write on SQLite, held until dropped (empty on
/// PostgreSQL).
pub(crate) struct WriteTurn {
    turn: Option<write_gate::Turn>,
    /// The connection to write on, when the turn has one (see
    /// [`WriteTurn::conn`]).
    conn: Option<TurnConn>,
    /// Where the turn was taken, for the slow-turn log.
    caller: &'static std::panic::Location<'static>,
}

impl std::fmt::Debug for WriteTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTurn").field("turn", &self.turn).field("caller", &self.caller).finish_non_exhaustive()
    }
}

/// A write turn held longer than this is logged (debug level) with the
/// code that took it: every other writer of the process waited as long.
const SLOW_WRITE_TURN: Duration = Duration::from_millis(20);

impl Drop for WriteTurn {
    fn drop(&mut self) {
        if let Some(turn) = &self.turn {
            let held = turn.since().elapsed();
            if held >= SLOW_WRITE_TURN {
                tracing::debug!(held_ms = held.as_millis() as u64, at = %self.caller, "slow SQLite write turn");
            }
            tracing::trace!(held_us = held.as_micros() as u64, writer = turn.key(), at = %self.caller, "SQLite write turn");
        }
    }
}

impl WriteTurn {
    /// The connection to write on in this turn, for statements outside a
    /// transaction: a SQLite file's write connection, which came with the
    /// turn; elsewhere one from `pool`, taken now and kept for the turn.
    pub(crate) async fn conn(&mut self, pool: &AnyPool) -> Result<&mut AnyConnection> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => TurnConn::Pooled(pool.acquire().await?),
        };
        Ok(match self.conn.insert(conn) {
            TurnConn::Held(conn) => conn,
            TurnConn::Pooled(conn) => conn,
        })
    }

    /// The result of a write made in this turn. A "database is locked"
    /// failure (SQLite waited its whole busy timeout) tells the writers
    /// queued behind this one to fail at once instead of waiting as long.
    pub(crate) fn check<T, E: Into<StoreError>>(&self, result: std::result::Result<T, E>) -> Result<T> {
        let result = result.map_err(Into::into);
        if let (Err(StoreError::Database(e)), Some(turn)) = (&result, &self.turn)
            && is_lock_timeout(e)
        {
            turn.gate().note_lock_timeout();
        }
        result
    }
}

/// SQLite's "database is locked" / "database is busy": the busy timeout ran
/// out waiting for another connection's write lock.
pub(crate) fn is_lock_timeout(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            let m = d.message();
            m.contains("database is locked") || m.contains("database is busy")
        }
        _ => false,
    }
}

impl WriteTx {
    /// Commit, then give the turn up. (Dropped unfinished, a transaction
    /// is rolled back before the next writer's.)
    pub(crate) async fn commit(self) -> Result<()> {
        let WriteTx { tx, _turn: turn } = self;
        match tx {
            Tx::Pooled(tx) => tx.commit().await?,
            Tx::Held(mut tx) => {
                // One that failed is still open: dropping `tx` rolls it back.
                AnyTransactionManager::commit(&mut tx.conn).await?;
                tx.open = false;
            }
        }
        drop(turn);
        Ok(())
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &Self::Target {
        match &self.tx {
            Tx::Pooled(tx) => tx,
            Tx::Held(tx) => &tx.conn,
        }
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.tx {
            Tx::Pooled(tx) => tx,
            Tx::Held(tx) => &mut tx.conn,
        }
    }
}

/// A write transaction whose statements go as [`script::Script`]s: on a
/// SQLite file, `BEGIN IMMEDIATE` rides in its first script and `COMMIT` in
/// its last, so a turn of two scripts is two round trips to the write
/// connection's thread, not one per statement plus two. Elsewhere it is a
/// transaction like [`WriteTx`]'s, each script a statement after another.
///
/// Why raw `BEGIN` and `COMMIT` rather than sqlx's transaction manager:
/// its `begin` is a round trip of its own, before the first statement can
/// be sent. sqlx's count of open transactions on the write connection then
/// stays at zero, as it is between its own transactions: a [`ScriptTx`]
/// always ends its transaction (commit, rollback, or a rollback queued when
/// dropped unfinished) before the connection goes to the next turn.
pub(crate) struct ScriptTx {
    // Before the turn, so dropped first (as in `WriteTx`).
    tx: ScriptConn,
    turn: WriteTurn,
}

enum ScriptConn {
    /// On a connection of a pool (PostgreSQL, in-memory SQLite).
    Pooled(Transaction<'static, Any>),
    /// On a SQLite file's write connection.
    Held(RawHeld),
}

/// A SQLite file's write connection in a [`ScriptTx`]: the transaction
/// sqlx does not know of, rolled back when dropped unfinished.
struct RawHeld {
    /// `None` once handed to the rollback queued on drop.
    conn: Option<HeldConn>,
    state: RawTx,
}

/// Where a [`ScriptTx`]'s raw transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawTx {
    /// Nothing sent yet: the next script begins it.
    NotBegun,
    /// `BEGIN` sent (possibly failed: a rollback of no transaction is harmless).
    Open,
    /// Committed or rolled back.
    Ended,
}

impl Drop for RawHeld {
    fn drop(&mut self) {
        if self.state != RawTx::Open {
            return;
        }
        let Some(mut conn) = self.conn.take() else { return };
        // The connection stays locked until the rollback ran: the next turn
        // waits for it (`Store::write_gate_for` locks the connection).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                    tracing::debug!("rolling back an unfinished SQLite write: {e}");
                }
            });
        }
    }
}

/// `BEGIN IMMEDIATE` when the raw transaction in `state` is not begun yet
/// (it is, once this is sent).
fn begin_if(state: &mut RawTx) -> &'static [&'static str] {
    if *state == RawTx::NotBegun {
        *state = RawTx::Open;
        &["BEGIN IMMEDIATE"]
    } else {
        &[]
    }
}

impl ScriptTx {
    /// Run `script` in the transaction.
    pub(crate) async fn run(&mut self, script: script::Script<'_>) -> Result<script::Answers> {
        match &mut self.tx {
            ScriptConn::Pooled(tx) => script.run(tx).await,
            ScriptConn::Held(RawHeld { conn: Some(conn), state }) => {
                let begin = begin_if(state);
                let answered = script.run_between(conn, begin, &[]).await;
                self.turn.check(answered)
            }
            ScriptConn::Held(RawHeld { conn: None, .. }) => Err(sqlx::Error::PoolClosed.into()),
        }
    }

    /// The connection, for statements that need an answer before the next
    /// can be written; begins the transaction first if no script has.
    pub(crate) async fn conn(&mut self) -> Result<&mut AnyConnection> {
        match &mut self.tx {
            ScriptConn::Pooled(tx) => Ok(&mut **tx),
            ScriptConn::Held(RawHeld { conn: Some(conn), state }) => {
                if *state == RawTx::NotBegun {
                    *state = RawTx::Open;
                    let begun = sqlx::query("BEGIN IMMEDIATE").execute(&mut **conn).await;
                    self.turn.check(begun)?;
                }
                Ok(&mut **conn)
            }
            ScriptConn::Held(RawHeld { conn: None, .. }) => Err(sqlx::Error::PoolClosed.into()),
        }
    }

    /// Run `script` in a savepoint of its own: when one of its statements
    /// fails, what the others wrote is rolled back and the transaction goes
    /// on (one round trip on a SQLite file, one more when it fails).
    pub(crate) async fn run_in_savepoint(&mut self, script: script::Script<'_>) -> Result<script::Answers> {
        const SAVEPOINT: &str = "SAVEPOINT script";
        const RELEASE: &str = "RELEASE script";
        let result = match &mut self.tx {
            ScriptConn::Pooled(tx) => script.run_between(tx, &[SAVEPOINT], &[RELEASE]).await,
            ScriptConn::Held(RawHeld { conn: Some(conn), state }) => {
                let before: Vec<&str> = begin_if(state).iter().copied().chain([SAVEPOINT]).collect();
                script.run_between(conn, &before, &[RELEASE]).await
            }
            ScriptConn::Held(RawHeld { conn: None, .. }) => return Err(sqlx::Error::PoolClosed.into()),
        };
        let result = self.turn.check(result);
        if result.is_err() {
            let conn = self.conn().await?;
            sqlx::query("ROLLBACK TO script").execute(&mut *conn).await?;
            sqlx::query(RELEASE).execute(&mut *conn).await?;
        }
        result
    }

    /// Run `script` and commit, in one round trip on a SQLite file.
    pub(crate) async fn commit_with(self, script: script::Script<'_>) -> Result<script::Answers> {
        let ScriptTx { tx, turn } = self;
        match tx {
            ScriptConn::Pooled(mut tx) => {
                let answers = script.run(&mut tx).await?;
                tx.commit().await?;
                Ok(answers)
            }
            ScriptConn::Held(mut raw) => {
                let Some(conn) = raw.conn.as_mut() else { return Err(sqlx::Error::PoolClosed.into()) };
                if raw.state == RawTx::NotBegun && script.is_empty() {
                    raw.state = RawTx::Ended;
                    return Ok(script::Answers::default());
                }
                let begin = begin_if(&mut raw.state);
                let answered = script.run_between(conn, begin, &["COMMIT"]).await;
                let answers = turn.check(answered)?;
                raw.state = RawTx::Ended;
                Ok(answers)
            }
        }
    }
}

/// A task that ends when this handle is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A new unique, time-ordered id (uuid v7 text).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Now by the system clock, in epoch milliseconds. Business times use
/// [`Store::now`] instead; this is for leases and anything about real time.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Store {
    /// Open the database at `url` and bring its schema up to date.
    ///
    /// - `postgres://...` / `postgresql://...`: a PostgreSQL server.
    /// - `sqlite:path`, `sqlite://path` or a plain file path: a SQLite file,
    ///   created when missing, in WAL mode with `synchronous=NORMAL` (a
    ///   killed process loses nothing committed; a power cut may lose the
    ///   last commits) and a busy timeout; reads go to a pool of connections,
    ///   write transactions to one connection of their own. A background
    ///   task checkpoints the WAL every 200 ms, so commits do not pay for
    ///   it; it stops when the last clone of the store is dropped.
    /// - `sqlite::memory:`: a private in-memory database (one connection;
    ///   gone when the store is dropped), for tests and dry runs.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        match Backend::detect(url) {
            Backend::Postgres => {
                // Connections are tested before use (the pool's default), so the ones
                // a restarted server dropped are replaced, not handed out.
                let pool = AnyPoolOptions::new()
                    .max_connections(POSTGRES_CONNECTIONS)
                    .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
                    .connect(url)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                Ok(Store {
                    write_conn: None,
                    pool,
                    backend: Backend::Postgres,
                    clock: Clock::System,
                    _checkpointer: None,
                    write_gate: None,
                    groups: None,
                    claim_lease_ms: CLAIM_LEASE_MS,
                })
            }
            Backend::Sqlite => Self::open_sqlite(url).await,
        }
    }

    async fn open_sqlite(url: &str) -> Result<Store> {
        let (url, in_memory) = sqlite_url(url)?;
        let options: AnyConnectOptions = url.parse()?;
        if in_memory {
            // Each connection to `:memory:` would be a separate database: keep
            // exactly one, forever, for reads and writes alike.
            let pool = sqlite_pool(1).connect_with(options).await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            return Ok(Store::sqlite(pool, None, None));
        }
        // WAL is a property of the file; set it once, before the pools, so
        // no pooled connection races for the exclusive lock it needs.
        let mut conn = sqlx::AnyConnection::connect_with(&options).await?;
        conn.execute("PRAGMA journal_mode = WAL").await?;
        conn.close().await?;
        let pool = sqlite_pool(SQLITE_READ_CONNECTIONS).connect_with(options.clone()).await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        let mut writer = AnyConnection::connect_with(&options).await?;
        configure_sqlite(&mut writer).await?;
        let checkpointer = Arc::new(AbortOnDrop(tokio::spawn(checkpoint_loop(pool.clone()))));
        // Claims left by a previous run are released by the serving process
        // once it holds the file (`take_ownership`), not by every opener.
        Ok(Store::sqlite(pool, Some(writer), Some(checkpointer)))
    }

    /// A SQLite store reading on `pool` and writing on `writer` (a file's
    /// write connection), or on `pool` too without one (in memory).
    fn sqlite(pool: AnyPool, writer: Option<AnyConnection>, checkpointer: Option<Arc<AbortOnDrop>>) -> Store {
        Store {
            write_conn: writer.map(|conn| Arc::new(AsyncMutex::new(Some(conn)))),
            pool,
            backend: Backend::Sqlite,
            clock: Clock::System,
            _checkpointer: checkpointer,
            write_gate: Some(Arc::default()),
            groups: Some(Arc::default()),
            claim_lease_ms: CLAIM_LEASE_MS,
        }
    }

    /// This store with claims reserved for `lease` (default [`CLAIM_LEASE_MS`]).
    /// Shorter resumes a dead node's work sooner; it must stay well above the
    /// longest plugin call, or a slow step could be claimed again while it runs.
    pub fn with_claim_lease(mut self, lease: Duration) -> Store {
        self.claim_lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1);
        self
    }

    /// How long a claim made now stays reserved, ms.
    pub(crate) fn claim_lease_ms(&self) -> i64 {
        self.claim_lease_ms
    }

    /// This store with `clock` as its business time (for a manual clock in
    /// tests and the demo; the engine should be given the same clock).
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
    }

    /// The store's business clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Business time now, epoch ms (see the module docs).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for callers that keep tables of their own in the
    /// same database. Store tables are reached through the methods.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Check that the database answers (for `/healthz`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Close every connection; later calls fail.
    pub async fn close(&self) {
        if let Some(conn) = &self.write_conn {
            // Waits for the turn that holds it, if any.
            let conn = conn.lock().await.take();
            if let Some(conn) = conn
                && let Err(e) = conn.close().await
            {
                tracing::debug!("closing the SQLite write connection: {e}");
            }
        }
        self.pool.close().await;
    }

    /// Begin a transaction that will write, for no one tenant (see
    /// [`Store::begin_write_for`]).
    #[track_caller]
    pub(crate) fn begin_write(&self) -> impl std::future::Future<Output = Result<WriteTx>> + Send + '_ {
        self.begin_write_for(Writer::Shared)
    }

    /// Begin a transaction that will write, for `writer` (where it queues
    /// on SQLite: see [`write_gate`]). On SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`): a deferred transaction that reads and then
    /// writes can fail with "database is locked" without waiting.
    #[track_caller]
    pub(crate) fn begin_write_for<'a>(
        &'a self,
        writer: Writer<'a>,
    ) -> impl std::future::Future<Output = Result<WriteTx>> + Send + 'a {
        let turn = self.write_gate_for(writer);
        async move { self.begin_write_in(turn.await?).await }
    }

    async fn begin_write_in(&self, mut turn: WriteTurn) -> Result<WriteTx> {
        let tx = match (self.backend, turn.conn.take()) {
            (Backend::Sqlite, Some(TurnConn::Held(mut conn))) => {
                let begun = AnyTransactionManager::begin(&mut conn, Some("BEGIN IMMEDIATE".into())).await;
                turn.check(begun)?;
                Tx::Held(HeldTx { conn, open: true })
            }
            (Backend::Sqlite, _) => {
                let begun = self.pool.begin_with("BEGIN IMMEDIATE").await;
                Tx::Pooled(turn.check(begun)?)
            }
            (Backend::Postgres, _) => Tx::Pooled(self.pool.begin().await?),
        };
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Begin a [`ScriptTx`] for `writer` (where it queues on SQLite: see
    /// [`write_gate`]). On a SQLite file nothing is sent yet: its first
    /// script begins it (`BEGIN IMMEDIATE`, for the reason
    /// [`Store::begin_write_for`] gives).
    #[track_caller]
    pub(crate) fn begin_script_for<'a>(
        &'a self,
        writer: Writer<'a>,
    ) -> impl std::future::Future<Output = Result<ScriptTx>> + Send + 'a {
        let turn = self.write_gate_for(writer);
        async move { self.begin_script_in(turn.await?).await }
    }

    /// [`Store::begin_script_for`] in a turn already taken.
    pub(crate) async fn begin_script_in(&self, mut turn: WriteTurn) -> Result<ScriptTx> {
        let tx = match (self.backend, turn.conn.take()) {
            (Backend::Sqlite, Some(TurnConn::Held(conn))) => {
                ScriptConn::Held(RawHeld { conn: Some(conn), state: RawTx::NotBegun })
            }
            (Backend::Sqlite, _) => {
                let begun = self.pool.begin_with("BEGIN IMMEDIATE").await;
                ScriptConn::Pooled(turn.check(begun)?)
            }
            (Backend::Postgres, _) => ScriptConn::Pooled(self.pool.begin().await?),
        };
        Ok(ScriptTx { tx, turn })
    }

    /// Wait for this process's turn to write, for no one tenant (see
    /// [`Store::write_gate_for`]).
    #[track_caller]
    pub(crate) fn write_gate(&self) -> impl std::future::Future<Output = Result<WriteTurn>> + Send + '_ {
        self.write_gate_for(Writer::Shared)
    }

    /// Wait for this process's turn to write for `writer` (SQLite, fairly
    /// between tenants: see [`write_gate`]; nothing on PostgreSQL).
    /// Statements that write outside [`Store::begin_write`] hold it while
    /// they run and pass their result through [`WriteTurn::check`].
    ///
    /// [`StoreError::Locked`] when, while this writer waited, one ahead of
    /// it gave up on SQLite's write lock after the whole busy timeout:
    /// another program holds the file, and queued writers would each wait
    /// that long again in turn (a client's request behind three background
    /// writers would hang for four timeouts instead of failing after one).
    #[track_caller]
    pub(crate) fn write_gate_for<'a>(
        &'a self,
        writer: Writer<'a>,
    ) -> impl std::future::Future<Output = Result<WriteTurn>> + Send + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let Some(gate) = &self.write_gate else {
                return Ok(WriteTurn { turn: None, conn: None, caller });
            };
            let seen = gate.lock_timeouts();
            let asked = std::time::Instant::now();
            let turn = gate.turn(writer).await;
            let waited = asked.elapsed();
            if waited >= SLOW_WRITE_TURN {
                tracing::debug!(waited_ms = waited.as_millis() as u64, at = %caller, "slow SQLite write wait");
            }
            tracing::trace!(waited_us = waited.as_micros() as u64, writer = turn.key(), at = %caller, "SQLite write wait");
            if gate.lock_timeouts() != seen {
                return Err(StoreError::Locked);
            }
            // The gate admits one writer at a time: the lock is free, unless
            // the store is closing.
            let conn = match &self.write_conn {
                Some(conn) => {
                    let conn = OwnedMutexGuard::try_map(conn.clone().lock_owned().await, Option::as_mut)
                        .map_err(|_| sqlx::Error::PoolClosed)?;
                    Some(TurnConn::Held(conn))
                }
                None => None,
            };
            Ok(WriteTurn { turn: Some(turn), conn, caller })
        }
    }

    /// Row lock for read-modify-write selects inside a write transaction
    /// (SQLite needs none: `BEGIN IMMEDIATE` already excludes other writers).
    pub(crate) fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }
}

/// A pool of `connections` SQLite connections, all opened at once and kept.
///
/// No test before each use (the pool's default pings the connection): a
/// SQLite connection is a file handle in this process, not a link that can
/// drop, and the ping is one more round trip to its thread on every query
/// (B's events in `cairn bench --noisy-only`: p50 4.9 ms against 5.3–5.5).
///
/// Every connection opened now and kept: each has a thread of its own, and
/// a thread inherits the priority of the thread that starts it. Opened on
/// demand, a connection could be started by a plugin's host call on the
/// lowest-priority background runtime (`runtime::background`), and every
/// tenant's queries that land on it would then run at that priority.
fn sqlite_pool(connections: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .min_connections(connections)
        .max_connections(connections)
        .idle_timeout(None)
        .max_lifetime(None)
        .test_before_acquire(false)
        .after_connect(|conn, _meta| Box::pin(configure_sqlite(conn)))
}

/// Settings of every SQLite connection, pooled or not.
async fn configure_sqlite(conn: &mut AnyConnection) -> sqlx::Result<()> {
    // Per connection: WAL + NORMAL syncs at checkpoints, not at every
    // commit; foreign keys enforce cascades.
    conn.execute("PRAGMA synchronous = NORMAL").await?;
    conn.execute(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str()).await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    conn.execute(format!("PRAGMA cache_size = -{SQLITE_CACHE_KIB}").as_str()).await?;
    conn.execute(format!("PRAGMA wal_autocheckpoint = {SQLITE_WAL_BACKSTOP_PAGES}").as_str()).await?;
    Ok(())
}

/// Copy the WAL back into the database file every
/// [`SQLITE_CHECKPOINT_EVERY`], without blocking writers (`PASSIVE`), until
/// the pool closes or the store is dropped.
async fn checkpoint_loop(pool: AnyPool) {
    loop {
        tokio::time::sleep(SQLITE_CHECKPOINT_EVERY).await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            if pool.is_closed() {
                return;
            }
            tracing::warn!("SQLite checkpoint failed (the next commit past the backstop will do it): {e}");
        }
    }
}

/// Turn a SQLite URL or file path into a sqlx URL that creates the file when
/// missing. Returns the URL and whether it is an in-memory database.
fn sqlite_url(input: &str) -> Result<(String, bool)> {
    if input == "sqlite::memory:" || input == ":memory:" || input.starts_with("sqlite::memory:?") {
        return Ok(("sqlite::memory:".to_owned(), true));
    }
    if let Some(rest) = input.strip_prefix("sqlite:") {
        if rest.is_empty() || rest == "//" {
            return Err(StoreError::UnsupportedUrl(input.to_owned()));
        }
        let url = if rest.contains("mode=") {
            input.to_owned()
        } else if rest.contains('?') {
            format!("{input}&mode=rwc")
        } else {
            format!("{input}?mode=rwc")
        };
        return Ok((url, false));
    }
    if input.is_empty() || input.contains("://") {
        return Err(StoreError::UnsupportedUrl(input.to_owned()));
    }
    // A plain path: percent-encode everything but the obviously safe bytes,
    // so `?`, `#`, `%` and spaces in file names survive URL parsing.
    let mut url = String::from("sqlite:");
    for b in input.bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    Ok((url, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_detected_from_the_url_scheme() {
        assert_eq!(Backend::detect("postgres://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::detect("postgresql://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::detect("cairn.db"), Backend::Sqlite);
        assert_eq!(Backend::detect("sqlite:cairn.db"), Backend::Sqlite);
    }

    #[test]
    fn sqlite_paths_become_urls_that_create_the_file() -> Result<()> {
        assert_eq!(sqlite_url("cairn.db")?, ("sqlite:cairn.db?mode=rwc".to_owned(), false));
        assert_eq!(sqlite_url("/tmp/a b?.db")?, ("sqlite:/tmp/a%20b%3F.db?mode=rwc".to_owned(), false));
        assert_eq!(sqlite_url("sqlite://x.db")?, ("sqlite://x.db?mode=rwc".to_owned(), false));
        assert_eq!(sqlite_url("sqlite:x.db?mode=ro")?, ("sqlite:x.db?mode=ro".to_owned(), false));
        assert!(sqlite_url("sqlite::memory:")?.1);
        assert!(sqlite_url("mysql://x").is_err());
        Ok(())
    }
}

#[cfg(test)]
mod writer_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use sqlx::Row;

    use super::*;
    use crate::store::testing::TempSqlite;

    /// A `TEMP` table lives in the connection that made it: seen again by a
    /// later write, it shows every write transaction ran on one connection
    /// (whose page cache then stays warm between turns); unseen by reads, it
    /// shows they run elsewhere.
    #[tokio::test]
    async fn write_transactions_share_one_connection_that_reads_do_not_use() {
        let db = TempSqlite::new();
        let store = db.open().await.unwrap();
        write(&store, "CREATE TEMP TABLE marker (x INTEGER)").await;
        // Every connection of the read pool, held at once so each is a
        // different one.
        let mut readers = Vec::new();
        for _ in 0..SQLITE_READ_CONNECTIONS {
            readers.push(store.pool().acquire().await.unwrap());
        }
        for conn in &mut readers {
            let n: i64 = sqlx::query("SELECT COUNT(*) FROM sqlite_temp_master WHERE name = 'marker'")
                .fetch_one(&mut **conn)
                .await
                .unwrap()
                .try_get(0)
                .unwrap();
            assert_eq!(n, 0, "a read connection holds the writer's temp table");
        }
        drop(readers);
        for _ in 0..3 {
            write(&store, "INSERT INTO marker VALUES (1)").await;
        }
    }

    /// Run `sql` in a write transaction of its own.
    async fn write(store: &Store, sql: &str) {
        let mut tx = store.begin_write().await.unwrap();
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// The write connection goes from turn to turn without a pool's check in
    /// between: a transaction dropped unfinished (its caller failed or was
    /// cancelled) must still be rolled back before the next writer's.
    #[tokio::test]
    async fn a_write_dropped_unfinished_is_rolled_back_before_the_next_one() {
        let db = TempSqlite::new();
        let store = db.open().await.unwrap();
        write(&store, "CREATE TABLE kept (x INTEGER)").await;

        let mut tx = store.begin_write().await.unwrap();
        sqlx::query("INSERT INTO kept VALUES (1)").execute(&mut *tx).await.unwrap();
        drop(tx);
        let mut turn = store.write_gate().await.unwrap();
        let done = sqlx::query("INSERT INTO kept VALUES (2)").execute(turn.conn(&store.pool).await.unwrap()).await;
        turn.check(done).unwrap();
        drop(turn);
        let mut tx = store.begin_write().await.unwrap();
        sqlx::query("INSERT INTO kept VALUES (3)").execute(&mut *tx).await.unwrap();
        drop(tx);

        let rows: Vec<i64> = sqlx::query_scalar("SELECT x FROM kept ORDER BY x").fetch_all(store.pool()).await.unwrap();
        assert_eq!(rows, [2], "the dropped writes left nothing; the one between them stayed");
    }

    /// A [`ScriptTx`] begins and ends its transaction itself, inside its
    /// scripts: one dropped unfinished, or whose script failed, leaves
    /// nothing and the next writer (sqlx's transactions too) finds the
    /// connection out of any transaction; one committed keeps all of its
    /// scripts' writes.
    #[tokio::test]
    async fn a_script_transaction_commits_in_its_last_script_and_rolls_back_when_dropped() {
        let db = TempSqlite::new();
        let store = db.open().await.unwrap();
        write(&store, "CREATE TABLE kept (x INTEGER PRIMARY KEY)").await;
        let insert = |x: i64| sqlx::query("INSERT INTO kept VALUES ($1)").bind(x);
        let script = |xs: &[i64]| {
            let mut s = script::Script::new(Backend::Sqlite);
            for &x in xs {
                s.push(insert(x)).unwrap();
            }
            s
        };

        let mut tx = store.begin_script_for(Writer::Shared).await.unwrap();
        tx.run(script(&[1])).await.unwrap();
        drop(tx);
        let mut tx = store.begin_script_for(Writer::Shared).await.unwrap();
        assert!(tx.run(script(&[2, 2])).await.is_err(), "the duplicate key fails the script");
        drop(tx);
        let mut tx = store.begin_script_for(Writer::Shared).await.unwrap();
        tx.run(script(&[3])).await.unwrap();
        sqlx::query("INSERT INTO kept VALUES (4)").execute(tx.conn().await.unwrap()).await.unwrap();
        tx.commit_with(script(&[5])).await.unwrap();
        write(&store, "INSERT INTO kept VALUES (6)").await;
        let tx = store.begin_script_for(Writer::Shared).await.unwrap();
        tx.commit_with(script(&[])).await.unwrap();
        store.begin_script_for(Writer::Shared).await.unwrap().commit_with(script(&[7])).await.unwrap();

        let rows: Vec<i64> = sqlx::query_scalar("SELECT x FROM kept ORDER BY x").fetch_all(store.pool()).await.unwrap();
        assert_eq!(rows, [3, 4, 5, 6, 7], "the dropped and the failed transactions left nothing");
    }

    /// Closing a store closes its write connection too (a pool's close waits
    /// for every connection to come back: a held one never would), and
    /// writes after it fail instead of waiting.
    #[tokio::test]
    async fn a_closed_store_refuses_writes() {
        let db = TempSqlite::new();
        let store = db.open().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), store.close()).await.expect("close hung");
        let refused = tokio::time::timeout(Duration::from_secs(10), store.begin_write()).await.expect("write hung");
        assert!(refused.is_err());
    }
}
