//! When to refresh and when to retry: pure functions of time.
//!
//! Everything here takes the clock as an argument, so that the scheduler,
//! the status, validation and the tests all reach the same answer for the
//! same inputs, before and after a restart.

use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use crate::api::RefreshBefore;

/// The latest a refresh may happen, before expiry. It covers the kubelet's
/// propagation of a changed Secret (up to about 90 s), clock skew, and the
/// SDKs' last-moment refresh of process credentials.
pub const FLOOR: SignedDuration = SignedDuration::from_mins(5);

/// How long the kubelet may take to bring a changed Secret into a running
/// pod: its sync period (60 s) plus its Secret cache's lifetime.
pub const KUBELET_PROPAGATION: SignedDuration = SignedDuration::from_secs(90);

/// How much earlier than the real expiry the expiration handed to SDKs is
/// (in `credential_process.json` and in the credentials endpoint's answer).
///
/// SDKs that refresh at the last moment (Go at the advertised expiry, Rust
/// seconds before it, Java 15 s before) then re-read while the credentials
/// they hold are still good for this long: enough for a request signed at
/// that moment to travel and be judged by STS with some clock skew. The rule
/// that keeps the re-read useful, checked by a unit test: a refresh happens
/// at the latest [`FLOOR`] before expiry and reaches the pod within
/// [`KUBELET_PROPAGATION`], so `FLOOR >= ADVERTISED_MARGIN +
/// KUBELET_PROPAGATION` means the SDK re-reads only once the new set is on
/// disk. 2 minutes leaves 90 s of that floor for the operator's own
/// reconcile and for clock skew.
pub const ADVERTISED_MARGIN: SignedDuration = SignedDuration::from_mins(2);

/// The expiration to hand an SDK, at `now`, for credentials that really
/// expire at `expires`: [`ADVERTISED_MARGIN`] earlier. Once `now` is inside
/// that margin (the operator could not refresh in time), half-way between
/// now and the real expiry, so that an SDK never gets an expiration that has
/// already passed while the credentials still work, and keeps asking. Whole
/// seconds, rounded down: the format SDKs parse.
pub fn advertised_expiration(expires: Timestamp, now: Timestamp) -> Timestamp {
    let early = expires - ADVERTISED_MARGIN;
    let at = if early > now {
        early
    } else {
        now + expires.duration_since(now) / 2
    };
    whole_second(at)
}

/// Jitter moves a refresh earlier by at most this share of the lifetime.
const MAX_JITTER_PERCENT: i64 = 10;

/// How a refresh setting was changed to keep the promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    /// The setting would have refreshed later than [`FLOOR`] before expiry.
    ClampedToFloor,
    /// The setting would have refreshed at or before the issue time, for
    /// example a `refreshBefore` longer than the lifetime STS granted; the
    /// default was used instead.
    FellBackToDefault,
}

/// The outcome of [`refresh_time`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    /// When to refresh.
    pub at: Timestamp,
    /// Set when the spec's setting could not be used as written.
    pub adjustment: Option<Adjustment>,
}

/// Computes when to refresh credentials issued at `issued` that expire at
/// `expires`, given the spec's setting and a seed for the jitter (see
/// [`jitter_seed`]).
///
/// The result is never before `issued` (strictly after it when the lifetime
/// is positive), never later than [`FLOOR`] before `expires` when the
/// lifetime allows it, and depends on nothing but its arguments.
pub fn refresh_time(issued: Timestamp, expires: Timestamp, setting: RefreshBefore, seed: u64) -> Refresh {
    let lifetime = expires.duration_since(issued);
    if lifetime <= SignedDuration::ZERO {
        return Refresh {
            at: issued,
            adjustment: None,
        };
    }
    let default_before = (lifetime / 3).max(FLOOR);
    let (mut before, mut adjustment) = match setting {
        RefreshBefore::Default => (default_before, None),
        RefreshBefore::Duration(d) => (d, None),
        RefreshBefore::Percentage(p) => (lifetime * i32::from(p) / 100, None),
    };
    if before < FLOOR {
        before = FLOOR;
        adjustment = Some(Adjustment::ClampedToFloor);
    }
    if before >= lifetime {
        before = default_before;
        adjustment = Some(Adjustment::FellBackToDefault);
    }
    if before >= lifetime {
        // A lifetime shorter than three floors: STS never grants one, but
        // refresh half-way rather than at once.
        return Refresh {
            at: issued + lifetime / 2,
            adjustment,
        };
    }
    let planned = expires - before;
    // Jitter only moves the refresh earlier, and never by more than half the
    // time between issue and the planned refresh, so it never reaches the
    // issue time.
    // Whole seconds throughout, so that rounding never stretches the jitter
    // past its bound.
    let window = (lifetime * MAX_JITTER_PERCENT as i32 / 100).min(planned.duration_since(issued) / 2);
    let jitter = SignedDuration::from_secs(scale(window, seed).as_secs());
    Refresh {
        at: ceil_to_second(planned) - jitter,
        adjustment,
    }
}

