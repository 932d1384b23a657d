//! How long a drain takes: the time from `watch.trigger()` to
//! `axum::serve(GracefulAccept, app).with_graceful_shutdown(watch.shutdown_signal())`
//! returning, timed by criterion (`iter_custom`, setup untimed):
//! `cargo bench -p tower-drain-measure --bench drain_timing`.
//!
//! *N queued*: N clients connect and send `GET /` to a listener nobody
//! accepts on; the watch is triggered, then `serve` starts, and every client
//! must get its `200 OK`. *1000 idle*: `serve` runs, 1000 keep-alive clients
//! get one answer each and stay connected, then the watch is triggered. The
//! server and the clients share one `current_thread` runtime; the clients do
//! nothing while the drain is timed.

use std::{
    future::IntoFuture,
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{routing::get, Router};
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};
use tower_drain::{GracefulAccept, Watch};

/// The bound on any single wait: reached only when something is broken.
const PATIENCE: Duration = Duration::from_secs(30);
/// A keep-alive `GET /`.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// What waits on the server when the drain is triggered.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// Connections in the accept queue, each with its request sent.
    Queued(usize),
    /// Keep-alive connections that have had one answer.
    Idle(usize),
}

impl Scenario {
    /// The benchmark's name.
    fn name(self) -> String {
        match self {
            Scenario::Queued(n) => format!("{n} queued"),
            Scenario::Idle(n) => format!("{n} idle keep-alive"),
        }
    }

    /// Sets the scenario up, triggers the drain and returns the time until
    /// `serve` returned.
    async fn trial(self) -> Duration {
        let listener = bind().expect("a listener on 127.0.0.1");
        let addr = listener.local_addr().expect("its address");
        let watch = Watch::new();
        let app = Router::new().route("/", get(|| async { "hello" }));
        let serve = axum::serve(GracefulAccept::new(listener, watch.clone()), app)
            .with_graceful_shutdown(watch.shutdown_signal())
            .into_future();
        match self {
            Scenario::Queued(n) => {
                let mut clients = Vec::with_capacity(n);
                for _ in 0..n {
                    clients.push(send(addr).await);
                }
                let triggered = Instant::now();
                watch.trigger();
                within(serve).await.expect("serve");
                let elapsed = triggered.elapsed();
                for mut client in clients {
                    let mut response = Vec::new();
                    within(client.read_to_end(&mut response))
                        .await
                        .expect("the answer");
                    assert!(
                        response.starts_with(b"HTTP/1.1 200 OK"),
                        "a queued client unanswered"
                    );
                }
                elapsed
            }
            Scenario::Idle(n) => {
                let server = tokio::spawn(serve);
                let mut clients = Vec::with_capacity(n);
                for _ in 0..n {
                    let mut client = send(addr).await;
                    let mut response = Vec::new();
                    while !response.ends_with(b"hello") {
                        let read = within(client.read_buf(&mut response)).await;
                        assert!(read.expect("an answer") > 0, "closed unanswered");
                    }
                    clients.push(client);
                }
                let triggered = Instant::now();
                watch.trigger();
                within(async { server.await.map_err(io::Error::other)? })
                    .await
                    .expect("serve");
                triggered.elapsed()
            }
        }
    }
}

/// Binds 127.0.0.1 on a free port with a backlog deep enough for every
/// queued connection.
fn bind() -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.listen(4096)
}

/// A connection to `addr` that has sent [`REQUEST`].
async fn send(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("a connection");
    stream.write_all(REQUEST).await.expect("the request sent");
    stream
}

/// Awaits `future`, failing with `TimedOut` after [`PATIENCE`].
async fn within<T>(future: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(PATIENCE, future)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))?
}

/// Times the drain in every scenario.
fn drain_timing(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("trigger to serve returned");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for scenario in [
        Scenario::Queued(0),
        Scenario::Queued(100),
        Scenario::Queued(1000),
        Scenario::Idle(1000),
    ] {
        group.bench_function(scenario.name(), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| runtime.block_on(scenario.trial())).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, drain_timing);
criterion_main!(benches);
