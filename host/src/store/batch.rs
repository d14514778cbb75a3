//! Batched reads and writes for the event pipeline.
//!
//! The pipeline handles a claimed batch contact by contact. Doing that with
//! the single-record methods costs several round trips and a transaction per
//! contact (on this machine a SQLite round trip through sqlx is ~100 µs), so
//! the pipeline instead reads every contact of a batch and its history in a
//! few queries, and writes what it learned (last activity, scores, score
//! history, events processed) in one transaction at the end.

use std::collections::HashMap;

use serde::Deserialize;
use sqlx::any::AnyArguments;
use sqlx::{Arguments, Row};

use crate::store::contacts::{MAX_REASONS, contact_select, contact_with_tags_from_row};
use crate::store::error::{Result, StoreError};
use crate::store::events::insert_system_event;
use crate::store::script::{Answers, Script, Slot};
use crate::store::sql::{self, Arg, Builder, MAX_IN_LIST, Params};
use crate::store::{Backend, Contact, EnrollOutcome, Enrollment, Event, Properties, Store, Writer, new_id};

/// What the pipeline learned about one contact in a batch.
#[derive(Debug, Clone)]
pub struct ContactUpdate {
    /// The tenant.
    pub tenant_id: String,
    /// The contact.
    pub contact_id: String,
    /// The newest event time seen; `last_activity_at` only moves forward.
    pub last_activity_at: Option<i64>,
    /// A new score: (old, new, reasons).
    pub score: Option<(f64, f64, Vec<String>)>,
    /// A lifecycle stage reached by the new score.
    pub stage_change: Option<StageChange>,
    /// Workflow enrollments the batch's events caused (for this contact or,
    /// through a trigger plugin, for others), decided in the same
    /// transaction: a run never starts from the score before its trigger.
    pub enrollments: Vec<Enrollment>,
}

/// A contact moving to a lifecycle stage; recorded with a
/// `lifecycle_stage_changed` event carrying `properties`.
#[derive(Debug, Clone)]
pub struct StageChange {
    /// The new stage.
    pub stage: String,
    /// The event's properties (from, to, score, threshold).
    pub properties: Properties,
    /// When, epoch ms.
    pub at: i64,
}

/// An event as the aggregated history query returns it.
#[derive(Deserialize)]
struct AggregatedEvent {
    id: String,
    kind: String,
    occurred_at: i64,
    properties: Properties,
    received_at: i64,
}

impl Store {
    /// The contacts of `tenant` among `ids` (with tags), by id; ids of other
    /// tenants or deleted contacts are simply absent.
    pub async fn get_contacts(&self, tenant: &str, ids: &[String]) -> Result<HashMap<String, Contact>> {
        Ok(self.lane_reads(tenant, ids, None).await?.0)
    }

    /// For each contact of `tenant` among `contact_ids`: its events at or
    /// after `since` (of `kinds`, or every kind when empty), newest first, at
    /// most `limit_each` per contact. One query per 256 contacts.
    pub async fn recent_events_for(
        &self,
        tenant: &str,
        contact_ids: &[String],
        kinds: &[String],
        since: i64,
        limit_each: i64,
    ) -> Result<HashMap<String, Vec<Event>>> {
        let history = History { kinds, since, limit_each };
        let mut script = Script::new(self.backend);
        let asked = self.ask_recent_events(&mut script, tenant, contact_ids, &history)?;
        let mut answers = script.run(&mut *self.pool.acquire().await?).await?;
        read_recent_events(&mut answers, asked)
    }

    /// What a pipeline lane reads before it handles its contacts: the
    /// contacts of `tenant` among `ids` ([`Store::get_contacts`]) and, when
    /// asked, their recent events ([`Store::recent_events_for`]), in one
    /// round trip to a read connection's thread on SQLite.
    pub async fn lane_reads(
        &self,
        tenant: &str,
        ids: &[String],
        history: Option<History<'_>>,
    ) -> Result<(HashMap<String, Contact>, HashMap<String, Vec<Event>>)> {
        let mut script = Script::new(self.backend);
        let mut contact_slots = Vec::new();
        for chunk in ids.chunks(MAX_IN_LIST) {
            let mut p = Params::new(self.backend);
            let sql = format!(
                "SELECT {} FROM contacts WHERE tenant_id = {} AND id IN ({})",
                contact_select(self.backend, "contacts"),
                p.one(),
                p.list(chunk.len())
            );
            let mut args = AnyArguments::default();
            args.add(tenant.to_owned()).map_err(sqlx::Error::Encode)?;
            for id in chunk {
                args.add(id.clone()).map_err(sqlx::Error::Encode)?;
            }
            contact_slots.push(script.push_with(sql, args));
        }
        let events = match &history {
            Some(history) => Some(self.ask_recent_events(&mut script, tenant, ids, history)?),
            None => None,
        };
        if script.is_empty() {
            return Ok(Default::default());
        }
        let mut answers = script.run(&mut *self.pool.acquire().await?).await?;
        let mut found = HashMap::with_capacity(ids.len());
        for slot in contact_slots {
            for row in answers.take(slot).rows {
                let contact = contact_with_tags_from_row(&row)?;
                found.insert(contact.id.clone(), contact);
            }
        }
        let histories = match events {
            Some(asked) => read_recent_events(&mut answers, asked)?,
            None => HashMap::new(),
        };
        Ok((found, histories))
    }

