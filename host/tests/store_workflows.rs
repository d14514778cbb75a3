//! The store's workflow layer, on both backends: versioned workflows and
//! their activation, due schedules, enrollment rules, run timers and leases,
//! run progress and step records, retries, listing; and the store-wide
//! changes that came with it (change events of contacts, the business clock,
//! tenant time zones). Every test runs once on a fresh SQLite file and once
//! on a fresh PostgreSQL database (see `on_both_backends!`).

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod backends;

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;
use cairn::clock::Clock;
use cairn::store::testing::{TempPostgres, TempSqlite};
use cairn::store::{
    ContactPatch, ContactUpdate, EnrollOutcome, Enrollment, Event, InputStatus, InvocationRecord, MAX_STEP_JSON,
    NewContact, NewEvent, NewTask, Page, Properties, Run, RunFilter, RunProgress, RunStep, Store, StoreError,
    TimelineEntry, Value, Workflow, new_id, now_ms,
};
use serde_json::json;

on_both_backends!(
    workflow_versions_count_up_and_activation_archives_the_previous_one,
    a_tenant_sees_none_of_another_tenants_workflows_or_runs,
    enrollments_are_refused_by_key_in_flight_reenrollment_interval_and_daily_cap,
    concurrent_enrollments_of_one_contact_create_one_run,
    a_batch_decides_repeated_enrollments_of_a_contact_by_the_same_rules,
    a_batch_counts_the_runs_it_started_itself_against_the_interval_cap_and_keys,
    due_runs_are_claimed_by_wake_time_and_held_by_their_lease,
    runs_enrolled_for_hand_over_are_born_leased_and_a_save_that_goes_on_keeps_the_lease,
    saved_progress_and_step_records_round_trip,
    action_calls_are_saved_with_their_step_in_one_transaction,
    only_a_failed_run_can_be_retried,
    runs_are_listed_by_filter_and_paged_newest_first,
    due_schedules_are_claimed_once_until_the_next_firing_is_set,
    contact_changes_are_recorded_as_events,
    a_manual_clock_drives_the_times_the_store_writes,
    tenants_have_a_time_zone,
);

// ---- helpers ----

/// The business time the tests start at (2026-01-01T00:00:00Z).
const T0: i64 = 1_767_225_600_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

async fn tenant(store: &Store, name: &str) -> anyhow::Result<String> {
    Ok(store.create_tenant(name).await?.id)
}

async fn contact(store: &Store, tenant: &str, email: &str) -> anyhow::Result<String> {
    let c = store.create_contact(tenant, NewContact { email: Some(email.into()), ..Default::default() }).await?;
    Ok(c.id)
}

fn definition(steps: &[&str]) -> serde_json::Value {
    json!({"trigger": {"event": "form_submitted"}, "steps": steps.iter().map(|s| json!({"id": s})).collect::<Vec<_>>()})
}

async fn workflow(store: &Store, tenant: &str, name: &str) -> anyhow::Result<Workflow> {
    let (w, _) = store.create_workflow(tenant, name, &definition(&["s1", "s2"])).await?;
    Ok(w)
}

/// An enrollment that every rule allows: re-enrollable, no interval, a
/// generous daily cap, first step `s1`.
fn enrollment(tenant: &str, workflow: &str, contact: &str, key: &str, at: i64) -> Enrollment {
    Enrollment {
        tenant_id: tenant.into(),
        workflow_id: workflow.into(),
        version: 1,
        contact_id: contact.into(),
        first_step: Some("s1".into()),
        trigger_event_id: None,
        enrollment_key: key.into(),
        reenroll: true,
        min_interval_ms: None,
        max_per_day: 100,
        at,
    }
}

/// What a lane learned of `contact`: activity at [`T0`] and `enrollments`.
fn lane_update(tenant: &str, contact: &str, enrollments: Vec<Enrollment>) -> ContactUpdate {
    ContactUpdate {
        tenant_id: tenant.to_owned(),
        contact_id: contact.to_owned(),
        last_activity_at: Some(T0),
        score: None,
        stage_change: None,
        enrollments,
    }
}

fn enrolled(outcome: &EnrollOutcome) -> &Run {
    match outcome {
        EnrollOutcome::Enrolled(run) => run,
        other => panic!("expected a run, got {other:?}"),
    }
}

/// Progress that ends `run` with `status` at `at`.
fn finish(run: &Run, status: &str, at: i64) -> RunProgress {
    RunProgress {
        run_id: run.id.clone(),
        tenant_id: run.tenant_id.clone(),
        status: status.into(),
        cursor: None,
        wake_at: None,
        attempts: 0,
        variants: json!({}),
        state: json!({}),
        error: None,
        exit_reason: None,
        at,
    }
}

