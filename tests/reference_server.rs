//! The reference server (`examples/server.rs`) as a real process: signals,
//! exit codes, bad flags, a port in use, and running out of file descriptors.

mod common;

use common::{process::*, *};
use tokio::{io::AsyncReadExt, net::TcpStream};

/// SIGTERM drains, and so does SIGHUP (whose default would kill the server
/// mid-request): the request sent just before it is answered, the server
/// logs the report and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sighup_drain_and_exit_zero() {
    for signal in ["TERM", "HUP"] {
        let mut server = Process::start("", "").await;
        let mut client = connect_and_send(server.addr, &request("/slow?ms=200"))
            .await
            .unwrap();
        server.signal(signal);
        server.wait_for_log("drain started").await;

        let outcome = within("the response", read_response(&mut client)).await;
        assert_eq!(
            outcome,
            Outcome::Response {
                status: 200,
                connection_close: true
            },
            "SIG{signal}"
        );
        server.wait_for_log("drain complete").await;
        assert_eq!(server.exit().await.code(), Some(0), "SIG{signal}");
    }
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

/// A request still running at the deadline has its connection closed and
/// counted as forced (the server exits 1); one answered during the same
/// drain is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_cut_off_at_the_deadline_is_forced() {
    let cut = request("/slow?ms=3600000");
    let (stopped, code) = drain_beside("--grace 2", &cut, "slow request started ms=3600000").await;
    assert!(
        stopped.contains("report=shutdown forced by the deadline after "),
        "{stopped}"
    );
    assert!(stopped.contains(" 1 connection forced"), "{stopped}");
    assert_eq!(code, Some(1));
}

/// With a lame duck, `DrainLayer` counts requests: one cut off at the
/// deadline is reported as aborted, one answered as completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_cut_off_at_the_deadline_is_aborted() {
    let cut = request("/slow?ms=3600000");
    let (stopped, code) = drain_beside(
        "--grace 3 --lame-duck 1",
        &cut,
        "slow request started ms=3600000",
    )
    .await;
    assert!(
        stopped.contains("1 request completed, 1 request aborted"),
        "{stopped}"
    );
    assert_eq!(code, Some(1));
}

/// A client that sends part of a request head and stalls holds the drain
/// only for the request-head grace (not the 30 s deadline): it is closed
/// without a reset, counted apart, and the server exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_head_does_not_hold_the_drain() {
    let (stopped, code) = drain_beside("", b"GET / HTT", "").await;
    assert!(
        stopped.contains(" 1 connection with an incomplete request head closed"),
        "{stopped}"
    );
    assert!(!stopped.contains("forced"), "{stopped}");
    assert_eq!(code, Some(0));
}

/// Starts the server with `args`, and a client that sends `bytes` (then,
/// unless empty, waits for the log line `started`), and one whose request
/// takes 200 ms; then SIGTERM. The second must be answered and the first
/// closed unanswered. Returns the server's last log line and exit code.
async fn drain_beside(args: &str, bytes: &[u8], started: &str) -> (String, Option<i32>) {
    let mut server = Process::start("", args).await;
    let mut unanswered = connect_and_send(server.addr, bytes).await.unwrap();
    if !started.is_empty() {
        server.wait_for_log(started).await;
    }
    let mut answered = connect_and_send(server.addr, &request("/slow?ms=200"))
        .await
        .unwrap();
    server.wait_for_log("slow request started ms=200").await;
    server.signal("TERM");

    let outcome = within("the answer", read_response(&mut answered)).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    let outcome = within("the close", read_response(&mut unanswered)).await;
    assert_eq!(outcome, Outcome::Unanswered);
    let stopped = server.wait_for_log("stopped").await;
    (stopped, server.exit().await.code())
}

/// Bad flags print the usage and exit 2.
#[tokio::test]
async fn bad_flags_exit_two() {
    for args in [
        &["--bogus"][..],
        &["--grace", "soon"],
        &["--addr"],
        &["--addr", "nowhere"],
        // An upgrade needs a handoff path, and a signal that does not drain.
        &["--upgrade-on", "USR2"],
        &["--upgrade-on", "TERM", "--handoff", "/tmp/unused.sock"],
        &["--upgrade-on", "KILL", "--handoff", "/tmp/unused.sock"],
    ] {
        let (status, stderr) = run(args).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("usage: server"), "{args:?}: {stderr}");
    }
}

