//! The HTTP API against a real server on a free loopback port: every endpoint, every error status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{config, error_code, eventually, start, TestServer};
use herald::{Context, HandlerError};
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

/// A subscription on the server's runtime that succeeds at once.
async fn sink(s: &TestServer, name: &str, pattern: &str) {
    s.server
        .herald()
        .subscribe(name, pattern)
        .handle(|_: Value, _ctx: Context| async { Ok::<_, HandlerError>(()) })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_one_then_read_it_back() {
    let s = start(config()).await;
    sink(&s, "audit", "order.>").await;
    let id = s.publish(json!({"topic": "order.paid", "payload": {"order": 7}})).await;
    let event = eventually("the delivery to succeed", || async {
        let e = s.event(&id).await;
        (e["status"] == "succeeded").then_some(e)
    })
    .await;
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["topic"], "order.paid");
    assert_eq!(event["payload"], json!({"order": 7}));
    assert_eq!(event["content_type"], "application/json");
    assert_eq!(event["priority"], 5);
    let delivery = &event["deliveries"][0];
    assert_eq!(delivery["subscription"], "audit");
    assert_eq!(delivery["status"], "succeeded");
    assert_eq!(delivery["attempts"][0]["number"], 1);
    assert_eq!(delivery["attempts"][0]["outcome"], "succeeded");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_a_batch_and_page_through_it() {
    let s = start(config()).await;
    let events: Vec<Value> = (0..5).map(|i| json!({"topic": "page.item", "payload": i})).collect();
    let (status, body) = s.post("/v1/events", json!({ "events": events })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<String> = body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 5);

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/events?topic=page.item&limit=2&after={a}"),
            None => "/v1/events?topic=page.item&limit=2".to_owned(),
        };
        let (status, page) = s.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    // Newest first: the reverse of publishing order.
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    // List items carry deliveries but no attempt history.
    let (_, page) = s.get("/v1/events?topic=page.item&limit=1").await;
    assert!(page["items"][0].get("deliveries").is_some());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_options_are_kept() {
    let s = start(config()).await;
    sink(&s, "later", "remind.>").await;
    let delayed = s
        .publish(json!({
            "topic": "remind.invoice", "payload": "order 7", "delay_ms": 3_600_000, "priority": 8,
            "key": "remind-7", "ttl_ms": 60_000, "headers": {"tenant": "acme"}, "source": "/billing"
        }))
        .await;
    let e = s.event(&delayed).await;
    assert_eq!(e["status"], "scheduled");
    assert_eq!(e["priority"], 8);
    assert_eq!(e["key"], "remind-7");
    assert_eq!(e["source"], "/billing");
    assert_eq!(e["headers"]["tenant"], "acme");
    assert_eq!(e["payload"], "order 7");
    assert!(e["expires_at"].is_string());
    assert!(e["deliver_at"].as_str().unwrap() > e["published_at"].as_str().unwrap());

    // The same key while the first is kept: the first event's id, nothing new stored.
    let again = s.publish(json!({"topic": "remind.invoice", "key": "remind-7"})).await;
    assert_eq!(again, delayed);

    // `at` as RFC 3339 and as epoch milliseconds.
    let at = s
        .publish(json!({"topic": "remind.later", "at": "2999-01-01T00:00:00Z"}))
        .await;
    assert_eq!(s.event(&at).await["deliver_at"], "2999-01-01T00:00:00.000Z");
    let at_ms = s
        .publish(json!({"topic": "remind.later", "at": 32_503_680_000_000_i64}))
        .await;
    assert_eq!(s.event(&at_ms).await["deliver_at"], "3000-01-01T00:00:00.000Z");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_structured_binary_and_batch() {
    let s = start(config()).await;
    // Structured mode.
    let r = s
        .req(Method::POST, "/v1/events")
        .header(header::CONTENT_TYPE, "application/cloudevents+json")
        .body(
            json!({
                "specversion": "1.0", "id": "A-1", "source": "/shop", "type": "order.paid",
                "subject": "order-7", "time": "2026-11-25T10:00:00Z", "tenant": "acme", "data": {"order": 7}
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = common::json(r).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let e = s.event(body["id"].as_str().unwrap()).await;
    assert_eq!(e["topic"], "order.paid");
    assert_eq!(e["source"], "/shop");
    assert_eq!(e["key"], "/shop#A-1");
    assert_eq!(e["payload"], json!({"order": 7}));
    assert_eq!(e["headers"]["ce-id"], "A-1");
    assert_eq!(e["headers"]["ce-subject"], "order-7");
    assert_eq!(e["headers"]["ce-tenant"], "acme");

    // The same source and id again is the same event.
    let r = s
        .req(Method::POST, "/v1/events")
        .header(header::CONTENT_TYPE, "application/cloudevents+json")
        .body(json!({"specversion": "1.0", "id": "A-1", "source": "/shop", "type": "order.paid"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(common::json(r).await.1["id"], e["id"]);

    // Binary mode, non-JSON data.
    let r = s
        .req(Method::POST, "/v1/events")
        .header("ce-specversion", "1.0")
        .header("ce-id", "B-1")
        .header("ce-source", "/printer")
        .header("ce-type", "label.print")
        .header("ce-traceparent", "00-abc-def-01")
        .header(header::CONTENT_TYPE, "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    let (status, body) = common::json(r).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let e = s.event(body["id"].as_str().unwrap()).await;
    assert_eq!(e["topic"], "label.print");
    assert_eq!(e["content_type"], "text/plain");
    assert_eq!(e["payload_base64"], "aGVsbG8=");
    assert!(e.get("payload").is_none());
    assert_eq!(e["headers"]["ce-traceparent"], "00-abc-def-01");

    // Batch mode, one of them with base64 data.
    let r = s
        .req(Method::POST, "/v1/events")
        .header(header::CONTENT_TYPE, "application/cloudevents-batch+json")
        .body(
            json!([
                {"specversion": "1.0", "id": "C-1", "source": "/s", "type": "batch.one", "data": 1},
                {"specversion": "1.0", "id": "C-2", "source": "/s", "type": "batch.two",
                 "datacontenttype": "application/octet-stream", "data_base64": "AAEC"}
            ])
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = common::json(r).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = s.event(body["ids"][1].as_str().unwrap()).await;
    assert_eq!(second["payload_base64"], "AAEC");

    // Invalid CloudEvents: a missing attribute, a wrong version, a topic herald refuses.
    for (headers, why) in [
        (
            vec![("ce-specversion", "1.0"), ("ce-id", "x"), ("ce-source", "/s")],
            "no type",
        ),
        (
            vec![
                ("ce-specversion", "0.3"),
                ("ce-id", "x"),
                ("ce-source", "/s"),
                ("ce-type", "a.b"),
            ],
            "old version",
        ),
        (
            vec![
                ("ce-specversion", "1.0"),
                ("ce-id", "x"),
                ("ce-source", "/s"),
                ("ce-type", "Order Paid"),
            ],
            "invalid topic",
        ),
    ] {
        let mut r = s.req(Method::POST, "/v1/events").body("{}");
        for (k, v) in headers {
            r = r.header(k, v);
        }
        let (status, body) = common::json(r.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {body}");
        assert_eq!(error_code(&body), "invalid_request");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_query_filters() {
    let s = start(config()).await;
    sink(&s, "shipping", "parcel.>").await;
    let first = s
        .publish(json!({"topic": "parcel.sent", "key": "p-1", "delay_ms": 3_600_000}))
        .await;
    let e = s.event(&first).await;
    let between = e["published_at"].as_str().unwrap().to_owned();
    let second = s.publish(json!({"topic": "parcel.lost", "delay_ms": 3_600_000})).await;
    let unrouted = s.publish(json!({"topic": "nobody.listens"})).await;

    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, p) = s.get("/v1/events?topic=parcel.*").await;
    assert_eq!(ids(&p), vec![second.clone(), first.clone()]);
    let (_, p) = s.get("/v1/events?key=p-1").await;
    assert_eq!(ids(&p), vec![first.clone()]);
    let (_, p) = s.get("/v1/events?status=unrouted&topic=nobody.>").await;
    assert_eq!(ids(&p), vec![unrouted.clone()]);
    let (_, p) = s.get("/v1/events?subscription=shipping&status=scheduled").await;
    assert_eq!(ids(&p), vec![second.clone(), first.clone()]);
    let (_, p) = s.get(&format!("/v1/events?topic=parcel.>&until={between}")).await;
    assert!(ids(&p).is_empty(), "until is exclusive: {p}");
    let (status, p) = s.get(&format!("/v1/events?topic=parcel.>&since={between}")).await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert!(ids(&p).contains(&first));
    let (_, p) = s.get("/v1/events?topic=parcel.>&since=0&until=32503680000000").await;
    assert_eq!(ids(&p).len(), 2);

    for bad in [
        "/v1/events?status=lost",
        "/v1/events?limit=0",
        "/v1/events?limit=1001",
        "/v1/events?after=not-an-id",
        "/v1/events?since=yesterday",
        "/v1/events?topic=Bad%20Topic",
        "/v1/events?colour=red",
    ] {
        let (status, body) = s.get(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(error_code(&body), "invalid_request", "{bad}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_scheduled_event() {
    let s = start(config()).await;
    sink(&s, "reminders", "remind.>").await;
    let id = s.publish(json!({"topic": "remind.me", "delay_ms": 3_600_000})).await;
    let (status, body) = s.post_empty(&format!("/v1/events/{id}/cancel")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cancelled"], 1);
    assert_eq!(s.event(&id).await["status"], "cancelled");

    let (status, body) = s.post_empty(&format!("/v1/events/{id}/cancel")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "too_late");

    let unknown = "01900000-0000-7000-8000-000000000000";
    let (status, body) = s.post_empty(&format!("/v1/events/{unknown}/cancel")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_code(&body), "not_found");
    let (status, body) = s.get(&format!("/v1/events/{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = s.post_empty("/v1/events/42/cancel").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = s.get("/v1/events/42").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_and_its_failures() {
    let mut c = config();
    // The stalled handler below never ends: do not wait the default 10 s for it at shutdown.
    c.shutdown_timeout = Duration::from_millis(200);
    let s = start(c).await;
    let h = s.server.herald();
    h.subscribe("doubler", "math.double")
        .handle(|n: u64, _ctx: Context| async move { Ok::<_, HandlerError>(json!({"answer": n * 2})) })
        .await
        .unwrap();
    h.subscribe("refuser", "math.refuse")
        .handle(
            |_: Value, _ctx: Context| async move { Err::<(), _>(HandlerError::permanent(std::io::Error::other("no"))) },
        )
        .await
        .unwrap();
    h.subscribe("staller", "math.stall")
        .handle(|_: Value, _ctx: Context| async move {
            std::future::pending::<()>().await;
            Ok::<_, HandlerError>(())
        })
        .await
        .unwrap();

    let (status, body) = s
        .post(
            "/v1/requests",
            json!({"topic": "math.double", "payload": 21, "timeout_ms": 5000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reply"], json!({"answer": 42}));

    let (status, body) = s
        .post("/v1/requests", json!({"topic": "math.nobody", "payload": 1}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_code(&body), "no_handler");

    let (status, body) = s.post("/v1/requests", json!({"topic": "math.refuse"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(error_code(&body), "handler_failed");

    let (status, body) = s
        .post("/v1/requests", json!({"topic": "math.stall", "timeout_ms": 200}))
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(error_code(&body), "timeout");

    for bad in [
        json!({"payload": 1}),
        json!({"topic": "math.double", "timeout_ms": 0}),
        json!({"topic": "math.double", "timeout_ms": 3_600_000}),
        json!({"topic": "math.double", "priority": 11}),
    ] {
        let (status, body) = s.post("/v1/requests", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_a_dead_delivery() {
    let s = start(config()).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    s.server
        .herald()
        .subscribe("flaky", "job.run")
        .max_attempts(1)
        .handle(move |_: Value, _ctx: Context| {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(HandlerError::msg("the disk is full"))
                }
            }
        })
        .await
        .unwrap();
    let id = s.publish(json!({"topic": "job.run"})).await;
    let dead = eventually("the delivery to die", || async {
        let e = s.event(&id).await;
        (e["status"] == "dead").then_some(e)
    })
    .await;
    let delivery = dead["deliveries"][0]["id"].as_str().unwrap().to_owned();
    assert!(dead["deliveries"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("the disk is full"));
    let (_, page) = s.get("/v1/events?status=dead&subscription=flaky").await;
    assert_eq!(page["items"][0]["id"], id.as_str());

    healthy.store(true, Ordering::SeqCst);
    let (status, body) = s.post_empty(&format!("/v1/deliveries/{delivery}/retry")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "pending");
    let done = eventually("the retried delivery to succeed", || async {
        let e = s.event(&id).await;
        (e["status"] == "succeeded").then_some(e)
    })
    .await;
    assert_eq!(done["deliveries"][0]["attempt_count"], 2);

    let (status, body) = s.post_empty(&format!("/v1/deliveries/{delivery}/retry")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "not_dead");
    let (status, body) = s
        .post_empty("/v1/deliveries/01900000-0000-7000-8000-000000000000/retry")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = s.post_empty("/v1/deliveries/nope/retry").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_publishes_are_400_with_a_message() {
    let s = start(config()).await;
    let cases = [
        json!({"topic": "Order Paid"}),
        json!({"payload": 1}),
        json!({"topic": "a.b", "priority": 11}),
        json!({"topic": "a.b", "delay_ms": 5, "at": "2999-01-01T00:00:00Z"}),
        json!({"topic": "a.b", "at": "next tuesday"}),
        json!({"topic": "a.b", "colour": "red"}),
        json!({"events": []}),
        json!({"events": [{"topic": "a.b"}, {"topic": "B"}]}),
        json!({"events": [{"topic": "a.b"}], "topic": "a.b"}),
        json!([1, 2]),
    ];
    for body in cases {
        let (status, answer) = s.post("/v1/events", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(error_code(&answer), "invalid_request", "{body}");
    }
    // A batch with one bad event stores nothing, and says which one.
    let (_, answer) = s
        .post(
            "/v1/events",
            json!({"events": [{"topic": "good.one"}, {"topic": "Bad"}]}),
        )
        .await;
    assert!(
        answer["error"]["message"].as_str().unwrap().contains("events[1]"),
        "{answer}"
    );
    let (_, page) = s.get("/v1/events?topic=good.one").await;
    assert!(page["items"].as_array().unwrap().is_empty());
    // Not JSON at all.
    let r = s
        .req(Method::POST, "/v1/events")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, answer) = common::json(r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    error_code(&answer);
    let r = s.req(Method::POST, "/v1/events").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413() {
    let mut c = config();
    c.body_limit = 1024;
    let s = start(c).await;
    let big = "x".repeat(2048);
    let (status, body) = s.post("/v1/events", json!({"topic": "big.one", "payload": big})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(error_code(&body), "payload_too_large");
    let (status, body) = s
        .post("/v1/requests", json!({"topic": "big.one", "payload": big}))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // Under the limit is fine.
    s.publish(json!({"topic": "big.one", "payload": "small"})).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429_with_retry_after() {
    let mut c = config();
    c.max_pending = 2;
    let s = start(c).await;
    sink(&s, "slow", "queue.>").await;
    for _ in 0..2 {
        s.publish(json!({"topic": "queue.item", "delay_ms": 3_600_000})).await;
    }
    let r = s
        .req(Method::POST, "/v1/events")
        .json(&json!({"topic": "queue.item"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    let (_, body) = common::json(r).await;
    assert_eq!(error_code(&body), "queue_full");
    let (status, _) = s.post("/v1/requests", json!({"topic": "queue.item"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_is_503() {
    let s = start(config()).await;
    s.server.herald().shutdown(Duration::from_secs(1)).await;
    let r = s
        .req(Method::POST, "/v1/events")
        .json(&json!({"topic": "late.event"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    let (_, body) = common::json(r).await;
    assert_eq!(error_code(&body), "shutting_down");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_json_errors() {
    let s = start(config()).await;
    let (status, body) = s.get("/v2/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let r = s.req(Method::DELETE, "/v1/events").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (_, body) = common::json(r).await;
    assert_eq!(error_code(&body), "method_not_allowed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_subscriptions_and_probes() {
    let s = start(config()).await;
    sink(&s, "counter", "count.>").await;
    let id = s.publish(json!({"topic": "count.me"})).await;
    eventually("the delivery to succeed", || async {
        (s.event(&id).await["status"] == "succeeded").then_some(())
    })
    .await;
    let (status, stats) = s.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert!(stats["events"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats["deliveries"]["succeeded"], 1);
    let (status, subs) = s.get("/v1/subscriptions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        subs["items"],
        json!([{"name": "counter", "pattern": "count.>", "kind": "local", "paused": false}])
    );
    // A handler in the server's process can be paused and resumed through the API too.
    let (_, paused) = s.post_empty("/v1/subscriptions/counter/pause").await;
    assert_eq!(paused["paused"], true);
    assert!(s.server.herald().subscription("counter").unwrap().is_paused());
    let (_, resumed) = s.post_empty("/v1/subscriptions/counter/resume").await;
    assert_eq!(resumed["paused"], false);
    assert_eq!(s.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(s.get("/readyz").await.1["status"], "ready");
    s.stop().await;
}

/// Every (method, path) in the OpenAPI document is served: none falls to the "no route" 404 or
/// to 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served() {
    let s = start(config()).await;
    let (status, doc) = s.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let uuid = "01900000-0000-7000-8000-000000000000";
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", uuid).replace("{name}", "some-sub");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = s.req(method.clone(), &concrete).json(&json!({})).send().await.unwrap();
            let status = r.status();
            // An event stream does not end: its headers say enough.
            let streams = r
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let text = if streams {
                String::new()
            } else {
                r.text().await.unwrap()
            };
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                !text.contains("no route for"),
                "{method} {path} is documented but not served"
            );
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text() {
    let s = start(config()).await;
    sink(&s, "metered", "meter.>").await;
    let id = s.publish(json!({"topic": "meter.tick"})).await;
    eventually("the delivery to succeed", || async {
        (s.event(&id).await["status"] == "succeeded").then_some(())
    })
    .await;
    let r = s.req(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let published = scrape
        .samples
        .iter()
        .find(|m| m.metric == "herald_events_published_total" && m.labels.get("topic") == Some("meter.tick"))
        .expect("published counter by topic");
    assert!(matches!(published.value, prometheus_parse::Value::Counter(n) if n >= 1.0));
    assert!(scrape
        .samples
        .iter()
        .any(|m| m.metric == "herald_deliveries_succeeded_total" && m.labels.get("subscription") == Some("metered")));
    let handle = scrape
        .samples
        .iter()
        .find(|m| m.metric == "herald_handle_seconds" && m.labels.get("subscription") == Some("metered"))
        .expect("handle-time histogram");
    assert!(
        matches!(handle.value, prometheus_parse::Value::Histogram(_)),
        "{:?}",
        handle.value
    );
    assert!(scrape.samples.iter().any(|m| m.metric == "herald_lateness_seconds"));
    // The server's own: requests by method, route template and status.
    let requests = scrape
        .samples
        .iter()
        .find(|m| {
            m.metric == "herald_http_requests_total"
                && m.labels.get("route") == Some("/v1/events/:id")
                && m.labels.get("method") == Some("GET")
                && m.labels.get("status") == Some("200")
        })
        .unwrap_or_else(|| {
            let seen: Vec<_> = scrape
                .samples
                .iter()
                .filter(|m| m.metric.starts_with("herald_http"))
                .collect();
            panic!("no HTTP request counter for GET /v1/events/:id: {seen:?}")
        });
    assert!(matches!(requests.value, prometheus_parse::Value::Counter(n) if n >= 1.0));
    assert!(scrape.samples.iter().any(|m| m.metric == "herald_http_request_seconds"));
    promtool_check(&text);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_when_configured() {
    let mut c = config();
    c.tokens = vec!["s3cret".to_owned()];
    let mut s = start(c).await;
    let r = s.req(Method::GET, "/v1/stats").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    assert_eq!(error_code(&common::json(r).await.1), "unauthorized");
    let r = s
        .req(Method::GET, "/metrics")
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Probes stay open.
    assert_eq!(s.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(s.get("/readyz").await.0, StatusCode::OK);
    s.token = Some("s3cret".to_owned());
    assert_eq!(s.get("/v1/stats").await.0, StatusCode::OK);
    s.publish(json!({"topic": "auth.ok"})).await;
    s.stop().await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_events_and_subscriptions_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.store = herald_server::StoreKind::Sqlite;
    c.data = dir.path().join("data");
    let s = start(c.clone()).await;
    for body in [
        json!({"name": "keeper", "pattern": "durable.>"}),
        json!({"name": "hooked", "pattern": "elsewhere.*", "url": "http://127.0.0.1:9/hook", "secret": "s3"}),
    ] {
        let (status, v) = s.post("/v1/subscriptions", body).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    let id = s
        .publish(json!({"topic": "durable.thing", "payload": {"n": 1}, "delay_ms": 3_600_000}))
        .await;
    s.stop().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.data.join("subscriptions.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the file holds webhook secrets");
    }

    let s = start(c).await;
    let e = s.event(&id).await;
    assert_eq!(e["payload"], json!({"n": 1}));
    assert_eq!(e["status"], "scheduled");
    let (_, list) = s.get("/v1/subscriptions").await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["hooked", "keeper"]);
    let now = s.publish(json!({"topic": "durable.now"})).await;
    let (_, claimed) = s.post_empty("/v1/subscriptions/keeper/claim").await;
    assert_eq!(claimed["items"][0]["event"]["id"], now.as_str());
    s.stop().await;
}

/// A request slower than `request_timeout` (here: a body that never finishes) gets 408 as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_is_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = config();
    c.request_timeout = Duration::from_millis(300);
    let s = start(c).await;
    let mut stream = tokio::net::TcpStream::connect(s.server.local_addr()).await.unwrap();
    stream
        .write_all(
            b"POST /v1/events HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"topic\": ",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).contains("}}") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"timeout""#), "{text}");
    s.stop().await;
}

/// `promtool check metrics` (Debian's `prometheus` package), the reference parser and linter,
/// when it is installed; prometheus-parse above checks the text either way.
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("promtool is not installed (apt-get install prometheus): only prometheus-parse checked /metrics");
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
