//! The client subcommands of `herald`: publish, schedule, cancel, request, events, event, retry,
//! subs, cron and stats, as clients of the HTTP API. Human tables by default, the API's JSON with `--json`.

pub(crate) mod bench;
mod client;
mod output;

use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use client::{encode, Answer, CliError, Client};
use output::{clip, millis, relative, text, took, Table};

/// Where the server is and how to talk to it: shared by every client subcommand.
#[derive(Debug, Args)]
pub(crate) struct Conn {
    /// The server's base URL.
    #[arg(
        long,
        global = true,
        env = "HERALD_SERVER",
        hide_env_values = true,
        default_value = "http://127.0.0.1:7420"
    )]
    server: String,
    /// A bearer token, when the server requires one.
    #[arg(long, global = true, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON answer as is instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// The client subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Publishes one event; prints its id.
    Publish(PublishArgs),
    /// Publishes one event for later (--at or --delay required); prints its id.
    Schedule(ScheduleArgs),
    /// Cancels the deliveries of an event that have not started.
    Cancel(IdArgs),
    /// Publishes a request and prints the handler's reply.
    Request(RequestArgs),
    /// Lists events, newest first, with filters and pages.
    Events(EventsArgs),
    /// Shows one event with its deliveries and their attempts.
    Event(IdArgs),
    /// Runs a dead delivery again.
    Retry(IdArgs),
    /// Lists, pauses, resumes or deletes subscriptions.
    Subs(SubsArgs),
    /// Adds, lists, pauses, resumes or removes cron schedules (on the server it talks to).
    Cron(CronArgs),
    /// Counts events and deliveries by status.
    Stats(ConnOnly),
}

/// When to deliver (optional).
#[derive(Debug, Args)]
#[group(required = false, multiple = false)]
pub(crate) struct When {
    /// Deliver after this long (`30s`, `5m`, `1h 30m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// Deliver at this time (RFC 3339 in UTC such as 2026-11-25T18:53:24Z, or epoch milliseconds).
    #[arg(long)]
    at: Option<String>,
}

/// When to deliver (one required).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct WhenRequired {
    /// Deliver after this long (`30s`, `5m`, `1h 30m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// Deliver at this time (RFC 3339 in UTC such as 2026-11-25T18:53:24Z, or epoch milliseconds).
    #[arg(long)]
    at: Option<String>,
}

/// Options of a published event.
#[derive(Debug, Args)]
pub(crate) struct Extras {
    /// Priority 0..=10 (low 1, normal 5, high 8).
    #[arg(long)]
    priority: Option<u8>,
    /// A key: events with the same key are delivered in order.
    #[arg(long)]
    key: Option<String>,
    /// Expire undelivered after this long (`1h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// A header `name=value` (repeat for several).
    #[arg(long = "header", value_name = "K=V", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The topic, such as orders.created.
    topic: String,
    /// The payload as JSON (a string needs its quotes: '"text"'); none is null.
    payload: Option<String>,
    #[command(flatten)]
    when: When,
    #[command(flatten)]
    extras: Extras,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Args)]
pub(crate) struct ScheduleArgs {
    /// The topic, such as reminders.due.
    topic: String,
    /// The payload as JSON (a string needs its quotes: '"text"').
    payload: String,
    #[command(flatten)]
    when: WhenRequired,
    #[command(flatten)]
    extras: Extras,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// The id (an event's for cancel and event, a delivery's for retry).
    id: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// The topic a handler answers on.
    topic: String,
    /// The payload as JSON (a string needs its quotes: '"text"').
    payload: String,
    /// How long to wait for the reply [server default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// A topic or pattern (`orders.*`, `orders.>`).
    #[arg(long)]
    topic: Option<String>,
    /// An event status: scheduled, pending, active, retrying, done, dead, cancelled, expired, ...
    #[arg(long)]
    status: Option<String>,
    /// Only events routed to this subscription.
    #[arg(long)]
    subscription: Option<String>,
    /// Published at or after: an RFC 3339 time, epoch milliseconds, or a duration ago (`10m`).
    #[arg(long)]
    since: Option<String>,
    /// Published before: an RFC 3339 time, epoch milliseconds, or a duration ago (`10m`).
    #[arg(long)]
    until: Option<String>,
    /// Only events with this key.
    #[arg(long)]
    key: Option<String>,
    /// At most this many events.
    #[arg(long)]
    limit: Option<u32>,
    /// The next page: the cursor the previous page printed.
    #[arg(long)]
    after: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Args)]
