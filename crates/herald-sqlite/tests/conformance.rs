//! The SQLite store against the whole Store contract (herald-testkit).

herald_testkit::store_conformance!(async {
    herald_sqlite::SqliteStore::temporary().expect("a temporary SQLite store")
});
