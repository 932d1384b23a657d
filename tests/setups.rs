//! A streaming response keeps the drain open in every supported axum setup:
//! `GracefulAccept` alone (the documented default, no per-request layer),
//! `GracefulAccept` with `DrainLayer::around_router` or `Router::layer`, and
//! `Router::layer(DrainLayer)` in front of connections tower-drain does not
//! track.

mod common;

use std::{convert::Infallible, io};

use axum::{body::Body, routing::get, Router};
use bytes::Bytes;
use common::within;
use futures_util::stream;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tower_drain::{DrainLayer, GracefulAccept, Watch};

/// How the app is served.
#[derive(Debug, Clone, Copy)]
enum Setup {
    /// `GracefulAccept`, no per-request layer.
    ListenerOnly,
    /// `GracefulAccept` and `DrainLayer::around_router`.
    LayerAroundRouter,
    /// `GracefulAccept` and `Router::layer(DrainLayer)`.
    LayerInsideRouter,
    /// A plain `TcpListener` and `Router::layer(DrainLayer)`.
    LayerOnly,
}

impl Setup {
    /// Serves `app` on `listener` until `watch`'s shutdown signal.
    fn serve(
        self,
        listener: TcpListener,
        watch: &Watch,
        app: Router,
    ) -> JoinHandle<io::Result<()>> {
        let signal = watch.shutdown_signal();
        let layer = DrainLayer::new(watch.clone());
        let watch = watch.clone();
        tokio::spawn(async move {
            match self {
                Setup::ListenerOnly => {
                    axum::serve(GracefulAccept::new(listener, watch), app)
                        .with_graceful_shutdown(signal)
                        .await
                }
                Setup::LayerAroundRouter => {
                    let app = layer.around_router(app);
                    axum::serve(GracefulAccept::new(listener, watch), app)
                        .with_graceful_shutdown(signal)
                        .await
                }
                Setup::LayerInsideRouter => {
                    axum::serve(GracefulAccept::new(listener, watch), app.layer(layer))
                        .with_graceful_shutdown(signal)
                        .await
                }
                Setup::LayerOnly => {
                    axum::serve(listener, app.layer(layer))
                        .with_graceful_shutdown(signal)
                        .await
                }
            }
        })
    }

    /// Whether `Watch::requests` counts the request while its body streams:
    /// `around_router` counts it until its response head, as its tracked
    /// connection holds the drain for the body.
    fn counts_streaming_requests(self) -> bool {
        matches!(self, Setup::LayerInsideRouter | Setup::LayerOnly)
    }
}

/// `GET /stream` sends `first`, then whatever the test sends on the channel,
/// and ends when the test drops its sender.
fn streaming_app(chunks: mpsc::Receiver<&'static str>) -> Router {
    let chunks = std::sync::Arc::new(std::sync::Mutex::new(Some(chunks)));
    let handler = move || {
        let rest = chunks.lock().unwrap().take().expect("one request");
        async move {
            let first = stream::once(async { Ok::<_, Infallible>(Bytes::from("first")) });
            let rest = stream::unfold(rest, |mut rest| async move {
                let chunk = rest.recv().await?;
                Some((Ok(Bytes::from(chunk)), rest))
            });
            Body::from_stream(futures_util::StreamExt::chain(first, rest))
        }
    };
    Router::new().route("/stream", get(handler))
}

/// Starts `setup`, streams one response, triggers the drain mid-stream and
/// checks that the drain waits for the stream's end, then ends clean.
async fn streaming_response_holds_the_drain(setup: Setup) {
    let watch = Watch::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (more, chunks) = mpsc::channel(1);
    let server = setup.serve(listener, &watch, streaming_app(chunks));

    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let (closed, client_closed) = oneshot::channel();
    tokio::spawn(async move { closed.send(connection.await) });
    let request = http::Request::get("/stream")
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = within("the response head", sender.send_request(request))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = within("the first chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first", "{setup:?}");
    assert_eq!(
        watch.requests(),
        usize::from(setup.counts_streaming_requests()),
        "{setup:?}: what Watch::requests counts"
    );

    watch.trigger();
    within("the shutdown signal", watch.shutdown_signal()).await;
    // Every listener is closed and nothing else is pending: only the
    // streaming response can keep the drain open now.
    assert!(
        watch.report().is_none(),
        "{setup:?}: the drain ended while a response was streaming: {:?}",
        watch.report()
    );

    more.send("more").await.unwrap();
    let next = within("a chunk after the trigger", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.into_data().unwrap(), "more", "{setup:?}");
    assert!(watch.report().is_none(), "{setup:?}");
    drop(more);
    assert!(
        within("the end of the body", body.frame()).await.is_none(),
        "{setup:?}: the body ends without an error"
    );

    let report = within("the drain", watch.drained()).await;
    assert!(report.is_clean(), "{setup:?}: {report}");
    within("serve to return", server).await.unwrap().unwrap();
    within("the connection to close", client_closed)
        .await
        .unwrap()
        .unwrap();
}

/// The documented default: the tracked connection holds the drain.
#[tokio::test]
async fn listener_only() {
    streaming_response_holds_the_drain(Setup::ListenerOnly).await;
}

/// The recommended placement of `DrainLayer`.
#[tokio::test]
async fn layer_around_the_router() {
    streaming_response_holds_the_drain(Setup::LayerAroundRouter).await;
}

/// `Router::layer(DrainLayer)`.
#[tokio::test]
async fn layer_inside_the_router() {
    streaming_response_holds_the_drain(Setup::LayerInsideRouter).await;
}

/// `DrainLayer` in front of connections tower-drain does not track: the
/// request token, held until the body ends, is what holds the drain.
#[tokio::test]
async fn layer_without_tracked_connections() {
    streaming_response_holds_the_drain(Setup::LayerOnly).await;
}
