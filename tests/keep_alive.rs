//! Keep-alive connections at a drain: a client sending requests back to back
//! on one HTTP/1.1 connection is told `Connection: close` on a response and
//! never sends a request that the server then leaves unanswered, in the
//! default setup (`GracefulAccept` alone, no per-request layer).

mod common;

use std::{net::SocketAddr, time::Duration};

use axum::{routing::get, Router};
use common::{bind, get_request, localhost, within};
use hyper::{client::conn::http1, header::CONNECTION};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::Semaphore, task::JoinHandle};
use tower_drain::{DrainReport, GracefulAccept, Watch};

/// The README's setup: `GracefulAccept` alone, no per-request layer.
struct Server {
    addr: SocketAddr,
    watch: Watch,
    serve: JoinHandle<std::io::Result<()>>,
}

impl Server {
    fn start(watch: Watch) -> Self {
        let listener = GracefulAccept::new(bind(localhost(), false), watch.clone());
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "hello" }));
        let signal = watch.shutdown_signal();
        let serve = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
        });
        Self { addr, watch, serve }
    }

    async fn stopped(self) -> DrainReport {
        within("serve to return", self.serve)
            .await
            .unwrap()
            .unwrap();
        within("the drain report", self.watch.drained()).await
    }
}

/// What one keep-alive client saw.
#[derive(Debug, Default)]
struct Seen {
    answered: usize,
    /// Requests sent that the server closed the connection on unanswered.
    lost: Vec<String>,
    /// Whether a response said `Connection: close`.
    told_to_close: bool,
}

/// Sends `GET /` back to back on one connection until a response says
/// `Connection: close` or the connection closes; adds a permit to `sent`
/// after each answer.
async fn keep_alive_client(addr: SocketAddr, sent: &Semaphore) -> Seen {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut seen = Seen::default();
    while !seen.told_to_close && sender.ready().await.is_ok() {
        match sender.try_send_request(get_request("/")).await {
            Ok(response) => {
                seen.answered += 1;
                seen.told_to_close = response
                    .headers()
                    .get(CONNECTION)
                    .is_some_and(|value| value == "close");
                sent.add_permits(1);
            }
            // Never written: the connection had closed first. Safe to retry.
            Err(error) if error.message().is_some() => break,
            Err(error) => {
                seen.lost.push(error.into_error().to_string());
                break;
            }
        }
    }
    drop(sender);
    within("the client connection to end", conn)
        .await
        .unwrap()
        .ok();
    seen
}

/// Clients sending back to back on keep-alive connections through a
/// trigger: every request sent is answered, each connection is retired by
/// a response that says `Connection: close`, and the report counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_keep_alive_clients_lose_nothing() {
    const CLIENTS: usize = 8;
    for round in 0..5 {
        let server = Server::start(Watch::new());
        let sent = std::sync::Arc::new(Semaphore::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let sent = sent.clone();
                let addr = server.addr;
                tokio::spawn(async move { keep_alive_client(addr, &sent).await })
            })
            .collect();
        // Every client is mid-stream: 20 answers each on average.
        within(
            "the clients to get going",
            sent.acquire_many(20 * CLIENTS as u32),
        )
        .await
        .unwrap()
        .forget();
        server.watch.trigger();
        let mut answered = 0;
        for client in clients {
            let seen = within("a client to finish", client).await.unwrap();
            assert_eq!(seen.lost, Vec::<String>::new(), "round {round}: {seen:?}");
            assert!(seen.told_to_close, "round {round}: {seen:?}");
            answered += seen.answered;
        }
        let report = server.stopped().await;
        assert!(report.is_clean(), "round {round}: {report}");
        assert_eq!(
            report.connections_retired, CLIENTS,
            "round {round}: {report}"
        );
        assert!(answered >= 20 * CLIENTS, "round {round}: {answered}");
    }
}

/// A keep-alive connection left idle is closed by the drain, not held to
/// the deadline, and counted as closed between requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed() {
    let server = Server::start(Watch::new());
    let (mut sender, conn) = common::http1_client(server.addr).await;
    let response = sender.send_request(get_request("/")).await.unwrap();
    assert!(response.headers().get(CONNECTION).is_none());
    server.watch.trigger();
    within("the server to close the idle connection", conn)
        .await
        .unwrap()
        .unwrap();
    let report = server.stopped().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.connections_closed_between_requests, 1, "{report}");
    assert_eq!(report.connections_retired, 0, "{report}");
}

/// A keep-alive connection that was just used may be about to carry the
/// next request: the drain does not let the server close it until it has
/// been idle for `keep_alive_idle`, and a request sent meanwhile is
/// answered with `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recently_used_connection_holds_the_shutdown_signal() {
    let watch = Watch::builder()
        .keep_alive_idle(Duration::from_secs(60))
        .request_head_grace(Duration::from_secs(90))
        .grace(Duration::from_secs(120))
        .build()
        .unwrap();
    let server = Server::start(watch);
    let (mut sender, conn) = common::http1_client(server.addr).await;
    sender.send_request(get_request("/")).await.unwrap();
    server.watch.trigger();
    within("the listener to close", server.watch.listeners_closed()).await;

    let mut signal = tokio_test::task::spawn(server.watch.shutdown_signal());
    tokio_test::assert_pending!(signal.poll());

    // The connection takes a request again once it has finished the last.
    within("the connection to be ready", sender.ready())
        .await
        .unwrap();
    let response = sender.send_request(get_request("/")).await.unwrap();
    assert_eq!(response.headers().get(CONNECTION).unwrap(), "close");
    within("the retired connection to close", conn)
        .await
        .unwrap()
        .unwrap();
    within("the shutdown signal", signal).await;
    let report = server.stopped().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.connections_retired, 1, "{report}");
}

/// A keep-alive connection whose next request head has started to arrive
/// is never closed before it is whole: the shutdown signal waits for it,
/// and the request is answered with `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_request_head_in_progress_holds_the_shutdown_signal() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let watch = Watch::builder()
        .keep_alive_idle(Duration::ZERO)
        .build()
        .unwrap();
    let server = Server::start(watch);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // One write: once the first answer is back, the server has read the
    // start of the second head with the first request.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\nGET / HT")
        .await
        .unwrap();
    let first = common::read_until(&mut stream, b"hello").await;
    assert!(!first.contains("connection: close"), "{first}");
    server.watch.trigger();
    within("the listener to close", server.watch.listeners_closed()).await;

    let mut signal = tokio_test::task::spawn(server.watch.shutdown_signal());
    tokio_test::assert_pending!(signal.poll());

    stream
        .write_all(b"TP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut second = String::new();
    within("the second answer", stream.read_to_string(&mut second))
        .await
        .unwrap();
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
    assert!(second.contains("connection: close\r\n"), "{second}");
    assert!(second.ends_with("hello"), "{second}");
    within("the shutdown signal", signal).await;
    let report = server.stopped().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.connections_retired, 1, "{report}");
}
