//! Contacts: create, read, patch, delete and list them; their tags, score
//! (with a history of changes) and lifecycle stage; custom properties.
//!
//! Emails are trimmed and lower-cased on the way in and unique per tenant, so
//! `Ann@Example.com` and `ann@example.com` are one contact (as HubSpot does).
//! Tags live in their own table so that "every contact tagged X" is an index
//! lookup.
//!
//! ## Change events
//! So that workflows can trigger on what happens to a contact, changes are
//! recorded as events in the transaction that makes them (unprocessed, so
//! the pipeline picks them up): `contact_created` (with the contact's
//! `source` property when it has one), one `property_changed` per property
//! whose value changed (`name`, `from`, `to`; `null` for absent; the core
//! fields `email`, `phone`, `first_name`, `last_name` and `owner` count, by
//! those names), and `lifecycle_stage_changed` (`from`, `to`) for the stage.
//! Writing a value a property already has records nothing, so a workflow
//! that sets a property cannot trigger itself forever. Tags and the score
//! are not properties and record no event here (score changes have their
//! own history).

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Deserializer, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::store::error::{Result, StoreError, is_unique_violation};
use crate::store::events::insert_system_event;
use crate::store::sql::{self, Arg, Builder, MAX_IN_LIST, Params, page_limit};
use crate::store::value::{
    MAX_PROPERTIES_BYTES, Properties, Value, decode_properties, encode_properties, merge_properties,
};
use crate::store::{Backend, Page, Store, new_id};

/// The lifecycle stage of a contact nobody has qualified yet.
pub const DEFAULT_STAGE: &str = "lead";
/// Longest tag.
pub const MAX_TAG: usize = 100;
/// Most tags on one contact: tags are labels, not a data store.
pub const MAX_TAGS: usize = 200;
/// Longest core text field (names, owner, stage, phone).
const MAX_FIELD: usize = 200;
/// Longest email address (RFC 5321 path limit).
const MAX_EMAIL: usize = 254;
/// Most reasons kept with one score change.
pub(crate) const MAX_REASONS: usize = 50;

/// The columns of a contact row, in the order [`contact_from_row`] reads them.
pub(crate) const CONTACT_COLUMNS: &str = "id, tenant_id, email, phone, first_name, last_name, owner, \
     lifecycle_stage, score, properties, company_id, created_at, updated_at, last_activity_at";

/// A person the tenant does business with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// Contact id.
    pub id: String,
    /// Owning tenant (not shown over the API).
    #[serde(skip)]
    pub tenant_id: String,
    /// Email, lower-case; unique in the tenant.
    pub email: Option<String>,
    /// Phone number, as given.
    pub phone: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// The user responsible for this contact.
    pub owner: Option<String>,
    /// Lifecycle stage, e.g. `lead`, `mql`, `sql`, `customer`.
    pub lifecycle_stage: String,
    /// Score set by scorers.
    pub score: f64,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Custom properties.
    pub properties: Properties,
    /// The company the contact works for.
    pub company_id: Option<String>,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last change, epoch ms.
    pub updated_at: i64,
    /// Time of the latest event, epoch ms.
    pub last_activity_at: Option<i64>,
}

/// A contact to create. Everything is optional; the stage defaults to `lead`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewContact {
    /// Email (unique in the tenant).
    #[serde(default)]
    pub email: Option<String>,
    /// Phone number.
    #[serde(default)]
    pub phone: Option<String>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Owner.
    #[serde(default)]
    pub owner: Option<String>,
    /// Lifecycle stage; `lead` when absent.
    #[serde(default)]
    pub lifecycle_stage: Option<String>,
    /// Initial score (0 when absent).
    #[serde(default)]
    pub score: Option<f64>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Custom properties (`null` values are dropped).
    #[serde(default)]
    pub properties: Properties,
    /// Company id (must exist in the tenant).
    #[serde(default)]
    pub company_id: Option<String>,
}

