//! Upgrades in place as operators run them, with the reference server as
//! real processes: `--upgrade-on USR2` starts the successor, and the test
//! plays the service manager's part for real, on a Unix datagram socket
//! named by `NOTIFY_SOCKET`, reading each message with its sender's pid as
//! systemd does (`SO_PASSCRED`).
//!
//! The test process makes itself a child subreaper, so that each successor,
//! orphaned when its predecessor exits, becomes its child and its exit
//! status can be read.

mod common;

use std::{
    collections::HashSet,
    io::IoSliceMut,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::net::UnixDatagram},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
};

use common::{load::Load, process::*, *};
use nix::{
    cmsg_space,
    sys::{
        socket::{recvmsg, setsockopt, sockopt::PassCred, ControlMessageOwned, MsgFlags},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};
use tokio::sync::mpsc;

/// What a service manager receives on `NOTIFY_SOCKET`: each message with
/// the pid of the process that sent it.
struct ServiceManager {
    path: PathBuf,
    messages: mpsc::UnboundedReceiver<(u32, Vec<String>)>,
    /// Every process that sent a message.
    senders: Arc<Mutex<HashSet<u32>>>,
}

/// Kills the servers this test adopted that still run, so that a failed
/// test leaves none behind (they would hold its output pipe open).
impl Drop for ServiceManager {
    fn drop(&mut self) {
        for &pid in self.senders.lock().unwrap().iter() {
            let pid = Pid::from_raw(pid as i32);
            if let Ok(WaitStatus::StillAlive) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                let _ = waitpid(pid, None);
            }
        }
    }
}

impl ServiceManager {
    fn listen(test: &str) -> Self {
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let path = handoff_path(&format!("{test}-manager")).with_file_name("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        setsockopt(&socket, PassCred, &true).unwrap();
        let (tx, messages) = mpsc::unbounded_channel();
        let senders = Arc::new(Mutex::new(HashSet::new()));
        let seen = senders.clone();
        std::thread::spawn(move || loop {
            let mut buf = [0; 4096];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = cmsg_space!(nix::sys::socket::UnixCredentials);
            let received = recvmsg::<()>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            );
            let Ok(message) = received else { return };
            let pid = message.cmsgs().unwrap().find_map(|cmsg| match cmsg {
                ControlMessageOwned::ScmCredentials(credentials) => Some(credentials.pid()),
                _ => None,
            });
            let len = message.bytes;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            let lines = text.lines().map(str::to_owned).collect();
            let pid = pid.unwrap() as u32;
            seen.lock().unwrap().insert(pid);
            if tx.send((pid, lines)).is_err() {
                return;
            }
        });
        Self {
            path,
            messages,
            senders,
        }
    }

    /// The shell prefix that gives the server `NOTIFY_SOCKET`.
    fn env(&self) -> String {
        format!("export NOTIFY_SOCKET={};", self.path.display())
    }

    /// The next message and its sender.
    async fn next(&mut self) -> (u32, Vec<String>) {
        within("a message to the service manager", self.messages.recv())
            .await
            .unwrap()
    }

    /// The next message, which must come from `pid` and consist of `lines`,
    /// where a line ending in `*` stands for any line it begins.
    async fn expect(&mut self, pid: u32, lines: &[&str]) -> Vec<String> {
        let (from, message) = self.next().await;
        assert_eq!(from, pid, "{message:?}");
        assert_eq!(message.len(), lines.len(), "{message:?}");
        for (line, expected) in message.iter().zip(lines) {
            if let Some(start) = expected.strip_suffix('*') {
                assert!(line.starts_with(start), "{message:?}");
            } else {
                assert_eq!(line, expected, "{message:?}");
            }
        }
        message
    }

    /// Asserts that no message is waiting.
    fn assert_quiet(&mut self) {
        if let Ok(message) = self.messages.try_recv() {
            panic!("unexpected message {message:?}");
        }
    }
}

/// The value of `key=` in `message`.
fn value<'a>(message: &'a [String], key: &str) -> &'a str {
    message
        .iter()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {message:?}"))
}

/// Waits for `pid`, a process this test adopted, to exit; its exit code.
async fn reap(pid: u32) -> i32 {
    let wait = tokio::task::spawn_blocking(move || waitpid(Pid::from_raw(pid as i32), None));
    match within("a predecessor to exit", wait).await.unwrap() {
        Ok(WaitStatus::Exited(_, code)) => code,
        other => panic!("{pid}: {other:?}"),
    }
}

