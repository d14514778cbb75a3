//! Tenants (with the time zone their calendar delays and schedules use) and
//! API keys.
//!
//! A key is `cairn_` followed by 32 random bytes in hex. Only its SHA-256 is
//! stored, so a copy of the database does not hand out working keys; a key is
//! found by its hash and the hashes are compared in constant time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use subtle::ConstantTimeEq;

use crate::store::error::{Result, StoreError};
use crate::store::{Store, new_id};

/// Longest tenant name.
const MAX_TENANT_NAME: usize = 200;
/// Longest key accepted by [`Store::authenticate`]: a bearer header of
/// megabytes should not cost a hash of megabytes.
const MAX_KEY_LEN: usize = 512;
/// Longest time zone name (the longest IANA names are about 30 bytes).
pub const MAX_TIME_ZONE: usize = 64;
/// The time zone of a new tenant.
const DEFAULT_TIME_ZONE: &str = "UTC";
/// The prefix of generated keys (lets secret scanners recognise leaked keys).
pub const KEY_PREFIX: &str = "cairn_";

/// A customer of the host; every other record belongs to exactly one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Tenant id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// IANA time zone name (`UTC`, `Europe/Berlin`, ...) for calendar delays
    /// and schedules; `UTC` until set.
    pub time_zone: String,
    /// Creation time, epoch ms.
    pub created_at: i64,
}

const TENANT_COLUMNS: &str = "id, name, time_zone, created_at";

fn tenant_from_row(r: &AnyRow) -> Result<Tenant> {
    Ok(Tenant {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        time_zone: r.try_get("time_zone")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Who an API key speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type", content = "tenant_id")]
pub enum Principal {
    /// Tenant management (creating tenants, the global plugin catalog).
    Admin,
    /// Everything inside one tenant.
    Tenant(String),
}

/// SHA-256 of a key, lower-case hex.
fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Store {
    /// Create a tenant (time zone `UTC`; see [`Store::set_tenant_time_zone`]).
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant> {
        let name = name.trim();
        if name.is_empty() || name.len() > MAX_TENANT_NAME {
            return Err(StoreError::Invalid(format!("a tenant name is 1 to {MAX_TENANT_NAME} bytes")));
        }
        let tenant = Tenant {
            id: new_id(),
            name: name.to_owned(),
            time_zone: DEFAULT_TIME_ZONE.to_owned(),
            created_at: self.now(),
        };
        sqlx::query("INSERT INTO tenants (id, name, time_zone, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&tenant.id)
            .bind(&tenant.name)
            .bind(&tenant.time_zone)
            .bind(tenant.created_at)
            .execute(&self.pool)
            .await?;
        Ok(tenant)
    }

    /// A tenant by id.
    pub async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    /// Set the time zone of tenant `id` (an IANA name; the caller checks that
    /// it names a real zone, the store only that it is 1 to
    /// [`MAX_TIME_ZONE`] bytes). False when the tenant does not exist.
    pub async fn set_tenant_time_zone(&self, id: &str, tz: &str) -> Result<bool> {
        let tz = tz.trim();
        if tz.is_empty() || tz.len() > MAX_TIME_ZONE {
            return Err(StoreError::Invalid(format!("a time zone name is 1 to {MAX_TIME_ZONE} bytes")));
        }
        let done = sqlx::query("UPDATE tenants SET time_zone = $2 WHERE id = $1")
            .bind(id)
            .bind(tz)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every tenant, oldest first.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows =
            sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id")).fetch_all(&self.pool).await?;
        rows.iter().map(tenant_from_row).collect()
    }

    /// Generate a new API key for `principal`, store its hash, and return the
    /// plaintext (the only time it exists).
    pub async fn create_api_key(&self, principal: &Principal) -> Result<String> {
        let bytes: [u8; 32] = rand::random();
        let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
        self.register_api_key(principal, &key).await?;
        Ok(key)
    }

    /// Store the hash of a key chosen elsewhere (e.g. `CAIRN_ADMIN_KEY`).
    /// Registering the same key again for the same principal is a no-op.
    pub async fn register_api_key(&self, principal: &Principal, key: &str) -> Result<()> {
        if key.len() < 16 || key.len() > MAX_KEY_LEN {
            return Err(StoreError::Invalid(format!("an API key is 16 to {MAX_KEY_LEN} bytes")));
        }
        let tenant = match principal {
            Principal::Admin => None,
            Principal::Tenant(t) => {
                if self.get_tenant(t).await?.is_none() {
                    return Err(StoreError::UnknownTenant(t.clone()));
                }
                Some(t.as_str())
            }
        };
        let hash = key_hash(key);
        let done = sqlx::query(
            "INSERT INTO api_keys (key_hash, tenant_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key_hash) DO NOTHING",
        )
        .bind(&hash)
        .bind(tenant)
        .bind(self.now())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 && self.authenticate(key).await?.as_ref() != Some(principal) {
            return Err(StoreError::Invalid("this key is already registered for someone else".into()));
        }
        Ok(())
    }

    /// Who `key` speaks for, or `None` when it is not a registered key.
    pub async fn authenticate(&self, key: &str) -> Result<Option<Principal>> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Ok(None);
        }
        let hash = key_hash(key);
        let row = sqlx::query("SELECT key_hash, tenant_id FROM api_keys WHERE key_hash = $1")
            .bind(&hash)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("key_hash")?;
        if !bool::from(stored.as_bytes().ct_eq(hash.as_bytes())) {
            return Ok(None);
        }
        let tenant: Option<String> = row.try_get("tenant_id")?;
        Ok(Some(match tenant {
            None => Principal::Admin,
            Some(t) => Principal::Tenant(t),
        }))
    }

    /// Whether any admin key exists (the host generates one on first start
    /// when none does).
    pub async fn admin_key_exists(&self) -> Result<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM api_keys WHERE tenant_id IS NULL LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}
