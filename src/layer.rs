//! The tower middleware: [`DrainLayer`] counts each request until its
//! response body ends, and marks HTTP/1 responses `Connection: close` from
//! the trigger on.
//!
//! # When to add it
//!
//! A server that accepts through [`GracefulAccept`](crate::GracefulAccept)
//! needs no per-request layer: the drain waits for every connection it
//! tracks, so in-flight requests and streaming responses keep it open, and
//! from the trigger on each HTTP/1 connection's next request head gets
//! `Connection: close`, so hyper answers with it and retires the connection
//! (see [`keep_alive_idle`](crate::WatchBuilder::keep_alive_idle)). Add
//! `DrainLayer` when you want one of:
//!
//! - `Connection: close` from the trigger on for connections that
//!   `GracefulAccept` does not see, or on responses to requests read before
//!   the trigger.
//! - Request counts: [`Watch::requests`] (requests in flight through a
//!   `DrainLayer`, counted from `call` until the response body ends or is
//!   dropped) and the report's `requests_completed` and `requests_aborted`.
//!   Without the layer they stay 0.
//! - A drain that waits for requests on connections tower-drain does not
//!   track (a listener not wrapped in `GracefulAccept`).
//!
//! Around a whole axum `Router` ([`DrainLayer::around_router`]) it costs less
//! than through `Router::layer`, which wraps every route on its own; see
//! BENCHMARKS.md.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_drain::{DrainLayer, Watch};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let watch = Watch::new();
//! let service = ServiceBuilder::new()
//!     .layer(DrainLayer::new(watch.clone()))
//!     .service(service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//!     }));
//!
//! let response = service.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(watch.requests(), 1); // until the body ends or is dropped
//! drop(response);
//! assert_eq!(watch.requests(), 0);
//!
//! watch.trigger();
//! let response = service.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(response.headers()["connection"], "close");
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{state::Inner, watch::Watch};

/// A tower [`Layer`] that counts requests and asks HTTP/1 clients to close
/// their connection once the drain is triggered; see the [module
/// documentation](self).
#[derive(Debug, Clone)]
pub struct DrainLayer {
    watch: Watch,
    extension: bool,
}

impl DrainLayer {
    /// A layer that reports to `watch`.
    pub fn new(watch: Watch) -> Self {
        Self {
            watch,
            extension: false,
        }
    }

    /// Also puts an [`Observer`](crate::Observer) in every request's extensions, where
    /// handlers find it (with the `axum` feature, it is an extractor). This
    /// costs an allocation or two per request (the extension map and its
    /// entry).
    pub fn with_observer_extension(mut self) -> Self {
        self.extension = true;
        self
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.watch.inner.count_requests();
        DrainService {
            inner,
            watch: self.watch.clone(),
            extension: self.extension,
        }
    }
}

/// Return type of [`DrainLayer`]'s `layer`: the wrapped service.
#[derive(Debug, Clone)]
pub struct DrainService<S> {
    inner: S,
    watch: Watch,
    extension: bool,
}

impl<S> DrainService<S> {
    /// Wraps `inner` so that it reports to `watch`; the same as
    /// `DrainLayer::new(watch).layer(inner)`.
    pub fn new(inner: S, watch: Watch) -> Self {
        DrainLayer::new(watch).layer(inner)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for DrainService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<DrainBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let token = RequestToken::new(&self.watch.inner);
        let may_close = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11)
            && req.method() != Method::CONNECT;
        if self.extension {
            req.extensions_mut().insert(self.watch.observer());
        }
        ResponseFuture {
            inner: self.inner.call(req),
            token: Some(token),
            may_close,
        }
    }
}

pin_project! {
    /// Response future of [`DrainService`]; the request counts from `call`.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        token: Option<RequestToken>,
        may_close: bool,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<DrainBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut token = this.token.take().expect("polled after completion");
        let mut response = result?;
        if *this.may_close
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
            && token.inner.is_triggered()
        {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if response.body().is_end_stream() {
            token.ended();
        }
        Poll::Ready(Ok(response.map(|body| DrainBody {
            inner: body,
            token: Some(token),
        })))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// Response body of [`DrainService`]: the request counts as in flight
    /// until this body has ended or been dropped.
    pub struct DrainBody<B> {
        #[pin]
        inner: B,
        token: Option<RequestToken>,
    }
}

impl<B: Body> Body for DrainBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = ready!(inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            // hyper drops a body that says it has ended without polling it
            // again: that drop is the end.
            Some(Ok(_)) => inner.is_end_stream(),
            None => true,
            Some(Err(_)) => false,
        };
        if let (true, Some(token)) = (ended, this.token.as_mut()) {
            token.ended();
        }
        if !matches!(frame, Some(Ok(_))) {
            this.token.take();
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> DrainBody<B> {
    /// Counts the request as completed now, and unwraps the body: for
    /// connections the drain tracks, which hold it open until the body is
    /// written.
    #[cfg(feature = "axum")]
    pub(crate) fn complete(self) -> B {
        if let Some(mut token) = self.token {
            token.ended();
        }
        self.inner
    }
}

impl<B> fmt::Debug for DrainBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainBody")
            .field("in_flight", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// A request's place in [`Watch::requests`], released on drop: completed if
/// its response body ended, aborted otherwise.
struct RequestToken {
    inner: Arc<Inner>,
    ended: bool,
}

impl RequestToken {
    #[inline]
    fn new(inner: &Arc<Inner>) -> Self {
        inner.request_started();
        Self {
            inner: inner.clone(),
            ended: false,
        }
    }

    /// The whole response has been produced.
    #[inline]
    fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for RequestToken {
    #[inline]
    fn drop(&mut self) {
        self.inner.request_finished(self.ended);
    }
}
