//! Readiness for load balancers: [`Readiness`] answers `200` until the drain
//! is triggered and `503` from then on (a restart stays `200`: another
//! process serves the same sockets), so traffic moves elsewhere while the
//! server finishes what it has.

use std::{
    convert::Infallible,
    future::{ready, Ready},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

use crate::Observer;

/// A [`Service`] that answers readiness checks: `200 ready` while
/// [`Observer::is_ready`], then `503 draining` with a `Retry-After` of the
/// seconds left until the drain's deadline.
///
/// It answers every request the same way, whatever its method and path;
/// mount it on the path your load balancer or Kubernetes probe polls.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_drain::{Readiness, Watch};
///
/// let watch = Watch::new();
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .route_service("/readyz", Readiness::new(watch.observer()));
/// ```
#[derive(Debug, Clone)]
pub struct Readiness {
    observer: Observer,
}

impl Readiness {
    /// Answers for the drain `observer` sees.
    pub fn new(observer: Observer) -> Self {
        Self { observer }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let left = self.observer.until_deadline();
        let (Some(left), false) = (left, self.observer.is_ready()) else {
            return Response::new(Full::from("ready\n"));
        };
        let mut response = Response::new(Full::from("draining\n"));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after(left));
        response
    }
}

/// Whole seconds, rounded up, and at least one.
fn retry_after(left: Duration) -> HeaderValue {
    let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    HeaderValue::from(seconds.max(1))
}

impl<B> Service<Request<B>> for Readiness {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        ready(Ok(self.response()))
    }
}
