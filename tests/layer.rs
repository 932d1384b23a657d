//! Unit tests of `DrainLayer`: request counting through response bodies, `Connection: close` while draining, and the `Watch` extension and extractor, without sockets.

mod common;

use std::{
    convert::Infallible,
    future::{ready, Ready},
    io,
    sync::mpsc as std_mpsc,
};

use axum::{routing::get, Router};
use bytes::Bytes;
use futures_util::{future::BoxFuture, stream, FutureExt};
use http::{header::CONNECTION, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, StreamBody};
use tokio::sync::{mpsc, oneshot};
use tower::{util::ServiceFn, Service, ServiceBuilder, ServiceExt};
use tower_drain::{layer::DrainService, DrainLayer, Observer, Phase, Watch};

use common::within;

// ----- services, handlers and bodies -----

/// `handler` wrapped in `layer`.
fn layered<H>(layer: DrainLayer, handler: H) -> DrainService<ServiceFn<H>> {
    ServiceBuilder::new().layer(layer).service_fn(handler)
}

/// A handler that answers its one request with `response` at once.
fn answer<B>(
    response: Response<B>,
) -> impl FnMut(Request<()>) -> Ready<Result<Response<B>, Infallible>> {
    let mut response = Some(response);
    move |_| ready(Ok(response.take().expect("one request")))
}

/// A handler whose one answer is what the test sends later: its response
/// future stays pending until then.
fn answer_later<T: Send + 'static>() -> (
    oneshot::Sender<T>,
    impl FnMut(Request<()>) -> BoxFuture<'static, T>,
) {
    let (sender, receiver) = oneshot::channel();
    let mut receiver = Some(receiver);
    let handler = move |_| {
        let receiver = receiver.take().expect("one request");
        async move { receiver.await.expect("the test answers") }.boxed()
    };
    (sender, handler)
}

/// Sends the frames of a [`streaming_body`]; dropping it ends the body.
type Frames = mpsc::UnboundedSender<Result<Frame<Bytes>, io::Error>>;

/// A body that yields each frame sent on [`Frames`] when polled, and ends
/// when the sender is dropped.
fn streaming_body() -> (
    Frames,
    impl Body<Data = Bytes, Error = io::Error> + Send + Unpin,
) {
    let (frames, mut receiver) = mpsc::unbounded_channel();
    let body = StreamBody::new(stream::poll_fn(move |cx| receiver.poll_recv(cx)));
    (frames, body)
}

/// Starts a streaming response through a `DrainLayer` on `watch`: the
/// sender of its frames, and its body.
async fn streaming_response(
    watch: &Watch,
) -> (Frames, impl Body<Data = Bytes, Error = io::Error> + Unpin) {
    let (frames, body) = streaming_body();
    let service = layered(DrainLayer::new(watch.clone()), answer(Response::new(body)));
    let response = within("the response", service.oneshot(Request::new(()))).await;
    (frames, response.unwrap().into_body())
}

/// A request of `version` and `method`.
fn request(version: Version, method: Method) -> Request<()> {
    Request::builder()
        .version(version)
        .method(method)
        .body(())
        .unwrap()
}

/// An empty response with `status`.
fn response(status: StatusCode) -> Response<Empty<Bytes>> {
    Response::builder()
        .status(status)
        .body(Empty::new())
        .unwrap()
}

/// The `Connection` header `watch`'s layer puts on `response` to `request`.
async fn connection_header(
    watch: &Watch,
    request: Request<()>,
    response: Response<Empty<Bytes>>,
) -> Option<String> {
    let service = layered(DrainLayer::new(watch.clone()), answer(response));
    let response = within("the response", service.oneshot(request))
        .await
        .unwrap();
    let header = response.headers().get(CONNECTION)?;
    Some(header.to_str().unwrap().to_owned())
}

/// A watch that is draining: the returned request, still in flight, holds
/// the drain open.
async fn draining_watch() -> (Watch, impl Body) {
    let watch = Watch::new();
    let (_, in_flight) = streaming_response(&watch).await;
    watch.trigger();
    assert_eq!(watch.phase(), Phase::Draining);
    (watch, in_flight)
}

// ----- the request count -----

/// A streaming response counts as in flight after its future resolves and while it yields frames, until its body yields its end; that end closes the drain.
#[tokio::test]
async fn streaming_body_holds_the_request_until_its_end() {
    let watch = Watch::new();
    let (frames, mut body) = streaming_response(&watch).await;
    assert_eq!(watch.requests(), 1);
    watch.trigger();

    frames.send(Ok(Frame::data(Bytes::from("chunk")))).unwrap();
    let frame = within("a frame", body.frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "chunk");
    assert_eq!(watch.requests(), 1);
    assert_eq!(watch.phase(), Phase::Draining);

    drop(frames);
    assert!(within("the end", body.frame()).await.is_none());
    assert_eq!(
        watch.requests(),
        0,
        "released at the end, before the body is dropped"
    );
    assert_eq!(watch.phase(), Phase::Drained);
    drop(body);
    assert_eq!(watch.requests(), 0, "released only once");
    assert_eq!(watch.report().unwrap().requests_completed, 1);
}

