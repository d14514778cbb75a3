//! The six seed scenarios, end to end: a real server with the real prebuilt
//! plugins, tenant "Acme Robotics" (Europe/Berlin) set up as `cairn demo`
//! sets it up, the example workflows of `examples/workflows/` activated
//! through the HTTP API, and virtual time on a manual clock.
//!
//! What each test proves, through the API and what the webhook receiver got:
//! - (a) a new lead gets an owner by region and five welcome emails, one per
//!   virtual day at 09:00 Berlin, signed and keyed `run:<run>:<step>`; a lead
//!   who clicked gets a call-now task, one who did not gets a tag (SQLite
//!   and PostgreSQL);
//! - (b) three pricing page views in a week (the page-visits trigger) tag
//!   the contact and create a follow-up task; two views enroll nobody;
//! - (c) the daily 09:00 schedule enrolls contacts idle for 90 days, and
//!   only those; a reply within the week marks them reactivated with a task,
//!   silence marks them dormant;
//! - (d) crossing the MQL score makes the stage `mql`, which hands the lead
//!   to sales (task, signed webhook, tag) exactly once;
//! - (e) a customer's health dropping below 40 warns customer success and
//!   starts a retention sequence, which a recovery ends through the goal
//!   before the second email;
//! - (f) a 50/50 subject-line split records each run's variant, and every
//!   subscriber gets exactly the email of its variant.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use cairn::demo::{ReceivedHook, wait_for};
use cairn::engine::workflows::time::{HOUR_MS, format_local, parse_time_zone};
use cairn::store::testing::{TempPostgres, TempSqlite};
use common::{DAY, MONDAY_0800_UTC, PATIENCE, World};
use reqwest::Method;
use serde_json::{Value, json};

/// One minute, ms.
const MINUTE: i64 = 60_000;

/// `ms` as wall time in Berlin, e.g. "2026-11-24T09:00:00+01:00[Europe/Berlin]".
fn berlin(ms: i64) -> String {
    format_local(ms, &parse_time_zone("Europe/Berlin").unwrap())
}

/// `GET /v1/contacts/{id}`.
async fn contact(world: &World, id: &str) -> Value {
    world.get(&format!("/v1/contacts/{id}")).await
}

/// Wait until contact `id` satisfies `ready`.
async fn wait_contact(world: &World, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    wait_for(PATIENCE, || async {
        let c = contact(world, id).await;
        Ok(ready(&c).then_some(c))
    })
    .await
    .unwrap_or_else(|e| panic!("contact {id} never reached: {what}: {e}"))
}

/// The contact's tags.
fn tags(contact: &Value) -> Vec<String> {
    contact["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)).collect()
}

/// The tasks about contact `id`.
async fn tasks(world: &World, id: &str) -> Vec<Value> {
    world.get(&format!("/v1/tasks?contact_id={id}")).await["items"].as_array().cloned().unwrap_or_default()
}

/// Webhooks on `/hooks/{name}` about contact `id`, in arrival order.
fn hooks_for(world: &World, name: &str, id: &str) -> Vec<ReceivedHook> {
    world.hooks(name).into_iter().filter(|h| h.body["contact"]["id"] == id).collect()
}

/// The subjects of `hooks`.
fn subjects(hooks: &[ReceivedHook]) -> Vec<String> {
    hooks.iter().map(|h| h.body["subject"].as_str().unwrap_or_default().to_string()).collect()
}

/// Wait until run `id` is parked on delay step `step`; returns the run.
///
/// The cursor alone does not say so: after each step the run is saved as
/// `waiting` on the next step, due at once. A delay's first visit records
/// its end in the run's state, and only then is `wake_at` the delay's.
async fn wait_delay(world: &World, id: &str, step: &str) -> Value {
    world
        .wait_run_state(id, &format!("waiting on {step}"), |r| {
            r["status"] == "waiting"
                && r["cursor"] == step
                && r["state"]["delay_step"] == step
                && r["wake_at"].as_i64().is_some()
                && r["wake_at"] == r["state"]["delay_until"]
        })
        .await
}

/// Wait until run `id` has ended (any status but `waiting`).
async fn wait_ended(world: &World, id: &str) -> Value {
    world.wait_run_state(id, "ended", |r| r["status"] != "waiting").await
}

/// The records of step `step_id` in `run` (one per step: a later visit of a
/// delay, or a retry, updates it).
fn steps<'r>(run: &'r Value, step_id: &str) -> Vec<&'r Value> {
    run["steps"].as_array().into_iter().flatten().filter(|s| s["step_id"] == step_id).collect()
}

