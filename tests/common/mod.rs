//! Shared pieces of the end-to-end tests: a test app, a server on a real
//! loopback socket, and raw HTTP/1.1 clients that classify every outcome.

#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod client;
pub mod generations;
pub mod load;
pub mod outcome;
pub mod process;
pub mod tally;

pub use client::*;
pub use outcome::Outcome;
pub use tally::Tally;

use std::{future::IntoFuture, io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{extract::State, routing::get, Router};
use tokio::{
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

/// The app every measured server serves: `/` answers `hello`.
pub fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
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

/// A listener nobody accepts on yet, and `count` clients queued on it, each
/// with its request (`GET /`, keep-alive) sent; returns once the kernel
/// reports all `count` connections in the listener's accept queue.
pub async fn queued(count: usize) -> (TcpListener, Vec<TcpStream>) {
    let listener = bind(localhost(), false);
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(connect_and_send(addr, &request("/")).await.unwrap());
    }
    wait_queued(addr, count).await;
    (listener, clients)
}

/// Waits until the kernel reports exactly `count` connections in the accept
/// queue of the TCP listener on `addr`. A client's connect returns once the
/// handshake's SYN-ACK arrived; the listener queues the connection when the
/// last ACK does, a moment later.
pub async fn wait_queued(addr: SocketAddr, count: usize) {
    within("the connections to be queued", async {
        // Polled: the kernel tells no one when its queue grows.
        let mut poll = tokio::time::interval(Duration::from_millis(1));
        loop {
            let queued = accept_queue_len(addr);
            assert!(queued <= count, "{queued} queued, more than {count}");
            if queued == count {
                return;
            }
            poll.tick().await;
        }
    })
    .await;
}

/// How many connections wait in the accept queue of the TCP listener on the
/// IPv4 address `addr`, as `/proc/net/tcp` says: a listening socket's
/// `rx_queue` is its accept queue's length.
pub fn accept_queue_len(addr: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = addr else {
        panic!("{addr} is not IPv4")
    };
    // The address as the kernel prints it: its 32 bits in the host's byte
    // order, then the port.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let listening = table.lines().skip(1).find_map(|line| {
        let fields: Vec<_> = line.split_whitespace().collect();
        // fields: sl, local_address, rem_address, st (0A: LISTEN), tx_queue:rx_queue, ...
        (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
            .then(|| fields[4].split_once(':').unwrap().1.to_owned())
    });
    let rx_queue = listening.unwrap_or_else(|| panic!("no listener on {addr} in /proc/net/tcp"));
    usize::from_str_radix(&rx_queue, 16).unwrap()
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

    /// Starts the drain before `listener` accepted anything (so that all
    /// its accept queue is left to the drain), then serves [`app`] on it.
    pub fn drain_then_serve(listener: GracefulAccept<TcpListener>) -> Self {
        listener.watch().trigger();
        Self::serve(listener)
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