pub(crate) struct SubsArgs {
    #[command(subcommand)]
    action: Option<SubsAction>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SubsAction {
    /// Lists subscriptions (the default).
    List,
    /// Pauses a subscription: deliveries wait in the store.
    Pause {
        /// The subscription's name.
        name: String,
    },
    /// Resumes a paused subscription.
    Resume {
        /// The subscription's name.
        name: String,
    },
    /// Deletes a subscription and cancels its unfinished deliveries.
    Delete {
        /// The subscription's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CronArgs {
    #[command(subcommand)]
    action: Option<CronAction>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CronAction {
    /// Adds a schedule, or replaces the one of that name.
    Add(CronAddArgs),
    /// Lists schedules with their next fire times and last outcome (the default).
    List,
    /// Removes a schedule from the server; past ticks' events stay.
    Remove {
        /// The schedule's name.
        name: String,
    },
    /// Pauses a schedule on the server (servers sharing its store that declare it go on).
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Resumes a paused schedule from its next tick.
    Resume {
        /// The schedule's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CronAddArgs {
    /// The schedule's name, such as nightly-report.
    name: String,
    /// The cron expression: 5 fields, or 6 with seconds first ('0 3 * * *', '*/10 * * * * *').
    #[arg(long)]
    expr: String,
    /// The topic of its events.
    #[arg(long)]
    topic: String,
    /// The IANA time zone the expression is read in [default: UTC].
    #[arg(long)]
    tz: Option<String>,
    /// The payload of every tick's event as JSON [default: {"name", "tick"}].
    #[arg(long)]
    payload: Option<String>,
    /// Ticks missed while no server ran it: skip, or catch-up-one (fire the latest on start).
    #[arg(long, value_parser = ["skip", "catch-up-one"])]
    missed: Option<String>,
    /// Priority 0..=10 of its events.
    #[arg(long)]
    priority: Option<u8>,
    /// Each tick's event expires if not started within this long (`1h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct ConnOnly {
    #[command(flatten)]
    conn: Conn,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not a header: use name=value")),
    }
}

/// Runs a client subcommand; the process's exit code.
pub(crate) async fn run(command: ClientCommand) -> u8 {
    match dispatch(command).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("herald: {e}");
            e.exit_code()
        }
    }
}

fn connect(conn: &Conn) -> Result<Client, CliError> {
    Client::new(&conn.server, conn.token.clone())
}

async fn dispatch(command: ClientCommand) -> Result<(), CliError> {
    match command {
        ClientCommand::Publish(a) => {
            publish(
                &a.conn,
                &a.topic,
                a.payload.as_deref(),
                a.when.delay,
                a.when.at,
                &a.extras,
            )
            .await
        }
        ClientCommand::Schedule(a) => {
            publish(&a.conn, &a.topic, Some(&a.payload), a.when.delay, a.when.at, &a.extras).await
        }
        ClientCommand::Cancel(a) => cancel(a).await,
        ClientCommand::Request(a) => request(a).await,
        ClientCommand::Events(a) => events(a).await,
        ClientCommand::Event(a) => event(a).await,
        ClientCommand::Retry(a) => retry(a).await,
        ClientCommand::Subs(a) => subs(a).await,
        ClientCommand::Cron(a) => cron(a).await,
        ClientCommand::Stats(a) => stats(a).await,
    }
}

/// Prints the raw answer and returns true under `--json`.
fn printed_json(conn: &Conn, answer: &Answer) -> bool {
    if conn.json {
        println!("{}", answer.raw.trim_end());
    }
    conn.json
}

fn payload(text: Option<&str>) -> Result<Value, CliError> {
    match text {
        None => Ok(Value::Null),
        Some(t) => serde_json::from_str(t).map_err(|e| {
            CliError::Usage(format!(
                "the payload is not JSON ({e}): pass JSON such as '{{\"id\": 1}}', and quote a string: '\"text\"'"
            ))
        }),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn publish(
    conn: &Conn,
    topic: &str,
    payload_text: Option<&str>,
    delay: Option<Duration>,
    at: Option<String>,
    extras: &Extras,
) -> Result<(), CliError> {
    let mut body = Map::new();
    body.insert("topic".into(), json!(topic));
    body.insert("payload".into(), payload(payload_text)?);
    if let Some(d) = delay {
        body.insert("delay_ms".into(), json!(ms(d)));
    }
    if let Some(t) = at {
        body.insert("at".into(), json!(t));
    }
    if let Some(p) = extras.priority {
        body.insert("priority".into(), json!(p));
    }
    if let Some(k) = &extras.key {
        body.insert("key".into(), json!(k));
    }
    if let Some(t) = extras.ttl {
        body.insert("ttl_ms".into(), json!(ms(t)));
    }
    if !extras.headers.is_empty() {
        let headers: Map<String, Value> = extras.headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        body.insert("headers".into(), Value::Object(headers));
    }
    let answer = connect(conn)?.post("/v1/events", Some(&Value::Object(body))).await?;
    if !printed_json(conn, &answer) {
        println!("{}", text(&answer.json["id"]));
    }
    Ok(())
}

async fn cancel(a: IdArgs) -> Result<(), CliError> {
    let answer = connect(&a.conn)?
        .post(&format!("/v1/events/{}/cancel", encode(&a.id)), None)
        .await?;
    if !printed_json(&a.conn, &answer) {
        let n = answer.json["cancelled"].as_u64().unwrap_or(0);
        let what = if n == 1 { "delivery" } else { "deliveries" };
        println!("cancelled {n} {what} of event {}", a.id);
    }
    Ok(())
}

async fn request(a: RequestArgs) -> Result<(), CliError> {
    let mut body = json!({ "topic": a.topic, "payload": payload(Some(&a.payload))? });
    let mut client = connect(&a.conn)?;
    if let Some(t) = a.timeout {
        body["timeout_ms"] = json!(ms(t));
        client.wait_longer(t);
    }
    let answer = client.post("/v1/requests", Some(&body)).await?;
    if !printed_json(&a.conn, &answer) {
        let reply = &answer.json["reply"];
        println!(
            "{}",
            serde_json::to_string_pretty(reply).unwrap_or_else(|_| reply.to_string())
        );
    }
    Ok(())
}

/// A `--since`/`--until` value: a duration means that long ago; anything else goes as is.
fn time_arg(value: &str) -> String {
    match humantime::parse_duration(value) {
        Ok(d) if value.parse::<i64>().is_err() => SystemTime::now()
            .checked_sub(d)
            .map_or_else(|| value.to_owned(), |t| humantime::format_rfc3339_millis(t).to_string()),
        _ => value.to_owned(),
    }
}

async fn events(a: EventsArgs) -> Result<(), CliError> {
    let mut query: Vec<(&str, String)> = Vec::new();
    let plain = [
        ("topic", a.topic),
        ("status", a.status),
        ("subscription", a.subscription),
        ("since", a.since.as_deref().map(time_arg)),
        ("until", a.until.as_deref().map(time_arg)),
        ("key", a.key),
        ("limit", a.limit.map(|l| l.to_string())),
        ("after", a.after),
    ];
    for (k, v) in plain {
        if let Some(v) = v {
            query.push((k, v));
        }
    }
    let answer = connect(&a.conn)?.get("/v1/events", &query).await?;
    if printed_json(&a.conn, &answer) {
        return Ok(());
    }
    let mut table = Table::new(&[
        "ID",
        "TOPIC",
        "STATUS",
        "KEY",
        "PRI",
        "PUBLISHED",
        "DELIVER",
        "DELIVERIES",
    ]);
    for e in answer.json["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let deliveries: Vec<String> = e["deliveries"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|d| format!("{}:{}", text(&d["subscription"]), text(&d["status"])))
            .collect();
        table.row(vec![
            text(&e["id"]),
            text(&e["topic"]),
            text(&e["status"]),
            clip(&text(&e["key"]), 24),
            text(&e["priority"]),
            relative(&e["published_at"]),
            relative(&e["deliver_at"]),
            if deliveries.is_empty() {
                "-".to_owned()
            } else {
                deliveries.join(",")
            },
        ]);
    }
    if table.is_empty() {
        println!("no events");
    } else {
        print!("{}", table.render());
    }
    if let Some(next) = answer.json["next"].as_str() {
        println!("more: --after {next}");
    }
    Ok(())
}

async fn event(a: IdArgs) -> Result<(), CliError> {
    let answer = connect(&a.conn)?
        .get(&format!("/v1/events/{}", encode(&a.id)), &[])
        .await?;
    if printed_json(&a.conn, &answer) {
        return Ok(());
    }
    let e = &answer.json;
    let mut fields = Table::default();
    let time = |v: &Value| match v.as_str() {
        Some(s) => format!("{s} ({})", relative(v)),
        None => text(v),
    };
    for (name, value) in [
        ("id", text(&e["id"])),
        ("topic", text(&e["topic"])),
        ("status", text(&e["status"])),
        ("key", text(&e["key"])),
        ("priority", text(&e["priority"])),
        ("source", text(&e["source"])),
        ("content type", text(&e["content_type"])),
        ("published", time(&e["published_at"])),
        ("deliver at", time(&e["deliver_at"])),
        ("expires", time(&e["expires_at"])),
    ] {
        fields.row(vec![format!("{name}:"), value]);
    }
    if let Some(headers) = e["headers"].as_object().filter(|h| !h.is_empty()) {
        let list: Vec<String> = headers.iter().map(|(k, v)| format!("{k}={}", text(v))).collect();
        fields.row(vec!["headers:".into(), list.join(", ")]);
    }
    print!("{}", fields.render());
    println!("payload:");
    let payload = match (&e["payload"], &e["payload_base64"]) {
        (Value::Null, Value::String(b64)) => format!("(base64) {b64}"),
        (p, _) => serde_json::to_string_pretty(p).unwrap_or_else(|_| p.to_string()),
    };
    for line in payload.lines() {
        println!("  {line}");
    }
    let deliveries = e["deliveries"].as_array().map(Vec::as_slice).unwrap_or_default();
    println!();
    if deliveries.is_empty() {
        println!("no deliveries (no subscription matched)");
        return Ok(());
    }
    let mut table = Table::new(&["DELIVERY", "SUBSCRIPTION", "STATUS", "ATTEMPTS", "DUE", "LAST ERROR"]);
    let mut attempts = Table::new(&["SUBSCRIPTION", "#", "STARTED", "TOOK", "OUTCOME", "ERROR"]);
    for d in deliveries {
        table.row(vec![
            text(&d["id"]),
            text(&d["subscription"]),
            text(&d["status"]),
            text(&d["attempt_count"]),
            relative(&d["due"]),
            clip(&text(&d["last_error"]), 60),
        ]);
        for at in d["attempts"].as_array().map(Vec::as_slice).unwrap_or_default() {
            attempts.row(vec![
                text(&d["subscription"]),
                text(&at["number"]),
                relative(&at["started_at"]),
                took(&at["started_at"], &at["finished_at"]),
                text(&at["outcome"]),
                clip(&text(&at["error"]), 60),
            ]);
        }
    }
    print!("{}", table.render());
    if !attempts.is_empty() {
        println!();
        print!("{}", attempts.render());
    }
    Ok(())
}

async fn retry(a: IdArgs) -> Result<(), CliError> {
    let answer = connect(&a.conn)?
        .post(&format!("/v1/deliveries/{}/retry", encode(&a.id)), None)
        .await?;
    if !printed_json(&a.conn, &answer) {
        println!("delivery {} is {} again", a.id, text(&answer.json["status"]));
    }
    Ok(())
}

fn subs_table(items: &[Value]) -> Table {
    let mut table = Table::new(&["NAME", "PATTERN", "KIND", "STATE", "MAX ATTEMPTS", "TIMEOUT", "URL"]);
    for s in items {
        table.row(vec![
            text(&s["name"]),
            text(&s["pattern"]),
            text(&s["kind"]),
            if s["paused"].as_bool() == Some(true) {
                "paused"
            } else {
                "running"
            }
            .to_owned(),
            text(&s["max_attempts"]),
            millis(&s["timeout_ms"]),
            text(&s["url"]),
        ]);
    }
    table
}

async fn subs(a: SubsArgs) -> Result<(), CliError> {
    let client = connect(&a.conn)?;
    match a.action.unwrap_or(SubsAction::List) {
        SubsAction::List => {
            let answer = client.get("/v1/subscriptions", &[]).await?;
            if printed_json(&a.conn, &answer) {
                return Ok(());
            }
            let items = answer.json["items"].as_array().map(Vec::as_slice).unwrap_or_default();
            if items.is_empty() {
                println!("no subscriptions");
            } else {
                print!("{}", subs_table(items).render());
            }
        }
        SubsAction::Pause { name } => {
            let answer = client
                .post(&format!("/v1/subscriptions/{}/pause", encode(&name)), None)
                .await?;
            if !printed_json(&a.conn, &answer) {
                print!("{}", subs_table(std::slice::from_ref(&answer.json)).render());
            }
        }
        SubsAction::Resume { name } => {
            let answer = client
                .post(&format!("/v1/subscriptions/{}/resume", encode(&name)), None)
                .await?;
            if !printed_json(&a.conn, &answer) {
                print!("{}", subs_table(std::slice::from_ref(&answer.json)).render());
            }
        }
        SubsAction::Delete { name } => {
            let answer = client.delete(&format!("/v1/subscriptions/{}", encode(&name))).await?;
            if !printed_json(&a.conn, &answer) {
                let n = answer.json["cancelled"].as_u64().unwrap_or(0);
                println!("deleted subscription {name}; cancelled {n} unfinished deliveries");
            }
        }
    }
    Ok(())
}

/// `in 5m, in 1h 5m, in 2h 5m`: the first `n` of a schedule's next fire times.
fn next_fires(cron: &Value, n: usize) -> String {
    let next = cron["next"].as_array().map(Vec::as_slice).unwrap_or_default();
    if next.is_empty() {
        return "-".to_owned();
    }
    next.iter().take(n).map(relative).collect::<Vec<_>>().join(", ")
}

fn cron_table(items: &[Value]) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "SCHEDULE",
        "TOPIC",
        "STATE",
        "NEXT FIRES",
        "LAST TICK",
        "OUTCOME",
        "LAST ERROR",
    ]);
    for c in items {
        let schedule = match c["tz"].as_str() {
            Some("UTC") | None => text(&c["expr"]),
            Some(tz) => format!("{} ({tz})", text(&c["expr"])),
        };
        let last = &c["last"];
        table.row(vec![
            text(&c["name"]),
            schedule,
            text(&c["topic"]),
            if c["paused"].as_bool() == Some(true) {
                "paused"
            } else {
                "running"
            }
            .to_owned(),
            next_fires(c, 3),
            if last.is_null() {
                "-".to_owned()
            } else {
                relative(&last["tick"])
            },
            if last.is_null() {
                "-".to_owned()
            } else {
                text(&last["status"])
            },
            clip(&text(&c["last_error"]), 50),
        ]);
    }
    table
}