fn step(run: &Run, step_id: &str, status: &str, attempts: i64, at: i64) -> RunStep {
    RunStep {
        id: new_id(),
        run_id: run.id.clone(),
        workflow_id: run.workflow_id.clone(),
        contact_id: run.contact_id.clone(),
        step_id: step_id.into(),
        kind: "action".into(),
        status: status.into(),
        attempts,
        input: Some(json!({"config": {"subject": "Welcome"}})),
        output: None,
        error: None,
        started_at: at,
        finished_at: Some(at + 5),
        duration_us: 1_200,
        fuel_used: Some(42),
        invocation_id: None,
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn props(pairs: &[(&str, Value)]) -> Properties {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// The store's own events of a contact (`contact_created`, `property_changed`,
/// `lifecycle_stage_changed`), oldest first.
async fn change_events(store: &Store, tenant: &str, contact: &str) -> anyhow::Result<Vec<Event>> {
    let kinds = ["contact_created".to_string(), "property_changed".to_string(), "lifecycle_stage_changed".to_string()];
    let mut events = store.recent_events(tenant, contact, &kinds, 0, 1000).await?;
    events.reverse();
    Ok(events)
}

fn counts(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

fn changed(name: &str, from: Value, to: Value) -> Properties {
    props(&[("name", text(name)), ("from", from), ("to", to)])
}

// ---- workflows ----

async fn workflow_versions_count_up_and_activation_archives_the_previous_one(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let (w, v1) = store.create_workflow(&t, "  Welcome  ", &definition(&["a"])).await?;
    assert_eq!((w.name.as_str(), w.latest_version, w.active_version, w.next_fire_at), ("Welcome", 1, None, None));
    assert_eq!((v1.version, v1.status.as_str()), (1, "draft"));
    assert_eq!(v1.definition, definition(&["a"]));
    assert_eq!(store.get_workflow(&t, &w.id).await?, Some(w.clone()));

    let v2 = store.add_workflow_version(&t, &w.id, "Welcome v2", &definition(&["a", "b"])).await?.context("v2")?;
    assert_eq!((v2.version, v2.status.as_str()), (2, "draft"));
    let read = store.get_workflow(&t, &w.id).await?.context("workflow")?;
    assert_eq!((read.name.as_str(), read.latest_version), ("Welcome v2", 2));
    let versions = store.list_workflow_versions(&t, &w.id).await?;
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1], "newest first");
    assert_eq!(store.get_workflow_version(&t, &w.id, 2).await?, Some(v2.clone()));
    assert_eq!(store.get_workflow_version(&t, &w.id, 3).await?, None);

    // Activate 1, then 2: 1 is archived. Then roll back to 1: 2 is archived.
    let a = store.activate_workflow_version(&t, &w.id, 1, Some(T0)).await?.context("activated")?;
    assert_eq!((a.active_version, a.next_fire_at), (Some(1), Some(T0)));
    let a = store.activate_workflow_version(&t, &w.id, 2, None).await?.context("activated")?;
    assert_eq!((a.active_version, a.next_fire_at), (Some(2), None));
    let status = |vs: Vec<cairn::store::WorkflowVersion>| -> BTreeMap<i64, String> {
        vs.into_iter().map(|v| (v.version, v.status)).collect()
    };
    let expect =
        |pairs: &[(i64, &str)]| -> BTreeMap<i64, String> { pairs.iter().map(|(v, s)| (*v, s.to_string())).collect() };
    assert_eq!(status(store.list_workflow_versions(&t, &w.id).await?), expect(&[(1, "archived"), (2, "active")]));
    store.activate_workflow_version(&t, &w.id, 1, None).await?.context("rolled back")?;
    assert_eq!(status(store.list_workflow_versions(&t, &w.id).await?), expect(&[(1, "active"), (2, "archived")]));
    // Activating the active version again changes only the next firing.
    let again = store.activate_workflow_version(&t, &w.id, 1, Some(T0 + DAY)).await?.context("again")?;
    assert_eq!((again.active_version, again.next_fire_at), (Some(1), Some(T0 + DAY)));
    assert_eq!(store.get_workflow_version(&t, &w.id, 1).await?.map(|v| v.status), Some("active".into()));

    let active = store.active_workflows(&t).await?;
    assert_eq!(active.len(), 1);
    assert_eq!(
        (active[0].0.id.as_str(), active[0].1.version, active[0].1.status.as_str()),
        (w.id.as_str(), 1, "active")
    );
    assert_eq!(active[0].1.definition, definition(&["a"]));

    // Missing version or workflow: None, nothing changes.
    assert_eq!(store.activate_workflow_version(&t, &w.id, 9, None).await?, None);
    assert_eq!(store.activate_workflow_version(&t, "nope", 1, None).await?, None);
    assert_eq!(store.add_workflow_version(&t, "nope", "x", &definition(&[])).await?, None);
    assert_eq!(store.get_workflow(&t, &w.id).await?.and_then(|w| w.active_version), Some(1));

    // Archiving stops it: no active version, no schedule.
    let archived = store.archive_workflow(&t, &w.id).await?.context("archived")?;
    assert_eq!((archived.active_version, archived.next_fire_at), (None, None));
    assert_eq!(status(store.list_workflow_versions(&t, &w.id).await?), expect(&[(1, "archived"), (2, "archived")]));
    assert!(store.active_workflows(&t).await?.is_empty());
    assert_eq!(
        store.archive_workflow(&t, &w.id).await?.map(|w| w.active_version),
        Some(None),
        "a no-op the second time"
    );
    assert_eq!(store.archive_workflow(&t, "nope").await?, None);

    // Listing is oldest first; bad input is refused in plain words.
    let second = workflow(&store, &t, "Second").await?;
    let ids: Vec<String> = store.list_workflows(&t).await?.into_iter().map(|w| w.id).collect();
    assert_eq!(ids, [w.id.clone(), second.id]);
    assert!(matches!(store.create_workflow(&t, " ", &definition(&[])).await, Err(StoreError::Invalid(_))));
    let huge = json!({"steps": "x".repeat(300 << 10)});
    assert!(matches!(store.create_workflow(&t, "Big", &huge).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.add_workflow_version(&t, &w.id, "Big", &huge).await, Err(StoreError::Invalid(_))));
    assert!(matches!(
        store.create_workflow("no-such-tenant", "x", &definition(&[])).await,
        Err(StoreError::UnknownTenant(_))
    ));
    Ok(())
}

async fn a_tenant_sees_none_of_another_tenants_workflows_or_runs(store: Store) -> anyhow::Result<()> {
    let a = tenant(&store, "A").await?;
    let b = tenant(&store, "B").await?;
    let ca = contact(&store, &a, "ann@example.com").await?;
    let cb = contact(&store, &b, "bob@example.com").await?;
    let w = workflow(&store, &a, "A's").await?;
    store.activate_workflow_version(&a, &w.id, 1, None).await?.context("activated")?;
    let run = enrolled(&store.enroll(&[enrollment(&a, &w.id, &ca, "k", T0)]).await?[0]).clone();
    store.save_run(&finish(&run, "failed", T0), &[step(&run, "s1", "failed", 1, T0)]).await?;

    // B reads nothing of A's.
    assert_eq!(store.get_workflow(&b, &w.id).await?, None);
    assert!(store.list_workflows(&b).await?.is_empty());
    assert_eq!(store.get_workflow_version(&b, &w.id, 1).await?, None);
    assert!(store.list_workflow_versions(&b, &w.id).await?.is_empty());
    assert!(store.active_workflows(&b).await?.is_empty());
    assert_eq!(store.get_run(&b, &run.id).await?, None);
    assert!(store.list_runs(&b, &RunFilter::default(), None, 100).await?.items.is_empty());
    assert!(store.in_flight_runs(&b, std::slice::from_ref(&ca)).await?.is_empty());
    assert!(store.count_runs_by_status(&b, &w.id).await?.is_empty());

    // B changes nothing of A's: every id behaves like a missing one.
    assert_eq!(store.add_workflow_version(&b, &w.id, "hijack", &definition(&[])).await?, None);
    assert_eq!(store.activate_workflow_version(&b, &w.id, 1, Some(T0)).await?, None);
    assert_eq!(store.archive_workflow(&b, &w.id).await?, None);
    store.set_next_fire(&b, &w.id, Some(T0)).await?;
    assert_eq!(store.retry_run(&b, &run.id, T0).await?, None);
    assert!(!store.save_run(&RunProgress { tenant_id: b.clone(), ..finish(&run, "completed", T0) }, &[]).await?);
    // B cannot enroll into A's workflow, nor A's contact into B's.
    let wb = workflow(&store, &b, "B's").await?;
    assert!(matches!(
        store.enroll(&[enrollment(&b, &w.id, &cb, "x", T0)]).await,
        Err(StoreError::UnknownReference { entity: "workflow", .. })
    ));
    assert!(matches!(store.enroll(&[enrollment(&b, &wb.id, &ca, "x", T0)]).await, Err(StoreError::UnknownContact(_))));
    // B's timeline cannot see A's steps (nor A's contact at all).
    assert_eq!(store.timeline(&b, &ca, 100).await?, None);

    // A's things are untouched.
    let w_now = store.get_workflow(&a, &w.id).await?.context("workflow")?;
    assert_eq!(
        (w_now.name.as_str(), w_now.latest_version, w_now.active_version, w_now.next_fire_at),
        ("A's", 1, Some(1), None)
    );
    let (r, steps) = store.get_run(&a, &run.id).await?.context("run")?;
    assert_eq!((r.status.as_str(), steps.len()), ("failed", 1));
    assert_eq!(store.count_runs_by_status(&a, &w.id).await?, counts(&[("failed", 1)]));
    Ok(())
}

// ---- runs ----

async fn enrollments_are_refused_by_key_in_flight_reenrollment_interval_and_daily_cap(
    store: Store,
) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let c = contact(&store, &t, "ann@example.com").await?;
    let other = contact(&store, &t, "bob@example.com").await?;
    let w = workflow(&store, &t, "Welcome").await?;
    let e = |key: &str, at: i64| enrollment(&t, &w.id, &c, key, at);

    // One slice, one transaction: later enrollments see earlier ones.
    let out = store
        .enroll(&[
            Enrollment { trigger_event_id: Some("ev1".into()), ..e("k1", T0) },
            e("k1", T0),                             // same key
            e("k2", T0),                             // the first run is still waiting
            enrollment(&t, &w.id, &other, "k2", T0), // another contact is not in flight
        ])
        .await?;
    let run = enrolled(&out[0]).clone();
    assert_eq!((run.status.as_str(), run.cursor.as_deref(), run.wake_at), ("waiting", Some("s1"), Some(T0)));
    assert_eq!((run.attempts, run.enrolled_at, run.finished_at), (0, T0, None));
    assert_eq!((run.variants.clone(), run.state.clone()), (json!({}), json!({})));
    assert_eq!(run.trigger_event_id.as_deref(), Some("ev1"));
    assert_eq!(out[1], EnrollOutcome::Duplicate);
    assert_eq!(out[2], EnrollOutcome::InFlight);
    assert!(matches!(out[3], EnrollOutcome::Enrolled(_)));
    assert_eq!(store.get_run(&t, &run.id).await?.map(|(r, _)| r), Some(run.clone()));

    // Finished: re-enrollment is allowed, unless the workflow says no.
    assert!(store.save_run(&finish(&run, "completed", T0 + 1), &[]).await?);
    assert_eq!(store.enroll(&[e("k1", T0 + 2)]).await?, [EnrollOutcome::Duplicate], "keys stay used");
    assert_eq!(
        store.enroll(&[Enrollment { reenroll: false, ..e("k3", T0 + 2) }]).await?,
        [EnrollOutcome::NotReenrollable]
    );
    // A minimum interval counts from the last enrollment.
    let interval = |key: &str, at: i64| Enrollment { min_interval_ms: Some(HOUR), ..e(key, at) };
    assert_eq!(store.enroll(&[interval("k4", T0 + HOUR - 1)]).await?, [EnrollOutcome::TooSoon]);
    let second = store.enroll(&[interval("k5", T0 + HOUR)]).await?;
    let second = enrolled(&second[0]).clone();
    store.save_run(&finish(&second, "exited", T0 + HOUR + 2), &[]).await?;

    // The daily cap counts enrollments in the 24 hours up to `at`.
    let capped = |key: &str, at: i64| Enrollment { max_per_day: 2, ..e(key, at) };
    assert_eq!(store.enroll(&[capped("k6", T0 + 2 * HOUR)]).await?, [EnrollOutcome::RateLimited]);
    assert_eq!(store.enroll(&[capped("k7", T0 + DAY - 1)]).await?, [EnrollOutcome::RateLimited]);
    // A day after the first enrollment, only the second one counts.
    let third = store.enroll(&[capped("k8", T0 + DAY)]).await?;
    assert!(matches!(third[0], EnrollOutcome::Enrolled(_)), "{third:?}");

    // A workflow with no steps: recorded as completed at once.
    let empty = enrollment(&t, &w.id, &other, "k9", T0);
    let other_first =
        store.list_runs(&t, &RunFilter { contact_id: Some(other.clone()), ..Default::default() }, None, 10).await?;
    store.save_run(&finish(&other_first.items[0], "completed", T0), &[]).await?;
    let done = store.enroll(&[Enrollment { first_step: None, ..empty }]).await?;
    let done = enrolled(&done[0]);
    assert_eq!(
        (done.status.as_str(), done.cursor.as_deref(), done.wake_at, done.finished_at),
        ("completed", None, None, Some(T0))
    );

    // Unknown workflow or contact: an error, and nothing of the slice is recorded.
    let before = store.list_runs(&t, &RunFilter::default(), None, 100).await?.items.len();
    let bad_workflow =
        store.enroll(&[enrollment(&t, &w.id, &other, "z1", T0 + 2 * DAY), enrollment(&t, "nope", &c, "z2", T0)]).await;
    assert!(matches!(bad_workflow, Err(StoreError::UnknownReference { entity: "workflow", .. })), "{bad_workflow:?}");
    let bad_contact = store
        .enroll(&[enrollment(&t, &w.id, &other, "z1", T0 + 2 * DAY), enrollment(&t, &w.id, "nobody", "z3", T0)])
        .await;
    assert!(matches!(bad_contact, Err(StoreError::UnknownContact(_))), "{bad_contact:?}");
    assert_eq!(store.list_runs(&t, &RunFilter::default(), None, 100).await?.items.len(), before);
    assert!(matches!(store.enroll(&[e("", T0)]).await, Err(StoreError::Invalid(_))));
    assert!(store.enroll(&[]).await?.is_empty());
    Ok(())
}

async fn concurrent_enrollments_of_one_contact_create_one_run(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let c = contact(&store, &t, "ann@example.com").await?;
    let w = workflow(&store, &t, "Welcome").await?;
    let tasks = (0..8).map(|i| {
        let store = store.clone();
        let e = enrollment(&t, &w.id, &c, &format!("event-{i}"), T0);
        tokio::spawn(async move { store.enroll(&[e]).await })
    });
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await??);
    }
    let runs = outcomes.iter().filter(|o| matches!(o, EnrollOutcome::Enrolled(_))).count();
    assert_eq!(runs, 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| **o == EnrollOutcome::InFlight).count(), 7);
    assert_eq!(store.in_flight_runs(&t, std::slice::from_ref(&c)).await?.len(), 1);
    Ok(())
}