/// Changes to a contact. An absent field is left alone; for the optional
/// text fields, `null` clears them. `properties` is merged: `null` deletes a
/// property. `tags`, when given, replaces the whole set.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactPatch {
    /// New email, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub email: Option<Option<String>>,
    /// New phone, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub phone: Option<Option<String>>,
    /// New first name, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub first_name: Option<Option<String>>,
    /// New last name, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub last_name: Option<Option<String>>,
    /// New owner, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub owner: Option<Option<String>>,
    /// New company, or `Some(None)` to clear it.
    #[serde(default, deserialize_with = "nullable")]
    pub company_id: Option<Option<String>>,
    /// New lifecycle stage.
    #[serde(default)]
    pub lifecycle_stage: Option<String>,
    /// Properties to merge (`null` deletes).
    #[serde(default)]
    pub properties: Option<Properties>,
    /// The new set of tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// Tells an absent field (`None`, via `#[serde(default)]`) from an explicit
/// `null` (`Some(None)`).
pub(crate) fn nullable<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Which contacts [`Store::list_contacts`] returns; every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContactFilter {
    /// Exact email (case-insensitive).
    #[serde(default)]
    pub email: Option<String>,
    /// Has this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// In this lifecycle stage.
    #[serde(default)]
    pub lifecycle_stage: Option<String>,
    /// Owned by.
    #[serde(default)]
    pub owner: Option<String>,
}

/// One change of a contact's score, kept for the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreChange {
    /// Change id.
    pub id: String,
    /// The contact.
    pub contact_id: String,
    /// Score before.
    pub old_score: f64,
    /// Score after.
    pub new_score: f64,
    /// Why, as the scorer explained it.
    pub reasons: Vec<String>,
    /// When, epoch ms.
    pub at: i64,
}

/// Trim an optional text field; empty means absent.
pub(crate) fn clean_text(field: &str, v: Option<&str>, max: usize) -> Result<Option<String>> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) if s.len() > max => Err(StoreError::Invalid(format!("{field} is at most {max} bytes"))),
        Some(s) => Ok(Some(s.to_owned())),
    }
}

/// Normalize an email: trimmed, lower-case, one `@` with text on both sides.
pub(crate) fn clean_email(v: Option<&str>) -> Result<Option<String>> {
    let Some(e) = clean_text("email", v, MAX_EMAIL)? else { return Ok(None) };
    let e = e.to_lowercase();
    match e.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@') => Ok(Some(e)),
        _ => Err(StoreError::Invalid(format!("`{e}` is not an email address"))),
    }
}

/// A lifecycle stage: 1 to 200 bytes, trimmed.
pub(crate) fn clean_stage(stage: &str) -> Result<String> {
    clean_text("lifecycle_stage", Some(stage), MAX_FIELD)?
        .ok_or_else(|| StoreError::Invalid("lifecycle_stage must not be empty".into()))
}

/// A tag: 1 to 100 bytes, trimmed.
pub(crate) fn clean_tag(tag: &str) -> Result<String> {
    match tag.trim() {
        "" => Err(StoreError::Invalid("a tag must not be empty".into())),
        t if t.len() > MAX_TAG => Err(StoreError::Invalid(format!("a tag is at most {MAX_TAG} bytes"))),
        t => Ok(t.to_owned()),
    }
}

fn clean_tags(tags: &[String]) -> Result<Vec<String>> {
    let mut out = tags.iter().map(|t| clean_tag(t)).collect::<Result<Vec<_>>>()?;
    out.sort();
    out.dedup();
    if out.len() > MAX_TAGS {
        return Err(StoreError::Invalid(format!("a contact has at most {MAX_TAGS} tags")));
    }
    Ok(out)
}

fn finite(field: &str, v: f64) -> Result<f64> {
    if v.is_finite() { Ok(v) } else { Err(StoreError::Invalid(format!("{field} must be a finite number"))) }
}

