//! Restarts under continuous load: what each way of restarting loses, for
//! plain axum and for tower-drain.
//!
//! ```text
//! cargo run --release --example restarts -- [--restarts N] [--clients N] [--between N]
//! ```
//!
//! Clients (6 by default) each open a new connection per request without
//! pause. Every `--between` requests (500) the server is restarted (20 times
//! by default): a successor process starts, then the old one is stopped.
//! Each way is one row of the Markdown table printed at the end:
//!
//! - `SO_REUSEPORT`: the successor binds its own socket on the same port,
//!   then the old server gets SIGTERM.
//! - handoff: the successor receives the old server's socket over a Unix
//!   socket (`Listeners::handoff`); the old server drains and exits by itself.
//! - service manager: this program holds the socket, as systemd does, and
//!   passes it to every server (`LISTEN_FDS` for tower-drain, standard input
//!   for plain axum); the old server gets SIGTERM once the successor listens.
//!
//! Servers are this same program run as `restarts serve ...`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
};

use axum::{routing::get, Router};
use common::{load::Load, process::Process, Outcome};
use tower_drain::{restart::Listeners, DrainLayer, Watch};

/// One way of restarting, for one server.
#[derive(Clone, Copy)]
struct Way {
    name: &'static str,
    server: &'static str,
    socket: Socket,
}

/// Where a server's listening socket comes from.
#[derive(Clone, Copy, PartialEq)]
enum Socket {
    ReusePort,
    Handoff,
    ServiceManager,
}

const WAYS: [Way; 5] = [
    Way {
        name: "axum, SO_REUSEPORT successor",
        server: "axum",
        socket: Socket::ReusePort,
    },
    Way {
        name: "tower-drain, SO_REUSEPORT successor",
        server: "drain",
        socket: Socket::ReusePort,
    },
    Way {
        name: "axum, socket held by a service manager",
        server: "axum",
        socket: Socket::ServiceManager,
    },
    Way {
        name: "tower-drain, socket held by a service manager",
        server: "drain",
        socket: Socket::ServiceManager,
    },
    Way {
        name: "tower-drain, handoff to the successor",
        server: "drain",
        socket: Socket::Handoff,
    },
];

/// What became of the requests sent during one way's restarts.
#[derive(Default)]
struct Tally {
    sent: usize,
    served: usize,
    reset: usize,
    refused: usize,
    unanswered: usize,
    other: usize,
    /// Old servers that exited with a status other than 0.
    failed_exits: usize,
}

impl Tally {
    fn add(&mut self, outcome: &Outcome) {
        self.sent += 1;
        match outcome {
            o if o.is_ok() => self.served += 1,
            Outcome::Reset => self.reset += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Unanswered => self.unanswered += 1,
            _ => self.other += 1,
        }
    }
}

struct Options {
    restarts: usize,
    clients: usize,
    between: usize,
}

/// Starts servers the way `way` restarts them.
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

    /// Starts a server on `addr` (port 0 for the first) and waits until it
    /// listens.
    async fn start(&self, addr: SocketAddr) -> Process {
        let args = format!("serve {} {addr}", self.way.server);
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
                    "drain" => (common::process::AS_SERVICE_MANAGER, args),
                    _ => ("", format!("{args} --stdin")),
                };
                (prefix, args, Stdio::from(socket))
            }
        };
        Process::spawn(&self.program, prefix, &args, stdin).await
    }

    /// Stops `old` once `successor` listens; its exit status was 0.
    async fn stop(&self, old: Process) -> bool {
        if self.way.socket != Socket::Handoff {
            old.signal("TERM");
        }
        old.exit().await.success()
    }
}

async fn measure(way: Way, options: &Options) -> Tally {
    let launcher = Launcher::new(way);
    let first = match way.socket {
        Socket::ServiceManager => launcher.held.local_addr().expect("its address"),
        _ => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let mut server = launcher.start(first).await;
    let addr = server.addr;
    let load = Load::start(addr, options.clients);
    let mut tally = Tally::default();
    for _ in 0..options.restarts {
        load.wait_for(options.between).await;
        let successor = launcher.start(addr).await;
        if !launcher.stop(server).await {
            tally.failed_exits += 1;
        }
        server = successor;
    }
    load.wait_for(options.between).await;
    for outcome in load.stop().await {
        tally.add(&outcome);
    }
    server.signal("TERM");
    server.exit().await;
    tally
}

fn print(options: &Options, tallies: &[(Way, Tally)]) {
    println!(
        "{} restarts per row, {} clients each opening a new connection per request, {} requests between restarts:\n",
        options.restarts, options.clients, options.between
    );
    println!("| restart | requests | lost | reset | refused | closed unanswered | other | old server exit ≠ 0 |");
    println!("|---|---|---|---|---|---|---|---|");
    for (way, t) in tallies {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            way.name,
            t.sent,
            t.sent - t.served,
            t.reset,
            t.refused,
            t.unanswered,
            t.other,
            t.failed_exits
        );
    }
}

// ---- the servers ----

/// `serve axum|drain ADDR [--handoff PATH] [--stdin]`
async fn serve(args: &[String]) -> ExitCode {
    let (Some(server), Some(Ok(addr))) = (args.first(), args.get(1).map(|a| a.parse())) else {
        return usage();
    };
    let handoff = args
        .iter()
        .position(|a| a == "--handoff")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let stdin = args.iter().any(|a| a == "--stdin");
    let result = match server.as_str() {
        "axum" => serve_axum(addr, stdin).await,
        "drain" => serve_drain(addr, handoff.as_deref()).await,
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

fn app() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// Plain axum on its own `SO_REUSEPORT` socket, or on the socket passed as
/// standard input; SIGTERM is its graceful shutdown.
async fn serve_axum(addr: SocketAddr, stdin: bool) -> std::io::Result<()> {
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
    axum::serve(listener, app())
        .with_graceful_shutdown(async move {
            terminate.recv().await;
        })
        .await
}

/// tower-drain with `restart::Listeners`: inherited, handed over or bound
/// with `SO_REUSEPORT`; SIGTERM drains.
async fn serve_drain(addr: SocketAddr, handoff: Option<&Path>) -> std::io::Result<()> {
    let watch = Watch::new();
    watch.trigger_on_signals()?;
    let mut builder = Listeners::builder().tcp("http", addr).reuse_port(true);
    if let Some(path) = handoff {
        builder = builder.handoff(path);
    }
    let listener = builder.open(&watch).await?.tcp("http")?;
    let app = app().layer(DrainLayer::new(watch.clone()));
    axum::serve(listener, app)
        .with_graceful_shutdown(watch.shutdown_signal())
        .await?;
    match watch.drained().await.forced {
        None => Ok(()),
        Some(cause) => Err(std::io::Error::other(format!("drain forced: {cause}"))),
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: restarts [--restarts N] [--clients N] [--between N]");
    ExitCode::from(2)
}

fn flag(args: &[String], name: &str, default: usize) -> Option<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1)?.parse().ok(),
        None => Some(default),
    }
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
    let (Some(restarts), Some(clients), Some(between)) = (
        flag(&args, "--restarts", 20),
        flag(&args, "--clients", 6),
        flag(&args, "--between", 500),
    ) else {
        return usage();
    };
    let options = Options {
        restarts,
        clients,
        between,
    };
    let mut tallies = Vec::new();
    for way in WAYS {
        eprintln!("measuring: {}", way.name);
        tallies.push((way, measure(way, &options).await));
    }
    print(&options, &tallies);
    ExitCode::SUCCESS
}
