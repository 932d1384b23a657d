//! Restarts under continuous load: what each way of restarting loses, for
//! plain axum and for tower-drain, served directly or behind a real reverse
//! proxy.
//!
//! ```text
//! cargo run --release -p tower-drain-measure --example restarts -- [--restarts N] [--clients N] [--between N]
//!     [--proxy nginx|haproxy] [--plot PATH.svg]
//! ```
//!
//! Without `--proxy`, clients (6 by default) each open a new connection per
//! request to the server, without pause. With `--proxy`, the server is
//! behind nginx (`/usr/sbin/nginx`, a keep-alive pool of upstream
//! connections, `proxy_next_upstream off`) or HAProxy (`/usr/sbin/haproxy`,
//! `http-reuse always`, `retries 0`, health checks on `GET /healthz` every
//! 100 ms), and each client holds one HTTP/1.1 keep-alive connection to the
//! proxy, sending `GET /` back to back and reconnecting when the proxy
//! closes it; a request is lost when the proxy answers anything but 200
//! (502, 503) or the connection fails.
//!
//! Every `--between` requests (500) the server is restarted (20 times by
//! default): a successor process starts, then the old one is stopped. Each
//! way is one row of the Markdown table printed at the end:
//!
//! - `SO_REUSEPORT`: the successor binds its own socket on the same port,
//!   then the old server gets SIGTERM; once more for tower-drain with
//!   `--lame-duck 1`, which the sibling turns into a restart (no lame duck,
//!   readiness healthy).
//! - handoff: the successor receives the old server's socket over a Unix
//!   socket (`Listeners::handoff`); the old server drains and exits by itself.
//! - service manager: this program holds the socket, as systemd does, and
//!   passes it to every server (`LISTEN_FDS` for tower-drain, standard input
//!   for plain axum); the old server gets SIGTERM once the successor listens.
//!
//! Behind a proxy, three more rows shut a server down instead, `--restarts`
//! times each, each time with a fresh proxy: two servers on ports of their
//! own are the proxy's upstreams, after `--between` requests the first
//! gets SIGTERM (no successor takes its port), and the load goes on for
//! `--between` requests after it exited. The rows: plain axum, tower-drain,
//! and tower-drain with a lame duck period of 1 s (readiness on `/healthz`
//! turns 503 at SIGTERM while it goes on serving, so that HAProxy's health
//! checks take it out of rotation before it closes its socket; nginx has no
//! active health checks, and `proxy_next_upstream off` forbids it to retry
//! even a refused connection elsewhere).
//!
//! The columns behind a proxy: 502 and 503 are the proxy's answers;
//! "closed unanswered" is a client connection closed with the request
//! unanswered, which is how HAProxy reports a failed server connection to
//! a keep-alive client whose request is not its first (so that the client
//! may retry). The last column counts stopped servers that did not exit 0;
//! tower-drain exits 1 after a drain that was not clean (forced, or
//! connections reset in its accept queue).
//!
//! `--plot PATH.svg` draws the two "socket held by a service manager" rows
//! as time series, requests answered and lost per 100 ms, plain axum above
//! tower-drain, restarts marked.
//!
//! Servers are this same program run as `restarts serve ...`.

#[path = "../../tests/common/mod.rs"]
mod common;
mod plot;
mod proxies;

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use axum::routing::get;
use tower_drain::{restart::Listeners, DrainLayer, Readiness, Watch};

use common::{
    hello as app,
    load::{Client, Load, Record},
    process::{Process, AS_SERVICE_MANAGER},
    Tally,
};
use proxies::{Kind, Proxy};

/// One way of restarting or shutting down, for one server: a row.
#[derive(Clone, Copy)]
struct Way {
    name: &'static str,
    server: &'static str,
    /// More flags for `serve`.
    flags: &'static str,
    socket: Socket,
    stop: Stop,
}

/// Where a server's listening socket comes from.
#[derive(Clone, Copy, PartialEq)]
enum Socket {
    /// The server binds it, with `SO_REUSEPORT`.
    ReusePort,
    Handoff,
    ServiceManager,
}

/// What becomes of a server that is told to stop.
#[derive(Clone, Copy)]
enum Stop {
    /// A successor takes over its port.
    Restart,
    /// No successor: another upstream of the proxy serves.
    Shutdown,
}

