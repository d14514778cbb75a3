//! Durable intake with group commit, fair between tenants.
//!
//! A commit per request caps single-event ingest at a few thousand requests
//! a second (NOTES-wasmtime.md: 24 µs per commit with WAL + NORMAL, 179 µs
//! with FULL). Instead, concurrent requests queue their events here; a
//! dispatcher task commits everything waiting in as few transactions as it
//! can and answers each request when its events are durable. Under load the
//! commits grow by themselves; an idle server commits a lone request at once.
//!
//! Not every request rides in one shared commit, though. On SQLite the
//! shared commit goes ahead of every other writer (`store::write_gate`),
//! which is right for the few events of interactive requests (a
//! `POST /v1/events` waits on it) and wrong for a tenant that posts batches
//! as fast as it is answered: its 100-event commits, back to back, would
//! hold the one writer ahead of every other tenant's pipeline and workflow
//! writes (measured: 3–6 ms turns in a row for ~80 ms at each of the flood's
//! bursts, every other tenant's writes waiting 15–30 ms behind them, `cairn
//! bench --noisy-only`). So a tenant with at least [`HEAVY_EVENTS`] events
//! waiting is **heavy**: its requests are committed by themselves, queued at
//! the write gate as that tenant's own writes, fairly against everyone
//! else's. The others (**light**) share the next group commit.
//!
//! A tenant's requests are never in two commits at once: the next waits
//! until the one in flight ends, so each tenant's events are stored in the
//! order they arrived.
//!
//! A request whose events are invalid fails alone: the store validates per
//! request inside the shared transaction.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::store::{Event, NewEvent, Store, StoreError, Writer};

