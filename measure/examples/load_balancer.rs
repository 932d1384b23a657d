//! What a load balancer loses when a backend is told to shut down while the
//! load balancer still routes to it: plain axum against tower-drain, without
//! and with a lame duck period.
//!
//! ```text
//! cargo run --release -p tower-drain-measure --example load_balancer -- [--runs N] [--clients N] [--lag-ms N]
//! ```
//!
//! Each run starts a backend on 127.0.0.1 and a simulated load balancer in
//! front of it: a health poller GETs `/healthz` every 50 ms on a new
//! connection, and clients (4 by default) each send `GET /` on a new
//! connection per request, without pause, for as long as the balancer routes
//! to the backend. 300 ms after the clients start, the backend gets the
//! equivalent of SIGTERM; its `/healthz` answers 503 from then on. The
//! balancer stops routing `--lag-ms` (1000) after the poller first sees a
//! non-200, as real ones do after a few failed checks and endpoint updates.
//! Each row sums `--runs` runs (5) and counts what the clients got: a
//! response, a refused connection, a reset, or a close with no answer. A real
//! load balancer turns refusals and resets into 502s for its users.
//!
//! Set `RUST_LOG=tower_drain=info` to see each drain's steps on stderr.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../examples/logging/mod.rs"]
mod logging;

