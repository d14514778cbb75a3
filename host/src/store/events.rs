//! The event log: durable ingest, the pipeline's queue, reads for scorers and
//! triggers, and the contact timeline.
//!
//! Besides the events callers send, the store records events of its own for
//! changes it makes (`contact_created`, `property_changed`,
//! `lifecycle_stage_changed`), in the transaction of the change, so that
//! workflows can trigger on them (see `insert_system_event`).
//!
//! ## Ingest cost
//! [`Store::insert_events`] is the hot path of `POST /v1/events`: an event is
//! durable before the API answers. A whole batch is one transaction, and the
//! statements per batch do not grow with the number of events: one lookup per
//! 256 distinct contact ids (one row back, a JSON array), one per 256 emails
//! for email-only events (plus a multi-row insert of the contacts to create,
//! and a tenant check), one for idempotency keys already stored (normally no
//! rows back), then multi-row `INSERT`s of up to 128 events with nothing
//! returned.
//!
//! Measured on SQLite (WAL, `synchronous=NORMAL`) on the 2-core CI VM, 100
//! batches of 1000 events over 100 contacts, 10% with idempotency keys:
//! release build ~70,000 events/s (14 µs per event), dev profile ~48,000/s
//! (this crate unoptimised). About 8 µs of each event is SQLite itself: the
//! row, four index entries and the contact foreign-key check. One event per
//! transaction costs 0.3 to 0.5 ms here (four round trips to sqlx's SQLite
//! worker thread, ~100 µs each on this VM); [`Store::insert_events_many`]
//! commits many such requests together at ~30 µs per event (group commit).
//! What it took, in order of effect: `?` placeholders for long statements
//! (see `sql::Params`: `$N` binding is quadratic in SQLite), no rows
//! returned per event (each row crosses a thread boundary), WAL checkpoints
//! moved off the commit path (see [`Store::open`]), a partial idempotency
//! index, and no tenant foreign key on events.
//!
//! ## Idempotency
//! An event with an `idempotency_key` is stored once per tenant and key: a
//! repeat (in the same batch or later) returns the stored event. The unique
//! index decides, with `ON CONFLICT DO NOTHING`, so two concurrent requests
//! with the same key cannot both insert.
//!
//! ## Queue
//! Unprocessed events are claimed oldest first with a lease
//! ([`CLAIM_LEASE_MS`]); on PostgreSQL `FOR UPDATE SKIP LOCKED` lets several
//! host processes claim disjoint events. An event whose lease expires before
//! it is marked processed (its worker died) is claimed again.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::error::BoxDynError;
use sqlx::{AnyConnection, Arguments, Row};

use crate::store::contacts::{DEFAULT_STAGE, ScoreChange, clean_email, score_change_from_row};
use crate::store::crm::{NOTE_COLUMNS, Note, TASK_COLUMNS, Task, note_from_row, task_from_row};
use crate::store::error::{Result, StoreError};
use crate::store::invocations::{INVOCATION_COLUMNS, InvocationRecord, invocation_from_row};
use crate::store::runs::{RUN_STEP_COLUMNS, RunStep, run_step_from_row};
use crate::store::script::{Answers, Script, Slot};
use crate::store::sql::{self, Arg, Builder, MAX_IN_LIST, MAX_ROWS_PER_INSERT, Params, pow2_chunks};
use crate::store::value::{Properties, decode_properties, encode_properties};
use crate::store::{Backend, ScriptTx, Store, Writer, new_id, now_ms};

/// Most events in one batch: a batch is one transaction, and on SQLite a
/// transaction holds the only write lock; a huge batch would stall every
/// other writer.
pub const MAX_EVENTS_PER_BATCH: usize = 1000;
/// Longest event kind.
pub const MAX_KIND: usize = 100;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;
/// How long a claimed event stays reserved for the worker that claimed it.
pub const CLAIM_LEASE_MS: i64 = 60_000;
/// Most events [`Store::recent_events`] returns.
pub const MAX_RECENT: i64 = 1000;
/// First key of the PostgreSQL advisory locks on tenants' event lanes
/// (`"cair"`), so they cannot collide with other users of advisory locks.
const LANE_LOCK_SPACE: i32 = 0x6361_6972;

pub(crate) const EVENT_COLUMNS: &str =
    "id, tenant_id, contact_id, kind, occurred_at, properties, received_at, processed";
/// Columns of the events insert, in bind order.
const INSERT_COLUMNS: &str = "id, tenant_id, contact_id, kind, occurred_at, properties, received_at, idempotency_key";
const INSERT_WIDTH: usize = 8;
/// A repeated idempotency key inserts nothing (the index is partial: only
/// keyed events have an entry, so the target names its predicate).
const ON_KEY_CONFLICT: &str = "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING";

/// An event to record. It names its contact by `contact_id`, or by `email`
/// alone, in which case the contact is found by email or created (stage `lead`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// The contact, by id (wins over `email` when both are given).
    #[serde(default)]
    pub contact_id: Option<String>,
    /// The contact, by email.
    #[serde(default)]
    pub email: Option<String>,
    /// What happened, e.g. `page_viewed`, `email_clicked`.
    pub kind: String,
    /// When it happened, epoch ms (now when absent).
    #[serde(default)]
    pub occurred_at: Option<i64>,
    /// Details.
    #[serde(default)]
    pub properties: Properties,
    /// Recording the same key twice in a tenant stores one event.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A recorded event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event id (time ordered).
    pub id: String,
    /// The contact.
    pub contact_id: String,
    /// What happened.
    pub kind: String,
    /// When it happened, epoch ms.
    pub occurred_at: i64,
    /// Details.
    pub properties: Properties,
    /// When the host accepted it, epoch ms.
    pub received_at: i64,
    /// Whether the pipeline has handled it.
    pub processed: bool,
}

