//! Small writes of one tenant that queue for SQLite's writer at the same
//! moment share one turn and one transaction.
//!
//! Why: every turn at SQLite's one writer has a fixed cost (the turn
//! handed over, a pooled connection, `BEGIN IMMEDIATE`, `COMMIT`, a few
//! thread hops) of a few hundred microseconds on a busy 2-core machine,
//! more than a run save's statements themselves. And writes come in
//! bursts: sixteen runaway actions reach their deadline together and
//! sixteen run saves queue at once, or sixteen scorer calls fail together
//! and sixteen invocation records do. Taken one by one, each such write is
//! a turn another tenant's write may wait behind, and the burst interleaved
//! with a well-behaved tenant's own queued writes delayed the last of them
//! by 12–20 ms in `cairn bench --noisy-only` (the waiting phase). Grouped,
//! a burst costs a turn or two.
//!
//! How: the first writer of a tenant to arrive starts a leader task, which
//! waits for the tenant's turn at the write gate (fairly, as any of the
//! tenant's writes would: `store::write_gate`) and then takes the tenant's
//! queued writes into one transaction, one after the other, each in a
//! savepoint of its own (a write alone needs none): a write that fails is
//! rolled back alone and its caller gets its error; the others commit. It
//! stops taking writes when none is queued, at [`MAX_GROUP`], or when the
//! turn has lasted [`TURN_BUDGET`], commits, and queues for another turn if
//! writes are left; it ends when none is. It is a task of its own, not the
//! first caller's future, so a caller that stops waiting strands nobody (its
//! write still lands, like a commit already sent).
//!
//! PostgreSQL has no one writer: there every write is its own transaction
//! and nothing is queued here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::store::script::{Answers, Script};
use crate::store::write_gate::Writer;
use crate::store::{Result, Store, StoreError};

/// Writes one transaction takes at most.
const MAX_GROUP: usize = 32;

/// How long a group's turn goes on taking writes: a turn is what every
/// other tenant's write waits behind, whatever is in it. Each grouped write
/// is a round trip to SQLite's connection thread (its savepoint, statements
/// and release in one script; ~50–100 µs on the 2-core VM, more before
/// scripts, when each statement was one), so a group of a burst's writes
/// can still hold the writer for milliseconds. Traced in `cairn
/// bench --noisy-only --quick` (`RUST_LOG=cairn::store=trace`, one run
/// each): tenant A's grouped turns 10.2 ms at the 99th percentile (18 ms
/// at most) without this cap, 5.1 ms (14 ms) with it; tenant B's own turns
/// 0.6–0.7 ms at the median. What is left of A's long turns is single
/// writes whose round trips waited for a thread, not group size.
const TURN_BUDGET: Duration = Duration::from_millis(1);

/// One write: a script run inside the group's transaction, and what its
/// caller gets from the script's answers. Scripts, not code holding the
/// connection, so that a write goes to SQLite's connection thread in one
/// round trip, its savepoint and release (or the group's `BEGIN` and
/// `COMMIT`, for a write alone) riding in it (see `script`).
pub(crate) struct Job<T> {
    script: Script<'static>,
    /// Reads the caller's result from the answers; for a write alone it
    /// runs after the commit, so it must only read, never fail the write.
    read: Box<dyn FnOnce(Answers) -> Result<T> + Send>,
}

impl<T> Job<T> {
    pub(crate) fn new(script: Script<'static>, read: impl FnOnce(Answers) -> Result<T> + Send + 'static) -> Job<T> {
        Job { script, read: Box::new(read) }
    }
}

/// The store's coalescers, one per kind of grouped write (SQLite only).
#[derive(Debug, Default)]
pub(crate) struct Groups {
    /// Run saves (`Store::save_run_with_calls`).
    pub(crate) run_saves: Arc<Coalescer<bool>>,
    /// Invocation records (`Store::record_invocation`).
    pub(crate) invocations: Arc<Coalescer<()>>,
}

struct Pending<T> {
    job: Job<T>,
    done: oneshot::Sender<Result<T>>,
}

/// The queued writes of each tenant whose leader is running (a tenant is
/// in the map exactly while its leader runs).
pub(crate) struct Coalescer<T> {
    queues: Mutex<HashMap<String, VecDeque<Pending<T>>>>,
    /// [`TURN_BUDGET`], but for tests.
    budget: Duration,
}

impl<T> std::fmt::Debug for Coalescer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer::with_budget(TURN_BUDGET)
    }
}

impl<T> Coalescer<T> {
    /// A coalescer whose groups take writes for `budget` of their turn.
    fn with_budget(budget: Duration) -> Self {
        Coalescer { queues: Mutex::new(HashMap::new()), budget }
    }
}

