//! Client-side limits on calls to the API server: a token bucket in front of
//! the Kubernetes client (`--api-qps`, `--api-burst`), as client-go's QPS
//! and burst, so that thousands of AssumedRoles coming due together do not
//! flood the API server. Every request takes a token, a watch once when it
//! starts.
//!
//! The client queues requests in front of one service; this layer holds
//! that queue while no token is there (in `poll_ready`), as tower's own rate
//! limit does.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tower::{Layer, Service};

use crate::budget::Bucket;

/// API server requests per second, by default: enough for a few thousand
/// AssumedRoles (each refresh writes the Secret and the status).
pub const DEFAULT_QPS: f64 = 50.0;
/// Requests that may go at once, by default.
pub const DEFAULT_BURST: u32 = 100;

/// Now, by tokio's clock (which tests can pause).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Limits the requests of the service it wraps.
#[derive(Clone)]
pub struct ApiLimitLayer {
    bucket: Arc<Mutex<Bucket>>,
}

impl ApiLimitLayer {
    /// `qps` requests per second, `burst` at once.
    pub fn new(qps: f64, burst: u32) -> Self {
        Self {
            bucket: Arc::new(Mutex::new(Bucket::new(qps, burst, now()))),
        }
    }
}

impl<S> Layer<S> for ApiLimitLayer {
    type Service = ApiLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiLimit {
            inner,
            bucket: self.bucket.clone(),
            wait: None,
            token: false,
        }
    }
}

/// The service with the limit.
pub struct ApiLimit<S> {
    inner: S,
    bucket: Arc<Mutex<Bucket>>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    token: bool,
}

impl<S, R> Service<R> for ApiLimit<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.token {
            if let Some(wait) = self.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            let taken = match self.bucket.lock() {
                Ok(mut bucket) => bucket.take(true, now()),
                Err(_) => Ok(()),
            };
            match taken {
                Ok(()) => self.token = true,
                Err(wait) => self.wait = Some(Box::pin(tokio::time::sleep(wait))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.token = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::ServiceExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_wait_for_the_rate() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let start = tokio::time::Instant::now();
        let inner = tower::service_fn(move |()| {
            let seen = seen.clone();
            async move {
                if let Ok(mut seen) = seen.lock() {
                    seen.push(start.elapsed());
                }
                Ok::<_, std::convert::Infallible>(())
            }
        });
        let mut service = ApiLimitLayer::new(4.0, 2).layer(inner);
        for _ in 0..6 {
            service.ready().await.unwrap_or_else(|e| match e {});
            let _ = service.call(()).await;
        }
        let calls = calls.lock().map(|c| c.clone()).unwrap_or_default();
        // Two at once, then one every quarter of a second.
        let expected = [0, 0, 250, 500, 750, 1000].map(Duration::from_millis);
        for (got, want) in calls.iter().zip(expected) {
            assert!(got.abs_diff(want) < Duration::from_millis(20), "{calls:?}");
        }
    }
}
