//! The handoff between two `Listeners` in one process: a successor that
//! stays silent is timed out and the running server keeps serving; the
//! takeover that follows hands the socket over.

mod common;

use std::time::Duration;

use common::*;
use futures_util::FutureExt;
use tokio::io::AsyncReadExt;
use tower_drain::{
    restart::{Listeners, Origin},
    Watch,
};

/// A successor that connects and never says it is ready is given up on
/// after the handoff timeout; the server never stopped serving, and the
/// next successor takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_successor_times_out_and_the_server_keeps_serving() {
    let path = handoff_path("silent-successor");
    let watch = Watch::new();
    let mut listeners = Listeners::builder()
        .tcp("http", localhost())
        .handoff(&path)
        .handoff_timeout(Duration::from_millis(200))
        .open(&watch)
        .await
        .unwrap();
    assert_eq!(listeners.origin(), Origin::Bound);
    let server = Server::serve(listeners.tcp("http").unwrap());

    let mut silent = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut buf = Vec::new();
    // The server sends its message, waits for `ready`, then hangs up.
    within("the server to give up", silent.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        buf.starts_with(b"tower-drain handoff 1 1\nhttp\n"),
        "{buf:?}"
    );
    assert!(!watch.is_draining());
    assert!(one_request(server.addr, "/").await.is_ok());

    let report = take_over_and_stop(server, &path).await;
    assert_eq!(report.accepted_from_queue, 0);
}

/// A socket inherited or handed over is closed without draining at the
/// trigger; one this process alone holds is drained. `shared()` marks it.
#[tokio::test]
async fn shared_listener_is_not_drained() {
    let watch = Watch::new();
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The test holds the socket too, as a service manager would.
    let held = socket2::SockRef::from(&listener).try_clone().unwrap();
    let listener = tower_drain::GracefulAccept::new(listener, watch.clone()).shared();
    let server = Server::serve(listener);
    let _queued = connect_and_send(addr, &request("/")).await.unwrap();
    watch.trigger();
    let report = server.stopped().await;
    assert_eq!(report.listeners_shared, 1);
    assert_eq!(report.accepted_from_queue, 0);
    // The queued connection still waits in the socket the test holds.
    let held = std::net::TcpListener::from(held);
    held.set_nonblocking(false).unwrap();
    let (mut conn, _) = held.accept().unwrap();
    let mut head = [0; 3];
    std::io::Read::read_exact(&mut conn, &mut head).unwrap();
    assert_eq!(&head, b"GET");
}

/// A predecessor whose drain started during the handoff lowered the backlog
/// of the socket it sent (to 0, as the drain does); the successor sets it
/// back once it has taken over, so that clients queue while it is busy
/// instead of having their SYNs dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successor_restores_a_lowered_backlog() {
    let path = handoff_path("lowered-backlog");
    let http = std::net::TcpListener::bind(localhost()).unwrap();
    let addr = http.local_addr().unwrap();
    socket2::SockRef::from(&http).listen(0).unwrap();
    let predecessor = tokio::task::spawn_blocking({
        let handoff = std::os::unix::net::UnixListener::bind(&path).unwrap();
        move || fake_predecessor(&handoff, &http)
    });

    let watch = Watch::new();
    let mut listeners = Listeners::builder()
        .tcp("http", addr)
        .handoff(&path)
        .open(&watch)
        .await
        .unwrap();
    assert_eq!(listeners.origin(), Origin::Predecessor);
    let mut listener = listeners.tcp("http").unwrap();
    // Polled once, so that it says ready; then nobody accepts.
    let accepted = axum::serve::Listener::accept(&mut listener).now_or_never();
    assert!(accepted.is_none());
    within("the handoff", predecessor).await.unwrap().unwrap();
    // The successor serves the path once it has taken over.
    let mut next = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut header = [0; 23];
    within("the handoff message", next.read_exact(&mut header))
        .await
        .unwrap();
    assert_eq!(&header, b"tower-drain handoff 1 1");

    // With a backlog of 0 the second handshake would never complete.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(within("a handshake", tokio::net::TcpStream::connect(addr)).await);
    }
    assert!(clients.iter().all(Result::is_ok), "{clients:?}");
    watch.trigger();
}

