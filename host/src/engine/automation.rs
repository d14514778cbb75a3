//! A per-tenant cache of lifecycle thresholds for the pipeline.
//!
//! Reading them from the database for every event would cost two queries per
//! event on the hot path. They change rarely and only through the API, which
//! invalidates the tenant's entry; a short time-to-live bounds staleness when
//! another process (a second node on the same PostgreSQL) changed them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{LifecycleThreshold, Store, StoreError};

/// How long an entry is trusted without an invalidation.
const TTL: Duration = Duration::from_secs(1);

/// One tenant's automation settings.
#[derive(Debug, Default)]
pub struct TenantAutomation {
    /// Score thresholds by stage.
    pub thresholds: Vec<LifecycleThreshold>,
}

/// The cache.
pub struct AutomationCache {
    store: Store,
    entries: Mutex<HashMap<String, (Instant, Arc<TenantAutomation>)>>,
}

impl AutomationCache {
    /// An empty cache over `store`.
    pub fn new(store: Store) -> AutomationCache {
        AutomationCache { store, entries: Mutex::new(HashMap::new()) }
    }

    /// The tenant's thresholds, from memory when fresh.
    pub async fn get(&self, tenant: &str) -> Result<Arc<TenantAutomation>, StoreError> {
        if let Some((at, entry)) = self.entries.lock().ok().and_then(|m| m.get(tenant).cloned())
            && at.elapsed() < TTL
        {
            return Ok(entry);
        }
        let entry = Arc::new(TenantAutomation { thresholds: self.store.list_lifecycle_thresholds(tenant).await? });
        if let Ok(mut m) = self.entries.lock() {
            m.insert(tenant.to_string(), (Instant::now(), entry.clone()));
        }
        Ok(entry)
    }

    /// Forget the tenant's entry (after a change through the API).
    pub fn invalidate(&self, tenant: &str) {
        if let Ok(mut m) = self.entries.lock() {
            m.remove(tenant);
        }
    }
}