impl<T: Send + 'static> Coalescer<T> {
    /// The tenant's next queued write.
    fn next(&self, tenant: &str) -> Option<Pending<T>> {
        self.lock().get_mut(tenant).and_then(VecDeque::pop_front)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Pending<T>>>> {
        // Every critical section leaves the map consistent.
        self.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run `job` for `tenant` in a transaction shared with the tenant's
    /// other writes queued at the same moment (see the module docs).
    pub(crate) async fn write(self: &Arc<Self>, store: &Store, tenant: &str, job: Job<T>) -> Result<T> {
        let (done, result) = oneshot::channel();
        let lead = {
            let mut queues = self.lock();
            let lead = !queues.contains_key(tenant);
            queues.entry(tenant.to_owned()).or_default().push_back(Pending { job, done });
            lead
        };
        if lead {
            tokio::spawn(self.clone().lead(store.clone(), tenant.to_owned()));
        }
        // The leader answers every write it takes; a leader that panicked
        // dropped the answer.
        result.await.unwrap_or_else(|_| Err(group_failed("the writer task ended before answering")))
    }

    /// Write the tenant's queued writes in groups until none is left.
    async fn lead(self: Arc<Self>, store: Store, tenant: String) {
        let mut leading = Leading { coalescer: self.clone(), tenant: tenant.clone(), done: false };
        loop {
            match store.write_gate_for(Writer::Tenant(&tenant)).await {
                Ok(turn) => self.write_group(&store, turn, &tenant).await,
                Err(e) => answer_all(self.take_group(&tenant, Vec::new()), &e),
            }
            let mut queues = self.lock();
            if queues.get(&tenant).is_none_or(VecDeque::is_empty) {
                queues.remove(&tenant);
                leading.done = true;
                return;
            }
        }
    }

    /// Up to [`MAX_GROUP`] of the tenant's queued writes after `taken`,
    /// for a group that fails as one.
    fn take_group(&self, tenant: &str, mut taken: Vec<Pending<T>>) -> Vec<Pending<T>> {
        if let Some(queue) = self.lock().get_mut(tenant) {
            let n = queue.len().min(MAX_GROUP.saturating_sub(taken.len()));
            taken.extend(queue.drain(..n));
        }
        taken
    }

    /// One transaction for the tenant's queued writes, taken one after the
    /// other while the turn lasts (see [`TURN_BUDGET`]), each in a savepoint
    /// when it has company; every caller gets its own result, or the
    /// transaction's failure. Writes left queued wait for the next turn.
    async fn write_group(&self, store: &Store, turn: super::WriteTurn, tenant: &str) {
        let Some(first) = self.next(tenant) else { return };
        let started = Instant::now();
        let mut tx = match store.begin_script_in(turn).await {
            Ok(tx) => tx,
            // The writes queued behind would meet the same trouble, each
            // after its own wait (a busy timeout, say).
            Err(e) => return answer_all(self.take_group(tenant, vec![first]), &e),
        };
        if self.lock().get(tenant).is_none_or(VecDeque::is_empty) {
            // A write alone needs no savepoint: the transaction is its own,
            // and a failed statement rolls it back (dropped unfinished).
            // `BEGIN`, its statements and `COMMIT` go in one round trip to
            // the connection's thread; in a steady load most groups are of
            // one.
            let Job { script, read } = first.job;
            let result = tx.commit_with(script).await.and_then(read);
            let _ = first.done.send(result);
            return;
        }
        let mut results = Vec::new();
        let mut next = Some(first);
        while let Some(pending) = next {
            let Job { script, read } = pending.job;
            // A failed write is rolled back to its savepoint and the
            // transaction goes on; should that fail too, so does the commit.
            let result = tx.run_in_savepoint(script).await.and_then(read);
            results.push((pending.done, result));
            let more = results.len() < MAX_GROUP && started.elapsed() < self.budget;
            next = if more { self.next(tenant) } else { None };
        }
        if let Err(e) = tx.commit_with(Script::new(store.backend())).await {
            let message = e.to_string();
            for (done, result) in results {
                let _ = done.send(result.and(Err(group_failed(&message))));
            }
            return;
        }
        for (done, result) in results {
            let _ = done.send(result);
        }
    }
}

/// Ends a tenant's leadership if its leader task unwinds (a write
/// panicked) or is dropped (the runtime shuts down): the writes still
/// queued are dropped, so their callers get an error instead of waiting
/// forever, and the tenant's next write starts a new leader.
struct Leading<T: Send + 'static> {
    coalescer: Arc<Coalescer<T>>,
    tenant: String,
    /// The leader ended normally (and already left the map).
    done: bool,
}

impl<T: Send + 'static> Drop for Leading<T> {
    fn drop(&mut self) {
        if !self.done {
            self.coalescer.lock().remove(&self.tenant);
        }
    }
}

fn answer_all<T>(group: Vec<Pending<T>>, e: &StoreError) {
    let message = e.to_string();
    for p in group {
        let _ = p.done.send(Err(match e {
            StoreError::Locked => StoreError::Locked,
            _ => group_failed(&message),
        }));
    }
}

