//! Tenants are independent: one whose plugins are stuck holds only its own
//! work. The pipeline and the workflow runner each work in lanes, one per
//! tenant (see `engine::pipeline`); these tests check the facts that make
//! that true, by order of events rather than by timing:
//!
//! | test | tenant A | tenant B | fact |
//! |---|---|---|---|
//! | scorer | a scorer sleeping in a host call to its 10 s deadline | an event scored by the rules scorer | B's event is processed while A's is not; A's is processed later, its call failed at the deadline |
//! | action | a workflow action (webhook) whose endpoint never answers | a one-step workflow (tag-contact) | B's run completes while A's action call is still open |
//! | store | — | — | the queue by tenant: tenants with queued events found by seeking; a claim takes one tenant's lane (its oldest events, nothing while any is leased), on one node or across two |
//!
//! The throughput side is the `noisy_neighbour` benchmark
//! (`cairn bench --noisy-only`).

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod backends;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use backends::settle;
use cairn::catalog::guest_bytes;
use cairn::demo::{Client, wait_for};
use cairn::engine::Clock;
use cairn::runtime::{Limits, RuntimeSettings};
use cairn::server::{self, Server, ServerConfig};
use cairn::store::testing::{TempPostgres, TempSqlite};
use cairn::store::{NewContact, NewEvent, Store};
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";
/// Tenant A's plugins are stuck this long: far longer than B needs, even on
/// a loaded machine, so "B before A" is a fact about the engine, not luck.
const STUCK: Duration = Duration::from_secs(10);
/// How long B may take (less than [`STUCK`]: B must not wait for A).
const B_PATIENCE: Duration = Duration::from_secs(8);

