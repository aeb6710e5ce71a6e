//! The Redis (and Valkey) store for herald: several nodes sharing one Redis.