    /// Ask in `script` for [`Store::recent_events_for`]'s answer.
    fn ask_recent_events<'q>(
        &self,
        script: &mut Script<'q>,
        tenant: &'q str,
        contact_ids: &'q [String],
        history: &History<'q>,
    ) -> Result<Vec<Slot>> {
        let mut slots = Vec::new();
        if history.limit_each <= 0 {
            return Ok(slots);
        }
        // One row per contact with its events as a JSON array: every row
        // that crosses from the database driver costs more than decoding
        // the JSON of many events.
        let aggregate = match self.backend {
            Backend::Sqlite => {
                "json_group_array(json_object('id', id, 'kind', kind, 'occurred_at', occurred_at, \
                 'properties', json(properties), 'received_at', received_at))"
            }
            Backend::Postgres => {
                "json_agg(json_build_object('id', id, 'kind', kind, 'occurred_at', occurred_at, \
                 'properties', properties::json, 'received_at', received_at))::text"
            }
        };
        for chunk in contact_ids.chunks(MAX_IN_LIST) {
            let mut b = Builder::new(&format!(
                "SELECT contact_id, {aggregate} AS evs FROM (SELECT id, contact_id, kind, occurred_at, properties, \
                 received_at, ROW_NUMBER() OVER (PARTITION BY contact_id ORDER BY occurred_at DESC, id DESC) AS rn \
                 FROM events WHERE tenant_id = "
            ));
            let p = b.arg(Arg::Text(tenant));
            b.push(&p);
            let ids: Vec<String> = chunk.iter().map(|id| b.arg(Arg::Text(id))).collect();
            b.push(&format!(" AND contact_id IN ({})", ids.join(", ")));
            b.push_arg(" AND occurred_at >= ", Arg::Int(history.since));
            if !history.kinds.is_empty() {
                let list: Vec<String> = history.kinds.iter().take(MAX_IN_LIST).map(|k| b.arg(Arg::Text(k))).collect();
                b.push(&format!(" AND kind IN ({})", list.join(", ")));
            }
            b.push_arg(") ranked WHERE rn <= ", Arg::Int(history.limit_each));
            b.push(" GROUP BY contact_id");
            let (sql, args) = b.into_statement()?;
            slots.push(script.push_with(sql, args));
        }
        Ok(slots)
    }

    /// Apply a batch's contact updates and mark its events processed, in one
    /// transaction: either all of it is recorded or none (and the batch is
    /// processed again).
    ///
    /// Returns what became of each enrollment, in order; one whose contact
    /// or workflow vanished meanwhile is skipped (`None`), not an error that
    /// would fail the whole batch.
    pub async fn finish_batch(
        &self,
        updates: &[ContactUpdate],
        processed: &[String],
    ) -> Result<Vec<(Enrollment, Option<EnrollOutcome>)>> {
        self.finish_batch_leasing(updates, processed, false).await
    }

    /// [`Store::finish_batch`]; with `lease_runs`, the runs it enrolls
    /// waiting are born leased for a claim lease (real time): the caller
    /// hands them to its runner in memory, and saves the runner the write
    /// of claiming them (see `engine::workflows::direct`).
    pub async fn finish_batch_leasing(
        &self,
        updates: &[ContactUpdate],
        processed: &[String],
        lease_runs: bool,
    ) -> Result<Vec<(Enrollment, Option<EnrollOutcome>)>> {
        let at = self.now();
        // A lane's updates are all of its tenant's.
        let writer = updates.first().map_or(Writer::Shared, |u| Writer::Tenant(&u.tenant_id));
        // Contact rows are locked in one order (by id) in every transaction:
        // two nodes finishing lanes of the same tenant then queue on a shared
        // contact instead of deadlocking on two.
        let mut updates: Vec<&ContactUpdate> = updates.iter().collect();
        updates.sort_by(|a, b| (&a.tenant_id, &a.contact_id).cmp(&(&b.tenant_id, &b.contact_id)));
        if self.backend == Backend::Sqlite {
            return self.finish_batch_sqlite(writer, &updates, processed, lease_runs, at).await;
        }
        let mut tx = self.begin_write_for(writer).await?;
        // First, so that on PostgreSQL two nodes finishing the same events
        // (a claim that outlived its lease) queue on the rows' locks and the
        // second finds them processed: it rolls back, and every event's
        // effects land once.
        for chunk in processed.chunks(MAX_IN_LIST) {
            let mut p = Params::new(self.backend);
            let list = p.list(chunk.len());
            let sql =
                format!("UPDATE events SET processed = 1, lease_until = NULL WHERE id IN ({list}) AND processed = 0");
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            let marked = q.execute(&mut *tx).await?.rows_affected();
            if marked < chunk.len() as u64 {
                check_claim(&mut tx, self.backend, chunk, marked).await?;
            }
        }
        let mut memo = crate::store::runs::EnrollMemo::default();
        for u in updates.iter().copied() {
            if let Some(t) = u.last_activity_at {
                sqlx::query(
                    "UPDATE contacts SET last_activity_at = CASE WHEN last_activity_at IS NULL OR last_activity_at < $3 \
                     THEN $3 ELSE last_activity_at END WHERE tenant_id = $1 AND id = $2",
                )
                .bind(&u.tenant_id)
                .bind(&u.contact_id)
                .bind(t)
                .execute(&mut *tx)
                .await?;
            }
            if let Some((old, new, reasons)) = u.score.as_ref() {
                let done =
                    sqlx::query("UPDATE contacts SET score = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2")
                        .bind(&u.tenant_id)
                        .bind(&u.contact_id)
                        .bind(*new)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                if done.rows_affected() == 0 {
                    continue; // deleted meanwhile
                }
                let reasons: Vec<&String> = reasons.iter().take(MAX_REASONS).collect();
                sqlx::query(
                    "INSERT INTO score_changes (id, tenant_id, contact_id, old_score, new_score, reasons, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(new_id())
                .bind(&u.tenant_id)
                .bind(&u.contact_id)
                .bind(*old)
                .bind(*new)
                .bind(sql::to_json(&reasons)?)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
        }
        record_stage_changes(&mut tx, &updates, at).await?;
        let mut outcomes = Vec::new();
        let lease_until = lease_runs.then(|| crate::store::now_ms() + self.claim_lease_ms());
        for e in updates.iter().flat_map(|u| &u.enrollments) {
            let outcome =
                crate::store::runs::enroll_if_present(&mut tx, self.backend, e, &mut memo, lease_until).await?;
            outcomes.push((e.clone(), outcome));
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// [`Store::finish_batch_leasing`] on SQLite, in two round trips to the
    /// write connection's thread (see `script`) where one statement after
    /// another took ten for a one-event lane: the first script begins the
    /// transaction, marks the events, moves last activity and scores and
    /// asks the enrollment rules of every enrollment at once; the second
    /// inserts the runs they start and commits. A stage change (rare) or a
    /// claim found short adds statements of their own in between.
    async fn finish_batch_sqlite(
        &self,
        writer: Writer<'_>,
        updates: &[&ContactUpdate],
        processed: &[String],
        lease_runs: bool,
        at: i64,
    ) -> Result<Vec<(Enrollment, Option<EnrollOutcome>)>> {
        let mut tx = self.begin_script_for(writer).await?;
        let mut first = Script::new(Backend::Sqlite);
        let mut marks = Vec::new();
        for chunk in processed.chunks(MAX_IN_LIST) {
            let list = Params::new(Backend::Sqlite).list(chunk.len());
            let mut args = AnyArguments::default();
            for id in chunk {
                args.add(id.as_str()).map_err(sqlx::Error::Encode)?;
            }
            let sql =
                format!("UPDATE events SET processed = 1, lease_until = NULL WHERE id IN ({list}) AND processed = 0");
            marks.push((chunk, first.push_with(sql, args)));
        }
        push_activity_sqlite(&mut first, updates)?;
        push_scores_sqlite(&mut first, updates, at)?;
        let enrollments: Vec<&Enrollment> = updates.iter().flat_map(|u| &u.enrollments).collect();
        let asked = crate::store::runs::ask_enrollment_rules(&mut first, &enrollments)?;
        let mut answers = tx.run(first).await?;
        for (chunk, slot) in marks {
            let marked = answers.take(slot).rows_affected;
            if marked < chunk.len() as u64 {
                check_claim(tx.conn().await?, Backend::Sqlite, chunk, marked).await?;
            }
        }
        if updates.iter().any(|u| u.stage_change.is_some()) {
            record_stage_changes(tx.conn().await?, updates, at).await?;
        }
        let lease_until = lease_runs.then(|| crate::store::now_ms() + self.claim_lease_ms());
        let mut last = Script::new(Backend::Sqlite);
        let outcomes = match asked {
            Some(slot) => {
                crate::store::runs::decide_enrollments(answers.take(slot), &enrollments, lease_until, &mut last)?
            }
            None => Vec::new(),
        };
        tx.commit_with(last).await?;
        Ok(enrollments.into_iter().cloned().zip(outcomes).collect())
    }
}

/// Which recent events [`Store::lane_reads`] reads with the contacts:
/// since `since`, of `kinds` (every kind when empty), at most `limit_each`
/// per contact, newest first.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    /// The kinds; empty for every kind.
    pub kinds: &'a [String],
    /// Epoch ms: events that occurred at or after it.
    pub since: i64,
    /// Most events per contact.
    pub limit_each: i64,
}

/// The events [`Store::ask_recent_events`] asked for, by contact.
fn read_recent_events(answers: &mut Answers, slots: Vec<Slot>) -> Result<HashMap<String, Vec<Event>>> {
    let mut out: HashMap<String, Vec<Event>> = HashMap::new();
    for slot in slots {
        for row in answers.take(slot).rows {
            let contact_id: String = row.try_get("contact_id")?;
            let json: String = row.try_get("evs")?;
            let parsed: Vec<AggregatedEvent> =
                serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("events: {e}")))?;
            let mut events: Vec<Event> = parsed
                .into_iter()
                .map(|a| Event {
                    id: a.id,
                    contact_id: contact_id.clone(),
                    kind: a.kind,
                    occurred_at: a.occurred_at,
                    properties: a.properties,
                    received_at: a.received_at,
                    processed: true,
                })
                .collect();
            // Aggregate order is not guaranteed: restore newest first.
            events.sort_by(|x, y| (y.occurred_at, &y.id).cmp(&(x.occurred_at, &x.id)));
            out.insert(contact_id, events);
        }
    }
    Ok(out)
}

