//! Changing the version an install runs while the server works: automatic
//! upgrades on upload behind a health check (describe() and the optional
//! `cairn:health` self-test), refused versions that leave the old one in
//! place, one-call rollback, automatic rollback of a version whose calls
//! start failing, and swaps under a continuous event load that lose and
//! fail nothing, counted.
//!
//! The `versioned-scorer` test guests score every contact with their major
//! version (1.0.0 scores 1, ...); version 3.0.0 fails its own self-test and
//! 4.0.0 passes it but traps on every call. As the third scorer of the demo
//! tenant, the install writes the `versioned_score` property, so which
//! version answered shows on the contact.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn::catalog::guest_bytes;
use cairn::demo::wait_for;
use cairn::store::testing::TempSqlite;
use common::{PATIENCE, World};
use reqwest::Method;
use serde_json::{Value, json};

/// Upload `guest`; the response (with `upgrades`).
async fn upload(world: &World, guest: &str) -> Value {
    let (status, uploaded) = world.client().upload(guest_bytes(guest).unwrap()).await.unwrap();
    assert!(status == 201 || status == 200, "{uploaded}");
    uploaded
}

/// Install version `version_id` following new uploads; its id.
async fn install_following(world: &World, version_id: &Value) -> String {
    let body = json!({"plugin_version_id": version_id, "config": {}, "auto_upgrade": true});
    let install = world.client().ok(Method::POST, "/v1/installs", Some(body)).await.unwrap();
    assert_eq!(install["auto_upgrade"], true, "{install}");
    install["id"].as_str().unwrap().to_string()
}

