//! Consumers in any language: webhook subscriptions (a small axum receiver in the test) and pull
//! consumers (claim / ack / nack / extend over HTTP).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use common::{config, error_code, eventually, start, TestServer};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "test-secret";

/// What the receiver saw, and how it answers.
#[derive(Default)]
struct Receiver {
    calls: AtomicU32,
    /// Calls to /flaky that fail before it succeeds.
    fail_first: AtomicU32,
    /// Whether /broken has been fixed.
    fixed: AtomicBool,
    bad_signatures: AtomicU32,
    seen: Mutex<Vec<(HeaderMap, Bytes)>>,
}

/// What a receiver checks: the HMAC of `<timestamp>.<body>` under the secret, and a timestamp within
/// five minutes of now.
fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(ts) = headers.get("x-herald-timestamp").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Ok(sent) = ts.parse::<u64>() else { return false };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(sent) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    headers.get("x-herald-signature").and_then(|v| v.to_str().ok()) == Some(&format!("sha256={hex}"))
}

impl Receiver {
    fn record(&self, headers: &HeaderMap, body: &Bytes) -> u32 {
        if !signature_ok(headers, body) {
            self.bad_signatures.fetch_add(1, Ordering::SeqCst);
        }
        self.seen.lock().unwrap().push((headers.clone(), body.clone()));
        self.calls.fetch_add(1, Ordering::SeqCst) + 1
    }
}

async fn flaky(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let n = r.record(&headers, &body);
    if n <= r.fail_first.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("not yet ({n})"));
    }
    (StatusCode::OK, json!({"ok": true, "call": n}).to_string())
}

