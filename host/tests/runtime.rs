//! The sandbox, tested with real components built from source by build.rs:
//! prebuilt plugins that must work, and hostile guests that must fail that
//! one call, with the right cause, while the runtime keeps serving.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cairn::catalog::{PREBUILT, guest_bytes};
use cairn::runtime::bindings::guest::action::ActionInput;
use cairn::runtime::grants::Grants;
use cairn::runtime::invoke::ProjectedInput;
use cairn::runtime::{
    CacheOutcome, CallScope, FailureCause, Limits, LoadError, LoadedPlugin, Runtime, RuntimeSettings, convert,
};
use cairn::store::{self, NewContact, Store};

fn prebuilt(name: &str) -> Vec<u8> {
    PREBUILT.iter().find(|(n, _)| *n == name).map(|(_, b)| b.to_vec()).expect("prebuilt plugin")
}

fn runtime_with(limits: Limits) -> Runtime {
    Runtime::new(RuntimeSettings { limits, ..RuntimeSettings::default() }).expect("runtime")
}

async fn load(rt: &Runtime, bytes: Vec<u8>) -> Arc<LoadedPlugin> {
    rt.load(Arc::new(bytes)).await.expect("component loads")
}

async fn memory_store() -> Store {
    Store::open("sqlite::memory:").await.expect("in-memory store")
}

fn scope(rt: &Runtime, store: &Store, tenant: &str, grants: Grants) -> CallScope {
    CallScope {
        tenant_id: tenant.into(),
        install_id: "install-under-test".into(),
        grants: Arc::new(grants),
        store: store.clone(),
        egress: rt.egress.clone(),
        test_mode: false,
        now: store::now_ms(),
        test_contact: None,
    }
}

fn sample_contact() -> store::Contact {
    let (contact, _) = cairn::bench::sample_input(store::now_ms());
    contact
}

/// Score with a guest that implements scorer; returns the cause of failure.
async fn score_failure(rt: &Runtime, guest: &str) -> cairn::runtime::CallError {
    let store = memory_store().await;
    let plugin = load(rt, guest_bytes(guest).expect("guest built")).await;
    let input = ProjectedInput::build(&plugin, &sample_contact(), &[]);
    rt.score(&plugin, scope(rt, &store, "t1", Grants::default()), "{}", input.clone(), "inv")
        .await
        .expect_err("hostile guest must fail")
}

/// After any failure, a real scorer still works on the same runtime.
async fn assert_still_serving(rt: &Runtime) {
    let store = memory_store().await;
    let plugin = load(rt, prebuilt("rules-scorer")).await;
    let now = store::now_ms();
    let (contact, events) = cairn::bench::sample_input(now);
    let input = ProjectedInput::build(&plugin, &contact, &events);
    let config = cairn::bench::scorer_config().to_string();
    let called = rt
        .score(&plugin, scope(rt, &store, "t1", Grants::default()), &config, input.clone(), "inv")
        .await
        .expect("score");
    assert!(called.value.value > 0.0, "a real scorer still scores: {:?}", called.value);
    assert!(called.stats.fuel_used > 0);
}

#[tokio::test]
async fn prebuilt_scorer_scores_like_the_native_logic_and_reports_fuel() {
    let rt = runtime_with(Limits::default());
    let store = memory_store().await;
    let plugin = load(&rt, prebuilt("rules-scorer")).await;
    assert_eq!(plugin.description.name, "rules-scorer");
    let now = store::now_ms();
    let (contact, events) = cairn::bench::sample_input(now);
    let input = ProjectedInput::build(&plugin, &contact, &events);
    let config = cairn::bench::scorer_config();
    let mut s = scope(&rt, &store, "t1", Grants::default());
    s.now = now;
    let called = rt.score(&plugin, s, &config.to_string(), input.clone(), "inv").await.expect("score");
    let native_config: rules_scorer::Config = serde_json::from_value(config).unwrap();
    let sdk_contact = cairn_sdk::Contact {
        id: contact.id.clone(),
        properties: contact
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    match v {
                        store::Value::Text(t) => cairn_sdk::Value::Text(t.clone()),
                        _ => cairn_sdk::Value::Null,
                    },
                )
            })
            .collect(),
        ..cairn_sdk::Contact::new(contact.id.clone())
    };
    let sdk_events: Vec<cairn_sdk::Event> = events
        .iter()
        .map(|e| {
            let mut ev = cairn_sdk::Event::new(e.id.clone(), e.contact_id.clone(), e.kind.clone(), e.occurred_at);
            if let Some(store::Value::Text(u)) = e.properties.get("url") {
                ev = ev.with_property("url", u.as_str());
            }
            ev
        })
        .collect();
    let native = rules_scorer::score_events(&native_config, &sdk_contact, &sdk_events, now);
    assert!((called.value.value - native.value).abs() < 0.01, "wasm {} vs native {}", called.value.value, native.value);
    assert!(called.stats.fuel_used > 1000, "fuel is reported: {}", called.stats.fuel_used);
}