/// Fewer of `chunk`'s events were marked processed than claimed (`marked`):
/// fine when the others were deleted with their contact, a lost claim
/// ([`StoreError::ClaimLost`]) when another worker took them.
async fn check_claim(conn: &mut sqlx::AnyConnection, backend: Backend, chunk: &[String], marked: u64) -> Result<()> {
    let sql = format!("SELECT COUNT(*) FROM events WHERE id IN ({})", Params::new(backend).list(chunk.len()));
    let mut q = sqlx::query_scalar::<_, i64>(&sql);
    for id in chunk {
        q = q.bind(id.as_str());
    }
    let existing = u64::try_from(q.fetch_one(&mut *conn).await?).unwrap_or(0);
    if marked < existing {
        return Err(StoreError::ClaimLost(existing - marked));
    }
    Ok(())
}

/// Move each contact with a stage change to its new stage and record the
/// `lifecycle_stage_changed` event (a contact deleted meanwhile gets
/// neither).
async fn record_stage_changes(conn: &mut sqlx::AnyConnection, updates: &[&ContactUpdate], at: i64) -> Result<()> {
    for u in updates.iter().copied() {
        let Some(change) = &u.stage_change else { continue };
        let moved =
            sqlx::query("UPDATE contacts SET lifecycle_stage = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2")
                .bind(&u.tenant_id)
                .bind(&u.contact_id)
                .bind(&change.stage)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        if moved.rows_affected() == 0 {
            continue;
        }
        insert_system_event(
            &mut *conn,
            &u.tenant_id,
            &u.contact_id,
            "lifecycle_stage_changed",
            &change.properties,
            change.at,
        )
        .await?;
    }
    Ok(())
}

