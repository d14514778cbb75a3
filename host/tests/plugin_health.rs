//! Plugin installs over their life: per-install health (latency
//! percentiles and fuel in `GET /v1/installs/{id}` and `/metrics`), the
//! circuit breaker that disables an install after repeated failures with
//! the reason visible until an admin enables it again, and explicit
//! upgrades and rollbacks between versions of a plugin.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn::catalog::guest_bytes;
use cairn::demo::wait_for;
use cairn::store::testing::TempSqlite;
use common::{PATIENCE, World};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scorer_that_keeps_trapping_is_disabled_with_its_reason_until_an_admin_enables_it() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let client = world.client();
    let (status, uploaded) = client.upload(guest_bytes("guest-panic").unwrap()).await.unwrap();
    assert!(status == 201 || status == 200, "{uploaded}");
    let install = client
        .ok(Method::POST, "/v1/installs", Some(json!({"plugin_version_id": uploaded["id"], "config": {}})))
        .await
        .unwrap();
    let id = install["id"].as_str().unwrap().to_string();

    // 25 contacts, one event each: the broken scorer is called once per
    // contact and traps every time; the default breaker opens at 20.
    for i in 0..25 {
        let contact = world.contact(json!({"email": format!("c{i}@example.com")})).await;
        world.event(&contact, "page_viewed", json!({"url": "/blog"})).await;
    }
    let tripped = wait_for(PATIENCE, || async {
        let i = world.get(&format!("/v1/installs/{id}")).await;
        Ok((i["enabled"] == false).then_some(i))
    })
    .await
    .expect("the breaker disables the install");
    let reason = tripped["disabled_reason"].as_str().unwrap();
    assert!(reason.starts_with("circuit breaker: 20 failed calls in a row"), "{reason}");
    assert!(reason.contains("trap") && reason.contains("deliberate panic"), "{reason}");

    // The healthy scorer kept scoring all along, with its latency recorded.
    let rules = world.acme.installs["rules_scorer"].clone();
    // The breaker can trip before the last events reach the pipeline, so
    // wait for all 25 scorings rather than read the count once.
    let healthy = wait_for(PATIENCE, || async {
        let i = world.get(&format!("/v1/installs/{rules}")).await;
        Ok((i["stats"]["ok"].as_u64().unwrap_or(0) >= 25).then_some(i))
    })
    .await
    .expect("the healthy scorer scores every contact");
    let stats = &healthy["stats"];
    assert_eq!(stats["consecutive_failures"], 0);
    let (p50, p99) = (stats["latency_us"]["p50"].as_u64().unwrap(), stats["latency_us"]["p99"].as_u64().unwrap());
    assert!(p50 > 0 && p50 <= p99, "{stats}");
    assert!(stats["fuel_per_call"].as_u64().unwrap() > 0, "{stats}");
    // Per-install series go to the admin key (and a tenant's key, for its own).
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", world.server.url()))
        .bearer_auth(common::ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "cairn_plugin_call_duration_seconds_bucket{{install=\"{rules}\",plugin=\"rules-scorer\",le=\"+Inf\"}}"
        )),
        "{metrics}"
    );

    // Disabled, it is no longer called: more events add no failures. (Calls
    // that were already running when it tripped still finish and count.)
    world.settle().await;
    let failures = || async {
        let invocations = world.get(&format!("/v1/invocations?install_id={id}&limit=1000")).await;
        invocations["items"].as_array().unwrap().len()
    };
    let before = failures().await;
    assert!(before >= 20, "{before}");
    let more = world.contact(json!({"email": "late@example.com"})).await;
    world.event(&more, "page_viewed", json!({})).await;
    wait_for(PATIENCE, || async {
        let c = world.get(&format!("/v1/contacts/{more}")).await;
        Ok(c["last_activity_at"].as_i64())
    })
    .await
    .expect("the late event is processed");
    assert_eq!(failures().await, before, "a disabled install is not called");

    // An admin (here: the tenant) enables it again: the reason is cleared.
    let enabled =
        client.ok(Method::PATCH, &format!("/v1/installs/{id}"), Some(json!({"enabled": true}))).await.unwrap();
    assert_eq!(enabled["enabled"], true, "{enabled}");
    assert!(enabled["disabled_reason"].is_null(), "{enabled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_upgrades_and_rolls_back_by_version_and_refuses_another_plugins_version() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let client = world.client();
    let mut versions = Vec::new();
    for guest in ["guest-versioned-1", "guest-versioned-2"] {
        let (status, uploaded) = client.upload(guest_bytes(guest).unwrap()).await.unwrap();
        assert!(status == 201 || status == 200, "{uploaded}");
        versions.push(uploaded["id"].as_str().unwrap().to_string());
    }
    let install = client
        .ok(Method::POST, "/v1/installs", Some(json!({"plugin_version_id": versions[0], "config": {}})))
        .await
        .unwrap();
    let id = install["id"].as_str().unwrap().to_string();
    let contact = world.contact(json!({"email": "ver@example.com"})).await;
    // A third scorer writes `<stem>_score`: which version answered shows there.
    let scored_by = |n: f64| {
        let path = format!("/v1/contacts/{contact}");
        let world = &world;
        async move {
            wait_for(PATIENCE, || async {
                let c = world.get(&path).await;
                Ok((c["properties"]["versioned_score"] == json!(n)).then_some(()))
            })
            .await
            .unwrap_or_else(|e| panic!("never scored {n}: {e}"))
        }
    };
    world.event(&contact, "page_viewed", json!({})).await;
    scored_by(1.0).await;

    let path = format!("/v1/installs/{id}");
    let upgraded = client.ok(Method::PATCH, &path, Some(json!({"plugin_version_id": versions[1]}))).await.unwrap();
    assert_eq!(upgraded["plugin_version_id"], versions[1].as_str(), "{upgraded}");
    world.event(&contact, "page_viewed", json!({})).await;
    scored_by(2.0).await;

    let rolled_back = client.ok(Method::PATCH, &path, Some(json!({"plugin_version_id": versions[0]}))).await.unwrap();
    assert_eq!(rolled_back["plugin_version_id"], versions[0].as_str());
    world.event(&contact, "page_viewed", json!({})).await;
    scored_by(1.0).await;

    // Another plugin's version is not an upgrade: refused, nothing changes.
    let plugins = world.get("/v1/plugins").await;
    let rules =
        plugins["items"].as_array().unwrap().iter().find(|p| p["name"] == "rules-scorer").unwrap()["id"].clone();
    let (status, body) = client.call(Method::PATCH, &path, Some(json!({"plugin_version_id": rules}))).await.unwrap();
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("rules-scorer") && message.contains("versioned-scorer"), "{message}");
    assert_eq!(world.get(&path).await["plugin_version_id"], versions[0].as_str());
}