/// What `pid`'s descriptors are, but for Unix datagram sockets: the socket
/// sd_notify(3) opens for each message may still be open for a few
/// microseconds after the message arrived here. A server holds no other.
fn descriptors(pid: u32) -> Vec<PathBuf> {
    // `/proc/net/unix`: Num RefCount Protocol Flags Type St Inode [Path];
    // type 0002 is SOCK_DGRAM.
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    let datagram: HashSet<PathBuf> = unix
        .lines()
        .skip(1)
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [_, _, _, _, "0002", _, inode, ..] => Some(format!("socket:[{inode}]").into()),
                _ => None,
            },
        )
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
        .filter(|link| !datagram.contains(link))
        .collect()
}

/// Sends the upgrade signal to `main` and checks the exchange: `RELOADING=1`
/// from it, then `MAINPID=` and `READY=1` from the successor. Returns the
/// successor's pid.
async fn upgrade(manager: &mut ServiceManager, main: u32, exe: &Path) -> u32 {
    send_signal(main, "USR2");
    let status = format!("STATUS=upgrading: started {}", exe.display());
    manager
        .expect(main, &["RELOADING=1", "MONOTONIC_USEC=*", &status])
        .await;
    let (successor, message) = manager.next().await;
    assert_ne!(successor, main);
    let expected = [
        format!("MAINPID={successor}"),
        "READY=1".into(),
        "STATUS=serving".into(),
    ];
    assert_eq!(message, expected);
    successor
}

/// At SIGTERM: `STOPPING=1` with a longer stop timeout, the drain's
/// progress, and the report of a drain of `kind`, all from `main`.
async fn shut_down(manager: &mut ServiceManager, main: u32, kind: &str) {
    send_signal(main, "TERM");
    let stopping = manager
        .expect(
            main,
            &["STOPPING=1", "EXTEND_TIMEOUT_USEC=*", "STATUS=draining: *"],
        )
        .await;
    // The default grace (30 s) and 5 s for the process to exit.
    let usec: u64 = value(&stopping, "EXTEND_TIMEOUT_USEC").parse().unwrap();
    assert!((30_000_000..=35_000_000).contains(&usec), "{usec}");
    manager
        .expect(main, &["STATUS=draining: listeners closed, *"])
        .await;
    let report = format!("STATUS={kind} drained in *");
    manager.expect(main, &[&report]).await;
}

fn refused(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect(addr).is_err()
}

/// The messages and their order through a start, an upgrade and a
/// shutdown; the process named by `MAINPID` is the one that serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_manager_follows_the_service_through_an_upgrade() {
    let mut manager = ServiceManager::listen("upgrade-notify");
    let handoff = handoff_path("upgrade-notify");
    let args = format!("--handoff {} --upgrade-on USR2", handoff.display());
    let server = Process::start(&manager.env(), &args).await;
    let (first, addr) = (server.pid(), server.addr);
    manager.expect(first, &["READY=1", "STATUS=serving"]).await;

    let successor = upgrade(&mut manager, first, &server_binary()).await;
    assert_eq!(server.exit().await.code(), Some(0));
    // The old process said nothing about its own drain: the successor
    // speaks for the service.
    manager.assert_quiet();
    assert!(one_request(addr, "/").await.is_ok());

    // Once the successor is gone, nothing serves the port.
    shut_down(&mut manager, successor, "shutdown").await;
    assert_eq!(reap(successor).await, 0);
    assert!(refused(addr));
    manager.assert_quiet();
}

/// A socket-activated server's drain leaves the socket to the service
/// manager (a restart, for readiness), but this main process still ends:
/// the service manager is told it is stopping, with the drain's progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activated_server_says_it_is_stopping() {
    let mut manager = ServiceManager::listen("upgrade-activated");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fd = std::os::fd::OwnedFd::from(held.try_clone().unwrap());
    let prefix = format!("{} {AS_SERVICE_MANAGER}", manager.env());
    let server = Process::start_with(&prefix, "--addr 127.0.0.1:1", Stdio::from(fd)).await;
    let pid = server.pid();
    manager.expect(pid, &["READY=1", "STATUS=serving"]).await;
    shut_down(&mut manager, pid, "restart").await;
    assert_eq!(server.exit().await.code(), Some(0));
}