/// A pipeline batch that enrolls one contact many times (every event of a
/// busy contact) gets, enrollment by enrollment, what one transaction of
/// `enroll` would answer, also when the batch is finished again after a
/// crash (its keys are used).
async fn a_batch_decides_repeated_enrollments_of_a_contact_by_the_same_rules(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let c = contact(&store, &t, "ann@example.com").await?;
    let other = contact(&store, &t, "bob@example.com").await?;
    let w = workflow(&store, &t, "Welcome").await?;
    let e = |contact: &str, key: &str| enrollment(&t, &w.id, contact, key, T0);
    let update = |contact: &str, enrollments: Vec<Enrollment>| lane_update(&t, contact, enrollments);
    let no_steps = |key: &str| Enrollment { first_step: None, ..e(&other, key) };
    let batch = [
        update(&c, vec![e(&c, "k1"), e(&c, "k1"), e(&c, "k2"), e(&c, "k3"), enrollment(&t, "gone", &c, "k4", T0)]),
        // Completed at once: nothing stays in flight, each enrolls.
        update(&other, vec![no_steps("o1"), no_steps("o2"), e(&other, "o3"), e(&other, "o4")]),
    ];
    // The batch is written contact by contact, in id order.
    let decided = store.finish_batch(&batch, &[]).await?;
    let of = |contact: &str| -> Vec<Option<EnrollOutcome>> {
        decided.iter().filter(|(e, _)| e.contact_id == contact).map(|(_, o)| o.clone()).collect()
    };
    let ann = of(&c);
    assert!(matches!(ann[0], Some(EnrollOutcome::Enrolled(_))), "{ann:?}");
    assert_eq!(
        ann[1..],
        [Some(EnrollOutcome::Duplicate), Some(EnrollOutcome::InFlight), Some(EnrollOutcome::InFlight), None]
    );
    let bob = of(&other);
    assert!(bob[..3].iter().all(|o| matches!(o, Some(EnrollOutcome::Enrolled(_)))), "{bob:?}");
    assert_eq!(bob[3], Some(EnrollOutcome::InFlight));

    // Finished again (a crash before the lane's events were marked): an
    // unused key behind a waiting run is in flight, a used one a duplicate,
    // in whichever order they come.
    let again = [update(&c, vec![e(&c, "k5"), e(&c, "k1"), e(&c, "k6")])];
    let outcomes: Vec<Option<EnrollOutcome>> =
        store.finish_batch(&again, &[]).await?.into_iter().map(|(_, o)| o).collect();
    assert_eq!(
        outcomes,
        [Some(EnrollOutcome::InFlight), Some(EnrollOutcome::Duplicate), Some(EnrollOutcome::InFlight)]
    );
    let runs = store.list_runs(&t, &RunFilter::default(), None, 100).await?.items;
    assert_eq!(runs.len(), 4, "one run of ann's, three of bob's");
    Ok(())
}

