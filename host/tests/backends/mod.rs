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
