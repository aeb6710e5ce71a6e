//! The Prometheus recorder: installed once per process, before any herald runtime is built,
//! because herald registers its metric handles when a runtime is built and when it subscribes.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds (seconds) of herald's histograms: handle time and lateness.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's global `metrics` recorder, once, and returns
/// its handle. `None` when another recorder was installed first: `/metrics` then answers 503.
pub fn install_recorder() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "herald: the Prometheus recorder could not be installed; /metrics is off");
                    None
                }
            }
        })
        .clone()
}

/// HELP lines for every metric herald and the server record (Prometheus linters want them).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("herald_events_published_total", "Events stored, by topic.");
    describe_counter!(
        "herald_deliveries_succeeded_total",
        "Deliveries handled, by subscription."
    );
    describe_counter!("herald_attempts_failed_total", "Attempts that failed, by subscription.");
    describe_counter!(
        "herald_deliveries_retried_total",
        "Failed attempts scheduled to run again, by subscription."
    );
    describe_counter!(
        "herald_deliveries_dead_total",
        "Deliveries that failed for good, by subscription."
    );
    describe_counter!(
        "herald_deliveries_cancelled_total",
        "Deliveries cancelled before they ran."
    );
    describe_counter!(
        "herald_deliveries_expired_total",
        "Deliveries that expired before they ran."
    );
    describe_histogram!(
        "herald_handle_seconds",
        Unit::Seconds,
        "How long handlers ran, by subscription."
    );
    describe_histogram!(
        "herald_lateness_seconds",
        Unit::Seconds,
        "Attempt start minus due time, by subscription."
    );
    describe_gauge!("herald_deliveries", "Deliveries in the store, by status.");
    describe_counter!(
        "herald_http_requests_total",
        "HTTP requests, by method, route and status."
    );
    describe_histogram!(
        "herald_http_request_seconds",
        Unit::Seconds,
        "HTTP request duration, by route."
    );
}