/// A batch's enrollments are decided together (on SQLite from one read of
/// the rules taken before any of them): the runs the batch itself started,
/// completed at once, still count against re-enrollment, the minimum
/// interval, the daily cap and the keys, as they would one after another.
async fn a_batch_counts_the_runs_it_started_itself_against_the_interval_cap_and_keys(
    store: Store,
) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let capped = contact(&store, &t, "cap@example.com").await?;
    let once = contact(&store, &t, "once@example.com").await?;
    let spaced = contact(&store, &t, "spaced@example.com").await?;
    let w = workflow(&store, &t, "No steps").await?;
    let done =
        |contact: &str, key: &str, at: i64| Enrollment { first_step: None, ..enrollment(&t, &w.id, contact, key, at) };
    let update = |contact: &str, enrollments: Vec<Enrollment>| lane_update(&t, contact, enrollments);
    let cap = |key: &str, at: i64| Enrollment { max_per_day: 2, ..done(&capped, key, at) };
    let single = |key: &str| Enrollment { reenroll: false, ..done(&once, key, T0) };
    let apart = |key: &str, at: i64| Enrollment { min_interval_ms: Some(1_000), ..done(&spaced, key, at) };
    let batch = [
        update(&capped, vec![cap("c1", T0), cap("c2", T0 + 1), cap("c3", T0 + 2), cap("c4", T0 + DAY + 1)]),
        update(&once, vec![single("o1"), single("o2")]),
        // A key the batch used for another contact is taken.
        update(&spaced, vec![apart("s1", T0), apart("s2", T0 + 500), apart("s3", T0 + 1_500), apart("c1", T0 + 9_000)]),
    ];
    let decided = store.finish_batch(&batch, &[]).await?;
    let of = |contact: &str| -> Vec<String> {
        decided
            .iter()
            .filter(|(e, _)| e.contact_id == contact)
            .map(|(_, o)| match o {
                Some(EnrollOutcome::Enrolled(run)) => format!("enrolled {}", run.status),
                other => format!("{other:?}"),
            })
            .collect()
    };
    let enrolled = "enrolled completed".to_owned();
    let said = |s: &str| s.to_owned();
    assert_eq!(
        of(&capped),
        [enrolled.clone(), enrolled.clone(), said("Some(RateLimited)"), enrolled.clone()],
        "two a day, the fourth a day after the first"
    );
    assert_eq!(of(&once), [enrolled.clone(), said("Some(NotReenrollable)")]);
    assert_eq!(of(&spaced), [enrolled.clone(), said("Some(TooSoon)"), enrolled.clone(), said("Some(Duplicate)")]);
    let runs = store.list_runs(&t, &RunFilter::default(), None, 100).await?.items;
    assert_eq!(runs.len(), 6);
    Ok(())
}

/// The runner's direct path (`engine::workflows::direct`): a batch that
/// hands its runs over enrolls them leased, so no claim takes them; a save
/// between two steps keeps the lease; the save that waits releases it.
async fn runs_enrolled_for_hand_over_are_born_leased_and_a_save_that_goes_on_keeps_the_lease(
    store: Store,
) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let w = workflow(&store, &t, "Welcome").await?;
    let update = |contact: &str, key: &str| ContactUpdate {
        tenant_id: t.clone(),
        contact_id: contact.to_string(),
        last_activity_at: None,
        score: None,
        stage_change: None,
        enrollments: vec![enrollment(&t, &w.id, contact, key, T0)],
    };
    let handed_contact = contact(&store, &t, "handed@example.com").await?;
    let claimed_contact = contact(&store, &t, "claimed@example.com").await?;
    let handed = store.finish_batch_leasing(&[update(&handed_contact, "h")], &[], true).await?;
    let handed = enrolled(handed[0].1.as_ref().context("decided")?).clone();
    let claimed = store.finish_batch_leasing(&[update(&claimed_contact, "c")], &[], false).await?;
    let claimed = enrolled(claimed[0].1.as_ref().context("decided")?).clone();

    let due = store.claim_due_runs(T0 + 1_000, 10).await?;
    assert_eq!(due.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [claimed.id.as_str()], "the handed run is held");
    assert_eq!(store.next_wake_at().await?, None, "nor is it a reason to wake");

    // An action's outcome saved, the run goes on: still held.
    let mut going_on = finish(&handed, "waiting", T0 + 10);
    going_on.cursor = Some("s2".into());
    going_on.wake_at = Some(T0 + 10);
    assert!(store.save_run_progress(&going_on, &[step(&handed, "s1", "ok", 1, T0)], &[], true).await?);
    assert!(store.claim_due_runs(T0 + 1_000, 10).await?.is_empty(), "a run in progress is never claimed");
    // It waits for a timer: released, and claimable when due.
    going_on.wake_at = Some(T0 + 2_000);
    assert!(store.save_run_progress(&going_on, &[], &[], false).await?);
    assert!(store.claim_due_runs(T0 + 1_999, 10).await?.is_empty());
    let woke = store.claim_due_runs(T0 + 2_000, 10).await?;
    assert_eq!((woke.len(), woke[0].id.as_str(), woke[0].cursor.as_deref()), (1, handed.id.as_str(), Some("s2")));
    Ok(())
}

async fn due_runs_are_claimed_by_wake_time_and_held_by_their_lease(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let w = workflow(&store, &t, "Welcome").await?;
    assert_eq!(store.next_wake_at().await?, None, "no runs, nothing to wake for");
    let mut runs = Vec::new();
    for (i, at) in [T0 + 300, T0 + 100, T0 + 200, T0 + 5_000].into_iter().enumerate() {
        let c = contact(&store, &t, &format!("c{i}@example.com")).await?;
        runs.push(enrolled(&store.enroll(&[enrollment(&t, &w.id, &c, &format!("k{i}"), at)]).await?[0]).clone());
    }
    assert_eq!(store.next_wake_at().await?, Some(T0 + 100));
    assert!(store.claim_due_runs(T0 + 99, 10).await?.is_empty(), "nothing due yet");

    let first = store.claim_due_runs(T0 + 1_000, 2).await?;
    assert_eq!(first.iter().map(|r| r.wake_at).collect::<Vec<_>>(), [Some(T0 + 100), Some(T0 + 200)], "earliest first");
    let second = store.claim_due_runs(T0 + 1_000, 10).await?;
    assert_eq!(second.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [runs[0].id.as_str()]);
    assert!(store.claim_due_runs(T0 + 1_000, 10).await?.is_empty(), "claimed runs are held");
    assert_eq!(store.next_wake_at().await?, Some(T0 + 5_000), "held runs are not the sleeper's business");

    // Saving releases the lease: a run that waits again is claimable when due.
    let mut again = finish(&first[0], "waiting", T0 + 1_000);
    again.cursor = Some("s2".into());
    again.wake_at = Some(T0 + 2_000);
    assert!(store.save_run(&again, &[]).await?);
    assert!(store.claim_due_runs(T0 + 1_999, 10).await?.is_empty());
    let woke = store.claim_due_runs(T0 + 2_000, 10).await?;
    assert_eq!((woke.len(), woke[0].cursor.as_deref()), (1, Some("s2")));

    // A lease that ran out (its worker died) makes the run claimable again.
    sqlx::query("UPDATE workflow_runs SET lease_until = 1 WHERE id = $1")
        .bind(&first[1].id)
        .execute(store.pool())
        .await?;
    let expired = store.claim_due_runs(T0 + 2_000, 10).await?;
    assert_eq!(expired.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [first[1].id.as_str()]);

    // Finished runs are never due.
    store.save_run(&finish(&expired[0], "completed", T0 + 2_000), &[]).await?;
    sqlx::query("UPDATE workflow_runs SET lease_until = NULL").execute(store.pool()).await?;
    let rest = store.claim_due_runs(T0 + DAY, 10).await?;
    let ids: HashSet<&str> = rest.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, HashSet::from([runs[0].id.as_str(), runs[1].id.as_str(), runs[3].id.as_str()]));

    // Concurrent claimers get disjoint runs.
    sqlx::query("UPDATE workflow_runs SET lease_until = NULL").execute(store.pool()).await?;
    for i in 0..40 {
        let c = contact(&store, &t, &format!("many{i}@example.com")).await?;
        enrolled(&store.enroll(&[enrollment(&t, &w.id, &c, &format!("many{i}"), T0)]).await?[0]);
    }
    let claims = (0..4).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.claim_due_runs(T0 + DAY, 15).await })
    });
    let mut seen = HashSet::new();
    for c in claims {
        for run in c.await?? {
            assert!(seen.insert(run.id), "a run was claimed twice");
        }
    }
    assert_eq!(seen.len(), 43);
    Ok(())
}

