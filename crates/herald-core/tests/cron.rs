//! Cron schedules on tokio's paused clock: ticks on their second, daylight-saving changes,
//! pause/resume/remove/replace, missed-tick policies, one event per tick across runtimes that
//! share a store, lifecycle events and the errors for invalid schedules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use herald_core::*;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A UTC time from RFC 3339.
fn at(s: &str) -> Timestamp {
    Timestamp::from_millis(s.parse::<jiff::Timestamp>().unwrap().as_millisecond())
}

fn store_at(start: &str) -> Arc<dyn Store> {
    Arc::new(MemoryStore::builder().clock(Clock::starting_at(at(start))).build())
}

async fn herald_on(store: &Arc<dyn Store>, system_events: bool) -> Herald {
    Herald::builder()
        .shared_store(store.clone())
        .system_events(system_events)
        .build()
        .await
        .unwrap()
}

/// What a handler saw of a tick's event.
#[derive(Debug, Clone)]
struct Seen {
    tick: CronTick,
    due: Timestamp,
    published_at: Timestamp,
    handled_at: Timestamp,
    key: Option<String>,
    tick_header: Option<String>,
}

async fn ticks(herald: &Herald, sub: &str, topic: &str) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let clock = herald.clock();
    herald
        .subscribe(sub, topic)
        .handle(move |tick: CronTick, ctx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Seen {
                    tick,
                    due: ctx.due(),
                    published_at: ctx.event().published_at(),
                    handled_at: clock.now(),
                    key: ctx.event().key().map(str::to_owned),
                    tick_header: ctx.headers().get(CRON_TICK_HEADER).map(str::to_owned),
                });
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    rx
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    timeout(Duration::from_secs(400 * 86_400), rx.recv())
        .await
        .expect("nothing arrived within 400 days of paused time")
        .expect("channel closed")
}

/// The next `n` ticks the handler saw, checking each was published and handled on its tick.
async fn fired(rx: &mut mpsc::UnboundedReceiver<Seen>, n: usize) -> Vec<Timestamp> {
    let mut out = Vec::new();
    for _ in 0..n {
        let seen = next(rx).await;
        let tick = seen.tick.tick;
        assert_eq!(seen.due, tick, "due on the tick: {seen:?}");
        assert_eq!(seen.published_at, tick, "published on the tick: {seen:?}");
        assert_eq!(seen.handled_at, tick, "handled on the tick: {seen:?}");
        assert_eq!(seen.key.as_deref(), Some(cron_key(&seen.tick.name, tick).as_str()));
        assert_eq!(seen.tick_header, Some(tick.to_string()));
        out.push(tick);
    }
    out
}

/// Events stored on `topic`, oldest first.
async fn events_on(store: &Arc<dyn Store>, topic: &str) -> Vec<EventRecord> {
    let filter = EventFilter {
        topic: Some(Pattern::new(topic).unwrap()),
        ..EventFilter::default()
    };
    let mut items = store.query(&filter, PageRequest::first(1000)).await.unwrap().items;
    items.reverse();
    items
}

fn times(ts: &[&str]) -> Vec<Timestamp> {
    ts.iter().map(|s| at(s)).collect()
}

#[tokio::test(start_paused = true)]
async fn six_field_ticks_fire_on_their_second() {
    let store = store_at("2026-01-01T00:00:03.250Z");
    let herald = herald_on(&store, false).await;
    let mut rx = ticks(&herald, "six", "tick.six").await;
    herald.cron("six", "*/10 * * * * *").topic("tick.six").await.unwrap();
    assert_eq!(
        fired(&mut rx, 3).await,
        times(&["2026-01-01T00:00:10Z", "2026-01-01T00:00:20Z", "2026-01-01T00:00:30Z"])
    );
}

