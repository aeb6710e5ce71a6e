//! A small HTTP client for the herald API, on hyper-util's legacy client (plain HTTP).

use std::fmt;
use std::time::Duration;

use axum::http::{header, Method, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Why a CLI command failed; its exit code and message.
#[derive(Debug)]
pub(crate) enum CliError {
    /// The API answered with an error status.
    Api { status: StatusCode, message: String },
    /// The server could not be reached.
    Connect { server: String, detail: String },
    /// The command line was invalid (exit 2, like a 4xx).
    Usage(String),
    /// Anything else.
    Other(String),
}

impl CliError {
    /// 2 for a client error (an API 4xx or a bad argument), 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Api { status, .. } if status.is_client_error() => 2,
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Api { status, message } => write!(f, "{message} ({status})"),
            CliError::Connect { server, detail } => {
                write!(
                    f,
                    "cannot connect to {server} ({detail}): is `herald serve` running at {server}?"
                )
            }
            CliError::Usage(m) | CliError::Other(m) => f.write_str(m),
        }
    }
}

/// A successful answer: its raw body (for `--json`) and that body parsed.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) raw: String,
    pub(crate) json: Value,
}

/// A client of one herald server.
#[derive(Debug)]
pub(crate) struct Client {
    base: String,
    token: Option<String>,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// How long a call may take when the command does not say (a request adds its own wait).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl Client {
    /// A client of the server at `server` (`http://host:port`).
    pub(crate) fn new(server: &str, token: Option<String>) -> Result<Self, CliError> {
        let base = server.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|e| CliError::Usage(format!("--server '{server}' is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(CliError::Usage(format!(
                    "--server '{server}': https is not supported by the CLI yet; use http://"
                )))
            }
            _ => {
                return Err(CliError::Usage(format!(
                    "--server '{server}' must be an absolute http:// URL such as http://127.0.0.1:7420"
                )))
            }
        }
        Ok(Client {
            base,
            token: token.filter(|t| !t.is_empty()),
            http: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Waits up to `extra` longer than the default for answers (for requests that wait for a reply).
    pub(crate) fn wait_longer(&mut self, extra: Duration) {
        self.timeout = DEFAULT_TIMEOUT.saturating_add(extra);
    }

    /// `GET path?query`; query values are percent-encoded.
    pub(crate) async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Answer, CliError> {
        let mut target = path.to_owned();
        for (i, (k, v)) in query.iter().enumerate() {
            target.push(if i == 0 { '?' } else { '&' });
            target.push_str(&encode(k));
            target.push('=');
            target.push_str(&encode(v));
        }
        self.call(Method::GET, &target, None).await
    }

    /// `POST path` with a JSON body (none: an empty body).
    pub(crate) async fn post(&self, path: &str, body: Option<&Value>) -> Result<Answer, CliError> {
        self.call(Method::POST, path, body).await
    }

    /// `DELETE path`.
    pub(crate) async fn delete(&self, path: &str) -> Result<Answer, CliError> {
        self.call(Method::DELETE, path, None).await
    }

    async fn call(&self, method: Method, target: &str, body: Option<&Value>) -> Result<Answer, CliError> {
        let url = format!("{}{target}", self.base);
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(header::USER_AGENT, concat!("herald-cli/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, "application/json");
        if let Some(t) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| CliError::Other(format!("cannot encode the body: {e}")))?)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(bytes))
            .map_err(|e| CliError::Other(format!("cannot build {method} {url}: {e}")))?;
        let response = match tokio::time::timeout(self.timeout, self.http.request(request)).await {
            Err(_) => {
                return Err(CliError::Other(format!(
                    "{method} {url} got no answer within {}",
                    humantime::format_duration(self.timeout)
                )))
            }
            Ok(Err(e)) if e.is_connect() => {
                // The innermost cause says most: "Connection refused (os error 111)".
                let mut cause: &dyn std::error::Error = &e;
                while let Some(inner) = cause.source() {
                    cause = inner;
                }
                let detail = cause.to_string();
                return Err(CliError::Connect {
                    server: self.base.clone(),
                    detail,
                });
            }
            Ok(Err(e)) => return Err(CliError::Other(format!("{method} {url} failed: {e}"))),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::Other(format!("reading the answer to {method} {url} failed: {e}")))?
            .to_bytes();
        let raw = String::from_utf8_lossy(&body).into_owned();
        let json: Option<Value> = serde_json::from_str(&raw).ok();
        if !status.is_success() {
            let message = json
                .as_ref()
                .and_then(|v| v["error"]["message"].as_str())
                .map_or_else(|| format!("{method} {url} answered: {}", raw.trim()), str::to_owned);
            return Err(CliError::Api { status, message });
        }
        let json = json.ok_or_else(|| CliError::Other(format!("{method} {url} answered with no JSON: {raw}")))?;
        Ok(Answer { raw, json })
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a query value or a path
/// segment.
pub(crate) fn encode(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_what_is_not_unreserved() {
        assert_eq!(super::encode("a-b.c_d~e09"), "a-b.c_d~e09");
        assert_eq!(super::encode("a b&c>d=é/"), "a%20b%26c%3Ed%3D%C3%A9%2F");
        assert_eq!(
            super::encode("2026-11-25T18:53:24+01:00"),
            "2026-11-25T18%3A53%3A24%2B01%3A00"
        );
    }

    #[test]
    fn exit_codes() {
        use axum::http::StatusCode;
        let api = |status| super::CliError::Api {
            status,
            message: String::new(),
        };
        assert_eq!(api(StatusCode::NOT_FOUND).exit_code(), 2);
        assert_eq!(api(StatusCode::SERVICE_UNAVAILABLE).exit_code(), 1);
        assert_eq!(super::CliError::Other(String::new()).exit_code(), 1);
    }

    #[test]
    fn only_http_servers() {
        assert!(super::Client::new("http://127.0.0.1:7420/", None).is_ok());
        assert!(super::Client::new("https://example.test", None).is_err());
        assert!(super::Client::new("127.0.0.1:7420", None).is_err());
    }
}
