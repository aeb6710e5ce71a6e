//! CloudEvents 1.0 on publish: structured mode (`application/cloudevents+json`), batch mode
//! (`application/cloudevents-batch+json`) and binary mode (`ce-*` headers, the body is the data).
//!
//! The mapping: `type` is the topic, `source` the event's source, and `source` with `id` the
//! idempotency key (`{source}#{id}`), since CloudEvents consumers may treat events with the same
//! source and id as duplicates. `id`, `time`, `subject`, `dataschema` and extensions are kept as
//! `ce-<name>` headers; `datacontenttype` is the payload's media type.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;
use herald::{Message, JSON};
use serde_json::value::RawValue;
use serde_json::Value;

use super::events::{is_json, topic};
use super::{parse_json, ApiError};

/// The media type of structured mode.
pub(crate) const STRUCTURED: &str = "application/cloudevents+json";
/// The media type of batch mode.
pub(crate) const BATCH: &str = "application/cloudevents-batch+json";
/// The header whose presence means binary mode.
pub(crate) const BINARY_MARKER: &str = "ce-specversion";

/// The attributes every CloudEvent has.
struct Required {
    id: String,
    source: String,
    ty: String,
}

fn check_version(version: &str) -> Result<(), ApiError> {
    if version == "1.0" {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "specversion '{version}' is not supported: send CloudEvents 1.0"
        )))
    }
}

fn message(
    required: Required,
    payload: Bytes,
    content_type: &str,
    extra: Vec<(String, String)>,
) -> Result<Message, ApiError> {
    topic("the CloudEvent's type", &required.ty)?;
    let key = format!("{}#{}", required.source, required.id);
    let mut m = Message::bytes(required.ty, payload, content_type)
        .source(required.source)
        .key(key)
        .header("ce-id", required.id);
    for (k, v) in extra {
        m = m.header(format!("ce-{k}"), v);
    }
    Ok(m)
}

/// One event in structured mode.
pub(crate) fn structured(body: &[u8]) -> Result<Message, ApiError> {
    let attrs: BTreeMap<String, &RawValue> = parse_json(body)?;
    from_attributes(attrs)
}

/// A batch in batch mode: a JSON array of structured events.
pub(crate) fn batch(body: &[u8]) -> Result<Vec<Message>, ApiError> {
    let events: Vec<BTreeMap<String, &RawValue>> = parse_json(body)?;
    if events.is_empty() {
        return Err(ApiError::invalid(
            "the CloudEvents batch is empty: send at least one event",
        ));
    }
    events.into_iter().map(from_attributes).collect()
}

fn string_attr(attrs: &mut BTreeMap<String, &RawValue>, name: &str) -> Result<Option<String>, ApiError> {
    match attrs.remove(name) {
        None => Ok(None),
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::String(s)) => Ok(Some(s)),
            Ok(Value::Null) => Ok(None),
            Ok(Value::Number(n)) => Ok(Some(n.to_string())),
            Ok(Value::Bool(b)) => Ok(Some(b.to_string())),
            _ => Err(ApiError::invalid(format!(
                "CloudEvents attribute '{name}' must be a string, number or boolean"
            ))),
        },
    }
}

fn required_attr(attrs: &mut BTreeMap<String, &RawValue>, name: &str) -> Result<String, ApiError> {
    string_attr(attrs, name)?.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::invalid(format!(
            "the CloudEvent has no '{name}': specversion, id, source and type are required"
        ))
    })
}

fn from_attributes(mut attrs: BTreeMap<String, &RawValue>) -> Result<Message, ApiError> {
    check_version(&required_attr(&mut attrs, "specversion")?)?;
    let required = Required {
        id: required_attr(&mut attrs, "id")?,
        source: required_attr(&mut attrs, "source")?,
        ty: required_attr(&mut attrs, "type")?,
    };
    let content_type = string_attr(&mut attrs, "datacontenttype")?;
    let data = attrs.remove("data");
    let data_base64 = string_attr(&mut attrs, "data_base64")?;
    let (payload, content_type) = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "the CloudEvent has both data and data_base64: give one",
            ));
        }
        (None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| ApiError::invalid(format!("data_base64 is not valid base64: {e}")))?;
            let ct = content_type.unwrap_or_else(|| "application/octet-stream".to_owned());
            (Bytes::from(bytes), ct)
        }
        (Some(raw), None) => match content_type {
            Some(ct) if !is_json(&ct) => match serde_json::from_str::<Value>(raw.get()) {
                Ok(Value::String(s)) => (Bytes::from(s), ct),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "data must be a string when datacontenttype is '{ct}'; use data_base64 for binary data"
                    )))
                }
            },
            ct => (
                Bytes::copy_from_slice(raw.get().as_bytes()),
                ct.unwrap_or_else(|| JSON.to_owned()),
            ),
        },
        (None, None) => (
            Bytes::from_static(b"null"),
            content_type.unwrap_or_else(|| JSON.to_owned()),
        ),
    };
    let mut extra = Vec::new();
    let names: Vec<String> = attrs.keys().cloned().collect();
    for name in names {
        if let Some(v) = string_attr(&mut attrs, &name)? {
            extra.push((name, v));
        }
    }
    message(required, payload, &content_type, extra)
}

/// One event in binary mode: attributes in `ce-*` headers, the data in the body.
pub(crate) fn binary(headers: &HeaderMap, body: &[u8]) -> Result<Message, ApiError> {
    let mut attrs = BTreeMap::new();
    for (name, value) in headers {
        if let Some(attr) = name.as_str().strip_prefix("ce-") {
            let value = value
                .to_str()
                .map_err(|_| ApiError::invalid(format!("header {name} is not visible ASCII")))?;
            attrs.insert(attr.to_owned(), value.to_owned());
        }
    }
    let mut take = |name: &str| {
        attrs
            .remove(name)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::invalid(format!("binary-mode CloudEvent without the ce-{name} header: ce-specversion, ce-id, ce-source and ce-type are required")))
    };
    check_version(&take("specversion")?)?;
    let required = Required {
        id: take("id")?,
        source: take("source")?,
        ty: take("type")?,
    };
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(JSON)
        .to_owned();
    let payload = if body.is_empty() && is_json(&content_type) {
        Bytes::from_static(b"null")
    } else {
        Bytes::copy_from_slice(body)
    };
    message(required, payload, &content_type, attrs.into_iter().collect())
}
