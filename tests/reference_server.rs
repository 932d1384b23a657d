//! The reference server (`examples/server.rs`) as a real process: signals,
//! exit codes, bad flags, a port in use, and running out of file descriptors.

mod common;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
};

use common::*;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
    sync::mpsc,
};

/// The example binary, which `cargo test` builds beside the tests.
fn server_binary() -> PathBuf {
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
struct Process {
    child: Child,
    /// The server's stderr, line by line, read by a task that never stops,
    /// so the server never blocks on a full pipe.
    log: mpsc::UnboundedReceiver<String>,
    addr: SocketAddr,
}

impl Process {
    /// Starts the server on a free port; `shell_prefix` runs before it in
    /// `sh` (for `ulimit`).
    async fn start(shell_prefix: &str, args: &str) -> Self {
        let command = format!(
            "{shell_prefix} exec {} --addr 127.0.0.1:0 {args}",
            server_binary().display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &command])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
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
            addr: localhost(),
        };
        let line = process.wait_for_log("listening").await;
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
    async fn wait_for_log(&mut self, text: &str) -> String {
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

    fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn exit(mut self) -> ExitStatus {
        within("the server to exit", self.child.wait())
            .await
            .unwrap()
    }
}

/// Runs the server with `args` to completion; exit status and stderr.
async fn run(args: &[&str]) -> (ExitStatus, String) {
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

/// SIGTERM drains: the request sent just before it is answered, the server
/// logs the report and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let mut server = Process::start("", "").await;
    let mut client = connect_and_send(server.addr, &request("/slow?ms=200"))
        .await
        .unwrap();
    server.signal("TERM");
    server.wait_for_log("drain started").await;

    let outcome = within("the response", read_response(&mut client)).await;
    assert_eq!(
        outcome,
        Outcome::Response {
            status: 200,
            connection_close: true
        }
    );
    server.wait_for_log("drain complete").await;
    assert_eq!(server.exit().await.code(), Some(0));
}

/// A second signal forces the drain: the server exits 1 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_forces_and_exits_one() {
    let mut server = Process::start("", "--grace 3600").await;
    let _client = connect_and_send(server.addr, &request("/slow?ms=3600000"))
        .await
        .unwrap();
    server.signal("TERM");
    server.wait_for_log("drain started").await;
    server.signal("INT");
    server.wait_for_log("drain forced").await;
    assert_eq!(server.exit().await.code(), Some(1));
}

/// Bad flags print the usage and exit 2.
#[tokio::test]
async fn bad_flags_exit_two() {
    for args in [
        &["--bogus"][..],
        &["--grace", "soon"],
        &["--addr"],
        &["--addr", "nowhere"],
    ] {
        let (status, stderr) = run(args).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("usage: server"), "{args:?}: {stderr}");
    }
}

/// A port already in use is a clear error, not a panic.
#[tokio::test]
async fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, stderr) = run(&["--addr", &addr]).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Out of file descriptors (`EMFILE`), the server logs, backs off and keeps
/// the connection waiting in the queue, then serves it once descriptors are
/// free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_backs_off_and_recovers() {
    let mut server = Process::start("ulimit -n 48 &&", "").await;
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    server
        .wait_for_log("accept failed; retrying after a pause")
        .await;

    let mut waiting = connect_and_send(server.addr, &closing_request("/"))
        .await
        .unwrap();
    drop(idle);
    let outcome = within("the waiting response", read_response(&mut waiting)).await;
    assert!(outcome.is_ok(), "{outcome:?}");

    server.signal("TERM");
    assert_eq!(server.exit().await.code(), Some(0));
}