/// Five upgrades by signal under continuous load: every request answered,
/// every old process exits 0, the last successor is the one serving, and
/// it holds as many descriptors as the first server did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_upgrades_under_load_lose_nothing() {
    let mut manager = ServiceManager::listen("upgrade-load");
    let handoff = handoff_path("upgrade-load");
    let args = format!("--handoff {} --upgrade-on USR2", handoff.display());
    let server = Process::start(&manager.env(), &args).await;
    let (first, addr) = (server.pid(), server.addr);
    manager.expect(first, &["READY=1", "STATUS=serving"]).await;
    let idle = descriptors(first).len();

    let load = Load::builder(addr).clients(6).start().await;
    load.wait_for(200).await;
    let mut main = upgrade(&mut manager, first, &server_binary()).await;
    assert_eq!(server.exit().await.code(), Some(0));
    for _ in 1..5 {
        load.wait_for(200).await;
        let successor = upgrade(&mut manager, main, &server_binary()).await;
        assert_eq!(reap(main).await, 0);
        main = successor;
    }
    load.wait_for(200).await;
    let sent = load.assert_all_served().await;
    assert!(sent >= 1200, "{sent}");

    // Once the clients' connections have closed, as many descriptors as
    // the first server had before any load.
    let settled = tokio::time::timeout(PATIENCE, async {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
        while descriptors(main).len() != idle {
            tick.tick().await;
        }
    });
    if settled.await.is_err() {
        let open = descriptors(main);
        panic!(
            "{} descriptors, the first server had {idle}: {open:?}",
            open.len()
        );
    }
    shut_down(&mut manager, main, "shutdown").await;
    assert_eq!(reap(main).await, 0);
    assert!(refused(addr));
}

/// An upgrade that cannot happen leaves the old server serving, and says
/// why: the binary is gone, the new binary exits at once, or it never takes
/// over (a second signal meanwhile is ignored, and a shutdown stops it).
/// The binary at the path the server was started from is the one started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upgrades_leave_the_old_server_serving() {
    let mut manager = ServiceManager::listen("upgrade-fail");
    let handoff = handoff_path("upgrade-fail");
    let exe = handoff.with_file_name("server");
    std::fs::copy(server_binary(), &exe).unwrap();
    let args = format!("--handoff {} --upgrade-on USR2", handoff.display());
    let mut server = Process::spawn(
        &exe,
        &manager.env(),
        &format!("--addr 127.0.0.1:0 {args}"),
        Stdio::null(),
    )
    .await;
    let (pid, addr) = (server.pid(), server.addr);
    manager.expect(pid, &["READY=1", "STATUS=serving"]).await;
    let reloading = format!("STATUS=upgrading: started {}", exe.display());
    let reloading = ["RELOADING=1", "MONOTONIC_USEC=*", reloading.as_str()];

    // The binary is gone.
    std::fs::remove_file(&exe).unwrap();
    send_signal(pid, "USR2");
    manager.expect(pid, &reloading).await;
    let failed = manager
        .expect(
            pid,
            &["READY=1", "STATUS=serving; upgrade failed: cannot start *"],
        )
        .await;
    assert!(
        value(&failed, "STATUS").contains("No such file"),
        "{failed:?}"
    );
    server
        .wait_for_log("upgrade failed, serving on: cannot start")
        .await;
    assert!(one_request(addr, "/").await.is_ok());

    // A new binary that exits at once.
    install_script(&exe, "exit 3");
    send_signal(pid, "USR2");
    manager.expect(pid, &reloading).await;
    manager
        .expect(
            pid,
            &[
                "READY=1",
                "STATUS=serving; upgrade failed: the successor (pid *",
            ],
        )
        .await;
    server
        .wait_for_log("exited (exit status: 3) before it took over")
        .await;
    assert!(one_request(addr, "/").await.is_ok());

    // A new binary that never takes over: a second signal is ignored, and
    // a shutdown stops the successor with the server.
    install_script(&exe, "exec sleep 1000");
    send_signal(pid, "USR2");
    manager.expect(pid, &reloading).await;
    send_signal(pid, "USR2");
    let ignored = server
        .wait_for_log("upgrade signal ignored: an upgrade is under way")
        .await;
    let successor: i32 = ignored.split("pid=").nth(1).unwrap().parse().unwrap();
    assert!(one_request(addr, "/").await.is_ok());
    send_signal(pid, "TERM");
    assert_eq!(server.exit().await.code(), Some(0));
    // The successor did not outlive the server: killed, and reaped by the
    // server or, orphaned, by this test.
    let reaped = within(
        "the successor to end",
        tokio::task::spawn_blocking(move || waitpid(Pid::from_raw(successor), None)),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            reaped,
            Ok(WaitStatus::Signaled(
                _,
                nix::sys::signal::Signal::SIGKILL,
                _
            )) | Err(nix::errno::Errno::ECHILD)
        ),
        "{reaped:?}"
    );
}

/// Replaces `path` with a shell script that runs `body`, as a package
/// manager installs a new binary: a new file renamed over the old.
fn install_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let new = path.with_extension("new");
    std::fs::write(&new, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&new, path).unwrap();
}
