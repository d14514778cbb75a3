//! Workflows: versioned definitions, which version is active, and the due
//! firings of scheduled triggers.
//!
//! A workflow is a name plus numbered versions. A version's definition (the
//! engine's JSON: trigger, enrollment rules, steps) never changes once
//! stored; editing a workflow adds a version. Of the versions, at most one is
//! `active` (new enrollments use it); the one it replaced becomes `archived`
//! (its runs still in flight finish on it), and fresh ones are `draft`.
//! Activating an archived version is how a workflow is rolled back.
//!
//! A scheduled trigger's next firing is `next_fire_at` (business time) on the
//! workflow row. [`Store::claim_due_schedules`] leases due firings like the
//! event queue leases events (real time, [`CLAIM_LEASE_MS`], `FOR UPDATE
//! SKIP LOCKED` on PostgreSQL), so with several host processes each firing
//! is handled by one of them; [`Store::set_next_fire`] records the next
//! firing and releases the lease.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::store::error::{Result, StoreError};
use crate::store::sql::{self, MAX_PAGE};
use crate::store::{Backend, Store, new_id, now_ms};

/// Longest workflow name.
pub const MAX_WORKFLOW_NAME: usize = 200;
/// Largest definition JSON: a definition is read and compiled on every
/// activation and cache miss of every host process, so a huge one costs
/// everybody; real workflows are a few KiB.
pub const MAX_DEFINITION_BYTES: usize = 256 << 10;

/// Version statuses.
const DRAFT: &str = "draft";
const ACTIVE: &str = "active";
const ARCHIVED: &str = "archived";

const WORKFLOW_COLUMNS: &str =
    "id, tenant_id, name, latest_version, active_version, next_fire_at, created_at, updated_at";
const VERSION_COLUMNS: &str = "workflow_id, version, status, definition, created_at";

/// A workflow of a tenant: its name and which of its versions is where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    /// Workflow id.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Display name (the latest version's).
    pub name: String,
    /// The highest version number (versions count up from 1).
    pub latest_version: i64,
    /// The version new enrollments use; `None` while no version is active.
    pub active_version: Option<i64>,
    /// When the active version's scheduled trigger fires next, epoch ms
    /// (business time); `None` when it has no schedule.
    pub next_fire_at: Option<i64>,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last change of name, versions or activation, epoch ms.
    pub updated_at: i64,
}

/// One version of a workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowVersion {
    /// The workflow.
    pub workflow_id: String,
    /// Version number, from 1.
    pub version: i64,
    /// `draft` (never active), `active` (new enrollments use it) or
    /// `archived` (was active; runs in flight finish on it).
    pub status: String,
    /// The definition, as the engine wrote it.
    pub definition: serde_json::Value,
    /// Creation time, epoch ms.
    pub created_at: i64,
}

/// A name: trimmed, 1 to [`MAX_WORKFLOW_NAME`] bytes.
fn clean_name(name: &str) -> Result<String> {
    match name.trim() {
        "" => Err(StoreError::Invalid("a workflow name must not be empty".into())),
        n if n.len() > MAX_WORKFLOW_NAME => {
            Err(StoreError::Invalid(format!("a workflow name is at most {MAX_WORKFLOW_NAME} bytes")))
        }
        n => Ok(n.to_owned()),
    }
}

/// A definition as stored JSON text, at most [`MAX_DEFINITION_BYTES`].
fn encode_definition(definition: &serde_json::Value) -> Result<String> {
    let json = sql::to_json(definition)?;
    if json.len() > MAX_DEFINITION_BYTES {
        return Err(StoreError::Invalid(format!(
            "a workflow definition is at most {} KiB of JSON (got {} bytes)",
            MAX_DEFINITION_BYTES >> 10,
            json.len()
        )));
    }
    Ok(json)
}

