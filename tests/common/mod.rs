//! Shared pieces of the end-to-end tests: a test app, a server on a real
//! loopback socket, and raw HTTP/1.1 clients that classify every outcome.

#![allow(dead_code, unreachable_pub)]

pub mod generations;
pub mod load;
pub mod process;

use std::{future::IntoFuture, io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{extract::State, routing::get, Router};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{Notify, Semaphore},
    task::JoinHandle,
};
use tower_drain::{DrainLayer, DrainReport, GracefulAccept, Readiness, Watch};

/// The outer bound on any wait in these tests: generous, so that a loaded
/// machine never fails them, and only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Awaits `future`, failing the test if it takes longer than [`PATIENCE`]
/// (of the paused clock, in tests that pause it).
pub async fn within<F: IntoFuture>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Lets a test hold requests inside the handler of `/hold`.
#[derive(Clone)]
pub struct Gate {
    /// One permit per request that entered `/hold`.
    pub entered: Arc<Semaphore>,
    release: Arc<Notify>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            entered: Arc::new(Semaphore::new(0)),
            release: Arc::default(),
        }
    }
}

impl Gate {
    pub async fn wait_entered(&self, requests: u32) {
        within(
            "requests to enter the handler",
            self.entered.acquire_many(requests),
        )
        .await
        .unwrap()
        .forget();
    }

    pub fn release_all(&self) {
        self.release.notify_waiters();
    }
}

#[derive(Clone)]
struct AppState {
    watch: Watch,
    gate: Gate,
}

/// `/` answers `hello`; `/hold` waits for [`Gate::release_all`]; `/hang`
/// never answers; `/healthz` is 503 from the trigger on. `/hold` and `/hang` add a
/// permit to [`Gate::entered`] when they start.
pub fn app(watch: Watch, gate: Gate) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/hold",
            get(|State(state): State<AppState>| async move {
                let released = state.gate.release.notified();
                state.gate.entered.add_permits(1);
                released.await;
                "released"
            }),
        )
        .route(
            "/hang",
            get(|State(state): State<AppState>| async move {
                state.gate.entered.add_permits(1);
                std::future::pending::<&'static str>().await
            }),
        )
        .route_service("/healthz", Readiness::new(watch.observer()))
        .with_state(AppState {
            watch: watch.clone(),
            gate,
        })
        .layer(DrainLayer::new(watch))
}

/// Binds 127.0.0.1 on a free port, optionally with `SO_REUSEPORT`.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.set_reuseport(reuse_port).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(1024).unwrap()
}

/// A handoff path in a fresh directory of its own for the test `test`.
pub fn handoff_path(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tower-drain-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("handoff.sock")
}

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A running test server.
pub struct Server {
    pub addr: SocketAddr,
    pub watch: Watch,
    pub gate: Gate,
    pub serve: JoinHandle<io::Result<()>>,
}

impl Server {
    /// Serves [`app`] on `listener` with the drain hooked up.
    pub fn start(listener: TcpListener, watch: Watch) -> Self {
        Self::serve(GracefulAccept::new(listener, watch))
    }

    /// Serves [`app`] on an already wrapped listener.
    pub fn serve(listener: GracefulAccept<TcpListener>) -> Self {
        let addr = listener.local_addr().unwrap();
        let watch = listener.watch().clone();
        Self::spawn(listener, addr, watch)
    }

    /// Serves [`app`] on any listener that reports to `watch`.
    pub fn spawn<L>(listener: L, addr: SocketAddr, watch: Watch) -> Self
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let gate = Gate::default();
        let app = app(watch.clone(), gate.clone());
        let signal = watch.shutdown_signal();
        let serve = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
        });
        Self {
            addr,
            watch,
            gate,
            serve,
        }
    }

    /// Waits for `serve` to return, then for the drain report.
    pub async fn stopped(self) -> DrainReport {
        within("serve to return", self.serve)
            .await
            .unwrap()
            .unwrap();
        within("the drain report", self.watch.drained()).await
    }
}

/// Reads from `stream` until what it read ends with `end`; fails if the
/// server closes the connection first.
pub async fn read_until(stream: &mut TcpStream, end: &[u8]) -> String {
    let mut read = Vec::new();
    while !read.ends_with(end) {
        let mut buf = [0; 1024];
        let n = within("an answer", stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&read));
        read.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(read).unwrap()
}

