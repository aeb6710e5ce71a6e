//! The running counts behind `stats` and `backlog`: kept by the writer in the `counters` table,
//! changed in the same transaction as the rows they count, so they survive restarts exactly and
//! `stats` never scans the tables.

use rusqlite::Connection;

use crate::schema::{counter, status};

/// Events, unrouted events, and deliveries by status code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Indexed by status code (1..=8; 0 unused).
    pub(crate) deliveries: [i64; 9],
    pub(crate) events: i64,
    pub(crate) unrouted: i64,
}

impl Counts {
    /// Reads the counts saved in the file.
    pub(crate) fn load(conn: &Connection) -> rusqlite::Result<Counts> {
        let mut counts = Counts::default();
        let mut stmt = conn.prepare("SELECT key, n FROM counters")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let key: i64 = row.get(0)?;
            let n: i64 = row.get(1)?;
            if let Some(slot) = counts.slot(key) {
                *slot = n;
            }
        }
        Ok(counts)
    }

    fn slot(&mut self, key: i64) -> Option<&mut i64> {
        match key {
            counter::EVENTS => Some(&mut self.events),
            counter::UNROUTED => Some(&mut self.unrouted),
            k => usize::try_from(k).ok().and_then(|i| self.deliveries.get_mut(i)),
        }
    }

    /// Moves one delivery from status `from` to `to`.
    pub(crate) fn shift(&mut self, from: i64, to: i64) {
        self.add(from, -1);
        self.add(to, 1);
    }

    /// Adds `n` deliveries of status `code`.
    pub(crate) fn add(&mut self, code: i64, n: i64) {
        if let Some(slot) = usize::try_from(code).ok().and_then(|i| self.deliveries.get_mut(i)) {
            *slot += n;
        }
    }

    /// Deliveries not finished: scheduled, pending, retrying and active.
    pub(crate) fn open(&self) -> u64 {
        let open: i64 = [status::SCHEDULED, status::PENDING, status::RETRYING, status::ACTIVE]
            .iter()
            .filter_map(|&c| usize::try_from(c).ok().and_then(|i| self.deliveries.get(i)))
            .sum();
        u64::try_from(open).unwrap_or(0)
    }

    /// Writes the counts that differ from `before`.
    pub(crate) fn save(&self, before: &Counts, conn: &Connection) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO counters (key, n) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET n = excluded.n",
        )?;
        let pairs = (1..9)
            .map(|i| (i as i64, self.deliveries[i], before.deliveries[i]))
            .chain([
                (counter::EVENTS, self.events, before.events),
                (counter::UNROUTED, self.unrouted, before.unrouted),
            ]);
        for (key, now, then) in pairs {
            if now != then {
                stmt.execute((key, now))?;
            }
        }
        Ok(())
    }
}
