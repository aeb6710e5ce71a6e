//! Human output: aligned tables, values as text and short durations.

use std::time::{Duration, SystemTime};

use serde_json::Value;

/// A table with a header row; columns are padded to their widest cell.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub(crate) fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether it has rows beyond the header.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// The table as text, one line per row, without trailing spaces.
    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[c].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A JSON value as a cell: strings without quotes, null as `-`.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// At most the first `n` characters of `s`, with `…` when cut.
pub(crate) fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A duration in at most two units: `450ms`, `30s`, `5m`, `1h 30m`, `2d 3h`.
pub(crate) fn short(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = s;
    for (size, name) in units {
        if rest >= size {
            parts.push(format!("{}{name}", rest / size));
            rest %= size;
        }
        if parts.len() == 2 || (!parts.is_empty() && size == 1) {
            break;
        }
        if !parts.is_empty() && rest < size / 60 {
            // The next unit is zero: `5m`, not `5m 0s`.
            break;
        }
    }
    parts.join(" ")
}

/// Milliseconds (a JSON number) as a short duration; `-` when absent.
pub(crate) fn millis(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "-".to_owned(), |ms| short(Duration::from_millis(ms)))
}

/// An RFC 3339 time relative to now: `in 30s`, `5m ago`, `now`; as is if it does not parse.
pub(crate) fn relative(v: &Value) -> String {
    let Some(s) = v.as_str() else { return text(v) };
    let Ok(t) = humantime::parse_rfc3339_weak(s) else {
        return s.to_owned();
    };
    relative_to(t, SystemTime::now())
}

fn relative_to(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(d) if d >= Duration::from_secs(1) => format!("in {}", short(d)),
        Ok(_) => "now".to_owned(),
        Err(e) if e.duration() < Duration::from_secs(1) => "now".to_owned(),
        Err(e) => format!("{} ago", short(e.duration())),
    }
}

/// The time from `start` to `end` (both RFC 3339), or `-`.
pub(crate) fn took(start: &Value, end: &Value) -> String {
    let parse = |v: &Value| v.as_str().and_then(|s| humantime::parse_rfc3339_weak(s).ok());
    match (parse(start), parse(end)) {
        (Some(a), Some(b)) => b.duration_since(a).map_or_else(|_| "-".to_owned(), short),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn short_durations() {
        assert_eq!(short(Duration::from_millis(450)), "450ms");
        assert_eq!(short(Duration::from_secs(30)), "30s");
        assert_eq!(short(Duration::from_secs(300)), "5m");
        assert_eq!(short(Duration::from_secs(330)), "5m 30s");
        assert_eq!(short(Duration::from_secs(5_400)), "1h 30m");
        assert_eq!(short(Duration::from_secs(3_600)), "1h");
        assert_eq!(short(Duration::from_secs(3_605)), "1h");
        assert_eq!(short(Duration::from_secs(2 * 86_400 + 3 * 3_600 + 7)), "2d 3h");
    }

    #[test]
    fn relative_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(relative_to(now + Duration::from_secs(30), now), "in 30s");
        assert_eq!(relative_to(now - Duration::from_secs(300), now), "5m ago");
        assert_eq!(relative_to(now, now), "now");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["ID", "TOPIC"]);
        t.row(vec!["1".into(), "orders.created".into()]);
        t.row(vec!["1234".into(), "x".into()]);
        assert_eq!(t.render(), "ID    TOPIC\n1     orders.created\n1234  x\n");
    }
}
