//! Retry timing: exponential backoff with a cap and full jitter.
//!
//! Full jitter (a uniform wait in `[0, min(cap, base * 2^(n-1))]`) spreads the retries of many
//! failed deliveries over time, so a dependency that failed is not hit by all of them at once.

use std::time::Duration;

/// How long to wait before the next attempt.
///
/// ```
/// use herald_core::Backoff;
/// use std::time::Duration;
///
/// let b = Backoff::exponential(Duration::from_millis(100)).cap(Duration::from_secs(1)).no_jitter();
/// assert_eq!(b.delay(1), Duration::from_millis(100));
/// assert_eq!(b.delay(3), Duration::from_millis(400));
/// assert_eq!(b.delay(10), Duration::from_secs(1));
///
/// let jittered = Backoff::exponential(Duration::from_millis(100));
/// assert!(jittered.delay(3) <= Duration::from_millis(400));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: bool,
}

impl Backoff {
    /// Doubles from `base` after each failure, up to a cap of 10 minutes, with full jitter.
    pub const fn exponential(base: Duration) -> Self {
        Backoff {
            base,
            cap: Duration::from_secs(600),
            jitter: true,
        }
    }

    /// The same wait after every failure (no growth, no jitter).
    pub const fn fixed(delay: Duration) -> Self {
        Backoff {
            base: delay,
            cap: delay,
            jitter: false,
        }
    }

    /// The longest wait.
    pub const fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Waits exactly the exponential bound instead of a uniform fraction of it: predictable, but
    /// retries of events that failed together stay together.
    pub const fn no_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The upper bound of the wait after failed attempt number `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(32);
        self.base.saturating_mul(1u32 << shift.min(31)).min(self.cap)
    }

    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if !self.jitter {
            return ceiling;
        }
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=ms))
    }
}

impl Default for Backoff {
    /// 1 s doubling up to 10 minutes, full jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_is_capped_and_jitter_stays_below_the_ceiling() {
        let b = Backoff::exponential(Duration::from_millis(10)).cap(Duration::from_millis(70));
        assert_eq!(b.ceiling(1), Duration::from_millis(10));
        assert_eq!(b.ceiling(2), Duration::from_millis(20));
        assert_eq!(b.ceiling(4), Duration::from_millis(70));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(70));
        let delays: Vec<_> = (0..200).map(|_| b.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(40)));
        assert!(
            delays.iter().any(|d| *d < Duration::from_millis(20)),
            "jitter spreads waits"
        );
        assert_eq!(Backoff::fixed(Duration::from_secs(2)).delay(9), Duration::from_secs(2));
    }
}
