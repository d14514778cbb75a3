//! The thread SQLite's busiest write transactions run on.
//!
//! A write transaction holds SQLite's one writer (`write_gate`) from its
//! first statement to its commit, and each statement is a round trip to the
//! connection's own thread: between two statements, the task that runs the
//! transaction must be polled again. Where that task runs is where a noisy
//! tenant hurts everyone else:
//! - a tenant whose plugins burnt CPU lately has its lanes on the
//!   background runtime (`runtime::background`), whose workers spend whole
//!   epoch ticks in its runaway plugins: its lane commit, claim or call
//!   record then waits for a worker after every statement, and a turn handed
//!   to it waits to be picked up, while every other tenant's writes wait
//!   behind that turn (traced: turns of 10–20 ms, hand-overs up to 13 ms
//!   late);
//! - on the main runtime the same happens, less, behind HTTP and lane work.
//!
//! So the hot writers (the intake's commits, pipeline claims and commits,
//! the runner's claims and run saves, failed-call records) run their
//! transaction here instead: a current-thread runtime on a thread of its
//! own, at normal priority, that runs nothing else. A turn's statements
//! follow each other as fast as SQLite answers, whoever asked for the write.
//! Measured with `cairn bench --noisy-only --a-rate 200` (B's p99 beside A's
//! CPU-burning plugins, over B alone): see the README's noisy-neighbour row.
//!
//! PostgreSQL has no one writer to hold: there the work runs in place.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Handle;

use super::Store;
use super::error::{Result, StoreError};

/// The writer thread's runtime, started on first use and never stopped
/// (one per process, like the background runtime). `None` when it could
/// not be started: the work then runs in place.
fn handle() -> Option<Handle> {
    static WRITER: OnceLock<Option<Handle>> = OnceLock::new();
    WRITER
        .get_or_init(|| match start() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!("could not start the SQLite writer thread (writes run in their callers' tasks): {e}");
                None
            }
        })
        .clone()
}

fn start() -> std::io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new().name("cairn-writer".into()).spawn(move || {
        // Polls the spawned writes for the life of the process.
        runtime.block_on(std::future::pending::<()>());
    })?;
    Ok(handle)
}

impl Store {
    /// Run `write` (a task that writes to this store) on the writer thread
    /// when this store is SQLite, else here; its result either way. The
    /// write runs to its end even if the caller stops waiting.
    pub(crate) async fn on_writer<T: Send + 'static>(
        &self,
        write: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let thread = if self.write_gate.is_some() { handle() } else { None };
        let Some(thread) = thread else { return write.await };
        match thread.spawn(write).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is never shut down; should it be, the write's
            // outcome is unknown, as when a connection's thread dies.
            Err(_) => Err(StoreError::Database(sqlx::Error::WorkerCrashed)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn a_sqlite_write_runs_on_the_writer_thread_and_its_panic_reaches_the_caller() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let thread = store.on_writer(async { Ok(std::thread::current().name().map(str::to_string)) }).await.unwrap();
        assert_eq!(thread.as_deref(), Some("cairn-writer"));

        let panicking = store.clone();
        let caller = tokio::spawn(async move {
            panicking.on_writer(async { if true { panic!("a write that panics") } else { Ok(()) } }).await
        });
        assert!(caller.await.unwrap_err().is_panic());
        // The writer thread survived the panic.
        assert_eq!(store.on_writer(async { Ok(1) }).await.unwrap(), 1);
    }
}