impl Way {
    const fn restart(name: &'static str, server: &'static str, socket: Socket) -> Self {
        Way {
            name,
            server,
            flags: "",
            socket,
            stop: Stop::Restart,
        }
    }

    /// The same way, with more flags for `serve`.
    const fn with_flags(self, flags: &'static str) -> Self {
        Way { flags, ..self }
    }

    const fn shutdown(name: &'static str, server: &'static str, flags: &'static str) -> Self {
        Way {
            name,
            server,
            flags,
            socket: Socket::ReusePort,
            stop: Stop::Shutdown,
        }
    }
}

const RESTARTS: [Way; 6] = [
    Way::restart("axum, SO_REUSEPORT successor", "axum", Socket::ReusePort),
    Way::restart(
        "tower-drain, SO_REUSEPORT successor",
        "drain",
        Socket::ReusePort,
    ),
    // The sibling makes the drain a restart: no lame duck, readiness stays
    // healthy, so health checks reaching the old socket never fail.
    Way::restart(
        "tower-drain, SO_REUSEPORT successor, --lame-duck 1",
        "drain",
        Socket::ReusePort,
    )
    .with_flags("--lame-duck 1"),
    Way::restart(
        "axum, socket held by a service manager",
        "axum",
        Socket::ServiceManager,
    ),
    Way::restart(
        "tower-drain, socket held by a service manager",
        "drain",
        Socket::ServiceManager,
    ),
    Way::restart(
        "tower-drain, handoff to the successor",
        "drain",
        Socket::Handoff,
    ),
];

/// Behind a proxy only: the proxy has another upstream to go on with.
const SHUTDOWNS: [Way; 3] = [
    Way::shutdown("axum, shutdown (SIGTERM)", "axum", ""),
    Way::shutdown("tower-drain, shutdown (SIGTERM)", "drain", ""),
    Way::shutdown(
        "tower-drain, lame duck 1 s, shutdown (SIGTERM)",
        "drain",
        "--lame-duck 1",
    ),
];

/// What became of the requests sent during one way's restarts or
/// shutdowns.
struct Row {
    way: Way,
    tally: Tally,
    /// Old servers that did not exit with status 0.
    failed_exits: usize,
    /// When the row's load started.
    started: Instant,
    /// Every request: how and when it ended.
    requests: Vec<Record>,
    /// When each old server was told to stop.
    stops: Vec<Instant>,
    /// When the (last) load was told to stop.
    ended: Instant,
}

impl Row {
    fn new(way: Way) -> Self {
        Row {
            way,
            tally: Tally::default(),
            failed_exits: 0,
            started: Instant::now(),
            requests: Vec::new(),
            stops: Vec::new(),
            ended: Instant::now(),
        }
    }

    /// Requests not answered 200.
    fn lost(&self) -> usize {
        self.tally.sent - self.tally.served
    }

    /// Stops `load`, and counts what it saw.
    async fn stop_load(&mut self, load: Load) {
        self.ended = Instant::now();
        let seen = load.stop().await;
        self.tally.merge(seen.tally());
        self.requests.extend(seen.requests);
    }

    /// Tells `old` to stop the way `launcher` does, and counts a bad exit.
    async fn stop(&mut self, launcher: &Launcher, old: Process) {
        self.stops.push(Instant::now());
        if !launcher.stop(old).await {
            self.failed_exits += 1;
        }
    }

    /// The row as a panel of the picture.
    fn panel(&self, title: String) -> plot::Panel {
        let since = |at: &Instant| at.saturating_duration_since(self.started);
        plot::Panel {
            title,
            requests: (self.requests.iter())
                .map(|request| (since(&request.ended), request.outcome.is_ok()))
                .collect(),
            restarts: self.stops.iter().map(since).collect(),
            until: since(&self.ended),
        }
    }
}

struct Options {
    restarts: usize,
    clients: usize,
    between: usize,
    proxy: Option<Kind>,
    plot: Option<PathBuf>,
}

impl Options {
    /// The rows this run measures.
    fn ways(&self) -> Vec<Way> {
        let shutdowns = self.proxy.map_or(&[][..], |_| &SHUTDOWNS[..]);
        RESTARTS.iter().chain(shutdowns).copied().collect()
    }
}