#[tokio::test(start_paused = true)]
async fn five_field_ticks_fire_on_their_minute_and_are_listed() {
    let store = store_at("2026-01-01T00:03:00Z");
    let herald = herald_on(&store, false).await;
    let mut rx = ticks(&herald, "five", "tick.five").await;
    let handle = herald.cron("five", "*/5 * * * *").topic("tick.five").await.unwrap();
    let info = handle.info().await.unwrap().unwrap();
    assert_eq!(info.spec.expression(), "*/5 * * * *");
    assert_eq!(info.spec.time_zone(), "UTC");
    assert_eq!(info.missed, Missed::Skip);
    assert!(!info.paused);
    assert_eq!(
        info.next,
        times(&[
            "2026-01-01T00:05:00Z",
            "2026-01-01T00:10:00Z",
            "2026-01-01T00:15:00Z",
            "2026-01-01T00:20:00Z",
            "2026-01-01T00:25:00Z"
        ])
    );
    assert_eq!(info.last, None);
    // As the server's API would show it.
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(
        json["spec"],
        serde_json::json!({"expression": "*/5 * * * *", "time_zone": "UTC"})
    );
    assert_eq!(json["missed"], "skip");
    assert_eq!(serde_json::from_value::<CronInfo>(json).unwrap(), info);
    assert_eq!(serde_json::to_value(Missed::CatchUpOne).unwrap(), "catch-up-one");
    assert_eq!(
        fired(&mut rx, 2).await,
        times(&["2026-01-01T00:05:00Z", "2026-01-01T00:10:00Z"])
    );
    let last = herald.crons().await.unwrap()[0].last.clone().unwrap();
    assert_eq!(last.tick, at("2026-01-01T00:10:00Z"));
    let event = herald.get(last.event_id).await.unwrap().unwrap();
    assert_eq!(last.status, Some(event.status));
    assert_eq!(event.event.headers().get(CRON_HEADER), Some("five"));
}

/// A fixed-time schedule across daylight-saving changes: croner's rule is that a time in a
/// skipped hour fires once, at the first instant after the gap (03:00 local), and a time in a
/// repeated hour fires once, at its first occurrence.
async fn daily_fires(zone: &str, expression: &str, start: &str, n: usize) -> Vec<Timestamp> {
    let store = store_at(start);
    let herald = herald_on(&store, false).await;
    let mut rx = ticks(&herald, "daily", "tick.daily").await;
    herald
        .cron("daily", expression)
        .topic("tick.daily")
        .tz(zone)
        .await
        .unwrap();
    fired(&mut rx, n).await
}

