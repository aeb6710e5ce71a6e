//! Cron schedules: one fires every two seconds, another is paused and resumed, and the listing
//! shows their next fire times and last outcome.
//!
//! Run with `cargo run -p herald --features cron --example cron`.

use std::time::Duration;

use herald::{Context, CronTick, HandlerError, Herald, Missed};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let herald = Herald::builder().build().await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    herald
        .subscribe("reports", "report.>")
        .handle(move |tick: CronTick, ctx: Context| {
            let tx = tx.clone();
            async move {
                let late = herald::Timestamp::now_system().millis_since(tick.tick);
                println!(
                    "{} fired for {} ({late} ms after the tick, topic {})",
                    tick.name,
                    tick.tick,
                    ctx.topic()
                );
                let _ = tx.send(());
                Ok::<_, HandlerError>(())
            }
        })
        .await?;

    // Six fields: seconds first. Every node that declares it shares the ticks.
    herald
        .cron("heartbeat", "*/2 * * * * *")
        .topic("report.heartbeat")
        .missed(Missed::CatchUpOne)
        .await?;
    let nightly = herald
        .cron("nightly-report", "0 3 * * *")
        .topic("report.nightly")
        .tz("Europe/Berlin")
        .await?;
    nightly.pause().await?;

    for _ in 0..3 {
        rx.recv().await;
    }
    nightly.resume().await?;

    for cron in herald.crons().await? {
        let next: Vec<String> = cron.next.iter().take(3).map(ToString::to_string).collect();
        let last = cron
            .last
            .map(|run| format!("{} ({:?})", run.tick, run.status))
            .unwrap_or_else(|| "never".into());
        println!(
            "{:<15} {:<30} paused={:<5} next: {}  last: {last}",
            cron.name,
            cron.spec.to_string(),
            cron.paused,
            next.join(", ")
        );
    }

    match herald
        .cron("broken", "0 3 * * *")
        .tz("Europe/Berln")
        .topic("report.x")
        .await
    {
        Err(e) => println!("refused: {e}"),
        Ok(_) => unreachable!("an unknown time zone is refused"),
    }
    herald.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