/// Opens what `builder` configures for `watch` and serves [`app`] on its
/// `"http"` listener.
pub async fn serve_listeners(
    builder: tower_drain::restart::ListenersBuilder,
    watch: &Watch,
) -> Server {
    let mut listeners = builder.open(watch).await.unwrap();
    Server::serve(listeners.tcp("http").unwrap())
}

/// A successor in this process takes `server`'s socket over through the
/// handoff `path` and serves a request; then it drains too. Returns the old
/// server's report, which must count the socket left to the successor.
pub async fn take_over_and_stop(server: Server, path: &std::path::Path) -> DrainReport {
    use tower_drain::restart::{Listeners, Origin};

    let successor = Watch::new();
    let mut taken = Listeners::builder()
        .tcp("http", server.addr)
        .handoff(path)
        .open(&successor)
        .await
        .unwrap();
    assert_eq!(taken.origin(), Origin::Predecessor);
    let next = Server::serve(taken.tcp("http").unwrap());
    let report = server.stopped().await;
    assert_eq!(report.listeners_shared, 1, "{report}");
    assert!(one_request(next.addr, "/").await.is_ok());
    successor.trigger();
    next.stopped().await;
    report
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A complete response with this status and `Connection` header.
    Response { status: u16, connection_close: bool },
    /// The connection attempt was refused: safe to retry.
    Refused,
    /// The connection was reset: the client cannot know what happened.
    Reset,
    /// The server closed the connection without answering.
    Unanswered,
    /// Anything else.
    Other(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Response { status: 200, .. })
    }
}

/// A keep-alive request: a `Connection: close` in the answer comes from the server.
pub fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

/// Reads one response from `stream` (until the server closes it).
pub async fn read_response(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Outcome {
    let mut buf = Vec::new();
    match stream.read_to_end(&mut buf).await {
        Ok(_) => parse_response(&buf),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Outcome::Reset,
        Err(e) => Outcome::Other(e.to_string()),
    }
}

fn parse_response(buf: &[u8]) -> Outcome {
    if buf.is_empty() {
        return Outcome::Unanswered;
    }
    let text = String::from_utf8_lossy(buf);
    let Some((head, _)) = text.split_once("\r\n\r\n") else {
        return Outcome::Other(format!("incomplete response {text:?}"));
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let connection_close = head
        .lines()
        .any(|line| line.eq_ignore_ascii_case("connection: close"));
    Outcome::Response {
        status,
        connection_close,
    }
}

/// Connects and sends `request` (from [`request`] or [`closing_request`]),
/// without reading. Reading a keep-alive request's answer to the end only
/// ends once the server closes the connection: when it drains.
pub async fn connect_and_send(addr: SocketAddr, request: &[u8]) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    Ok(stream)
}

/// A request that asks the server to close the connection after answering.
pub fn closing_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// One request on a fresh connection that asks to be closed after it, every
/// failure classified.
pub async fn one_request(addr: SocketAddr, path: &str) -> Outcome {
    match connect_and_send(addr, &closing_request(path)).await {
        Ok(mut stream) => read_response(&mut stream).await,
        Err(e) => match e.kind() {
            io::ErrorKind::ConnectionRefused => Outcome::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Outcome::Reset,
            _ => Outcome::Other(e.to_string()),
        },
    }
}

/// A hyper HTTP/1.1 client connection: the sender, and the task driving the
/// connection, which ends when either side closes it.
pub async fn http1_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    (sender, tokio::spawn(conn))
}

/// `GET path` on an HTTP/1.1 client connection.
pub fn get_request(path: &str) -> hyper::Request<http_body_util::Empty<bytes::Bytes>> {
    hyper::Request::get(path)
        .header("host", "test")
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// Over an HTTP/2 connection to `server`: a stream in flight at the trigger
/// completes (without a `Connection` header), then GOAWAY ends the
/// connection cleanly and it takes no new stream; the drain is not forced.
pub async fn h2_stream_in_flight_completes_with_goaway<I>(io: I, server: Server)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let in_flight = tokio::spawn(sender.send_request(get_request("/hold")));
    server.gate.wait_entered(1).await;

    server.watch.trigger();
    within("listeners to close", server.watch.listeners_closed()).await;
    server.gate.release_all();
    let response = within("the in-flight stream", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("connection").is_none(),
        "no Connection header in HTTP/2"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"released");

    // GOAWAY: the connection ends cleanly and takes no new stream.
    within("the connection to end", conn)
        .await
        .unwrap()
        .unwrap();
    assert!(sender.send_request(get_request("/")).await.is_err());
    let report = server.stopped().await;
    assert_eq!(report.forced, None);
    assert_eq!(report.requests_completed, 1);
}
