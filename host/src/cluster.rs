//! Several `cairn serve` processes on one PostgreSQL database: how a change
//! made through one node reaches the others.
//!
//! Work needs no coordination beyond the database: events, run steps and
//! schedules are claimed with `FOR UPDATE SKIP LOCKED` and leases (see
//! `store::events`, `store::runs`). What each node keeps in memory does:
//! the live install table (which plugin version each install runs, with its
//! grants and config), and the per-tenant caches of active workflows,
//! lifecycle thresholds and time zones. So a change is announced with
//! PostgreSQL's `NOTIFY` on [`CHANNEL`], and every other node, `LISTEN`ing,
//! drops or rebuilds what the change touched. An install change makes each
//! node rebuild its table from the store, loading any new component from the
//! bytes in the database and compiling it itself (with its own on-disk
//! compile cache), so no node ships code to another.
//!
//! A notification sent while a node's listening connection was down is lost,
//! so after every reconnect the node resynchronises everything; and a slow
//! safety net rebuilds the install table every [`RESYNC_EVERY`] regardless.
//!
//! On SQLite there is one process ([`crate::store::SqliteOwner`]), so
//! [`Node::changed`] only applies the change locally.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::engine::Pipeline;
use crate::engine::workflows::Workflows;
use crate::registry::Registry;
use crate::store::{Backend, Store};

/// The `NOTIFY` channel changes travel on.
pub const CHANNEL: &str = "cairn_changes";
/// How often a node rebuilds everything anyway, in case a notification was
/// lost in a way the listener could not see.
pub const RESYNC_EVERY: Duration = Duration::from_secs(60);

/// Something a node changed that the other nodes hold in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// Installs: created, reconfigured, upgraded, rolled back, disabled or
    /// removed (the whole table is rebuilt from the store).
    Installs,
    /// A plugin version was uploaded: the other nodes compile it ahead of
    /// time (into their compile cache), so an upgrade to it only swaps tables.
    Plugin {
        /// The component's content hash.
        hash: String,
    },
    /// A tenant's workflows: activated or archived.
    Workflows {
        /// The tenant.
        tenant: String,
    },
    /// A tenant's lifecycle thresholds.
    Automation {
        /// The tenant.
        tenant: String,
    },
    /// A tenant's time zone.
    TimeZone {
        /// The tenant.
        tenant: String,
    },
}

/// A change as it travels: who sent it, so a node skips its own.
#[derive(Debug, Serialize, Deserialize)]
struct Notice {
    node: String,
    #[serde(flatten)]
    change: Change,
}

/// This process as a member of the cluster (or alone, on SQLite).
pub struct Node {
    /// This node's id, fresh at every start.
    pub id: String,
    registry: Arc<Registry>,
    workflows: Arc<Workflows>,
    pipeline: Arc<Pipeline>,
    /// Changes to announce; `None` when there are no other nodes.
    outbox: Option<mpsc::UnboundedSender<Change>>,
}

impl Node {
    /// A node on `store`; [`Node::join`] connects it to the others.
    pub fn new(registry: Arc<Registry>, workflows: Arc<Workflows>, pipeline: Arc<Pipeline>) -> Node {
        Node { id: crate::store::new_id(), registry, workflows, pipeline, outbox: None }
    }

    /// Apply `change` here and announce it to the other nodes.
    pub fn changed(&self, change: Change) {
        self.apply(&change);
        if let Some(outbox) = &self.outbox {
            let _ = outbox.send(change);
        }
    }

    /// Drop or reload what `change` touched, in this process only.
    fn apply(&self, change: &Change) {
        match change {
            // Rebuilt by the registry itself when the change is local; the
            // uploading node compiled the plugin already.
            Change::Installs | Change::Plugin { .. } => {}
            Change::Workflows { tenant } => self.workflows.invalidate(tenant),
            Change::Automation { tenant } => self.pipeline.automation().invalidate(tenant),
            Change::TimeZone { tenant } => self.workflows.invalidate_zone(tenant),
        }
    }