#[tokio::test]
async fn an_infinite_loop_runs_out_of_fuel() {
    let rt = runtime_with(Limits::default());
    let err = score_failure(&rt, "guest-loop").await;
    assert_eq!(err.cause, FailureCause::Fuel, "{err}");
    assert_still_serving(&rt).await;
}

#[tokio::test]
async fn an_infinite_loop_with_unlimited_fuel_hits_the_deadline() {
    let rt = runtime_with(Limits { fuel: u64::MAX / 4, deadline: Duration::from_millis(100), ..Limits::default() });
    let started = std::time::Instant::now();
    let err = score_failure(&rt, "guest-loop").await;
    assert_eq!(err.cause, FailureCause::Deadline, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "interrupted promptly: {:?}", started.elapsed());
    assert_still_serving(&rt).await;
}

#[tokio::test]
async fn unbounded_allocation_hits_the_memory_cap() {
    let rt = runtime_with(Limits {
        memory_bytes: 16 << 20,
        fuel: u64::MAX / 4,
        deadline: Duration::from_secs(10),
        ..Limits::default()
    });
    let err = score_failure(&rt, "guest-memory-hog").await;
    assert_eq!(err.cause, FailureCause::Memory, "{err}");
    assert_still_serving(&rt).await;
}

#[tokio::test]
async fn deep_recursion_overflows_the_stack_cleanly() {
    let rt = runtime_with(Limits { fuel: u64::MAX / 4, deadline: Duration::from_secs(10), ..Limits::default() });
    let err = score_failure(&rt, "guest-stack-overflow").await;
    assert_eq!(err.cause, FailureCause::StackOverflow, "{err}");
    assert_still_serving(&rt).await;
}

#[tokio::test]
async fn a_panic_is_a_trap_that_carries_the_panic_message() {
    let rt = runtime_with(Limits::default());
    let err = score_failure(&rt, "guest-panic").await;
    assert_eq!(err.cause, FailureCause::Trap, "{err}");
    assert!(err.message.contains("deliberate panic"), "panic message kept: {}", err.message);
    assert_still_serving(&rt).await;
}

#[tokio::test]
async fn a_huge_return_value_is_refused_by_the_output_cap() {
    let rt = runtime_with(Limits { fuel: u64::MAX / 4, deadline: Duration::from_secs(10), ..Limits::default() });
    let err = score_failure(&rt, "guest-huge-output").await;
    assert_eq!(err.cause, FailureCause::OutputTooLarge, "{err}");
    assert_still_serving(&rt).await;
}

#[tokio::test]
async fn a_nan_score_is_invalid_output() {
    let rt = runtime_with(Limits::default());
    let err = score_failure(&rt, "guest-nan-scorer").await;
    assert_eq!(err.cause, FailureCause::InvalidOutput, "{err}");
}

#[tokio::test]
async fn components_importing_filesystem_or_sockets_are_refused_at_load_naming_the_import() {
    let rt = runtime_with(Limits::default());
    for (guest, import) in [("guest-fs", "wasi:filesystem"), ("guest-sockets", "wasi:sockets")] {
        let err = rt.load(Arc::new(guest_bytes(guest).unwrap())).await.expect_err("refused");
        assert!(matches!(err, LoadError::DisallowedImport(_)), "{guest}: {err}");
        assert!(err.to_string().contains(import), "{guest}: the refusal names {import}: {err}");
    }
    assert_still_serving(&rt).await;
}

#[tokio::test]
async fn bytes_that_are_not_a_component_are_refused() {
    let rt = runtime_with(Limits::default());
    for bytes in [b"hello world".to_vec(), b"\0asm\x01\0\0\0".to_vec(), Vec::new()] {
        let err = rt.load(Arc::new(bytes)).await.expect_err("refused");
        assert!(matches!(err, LoadError::NotAComponent(_)), "{err}");
    }
}

