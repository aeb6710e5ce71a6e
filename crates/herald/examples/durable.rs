//! Durable events: a delayed event published by one runtime survives its shutdown and fires,
//! on time, in the next runtime that opens the same file.
//!
//! Run with `cargo run -p herald --features sqlite --example durable`.

use std::time::Duration;

use herald::sqlite::SqliteBuilderExt;
use herald::{Context, HandlerError, Herald};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("herald-durable-example-{}", std::process::id()));
    let path = dir.join("herald.db");

    // First run: publish a reminder due in 1.5 s, then stop before it is due.
    let first = Herald::builder().sqlite(&path).build().await?;
    first
        .subscribe("reminders", "reminder.>")
        .handle(|text: String, _ctx: Context| async move {
            println!("first runtime: {text}");
            Ok::<_, HandlerError>(())
        })
        .await?;
    let id = first
        .publish("reminder.call", &"call the customer back")
        .delay(Duration::from_millis(1500))
        .await?;
    let due = first.get(id).await?.ok_or("the event is stored")?.event.deliver_at();
    println!("published {id}, due at {due}; shutting down");
    first.shutdown(Duration::from_secs(1)).await;
    drop(first);

    // Second run, same file: the reminder is still there and fires on its millisecond.
    let second = Herald::builder().sqlite(&path).build().await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    second
        .subscribe("reminders", "reminder.>")
        .handle(move |text: String, ctx: Context| {
            let tx = tx.clone();
            async move {
                let late = herald::Timestamp::now_system().millis_since(ctx.due());
                println!(
                    "second runtime: {text} (attempt {}, {late} ms after its due time)",
                    ctx.attempt()
                );
                let _ = tx.send(());
                Ok::<_, HandlerError>(())
            }
        })
        .await?;
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?;
    // The handler has run; its outcome is recorded right after.
    let record = loop {
        let record = second.get(id).await?.ok_or("the event is stored")?;
        if record.status.is_finished() {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!("event {} is {}", record.event.id(), record.status);
    second.shutdown(Duration::from_secs(1)).await;
    drop(second);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
