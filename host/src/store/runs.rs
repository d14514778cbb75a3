//! Workflow runs: one per enrollment of a contact into a workflow version,
//! with a cursor on the next step, and the record of every step it ran.
//!
//! ## A run is a timer
//! A `waiting` run is due at `wake_at` (business time): right away after
//! enrolling or a step, later after a delay or a retry backoff. The runner
//! claims due runs ([`Store::claim_due_runs`]) with a lease of real time, like
//! the event queue (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so several host
//! processes share the work), advances them, and saves where each got to
//! ([`Store::save_run`]), which releases the lease. A run whose worker died
//! is claimed again when its lease expires; its steps carry idempotency keys
//! (run id + step id) so a repeated action can be recognised.
//!
//! Statuses: `waiting` (due at `wake_at`), `completed`, `failed` (a step
//! gave up; [`Store::retry_run`] sends it back to `waiting` at the step that
//! failed), `exited` (a goal was met), `cancelled`.
//!
//! ## Enrollment rules
//! [`Store::enroll`] decides every enrollment inside one write transaction,
//! so the checks and the insert cannot interleave with another enrollment of
//! the same contact: on SQLite the transaction holds the write lock; on
//! PostgreSQL it locks each workflow's row first. In order, an enrollment is
//! refused when its key was used before (a trigger saw the same event
//! twice), when the contact has a run of the workflow still waiting, when
//! the workflow does not re-enroll and the contact had a run, when the last
//! enrollment is more recent than the minimum interval, and when the daily
//! cap is reached (the guard against workflows that trigger each other in a
//! loop).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{AnyConnection, Arguments, Row};

use crate::store::coalesce::Job;
use crate::store::error::{Result, StoreError};
use crate::store::invocations::{InvocationRecord, push_invocation};
use crate::store::script::{Answer, Script, Slot};
use crate::store::sql::{self, Arg, Builder, MAX_IN_LIST, MAX_PAGE, MAX_ROWS_PER_INSERT, Params, page_limit};
use crate::store::{Backend, Page, Store, Writer, new_id, now_ms};

/// Longest enrollment key (keys are built from ids: workflow, event,
/// schedule firing).
pub const MAX_ENROLLMENT_KEY: usize = 400;
/// Largest JSON kept for one step's input, output or error, or a run's
/// error: plugins control these values, and a run's history is read on every
/// look at it. A larger value is replaced by a note saying so (the step
/// still counts; only its record is shortened).
pub const MAX_STEP_JSON: usize = 64 << 10;

const DAY_MS: i64 = 86_400_000;
const WAITING: &str = "waiting";
const COMPLETED: &str = "completed";
const FAILED: &str = "failed";
/// Every status a run can have.
const RUN_STATUSES: [&str; 5] = [WAITING, COMPLETED, FAILED, "exited", "cancelled"];
/// Every status a step record can have.
const STEP_STATUSES: [&str; 4] = ["ok", "failed", "retrying", "waiting"];

const RUN_COLUMNS: &str = "id, tenant_id, workflow_id, version, contact_id, status, cursor, wake_at, attempts, \
     variants, state, trigger_event_id, enrollment_key, error, exit_reason, enrolled_at, updated_at, finished_at";
pub(crate) const RUN_STEP_COLUMNS: &str = "id, run_id, workflow_id, contact_id, step_id, kind, status, attempts, \
     input, output, error, started_at, finished_at, duration_us, fuel_used, invocation_id";

/// One enrollment of a contact into a workflow version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Run id (time ordered).
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// The workflow.
    pub workflow_id: String,
    /// The workflow version the run follows to its end.
    pub version: i64,
    /// The contact.
    pub contact_id: String,
    /// `waiting`, `completed`, `failed`, `exited` or `cancelled`.
    pub status: String,
    /// Id of the next step to run (of a failed run: the step that failed);
    /// `None` when finished.
    pub cursor: Option<String>,
    /// When a waiting run is due, epoch ms (business time); `None` when finished.
    pub wake_at: Option<i64>,
    /// Failed attempts of the step at the cursor.
    pub attempts: i64,
    /// A/B split choices: split step id → variant name (a JSON object).
    pub variants: serde_json::Value,
    /// What the engine keeps between steps, e.g. when a delay began (a JSON object).
    pub state: serde_json::Value,
    /// The event that enrolled the contact.
    pub trigger_event_id: Option<String>,
    /// The key that makes enrolling idempotent (unique per workflow).
    pub enrollment_key: String,
    /// Why the run failed.
    pub error: Option<serde_json::Value>,
    /// Which goal or exit condition ended the run.
    pub exit_reason: Option<String>,
    /// Enrollment time, epoch ms.
    pub enrolled_at: i64,
    /// Last progress, epoch ms.
    pub updated_at: i64,
    /// When the run ended, epoch ms.
    pub finished_at: Option<i64>,
}

/// What one step of a run did (one record per run and step; a retried step
/// updates its record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStep {
    /// Record id (use [`crate::store::new_id`]; kept from the first attempt).
    pub id: String,
    /// The run.
    pub run_id: String,
    /// The workflow.
    pub workflow_id: String,
    /// The contact.
    pub contact_id: String,
    /// The step's id in the definition.
    pub step_id: String,
    /// The step's kind (`action`, `delay`, `if`, `split`, ...).
    pub kind: String,
    /// `ok`, `failed`, `retrying` (failed, will be tried again) or `waiting`
    /// (a delay in progress).
    pub status: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// What the step was given.
    pub input: Option<serde_json::Value>,
    /// What it produced.
    pub output: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<serde_json::Value>,
    /// When its first attempt began, epoch ms.
    pub started_at: i64,
    /// When its latest attempt ended, epoch ms.
    pub finished_at: Option<i64>,
    /// Wall time of the latest attempt, microseconds.
    pub duration_us: i64,
    /// Fuel (instructions) the latest attempt's plugin call used.
    pub fuel_used: Option<i64>,
    /// The latest attempt's plugin call (`GET /v1/invocations/{id}`: its
    /// input, for replay); `None` for steps that call no plugin, or an
    /// attempt that could not call one (install missing or disabled).
    #[serde(default)]
    pub invocation_id: Option<String>,
}