#[tokio::test]
async fn a_plugin_cannot_read_or_tag_another_tenants_contact() {
    let rt = runtime_with(Limits::default());
    let store = memory_store().await;
    let a = store.create_tenant("A").await.unwrap();
    let b = store.create_tenant("B").await.unwrap();
    let victim = store
        .create_contact(&a.id, NewContact { email: Some("victim@a.test".into()), ..Default::default() })
        .await
        .unwrap();
    let own = store
        .create_contact(&b.id, NewContact { email: Some("own@b.test".into()), ..Default::default() })
        .await
        .unwrap();
    let plugin = load(&rt, guest_bytes("guest-cross-tenant").unwrap()).await;
    let input =
        ActionInput { contact: convert::contact_to_wit(&own, None), trigger_event: None, idempotency_key: "k".into() };
    let config = serde_json::json!({"contact_id": victim.id}).to_string();
    let called = rt
        .execute(&plugin, scope(&rt, &store, &b.id, Grants::all_store()), &config, input.clone(), "inv")
        .await
        .expect("the call itself succeeds");
    assert_eq!(called.value.get("read"), Some(&store::Value::Text("no".into())), "{:?}", called.value);
    assert_eq!(called.value.get("error"), Some(&store::Value::Text("not found".into())));
    let after = store.get_contact(&a.id, &victim.id).await.unwrap().unwrap();
    assert!(after.tags.is_empty(), "tenant A's contact is untouched: {:?}", after.tags);
}

#[tokio::test]
async fn store_writes_without_the_grant_are_denied_with_an_error_the_plugin_sees() {
    let rt = runtime_with(Limits::default());
    let store = memory_store().await;
    let t = store.create_tenant("T").await.unwrap();
    let c =
        store.create_contact(&t.id, NewContact { email: Some("c@t.test".into()), ..Default::default() }).await.unwrap();
    let plugin = load(&rt, prebuilt("tag-contact")).await;
    let input =
        ActionInput { contact: convert::contact_to_wit(&c, None), trigger_event: None, idempotency_key: "k".into() };
    let err = rt
        .execute(&plugin, scope(&rt, &store, &t.id, Grants::default()), r#"{"tag":"hot"}"#, input.clone(), "inv")
        .await
        .expect_err("no store-write grant");
    assert_eq!(err.cause, FailureCause::Plugin);
    assert!(err.message.contains("store-write"), "{}", err.message);
    let granted = Grants::parse(&["store-write"]).unwrap();
    rt.execute(&plugin, scope(&rt, &store, &t.id, granted), r#"{"tag":"hot"}"#, input.clone(), "inv")
        .await
        .expect("granted");
    assert_eq!(store.get_contact(&t.id, &c.id).await.unwrap().unwrap().tags, vec!["hot".to_string()]);
}

async fn http_status(rt: &Runtime, grants: &[&str], url: &str) -> Result<f64, String> {
    let store = memory_store().await;
    let plugin = load(rt, guest_bytes("guest-http").unwrap()).await;
    let input = ActionInput {
        contact: convert::contact_to_wit(&sample_contact(), None),
        trigger_event: None,
        idempotency_key: "k".into(),
    };
    let config = serde_json::json!({"url": url}).to_string();
    let grants = Grants::parse(grants).unwrap();
    match rt.execute(&plugin, scope(rt, &store, "t1", grants), &config, input.clone(), "inv").await {
        Ok(called) => Ok(called
            .value
            .get("status")
            .and_then(|v| if let store::Value::Number(n) = v { Some(*n) } else { None })
            .unwrap_or(-1.0)),
        Err(e) => Err(e.message),
    }
}

#[tokio::test]
async fn outbound_http_needs_a_granted_host_and_loopback_needs_the_operator() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
        axum::serve(listener, app).await.unwrap();
    });
    let url = format!("http://127.0.0.1:{}/", addr.port());

    let strict = runtime_with(Limits::default());
    let err = http_status(&strict, &[], &url).await.expect_err("not granted");
    assert!(err.contains("not granted"), "{err}");
    let err = http_status(&strict, &["http:127.0.0.1"], &url).await.expect_err("loopback refused");
    assert!(err.contains("loopback or private"), "{err}");
    let err = http_status(&strict, &["http:example.com"], "http://example.com:99999/").await.expect_err("bad url");
    assert!(!err.is_empty());

    let open = Runtime::new(RuntimeSettings { allow_private_network: true, ..RuntimeSettings::default() }).unwrap();
    assert_eq!(http_status(&open, &["http:127.0.0.1"], &url).await, Ok(200.0));
}