/// Send an event and wait until the install's version scored the contact `n`.
async fn scored(world: &World, contact: &str, n: f64) {
    world.event(contact, "page_viewed", json!({})).await;
    let path = format!("/v1/contacts/{contact}");
    wait_for(PATIENCE, || async {
        let c = world.get(&path).await;
        Ok((c["properties"]["versioned_score"] == json!(n)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("never scored {n}: {e}"));
}

fn actions(history: &Value) -> Vec<String> {
    history["items"].as_array().unwrap().iter().map(|c| c["action"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_upgrade_following_installs_unless_the_health_check_fails_and_rollback_is_one_call() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let v1 = upload(&world, "guest-versioned-1").await;
    // The same bytes again are the same version: 200, not a new one.
    let (status, again) = world.client().upload(guest_bytes("guest-versioned-1").unwrap()).await.unwrap();
    assert_eq!((status, &again["id"]), (200, &v1["id"]), "{again}");
    let id = install_following(&world, &v1["id"]).await;
    let contact = world.contact(json!({"email": "follow@example.com"})).await;
    scored(&world, &contact, 1.0).await;

    // A newer upload moves the install, through its (passing) health check.
    let v2 = upload(&world, "guest-versioned-2").await;
    assert_eq!(v2["wit"], json!(["cairn:plugin@0.1.0", "cairn:health@0.1.0"]), "{v2}");
    assert_eq!(v2["upgrades"], json!([{"install_id": id, "upgraded": true, "reason": null}]), "{v2}");
    scored(&world, &contact, 2.0).await;

    // Version 3 fails its self-test: refused at upload and when asked for
    // explicitly; the install stays on 2 and keeps scoring.
    let v3 = upload(&world, "guest-versioned-3").await;
    let outcome = &v3["upgrades"][0];
    assert_eq!(outcome["upgraded"], false, "{v3}");
    let reason = outcome["reason"].as_str().unwrap();
    assert!(reason.contains("self-test failed: scores a sample contact 2: expected 2, scored 3"), "{reason}");
    assert!(reason.contains("stays on 2.0.0"), "{reason}");
    let path = format!("/v1/installs/{id}");
    let (status, body) =
        world.client().call(Method::PATCH, &path, Some(json!({"plugin_version_id": v3["id"]}))).await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("failed its health check"), "{body}");
    assert_eq!(world.get(&path).await["plugin_version"], "2.0.0");
    scored(&world, &contact, 2.0).await;

    // The history says what happened, newest first, with the checks.
    let history = world.get(&format!("{path}/history")).await;
    assert_eq!(actions(&history), ["refused", "refused", "auto-upgraded"], "{history}");
    assert_eq!(history["items"][0]["checks"][0]["passed"], false, "{history}");
    assert_eq!(history["items"][2]["from_version"], "1.0.0");

    // One call puts it back on the version before the last change.
    let rolled = world.client().ok(Method::POST, &format!("{path}/rollback"), None).await.unwrap();
    assert_eq!(rolled["plugin_version"], "1.0.0", "{rolled}");
    scored(&world, &contact, 1.0).await;
    assert_eq!(actions(&world.get(&format!("{path}/history")).await)[0], "rolled-back");

    // Another tenant sees none of it.
    let other = world.admin().ok(Method::POST, "/v1/tenants", Some(json!({"name": "Other"}))).await.unwrap();
    let other = cairn::demo::Client::new(&world.server.url(), other["api_key"].as_str().unwrap());
    let (status, _) = other.call(Method::GET, &format!("{path}/history"), None).await.unwrap();
    assert_eq!(status, 404);
    let (status, _) = other.call(Method::POST, &format!("{path}/rollback"), None).await.unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_starts_failing_after_the_swap_is_rolled_back_automatically() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let v2 = upload(&world, "guest-versioned-2").await;
    let id = install_following(&world, &v2["id"]).await;
    let first = world.contact(json!({"email": "first@example.com"})).await;
    scored(&world, &first, 2.0).await;

    // Version 4 passes its self-test, so it is swapped in...
    let v4 = upload(&world, "guest-versioned-4").await;
    assert_eq!(v4["upgrades"][0]["upgraded"], true, "{v4}");
    // ...and traps on every real call: after 5 calls (all failed) it is
    // rolled back to 2, long before the breaker's 20 would disable it.
    for i in 0..8 {
        let c = world.contact(json!({"email": format!("p{i}@example.com")})).await;
        world.event(&c, "page_viewed", json!({})).await;
    }
    let path = format!("/v1/installs/{id}");
    let install = wait_for(PATIENCE, || async {
        let i = world.get(&path).await;
        Ok((i["plugin_version"] == "2.0.0").then_some(i))
    })
    .await
    .expect("rolled back to 2.0.0");
    assert_eq!(install["enabled"], true, "{install}");
    let history = world.get(&format!("{path}/history")).await;
    assert_eq!(actions(&history), ["auto-rolled-back", "auto-upgraded"], "{history}");
    let reason = history["items"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("versioned-scorer 4.0.0 failed 5 of 5 calls"), "{reason}");
    assert!(reason.contains("trap") && reason.contains("version 4 is broken"), "{reason}");
    assert!(reason.ends_with("back on 2.0.0"), "{reason}");
    // Back on 2, the install scores again.
    scored(&world, &first, 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_versions_under_a_continuous_load_loses_and_fails_nothing() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let v1 = upload(&world, "guest-versioned-1").await;
    let v2 = upload(&world, "guest-versioned-2").await;
    let install = world
        .client()
        .ok(Method::POST, "/v1/installs", Some(json!({"plugin_version_id": v1["id"], "config": {}})))
        .await
        .unwrap();
    let id = install["id"].as_str().unwrap().to_string();
    let mut contacts = Vec::new();
    for i in 0..20 {
        contacts.push(world.contact(json!({"email": format!("load{i}@example.com")})).await);
    }

    // One task sends events without pause; this one swaps the version back
    // and forth ten times meanwhile.
    const EVENTS: usize = 600;
    let sender = {
        let client = world.client().clone();
        let contacts = contacts.clone();
        tokio::spawn(async move {
            let mut accepted = 0;
            for n in 0..EVENTS {
                let body =
                    json!({"contact_id": contacts[n % contacts.len()], "kind": "page_viewed", "properties": {"n": n}});
                let (status, body) = client.call(Method::POST, "/v1/events", Some(body)).await.unwrap();
                assert_eq!(status, 202, "{body}");
                accepted += 1;
            }
            accepted
        })
    };
    let path = format!("/v1/installs/{id}");
    let mut swaps = 0;
    while !sender.is_finished() || swaps < 10 {
        let target = if swaps % 2 == 0 { &v2["id"] } else { &v1["id"] };
        let swapped =
            world.client().ok(Method::PATCH, &path, Some(json!({"plugin_version_id": target}))).await.unwrap();
        assert_eq!(&swapped["plugin_version_id"], target);
        swaps += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let accepted = sender.await.unwrap();
    assert_eq!(accepted, EVENTS);

    // Every accepted event is stored and processed (counted per contact
    // in the store: score changes add property_changed events of their
    // own, so the global counter is not the measure)...
    let tenant = world.get("/v1/tenant").await["id"].as_str().unwrap().to_string();
    let store = &world.server.state.store;
    let kinds = ["page_viewed".to_string()];
    let done = wait_for(PATIENCE, || async {
        let mut stored = 0;
        let mut pending = 0;
        for c in &contacts {
            let events = store.recent_events(&tenant, c, &kinds, 0, 500).await?;
            stored += events.len();
            pending += events.iter().filter(|e| !e.processed).count();
        }
        assert!(stored <= EVENTS, "{stored} events stored for {EVENTS} sent");
        Ok((stored == EVENTS && pending == 0).then_some(()))
    })
    .await;
    assert!(done.is_ok(), "not every accepted event was processed: {done:?}");
    // ...and no call of the install failed, on either version.
    let stats = world.get(&path).await["stats"].clone();
    let failed: u64 = stats["failed"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(failed, 0, "{stats}");
    assert!(stats["ok"].as_u64().unwrap() > 0, "{stats}");
    let invocations = world.get(&format!("/v1/invocations?install_id={id}&limit=1000")).await;
    let failures = invocations["items"].as_array().unwrap().iter().filter(|i| i["ok"] == false).count();
    assert_eq!(failures, 0, "{invocations}");
    // Every contact was scored by one version or the other.
    for c in &contacts {
        let score = world.get(&format!("/v1/contacts/{c}")).await["properties"]["versioned_score"].clone();
        assert!(score == json!(1.0) || score == json!(2.0), "{c}: {score}");
    }
    eprintln!("{EVENTS} events accepted and processed, {swaps} swaps, 0 failed calls");
}