/// A request to enroll a contact into a workflow version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    /// The tenant.
    pub tenant_id: String,
    /// The workflow.
    pub workflow_id: String,
    /// The version to follow (the active one when enrolling).
    pub version: i64,
    /// The contact.
    pub contact_id: String,
    /// The first step; `None` for a workflow with no steps (the run is
    /// recorded as completed at once).
    pub first_step: Option<String>,
    /// The event that triggered the enrollment.
    pub trigger_event_id: Option<String>,
    /// Unique per workflow: the same key twice enrolls once.
    pub enrollment_key: String,
    /// May a contact enroll again after an earlier run?
    pub reenroll: bool,
    /// At least this long between two enrollments of one contact, ms.
    pub min_interval_ms: Option<i64>,
    /// Hard cap of enrollments per contact per workflow in 24 hours (loop guard).
    pub max_per_day: i64,
    /// Business time now, epoch ms.
    pub at: i64,
}

/// What became of one [`Enrollment`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "run", rename_all = "snake_case")]
// Unboxed on purpose: outcomes live briefly, one per enrollment of a batch,
// and callers match on the run directly.
#[allow(clippy::large_enum_variant)]
pub enum EnrollOutcome {
    /// A run was created.
    Enrolled(Run),
    /// A run with the same enrollment key exists already.
    Duplicate,
    /// A run of this workflow for this contact is still waiting.
    InFlight,
    /// The workflow does not re-enroll, and the contact had a run.
    NotReenrollable,
    /// The contact's last enrollment is more recent than the minimum interval.
    TooSoon,
    /// The contact reached the workflow's daily enrollment cap.
    RateLimited,
}

/// Where a run got to, for [`Store::save_run`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunProgress {
    /// The run.
    pub run_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// The new status (see [`Run::status`]).
    pub status: String,
    /// The next step (of a failed run: the step that failed).
    pub cursor: Option<String>,
    /// When a waiting run is due next, epoch ms (business time).
    pub wake_at: Option<i64>,
    /// Failed attempts of the step at the cursor.
    pub attempts: i64,
    /// A/B split choices (a JSON object).
    pub variants: serde_json::Value,
    /// The engine's state (a JSON object).
    pub state: serde_json::Value,
    /// Why the run failed.
    pub error: Option<serde_json::Value>,
    /// Which goal or exit condition ended the run.
    pub exit_reason: Option<String>,
    /// Business time now, epoch ms.
    pub at: i64,
}

/// Which runs [`Store::list_runs`] returns; every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunFilter {
    /// Of this workflow.
    #[serde(default)]
    pub workflow_id: Option<String>,
    /// Of this contact.
    #[serde(default)]
    pub contact_id: Option<String>,
    /// With this status (an unknown status matches nothing).
    #[serde(default)]
    pub status: Option<String>,
}

fn get_opt_json(row: &AnyRow, col: &str) -> Result<Option<serde_json::Value>> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))).transpose()
}

/// JSON text for a plugin-controlled value, replaced by a note when larger
/// than [`MAX_STEP_JSON`].
fn bounded_json(v: Option<&serde_json::Value>) -> Result<Option<String>> {
    let Some(v) = v else { return Ok(None) };
    let text = sql::to_json(v)?;
    if text.len() <= MAX_STEP_JSON {
        return Ok(Some(text));
    }
    sql::to_json(&json!({"not_kept": format!("larger than {} KiB", MAX_STEP_JSON >> 10), "bytes": text.len()}))
        .map(Some)
}

fn check_status(status: &str, allowed: &[&str], what: &str) -> Result<()> {
    if allowed.contains(&status) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("`{status}` is not a {what} status (one of {})", allowed.join(", "))))
    }
}