/// One entry of a contact's timeline, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TimelineEntry {
    /// An event.
    Event(Event),
    /// A note.
    Note(Note),
    /// A task about the contact.
    Task(Task),
    /// A score change.
    ScoreChange(ScoreChange),
    /// A plugin action run on the contact.
    ActionRun(InvocationRecord),
    /// A step of a workflow run on the contact.
    WorkflowStep(RunStep),
}

impl TimelineEntry {
    /// When the entry happened, epoch ms.
    pub fn at(&self) -> i64 {
        match self {
            TimelineEntry::Event(e) => e.occurred_at,
            TimelineEntry::Note(n) => n.created_at,
            TimelineEntry::Task(t) => t.created_at,
            TimelineEntry::ScoreChange(s) => s.at,
            TimelineEntry::ActionRun(r) => r.at,
            TimelineEntry::WorkflowStep(s) => s.started_at,
        }
    }

    fn id(&self) -> &str {
        match self {
            TimelineEntry::Event(e) => &e.id,
            TimelineEntry::Note(n) => &n.id,
            TimelineEntry::Task(t) => &t.id,
            TimelineEntry::ScoreChange(s) => &s.id,
            TimelineEntry::ActionRun(r) => &r.id,
            TimelineEntry::WorkflowStep(s) => &s.id,
        }
    }
}

/// How a new event names its contact.
enum Target {
    Id(String),
    Email(String),
}

/// A validated event waiting for its contact id.
struct Prepared {
    id: String,
    target: Target,
    contact_id: String,
    kind: String,
    occurred_at: i64,
    properties: Properties,
    properties_json: String,
    idempotency_key: Option<String>,
}

/// One request of a group commit.
struct Request {
    tenant: String,
    events: Vec<Prepared>,
    failed: Option<StoreError>,
}

impl Request {
    fn ok(&self) -> bool {
        self.failed.is_none()
    }
}

fn prepare(events: Vec<NewEvent>, now: i64) -> Result<Vec<Prepared>> {
    if events.len() > MAX_EVENTS_PER_BATCH {
        return Err(StoreError::Invalid(format!("a batch holds at most {MAX_EVENTS_PER_BATCH} events")));
    }
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let at = |m: String| StoreError::Invalid(format!("event {i}: {m}"));
            let kind = e.kind.trim();
            if kind.is_empty() || kind.len() > MAX_KIND {
                return Err(at(format!("kind is 1 to {MAX_KIND} bytes")));
            }
            let target = match (e.contact_id, e.email) {
                (Some(id), _) if !id.trim().is_empty() => Target::Id(id.trim().to_owned()),
                (_, Some(email)) => match clean_email(Some(&email)).map_err(|e| at(e.to_string()))? {
                    Some(email) => Target::Email(email),
                    None => return Err(at("contact_id or email is required".into())),
                },
                _ => return Err(at("contact_id or email is required".into())),
            };
            let idempotency_key = match e.idempotency_key.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(k) if k.len() > MAX_IDEMPOTENCY_KEY => {
                    return Err(at(format!("idempotency_key is at most {MAX_IDEMPOTENCY_KEY} bytes")));
                }
                Some(k) => Some(k.to_owned()),
            };
            let mut properties = e.properties;
            properties.retain(|_, v| *v != crate::store::Value::Null);
            let properties_json = encode_properties(&properties).map_err(|e| at(e.to_string()))?;
            Ok(Prepared {
                id: new_id(),
                target,
                contact_id: String::new(),
                kind: kind.to_owned(),
                occurred_at: e.occurred_at.unwrap_or(now),
                properties,
                properties_json,
                idempotency_key,
            })
        })
        .collect()
}

/// Read an event row.
pub(crate) fn event_from_row(row: &AnyRow) -> Result<Event> {
    Ok(Event {
        id: row.try_get("id")?,
        contact_id: row.try_get("contact_id")?,
        kind: row.try_get("kind")?,
        occurred_at: row.try_get("occurred_at")?,
        properties: decode_properties(&row.try_get::<String, _>("properties")?)?,
        received_at: row.try_get("received_at")?,
        processed: sql::get_bool(row, "processed")?,
    })
}

