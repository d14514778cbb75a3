//! Companies, deals, tasks and notes: the CRM records around contacts.
//!
//! References between them (a deal's contact and company, a task's contact)
//! are checked inside the caller's tenant, so a record can never point into
//! another tenant. Tasks carry an optional idempotency key, unique per
//! tenant: a retried workflow step that creates "call now" gets back the task
//! it created the first time instead of a second one.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::store::contacts::{clean_text, company_exists, contact_exists, nullable};
use crate::store::error::{Result, StoreError};
use crate::store::sql::{Arg, Builder, page_limit};
use crate::store::value::{Properties, Value, decode_properties, encode_properties, merge_properties};
use crate::store::{Page, Store, new_id};

/// Longest name of a company or deal, and longest task title.
const MAX_NAME: usize = 500;
/// Longest domain, assignee, stage or status.
const MAX_FIELD: usize = 200;
/// Longest note: notes are text, not attachments.
pub const MAX_NOTE: usize = 64 << 10;
/// The stage of a deal created without one.
pub const DEFAULT_DEAL_STAGE: &str = "new";
/// Task status values.
const TASK_STATUSES: [&str; 2] = ["open", "done"];

/// An organisation contacts belong to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Company {
    /// Company id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Web domain, lower-case.
    pub domain: Option<String>,
    /// Custom properties.
    pub properties: Properties,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last change, epoch ms.
    pub updated_at: i64,
}

/// A company to create.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCompany {
    /// Name.
    pub name: String,
    /// Web domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// Custom properties.
    #[serde(default)]
    pub properties: Properties,
}

/// Changes to a company (absent fields are left alone; properties merge).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompanyPatch {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New domain, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub domain: Option<Option<String>>,
    /// Properties to merge (`null` deletes).
    #[serde(default)]
    pub properties: Option<Properties>,
}

/// A sales opportunity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deal {
    /// Deal id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Pipeline stage.
    pub stage: String,
    /// Value, in the tenant's currency.
    pub amount: Option<f64>,
    /// The contact it is with.
    pub contact_id: Option<String>,
    /// The company it is with.
    pub company_id: Option<String>,
    /// Custom properties.
    pub properties: Properties,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last change, epoch ms.
    pub updated_at: i64,
}

/// A deal to create.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDeal {
    /// Name.
    pub name: String,
    /// Stage; `new` when absent.
    #[serde(default)]
    pub stage: Option<String>,
    /// Value.
    #[serde(default)]
    pub amount: Option<f64>,
    /// Contact id (must exist in the tenant).
    #[serde(default)]
    pub contact_id: Option<String>,
    /// Company id (must exist in the tenant).
    #[serde(default)]
    pub company_id: Option<String>,
    /// Custom properties.
    #[serde(default)]
    pub properties: Properties,
}

/// Changes to a deal (absent fields are left alone; `null` clears optional
/// fields; properties merge).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DealPatch {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New stage.
    #[serde(default)]
    pub stage: Option<String>,
    /// New amount, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub amount: Option<Option<f64>>,
    /// New contact, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub contact_id: Option<Option<String>>,
    /// New company, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub company_id: Option<Option<String>>,
    /// Properties to merge (`null` deletes).
    #[serde(default)]
    pub properties: Option<Properties>,
}

/// Which deals [`Store::list_deals`] returns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DealFilter {
    /// In this stage.
    #[serde(default)]
    pub stage: Option<String>,
    /// With this contact.
    #[serde(default)]
    pub contact_id: Option<String>,
    /// With this company.
    #[serde(default)]
    pub company_id: Option<String>,
}

/// Something a person has to do, usually about a contact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Task id.
    pub id: String,
    /// The contact it is about.
    pub contact_id: Option<String>,
    /// What to do.
    pub title: String,
    /// Who does it.
    pub assignee: Option<String>,
    /// When it is due, epoch ms.
    pub due_at: Option<i64>,
    /// `open` or `done`.
    pub status: String,
    /// The key that made its creation idempotent.
    pub idempotency_key: Option<String>,
    /// Who created it: an install id, or `api`.
    pub created_by: String,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last change, epoch ms.
    pub updated_at: i64,
}

/// A task to create.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// The contact it is about (must exist in the tenant).
    #[serde(default)]
    pub contact_id: Option<String>,
    /// What to do.
    pub title: String,
    /// Who does it.
    #[serde(default)]
    pub assignee: Option<String>,
    /// When it is due, epoch ms.
    #[serde(default)]
    pub due_at: Option<i64>,
    /// Creating a task with a key the tenant already used returns that task.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Changes to a task.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPatch {
    /// New title.
    #[serde(default)]
    pub title: Option<String>,
    /// New assignee, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub assignee: Option<Option<String>>,
    /// New due time, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub due_at: Option<Option<i64>>,
    /// `open` or `done`.
    #[serde(default)]
    pub status: Option<String>,
}

