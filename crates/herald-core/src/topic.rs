//! Topics and topic patterns.
//!
//! A [`Topic`] is a validated dotted name (`order.paid`); a [`Pattern`] matches topics with NATS
//! wildcards: `*` is exactly one segment, a final `>` is one or more segments.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest topic or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// Why a topic, pattern or subscription name was refused. Its message says what the rule is.
///
/// ```
/// use herald_core::{Pattern, Topic, TopicError};
///
/// let err = Topic::new("Order Paid").unwrap_err();
/// assert!(matches!(err, TopicError::Invalid { kind: "topic", .. }));
/// assert!(err.to_string().contains("use lowercase dotted names such as 'order.paid'"));
/// assert!(matches!(Pattern::new(""), Err(TopicError::Empty { kind: "pattern" })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The name was empty.
    #[error("{kind} is empty: use lowercase dotted names such as 'order.paid'")]
    Empty {
        /// What was being parsed: "topic", "pattern" or "subscription name".
        kind: &'static str,
    },
    /// The name was longer than [`MAX_TOPIC_LEN`].
    #[error("{kind} is {len} bytes long: the limit is {MAX_TOPIC_LEN}")]
    TooLong {
        /// What was being parsed.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The name has a character or segment that is not allowed.
    #[error("{kind} '{name}' is invalid: {reason}")]
    Invalid {
        /// What was being parsed.
        kind: &'static str,
        /// The refused name.
        name: String,
        /// What is wrong and how to fix it.
        reason: &'static str,
    },
}

const SEGMENT_RULE: &str = "use lowercase dotted names such as 'order.paid' (letters a-z, digits, '_' and '-', segments separated by single dots)";

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn check_len(kind: &'static str, s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty { kind });
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { kind, len: s.len() });
    }
    Ok(())
}

fn invalid(kind: &'static str, name: &str, reason: &'static str) -> TopicError {
    TopicError::Invalid {
        kind,
        name: name.to_owned(),
        reason,
    }
}

/// A validated topic name such as `order.paid`. Cheap to clone.
///
/// ```
/// use herald_core::Topic;
///
/// let topic = Topic::new("order.paid")?;
/// assert_eq!(topic.as_str(), "order.paid");
/// let err = Topic::new("Order Paid").unwrap_err();
/// assert!(err.to_string().starts_with("topic 'Order Paid' is invalid: use lowercase dotted names"));
/// # Ok::<(), herald_core::TopicError>(())
/// ```
///
/// A topic of up to 23 bytes is kept inline, as subscription names are: every event carries its
/// topic, and a shared count that the publishing thread raises and another thread lowers when it
/// drops the event moved a line between cores for every event.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Topic(smol_str::SmolStr);

impl std::hash::Hash for Topic {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As a `str`, which it borrows as.
        self.0.as_str().hash(state);
    }
}

impl Topic {
    /// Validates `name` as a topic.
    pub fn new(name: &str) -> Result<Self, TopicError> {
        check_len("topic", name)?;
        if !name.split('.').all(valid_segment) {
            return Err(invalid("topic", name, SEGMENT_RULE));
        }
        Ok(Topic(smol_str::SmolStr::new(name)))
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Its dot-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.as_str().split('.')
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", self.0.as_str())
    }
}

impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        Topic::new(s)
    }
}

impl TryFrom<&str> for Topic {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, TopicError> {
        Topic::new(s)
    }
}

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Topic::new(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Literal(Box<str>),
    One,
    Rest,
}

/// A topic pattern: `order.paid` (exact), `order.*` (one segment), `order.>` (one or more segments).
///
/// These are NATS's wildcards; they map one to one onto AMQP's `*` and `#`.
///
/// ```
/// use herald_core::{Pattern, Topic};
///
/// let p = Pattern::new("order.>")?;
/// assert!(p.matches(&Topic::new("order.paid")?));
/// assert!(p.matches(&Topic::new("order.paid.eu")?));
/// assert!(!p.matches(&Topic::new("order")?));
/// assert!(Pattern::new("order.*")?.matches(&Topic::new("order.paid")?));
/// # Ok::<(), herald_core::TopicError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    raw: Arc<str>,
    segments: Arc<[Segment]>,
}

