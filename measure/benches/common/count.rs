//! The smallest request-counting tower layer, the yardstick for `DrainLayer`
//! in `per_request` and `layer`: +1 at `call`, −1 when the response future
//! resolves, the response (and its body) passed on untouched.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// Requests in flight through any [`Count`].
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The layer: wraps a service in [`Count`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct CountLayer;

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count(inner)
    }
}

/// A service counted in [`IN_FLIGHT`] from `call` until its future resolves.
#[derive(Debug, Clone)]
pub(crate) struct Count<S>(S);

impl<S: Service<R>, R> Service<R> for Count<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        IN_FLIGHT.fetch_add(1, SeqCst);
        Counted {
            inner: self.0.call(request),
        }
    }
}

pin_project! {
    /// [`Count`]'s response future: uncounts the request when it resolves.
    #[derive(Debug)]
    pub(crate) struct Counted<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let output = ready!(self.project().inner.poll(cx));
        IN_FLIGHT.fetch_sub(1, SeqCst);
        Poll::Ready(output)
    }
}
