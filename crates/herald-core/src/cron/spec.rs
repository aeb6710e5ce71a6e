//! When a schedule fires: a cron expression read in a time zone.
//!
//! croner walks the expression through the zone's wall clock (daylight-saving gaps and repeats
//! included); jiff supplies the zones. Everything else in herald sees only UTC [`Timestamp`]s.

use std::fmt;
use std::str::FromStr;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::CronError;
use crate::time::Timestamp;

/// A parsed cron expression and the time zone it is read in: the "when" of a schedule.
///
/// Five fields (`minute hour day-of-month month day-of-week`) or six with seconds first; names
/// (`MON`, `JAN`), ranges, steps, lists, `L`, `W`, `#` and the `@daily`-style nicknames as croner
/// reads them. Fire times are whole seconds.
///
/// Daylight-saving changes follow croner's rules (the Open Cron Pattern Specification): a
/// *fixed-time* expression (one value each for second, minute and hour, such as `30 2 * * *`)
/// whose time falls in a skipped hour fires once, at the first instant after the gap (03:00 on a
/// spring-forward night in Europe/Berlin), and fires once in a repeated hour, at its first
/// occurrence. Other expressions (`*/30 * * * *`) keep real-time cadence: nothing fires in the
/// skipped hour, and a repeated hour is walked twice, since it really passes twice.
///
/// ```
/// use herald_core::{CronSpec, Timestamp};
///
/// let spec = CronSpec::new("0 3 * * *", "Europe/Berlin")?;
/// let noon = Timestamp::from_millis(1_768_478_400_000); // 2026-01-15T12:00:00Z
/// let next = spec.next_after(noon).unwrap();
/// assert_eq!(next.to_string(), "2026-01-16T02:00:00.000Z"); // 03:00 CET
///
/// let err = CronSpec::new("0 3 * * *", "Europe/Berln").unwrap_err();
/// assert!(err.to_string().starts_with("time zone 'Europe/Berln' is unknown"));
/// # Ok::<(), herald_core::CronError>(())
/// ```
#[derive(Clone)]
pub struct CronSpec {
    expression: String,
    zone_name: String,
    cron: Cron,
    zone: TimeZone,
}

impl CronSpec {
    /// Parses `expression` (5 or 6 fields) to be read in the IANA time zone `time_zone`
    /// (`"UTC"`, `"Europe/Berlin"`).
    ///
    /// Refuses, with a message that says what is wrong, an expression croner cannot read, one
    /// that never fires (`0 0 30 2 *`: February 30th), and an unknown time zone.
    pub fn new(expression: &str, time_zone: &str) -> Result<Self, CronError> {
        let expression = expression.trim();
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| CronError::Expression {
                expression: expression.to_owned(),
                reason: e.to_string(),
            })?;
        let zone = TimeZone::get(time_zone).map_err(|_| CronError::TimeZone {
            zone: time_zone.to_owned(),
        })?;
        let spec = CronSpec {
            expression: expression.to_owned(),
            zone_name: time_zone.to_owned(),
            cron,
            zone,
        };
        // An expression that matches no date (February 30th) makes croner search for years and
        // fail; better to refuse it now than to find out at the first tick.
        if spec.next_after(Timestamp::EPOCH).is_none() {
            return Err(CronError::NeverFires {
                expression: spec.expression,
            });
        }
        Ok(spec)
    }

    /// The expression as given (trimmed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's name as given.
    pub fn time_zone(&self) -> &str {
        &self.zone_name
    }

    /// The first fire time strictly after `t`; `None` if there is none (past year 5000, or
    /// outside the time zone's range).
    ///
    /// ```
    /// use herald_core::{CronSpec, Timestamp};
    /// let every_second = CronSpec::new("* * * * * *", "UTC")?;
    /// let t = Timestamp::from_millis(1_500);
    /// assert_eq!(every_second.next_after(t), Some(Timestamp::from_millis(2_000)));
    /// # Ok::<(), herald_core::CronError>(())
    /// ```
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let zoned = self.zoned(t)?;
        // Exclusive: croner steps to the next whole second past `t`'s second, which is after `t`
        // even when `t` has milliseconds.
        let next = self.cron.find_next_occurrence(&zoned, false).ok()?;
        Some(Timestamp::from_millis(next.timestamp().as_millisecond()))
    }

    /// The latest fire time at or before `t`, if any.
    ///
    /// ```
    /// use herald_core::{CronSpec, Timestamp};
    /// let every_minute = CronSpec::new("* * * * *", "UTC")?;
    /// assert_eq!(every_minute.latest_until(Timestamp::from_millis(90_000)), Some(Timestamp::from_millis(60_000)));
    /// assert_eq!(every_minute.latest_until(Timestamp::from_millis(60_000)), Some(Timestamp::from_millis(60_000)));
    /// # Ok::<(), herald_core::CronError>(())
    /// ```
    pub fn latest_until(&self, t: Timestamp) -> Option<Timestamp> {
        let zoned = self.zoned(t)?;
        let prev = self.cron.find_previous_occurrence(&zoned, true).ok()?;
        let prev = Timestamp::from_millis(prev.timestamp().as_millisecond());
        // Inclusive search starts at `t`'s whole second, which is never after `t`; the check only
        // guards croner's daylight-saving adjustments.
        (prev <= t).then_some(prev)
    }

    /// The fire times after `t`, in order.
    ///
    /// ```
    /// use herald_core::{CronSpec, Timestamp};
    /// let spec = CronSpec::new("*/15 * * * * *", "UTC")?;
    /// let fires: Vec<i64> = spec.fires_after(Timestamp::EPOCH).take(3).map(|t| t.as_millis()).collect();
    /// assert_eq!(fires, [15_000, 30_000, 45_000]);
    /// # Ok::<(), herald_core::CronError>(())
    /// ```
    pub fn fires_after(&self, t: Timestamp) -> impl Iterator<Item = Timestamp> + '_ {
        std::iter::successors(self.next_after(t), move |&prev| self.next_after(prev))
    }

    fn zoned(&self, t: Timestamp) -> Option<jiff::Zoned> {
        let ts = jiff::Timestamp::from_millisecond(t.as_millis()).ok()?;
        Some(ts.to_zoned(self.zone.clone()))
    }
}

