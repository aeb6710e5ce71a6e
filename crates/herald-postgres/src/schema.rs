//! The tables and indexes in the store's schema, its version, and the migrations applied on
//! connect.
//!
//! Every migration runs in one transaction that first takes a transaction-scoped advisory lock
//! named after the schema, so that nodes starting together migrate once, one after the other,
//! and a pooler in transaction mode keeps the lock and the migration on one server connection.

use deadpool_postgres::Client;

use crate::ConnectError;

/// The schema version this build writes and reads.
pub(crate) const VERSION: i32 = 1;

/// Delivery status codes, ordered by how busy a delivery is, so that an event's rolled-up status
/// is the greatest code of its deliveries (0, no delivery: unrouted). The same codes as the
/// embedded store's.
pub(crate) mod status {
    pub(crate) const UNROUTED: i16 = 0;
    pub(crate) const SUCCEEDED: i16 = 1;
    pub(crate) const EXPIRED: i16 = 2;
    pub(crate) const CANCELLED: i16 = 3;
    pub(crate) const DEAD: i16 = 4;
    pub(crate) const SCHEDULED: i16 = 5;
    pub(crate) const PENDING: i16 = 6;
    pub(crate) const RETRYING: i16 = 7;
    pub(crate) const ACTIVE: i16 = 8;
    /// `events.status` of an event with an open delivery: which open status it shows is rolled up
    /// from its deliveries when read, so claims and retries never touch the event's row.
    pub(crate) const OPEN: i16 = 9;
}

/// Attempt outcome codes.
pub(crate) mod outcome {
    pub(crate) const SUCCEEDED: i16 = 1;
    pub(crate) const FAILED: i16 = 2;
    pub(crate) const DEAD: i16 = 3;
    pub(crate) const LEASE_EXPIRED: i16 = 5;
}

/// Version 1. `{s}` stands for the quoted schema name.
///
/// - `events.open_deliveries` counts the deliveries not finished and `events.ended` is the
///   greatest finished status among them; both change by arithmetic in one `UPDATE` (which
///   PostgreSQL applies to the newest row version), so nodes finishing deliveries of one event at
///   once cannot both miss that it finished. `status` is `ended` once nothing is open, 9 before.
/// - `deliveries_ready` serves claims of pending deliveries, best first; `deliveries_later` the
///   scheduled and retrying ones that came due (a claim moves them to pending) and `next_due`;
///   `deliveries_leased` lease expiry; `deliveries_expiring` the TTL check of a claim.
/// - `events_topic` and `events_status` serve history pages, newest first by `seq`.
const V1: &str = r#"
CREATE TABLE {s}.subscriptions (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    pattern text NOT NULL,
    regex text NOT NULL,
    removed boolean NOT NULL DEFAULT false
);
CREATE TABLE {s}.events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    topic text NOT NULL,
    payload bytea NOT NULL,
    content_type text,
    source text,
    headers text,
    priority smallint NOT NULL,
    published_at bigint NOT NULL,
    deliver_at bigint NOT NULL,
    expires_at bigint,
    key text,
    reply_to text,
    open_deliveries integer NOT NULL,
    ended smallint NOT NULL DEFAULT 0,
    status smallint NOT NULL,
    finished_at bigint
);
CREATE UNIQUE INDEX events_key ON {s}.events (key) WHERE key IS NOT NULL;
CREATE INDEX events_topic ON {s}.events (topic, seq);
CREATE INDEX events_status ON {s}.events (status, seq);
CREATE INDEX events_published ON {s}.events (published_at);
CREATE INDEX events_finished ON {s}.events (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE {s}.deliveries (
    id uuid PRIMARY KEY,
    event bigint NOT NULL,
    sub integer NOT NULL,
    status smallint NOT NULL,
    priority smallint NOT NULL,
    due bigint NOT NULL,
    expires_at bigint,
    attempts integer NOT NULL DEFAULT 0,
    token bigint NOT NULL DEFAULT 0,
    lease_until bigint NOT NULL DEFAULT 0,
    last_error text,
    reply bytea
);
CREATE INDEX deliveries_event ON {s}.deliveries (event);
CREATE INDEX deliveries_sub ON {s}.deliveries (sub, event);
CREATE INDEX deliveries_ready ON {s}.deliveries (sub, priority DESC, due) WHERE status = 6;
CREATE INDEX deliveries_later ON {s}.deliveries (sub, due) WHERE status IN (5, 7);
CREATE INDEX deliveries_leased ON {s}.deliveries (sub, lease_until) WHERE status = 8;
CREATE INDEX deliveries_expiring ON {s}.deliveries (sub, expires_at)
    WHERE expires_at IS NOT NULL AND status IN (5, 6, 7, 8);
CREATE TABLE {s}.attempts (
    delivery uuid NOT NULL,
    number integer NOT NULL,
    started_at bigint NOT NULL,
    finished_at bigint,
    outcome smallint,
    error text,
    PRIMARY KEY (delivery, number)
);
-- A UUIDv7 for the millisecond `ms`: the version bits of a random UUID set to 7 and its first 48
-- bits replaced by the time (PostgreSQL 15 has no uuidv7()).
CREATE FUNCTION {s}.uuid7(ms bigint) RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
        PLACING substring(int8send(ms) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;
"#;

/// Each migration takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1];

/// `schema` quoted as an identifier.
pub(crate) fn quoted(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

/// Creates the schema if needed and brings it up to [`VERSION`], in one transaction under an
/// advisory lock, so that nodes connecting at once migrate one after the other.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<(), ConnectError> {
    let q = quoted(schema);
    let sql = |e: tokio_postgres::Error| ConnectError::Migrate {
        schema: schema.to_owned(),
        source: e,
    };
    let tx = client.transaction().await.map_err(sql)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("herald:{schema}")],
    )
    .await
    .map_err(sql)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {q};
         CREATE TABLE IF NOT EXISTS {q}.herald_schema (version integer NOT NULL);"
    ))
    .await
    .map_err(sql)?;
    let found: Option<i32> = tx
        .query_opt(&format!("SELECT max(version) FROM {q}.herald_schema"), &[])
        .await
        .map_err(sql)?
        .and_then(|r| r.get(0));
    let found = found.unwrap_or(0);
    if found > VERSION {
        return Err(ConnectError::NewerSchema {
            schema: schema.to_owned(),
            found,
            known: VERSION,
        });
    }
    let steps = MIGRATIONS.get(usize::try_from(found).unwrap_or(0)..).unwrap_or(&[]);
    for step in steps {
        tx.batch_execute(&step.replace("{s}", &q)).await.map_err(sql)?;
    }
    if !steps.is_empty() {
        tx.batch_execute(&format!(
            "DELETE FROM {q}.herald_schema; INSERT INTO {q}.herald_schema (version) VALUES ({VERSION});"
        ))
        .await
        .map_err(sql)?;
    }
    tx.commit().await.map_err(sql)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_has_its_migration() {
        assert_eq!(MIGRATIONS.len(), VERSION as usize);
        assert_eq!(quoted("a\"b"), "\"a\"\"b\"");
    }
}
