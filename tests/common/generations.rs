//! Restarts of the reference server as real processes: each generation of
//! it, and the switch from one generation to the next, by handoff or on a
//! socket held as a service manager holds it.

use std::process::Stdio;

use super::{
    handoff_path,
    process::{Process, AS_SERVICE_MANAGER},
};

/// How the reference server is restarted, and what every generation of it
/// is started with.
pub enum Generations {
    /// `--handoff PATH`: a successor takes the socket over from the old
    /// server through `PATH`, and the old one drains and exits by itself.
    Handoff {
        /// Every flag but `--addr`.
        args: String,
    },
    /// A socket the test holds as systemd holds it: passed to each
    /// generation as fd 3 with `LISTEN_FDS`/`LISTEN_PID`; the old one drains
    /// on SIGTERM once its successor listens, leaving the queue to it.
    HeldSocket {
        socket: std::net::TcpListener,
        args: String,
    },
}

impl Generations {
    /// Handoff restarts through a fresh path for the test `test`, with
    /// `args` (beyond `--addr` and `--handoff`); the first generation,
    /// listening on a free port.
    pub async fn handoff(test: &str, args: &str) -> (Self, Process) {
        let path = handoff_path(test);
        let args = format!("--handoff {} {args}", path.display());
        let first = Process::start("", &args).await;
        let args = format!("--addr {} {args}", first.addr);
        (Self::Handoff { args }, first)
    }

    /// Restarts on a socket bound to a free port and held by the test, with
    /// `args` (beyond `--addr`, which the server ignores for the inherited
    /// socket); the first generation.
    pub async fn held_socket(args: &str) -> (Self, Process) {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let generations = Self::HeldSocket {
            socket,
            args: format!("--addr 127.0.0.1:1 {args}"),
        };
        let first = generations.start().await;
        (generations, first)
    }

    /// How the generations take over from one another, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Handoff { .. } => "handoff",
            Self::HeldSocket { .. } => "held socket",
        }
    }

    /// Starts a generation, and waits until it listens: by handoff, it takes
    /// the socket over from the server listening on the path.
    async fn start(&self) -> Process {
        match self {
            Self::Handoff { args } => Process::start_with("", args, Stdio::null()).await,
            Self::HeldSocket { socket, args } => {
                let fd = std::os::fd::OwnedFd::from(socket.try_clone().unwrap());
                let server = Process::start_with(AS_SERVICE_MANAGER, args, Stdio::from(fd)).await;
                assert_eq!(server.addr, socket.local_addr().unwrap());
                server
            }
        }
    }

    /// Starts the successor of `old` on the same socket, and waits for `old`
    /// to drain as a restart and exit 0. The successor, and `old`'s drain
    /// report.
    pub async fn restart(&self, mut old: Process) -> (Process, String) {
        let mut successor = self.start().await;
        assert_eq!(successor.addr, old.addr);
        match self {
            Self::Handoff { .. } => {
                successor
                    .wait_for_log("took over from the predecessor")
                    .await;
            }
            Self::HeldSocket { .. } => old.signal("TERM"),
        }
        let report = drain_report(&mut old).await;
        assert!(
            report.starts_with("restart drained in"),
            "not a restart: {report}"
        );
        assert_eq!(old.exit().await.code(), Some(0), "{report}");
        (successor, report)
    }
}

/// Reads `server`'s log until its drain report, and returns the report
/// (`restart drained in ...` or `shutdown drained in ...`).
pub async fn drain_report(server: &mut Process) -> String {
    let line = server.wait_for_log(" report=").await;
    line.split(" report=").nth(1).unwrap().to_owned()
}
