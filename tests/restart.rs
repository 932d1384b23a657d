//! Restarts under continuous load, with the reference server as real
//! processes: handing the socket to a successor (`--handoff`), and a socket
//! held by a service manager (here the test) and shared by old and new.

mod common;

use std::process::Stdio;

use common::{load::Load, process::*, *};

/// Waits for `old` to report that it left its socket to another process,
/// and to exit 0.
async fn assert_left_and_exited(mut old: Process) {
    old.wait_for_log("1 listener left to another process").await;
    assert_eq!(old.exit().await.code(), Some(0));
}

/// Under load from 6 clients, restarts `server` five times with `restart`,
/// which returns the successor once the old server has exited; checks that
/// every request was answered and returns the last server.
async fn five_restarts_under_load<F, Fut>(mut server: Process, mut restart: F) -> Process
where
    F: FnMut(Process) -> Fut,
    Fut: std::future::Future<Output = Process>,
{
    let load = Load::builder(server.addr).clients(6).start().await;
    for _ in 0..5 {
        load.wait_for(200).await;
        server = restart(server).await;
    }
    load.wait_for(200).await;
    let sent = load.assert_all_served().await;
    assert!(sent >= 1200, "{sent}");
    server
}

/// Five handoffs in a row under load: every request answered, every old
/// server exits 0 by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_restarts_under_load_lose_nothing() {
    let path = handoff_path("handoff-load");
    let handoff = format!("--handoff {}", path.display());
    let server = Process::start("", &handoff).await;
    let args = format!("--addr {} {handoff}", server.addr);
    let server = five_restarts_under_load(server, |old| {
        let args = &args;
        async move {
            let mut successor = Process::start_with("", args, Stdio::null()).await;
            assert_eq!(successor.addr, old.addr);
            successor
                .wait_for_log("took over from the predecessor")
                .await;
            assert_left_and_exited(old).await;
            successor
        }
    })
    .await;
    server.signal("TERM");
    assert_eq!(server.exit().await.code(), Some(0));
}

/// A socket a service manager holds (fd 3, `LISTEN_FDS`): a successor
/// starts on it, SIGTERM to the old one leaves the queue to the successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_manager_socket_restarts_under_load_lose_nothing() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let start = || async {
        let fd = std::os::fd::OwnedFd::from(held.try_clone().unwrap());
        // `--addr` is ignored: the inherited socket is served.
        Process::start_with(AS_SERVICE_MANAGER, "--addr 127.0.0.1:1", Stdio::from(fd)).await
    };
    let server = start().await;
    assert_eq!(server.addr, held.local_addr().unwrap());
    let server = five_restarts_under_load(server, |old| async {
        let successor = start().await;
        old.signal("TERM");
        assert_left_and_exited(old).await;
        successor
    })
    .await;
    server.signal("TERM");
    assert_left_and_exited(server).await;
}

/// A successor that closes the connection before it says it is ready
/// leaves the old server serving, and the path still hands over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_successor_leaves_the_old_server_serving() {
    let path = handoff_path("handoff-failed");
    let handoff = format!("--handoff {}", path.display());
    let mut server = Process::start("", &handoff).await;
    let addr = server.addr;

    let mut quitter = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut message = [0; 64];
    let read = tokio::io::AsyncReadExt::read(&mut quitter, &mut message).await;
    assert!(read.unwrap() > 0);
    drop(quitter);
    server
        .wait_for_log("handoff to a successor failed; still serving")
        .await;
    assert!(one_request(addr, "/").await.is_ok());

    let args = format!("--addr {addr} {handoff}");
    let mut successor = Process::start_with("", &args, Stdio::null()).await;
    successor
        .wait_for_log("took over from the predecessor")
        .await;
    assert_left_and_exited(server).await;
    assert!(one_request(addr, "/").await.is_ok());
    successor.signal("TERM");
    assert_eq!(successor.exit().await.code(), Some(0));
}

