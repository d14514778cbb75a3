//! Bad input over HTTP gets a clear JSON error and changes nothing; another
//! tenant's ids are 404s, never data.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use cairn::catalog::guest_bytes;
use cairn::demo::Client;
use cairn::engine::Clock;
use cairn::runtime::RuntimeSettings;
use cairn::server::{self, Server, ServerConfig};
use cairn::store::testing::TempSqlite;
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

async fn start(db: &TempSqlite) -> Server {
    server::start(ServerConfig {
        database_url: db.url(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        // One compile cache for the whole test run: the catalog compiles once.
        runtime: RuntimeSettings {
            cache_dir: Some(std::env::temp_dir().join(format!("cairn-test-cache-{}", std::process::id()))),
            ..RuntimeSettings::default()
        },
        clock: Clock::System,
        admin_key: Some(ADMIN_KEY.into()),
        run_pipeline: true,
    })
    .await
    .expect("server starts")
}

async fn tenant(server: &Server, name: &str) -> Client {
    let admin = Client::new(&server.url(), ADMIN_KEY);
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": name}))).await.unwrap();
    Client::new(&server.url(), created["api_key"].as_str().unwrap())
}

fn assert_error(status: u16, body: &Value, expected_status: u16, mentions: &str) {
    assert_eq!(status, expected_status, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("error body has a message: {body}"));
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(message.to_lowercase().contains(&mentions.to_lowercase()), "`{message}` should mention `{mentions}`");
}

async fn raw(server: &Server, key: &str, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", server.url()))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_oversized_and_unauthenticated_requests_get_json_errors() {
    let db = TempSqlite::new();
    let server = start(&db).await;
    let a = tenant(&server, "A").await;
    let key = a.ok(Method::GET, "/v1/contacts", None).await.map(|_| ()).ok();
    assert!(key.is_some());

    let admin = Client::new(&server.url(), ADMIN_KEY);
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": "B"}))).await.unwrap();
    let b_key = created["api_key"].as_str().unwrap().to_string();

    let (s, body) = raw(&server, &b_key, "/v1/contacts", "application/json", b"{\"email\": ".to_vec()).await;
    assert_error(s, &body, 400, "");
    let (s, body) = raw(&server, &b_key, "/v1/contacts", "application/json", vec![0xff, 0xfe, b'{']).await;
    assert_error(s, &body, 400, "");
    let (s, body) = a
        .call(Method::POST, "/v1/contacts", Some(json!({"email": "x@y.z", "favourite_colour": "blue"})))
        .await
        .unwrap();
    assert_error(s, &body, 422, "favourite_colour");
    let (s, body) = a.call(Method::POST, "/v1/contacts", Some(json!({"email": 42}))).await.unwrap();
    assert_error(s, &body, 422, "");
    let big = format!("{{\"email\": \"{}\"}}", "x".repeat(5 << 20));
    let (s, body) = raw(&server, &b_key, "/v1/contacts", "application/json", big.into_bytes()).await;
    assert_error(s, &body, 413, "too large");

    let nobody = Client::new(&server.url(), "cairn_not_a_real_key_at_all");
    let (s, body) = nobody.call(Method::GET, "/v1/contacts", None).await.unwrap();
    assert_error(s, &body, 401, "api key");
    let (s, body) = a.call(Method::POST, "/v1/tenants", Some(json!({"name": "C"}))).await.unwrap();
    assert_error(s, &body, 403, "admin");
    let (s, body) = a.call(Method::GET, "/v1/no-such-route", None).await.unwrap();
    assert_error(s, &body, 404, "not found");

    let too_many: Vec<Value> = (0..1001).map(|_| json!({"email": "a@b.c", "kind": "x"})).collect();
    let (s, body) = a.call(Method::POST, "/v1/events", Some(json!({"events": too_many}))).await.unwrap();
    assert_error(s, &body, 422, "1000");
    let (s, body) = a
        .call(Method::POST, "/v1/events", Some(json!({"events": [{"kind": "x", "contact_id": "nope"}]})))
        .await
        .unwrap();
    assert_error(s, &body, 422, "nope");
    let (s, body) = a
        .call(Method::POST, "/v1/events", Some(json!({"events": [{"kind": "x", "email": "a@b.c"}, {"kind": 5}]})))
        .await
        .unwrap();
    assert_error(s, &body, 422, "events[1]");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_ids_are_not_found_and_nothing_of_theirs_changes() {
    let db = TempSqlite::new();
    let server = start(&db).await;
    let a = tenant(&server, "A").await;
    let b = tenant(&server, "B").await;
    let contact = a
        .ok(Method::POST, "/v1/contacts", Some(json!({"email": "secret@a.test", "first_name": "Secret"})))
        .await
        .unwrap();
    let id = contact["id"].as_str().unwrap();
    let task = a.ok(Method::POST, "/v1/tasks", Some(json!({"title": "A's task", "contact_id": id}))).await.unwrap();
    let task_id = task["id"].as_str().unwrap();

    for (method, path, body) in [
        (Method::GET, format!("/v1/contacts/{id}"), None),
        (Method::PATCH, format!("/v1/contacts/{id}"), Some(json!({"first_name": "Pwned"}))),
        (Method::DELETE, format!("/v1/contacts/{id}"), None),
        (Method::GET, format!("/v1/contacts/{id}/timeline"), None),
        (Method::GET, format!("/v1/events?contact_id={id}"), None),
        (Method::GET, format!("/v1/tasks/{task_id}"), None),
        (Method::PATCH, format!("/v1/tasks/{task_id}"), Some(json!({"status": "done"}))),
    ] {
        let (s, body) = b.call(method.clone(), &path, body).await.unwrap();
        assert_eq!(s, 404, "{method} {path}: {body}");
        assert!(!body.to_string().contains("secret@a.test"), "no data leaks: {body}");
    }
    let (s, body) =
        b.call(Method::POST, "/v1/events", Some(json!({"contact_id": id, "kind": "page_viewed"}))).await.unwrap();
    assert_error(s, &body, 422, "does not exist");
    let listed = b.ok(Method::GET, "/v1/contacts", None).await.unwrap();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(0));
    let listed = b.ok(Method::GET, "/v1/contacts?email=secret@a.test", None).await.unwrap();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(0));

    let after = a.ok(Method::GET, &format!("/v1/contacts/{id}"), None).await.unwrap();
    assert_eq!(after["first_name"], "Secret");
    let t = a.ok(Method::GET, &format!("/v1/tasks/{task_id}"), None).await.unwrap();
    assert_eq!(t["status"], "open");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_and_bad_configs_say_what_is_wrong() {
    let db = TempSqlite::new();
    let server = start(&db).await;
    let a = tenant(&server, "A").await;

    let (s, body) = a.upload(b"definitely not wasm".to_vec()).await.unwrap();
    assert_error(s, &body, 422, "not a component");
    let (s, body) = a.upload(guest_bytes("guest-fs").unwrap()).await.unwrap();
    assert_error(s, &body, 422, "wasi:filesystem");
    let (s, body) = a.upload(guest_bytes("guest-sockets").unwrap()).await.unwrap();
    assert_error(s, &body, 422, "wasi:sockets");

    let (s, uploaded) = a.upload(guest_bytes("assign-by-region").unwrap()).await.unwrap();
    assert_eq!(s, 201, "{uploaded}");
    assert_eq!(uploaded["name"], "assign-by-region");
    assert_eq!(uploaded["description"]["kinds"], json!(["action"]));
    let version = uploaded["id"].clone();

    let (s, body) = a
        .call(
            Method::POST,
            "/v1/installs",
            Some(json!({"plugin_version_id": version, "config": {"property": "region", "owners": {"EMEA": 7}}})),
        )
        .await
        .unwrap();
    assert_error(s, &body, 422, "schema");
    let fields: Vec<&str> =
        body["error"]["details"].as_array().unwrap().iter().filter_map(|d| d["field"].as_str()).collect();
    assert!(fields.contains(&"/owners/EMEA"), "the failing field is named: {body}");

    let good = json!({"property": "region", "owners": {"EMEA": "alice@acme.test"}});
    let (s, body) = a
        .call(
            Method::POST,
            "/v1/installs",
            Some(json!({"plugin_version_id": version, "config": good, "grants": ["http:evil.example"]})),
        )
        .await
        .unwrap();
    assert_error(s, &body, 422, "not asked for");
    let (s, body) = a
        .call(
            Method::POST,
            "/v1/installs",
            Some(json!({"plugin_version_id": version, "config": good, "grants": ["store-write"]})),
        )
        .await
        .unwrap();
    assert_eq!(s, 201, "{body}");

    let b = tenant(&server, "B").await;
    let (s, _) = b.call(Method::GET, &format!("/v1/plugins/{}", version.as_str().unwrap()), None).await.unwrap();
    assert_eq!(s, 404, "a tenant's upload is private");
    let (s, _) = b
        .call(
            Method::POST,
            "/v1/installs",
            Some(json!({"plugin_version_id": version, "config": good, "grants": ["store-write"]})),
        )
        .await
        .unwrap();
    assert_eq!(s, 404);

    let doc = reqwest::get(format!("{}/openapi.json", server.url())).await.unwrap().json::<Value>().await.unwrap();
    for path in [
        "/v1/contacts",
        "/v1/events",
        "/v1/plugins",
        "/v1/installs",
        "/v1/workflows",
        "/v1/runs",
        "/v1/tenants",
        "/healthz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_panics_fails_its_call_is_recorded_and_the_server_keeps_serving() {
    let db = TempSqlite::new();
    let server = start(&db).await;
    let a = tenant(&server, "A").await;
    let (s, uploaded) = a.upload(guest_bytes("guest-panic").unwrap()).await.unwrap();
    assert_eq!(s, 201, "{uploaded}");
    let install = a
        .ok(Method::POST, "/v1/installs", Some(json!({"plugin_version_id": uploaded["id"], "config": {}})))
        .await
        .unwrap();
    let install_id = install["id"].as_str().unwrap().to_string();
    let (s, _) =
        a.call(Method::POST, "/v1/events", Some(json!({"email": "p@a.test", "kind": "page_viewed"}))).await.unwrap();
    assert_eq!(s, 202);

    let path = format!("/v1/invocations?install_id={install_id}");
    let failures = cairn::demo::wait_for(std::time::Duration::from_secs(20), || async {
        let v = a.ok(Method::GET, &path, None).await?;
        Ok(v["items"].as_array().filter(|i| !i.is_empty()).cloned())
    })
    .await
    .expect("the failed call is recorded");
    assert_eq!(failures[0]["error_cause"], "trap", "{failures:?}");
    assert!(failures[0]["error_message"].as_str().unwrap().contains("deliberate panic"), "{failures:?}");
    let stats = a.ok(Method::GET, &format!("/v1/installs/{install_id}"), None).await.unwrap();
    assert_eq!(stats["stats"]["failed"]["trap"], 1, "{stats}");

    // Everyone else is still served.
    let b = tenant(&server, "B").await;
    let created = b.ok(Method::POST, "/v1/contacts", Some(json!({"email": "ok@b.test"}))).await.unwrap();
    assert_eq!(created["email"], "ok@b.test");
    let health = reqwest::get(format!("{}/healthz", server.url())).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_callbacks_become_events_and_a_forged_contact_id_is_rejected() {
    let db = TempSqlite::new();
    let server = start(&db).await;
    let a = tenant(&server, "A").await;
    let b = tenant(&server, "B").await;
    let victim = a.ok(Method::POST, "/v1/contacts", Some(json!({"email": "victim@a.test"}))).await.unwrap();
    let own = b.ok(Method::POST, "/v1/contacts", Some(json!({"email": "reader@b.test"}))).await.unwrap();

    let plugins = b.ok(Method::GET, "/v1/plugins", None).await.unwrap();
    let webhook = plugins["items"].as_array().unwrap().iter().find(|p| p["name"] == "webhook").unwrap()["id"].clone();
    let config = json!({"url": "https://hooks.example.com/x", "secret": "0123456789abcdef0123"});
    let install = b
        .ok(
            Method::POST,
            "/v1/installs",
            Some(json!({"plugin_version_id": webhook, "config": config, "grants": ["http:hooks.example.com"]})),
        )
        .await
        .unwrap();
    let path = format!("/v1/installs/{}/inbound", install["id"].as_str().unwrap());
    let callback = json!([
        {"event": "opened", "contact_id": own["id"]},
        {"event": "clicked", "email": "reader@b.test", "properties": {"url": "/pricing"}},
        {"event": "opened", "contact_id": victim["id"]},
    ]);
    let answer = b.ok(Method::POST, &path, Some(callback)).await.unwrap();
    assert_eq!(answer, json!({"accepted": 2, "rejected": 1}));

    let events =
        b.ok(Method::GET, &format!("/v1/events?contact_id={}", own["id"].as_str().unwrap()), None).await.unwrap();
    // Besides the contact's own `contact_created`: the two callback events.
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| *k != "contact_created")
        .collect();
    assert_eq!(kinds.len(), 2, "{events}");
    assert!(kinds.contains(&"opened") && kinds.contains(&"clicked"));
    assert_eq!(events["items"][0]["properties"]["channel"], "webhook");
    let theirs =
        a.ok(Method::GET, &format!("/v1/events?contact_id={}", victim["id"].as_str().unwrap()), None).await.unwrap();
    let recorded: Vec<&Value> =
        theirs["items"].as_array().unwrap().iter().filter(|e| e["kind"] != "contact_created").collect();
    assert!(recorded.is_empty(), "nothing recorded for tenant A: {theirs}");

    let (s, body) = b.call(Method::POST, &path, Some(json!({"no": "event"}))).await.unwrap();
    assert_error(s, &body, 422, "could not parse");
    server.shutdown().await;
}
