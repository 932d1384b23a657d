//! Keep-alive connections through restarts and shutdowns, with the reference
//! server as real processes, behind real reverse proxies and without one.
//!
//! The race a drain must not lose is a client sending a request on a
//! keep-alive connection just as the server closes it: a proxy that does not
//! retry (nginx with `proxy_next_upstream off`, HAProxy with `retries 0`)
//! answers it with a 502, a direct client sees its request go unanswered. A
//! restart must also not take the service out of a proxy's rotation: HAProxy
//! answers 503 while its health checks (`GET /healthz`) mark the only
//! server down. This file proves that, under continuous keep-alive load:
//!
//! - five handoff restarts behind nginx's keep-alive pool lose no request;
//! - five handoff restarts behind HAProxy (`http-reuse always`, health
//!   checks every 100 ms, down after 2 failures), of a server with a lame
//!   duck period, lose no request and never mark the server down: a
//!   restart keeps readiness healthy and skips the lame duck period;
//! - five restarts on a socket held as systemd holds it, behind nginx, lose
//!   no request;
//! - SIGTERM to a server with busy keep-alive clients and no proxy retires
//!   every connection with a `Connection: close` response and leaves no
//!   request it read unanswered (ten rounds).
//! - scaling down one of two servers behind HAProxy with a lame duck period
//!   loses no request.
//!
//! Every answer through a proxy is a 200, and no client sees an error.

mod common;

use std::{collections::BTreeMap, net::SocketAddr};

use common::{
    generations::{drain_report, Generations},
    load::{Client, Connections, Load, Seen},
    process::Process,
    within, Outcome,
};

#[allow(dead_code, unreachable_pub)]
#[path = "../measure/examples/proxies/mod.rs"]
mod proxies;

use proxies::{Kind, Proxy};

/// Starts a real `kind` in front of `backends` (see [`Proxy::start`]); fails
/// the test, naming the package to install, if it is missing.
async fn proxy(kind: Kind, backends: &[SocketAddr]) -> Proxy {
    within(kind.name(), Proxy::start(kind, backends))
        .await
        .unwrap_or_else(|e| panic!("this test needs a real {}: {e}", kind.name()))
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    /// Responses by status.
    statuses: BTreeMap<u16, usize>,
    /// Every request sent and not answered, failed connection or wrong
    /// body, described.
    errors: Vec<String>,
    /// Connections opened.
    connections: usize,
    /// Responses that said `Connection: close`.
    closing_responses: usize,
    /// Requests hyper gave back unsent: the connection had closed before
    /// they were written, so nobody read them.
    unsent: usize,
}

impl Tally {
    /// What each client of `seen` saw.
    fn of_clients(seen: &Seen) -> Vec<Tally> {
        let tally = |(client, connections): (usize, &Connections)| {
            let mut tally = Tally {
                errors: (connections.errors.iter())
                    .map(|e| format!("connection: {e}"))
                    .collect(),
                connections: connections.opened,
                unsent: connections.unsent,
                ..Tally::default()
            };
            for record in seen.of_client(client) {
                match &record.outcome {
                    Outcome::Response {
                        status,
                        connection_close,
                    } => {
                        *tally.statuses.entry(*status).or_default() += 1;
                        tally.closing_responses += usize::from(*connection_close);
                    }
                    other => tally.errors.push(format!("{other:?}")),
                }
            }
            tally
        };
        seen.clients.iter().enumerate().map(tally).collect()
    }

    /// All of `tallies` together.
    fn total(tallies: impl IntoIterator<Item = Tally>) -> Tally {
        let mut total = Tally::default();
        for tally in tallies {
            for (status, n) in tally.statuses {
                *total.statuses.entry(status).or_default() += n;
            }
            total.errors.extend(tally.errors);
            total.connections += tally.connections;
            total.closing_responses += tally.closing_responses;
            total.unsent += tally.unsent;
        }
        total
    }

    fn requests(&self) -> usize {
        self.statuses.values().sum()
    }

    /// Fails unless there was no error and every response was a 200.
    fn assert_all_served(&self) {
        assert!(
            self.errors.is_empty(),
            "{} errors: {:?}",
            self.errors.len(),
            self.errors
        );
        assert!(
            self.statuses.keys().all(|&status| status == 200),
            "every response must be a 200: {:?}",
            self.statuses
        );
    }
}