/// Record an event the store emits itself (`contact_created`,
/// `property_changed`, `lifecycle_stage_changed`) about contact `contact_id`,
/// occurred and received at `at`, inside the caller's transaction: it
/// commits or rolls back with the change it reports, and is inserted
/// unprocessed, so the pipeline (scorers, workflow triggers) handles it like
/// any other event.
pub(crate) async fn insert_system_event(
    conn: &mut AnyConnection,
    tenant: &str,
    contact_id: &str,
    kind: &str,
    properties: &Properties,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (id, tenant_id, contact_id, kind, occurred_at, properties, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id())
    .bind(tenant)
    .bind(contact_id)
    .bind(kind)
    .bind(at)
    .bind(encode_properties(properties)?)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Ids of `table`'s rows by the values of `column` (of `tenant`'s rows
/// when given), in one statement per [`MAX_IN_LIST`] values.
async fn lookup_ids(
    conn: &mut AnyConnection,
    backend: Backend,
    table: &str,
    column: &str,
    tenant: Option<&str>,
    values: &[&str],
) -> Result<HashMap<String, String>> {
    let mut script = Script::new(backend);
    let asked = ask_ids(&mut script, backend, table, column, tenant, values, false)?;
    let mut answers = script.run(conn).await?;
    Ok(asked.read(&mut answers)?.0)
}

/// A lookup of ids asked in a [`Script`] ([`ask_ids`]), read from its
/// answers.
struct IdLookup {
    slots: Vec<Slot>,
    check_tenant: bool,
}

/// Ask in `script` for [`lookup_ids`]'s answer; with `check_tenant`, also
/// whether `tenant` exists, in the same statement (the intake's email
/// lookups must know it before they create contacts; `values` must then
/// not be empty, or nothing is asked and the answer is `false`).
fn ask_ids(
    script: &mut Script<'_>,
    backend: Backend,
    table: &str,
    column: &str,
    tenant: Option<&str>,
    values: &[&str],
    check_tenant: bool,
) -> Result<IdLookup> {
    let pairs = match backend {
        Backend::Sqlite => format!("json_group_array(json_array({column}, id))"),
        Backend::Postgres => format!("json_agg(json_build_array({column}, id))::text"),
    };
    let mut slots = Vec::new();
    for (n, (start, len)) in pow2_chunks(values.len(), MAX_IN_LIST).into_iter().enumerate() {
        let mut p = Params::new(backend);
        let mut args = AnyArguments::default();
        // The first chunk asks (placeholders are bound in the order they
        // appear: this one first).
        let known = match tenant {
            Some(t) if check_tenant && n == 0 => {
                args.add(t.to_owned()).map_err(sqlx::Error::Encode)?;
                format!(
                    ", CAST(CASE WHEN EXISTS (SELECT 1 FROM tenants WHERE id = {}) THEN 1 ELSE 0 END AS BIGINT) AS known",
                    p.one()
                )
            }
            _ => String::new(),
        };
        let filter = match tenant {
            Some(t) => {
                args.add(t.to_owned()).map_err(sqlx::Error::Encode)?;
                format!("tenant_id = {} AND ", p.one())
            }
            None => String::new(),
        };
        for v in &values[start..start + len] {
            args.add(v.to_string()).map_err(sqlx::Error::Encode)?;
        }
        let sql = format!("SELECT {pairs} AS pairs{known} FROM {table} WHERE {filter}{column} IN ({})", p.list(len));
        slots.push(script.push_with(sql, args));
    }
    Ok(IdLookup { slots, check_tenant: check_tenant && tenant.is_some() })
}

impl IdLookup {
    /// The ids found by value, and whether the tenant exists (when asked).
    fn read(self, answers: &mut Answers) -> Result<(HashMap<String, String>, bool)> {
        let mut found = HashMap::new();
        let mut tenant_known = false;
        for (n, slot) in self.slots.into_iter().enumerate() {
            let answer = answers.take(slot);
            let row = answer.rows.first().ok_or_else(|| StoreError::Corrupt("an id lookup answered no row".into()))?;
            if self.check_tenant && n == 0 {
                tenant_known = row.try_get::<i64, _>("known")? != 0;
            }
            // PostgreSQL aggregates no rows to NULL, SQLite to `[]`.
            if let Some(json) = row.try_get::<Option<String>, _>("pairs")? {
                let pairs: Vec<(String, String)> =
                    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("id lookup: {e}")))?;
                found.extend(pairs);
            }
        }
        Ok((found, tenant_known))
    }
}

/// Stored events of `tenant` by idempotency key, for the given keys (on the
/// hot path this finds none, so no rows cross over).
async fn events_by_key(
    conn: &mut AnyConnection,
    backend: Backend,
    tenant: &str,
    keys: &[&str],
) -> Result<HashMap<String, Event>> {
    let mut script = Script::new(backend);
    let asked = ask_events_by_key(&mut script, backend, tenant, keys)?;
    let mut answers = script.run(conn).await?;
    asked.read(&mut answers)
}

/// [`events_by_key`] asked in a [`Script`].
struct KeyLookup(Vec<Slot>);

fn ask_events_by_key(script: &mut Script<'_>, backend: Backend, tenant: &str, keys: &[&str]) -> Result<KeyLookup> {
    let mut slots = Vec::new();
    for (start, len) in pow2_chunks(keys.len(), MAX_IN_LIST) {
        let mut p = Params::new(backend);
        let sql = format!(
            "SELECT idempotency_key, {EVENT_COLUMNS} FROM events WHERE tenant_id = {} AND idempotency_key IN ({})",
            p.one(),
            p.list(len)
        );
        let mut args = AnyArguments::default();
        args.add(tenant.to_owned()).map_err(sqlx::Error::Encode)?;
        for k in &keys[start..start + len] {
            args.add(k.to_string()).map_err(sqlx::Error::Encode)?;
        }
        slots.push(script.push_with(sql, args));
    }
    Ok(KeyLookup(slots))
}

impl KeyLookup {
    fn read(self, answers: &mut Answers) -> Result<HashMap<String, Event>> {
        let mut found = HashMap::new();
        for slot in self.0 {
            for row in answers.take(slot).rows {
                found.insert(row.try_get("idempotency_key")?, event_from_row(&row)?);
            }
        }
        Ok(found)
    }
}

/// New contacts [`create_contacts_for_emails`] reads back from its insert
/// (`RETURNING`) at most; above it, one lookup after costs less than a row
/// per contact crossing from SQLite's connection thread.
const RETURN_CREATED_AT_MOST: usize = 32;

