//! The recent past for the dashboard's charts: once a second a sampler reads the store's counts
//! and the runtime's lateness histogram, turns the change since the last reading into rates, and
//! keeps the last 15 minutes of them in a ring buffer. Live viewers follow a watch channel.
//!
//! Throughput comes from the store's counts (`Herald::stats`), so it is the store's view: every
//! publisher to the store counts. Lateness (attempt start minus due time) is what the runtime
//! records in the `herald_lateness_seconds` histogram; the server reads it back from the
//! Prometheus recorder, the only place herald-core reports it. That recorder is process-wide, so
//! with several runtimes in one process (tests) lateness is theirs together, and without the
//! recorder (another one was installed first) lateness is absent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::Stats;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::api::{AppState, Shared};

/// How often the sampler reads.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);
/// How many samples are kept: 15 minutes at one a second.
pub(crate) const CAPACITY: usize = 900;
/// The histogram the runtime records lateness in.
const LATENESS: &str = "herald_lateness_seconds";

/// One second of the recent past: rates over the interval that ended at `t`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Point {
    /// The end of the interval, in milliseconds since the Unix epoch.
    t: u64,
    /// Events stored per second.
    published: f64,
    /// Deliveries that succeeded, per second.
    succeeded: f64,
    /// Deliveries that went dead, per second (net of dead ones retried).
    dead: f64,
    /// Lateness of the attempts that started in the interval; absent when none started or the
    /// server cannot read the runtime's histogram.
    lateness: Option<Lateness>,
}

/// Lateness of the attempts that started in one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Lateness {
    /// Attempts that started.
    count: u64,
    /// Their mean lateness, in milliseconds.
    mean_ms: f64,
    /// The 99th percentile, in milliseconds, interpolated within the histogram's buckets.
    p99_ms: f64,
}

/// What a live viewer receives each second.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Sample {
    point: Point,
    stats: Stats,
}

/// The recent past, and the channel live viewers follow.
#[derive(Debug)]
pub(crate) struct History {
    points: Mutex<VecDeque<Point>>,
    latest: watch::Sender<Live>,
}

/// The newest sample (none before the sampler's second reading), and whether there will be
/// more (`closed` once the server shuts down).
#[derive(Clone, Debug, Default)]
pub(crate) struct Live {
    pub(crate) sample: Option<Arc<Sample>>,
    pub(crate) closed: bool,
}

impl Default for History {
    fn default() -> Self {
        History {
            points: Mutex::new(VecDeque::with_capacity(CAPACITY)),
            latest: watch::channel(Live::default()).0,
        }
    }
}

/// The body of `GET /v1/stats/history`.
#[derive(Debug, Serialize)]
pub(crate) struct HistoryView {
    interval_ms: u64,
    points: Vec<Point>,
    stats: Option<Stats>,
}

impl History {
    /// The points kept, oldest first, with the newest counts.
    pub(crate) fn view(&self) -> HistoryView {
        let points = self
            .points
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let stats = self.latest.borrow().sample.as_ref().map(|s| s.stats.clone());
        HistoryView {
            interval_ms: u64::try_from(INTERVAL.as_millis()).unwrap_or(u64::MAX),
            points,
            stats,
        }
    }

    /// Follows the live samples.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Live> {
        self.latest.subscribe()
    }

    fn push(&self, sample: Sample) {
        {
            let mut points = self.points.lock().unwrap_or_else(|p| p.into_inner());
            if points.len() == CAPACITY {
                points.pop_front();
            }
            points.push_back(sample.point.clone());
        }
        self.latest.send_modify(|live| live.sample = Some(Arc::new(sample)));
    }

    fn close(&self) {
        self.latest.send_modify(|live| live.closed = true);
    }
}

/// One reading of the counters the rates are made from.
struct Reading {
    at: Instant,
    stats: Stats,
    lateness: Option<Histogram>,
}

/// Starts the sampler. It holds the server's state weakly and stops when the server shuts down
/// or is dropped.
pub(crate) fn spawn_sampler(app: &AppState) {
    let shared = Arc::downgrade(&app.0);
    tokio::spawn(sample(shared));
}

