//! The PostgreSQL store against the whole Store contract (herald-testkit), on the server at
//! `HERALD_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`), each case in a schema of
//! its own, dropped when the next run of this file starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use herald_postgres::PostgresStore;

fn url() -> String {
    std::env::var("HERALD_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Drops the schemas earlier runs of this file left behind (those of processes no longer alive).
async fn drop_stale_schemas(client: &tokio_postgres::Client) {
    let rows = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'herald_conf\\_%'",
            &[],
        )
        .await
        .unwrap();
    for r in rows {
        let name: String = r.get(0);
        let pid: Option<u32> = name.split('_').nth(2).and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| p != std::process::id() && !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .await;
        }
    }
}

async fn store() -> PostgresStore {
    static CLEAN: Once = Once::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut first = false;
    CLEAN.call_once(|| first = true);
    if first {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        drop_stale_schemas(&client).await;
    }
    let schema = format!(
        "herald_conf_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    PostgresStore::builder(url())
        .schema(schema)
        .pool_size(4)
        .connect()
        .await
        .expect("PostgreSQL at HERALD_PG_URL (default postgres://postgres@127.0.0.1:5432/test)")
}

herald_testkit::store_conformance!(store());
