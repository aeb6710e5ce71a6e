//! The statements, each one round trip and one transaction (a single statement in autocommit):
//! data-modifying CTEs do the work of several statements at once, and `pg_notify` in the same
//! statement announces what it made due, at its commit (except for publishes, whose NOTIFY
//! follows in a transaction of its own: see `PostgresStore::publish_and_notify`).
//!
//! Every time that judges a due date or a lease comes in as a parameter from the store's clock;
//! no statement reads the server's `now()`.

use crate::codec::EVENT_COLUMNS;

/// The store's statements, rendered for its schema once at connect.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) schema: String,
    pub(crate) declare: String,
    pub(crate) remove: String,
    pub(crate) publish: String,
    pub(crate) notify: String,
    pub(crate) key_holders: String,
    pub(crate) claim: String,
    pub(crate) extend: String,
    pub(crate) complete: String,
    pub(crate) cancel: String,
    pub(crate) requeue: String,
    pub(crate) next_due: String,
    pub(crate) get_event: String,
    pub(crate) deliveries: String,
    pub(crate) attempts: String,
    pub(crate) stats: String,
    pub(crate) purge: String,
}

/// A one-row subquery that makes the statement's transaction commit without waiting for its WAL
/// to reach the disk (`synchronous_commit = off` for this transaction alone). For claims and
/// lease extensions only: losing one to a server crash only makes its delivery claimable again,
/// as its lease running out would (fencing tokens are random, so a claim made again after a crash
/// never repeats a lost claim's token), and the next synchronous commit (an outcome, a publish)
/// flushes the WAL up to it anyway.
const ASYNC: &str = "(SELECT set_config('synchronous_commit', 'off', true)) AS async_commit";

/// How an event's counters change when `{n}` of its deliveries end with the status `{m}`.
fn ended(n: &str, m: &str, now: &str) -> String {
    format!(
        "open_deliveries = e.open_deliveries - {n}, ended = GREATEST(e.ended, {m}),
         status = CASE WHEN e.open_deliveries - {n} > 0 THEN 9 ELSE GREATEST(e.ended, {m}) END,
         finished_at = CASE WHEN e.open_deliveries - {n} > 0 THEN NULL ELSE {now} END"
    )
}