/// Most requests committed in one transaction.
const MAX_REQUESTS_PER_COMMIT: usize = 256;
/// A heavy tenant's commit stops taking requests once it holds this many
/// events (it takes at least one request, whatever its size): its turn at
/// the writer stays short, for every other tenant's writes wait behind it.
/// Traced in `cairn bench --noisy-only --quick` (`RUST_LOG=cairn::store=trace`),
/// with 1,000 here: the noisy tenant's commits of 100-event requests held
/// the writer 1.8 ms at the median and 5.6 ms at the 99th percentile, when
/// several of its requests had queued into one commit. Per request, a
/// commit costs the tenant little: two round trips to SQLite's thread.
const MAX_EVENTS_PER_TENANT_COMMIT: usize = 64;
/// A tenant with this many events waiting commits on its own (see the
/// module docs). Interactive clients send one event, or a few, per request.
const HEAVY_EVENTS: usize = 32;
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
    /// Start the writer. `committed` is notified after every commit so the
    /// pipeline picks the new events up without polling.
    pub fn start(store: Store, committed: Arc<Notify>) -> Intake {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(Dispatcher::new(store, committed).run(rx));
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

/// A commit in flight: the tenants whose requests it carries (each free for
/// its next commit when it ends), and whether it is the shared one.
struct InFlight {
    tenants: Vec<String>,
    shared: bool,
}

/// One tenant's requests not yet in a commit, in arrival order, and how
/// many events they hold.
#[derive(Default)]
struct Queue {
    requests: VecDeque<Pending>,
    events: usize,
}

/// The intake's one task: queues requests by tenant and starts the commits
/// (see the module docs). The commits themselves run as tasks of their own,
/// so a heavy tenant's commit waiting at the write gate holds up nobody's
/// requests but that tenant's.
struct Dispatcher {
    store: Store,
    committed: Arc<Notify>,
    /// Requests not yet in a commit, by tenant (never an empty queue).
    queued: HashMap<String, Queue>,
    /// How many requests `queued` holds.
    queued_requests: usize,
    /// Tenants with a commit in flight.
    busy: HashSet<String>,
    /// The shared commit is in flight.
    shared_busy: bool,
    /// The commits in flight; each ends with why its whole transaction
    /// failed (nothing was stored), if it did.
    commits: JoinSet<Option<String>>,
    in_flight: HashMap<tokio::task::Id, InFlight>,
}

impl Dispatcher {
    fn new(store: Store, committed: Arc<Notify>) -> Dispatcher {
        Dispatcher {
            store,
            committed,
            queued: HashMap::new(),
            queued_requests: 0,
            busy: HashSet::new(),
            shared_busy: false,
            commits: JoinSet::new(),
            in_flight: HashMap::new(),
        }
    }

    /// Until every `Intake` handle is gone and every commit has ended.
    async fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut arrived = Vec::with_capacity(MAX_REQUESTS_PER_COMMIT);
        let mut open = true;
        while open || !self.commits.is_empty() {
            tokio::select! {
                n = rx.recv_many(&mut arrived, MAX_REQUESTS_PER_COMMIT), if open => {
                    open = n > 0;
                    for pending in arrived.drain(..) {
                        self.enqueue(pending);
                    }
                }
                Some(ended) = self.commits.join_next_with_id() => {
                    let (id, failed) = match ended {
                        Ok((id, failed)) => (id, failed),
                        // Its requests' senders went with it: their clients
                        // were answered "overloaded".
                        Err(e) => {
                            tracing::error!("an intake commit panicked: {e}");
                            (e.id(), None)
                        }
                    };
                    self.ended(id, failed, &mut rx);
                }
            }
            self.start_commits();
        }
    }

    fn enqueue(&mut self, pending: Pending) {
        if self.queued_requests >= QUEUE_DEPTH {
            let _ = pending.reply.send(Err(IntakeError::Overloaded));
            return;
        }
        self.queued_requests += 1;
        let queue = self.queued.entry(pending.tenant_id.clone()).or_default();
        queue.events += pending.events.len();
        queue.requests.push_back(pending);
    }

    fn ended(&mut self, id: tokio::task::Id, failed: Option<String>, rx: &mut mpsc::Receiver<Pending>) {
        if let Some(done) = self.in_flight.remove(&id) {
            for tenant in &done.tenants {
                self.busy.remove(tenant);
            }
            if done.shared {
                self.shared_busy = false;
            }
        }
        if let Some(msg) = failed {
            // The database is away. Requests that queued while this commit
            // waited for it would wait as long again for the next one:
            // answer them now, so no client waits more than one attempt.
            while let Ok(pending) = rx.try_recv() {
                let _ = pending.reply.send(Err(IntakeError::Unavailable(msg.clone())));
            }
            for (_, queue) in self.queued.drain() {
                for pending in queue.requests {
                    let _ = pending.reply.send(Err(IntakeError::Unavailable(msg.clone())));
                }
            }
            self.queued_requests = 0;
        }
        self.committed.notify_one();
    }

    /// Start a commit for every heavy tenant that has none in flight, and
    /// the shared commit for the light ones if it is not in flight.
    fn start_commits(&mut self) {
        let free: Vec<(String, usize)> = self
            .queued
            .iter()
            .filter(|(tenant, _)| !self.busy.contains(*tenant))
            .map(|(tenant, queue)| (tenant.clone(), queue.events))
            .collect();
        let mut light = Vec::new();
        for (tenant, waiting) in free {
            if waiting >= HEAVY_EVENTS {
                let batch = self.take(&tenant, MAX_REQUESTS_PER_COMMIT, MAX_EVENTS_PER_TENANT_COMMIT);
                self.spawn_commit(vec![tenant], batch, false);
            } else {
                light.push(tenant);
            }
        }
        if self.shared_busy || light.is_empty() {
            return;
        }
        let (mut tenants, mut batch) = (Vec::new(), Vec::new());
        for tenant in light {
            let room = MAX_REQUESTS_PER_COMMIT - batch.len();
            if room == 0 {
                break;
            }
            batch.extend(self.take(&tenant, room, usize::MAX));
            tenants.push(tenant);
        }
        self.shared_busy = true;
        self.spawn_commit(tenants, batch, true);
    }

    /// Up to `requests` of `tenant`'s queued requests, oldest first,
    /// stopping once they hold `events` events (at least one request).
    fn take(&mut self, tenant: &str, requests: usize, events: usize) -> Vec<Pending> {
        let mut taken = Vec::new();
        let mut held = 0;
        if let Some(queue) = self.queued.get_mut(tenant) {
            while taken.len() < requests && (taken.is_empty() || held < events) {
                let Some(pending) = queue.requests.pop_front() else { break };
                held += pending.events.len();
                taken.push(pending);
            }
            queue.events -= held;
            if queue.requests.is_empty() {
                self.queued.remove(tenant);
            }
        }
        self.queued_requests -= taken.len();
        taken
    }

    fn spawn_commit(&mut self, tenants: Vec<String>, mut batch: Vec<Pending>, shared: bool) {
        self.busy.extend(tenants.iter().cloned());
        let store = self.store.clone();
        // Heavy commits carry one tenant's requests; the shared one, any.
        let own = (!shared).then(|| tenants[0].clone());
        let task = self.commits.spawn(async move {
            let requests: Vec<(String, Vec<NewEvent>)> =
                batch.iter_mut().map(|p| (p.tenant_id.clone(), std::mem::take(&mut p.events))).collect();
            let writer = own.as_deref().map_or(Writer::Intake, Writer::Tenant);
            match store.insert_events_many_as(writer, requests).await {
                Ok(results) => {
                    for (pending, result) in batch.into_iter().zip(results) {
                        let _ = pending.reply.send(result.map_err(IntakeError::from));
                    }
                    None
                }
                Err(e) => {
                    // The whole transaction failed (database away): nothing
                    // was stored, every request is told so and may retry.
                    tracing::warn!("group commit failed: {e}");
                    let msg = e.to_string();
                    for pending in batch {
                        let _ = pending.reply.send(Err(IntakeError::Unavailable(msg.clone())));
                    }
                    Some(msg)
                }
            }
        });
        self.in_flight.insert(task.id(), InFlight { tenants, shared });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::store::testing::TempSqlite;

    fn events(tenant_tag: &str, n: usize) -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent {
                email: Some(format!("{tenant_tag}{}@example.test", i % 4)),
                kind: "page_viewed".into(),
                ..NewEvent::default()
            })
            .collect()
    }

    /// Let spawned tasks run until they wait.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn a_light_tenants_request_does_not_wait_behind_a_heavy_tenants_commit() {
        let db = TempSqlite::new();
        let store = db.open().await.unwrap();
        let (heavy, light) = (store.create_tenant("heavy").await.unwrap(), store.create_tenant("light").await.unwrap());
        let intake = Intake::start(store.clone(), Arc::new(Notify::new()));
        let done = Arc::new(Mutex::new(Vec::new()));
        // Another writer holds SQLite's write turn: both commits queue.
        let held = store.write_gate().await.unwrap();
        let submit = |tenant: String, events: Vec<NewEvent>, name: &'static str| {
            let (intake, done) = (intake.clone(), done.clone());
            tokio::spawn(async move {
                let stored = intake.submit(&tenant, events).await.unwrap();
                done.lock().unwrap().push(name);
                stored.len()
            })
        };
        let first = submit(heavy.id.clone(), events("h", 100), "heavy");
        settle().await;
        let second = submit(light.id.clone(), events("l", 1), "light");
        settle().await;
        drop(held);
        assert_eq!(first.await.unwrap(), 100);
        assert_eq!(second.await.unwrap(), 1);
        // The light request came second and was stored first: it did not
        // queue behind the heavy commit, which went to the gate as the heavy
        // tenant's own write.
        assert_eq!(*done.lock().unwrap(), ["light", "heavy"]);
    }

    #[tokio::test]
    async fn a_tenants_requests_are_stored_in_the_order_they_arrived() {
        let db = TempSqlite::new();
        let store = db.open().await.unwrap();
        let tenant = store.create_tenant("t").await.unwrap();
        let intake = Intake::start(store.clone(), Arc::new(Notify::new()));
        let held = store.write_gate().await.unwrap();
        // Light and heavy requests mixed: the tenant moves between the
        // shared commit and its own as its queue grows and drains.
        let mut requests = Vec::new();
        for i in 0..40 {
            let (intake, tenant) = (intake.clone(), tenant.id.clone());
            let n = if i % 5 == 0 { 40 } else { 1 };
            requests.push(tokio::spawn(async move { intake.submit(&tenant, events("o", n)).await.unwrap() }));
            if i % 7 == 0 {
                settle().await;
            }
        }
        settle().await;
        drop(held);
        let mut last = String::new();
        for request in requests {
            for event in request.await.unwrap() {
                assert!(event.id > last, "event {} stored before {last}", event.id);
                last = event.id;
            }
        }
    }
}
