//! The drain behind a hand-written hyper-util accept loop (the one in
//! `examples/hyper_server.rs`), checked with a real hyper client over
//! loopback: a request in flight at the trigger is answered, connections
//! queued in the kernel at the trigger are all answered, and a streaming
//! response holds the drain until its body ends.

mod common;

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use common::within;
use futures_util::{stream, FutureExt, StreamExt};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header, Request, Response,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, Notify},
    task::JoinHandle,
};
use tower::ServiceBuilder;
use tower_drain::{DrainLayer, GracefulAccept, Watch};

/// The response body every route answers with.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What the routes share with the test.
#[derive(Clone, Default)]
struct App {
    /// Notified when `/hold` has started.
    entered: Arc<Notify>,
    /// Notified by the test to let `/hold` answer.
    release: Arc<Notify>,
    /// What `/stream` sends after its first chunk; it ends when the sender is dropped.
    chunks: Arc<Mutex<Option<mpsc::Receiver<&'static str>>>>,
}

/// `/hold` answers once the test releases it, `/stream` streams the test's
/// chunks, anything else answers `hello`.
async fn handle(app: App, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let body = match request.uri().path() {
        "/hold" => {
            app.entered.notify_one();
            app.release.notified().await;
            Full::from("released").boxed_unsync()
        }
        "/stream" => {
            let mut rest = app.chunks.lock().unwrap().take().expect("one /stream");
            let chunks =
                stream::iter(["first"]).chain(stream::poll_fn(move |cx| rest.poll_recv(cx)));
            StreamBody::new(chunks.map(|chunk| Ok(Frame::data(Bytes::from(chunk))))).boxed_unsync()
        }
        _ => Full::from("hello").boxed_unsync(),
    };
    Ok(Response::new(body))
}

/// The example's accept loop: serves `app` behind a `DrainLayer` on every
/// connection `listener` hands out until the shutdown signal, then waits for
/// hyper to finish them.
async fn serve(mut listener: GracefulAccept<TcpListener>, watch: Watch, app: App) {
    let service = ServiceBuilder::new()
        .layer(DrainLayer::new(watch.clone()))
        .service_fn(move |request| handle(app.clone(), request));
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let signal = watch.shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            // As in the example: no connection taken from the queue is left
            // inside the listener when the signal wins.
            biased;
            (io, _peer) = listener.accept() => {
                let service = TowerToHyperService::new(service.clone());
                let connection = builder.serve_connection(TokioIo::new(io), service);
                tokio::spawn(graceful.watch(connection.into_owned()));
            }
            () = &mut signal => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Binds 127.0.0.1 on a free port and serves `app` there, drained by `watch`.
async fn start(watch: &Watch, app: App) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = GracefulAccept::new(listener, watch.clone());
    (addr, tokio::spawn(serve(listener, watch.clone(), app)))
}

/// A client socket that says when the first request has been flushed to it.
struct Sent {
    /// The connection.
    stream: TcpStream,
    /// Whether any byte has been written.
    wrote: bool,
    /// Told at the first flush after a write.
    flushed: Option<oneshot::Sender<()>>,
}

impl AsyncRead for Sent {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sent {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.stream).poll_write(cx, buf))?;
        self.wrote |= written > 0;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
        if self.wrote {
            if let Some(flushed) = self.flushed.take() {
                let _ = flushed.send(());
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Connects to `addr` with a hyper HTTP/1 client and sends `GET path`; once
/// the request is written to the socket, returns its response to come.
async fn send(
    addr: SocketAddr,
    path: &str,
) -> impl Future<Output = hyper::Result<Response<Incoming>>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (flushed, sent) = oneshot::channel();
    let io = Sent {
        stream,
        wrote: false,
        flushed: Some(flushed),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request);
    within("the request to be written", sent).await.unwrap();
    async move {
        let _sender = sender;
        response.await
    }
}

/// Reads `response`'s whole body as text.
async fn text(response: Response<Incoming>) -> String {
    let body = within("the body", response.into_body().collect()).await;
    String::from_utf8(body.unwrap().to_bytes().to_vec()).unwrap()
}

/// A request in flight when the drain starts is answered, with
/// `Connection: close`, and the drain then ends clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_flight_is_answered() {
    let watch = Watch::new();
    let app = App::default();
    let (addr, server) = start(&watch, app.clone()).await;
    let response = send(addr, "/hold").await;
    within("the handler to start", app.entered.notified()).await;

    watch.trigger();
    within("the shutdown signal", watch.shutdown_signal()).await;
    assert_eq!(watch.requests(), 1);
    assert!(watch.report().is_none(), "{:?}", watch.report());
    app.release.notify_one();

    let response = within("the response", response).await.expect("answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::CONNECTION], "close");
    assert_eq!(text(response).await, "released");
    within("the accept loop to return", server).await.unwrap();
    let report = within("the drain", watch.drained()).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.requests_completed, 1);
    assert_eq!(report.requests_aborted, 0);
}

/// Connections that wait in the kernel's accept queue at the trigger, each
/// with its request written, are all accepted and answered, none reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_connections_are_all_answered() {
    const QUEUED: usize = 32;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let watch = Watch::new();
    let listener = GracefulAccept::new(listener, watch.clone());
    // Nothing accepts yet: the kernel completes each handshake into the queue.
    let mut responses = Vec::new();
    for _ in 0..QUEUED {
        responses.push(send(addr, "/").await);
    }

    watch.trigger();
    let server = tokio::spawn(serve(listener, watch.clone(), App::default()));
    for (i, response) in responses.into_iter().enumerate() {
        let response = within("a queued response", response).await;
        let response = response.unwrap_or_else(|e| panic!("queued connection {i}: {e:?}"));
        assert_eq!(response.status(), 200, "queued connection {i}");
        assert_eq!(text(response).await, "hello");
    }
    within("the accept loop to return", server).await.unwrap();
    let report = within("the drain", watch.drained()).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.accepted_from_queue, QUEUED, "{report}");
    assert_eq!(report.requests_completed, QUEUED, "{report}");
}

/// A streaming response keeps `drained()` pending past the shutdown signal
/// until its body ends; then the drain ends clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_response_holds_the_drain() {
    let watch = Watch::new();
    let (more, chunks) = mpsc::channel(1);
    let app = App {
        chunks: Arc::new(Mutex::new(Some(chunks))),
        ..App::default()
    };
    let (addr, server) = start(&watch, app).await;
    let response = within("the response head", send(addr, "/stream").await).await;
    let mut body = response.expect("answered").into_body();
    let first = within("the first chunk", body.frame()).await.unwrap();
    assert_eq!(first.unwrap().into_data().unwrap(), "first");

    let drained = watch.drained();
    tokio::pin!(drained);
    watch.trigger();
    within("the shutdown signal", watch.shutdown_signal()).await;
    assert!(
        drained.as_mut().now_or_never().is_none(),
        "drained mid-stream"
    );
    more.send("more").await.unwrap();
    let next = within("a chunk after the trigger", body.frame())
        .await
        .unwrap();
    assert_eq!(next.unwrap().into_data().unwrap(), "more");
    assert!(
        drained.as_mut().now_or_never().is_none(),
        "drained mid-stream"
    );

    drop(more);
    assert!(within("the end of the body", body.frame()).await.is_none());
    let report = within("the drain", drained).await;
    assert!(report.is_clean(), "{report}");
    within("the accept loop to return", server).await.unwrap();
}