/// Read a contact row (tags are filled in separately).
pub(crate) fn contact_from_row(row: &AnyRow) -> Result<Contact> {
    Ok(Contact {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        email: row.try_get("email")?,
        phone: row.try_get("phone")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        owner: row.try_get("owner")?,
        lifecycle_stage: row.try_get("lifecycle_stage")?,
        score: row.try_get("score")?,
        tags: Vec::new(),
        properties: decode_properties(&row.try_get::<String, _>("properties")?)?,
        company_id: row.try_get("company_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_activity_at: row.try_get("last_activity_at")?,
    })
}

/// A contact's columns as `SELECT` reads it whole: [`CONTACT_COLUMNS`] of
/// the table or alias `from`, and its tags as a JSON array in a `tags`
/// column, for [`contact_with_tags_from_row`].
///
/// Why not [`load_tags`] after the contact: every statement on SQLite is a
/// round trip to the connection's thread, which costs more than the lookup
/// (a pipeline lane and a workflow step each read their contacts: 1.5
/// statements an event fewer in `cairn bench --noisy-only`'s steady load).
pub(crate) fn contact_select(backend: Backend, from: &str) -> String {
    let columns = CONTACT_COLUMNS.split(", ").map(|c| format!("{from}.{c}")).collect::<Vec<_>>().join(", ");
    let tags = match backend {
        Backend::Sqlite => "json_group_array(g.tag)",
        Backend::Postgres => "COALESCE(json_agg(g.tag), '[]'::json)::text",
    };
    format!(
        "{columns}, (SELECT {tags} FROM contact_tags g \
         WHERE g.tenant_id = {from}.tenant_id AND g.contact_id = {from}.id) AS tags"
    )
}

/// Read a contact row of [`contact_select`], tags included (sorted, as
/// [`load_tags`] gives them).
pub(crate) fn contact_with_tags_from_row(row: &AnyRow) -> Result<Contact> {
    let mut contact = contact_from_row(row)?;
    let tags: Option<String> = row.try_get("tags")?;
    if let Some(tags) = tags {
        contact.tags = serde_json::from_str(&tags).map_err(|e| StoreError::Corrupt(format!("contact tags: {e}")))?;
        contact.tags.sort();
    }
    Ok(contact)
}

/// Fill in the tags of `contacts` (one query per 256 contacts).
pub(crate) async fn load_tags(
    conn: &mut AnyConnection,
    backend: Backend,
    tenant: &str,
    contacts: &mut [Contact],
) -> Result<()> {
    if contacts.is_empty() {
        return Ok(());
    }
    let mut tags: HashMap<String, Vec<String>> = HashMap::new();
    for chunk in contacts.chunks(MAX_IN_LIST) {
        let mut p = Params::new(backend);
        let sql = format!(
            "SELECT contact_id, tag FROM contact_tags WHERE tenant_id = {} AND contact_id IN ({}) ORDER BY tag",
            p.one(),
            p.list(chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(tenant);
        for c in chunk {
            q = q.bind(c.id.as_str());
        }
        for row in q.fetch_all(&mut *conn).await? {
            tags.entry(row.try_get("contact_id")?).or_default().push(row.try_get("tag")?);
        }
    }
    for c in contacts {
        c.tags = tags.remove(&c.id).unwrap_or_default();
    }
    Ok(())
}

/// The contact `id` of `tenant`, locked for update when in a write
/// transaction on PostgreSQL. Tags not loaded.
async fn select_contact(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    lock: &'static str,
) -> Result<Option<Contact>> {
    let sql = format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE tenant_id = $1 AND id = $2{lock}");
    let row = sqlx::query(&sql).bind(tenant).bind(id).fetch_optional(&mut *conn).await?;
    row.as_ref().map(contact_from_row).transpose()
}

/// Whether company `id` exists in `tenant`.
pub(crate) async fn company_exists(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 AS one FROM companies WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}

/// Whether contact `id` exists in `tenant`.
pub(crate) async fn contact_exists(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 AS one FROM contacts WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}

/// Write every mutable column of `c` back.
async fn update_contact_row(conn: &mut AnyConnection, c: &Contact) -> Result<()> {
    let props = encode_properties(&c.properties)?;
    let done = sqlx::query(
        "UPDATE contacts SET email = $3, phone = $4, first_name = $5, last_name = $6, owner = $7, \
         lifecycle_stage = $8, score = $9, properties = $10, company_id = $11, updated_at = $12 \
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(&c.tenant_id)
    .bind(&c.id)
    .bind(c.email.as_deref())
    .bind(c.phone.as_deref())
    .bind(c.first_name.as_deref())
    .bind(c.last_name.as_deref())
    .bind(c.owner.as_deref())
    .bind(&c.lifecycle_stage)
    .bind(c.score)
    .bind(&props)
    .bind(c.company_id.as_deref())
    .bind(c.updated_at)
    .execute(&mut *conn)
    .await;
    match done {
        Err(e) if is_unique_violation(&e) => Err(StoreError::DuplicateEmail(c.email.clone().unwrap_or_default())),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(()),
    }
}

/// Replace the tag set of contact `id`.
async fn replace_tags(
    conn: &mut AnyConnection,
    backend: Backend,
    tenant: &str,
    id: &str,
    tags: &[String],
) -> Result<()> {
    sqlx::query("DELETE FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    insert_tags(conn, backend, tenant, id, tags).await
}

async fn insert_tags(
    conn: &mut AnyConnection,
    backend: Backend,
    tenant: &str,
    id: &str,
    tags: &[String],
) -> Result<()> {
    for (start, len) in sql::pow2_chunks(tags.len(), sql::MAX_ROWS_PER_INSERT) {
        let q = format!(
            "INSERT INTO contact_tags (contact_id, tenant_id, tag) VALUES {} ON CONFLICT DO NOTHING",
            Params::new(backend).rows(len, 3)
        );
        let mut q = sqlx::query(&q);
        for tag in &tags[start..start + len] {
            q = q.bind(id).bind(tenant).bind(tag.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Write `value` to a core field named by a property name, if it is one.
/// Returns false when `name` is a custom property.
fn set_core_field(c: &mut Contact, name: &str, value: &Value) -> Result<bool> {
    let text = |v: &Value| -> Result<Option<String>> {
        match v {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            _ => Err(StoreError::Invalid(format!("`{name}` takes text or null"))),
        }
    };
    match name {
        "email" => c.email = clean_email(text(value)?.as_deref())?,
        "phone" => c.phone = clean_text("phone", text(value)?.as_deref(), MAX_FIELD)?,
        "first_name" => c.first_name = clean_text("first_name", text(value)?.as_deref(), MAX_FIELD)?,
        "last_name" => c.last_name = clean_text("last_name", text(value)?.as_deref(), MAX_FIELD)?,
        "owner" => c.owner = clean_text("owner", text(value)?.as_deref(), MAX_FIELD)?,
        "lifecycle_stage" => match value {
            Value::Text(s) => c.lifecycle_stage = clean_stage(s)?,
            _ => return Err(StoreError::Invalid("`lifecycle_stage` takes text".into())),
        },
        _ => return Ok(false),
    }
    Ok(true)
}

/// Kind of the event recorded when a contact is created.
const CONTACT_CREATED: &str = "contact_created";
/// Kind of the event recorded for each changed property.
const PROPERTY_CHANGED: &str = "property_changed";
/// Kind of the event recorded when the lifecycle stage changes (the same
/// kind the pipeline records when a score crosses a threshold).
const LIFECYCLE_STAGE_CHANGED: &str = "lifecycle_stage_changed";

/// Reads one core text field of a contact.
type TextField = fn(&Contact) -> &Option<String>;

/// The core text fields that count as properties in change events, by name.
const CORE_TEXT_FIELDS: [(&str, TextField); 5] = [
    ("email", |c| &c.email),
    ("phone", |c| &c.phone),
    ("first_name", |c| &c.first_name),
    ("last_name", |c| &c.last_name),
    ("owner", |c| &c.owner),
];

fn text_or_null(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::Text(s.clone()))
}

/// The properties of a `property_changed` event. One value may be nearly as
/// large as a contact's whole property limit, so `from` and `to` together
/// can outgrow what one event may carry: then the old value is left out
/// (and, should that not do, the new one), with `truncated: true`, rather
/// than refusing a change that is itself within limits.
fn property_changed(name: &str, from: Value, to: Value) -> Properties {
    let too_big = |p: &Properties| serde_json::to_string(p).map_or(true, |j| j.len() > MAX_PROPERTIES_BYTES);
    let mut p = Properties::from([
        ("name".to_owned(), Value::Text(name.to_owned())),
        ("from".to_owned(), from),
        ("to".to_owned(), to),
    ]);
    for drop in ["from", "to"] {
        if !too_big(&p) {
            break;
        }
        p.insert(drop.to_owned(), Value::Null);
        p.insert("truncated".to_owned(), Value::Bool(true));
    }
    p
}

/// The events that record how `before` became `after` (see the module
/// docs): kind and properties, core fields first, then the stage, then
/// custom properties by name.
fn change_events(before: &Contact, after: &Contact) -> Vec<(&'static str, Properties)> {
    let mut out = Vec::new();
    for (name, field) in CORE_TEXT_FIELDS {
        if field(before) != field(after) {
            out.push((
                PROPERTY_CHANGED,
                property_changed(name, text_or_null(field(before)), text_or_null(field(after))),
            ));
        }
    }
    if before.lifecycle_stage != after.lifecycle_stage {
        out.push((LIFECYCLE_STAGE_CHANGED, stage_changed(&before.lifecycle_stage, &after.lifecycle_stage)));
    }
    let names: BTreeSet<&String> = before.properties.keys().chain(after.properties.keys()).collect();
    for name in names {
        let (old, new) = (before.properties.get(name), after.properties.get(name));
        if old != new {
            let value = |v: Option<&Value>| v.cloned().unwrap_or(Value::Null);
            out.push((PROPERTY_CHANGED, property_changed(name, value(old), value(new))));
        }
    }
    out
}

fn stage_changed(from: &str, to: &str) -> Properties {
    Properties::from([("from".to_owned(), Value::Text(from.to_owned())), ("to".to_owned(), Value::Text(to.to_owned()))])
}

/// Record the change events of `before` → `after` at `after.updated_at`.
async fn record_changes(conn: &mut AnyConnection, before: &Contact, after: &Contact) -> Result<()> {
    for (kind, props) in change_events(before, after) {
        insert_system_event(conn, &after.tenant_id, &after.id, kind, &props, after.updated_at).await?;
    }
    Ok(())
}

impl Store {
    /// Create a contact in `tenant`, with a `contact_created` event.
    pub async fn create_contact(&self, tenant: &str, new: NewContact) -> Result<Contact> {
        let now = self.now();
        let mut properties = new.properties;
        properties.retain(|_, v| *v != Value::Null);
        let contact = Contact {
            id: new_id(),
            tenant_id: tenant.to_owned(),
            email: clean_email(new.email.as_deref())?,
            phone: clean_text("phone", new.phone.as_deref(), MAX_FIELD)?,
            first_name: clean_text("first_name", new.first_name.as_deref(), MAX_FIELD)?,
            last_name: clean_text("last_name", new.last_name.as_deref(), MAX_FIELD)?,
            owner: clean_text("owner", new.owner.as_deref(), MAX_FIELD)?,
            lifecycle_stage: clean_stage(new.lifecycle_stage.as_deref().unwrap_or(DEFAULT_STAGE))?,
            score: finite("score", new.score.unwrap_or(0.0))?,
            tags: clean_tags(&new.tags)?,
            properties,
            company_id: new.company_id,
            created_at: now,
            updated_at: now,
            last_activity_at: None,
        };
        let props = encode_properties(&contact.properties)?;
        let mut tx = self.begin_write().await?;
        if let Some(company) = &contact.company_id
            && !company_exists(&mut tx, tenant, company).await?
        {
            return Err(StoreError::UnknownReference { entity: "company", id: company.clone() });
        }
        let done = sqlx::query(&format!(
            "INSERT INTO contacts ({CONTACT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&contact.id)
        .bind(tenant)
        .bind(contact.email.as_deref())
        .bind(contact.phone.as_deref())
        .bind(contact.first_name.as_deref())
        .bind(contact.last_name.as_deref())
        .bind(contact.owner.as_deref())
        .bind(&contact.lifecycle_stage)
        .bind(contact.score)
        .bind(&props)
        .bind(contact.company_id.as_deref())
        .bind(now)
        .bind(now)
        .bind(None::<i64>)
        .execute(&mut *tx)
        .await;
        match done {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::DuplicateEmail(contact.email.clone().unwrap_or_default()));
            }
            other => other?,
        };
        insert_tags(&mut tx, self.backend, tenant, &contact.id, &contact.tags).await?;
        let mut created = Properties::new();
        if let Some(source) = contact.properties.get("source") {
            created.insert("source".to_owned(), source.clone());
        }
        insert_system_event(&mut tx, tenant, &contact.id, CONTACT_CREATED, &created, now).await?;
        tx.commit().await?;
        Ok(contact)
    }

    /// The contact `id` of `tenant`, with its tags.
    pub async fn get_contact(&self, tenant: &str, id: &str) -> Result<Option<Contact>> {
        let sql = format!(
            "SELECT {} FROM contacts WHERE tenant_id = $1 AND id = $2",
            contact_select(self.backend, "contacts")
        );
        let row = sqlx::query(&sql).bind(tenant).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(contact_with_tags_from_row).transpose()
    }

    /// The contact of `tenant` with this email (case-insensitive).
    pub async fn find_contact_by_email(&self, tenant: &str, email: &str) -> Result<Option<Contact>> {
        let email = email.trim().to_lowercase();
        let sql = format!(
            "SELECT {} FROM contacts WHERE tenant_id = $1 AND email = $2",
            contact_select(self.backend, "contacts")
        );
        let row = sqlx::query(&sql).bind(tenant).bind(&email).fetch_optional(&self.pool).await?;
        row.as_ref().map(contact_with_tags_from_row).transpose()
    }

    /// Apply `patch` to contact `id`, recording a change event per changed
    /// property (see the module docs); `None` when it does not exist in
    /// `tenant`.
    pub async fn patch_contact(&self, tenant: &str, id: &str, patch: ContactPatch) -> Result<Option<Contact>> {
        let mut tx = self.begin_write().await?;
        let Some(mut c) = select_contact(&mut tx, tenant, id, self.for_update()).await? else { return Ok(None) };
        let before = c.clone();
        if let Some(v) = patch.email {
            c.email = clean_email(v.as_deref())?;
        }
        if let Some(v) = patch.phone {
            c.phone = clean_text("phone", v.as_deref(), MAX_FIELD)?;
        }
        if let Some(v) = patch.first_name {
            c.first_name = clean_text("first_name", v.as_deref(), MAX_FIELD)?;
        }
        if let Some(v) = patch.last_name {
            c.last_name = clean_text("last_name", v.as_deref(), MAX_FIELD)?;
        }
        if let Some(v) = patch.owner {
            c.owner = clean_text("owner", v.as_deref(), MAX_FIELD)?;
        }
        if let Some(v) = patch.lifecycle_stage {
            c.lifecycle_stage = clean_stage(&v)?;
        }
        if let Some(v) = patch.company_id {
            if let Some(company) = &v
                && !company_exists(&mut tx, tenant, company).await?
            {
                return Err(StoreError::UnknownReference { entity: "company", id: company.clone() });
            }
            c.company_id = v;
        }
        if let Some(p) = &patch.properties {
            merge_properties(&mut c.properties, p);
        }
        c.updated_at = self.now();
        update_contact_row(&mut tx, &c).await?;
        record_changes(&mut tx, &before, &c).await?;
        if let Some(tags) = &patch.tags {
            replace_tags(&mut tx, self.backend, tenant, id, &clean_tags(tags)?).await?;
        }
        let mut one = [c];
        load_tags(&mut tx, self.backend, tenant, &mut one).await?;
        tx.commit().await?;
        let [c] = one;
        Ok(Some(c))
    }

    /// Delete contact `id` with its tags, events, tasks, notes and score
    /// history (deals keep existing without it). False when it does not exist.
    pub async fn delete_contact(&self, tenant: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM contacts WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// One page of the tenant's contacts matching `filter`, in id (creation)
    /// order, starting after `cursor`. At most 1000 per page.
    pub async fn list_contacts(
        &self,
        tenant: &str,
        filter: &ContactFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Contact>> {
        let limit = page_limit(limit);
        let email = filter.email.as_deref().map(|e| e.trim().to_lowercase());
        let mut b = Builder::new("");
        b.push(&format!("SELECT {} FROM contacts c WHERE c.tenant_id = ", contact_select(self.backend, "c")));
        let t = b.arg(Arg::Text(tenant));
        b.push(&t);
        if let Some(e) = &email {
            b.push_arg(" AND c.email = ", Arg::Text(e));
        }
        if let Some(s) = &filter.lifecycle_stage {
            b.push_arg(" AND c.lifecycle_stage = ", Arg::Text(s));
        }
        if let Some(o) = &filter.owner {
            b.push_arg(" AND c.owner = ", Arg::Text(o));
        }
        if let Some(tag) = &filter.tag {
            b.push(&format!(
                " AND EXISTS (SELECT 1 FROM contact_tags g WHERE g.tenant_id = {t} AND g.contact_id = c.id"
            ));
            b.push_arg(" AND g.tag = ", Arg::Text(tag));
            b.push(")");
        }
        if let Some(after) = cursor {
            b.push_arg(" AND c.id > ", Arg::Text(after));
        }
        b.push_arg(" ORDER BY c.id LIMIT ", Arg::Int(limit + 1));
        let rows = b.query().fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(contact_with_tags_from_row).collect::<Result<Vec<_>>>()?;
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|c| c.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Set properties of contact `id`. `null` deletes a custom property. The
    /// names `email`, `phone`, `first_name`, `last_name`, `owner` and
    /// `lifecycle_stage` write those fields instead (text, or `null` to clear
    /// all but the stage). A change event is recorded per property whose
    /// value changed (see the module docs). False when the contact does not
    /// exist.
    pub async fn set_properties(&self, tenant: &str, id: &str, props: &Properties) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let Some(mut c) = select_contact(&mut tx, tenant, id, self.for_update()).await? else { return Ok(false) };
        let before = c.clone();
        for (name, value) in props {
            if !set_core_field(&mut c, name, value)? {
                match value {
                    Value::Null => c.properties.remove(name),
                    v => c.properties.insert(name.clone(), v.clone()),
                };
            }
        }
        c.updated_at = self.now();
        update_contact_row(&mut tx, &c).await?;
        record_changes(&mut tx, &before, &c).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Tag contact `id` (a no-op when it already has the tag). False when the
    /// contact does not exist.
    pub async fn add_tag(&self, tenant: &str, id: &str, tag: &str) -> Result<bool> {
        let tag = clean_tag(tag)?;
        let mut tx = self.begin_write().await?;
        if !touch_updated(&mut tx, tenant, id, self.now()).await? {
            return Ok(false);
        }
        let count = sqlx::query("SELECT COUNT(*) AS n FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get::<i64, _>("n")?;
        if count >= MAX_TAGS as i64 {
            let has = sqlx::query("SELECT 1 AS one FROM contact_tags WHERE contact_id = $1 AND tag = $2")
                .bind(id)
                .bind(&tag)
                .fetch_optional(&mut *tx)
                .await?;
            if has.is_none() {
                return Err(StoreError::Invalid(format!("a contact has at most {MAX_TAGS} tags")));
            }
        }
        insert_tags(&mut tx, self.backend, tenant, id, std::slice::from_ref(&tag)).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Remove a tag from contact `id` (a no-op when it does not have it).
    /// False when the contact does not exist.
    pub async fn remove_tag(&self, tenant: &str, id: &str, tag: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        if !touch_updated(&mut tx, tenant, id, self.now()).await? {
            return Ok(false);
        }
        sqlx::query("DELETE FROM contact_tags WHERE tenant_id = $1 AND contact_id = $2 AND tag = $3")
            .bind(tenant)
            .bind(id)
            .bind(tag.trim())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Set the score of contact `id` and record the change with its reasons.
    /// `None` when the contact does not exist.
    pub async fn set_score(
        &self,
        tenant: &str,
        id: &str,
        score: f64,
        reasons: &[String],
    ) -> Result<Option<ScoreChange>> {
        let score = finite("score", score)?;
        let reasons: Vec<String> = reasons.iter().take(MAX_REASONS).cloned().collect();
        let reasons_json = sql::to_json(&reasons)?;
        let mut tx = self.begin_write().await?;
        let row =
            sqlx::query(&format!("SELECT score FROM contacts WHERE tenant_id = $1 AND id = $2{}", self.for_update()))
                .bind(tenant)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let old: f64 = row.try_get("score")?;
        let change = ScoreChange {
            id: new_id(),
            contact_id: id.to_owned(),
            old_score: old,
            new_score: score,
            reasons,
            at: self.now(),
        };
        sqlx::query("UPDATE contacts SET score = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .bind(score)
            .bind(change.at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO score_changes (id, tenant_id, contact_id, old_score, new_score, reasons, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&change.id)
        .bind(tenant)
        .bind(id)
        .bind(old)
        .bind(score)
        .bind(&reasons_json)
        .bind(change.at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(change))
    }

    /// Move contact `id` to `stage`, with a `lifecycle_stage_changed` event
    /// when that is a change; returns the stage it had, or `None` when the
    /// contact does not exist.
    pub async fn set_lifecycle_stage(&self, tenant: &str, id: &str, stage: &str) -> Result<Option<String>> {
        let stage = clean_stage(stage)?;
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT lifecycle_stage FROM contacts WHERE tenant_id = $1 AND id = $2{}",
            self.for_update()
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let old: String = row.try_get("lifecycle_stage")?;
        let now = self.now();
        sqlx::query("UPDATE contacts SET lifecycle_stage = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .bind(&stage)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if old != stage {
            insert_system_event(&mut tx, tenant, id, LIFECYCLE_STAGE_CHANGED, &stage_changed(&old, &stage), now)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(old))
    }

    /// Record activity at `at` on contact `id` (the latest time wins).
    /// False when the contact does not exist.
    pub async fn touch_activity(&self, tenant: &str, id: &str, at: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE contacts SET last_activity_at = CASE WHEN last_activity_at IS NULL OR last_activity_at < $3 \
             THEN $3 ELSE last_activity_at END WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Score changes of contact `id`, newest first.
    pub async fn score_history(&self, tenant: &str, id: &str, limit: u32) -> Result<Vec<ScoreChange>> {
        let rows = sqlx::query(
            "SELECT id, contact_id, old_score, new_score, reasons, at FROM score_changes \
             WHERE tenant_id = $1 AND contact_id = $2 ORDER BY at DESC, id DESC LIMIT $3",
        )
        .bind(tenant)
        .bind(id)
        .bind(page_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(score_change_from_row).collect()
    }
}

/// Read a score change row.
pub(crate) fn score_change_from_row(row: &AnyRow) -> Result<ScoreChange> {
    Ok(ScoreChange {
        id: row.try_get("id")?,
        contact_id: row.try_get("contact_id")?,
        old_score: row.try_get("old_score")?,
        new_score: row.try_get("new_score")?,
        reasons: sql::get_json(row, "reasons")?,
        at: row.try_get("at")?,
    })
}

/// Set `updated_at` of contact `id` to `now`; false when it does not exist.
async fn touch_updated(conn: &mut AnyConnection, tenant: &str, id: &str, now: i64) -> Result<bool> {
    let done = sqlx::query("UPDATE contacts SET updated_at = $3 WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}
