//! One process per SQLite file (issue 6, item 5): a second server on a file
//! another server is serving is refused with a message that says why and
//! what to do, the first keeps serving, and once it stops the file can be
//! served again. PostgreSQL takes several servers on one database.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use cairn::clock::Clock;
use cairn::runtime::RuntimeSettings;
use cairn::server::{self, Server, ServerConfig};
use cairn::store::testing::{TempPostgres, TempSqlite};

const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

async fn start(database_url: &str) -> anyhow::Result<Server> {
    let cache = std::env::temp_dir().join(format!("cairn-e2e-cache-{}", std::process::id()));
    server::start(ServerConfig {
        database_url: database_url.to_string(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        runtime: RuntimeSettings { cache_dir: Some(cache), ..RuntimeSettings::default() },
        clock: Clock::System,
        admin_key: Some(ADMIN_KEY.into()),
        run_pipeline: true,
    })
    .await
}

async fn healthy(server: &Server) -> bool {
    reqwest::get(format!("{}/healthz", server.url())).await.is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_sqlite_file_is_refused_until_the_first_stops() {
    let db = TempSqlite::new();
    let first = start(&db.url()).await.expect("the first server starts");
    let refused = match start(&db.url()).await {
        Ok(_) => panic!("a second server started on the same SQLite file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(refused.contains("is already serving the SQLite database"), "{refused}");
    assert!(refused.contains(&format!("pid {}", std::process::id())), "names the process: {refused}");
    assert!(refused.contains("PostgreSQL"), "says what to do instead: {refused}");
    assert!(healthy(&first).await, "the first server keeps serving");
    // Other programs may still open the file (they claim no work).
    let reader = db.open().await.expect("a plain open is not refused");
    reader.close().await;

    first.shutdown().await;
    let again = start(&db.url()).await.expect("served again once the first server stopped");
    assert!(healthy(&again).await);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_servers_share_one_postgres_database() {
    let db = TempPostgres::create().await.expect("PostgreSQL is up");
    let first = start(db.url()).await.expect("the first server starts");
    let second = start(db.url()).await.expect("a second server on the same PostgreSQL database starts");
    assert!(healthy(&first).await && healthy(&second).await);
    first.shutdown().await;
    second.shutdown().await;
}