/// Starts servers the way `way` restarts them (or shuts them down).
struct Launcher {
    way: Way,
    program: PathBuf,
    handoff: PathBuf,
    /// The socket a service manager would hold.
    held: std::net::TcpListener,
}

impl Launcher {
    fn new(way: Way) -> Self {
        let handoff =
            std::env::temp_dir().join(format!("tower-drain-restarts-{}", std::process::id()));
        let _ = std::fs::remove_file(&handoff);
        Self {
            way,
            program: std::env::current_exe().expect("the path of this program"),
            handoff,
            held: std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1"),
        }
    }

    /// Where the first server listens: the held socket's address, or a
    /// free port.
    fn first_addr(&self) -> SocketAddr {
        match self.way.socket {
            Socket::ServiceManager => self.held.local_addr().expect("its address"),
            _ => SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Starts a server on `addr` (port 0 for the first) and waits until it
    /// listens.
    async fn start(&self, addr: SocketAddr) -> Process {
        let args = format!("serve {} {addr} {}", self.way.server, self.way.flags);
        let (prefix, args, stdin) = match self.way.socket {
            Socket::ReusePort => ("", args, Stdio::null()),
            Socket::Handoff => (
                "",
                format!("{args} --handoff {}", self.handoff.display()),
                Stdio::null(),
            ),
            Socket::ServiceManager => {
                let socket = OwnedFd::from(self.held.try_clone().expect("dup the held socket"));
                let (prefix, args) = match self.way.server {
                    "drain" => (AS_SERVICE_MANAGER, args),
                    _ => ("", format!("{args} --stdin")),
                };
                (prefix, args, Stdio::from(socket))
            }
        };
        let mut server = Process::spawn(&self.program, prefix, &args, stdin).await;
        server.echo_problems();
        server
    }

    /// Stops `old` once `successor` listens; its exit status was 0.
    async fn stop(&self, old: Process) -> bool {
        if self.way.socket != Socket::Handoff {
            old.signal("TERM");
        }
        (old.exit_within(EXIT_PATIENCE).await).is_some_and(|status| status.success())
    }
}

/// Where the load goes: straight to the server, or to a proxy in front of
/// the servers.
struct Front {
    addr: SocketAddr,
    client: Client,
    /// Running while the front is in use.
    proxy: Option<Proxy>,
}

impl Front {
    /// Starts the proxy of `options`, if any, in front of `backends`.
    async fn start(options: &Options, backends: &[SocketAddr]) -> io::Result<Self> {
        Ok(match options.proxy {
            None => Front {
                addr: backends[0],
                client: Client::ConnectionPerRequest,
                proxy: None,
            },
            Some(kind) => {
                let proxy = Proxy::start(kind, backends).await?;
                Front {
                    addr: proxy.addr,
                    client: Client::KeepAlive,
                    proxy: Some(proxy),
                }
            }
        })
    }

    /// Starts `clients` clients sending to the front, without pause.
    async fn load(&self, clients: usize) -> Load {
        let load = Load::builder(self.addr).clients(clients);
        load.client(self.client).start().await
    }

    /// Says on stderr how much the proxy logged (nginx: its errors, such
    /// as each 502's cause; HAProxy: servers going down and up).
    fn report(&self) {
        if let Some(proxy) = &self.proxy {
            let log = proxy.log();
            let lines: Vec<_> = log.lines().collect();
            eprintln!("  {} log: {} lines", proxy.kind.name(), lines.len());
            for line in lines.iter().take(3) {
                eprintln!("    {line}");
            }
        }
    }
}

/// Measures one row.
async fn measure(way: Way, options: &Options) -> io::Result<Row> {
    match way.stop {
        Stop::Restart => measure_restarts(way, options).await,
        Stop::Shutdown => measure_shutdowns(way, options).await,
    }
}

/// Restarts the server `options.restarts` times the way `way` does, under load.
async fn measure_restarts(way: Way, options: &Options) -> io::Result<Row> {
    let launcher = Launcher::new(way);
    let mut server = launcher.start(launcher.first_addr()).await;
    let addr = server.addr;
    let front = Front::start(options, &[addr]).await?;
    let mut row = Row::new(way);
    let load = front.load(options.clients).await;
    for _ in 0..options.restarts {
        load.wait_for(options.between).await;
        let successor = launcher.start(addr).await;
        row.stop(&launcher, server).await;
        server = successor;
    }
    load.wait_for(options.between).await;
    row.stop_load(load).await;
    front.report();
    server.signal("TERM");
    let _ = server.exit_within(EXIT_PATIENCE).await;
    Ok(row)
}

/// Shuts a server down `options.restarts` times under load, each time with
/// a second server as the proxy's other upstream.
async fn measure_shutdowns(way: Way, options: &Options) -> io::Result<Row> {
    let launcher = Launcher::new(way);
    let mut row = Row::new(way);
    for _ in 0..options.restarts {
        let stopped = launcher.start(launcher.first_addr()).await;
        let other = launcher.start(launcher.first_addr()).await;
        let front = Front::start(options, &[stopped.addr, other.addr]).await?;
        let load = front.load(options.clients).await;
        load.wait_for(options.between).await;
        row.stop(&launcher, stopped).await;
        load.wait_for(options.between).await;
        row.stop_load(load).await;
        front.report();
        other.signal("TERM");
        let _ = other.exit_within(EXIT_PATIENCE).await;
    }
    Ok(row)
}

/// Prints the table.
fn print(options: &Options, rows: &[Row]) {
    match options.proxy {
        None => print_direct(options, rows),
        Some(kind) => print_behind(kind, options, rows),
    }
}

/// The table of a run without a proxy.
fn print_direct(options: &Options, rows: &[Row]) {
    println!(
        "{} restarts per row, {} clients each opening a new connection per request, {} requests between restarts:\n",
        options.restarts, options.clients, options.between
    );
    println!("| restart | requests | lost | reset | refused | closed unanswered | other | old server exit ≠ 0 |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        let t = &row.tally;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.way.name,
            t.sent,
            row.lost(),
            t.reset,
            t.refused,
            t.unanswered,
            t.other,
            row.failed_exits
        );
    }
}

/// The table of a run behind `kind`.
fn print_behind(kind: Kind, options: &Options, rows: &[Row]) {
    println!(
        "Behind {}: {} restarts or shutdowns per row, {} keep-alive clients \
         (one HTTP/1.1 connection to the proxy each, `GET /` back to back), \
         {} requests between restarts:\n",
        kind.name(),
        options.restarts,
        options.clients,
        options.between
    );
    println!(
        "| behind {} | requests | answered 200 | lost | 502 | 503 | closed unanswered | other | stopped server exit ≠ 0 |",
        kind.name()
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let (t, lost) = (&row.tally, row.lost());
        let other = lost - t.bad_gateway - t.unavailable - t.unanswered;
        println!(
            "| {} | {} | {} | {lost} | {} | {} | {} | {other} | {} |",
            row.way.name,
            t.sent,
            t.served,
            t.bad_gateway,
            t.unavailable,
            t.unanswered,
            row.failed_exits
        );
    }
}

/// Draws the two "socket held by a service manager" rows at `path`.
fn draw(path: &Path, options: &Options, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    let held = |server| {
        rows.iter().find(|row| {
            let way = row.way;
            way.server == server && way.socket == Socket::ServiceManager
        })
    };
    let panels: Vec<_> = [held("axum"), held("drain")]
        .into_iter()
        .flatten()
        .map(|row| {
            let (served, lost) = (row.tally.served, row.lost());
            row.panel(format!(
                "{}: {served} answered 200, {lost} lost",
                row.way.name
            ))
        })
        .collect();
    let (behind, clients) = match options.proxy {
        None => (
            "served directly".to_owned(),
            "clients (a connection per request)",
        ),
        Some(kind) => (format!("behind {}", kind.name()), "keep-alive clients"),
    };
    let caption = format!(
        "{} restarts {behind}: {} {clients}, {} requests between restarts",
        options.restarts, options.clients, options.between
    );
    plot::draw(path, &caption, &panels)
}

/// How long an old server may take to exit before it is killed.
const EXIT_PATIENCE: Duration = Duration::from_secs(60);

// ---- the servers ----

/// `serve axum|drain ADDR [--handoff PATH] [--stdin] [--lame-duck SECS]`
async fn serve(args: &[String]) -> ExitCode {
    let (Some(server), Some(Ok(addr))) = (args.first(), args.get(1).map(|a| a.parse())) else {
        return usage();
    };
    let (Some(handoff), Some(lame_duck)) = (
        flag_value(args, "--handoff"),
        flag_value(args, "--lame-duck"),
    ) else {
        return usage();
    };
    let lame_duck = match lame_duck.map(|secs| secs.parse().map(Duration::try_from_secs_f64)) {
        None => Duration::ZERO,
        Some(Ok(Ok(period))) => period,
        Some(_) => return usage(),
    };
    let stdin = args.iter().any(|a| a == "--stdin");
    let result = match server.as_str() {
        "axum" => serve_axum(addr, stdin).await,
        "drain" => serve_drain(addr, handoff.map(Path::new), lame_duck).await,
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Plain axum on its own `SO_REUSEPORT` socket, or on the socket passed as
/// standard input; SIGTERM is its graceful shutdown. `/healthz` answers 200
/// while it accepts.
async fn serve_axum(addr: SocketAddr, stdin: bool) -> io::Result<()> {
    let listener = if stdin {
        let socket = std::io::stdin().as_fd().try_clone_to_owned()?;
        std::net::TcpListener::from(socket)
    } else {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.into()
    };
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    eprintln!("listening addr={}", listener.local_addr()?);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let app = app().route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            terminate.recv().await;
        })
        .await
}

/// tower-drain with `restart::Listeners`: inherited, handed over or bound
/// with `SO_REUSEPORT`; SIGTERM drains, after `lame_duck` for a shutdown.
/// `/healthz` is its readiness. A drain that was not clean (forced, or
/// connections reset in the accept queue) is an error: exit status 1.
async fn serve_drain(
    addr: SocketAddr,
    handoff: Option<&Path>,
    lame_duck: Duration,
) -> io::Result<()> {
    let watch = Watch::builder()
        .lame_duck(lame_duck)
        .build()
        .map_err(io::Error::other)?;
    watch.trigger_on_signals()?;
    let mut builder = Listeners::builder().tcp("http", addr).reuse_port(true);
    if let Some(path) = handoff {
        builder = builder.handoff(path);
    }
    let listener = builder.open(&watch).await?.tcp("http")?;
    let app = app()
        .route_service("/healthz", Readiness::new(watch.observer()))
        .layer(DrainLayer::new(watch.clone()));
    axum::serve(listener, app)
        .with_graceful_shutdown(watch.shutdown_signal())
        .await?;
    let report = watch.drained().await;
    if report.is_clean() {
        Ok(())
    } else {
        Err(io::Error::other(format!("drain not clean: {report}")))
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: restarts [--restarts N] [--clients N] [--between N] \
         [--proxy nginx|haproxy] [--plot PATH.svg]"
    );
    ExitCode::from(2)
}

/// The value after the flag `name`: `Some(None)` without the flag, `None`
/// when the value is missing.
fn flag_value<'a>(args: &'a [String], name: &str) -> Option<Option<&'a str>> {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).map(|value| Some(value.as_str())),
        None => Some(None),
    }
}

