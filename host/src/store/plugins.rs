//! Plugin versions and their bytes, installs, and each install's own
//! key-value state.
//!
//! A version belongs to a tenant, or to the global catalog (`tenant_id`
//! `None`, prebuilt plugins); a tenant sees its own versions and the global
//! ones. A (owner, name, version) is immutable once uploaded: the same bytes
//! again return the existing version, different bytes are a
//! [`StoreError::VersionConflict`]. Bytes are stored once per SHA-256, however
//! many tenants upload them.
//!
//! An install is a version put to work in a tenant, with its config and the
//! capabilities granted to it (`store-read`, `store-write`, `state`,
//! `http:<host>`, ...). Pointing an install at another version is an upgrade
//! or a rollback.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::store::error::{Result, StoreError, is_unique_violation};
use crate::store::sql::{self, to_json};
use crate::store::{Store, new_id, now_ms};

/// Longest plugin name or version string.
const MAX_NAME: usize = 128;
/// Most grants on one install, and longest grant.
const MAX_GRANTS: usize = 64;
const MAX_GRANT: usize = 300;
/// Largest install config, as JSON.
pub const MAX_CONFIG_BYTES: usize = 64 << 10;
/// Longest state key and largest state value: the state is a plugin's
/// scratch space, not a database of its own.
pub const MAX_STATE_KEY: usize = 512;
/// Largest state value.
pub const MAX_STATE_VALUE: usize = 1 << 20;

/// One uploaded version of a plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVersion {
    /// Version id.
    pub id: String,
    /// Owning tenant; `None` for the global catalog.
    pub tenant_id: Option<String>,
    /// Plugin name (from its `describe()`).
    pub name: String,
    /// Version string (from its `describe()`).
    pub version: String,
    /// SHA-256 of the component bytes, hex.
    pub hash: String,
    /// Size of the bytes.
    pub size: i64,
    /// The `describe()` result, as JSON text.
    pub description_json: String,
    /// Upload time, epoch ms.
    pub created_at: i64,
}

/// A plugin version installed in a tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Install {
    /// Install id.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// The version it runs.
    pub plugin_version_id: String,
    /// The plugin's name.
    pub plugin_name: String,
    /// The version string it runs.
    pub plugin_version: String,
    /// The SHA-256 of the component it runs.
    pub plugin_hash: String,
    /// Settings, validated against the plugin's config schema by the caller.
    pub config: serde_json::Value,
    /// Capabilities granted, e.g. `store-read`, `state`, `http:hooks.example.com`.
    pub grants: Vec<String>,
    /// Whether it runs.
    pub enabled: bool,
    /// Why the host disabled it (the circuit breaker); `None` when enabled
    /// or disabled by hand.
    pub disabled_reason: Option<String>,
    /// Whether a newly uploaded version of the plugin replaces the one it
    /// runs (after its health check), without an admin's call.
    #[serde(default)]
    pub auto_upgrade: bool,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last change, epoch ms.
    pub updated_at: i64,
}

/// An install to create.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInstall {
    /// The version to run (the tenant's own or global).
    pub plugin_version_id: String,
    /// Settings (`{}` when absent).
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Capabilities granted.
    #[serde(default)]
    pub grants: Vec<String>,
    /// Whether it runs (true when absent).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Follow new uploads of the plugin (false when absent).
    #[serde(default)]
    pub auto_upgrade: Option<bool>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Changes to an install; absent fields are left alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallPatch {
    /// Run another version (upgrade or rollback).
    #[serde(default)]
    pub plugin_version_id: Option<String>,
    /// New settings.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// New set of grants.
    #[serde(default)]
    pub grants: Option<Vec<String>>,
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Follow new uploads of the plugin, or stop following them.
    #[serde(default)]
    pub auto_upgrade: Option<bool>,
}

const VERSION_COLUMNS: &str = "id, tenant_id, name, version, hash, size, description_json, created_at";
const INSTALL_SELECT: &str = "SELECT i.id, i.tenant_id, i.plugin_version_id, v.name AS plugin_name, \
     v.version AS plugin_version, v.hash AS plugin_hash, i.config, i.grants, i.enabled, i.disabled_reason, \
     i.auto_upgrade, i.created_at, i.updated_at \
     FROM installs i JOIN plugin_versions v ON v.id = i.plugin_version_id";