fn workflow_from_row(row: &AnyRow) -> Result<Workflow> {
    Ok(Workflow {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        latest_version: row.try_get("latest_version")?,
        active_version: row.try_get("active_version")?,
        next_fire_at: row.try_get("next_fire_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn version_from_row(row: &AnyRow) -> Result<WorkflowVersion> {
    Ok(WorkflowVersion {
        workflow_id: row.try_get("workflow_id")?,
        version: row.try_get("version")?,
        status: row.try_get("status")?,
        definition: sql::get_json(row, "definition")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Workflow `id` of `tenant`, with `lock` appended (`FOR UPDATE` in write
/// transactions on PostgreSQL).
async fn select_workflow(conn: &mut AnyConnection, tenant: &str, id: &str, lock: &str) -> Result<Option<Workflow>> {
    let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE tenant_id = $1 AND id = $2{lock}");
    let row = sqlx::query(&sql).bind(tenant).bind(id).fetch_optional(&mut *conn).await?;
    row.as_ref().map(workflow_from_row).transpose()
}

async fn insert_version(
    conn: &mut AnyConnection,
    tenant: &str,
    v: &WorkflowVersion,
    definition_json: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO workflow_versions (tenant_id, workflow_id, version, status, definition, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(&v.workflow_id)
    .bind(v.version)
    .bind(&v.status)
    .bind(definition_json)
    .bind(v.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn set_version_status(conn: &mut AnyConnection, workflow: &str, version: i64, status: &str) -> Result<()> {
    sqlx::query("UPDATE workflow_versions SET status = $3 WHERE workflow_id = $1 AND version = $2")
        .bind(workflow)
        .bind(version)
        .bind(status)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// Create a workflow in `tenant` with `definition` as its version 1
    /// (a draft). Fails with [`StoreError::UnknownTenant`] when the tenant
    /// does not exist.
    pub async fn create_workflow(
        &self,
        tenant: &str,
        name: &str,
        definition: &serde_json::Value,
    ) -> Result<(Workflow, WorkflowVersion)> {
        let name = clean_name(name)?;
        let json = encode_definition(definition)?;
        let now = self.now();
        let workflow = Workflow {
            id: new_id(),
            tenant_id: tenant.to_owned(),
            name,
            latest_version: 1,
            active_version: None,
            next_fire_at: None,
            created_at: now,
            updated_at: now,
        };
        let version = WorkflowVersion {
            workflow_id: workflow.id.clone(),
            version: 1,
            status: DRAFT.to_owned(),
            definition: definition.clone(),
            created_at: now,
        };
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO workflows (id, tenant_id, name, latest_version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&workflow.id)
        .bind(tenant)
        .bind(&workflow.name)
        .bind(workflow.latest_version)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match done {
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                return Err(StoreError::UnknownTenant(tenant.to_owned()));
            }
            other => other?,
        };
        insert_version(&mut tx, tenant, &version, &json).await?;
        tx.commit().await?;
        Ok((workflow, version))
    }

    /// Add a version (a draft, numbered latest + 1) to workflow `id`, and
    /// rename the workflow to `name`. `None` when the workflow does not exist
    /// in `tenant`.
    pub async fn add_workflow_version(
        &self,
        tenant: &str,
        id: &str,
        name: &str,
        definition: &serde_json::Value,
    ) -> Result<Option<WorkflowVersion>> {
        let name = clean_name(name)?;
        let json = encode_definition(definition)?;
        let now = self.now();
        let mut tx = self.begin_write().await?;
        // Locked: two concurrent edits must not both take number latest + 1.
        let Some(w) = select_workflow(&mut tx, tenant, id, self.for_update()).await? else { return Ok(None) };
        let version = WorkflowVersion {
            workflow_id: w.id.clone(),
            version: w.latest_version + 1,
            status: DRAFT.to_owned(),
            definition: definition.clone(),
            created_at: now,
        };
        insert_version(&mut tx, tenant, &version, &json).await?;
        sqlx::query(
            "UPDATE workflows SET name = $3, latest_version = $4, updated_at = $5 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(&name)
        .bind(version.version)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    /// Workflow `id` of `tenant`.
    pub async fn get_workflow(&self, tenant: &str, id: &str) -> Result<Option<Workflow>> {
        let mut conn = self.pool.acquire().await?;
        select_workflow(&mut conn, tenant, id, "").await
    }

    /// Every workflow of `tenant`, oldest first.
    pub async fn list_workflows(&self, tenant: &str) -> Result<Vec<Workflow>> {
        let rows = sqlx::query(&format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE tenant_id = $1 ORDER BY id"))
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(workflow_from_row).collect()
    }

    /// Version `version` of workflow `id` of `tenant`.
    pub async fn get_workflow_version(&self, tenant: &str, id: &str, version: i64) -> Result<Option<WorkflowVersion>> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM workflow_versions WHERE tenant_id = $1 AND workflow_id = $2 AND version = $3"
        ))
        .bind(tenant)
        .bind(id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// Every version of workflow `id` of `tenant`, newest first (empty when
    /// the workflow does not exist).
    pub async fn list_workflow_versions(&self, tenant: &str, id: &str) -> Result<Vec<WorkflowVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM workflow_versions WHERE tenant_id = $1 AND workflow_id = $2 \
             ORDER BY version DESC"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    /// Make `version` the active version of workflow `id`, in one
    /// transaction: the version active before (if another) becomes
    /// `archived`, this one `active`, and the scheduled trigger's next firing
    /// is `next_fire_at` (`None`: no schedule). Activating the active version
    /// again only sets `next_fire_at`. `None` when the workflow or the
    /// version does not exist in `tenant`.
    pub async fn activate_workflow_version(
        &self,
        tenant: &str,
        id: &str,
        version: i64,
        next_fire_at: Option<i64>,
    ) -> Result<Option<Workflow>> {
        let mut tx = self.begin_write().await?;
        let Some(mut w) = select_workflow(&mut tx, tenant, id, self.for_update()).await? else { return Ok(None) };
        let exists = sqlx::query("SELECT 1 AS one FROM workflow_versions WHERE workflow_id = $1 AND version = $2")
            .bind(id)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        if let Some(previous) = w.active_version.filter(|&v| v != version) {
            set_version_status(&mut tx, id, previous, ARCHIVED).await?;
        }
        set_version_status(&mut tx, id, version, ACTIVE).await?;
        w.active_version = Some(version);
        w.next_fire_at = next_fire_at;
        w.updated_at = self.now();
        sqlx::query(
            "UPDATE workflows SET active_version = $3, next_fire_at = $4, schedule_lease_until = NULL, \
             updated_at = $5 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(version)
        .bind(next_fire_at)
        .bind(w.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(w))
    }

    /// Stop workflow `id`: its active version becomes `archived`, so nothing
    /// new enrolls and its schedule stops (runs in flight go on). A no-op for
    /// a workflow with no active version. `None` when it does not exist in
    /// `tenant`.
    pub async fn archive_workflow(&self, tenant: &str, id: &str) -> Result<Option<Workflow>> {
        let mut tx = self.begin_write().await?;
        let Some(mut w) = select_workflow(&mut tx, tenant, id, self.for_update()).await? else { return Ok(None) };
        let Some(active) = w.active_version else { return Ok(Some(w)) };
        set_version_status(&mut tx, id, active, ARCHIVED).await?;
        w.active_version = None;
        w.next_fire_at = None;
        w.updated_at = self.now();
        sqlx::query(
            "UPDATE workflows SET active_version = NULL, next_fire_at = NULL, schedule_lease_until = NULL, \
             updated_at = $3 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(w.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(w))
    }

    /// Every workflow of `tenant` that has an active version, with that
    /// version, oldest workflow first.
    pub async fn active_workflows(&self, tenant: &str) -> Result<Vec<(Workflow, WorkflowVersion)>> {
        let cols = WORKFLOW_COLUMNS.split(", ").map(|c| format!("w.{c}")).collect::<Vec<_>>().join(", ");
        let rows = sqlx::query(&format!(
            "SELECT {cols}, v.workflow_id, v.version, v.status, v.definition, v.created_at AS version_created_at \
             FROM workflows w JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = w.active_version \
             WHERE w.tenant_id = $1 AND w.active_version IS NOT NULL ORDER BY w.id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let version = WorkflowVersion {
                    workflow_id: row.try_get("workflow_id")?,
                    version: row.try_get("version")?,
                    status: row.try_get("status")?,
                    definition: sql::get_json(row, "definition")?,
                    created_at: row.try_get("version_created_at")?,
                };
                Ok((workflow_from_row(row)?, version))
            })
            .collect()
    }

    /// Claim up to `limit` scheduled firings due at `now` (business time):
    /// workflows with an active version and `next_fire_at <= now` that no
    /// other worker holds. Each is leased for [`CLAIM_LEASE_MS`] of real
    /// time, until [`Store::set_next_fire`] records its next firing (or the
    /// lease runs out and it is claimed again). Earliest due first, each with
    /// its tenant id.
    pub async fn claim_due_schedules(&self, now: i64, limit: i64) -> Result<Vec<(String, Workflow)>> {
        // The lease is real time even when business time is a manual clock:
        // it says whether the claiming process is alive.
        let real = now_ms();
        // The runner asks every round and almost always nothing is due: a
        // read (one seek on the due index, no writer's turn) says so without
        // queueing behind the writers on SQLite.
        let any_due: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM workflows WHERE next_fire_at IS NOT NULL AND next_fire_at <= $1 \
             AND active_version IS NOT NULL AND (schedule_lease_until IS NULL OR schedule_lease_until < $2) LIMIT 1",
        )
        .bind(now)
        .bind(real)
        .fetch_optional(&self.pool)
        .await?;
        if any_due.is_none() {
            return Ok(Vec::new());
        }
        let mut turn = self.write_gate().await?;
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE workflows SET schedule_lease_until = $1 WHERE id IN (SELECT id FROM workflows \
             WHERE next_fire_at IS NOT NULL AND next_fire_at <= $2 AND active_version IS NOT NULL \
             AND (schedule_lease_until IS NULL OR schedule_lease_until < $3) \
             ORDER BY next_fire_at LIMIT $4{lock}) RETURNING {WORKFLOW_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(real + self.claim_lease_ms())
            .bind(now)
            .bind(real)
            .bind(limit.clamp(1, i64::from(MAX_PAGE)))
            .fetch_all(turn.conn(&self.pool).await?)
            .await;
        let rows = turn.check(rows)?;
        let mut out = rows.iter().map(workflow_from_row).collect::<Result<Vec<_>>>()?;
        // RETURNING order is unspecified.
        out.sort_by(|a, b| (a.next_fire_at, &a.id).cmp(&(b.next_fire_at, &b.id)));
        Ok(out.into_iter().map(|w| (w.tenant_id.clone(), w)).collect())
    }

    /// Record when workflow `id` fires next (`None`: not again) and release
    /// its schedule lease. A workflow archived meanwhile keeps no next
    /// firing. A no-op when it does not exist in `tenant`.
    pub async fn set_next_fire(&self, tenant: &str, id: &str, next: Option<i64>) -> Result<()> {
        sqlx::query(
            "UPDATE workflows SET next_fire_at = CASE WHEN active_version IS NULL THEN NULL ELSE $3 END, \
             schedule_lease_until = NULL WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(next)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