    /// Apply a change another node announced.
    async fn apply_remote(&self, change: &Change) {
        match change {
            Change::Installs => {
                if let Err(e) = self.registry.rebuild().await {
                    tracing::warn!("rebuilding installs after another node's change failed: {e}");
                }
            }
            Change::Plugin { hash } => {
                // In the background: the listener goes on with the next change.
                let (registry, hash) = (self.registry.clone(), hash.clone());
                tokio::spawn(async move {
                    if let Err(e) = registry.warm(&hash).await {
                        tracing::warn!("compiling an uploaded plugin ahead of time failed: {e}");
                    }
                });
            }
            other => self.apply(other),
        }
    }

    /// Reload everything another node may have changed (after a lost
    /// connection, and every [`RESYNC_EVERY`]).
    async fn resync(&self, store: &Store) {
        if let Err(e) = self.registry.rebuild().await {
            tracing::warn!("resynchronising installs failed: {e}");
        }
        match store.list_tenants().await {
            Ok(tenants) => {
                for t in tenants {
                    self.apply(&Change::Workflows { tenant: t.id.clone() });
                    self.apply(&Change::Automation { tenant: t.id.clone() });
                    self.apply(&Change::TimeZone { tenant: t.id });
                }
            }
            Err(e) => tracing::warn!("resynchronising tenant caches failed: {e}"),
        }
    }

    /// On PostgreSQL: start announcing this node's changes and applying the
    /// others'. Returns the tasks that do it (none on SQLite).
    pub async fn join(node: &mut Node, store: &Store, database_url: &str) -> anyhow::Result<Vec<JoinHandle<()>>> {
        if store.backend() != Backend::Postgres {
            return Ok(Vec::new());
        }
        let (outbox, inbox) = mpsc::unbounded_channel();
        node.outbox = Some(outbox);
        let mut listener = PgListener::connect(database_url).await?;
        listener.listen(CHANNEL).await?;
        let listening = node.snapshot();
        Ok(vec![
            tokio::spawn(announce(node.id.clone(), store.clone(), node.registry.clone(), inbox)),
            tokio::spawn(resync_periodically(listening.clone(), store.clone())),
            tokio::spawn(listen(listening, store.clone(), listener)),
        ])
    }

    /// A second handle on the same node for the listening task.
    fn snapshot(&self) -> Arc<Node> {
        Arc::new(Node {
            id: self.id.clone(),
            registry: self.registry.clone(),
            workflows: self.workflows.clone(),
            pipeline: self.pipeline.clone(),
            outbox: None,
        })
    }
}

/// Send this node's changes: the ones handed to [`Node::changed`] and every
/// rebuild of the install table that started here.
async fn announce(node: String, store: Store, registry: Arc<Registry>, mut inbox: mpsc::UnboundedReceiver<Change>) {
    let mut installs = registry.subscribe_changes();
    loop {
        let change = tokio::select! {
            c = inbox.recv() => match c { Some(c) => c, None => return },
            r = installs.changed() => match r { Ok(()) => Change::Installs, Err(_) => return },
        };
        let payload = match serde_json::to_string(&Notice { node: node.clone(), change }) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("encoding a cluster notice: {e}");
                continue;
            }
        };
        // A lost notice is repaired by the periodic resync; keep going.
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&payload).execute(store.pool()).await
        {
            tracing::warn!("announcing a change to the other nodes failed: {e}");
        }
    }
}

/// Apply the other nodes' changes as they arrive.
async fn listen(node: Arc<Node>, store: Store, mut listener: PgListener) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => match serde_json::from_str::<Notice>(n.payload()) {
                Ok(notice) if notice.node == node.id => {}
                Ok(notice) => node.apply_remote(&notice.change).await,
                Err(e) => tracing::warn!("an unreadable cluster notice: {e}"),
            },
            // The connection dropped; the next call reconnects and listens
            // again. What was sent meanwhile is lost, so reload it all.
            Ok(None) => node.resync(&store).await,
            Err(e) => {
                tracing::warn!("the cluster listener failed, reconnecting: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                node.resync(&store).await;
            }
        }
    }
}

/// The safety net: reload everything every [`RESYNC_EVERY`].
async fn resync_periodically(node: Arc<Node>, store: Store) {
    let mut every = tokio::time::interval(RESYNC_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        node.resync(&store).await;
    }
}
