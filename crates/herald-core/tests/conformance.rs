//! The in-memory store against the whole Store contract (herald-testkit).

herald_testkit::store_conformance!(async { herald_core::MemoryStore::new() });
