//! The axum hook-up (feature `axum`): [`GracefulAccept`] is an
//! `axum::serve::Listener`, [`DrainRouter`] puts a [`DrainLayer`] around a
//! whole `Router`, and [`Observer`] is an extractor.
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_drain::{DrainLayer, GracefulAccept, Watch};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let watch = Watch::new();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let app = Router::new().route("/", get(|| async { "hello" }));
//! let app = DrainLayer::new(watch.clone()).around_router(app);
//! # watch.trigger();
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
    body::Body,
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
    layer::{DrainLayer, DrainService, ResponseFuture},
    DrainableListener, GracefulAccept, Observer, TrackedIo,
};

impl DrainLayer {
    /// Wraps a whole `Router`, ready for `axum::serve`: the cheaper
    /// placement, since `Router::layer` wraps every route on its own.
    pub fn around_router(&self, router: Router) -> DrainRouter {
        DrainRouter {
            inner: self.layer(router),
        }
    }
}

/// A `Router` behind a [`DrainLayer`], answering with axum's `Body`; return
/// type of [`DrainLayer::around_router`].
///
/// It is its own make-service, like `Router`: pass it to `axum::serve`.
#[derive(Debug, Clone)]
pub struct DrainRouter {
    inner: DrainService<Router>,
}

impl Service<Request> for DrainRouter {
    type Response = Response;
    type Error = Infallible;
    type Future = RouterFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        RouterFuture {
            inner: self.inner.call(request),
        }
    }
}

impl<L: Listener> Service<IncomingStream<'_, L>> for DrainRouter {
    type Response = Self;
    type Error = Infallible;
    type Future = Ready<Result<Self, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _connection: IncomingStream<'_, L>) -> Self::Future {
        // As `Router` does for itself: turn every route into its final form
        // once per connection, not once per request.
        let inner = self.inner.clone().map_inner(|router| router.with_state(()));
        ready(Ok(Self { inner }))
    }
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
        Poll::Ready(Ok(response.map(Body::new)))
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