/// Rounds up to a whole second, the precision of status timestamps. Rounding
/// up keeps a refresh after the issue time, and, as expiry is a whole second,
/// never moves it past the floor.
fn ceil_to_second(t: Timestamp) -> Timestamp {
    if t.subsec_nanosecond() > 0 {
        Timestamp::from_second(t.as_second() + 1).unwrap_or(t)
    } else {
        t
    }
}

/// A seed for the jitter, derived from the object's UID and the credentials'
/// issue time, so that it is the same after a restart and differs between
/// objects.
pub fn jitter_seed(uid: &str, issued: Timestamp) -> u64 {
    let mut hash = Sha256::new();
    hash.update(uid.as_bytes());
    hash.update(issued.as_second().to_be_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// `duration * seed / 2^64`: a point in `[0, duration)` picked by the seed.
fn scale(duration: SignedDuration, seed: u64) -> SignedDuration {
    let nanos = duration.as_nanos().max(0) as u128;
    let scaled = (nanos * u128::from(seed)) >> 64;
    SignedDuration::from_nanos(scaled as i128 as i64)
}

/// The first retry waits up to this long.
pub const BACKOFF_BASE: SignedDuration = SignedDuration::from_secs(5);
/// No retry waits longer than this.
pub const BACKOFF_MAX: SignedDuration = SignedDuration::from_mins(5);
/// Retries are never closer than this.
pub const BACKOFF_MIN: SignedDuration = SignedDuration::from_secs(1);

/// How long to wait before retry number `failures` (1 for the first).
///
/// Exponential with full jitter: a point picked by `seed` in
/// `[0, min(BACKOFF_MAX, BACKOFF_BASE * 2^(failures-1))]`. When the current
/// credentials expire at `expires`, the ceiling is also at most a third of
/// the time left, so that at least three tries fit before they expire.
pub fn backoff(failures: u32, now: Timestamp, expires: Option<Timestamp>, seed: u64) -> SignedDuration {
    let exponent = failures.saturating_sub(1).min(16);
    let mut ceiling = (BACKOFF_BASE * (1i32 << exponent)).min(BACKOFF_MAX);
    if let Some(expires) = expires {
        let left = expires.duration_since(now);
        if left > SignedDuration::ZERO {
            ceiling = ceiling.min(left / 3);
        }
    }
    scale(ceiling, seed).max(BACKOFF_MIN)
}

/// When an AssumedRole of UID `uid` that failed `failures` times, last at
/// `last_failure`, may try again. Every retry decision reads this one
/// schedule from the values persisted in status, so a requeue, a restart and
/// the backoff check at the top of a reconcile all agree.
///
/// A retry is never later than the moment the current credentials reach
/// the floor: that try's report turns `Ready` false as the Secret stops
/// serving, rather than a backoff step later.
pub fn retry_at(uid: &str, failures: i32, last_failure: Timestamp, expires: Option<Timestamp>) -> Timestamp {
    let seed = jitter_seed(uid, last_failure);
    let retry = last_failure + backoff(failures.max(1).unsigned_abs(), last_failure, expires, seed);
    match expires {
        Some(expires) if last_failure < expires - FLOOR => retry.min(expires - FLOOR),
        _ => retry,
    }
}

/// `t` without its fraction of a second: the precision of every timestamp in
/// status and annotations.
pub fn whole_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn a_retry_is_never_later_than_the_floor_of_the_credentials_serving() {
        let expires = at(1000);
        // The tenth failure, 2 s before the floor: the backoff alone would
        // wait longer, and the retry comes at the floor.
        let last = expires - FLOOR - SignedDuration::from_secs(2);
        let waited = backoff(10, last, Some(expires), jitter_seed("uid", last));
        assert!(waited > SignedDuration::from_secs(2), "{waited:?}");
        assert_eq!(retry_at("uid", 10, last, Some(expires)), expires - FLOOR);
        // The try at the floor failed too: the backoff applies again, with
        // no retry in the same second.
        let retry = retry_at("uid", 11, expires - FLOOR, Some(expires));
        assert!(retry > expires - FLOOR, "{retry}");
        // Without credentials the backoff alone decides.
        let without = retry_at("uid", 10, last, None);
        assert_eq!(without, last + backoff(10, last, None, jitter_seed("uid", last)));
    }

    fn setting() -> impl Strategy<Value = RefreshBefore> {
        prop_oneof![
            Just(RefreshBefore::Default),
            (1i64..50_000).prop_map(|s| RefreshBefore::Duration(SignedDuration::from_secs(s))),
            (1u8..=99).prop_map(RefreshBefore::Percentage),
        ]
    }

    proptest! {
        #[test]
        fn refresh_is_after_issue_and_never_past_the_floor(
            lifetime in 900i64..=43_200, setting in setting(), seed in any::<u64>()
        ) {
            let (issued, expires) = (at(0), at(lifetime));
            let r = refresh_time(issued, expires, setting, seed);
            prop_assert!(r.at > issued, "{r:?}");
            prop_assert!(r.at <= expires - FLOOR, "{r:?}");
            prop_assert_eq!(r, refresh_time(issued, expires, setting, seed));
        }

        #[test]
        fn jitter_only_moves_earlier_and_by_at_most_a_tenth(
            lifetime in 900i64..=43_200, setting in setting(), seed in any::<u64>()
        ) {
            let (issued, expires) = (at(0), at(lifetime));
            let unjittered = refresh_time(issued, expires, setting, 0);
            let jittered = refresh_time(issued, expires, setting, seed);
            prop_assert!(jittered.at <= unjittered.at);
            prop_assert!(unjittered.at.duration_since(jittered.at) <= SignedDuration::from_secs(lifetime) / 10);
        }

        #[test]
        fn backoff_leaves_room_for_three_tries_before_expiry(
            failures in 1u32..100, left in 10i64..43_200, seed in any::<u64>()
        ) {
            let d = backoff(failures, at(0), Some(at(left)), seed);
            prop_assert!(d >= BACKOFF_MIN);
            prop_assert!(d <= BACKOFF_MAX);
            prop_assert!(d <= (SignedDuration::from_secs(left) / 3).max(BACKOFF_MIN));
        }
    }

    #[test]
    fn default_refreshes_when_a_third_of_the_lifetime_remains() {
        let r = refresh_time(at(0), at(3600), RefreshBefore::Default, 0);
        assert_eq!(
            r,
            Refresh {
                at: at(2400),
                adjustment: None
            }
        );
    }

    #[test]
    fn a_setting_past_the_floor_is_clamped() {
        let r = refresh_time(
            at(0),
            at(3600),
            RefreshBefore::Duration(SignedDuration::from_secs(60)),
            0,
        );
        assert_eq!(
            r,
            Refresh {
                at: at(3300),
                adjustment: Some(Adjustment::ClampedToFloor)
            }
        );
        let r = refresh_time(at(0), at(3600), RefreshBefore::Percentage(1), 0);
        assert_eq!(r.adjustment, Some(Adjustment::ClampedToFloor));
    }

    #[test]
    fn a_setting_longer_than_the_granted_lifetime_falls_back_to_the_default() {
        // Asked for 12 h, with refreshBefore 2 h; role chaining granted 1 h.
        let r = refresh_time(
            at(0),
            at(3600),
            RefreshBefore::Duration(SignedDuration::from_hours(2)),
            0,
        );
        assert_eq!(
            r,
            Refresh {
                at: at(2400),
                adjustment: Some(Adjustment::FellBackToDefault)
            }
        );
    }

    #[test]
    fn a_setting_just_short_of_the_lifetime_refreshes_soon_after_issue() {
        let r = refresh_time(
            at(0),
            at(900),
            RefreshBefore::Duration(SignedDuration::from_secs(890)),
            0,
        );
        assert_eq!(
            r,
            Refresh {
                at: at(10),
                adjustment: None
            }
        );
    }

    #[test]
    fn jitter_stays_within_a_tenth_of_a_lifetime_that_is_no_whole_multiple() {
        // A third of 1358 s is no whole second: rounding once stretched the
        // jitter to 136 s, past a tenth of the lifetime.
        let seed = 18_383_353_200_694_578_901;
        let plain = refresh_time(at(0), at(1358), RefreshBefore::Default, 0);
        let jittered = refresh_time(at(0), at(1358), RefreshBefore::Default, seed);
        assert!(plain.at.duration_since(jittered.at) <= SignedDuration::from_millis(135_800));
    }

    #[test]
    fn jitter_seed_is_stable_and_depends_on_uid_and_issue_time() {
        assert_eq!(jitter_seed("a", at(0)), jitter_seed("a", at(0)));
        assert_ne!(jitter_seed("a", at(0)), jitter_seed("b", at(0)));
        assert_ne!(jitter_seed("a", at(0)), jitter_seed("a", at(1)));
    }

    #[test]
    fn the_advertised_margin_fits_inside_the_floor_with_the_kubelets_delay() {
        assert!(ADVERTISED_MARGIN + KUBELET_PROPAGATION <= FLOOR);
        // More than the last-moment windows of the SDKs (Java 15 s) plus a
        // minute for the request's travel and clock skew.
        assert!(ADVERTISED_MARGIN >= SignedDuration::from_secs(75));
    }

    #[test]
    fn the_advertised_expiration_is_earlier_than_the_real_one_and_never_past() {
        // Well before expiry: the margin, whatever the time.
        assert_eq!(advertised_expiration(at(3600), at(0)), at(3480));
        assert_eq!(advertised_expiration(at(3600), at(3479)), at(3480));
        // Inside the margin: half-way to the real expiry, still ahead.
        assert_eq!(advertised_expiration(at(3600), at(3480)), at(3540));
        assert_eq!(advertised_expiration(at(3600), at(3598)), at(3599));
        // Whole seconds.
        let now = at(3590) + SignedDuration::from_millis(500);
        assert_eq!(advertised_expiration(at(3600), now), at(3595));
    }

    proptest! {
        #[test]
        fn the_advertised_expiration_lies_between_now_and_the_real_one(
            now in 0i64..100_000, ahead in 1i64..50_000,
        ) {
            let (now, expires) = (at(now), at(now + ahead));
            let advertised = advertised_expiration(expires, now);
            prop_assert!(advertised < expires);
            prop_assert!(advertised >= now);
            if expires - ADVERTISED_MARGIN > now {
                prop_assert_eq!(advertised, expires - ADVERTISED_MARGIN);
            }
        }
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let max = u64::MAX;
        assert_eq!(backoff(1, at(0), None, max).as_secs(), 4);
        assert_eq!(backoff(2, at(0), None, max).as_secs(), 9);
        assert_eq!(backoff(3, at(0), None, max).as_secs(), 19);
        assert_eq!(backoff(30, at(0), None, max).as_secs(), 299);
        assert_eq!(backoff(30, at(0), None, 0), BACKOFF_MIN);
        assert_eq!(backoff(30, at(0), Some(at(60)), max).as_secs(), 19);
    }
}
