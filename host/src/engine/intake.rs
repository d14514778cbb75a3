//! Durable intake with group commit.
//!
//! A commit per request caps single-event ingest at a few thousand requests
//! a second (NOTES-wasmtime.md: 24 µs per commit with WAL + NORMAL, 179 µs
//! with FULL). Instead, concurrent requests queue their events here; one
//! writer task takes everything waiting, commits it in one transaction, and
//! answers each request when its events are durable. Under load the batches
//! grow by themselves; an idle server commits a lone request at once.
//!
//! A request whose events are invalid fails alone: the store validates per
//! request inside the shared transaction.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::store::{Event, NewEvent, Store, StoreError};

/// Most requests committed in one transaction.
const MAX_REQUESTS_PER_COMMIT: usize = 256;
/// Requests waiting beyond this get 503: bounded memory under overload.
const QUEUE_DEPTH: usize = 16_384;

struct Pending {
    tenant_id: String,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Event>, IntakeError>>,
}

/// Handle to the group-commit writer.
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Pending>,
}

/// Why events were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The commit failed as a whole (database away): nothing was stored.
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    /// Too many requests waiting, or the writer stopped.
    #[error("intake is overloaded or shutting down")]
    Overloaded,
}

impl Intake {
    /// Start the writer. `processed` is notified after every commit so the
    /// pipeline picks the new events up without polling.
    pub fn start(store: Store, committed: Arc<Notify>) -> Intake {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(writer(store, rx, committed));
        Intake { tx }
    }

    /// Make `events` durable; returns them as stored once committed.
    pub async fn submit(&self, tenant_id: &str, events: Vec<NewEvent>) -> Result<Vec<Event>, IntakeError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { tenant_id: tenant_id.to_string(), events, reply };
        self.tx.try_send(pending).map_err(|_| IntakeError::Overloaded)?;
        answer.await.map_err(|_| IntakeError::Overloaded)?
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Pending>, committed: Arc<Notify>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_REQUESTS_PER_COMMIT);
    while rx.recv_many(&mut batch, MAX_REQUESTS_PER_COMMIT).await > 0 {
        let requests: Vec<(String, Vec<NewEvent>)> =
            batch.iter_mut().map(|p| (p.tenant_id.clone(), std::mem::take(&mut p.events))).collect();
        match store.insert_events_many(requests).await {
            Ok(results) => {
                for (pending, result) in batch.drain(..).zip(results) {
                    let _ = pending.reply.send(result.map_err(IntakeError::from));
                }
            }
            Err(e) => {
                // The whole transaction failed (database away): nothing was
                // stored, every request is told so and may retry.
                tracing::warn!("group commit failed: {e}");
                let msg = e.to_string();
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(IntakeError::Unavailable(msg.clone())));
                }
                // Requests that queued while this commit waited for the
                // database would wait as long again for the next one: answer
                // them now, so no client waits more than one attempt.
                while let Ok(pending) = rx.try_recv() {
                    let _ = pending.reply.send(Err(IntakeError::Unavailable(msg.clone())));
                }
            }
        }
        committed.notify_one();
    }
}