fn version_from_row(row: &AnyRow) -> Result<PluginVersion> {
    Ok(PluginVersion {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        hash: row.try_get("hash")?,
        size: row.try_get("size")?,
        description_json: row.try_get("description_json")?,
        created_at: row.try_get("created_at")?,
    })
}

fn install_from_row(row: &AnyRow) -> Result<Install> {
    Ok(Install {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        plugin_version_id: row.try_get("plugin_version_id")?,
        plugin_name: row.try_get("plugin_name")?,
        plugin_version: row.try_get("plugin_version")?,
        plugin_hash: row.try_get("plugin_hash")?,
        config: sql::get_json(row, "config")?,
        grants: sql::get_json(row, "grants")?,
        enabled: sql::get_bool(row, "enabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        auto_upgrade: sql::get_bool(row, "auto_upgrade")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn check_name(field: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.len() > MAX_NAME || v.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!("a plugin {field} is 1 to {MAX_NAME} printable bytes")));
    }
    Ok(())
}

fn encode_config(config: &serde_json::Value) -> Result<String> {
    if !config.is_object() {
        return Err(StoreError::Invalid("an install config is a JSON object".into()));
    }
    let json = to_json(config)?;
    if json.len() > MAX_CONFIG_BYTES {
        return Err(StoreError::Invalid(format!("an install config is at most {} KiB", MAX_CONFIG_BYTES >> 10)));
    }
    Ok(json)
}

fn encode_grants(grants: &[String]) -> Result<String> {
    let mut g: Vec<&str> = grants.iter().map(|s| s.trim()).collect();
    g.sort_unstable();
    g.dedup();
    if g.len() > MAX_GRANTS || g.iter().any(|s| s.is_empty() || s.len() > MAX_GRANT) {
        return Err(StoreError::Invalid(format!("at most {MAX_GRANTS} grants of 1 to {MAX_GRANT} bytes each")));
    }
    to_json(&g)
}

/// The version `id` if `tenant` may use it (its own or global).
async fn visible_version(conn: &mut AnyConnection, tenant: Option<&str>, id: &str) -> Result<Option<PluginVersion>> {
    let row = sqlx::query(&format!(
        "SELECT {VERSION_COLUMNS} FROM plugin_versions WHERE id = $1 AND (tenant_id IS NULL OR tenant_id = $2)"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(version_from_row).transpose()
}

async fn select_install(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<Option<Install>> {
    let row = sqlx::query(&format!("{INSTALL_SELECT} WHERE i.tenant_id = $1 AND i.id = $2"))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(install_from_row).transpose()
}

impl Store {
    /// Store a plugin version of `tenant` (`None`: the global catalog) with
    /// its bytes. `hash` must be the SHA-256 hex of `bytes`. Uploading the
    /// same owner, name, version and bytes again returns the existing version;
    /// other bytes under an existing version are a [`StoreError::VersionConflict`].
    pub async fn put_plugin_version(
        &self,
        tenant: Option<&str>,
        name: &str,
        version: &str,
        hash: &str,
        bytes: &[u8],
        description_json: &str,
    ) -> Result<PluginVersion> {
        check_name("name", name)?;
        check_name("version", version)?;
        if hex::encode(Sha256::digest(bytes)) != hash {
            return Err(StoreError::Invalid("hash is not the SHA-256 of the plugin bytes".into()));
        }
        match self.insert_version(tenant, name, version, hash, bytes, description_json).await {
            // A concurrent upload of the same name and version won the race:
            // judge against what it stored.
            Err(StoreError::Database(e)) if is_unique_violation(&e) => {
                self.insert_version(tenant, name, version, hash, bytes, description_json).await
            }
            other => other,
        }
    }

    async fn insert_version(
        &self,
        tenant: Option<&str>,
        name: &str,
        version: &str,
        hash: &str,
        bytes: &[u8],
        description_json: &str,
    ) -> Result<PluginVersion> {
        let owner = tenant.unwrap_or("");
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM plugin_versions WHERE owner_key = $1 AND name = $2 AND version = $3"
        ))
        .bind(owner)
        .bind(name)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(existing) = row.as_ref().map(version_from_row).transpose()? {
            return if existing.hash == hash {
                Ok(existing)
            } else {
                Err(StoreError::VersionConflict { name: name.to_owned(), version: version.to_owned() })
            };
        }
        sqlx::query("INSERT INTO plugin_blobs (hash, bytes, size) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING")
            .bind(hash)
            .bind(bytes)
            .bind(bytes.len() as i64)
            .execute(&mut *tx)
            .await?;
        let v = PluginVersion {
            id: new_id(),
            tenant_id: tenant.map(str::to_owned),
            name: name.to_owned(),
            version: version.to_owned(),
            hash: hash.to_owned(),
            size: bytes.len() as i64,
            description_json: description_json.to_owned(),
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO plugin_versions (id, tenant_id, owner_key, name, version, hash, size, description_json, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&v.id)
        .bind(tenant)
        .bind(owner)
        .bind(&v.name)
        .bind(&v.version)
        .bind(&v.hash)
        .bind(v.size)
        .bind(&v.description_json)
        .bind(v.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(v)
    }

    /// Version `id`, if `tenant` may see it (its own or global; `None` sees
    /// only global versions).
    pub async fn get_plugin_version(&self, tenant: Option<&str>, id: &str) -> Result<Option<PluginVersion>> {
        let mut conn = self.pool.acquire().await?;
        visible_version(&mut conn, tenant, id).await
    }

    /// The version `tenant` would get for `name` and `version`: its own if it
    /// uploaded one, else the global one.
    pub async fn find_plugin_version(
        &self,
        tenant: Option<&str>,
        name: &str,
        version: &str,
    ) -> Result<Option<PluginVersion>> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM plugin_versions WHERE name = $1 AND version = $2 \
             AND (tenant_id IS NULL OR tenant_id = $3) ORDER BY owner_key DESC LIMIT 1"
        ))
        .bind(name)
        .bind(version)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// The bytes of the component with this SHA-256.
    pub async fn plugin_bytes(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        let row =
            sqlx::query("SELECT bytes FROM plugin_blobs WHERE hash = $1").bind(hash).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get("bytes")).transpose()?)
    }

    /// The versions `tenant` can see (its own and global; `None`: global
    /// only), by name then upload time.
    pub async fn list_plugin_versions(&self, tenant: Option<&str>) -> Result<Vec<PluginVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM plugin_versions WHERE tenant_id IS NULL OR tenant_id = $1 \
             ORDER BY name, created_at, id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    /// Install a version in `tenant`. Fails with
    /// [`StoreError::UnknownReference`] when the tenant cannot see the version.
    pub async fn create_install(&self, tenant: &str, new: NewInstall) -> Result<Install> {
        let config = encode_config(&new.config)?;
        let grants = encode_grants(&new.grants)?;
        let now = now_ms();
        let id = new_id();
        let mut tx = self.begin_write().await?;
        if visible_version(&mut tx, Some(tenant), &new.plugin_version_id).await?.is_none() {
            return Err(StoreError::UnknownReference { entity: "plugin version", id: new.plugin_version_id });
        }
        sqlx::query(
            "INSERT INTO installs (id, tenant_id, plugin_version_id, config, grants, enabled, auto_upgrade, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(tenant)
        .bind(&new.plugin_version_id)
        .bind(&config)
        .bind(&grants)
        .bind(i64::from(new.enabled.unwrap_or(true)))
        .bind(i64::from(new.auto_upgrade.unwrap_or(false)))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let install = select_install(&mut tx, tenant, &id).await?;
        tx.commit().await?;
        install.ok_or_else(|| StoreError::Corrupt("install vanished after insert".into()))
    }

    /// Install `id` of `tenant`.
    pub async fn get_install(&self, tenant: &str, id: &str) -> Result<Option<Install>> {
        let mut conn = self.pool.acquire().await?;
        select_install(&mut conn, tenant, id).await
    }

    /// The tenant's installs, oldest first.
    pub async fn list_installs(&self, tenant: &str) -> Result<Vec<Install>> {
        let rows = sqlx::query(&format!("{INSTALL_SELECT} WHERE i.tenant_id = $1 ORDER BY i.id"))
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(install_from_row).collect()
    }

    /// Every enabled install of every tenant (loaded at startup).
    pub async fn list_all_enabled_installs(&self) -> Result<Vec<Install>> {
        let rows =
            sqlx::query(&format!("{INSTALL_SELECT} WHERE i.enabled = 1 ORDER BY i.id")).fetch_all(&self.pool).await?;
        rows.iter().map(install_from_row).collect()
    }

    /// Apply `patch` to install `id`; `None` when it does not exist.
    pub async fn patch_install(&self, tenant: &str, id: &str, patch: InstallPatch) -> Result<Option<Install>> {
        let mut tx = self.begin_write().await?;
        let lock = self.for_update();
        let row = sqlx::query(&format!("SELECT id FROM installs WHERE tenant_id = $1 AND id = $2{lock}"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if row.is_none() {
            return Ok(None);
        }
        let now = now_ms();
        if let Some(v) = &patch.plugin_version_id {
            if visible_version(&mut tx, Some(tenant), v).await?.is_none() {
                return Err(StoreError::UnknownReference { entity: "plugin version", id: v.clone() });
            }
            self.set_install_column(&mut tx, tenant, id, "plugin_version_id", v, now).await?;
        }
        if let Some(c) = &patch.config {
            self.set_install_column(&mut tx, tenant, id, "config", &encode_config(c)?, now).await?;
        }
        if let Some(g) = &patch.grants {
            self.set_install_column(&mut tx, tenant, id, "grants", &encode_grants(g)?, now).await?;
        }
        if let Some(e) = patch.enabled {
            // Any change by hand clears the breaker's reason.
            sqlx::query(
                "UPDATE installs SET enabled = $3, disabled_reason = NULL, updated_at = $4 \
                 WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(i64::from(e))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(a) = patch.auto_upgrade {
            sqlx::query("UPDATE installs SET auto_upgrade = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .bind(i64::from(a))
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let install = select_install(&mut tx, tenant, id).await?;
        tx.commit().await?;
        Ok(install)
    }

    /// The tenant's installs of plugin `name` that follow new uploads.
    pub async fn auto_upgrade_installs(&self, tenant: &str, name: &str) -> Result<Vec<Install>> {
        let rows = sqlx::query(&format!(
            "{INSTALL_SELECT} WHERE i.tenant_id = $1 AND v.name = $2 AND i.auto_upgrade = 1 ORDER BY i.id"
        ))
        .bind(tenant)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(install_from_row).collect()
    }

    async fn set_install_column(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
        id: &str,
        column: &'static str,
        value: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(&format!("UPDATE installs SET {column} = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant)
            .bind(id)
            .bind(value)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Disable install `id` for `reason` (the circuit breaker), unless it is
    /// already disabled; true when this call disabled it.
    pub async fn trip_install(&self, tenant: &str, id: &str, reason: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE installs SET enabled = 0, disabled_reason = $3, updated_at = $4 \
             WHERE tenant_id = $1 AND id = $2 AND enabled = 1",
        )
        .bind(tenant)
        .bind(id)
        .bind(reason)
        .bind(self.now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Remove install `id` with its state. Workflows that name it fail that
    /// step with "not installed" (visible on the run) until it is replaced.
    pub async fn delete_install(&self, tenant: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM installs WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The value install `install_id` stored under `key`.
    pub async fn state_get(&self, tenant: &str, install_id: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT value FROM plugin_state WHERE tenant_id = $1 AND install_id = $2 AND key = $3")
            .bind(tenant)
            .bind(install_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    /// Store `value` under `key` for install `install_id`. Fails with
    /// [`StoreError::UnknownReference`] when the install does not exist in `tenant`.
    pub async fn state_set(&self, tenant: &str, install_id: &str, key: &str, value: &[u8]) -> Result<()> {
        if key.is_empty() || key.len() > MAX_STATE_KEY || value.len() > MAX_STATE_VALUE {
            return Err(StoreError::Invalid(format!(
                "state keys are 1 to {MAX_STATE_KEY} bytes and values at most {} KiB",
                MAX_STATE_VALUE >> 10
            )));
        }
        // Insert only when the install is the tenant's, in one statement.
        let done = sqlx::query(
            "INSERT INTO plugin_state (install_id, tenant_id, key, value, updated_at) \
             SELECT id, tenant_id, $3, $4, $5 FROM installs WHERE tenant_id = $1 AND id = $2 \
             ON CONFLICT (install_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(install_id)
        .bind(key)
        .bind(value)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::UnknownReference { entity: "install", id: install_id.to_owned() });
        }
        Ok(())
    }

    /// Delete `key` of install `install_id`; false when there was none.
    pub async fn state_delete(&self, tenant: &str, install_id: &str, key: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM plugin_state WHERE tenant_id = $1 AND install_id = $2 AND key = $3")
            .bind(tenant)
            .bind(install_id)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
