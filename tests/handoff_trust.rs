//! Who may take a server over its handoff path: the socket file is private
//! whatever the umask, a process of another user is refused in either
//! direction (peer credentials), and hostile clients on the path neither
//! stop the server nor leak its descriptors. The tests run as root (as CI
//! does) and play the other user as `nobody` with util-linux's `setpriv`.

mod common;

use std::{
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use common::{
    process::{server_binary, Process},
    *,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
    process::Command,
};
use tower_drain::{restart::Listeners, Watch};

/// The uid and gid these tests run the other user's processes as.
const NOBODY: u32 = 65534;

/// A fresh directory for `test`, writable by everyone (mode 0777, no sticky
/// bit): the careless deployment.
fn open_dir(test: &str) -> PathBuf {
    let path = handoff_path(test);
    let dir = path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    path
}

/// `program args` run as `nobody`: fails the test with a clear message if
/// it cannot be (not root, or no `setpriv`).
fn as_nobody(program: &Path) -> Command {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests play another user with setpriv, which needs root"
    );
    assert!(
        Path::new("/usr/bin/setpriv").exists(),
        "/usr/bin/setpriv is missing: install util-linux"
    );
    let mut command = Command::new("/usr/bin/setpriv");
    command
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(program)
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    command
}

/// With a umask of 000 in a directory anyone may write to, the socket file
/// on the handoff path is the owner's alone (0600), and the server warns
/// that others could replace it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_socket_is_private_whatever_the_umask() {
    let path = open_dir("private-socket");
    let server = Process::start("umask 000;", &format!("--handoff {}", path.display())).await;
    assert!(
        server
            .startup
            .iter()
            .any(|line| line.contains("writable by others without the sticky bit")),
        "{:#?}",
        server.startup
    );
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o600);
    server.signal("TERM");
    assert_eq!(server.exit().await.code(), Some(0));
}

/// A successor run by another user is refused, and told so: it exits 2 and
/// the server, which never sent it a socket, keeps serving. A successor of
/// the same user then takes over. The socket file is left open to anyone
/// here (`handoff_mode(0o777)`), so that the peer credentials alone decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successor_of_another_user_is_refused() {
    let path = open_dir("other-successor");
    let watch = Watch::new();
    let builder = Listeners::builder()
        .tcp("http", localhost())
        .handoff(&path)
        .handoff_mode(0o777);
    let server = serve_listeners(builder, &watch).await;

    let refused = within(
        "the other user's successor to give up",
        as_nobody(&server_binary())
            .args(["--addr", "127.0.0.1:0", "--handoff"])
            .arg(&path)
            .output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused this process: refused a successor of uid 65534"),
        "{stderr}"
    );
    assert!(!watch.is_draining());
    assert!(one_request(server.addr, "/").await.is_ok());

    take_over_and_stop(server, &path).await;
}

/// Another user's server squatting the handoff path (listening there
/// first) is refused by a new server before it takes anything from it: the
/// reference server exits 2 with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squatter_of_another_user_is_refused() {
    let path = open_dir("squatter");
    let mut squatter = as_nobody(&server_binary())
        .args(["--addr", "127.0.0.1:0", "--handoff"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(squatter.stderr.take().unwrap()).lines();
    within("the squatter to listen", async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("listening") {
                return;
            }
        }
        panic!("the squatter exited before it listened");
    })
    .await;

    let (status, stderr) = process::run_with(
        "",
        &format!("--addr 127.0.0.1:0 --handoff {}", path.display()),
        Stdio::null(),
    )
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused a predecessor on the handoff path of uid 65534"),
        "{stderr}"
    );
    squatter.kill().await.unwrap();
}

/// What a hostile client on the handoff path does.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Writes bytes that are not the protocol, then waits.
    Garbage,
    /// Writes more than any message may hold.
    Oversized,
    /// Sends descriptors of its own with a word that is not `ready`.
    Descriptors,
    /// Says nothing.
    Silent,
}

/// Connects to `path` and misbehaves as `how`; the connection stays open
/// until the returned stream is dropped.
async fn misbehave(path: &Path, how: Hostile) -> UnixStream {
    let mut conn = UnixStream::connect(path).await.unwrap();
    match how {
        Hostile::Garbage => conn.write_all(b"\x00\xffnot ready\r\n").await.unwrap(),
        Hostile::Oversized => {
            let _ = conn.write_all(&vec![b'x'; 256 * 1024]).await;
        }
        Hostile::Descriptors => {
            use std::os::fd::AsRawFd;
            let files: Vec<_> = (0..8)
                .map(|_| std::fs::File::open("/dev/null").unwrap())
                .collect();
            let fds: Vec<_> = files.iter().map(AsRawFd::as_raw_fd).collect();
            let iov = [std::io::IoSlice::new(b"hello\n")];
            let rights = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
            let _ = nix::sys::socket::sendmsg::<()>(
                conn.as_raw_fd(),
                &iov,
                &rights,
                nix::sys::socket::MsgFlags::empty(),
                None,
            );
        }
        Hostile::Silent => {}
    }
    conn
}

/// How many descriptors process `pid` has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits until process `pid` has `count` descriptors open again.
async fn descriptors_back_to(pid: u32, count: usize) {
    within("the server's descriptors to be released", async {
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        while open_descriptors(pid) != count {
            poll.tick().await;
        }
    })
    .await;
}

/// 100 hostile connections at once on the handoff path (garbage, an
/// oversized message, descriptors of their own, silence): the server
/// serves throughout, ends with as many descriptors open as before, and a
/// real successor takes over while the silent ones are still connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_on_the_path_change_nothing() {
    let path = handoff_path("hostile");
    let handoff = format!("--handoff {}", path.display());
    let mut server = Process::start("", &handoff).await;
    let pid = server.pid();
    let before = open_descriptors(pid);

    let kinds = [
        Hostile::Garbage,
        Hostile::Oversized,
        Hostile::Descriptors,
        Hostile::Silent,
    ];
    let mut hostile = Vec::new();
    for i in 0..100 {
        hostile.push(misbehave(&path, kinds[i % kinds.len()]).await);
    }
    assert!(one_request(server.addr, "/").await.is_ok());
    // Every client but the silent ones has been accepted and turned away
    // (a connect returns once queued): only then can a leak show below.
    for _ in 0..75 {
        server
            .wait_for_log("handoff to a successor failed; still serving")
            .await;
    }
    drop(hostile);
    descriptors_back_to(pid, before).await;
    assert!(one_request(server.addr, "/").await.is_ok());

    // Silent clients wait for their timeout (10 s each) on their own: a
    // real successor is not held up behind them.
    let mut silent = Vec::new();
    for _ in 0..25 {
        silent.push(misbehave(&path, Hostile::Silent).await);
    }
    let mut successor = Process::start_with(
        "",
        &format!("--addr {} {handoff}", server.addr),
        Stdio::null(),
    )
    .await;
    successor
        .wait_for_log("took over from the predecessor")
        .await;
    assert_eq!(server.exit().await.code(), Some(0));
    assert!(one_request(successor.addr, "/").await.is_ok());
    drop(silent);
    successor.signal("TERM");
    assert_eq!(successor.exit().await.code(), Some(0));
}
