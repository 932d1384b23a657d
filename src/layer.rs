//! The tower middleware: [`DrainLayer`] counts each request until its response
//! body ends, and asks HTTP/1 clients to close their connection once the
//! drain has started.

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

use crate::watch::{Inner, Watch};

/// A tower [`Layer`] that makes a service drain-aware.
///
/// Each request holds a token from [`call`](Service::call) until its response
/// body has ended or been dropped, so a streaming response keeps the drain
/// open; [`Watch::requests`] counts them. Once the drain has started, HTTP/1.x
/// responses carry `Connection: close`, so clients do not send another request
/// on a connection that is about to close (HTTP/2 uses GOAWAY instead, which
/// the server sends).
///
/// The layer adds a few atomic operations per request and no allocation
/// (see BENCHMARKS.md for what axum's `Router::layer` itself costs).
/// [`with_watch_extension`](DrainLayer::with_watch_extension) also puts the
/// [`Watch`] in each request's extensions, for handlers that end long-lived
/// responses when the drain starts.
///
/// # Example
///
/// ```
/// use http::{Request, Response, Version};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_drain::{DrainLayer, Watch};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let watch = Watch::new();
/// let service = ServiceBuilder::new()
///     .layer(DrainLayer::new(watch.clone()))
///     .service(service_fn(|_req: Request<()>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
///     }));
///
/// let response = service.clone().oneshot(Request::new(())).await.unwrap();
/// assert_eq!(watch.requests(), 1); // the body has not been consumed yet
/// assert!(response.headers().get("connection").is_none());
/// drop(response);
/// assert_eq!(watch.requests(), 0);
///
/// # let _listener = tower_drain::GracefulAccept::new(
/// #     tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), watch.clone());
/// watch.trigger();
/// let response = service.oneshot(Request::new(())).await.unwrap();
/// assert_eq!(response.headers()["connection"], "close");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DrainLayer {
    watch: Watch,
    extension: bool,
}

impl DrainLayer {
    /// A layer that reports to `watch`.
    ///
    /// ```
    /// let layer = tower_drain::DrainLayer::new(tower_drain::Watch::new());
    /// # drop(layer);
    /// ```
    pub fn new(watch: Watch) -> Self {
        Self {
            watch,
            extension: false,
        }
    }

    /// Also inserts a clone of the [`Watch`] into every request's extensions,
    /// where handlers find it (with the `axum` feature, `Watch` is an
    /// extractor). This costs a few small allocations per request (the
    /// extension map and its entry).
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use tower_drain::{DrainLayer, Watch};
    ///
    /// async fn handler(watch: Watch) -> &'static str {
    ///     if watch.is_draining() { "draining" } else { "running" }
    /// }
    ///
    /// let app: Router = Router::new()
    ///     .route("/", get(handler))
    ///     .layer(DrainLayer::new(Watch::new()).with_watch_extension());
    /// ```
    pub fn with_watch_extension(mut self) -> Self {
        self.extension = true;
        self
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainService {
            inner,
            watch: self.watch.clone(),
            extension: self.extension,
        }
    }
}

/// The service [`DrainLayer`] produces.
///
/// ```
/// use tower_drain::{DrainService, Watch};
///
/// let service = DrainService::new(tower::service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// }), Watch::new());
/// # drop(service);
/// ```
#[derive(Debug, Clone)]
pub struct DrainService<S> {
    inner: S,
    watch: Watch,
    extension: bool,
}

impl<S> DrainService<S> {
    /// Wraps `inner` so that it reports to `watch`; the same as
    /// `DrainLayer::new(watch).layer(inner)`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use http::{Request, Response};
    /// # use tower::{service_fn, ServiceExt};
    /// # use tower_drain::{DrainService, Watch};
    /// # let watch = Watch::new();
    /// # let service = DrainService::new(service_fn(|_req: Request<()>| async {
    /// #     Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
    /// # }), watch.clone());
    /// let response = service.oneshot(Request::new(())).await.unwrap();
    /// assert_eq!(watch.requests(), 1);
    /// # drop(response);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(inner: S, watch: Watch) -> Self {
        DrainLayer::new(watch).layer(inner)
    }

    /// The wrapped service.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use http::{Request, Response};
    /// # use tower::{service_fn, ServiceExt};
    /// # use tower_drain::{DrainService, Watch};
    /// # let watch = Watch::new();
    /// # let service = DrainService::new(service_fn(|_req: Request<()>| async {
    /// #     Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
    /// # }), watch.clone());
    /// let _inner = service.get_ref();
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
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
            req.extensions_mut().insert(self.watch.clone());
        }
        ResponseFuture {
            inner: self.inner.call(req),
            token: Some(token),
            may_close,
        }
    }
}

pin_project! {
    /// The response future of [`DrainService`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use http::{Request, Response};
    /// # use tower::{service_fn, ServiceExt};
    /// # use tower_drain::{DrainService, Watch};
    /// # let watch = Watch::new();
    /// # let service = DrainService::new(service_fn(|_req: Request<()>| async {
    /// #     Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
    /// # }), watch.clone());
    /// use tower::Service;
    ///
    /// let mut service = service;
    /// let future: tower_drain::ResponseFuture<_> = service.call(Request::new(()));
    /// assert_eq!(watch.requests(), 1); // counted from `call`
    /// drop(future);
    /// assert_eq!(watch.requests(), 0);
    /// # Ok(())
    /// # }
    /// ```
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
    /// The response body of [`DrainService`]: the request counts as in flight
    /// until this body has ended or been dropped.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # use http::{Request, Response};
    /// # use tower::{service_fn, ServiceExt};
    /// # use tower_drain::{DrainService, Watch};
    /// # let watch = Watch::new();
    /// # let service = DrainService::new(service_fn(|_req: Request<()>| async {
    /// #     Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
    /// # }), watch.clone());
    /// use http_body_util::BodyExt;
    ///
    /// let response = service.oneshot(Request::new(())).await.unwrap();
    /// let body: tower_drain::DrainBody<String> = response.into_body();
    /// assert_eq!(watch.requests(), 1);
    /// let bytes = body.collect().await.unwrap().to_bytes();
    /// assert_eq!(&bytes[..], b"hello");
    /// assert_eq!(watch.requests(), 0); // released at the end of the body
    /// # Ok(())
    /// # }
    /// ```
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
