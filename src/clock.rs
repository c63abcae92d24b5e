//! The operator's clock: the system clock, corrected by its offset to the
//! API server's clock.
//!
//! Every schedule compares an expiration that STS stamped with "now". A node
//! whose clock runs behind would refresh late (inside the floor, or after
//! expiry); one that runs ahead would refresh early, or all the time. The
//! API server's clock is the cluster's reference, and every response of it
//! carries a `Date` header: the offset is the median of the last samples,
//! and is applied once it is more than [`DEAD_BAND`] (a `Date` has whole
//! seconds; below that the system clock is left alone).

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, atomic::AtomicI64},
    task::{Context, Poll},
};

use jiff::{SignedDuration, Timestamp};
use prometheus_client::metrics::gauge::Gauge;
use tower::{Layer, Service};
use tracing::{info, warn};

/// Offsets within this are taken as none.
pub const DEAD_BAND: SignedDuration = SignedDuration::from_secs(2);
/// Samples the median is taken over.
const SAMPLES: usize = 15;

/// The corrected clock, shared by every task.
#[derive(Debug, Default)]
pub struct Clock {
    /// Added to the system clock before anything else: a test's skew
    /// (`--clock-offset-seconds`, hidden), zero in production.
    simulated: SignedDuration,
    /// The offset applied, in milliseconds.
    offset_ms: AtomicI64,
    samples: Mutex<VecDeque<i64>>,
}

impl Clock {
    /// The system clock, `simulated` off (zero but in tests).
    pub fn new(simulated: SignedDuration) -> Self {
        Self {
            simulated,
            ..Self::default()
        }
    }

    /// Now, by the API server's clock as far as it is known.
    pub fn now(&self) -> Timestamp {
        self.local() + self.offset()
    }

    /// The offset applied to the system clock.
    pub fn offset(&self) -> SignedDuration {
        SignedDuration::from_millis(self.offset_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn local(&self) -> Timestamp {
        Timestamp::now() + self.simulated
    }

    /// Takes the `Date` header of a response that arrived just now. Returns
    /// the offset when this sample changed it.
    pub fn observe(&self, date: &str) -> Option<SignedDuration> {
        let server = jiff::fmt::rfc2822::parse(date).ok()?.timestamp();
        let sample = sample(server, self.local());
        let mut samples = self.samples.lock().ok()?;
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample.as_millis() as i64);
        let offset = offset(samples.make_contiguous());
        let before = self
            .offset_ms
            .swap(offset.as_millis() as i64, std::sync::atomic::Ordering::Relaxed);
        (before != offset.as_millis() as i64).then_some(offset)
    }
}

/// Feeds the `Date` of every response of the service it wraps (the
/// Kubernetes client's) to the clock, and tells of a change in the log and
/// the `clock_offset_seconds` gauge.
#[derive(Clone)]
pub struct ClockLayer {
    clock: Arc<Clock>,
    gauge: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl ClockLayer {
    /// Feeds `clock`, shows its offset on `gauge`.
    pub fn new(clock: Arc<Clock>, gauge: Gauge<f64, std::sync::atomic::AtomicU64>) -> Self {
        Self { clock, gauge }
    }
}

impl<S> Layer<S> for ClockLayer {
    type Service = ClockService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClockService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service that reads the `Date` headers.
#[derive(Clone)]
pub struct ClockService<S> {
    inner: S,
    layer: ClockLayer,
}

impl<S, Q, B> Service<http::Request<Q>> for ClockService<S>
where
    S: Service<http::Request<Q>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Q>) -> Self::Future {
        let answer = self.inner.call(request);
        let layer = self.layer.clone();
        Box::pin(async move {
            let response = answer.await?;
            let date = response.headers().get(http::header::DATE).and_then(|d| d.to_str().ok());
            if let Some(offset) = date.and_then(|d| layer.clock.observe(d)) {
                layer.gauge.set(offset.as_secs_f64());
                if offset.is_zero() {
                    info!("this replica's clock agrees with the API server's again");
                } else {
                    warn!(
                        offset_seconds = offset.as_secs(),
                        "this replica's clock is off from the API server's; refreshes are scheduled by the API server's clock"
                    );
                }
            }
            Ok(response)
        })
    }
}

/// One sample of the offset: the server's second began at `server`, so its
/// clock read half a second more, on average, when the response left.
fn sample(server: Timestamp, local: Timestamp) -> SignedDuration {
    server.duration_since(local) + SignedDuration::from_millis(500)
}

/// The offset to apply from the samples (milliseconds): their median,
/// rounded to whole seconds, or zero within the dead band.
fn offset(samples: &[i64]) -> SignedDuration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let Some(median) = sorted.get(sorted.len() / 2) else {
        return SignedDuration::ZERO;
    };
    let median = SignedDuration::from_millis(*median);
    if median.abs() <= DEAD_BAND {
        return SignedDuration::ZERO;
    }
    SignedDuration::from_secs(median.as_secs() + (median.subsec_millis() / 500) as i64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn date(t: Timestamp) -> String {
        jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&t)
            .expect("printable")
    }

    #[test]
    fn a_synced_clock_is_left_alone() {
        let clock = Clock::default();
        for _ in 0..20 {
            clock.observe(&date(Timestamp::now()));
        }
        assert_eq!(clock.offset(), SignedDuration::ZERO);
    }

    #[test]
    fn a_clock_two_minutes_behind_is_corrected() {
        let clock = Clock::new(SignedDuration::from_mins(-2));
        assert!(clock.observe(&date(Timestamp::now())).is_some());
        let off = clock.now().duration_since(Timestamp::now());
        assert!(off.abs() <= SignedDuration::from_secs(1), "{off:?}");
        assert!((119..=121).contains(&clock.offset().as_secs()), "{:?}", clock.offset());
    }

    #[test]
    fn a_clock_ahead_is_corrected_and_one_odd_sample_does_not_move_it() {
        let clock = Clock::new(SignedDuration::from_mins(2));
        for _ in 0..5 {
            clock.observe(&date(Timestamp::now()));
        }
        let settled = clock.offset();
        assert!((-121..=-119).contains(&settled.as_secs()), "{settled:?}");
        // A response that sat in a queue for a minute.
        assert_eq!(
            clock.observe(&date(Timestamp::now() - SignedDuration::from_mins(1))),
            None
        );
        assert_eq!(clock.offset(), settled);
    }

    #[test]
    fn a_header_that_is_not_a_date_is_ignored() {
        let clock = Clock::default();
        assert_eq!(clock.observe("yesterday"), None);
        assert_eq!(clock.offset(), SignedDuration::ZERO);
    }

    proptest! {
        /// Whatever the samples, the offset is zero or at least the dead
        /// band, in whole seconds, and within the samples' range.
        #[test]
        fn the_offset_is_whole_seconds_within_the_samples(samples in prop::collection::vec(-400_000i64..400_000, 1..15)) {
            let got = offset(&samples);
            prop_assert_eq!(got.subsec_millis(), 0);
            prop_assert!(got == SignedDuration::ZERO || got.abs() >= DEAD_BAND);
            let (lo, hi) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
            prop_assert!(got == SignedDuration::ZERO || (lo - 500..=hi + 500).contains(&(got.as_millis() as i64)));
        }
    }
}