pub(crate) fn run_from_row(row: &AnyRow) -> Result<Run> {
    Ok(Run {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        workflow_id: row.try_get("workflow_id")?,
        version: row.try_get("version")?,
        contact_id: row.try_get("contact_id")?,
        status: row.try_get("status")?,
        cursor: row.try_get("cursor")?,
        wake_at: row.try_get("wake_at")?,
        attempts: row.try_get("attempts")?,
        variants: sql::get_json(row, "variants")?,
        state: sql::get_json(row, "state")?,
        trigger_event_id: row.try_get("trigger_event_id")?,
        enrollment_key: row.try_get("enrollment_key")?,
        error: get_opt_json(row, "error")?,
        exit_reason: row.try_get("exit_reason")?,
        enrolled_at: row.try_get("enrolled_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

pub(crate) fn run_step_from_row(row: &AnyRow) -> Result<RunStep> {
    Ok(RunStep {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        workflow_id: row.try_get("workflow_id")?,
        contact_id: row.try_get("contact_id")?,
        step_id: row.try_get("step_id")?,
        kind: row.try_get("kind")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        input: get_opt_json(row, "input")?,
        output: get_opt_json(row, "output")?,
        error: get_opt_json(row, "error")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        duration_us: row.try_get("duration_us")?,
        fuel_used: row.try_get("fuel_used")?,
        invocation_id: row.try_get("invocation_id")?,
    })
}

/// What the enrollments of one transaction learned so far, so that a
/// batch's later enrollments skip the reads an earlier one made.
///
/// Why: a lane's batch can enroll the same contact into the same workflow
/// many times (every `a_work` event of a busy contact), and each enrollment
/// cost four reads in the transaction that holds SQLite's only writer: a
/// noisy tenant's 1,000-event batch then held every other tenant's writes
/// for 60–80 ms (`cairn bench --noisy-only`). What is remembered cannot
/// change before the transaction ends: the workflow's row is locked (the
/// write lock on SQLite, `FOR UPDATE` on PostgreSQL), a contact id is never
/// reused, and a run that is waiting stays waiting until the runner saves
/// it, in a transaction of its own.
#[derive(Debug, Default)]
pub(crate) struct EnrollMemo {
    /// (tenant, workflow) → whether the workflow exists.
    workflows: HashMap<(String, String), bool>,
    /// (tenant, contact) → whether the contact exists.
    contacts: HashMap<(String, String), bool>,
    /// (tenant, workflow, contact) with a run still waiting.
    in_flight: HashSet<(String, String, String)>,
}

/// [`enroll_one`] inside a caller's transaction (the pipeline's batch):
/// locks the workflow's row on PostgreSQL like [`Store::enroll`], and
/// answers `None`, recording nothing, when the workflow or the contact no
/// longer exists in the tenant. `memo` carries what earlier enrollments of
/// the same transaction learned; the outcome is the one [`enroll_one`]
/// would give. A run enrolled waiting is born leased until `lease_until`
/// (real time) when given.
pub(crate) async fn enroll_if_present(
    conn: &mut AnyConnection,
    backend: Backend,
    e: &Enrollment,
    memo: &mut EnrollMemo,
    lease_until: Option<i64>,
) -> Result<Option<EnrollOutcome>> {
    let workflow_key = (e.tenant_id.clone(), e.workflow_id.clone());
    let workflow_exists = match memo.workflows.get(&workflow_key) {
        Some(known) => *known,
        None => {
            let lock = match backend {
                Backend::Postgres => " FOR UPDATE",
                Backend::Sqlite => "",
            };
            let found = sqlx::query(&format!("SELECT id FROM workflows WHERE tenant_id = $1 AND id = $2{lock}"))
                .bind(&e.tenant_id)
                .bind(&e.workflow_id)
                .fetch_optional(&mut *conn)
                .await?
                .is_some();
            memo.workflows.insert(workflow_key, found);
            found
        }
    };
    if !workflow_exists {
        return Ok(None);
    }
    let contact_key = (e.tenant_id.clone(), e.contact_id.clone());
    let contact_exists = match memo.contacts.get(&contact_key) {
        Some(known) => *known,
        None => {
            let found = crate::store::contacts::contact_exists(&mut *conn, &e.tenant_id, &e.contact_id).await?;
            memo.contacts.insert(contact_key, found);
            found
        }
    };
    if !contact_exists {
        return Ok(None);
    }
    if e.enrollment_key.is_empty() || e.enrollment_key.len() > MAX_ENROLLMENT_KEY {
        return Err(StoreError::Invalid(format!("an enrollment key is 1 to {MAX_ENROLLMENT_KEY} bytes")));
    }
    let pair = (e.tenant_id.clone(), e.workflow_id.clone(), e.contact_id.clone());
    if memo.in_flight.contains(&pair) {
        // Still waiting: only the key check comes before it.
        return Ok(Some(if key_used(conn, e).await? { EnrollOutcome::Duplicate } else { EnrollOutcome::InFlight }));
    }
    let outcome = enroll_one(conn, e, lease_until).await?;
    let waiting = match &outcome {
        EnrollOutcome::InFlight => true,
        EnrollOutcome::Enrolled(run) => run.status == WAITING,
        _ => false,
    };
    if waiting {
        memo.in_flight.insert(pair);
    }
    Ok(Some(outcome))
}

/// Whether a run of `e`'s workflow was enrolled under `e`'s key (when the
/// rules are not otherwise read: `enroll_one` asks in its rules query).
async fn key_used(conn: &mut AnyConnection, e: &Enrollment) -> Result<bool> {
    let found = sqlx::query(
        "SELECT 1 AS one FROM workflow_runs WHERE tenant_id = $1 AND workflow_id = $2 AND enrollment_key = $3",
    )
    .bind(&e.tenant_id)
    .bind(&e.workflow_id)
    .bind(&e.enrollment_key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(found.is_some())
}

/// Decide one enrollment and, when allowed, insert its run. The caller holds
/// the write transaction (and on PostgreSQL the workflow's row lock). A
/// waiting run is inserted leased until `lease_until` (real time) when
/// given: the caller advances it itself, and no claim may take it meanwhile.
async fn enroll_one(conn: &mut AnyConnection, e: &Enrollment, lease_until: Option<i64>) -> Result<EnrollOutcome> {
    // Everything the rules need, in one statement (one round trip to
    // SQLite's connection thread, which costs more than the lookups): whether
    // the key was used (the (tenant, workflow, key) index) and the contact's
    // earlier runs (one pass over the (tenant, workflow, contact,
    // enrolled_at) index).
    let row = sqlx::query(
        "SELECT COUNT(*) AS total, \
         CAST(COALESCE(SUM(CASE WHEN status = 'waiting' THEN 1 ELSE 0 END), 0) AS BIGINT) AS waiting, \
         MAX(enrolled_at) AS latest, \
         CAST(COALESCE(SUM(CASE WHEN enrolled_at > $4 AND enrolled_at <= $5 THEN 1 ELSE 0 END), 0) AS BIGINT) AS today, \
         CAST(CASE WHEN EXISTS (SELECT 1 FROM workflow_runs \
             WHERE tenant_id = $1 AND workflow_id = $2 AND enrollment_key = $6) THEN 1 ELSE 0 END AS BIGINT) AS key_used \
         FROM workflow_runs WHERE tenant_id = $1 AND workflow_id = $2 AND contact_id = $3",
    )
    .bind(&e.tenant_id)
    .bind(&e.workflow_id)
    .bind(&e.contact_id)
    .bind(e.at - DAY_MS)
    .bind(e.at)
    .bind(&e.enrollment_key)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(refused) = refusal(e, &RulesRead::from_row(&row)?) {
        return Ok(refused);
    }
    let run = new_run(e);
    // Numbered placeholders on both backends: 19 are few (see `Params`).
    let mut p = Params::new(Backend::Postgres);
    sqlx::query_with(&insert_runs_sql(&mut p, 1), run_args(&run, lease_until)?).execute(&mut *conn).await?;
    Ok(EnrollOutcome::Enrolled(run))
}

/// What the enrollment rules read of a workflow's runs, for one enrollment.
#[derive(Debug, Clone, Copy)]
struct RulesRead {
    /// A run of the workflow has the enrollment's key.
    key_used: bool,
    /// The contact's runs of the workflow.
    total: i64,
    /// Of those, still waiting.
    waiting: i64,
    /// The latest of their enrollment times.
    latest: Option<i64>,
    /// Of those, enrolled in the 24 hours up to the enrollment's time.
    today: i64,
}

impl RulesRead {
    fn from_row(row: &AnyRow) -> Result<RulesRead> {
        Ok(RulesRead {
            key_used: row.try_get::<i64, _>("key_used")? != 0,
            total: row.try_get("total")?,
            waiting: row.try_get("waiting")?,
            latest: row.try_get("latest")?,
            today: row.try_get("today")?,
        })
    }
}

/// The rules' answer to an enrollment: why it is refused, or `None` when
/// it enrolls.
fn refusal(e: &Enrollment, read: &RulesRead) -> Option<EnrollOutcome> {
    if read.key_used {
        return Some(EnrollOutcome::Duplicate);
    }
    if read.waiting > 0 {
        return Some(EnrollOutcome::InFlight);
    }
    if !e.reenroll && read.total > 0 {
        return Some(EnrollOutcome::NotReenrollable);
    }
    if let (Some(interval), Some(latest)) = (e.min_interval_ms, read.latest)
        && latest > e.at - interval
    {
        return Some(EnrollOutcome::TooSoon);
    }
    if read.today >= e.max_per_day {
        return Some(EnrollOutcome::RateLimited);
    }
    None
}

/// The run an allowed enrollment starts: waiting, due at once, at its first
/// step; completed at once when the workflow has no steps.
fn new_run(e: &Enrollment) -> Run {
    let done = e.first_step.is_none();
    Run {
        id: new_id(),
        tenant_id: e.tenant_id.clone(),
        workflow_id: e.workflow_id.clone(),
        version: e.version,
        contact_id: e.contact_id.clone(),
        status: if done { COMPLETED } else { WAITING }.to_owned(),
        cursor: e.first_step.clone(),
        wake_at: if done { None } else { Some(e.at) },
        attempts: 0,
        variants: json!({}),
        state: json!({}),
        trigger_event_id: e.trigger_event_id.clone(),
        enrollment_key: e.enrollment_key.clone(),
        error: None,
        exit_reason: None,
        enrolled_at: e.at,
        updated_at: e.at,
        finished_at: if done { Some(e.at) } else { None },
    }
}

/// Columns [`insert_runs_sql`] writes per run.
const INSERT_RUN_WIDTH: usize = 19;

/// `INSERT` of `rows` new runs, placeholders from `p`.
fn insert_runs_sql(p: &mut Params, rows: usize) -> String {
    format!("INSERT INTO workflow_runs ({RUN_COLUMNS}, lease_until) VALUES {}", p.rows(rows, INSERT_RUN_WIDTH))
}

/// Add a new run's values to `args`, in [`insert_runs_sql`]'s order; a
/// waiting run is leased until `lease_until` when given.
fn add_run_args(args: &mut AnyArguments<'_>, run: &Run, lease_until: Option<i64>) -> Result<()> {
    let lease_until = lease_until.filter(|_| run.status == WAITING);
    let add = |args: &mut AnyArguments<'_>| -> std::result::Result<(), sqlx::error::BoxDynError> {
        args.add(run.id.clone())?;
        args.add(run.tenant_id.clone())?;
        args.add(run.workflow_id.clone())?;
        args.add(run.version)?;
        args.add(run.contact_id.clone())?;
        args.add(run.status.clone())?;
        args.add(run.cursor.clone())?;
        args.add(run.wake_at)?;
        args.add(run.attempts)?;
        args.add("{}")?;
        args.add("{}")?;
        args.add(run.trigger_event_id.clone())?;
        args.add(run.enrollment_key.clone())?;
        args.add(None::<String>)?;
        args.add(None::<String>)?;
        args.add(run.enrolled_at)?;
        args.add(run.updated_at)?;
        args.add(run.finished_at)?;
        args.add(lease_until)?;
        Ok(())
    };
    add(args).map_err(|e| StoreError::Database(sqlx::Error::Encode(e)))
}

/// One new run's insert arguments (see [`add_run_args`]).
fn run_args(run: &Run, lease_until: Option<i64>) -> Result<AnyArguments<'static>> {
    let mut args = AnyArguments::default();
    add_run_args(&mut args, run, lease_until)?;
    Ok(args)
}

/// Ask, in one statement of `script`, what the enrollment rules need for
/// each of `enrollments` (SQLite; a lane's enrollments, decided together by
/// [`decide_enrollments`]): whether its workflow and contact exist in its
/// tenant, whether its key was used, and the contact's earlier runs of the
/// workflow. One statement for the lot, where [`enroll_if_present`] sends
/// up to four per enrollment, one round trip each.
pub(crate) fn ask_enrollment_rules(script: &mut Script<'_>, enrollments: &[&Enrollment]) -> Result<Option<Slot>> {
    if enrollments.is_empty() {
        return Ok(None);
    }
    let asked: Vec<(&str, &str, &str, &str, i64)> = enrollments
        .iter()
        .map(|e| (e.tenant_id.as_str(), e.workflow_id.as_str(), e.contact_id.as_str(), e.enrollment_key.as_str(), e.at))
        .collect();
    // Grouped by the enrollment (`j.key`, its index); the left join gives a
    // contact without runs one row of NULLs, which the aggregates count as
    // none.
    let slot = script.push(
        sqlx::query(
            "SELECT CAST(j.key AS BIGINT) AS i, \
             CAST(EXISTS (SELECT 1 FROM workflows AS w WHERE w.tenant_id = json_extract(j.value, '$[0]') \
                 AND w.id = json_extract(j.value, '$[1]')) AS BIGINT) AS workflow_found, \
             CAST(EXISTS (SELECT 1 FROM contacts AS c WHERE c.tenant_id = json_extract(j.value, '$[0]') \
                 AND c.id = json_extract(j.value, '$[2]')) AS BIGINT) AS contact_found, \
             CAST(EXISTS (SELECT 1 FROM workflow_runs AS k WHERE k.tenant_id = json_extract(j.value, '$[0]') \
                 AND k.workflow_id = json_extract(j.value, '$[1]') \
                 AND k.enrollment_key = json_extract(j.value, '$[3]')) AS BIGINT) AS key_used, \
             COUNT(r.id) AS total, \
             CAST(COALESCE(SUM(CASE WHEN r.status = 'waiting' THEN 1 ELSE 0 END), 0) AS BIGINT) AS waiting, \
             MAX(r.enrolled_at) AS latest, \
             CAST(COALESCE(SUM(CASE WHEN r.enrolled_at > json_extract(j.value, '$[4]') - $2 \
                 AND r.enrolled_at <= json_extract(j.value, '$[4]') THEN 1 ELSE 0 END), 0) AS BIGINT) AS today \
             FROM json_each($1) AS j \
             LEFT JOIN workflow_runs AS r ON r.tenant_id = json_extract(j.value, '$[0]') \
                 AND r.workflow_id = json_extract(j.value, '$[1]') AND r.contact_id = json_extract(j.value, '$[2]') \
             GROUP BY j.key",
        )
        .bind(sql::to_json(&asked)?)
        .bind(DAY_MS),
    )?;
    Ok(Some(slot))
}

/// Decide `enrollments` in order from what [`ask_enrollment_rules`]
/// answered, as [`enroll_if_present`] would one after another: a later
/// enrollment sees the runs the earlier ones start (the answer was read
/// before any of them). The runs to insert go into `inserts`; an
/// enrollment whose workflow or contact no longer exists is `None`.
pub(crate) fn decide_enrollments(
    answer: Answer,
    enrollments: &[&Enrollment],
    lease_until: Option<i64>,
    inserts: &mut Script<'_>,
) -> Result<Vec<Option<EnrollOutcome>>> {
    let mut reads: Vec<Option<(bool, bool, RulesRead)>> = vec![None; enrollments.len()];
    for row in &answer.rows {
        let i = usize::try_from(row.try_get::<i64, _>("i")?).unwrap_or(usize::MAX);
        let read =
            (sql::get_bool(row, "workflow_found")?, sql::get_bool(row, "contact_found")?, RulesRead::from_row(row)?);
        if let Some(slot) = reads.get_mut(i) {
            *slot = Some(read);
        }
    }
    type Pair<'a> = (&'a str, &'a str, &'a str);
    // What this lane's own enrollments changed since the answer was read.
    let mut in_flight: HashSet<Pair> = HashSet::new();
    let mut keys: HashSet<Pair> = HashSet::new();
    let mut started: HashMap<Pair, Vec<i64>> = HashMap::new();
    let mut runs = Vec::new();
    let mut out = Vec::with_capacity(enrollments.len());
    for (e, read) in enrollments.iter().zip(reads) {
        let Some((workflow_found, contact_found, read)) = read else {
            return Err(StoreError::Corrupt("an enrollment's rules were not answered".into()));
        };
        if !workflow_found || !contact_found {
            out.push(None);
            continue;
        }
        if e.enrollment_key.is_empty() || e.enrollment_key.len() > MAX_ENROLLMENT_KEY {
            return Err(StoreError::Invalid(format!("an enrollment key is 1 to {MAX_ENROLLMENT_KEY} bytes")));
        }
        let pair = (e.tenant_id.as_str(), e.workflow_id.as_str(), e.contact_id.as_str());
        let key_used =
            read.key_used || keys.contains(&(e.tenant_id.as_str(), e.workflow_id.as_str(), e.enrollment_key.as_str()));
        if in_flight.contains(&pair) {
            out.push(Some(if key_used { EnrollOutcome::Duplicate } else { EnrollOutcome::InFlight }));
            continue;
        }
        let earlier = started.get(&pair).map(Vec::as_slice).unwrap_or_default();
        let read = RulesRead {
            key_used,
            total: read.total + earlier.len() as i64,
            waiting: read.waiting,
            latest: earlier.iter().copied().chain(read.latest).max(),
            today: read.today + earlier.iter().filter(|&&at| at > e.at - DAY_MS && at <= e.at).count() as i64,
        };
        let outcome = match refusal(e, &read) {
            Some(refused) => refused,
            None => {
                let run = new_run(e);
                keys.insert((e.tenant_id.as_str(), e.workflow_id.as_str(), e.enrollment_key.as_str()));
                started.entry(pair).or_default().push(e.at);
                runs.push(run.clone());
                EnrollOutcome::Enrolled(run)
            }
        };
        let waiting = match &outcome {
            EnrollOutcome::InFlight => true,
            EnrollOutcome::Enrolled(run) => run.status == WAITING,
            _ => false,
        };
        if waiting {
            in_flight.insert(pair);
        }
        out.push(Some(outcome));
    }
    for (start, len) in sql::pow2_chunks(runs.len(), MAX_ROWS_PER_INSERT) {
        let mut p = Params::new(Backend::Sqlite);
        let mut args = AnyArguments::default();
        for run in &runs[start..start + len] {
            add_run_args(&mut args, run, lease_until)?;
        }
        inserts.push_with(insert_runs_sql(&mut p, len), args);
    }
    Ok(out)
}

/// What a claim of due runs found
/// ([`Store::claim_due_runs_looking_ahead`]).
#[derive(Debug)]
pub struct DueClaim {
    /// The runs claimed, earliest due first.
    pub runs: Vec<Run>,
    /// When the claim found nothing due because it looked first (SQLite):
    /// the earliest `wake_at` of the runs it could have claimed, `None` if
    /// there are none. `None` here when it did not look: the caller that
    /// wants to know asks [`Store::next_wake_at_except`].
    pub next_wake_at: Option<Option<i64>>,
}

impl Store {
    /// Decide a batch of enrollments in one write transaction, each in
    /// order (a later one sees the runs earlier ones created), and return
    /// what became of each (see the module docs for the rules). A run
    /// enrolled with a first step is `waiting`, due at once (`wake_at` =
    /// `at`); without one it is recorded `completed`.
    ///
    /// Fails, recording nothing, with [`StoreError::UnknownReference`] when a
    /// workflow does not exist in its enrollment's tenant,
    /// [`StoreError::UnknownContact`] when a contact does not, and
    /// [`StoreError::Invalid`] for an empty or overlong enrollment key.
    pub async fn enroll(&self, e: &[Enrollment]) -> Result<Vec<EnrollOutcome>> {
        if e.is_empty() {
            return Ok(Vec::new());
        }
        for x in e {
            if x.enrollment_key.is_empty() || x.enrollment_key.len() > MAX_ENROLLMENT_KEY {
                return Err(StoreError::Invalid(format!("an enrollment key is 1 to {MAX_ENROLLMENT_KEY} bytes")));
            }
        }
        let mut tx = self.begin_write().await?;
        // Lock each workflow's row (PostgreSQL; SQLite's write lock already
        // serialises enrollments) so that two processes cannot both pass the
        // checks for one contact. Sorted, so concurrent batches lock in one
        // order and cannot deadlock. The same lookup proves each workflow
        // belongs to its enrollment's tenant.
        let mut workflows: Vec<(&str, &str)> =
            e.iter().map(|x| (x.tenant_id.as_str(), x.workflow_id.as_str())).collect();
        workflows.sort_unstable();
        workflows.dedup();
        for (tenant, workflow) in workflows {
            let found =
                sqlx::query(&format!("SELECT id FROM workflows WHERE tenant_id = $1 AND id = $2{}", self.for_update()))
                    .bind(tenant)
                    .bind(workflow)
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_none() {
                return Err(StoreError::UnknownReference { entity: "workflow", id: workflow.to_owned() });
            }
        }
        let mut contacts: Vec<(&str, &str)> = e.iter().map(|x| (x.tenant_id.as_str(), x.contact_id.as_str())).collect();
        contacts.sort_unstable();
        contacts.dedup();
        for (tenant, contact) in contacts {
            if !crate::store::contacts::contact_exists(&mut tx, tenant, contact).await? {
                return Err(StoreError::UnknownContact(contact.to_owned()));
            }
        }
        let mut out = Vec::with_capacity(e.len());
        for x in e {
            out.push(enroll_one(&mut tx, x, None).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Claim up to `limit` waiting runs due at `now` (business time), the
    /// earliest due first, leasing each for [`CLAIM_LEASE_MS`] of real time.
    /// Runs another worker holds (lease not expired) are skipped;
    /// [`Store::save_run`] releases the lease.
    pub async fn claim_due_runs(&self, now: i64, limit: i64) -> Result<Vec<Run>> {
        self.claim_due_runs_except(now, limit, &[]).await
    }

    /// [`Store::claim_due_runs`] without the runs of the tenants in
    /// `except` (the runner's tenants whose lane is running: it claims
    /// their runs when the lane ends). The claim reads past the due runs of
    /// those tenants, which are bounded by their contacts and workflows and
    /// drained by their lanes; the due index carries the tenant, so each is
    /// passed over from the index without reading its row (migration 0007).
    pub async fn claim_due_runs_except(&self, now: i64, limit: i64, except: &[String]) -> Result<Vec<Run>> {
        Ok(self.claim_due_runs_looking_ahead(now, limit, except).await?.runs)
    }

    /// [`Store::claim_due_runs_except`], and what it learned on the way
    /// about when the next run is due (see [`DueClaim`]).
    pub async fn claim_due_runs_looking_ahead(&self, now: i64, limit: i64, except: &[String]) -> Result<DueClaim> {
        // On SQLite a claim holds the process's one write turn even when it
        // finds nothing, and the runner asks after every enrollment and
        // every lane's end: most claims of a steady load are empty. A read
        // first (no turn) keeps those off the writer, whose every other
        // waiter would wait for them.
        if self.write_gate.is_some() {
            let next = self.next_wake_at_except(except).await?;
            if next.is_none_or(|at| at > now) {
                return Ok(DueClaim { runs: Vec::new(), next_wake_at: Some(next) });
            }
        }
        let mut turn = self.write_gate().await?;
        // Real time for the lease, whatever the business clock says: it is
        // about whether the claiming process is alive.
        let real = now_ms();
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let except = &except[..except.len().min(MAX_IN_LIST)];
        let mut b = Builder::new("UPDATE workflow_runs SET lease_until = ");
        b.push_arg("", Arg::Int(real + self.claim_lease_ms()));
        // Ordered by wake_at alone: the due index is in that order, so a
        // backlog of due runs is read up to the limit, never sorted whole.
        b.push_arg(
            " WHERE id IN (SELECT id FROM workflow_runs WHERE status = 'waiting' AND wake_at <= ",
            Arg::Int(now),
        );
        b.push_arg(" AND (lease_until IS NULL OR lease_until < ", Arg::Int(real));
        b.push(")");
        if !except.is_empty() {
            let list: Vec<String> = except.iter().map(|t| b.arg(Arg::Text(t))).collect();
            b.push(&format!(" AND tenant_id NOT IN ({})", list.join(", ")));
        }
        b.push_arg(" ORDER BY wake_at LIMIT ", Arg::Int(limit.clamp(1, i64::from(MAX_PAGE))));
        b.push(&format!("{lock}) RETURNING {RUN_COLUMNS}"));
        let rows = b.query().fetch_all(turn.conn(&self.pool).await?).await;
        let rows = turn.check(rows)?;
        let mut runs = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        // RETURNING order is unspecified.
        runs.sort_by(|a, b| (a.wake_at, &a.id).cmp(&(b.wake_at, &b.id)));
        Ok(DueClaim { runs, next_wake_at: None })
    }

    /// Give claimed runs back before their lease runs out (the runner
    /// claimed more than it could start): the next claim may take them.
    pub async fn release_runs(&self, ids: &[String]) -> Result<()> {
        let mut turn = self.write_gate().await?;
        for chunk in ids.chunks(MAX_IN_LIST) {
            let mut p = Params::new(self.backend);
            let sql = format!(
                "UPDATE workflow_runs SET lease_until = NULL WHERE id IN ({}) AND status = 'waiting'",
                p.list(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            let done = q.execute(turn.conn(&self.pool).await?).await;
            turn.check(done)?;
        }
        Ok(())
    }

    /// The earliest `wake_at` of the waiting runs no worker holds, so the
    /// runner knows how long it may sleep; `None` when there are none. (A
    /// held run is the holder's business; counting it would have the others
    /// wake for nothing until its lease ends.)
    pub async fn next_wake_at(&self) -> Result<Option<i64>> {
        self.next_wake_at_except(&[]).await
    }

    /// [`Store::next_wake_at`] without the runs of the tenants in `except`
    /// (whose lane is running: the runner cannot claim their runs before
    /// it ends, so they are no reason to wake).
    pub async fn next_wake_at_except(&self, except: &[String]) -> Result<Option<i64>> {
        let except = &except[..except.len().min(MAX_IN_LIST)];
        // Not MIN(): with the lease condition that would read every waiting
        // run; in index order the first unheld one ends the scan.
        let mut b = Builder::new(
            "SELECT wake_at FROM workflow_runs WHERE status = 'waiting' AND wake_at IS NOT NULL \
             AND (lease_until IS NULL OR lease_until < ",
        );
        b.push_arg("", Arg::Int(now_ms()));
        b.push(")");
        if !except.is_empty() {
            let list: Vec<String> = except.iter().map(|t| b.arg(Arg::Text(t))).collect();
            b.push(&format!(" AND tenant_id NOT IN ({})", list.join(", ")));
        }
        b.push(" ORDER BY wake_at LIMIT 1");
        let row = b.query().fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get("wake_at")).transpose()?.flatten())
    }

    /// Record where a run got to, and its step records, in one transaction.
    ///
    /// The run takes the progress, `updated_at` = `at`, and its lease is
    /// released. A run no longer waiting gets `finished_at` = `at` and no
    /// `wake_at`; a waiting run without `wake_at` is due at `at` (a timer
    /// nobody would ever claim helps no one). Each step record is inserted,
    /// or updated when the run already has one for that step (everything but
    /// its id and first `started_at`). JSON larger than [`MAX_STEP_JSON`] is
    /// replaced by a note saying so. False when the run no longer exists
    /// (e.g. its contact was deleted).
    ///
    /// Fails with [`StoreError::Invalid`] for an unknown run or step status,
    /// or a step of another run.
    pub async fn save_run(&self, p: &RunProgress, steps: &[RunStep]) -> Result<bool> {
        self.save_run_with_calls(p, steps, &[]).await
    }

    /// [`Store::save_run`], recording in the same transaction the plugin
    /// calls the steps made (one per action attempt, with its input for
    /// replay; see [`Store::record_invocation`] for the caps). A step's
    /// `invocation_id` names its latest call. Nothing is recorded when the
    /// run no longer exists: the calls belong to the run's history, which
    /// went with it.
    ///
    /// Fails, as `save_run` does, and also for a call of another tenant.
    pub async fn save_run_with_calls(
        &self,
        p: &RunProgress,
        steps: &[RunStep],
        calls: &[InvocationRecord],
    ) -> Result<bool> {
        self.save_run_progress(p, steps, calls, false).await
    }

    /// [`Store::save_run_with_calls`]; with `hold`, a run saved `waiting`
    /// keeps its lease, renewed for another claim lease, instead of
    /// releasing it: its worker saved an action's outcome and goes on to the
    /// next step, and no claim (of this process or another) may take the
    /// run in the middle.
    pub async fn save_run_progress(
        &self,
        p: &RunProgress,
        steps: &[RunStep],
        calls: &[InvocationRecord],
        hold: bool,
    ) -> Result<bool> {
        check_status(&p.status, &RUN_STATUSES, "run")?;
        for s in steps {
            check_status(&s.status, &STEP_STATUSES, "step")?;
            if s.run_id != p.run_id {
                return Err(StoreError::Invalid(format!("step `{}` belongs to another run", s.step_id)));
            }
        }
        if let Some(c) = calls.iter().find(|c| c.tenant_id != p.tenant_id) {
            return Err(StoreError::Invalid(format!("invocation `{}` belongs to another tenant", c.id)));
        }
        let error = bounded_json(p.error.as_ref())?;
        let lease_until = (hold && p.status == WAITING).then(|| now_ms() + self.claim_lease_ms());
        let mut script = Script::new(self.backend);
        let saved = push_run_save(&mut script, p, error, lease_until, steps, calls)?;
        let Some(groups) = &self.groups else {
            let tx = self.begin_script_for(Writer::Tenant(&p.tenant_id)).await?;
            return Ok(tx.commit_with(script).await?.take(saved).rows_affected > 0);
        };
        let job = Job::new(script, move |mut answers| Ok(answers.take(saved).rows_affected > 0));
        groups.run_saves.write(self, &p.tenant_id, job).await
    }

    /// Run `id` of `tenant` with its step records, in the order they began.
    pub async fn get_run(&self, tenant: &str, id: &str) -> Result<Option<(Run, Vec<RunStep>)>> {
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM workflow_runs WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(run) = row.as_ref().map(run_from_row).transpose()? else { return Ok(None) };
        let rows = sqlx::query(&format!(
            "SELECT {RUN_STEP_COLUMNS} FROM run_steps WHERE tenant_id = $1 AND run_id = $2 ORDER BY started_at, id"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        let steps = rows.iter().map(run_step_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Some((run, steps)))
    }

    /// One page of the tenant's runs matching `filter`, newest first,
    /// starting after `cursor` (the `next_cursor` of the page before). At
    /// most 1000 per page.
    pub async fn list_runs(
        &self,
        tenant: &str,
        filter: &RunFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Run>> {
        let limit = page_limit(limit);
        let mut b = Builder::new(&format!("SELECT {RUN_COLUMNS} FROM workflow_runs WHERE tenant_id = "));
        let t = b.arg(Arg::Text(tenant));
        b.push(&t);
        if let Some(w) = &filter.workflow_id {
            b.push_arg(" AND workflow_id = ", Arg::Text(w));
        }
        if let Some(c) = &filter.contact_id {
            b.push_arg(" AND contact_id = ", Arg::Text(c));
        }
        if let Some(s) = &filter.status {
            b.push_arg(" AND status = ", Arg::Text(s));
        }
        if let Some(before) = cursor {
            b.push_arg(" AND id < ", Arg::Text(before));
        }
        b.push_arg(" ORDER BY id DESC LIMIT ", Arg::Int(limit + 1));
        let rows = b.query().fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// The waiting runs of the given contacts of `tenant`, oldest first.
    pub async fn in_flight_runs(&self, tenant: &str, contact_ids: &[String]) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        for chunk in contact_ids.chunks(MAX_IN_LIST) {
            let mut p = Params::new(self.backend);
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM workflow_runs WHERE tenant_id = {} AND contact_id IN ({}) \
                 AND status = 'waiting'",
                p.one(),
                p.list(chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(tenant);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            for row in q.fetch_all(&self.pool).await? {
                runs.push(run_from_row(&row)?);
            }
        }
        runs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(runs)
    }

    /// Make waiting run `id` due at `at` if it was due later (a goal was met
    /// while it waited: the runner claims it and ends it). A run another
    /// worker holds is left alone: it checks goals itself. False when nothing
    /// changed.
    pub async fn wake_run(&self, tenant: &str, id: &str, at: i64) -> Result<bool> {
        let mut turn = self.write_gate_for(Writer::Tenant(tenant)).await?;
        let done = sqlx::query(
            "UPDATE workflow_runs SET wake_at = $3 WHERE tenant_id = $1 AND id = $2 AND status = 'waiting' \
             AND wake_at > $3 AND (lease_until IS NULL OR lease_until < $4)",
        )
        .bind(tenant)
        .bind(id)
        .bind(at)
        .bind(now_ms())
        .execute(turn.conn(&self.pool).await?)
        .await;
        Ok(turn.check(done)?.rows_affected() > 0)
    }

    /// Send a failed run back to work from the step that failed: `waiting`,
    /// due at `at`, attempts and error cleared. `None` when the run does not
    /// exist in `tenant`; [`StoreError::Invalid`] when it exists but is not
    /// `failed` (only a failed run can be retried).
    pub async fn retry_run(&self, tenant: &str, id: &str, at: i64) -> Result<Option<Run>> {
        let row = sqlx::query(&format!(
            "UPDATE workflow_runs SET status = 'waiting', wake_at = $3, attempts = 0, error = NULL, \
             finished_at = NULL, lease_until = NULL, updated_at = $3 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'failed' RETURNING {RUN_COLUMNS}"
        ))
        .bind(tenant)
        .bind(id)
        .bind(at)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(Some(run_from_row(&row)?));
        }
        let status = sqlx::query("SELECT status FROM workflow_runs WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match status {
            None => Ok(None),
            Some(row) => {
                let status: String = row.try_get("status")?;
                Err(StoreError::Invalid(format!("only a failed run can be retried; this one is {status}")))
            }
        }
    }

    /// How many runs of workflow `id` of `tenant` have each status (statuses
    /// with no runs are absent).
    pub async fn count_runs_by_status(&self, tenant: &str, workflow_id: &str) -> Result<BTreeMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM workflow_runs WHERE tenant_id = $1 AND workflow_id = $2 \
             GROUP BY status",
        )
        .bind(tenant)
        .bind(workflow_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("status")?, r.try_get("n")?))).collect()
    }
}

/// The statements of a run save (see [`Store::save_run_progress`]), added
/// to `script`: the run's new state, its step records and the calls they
/// made; `error` is the run's error, bounded; the run's lease becomes
/// `lease_until` (`None` releases it). Returns the slot of the run's
/// update, which changed no row when the run no longer exists: then the
/// steps and calls are not recorded either (they take the run's workflow
/// and contact from its row, and the calls ask for it).
fn push_run_save(
    script: &mut Script<'_>,
    p: &RunProgress,
    error: Option<String>,
    lease_until: Option<i64>,
    steps: &[RunStep],
    calls: &[InvocationRecord],
) -> Result<Slot> {
    let waiting = p.status == WAITING;
    let finished_at = (!waiting).then_some(p.at);
    let wake_at = if waiting { p.wake_at.or(Some(p.at)) } else { None };
    let saved = script.push(
        sqlx::query(
            "UPDATE workflow_runs SET status = $3, cursor = $4, wake_at = $5, attempts = $6, variants = $7, \
             state = $8, error = $9, exit_reason = $10, updated_at = $11, finished_at = $12, lease_until = $13 \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(p.tenant_id.clone())
        .bind(p.run_id.clone())
        .bind(p.status.clone())
        .bind(p.cursor.clone())
        .bind(wake_at)
        .bind(p.attempts)
        .bind(sql::to_json(&p.variants)?)
        .bind(sql::to_json(&p.state)?)
        .bind(error)
        .bind(p.exit_reason.clone())
        .bind(p.at)
        .bind(finished_at)
        .bind(lease_until),
    )?;
    for s in steps {
        // The run's own workflow and contact, not the records' say: the
        // timeline finds steps by tenant and contact. (The `WHERE` also
        // keeps SQLite from reading `ON CONFLICT` as a join's `ON`.)
        script.push(
            sqlx::query(
                "INSERT INTO run_steps (tenant_id, id, run_id, workflow_id, contact_id, step_id, kind, status, \
                 attempts, input, output, error, started_at, finished_at, duration_us, fuel_used, invocation_id) \
                 SELECT $1, $2, $3, r.workflow_id, r.contact_id, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 \
                 FROM workflow_runs AS r WHERE r.tenant_id = $1 AND r.id = $3 \
                 ON CONFLICT (run_id, step_id) DO UPDATE SET kind = excluded.kind, status = excluded.status, \
                 attempts = excluded.attempts, input = excluded.input, output = excluded.output, \
                 error = excluded.error, finished_at = excluded.finished_at, duration_us = excluded.duration_us, \
                 fuel_used = excluded.fuel_used, invocation_id = excluded.invocation_id",
            )
            .bind(p.tenant_id.clone())
            .bind(s.id.clone())
            .bind(p.run_id.clone())
            .bind(s.step_id.clone())
            .bind(s.kind.clone())
            .bind(s.status.clone())
            .bind(s.attempts)
            .bind(bounded_json(s.input.as_ref())?)
            .bind(bounded_json(s.output.as_ref())?)
            .bind(bounded_json(s.error.as_ref())?)
            .bind(s.started_at)
            .bind(s.finished_at)
            .bind(s.duration_us)
            .bind(s.fuel_used)
            .bind(s.invocation_id.clone()),
        )?;
    }
    for c in calls {
        push_invocation(script, c, Some(&p.run_id))?;
    }
    Ok(saved)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use crate::store::Store;
    use crate::store::testing::TempSqlite;

    #[tokio::test]
    async fn a_claim_that_finds_nothing_due_does_not_wait_for_the_writer() {
        let db = TempSqlite::new();
        let store = Store::open(&db.url()).await.unwrap();
        // Another writer holds SQLite's write turn for as long as it likes.
        let _held = store.write_gate().await.unwrap();
        let claimed = tokio::time::timeout(Duration::from_secs(5), store.claim_due_runs(store.now(), 10))
            .await
            .expect("an empty claim answers without the write turn")
            .unwrap();
        assert!(claimed.is_empty());
    }
}