impl Pattern {
    /// Validates `pattern`.
    pub fn new(pattern: &str) -> Result<Self, TopicError> {
        const KIND: &str = "pattern";
        check_len(KIND, pattern)?;
        let parts: Vec<&str> = pattern.split('.').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "*" => Segment::One,
                ">" if i == last => Segment::Rest,
                ">" => return Err(invalid(KIND, pattern, "'>' may only be the last segment, as in 'order.>'")),
                s if valid_segment(s) => Segment::Literal(s.into()),
                _ => {
                    return Err(invalid(
                        KIND,
                        pattern,
                        "use dotted lowercase names with '*' for one segment and a final '>' for the rest, such as 'order.*' or 'order.>'",
                    ))
                }
            };
            segments.push(seg);
        }
        Ok(Pattern {
            raw: Arc::from(pattern),
            segments: segments.into(),
        })
    }

    /// Whether `topic` matches this pattern.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut parts = topic.segments();
        for seg in self.segments.iter() {
            match seg {
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if parts.next() != Some(&**lit) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether the pattern has no wildcard, so that it matches exactly one topic.
    pub fn is_exact(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_)))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.raw)
    }
}

impl FromStr for Pattern {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        Pattern::new(s)
    }
}

impl From<Topic> for Pattern {
    fn from(t: Topic) -> Self {
        let segments: Vec<Segment> = t.segments().map(|s| Segment::Literal(s.into())).collect();
        Pattern {
            raw: Arc::from(t.as_str()),
            segments: segments.into(),
        }
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A validated subscription name: the same characters as a topic segment, plus dots.
///
/// ```
/// use herald_core::SubscriptionName;
/// assert!(SubscriptionName::new("billing.invoices").is_ok());
/// assert!(SubscriptionName::new("Billing Invoices").is_err());
/// ```
///
/// A name of up to 23 bytes is kept inline, so that a clone writes no shared count: every claimed
/// delivery and every handler's context carries its subscription's name, and on two cores a
/// count that the workers of both write costs more than most of a quick delivery.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubscriptionName(smol_str::SmolStr);

impl std::hash::Hash for SubscriptionName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As a `str`, which it borrows as.
        self.0.as_str().hash(state);
    }
}

impl SubscriptionName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, TopicError> {
        const KIND: &str = "subscription name";
        check_len(KIND, name)?;
        if !name.split('.').all(valid_segment) {
            return Err(invalid(
                KIND,
                name,
                "use lowercase letters, digits, '_', '-' and dots, such as 'billing' or 'billing.invoices'",
            ));
        }
        Ok(SubscriptionName(smol_str::SmolStr::new(name)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Borrow<str> for SubscriptionName {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for SubscriptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl fmt::Debug for SubscriptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

impl Serialize for SubscriptionName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for SubscriptionName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SubscriptionName::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn topics_are_validated() {
        for ok in ["a", "order.paid", "a-b.c_d.9"] {
            assert!(Topic::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "a..b", "a.", ".a", "A", "a b", "a.*", "a.>", "é"] {
            assert!(Topic::new(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Topic::new(&"a".repeat(256)),
            Err(TopicError::TooLong { len: 256, .. })
        ));
    }

    #[test]
    fn wildcards_match_like_nats() {
        let one = Pattern::new("order.*").unwrap();
        assert!(one.matches(&t("order.paid")));
        assert!(!one.matches(&t("order")));
        assert!(!one.matches(&t("order.paid.eu")));
        let rest = Pattern::new("order.>").unwrap();
        assert!(rest.matches(&t("order.paid.eu")));
        assert!(!rest.matches(&t("order")));
        let all = Pattern::new(">").unwrap();
        assert!(all.matches(&t("x")));
        let mid = Pattern::new("*.paid").unwrap();
        assert!(mid.matches(&t("order.paid")));
        assert!(!mid.matches(&t("order.sent")));
        let exact = Pattern::new("order.paid").unwrap();
        assert!(exact.is_exact() && exact.matches(&t("order.paid")) && !exact.matches(&t("order.paid.x")));
        assert!(Pattern::new("a.>.b").is_err());
        assert!(Pattern::new("a.**").is_err());
    }
}
