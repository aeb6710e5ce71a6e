//! Time in herald: milliseconds since the Unix epoch.
//!
//! Every due time, lease and history entry is a [`Timestamp`]. A [`Clock`] reads them and turns them
//! back into tokio instants, so that tests on tokio's paused clock drive the whole runtime.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A point in time: milliseconds since the Unix epoch (UTC).
///
/// ```
/// use herald_core::Timestamp;
/// use std::time::Duration;
///
/// let t = Timestamp::from_millis(1_700_000_000_000);
/// assert_eq!(t + Duration::from_millis(5), Timestamp::from_millis(1_700_000_000_005));
/// assert_eq!(t.to_string(), "2023-11-14T22:13:20.000Z");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The latest representable time; used as "never".
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// The wall-clock time now, ignoring tokio's clock. Prefer [`Clock::now`] inside herald.
    pub fn now_system() -> Self {
        Self::from(SystemTime::now())
    }

    /// The time `d` after this one, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// Milliseconds between `earlier` and this time, negative when this is before it.
    pub fn millis_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        self.saturating_add(d)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        if t.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(t.0.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_millis(t.0.unsigned_abs())
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-25T18:53:24.512Z`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

// Howard Hinnant's days-to-civil algorithm: proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Reads the time as a [`Timestamp`] and turns timestamps into tokio [`Instant`]s to sleep until.
///
/// A clock pins one wall-clock reading to one tokio instant and counts from there with tokio's
/// clock, so pausing or advancing tokio's clock in a test moves herald's time with it. A store hands
/// its clock to the runtime ([`Store::clock`](crate::Store::clock)), so both agree to the millisecond.
///
/// ```
/// use herald_core::Clock;
/// use std::time::Duration;
///
/// let clock = Clock::new();
/// let later = clock.now() + Duration::from_secs(1);
/// assert!(clock.instant_at(later) > tokio::time::Instant::now());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin_ms: i64,
    origin: Instant,
}

impl Clock {
    /// A clock that starts at the wall-clock time now.
    pub fn new() -> Self {
        Self::starting_at(Timestamp::now_system())
    }

    /// A clock whose current time is `now`: for tests that need a fixed calendar time, and for stores
    /// that follow a server's clock.
    pub fn starting_at(now: Timestamp) -> Self {
        Clock {
            origin_ms: now.as_millis(),
            origin: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        self.reading_at(Instant::now())
    }

    /// What this clock reads (or read) at `instant`: one clock read serves both a tokio deadline
    /// and a timestamp.
    pub(crate) fn reading_at(&self, instant: Instant) -> Timestamp {
        let elapsed = instant.saturating_duration_since(self.origin);
        Timestamp(
            self.origin_ms
                .saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// The tokio instant at which this clock reads `t` (now, for times in the past).
    pub fn instant_at(&self, t: Timestamp) -> Instant {
        let now = Instant::now();
        let ahead = t.millis_since(self.now());
        if ahead <= 0 {
            return now;
        }
        // Measured from the origin, not from `now`, so sub-millisecond drift cannot make a timer
        // fire in the millisecond before its due time.
        let from_origin = t.millis_since(Timestamp(self.origin_ms));
        self.origin + Duration::from_millis(from_origin.unsigned_abs())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp::from_millis(951_782_400_123).to_string(),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(Timestamp::from_millis(-1).to_string(), "1969-12-31T23:59:59.999Z");
    }

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let clock = Clock::starting_at(Timestamp::from_millis(1_000));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(clock.now(), Timestamp::from_millis(1_250));
        let at = clock.instant_at(Timestamp::from_millis(2_000));
        tokio::time::sleep_until(at).await;
        assert_eq!(clock.now(), Timestamp::from_millis(2_000));
    }
}