/// The plugin call of an attempt of step `step_id` of `run`.
fn attempt_call(run: &Run, step_id: &str, ok: bool, at: i64) -> InvocationRecord {
    let key = format!("run:{}:{step_id}", run.id);
    InvocationRecord {
        id: new_id(),
        tenant_id: run.tenant_id.clone(),
        install_id: "hook".into(),
        kind: "execute".into(),
        contact_id: Some(run.contact_id.clone()),
        event_id: None,
        ok,
        error_cause: (!ok).then(|| "plugin".into()),
        error_message: (!ok).then(|| "smtp down".into()),
        fuel_used: Some(42),
        duration_us: 1_200,
        idempotency_key: Some(key.clone()),
        output_json: ok.then(|| r#"{"message_id":"m-1"}"#.into()),
        at,
        plugin_version_id: Some("version-1".into()),
        input_json: Some(json!({"export": "execute", "idempotency_key": key}).to_string()),
        input_status: None,
    }
}

async fn action_calls_are_saved_with_their_step_in_one_transaction(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let other = tenant(&store, "Other").await?;
    let c = contact(&store, &t, "ann@example.com").await?;
    let w = workflow(&store, &t, "Welcome").await?;
    let run = enrolled(&store.enroll(&[enrollment(&t, &w.id, &c, "k", T0)]).await?[0]).clone();
    let waiting = RunProgress { cursor: Some("s1".into()), wake_at: Some(T0 + 60_000), ..finish(&run, "waiting", T0) };

    // Attempt 1 fails: its call is recorded with the step, which names it.
    let first = attempt_call(&run, "s1", false, T0);
    let s1 = RunStep { invocation_id: Some(first.id.clone()), ..step(&run, "s1", "retrying", 1, T0) };
    assert!(store.save_run_with_calls(&waiting, std::slice::from_ref(&s1), std::slice::from_ref(&first)).await?);
    let (_, steps) = store.get_run(&t, &run.id).await?.context("run")?;
    assert_eq!(steps, std::slice::from_ref(&s1));
    let got = store.get_invocation(&t, &first.id).await?.context("the call is recorded")?;
    assert_eq!(got, InvocationRecord { input_status: Some(InputStatus::Kept), ..first.clone() });

    // Attempt 2 succeeds: the step now names the second call; both are kept.
    let second = attempt_call(&run, "s1", true, T0 + 60_000);
    let s1b = RunStep { invocation_id: Some(second.id.clone()), ..step(&run, "s1", "ok", 2, T0 + 60_000) };
    assert!(
        store
            .save_run_with_calls(&finish(&run, "completed", T0 + 60_000), &[s1b], std::slice::from_ref(&second))
            .await?
    );
    let (_, steps) = store.get_run(&t, &run.id).await?.context("run")?;
    assert_eq!(steps[0].invocation_id.as_deref(), Some(second.id.as_str()));
    assert_eq!(steps[0].id, s1.id, "one record per step");
    let serialized = serde_json::to_value(&steps[0])?;
    assert_eq!(serialized["invocation_id"], json!(second.id));
    assert!(store.get_invocation(&t, &first.id).await?.is_some());
    assert_eq!(store.list_invocations(&t, None, 10).await?.len(), 2);

    // A step record saved before invocation ids existed still reads.
    let mut old = serialized.clone();
    old.as_object_mut().context("object")?.remove("invocation_id");
    assert_eq!(serde_json::from_value::<RunStep>(old)?.invocation_id, None);

    // A call of another tenant is refused, and nothing of the save is kept.
    let stray = InvocationRecord { tenant_id: other.clone(), ..attempt_call(&run, "s2", true, T0 + DAY) };
    let s2 = RunStep { invocation_id: Some(stray.id.clone()), ..step(&run, "s2", "ok", 1, T0 + DAY) };
    let refused =
        store.save_run_with_calls(&finish(&run, "completed", T0 + DAY), &[s2], std::slice::from_ref(&stray)).await;
    assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");
    assert_eq!(store.get_invocation(&other, &stray.id).await?, None);
    assert_eq!(store.get_run(&t, &run.id).await?.context("run")?.1.len(), 1);

    // A run that is gone records neither its steps nor their calls.
    assert!(store.delete_contact(&t, &c).await?);
    let late = attempt_call(&run, "s2", true, T0 + DAY);
    assert!(!store.save_run_with_calls(&finish(&run, "completed", T0 + DAY), &[], std::slice::from_ref(&late)).await?);
    assert_eq!(store.get_invocation(&t, &late.id).await?, None);
    Ok(())
}

async fn saved_progress_and_step_records_round_trip(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let c = contact(&store, &t, "ann@example.com").await?;
    let w = workflow(&store, &t, "Welcome").await?;
    let run = enrolled(&store.enroll(&[enrollment(&t, &w.id, &c, "k", T0)]).await?[0]).clone();

    // First attempt of s1 fails and will be retried.
    let mut s1 = step(&run, "s1", "retrying", 1, T0);
    s1.error = Some(json!({"cause": "plugin", "message": "smtp down", "retryable": true}));
    let progress = RunProgress {
        status: "waiting".into(),
        cursor: Some("s1".into()),
        wake_at: Some(T0 + 60_000),
        attempts: 1,
        variants: json!({"split": "B"}),
        state: json!({"delay_step": "s0"}),
        ..finish(&run, "waiting", T0 + 10)
    };
    assert!(store.save_run(&progress, std::slice::from_ref(&s1)).await?);
    let (r, steps) = store.get_run(&t, &run.id).await?.context("run")?;
    assert_eq!(
        (r.status.as_str(), r.cursor.as_deref(), r.wake_at, r.attempts),
        ("waiting", Some("s1"), Some(T0 + 60_000), 1)
    );
    assert_eq!(
        (r.variants.clone(), r.state.clone(), r.updated_at, r.finished_at),
        (json!({"split": "B"}), json!({"delay_step": "s0"}), T0 + 10, None)
    );
    assert_eq!(steps, [s1.clone()]);

    // The second attempt succeeds: the record is updated in place, its id
    // and first start kept, attempts grown.
    let mut s1b = step(&run, "s1", "ok", 2, T0 + 60_000);
    s1b.output = Some(json!({"message_id": "m-1"}));
    let s2 = RunStep {
        kind: "delay".into(),
        status: "waiting".into(),
        input: None,
        finished_at: None,
        ..step(&run, "s2", "waiting", 1, T0 + 60_001)
    };
    let progress = RunProgress { cursor: Some("s2".into()), wake_at: Some(T0 + DAY), attempts: 0, ..progress };
    assert!(store.save_run(&progress, &[s1b.clone(), s2.clone()]).await?);
    let (_, steps) = store.get_run(&t, &run.id).await?.context("run")?;
    assert_eq!(steps.len(), 2, "one record per step");
    assert_eq!(steps[0], RunStep { id: s1.id.clone(), started_at: T0, ..s1b.clone() });
    assert_eq!(steps[1], s2);

    // Done: finished_at is set, the cursor and timer cleared.
    let mut s2_done = s2.clone();
    s2_done.status = "ok".into();
    s2_done.finished_at = Some(T0 + DAY);
    assert!(
        store
            .save_run(
                &RunProgress { exit_reason: Some("goal: replied".into()), ..finish(&run, "exited", T0 + DAY) },
                &[s2_done]
            )
            .await?
    );
    let (r, steps) = store.get_run(&t, &run.id).await?.context("run")?;
    assert_eq!(
        (r.status.as_str(), r.cursor, r.wake_at, r.finished_at, r.exit_reason.as_deref()),
        ("exited", None, None, Some(T0 + DAY), Some("goal: replied"))
    );
    assert_eq!((steps[1].status.as_str(), steps[1].started_at), ("ok", T0 + 60_001));

    // The steps are on the contact's timeline, at their start.
    let timeline = store.timeline(&t, &c, 100).await?.context("timeline")?;
    let workflow_steps: Vec<&RunStep> = timeline
        .iter()
        .filter_map(|e| match e {
            TimelineEntry::WorkflowStep(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(workflow_steps.iter().map(|s| s.step_id.as_str()).collect::<Vec<_>>(), ["s2", "s1"], "newest first");
    let entry = timeline.iter().find(|e| matches!(e, TimelineEntry::WorkflowStep(_))).context("a step")?;
    assert_eq!(entry.at(), T0 + 60_001);
    assert_eq!(serde_json::to_value(entry)?["type"], "workflow_step");

    // Oversized plugin output is replaced by a note; the save still succeeds.
    let mut big = step(&run, "s3", "ok", 1, T0 + DAY);
    big.output = Some(json!({"blob": "x".repeat(MAX_STEP_JSON)}));
    assert!(store.save_run(&finish(&run, "exited", T0 + DAY), &[big]).await?);
    let (_, steps) = store.get_run(&t, &run.id).await?.context("run")?;
    let kept = steps.iter().find(|s| s.step_id == "s3").and_then(|s| s.output.clone()).context("output")?;
    assert!(kept.get("not_kept").is_some(), "{kept}");

    // Bad input is refused; a run that is gone is `false`.
    assert!(matches!(store.save_run(&finish(&run, "paused", T0), &[]).await, Err(StoreError::Invalid(_))));
    let foreign = RunStep { run_id: "another".into(), ..step(&run, "s1", "ok", 1, T0) };
    assert!(matches!(store.save_run(&finish(&run, "exited", T0), &[foreign]).await, Err(StoreError::Invalid(_))));
    let odd = step(&run, "s1", "skipped", 1, T0);
    assert!(matches!(store.save_run(&finish(&run, "exited", T0), &[odd]).await, Err(StoreError::Invalid(_))));
    assert!(store.delete_contact(&t, &c).await?);
    assert!(
        !store.save_run(&finish(&run, "completed", T0), &[step(&run, "s1", "ok", 1, T0)]).await?,
        "runs go with their contact"
    );
    assert_eq!(store.get_run(&t, &run.id).await?, None);
    Ok(())
}

async fn only_a_failed_run_can_be_retried(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let c = contact(&store, &t, "ann@example.com").await?;
    let w = workflow(&store, &t, "Welcome").await?;
    let run = enrolled(&store.enroll(&[enrollment(&t, &w.id, &c, "k", T0)]).await?[0]).clone();

    match store.retry_run(&t, &run.id, T0).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("waiting"), "{m}"),
        other => anyhow::bail!("a waiting run is not retried: {other:?}"),
    }
    let failed = RunProgress {
        cursor: Some("s2".into()),
        attempts: 5,
        error: Some(json!({"message": "gave up after 5 attempts"})),
        ..finish(&run, "failed", T0 + HOUR)
    };
    store.save_run(&failed, &[]).await?;
    let (r, _) = store.get_run(&t, &run.id).await?.context("run")?;
    assert_eq!((r.status.as_str(), r.finished_at, r.attempts), ("failed", Some(T0 + HOUR), 5));
    assert_eq!(r.error, Some(json!({"message": "gave up after 5 attempts"})));

    let retried = store.retry_run(&t, &run.id, T0 + DAY).await?.context("retried")?;
    assert_eq!(
        (retried.status.as_str(), retried.cursor.as_deref(), retried.wake_at),
        ("waiting", Some("s2"), Some(T0 + DAY))
    );
    assert_eq!((retried.attempts, retried.error.clone(), retried.finished_at), (0, None, None));
    assert_eq!(store.get_run(&t, &run.id).await?.map(|(r, _)| r), Some(retried.clone()));
    assert_eq!(store.claim_due_runs(T0 + DAY, 10).await?.len(), 1, "due again");
    // Twice: it is waiting now.
    assert!(matches!(store.retry_run(&t, &run.id, T0 + DAY).await, Err(StoreError::Invalid(_))));
    // Waiting without a wake time: due at once, not lost.
    store
        .save_run(&RunProgress { cursor: Some("s3".into()), ..finish(&retried, "waiting", T0 + DAY + 5) }, &[])
        .await?;
    assert_eq!(store.get_run(&t, &run.id).await?.and_then(|(r, _)| r.wake_at), Some(T0 + DAY + 5));
    // Finished: no wake time, whatever the progress said.
    let done = RunProgress { wake_at: Some(T0 + 2 * DAY), ..finish(&retried, "completed", T0 + DAY + 6) };
    store.save_run(&done, &[]).await?;
    let (r, _) = store.get_run(&t, &run.id).await?.context("run")?;
    assert_eq!((r.wake_at, r.finished_at), (None, Some(T0 + DAY + 6)));
    assert!(matches!(store.retry_run(&t, &run.id, T0 + DAY).await, Err(StoreError::Invalid(_))));
    assert_eq!(store.retry_run(&t, "nope", T0).await?, None);
    Ok(())
}

async fn runs_are_listed_by_filter_and_paged_newest_first(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let w1 = workflow(&store, &t, "One").await?;
    let w2 = workflow(&store, &t, "Two").await?;
    let mut contacts = Vec::new();
    let mut all = Vec::new();
    for i in 0..5 {
        let c = contact(&store, &t, &format!("c{i}@example.com")).await?;
        for w in [&w1, &w2] {
            all.push(enrolled(&store.enroll(&[enrollment(&t, &w.id, &c, &format!("k{i}"), T0 + i)]).await?[0]).clone());
        }
        contacts.push(c);
    }
    // Contact 0's run of w1 completes, contact 1's fails.
    store.save_run(&finish(&all[0], "completed", T0 + 10), &[]).await?;
    store.save_run(&finish(&all[2], "failed", T0 + 10), &[]).await?;

    // Paging: newest first, 3 at a time, every run once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_runs(&t, &RunFilter::default(), cursor.as_deref(), 3).await?;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|r| r.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut expected: Vec<String> = all.iter().map(|r| r.id.clone()).collect();
    expected.reverse();
    assert_eq!(seen, expected);

    let by = |workflow_id: Option<&str>, contact_id: Option<&str>, status: Option<&str>| RunFilter {
        workflow_id: workflow_id.map(Into::into),
        contact_id: contact_id.map(Into::into),
        status: status.map(Into::into),
    };
    let ids = |page: Page<Run>| page.items.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(store.list_runs(&t, &by(Some(&w1.id), None, None), None, 100).await?.items.len(), 5);
    assert_eq!(
        ids(store.list_runs(&t, &by(None, Some(&contacts[0]), None), None, 100).await?),
        [all[1].id.clone(), all[0].id.clone()]
    );
    assert_eq!(
        ids(store.list_runs(&t, &by(Some(&w1.id), None, Some("failed")), None, 100).await?),
        [all[2].id.clone()]
    );
    assert_eq!(
        ids(store.list_runs(&t, &by(Some(&w2.id), Some(&contacts[0]), Some("waiting")), None, 100).await?),
        [all[1].id.clone()]
    );
    assert!(
        store.list_runs(&t, &by(None, None, Some("bogus")), None, 100).await?.items.is_empty(),
        "unknown statuses match nothing"
    );

    assert_eq!(
        store.count_runs_by_status(&t, &w1.id).await?,
        counts(&[("completed", 1), ("failed", 1), ("waiting", 3)])
    );
    assert_eq!(store.count_runs_by_status(&t, &w2.id).await?, counts(&[("waiting", 5)]));

    let in_flight = store.in_flight_runs(&t, &contacts[..2]).await?;
    assert_eq!(in_flight.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [all[1].id.clone(), all[3].id.clone()]);
    // Long id lists are chunked.
    let mut many: Vec<String> = (0..600).map(|i| format!("missing-{i}")).collect();
    many.push(contacts[4].clone());
    assert_eq!(store.in_flight_runs(&t, &many).await?.len(), 2);
    assert!(store.in_flight_runs(&t, &[]).await?.is_empty());
    Ok(())
}

async fn due_schedules_are_claimed_once_until_the_next_firing_is_set(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let daily = workflow(&store, &t, "Daily").await?;
    let later = workflow(&store, &t, "Later").await?;
    let draft = workflow(&store, &t, "Draft").await?;
    store.activate_workflow_version(&t, &daily.id, 1, Some(T0)).await?;
    store.activate_workflow_version(&t, &later.id, 1, Some(T0 + HOUR)).await?;
    store.set_next_fire(&t, &draft.id, Some(T0)).await?; // no active version: never due

    assert!(store.claim_due_schedules(T0 - 1, 10).await?.is_empty());
    let due = store.claim_due_schedules(T0, 10).await?;
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].0.as_str(), due[0].1.id.as_str(), due[0].1.next_fire_at),
        (t.as_str(), daily.id.as_str(), Some(T0))
    );
    assert!(store.claim_due_schedules(T0, 10).await?.is_empty(), "held by its lease");

    // Recording the next firing releases the claim.
    store.set_next_fire(&t, &daily.id, Some(T0 + DAY)).await?;
    let both = store.claim_due_schedules(T0 + DAY, 10).await?;
    assert_eq!(
        both.iter().map(|(_, w)| w.id.as_str()).collect::<Vec<_>>(),
        [later.id.as_str(), daily.id.as_str()],
        "earliest due first"
    );

    // An expired lease is claimable again; no next firing means never again.
    sqlx::query("UPDATE workflows SET schedule_lease_until = 1").execute(store.pool()).await?;
    assert_eq!(store.claim_due_schedules(T0 + DAY, 1).await?.len(), 1, "limit respected");
    store.set_next_fire(&t, &daily.id, None).await?;
    store.set_next_fire(&t, &later.id, None).await?;
    assert!(store.claim_due_schedules(T0 + 365 * DAY, 10).await?.is_empty());

    // Archiving stops the schedule, and a late next firing does not revive it.
    store.activate_workflow_version(&t, &daily.id, 1, Some(T0)).await?;
    store.archive_workflow(&t, &daily.id).await?;
    store.set_next_fire(&t, &daily.id, Some(T0)).await?;
    assert_eq!(store.get_workflow(&t, &daily.id).await?.and_then(|w| w.next_fire_at), None);
    assert!(store.claim_due_schedules(T0 + DAY, 10).await?.is_empty());
    Ok(())
}

