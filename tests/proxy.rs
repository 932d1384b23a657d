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

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use common::{
    generations::{drain_report, Generations},
    get_request, http1_client,
    process::Process,
    within,
};
use http_body_util::BodyExt;
use tokio::{sync::Notify, task::JoinHandle};

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

/// What a client of [`Load`] does once its connection has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Opens a new one (a proxy closes client connections now and then).
    Reconnect,
    /// Stops (the server is going away).
    Stop,
}

/// Keep-alive clients: each holds one HTTP/1.1 connection and sends `GET /`
/// on it back to back, until the connection ends: after a response that
/// says `Connection: close`, or closed between requests (hyper gives the
/// request back unsent, which is fine). A request sent and not answered is
/// an error.
struct Load {
    stop: Arc<AtomicBool>,
    /// 200 responses so far, and a notification at each.
    served: Arc<(AtomicUsize, Notify)>,
    clients: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// Starts `clients` clients on `addr`, which do `then` when their
    /// connection ends, once each has connected.
    async fn start(addr: SocketAddr, clients: usize, then: Then) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new((AtomicUsize::new(0), Notify::new()));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let first = http1_client(addr).await;
            let client = client(addr, first, then, stop.clone(), served.clone());
            tasks.push(tokio::spawn(client));
        }
        Self {
            stop,
            served,
            clients: tasks,
        }
    }

    /// Waits until `requests` more requests have been answered 200.
    async fn wait_for(&self, requests: usize) {
        let (count, notify) = &*self.served;
        let target = count.load(Ordering::Relaxed) + requests;
        within("the load to make progress", async {
            loop {
                let progressed = notify.notified();
                tokio::pin!(progressed);
                progressed.as_mut().enable();
                if count.load(Ordering::Relaxed) >= target {
                    return;
                }
                progressed.await;
            }
        })
        .await;
    }

    /// Stops the clients; what they saw, all together.
    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        Tally::total(self.join().await)
    }

    /// Waits for the clients to stop by themselves; what each saw.
    async fn join(self) -> Vec<Tally> {
        let mut tallies = Vec::new();
        for client in self.clients {
            tallies.push(within("a client to stop", client).await.unwrap());
        }
        tallies
    }
}

/// The two halves of an HTTP/1.1 client connection, from [`http1_client`].
type Connection = (
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    JoinHandle<hyper::Result<()>>,
);

/// One client of [`Load`]: requests on `first`, then on connections of its
/// own to `addr`, until `stop` (or, with [`Then::Stop`], until `first`
/// ends), counting each 200 in `served`.
async fn client(
    addr: SocketAddr,
    first: Connection,
    then: Then,
    stop: Arc<AtomicBool>,
    served: Arc<(AtomicUsize, Notify)>,
) -> Tally {
    let mut tally = Tally::default();
    let mut next = Some(first);
    while !stop.load(Ordering::Relaxed) {
        let (mut sender, conn) = match next.take() {
            Some(connection) => connection,
            None => http1_client(addr).await,
        };
        tally.connections += 1;
        // `ready` fails once the connection has closed.
        while !stop.load(Ordering::Relaxed) && sender.ready().await.is_ok() {
            let response = match sender.try_send_request(get_request("/")).await {
                Ok(response) => response,
                Err(e) if e.message().is_some() => {
                    tally.unsent += 1;
                    break;
                }
                Err(e) => {
                    tally.errors.push(format!("request sent: {:?}", e.error()));
                    break;
                }
            };
            let status = response.status().as_u16();
            let closing = response
                .headers()
                .get_all(hyper::header::CONNECTION)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .any(|token| token.trim().eq_ignore_ascii_case("close"));
            match response.into_body().collect().await {
                Ok(body) => {
                    *tally.statuses.entry(status).or_default() += 1;
                    let body = body.to_bytes();
                    if status == 200 && &body[..] != b"hello" {
                        tally.errors.push(format!("200 with body {body:?}"));
                    } else if status == 200 {
                        served.0.fetch_add(1, Ordering::Relaxed);
                        served.1.notify_waiters();
                    }
                }
                Err(e) => tally.errors.push(format!("body of a {status}: {e:?}")),
            }
            if closing {
                tally.closing_responses += 1;
                break;
            }
        }
        drop(sender);
        if let Err(e) = within("a client connection to end", conn).await.unwrap() {
            tally.errors.push(format!("connection: {e:?}"));
        }
        if then == Then::Stop {
            break;
        }
    }
    tally
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
    let load = Load::start(proxy.addr, 16, Then::Reconnect).await;
    load.wait_for(500).await;
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
        load.wait_for(500).await;
    }

    let tally = load.stop().await;
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
        let load = Load::start(server.addr, 4, Then::Stop).await;
        load.wait_for(200).await;
        server.signal("TERM");
        let report = drain_report(&mut server).await;
        let clients = load.join().await;
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
    let load = Load::start(haproxy.addr, 16, Then::Reconnect).await;
    load.wait_for(500).await;
    leaving.signal("TERM");
    let report = drain_report(&mut leaving).await;
    eprintln!("scale-down behind HAProxy: {report}");
    assert!(report.starts_with("shutdown drained in"), "{report}");
    assert_eq!(leaving.exit().await.code(), Some(0), "{report}");
    load.wait_for(500).await;
    let tally = load.stop().await;
    eprintln!(
        "scale-down behind HAProxy: {} requests, by status {:?}, {} errors",
        tally.requests(),
        tally.statuses,
        tally.errors.len()
    );
    tally.assert_all_served();
    shut_down(staying, haproxy).await;
}