/// Sends `http` over the handoff path as a running server would, waits for
/// `ready` and answers `done`.
fn fake_predecessor(
    handoff: &std::os::unix::net::UnixListener,
    http: &std::net::TcpListener,
) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::{
        io::{IoSlice, Read, Write},
        os::fd::AsRawFd,
    };
    let (mut conn, _) = handoff.accept()?;
    let fds = [http.as_raw_fd(), handoff.as_raw_fd()];
    let text = b"tower-drain handoff 1 1\nhttp\n";
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(text)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    let mut ready = [0; 6];
    conn.read_exact(&mut ready)?;
    assert_eq!(&ready, b"ready\n");
    conn.write_all(b"done\n")
}

/// A handoff is a restart: the service lives on in the successor, so the
/// old server's drain skips its lame duck period and its readiness stays
/// healthy (a health check reaching it through a keep-alive connection must
/// not take the shared socket out of rotation); the report says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_drain_is_a_restart_that_stays_ready() {
    use hyper::header::CONNECTION;

    let path = handoff_path("restart-stays-ready");
    let watch = Watch::builder()
        .lame_duck(Duration::from_secs(100))
        .keep_alive_idle(Duration::from_secs(100))
        .request_head_grace(Duration::from_secs(100))
        .grace(Duration::from_secs(200))
        .build()
        .unwrap();
    let builder = Listeners::builder().tcp("http", localhost()).handoff(&path);
    let server = serve_listeners(builder, &watch).await;
    let (mut sender, conn) = http1_client(server.addr).await;
    let before = sender.send_request(get_request("/healthz")).await.unwrap();
    assert_eq!(before.status(), 200);

    let successor = Watch::new();
    let builder = Listeners::builder().tcp("http", server.addr).handoff(&path);
    let next = serve_listeners(builder, &successor).await;
    within("the old server to drain", watch.draining()).await;
    assert!(watch.is_ready());

    // The connection takes a request again once it has finished the last.
    within("the connection to be ready", sender.ready())
        .await
        .unwrap();
    let during = sender.send_request(get_request("/healthz")).await.unwrap();
    assert_eq!(during.status(), 200);
    assert_eq!(during.headers().get(CONNECTION).unwrap(), "close");
    within("the old connection to close", conn)
        .await
        .unwrap()
        .unwrap();
    let report = server.stopped().await;
    assert_eq!(report.kind, tower_drain::DrainKind::Restart, "{report}");
    assert!(report.is_clean(), "{report}");
    assert!(
        report.to_string().starts_with("restart drained in"),
        "{report}"
    );
    successor.trigger();
    let report = next.stopped().await;
    assert_eq!(report.kind, tower_drain::DrainKind::Shutdown, "{report}");
}

/// Taking a listener twice says so, rather than that there is none.
#[tokio::test]
async fn taking_a_listener_twice_says_it_was_taken() {
    let watch = Watch::new();
    let mut listeners = Listeners::builder()
        .tcp("http", localhost())
        .open(&watch)
        .await
        .unwrap();
    let _taken = listeners.tcp("http").unwrap();
    let again = listeners.tcp("http").unwrap_err();
    assert_eq!(again.to_string(), "listener \"http\" was already taken");
    let none = listeners.tcp("api").unwrap_err();
    assert_eq!(none.to_string(), "no listener named \"api\"");
}

/// A successor takes only the sockets it asks for, by name and on the
/// address it is configured with (port 0 takes any): one asking for another
/// name, or the same name on another port, fails with `InvalidInput` before
/// it serves anything, and the running server keeps serving until a
/// successor configured as it is takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successor_takes_only_the_names_and_addresses_it_asks_for() {
    let path = handoff_path("names-and-addresses");
    let watch = Watch::new();
    let builder = Listeners::builder().tcp("http", localhost()).handoff(&path);
    let server = serve_listeners(builder, &watch).await;
    let elsewhere = std::net::TcpListener::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap();

    for (name, addr, why) in [
        ("api", server.addr, "no received socket named \"api\""),
        (
            "http",
            elsewhere,
            &*format!(
                "listener \"http\": the predecessor's socket is on {}, not on {elsewhere}",
                server.addr
            ),
        ),
    ] {
        let error = Listeners::builder()
            .tcp(name, addr)
            .handoff(&path)
            .open(&Watch::new())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
        assert!(error.to_string().contains(why), "{error}");
        assert!(!watch.is_draining());
        assert!(one_request(server.addr, "/").await.is_ok());
    }
    take_over_and_stop(server, &path).await;
}