/// A streaming body dropped before its end releases the request, which ends the drain it held open, and counts as aborted.
#[tokio::test]
async fn dropped_body_releases_the_request() {
    let watch = Watch::new();
    let (frames, mut body) = streaming_response(&watch).await;
    frames.send(Ok(Frame::data(Bytes::from("chunk")))).unwrap();
    within("a frame", body.frame()).await.unwrap().unwrap();
    watch.trigger();
    assert_eq!(watch.phase(), Phase::Draining);

    drop(body);
    assert_eq!(watch.requests(), 0);
    assert_eq!(watch.phase(), Phase::Drained);
    let report = watch.report().unwrap();
    assert_eq!((report.requests_completed, report.requests_aborted), (0, 1));
}

/// hyper drops a body that says it has ended without polling it again: an empty body never polled, and a sized body after its last frame, count as completed.
#[tokio::test]
async fn body_dropped_at_its_end_counts_as_completed() {
    let watch = Watch::new();
    let service = layered(DrainLayer::new(watch.clone()), |_| async {
        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
            "hello",
        ))))
    });
    let mut sized = service.oneshot(Request::new(())).await.unwrap().into_body();
    let empty = layered(
        DrainLayer::new(watch.clone()),
        answer(response(StatusCode::OK)),
    )
    .oneshot(Request::new(()))
    .await
    .unwrap();
    watch.trigger();

    let frame = within("the frame", sized.frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "hello");
    assert!(sized.is_end_stream());
    drop((sized, empty));
    let report = watch.report().unwrap();
    assert_eq!((report.requests_completed, report.requests_aborted), (2, 0));
}

/// A body that fails releases the request at its error.
#[tokio::test]
async fn body_error_releases_the_request() {
    let watch = Watch::new();
    let (frames, mut body) = streaming_response(&watch).await;
    frames.send(Err(io::Error::other("broken"))).unwrap();
    assert!(within("the error", body.frame()).await.unwrap().is_err());
    assert_eq!(watch.requests(), 0);
}

/// The request counts from `call`, and a response future dropped before it resolves releases it.
#[tokio::test]
async fn dropped_response_future_releases_the_request() {
    let watch = Watch::new();
    let (_answer, handler) = answer_later::<Result<Response<Empty<Bytes>>, Infallible>>();
    let mut service = layered(DrainLayer::new(watch.clone()), handler);
    let future = service.call(Request::new(()));
    assert_eq!(watch.requests(), 1);
    drop(future);
    assert_eq!(watch.requests(), 0);
}

/// An error from the inner service releases the request: the drain it held open ends and counts it as aborted.
#[tokio::test]
async fn service_error_releases_the_request() {
    let watch = Watch::new();
    let (answer, handler) = answer_later::<Result<Response<Empty<Bytes>>, &str>>();
    let future = layered(DrainLayer::new(watch.clone()), handler).call(Request::new(()));
    watch.trigger();
    assert_eq!(watch.phase(), Phase::Draining);

    answer.send(Err("refused")).unwrap();
    let error = within("the error", future).await.unwrap_err();
    assert_eq!(error, "refused");
    assert_eq!(watch.requests(), 0);
    assert_eq!(watch.phase(), Phase::Drained);
    let report = watch.report().unwrap();
    assert_eq!((report.requests_completed, report.requests_aborted), (0, 1));
}

// ----- Connection: close -----

/// `Connection: close` appears only once draining, decided when the response is ready, not when the request came in.
#[tokio::test]
async fn connection_close_only_once_draining() {
    let watch = Watch::new();
    let get = || request(Version::HTTP_11, Method::GET);
    assert_eq!(
        connection_header(&watch, get(), response(StatusCode::OK)).await,
        None
    );

    let (answer, handler) = answer_later();
    let future = layered(DrainLayer::new(watch.clone()), handler).call(get());
    watch.trigger();
    answer
        .send(Ok::<_, Infallible>(response(StatusCode::OK)))
        .unwrap();
    let response = within("the response", future).await.unwrap();
    assert_eq!(response.headers()[CONNECTION], "close");
}