/// Store each updated contact's new score and its score history entry, in
/// two statements per [`ACTIVITY_PER_STATEMENT`] contacts (SQLite only), for
/// the reason [`push_activity_sqlite`] gives. A contact deleted meanwhile
/// gets neither.
fn push_scores_sqlite(script: &mut Script<'_>, updates: &[&ContactUpdate], at: i64) -> Result<()> {
    let mut by_tenant: HashMap<&str, Vec<(&str, f64, f64, String)>> = HashMap::new();
    for u in updates {
        if let Some((old, new, reasons)) = &u.score {
            let reasons: Vec<&String> = reasons.iter().take(MAX_REASONS).collect();
            by_tenant.entry(&u.tenant_id).or_default().push((&u.contact_id, *old, *new, sql::to_json(&reasons)?));
        }
    }
    for (tenant, scores) in by_tenant {
        for chunk in scores.chunks(ACTIVITY_PER_STATEMENT) {
            let changes: Vec<(String, &str, f64, f64, &str)> = chunk
                .iter()
                .map(|(contact, old, new, reasons)| (new_id(), *contact, *old, *new, reasons.as_str()))
                .collect();
            let changes = sql::to_json(&changes)?;
            // The unary `+`: see `push_activity_sqlite`.
            script.push(
                sqlx::query(
                    "UPDATE contacts SET score = a.score, updated_at = $2 \
                     FROM (SELECT json_extract(value, '$[1]') AS id, json_extract(value, '$[3]') AS score \
                           FROM json_each($3)) AS a \
                     WHERE contacts.id = a.id AND +contacts.tenant_id = $1",
                )
                .bind(tenant.to_owned())
                .bind(at)
                .bind(changes.clone()),
            )?;
            script.push(
                sqlx::query(
                    "INSERT INTO score_changes (id, tenant_id, contact_id, old_score, new_score, reasons, at) \
                     SELECT json_extract(value, '$[0]'), $1, json_extract(value, '$[1]'), json_extract(value, '$[2]'), \
                            json_extract(value, '$[3]'), json_extract(value, '$[4]'), $2 \
                     FROM json_each($3) \
                     WHERE EXISTS (SELECT 1 FROM contacts WHERE tenant_id = $1 AND id = json_extract(value, '$[1]'))",
                )
                .bind(tenant.to_owned())
                .bind(at)
                .bind(changes),
            )?;
        }
    }
    Ok(())
}