/// Create lead contacts for `emails` of `tenant` (skipping any that appeared
/// meanwhile) and return every email's contact id.
async fn create_contacts_for_emails(
    conn: &mut AnyConnection,
    backend: Backend,
    tenant: &str,
    emails: &[&str],
    now: i64,
) -> Result<HashMap<String, String>> {
    // A few new contacts come back from the insert itself, a statement
    // fewer; many are looked up after, in one row (see `lookup_ids`).
    let returning = emails.len() <= RETURN_CREATED_AT_MOST;
    let mut created = HashMap::with_capacity(emails.len());
    for (start, len) in pow2_chunks(emails.len(), MAX_ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO contacts (id, tenant_id, email, lifecycle_stage, score, properties, created_at, updated_at) \
             VALUES {} ON CONFLICT (tenant_id, email) DO NOTHING{}",
            Params::new(backend).rows(len, 8),
            if returning { " RETURNING email, id" } else { "" }
        );
        let ids: Vec<String> = (0..len).map(|_| new_id()).collect();
        let mut q = sqlx::query(&sql);
        for (id, email) in ids.iter().zip(&emails[start..start + len]) {
            q = q.bind(id.as_str()).bind(tenant).bind(*email).bind(DEFAULT_STAGE).bind(0.0f64).bind("{}");
            q = q.bind(now).bind(now);
        }
        if returning {
            for row in q.fetch_all(&mut *conn).await? {
                created.insert(row.try_get::<String, _>("email")?, row.try_get::<String, _>("id")?);
            }
        } else {
            q.execute(&mut *conn).await?;
        }
    }
    // Those not inserted were inserted meanwhile by another transaction
    // (PostgreSQL): look them up.
    let rest: Vec<&str> = emails.iter().copied().filter(|e| !created.contains_key(*e)).collect();
    created.extend(lookup_ids(conn, backend, "contacts", "email", Some(tenant), &rest).await?);
    Ok(created)
}

/// Create lead contacts for `emails` of `tenant` in `script` (SQLite, which
/// the caller holds the write lock of: none of them can appear meanwhile),
/// and return every email's new contact id.
fn ask_create_contacts(
    script: &mut Script<'_>,
    tenant: &str,
    emails: &[&str],
    now: i64,
) -> Result<HashMap<String, String>> {
    let mut created = HashMap::with_capacity(emails.len());
    for (start, len) in pow2_chunks(emails.len(), MAX_ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO contacts (id, tenant_id, email, lifecycle_stage, score, properties, created_at, updated_at) \
             VALUES {}",
            Params::new(Backend::Sqlite).rows(len, 8),
        );
        let mut args = AnyArguments::default();
        for email in &emails[start..start + len] {
            let id = new_id();
            let add = |args: &mut AnyArguments<'_>| -> std::result::Result<(), BoxDynError> {
                args.add(id.clone())?;
                args.add(tenant.to_owned())?;
                args.add(email.to_string())?;
                args.add(DEFAULT_STAGE)?;
                args.add(0.0f64)?;
                args.add("{}")?;
                args.add(now)?;
                args.add(now)
            };
            add(&mut args).map_err(sqlx::Error::Encode)?;
            created.insert(email.to_string(), id);
        }
        script.push_with(sql, args);
    }
    Ok(created)
}

/// Add the insert arguments of one event, in [`INSERT_COLUMNS`] order.
fn bind_event<'q>(args: &mut AnyArguments<'q>, tenant: &'q str, e: &'q Prepared, now: i64) -> Result<(), BoxDynError> {
    args.add(e.id.as_str())?;
    args.add(tenant)?;
    args.add(e.contact_id.as_str())?;
    args.add(e.kind.as_str())?;
    args.add(e.occurred_at)?;
    args.add(e.properties_json.as_str())?;
    args.add(now)?;
    args.add(e.idempotency_key.as_deref())
}

/// The lookups [`Store::ask_tenant`] asked for one tenant's requests.
struct TenantLookups {
    ids: IdLookup,
    emails: EmailLookup,
    keys: KeyLookup,
}

/// What a tenant's lookups found.
struct Found {
    /// Contact ids found by id.
    by_id: HashMap<String, String>,
    /// Contact ids by email.
    by_email: HashMap<String, String>,
    /// Whether the tenant exists, when emails asked it.
    tenant_known: Option<bool>,
}

/// Contacts by email, asked with whether the tenant exists.
struct EmailLookup {
    /// Whether any email was asked (with none, nothing is known of the tenant).
    asked: bool,
    ids: IdLookup,
}

impl EmailLookup {
    /// Contact ids by email, and whether the tenant exists (`None`: not asked).
    fn read(self, answers: &mut Answers) -> Result<(HashMap<String, String>, Option<bool>)> {
        let (found, known) = self.ids.read(answers)?;
        Ok((found, self.asked.then_some(known)))
    }
}

/// What becomes of one event of a group commit.
enum Outcome {
    /// Inserted now.
    New,
    /// Its idempotency key was already used: this is the stored event.
    Stored(Event),
    /// Its key repeats the event at this index of the same commit.
    SameAs(usize),
}