/// `clients` keep-alive clients on `addr` (see [`Client::KeepAlive`]),
/// each connected; with `stop_when_closed`, a client stops once its
/// connection ends (the server is going away), instead of opening a new one
/// (a proxy closes client connections now and then).
async fn keep_alive_load(addr: SocketAddr, clients: usize, stop_when_closed: bool) -> Load {
    let builder = Load::builder(addr)
        .clients(clients)
        .client(Client::KeepAlive);
    let builder = if stop_when_closed {
        builder.stop_when_closed()
    } else {
        builder
    };
    builder.start().await
}

/// Stops `load`; what its clients saw, all together.
async fn stop(load: Load) -> Tally {
    Tally::total(Tally::of_clients(&load.stop().await))
}

/// The count before `one` (after a count of 1) or `many` (after any other)
/// in a drain report; 0 if neither is there, as the report leaves out the
/// counts of zero.
fn reported(report: &str, one: &str, many: &str) -> usize {
    let count_before = |what: &str| {
        let (before, _) = report.split_once(&format!(" {what}"))?;
        let count = before
            .split_whitespace()
            .last()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no count before {what:?} in {report:?}"));
        Some(count)
    };
    match (count_before(one), count_before(many)) {
        (Some(1), None) => 1,
        (None, Some(count)) if count > 1 => count,
        (None, None) => 0,
        counts => panic!("{one:?} or {many:?} counted as {counts:?} in {report:?}"),
    }
}

/// Under keep-alive load from 16 clients through `proxy`, restarts `server`
/// five times with `generations`, and returns the last server. Each old
/// server drains as a restart, leaves its socket to its successor, retires
/// keep-alive connections with a response (so the proxy's connections to it
/// were in use when it drained) and exits 0; every request through the
/// proxy is answered 200 and no client sees an error.
async fn five_restarts_behind(
    proxy: &Proxy,
    generations: &Generations,
    mut server: Process,
) -> Process {
    let name = format!("{}, {} restarts", proxy.kind.name(), generations.name());
    let load = keep_alive_load(proxy.addr, 16, false).await;
    load.wait_served(500).await;
    for restart in 1..=5 {
        let (successor, report) = generations.restart(server).await;
        eprintln!("{name}, restart {restart}: {report}");
        let left = reported(
            &report,
            "listener left to another process",
            "listeners left to another process",
        );
        assert_eq!(left, 1, "{report}");
        let retired = reported(
            &report,
            "keep-alive connection retired by a response",
            "keep-alive connections retired by a response",
        );
        assert!(retired > 0, "no connection was retired: {report}");
        server = successor;
        load.wait_served(500).await;
    }

    let tally = stop(load).await;
    eprintln!(
        "{name}: {} requests on {} client connections to the proxy, by status {:?}, {} errors",
        tally.requests(),
        tally.connections,
        tally.statuses,
        tally.errors.len()
    );
    let log = proxy.log();
    let log_head: Vec<_> = log.lines().take(5).collect();
    eprintln!(
        "{name}: {} log lines, the first: {log_head:#?}",
        log.lines().count()
    );
    tally.assert_all_served();
    server
}

/// Stops `proxy` (so that nothing connects any more, its health checks
/// included: a connection arriving as a lone server closes its socket is
/// reset, which makes the drain unclean), then SIGTERMs `server` and waits
/// for it to drain as a shutdown and exit 0.
async fn shut_down(mut server: Process, proxy: Proxy) {
    drop(proxy);
    server.signal("TERM");
    let report = drain_report(&mut server).await;
    assert!(report.starts_with("shutdown drained in"), "{report}");
    assert_eq!(server.exit().await.code(), Some(0), "{report}");
}

/// Five handoff restarts of the reference server behind nginx, whose
/// keep-alive pool holds connections to the old server at each: every
/// request through nginx is answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_behind_nginx_keep_alive_lose_nothing() {
    let (generations, server) = Generations::handoff("proxy-handoff", "").await;
    let nginx = proxy(Kind::Nginx, &[server.addr]).await;
    let server = five_restarts_behind(&nginx, &generations, server).await;
    shut_down(server, nginx).await;
}