/// `--help` prints the usage on standard output and exits 0.
#[tokio::test]
async fn help_prints_the_usage_and_exits_zero() {
    let output = within(
        "the server to exit",
        tokio::process::Command::new(server_binary())
            .arg("--help")
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("usage: server"));
}

/// A grace of zero would force every drain at once: bad input, exit 2.
#[tokio::test]
async fn zero_grace_exits_two() {
    let (status, stderr) = run(&["--grace", "0"]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the grace must be longer than zero"),
        "{stderr}"
    );
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

/// Out of file descriptors at SIGTERM, the drain cannot accept the queued
/// clients and the close resets them: the report counts each one, the log
/// says so at error level, and the server exits 1, not 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_in_the_queue_are_reported_and_exit_one() {
    let mut server = Process::start("ulimit -n 48 &&", "").await;
    let mut clients = Vec::new();
    for _ in 0..80 {
        clients.push(connect_and_send(server.addr, &request("/")).await.unwrap());
    }
    server
        .wait_for_log("accept failed; retrying after a pause")
        .await;
    server.signal("TERM");

    let mut reset = 0;
    for mut client in clients {
        match within("an outcome", read_response(&mut client)).await {
            Outcome::Reset => reset += 1,
            outcome => assert!(outcome.is_ok(), "{outcome:?}"),
        }
    }
    assert!(reset > 0, "every client was served: nothing to report");
    server
        .wait_for_log("closing the listener with connections still queued")
        .await;
    let stopped = server.wait_for_log("stopped").await;
    let noun = if reset == 1 {
        "connection"
    } else {
        "connections"
    };
    assert!(
        stopped.contains(&format!(" {reset} {noun} reset in the queue")),
        "{reset} reset: {stopped}"
    );
    assert_eq!(server.exit().await.code(), Some(1));
}

/// The deadline holds even when the server reads no more from a
/// connection: a request pipelined behind one that would take an hour sits
/// in hyper's buffer, yet at the deadline the connection is closed and the
/// server exits (1, forced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_holds_for_a_request_pipelined_behind_a_slow_one() {
    let mut server = Process::start("", "--grace 2").await;
    let mut pipelined = request("/slow?ms=3600000");
    pipelined.extend(request("/"));
    let _client = connect_and_send(server.addr, &pipelined).await.unwrap();
    server.wait_for_log("slow request started").await;
    server.signal("TERM");
    let stopped = server.wait_for_log("stopped").await;
    assert!(
        stopped.contains("report=shutdown forced by the deadline after "),
        "{stopped}"
    );
    assert!(stopped.contains(" 1 connection forced"), "{stopped}");
    assert_eq!(server.exit().await.code(), Some(1));
}

/// An HTTP/2 client that sends the connection preface and SETTINGS, then
/// nothing (as pools that dial ahead do), opened no stream: the drain closes
/// it after the first-byte grace, not at the deadline, and nothing is forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connection_without_a_stream_does_not_hold_the_drain() {
    let mut server = Process::start("", "--grace 3600").await;
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // an empty SETTINGS frame
    let mut client = connect_and_send(server.addr, &preface).await.unwrap();
    // The server's SETTINGS: it has read the preface and chosen HTTP/2.
    let mut settings = [0; 9];
    within("the server's SETTINGS", client.read_exact(&mut settings))
        .await
        .unwrap();
    assert_eq!(settings[3], 4, "{settings:?}");
    server.signal("TERM");
    let stopped = server.wait_for_log("stopped").await;
    assert!(!stopped.contains("forced"), "{stopped}");
    assert_eq!(server.exit().await.code(), Some(0));
}

/// A server whose stderr has gone (a pipe whose reader exited) still drains
/// at SIGTERM and exits 0: no log line may stop the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_stderr_closed() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut child = tokio::process::Command::new(server_binary())
        .args(["--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    within("the server to listen", async {
        while !log
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .contains("listening")
        {}
    })
    .await;
    drop(log);

    assert_eq!(terminate(child).await.code(), Some(0));
}
