//! The dashboard against a real server: the page and its assets, the recent history and the live
//! stream of samples, and bearer tokens on them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{config, error_code, eventually, start};
use futures_util::StreamExt;
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_with_their_types() {
    let s = start(config()).await;
    for (path, content_type, marker) in [
        ("/", "text/html; charset=utf-8", "<title>herald</title>"),
        ("/assets/app.js", "text/javascript; charset=utf-8", "/v1/stats/stream"),
        ("/assets/app.css", "text/css; charset=utf-8", ".tiles"),
        ("/assets/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let r = s.req(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()[header::CONTENT_TYPE], content_type, "{path}");
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        let body = r.text().await.unwrap();
        assert!(body.contains(marker), "{path} does not contain {marker:?}");
    }
    // Nothing the page loads comes from elsewhere: every src and href is a path on this server.
    let page = s.req(Method::GET, "/").send().await.unwrap().text().await.unwrap();
    for attr in ["src=\"", "href=\""] {
        for rest in page.split(attr).skip(1) {
            assert!(rest.starts_with('/'), "{attr}{}", &rest[..rest.find('"').unwrap()]);
        }
    }
    let (status, body) = s.get("/assets/missing.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_has_a_point_a_second_with_throughput_and_lateness() {
    let s = start(config()).await;
    s.post("/v1/subscriptions", json!({"name": "charted", "pattern": "chart.*"}))
        .await;
    let (status, first) = s.get("/v1/stats/history").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["interval_ms"], 1000);
    assert!(first["points"].is_array(), "{first}");
    // Publish until a point shows the events: the sampler reads once a second.
    let point = eventually("a point with published events", || async {
        let (_, batch) = s
            .post(
                "/v1/events",
                json!({"events": [{"topic": "chart.a"}, {"topic": "chart.b"}]}),
            )
            .await;
        assert_eq!(batch["ids"].as_array().map(Vec::len), Some(2), "{batch}");
        let (_, history) = s.get("/v1/stats/history").await;
        history["points"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["published"].as_f64().unwrap() > 0.0)
            .cloned()
    })
    .await;
    for field in ["t", "published", "succeeded", "dead"] {
        assert!(point[field].is_number(), "{field} in {point}");
    }
    let (_, history) = s.get("/v1/stats/history").await;
    let points = history["points"].as_array().unwrap();
    assert!(
        points.windows(2).all(|w| w[0]["t"].as_u64() < w[1]["t"].as_u64()),
        "points are oldest first: {history}"
    );
    assert!(history["stats"]["events"].as_u64().unwrap() >= 2, "{history}");
    assert!(
        history["stats"]["deliveries"]["pending"].as_u64().unwrap() >= 2,
        "{history}"
    );

    // A claim starts attempts: their lateness shows in a later point.
    let (status, claimed) = s
        .post("/v1/subscriptions/charted/claim", json!({"max": 100, "wait_ms": 1000}))
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert!(!claimed["items"].as_array().unwrap().is_empty(), "{claimed}");
    let lateness = eventually("a point with lateness", || async {
        let (_, history) = s.get("/v1/stats/history").await;
        history["points"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|p| p["lateness"].as_object().cloned())
    })
    .await;
    assert!(lateness["count"].as_u64().unwrap() >= 1, "{lateness:?}");
    let (mean, p99) = (
        lateness["mean_ms"].as_f64().unwrap(),
        lateness["p99_ms"].as_f64().unwrap(),
    );
    assert!(mean >= 0.0 && p99 >= 0.0, "{lateness:?}");
    s.stop().await;
}

/// Reads Server-Sent Events from a response until `want` of them with event `sample`.
async fn samples(r: reqwest::Response, want: usize) -> Vec<Value> {
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let mut found = Vec::new();
    while found.len() < want {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("no sample within 10 s")
            .expect("the stream ended")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut lines = block.lines();
            if lines.next() == Some("event: sample") {
                let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
                found.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_pushes_a_sample_each_second_and_ends_at_shutdown() {
    // The request timeout bounds how long a response takes to start, not how long a stream runs.
    let mut c = config();
    c.request_timeout = Duration::from_millis(500);
    let s = start(c).await;
    s.publish(json!({"topic": "stream.me"})).await;
    let r = s.req(Method::GET, "/v1/stats/stream").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
    let got = samples(r, 3).await;
    assert!(
        got.windows(2)
            .all(|w| w[0]["point"]["t"].as_u64() < w[1]["point"]["t"].as_u64()),
        "a new point each time: {got:?}"
    );
    assert!(got[2]["stats"]["events"].as_u64().unwrap() >= 1, "{got:?}");
    assert!(got[2]["point"]["published"].is_number(), "{got:?}");

    // Shutdown ends an open stream, so that it does not hold the drain up.
    let r = s.req(Method::GET, "/v1/stats/stream").send().await.unwrap();
    let mut body = r.bytes_stream();
    let stopping = tokio::spawn(async move { s.stop().await });
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end at shutdown");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown waited on the stream")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_page_loads_but_its_calls_need_one() {
    let mut c = config();
    c.tokens = vec!["dash-s3cret".to_owned()];
    let mut s = start(c).await;
    for path in ["/", "/assets/app.js", "/assets/app.css", "/assets/favicon.svg"] {
        let r = s.req(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path} loads without a token");
    }
    for path in ["/v1/stats/history", "/v1/stats/stream"] {
        let r = s.req(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE), "{path}");
        let r = s.req(Method::GET, path).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // A token in the query string is not a token: only the header counts.
    let r = s
        .req(Method::GET, "/v1/stats/stream?token=dash-s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Only the page's own files are open: another path under /assets is not.
    let (status, _) = s.get("/assets/other.js").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    s.token = Some("dash-s3cret".to_owned());
    let (status, history) = s.get("/v1/stats/history").await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let r = s.req(Method::GET, "/v1/stats/stream").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(samples(r, 1).await.len(), 1);
    s.stop().await;
}