#[tokio::test(start_paused = true)]
async fn europe_berlin_spring_forward_fires_once_after_the_gap() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that night.
    let fires = daily_fires("Europe/Berlin", "30 2 * * *", "2026-03-27T12:00:00Z", 4).await;
    assert_eq!(
        fires,
        times(&[
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST: the first instant after the gap, once
            "2026-03-30T00:30:00Z", // 02:30 CEST
            "2026-03-31T00:30:00Z",
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn europe_berlin_fall_back_fires_once_in_the_repeated_hour() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    let fires = daily_fires("Europe/Berlin", "30 2 * * *", "2026-10-23T12:00:00Z", 3).await;
    assert_eq!(
        fires,
        times(&[
            "2026-10-24T00:30:00Z", // 02:30 CEST
            "2026-10-25T00:30:00Z", // the first 02:30 (CEST); the second (01:30Z) does not fire
            "2026-10-26T01:30:00Z", // 02:30 CET
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn america_new_york_spring_forward_fires_once_after_the_gap() {
    // 2026-03-08: 02:00 EST becomes 03:00 EDT.
    let fires = daily_fires("America/New_York", "30 2 * * *", "2026-03-06T12:00:00Z", 3).await;
    assert_eq!(
        fires,
        times(&[
            "2026-03-07T07:30:00Z", // 02:30 EST
            "2026-03-08T07:00:00Z", // 03:00 EDT, once
            "2026-03-09T06:30:00Z", // 02:30 EDT
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn america_new_york_fall_back_fires_once_in_the_repeated_hour() {
    // 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
    let fires = daily_fires("America/New_York", "30 1 * * *", "2026-10-30T12:00:00Z", 3).await;
    assert_eq!(
        fires,
        times(&[
            "2026-10-31T05:30:00Z", // 01:30 EDT
            "2026-11-01T05:30:00Z", // the first 01:30 (EDT); the second (06:30Z) does not fire
            "2026-11-02T06:30:00Z", // 01:30 EST
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn interval_schedules_keep_real_time_cadence_across_both_changes() {
    // Every 30 minutes in Berlin: nothing in the skipped hour, the repeated hour walked twice,
    // so fires stay 30 real minutes apart and none repeats.
    for (start, n) in [("2026-03-28T23:50:00Z", 6), ("2026-10-24T23:50:00Z", 6)] {
        let fires = daily_fires("Europe/Berlin", "*/30 * * * *", start, n).await;
        assert!(
            fires.windows(2).all(|w| w[1].millis_since(w[0]) == 30 * 60 * 1000),
            "{fires:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn pause_stops_ticks_and_resume_goes_on_from_the_next_tick_without_a_burst() {
    let store = store_at("2026-01-01T00:00:00.500Z");
    let herald = herald_on(&store, false).await;
    let mut rx = ticks(&herald, "beat", "tick.beat").await;
    let beat = herald.cron("beat", "* * * * * *").topic("tick.beat").await.unwrap();
    assert_eq!(
        fired(&mut rx, 2).await,
        times(&["2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"])
    );

    beat.pause().await.unwrap();
    beat.pause().await.unwrap(); // pausing twice is fine
    let info = beat.info().await.unwrap().unwrap();
    assert!(info.paused);
    assert!(info.next.is_empty());
    // Let ten seconds of paused time pass: nothing fires.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(rx.try_recv().is_err());
    assert_eq!(events_on(&store, "tick.beat").await.len(), 2);

    beat.resume().await.unwrap();
    assert_eq!(fired(&mut rx, 1).await, times(&["2026-01-01T00:00:13Z"]));
    assert_eq!(
        events_on(&store, "tick.beat").await.len(),
        3,
        "no burst of missed ticks"
    );
}

#[tokio::test(start_paused = true)]
async fn remove_stops_the_schedule_and_forgets_its_name() {
    let store = store_at("2026-01-01T00:00:00.500Z");
    let herald = herald_on(&store, false).await;
    let mut rx = ticks(&herald, "gone", "tick.gone").await;
    herald.cron("gone", "* * * * * *").topic("tick.gone").await.unwrap();
    fired(&mut rx, 1).await;
    herald.cron_remove("gone").await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(rx.try_recv().is_err());
    assert_eq!(events_on(&store, "tick.gone").await.len(), 1);
    assert!(herald.cron_info("gone").await.unwrap().is_none());
    assert!(herald.crons().await.unwrap().is_empty());
    let err = herald.cron_pause("gone").await.unwrap_err();
    assert!(matches!(err, CronError::NotFound(_)));
    assert_eq!(
        err.to_string(),
        "no cron schedule is named 'gone' here: `Herald::crons` lists them"
    );
    assert!(herald.cron_remove("gone").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn redeclaring_a_name_replaces_its_schedule() {
    let store = store_at("2026-01-01T00:00:00.500Z");
    let herald = herald_on(&store, false).await;
    let mut rx = ticks(&herald, "swap", "tick.swap").await;
    herald.cron("swap", "* * * * * *").topic("tick.swap").await.unwrap();
    assert_eq!(fired(&mut rx, 1).await, times(&["2026-01-01T00:00:01Z"]));
    herald.cron("swap", "*/5 * * * * *").topic("tick.swap").await.unwrap();
    assert_eq!(
        fired(&mut rx, 2).await,
        times(&["2026-01-01T00:00:05Z", "2026-01-01T00:00:10Z"])
    );
    let crons = herald.crons().await.unwrap();
    assert_eq!(crons.len(), 1);
    assert_eq!(crons[0].spec.expression(), "*/5 * * * * *");
}

/// Runtime A runs a schedule (skipping missed ticks: with catch-up-one, its first start would fire
/// the 00:00:00 tick, the store holding no event for it), fires its first tick and stops; the
/// store outlives it; B starts the same schedule later with `missed`.
async fn after_all_nodes_were_down(missed: Missed, down_for: Duration) -> (Arc<dyn Store>, Herald, Vec<Seen>) {
    let store = store_at("2026-01-01T00:00:00.500Z");
    let a = herald_on(&store, false).await;
    let mut rx = ticks(&a, "report", "tick.report").await;
    a.cron("report", "*/10 * * * * *").topic("tick.report").await.unwrap();
    assert_eq!(fired(&mut rx, 1).await, times(&["2026-01-01T00:00:10Z"]));
    a.shutdown(Duration::from_secs(1)).await;
    tokio::time::sleep(down_for).await;

    let b = herald_on(&store, false).await;
    let mut rx = ticks(&b, "report", "tick.report").await;
    b.cron("report", "*/10 * * * * *")
        .topic("tick.report")
        .missed(missed)
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let s = next(&mut rx).await;
        let regular = s.due == s.tick.tick;
        seen.push(s);
        if regular {
            break;
        }
    }
    (store, b, seen)
}

#[tokio::test(start_paused = true)]
async fn skip_forgets_the_ticks_missed_while_every_node_was_down() {
    let (store, _b, seen) = after_all_nodes_were_down(Missed::Skip, Duration::from_secs(55)).await;
    // Down from 00:00:10 to 00:01:05: the next event is the regular 00:01:10 tick.
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].tick.tick, at("2026-01-01T00:01:10Z"));
    let ticks: Vec<String> = events_on(&store, "tick.report")
        .await
        .iter()
        .map(|r| r.event.headers().get(CRON_TICK_HEADER).unwrap().to_owned())
        .collect();
    assert_eq!(ticks, ["2026-01-01T00:00:10.000Z", "2026-01-01T00:01:10.000Z"]);
}

#[tokio::test(start_paused = true)]
async fn catch_up_one_fires_the_latest_missed_tick_once_on_start() {
    let (store, _b, seen) = after_all_nodes_were_down(Missed::CatchUpOne, Duration::from_secs(55)).await;
    assert_eq!(seen.len(), 2);
    // The latest missed tick (00:01:00), published at once on start, then the regular 00:01:10.
    let caught = &seen[0];
    assert_eq!(caught.tick.tick, at("2026-01-01T00:01:00Z"));
    assert_eq!(caught.key.as_deref(), Some("cron:report:2026-01-01T00:01:00.000Z"));
    assert_eq!(caught.published_at, at("2026-01-01T00:01:05Z"));
    assert_eq!(caught.handled_at, at("2026-01-01T00:01:05Z"));
    assert_eq!(seen[1].tick.tick, at("2026-01-01T00:01:10Z"));
    assert_eq!(events_on(&store, "tick.report").await.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn catch_up_one_adds_nothing_when_the_latest_tick_has_its_event() {
    // Down for 5 s only: the latest tick before B starts is 00:00:10, whose event A published.
    let (store, b, seen) = after_all_nodes_were_down(Missed::CatchUpOne, Duration::from_secs(5)).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].tick.tick, at("2026-01-01T00:00:20Z"));
    assert_eq!(events_on(&store, "tick.report").await.len(), 2);
    let last = b.crons().await.unwrap()[0].last.clone().unwrap();
    assert_eq!(last.tick, at("2026-01-01T00:00:20Z"));
}

#[tokio::test(start_paused = true)]
async fn two_runtimes_sharing_a_store_make_one_event_per_tick() {
    let store = store_at("2026-01-01T00:00:00.250Z");
    let a = herald_on(&store, true).await;
    let b = herald_on(&store, true).await;
    // One subscription shared by both runtimes: each event is handled once.
    let mut rx_a = ticks(&a, "beat", "tick.beat").await;
    let (exec_tx, mut executed) = mpsc::unbounded_channel();
    a.subscribe("executed", CRON_EXECUTED_TOPIC)
        .handle(move |e: CronTaskExecuted, _ctx: Context| {
            let tx = exec_tx.clone();
            async move {
                let _ = tx.send(e);
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    for herald in [&a, &b] {
        herald.cron("beat", "* * * * * *").topic("tick.beat").await.unwrap();
    }
    let mut rx_b = ticks(&b, "beat", "tick.beat").await;
    let mut handled = Vec::new();
    while handled.len() < 10 {
        tokio::select! {
            s = next(&mut rx_a) => handled.push(s.tick.tick),
            s = next(&mut rx_b) => handled.push(s.tick.tick),
        }
    }
    handled.sort();
    let expected: Vec<Timestamp> = (1..=10)
        .map(|s| at("2026-01-01T00:00:00Z") + Duration::from_secs(s))
        .collect();
    assert_eq!(handled, expected);

    let events = events_on(&store, "tick.beat").await;
    let keys: Vec<&str> = events.iter().map(|r| r.event.key().unwrap()).collect();
    let expected_keys: Vec<String> = expected.iter().map(|t| cron_key("beat", *t)).collect();
    assert_eq!(keys[..10], expected_keys[..], "exactly one event per tick");
    let mut announced = Vec::new();
    while announced.len() < 10 {
        announced.push(next(&mut executed).await);
    }
    announced.sort_by_key(|e| e.tick);
    assert_eq!(announced.iter().map(|e| e.tick).collect::<Vec<_>>(), expected);
    assert!(announced.iter().zip(&events).all(|(e, r)| e.event_id == r.event.id()));
    let (la, lb) = (a.crons().await.unwrap(), b.crons().await.unwrap());
    assert_eq!(
        la[0].last.as_ref().unwrap().event_id,
        lb[0].last.as_ref().unwrap().event_id
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_schedules_are_refused_with_what_is_wrong() {
    let store = store_at("2026-01-01T00:00:00Z");
    let herald = herald_on(&store, false).await;
    let refused = |e: CronError| e.to_string();

    let err = refused(herald.cron("a", "61 * * * *").topic("t").await.unwrap_err());
    assert!(err.starts_with("cron expression '61 * * * *' is invalid ("), "{err}");
    assert!(err.ends_with("use 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, such as '0 3 * * *' or '*/10 * * * * *'"), "{err}");
    for expr in ["* * *", "0 0 0 1 1 * 2030", "", "every day"] {
        let err = herald.cron("a", expr).topic("t").await.unwrap_err();
        assert!(matches!(err, CronError::Expression { .. }), "{expr}: {err}");
    }
    let err = refused(herald.cron("a", "0 0 30 2 *").topic("t").await.unwrap_err());
    assert_eq!(
        err,
        "cron expression '0 0 30 2 *' never fires: no date matches its day and month fields"
    );
    let err = refused(
        herald
            .cron("a", "0 3 * * *")
            .tz("Mars/Olympus")
            .topic("t")
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err,
        "time zone 'Mars/Olympus' is unknown: use an IANA time zone name such as 'UTC', 'Europe/Berlin' or 'America/New_York'"
    );
    let err = refused(herald.cron("Nightly Report", "0 3 * * *").topic("t").await.unwrap_err());
    assert!(err.starts_with("cron name 'Nightly Report' is invalid"), "{err}");
    let err = refused(herald.cron("a", "0 3 * * *").await.unwrap_err());
    assert_eq!(
        err,
        "cron schedule 'a' has no topic: set one with `.topic(\"report.nightly\")`"
    );
    let err = refused(herald.cron("a", "0 3 * * *").topic("Report").await.unwrap_err());
    assert!(err.starts_with("topic 'Report' is invalid"), "{err}");
    assert!("catch-up-all".parse::<Missed>().is_err());
    assert!(
        herald.crons().await.unwrap().is_empty(),
        "nothing refused was registered"
    );
}

#[tokio::test(start_paused = true)]
async fn lifecycle_events_announce_every_change_and_failed_ticks() {
    let store = store_at("2026-01-01T00:00:00.500Z");
    let herald = herald_on(&store, true).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    herald
        .subscribe("lifecycle", "cron.task.>")
        .handle_event(move |event: Event, _ctx: Context| {
            let tx = tx.clone();
            async move {
                let body: serde_json::Value = event.json().unwrap();
                let _ = tx.send((event.topic().as_str().to_owned(), body));
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    // The tick's only handler fails for good: its delivery dies.
    herald
        .subscribe("broken", "tick.broken")
        .max_attempts(1)
        .handle(|_: CronTick, _ctx: Context| async { Err::<(), _>(HandlerError::permanent("disk full")) })
        .await
        .unwrap();

    let handle = herald
        .cron("broken", "*/5 * * * * *")
        .topic("tick.broken")
        .await
        .unwrap();
    let (topic, created) = next(&mut rx).await;
    assert_eq!(topic, CRON_CREATED_TOPIC);
    assert_eq!(created["name"], "broken");
    assert_eq!(created["expression"], "*/5 * * * * *");
    assert_eq!(created["time_zone"], "UTC");
    assert_eq!(created["paused"], false);

    let mut seen = std::collections::HashMap::new();
    while !(seen.contains_key(CRON_EXECUTED_TOPIC) && seen.contains_key(CRON_FAILED_TOPIC)) {
        let (topic, body) = next(&mut rx).await;
        seen.entry(topic).or_insert(body);
    }
    let executed: CronTaskExecuted = serde_json::from_value(seen[CRON_EXECUTED_TOPIC].clone()).unwrap();
    assert_eq!(executed.name, "broken");
    assert_eq!(executed.tick, at("2026-01-01T00:00:05Z"));
    let failed: CronTaskFailed = serde_json::from_value(seen[CRON_FAILED_TOPIC].clone()).unwrap();
    assert_eq!(failed.name, "broken");
    assert_eq!(failed.tick, executed.tick);
    assert_eq!(failed.event_id, executed.event_id);
    assert_eq!(failed.subscription.as_str(), "broken");
    assert_eq!(failed.reason, "disk full");
    let last = handle.info().await.unwrap().unwrap().last.unwrap();
    assert_eq!(last.event_id, executed.event_id);

    herald
        .cron("broken", "*/7 * * * * *")
        .topic("tick.broken")
        .await
        .unwrap();
    handle.pause().await.unwrap();
    handle.remove().await.unwrap();
    let mut changes = Vec::new();
    while changes.len() < 3 {
        let (topic, body) = next(&mut rx).await;
        if topic == CRON_UPDATED_TOPIC || topic == CRON_DELETED_TOPIC {
            changes.push((topic, body["expression"].clone(), body["paused"].clone()));
        }
    }
    assert_eq!(
        changes,
        [
            (CRON_UPDATED_TOPIC.to_owned(), "*/7 * * * * *".into(), false.into()),
            (CRON_UPDATED_TOPIC.to_owned(), "*/7 * * * * *".into(), true.into()),
            (CRON_DELETED_TOPIC.to_owned(), "*/7 * * * * *".into(), true.into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn without_system_events_nothing_is_announced() {
    let store = store_at("2026-01-01T00:00:00.500Z");
    let herald = herald_on(&store, false).await;
    let mut rx = ticks(&herald, "quiet", "tick.quiet").await;
    herald.cron("quiet", "* * * * * *").topic("tick.quiet").await.unwrap();
    fired(&mut rx, 2).await;
    herald.cron_remove("quiet").await.unwrap();
    assert!(events_on(&store, "cron.>").await.is_empty());
    assert!(
        herald
            .subscriptions()
            .iter()
            .all(|s| !s.name().as_str().starts_with("herald.")),
        "cron needs no subscription of its own"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_schedule() {
    let store = store_at("2026-01-01T00:00:00.500Z");
    let herald = herald_on(&store, false).await;
    let mut rx = ticks(&herald, "stop", "tick.stop").await;
    herald.cron("stop", "* * * * * *").topic("tick.stop").await.unwrap();
    fired(&mut rx, 1).await;
    herald.shutdown(Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(events_on(&store, "tick.stop").await.len(), 1);
    let err = herald.cron("late", "* * * * *").topic("t").await.unwrap_err();
    assert!(matches!(err, CronError::ShuttingDown), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_fixed_payload_and_publish_options_reach_every_tick() {
    let store = store_at("2026-01-01T00:00:00.500Z");
    let herald = herald_on(&store, false).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    herald
        .subscribe("opts", "tick.opts")
        .handle(move |body: serde_json::Value, ctx: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((body, ctx.event().clone()));
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    herald
        .cron("opts", "* * * * * *")
        .topic("tick.opts")
        .payload(&serde_json::json!({"format": "pdf"}))
        .priority(Priority::HIGH)
        .ttl(Duration::from_secs(30))
        .header("tenant", "acme")
        .header(CRON_HEADER, "impostor")
        .await
        .unwrap();
    let (body, event) = next(&mut rx).await;
    assert_eq!(body, serde_json::json!({"format": "pdf"}));
    assert_eq!(event.priority(), Priority::HIGH);
    assert_eq!(event.expires_at(), Some(at("2026-01-01T00:00:31Z")));
    assert_eq!(event.headers().get("tenant"), Some("acme"));
    assert_eq!(event.headers().get(CRON_HEADER), Some("opts"));
}