async fn sample(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last: Option<Reading> = None;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let app = AppState(shared);
        if app.is_closing() {
            app.0.history.close();
            return;
        }
        let stats = match app.herald().stats().await {
            Ok(stats) => stats,
            Err(e) => {
                tracing::debug!(error = %e, "herald: the dashboard sampler could not read the counts");
                continue;
            }
        };
        let lateness = app.0.metrics.as_ref().map(|h| Histogram::parse(&h.render(), LATENESS));
        let reading = Reading {
            at: Instant::now(),
            stats,
            lateness,
        };
        if let Some(before) = &last {
            app.0.history.push(Sample {
                point: Point::between(before, &reading, now_ms()),
                stats: reading.stats.clone(),
            });
        }
        last = Some(reading);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Point {
    fn between(before: &Reading, after: &Reading, t: u64) -> Point {
        let secs = after.at.duration_since(before.at).as_secs_f64().max(f64::EPSILON);
        // Counts can fall (retention purges, a retried dead delivery): a rate is never negative.
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        let (b, a) = (&before.stats, &after.stats);
        let lateness = match (&before.lateness, &after.lateness) {
            (Some(b), Some(a)) => a.since(b).lateness(),
            _ => None,
        };
        Point {
            t,
            published: rate(b.events, a.events),
            succeeded: rate(b.deliveries.succeeded, a.deliveries.succeeded),
            dead: rate(b.deliveries.dead, a.deliveries.dead),
            lateness,
        }
    }
}

/// A Prometheus histogram summed over its label sets: cumulative counts by upper bound.
#[derive(Clone, Debug, Default, PartialEq)]
struct Histogram {
    /// `(le, cumulative count)`, by increasing bound; the last is `+Inf`.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    /// Reads histogram `name` from Prometheus text, adding up every label set.
    fn parse(text: &str, name: &str) -> Histogram {
        let mut h = Histogram::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else { continue };
            let Some((series, value)) = line.rsplit_once([' ', '\t']) else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            if rest.starts_with("_sum") {
                h.sum += value;
            } else if rest.starts_with("_count") {
                h.count += value;
            } else if rest.starts_with("_bucket") {
                let Some(le) = label(series, "le") else { continue };
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                if le.is_nan() {
                    continue;
                }
                match h.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, n)) => *n += value,
                    None => h.buckets.push((le, value)),
                }
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    /// What was recorded between `before` and `self`.
    fn since(&self, before: &Histogram) -> Histogram {
        let earlier = |le: f64| before.buckets.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, n)| *n);
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| (le, (n - earlier(le)).max(0.0)))
                .collect(),
            sum: (self.sum - before.sum).max(0.0),
            count: (self.count - before.count).max(0.0),
        }
    }

    /// Mean and 99th percentile of what the histogram holds, if it holds anything.
    fn lateness(&self) -> Option<Lateness> {
        if self.count < 1.0 {
            return None;
        }
        Some(Lateness {
            count: self.count as u64,
            mean_ms: self.sum / self.count * 1000.0,
            p99_ms: self.quantile(0.99)? * 1000.0,
        })
    }

    /// The `q` quantile, interpolated linearly within its bucket; in the `+Inf` bucket, the
    /// largest finite bound (all that can be said).
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let within = n - below;
                let fraction = if within > 0.0 { (rank - below) / within } else { 1.0 };
                return Some(lower + (le - lower) * fraction);
            }
            (lower, below) = (le, n);
        }
        Some(lower)
    }
}

/// The value of label `name` in a series such as `m_bucket{a="x",le="0.5"}`.
fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let len = series[start..].find('"')?;
    Some(&series[start..start + len])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const TEXT: &str = "\
# TYPE herald_lateness_seconds histogram
herald_lateness_seconds_bucket{subscription=\"a\",le=\"0.01\"} 8
herald_lateness_seconds_bucket{subscription=\"a\",le=\"0.1\"} 10
herald_lateness_seconds_bucket{subscription=\"a\",le=\"+Inf\"} 10
herald_lateness_seconds_sum{subscription=\"a\"} 0.2
herald_lateness_seconds_count{subscription=\"a\"} 10
herald_lateness_seconds_bucket{subscription=\"b\",le=\"0.01\"} 0
herald_lateness_seconds_bucket{subscription=\"b\",le=\"0.1\"} 0
herald_lateness_seconds_bucket{subscription=\"b\",le=\"+Inf\"} 10
herald_lateness_seconds_sum{subscription=\"b\"} 5
herald_lateness_seconds_count{subscription=\"b\"} 10
herald_latenessish_seconds_count 99
herald_handle_seconds_count{subscription=\"a\"} 7
";

    #[test]
    fn a_histogram_is_summed_over_its_label_sets() {
        let h = Histogram::parse(TEXT, LATENESS);
        assert_eq!(h.buckets, vec![(0.01, 8.0), (0.1, 10.0), (f64::INFINITY, 20.0)]);
        assert_eq!(h.count, 20.0);
        assert!((h.sum - 5.2).abs() < 1e-9);
    }

    #[test]
    fn lateness_is_what_was_recorded_in_between() {
        let before = Histogram::parse(TEXT, LATENESS);
        let mut after = before.clone();
        // 10 more attempts: 9 under 10 ms, 1 between 10 and 100 ms; 0.1 s in all.
        after.buckets = vec![(0.01, 17.0), (0.1, 20.0), (f64::INFINITY, 30.0)];
        after.sum += 0.1;
        after.count += 10.0;
        let l = after.since(&before).lateness().unwrap();
        assert_eq!(l.count, 10);
        assert!((l.mean_ms - 10.0).abs() < 1e-6, "{l:?}");
        // The 99th of 10 is in the (10 ms, 100 ms] bucket, 0.9 of the way up.
        assert!((l.p99_ms - 91.0).abs() < 1e-6, "{l:?}");
        assert_eq!(before.since(&before).lateness(), None);
    }

    #[test]
    fn a_quantile_past_the_last_bound_is_that_bound() {
        let h = Histogram {
            buckets: vec![(0.5, 0.0), (60.0, 0.0), (f64::INFINITY, 3.0)],
            sum: 300.0,
            count: 3.0,
        };
        assert_eq!(h.quantile(0.99), Some(60.0));
    }
}