// ---- store-wide changes ----

async fn contact_changes_are_recorded_as_events(store: Store) -> anyhow::Result<()> {
    let t = tenant(&store, "Acme").await?;
    let new = NewContact {
        email: Some("ann@example.com".into()),
        properties: props(&[("source", text("webinar")), ("region", text("emea"))]),
        ..Default::default()
    };
    let c = store.create_contact(&t, new).await?;
    let events = change_events(&store, &t, &c.id).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind.as_str(), &events[0].properties),
        ("contact_created", &props(&[("source", text("webinar"))]))
    );
    assert!(!events[0].processed, "the pipeline picks them up");
    let plain = contact(&store, &t, "bob@example.com").await?;
    assert_eq!(change_events(&store, &t, &plain).await?[0].properties, Properties::new(), "no source, no properties");

    // set_properties: one event per changed property, core fields by name.
    let changes = props(&[
        ("owner", text("olga")),
        ("region", text("emea")), // unchanged
        ("seats", Value::Number(5.0)),
        ("source", Value::Null), // deleted
        ("lifecycle_stage", text("mql")),
    ]);
    assert!(store.set_properties(&t, &c.id, &changes).await?);
    let events = change_events(&store, &t, &c.id).await?;
    let recorded: Vec<(&str, &Properties)> = events[1..].iter().map(|e| (e.kind.as_str(), &e.properties)).collect();
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    let owner = changed("owner", Value::Null, text("olga"));
    let seats = changed("seats", Value::Null, Value::Number(5.0));
    let source = changed("source", text("webinar"), Value::Null);
    let stage = props(&[("from", text("lead")), ("to", text("mql"))]);
    for expected in [
        ("property_changed", &owner),
        ("property_changed", &seats),
        ("property_changed", &source),
        ("lifecycle_stage_changed", &stage),
    ] {
        assert!(recorded.contains(&expected), "missing {expected:?} in {recorded:?}");
    }

    // The same values again: nothing.
    let same = props(&[
        ("owner", text("olga")),
        ("seats", Value::Number(5.0)),
        ("lifecycle_stage", text("mql")),
        ("gone", Value::Null),
    ]);
    assert!(store.set_properties(&t, &c.id, &same).await?);
    assert_eq!(change_events(&store, &t, &c.id).await?.len(), 5);

    // patch_contact: the same rules; tags and score are not properties.
    let patch: ContactPatch = serde_json::from_value(json!({
        "email": "ann.lee@example.com",
        "first_name": null,          // was absent already
        "owner": "olga",             // same
        "lifecycle_stage": "sql",
        "properties": {"seats": 6, "region": "emea"},
        "tags": ["vip"],
    }))?;
    store.patch_contact(&t, &c.id, patch).await?.context("patched")?;
    let events = change_events(&store, &t, &c.id).await?;
    let recorded: Vec<(&str, &Properties)> = events[5..].iter().map(|e| (e.kind.as_str(), &e.properties)).collect();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    let email = changed("email", text("ann@example.com"), text("ann.lee@example.com"));
    let seats = changed("seats", Value::Number(5.0), Value::Number(6.0));
    let stage = props(&[("from", text("mql")), ("to", text("sql"))]);
    for expected in [("property_changed", &email), ("property_changed", &seats), ("lifecycle_stage_changed", &stage)] {
        assert!(recorded.contains(&expected), "missing {expected:?} in {recorded:?}");
    }
    store.add_tag(&t, &c.id, "beta").await?;
    store.set_score(&t, &c.id, 40.0, &[]).await?;
    store.patch_contact(&t, &c.id, ContactPatch::default()).await?;
    assert_eq!(change_events(&store, &t, &c.id).await?.len(), 8, "tags, score and empty patches record nothing");

    // The dedicated stage setter records the change too (and only a change).
    store.set_lifecycle_stage(&t, &c.id, "customer").await?;
    store.set_lifecycle_stage(&t, &c.id, "customer").await?;
    let events = change_events(&store, &t, &c.id).await?;
    assert_eq!(events.len(), 9);
    assert_eq!(events[8].properties, props(&[("from", text("sql")), ("to", text("customer"))]));

    // A change that fails records nothing.
    let taken = store
        .patch_contact(
            &t,
            &plain,
            ContactPatch { email: Some(Some("ann.lee@example.com".into())), ..Default::default() },
        )
        .await;
    assert!(matches!(taken, Err(StoreError::DuplicateEmail(_))));
    assert_eq!(change_events(&store, &t, &plain).await?.len(), 1);

    // A property near the size limit still changes; its event drops the old value.
    let big = "x".repeat(40 << 10);
    assert!(store.set_properties(&t, &plain, &props(&[("notes", text(&big))])).await?);
    let bigger = "y".repeat(40 << 10);
    assert!(store.set_properties(&t, &plain, &props(&[("notes", text(&bigger))])).await?);
    let events = change_events(&store, &t, &plain).await?;
    let last = &events.last().context("event")?.properties;
    assert_eq!(
        (last.get("from"), last.get("to"), last.get("truncated")),
        (Some(&Value::Null), Some(&text(&bigger)), Some(&Value::Bool(true)))
    );

    // The pipeline's claim sees them like any other event.
    let claimed = store.claim_unprocessed_events(1000).await?;
    assert!(claimed.iter().any(|(tenant, e)| tenant == &t && e.kind == "property_changed"));
    Ok(())
}