impl Store {
    /// Record a batch of events of one tenant in one transaction (at most
    /// [`MAX_EVENTS_PER_BATCH`]), and return them in order. An event whose
    /// idempotency key the tenant already used returns the stored event.
    ///
    /// Fails with [`StoreError::UnknownContact`] when an event names a
    /// contact id that does not exist in `tenant` (nothing is recorded), and
    /// [`StoreError::Invalid`] for a malformed event.
    pub async fn insert_events(&self, tenant: &str, events: Vec<NewEvent>) -> Result<Vec<Event>> {
        let mut results = self.insert_events_many_as(Writer::Tenant(tenant), vec![(tenant.to_owned(), events)]).await?;
        results.pop().unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Group commit: record the batches of several requests in one
    /// transaction, returning one result per request in order. A request
    /// whose events are invalid (malformed, unknown contact id or tenant)
    /// fails alone; the others are committed. The outer error means the
    /// transaction itself failed and nothing was recorded.
    pub async fn insert_events_many(&self, batches: Vec<(String, Vec<NewEvent>)>) -> Result<Vec<Result<Vec<Event>>>> {
        self.insert_events_many_as(Writer::Intake, batches).await
    }

    /// [`Store::insert_events_many`], queued for SQLite's writer as `writer`
    /// (see `write_gate`): the intake commits a heavy tenant's events as
    /// that tenant's writes.
    pub(crate) async fn insert_events_many_as(
        &self,
        writer: Writer<'_>,
        batches: Vec<(String, Vec<NewEvent>)>,
    ) -> Result<Vec<Result<Vec<Event>>>> {
        // Business time: `received_at`, the default `occurred_at`, and the
        // creation time of contacts created for email-only events.
        let now = self.now();
        let mut reqs: Vec<Request> = batches
            .into_iter()
            .map(|(tenant, events)| match prepare(events, now) {
                Ok(events) => Request { tenant, events, failed: None },
                Err(e) => Request { tenant, events: Vec::new(), failed: Some(e) },
            })
            .collect();
        let mut outcomes = Vec::new();
        if reqs.iter().any(|r| r.ok() && !r.events.is_empty()) {
            let tx = self.begin_script_for(writer).await?;
            outcomes = self.write_requests(tx, &mut reqs, now).await?;
        }
        Ok(finish_requests(reqs, now, outcomes))
    }

    /// Resolve contacts and insert the events of every request still ok,
    /// then commit. Returns the outcome of each event of those requests, in
    /// order.
    ///
    /// In two scripts (see `script`): the first begins the transaction and
    /// asks every lookup at once (contacts by id and by email, whether the
    /// tenant exists, idempotency keys already stored); the second creates
    /// the missing contacts, inserts the events and commits. On a SQLite
    /// file that is two round trips to the write connection's thread, where
    /// one statement after another took five for a one-event request with
    /// a new contact, every other writer of the process waiting.
    async fn write_requests(&self, mut tx: ScriptTx, reqs: &mut [Request], now: i64) -> Result<Vec<Outcome>> {
        let mut by_tenant: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in reqs.iter().enumerate().filter(|(_, r)| r.ok()) {
            by_tenant.entry(r.tenant.clone()).or_default().push(i);
        }
        let mut ask = Script::new(self.backend);
        let mut asked = Vec::with_capacity(by_tenant.len());
        for (tenant, idxs) in &by_tenant {
            asked.push((tenant, idxs, self.ask_tenant(&mut ask, tenant, idxs, reqs)?));
        }
        let mut answers = tx.run(ask).await?;
        let mut last = Script::new(self.backend);
        let mut stored: HashMap<&str, HashMap<String, Event>> = HashMap::new();
        for (tenant, idxs, lookups) in asked {
            stored.insert(tenant, lookups.keys.read(&mut answers)?);
            let (by_email, tenant_known) = lookups.emails.read(&mut answers)?;
            let found = Found { by_id: lookups.ids.read(&mut answers)?.0, by_email, tenant_known };
            self.resolve_contacts(&mut tx, &mut last, tenant, idxs, reqs, found, now).await?;
        }
        let rows: Vec<(&str, &Prepared)> =
            reqs.iter().filter(|r| r.ok()).flat_map(|r| r.events.iter().map(move |e| (r.tenant.as_str(), e))).collect();

        // Idempotency: keys already stored, and keys repeated in this commit.
        let mut first: HashMap<(&str, &str), usize> = HashMap::new();
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(rows.len());
        for (i, (tenant, e)) in rows.iter().enumerate() {
            let outcome = match e.idempotency_key.as_deref() {
                None => Outcome::New,
                Some(k) => match first.get(&(*tenant, k)) {
                    Some(&j) => Outcome::SameAs(j),
                    None => {
                        first.insert((tenant, k), i);
                        match stored.get_mut(tenant).and_then(|m| m.remove(k)) {
                            Some(existing) => Outcome::Stored(existing),
                            None => Outcome::New,
                        }
                    }
                },
            };
            outcomes.push(outcome);
        }

        // Insert the new ones, many rows per statement, nothing returned.
        let mut fresh: Vec<usize> = (0..rows.len()).filter(|&i| matches!(outcomes[i], Outcome::New)).collect();
        // Keyed events first, in key order: two PostgreSQL transactions that
        // insert overlapping keys then wait on each other in one order and
        // cannot deadlock. (Row order in the table means nothing.)
        fresh.sort_by(|&a, &b| {
            let key = |i: usize| (rows[i].1.idempotency_key.is_none(), rows[i].0, rows[i].1.idempotency_key.as_deref());
            key(a).cmp(&key(b))
        });
        let mut inserts = Vec::new();
        for (start, len) in pow2_chunks(fresh.len(), MAX_ROWS_PER_INSERT) {
            let chunk = &fresh[start..start + len];
            let sql = format!(
                "INSERT INTO events ({INSERT_COLUMNS}) VALUES {} {ON_KEY_CONFLICT}",
                Params::new(self.backend).rows(len, INSERT_WIDTH),
            );
            let mut args = AnyArguments::default();
            args.reserve(len * INSERT_WIDTH, 0);
            for &i in chunk {
                let (tenant, e) = rows[i];
                bind_event(&mut args, tenant, e, now).map_err(sqlx::Error::Encode)?;
            }
            inserts.push((chunk, last.push_with(sql, args)));
        }
        let mut answers = tx.commit_with(last).await?;
        let mut raced: Vec<usize> = Vec::new();
        for (chunk, slot) in inserts {
            if answers.take(slot).rows_affected < chunk.len() as u64 {
                // Another process stored one of these keys after the check
                // above (PostgreSQL; SQLite holds the write lock throughout).
                raced.extend(chunk.iter().filter(|&&i| rows[i].1.idempotency_key.is_some()));
            }
        }
        if !raced.is_empty() {
            // Committed by now, as is the other process's event that won.
            let mut conn = self.pool.acquire().await?;
            for i in raced {
                let (tenant, e) = rows[i];
                let Some(k) = e.idempotency_key.as_deref() else { continue };
                if let Some(existing) = events_by_key(&mut conn, self.backend, tenant, &[k]).await?.remove(k)
                    && existing.id != e.id
                {
                    outcomes[i] = Outcome::Stored(existing);
                }
            }
        }
        Ok(outcomes)
    }

    /// Ask in `script` what the requests `idxs` (all of `tenant`) need
    /// looked up: their contacts by id, by email (with whether the tenant
    /// exists) and their idempotency keys already stored.
    fn ask_tenant(
        &self,
        script: &mut Script<'_>,
        tenant: &str,
        idxs: &[usize],
        reqs: &[Request],
    ) -> Result<TenantLookups> {
        let mut ids: HashSet<&str> = HashSet::new();
        let mut emails: HashSet<&str> = HashSet::new();
        let mut keys: HashSet<&str> = HashSet::new();
        for e in idxs.iter().flat_map(|&i| &reqs[i].events) {
            match &e.target {
                Target::Id(id) => ids.insert(id),
                Target::Email(m) => emails.insert(m),
            };
            if let Some(k) = &e.idempotency_key {
                keys.insert(k);
            }
        }
        let (ids, emails, keys): (Vec<&str>, Vec<&str>, Vec<&str>) =
            (ids.into_iter().collect(), emails.into_iter().collect(), keys.into_iter().collect());
        Ok(TenantLookups {
            ids: ask_ids(script, self.backend, "contacts", "id", Some(tenant), &ids, false)?,
            emails: EmailLookup {
                asked: !emails.is_empty(),
                ids: ask_ids(script, self.backend, "contacts", "email", Some(tenant), &emails, true)?,
            },
            keys: ask_events_by_key(script, self.backend, tenant, &keys)?,
        })
    }

    /// Give every event of the requests `idxs` (all of `tenant`) its contact
    /// id, from what [`Store::ask_tenant`] asked; fail requests that
    /// name a contact id the tenant does not have, or a tenant that does not
    /// exist. Missing contacts of emails are created: on SQLite in `last`
    /// (the ids are made here, and no other writer can take an email
    /// meanwhile), on PostgreSQL now, where a concurrent transaction may
    /// create the same email first.
    #[allow(clippy::too_many_arguments)]
    async fn resolve_contacts(
        &self,
        tx: &mut ScriptTx,
        last: &mut Script<'_>,
        tenant: &str,
        idxs: &[usize],
        reqs: &mut [Request],
        found: Found,
        now: i64,
    ) -> Result<()> {
        let Found { by_id: found_ids, mut by_email, tenant_known: tenant_asked } = found;
        for &i in idxs {
            let unknown = reqs[i].events.iter().find_map(|e| match &e.target {
                Target::Id(id) if !found_ids.contains_key(id) => Some(id.clone()),
                _ => None,
            });
            if let Some(id) = unknown {
                reqs[i].failed = Some(StoreError::UnknownContact(id));
            }
        }
        // Emails only of requests still ok: a failed request creates nothing.
        let mut missing: Vec<String> = {
            let mut set: HashSet<&str> = HashSet::new();
            for &i in idxs.iter().filter(|&&i| reqs[i].ok()) {
                for e in &reqs[i].events {
                    if let Target::Email(m) = &e.target {
                        set.insert(m);
                    }
                }
            }
            // A contact found in the tenant proves the tenant exists; email
            // events, which may create contacts, asked for it with their lookup.
            if !set.is_empty() && tenant_asked != Some(true) {
                for &i in idxs {
                    reqs[i].failed = Some(StoreError::UnknownTenant(tenant.to_owned()));
                }
                return Ok(());
            }
            set.into_iter().filter(|m| !by_email.contains_key(*m)).map(str::to_owned).collect()
        };
        // Sorted, like event keys: concurrent inserts of overlapping emails
        // then lock in one order.
        missing.sort_unstable();
        if !missing.is_empty() {
            let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
            let created = match self.backend {
                Backend::Sqlite => ask_create_contacts(last, tenant, &missing, now)?,
                Backend::Postgres => {
                    create_contacts_for_emails(tx.conn().await?, self.backend, tenant, &missing, now).await?
                }
            };
            by_email.extend(created);
        }
        for &i in idxs {
            if !reqs[i].ok() {
                continue;
            }
            let mut vanished = None;
            for e in &mut reqs[i].events {
                match &e.target {
                    Target::Id(id) => e.contact_id = id.clone(),
                    Target::Email(m) => match by_email.get(m) {
                        Some(id) => e.contact_id = id.clone(),
                        None => vanished = Some(m.clone()),
                    },
                }
            }
            // Only when a concurrent writer removed the contact just found.
            if let Some(m) = vanished {
                reqs[i].failed = Some(StoreError::Invalid(format!(
                    "the contact for `{m}` was removed while its events were recorded"
                )));
            }
        }
        Ok(())
    }

    /// Claim up to `limit` unprocessed events, oldest first, for
    /// [`CLAIM_LEASE_MS`]; each comes with its tenant id. Events claimed by
    /// another worker whose lease has not expired are skipped.
    pub async fn claim_unprocessed_events(&self, limit: i64) -> Result<Vec<(String, Event)>> {
        let mut turn = self.write_gate().await?;
        // Real time, not the store's clock: a lease says whether the worker
        // that claimed the event is still alive.
        let now = now_ms();
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE events SET lease_until = $1 WHERE id IN (SELECT id FROM events WHERE processed = 0 \
             AND (lease_until IS NULL OR lease_until < $2) ORDER BY id LIMIT $3{lock}) RETURNING {EVENT_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(now + self.claim_lease_ms())
            .bind(now)
            .bind(limit.clamp(1, i64::from(sql::MAX_PAGE)))
            .fetch_all(turn.conn(&self.pool).await?)
            .await;
        let rows = turn.check(rows)?;
        let mut out = rows
            .iter()
            .map(|r| Ok((r.try_get::<String, _>("tenant_id")?, event_from_row(r)?)))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        Ok(out)
    }

    /// Tenants with unprocessed events (claimable or not), in id order,
    /// starting after `after` (`""`: from the first), at most `limit`.
    ///
    /// A loose index scan: each tenant is one seek in the queue-by-tenant
    /// index to the next tenant id, so the cost is the number of tenants
    /// returned, however many events each has queued (a tenant flooding the
    /// queue costs the others nothing here).
    pub async fn tenants_with_queued_events(&self, after: &str, limit: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "WITH RECURSIVE queued (tenant_id, n) AS ( \
                 SELECT (SELECT tenant_id FROM events WHERE processed = 0 AND tenant_id > $1 \
                         ORDER BY tenant_id LIMIT 1), CAST(1 AS BIGINT) \
                 UNION ALL \
                 SELECT (SELECT e.tenant_id FROM events e WHERE e.processed = 0 AND e.tenant_id > q.tenant_id \
                         ORDER BY e.tenant_id LIMIT 1), q.n + 1 \
                 FROM queued q WHERE q.tenant_id IS NOT NULL AND q.n < $2 \
             ) SELECT tenant_id FROM queued WHERE tenant_id IS NOT NULL",
        )
        .bind(after)
        .bind(limit.max(1))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("tenant_id")?)).collect()
    }

    /// Take `tenant`'s lane: claim up to `limit` of its unprocessed events,
    /// oldest first, for [`CLAIM_LEASE_MS`] — but only while none of its
    /// events is leased (by this process or another node), else nothing.
    /// Reads only this tenant's part of the queue.
    ///
    /// A tenant's events are so handled by one lane at a time across the
    /// whole cluster, in order, and one contact's events never by two nodes
    /// at once; the leases are the lane's lease (a dead node's lane is
    /// taken over when they run out). On PostgreSQL the check and the claim
    /// run under a transaction-scoped advisory lock on the tenant, taken
    /// without waiting: a node that finds another claiming the same tenant
    /// at that moment claims nothing, as it would a moment later.
    pub async fn claim_tenant_events(&self, tenant: &str, limit: i64) -> Result<Vec<Event>> {
        let mut tx = self.begin_write_for(Writer::Tenant(tenant)).await?;
        if self.backend == Backend::Postgres {
            let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
                .bind(LANE_LOCK_SPACE)
                .bind(tenant)
                .fetch_one(&mut *tx)
                .await?;
            if !ours {
                return Ok(Vec::new());
            }
        }
        let now = now_ms();
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE events SET lease_until = $1 WHERE id IN (SELECT id FROM events WHERE tenant_id = $2 \
             AND processed = 0 AND (lease_until IS NULL OR lease_until < $3) ORDER BY id LIMIT $4{lock}) \
             AND NOT EXISTS (SELECT 1 FROM events WHERE tenant_id = $2 AND processed = 0 \
             AND lease_until IS NOT NULL AND lease_until >= $3) \
             RETURNING {EVENT_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(now + self.claim_lease_ms())
            .bind(tenant)
            .bind(now)
            .bind(limit.clamp(1, i64::from(sql::MAX_PAGE)))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut out = rows.iter().map(event_from_row).collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The next `limit` events of `tenant`'s lane, oldest first, for the
    /// pipeline, which runs one lane per tenant at a time in this process.
    ///
    /// On PostgreSQL that is [`Store::claim_tenant_events`]: several nodes
    /// share the queue, and the leases say whose lane it is. On SQLite it is
    /// a read of the head of the tenant's queue, and no write: one process
    /// serves the file (`Store::take_ownership`), so besides this process's
    /// own lane nobody could take the events, and a lease would cost a write
    /// turn at SQLite's one writer on every lane, for every tenant, behind
    /// whatever other tenants are writing (a noisy tenant's claims of its
    /// backlog, up to 1,024 events each, held it for up to 11 ms in `cairn
    /// bench --noisy-only`). A lane that fails needs
    /// nothing given back, and after a crash the events are simply still
    /// unprocessed. Other callers, which do not own the tenant's lane, use
    /// `claim_tenant_events`.
    pub async fn take_lane_events(&self, tenant: &str, limit: i64) -> Result<Vec<Event>> {
        if self.backend == Backend::Postgres {
            return self.claim_tenant_events(tenant, limit).await;
        }
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND processed = 0 ORDER BY id LIMIT $2"
        ))
        .bind(tenant)
        .bind(limit.clamp(1, i64::from(sql::MAX_PAGE)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Mark events processed (the pipeline is done with them).
    pub async fn mark_events_processed(&self, ids: &[String]) -> Result<()> {
        self.update_events(ids, "processed = 1, lease_until = NULL", "").await
    }

    /// Give claimed, unprocessed events back to the queue before their lease
    /// runs out (e.g. on shutdown).
    pub async fn release_events(&self, ids: &[String]) -> Result<()> {
        self.update_events(ids, "lease_until = NULL", " AND processed = 0").await
    }

    async fn update_events(&self, ids: &[String], set: &str, filter: &str) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (start, len) in pow2_chunks(ids.len(), MAX_IN_LIST) {
            let sql = format!("UPDATE events SET {set} WHERE id IN ({}){filter}", Params::new(self.backend).list(len));
            let mut q = sqlx::query(&sql);
            for id in &ids[start..start + len] {
                q = q.bind(id.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// How many events `tenant` has, and how many of them are processed.
    /// Reads every event of the tenant: for benchmarks and tests, not for
    /// a hot path.
    pub async fn event_counts(&self, tenant: &str) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN processed = 1 THEN 1 ELSE 0 END), 0) AS done \
             FROM events WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, row.try_get("done")?))
    }

    /// Event `id` of `tenant`.
    pub async fn get_event(&self, tenant: &str, id: &str) -> Result<Option<Event>> {
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    /// Events of contact `contact_id` that occurred at or after `since`,
    /// newest first, at most `limit` (capped at [`MAX_RECENT`]); only the
    /// given `kinds` unless that list is empty.
    pub async fn recent_events(
        &self,
        tenant: &str,
        contact_id: &str,
        kinds: &[String],
        since: i64,
        limit: i64,
    ) -> Result<Vec<Event>> {
        let limit = limit.min(MAX_RECENT);
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let mut b = Builder::new(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = "));
        let p = b.arg(Arg::Text(tenant));
        b.push(&p);
        b.push_arg(" AND contact_id = ", Arg::Text(contact_id));
        b.push_arg(" AND occurred_at >= ", Arg::Int(since));
        if !kinds.is_empty() {
            // Cap the list so the statement stays within bind limits.
            let list: Vec<String> = kinds.iter().take(MAX_IN_LIST).map(|k| b.arg(Arg::Text(k))).collect();
            b.push(&format!(" AND kind IN ({})", list.join(", ")));
        }
        b.push_arg(" ORDER BY occurred_at DESC, id DESC LIMIT ", Arg::Int(limit));
        let rows = b.query().fetch_all(&self.pool).await?;
        rows.iter().map(event_from_row).collect()
    }

    /// How many events of `kind` contact `contact_id` had at or after `since`
    /// (every kind when `kind` is empty).
    pub async fn count_events(&self, tenant: &str, contact_id: &str, kind: &str, since: i64) -> Result<i64> {
        let mut b = Builder::new("SELECT COUNT(*) AS n FROM events WHERE tenant_id = ");
        let p = b.arg(Arg::Text(tenant));
        b.push(&p);
        b.push_arg(" AND contact_id = ", Arg::Text(contact_id));
        b.push_arg(" AND occurred_at >= ", Arg::Int(since));
        if !kind.is_empty() {
            b.push_arg(" AND kind = ", Arg::Text(kind));
        }
        let row = b.query().fetch_one(&self.pool).await?;
        Ok(row.try_get("n")?)
    }

    /// The history of contact `contact_id`, newest first: events, notes,
    /// tasks, score changes, plugin action runs and workflow steps, at most
    /// `limit` entries.
    /// `None` when the contact does not exist in `tenant`.
    pub async fn timeline(&self, tenant: &str, contact_id: &str, limit: u32) -> Result<Option<Vec<TimelineEntry>>> {
        let limit = sql::page_limit(limit);
        let mut conn = self.pool.acquire().await?;
        if !crate::store::contacts::contact_exists(&mut conn, tenant, contact_id).await? {
            return Ok(None);
        }
        let mut entries = Vec::new();
        let per_contact = |cols: &str, table: &str, at: &str, extra: &str| {
            format!(
                "SELECT {cols} FROM {table} WHERE tenant_id = $1 AND contact_id = $2{extra} \
                 ORDER BY {at} DESC, id DESC LIMIT $3"
            )
        };
        let queries = [
            per_contact(EVENT_COLUMNS, "events", "occurred_at", ""),
            per_contact(NOTE_COLUMNS, "notes", "created_at", ""),
            per_contact(TASK_COLUMNS, "tasks", "created_at", ""),
            per_contact("id, contact_id, old_score, new_score, reasons, at", "score_changes", "at", ""),
            // A workflow's action calls show as its steps (their keys are
            // `run:<run>:<step>`); the other action calls show themselves.
            per_contact(
                INVOCATION_COLUMNS,
                "invocations",
                "at",
                " AND kind = 'execute' AND (idempotency_key IS NULL OR idempotency_key NOT LIKE 'run:%')",
            ),
            per_contact(RUN_STEP_COLUMNS, "run_steps", "started_at", ""),
        ];
        for (n, sql) in queries.iter().enumerate() {
            let rows = sqlx::query(sql).bind(tenant).bind(contact_id).bind(limit).fetch_all(&mut *conn).await?;
            for row in &rows {
                entries.push(match n {
                    0 => TimelineEntry::Event(event_from_row(row)?),
                    1 => TimelineEntry::Note(note_from_row(row)?),
                    2 => TimelineEntry::Task(task_from_row(row)?),
                    3 => TimelineEntry::ScoreChange(score_change_from_row(row)?),
                    4 => TimelineEntry::ActionRun(invocation_from_row(row)?),
                    _ => TimelineEntry::WorkflowStep(run_step_from_row(row)?),
                });
            }
        }
        entries.sort_by(|a, b| b.at().cmp(&a.at()).then_with(|| b.id().cmp(a.id())));
        entries.truncate(limit as usize);
        Ok(Some(entries))
    }
}

/// Build each request's result from the outcomes of its events (which
/// follow the order of the requests still ok, then of their events).
fn finish_requests(reqs: Vec<Request>, now: i64, outcomes: Vec<Outcome>) -> Vec<Result<Vec<Event>>> {
    // Every event as stored, in commit order, so repeats can copy their first.
    let mut built: Vec<Event> = Vec::with_capacity(outcomes.len());
    let mut outcomes = outcomes.into_iter();
    let mut results = Vec::with_capacity(reqs.len());
    for r in reqs {
        if let Some(e) = r.failed {
            results.push(Err(e));
            continue;
        }
        let start = built.len();
        for e in r.events {
            let event = match outcomes.next() {
                Some(Outcome::Stored(existing)) => existing,
                Some(Outcome::SameAs(j)) if j < built.len() => built[j].clone(),
                _ => Event {
                    id: e.id,
                    contact_id: e.contact_id,
                    kind: e.kind,
                    occurred_at: e.occurred_at,
                    properties: e.properties,
                    received_at: now,
                    processed: false,
                },
            };
            built.push(event);
        }
        results.push(Ok(built[start..].to_vec()));
    }
    results
}