async fn cron(a: CronArgs) -> Result<(), CliError> {
    let client = connect(&a.conn)?;
    let answer = match a.action.unwrap_or(CronAction::List) {
        CronAction::List => {
            let answer = client.get("/v1/cron", &[]).await?;
            if printed_json(&a.conn, &answer) {
                return Ok(());
            }
            let items = answer.json["items"].as_array().map(Vec::as_slice).unwrap_or_default();
            if items.is_empty() {
                println!("no cron schedules");
            } else {
                print!("{}", cron_table(items).render());
            }
            return Ok(());
        }
        CronAction::Add(add) => {
            let mut body = json!({ "name": add.name, "expr": add.expr, "topic": add.topic });
            if let Some(tz) = add.tz {
                body["tz"] = json!(tz);
            }
            if let Some(p) = add.payload {
                body["payload"] = payload(Some(&p))?;
            }
            if let Some(m) = add.missed {
                body["missed"] = json!(m);
            }
            if let Some(p) = add.priority {
                body["priority"] = json!(p);
            }
            if let Some(t) = add.ttl {
                body["ttl_ms"] = json!(ms(t));
            }
            client.post("/v1/cron", Some(&body)).await?
        }
        CronAction::Remove { name } => {
            let answer = client.delete(&format!("/v1/cron/{}", encode(&name))).await?;
            if !printed_json(&a.conn, &answer) {
                println!("removed cron schedule {name}; the events of its past ticks stay");
            }
            return Ok(());
        }
        CronAction::Pause { name } => client.post(&format!("/v1/cron/{}/pause", encode(&name)), None).await?,
        CronAction::Resume { name } => client.post(&format!("/v1/cron/{}/resume", encode(&name)), None).await?,
    };
    if !printed_json(&a.conn, &answer) {
        print!("{}", cron_table(std::slice::from_ref(&answer.json)).render());
    }
    Ok(())
}

async fn stats(a: ConnOnly) -> Result<(), CliError> {
    let answer = connect(&a.conn)?.get("/v1/stats", &[]).await?;
    if printed_json(&a.conn, &answer) {
        return Ok(());
    }
    let mut table = Table::new(&["STAT", "COUNT"]);
    flatten("", &answer.json, &mut table);
    print!("{}", table.render());
    Ok(())
}

/// Rows `name  value` for every number in `v`, nested names joined by `.`.
fn flatten(prefix: &str, v: &Value, table: &mut Table) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, table);
            }
        }
        other => table.row(vec![prefix.to_owned(), text(other)]),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn headers_are_name_value() {
        assert_eq!(super::parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(super::parse_header("=b").is_err());
        assert!(super::parse_header("ab").is_err());
    }

    #[test]
    fn durations_ago_become_times() {
        assert_eq!(super::time_arg("1700000000000"), "1700000000000");
        assert_eq!(super::time_arg("2026-11-25T18:53:24Z"), "2026-11-25T18:53:24Z");
        assert!(super::time_arg("10m").ends_with('Z'));
    }
}