impl Statements {
    pub(crate) fn new(quoted_schema: &str) -> Self {
        let r = |sql: &str| {
            sql.replace("{s}", quoted_schema)
                .replace("{EVENT_COLUMNS}", EVENT_COLUMNS)
        };
        Statements {
            schema: quoted_schema.to_owned(),
            declare: r("INSERT INTO {s}.subscriptions (name, pattern, regex) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE
                 SET pattern = excluded.pattern, regex = excluded.regex, removed = false"),
            remove: r(&format!(
                "WITH s AS (UPDATE {{s}}.subscriptions SET removed = true WHERE name = $1 AND NOT removed RETURNING id),
                 c AS (UPDATE {{s}}.deliveries d SET status = 3 FROM s
                        WHERE d.sub = s.id AND d.status IN (5, 6, 7, 8) RETURNING d.event),
                 closed AS (UPDATE {{s}}.events e SET {}
                              FROM (SELECT event, count(*) AS n FROM c GROUP BY event) g WHERE e.seq = g.event)
                 SELECT count(*) FROM c",
                ended("g.n", "3", "$2::int8")
            )),
            publish: r("WITH input AS (
                    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[],
                                         $7::int2[], $8::int8[], $9::int8[], $10::int8[], $11::text[], $12::text[])
                        WITH ORDINALITY AS i(id, topic, payload, content_type, source, headers, priority,
                                             published_at, deliver_at, expires_at, key, reply_to, ord)),
                 routed AS (SELECT i.ord, s.id AS sub FROM input i
                              JOIN {s}.subscriptions s ON NOT s.removed AND i.topic ~ s.regex),
                 fanout AS (SELECT i.*, (SELECT count(*) FROM routed r WHERE r.ord = i.ord)::int4 AS n FROM input i),
                 ins AS (
                    INSERT INTO {s}.events (id, topic, payload, content_type, source, headers, priority, published_at,
                                           deliver_at, expires_at, key, reply_to, open_deliveries, status, finished_at)
                    SELECT id, topic, payload, content_type, source, headers, priority, published_at, deliver_at,
                           expires_at, key, reply_to, n, CASE WHEN n > 0 THEN 9 ELSE 0 END,
                           CASE WHEN n > 0 THEN NULL ELSE $13::int8 END
                      FROM fanout ORDER BY ord
                    ON CONFLICT DO NOTHING
                    RETURNING seq, id, priority, deliver_at, expires_at, open_deliveries),
                 dl AS (
                    INSERT INTO {s}.deliveries (id, event, sub, status, priority, due, expires_at)
                    SELECT {s}.uuid7($13::int8), ins.seq, r.sub,
                           CASE WHEN ins.deliver_at <= $13::int8 THEN 6 ELSE 5 END,
                           ins.priority, ins.deliver_at, ins.expires_at
                      FROM ins JOIN input i ON i.id = ins.id JOIN routed r ON r.ord = i.ord
                    RETURNING due)
                 SELECT ins.id, ins.open_deliveries FROM ins"),
            notify: "SELECT pg_notify($1, $2)".to_owned(),
            key_holders: r("SELECT key, id FROM {s}.events WHERE key = ANY($1)"),
            claim: r(&format!(
                "WITH s AS (SELECT id FROM {{s}}.subscriptions WHERE name = $1 AND NOT removed),
                 a AS (SELECT d.id, d.status, d.priority, d.due FROM {{s}}.deliveries d
                        WHERE d.sub = (SELECT id FROM s) AND d.status = 6
                          AND (d.expires_at IS NULL OR d.expires_at > $2::int8)
                        ORDER BY d.priority DESC, d.due LIMIT $3
                          FOR UPDATE SKIP LOCKED),
                 b AS (SELECT d.id, d.status, d.priority, d.due FROM {{s}}.deliveries d
                        WHERE d.sub = (SELECT id FROM s) AND d.status IN (5, 7) AND d.due <= $2::int8
                          AND (d.expires_at IS NULL OR d.expires_at > $2::int8)
                          FOR UPDATE SKIP LOCKED),
                 c AS (SELECT d.id, d.status, d.priority, d.due FROM {{s}}.deliveries d
                        WHERE d.sub = (SELECT id FROM s) AND d.status = 8 AND d.lease_until <= $2::int8
                          AND (d.expires_at IS NULL OR d.expires_at > $2::int8)
                        ORDER BY d.priority DESC, d.due LIMIT $3
                          FOR UPDATE SKIP LOCKED),
                 x AS (SELECT d.id, d.status, d.event, d.attempts FROM {{s}}.deliveries d
                        WHERE d.sub = (SELECT id FROM s) AND d.expires_at IS NOT NULL
                          AND d.status IN (5, 6, 7, 8) AND d.expires_at <= $2::int8
                          AND ((d.status IN (5, 6, 7) AND d.due <= $2::int8)
                               OR (d.status = 8 AND d.lease_until <= $2::int8))
                          FOR UPDATE SKIP LOCKED),
                 chosen AS (SELECT id, status FROM (SELECT * FROM a UNION ALL SELECT * FROM b UNION ALL SELECT * FROM c) u
                             ORDER BY priority DESC, due LIMIT $3),
                 claimed AS (UPDATE {{s}}.deliveries d
                                SET status = 8, attempts = d.attempts + 1, lease_until = $4::int8,
                                    token = floor(random() * 9007199254740991)::int8 + 1
                               FROM chosen WHERE d.id = chosen.id
                             RETURNING d.id, d.event, chosen.status AS was, d.attempts, d.token, d.due, d.priority),
                 promoted AS (UPDATE {{s}}.deliveries d SET status = 6
                                FROM b WHERE d.id = b.id AND b.id NOT IN (SELECT id FROM chosen)),
                 expired AS (UPDATE {{s}}.deliveries d SET status = 2 FROM x WHERE d.id = x.id
                             RETURNING d.id, d.event, x.status AS was, d.attempts),
                 lost AS (UPDATE {{s}}.attempts t SET finished_at = $2::int8, outcome = 5, error = $5::text
                            FROM (SELECT id, attempts - 1 AS n FROM claimed WHERE was = 8
                                  UNION ALL SELECT id, attempts FROM expired WHERE was = 8) l
                           WHERE t.delivery = l.id AND t.number = l.n AND t.finished_at IS NULL),
                 started AS (INSERT INTO {{s}}.attempts (delivery, number, started_at)
                             SELECT id, attempts, $2::int8 FROM claimed),
                 closed AS (UPDATE {{s}}.events e SET {}
                              FROM (SELECT event, count(*) AS n FROM expired GROUP BY event) g WHERE e.seq = g.event)
                 SELECT s.id, cl.id, cl.attempts, cl.token, cl.due, cl.priority, {{EVENT_COLUMNS}}
                   FROM s CROSS JOIN {ASYNC}
                   LEFT JOIN (claimed cl JOIN {{s}}.events e ON e.seq = cl.event) ON true
                  ORDER BY cl.priority DESC, cl.due",
                ended("g.n", "2", "$2::int8")
            )),
            extend: r(&format!(
                "UPDATE {{s}}.deliveries d SET lease_until = $3::int8
                   FROM unnest($1::uuid[], $2::int8[]) AS l(id, token), {ASYNC}
                  WHERE d.id = l.id AND d.token = l.token AND d.status = 8
                 RETURNING d.id, d.token"
            )),
            complete: r(&format!(
                "WITH o AS (SELECT * FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::int2[], $5::int8[],
                                                $6::text[], $7::bytea[])
                               WITH ORDINALITY AS o(id, token, fin, verdict, at, err, reply, ord)),
                 locked AS (SELECT d.id, d.event, d.attempts, d.due, d.token FROM {{s}}.deliveries d
                             WHERE d.id = ANY($1::uuid[]) AND d.status = 8 ORDER BY d.id FOR UPDATE),
                 held AS (SELECT DISTINCT ON (l.id) l.id, l.event, l.attempts, o.verdict, o.fin, o.at, o.err,
                                 o.reply, o.ord
                            FROM locked l JOIN o ON o.id = l.id AND o.token = l.token AND o.verdict BETWEEN 1 AND 4
                           ORDER BY l.id, o.ord),
                 upd AS (UPDATE {{s}}.deliveries d
                            SET status = CASE h.verdict WHEN 1 THEN 1 WHEN 2 THEN 7 WHEN 3 THEN 4 ELSE 6 END,
                                due = CASE WHEN h.verdict = 2 THEN h.at ELSE d.due END,
                                last_error = CASE WHEN h.verdict IN (2, 3) THEN h.err ELSE d.last_error END,
                                reply = CASE WHEN h.verdict = 1 THEN h.reply ELSE d.reply END,
                                attempts = CASE WHEN h.verdict = 4 THEN d.attempts - 1 ELSE d.attempts END
                           FROM held h WHERE d.id = h.id
                         RETURNING d.event, h.verdict, h.ord, d.due),
                 finished AS (UPDATE {{s}}.attempts t
                                 SET finished_at = h.fin, outcome = CASE h.verdict WHEN 1 THEN 1 WHEN 2 THEN 2 ELSE 3 END,
                                     error = CASE WHEN h.verdict IN (2, 3) THEN h.err END
                                FROM held h
                               WHERE h.verdict IN (1, 2, 3) AND t.delivery = h.id AND t.number = h.attempts),
                 released AS (DELETE FROM {{s}}.attempts t USING held h
                               WHERE h.verdict = 4 AND t.delivery = h.id AND t.number = h.attempts),
                 -- The events whose last open delivery may have ended, locked in one order (by seq), so
                 -- that batches finishing deliveries of the same events on several nodes cannot deadlock.
                 ev AS (SELECT seq FROM {{s}}.events
                         WHERE seq IN (SELECT event FROM held WHERE verdict IN (1, 3)) ORDER BY seq FOR UPDATE),
                 closed AS (UPDATE {{s}}.events e SET {}
                              FROM ev, (SELECT event, count(*) AS n, max(CASE verdict WHEN 1 THEN 1 ELSE 4 END) AS m
                                          FROM held WHERE verdict IN (1, 3) GROUP BY event) g
                             WHERE e.seq = ev.seq AND e.seq = g.event),
                 answers AS (SELECT u.ord, u.verdict, u.due, e.id AS event_id, e.reply_to IS NOT NULL AS request
                               FROM upd u JOIN {{s}}.events e ON e.seq = u.event),
                 wake AS (SELECT pg_notify($8::text, $9::text || w) FROM (
                              SELECT 'd' || min(due)::text AS w FROM answers WHERE verdict IN (2, 4) HAVING count(*) > 0
                              UNION ALL
                              SELECT 'a' || event_id::text FROM answers WHERE verdict IN (1, 3) AND request) n)
                 SELECT ord, verdict, due, event_id, request, (SELECT count(*) FROM wake) FROM answers",
                ended("g.n", "g.m", "$10::int8")
            )),
            cancel: r(&format!(
                "WITH ev AS (SELECT seq FROM {{s}}.events WHERE id = $1),
                 c AS (UPDATE {{s}}.deliveries d SET status = $2::int2 FROM ev
                        WHERE d.event = ev.seq AND d.status IN (5, 6, 7) RETURNING d.id),
                 closed AS (UPDATE {{s}}.events e SET {}
                              FROM (SELECT count(*) AS n FROM c) g, ev WHERE e.seq = ev.seq AND g.n > 0)
                 SELECT (SELECT count(*) FROM c) FROM ev",
                ended("g.n", "$2::int2", "$3::int8")
            )),
            requeue: r("WITH d0 AS (SELECT id, status, due, event FROM {s}.deliveries WHERE id = $1 FOR UPDATE),
                 r AS (UPDATE {s}.deliveries d SET status = 6, due = $2::int8
                        FROM d0 WHERE d.id = d0.id AND d0.status = 4 RETURNING d.event),
                 reopened AS (UPDATE {s}.events e
                                 SET open_deliveries = e.open_deliveries + 1, status = 9, finished_at = NULL,
                                     ended = (SELECT COALESCE(max(o.status), 0) FROM {s}.deliveries o
                                               WHERE o.event = e.seq AND o.id <> $1 AND o.status <= 4)
                                FROM r WHERE e.seq = r.event),
                 wake AS (SELECT pg_notify($3::text, $4::text || $2::int8::text) FROM r)
                 SELECT status, due, (SELECT count(*) FROM wake) FROM d0"),
            next_due: r("SELECT min(t) FROM (
                    SELECT (SELECT d.due FROM {s}.deliveries d
                             WHERE d.sub = s.id AND d.status IN (5, 7) AND d.due > $2::int8
                             ORDER BY d.due LIMIT 1) AS t
                      FROM {s}.subscriptions s WHERE s.name = ANY($1)
                    UNION ALL
                    SELECT (SELECT d.lease_until FROM {s}.deliveries d
                             WHERE d.sub = s.id AND d.status = 8 AND d.lease_until > $2::int8
                             ORDER BY d.lease_until LIMIT 1)
                      FROM {s}.subscriptions s WHERE s.name = ANY($1)) x"),
            get_event: r("SELECT {EVENT_COLUMNS} FROM {s}.events e WHERE e.id = $1"),
            deliveries: r("SELECT d.event, d.id, s.name, d.status, d.attempts, d.due, d.last_error, d.reply
                             FROM {s}.deliveries d JOIN {s}.subscriptions s ON s.id = d.sub
                            WHERE d.event = ANY($1) ORDER BY d.event, d.sub"),
            attempts: r("SELECT delivery, number, started_at, finished_at, outcome, error FROM {s}.attempts
                          WHERE delivery = ANY($1) ORDER BY delivery, number"),
            stats: r("SELECT status::int4, count(*) FROM {s}.deliveries GROUP BY status
                      UNION ALL SELECT -1, count(*) FROM {s}.events
                      UNION ALL SELECT -2, count(*) FROM {s}.events WHERE status = 0
                      UNION ALL SELECT -3, count(*) FROM {s}.deliveries WHERE status = 5 AND due <= $1::int8
                      UNION ALL SELECT -4, count(*) FROM {s}.deliveries WHERE status = 7 AND due <= $1::int8"),
            purge: r("WITH doomed AS (SELECT seq FROM {s}.events
                                       WHERE finished_at IS NOT NULL AND finished_at < $1::int8
                                       ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED),
                 gone AS (DELETE FROM {s}.deliveries d USING doomed WHERE d.event = doomed.seq RETURNING d.id),
                 history AS (DELETE FROM {s}.attempts a USING gone WHERE a.delivery = gone.id),
                 events AS (DELETE FROM {s}.events e USING doomed WHERE e.seq = doomed.seq RETURNING 1)
                 SELECT count(*) FROM events"),
        }
    }
}