impl fmt::Debug for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronSpec")
            .field("expression", &self.expression)
            .field("time_zone", &self.zone_name)
            .finish()
    }
}

impl PartialEq for CronSpec {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.zone_name == other.zone_name
    }
}

impl Eq for CronSpec {}

/// `"<expression>"` in UTC, or `"<expression> @ <zone>"`.
impl fmt::Display for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.zone_name == "UTC" {
            f.write_str(&self.expression)
        } else {
            write!(f, "{} @ {}", self.expression, self.zone_name)
        }
    }
}

/// Parses `"<expression>"` (UTC) or `"<expression> @ <zone>"`, the form `Display` writes.
impl FromStr for CronSpec {
    type Err = CronError;
    fn from_str(s: &str) -> Result<Self, CronError> {
        match s.rsplit_once('@') {
            Some((expr, zone)) if !expr.trim().is_empty() => CronSpec::new(expr, zone.trim()),
            _ => CronSpec::new(s, "UTC"),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SpecParts {
    expression: String,
    time_zone: String,
}

/// As `{"expression": "...", "time_zone": "..."}`.
impl Serialize for CronSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SpecParts {
            expression: self.expression.clone(),
            time_zone: self.zone_name.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for CronSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parts = SpecParts::deserialize(d)?;
        CronSpec::new(&parts.expression, &parts.time_zone).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::from_millis(s.parse::<jiff::Timestamp>().map(|t| t.as_millisecond()).unwrap_or(0))
    }

    #[test]
    fn five_and_six_fields() -> Result<(), CronError> {
        let minute = CronSpec::new("5 * * * *", "UTC")?;
        assert_eq!(
            minute.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T00:05:00Z"))
        );
        let second = CronSpec::new("7 5 * * * *", "UTC")?;
        assert_eq!(
            second.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T00:05:07Z"))
        );
        assert!(
            CronSpec::new("0 0 0 1 1 * 2030", "UTC").is_err(),
            "a year field is refused"
        );
        Ok(())
    }

    #[test]
    fn display_round_trips() -> Result<(), CronError> {
        for s in ["0 3 * * *", "0 3 * * * @ Europe/Berlin"] {
            assert_eq!(s.parse::<CronSpec>()?.to_string(), s);
        }
        Ok(())
    }
}