/// Contacts in one statement of [`push_activity_sqlite`] at most (the
/// statement's JSON text grows with them: ~80 bytes each).
const ACTIVITY_PER_STATEMENT: usize = 1000;

/// Move each updated contact's `last_activity_at` forward, in one
/// statement per [`ACTIVITY_PER_STATEMENT`] contacts (SQLite only).
///
/// Why not a statement per contact: a lane commits while it holds SQLite's
/// one writer, and every statement sent alone is a round trip to the
/// connection's thread (~0.1 ms on a busy 2-core machine), so a 64-contact
/// lane's 64 updates cost it ~6 ms of its turn, and every other tenant's
/// write waits for that turn (`cairn bench --noisy-only`); in a script
/// each statement also costs the preparing of its text. PostgreSQL keeps
/// the statement per contact: there rows are locked in the order they are
/// updated, and `finish_batch` locks contacts by id so two nodes cannot
/// deadlock (SQLite has one writer, so no order is needed).
fn push_activity_sqlite(script: &mut Script<'_>, updates: &[&ContactUpdate]) -> Result<()> {
    let mut by_tenant: HashMap<&str, Vec<(&str, i64)>> = HashMap::new();
    for u in updates {
        if let Some(at) = u.last_activity_at {
            by_tenant.entry(&u.tenant_id).or_default().push((&u.contact_id, at));
        }
    }
    for (tenant, activity) in by_tenant {
        for chunk in activity.chunks(ACTIVITY_PER_STATEMENT) {
            // The unary `+` keeps SQLite from using the tenant index: with
            // it the plan scanned every contact of the tenant and probed the
            // list (tenant B's 1–2-contact commits grew to 14–54 ms as its
            // contacts grew to a few thousand in `cairn bench --noisy-only
            // --quick`); without, it walks the list and finds each contact
            // by its key.
            script.push(
                sqlx::query(
                    "UPDATE contacts SET last_activity_at = max(coalesce(contacts.last_activity_at, a.at), a.at) \
                     FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS at \
                           FROM json_each($2)) AS a \
                     WHERE contacts.id = a.id AND +contacts.tenant_id = $1",
                )
                .bind(tenant.to_owned())
                .bind(sql::to_json(chunk)?),
            )?;
        }
    }
    Ok(())
}