#[tokio::test]
async fn compiled_components_are_reused_from_the_disk_cache_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("cairn-cache-test-{}-{}", std::process::id(), store::now_ms()));
    let settings = RuntimeSettings { cache_dir: Some(dir.clone()), ..RuntimeSettings::default() };
    let first = Runtime::new(settings.clone()).unwrap();
    assert_eq!(load(&first, prebuilt("page-visits")).await.cache, CacheOutcome::Compiled);
    drop(first);
    let second = Runtime::new(settings).unwrap();
    let plugin = load(&second, prebuilt("page-visits")).await;
    assert_eq!(plugin.cache, CacheOutcome::Hit);
    assert_eq!(plugin.description.name, "page-visits");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_component_built_on_the_per_kind_world_without_the_sdk_loads_and_scores() {
    let rt = runtime_with(Limits::default());
    let store = memory_store().await;
    let plugin = load(&rt, guest_bytes("guest-raw-scorer").unwrap()).await;
    assert_eq!(plugin.description.kinds, vec![cairn::runtime::Kind::Scorer]);
    let (contact, events) = cairn::bench::sample_input(store::now_ms());
    let input = ProjectedInput::build(&plugin, &contact, &events);
    let called =
        rt.score(&plugin, scope(&rt, &store, "t1", Grants::default()), "{}", input.clone(), "inv").await.unwrap();
    assert_eq!(called.value.value, 50.0);
    let err = rt
        .execute(
            &plugin,
            scope(&rt, &store, "t1", Grants::default()),
            "{}",
            ActionInput {
                contact: convert::contact_to_wit(&contact, None),
                trigger_event: None,
                idempotency_key: "k".into(),
            },
            "inv",
        )
        .await
        .expect_err("not an action");
    assert_eq!(err.cause, FailureCause::Unsupported);
}

#[tokio::test]
async fn a_component_missing_the_export_of_a_kind_it_claims_is_refused_naming_it() {
    let rt = runtime_with(Limits::default());
    let err = rt.load(Arc::new(guest_bytes("guest-missing-export").unwrap())).await.expect_err("refused");
    assert!(matches!(err, LoadError::MissingExport(_)), "{err}");
    assert!(err.to_string().contains("cairn:plugin/action@0.1.0"), "{err}");
}

#[tokio::test]
async fn a_plain_cairn_plugin_component_runs_beside_one_with_the_health_self_test() {
    let rt = runtime_with(Limits::default());
    let store = memory_store().await;
    // Built against cairn:plugin@0.1.0 alone, without the SDK: no self-test,
    // so describe() is its whole health check.
    let plain = load(&rt, guest_bytes("guest-raw-scorer").unwrap()).await;
    assert!(!plain.has_self_test());
    assert_eq!(plain.wit_packages(), ["cairn:plugin@0.1.0"]);
    assert_eq!(rt.self_test(&plain).await.unwrap(), None);
    // Built with the SDK: cairn:plugin@0.1.0 plus cairn:health@0.1.0.
    let checked = load(&rt, guest_bytes("guest-versioned-3").unwrap()).await;
    assert_eq!(checked.wit_packages(), ["cairn:plugin@0.1.0", "cairn:health@0.1.0"]);
    let checks = rt.self_test(&checked).await.unwrap().expect("a self-test");
    assert_eq!(checks.len(), 1);
    assert!(!checks[0].passed && checks[0].detail == "expected 2, scored 3", "{checks:?}");
    // Both score, side by side, on the same runtime.
    let (contact, events) = cairn::bench::sample_input(store::now_ms());
    for (plugin, expected) in [(&plain, 50.0), (&checked, 3.0)] {
        let input = ProjectedInput::build(plugin, &contact, &events);
        let called =
            rt.score(plugin, scope(&rt, &store, "t1", Grants::default()), "{}", input.clone(), "inv").await.unwrap();
        assert_eq!(called.value.value, expected);
    }
}