/// Which tasks [`Store::list_tasks`] returns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskFilter {
    /// About this contact.
    #[serde(default)]
    pub contact_id: Option<String>,
    /// With this status.
    #[serde(default)]
    pub status: Option<String>,
}

/// A free-text note on a contact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// Note id.
    pub id: String,
    /// The contact.
    pub contact_id: String,
    /// The text.
    pub body: String,
    /// Creation time, epoch ms.
    pub created_at: i64,
}

const COMPANY_COLUMNS: &str = "id, name, domain, properties, created_at, updated_at";
const DEAL_COLUMNS: &str = "id, name, stage, amount, contact_id, company_id, properties, created_at, updated_at";
pub(crate) const TASK_COLUMNS: &str =
    "id, contact_id, title, assignee, due_at, status, idempotency_key, created_by, created_at, updated_at";
pub(crate) const NOTE_COLUMNS: &str = "id, contact_id, body, created_at";

fn required(field: &str, v: &str, max: usize) -> Result<String> {
    clean_text(field, Some(v), max)?.ok_or_else(|| StoreError::Invalid(format!("{field} must not be empty")))
}

fn clean_domain(v: Option<&str>) -> Result<Option<String>> {
    Ok(clean_text("domain", v, MAX_FIELD)?.map(|d| d.to_lowercase()))
}

fn clean_status(v: &str) -> Result<String> {
    let v = v.trim();
    if TASK_STATUSES.contains(&v) {
        Ok(v.to_owned())
    } else {
        Err(StoreError::Invalid(format!("a task status is one of {}", TASK_STATUSES.join(", "))))
    }
}

fn clean_amount(v: Option<f64>) -> Result<Option<f64>> {
    match v {
        Some(a) if !a.is_finite() => Err(StoreError::Invalid("amount must be a finite number".into())),
        other => Ok(other),
    }
}

fn without_nulls(mut p: Properties) -> Properties {
    p.retain(|_, v| *v != Value::Null);
    p
}

