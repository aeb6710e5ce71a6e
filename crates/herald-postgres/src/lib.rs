//! The PostgreSQL store for herald: several nodes sharing one database.
