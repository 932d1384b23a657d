//! The axum hook-up (feature `axum`): [`GracefulAccept`] is an
//! `axum::serve::Listener`, [`DrainRouter`] puts a [`DrainLayer`] around a
//! whole `Router`, and [`Observer`] is an extractor.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use tower_drain::{DrainLayer, GracefulAccept, Watch};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let watch = Watch::new();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let app = Router::new().route("/", get(|| async { "hello" }));
//! let app = DrainLayer::new(watch.clone()).around_router(app);
//! axum::serve(GracefulAccept::new(listener, watch.clone()), app)
//!     .with_graceful_shutdown(watch.shutdown_signal())
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::{
    convert::Infallible,
    future::{ready, Future, Ready},
    io,
    pin::Pin,
    task::{ready as ready_poll, Context, Poll},
};

use ::axum::{
    extract::{FromRequestParts, Request},
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
    routing::{future::RouteFuture, Router},
    serve::{IncomingStream, Listener},
};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    layer::{DrainBody, DrainLayer, DrainService, ResponseFuture},
    DrainableListener, GracefulAccept, Observer, TrackedIo,
};

impl DrainLayer {
    /// Wraps a whole `Router`, ready for `axum::serve` on a
    /// [`GracefulAccept`] or `TlsAccept`: the cheaper placement, since
    /// `Router::layer` wraps every route on its own.
    pub fn around_router(&self, router: Router) -> DrainRouter {
        DrainRouter {
            // Every route in its final form once, as `Router` does for each
            // connection; the connections then share it.
            inner: self.layer(router.with_state(())),
        }
    }
}

/// A `Router` behind a [`DrainLayer`]; return type of
/// [`DrainLayer::around_router`].
///
/// It is its own make-service, like `Router`, for listeners whose
/// connections the drain tracks ([`TrackedConnection`]): pass it to
/// `axum::serve` with a [`GracefulAccept`]. A tracked connection keeps the
/// drain open until the response body is written, so the body is left as it
/// is (no extra allocation) and a request counts in
/// [`Watch::requests`](crate::Watch::requests) until its response head is
/// ready. For untracked connections, use `Router::layer(DrainLayer)`, which
/// counts a request until its body ends; a plain listener does not compile:
///
/// ```compile_fail
/// # async fn serve(app: axum::Router, watch: tower_drain::Watch) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// axum::serve(listener, tower_drain::DrainLayer::new(watch).around_router(app)).await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DrainRouter {
    inner: DrainService<Router>,
}

impl Service<Request> for DrainRouter {
    type Response = Response;
    type Error = Infallible;
    type Future = RouterFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request>::poll_ready(&mut self.inner, cx)
    }

    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        RouterFuture {
            inner: self.inner.call(request),
        }
    }
}

impl<L> Service<IncomingStream<'_, L>> for DrainRouter
where
    L: Listener,
    L::Io: TrackedConnection,
{
    type Response = Self;
    type Error = Infallible;
    type Future = Ready<Result<Self, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _connection: IncomingStream<'_, L>) -> Self::Future {
        ready(Ok(self.clone()))
    }
}

/// A connection the drain tracks until it closes: [`TrackedIo`], and
/// `TlsIo` over one. Sealed.
pub trait TrackedConnection: sealed::Sealed {}

impl<I> TrackedConnection for TrackedIo<I> {}

#[cfg(feature = "rustls")]
impl<I> TrackedConnection for crate::TlsIo<I> {}

mod sealed {
    /// Only tower-drain's connection types are tracked.
    pub trait Sealed {}

    impl<I> Sealed for crate::TrackedIo<I> {}

    #[cfg(feature = "rustls")]
    impl<I> Sealed for crate::TlsIo<I> {}
}

pin_project! {
    /// Response future of [`DrainRouter`].
    pub struct RouterFuture {
        #[pin]
        inner: ResponseFuture<RouteFuture<Infallible>>,
    }
}

impl Future for RouterFuture {
    type Output = Result<Response, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready_poll!(self.project().inner.poll(cx))?;
        Poll::Ready(Ok(response.map(DrainBody::complete)))
    }
}

impl std::fmt::Debug for RouterFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterFuture").finish_non_exhaustive()
    }
}

impl<L: DrainableListener> Listener for GracefulAccept<L> {
    type Io = TrackedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        GracefulAccept::accept(self).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        GracefulAccept::local_addr(self)
    }
}

#[cfg(feature = "rustls")]
impl<L: DrainableListener> Listener for crate::TlsAccept<L> {
    type Io = crate::TlsIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        crate::TlsAccept::accept(self).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        crate::TlsAccept::local_addr(self)
    }
}

/// Extracts the [`Observer`] that [`DrainLayer::with_observer_extension`]
/// put in the request, so a handler can end a long-lived response when the
/// drain starts.
impl<S: Send + Sync> FromRequestParts<S> for Observer {
    type Rejection = MissingObserver;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Observer>()
            .cloned()
            .ok_or(MissingObserver)
    }
}

/// The rejection when a handler extracts an [`Observer`] but the request has
/// none: a `500` naming the missing
/// [`DrainLayer::with_observer_extension`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MissingObserver;

impl IntoResponse for MissingObserver {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "tower_drain::Observer is missing from the request: add DrainLayer::new(watch).with_observer_extension() to the service",
        )
            .into_response()
    }
}
