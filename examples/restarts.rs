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

mod support;

use std::{
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::watch,
    task::JoinHandle,
};
use tower_drain::{restart::Listeners, DrainLayer, Watch};

use support::{answer, app, failure, send, Outcome, Tally};

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
struct Row {
    way: Way,
    tally: Tally,
    /// Old servers that did not exit with status 0.
    failed_exits: usize,
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
                    "drain" => (AS_SERVICE_MANAGER, args),
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
        old.exit().await
    }
}

/// Restarts the server `options.restarts` times the way `way` does, under load.
async fn measure(way: Way, options: &Options) -> Row {
    let launcher = Launcher::new(way);
    let first = match way.socket {
        Socket::ServiceManager => launcher.held.local_addr().expect("its address"),
        _ => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let mut server = launcher.start(first).await;
    let addr = server.addr;
    let load = Load::start(addr, options.clients);
    let mut failed_exits = 0;
    for _ in 0..options.restarts {
        load.wait_for(options.between).await;
        let successor = launcher.start(addr).await;
        if !launcher.stop(server).await {
            failed_exits += 1;
        }
        server = successor;
    }
    load.wait_for(options.between).await;
    let tally = load.stop().await;
    server.signal("TERM");
    server.exit().await;
    Row {
        way,
        tally,
        failed_exits,
    }
}

/// Prints the table.
fn print(options: &Options, rows: &[Row]) {
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
            t.sent - t.served,
            t.reset,
            t.refused,
            t.unanswered,
            t.other,
            row.failed_exits
        );
    }
}

// ---- the servers' processes and the load ----

/// The `sh` prefix that passes a server's standard input to it as a socket
/// inherited from a service manager: fd 3, `LISTEN_PID` its own pid.
const AS_SERVICE_MANAGER: &str =
    "exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http;";

/// How long an old server may take to exit before it is killed.
const EXIT_PATIENCE: Duration = Duration::from_secs(60);

/// A running server process.
struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Process {
    /// Runs `program` with `args` after `shell_prefix` in `sh`, with `stdin`
    /// as its standard input, and waits until it logs `listening ... addr=ADDR`.
    async fn spawn(program: &Path, shell_prefix: &str, args: &str, stdin: Stdio) -> Self {
        let command = format!("{shell_prefix} exec {} {args}", program.display());
        let mut child = Command::new("sh")
            .args(["-c", &command])
            .stdin(stdin)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start a server");
        let mut log = BufReader::new(child.stderr.take().expect("piped")).lines();
        let addr = loop {
            let line = log.next_line().await.expect("read the server's log");
            let line = line.expect("the server exited before it listened");
            if let Some((_, addr)) = line
                .split_once("listening")
                .and_then(|(_, rest)| rest.split_once("addr="))
            {
                break addr
                    .split(' ')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .expect("an address");
            }
        };
        // Read the rest of the log, so that the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
        Self { child, addr }
    }

    /// Sends the signal `name` to the server.
    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the server is running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Waits for the server to exit, killing it after [`EXIT_PATIENCE`];
    /// whether it exited by itself with status 0.
    async fn exit(mut self) -> bool {
        match tokio::time::timeout(EXIT_PATIENCE, self.child.wait()).await {
            Ok(status) => status.expect("wait for the server").success(),
            Err(_) => false,
        }
    }
}

/// Clients that each open a new connection per request, without pause.
struct Load {
    stop: Arc<AtomicBool>,
    /// Requests completed so far, whatever their outcome.
    done: Arc<watch::Sender<usize>>,
    clients: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// Starts `clients` clients sending to `addr`.
    fn start(addr: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(watch::Sender::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        outcomes.push(match send(addr, true).await {
                            Ok(stream) => answer(stream).await,
                            Err(error) => failure(&error),
                        });
                        done.send_modify(|done| *done += 1);
                    }
                    outcomes
                })
            })
            .collect();
        Self {
            stop,
            done,
            clients,
        }
    }

    /// Waits until `requests` more requests have completed.
    async fn wait_for(&self, requests: usize) {
        let mut done = self.done.subscribe();
        let target = *done.borrow() + requests;
        done.wait_for(|done| *done >= target)
            .await
            .expect("the load holds the sender");
    }

    /// Stops the clients; what became of every request they sent.
    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for client in self.clients {
            for outcome in client.await.expect("a client") {
                tally.add(outcome);
            }
        }
        tally
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
    let mut rows = Vec::new();
    for way in WAYS {
        eprintln!("measuring: {}", way.name);
        rows.push(measure(way, &options).await);
    }
    print(&options, &rows);
    ExitCode::SUCCESS
}