async fn a_manual_clock_drives_the_times_the_store_writes(store: Store) -> anyhow::Result<()> {
    let clock = Clock::manual(T0);
    let store = store.with_clock(clock.clone());
    assert_eq!(store.now(), T0);
    let t = store.create_tenant("Acme").await?;
    assert_eq!(t.created_at, T0);
    let c =
        store.create_contact(&t.id, NewContact { email: Some("ann@example.com".into()), ..Default::default() }).await?;
    assert_eq!((c.created_at, c.updated_at), (T0, T0));
    assert_eq!(change_events(&store, &t.id, &c.id).await?[0].occurred_at, T0);

    clock.advance(HOUR);
    let events = store
        .insert_events(
            &t.id,
            vec![NewEvent { contact_id: Some(c.id.clone()), kind: "page_viewed".into(), ..Default::default() }],
        )
        .await?;
    assert_eq!(
        (events[0].occurred_at, events[0].received_at),
        (T0 + HOUR, T0 + HOUR),
        "default occurred_at is business time"
    );
    let by_email = NewEvent { email: Some("new@example.com".into()), kind: "x".into(), ..Default::default() };
    let created = store.insert_events(&t.id, vec![by_email]).await?;
    assert_eq!(store.get_contact(&t.id, &created[0].contact_id).await?.map(|c| c.created_at), Some(T0 + HOUR));

    clock.advance(HOUR);
    store.set_properties(&t.id, &c.id, &props(&[("region", text("emea"))])).await?;
    let c2 = store.get_contact(&t.id, &c.id).await?.context("contact")?;
    assert_eq!((c2.created_at, c2.updated_at), (T0, T0 + 2 * HOUR));
    let change = change_events(&store, &t.id, &c.id).await?.pop().context("event")?;
    assert_eq!((change.occurred_at, change.received_at), (T0 + 2 * HOUR, T0 + 2 * HOUR));
    assert_eq!(store.set_score(&t.id, &c.id, 5.0, &[]).await?.map(|s| s.at), Some(T0 + 2 * HOUR));
    let note = store.add_note(&t.id, &c.id, "called").await?.context("note")?;
    assert_eq!(note.created_at, T0 + 2 * HOUR);
    let task = NewTask { contact_id: Some(c.id.clone()), title: "call back".into(), ..Default::default() };
    let (task, _) = store.create_task(&t.id, task, "api").await?.context("task")?;
    assert_eq!((task.created_at, task.updated_at), (T0 + 2 * HOUR, T0 + 2 * HOUR));

    clock.set(T0 + DAY);
    let (w, v) = store.create_workflow(&t.id, "Welcome", &definition(&["s1"])).await?;
    assert_eq!((w.created_at, w.updated_at, v.created_at), (T0 + DAY, T0 + DAY, T0 + DAY));
    clock.advance(1);
    let w = store.activate_workflow_version(&t.id, &w.id, 1, None).await?.context("activated")?;
    assert_eq!(w.updated_at, T0 + DAY + 1);

    // Leases stay on real time: a run due in business time is held for a
    // minute of real time, however far the manual clock moves.
    let run = enrolled(&store.enroll(&[enrollment(&t.id, &w.id, &c.id, "k", store.now())]).await?[0]).clone();
    assert_eq!(store.claim_due_runs(store.now(), 10).await?.len(), 1);
    clock.advance(365 * DAY);
    assert!(store.claim_due_runs(store.now(), 10).await?.is_empty(), "the lease is real time");
    let lease: i64 = sqlx::Row::try_get(
        &sqlx::query("SELECT lease_until FROM workflow_runs WHERE id = $1")
            .bind(&run.id)
            .fetch_one(store.pool())
            .await?,
        "lease_until",
    )?;
    assert!((lease - now_ms()).abs() <= 120_000, "lease {lease} is about a minute from real now");
    Ok(())
}

async fn tenants_have_a_time_zone(store: Store) -> anyhow::Result<()> {
    let t = store.create_tenant("Acme").await?;
    assert_eq!(t.time_zone, "UTC");
    assert!(store.set_tenant_time_zone(&t.id, "Europe/Berlin").await?);
    assert_eq!(store.get_tenant(&t.id).await?.map(|t| t.time_zone), Some("Europe/Berlin".into()));
    assert!(store.list_tenants().await?.iter().any(|x| x.id == t.id && x.time_zone == "Europe/Berlin"));
    assert!(!store.set_tenant_time_zone("nope", "UTC").await?);
    assert!(matches!(store.set_tenant_time_zone(&t.id, "").await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.set_tenant_time_zone(&t.id, &"x".repeat(65)).await, Err(StoreError::Invalid(_))));
    assert_eq!(store.get_tenant(&t.id).await?.map(|t| t.time_zone), Some("Europe/Berlin".into()));
    Ok(())
}