/// The one `ok` record of step `step_id` in `run`.
fn ok_step<'r>(run: &'r Value, step_id: &str) -> &'r Value {
    let ok: Vec<_> = steps(run, step_id).into_iter().filter(|s| s["status"] == "ok").collect();
    assert_eq!(ok.len(), 1, "step {step_id} should have completed once: {run}");
    ok[0]
}

/// Wait until the pipeline has processed an event of `contact` that
/// occurred at `at` (its last activity has reached it).
async fn wait_activity(world: &World, id: &str, at: i64) -> Value {
    wait_contact(world, id, &format!("last activity at {at}"), |c| c["last_activity_at"].as_i64() >= Some(at)).await
}

/// Set the clock to `at` and wait until schedule workflow `workflow` has
/// fired whatever was due, i.e. its next firing is `next`.
async fn set_clock_and_fire(world: &World, workflow: &str, at: i64, next: i64) {
    world.clock.set(at);
    wait_next_fire(world, workflow, next).await;
}

/// Wait until schedule workflow `workflow` fires next at `next` (it records
/// that after enrolling the segment of the firing before).
async fn wait_next_fire(world: &World, workflow: &str, next: i64) {
    wait_for(PATIENCE, || async {
        let w = world.get(&format!("/v1/workflows/{workflow}")).await;
        Ok((w["workflow"]["next_fire_at"].as_i64() == Some(next)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("the schedule never moved on to {}: {e}", berlin(next)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leads_get_an_owner_and_five_welcome_emails_and_clickers_a_call_task_on_sqlite() {
    let db = TempSqlite::new();
    welcome_new_leads(&db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leads_get_an_owner_and_five_welcome_emails_and_clickers_a_call_task_on_postgres() {
    let db = TempPostgres::create().await.expect("PostgreSQL for tests");
    welcome_new_leads(db.url()).await;
}

/// Scenario (a) on the store at `database_url`.
async fn welcome_new_leads(database_url: &str) {
    let world = World::start(database_url).await;
    let welcome = world.acme.activate("a").await.unwrap();
    // Monday 09:00 in Berlin.
    let t0 = world.clock.now();
    assert_eq!(t0, MONDAY_0800_UTC);
    let ada = world
        .contact(json!({"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace", "properties": {"region": "EMEA"}}))
        .await;
    let bo =
        world.contact(json!({"email": "bo@example.com", "first_name": "Bo", "properties": {"region": "NA"}})).await;
    let ada_run = world.wait_run(&welcome, &ada).await;
    let bo_run = world.wait_run(&welcome, &bo).await;
    let runs = [&ada_run, &bo_run];

    for day in 0..5i64 {
        if day > 0 {
            // Both runs wait for 09:00 Berlin on the next calendar day.
            for run in runs {
                let parked = wait_delay(&world, run, &format!("wait-{day}")).await;
                let wake_at = parked["wake_at"].as_i64().unwrap();
                assert_eq!(wake_at, t0 + day * DAY, "wait-{day} of {run} ends at {}", berlin(wake_at));
            }
            if day == 1 {
                // Nothing is sent before the timer is due.
                world.settle().await;
                assert_eq!(hooks_for(&world, "email", &ada).len(), 1);
            }
            world.jump_to_timer(&ada_run).await;
        }
        // Day `day`'s email reaches both leads, now, at 09:00 in Berlin.
        world.wait_hooks("email", 2 * (day as usize + 1)).await;
        assert_eq!(hooks_for(&world, "email", &ada).len(), day as usize + 1);
        assert_eq!(hooks_for(&world, "email", &bo).len(), day as usize + 1);
        assert!(berlin(world.clock.now()).contains("T09:00:00+01:00"), "{}", berlin(world.clock.now()));
        if day == 0 {
            let owner = |c: &Value| c["owner"].as_str().map(str::to_string);
            let a = wait_contact(&world, &ada, "an owner", |c| owner(c).is_some()).await;
            assert_eq!(owner(&a).as_deref(), Some("alice@acme.test"), "EMEA goes to alice");
            let b = wait_contact(&world, &bo, "an owner", |c| owner(c).is_some()).await;
            assert_eq!(owner(&b).as_deref(), Some("bob@acme.test"), "NA goes to bob");
        }
        if day == 1 {
            // Ada opens the second email and clicks two of its links.
            let before = contact(&world, &ada).await["score"].as_f64().unwrap();
            world.event(&ada, "email_opened", json!({})).await;
            world.event(&ada, "email_clicked", json!({"url": "https://acme.test/features"})).await;
            world.event(&ada, "email_clicked", json!({"url": "https://acme.test/customers"})).await;
            let after = wait_contact(&world, &ada, "score 35", |c| c["score"].as_f64() == Some(35.0)).await;
            assert!(before < 35.0, "the clicks raised the score from {before}: {after}");
        }
    }

    let ada_done = wait_ended(&world, &ada_run).await;
    let bo_done = wait_ended(&world, &bo_run).await;
    for done in [&ada_done, &bo_done] {
        assert_eq!(done["status"], "completed", "{done}");
    }

    // Ada's five emails: the subjects in order, signed, keyed by run and step,
    // each sent at 09:00 Berlin on its own day.
    let emails = hooks_for(&world, "email", &ada);
    assert_eq!(
        subjects(&emails),
        [
            "Welcome to Acme, Ada",
            "Ada, three things to try",
            "How teams like yours use Acme",
            "Your questions, answered",
            "Ready when you are, Ada"
        ]
    );
    for (i, email) in emails.iter().enumerate() {
        let step = format!("welcome-{}", i + 1);
        assert!(email.signature_ok, "{step}: the signature verifies");
        assert_eq!(email.body["idempotency_key"], format!("run:{ada_run}:{step}"));
        let sent_at = ok_step(&ada_done, &step)["started_at"].as_i64().unwrap();
        assert_eq!(sent_at, t0 + i as i64 * DAY, "{step} was sent at {}", berlin(sent_at));
    }
    assert!(hooks_for(&world, "email", &bo).iter().all(|h| h.signature_ok));

    // Ada clicked and scored: the engaged branch, a call task for her owner.
    assert_eq!(ok_step(&ada_done, "engaged")["output"]["branch"], "then");
    let ada_tasks = tasks(&world, &ada).await;
    assert_eq!(ada_tasks.len(), 1, "{ada_tasks:?}");
    assert_eq!(ada_tasks[0]["title"], "Call Ada now: clicked the welcome emails, score 35");
    assert_eq!(ada_tasks[0]["assignee"], "alice@acme.test");
    assert!(!tags(&contact(&world, &ada).await).contains(&"welcome-no-click".to_string()));

    // Bo never clicked: tagged, no task.
    assert_eq!(ok_step(&bo_done, "engaged")["output"]["branch"], "else");
    assert!(tags(&contact(&world, &bo).await).contains(&"welcome-no-click".to_string()));
    assert!(tasks(&world, &bo).await.is_empty());

    // The workflow's steps are on Ada's timeline.
    let timeline = world.get(&format!("/v1/contacts/{ada}/timeline")).await;
    let on_timeline: Vec<&str> = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "workflow_step")
        .filter_map(|e| e["step_id"].as_str())
        .collect();
    for step in ["assign-owner", "welcome-1", "welcome-2", "welcome-3", "welcome-4", "welcome-5", "engaged", "call-now"]
    {
        assert!(on_timeline.contains(&step), "{step} is on the timeline: {on_timeline:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pricing_views_in_a_week_tag_the_contact_and_create_a_follow_up_task() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let pricing = world.acme.activate("b").await.unwrap();
    let t0 = world.clock.now();
    let pia = world.contact(json!({"email": "pia@example.com", "first_name": "Pia", "owner": "alice@acme.test"})).await;
    let quinn =
        world.contact(json!({"email": "quinn@example.com", "first_name": "Quinn", "owner": "bob@acme.test"})).await;

    // Monday, Wednesday, Friday: Pia views the pricing page each time, Quinn
    // only the first two times.
    let score = |c: &Value| c["score"].as_f64().unwrap_or_default();
    let (mut pia_score, mut quinn_score) = (0.0, 0.0);
    for (i, day) in [0, 2, 4].into_iter().enumerate() {
        world.clock.set(t0 + day * DAY);
        world.event(&pia, "page_viewed", json!({"url": "https://acme.test/pricing"})).await;
        if i < 2 {
            world.event(&quinn, "page_viewed", json!({"url": "https://acme.test/pricing?plan=pro"})).await;
            let c = wait_contact(&world, &quinn, "a higher score", |c| score(c) > quinn_score).await;
            quinn_score = score(&c);
        }
        // Each view raises the score (the scorer runs on every event).
        let c = wait_contact(&world, &pia, "a higher score", |c| score(c) > pia_score).await;
        pia_score = score(&c);
        if i < 2 {
            // Enrollments commit with the batch's score, so the new score
            // means the trigger has had its say.
            assert!(world.runs(&pricing, &pia).await.is_empty(), "{} views enroll nobody", i + 1);
        }
    }

    let run = world.wait_run(&pricing, &pia).await;
    let done = wait_ended(&world, &run).await;
    assert_eq!(done["status"], "completed", "{done}");
    let c = contact(&world, &pia).await;
    assert!(tags(&c).contains(&"pricing-interest".to_string()), "{c}");
    let pia_tasks = tasks(&world, &pia).await;
    assert_eq!(pia_tasks.len(), 1, "{pia_tasks:?}");
    // The run is recorded in the same transaction as the score the third
    // view caused, so its task always shows that score.
    let title = pia_tasks[0]["title"].as_str().unwrap();
    assert_eq!(title, format!("Follow up with Pia: 3 pricing page views (score {pia_score})"));
    assert_eq!(pia_tasks[0]["assignee"], "alice@acme.test");

    // Two views only: no run, no tag, no task.
    world.settle().await;
    assert!(world.runs(&pricing, &quinn).await.is_empty());
    assert!(!tags(&contact(&world, &quinn).await).contains(&"pricing-interest".to_string()));
    assert!(tasks(&world, &quinn).await.is_empty());
    assert_eq!(world.runs(&pricing, &pia).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_schedule_reactivates_contacts_idle_for_ninety_days_and_marks_the_silent_dormant() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let reactivate = world.acme.activate("c").await.unwrap();
    // Activated at Monday 09:00 Berlin: the first firing is Tuesday 09:00.
    let t0 = world.clock.now();
    let fires = |day: i64| t0 + day * DAY;
    let w = world.get(&format!("/v1/workflows/{reactivate}")).await;
    assert_eq!(w["workflow"]["next_fire_at"], fires(1));

    // Everybody is created at 10:00, so that 90 days later, at 09:00, nobody
    // has been idle for 90 days yet.
    let created = t0 + HOUR_MS;
    world.clock.set(created);
    let mut ids = BTreeMap::new();
    for name in ["Ivy", "Dora", "Rex"] {
        let email = format!("{}@example.com", name.to_lowercase());
        let id = world.contact(json!({"email": email, "first_name": name, "owner": "alice@acme.test"})).await;
        wait_activity(&world, &id, created).await;
        ids.insert(name, id);
    }
    let (ivy, dora, rex) = (&ids["Ivy"], &ids["Dora"], &ids["Rex"]);

    // Day 60: Rex is active, the others are not.
    set_clock_and_fire(&world, &reactivate, fires(60), fires(61)).await;
    world.event(rex, "page_viewed", json!({"url": "https://acme.test/blog"})).await;
    wait_activity(&world, rex, fires(60)).await;

    // Day 90 at 09:00: idle for 89 days and 23 hours, nobody enrolls.
    set_clock_and_fire(&world, &reactivate, fires(90), fires(91)).await;
    // Day 91, a minute before 09:00: idle for more than 90 days, but the
    // schedule has not fired yet.
    world.clock.set(fires(91) - MINUTE);
    world.settle().await;
    for id in [ivy, dora, rex] {
        assert!(world.runs(&reactivate, id).await.is_empty(), "nobody is enrolled before 09:00");
    }
    assert!(world.hooks("email").is_empty());

    // 09:00: the idle contacts get the reactivation email, Rex does not.
    set_clock_and_fire(&world, &reactivate, fires(91), fires(92)).await;
    let ivy_run = world.wait_run(&reactivate, ivy).await;
    let dora_run = world.wait_run(&reactivate, dora).await;
    for run in [&ivy_run, &dora_run] {
        let parked = wait_delay(&world, run, "wait-for-reply").await;
        assert_eq!(parked["wake_at"], fires(98), "a week to reply");
        let sent = ok_step(&parked, "reactivation-email")["started_at"].as_i64().unwrap();
        assert_eq!(sent, fires(91), "sent at {}", berlin(sent));
    }
    assert!(berlin(fires(91)).contains("T09:00:00+01:00"));
    let emails = world.wait_hooks("email", 2).await;
    assert_eq!(subjects(&hooks_for(&world, "email", ivy)), ["We miss you, Ivy"]);
    assert_eq!(subjects(&hooks_for(&world, "email", dora)), ["We miss you, Dora"]);
    assert!(emails.iter().all(|h| h.signature_ok));

    // Ivy replies two hours later; Dora stays silent.
    let replied = fires(91) + 2 * HOUR_MS;
    world.clock.set(replied);
    world.event(ivy, "email_replied", json!({"subject": "Re: We miss you, Ivy"})).await;
    wait_activity(&world, ivy, replied).await;

    // A week after the email.
    world.jump_to_timer(&ivy_run).await;
    assert_eq!(world.clock.now(), fires(98));
    let ivy_done = wait_ended(&world, &ivy_run).await;
    let dora_done = wait_ended(&world, &dora_run).await;
    assert_eq!(ivy_done["status"], "completed", "{ivy_done}");
    assert_eq!(dora_done["status"], "completed", "{dora_done}");
    assert_eq!(ok_step(&ivy_done, "replied")["output"]["branch"], "then");
    assert_eq!(ok_step(&dora_done, "replied")["output"]["branch"], "else");

    let ivy_now = contact(&world, ivy).await;
    assert!(tags(&ivy_now).contains(&"reactivated".to_string()), "{ivy_now}");
    assert!(!tags(&ivy_now).contains(&"dormant".to_string()), "{ivy_now}");
    let ivy_tasks = tasks(&world, ivy).await;
    assert_eq!(ivy_tasks.len(), 1, "{ivy_tasks:?}");
    assert_eq!(ivy_tasks[0]["title"], "Ivy replied to the reactivation email: reach out");
    assert_eq!(ivy_tasks[0]["assignee"], "alice@acme.test");

    let dora_now = contact(&world, dora).await;
    assert!(tags(&dora_now).contains(&"dormant".to_string()), "{dora_now}");
    assert!(!tags(&dora_now).contains(&"reactivated".to_string()), "{dora_now}");
    assert!(tasks(&world, dora).await.is_empty());

    // The recently active contact never enrolled, and nobody enrolled twice
    // (the schedule fired again at day 98, with both runs in flight or done).
    wait_next_fire(&world, &reactivate, fires(99)).await;
    world.settle().await;
    assert!(world.runs(&reactivate, rex).await.is_empty());
    assert!(hooks_for(&world, "email", rex).is_empty());
    assert_eq!(world.runs(&reactivate, ivy).await.len(), 1);
    assert_eq!(world.runs(&reactivate, dora).await.len(), 1);
    assert_eq!(world.hooks("email").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_the_mql_score_hands_the_lead_to_sales_exactly_once() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let hand_off = world.acme.activate("d").await.unwrap();
    let max = world
        .contact(json!({"email": "max@example.com", "first_name": "Max", "last_name": "Mustermann", "owner": "alice@acme.test"}))
        .await;
    assert_eq!(contact(&world, &max).await["lifecycle_stage"], "lead");

    // Three pricing views: 3 × (20 + 2) = 66, over the MQL threshold of 50.
    for _ in 0..3 {
        world.event(&max, "page_viewed", json!({"url": "https://acme.test/pricing"})).await;
    }
    let c = wait_contact(&world, &max, "score 66", |c| c["score"].as_f64() == Some(66.0)).await;
    assert_eq!(c["lifecycle_stage"], "mql", "{c}");

    let run = world.wait_run(&hand_off, &max).await;
    let done = wait_ended(&world, &run).await;
    assert_eq!(done["status"], "completed", "{done}");

    let max_tasks = tasks(&world, &max).await;
    assert_eq!(max_tasks.len(), 1, "{max_tasks:?}");
    assert_eq!(max_tasks[0]["title"], "Call Max now: MQL at score 66");
    assert_eq!(max_tasks[0]["assignee"], "alice@acme.test");
    let sales = world.wait_hooks("sales", 1).await;
    assert_eq!(sales.len(), 1);
    assert!(sales[0].signature_ok, "the sales webhook is signed");
    assert_eq!(sales[0].body["subject"], "New MQL: Max Mustermann");
    assert_eq!(sales[0].body["body"], "max@example.com reached score 66; owner alice@acme.test.");
    assert_eq!(sales[0].body["contact"]["lifecycle_stage"], "mql");
    assert_eq!(sales[0].body["idempotency_key"], format!("run:{run}:notify-sales"));
    assert!(tags(&contact(&world, &max).await).contains(&"sales-ready".to_string()));

    // More interest later: the score rises, but the stage does not change
    // again, so there is no second hand-off.
    world.clock.advance(DAY);
    for _ in 0..3 {
        world.event(&max, "page_viewed", json!({"url": "https://acme.test/pricing"})).await;
    }
    wait_activity(&world, &max, world.clock.now()).await;
    let c = wait_contact(&world, &max, "a higher score", |c| c["score"].as_f64() > Some(100.0)).await;
    assert_eq!(c["lifecycle_stage"], "mql");
    world.settle().await;
    assert_eq!(world.runs(&hand_off, &max).await.len(), 1);
    assert_eq!(world.hooks("sales").len(), 1);
    assert_eq!(tasks(&world, &max).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_churn_risk_starts_retention_and_a_recovery_ends_it_before_the_second_email() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let churn = world.acme.activate("e").await.unwrap();
    let t0 = world.clock.now();
    let cleo = world
        .contact(json!({"email": "cleo@example.com", "first_name": "Cleo", "owner": "alice@acme.test", "lifecycle_stage": "customer"}))
        .await;
    let health = |c: &Value| c["properties"]["health_score"].as_f64();
    wait_contact(&world, &cleo, "health 100", |c| health(c) == Some(100.0)).await;

    // Trouble: a support ticket (100 - 30), then a failed payment (- 40).
    world.event(&cleo, "support_ticket_opened", json!({"subject": "Arm calibration fails"})).await;
    wait_contact(&world, &cleo, "health 70", |c| health(c) == Some(70.0)).await;
    assert!(world.runs(&churn, &cleo).await.is_empty(), "70 is no churn risk");
    world.event(&cleo, "payment_failed", json!({"amount": 1200})).await;
    wait_contact(&world, &cleo, "health 30", |c| health(c) == Some(30.0)).await;

    // Customer success is warned and the owner gets a retention call.
    let run = world.wait_run(&churn, &cleo).await;
    let parked = wait_delay(&world, &run, "wait-1").await;
    let cs = world.wait_hooks("cs", 1).await;
    assert!(cs[0].signature_ok);
    assert_eq!(cs[0].body["subject"], "Churn risk: cleo@example.com");
    assert_eq!(cs[0].body["body"], "Health score fell to 30.");
    let cleo_tasks = tasks(&world, &cleo).await;
    assert_eq!(cleo_tasks.len(), 1, "{cleo_tasks:?}");
    assert_eq!(cleo_tasks[0]["title"], "Retention call with Cleo (health 30)");
    assert_eq!(cleo_tasks[0]["assignee"], "alice@acme.test");

    // Retention email 1: two business days later at 10:00, Wednesday.
    let wake_at = parked["wake_at"].as_i64().unwrap();
    assert_eq!(wake_at, t0 + 2 * DAY + HOUR_MS, "wait-1 ends at {}", berlin(wake_at));
    world.settle().await;
    assert!(world.hooks("email").is_empty(), "no email before the delay ends");
    world.jump_to_timer(&run).await;
    let emails = world.wait_hooks("email", 1).await;
    assert_eq!(subjects(&emails), ["Cleo, can we help?"]);
    assert!(emails[0].signature_ok);
    let parked = wait_delay(&world, &run, "wait-2").await;
    // Three business days after Wednesday 10:00: Monday 10:00.
    let wake_at = parked["wake_at"].as_i64().unwrap();
    assert_eq!(wake_at, t0 + 7 * DAY + HOUR_MS, "wait-2 ends at {}", berlin(wake_at));

    // Thursday: Cleo is back, six logins lift health to 30 + 6 × 5 = 60.
    world.clock.set(t0 + 3 * DAY);
    for _ in 0..6 {
        world.event(&cleo, "logged_in", json!({})).await;
    }
    wait_contact(&world, &cleo, "health 60", |c| health(c) == Some(60.0)).await;

    // The goal is met: the run exits at once, Thursday, without waiting for
    // its Monday timer, and the second retention email is never sent.
    let done = wait_ended(&world, &run).await;
    assert_eq!(done["status"], "exited", "{done}");
    assert_eq!(done["exit_reason"], "goal:health-recovered");
    assert_eq!(done["finished_at"].as_i64(), Some(t0 + 3 * DAY), "{done}");
    assert!(steps(&done, "retention-2").is_empty(), "{done}");
    world.clock.advance(7 * DAY);
    world.settle().await;
    assert_eq!(subjects(&world.hooks("email")), ["Cleo, can we help?"]);
    assert_eq!(world.hooks("cs").len(), 1);
    assert_eq!(world.runs(&churn, &cleo).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_line_split_sends_each_subscriber_the_email_of_its_recorded_variant() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let split = world.acme.activate("f").await.unwrap();
    const SUBSCRIBERS: usize = 40;
    let mut names = BTreeMap::new();
    for i in 0..SUBSCRIBERS {
        let name = format!("Reader{i:02}");
        let id = world.contact(json!({"email": format!("reader{i:02}@example.com"), "first_name": name})).await;
        names.insert(id, name);
    }
    let events: Vec<Value> =
        names.keys().map(|id| json!({"contact_id": id, "kind": "newsletter_subscribed", "properties": {}})).collect();
    world.client().ok(Method::POST, "/v1/events", Some(json!({"events": events}))).await.unwrap();

    // 40 runs, each completed with its variant recorded.
    let path = format!("/v1/runs?workflow_id={split}&status=completed&limit=100");
    let runs = wait_for(PATIENCE, || async {
        let items = world.get(&path).await["items"].as_array().cloned().unwrap_or_default();
        Ok((items.len() >= SUBSCRIBERS).then_some(items))
    })
    .await
    .expect("every subscriber's run completes");
    assert_eq!(runs.len(), SUBSCRIBERS);
    let mut variant_of = BTreeMap::new();
    for run in &runs {
        let variant = run["variants"]["subject-test"].as_str().unwrap_or_else(|| panic!("no variant: {run}"));
        assert!(variant == "A" || variant == "B", "{run}");
        let contact = run["contact_id"].as_str().unwrap().to_string();
        assert!(variant_of.insert(contact, variant.to_string()).is_none(), "one run per contact");
    }
    assert_eq!(variant_of.len(), SUBSCRIBERS);
    let runs_per_variant = |v: &str| variant_of.values().filter(|x| *x == v).count();
    assert!(runs_per_variant("A") > 0 && runs_per_variant("B") > 0, "both variants occur: {variant_of:?}");

    // Exactly one email per subscriber, with the subject of its variant.
    world.wait_hooks("email", SUBSCRIBERS).await;
    world.settle().await;
    let emails = world.hooks("email");
    assert_eq!(emails.len(), SUBSCRIBERS);
    let mut emails_per_variant: BTreeMap<String, usize> = BTreeMap::new();
    for (id, variant) in &variant_of {
        let got = hooks_for(&world, "email", id);
        assert_eq!(got.len(), 1, "one email for {id}");
        let expected = match variant.as_str() {
            "A" => "Your November robotics digest".to_string(),
            _ => format!("{}, 5 robots you missed this month", names[id]),
        };
        assert_eq!(subjects(&got), [expected]);
        assert!(got[0].signature_ok);
        *emails_per_variant.entry(variant.clone()).or_default() += 1;
    }
    let subject_a = emails.iter().filter(|h| h.body["subject"] == "Your November robotics digest").count();
    assert_eq!(subject_a, runs_per_variant("A"));
    assert_eq!(emails.len() - subject_a, runs_per_variant("B"));
    assert_eq!(emails_per_variant.get("A").copied().unwrap_or(0), runs_per_variant("A"));
}