/// The number after the flag `name`, `default` without the flag.
fn flag(args: &[String], name: &str, default: usize) -> Option<usize> {
    flag_value(args, name)?.map_or(Some(default), |value| value.parse().ok())
}

/// The options, or `None` if a flag is wrong.
fn options(args: &[String]) -> Option<Options> {
    let proxy = match flag_value(args, "--proxy")? {
        None => None,
        Some(name) => Some(Kind::parse(name)?),
    };
    Some(Options {
        restarts: flag(args, "--restarts", 20)?,
        clients: flag(args, "--clients", 6)?,
        between: flag(args, "--between", 500)?,
        proxy,
        plot: flag_value(args, "--plot")?.map(PathBuf::from),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_env_filter("tower_drain=info")
            .init();
        return serve(&args[1..]).await;
    }
    let Some(options) = options(&args) else {
        return usage();
    };
    let mut rows = Vec::new();
    for way in options.ways() {
        eprintln!("measuring: {}", way.name);
        match measure(way, &options).await {
            Ok(row) => rows.push(row),
            Err(error) => {
                eprintln!("error: {}: {error}", way.name);
                return ExitCode::FAILURE;
            }
        }
    }
    print(&options, &rows);
    if let Some(path) = &options.plot {
        if let Err(error) = draw(path, &options, &rows) {
            eprintln!("error: cannot draw {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("drew {}", path.display());
    }
    ExitCode::SUCCESS
}