/// Five handoff restarts of the reference server, with a lame duck period
/// of 1 s, behind HAProxy that health-checks it every 100 ms: the server is
/// never marked down (HAProxy would answer 503) and no reused connection
/// loses a request (HAProxy would answer 502): every answer is a 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_behind_haproxy_with_health_checks_lose_nothing() {
    let (generations, server) = Generations::handoff("proxy-haproxy", "--lame-duck 1").await;
    let haproxy = proxy(Kind::HAProxy, &[server.addr]).await;
    let server = five_restarts_behind(&haproxy, &generations, server).await;
    shut_down(server, haproxy).await;
}

/// Five restarts of the reference server on a socket held as systemd holds
/// it (each generation inherits it, the old one gets SIGTERM once its
/// successor listens), behind nginx's keep-alive pool: every request
/// through nginx is answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_on_a_held_socket_behind_nginx_lose_nothing() {
    let (generations, server) = Generations::held_socket("").await;
    let nginx = proxy(Kind::Nginx, &[server.addr]).await;
    let mut server = five_restarts_behind(&nginx, &generations, server).await;
    // The socket is still held by the test: even the last drain is a restart.
    server.signal("TERM");
    let report = drain_report(&mut server).await;
    assert!(report.starts_with("restart drained in"), "{report}");
    assert_eq!(server.exit().await.code(), Some(0), "{report}");
}

/// Ten rounds: the reference server, 4 clients each sending `GET /` back to
/// back on a keep-alive connection of its own, SIGTERM. Every client's
/// connection ends with a response that says `Connection: close`; no
/// request the server could have read goes unanswered (hyper gives back
/// the ones the connection closed before); the server exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_busy_keep_alive_clients_loses_nothing() {
    let mut rounds = Vec::new();
    for round in 1..=10 {
        let mut server = Process::start("", "").await;
        let load = keep_alive_load(server.addr, 4, true).await;
        load.wait_served(200).await;
        server.signal("TERM");
        let report = drain_report(&mut server).await;
        let clients = Tally::of_clients(&load.join().await);
        assert_eq!(server.exit().await.code(), Some(0), "{report}");
        assert!(report.starts_with("shutdown drained in"), "{report}");
        for (i, client) in clients.iter().enumerate() {
            assert_eq!(
                (client.connections, client.closing_responses),
                (1, 1),
                "round {round}, client {i}: its connection must end with a \
                 `Connection: close` response; errors {:?}; {report}",
                client.errors
            );
        }
        let tally = Tally::total(clients);
        eprintln!(
            "round {round}: {} requests, {} given back unsent, {} errors; {report}",
            tally.requests(),
            tally.unsent,
            tally.errors.len()
        );
        assert!(tally.errors.is_empty(), "round {round}: {:?}", tally.errors);
        rounds.push(tally);
    }
    let tally = Tally::total(rounds);
    eprintln!(
        "10 rounds: {} requests, by status {:?}, {} closing responses, {} given back unsent, {} errors",
        tally.requests(),
        tally.statuses,
        tally.closing_responses,
        tally.unsent,
        tally.errors.len()
    );
    tally.assert_all_served();
}

/// Scaling down: two reference servers behind HAProxy, which health-checks
/// both every 100 ms; one gets SIGTERM with a lame duck period of 1 s. Its
/// `/healthz` turns 503 at once, HAProxy takes it out of rotation within two
/// checks while it still serves, and its keep-alive connections retire with
/// a response: every request through HAProxy is answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_behind_haproxy_with_a_lame_duck_loses_nothing() {
    let mut leaving = Process::start("", "--lame-duck 1").await;
    let staying = Process::start("", "").await;
    let haproxy = proxy(Kind::HAProxy, &[leaving.addr, staying.addr]).await;
    let load = keep_alive_load(haproxy.addr, 16, false).await;
    load.wait_served(500).await;
    leaving.signal("TERM");
    let report = drain_report(&mut leaving).await;
    eprintln!("scale-down behind HAProxy: {report}");
    assert!(report.starts_with("shutdown drained in"), "{report}");
    assert_eq!(leaving.exit().await.code(), Some(0), "{report}");
    load.wait_served(500).await;
    let tally = stop(load).await;
    eprintln!(
        "scale-down behind HAProxy: {} requests, by status {:?}, {} errors",
        tally.requests(),
        tally.statuses,
        tally.errors.len()
    );
    tally.assert_all_served();
    shut_down(staying, haproxy).await;
}