/// The failure of a group's transaction (or turn), as each of its writes
/// reports it: database trouble, with the database's words.
fn group_failed(message: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!("a grouped write failed: {message}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;
    use crate::store::testing::TempSqlite;

    /// A job that inserts `n` into the test table, or fails when `n` is 3.
    fn insert(n: i64) -> Job<()> {
        let sql = if n == 3 { "INSERT INTO no_such_table VALUES ($1)" } else { "INSERT INTO grouped (n) VALUES ($1)" };
        let mut script = Script::new(crate::store::Backend::Sqlite);
        script.push(sqlx::query(sql).bind(n)).unwrap();
        Job::new(script, |_| Ok(()))
    }

    /// A store on a new SQLite file, with the table [`insert`] writes to.
    async fn store_with_table() -> (TempSqlite, Store) {
        let db = TempSqlite::new();
        let store = Store::open(&db.url()).await.unwrap();
        sqlx::query("CREATE TABLE grouped (n INTEGER NOT NULL)").execute(&store.pool).await.unwrap();
        (db, store)
    }

    #[tokio::test]
    async fn writes_queued_together_share_one_turn_and_a_failing_one_is_rolled_back_alone() {
        let (_db, store) = store_with_table().await;
        let gate = store.write_gate.clone().unwrap();
        // However long the ten writes take (an unoptimised build), one turn.
        let groups = Arc::new(Coalescer::<()>::with_budget(Duration::from_secs(3600)));

        // The tenant's turn is taken: its writes queue meanwhile.
        let held = store.write_gate_for(Writer::Tenant("t")).await.unwrap();
        let before = gate.turns();
        let mut writes = tokio::task::JoinSet::new();
        for n in 0..10 {
            let (store, groups) = (store.clone(), groups.clone());
            writes.spawn(async move { (n, groups.write(&store, "t", insert(n)).await) });
        }
        let queued = || groups.lock().get("t").map_or(0, VecDeque::len);
        for _ in 0..5_000 {
            if queued() == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(queued(), 10, "every write queued behind the held turn");
        drop(held);

        while let Some(done) = writes.join_next().await {
            let (n, result) = done.unwrap();
            assert_eq!(result.is_err(), n == 3, "write {n}: {result:?}");
        }
        assert_eq!(gate.turns() - before, 1, "the ten writes took one turn");
        let stored: Vec<i64> =
            sqlx::query_scalar("SELECT n FROM grouped ORDER BY n").fetch_all(&store.pool).await.unwrap();
        assert_eq!(stored, [0, 1, 2, 4, 5, 6, 7, 8, 9], "the failed write alone was rolled back");
        assert!(groups.lock().is_empty(), "the leader ended with its queue");

        // The next write starts a new leader.
        groups.write(&store, "t", insert(10)).await.unwrap();
        assert_eq!(gate.turns() - before, 2);
    }

    #[tokio::test]
    async fn a_group_takes_no_more_writes_once_its_turn_has_lasted_its_budget() {
        let (_db, store) = store_with_table().await;
        let gate = store.write_gate.clone().unwrap();
        // A budget every write overruns: each turn takes one write.
        let groups = Arc::new(Coalescer::<()>::with_budget(Duration::ZERO));

        // The writer is taken (for no tenant): t's four writes queue, then
        // u's one.
        let held = store.write_gate().await.unwrap();
        let before = gate.turns();
        let mut writes = tokio::task::JoinSet::new();
        for (tenant, n) in [("t", 0), ("t", 1), ("t", 2), ("t", 4), ("u", 10)] {
            let (store, groups) = (store.clone(), groups.clone());
            writes.spawn(async move { groups.write(&store, tenant, insert(n)).await });
        }
        let queued = || groups.lock().values().map(VecDeque::len).sum::<usize>();
        // Every write queued, and both tenants' leaders wait at the gate.
        for _ in 0..5_000 {
            if queued() == 5 && gate.turns() - before == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!((queued(), gate.turns() - before), (5, 2));
        drop(held);
        while let Some(done) = writes.join_next().await {
            done.unwrap().unwrap();
        }

        let stored: Vec<i64> =
            sqlx::query_scalar("SELECT n FROM grouped ORDER BY rowid").fetch_all(&store.pool).await.unwrap();
        // t's first turn took one write, not four: u's write went next
        // (t had used the writer, u not yet), then t's others.
        assert_eq!(stored, [0, 10, 1, 2, 4]);
        assert!(groups.lock().is_empty(), "both leaders ended with their queues");
    }

    #[tokio::test]
    async fn a_write_alone_commits_or_rolls_back_and_frees_the_writer() {
        let (_db, store) = store_with_table().await;
        let groups = store.groups.clone().unwrap();

        groups.invocations.write(&store, "t", insert(1)).await.unwrap();
        let failed = groups.invocations.write(&store, "t", insert(3)).await;
        assert!(failed.unwrap_err().to_string().contains("no_such_table"), "the write's own error comes back");
        // The failed write's transaction was rolled back before its turn
        // ended: the next write takes the writer at once.
        groups.invocations.write(&store, "t", insert(2)).await.unwrap();
        let stored: Vec<i64> =
            sqlx::query_scalar("SELECT n FROM grouped ORDER BY n").fetch_all(&store.pool).await.unwrap();
        assert_eq!(stored, [1, 2]);
    }
}
