//! The metrics herald records, read back through a real recorder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_core::{Backoff, Context, HandlerError, Herald};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::CompositeKey;

type Snapshot = Vec<(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn value<'a>(snap: &'a Snapshot, name: &str, label: (&str, &str)) -> Option<&'a DebugValue> {
    snap.iter().find_map(|(key, _, _, v)| {
        let k = key.key();
        (k.name() == name && k.labels().any(|l| l.key() == label.0 && l.value() == label.1)).then_some(v)
    })
}

#[tokio::test(start_paused = true)]
async fn counters_and_histograms_are_recorded_per_topic_and_subscription() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder.install().expect("the only recorder in this test binary");

    let herald = Herald::builder().system_events(false).build().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    herald
        .subscribe("meter", "metered.*")
        .max_attempts(2)
        .backoff(Backoff::fixed(Duration::from_millis(10)))
        .handle(move |fail: bool, _ctx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
                if fail {
                    Err(HandlerError::msg("no"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    herald.publish("metered.ok", &false).await.unwrap();
    herald.publish("metered.ok", &false).await.unwrap();
    herald.publish("metered.bad", &true).await.unwrap();
    for _ in 0..4 {
        rx.recv().await.unwrap();
    }
    herald.shutdown(Duration::from_secs(1)).await;

    // Histograms drain on each snapshot: take one.
    let snap = snap.snapshot().into_vec();
    let sub = ("subscription", "meter");
    assert_eq!(
        value(&snap, "herald_events_published_total", ("topic", "metered.ok")),
        Some(&DebugValue::Counter(2))
    );
    assert_eq!(
        value(&snap, "herald_events_published_total", ("topic", "metered.bad")),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        value(&snap, "herald_deliveries_succeeded_total", sub),
        Some(&DebugValue::Counter(2))
    );
    assert_eq!(
        value(&snap, "herald_attempts_failed_total", sub),
        Some(&DebugValue::Counter(2))
    );
    assert_eq!(
        value(&snap, "herald_deliveries_retried_total", sub),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        value(&snap, "herald_deliveries_dead_total", sub),
        Some(&DebugValue::Counter(1))
    );
    match value(&snap, "herald_handle_seconds", sub) {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 4),
        other => panic!("no handle-time histogram: {other:?}"),
    }
    match value(&snap, "herald_lateness_seconds", sub) {
        Some(DebugValue::Histogram(samples)) => {
            assert_eq!(samples.len(), 4);
            assert!(samples.iter().all(|s| s.into_inner() >= 0.0));
        }
        other => panic!("no lateness histogram: {other:?}"),
    }
}