/// A socket file nobody listens on (a server that exited) is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_handoff_path_is_taken_over() {
    let path = handoff_path("handoff-stale");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let handoff = format!("--handoff {}", path.display());
    let server = Process::start("", &handoff).await;
    assert!(one_request(server.addr, "/").await.is_ok());

    let args = format!("--addr {} {handoff}", server.addr);
    let mut successor = Process::start_with("", &args, Stdio::null()).await;
    successor
        .wait_for_log("took over from the predecessor")
        .await;
    assert_left_and_exited(server).await;
    successor.signal("TERM");
    assert_eq!(successor.exit().await.code(), Some(0));
}

/// Bad restart input is a clear message and exit 2.
#[tokio::test]
async fn bad_restart_input_exits_two() {
    let dir = handoff_path("handoff-bad");
    let regular = dir.with_file_name("regular");
    std::fs::write(&regular, "not a socket").unwrap();
    let cases = [
        (
            "",
            format!(
                "--handoff {}",
                dir.with_file_name("missing/h.sock").display()
            ),
            Stdio::null(),
            "its directory does not exist",
        ),
        (
            "",
            format!("--handoff {}", regular.display()),
            Stdio::null(),
            "exists and is not a socket",
        ),
        (
            AS_SERVICE_MANAGER,
            String::new(),
            Stdio::from(std::fs::File::open(&regular).unwrap()),
            "inherited descriptor 3",
        ),
        (
            AS_SERVICE_MANAGER,
            String::new(),
            Stdio::from(std::os::fd::OwnedFd::from(
                std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            )),
            "is not a stream socket",
        ),
    ];
    for (prefix, args, stdin, message) in cases {
        let (status, stderr) = run_with(prefix, &args, stdin).await;
        assert_eq!(status.code(), Some(2), "{args}: {stderr}");
        assert!(stderr.contains(message), "{args}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// systemd's own `systemd-socket-activate` binds the socket and starts the
/// server at the first connection, which waits in the queue meanwhile and
/// is answered; the server serves the inherited socket and drains at
/// SIGTERM with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_socket_activate_starts_the_server() {
    use tokio::io::{AsyncBufReadExt, BufReader, Lines};

    /// Reads `log` until a line contains `text`.
    async fn wait_for(
        log: &mut Lines<BufReader<tokio::process::ChildStderr>>,
        text: &str,
    ) -> String {
        within(text, async {
            while let Some(line) = log.next_line().await.unwrap() {
                if line.contains(text) {
                    return line;
                }
            }
            panic!("the log ended before {text:?}")
        })
        .await
    }

    let tool = "/usr/bin/systemd-socket-activate";
    assert!(
        std::path::Path::new(tool).exists(),
        "{tool} is missing: install Debian's systemd package (.ci/run does)"
    );
    // The tool takes no port 0: a port free a moment ago.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = tokio::process::Command::new(tool)
        .arg(format!("--listen={addr}"))
        .arg(server_binary())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_for(&mut log, "Listening on").await;

    let first = tokio::spawn(one_request(addr, "/"));
    let listening = wait_for(&mut log, "listening").await;
    assert!(listening.contains("origin=ServiceManager"), "{listening}");
    assert!(within("the first request", first).await.unwrap().is_ok());
    assert!(one_request(addr, "/").await.is_ok());

    assert_eq!(terminate(child).await.code(), Some(0));
}

/// A server in a shutdown's lame duck period refuses a successor on its
/// handoff path: taking over would trigger the drain a second time and
/// force it. The successor exits 2, the old server drains cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_refuses_a_successor() {
    let path = handoff_path("handoff-draining");
    let handoff = format!("--handoff {}", path.display());
    let mut server = Process::start("", &format!("--lame-duck 2 {handoff}")).await;
    server.signal("TERM");
    server.wait_for_log("lame duck period started").await;

    let addr = server.addr.to_string();
    let path = path.display().to_string();
    let (status, stderr) = run(&["--addr", &addr, "--handoff", &path]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already draining"), "{stderr}");

    let report = server.wait_for_log("report=").await;
    assert!(report.contains("shutdown drained in"), "{report}");
    assert_eq!(server.exit().await.code(), Some(0));
}
