//! Webhook consumers: a herald subscription whose handler POSTs each delivery to a URL.
//!
//! The body is the event's payload as published; the headers carry the event id, delivery id,
//! topic, subscription and attempt, and `X-Herald-Signature: sha256=<hex>`, the HMAC-SHA256 of the
//! body under the subscription's secret. A 2xx answer is success and its body the reply (JSON as
//! is, other text as a JSON string); any other status, a timeout or a refused connection is a
//! failed attempt under the subscription's policy.

use std::fmt;
use std::sync::Arc;

use axum::http::{header, Request, Uri};
use bytes::Bytes;
use herald::{Context, Event, HandlerError};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::value::RawValue;
use sha2::Sha256;

/// The HTTP client webhooks are sent with (plain HTTP; one connection pool per server).
pub(crate) type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A new client.
pub(crate) fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// The largest webhook answer kept as a reply.
const MAX_REPLY: usize = 1024 * 1024;

/// Where and how a webhook subscription delivers.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) url: Uri,
    secret: Arc<[u8]>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("Target").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Target {
    /// A target, if the URL is one this server can call.
    pub(crate) fn new(url: &str, secret: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("url '{url}' is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "url '{url}': https webhooks are not supported yet; use http (behind a TLS-terminating proxy)"
                ))
            }
            _ => return Err(format!("url '{url}' must be an absolute http:// URL")),
        }
        if uri.host().is_none() {
            return Err(format!("url '{url}' has no host"));
        }
        if secret.is_empty() {
            return Err("secret is empty: give each webhook subscription a secret to sign its requests with".into());
        }
        Ok(Target {
            url: uri,
            secret: Arc::from(secret.as_bytes()),
        })
    }
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    use std::fmt::Write as _;
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(e) => return format!("sha256=error:{e}"),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Sends one delivery; the reply on a 2xx answer.
pub(crate) async fn deliver(
    client: &Client,
    target: &Target,
    event: &Event,
    ctx: &Context,
) -> Result<Box<RawValue>, HandlerError> {
    let body = event.payload().clone();
    let request = Request::post(target.url.clone())
        .header(header::CONTENT_TYPE, event.content_type())
        .header(header::USER_AGENT, concat!("herald/", env!("CARGO_PKG_VERSION")))
        .header("x-herald-event-id", event.id().to_string())
        .header("x-herald-delivery-id", ctx.delivery_id().to_string())
        .header("x-herald-topic", event.topic().as_str())
        .header("x-herald-subscription", ctx.subscription().as_str())
        .header("x-herald-attempt", ctx.attempt().to_string())
        .header("x-herald-signature", signature(&target.secret, &body))
        .body(Full::new(body))
        .map_err(|e| {
            HandlerError::permanent(std::io::Error::other(format!("cannot build the webhook request: {e}")))
        })?;
    let response = client
        .request(request)
        .await
        .map_err(|e| HandlerError::msg(format!("POST {} failed: {e}", target.url)))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_REPLY)
        .collect()
        .await
        .map_err(|e| HandlerError::msg(format!("reading the answer of {} failed: {e}", target.url)))?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let snippet: String = text.chars().take(200).collect();
        return Err(HandlerError::msg(format!(
            "{} answered {status}: {snippet}",
            target.url
        )));
    }
    Ok(reply(&body))
}

/// A webhook's answer as a JSON reply: JSON as is, empty as `null`, other text as a string.
fn reply(body: &[u8]) -> Box<RawValue> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return RawValue::NULL.to_owned();
    }
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(raw) = RawValue::from_string(text.trim().to_owned()) {
            return raw;
        }
    }
    let text = String::from_utf8_lossy(body);
    serde_json::value::to_raw_value(&text).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn replies_are_json() {
        assert_eq!(super::reply(b"").get(), "null");
        assert_eq!(super::reply(b" {\"a\": 1} ").get(), "{\"a\": 1}");
        assert_eq!(super::reply(b"ok").get(), "\"ok\"");
    }

    #[test]
    fn only_http_targets() {
        assert!(super::Target::new("http://127.0.0.1:9/hook", "s").is_ok());
        assert!(super::Target::new("https://example.test/hook", "s").is_err());
        assert!(super::Target::new("/hook", "s").is_err());
        assert!(super::Target::new("http://127.0.0.1:9/hook", "").is_err());
    }
}
