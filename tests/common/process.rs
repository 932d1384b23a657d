//! The reference server (`examples/server.rs`) as a real process.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use super::{localhost, within, PATIENCE};

/// The example binary, which `cargo test` builds beside the tests.
pub fn server_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test`",
        path.display()
    );
    path
}

/// A running reference server and its log.
pub struct Process {
    child: Child,
    /// The server's stderr, line by line, read by a task that never stops,
    /// so the server never blocks on a full pipe.
    pub log: mpsc::UnboundedReceiver<String>,
    /// The log lines up to the one that says the server listens.
    pub startup: Vec<String>,
    pub addr: SocketAddr,
}

impl Process {
    /// Starts the server on a free port; `shell_prefix` runs before it in
    /// `sh` (for `ulimit`).
    pub async fn start(shell_prefix: &str, args: &str) -> Self {
        Self::start_with(
            shell_prefix,
            &format!("--addr 127.0.0.1:0 {args}"),
            Stdio::null(),
        )
        .await
    }

    /// Starts the server with `args` after `shell_prefix` in `sh`, with
    /// `stdin` as its standard input, and waits until it listens.
    pub async fn start_with(shell_prefix: &str, args: &str, stdin: Stdio) -> Self {
        Self::spawn(&server_binary(), shell_prefix, args, stdin).await
    }

    /// Starts `program` as [`start_with`](Self::start_with) starts the
    /// server, and waits until it logs `listening ... addr=ADDR`.
    pub async fn spawn(program: &Path, shell_prefix: &str, args: &str, stdin: Stdio) -> Self {
        let command = format!("{shell_prefix} exec {} {args}", program.display());
        let mut child = Command::new("sh")
            .args(["-c", &command])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(stdin)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, log) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        let mut process = Self {
            child,
            log,
            startup: Vec::new(),
            addr: localhost(),
        };
        let line = within("the server to listen", async {
            loop {
                let line = process.log.recv().await;
                let line = line.unwrap_or_else(|| panic!("the log ended before it listened"));
                process.startup.push(line.clone());
                if line.contains("listening") {
                    return line;
                }
            }
        })
        .await;
        let addr = line
            .split("addr=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        process.addr = addr.parse().unwrap();
        process
    }

    /// Reads the log until a line contains `text`, and returns that line.
    pub async fn wait_for_log(&mut self, text: &str) -> String {
        within(text, async {
            loop {
                let line = self.log.recv().await;
                let line = line.unwrap_or_else(|| panic!("the log ended before {text:?}"));
                if line.contains(text) {
                    return line;
                }
            }
        })
        .await
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    pub fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }

    pub async fn exit(self) -> ExitStatus {
        self.exit_within(PATIENCE)
            .await
            .unwrap_or_else(|| panic!("timed out waiting for the server to exit"))
    }

    /// Waits up to `patience` for the server to exit; `None` if it did not
    /// (it is killed when dropped).
    pub async fn exit_within(mut self, patience: Duration) -> Option<ExitStatus> {
        let status = tokio::time::timeout(patience, self.child.wait())
            .await
            .ok()?;
        Some(status.unwrap())
    }

    /// From now on, passes the server's warnings and errors on to this
    /// program's stderr instead of keeping its log.
    pub fn echo_problems(&mut self) {
        let (_, closed) = mpsc::unbounded_channel();
        let mut log = std::mem::replace(&mut self.log, closed);
        tokio::spawn(async move {
            while let Some(line) = log.recv().await {
                if [" WARN ", " ERROR ", "error:"]
                    .iter()
                    .any(|w| line.contains(w))
                {
                    eprintln!("  server: {line}");
                }
            }
        });
    }
}

/// Runs the server with `args` to completion; exit status and stderr.
pub async fn run(args: &[&str]) -> (ExitStatus, String) {
    let output = within(
        "the server to exit",
        Command::new(server_binary())
            .args(args)
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the server with `args` after `shell_prefix` in `sh`, with `stdin`
/// as its standard input, to completion; exit status and stderr.
pub async fn run_with(shell_prefix: &str, args: &str, stdin: Stdio) -> (ExitStatus, String) {
    let command = format!("{shell_prefix} exec {} {args}", server_binary().display());
    let output = within(
        "the server to exit",
        Command::new("sh")
            .args(["-c", &command])
            .env("NO_COLOR", "1")
            .stdin(stdin)
            .output(),
    )
    .await
    .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The `sh` prefix that passes the server's standard input to it as a
/// socket inherited from a service manager: fd 3, `LISTEN_PID` its own pid.
pub const AS_SERVICE_MANAGER: &str =
    "exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http;";

/// Sends the signal `name` (such as `"TERM"`) to process `pid`.
pub fn send_signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Sends SIGTERM to `child` and waits for it to exit.
pub async fn terminate(mut child: Child) -> ExitStatus {
    send_signal(child.id().unwrap(), "TERM");
    within("the server to exit", child.wait()).await.unwrap()
}