async fn broken(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> (StatusCode, &'static str) {
    r.record(&headers, &body);
    if r.fixed.load(Ordering::SeqCst) {
        (StatusCode::NO_CONTENT, "")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance")
    }
}

async fn double(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> String {
    r.record(&headers, &body);
    let n: u64 = serde_json::from_slice(&body).unwrap();
    json!({"answer": n * 2}).to_string()
}

/// Starts the receiver on a free loopback port; returns its base URL.
async fn receiver(state: Arc<Receiver>) -> String {
    let app = Router::new()
        .route("/flaky", post(flaky))
        .route("/broken", post(broken))
        .route("/double", post(double))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn create(s: &TestServer, body: Value) -> Value {
    let (status, v) = s.post("/v1/subscriptions", body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

async fn wait_status(s: &TestServer, id: &str, status: &str) -> Value {
    eventually(&format!("event {id} to be {status}"), || async {
        let e = s.event(id).await;
        (e["status"] == status).then_some(e)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_retries_to_success() {
    let s = start(config()).await;
    let r = Arc::new(Receiver::default());
    r.fail_first.store(2, Ordering::SeqCst);
    let base = receiver(r.clone()).await;
    let sub = create(
        &s,
        json!({"name": "orders-hook", "pattern": "order.*", "url": format!("{base}/flaky"), "secret": SECRET,
               "max_attempts": 5, "backoff_ms": 10, "backoff_max_ms": 20}),
    )
    .await;
    assert_eq!(sub["kind"], "webhook");
    let id = s.publish(json!({"topic": "order.paid", "payload": {"order": 7}})).await;
    let e = wait_status(&s, &id, "succeeded").await;
    let d = &e["deliveries"][0];
    assert_eq!(d["subscription"], "orders-hook");
    assert_eq!(d["attempt_count"], 3);
    assert_eq!(d["attempts"][0]["outcome"], "failed");
    assert!(d["attempts"][0]["error"].as_str().unwrap().contains("500"), "{d}");
    assert_eq!(d["attempts"][2]["outcome"], "succeeded");

    assert_eq!(r.bad_signatures.load(Ordering::SeqCst), 0);
    let seen = r.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let (headers, body) = &seen[2];
    assert_eq!(body.as_ref(), br#"{"order":7}"#);
    assert_eq!(headers["x-herald-event-id"], id.as_str());
    assert_eq!(headers["x-herald-topic"], "order.paid");
    assert_eq!(headers["x-herald-subscription"], "orders-hook");
    assert_eq!(headers["x-herald-attempt"], "3");
    assert_eq!(headers["x-herald-delivery-id"], d["id"].as_str().unwrap());
    assert_eq!(headers["content-type"], "application/json");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_keeps_failing_goes_to_the_dead_letter_set_and_can_be_retried() {
    let s = start(config()).await;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await;
    create(
        &s,
        json!({"name": "fragile", "pattern": "report.*", "url": format!("{base}/broken"), "secret": SECRET,
               "max_attempts": 2, "backoff_ms": 10, "backoff_max_ms": 10}),
    )
    .await;
    let id = s.publish(json!({"topic": "report.ready", "payload": 1})).await;
    let e = wait_status(&s, &id, "dead").await;
    let d = &e["deliveries"][0];
    assert_eq!(d["attempt_count"], 2);
    assert!(
        d["last_error"].as_str().unwrap().contains("down for maintenance"),
        "{d}"
    );
    let (_, dead) = s.get("/v1/events?status=dead&subscription=fragile").await;
    assert_eq!(dead["items"][0]["id"], id.as_str());

    r.fixed.store(true, Ordering::SeqCst);
    let (status, body) = s
        .post_empty(&format!("/v1/deliveries/{}/retry", d["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let e = wait_status(&s, &id, "succeeded").await;
    assert_eq!(e["deliveries"][0]["attempt_count"], 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_failed_attempt() {
    let s = start(config()).await;
    // A port that was free a moment ago and has no listener now.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    create(
        &s,
        json!({"name": "nowhere", "pattern": "lost.*", "url": format!("http://{closed}/hook"), "secret": SECRET,
               "max_attempts": 1}),
    )
    .await;
    let id = s.publish(json!({"topic": "lost.event"})).await;
    let e = wait_status(&s, &id, "dead").await;
    assert!(
        e["deliveries"][0]["last_error"].as_str().unwrap().contains("failed"),
        "{e}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answers_requests() {
    let s = start(config()).await;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await;
    create(
        &s,
        json!({"name": "doubler", "pattern": "math.double", "url": format!("{base}/double"), "secret": SECRET}),
    )
    .await;
    let (status, body) = s
        .post(
            "/v1/requests",
            json!({"topic": "math.double", "payload": 21, "timeout_ms": 5000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reply"], json!({"answer": 42}));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_listed_paused_resumed_and_validated() {
    let s = start(config()).await;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await;
    let url = format!("{base}/flaky");
    create(
        &s,
        json!({"name": "hook", "pattern": "a.*", "url": url, "secret": SECRET}),
    )
    .await;
    create(&s, json!({"name": "puller", "pattern": "b.>"})).await;

    let (_, list) = s.get("/v1/subscriptions").await;
    let kinds: Vec<(&str, &str)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, vec![("hook", "webhook"), ("puller", "pull")]);
    let (status, one) = s.get("/v1/subscriptions/hook").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["url"], url.as_str());
    assert!(one.get("secret").is_none(), "the secret is never shown");

    let (_, paused) = s.post_empty("/v1/subscriptions/hook/pause").await;
    assert_eq!(paused["paused"], true);
    let id = s.publish(json!({"topic": "a.one"})).await;
    assert_eq!(s.event(&id).await["status"], "pending");
    let (_, resumed) = s.post_empty("/v1/subscriptions/hook/resume").await;
    assert_eq!(resumed["paused"], false);
    wait_status(&s, &id, "succeeded").await;

    let (status, body) = s.post_empty("/v1/subscriptions/nobody/pause").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = s.get("/v1/subscriptions/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for (bad, code, why) in [
        (
            json!({"name": "hook", "pattern": "a.*"}),
            StatusCode::CONFLICT,
            "duplicate",
        ),
        (
            json!({"name": "x", "pattern": "a.*", "url": url}),
            StatusCode::BAD_REQUEST,
            "no secret",
        ),
        (
            json!({"name": "x", "pattern": "a.*", "url": "ftp://127.0.0.1/h", "secret": "s"}),
            StatusCode::BAD_REQUEST,
            "not http",
        ),
        (
            json!({"name": "x", "pattern": "A B"}),
            StatusCode::BAD_REQUEST,
            "pattern",
        ),
        (
            json!({"name": "x", "pattern": "a.*", "max_attempts": 0}),
            StatusCode::BAD_REQUEST,
            "attempts",
        ),
        (
            json!({"name": "x", "pattern": "a.*", "secret": "s"}),
            StatusCode::BAD_REQUEST,
            "secret without url",
        ),
        (json!({"name": "x"}), StatusCode::BAD_REQUEST, "no pattern"),
    ] {
        let (status, body) = s.post("/v1/subscriptions", bad).await;
        assert_eq!(status, code, "{why}: {body}");
        error_code(&body);
    }

    // Deleting stops routing: later events on its topics are unrouted; pending ones are cancelled.
    s.post_empty("/v1/subscriptions/puller/pause").await;
    let waiting = s.publish(json!({"topic": "b.waiting"})).await;
    for name in ["hook", "puller"] {
        let r = s
            .req(reqwest::Method::DELETE, &format!("/v1/subscriptions/{name}"))
            .send()
            .await
            .unwrap();
        let (status, body) = common::json(r).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["cancelled"], if name == "puller" { 1 } else { 0 });
        assert_eq!(
            s.get(&format!("/v1/subscriptions/{name}")).await.0,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(s.event(&waiting).await["status"], "cancelled");
    let after = s.publish(json!({"topic": "a.after"})).await;
    assert_eq!(s.event(&after).await["status"], "unrouted");
    let (_, list) = s.get("/v1/subscriptions").await;
    assert_eq!(list["items"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_consumer_claims_nacks_extends_and_acks() {
    let s = start(config()).await;
    create(&s, json!({"name": "workers", "pattern": "job.*", "max_attempts": 2})).await;
    let (status, empty) = s.post_empty("/v1/subscriptions/workers/claim").await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["items"], json!([]));

    let id = s
        .publish(json!({"topic": "job.build", "payload": {"repo": "herald"}}))
        .await;
    let (_, claimed) = s
        .post(
            "/v1/subscriptions/workers/claim",
            json!({"max": 10, "lease_ms": 60_000}),
        )
        .await;
    let item = &claimed["items"][0];
    assert_eq!(item["attempt"], 1);
    assert_eq!(item["event"]["id"], id.as_str());
    assert_eq!(item["event"]["payload"], json!({"repo": "herald"}));
    let lease = item["lease"].as_str().unwrap().to_owned();
    assert_eq!(s.event(&id).await["status"], "active");

    let (status, ext) = s
        .post(
            "/v1/subscriptions/workers/extend",
            json!({"lease": lease, "lease_ms": 120_000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ext}");
    assert!(ext["lease_until"].as_str().unwrap() > item["lease_until"].as_str().unwrap());

    // First failure: retried (at once, as asked).
    let (status, nack) = s
        .post(
            "/v1/subscriptions/workers/nack",
            json!({"lease": lease, "error": "compiler crashed", "delay_ms": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{nack}");
    assert_eq!(nack["status"], "retrying");
    let again = eventually("the retry to be claimable", || async {
        let (_, c) = s.post_empty("/v1/subscriptions/workers/claim").await;
        c["items"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(again["attempt"], 2);
    // The old lease is stale now.
    let (status, body) = s.post("/v1/subscriptions/workers/ack", json!({"lease": lease})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "lease_lost");

    // Second failure is the last attempt: dead.
    let lease2 = again["lease"].as_str().unwrap();
    let (_, nack) = s.post("/v1/subscriptions/workers/nack", json!({"lease": lease2})).await;
    assert_eq!(nack["status"], "dead");
    let e = s.event(&id).await;
    assert_eq!(e["status"], "dead");
    assert!(e["deliveries"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("gave up after 2 attempts"));
    // The death is announced like one of herald's own handlers'.
    let (_, notices) = s.get("/v1/events?topic=herald.event.dead").await;
    let notice = &notices["items"][0]["payload"];
    assert_eq!(notice["event_id"], id.as_str(), "{notices}");
    assert_eq!(notice["subscription"], "workers");
    assert_eq!(notice["attempts"], 2);

    // Retried by hand, claimed once more, acked.
    let delivery = e["deliveries"][0]["id"].as_str().unwrap();
    let (status, _) = s.post_empty(&format!("/v1/deliveries/{delivery}/retry")).await;
    assert_eq!(status, StatusCode::OK);
    let third = eventually("the requeued delivery", || async {
        let (_, c) = s.post_empty("/v1/subscriptions/workers/claim").await;
        c["items"].as_array().unwrap().first().cloned()
    })
    .await;
    let (status, ack) = s
        .post("/v1/subscriptions/workers/ack", json!({"lease": third["lease"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(s.event(&id).await["status"], "succeeded");

    // Pull consumers count in the same series as herald's own subscriptions.
    let metrics = s
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"herald_deliveries_succeeded_total{subscription="workers"} 1"#,
        r#"herald_attempts_failed_total{subscription="workers"} 2"#,
        r#"herald_deliveries_dead_total{subscription="workers"} 1"#,
        r#"herald_deliveries_retried_total{subscription="workers"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in /metrics");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_lease_that_runs_out_goes_to_the_next_claim() {
    let s = start(config()).await;
    create(&s, json!({"name": "slowpokes", "pattern": "task.*"})).await;
    s.publish(json!({"topic": "task.one"})).await;
    let (_, first) = s
        .post("/v1/subscriptions/slowpokes/claim", json!({"lease_ms": 50}))
        .await;
    let first_lease = first["items"][0]["lease"].as_str().unwrap().to_owned();
    let second = eventually("the expired lease to be claimable", || async {
        let (_, c) = s.post_empty("/v1/subscriptions/slowpokes/claim").await;
        c["items"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(second["attempt"], 2);
    let (status, body) = s
        .post("/v1/subscriptions/slowpokes/extend", json!({"lease": first_lease}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_consumer_answers_requests_and_errors_are_clear() {
    let s = start(config()).await;
    create(&s, json!({"name": "answerer", "pattern": "ask.*"})).await;
    let r = Arc::new(Receiver::default());
    let base = receiver(r).await;
    create(
        &s,
        json!({"name": "pushed", "pattern": "push.*", "url": format!("{base}/flaky"), "secret": "s"}),
    )
    .await;

    let requester = {
        let http = s.http.clone();
        let url = s.url("/v1/requests");
        tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&json!({"topic": "ask.time", "payload": "now?", "timeout_ms": 5000}))
                .send()
                .await
                .unwrap();
            common::json(r).await
        })
    };
    let claimed = eventually("the request to be claimable", || async {
        let (_, c) = s.post_empty("/v1/subscriptions/answerer/claim").await;
        c["items"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(claimed["event"]["payload"], "now?");
    let (status, _) = s
        .post(
            "/v1/subscriptions/answerer/ack",
            json!({"lease": claimed["lease"], "reply": {"at": "noon"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = requester.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reply"], json!({"at": "noon"}));

    let (status, body) = s.post_empty("/v1/subscriptions/pushed/claim").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "not_pull");
    let (status, _) = s.post_empty("/v1/subscriptions/nobody/claim").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.post("/v1/subscriptions/answerer/claim", json!({"max": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s.post("/v1/subscriptions/answerer/ack", json!({"lease": "nope"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s.post("/v1/subscriptions/answerer/ack", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Paused: claims hand out nothing.
    s.publish(json!({"topic": "ask.later"})).await;
    s.post_empty("/v1/subscriptions/answerer/pause").await;
    let (_, c) = s.post_empty("/v1/subscriptions/answerer/claim").await;
    assert_eq!(c["paused"], true);
    assert_eq!(c["items"], json!([]));
    s.post_empty("/v1/subscriptions/answerer/resume").await;
    let (_, c) = s.post_empty("/v1/subscriptions/answerer/claim").await;
    assert_eq!(c["items"].as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_claim_can_wait_for_work() {
    let s = start(config()).await;
    create(&s, json!({"name": "poller", "pattern": "work.*"})).await;

    // Nothing comes: an empty answer once wait_ms has passed.
    let (status, c) = s.post("/v1/subscriptions/poller/claim", json!({"wait_ms": 50})).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["items"], json!([]));

    // A claim waiting when the event is published gets it.
    let waiting = {
        let http = s.http.clone();
        let url = s.url("/v1/subscriptions/poller/claim");
        tokio::spawn(async move {
            let r = http.post(url).json(&json!({"wait_ms": 10_000})).send().await.unwrap();
            common::json(r).await
        })
    };
    // Publish only once the claim is waiting (no item yet means it has not answered).
    let id = s.publish(json!({"topic": "work.now"})).await;
    let (status, c) = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the waiting claim answers")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{c}");
    // Either the claim was already waiting and woke up, or it started after the publish: both
    // must hand out the event.
    assert_eq!(c["items"][0]["event"]["id"], id.as_str());

    // A delayed event is handed out when it becomes due, within the wait.
    let later = s.publish(json!({"topic": "work.later", "delay_ms": 200})).await;
    let t0 = std::time::Instant::now();
    let (_, c) = s
        .post("/v1/subscriptions/poller/claim", json!({"wait_ms": 10_000}))
        .await;
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "woke at the due time, not at the end of the wait"
    );
    assert_eq!(c["items"][0]["event"]["id"], later.as_str());

    let (status, body) = s
        .post("/v1/subscriptions/poller/claim", json!({"wait_ms": 3_600_000}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    s.stop().await;
}

/// Starts the receiver over TLS with a fresh self-signed certificate for 127.0.0.1 and localhost;
/// returns its base URL and the certificate's PEM (the CA a client must trust).
async fn tls_receiver(state: Arc<Receiver>) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let app = Router::new().route("/double", post(double)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("https://{addr}"), pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_is_called_when_its_certificate_chains_to_a_trusted_ca() {
    let r = Arc::new(Receiver::default());
    let (base, pem) = tls_receiver(r.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let mut c = config();
    c.webhook_ca = Some(ca);
    let s = start(c).await;
    create(
        &s,
        json!({"name": "secure", "pattern": "calc.*", "url": format!("{base}/double"), "secret": SECRET}),
    )
    .await;
    let (status, answer) = s
        .post(
            "/v1/requests",
            json!({"topic": "calc.double", "payload": 21, "timeout_ms": 10_000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["reply"]["answer"], 42, "{answer}");
    assert_eq!(r.bad_signatures.load(Ordering::SeqCst), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_with_an_untrusted_certificate_is_a_failed_attempt() {
    let r = Arc::new(Receiver::default());
    let (base, _pem) = tls_receiver(r.clone()).await;
    let s = start(config()).await;
    create(
        &s,
        json!({"name": "untrusted", "pattern": "calc.*", "url": format!("{base}/double"), "secret": SECRET,
               "max_attempts": 1}),
    )
    .await;
    let id = s.publish(json!({"topic": "calc.double", "payload": 1})).await;
    let e = wait_status(&s, &id, "dead").await;
    let error = e["deliveries"][0]["last_error"].as_str().unwrap().to_owned();
    assert!(error.contains(&base), "{error}");
    assert_eq!(
        r.calls.load(Ordering::SeqCst),
        0,
        "the handler must never run over an untrusted connection"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_webhook_ca_file_that_is_not_pem_stops_the_server_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let mut c = config();
    c.webhook_ca = Some(ca);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = herald_server::Server::start(listener, c)
        .await
        .expect_err("a server whose webhook CA file holds no certificate must not start")
        .to_string();
    assert!(err.contains("ca.pem") && err.contains("no certificate"), "{err}");
}