/// While draining, `Connection: close` is added for HTTP/1.0 and HTTP/1.1 requests only, never HTTP/2 (nor HTTP/0.9 or HTTP/3).
#[tokio::test]
async fn connection_close_only_for_http1() {
    let (watch, _in_flight) = draining_watch().await;
    for (version, expected) in [
        (Version::HTTP_09, None),
        (Version::HTTP_10, Some("close")),
        (Version::HTTP_11, Some("close")),
        (Version::HTTP_2, None),
        (Version::HTTP_3, None),
    ] {
        let header = connection_header(
            &watch,
            request(version, Method::GET),
            response(StatusCode::OK),
        )
        .await;
        assert_eq!(header.as_deref(), expected, "{version:?}");
    }
}

/// While draining, a `101 Switching Protocols` response keeps its own `Connection: upgrade`.
#[tokio::test]
async fn no_connection_close_on_switching_protocols() {
    let (watch, _in_flight) = draining_watch().await;
    let mut switching = response(StatusCode::SWITCHING_PROTOCOLS);
    switching
        .headers_mut()
        .insert(CONNECTION, "upgrade".parse().unwrap());
    let header = connection_header(&watch, request(Version::HTTP_11, Method::GET), switching).await;
    assert_eq!(header.as_deref(), Some("upgrade"));
}

/// While draining, responses to CONNECT (HTTP/1.0 or HTTP/1.1) get no `Connection: close`.
#[tokio::test]
async fn no_connection_close_for_connect() {
    let (watch, _in_flight) = draining_watch().await;
    for version in [Version::HTTP_10, Version::HTTP_11] {
        let header = connection_header(
            &watch,
            request(version, Method::CONNECT),
            response(StatusCode::OK),
        )
        .await;
        assert_eq!(header, None, "{version:?}");
    }
}

// ----- the Observer extension and the axum extractor -----

/// The `Observer` the inner service finds in the request's extensions, through `layer`.
async fn extension(layer: DrainLayer) -> Option<Observer> {
    let (seen, found) = std_mpsc::channel();
    let handler = move |request: Request<()>| {
        seen.send(request.extensions().get::<Observer>().cloned())
            .unwrap();
        ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
    };
    within(
        "the response",
        layered(layer, handler).oneshot(Request::new(())),
    )
    .await
    .unwrap();
    found.recv().unwrap()
}

/// Only `with_observer_extension()` puts an `Observer` of the layer's drain in request extensions.
#[tokio::test]
async fn observer_extension_only_when_asked() {
    let watch = Watch::new();
    assert!(extension(DrainLayer::new(watch.clone())).await.is_none());

    let found = extension(DrainLayer::new(watch.clone()).with_observer_extension()).await;
    let observer = found.expect("the extension is set");
    assert!(observer.is_ready());
    watch.trigger();
    assert!(
        !observer.is_ready(),
        "the extension observes the layer's watch"
    );
}

/// Answers with the phase the extracted `Observer` sees.
async fn phase(observer: Observer) -> String {
    format!("{:?}", observer.phase())
}

/// Sends `GET /` to `app` without a socket.
async fn get_root(app: Router) -> Response<axum::body::Body> {
    let request = Request::get("/").body(axum::body::Body::empty()).unwrap();
    within("the response", app.oneshot(request)).await.unwrap()
}

/// The status and body of `response`.
async fn read(response: Response<axum::body::Body>) -> (StatusCode, String) {
    let status = response.status();
    let body = within("the body", response.into_body().collect())
        .await
        .unwrap();
    (status, String::from_utf8(body.to_bytes().to_vec()).unwrap())
}

/// Through an axum `Router`, a handler extracts the layer's `Observer`, and the request counts until its body is read.
#[tokio::test]
async fn axum_handler_extracts_the_observer() {
    let watch = Watch::new();
    let app = Router::new()
        .route("/", get(phase))
        .layer(DrainLayer::new(watch.clone()).with_observer_extension());
    let response = get_root(app.clone()).await;
    assert_eq!(watch.requests(), 1, "the body is not read yet");
    assert_eq!(read(response).await, (StatusCode::OK, "Running".into()));
    assert_eq!(watch.requests(), 0);

    watch.trigger();
    let (status, phase) = read(get_root(app).await).await;
    assert_eq!((status, phase.as_str()), (StatusCode::OK, "Drained"));
}

/// Without `with_observer_extension()` (or without the layer), extracting an `Observer` is rejected with 500 (`MissingObserver`).
#[tokio::test]
async fn axum_extractor_without_the_extension_is_500() {
    let watch = Watch::new();
    let without_extension = Router::new()
        .route("/", get(phase))
        .layer(DrainLayer::new(watch));
    let without_layer = Router::new().route("/", get(phase));
    for app in [without_extension, without_layer] {
        let (status, body) = read(get_root(app).await).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("with_observer_extension"), "{body}");
    }
}
