//! Metrics through the `metrics` facade. Handles are registered once (per topic, per
//! subscription) and reused, so the hot path does no key building. Install a recorder (such as
//! `metrics-exporter-prometheus`) before building the runtime.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `herald_events_published_total` | counter | `topic` |
//! | `herald_deliveries_succeeded_total` | counter | `subscription` |
//! | `herald_attempts_failed_total` | counter | `subscription` |
//! | `herald_deliveries_retried_total` | counter | `subscription` |
//! | `herald_deliveries_dead_total` | counter | `subscription` |
//! | `herald_deliveries_cancelled_total` | counter | |
//! | `herald_deliveries_expired_total` | counter | |
//! | `herald_handle_seconds` | histogram | `subscription` |
//! | `herald_lateness_seconds` | histogram | `subscription` (attempt start minus due time) |
//! | `herald_deliveries` | gauge | `status` (from the store, every 5 s) |

use metrics::{counter, gauge, histogram, Counter, Histogram};

use crate::store::{DeliveryStatus, Stats};
use crate::topic::{SubscriptionName, Topic};

pub(crate) struct Metrics {
    pub(crate) cancelled: Counter,
    pub(crate) expired: Counter,
}

pub(crate) struct SubMetrics {
    pub(crate) succeeded: Counter,
    pub(crate) failed: Counter,
    pub(crate) retried: Counter,
    pub(crate) dead: Counter,
    pub(crate) handle_time: Histogram,
    pub(crate) lateness: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics {
            cancelled: counter!("herald_deliveries_cancelled_total"),
            expired: counter!("herald_deliveries_expired_total"),
        }
    }

    pub(crate) fn published(&self, topic: &Topic) -> Counter {
        counter!("herald_events_published_total", "topic" => topic.as_str().to_owned())
    }

    pub(crate) fn subscription(&self, name: &SubscriptionName) -> SubMetrics {
        let label = name.as_str().to_owned();
        SubMetrics {
            succeeded: counter!("herald_deliveries_succeeded_total", "subscription" => label.clone()),
            failed: counter!("herald_attempts_failed_total", "subscription" => label.clone()),
            retried: counter!("herald_deliveries_retried_total", "subscription" => label.clone()),
            dead: counter!("herald_deliveries_dead_total", "subscription" => label.clone()),
            handle_time: histogram!("herald_handle_seconds", "subscription" => label.clone()),
            lateness: histogram!("herald_lateness_seconds", "subscription" => label),
        }
    }

    pub(crate) fn record_stats(&self, stats: &Stats) {
        for &status in DeliveryStatus::ALL {
            gauge!("herald_deliveries", "status" => status.as_str()).set(stats.deliveries.get(status) as f64);
        }
    }
}
