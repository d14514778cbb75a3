//! `on_both_backends!`: each store test runs once on a fresh SQLite file and
//! once on a fresh PostgreSQL database (created, then dropped), so the two
//! backends cannot drift apart. Used with `#[macro_use] mod backends;`; the
//! test file imports `TempSqlite` and `TempPostgres`.

/// Generate, for each named test function, one `#[tokio::test]` per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    let db = super::TempSqlite::new();
                    let store = db.open().await?;
                    let result = super::$name(store.clone()).await;
                    store.close().await;
                    result
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    // Dropped last, also when the test panics: the database goes away.
                    let db = super::TempPostgres::create().await?;
                    let store = db.open().await?;
                    let result = super::$name(store.clone()).await;
                    store.close().await;
                    result
                }
            )*
        }
    };
}

/// Mark every pending event processed: the `contact_created` events of a
/// test's setup would otherwise be claimed along with the events under test.
#[allow(dead_code)] // Not every test file that runs on both backends claims events.
pub async fn settle(store: &cairn::store::Store) -> anyhow::Result<()> {
    loop {
        let claimed = store.claim_unprocessed_events(1000).await?;
        if claimed.is_empty() {
            return Ok(());
        }
        store.mark_events_processed(&claimed.into_iter().map(|(_, e)| e.id).collect::<Vec<_>>()).await?;
    }
}
