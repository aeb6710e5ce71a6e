//! Delayed events: publish after a delay or at a time, cancel one, and let another expire.
//!
//! Run with `cargo run -p herald --example delayed`.

use std::time::{Duration, Instant};

use herald::{Context, HandlerError, Herald};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let herald = Herald::builder().build().await?;
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    herald
        .subscribe("reminders", "reminder.>")
        .handle(move |text: String, ctx: Context| {
            let tx = tx.clone();
            async move {
                let late = herald::Timestamp::now_system().millis_since(ctx.due());
                println!(
                    "{:>5} ms: {text} (due {}, {late} ms late)",
                    started.elapsed().as_millis(),
                    ctx.due()
                );
                let _ = tx.send(());
                Ok::<_, HandlerError>(())
            }
        })
        .await?;

    herald
        .publish("reminder.tea", &"tea is ready")
        .delay(Duration::from_millis(300))
        .await?;
    let at = herald.clock().now() + Duration::from_millis(600);
    herald.publish("reminder.call", &"call back").at(at).await?;
    let cancelled = herald
        .publish("reminder.never", &"never shown")
        .delay(Duration::from_millis(400))
        .await?;
    herald.cancel(cancelled).await?;
    println!("cancelled {cancelled}");

    for _ in 0..2 {
        rx.recv().await;
    }
    herald.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
