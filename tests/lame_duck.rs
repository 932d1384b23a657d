//! The lame duck period and readiness over real sockets: the reference
//! server's `/healthz` turns 503 at the signal while everything else is
//! still served, and a load balancer that stops routing only after a lag
//! loses nothing.

mod common;

use std::time::Duration;

use common::{process::*, *};
use tokio::{io::AsyncReadExt, time::Instant};
use tower_drain::Watch;

/// `GET path` on a new connection, the raw response as text.
async fn get_raw(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = connect_and_send(addr, &closing_request(path))
        .await
        .unwrap();
    let mut response = Vec::new();
    within("the response", stream.read_to_end(&mut response))
        .await
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// `--lame-duck`: readiness turns 503 (with `Retry-After`) as soon as the
/// signal is handled, `GET /` is still served on new connections with
/// `Connection: close`, then the server drains and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_at_the_signal_while_the_lame_duck_serves() {
    let mut server = Process::start("", "--lame-duck 3").await;
    let ready = get_raw(server.addr, "/healthz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    server.signal("TERM");
    server.wait_for_log("lame duck period started").await;
    let not_ready = get_raw(server.addr, "/healthz").await;
    assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
    assert!(not_ready.contains("retry-after: "), "{not_ready}");
    for _ in 0..10 {
        let outcome = one_request(server.addr, "/").await;
        assert_eq!(
            outcome,
            Outcome::Response {
                status: 200,
                connection_close: true
            }
        );
    }

    server
        .wait_for_log("lame duck period over; drain started")
        .await;
    // The report's durations count from the signal, lame duck included.
    let stopped = server.wait_for_log("stopped").await;
    assert!(stopped.contains("(lame duck 3."), "{stopped}");
    // At least the 3 s lame duck (a loaded machine may take longer).
    let total = stopped.split("shutdown drained in ").nth(1).unwrap();
    let seconds: f64 = total.split('s').next().unwrap().parse().unwrap();
    assert!(seconds >= 3.0, "{stopped}");
    assert_eq!(server.exit().await.code(), Some(0));
}

/// A lame duck period that leaves no time to drain is bad input: exit 2.
#[tokio::test]
async fn lame_duck_as_long_as_the_grace_exits_two() {
    let (status, stderr) = run(&["--lame-duck", "30", "--grace", "30"]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("shorter than the grace"), "{stderr}");
}

/// A load balancer that polls readiness every 50 ms and goes on routing new
/// connections for a while after it first sees 503 loses no request when
/// the lame duck period outlasts its lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_that_stops_routing_late_loses_nothing() {
    const POLL: Duration = Duration::from_millis(50);
    const LAG: Duration = Duration::from_millis(500);
    let watch = Watch::builder()
        .lame_duck(Duration::from_secs(5))
        .build()
        .unwrap();
    let server = Server::start(bind(localhost(), false), watch.clone());

    let mut served = 0;
    let mut served_while_unhealthy = 0;
    let mut unhealthy_since = None;
    let mut next_poll = Instant::now();
    loop {
        if Instant::now() >= next_poll {
            next_poll += POLL;
            let health = one_request(server.addr, "/healthz").await;
            if unhealthy_since.is_none() && !health.is_ok() {
                unhealthy_since = Some(Instant::now());
            }
        }
        if unhealthy_since.is_some_and(|since| since.elapsed() >= LAG) {
            break;
        }
        let outcome = one_request(server.addr, "/").await;
        assert!(outcome.is_ok(), "request {served}: {outcome:?}");
        served += 1;
        if unhealthy_since.is_some() {
            served_while_unhealthy += 1;
        }
        if served == 20 {
            watch.trigger();
        }
    }
    assert!(served_while_unhealthy > 0);

    let report = server.stopped().await;
    assert!(report.is_clean(), "{report}");
}

/// A drain with an `SO_REUSEPORT` sibling serving the port is a restart:
/// the service lives on in the sibling, so the lame duck period is skipped
/// and readiness stays healthy. The sibling, once alone, drains as a
/// shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_sibling_makes_the_drain_a_restart() {
    use tower_drain::{restart::Listeners, DrainKind, Phase};

    let lame_duck = || {
        Watch::builder()
            .lame_duck(Duration::from_secs(100))
            .grace(Duration::from_secs(200))
            .build()
            .unwrap()
    };
    let watch = lame_duck();
    let builder = Listeners::builder()
        .tcp("http", localhost())
        .reuse_port(true);
    let server = serve_listeners(builder, &watch).await;
    let sibling = lame_duck();
    let builder = Listeners::builder()
        .tcp("http", server.addr)
        .reuse_port(true);
    let next = serve_listeners(builder, &sibling).await;

    watch.trigger();
    assert_eq!(watch.phase(), Phase::Draining);
    assert!(watch.is_ready());
    let report = server.stopped().await;
    assert_eq!(report.kind, DrainKind::Restart, "{report}");
    assert!(one_request(next.addr, "/").await.is_ok());

    sibling.trigger();
    assert_eq!(sibling.phase(), Phase::LameDuck);
    assert!(!sibling.is_ready());
    sibling.force();
    let report = next.stopped().await;
    assert_eq!(report.kind, DrainKind::Shutdown, "{report}");
}