use std::{
    io,
    net::SocketAddr,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use axum::{http::StatusCode, routing::get, Router};
use tokio::{
    net::TcpListener,
    sync::{watch, Notify},
    task::JoinHandle,
    time::Instant,
};
use tower_drain::{DrainLayer, GracefulAccept, Readiness, Watch};

use common::{one_request, Outcome, Tally};

/// How often the load balancer checks `/healthz`.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How long after the clients start the backend is told to shut down.
const TRIGGER_AFTER: Duration = Duration::from_millis(300);
/// The lame duck period of the third row.
const LAME_DUCK: Duration = Duration::from_secs(2);
/// The bound on any one request, and on the poller seeing the backend unhealthy.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on a backend's shutdown once the load balancer stopped routing.
const PATIENCE: Duration = Duration::from_secs(60);

/// One kind of backend: one row of the table.
#[derive(Clone, Copy)]
enum Backend {
    /// `axum::serve(..).with_graceful_shutdown(..)`, nothing else.
    Axum,
    /// tower-drain, with this lame duck period if any.
    Drain { lame_duck: Option<Duration> },
}

const ROWS: [(&str, Backend); 3] = [
    ("axum, with_graceful_shutdown", Backend::Axum),
    (
        "tower-drain, no lame duck",
        Backend::Drain { lame_duck: None },
    ),
    (
        "tower-drain, lame duck 2 s",
        Backend::Drain {
            lame_duck: Some(LAME_DUCK),
        },
    ),
];

/// How a running backend is told to shut down.
enum Trigger {
    /// Plain axum: `/healthz` turns 503 and the graceful shutdown starts.
    Axum {
        unhealthy: Arc<AtomicBool>,
        shutdown: Arc<Notify>,
    },
    /// tower-drain: the `Watch` is triggered.
    Drain(Watch),
}

impl Trigger {
    /// The backend's SIGTERM.
    fn fire(&self) {
        match self {
            Trigger::Axum {
                unhealthy,
                shutdown,
            } => {
                unhealthy.store(true, SeqCst);
                shutdown.notify_one();
            }
            Trigger::Drain(watch) => watch.trigger(),
        }
    }
}

/// A backend serving on a real socket.
struct Running {
    addr: SocketAddr,
    trigger: Trigger,
    serve: JoinHandle<io::Result<()>>,
}

/// The app every backend serves: `/` answers `hello`.
fn app() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// Binds 127.0.0.1 on a free port.
async fn bind() -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Starts plain axum, its `/healthz` 503 once triggered.
async fn start_axum() -> io::Result<Running> {
    let (listener, addr) = bind().await?;
    let unhealthy = Arc::new(AtomicBool::new(false));
    let shutdown = Arc::new(Notify::new());
    let health = unhealthy.clone();
    let app = app().route(
        "/healthz",
        get(move || {
            let unhealthy = health.load(SeqCst);
            async move {
                if unhealthy {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let signal = {
        let shutdown = shutdown.clone();
        async move { shutdown.notified().await }
    };
    let serve = spawn_serve(listener, app, signal);
    Ok(Running {
        addr,
        trigger: Trigger::Axum {
            unhealthy,
            shutdown,
        },
        serve,
    })
}

/// Starts tower-drain with `lame_duck`, if any, and `Readiness` on `/healthz`.
async fn start_drain(lame_duck: Option<Duration>) -> io::Result<Running> {
    let watch = match lame_duck {
        None => Watch::new(),
        Some(period) => Watch::builder()
            .lame_duck(period)
            .build()
            .map_err(io::Error::other)?,
    };
    let (listener, addr) = bind().await?;
    let app = app()
        .route_service("/healthz", Readiness::new(watch.observer()))
        .layer(DrainLayer::new(watch.clone()));
    let listener = GracefulAccept::new(listener, watch.clone());
    let serve = spawn_serve(listener, app, watch.shutdown_signal());
    Ok(Running {
        addr,
        trigger: Trigger::Drain(watch),
        serve,
    })
}

/// Serves `app` on `listener` in a task until `signal` resolves.
fn spawn_serve<L>(
    listener: L,
    app: Router,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<io::Result<()>>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
    })
}

/// `GET path` on a new connection with `Connection: close`, every failure
/// classified, bounded by [`REQUEST_TIMEOUT`].
async fn request(addr: SocketAddr, path: &str) -> Outcome {
    tokio::time::timeout(REQUEST_TIMEOUT, one_request(addr, path))
        .await
        .unwrap_or_else(|_| Outcome::Other("timed out".into()))
}

/// One client of the load balancer: requests `/` without pause while it routes.
async fn client(addr: SocketAddr, routing: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::default();
    while *routing.borrow() {
        tally.add(&request(addr, "/").await);
    }
    tally
}

/// The load balancer's health checks: polls `/healthz` until it answers
/// anything but 200, keeps routing for `lag`, then stops. Returns when it
/// first saw the backend unhealthy, if it did within the patience.
async fn poll_health(
    addr: SocketAddr,
    lag: Duration,
    routing: watch::Sender<bool>,
) -> Option<Instant> {
    let give_up = Instant::now() + TRIGGER_AFTER + REQUEST_TIMEOUT;
    let mut ticks = tokio::time::interval(POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let seen = loop {
        ticks.tick().await;
        if !request(addr, "/healthz").await.is_ok() {
            break Some(Instant::now());
        }
        if Instant::now() >= give_up {
            break None;
        }
    };
    if seen.is_some() {
        tokio::time::sleep(lag).await;
    }
    routing.send_replace(false);
    seen
}

/// One run against a new backend: the clients' outcomes are added to `tally`.
async fn run(backend: Backend, options: &Options, tally: &mut Tally) -> io::Result<()> {
    let running = match backend {
        Backend::Axum => start_axum().await?,
        Backend::Drain { lame_duck } => start_drain(lame_duck).await?,
    };
    let addr = running.addr;
    let (routing, routed) = watch::channel(true);
    let clients: Vec<_> = (0..options.clients)
        .map(|_| tokio::spawn(client(addr, routed.clone())))
        .collect();
    let poller = tokio::spawn(poll_health(addr, options.lag, routing));

    tokio::time::sleep(TRIGGER_AFTER).await;
    let triggered = Instant::now();
    running.trigger.fire();

    let seen = poller.await.map_err(io::Error::other)?;
    for client in clients {
        tally.merge(client.await.map_err(io::Error::other)?);
    }
    match seen {
        Some(seen) => eprintln!(
            "  unhealthy seen {} ms after the trigger",
            (seen - triggered).as_millis()
        ),
        None => eprintln!("  the health poller never saw the backend unhealthy"),
    }
    stop(running).await
}

/// Waits for a triggered backend to stop; for tower-drain, says if its drain
/// lost anything.
async fn stop(running: Running) -> io::Result<()> {
    let stopped = tokio::time::timeout(PATIENCE, running.serve)
        .await
        .map_err(|_| io::Error::other("the backend did not stop"))?;
    stopped.map_err(io::Error::other)??;
    if let Trigger::Drain(watch) = running.trigger {
        let report = tokio::time::timeout(PATIENCE, watch.drained())
            .await
            .map_err(|_| io::Error::other("the drain did not end"))?;
        if report.forced.is_some() || report.reset_in_queue > 0 || report.requests_aborted > 0 {
            eprintln!("  drain lost something: {report}");
        }
    }
    Ok(())
}

/// The flags.
struct Options {
    runs: u64,
    clients: u64,
    lag: Duration,
}

const USAGE: &str = "usage: load_balancer [--runs N] [--clients N] [--lag-ms N]

  --runs N     runs per row, summed (default 5, at least 1)
  --clients N  clients sending requests through the load balancer (default 4, 1 to 1000)
  --lag-ms N   how long the load balancer goes on routing after it first sees
               the backend unhealthy, in milliseconds (default 1000, at most 60000)";

/// Parses the flags, or says what is wrong with them.
fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        runs: 5,
        clients: 4,
        lag: Duration::from_millis(1000),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let (min, max, expected) = match flag.as_str() {
            "--runs" => (1, u64::MAX, "a whole number, at least 1"),
            "--clients" => (1, 1000, "a whole number from 1 to 1000"),
            "--lag-ms" => (0, 60_000, "a whole number from 0 to 60000"),
            _ => return Err(format!("unknown argument {flag:?}")),
        };
        let Some(value) = args.next() else {
            return Err(format!("{flag} needs a value: {expected}"));
        };
        let number = match value.parse::<u64>() {
            Ok(number) if (min..=max).contains(&number) => number,
            _ => return Err(format!("{flag} {value:?}: expected {expected}")),
        };
        match flag.as_str() {
            "--runs" => options.runs = number,
            "--clients" => options.clients = number,
            _ => options.lag = Duration::from_millis(number),
        }
    }
    Ok(options)
}

/// Prints the Markdown table and the command that produced it.
fn print(options: &Options, tallies: &[(&str, Tally)]) {
    println!(
        "{} runs per row; {} clients each sending `GET /` on a new connection per request; \
         the backend is told to shut down {} ms after they start; the load balancer polls \
         `/healthz` every {} ms and stops routing {} ms after it first sees a non-200:\n",
        options.runs,
        options.clients,
        TRIGGER_AFTER.as_millis(),
        POLL_EVERY.as_millis(),
        options.lag.as_millis(),
    );
    println!("| server | requests | ok | refused | reset | unanswered |");
    println!("|---|---|---|---|---|---|");
    for (name, t) in tallies {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            t.sent, t.served, t.refused, t.reset, t.unanswered
        );
    }
    for (name, t) in tallies {
        if let Some(what) = &t.first_other {
            println!("\n{name}: {} other outcomes, the first: {what}", t.other);
        }
    }
    println!(
        "\nCommand: `cargo run --release -p tower-drain-measure --example load_balancer -- --runs {} --clients {} --lag-ms {}`",
        options.runs,
        options.clients,
        options.lag.as_millis()
    );
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse_options(&args) {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("error: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    logging::init("off");

    let mut tallies = Vec::new();
    for (name, backend) in ROWS {
        let mut tally = Tally::default();
        for i in 1..=options.runs {
            eprintln!("{name}: run {i} of {}", options.runs);
            if let Err(error) = run(backend, &options, &mut tally).await {
                eprintln!("error: {name}, run {i}: {error}");
                return ExitCode::FAILURE;
            }
        }
        tallies.push((name, tally));
    }
    print(&options, &tallies);
    ExitCode::SUCCESS
}
