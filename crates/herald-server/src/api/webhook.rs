//! Webhook consumers: a herald subscription whose handler POSTs each delivery to a URL.
//!
//! The body is the event's payload as published; the headers carry the event id, delivery id,
//! topic, subscription and attempt, `X-Herald-Timestamp` (Unix seconds when the request was sent)
//! and `X-Herald-Signature: sha256=<hex>`, the HMAC-SHA256 under the subscription's secret of
//! `<timestamp>.<body>`. A receiver recomputes it and refuses requests whose timestamp is more than
//! a few minutes old, so a captured request cannot be replayed later. A 2xx answer is success and its body the reply (JSON as
//! is, other text as a JSON string); any other status, a timeout or a refused connection is a
//! failed attempt under the subscription's policy.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use axum::http::{header, Request, Uri};
use bytes::Bytes;
use herald::{Context, Event, HandlerError};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::value::RawValue;
use sha2::Sha256;

/// The HTTP client webhooks are sent with: `http://` and `https://` (rustls), one connection pool
/// per server.
pub(crate) type Client = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A new client trusting Mozilla's root certificates (webpki-roots) and, for a private CA, those in
/// the PEM file `extra_roots`.
pub(crate) fn client(extra_roots: Option<&Path>) -> Result<Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_roots {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read the webhook CA file '{}': {e}", path.display()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("the webhook CA file '{}' is not PEM: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("a certificate in '{}' is not usable: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "the webhook CA file '{}' holds no certificate (expected PEM 'BEGIN CERTIFICATE' blocks)",
                path.display()
            ));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector))
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
            Some("http" | "https") => {}
            _ => return Err(format!("url '{url}' must be an absolute http:// or https:// URL")),
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

/// `sha256=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub(crate) fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    use std::fmt::Write as _;
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(e) => return format!("sha256=error:{e}"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
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
    let body = event.payload_bytes();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let request = Request::post(target.url.clone())
        .header(header::CONTENT_TYPE, event.content_type())
        .header(header::USER_AGENT, concat!("herald/", env!("CARGO_PKG_VERSION")))
        .header("x-herald-event-id", event.id().to_string())
        .header("x-herald-delivery-id", ctx.delivery_id().to_string())
        .header("x-herald-topic", event.topic().as_str())
        .header("x-herald-subscription", ctx.subscription().as_str())
        .header("x-herald-attempt", ctx.attempt().to_string())
        .header("x-herald-timestamp", timestamp.to_string())
        .header("x-herald-signature", signature(&target.secret, timestamp, &body))
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
    fn signature_is_hmac_sha256_of_timestamp_dot_body_in_hex() {
        // RFC 4231 test case 2's key; the signed text is "<timestamp>.<body>".
        assert_ne!(
            super::signature(b"Jefe", 41, b"what do ya want for nothing?"),
            super::signature(b"Jefe", 42, b"what do ya want for nothing?"),
        );
        assert_eq!(
            super::signature(b"Jefe", 0, b"what do ya want for nothing?").len(),
            "sha256=".len() + 64
        );
        let mut mac = <super::Hmac<super::Sha256> as super::Mac>::new_from_slice(b"Jefe").unwrap();
        super::Mac::update(&mut mac, b"7.what do ya want for nothing?");
        let hex: String = super::Mac::finalize(mac)
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            super::signature(b"Jefe", 7, b"what do ya want for nothing?"),
            format!("sha256={hex}")
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
        assert!(super::Target::new("https://example.test/hook", "s").is_ok());
        assert!(super::Target::new("ftp://example.test/hook", "s").is_err());
        assert!(super::Target::new("/hook", "s").is_err());
        assert!(super::Target::new("http://127.0.0.1:9/hook", "").is_err());
    }
}