fn company_from_row(row: &AnyRow) -> Result<Company> {
    Ok(Company {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        domain: row.try_get("domain")?,
        properties: decode_properties(&row.try_get::<String, _>("properties")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn deal_from_row(row: &AnyRow) -> Result<Deal> {
    Ok(Deal {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        stage: row.try_get("stage")?,
        amount: row.try_get("amount")?,
        contact_id: row.try_get("contact_id")?,
        company_id: row.try_get("company_id")?,
        properties: decode_properties(&row.try_get::<String, _>("properties")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Read a task row.
pub(crate) fn task_from_row(row: &AnyRow) -> Result<Task> {
    Ok(Task {
        id: row.try_get("id")?,
        contact_id: row.try_get("contact_id")?,
        title: row.try_get("title")?,
        assignee: row.try_get("assignee")?,
        due_at: row.try_get("due_at")?,
        status: row.try_get("status")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Read a note row.
pub(crate) fn note_from_row(row: &AnyRow) -> Result<Note> {
    Ok(Note {
        id: row.try_get("id")?,
        contact_id: row.try_get("contact_id")?,
        body: row.try_get("body")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Cut a fetched page to `limit` and work out the next cursor.
fn paged<T>(mut items: Vec<T>, limit: i64, id: impl Fn(&T) -> &str) -> Page<T> {
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|x| id(x).to_owned())
    } else {
        None
    };
    Page { items, next_cursor }
}

/// Check that the contact and company a deal names exist in `tenant`.
async fn check_deal_refs(
    conn: &mut AnyConnection,
    tenant: &str,
    contact: Option<&str>,
    company: Option<&str>,
) -> Result<()> {
    if let Some(c) = contact
        && !contact_exists(conn, tenant, c).await?
    {
        return Err(StoreError::UnknownReference { entity: "contact", id: c.to_owned() });
    }
    if let Some(c) = company
        && !company_exists(conn, tenant, c).await?
    {
        return Err(StoreError::UnknownReference { entity: "company", id: c.to_owned() });
    }
    Ok(())
}

async fn select_task(conn: &mut AnyConnection, tenant: &str, id: &str, lock: &str) -> Result<Option<Task>> {
    let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 AND id = $2{lock}"))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(task_from_row).transpose()
}

async fn select_task_by_key(conn: &mut AnyConnection, tenant: &str, key: &str) -> Result<Option<Task>> {
    let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 AND idempotency_key = $2"))
        .bind(tenant)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(task_from_row).transpose()
}

impl Store {
    // ---- companies ----

    /// Create a company.
    pub async fn create_company(&self, tenant: &str, new: NewCompany) -> Result<Company> {
        let now = self.now();
        let c = Company {
            id: new_id(),
            name: required("name", &new.name, MAX_NAME)?,
            domain: clean_domain(new.domain.as_deref())?,
            properties: without_nulls(new.properties),
            created_at: now,
            updated_at: now,
        };
        let props = encode_properties(&c.properties)?;
        sqlx::query(
            "INSERT INTO companies (id, tenant_id, name, domain, properties, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&c.id)
        .bind(tenant)
        .bind(&c.name)
        .bind(c.domain.as_deref())
        .bind(&props)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(c)
    }

    /// Company `id` of `tenant`.
    pub async fn get_company(&self, tenant: &str, id: &str) -> Result<Option<Company>> {
        let row = sqlx::query(&format!("SELECT {COMPANY_COLUMNS} FROM companies WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(company_from_row).transpose()
    }

    /// One page of the tenant's companies in id order, after `cursor`.
    pub async fn list_companies(&self, tenant: &str, cursor: Option<&str>, limit: u32) -> Result<Page<Company>> {
        let limit = page_limit(limit);
        let mut b = Builder::new(&format!("SELECT {COMPANY_COLUMNS} FROM companies WHERE tenant_id = "));
        let t = b.arg(Arg::Text(tenant));
        b.push(&t);
        if let Some(after) = cursor {
            b.push_arg(" AND id > ", Arg::Text(after));
        }
        b.push_arg(" ORDER BY id LIMIT ", Arg::Int(limit + 1));
        let rows = b.query().fetch_all(&self.pool).await?;
        let items = rows.iter().map(company_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paged(items, limit, |c| &c.id))
    }

    /// Apply `patch` to company `id`; `None` when it does not exist.
    pub async fn patch_company(&self, tenant: &str, id: &str, patch: CompanyPatch) -> Result<Option<Company>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT {COMPANY_COLUMNS} FROM companies WHERE tenant_id = $1 AND id = $2{}",
            self.for_update()
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut c) = row.as_ref().map(company_from_row).transpose()? else { return Ok(None) };
        if let Some(n) = &patch.name {
            c.name = required("name", n, MAX_NAME)?;
        }
        if let Some(d) = &patch.domain {
            c.domain = clean_domain(d.as_deref())?;
        }
        if let Some(p) = &patch.properties {
            merge_properties(&mut c.properties, p);
        }
        c.updated_at = self.now();
        let props = encode_properties(&c.properties)?;
        sqlx::query(
            "UPDATE companies SET name = $3, domain = $4, properties = $5, updated_at = $6 \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(&c.name)
        .bind(c.domain.as_deref())
        .bind(&props)
        .bind(c.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(c))
    }

    /// Delete company `id` (its contacts and deals stay, without it).
    pub async fn delete_company(&self, tenant: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM companies WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- deals ----

    /// Create a deal; its contact and company must exist in `tenant`.
    pub async fn create_deal(&self, tenant: &str, new: NewDeal) -> Result<Deal> {
        let now = self.now();
        let d = Deal {
            id: new_id(),
            name: required("name", &new.name, MAX_NAME)?,
            stage: required("stage", new.stage.as_deref().unwrap_or(DEFAULT_DEAL_STAGE), MAX_FIELD)?,
            amount: clean_amount(new.amount)?,
            contact_id: new.contact_id,
            company_id: new.company_id,
            properties: without_nulls(new.properties),
            created_at: now,
            updated_at: now,
        };
        let props = encode_properties(&d.properties)?;
        let mut tx = self.begin_write().await?;
        check_deal_refs(&mut tx, tenant, d.contact_id.as_deref(), d.company_id.as_deref()).await?;
        sqlx::query(
            "INSERT INTO deals (id, tenant_id, name, stage, amount, contact_id, company_id, properties, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&d.id)
        .bind(tenant)
        .bind(&d.name)
        .bind(&d.stage)
        .bind(d.amount)
        .bind(d.contact_id.as_deref())
        .bind(d.company_id.as_deref())
        .bind(&props)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(d)
    }

    /// Deal `id` of `tenant`.
    pub async fn get_deal(&self, tenant: &str, id: &str) -> Result<Option<Deal>> {
        let row = sqlx::query(&format!("SELECT {DEAL_COLUMNS} FROM deals WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(deal_from_row).transpose()
    }

    /// One page of the tenant's deals matching `filter`, in id order.
    pub async fn list_deals(
        &self,
        tenant: &str,
        filter: &DealFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Deal>> {
        let limit = page_limit(limit);
        let mut b = Builder::new(&format!("SELECT {DEAL_COLUMNS} FROM deals WHERE tenant_id = "));
        let t = b.arg(Arg::Text(tenant));
        b.push(&t);
        if let Some(s) = &filter.stage {
            b.push_arg(" AND stage = ", Arg::Text(s));
        }
        if let Some(c) = &filter.contact_id {
            b.push_arg(" AND contact_id = ", Arg::Text(c));
        }
        if let Some(c) = &filter.company_id {
            b.push_arg(" AND company_id = ", Arg::Text(c));
        }
        if let Some(after) = cursor {
            b.push_arg(" AND id > ", Arg::Text(after));
        }
        b.push_arg(" ORDER BY id LIMIT ", Arg::Int(limit + 1));
        let rows = b.query().fetch_all(&self.pool).await?;
        let items = rows.iter().map(deal_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paged(items, limit, |d| &d.id))
    }

    /// Apply `patch` to deal `id`; `None` when it does not exist.
    pub async fn patch_deal(&self, tenant: &str, id: &str, patch: DealPatch) -> Result<Option<Deal>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT {DEAL_COLUMNS} FROM deals WHERE tenant_id = $1 AND id = $2{}",
            self.for_update()
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut d) = row.as_ref().map(deal_from_row).transpose()? else { return Ok(None) };
        if let Some(n) = &patch.name {
            d.name = required("name", n, MAX_NAME)?;
        }
        if let Some(s) = &patch.stage {
            d.stage = required("stage", s, MAX_FIELD)?;
        }
        if let Some(a) = patch.amount {
            d.amount = clean_amount(a)?;
        }
        let contact = patch.contact_id.as_ref().and_then(|c| c.as_deref());
        let company = patch.company_id.as_ref().and_then(|c| c.as_deref());
        check_deal_refs(&mut tx, tenant, contact, company).await?;
        if let Some(c) = patch.contact_id {
            d.contact_id = c;
        }
        if let Some(c) = patch.company_id {
            d.company_id = c;
        }
        if let Some(p) = &patch.properties {
            merge_properties(&mut d.properties, p);
        }
        d.updated_at = self.now();
        let props = encode_properties(&d.properties)?;
        sqlx::query(
            "UPDATE deals SET name = $3, stage = $4, amount = $5, contact_id = $6, company_id = $7, \
             properties = $8, updated_at = $9 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(&d.name)
        .bind(&d.stage)
        .bind(d.amount)
        .bind(d.contact_id.as_deref())
        .bind(d.company_id.as_deref())
        .bind(&props)
        .bind(d.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(d))
    }

    /// Delete deal `id`.
    pub async fn delete_deal(&self, tenant: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM deals WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- tasks ----

    /// Create a task on behalf of `created_by` (an install id, or `api`).
    ///
    /// Returns the task and whether it was created now: when the tenant
    /// already has a task with the same idempotency key, that task comes back
    /// with `false`. `None` when `contact_id` names no contact of `tenant`.
    pub async fn create_task(&self, tenant: &str, new: NewTask, created_by: &str) -> Result<Option<(Task, bool)>> {
        let now = self.now();
        let task = Task {
            id: new_id(),
            contact_id: new.contact_id,
            title: required("title", &new.title, MAX_NAME)?,
            assignee: clean_text("assignee", new.assignee.as_deref(), MAX_FIELD)?,
            due_at: new.due_at,
            status: "open".to_owned(),
            idempotency_key: clean_text("idempotency_key", new.idempotency_key.as_deref(), MAX_FIELD)?,
            created_by: created_by.to_owned(),
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        if let Some(key) = &task.idempotency_key
            && let Some(existing) = select_task_by_key(&mut tx, tenant, key).await?
        {
            return Ok(Some((existing, false)));
        }
        if let Some(c) = &task.contact_id
            && !contact_exists(&mut tx, tenant, c).await?
        {
            return Ok(None);
        }
        // ON CONFLICT covers a concurrent creation with the same key between
        // the lookup above and this insert (PostgreSQL; SQLite holds the lock).
        let done = sqlx::query(
            "INSERT INTO tasks (id, tenant_id, contact_id, title, assignee, due_at, status, idempotency_key, \
             created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(&task.id)
        .bind(tenant)
        .bind(task.contact_id.as_deref())
        .bind(&task.title)
        .bind(task.assignee.as_deref())
        .bind(task.due_at)
        .bind(&task.status)
        .bind(task.idempotency_key.as_deref())
        .bind(&task.created_by)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0
            && let Some(key) = &task.idempotency_key
        {
            let existing = select_task_by_key(&mut tx, tenant, key).await?;
            tx.commit().await?;
            return Ok(existing.map(|t| (t, false)));
        }
        tx.commit().await?;
        Ok(Some((task, true)))
    }

    /// Task `id` of `tenant`.
    pub async fn get_task(&self, tenant: &str, id: &str) -> Result<Option<Task>> {
        let mut conn = self.pool.acquire().await?;
        select_task(&mut conn, tenant, id, "").await
    }

    /// One page of the tenant's tasks matching `filter`, in id order.
    pub async fn list_tasks(
        &self,
        tenant: &str,
        filter: &TaskFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Task>> {
        let limit = page_limit(limit);
        let mut b = Builder::new(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = "));
        let t = b.arg(Arg::Text(tenant));
        b.push(&t);
        if let Some(c) = &filter.contact_id {
            b.push_arg(" AND contact_id = ", Arg::Text(c));
        }
        if let Some(s) = &filter.status {
            b.push_arg(" AND status = ", Arg::Text(s));
        }
        if let Some(after) = cursor {
            b.push_arg(" AND id > ", Arg::Text(after));
        }
        b.push_arg(" ORDER BY id LIMIT ", Arg::Int(limit + 1));
        let rows = b.query().fetch_all(&self.pool).await?;
        let items = rows.iter().map(task_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paged(items, limit, |t| &t.id))
    }

    /// Apply `patch` to task `id`; `None` when it does not exist.
    pub async fn patch_task(&self, tenant: &str, id: &str, patch: TaskPatch) -> Result<Option<Task>> {
        let mut tx = self.begin_write().await?;
        let Some(mut t) = select_task(&mut tx, tenant, id, self.for_update()).await? else { return Ok(None) };
        if let Some(title) = &patch.title {
            t.title = required("title", title, MAX_NAME)?;
        }
        if let Some(a) = &patch.assignee {
            t.assignee = clean_text("assignee", a.as_deref(), MAX_FIELD)?;
        }
        if let Some(d) = patch.due_at {
            t.due_at = d;
        }
        if let Some(s) = &patch.status {
            t.status = clean_status(s)?;
        }
        t.updated_at = self.now();
        sqlx::query(
            "UPDATE tasks SET title = $3, assignee = $4, due_at = $5, status = $6, updated_at = $7 \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(&t.title)
        .bind(t.assignee.as_deref())
        .bind(t.due_at)
        .bind(&t.status)
        .bind(t.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(t))
    }

    /// Delete task `id`.
    pub async fn delete_task(&self, tenant: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM tasks WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- notes ----

    /// Add a note to contact `contact_id`; `None` when the contact does not exist.
    pub async fn add_note(&self, tenant: &str, contact_id: &str, body: &str) -> Result<Option<Note>> {
        if body.trim().is_empty() || body.len() > MAX_NOTE {
            return Err(StoreError::Invalid(format!("a note is 1 to {} KiB of text", MAX_NOTE >> 10)));
        }
        let note =
            Note { id: new_id(), contact_id: contact_id.to_owned(), body: body.to_owned(), created_at: self.now() };
        // Insert only when the contact exists in this tenant, in one statement.
        let done = sqlx::query(
            "INSERT INTO notes (id, tenant_id, contact_id, body, created_at) \
             SELECT $1, tenant_id, id, $4, $5 FROM contacts WHERE tenant_id = $2 AND id = $3",
        )
        .bind(&note.id)
        .bind(tenant)
        .bind(contact_id)
        .bind(&note.body)
        .bind(note.created_at)
        .execute(&self.pool)
        .await?;
        Ok((done.rows_affected() > 0).then_some(note))
    }

    /// Notes on contact `contact_id`, newest first.
    pub async fn list_notes(&self, tenant: &str, contact_id: &str, limit: u32) -> Result<Vec<Note>> {
        let rows = sqlx::query(&format!(
            "SELECT {NOTE_COLUMNS} FROM notes WHERE tenant_id = $1 AND contact_id = $2 \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(tenant)
        .bind(contact_id)
        .bind(page_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(note_from_row).collect()
    }

    /// Delete note `id`.
    pub async fn delete_note(&self, tenant: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM notes WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