/// A server whose plugin calls have a [`STUCK`] deadline (the circuit
/// breaker off: A's failures must not disable anything), the demo tenant set
/// up on it as tenant B; the server and B's client.
async fn start(db: &TempSqlite) -> (Server, cairn::demo::Scenario) {
    let cache = std::env::temp_dir().join(format!("cairn-e2e-cache-{}", std::process::id()));
    let limits = Limits { deadline: STUCK, breaker_failures: 0, ..Limits::default() };
    let server = server::start(ServerConfig {
        database_url: db.url(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        runtime: RuntimeSettings {
            limits,
            cache_dir: Some(cache),
            allow_private_network: true,
            ..RuntimeSettings::default()
        },
        clock: Clock::System,
        admin_key: Some(ADMIN_KEY.into()),
        run_pipeline: true,
    })
    .await
    .expect("server starts");
    let b = cairn::demo::set_up(&server.url(), ADMIN_KEY, "http://127.0.0.1:9").await.expect("tenant B set up");
    (server, b)
}

/// A new tenant: its client and id.
async fn tenant(server: &Server, name: &str) -> (Client, String) {
    let admin = Client::new(&server.url(), ADMIN_KEY);
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": name}))).await.unwrap();
    let client = Client::new(&server.url(), created["api_key"].as_str().unwrap());
    let id = client.ok(Method::GET, "/v1/tenant", None).await.unwrap()["id"].as_str().unwrap().to_string();
    (client, id)
}

async fn post_event(client: &Client, email: &str, kind: &str) {
    let ev = json!({"email": email, "kind": kind, "properties": {"url": "/pricing"}});
    let (s, body) = client.call(Method::POST, "/v1/events", Some(ev)).await.unwrap();
    assert_eq!(s, 202, "{body}");
}

/// `tenant`'s events: (stored, processed).
async fn events_of(server: &Server, tenant: &str) -> (i64, i64) {
    server.state.store.event_counts(tenant).await.unwrap()
}

/// The contact with `email` once `check` holds for it.
async fn contact_where(client: &Client, email: &str, check: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let path = format!("/v1/contacts?email={email}");
    wait_for(B_PATIENCE, || async {
        let page = client.ok(Method::GET, &path, None).await?;
        Ok(page["items"].as_array().and_then(|i| i.first()).cloned().filter(&check))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_stuck_in_its_scorer_does_not_hold_another_tenants_events() {
    let db = TempSqlite::new();
    let (server, b) = start(&db).await;
    let (a, a_id) = tenant(&server, "stuck scorer").await;
    let (s, uploaded) = a.upload(guest_bytes("guest-sleep").expect("guest built")).await.unwrap();
    assert!(s == 201 || s == 200, "{uploaded}");
    let body = json!({"plugin_version_id": uploaded["id"], "config": {}});
    let sleeper = a.ok(Method::POST, "/v1/installs", Some(body)).await.unwrap()["id"].as_str().unwrap().to_string();

    // A's event: its lane is stuck in the scorer until the deadline.
    post_event(&a, "target@a.test", "page_viewed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a_stored, a_processed) = events_of(&server, &a_id).await;
    assert!(a_processed < a_stored, "A's event is still being scored");

    // B's event is scored meanwhile.
    post_event(&b.client, "fresh@b.test", "page_viewed").await;
    let scored = contact_where(&b.client, "fresh@b.test", |c| c["score"].as_f64().unwrap_or(0.0) > 0.0)
        .await
        .unwrap_or_else(|e| panic!("B's event waited for A's stuck scorer: {e}"));
    let (a_stored, a_processed) = events_of(&server, &a_id).await;
    assert!(a_processed < a_stored, "B was processed before A's stuck event, not after it: {scored}");

    // A's lane ends at the deadline: its event is processed, the call
    // recorded as failed by the deadline.
    let path = format!("/v1/invocations?install_id={sleeper}&ok=false");
    let failed = wait_for(STUCK * 3, || async {
        let v = a.ok(Method::GET, &path, None).await?;
        Ok(v["items"].as_array().and_then(|i| i.first()).cloned())
    })
    .await
    .expect("A's scorer call is recorded once it ends");
    assert_eq!(failed["error_cause"], "deadline", "{failed}");
    wait_for(STUCK, || async {
        let (stored, processed) = events_of(&server, &a_id).await;
        Ok((processed == stored).then_some(()))
    })
    .await
    .expect("A's event is processed once its lane ends");
    server.shutdown().await;
}

/// A loopback endpoint that accepts connections and never answers; counts
/// those accepted and says whether any has been closed by its client.
struct BlackHole {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn black_hole() -> BlackHole {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (count, gone) = (accepted.clone(), closed.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let gone = gone.clone();
            tokio::spawn(async move {
                // Read the request and whatever follows, answer nothing;
                // end of stream is the caller giving up.
                let mut buf = [0u8; 4096];
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                gone.store(true, Ordering::SeqCst);
            });
        }
    });
    BlackHole { addr, accepted, closed, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_workflow_action_hangs_does_not_hold_another_tenants_steps() {
    let db = TempSqlite::new();
    let (server, b) = start(&db).await;
    let hole = black_hole().await;
    let (a, _) = tenant(&server, "stuck action").await;
    let plugins = a.ok(Method::GET, "/v1/plugins", None).await.unwrap();
    let webhook = plugins["items"].as_array().unwrap().iter().find(|p| p["name"] == "webhook").unwrap()["id"].clone();
    let config = json!({"url": format!("http://{}/hook", hole.addr), "secret": "fairness-test-secret-0123"});
    let body = json!({"plugin_version_id": webhook, "config": config, "grants": ["http:127.0.0.1"]});
    let hook = a.ok(Method::POST, "/v1/installs", Some(body)).await.unwrap()["id"].clone();
    let workflow = json!({
        "name": "hangs",
        "trigger": {"type": "event", "kind": "a_work"},
        "retry": {"max_attempts": 1},
        "steps": [{"id": "call", "type": "action", "install_id": hook}]
    });
    a.ok(Method::POST, "/v1/workflows?activate=true", Some(workflow)).await.unwrap();
    let tag = &b.installs["tag_contact"];
    let workflow = json!({
        "name": "tags",
        "trigger": {"type": "event", "kind": "b_go"},
        "steps": [{"id": "tag", "type": "action", "install_id": tag, "config": {"tag": "b-done"}}]
    });
    b.client.ok(Method::POST, "/v1/workflows?activate=true", Some(workflow)).await.unwrap();

    // A's run is in its action: the endpoint has the connection.
    post_event(&a, "target@a.test", "a_work").await;
    wait_for(B_PATIENCE, || async { Ok((hole.accepted.load(Ordering::SeqCst) > 0).then_some(())) })
        .await
        .expect("A's action calls its endpoint");

    // B's run goes through meanwhile.
    post_event(&b.client, "fresh@b.test", "b_go").await;
    let tagged = contact_where(&b.client, "fresh@b.test", |c| {
        c["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "b-done"))
    })
    .await
    .unwrap_or_else(|e| panic!("B's run waited for A's hanging action: {e}"));
    assert!(!hole.closed.load(Ordering::SeqCst), "B's run completed while A's action was still waiting: {tagged}");

    // A's call ends at its deadline and the run fails with it.
    let runs = wait_for(STUCK * 3, || async {
        let v = a.ok(Method::GET, "/v1/runs?status=failed", None).await?;
        Ok(v["items"].as_array().filter(|i| !i.is_empty()).cloned())
    })
    .await
    .expect("A's run fails at the deadline");
    assert_eq!(runs.len(), 1, "{runs:?}");
    server.shutdown().await;
}

// ---- the queue by tenant, on both backends ------------------------------

on_both_backends!(the_queue_is_read_by_tenant);

async fn the_queue_is_read_by_tenant(store: Store) -> anyhow::Result<()> {
    let mut tenants = Vec::new();
    for name in ["one", "two", "three"] {
        let t = store.create_tenant(name).await?.id;
        let c = store
            .create_contact(&t, NewContact { email: Some(format!("c@{name}.test")), ..Default::default() })
            .await?;
        tenants.push((t, c.id));
    }
    tenants.sort();
    settle(&store).await?;
    assert!(store.tenants_with_queued_events("", 10).await?.is_empty(), "nothing queued");
    let event = |c: &str, kind: String| NewEvent { contact_id: Some(c.into()), kind, ..Default::default() };
    let [(first, c1), (second, c2), (third, _)] = tenants.as_slice() else { unreachable!() };
    store.insert_events(first, (0..5).map(|i| event(c1, format!("k{i}"))).collect()).await?;
    store.insert_events(second, (0..2).map(|i| event(c2, format!("k{i}"))).collect()).await?;

    // Found by seeking from one tenant to the next, after a cursor, at most `limit`.
    assert_eq!(store.tenants_with_queued_events("", 10).await?, [first.clone(), second.clone()]);
    assert_eq!(store.tenants_with_queued_events(first, 10).await?, [second.as_str()]);
    assert_eq!(store.tenants_with_queued_events("", 1).await?, [first.as_str()]);
    assert!(store.tenants_with_queued_events(third, 10).await?.is_empty());

    // A claim takes the tenant's lane: its oldest events, its own only, and
    // nothing more while they are leased.
    let kinds = |events: &[cairn::store::Event]| events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>();
    let claimed = store.claim_tenant_events(first, 3).await?;
    assert_eq!(kinds(&claimed), ["k0", "k1", "k2"]);
    assert!(claimed.iter().all(|e| &e.contact_id == c1), "only the tenant's own events");
    assert!(store.claim_tenant_events(first, 10).await?.is_empty(), "the lane is taken while its events are leased");
    // Leased is still queued: the tenant is listed until its events are processed.
    assert_eq!(store.tenants_with_queued_events("", 10).await?, [first.clone(), second.clone()]);

    // Concurrent claims of one tenant: one of them takes the lane.
    let claims = (0..4).map(|_| {
        let (store, second) = (store.clone(), second.clone());
        tokio::spawn(async move { store.claim_tenant_events(&second, 1).await })
    });
    let mut taken = Vec::new();
    for c in claims {
        taken.push(c.await??);
    }
    taken.retain(|t| !t.is_empty());
    assert_eq!(taken.len(), 1, "one claim takes the lane: {taken:?}");
    assert_eq!(kinds(&taken[0]), ["k0"]);

    // Processed, the lane is free again: the rest comes next, in order.
    store.mark_events_processed(&claimed.iter().map(|e| e.id.clone()).collect::<Vec<_>>()).await?;
    let rest = store.claim_tenant_events(first, 10).await?;
    assert_eq!(kinds(&rest), ["k3", "k4"]);
    store.mark_events_processed(&rest.iter().map(|e| e.id.clone()).collect::<Vec<_>>()).await?;
    assert_eq!(store.tenants_with_queued_events("", 10).await?, [second.as_str()]);

    // Given back, events are claimed again in order.
    store.release_events(&taken[0].iter().map(|e| e.id.clone()).collect::<Vec<_>>()).await?;
    assert_eq!(kinds(&store.claim_tenant_events(second, 10).await?), ["k0", "k1"]);
    Ok(())
}

/// Two nodes on one PostgreSQL database: a tenant's lane is taken by one
/// node at a time, whoever asks, and a dead node's lane is taken over when
/// its lease runs out.
#[tokio::test]
async fn two_nodes_never_work_one_tenants_events_at_once() -> anyhow::Result<()> {
    let db = TempPostgres::create().await?;
    let lease = Duration::from_millis(300);
    let nodes = [db.open().await?.with_claim_lease(lease), db.open().await?.with_claim_lease(lease)];
    let tenant = nodes[0].create_tenant("shared").await?.id;
    let contact = nodes[0]
        .create_contact(&tenant, NewContact { email: Some("c@shared.test".into()), ..Default::default() })
        .await?;
    settle(&nodes[0]).await?;
    let event =
        |i: usize| NewEvent { contact_id: Some(contact.id.clone()), kind: format!("k{i}"), ..Default::default() };
    nodes[0].insert_events(&tenant, (0..20).map(event).collect()).await?;
    let kinds = |events: &[cairn::store::Event]| events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>();

    // Sixteen claims at once, from both nodes: one takes the lane.
    let claims = (0..16).map(|i| {
        let (store, tenant) = (nodes[i % 2].clone(), tenant.clone());
        tokio::spawn(async move { (i % 2, store.claim_tenant_events(&tenant, 5).await) })
    });
    let mut taken = Vec::new();
    for c in claims {
        let (node, claimed) = c.await?;
        let claimed = claimed?;
        if !claimed.is_empty() {
            taken.push((node, claimed));
        }
    }
    assert_eq!(taken.len(), 1, "one claim takes the lane");
    let (holder, batch) = taken.pop().unwrap();
    assert_eq!(kinds(&batch), ["k0", "k1", "k2", "k3", "k4"]);
    let other = &nodes[1 - holder];
    assert!(other.claim_tenant_events(&tenant, 5).await?.is_empty(), "the other node waits for the lane");

    // The holder finishes: the other node takes the next events, in order.
    nodes[holder].mark_events_processed(&batch.iter().map(|e| e.id.clone()).collect::<Vec<_>>()).await?;
    let next = other.claim_tenant_events(&tenant, 5).await?;
    assert_eq!(kinds(&next), ["k5", "k6", "k7", "k8", "k9"]);

    // That node dies holding them: once the lease runs out, the first node
    // takes the lane, from the same events.
    assert!(nodes[holder].claim_tenant_events(&tenant, 5).await?.is_empty(), "the lease still holds");
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let resumed = nodes[holder].claim_tenant_events(&tenant, 5).await?;
    assert_eq!(kinds(&resumed), ["k5", "k6", "k7", "k8", "k9"]);
    for node in &nodes {
        node.close().await;
    }
    Ok(())
}
