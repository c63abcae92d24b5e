//! The STS budget: one token bucket for every STS call of the process, so
//! that a thousand AssumedRoles created at once, or all coming due together
//! after an outage, stay within an account's STS quota.
//!
//! Urgent calls (the AssumedRole has no credentials that serve, or they are
//! close to their floor) may spend every token and wait for the next one;
//! routine refreshes leave a reserve for them and are put off instead of
//! waiting. A throttled answer from STS halves the rate for everyone
//! (and empties the bucket); each success gives a sixteenth of it back.
//! Pure: the caller passes the time.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use crate::schedule;

/// The slowest a throttled STS can make the bucket: this share of the rate.
pub const MIN_SLOWDOWN: f64 = 1.0 / 16.0;

/// How much of the rate one success gives back after throttling.
pub const RECOVERY: f64 = 1.0 / 16.0;

/// Credentials that expire within this many floors count as urgent.
const URGENT_FLOORS: i32 = 2;

/// Whether a call for credentials that serve until `serving` (none: nothing
/// serves) is urgent at `now`.
pub fn urgent(serving: Option<Timestamp>, now: Timestamp) -> bool {
    serving.is_none_or(|expires| expires.duration_since(now) < schedule::FLOOR * URGENT_FLOORS)
}

/// A token bucket whose rate STS can slow down.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    slowdown: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket of `burst` tokens, refilled at `rate` per second.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: rate.max(0.001),
            burst,
            tokens: burst,
            slowdown: 1.0,
            last: now,
        }
    }

    /// The rate in effect, after any slowdown.
    pub fn rate(&self) -> f64 {
        self.rate * self.slowdown
    }

    /// Tokens a routine call must leave for urgent ones.
    fn reserve(&self) -> f64 {
        (self.burst / 4.0).floor().min(self.burst - 1.0).max(0.0)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate()).min(self.burst);
        self.last = now;
    }

    /// Takes a token for a call, or says how long until one is there for
    /// it.
    pub fn take(&mut self, urgent: bool, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let keep = if urgent { 0.0 } else { self.reserve() };
        if self.tokens >= keep + 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((keep + 1.0 - self.tokens) / self.rate()))
        }
    }

    /// STS asked to slow down: halve the rate and empty the bucket.
    pub fn throttled(&mut self, now: Instant) {
        self.refill(now);
        self.slowdown = (self.slowdown / 2.0).max(MIN_SLOWDOWN);
        self.tokens = self.tokens.min(0.0);
    }

    /// STS answered: give some of the rate back.
    pub fn answered(&mut self) {
        self.slowdown = (self.slowdown + RECOVERY).min(1.0);
    }
}

/// How long an urgent call waits for a token at most in one go, before it
/// looks again (the rate may have recovered).
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// The time `d` from now as a [`SignedDuration`], for requeues.
pub fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn routine_calls_leave_a_reserve_that_urgent_ones_may_spend() {
        let start = Instant::now();
        let mut bucket = Bucket::new(1.0, 8, start);
        for _ in 0..6 {
            assert_eq!(bucket.take(false, start), Ok(()));
        }
        // Two tokens left, the reserve: routine calls are put off...
        assert!(bucket.take(false, start).is_err());
        // ...urgent ones are not.
        assert_eq!(bucket.take(true, start), Ok(()));
        assert_eq!(bucket.take(true, start), Ok(()));
        let wait = bucket.take(true, start).err().unwrap_or_default();
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!(bucket.take(true, start + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn throttling_slows_everyone_and_successes_bring_the_rate_back() {
        let start = Instant::now();
        let mut bucket = Bucket::new(8.0, 8, start);
        bucket.throttled(start);
        assert_eq!(bucket.rate(), 4.0);
        assert!(bucket.take(true, start).is_err(), "the bucket was not emptied");
        for _ in 0..10 {
            bucket.throttled(start);
        }
        assert_eq!(bucket.rate(), 8.0 * MIN_SLOWDOWN);
        for _ in 0..16 {
            bucket.answered();
        }
        assert_eq!(bucket.rate(), 8.0);
    }

    #[test]
    fn urgency_is_no_credentials_or_two_floors_from_expiry() {
        let now = Timestamp::now();
        assert!(urgent(None, now));
        assert!(urgent(Some(now + SignedDuration::from_mins(9)), now));
        assert!(!urgent(Some(now + SignedDuration::from_mins(11)), now));
    }

    proptest! {
        /// Over any stretch of time, calls granted never exceed the burst
        /// plus the rate times the stretch.
        #[test]
        fn grants_never_exceed_burst_plus_rate_times_time(
            rate in 0.5f64..20.0,
            burst in 1u32..20,
            steps in proptest::collection::vec((0u64..400, any::<bool>()), 1..300),
        ) {
            let start = Instant::now();
            let mut bucket = Bucket::new(rate, burst, start);
            let mut now = start;
            let mut granted = Vec::new();
            for (ms, urgent) in steps {
                now += Duration::from_millis(ms);
                if bucket.take(urgent, now).is_ok() {
                    granted.push(now);
                }
            }
            for (i, from) in granted.iter().enumerate() {
                for (j, to) in granted.iter().enumerate().skip(i) {
                    let window = to.duration_since(*from).as_secs_f64();
                    let calls = (j - i + 1) as f64;
                    prop_assert!(calls <= f64::from(burst) + rate * window + 1e-6);
                }
            }
        }
    }
}
