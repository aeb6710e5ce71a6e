//! Quick start: subscribe, publish, watch a failing handler retry, and read the history.
//!
//! Run with `cargo run -p herald --example quickstart`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::{Backoff, Context, EventStatus, HandlerError, Herald};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPaid {
    order: u64,
    cents: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let herald = Herald::builder().build().await?;

    // Two subscriptions to the same topic: each gets its own delivery and its own retries.
    herald
        .subscribe("receipts", "order.paid")
        .handle(|paid: OrderPaid, _ctx: Context| async move {
            println!("receipts: order {} paid {} cents", paid.order, paid.cents);
            Ok::<_, HandlerError>(())
        })
        .await?;

    // A flaky dependency: fails twice, then works. Retries back off exponentially.
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    herald
        .subscribe("ledger", "order.*")
        .max_attempts(5)
        .backoff(Backoff::exponential(Duration::from_millis(50)))
        .handle(move |paid: OrderPaid, ctx: Context| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    println!("ledger: attempt {} for order {} failed", ctx.attempt(), paid.order);
                    return Err(HandlerError::msg("ledger database unavailable"));
                }
                println!("ledger: attempt {} for order {} booked", ctx.attempt(), paid.order);
                Ok(())
            }
        })
        .await?;

    let id = herald
        .publish("order.paid", &OrderPaid { order: 7, cents: 1999 })
        .await?;
    println!("published event {id}");

    // Wait until both deliveries are done, then show the history.
    let record = loop {
        let record = herald.get(id).await?.ok_or("the event vanished")?;
        if record.status.is_finished() {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("event {} is {}", record.event.id(), record.status);
    for d in &record.deliveries {
        println!(
            "  {:<9} {:<10} after {} attempt(s)",
            d.subscription, d.status, d.attempt_count
        );
        for a in &d.attempts {
            println!("    #{} {:?} {}", a.number, a.outcome, a.error.as_deref().unwrap_or(""));
        }
    }
    assert_eq!(record.status, EventStatus::Succeeded);

    let report = herald.shutdown(Duration::from_secs(5)).await;
    println!("shut down: {report:?}");
    Ok(())
}
