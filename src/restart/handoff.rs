//! Handing listening sockets to a successor process over a Unix socket, with
//! `SCM_RIGHTS`, so that a restart never closes a socket with a queue.
//!
//! The protocol, one connection per handoff, on the path the running server
//! listens on:
//!
//! 1. The successor connects; the running server sends one message,
//!    `tower-drain handoff 1 N\n` and N lines of socket names, with the N
//!    listening sockets attached, and last the socket listening on the
//!    handoff path itself.
//! 2. The successor accepts on every socket, then writes `ready\n`.
//! 3. The running server marks the sockets as held elsewhere, starts its
//!    drain (closing its own descriptors at once, so the queues stay with
//!    the successor), and writes `done\n`. The successor then serves the
//!    handoff path for the next one, on the socket it received: the path
//!    never changes hands, so a successor started during a handoff waits in
//!    that socket's queue instead of finding nobody there.
//!
//! If the successor closes the connection or stays silent past the timeout
//! before step 2, the running server logs why and keeps serving.
//!
//! Who may take part: each side asks the kernel who the other is (the peer
//! credentials of the Unix socket, `SO_PEERCRED` on Linux, `getpeereid`
//! elsewhere) and deals only with a process of its own effective uid, root,
//! or a uid or gid allowed on [`Trust`]. The socket on the path is created
//! with mode 0600 whatever the umask. Connections are handled concurrently,
//! each bounded by the timeout, so a client that says nothing delays no
//! real successor; descriptors a client sends are never taken in.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::unix::fs::{MetadataExt, PermissionsExt},
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::FileTypeExt,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_util::stream::{FuturesUnordered, StreamExt};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use socket2::Socket;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{UnixListener, UnixStream},
};

use super::sockets::{invalid, NamedSocket};
use crate::{shared::SharedSocket, sys, watch::Watch};

/// The first line's prefix; the version changes with any change to the
/// protocol.
const HEADER: &str = "tower-drain handoff 1";
const READY: &[u8] = b"ready\n";
/// What the running server says to a successor it does not trust, instead
/// of the first message.
const REFUSED: &str = "refused";
const DONE: &[u8] = b"done\n";
/// The most sockets one handoff carries (the kernel's limit is 253).
pub(crate) const MAX_SOCKETS: usize = 64;
/// The longest first message: the header and the names.
const MAX_MESSAGE: usize = 64 * 1024;

/// A running server, as its successor sees it during the handoff.
#[derive(Debug)]
pub(crate) struct Predecessor {
    conn: UnixStream,
    /// The socket listening on the handoff path, to serve once taken over.
    listener: Socket,
}

/// The named listening sockets a handoff carries.
pub(crate) type Sockets = Vec<NamedSocket>;

/// A socket the running server offers its successor: its name, and its
/// standing across processes, which holds the copy to send.
#[derive(Debug)]
pub(crate) struct Offered {
    pub(crate) name: String,
    pub(crate) shared: Arc<SharedSocket>,
}

/// Who may be on the other end of a handoff: a process of this one's
/// effective uid, root, or one of the uids or gids allowed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trust {
    pub(crate) uids: Vec<u32>,
    pub(crate) gids: Vec<u32>,
}

impl Trust {
    /// Fails with `PermissionDenied` unless the peer of `conn` (`who`) is
    /// trusted.
    fn check(&self, conn: &UnixStream, who: &str) -> io::Result<()> {
        let peer = conn.peer_cred()?;
        let own = nix::unistd::geteuid().as_raw();
        let (uid, gid) = (peer.uid(), peer.gid());
        if uid == own || uid == 0 || self.uids.contains(&uid) || self.gids.contains(&gid) {
            return Ok(());
        }
        let pid = peer
            .pid()
            .map_or_else(|| "unknown".to_owned(), |pid| pid.to_string());
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refused a {who} of uid {uid} (gid {gid}, pid {pid}): a handoff takes place only \
                 with uid {own}, root, or a uid or gid allowed with `handoff_allow_uid`/`handoff_allow_gid`"
            ),
        ))
    }
}

/// Connects to the server at `path` and receives its sockets, if it is a
/// process `trust` allows. `Ok(None)` means no server is there: the path
/// does not exist, or is a stale socket nobody listens on.
///
/// # Errors
///
/// `InvalidInput` if the path is not a socket or its directory does not
/// exist; `PermissionDenied` if the server there is not trusted (nothing
/// is received from it); otherwise what the connection or the message
/// reports.
pub(crate) async fn connect(
    path: &Path,
    trust: &Trust,
    timeout: Duration,
) -> io::Result<Option<(Predecessor, Sockets)>> {
    check_path(path)?;
    let conn = match UnixStream::connect(path).await {
        Ok(conn) => conn,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    trust.check(&conn, "predecessor on the handoff path")?;
    let (sockets, listener) = tokio::time::timeout(timeout, receive(&conn))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the server on the handoff path sent nothing within {timeout:?}"),
            )
        })??;
    Ok(Some((Predecessor { conn, listener }, sockets)))
}

/// Fails with `InvalidInput` unless `path` is a socket or absent from a
/// directory that exists.
fn check_path(path: &Path) -> io::Result<()> {
    let invalid = |what: &str| Err(invalid(format!("handoff path {}: {what}", path.display())));
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(()),
        Ok(_) => invalid("exists and is not a socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            if dir.is_dir() {
                Ok(())
            } else {
                invalid("its directory does not exist")
            }
        }
        Err(e) => Err(e),
    }
}

impl Predecessor {
    /// Says this process accepts on every socket, and waits for the
    /// predecessor to confirm it has let them go; then the handoff path is
    /// this process's to serve.
    ///
    /// # Errors
    ///
    /// Fails if the predecessor closed the connection or did not answer
    /// within `timeout`: it then keeps serving.
    pub(crate) async fn ready(mut self, timeout: Duration) -> io::Result<UnixListener> {
        self.conn.write_all(READY).await?;
        expect(&mut self.conn, DONE, timeout, "the predecessor").await?;
        UnixListener::from_std(self.listener.into())
    }
}

/// Receives the first message: the names, the sockets and the handoff
/// listener, each owned at once (close-on-exec from the start), so none
/// leaks whatever else goes wrong.
async fn receive(conn: &UnixStream) -> io::Result<(Sockets, Socket)> {
    let mut text = vec![0; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_SOCKETS + 1]);
    let (len, fds) = conn
        .async_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut text)];
            let msg = recvmsg::<UnixAddr>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    fds.extend(received.into_iter().map(sys::own_received));
                }
            }
            Ok((msg.bytes, fds))
        })
        .await?;
    let text = std::str::from_utf8(&text[..len]).map_err(|_| bad_message("not text"))?;
    if let Some(why) = text.strip_prefix(REFUSED) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the server on the handoff path refused this process{}",
                why.trim_end()
            ),
        ));
    }
    let mut lines = text.lines();
    let count: usize = lines
        .next()
        .and_then(|header| header.strip_prefix(HEADER))
        .and_then(|count| count.trim().parse().ok())
        .ok_or_else(|| bad_message("not a tower-drain handoff"))?;
    let names: Vec<String> = lines.map(str::to_owned).collect();
    if names.len() != count || fds.len() != count + 1 {
        return Err(bad_message(&format!(
            "{count} sockets announced, {} names and {} descriptors received",
            names.len(),
            fds.len()
        )));
    }
    let mut sockets = fds
        .into_iter()
        .map(|fd| {
            let socket = Socket::from(fd);
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let listener = sockets.pop().expect("count + 1 descriptors");
    let sockets = names
        .into_iter()
        .zip(sockets)
        .map(|(name, socket)| NamedSocket { name, socket })
        .collect();
    Ok((sockets, listener))
}

fn bad_message(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("handoff message: {what}"),
    )
}

/// Reads `word` from `conn` within `timeout`; `who` names the peer in errors.
async fn expect(
    conn: &mut UnixStream,
    word: &[u8],
    timeout: Duration,
    who: &str,
) -> io::Result<()> {
    let mut got = vec![0; word.len()];
    match tokio::time::timeout(timeout, conn.read_exact(&mut got)).await {
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{who} did not answer within {timeout:?}"),
        )),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{who} closed the handoff connection"),
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(_)) if got == word => Ok(()),
        Ok(Ok(_)) => Err(bad_message("unexpected answer")),
    }
}

/// The running server's side: serves the path until a successor takes the
/// sockets over or the drain starts.
#[derive(Debug)]
pub(crate) struct Handoff {
    pub(crate) sockets: Vec<Offered>,
    pub(crate) watch: Watch,
    pub(crate) timeout: Duration,
    /// The backlog to restore on received sockets (see [`Handoff::restore_backlog`]).
    pub(crate) backlog: i32,
    pub(crate) trust: Trust,
    /// The handoff path, for the log.
    pub(crate) path: PathBuf,
}

impl Handoff {
    /// Serves the handoff path until a successor takes over or the drain
    /// starts. Each connection is handled on its own, bounded by the
    /// timeout; the first successor to say it is ready takes over, and the
    /// others are closed.
    pub(crate) async fn serve(self, listener: UnixListener) {
        tracing::info!(path = %self.path.display(), "serving the handoff path for a successor");
        let draining = self.watch.draining();
        tokio::pin!(draining);
        let mut attempts = FuturesUnordered::new();
        loop {
            tokio::select! {
                () = &mut draining => return,
                Some(result) = attempts.next() => match result {
                    Ok(()) => return,
                    Err(error) => tracing::warn!(%error, "handoff to a successor failed; still serving"),
                },
                accepted = listener.accept() => match accepted {
                    Ok((conn, _)) => attempts.push(self.hand_over(conn, &listener)),
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept a successor");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    /// Sets this server's backlog on the sockets again: a predecessor whose
    /// drain started before the handoff finished lowered it to 0 on the
    /// socket this process now serves.
    pub(crate) fn restore_backlog(&self) {
        for Offered { name, shared } in &self.sockets {
            if let Some(Err(error)) = shared.lock_copy().as_ref().map(|s| s.listen(self.backlog)) {
                tracing::warn!(%name, %error, "cannot restore the backlog");
            }
        }
    }

    async fn hand_over(&self, mut conn: UnixStream, listener: &UnixListener) -> io::Result<()> {
        if let Err(refused) = self.trust.check(&conn, "successor") {
            let _ = conn
                .write_all(format!("{REFUSED}: {refused}\n").as_bytes())
                .await;
            return Err(refused);
        }
        if self.watch.inner.is_triggered() {
            // A second trigger would force the drain under way.
            let refused = "this server is already draining";
            let _ = conn
                .write_all(format!("{REFUSED}: {refused}\n").as_bytes())
                .await;
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, refused));
        }
        tracing::info!(
            sockets = self.sockets.len(),
            "a successor connected; sending the listeners"
        );
        self.send(&conn, listener).await?;
        expect(&mut conn, READY, self.timeout, "the successor").await?;
        for Offered { shared, .. } in &self.sockets {
            shared.set_elsewhere();
        }
        tracing::info!("the successor accepts on every listener; handing over and draining");
        self.watch.inner.hand_over();
        self.watch.trigger();
        if let Err(error) = conn.write_all(DONE).await {
            tracing::debug!(%error, "cannot confirm the handoff to the successor");
        }
        Ok(())
    }

    /// Sends the names and the sockets, in one message.
    async fn send(&self, conn: &UnixStream, listener: &UnixListener) -> io::Result<()> {
        let mut text = format!("{HEADER} {}\n", self.sockets.len());
        let listener = listener.as_raw_fd();
        for Offered { name, .. } in &self.sockets {
            text.push_str(name);
            text.push('\n');
        }
        let sent = conn
            .async_io(Interest::WRITABLE, || {
                // Each copy is used under its lock, so a listener closing
                // meanwhile either is refused here or closes after the send.
                let copies: Vec<_> = self.sockets.iter().map(|o| o.shared.lock_copy()).collect();
                let fds = copies
                    .iter()
                    .map(|copy| copy.as_ref().map(AsRawFd::as_raw_fd))
                    .chain([Some(listener)])
                    .collect::<Option<Vec<RawFd>>>()
                    .ok_or_else(|| io::Error::other("a listener is already closed"))?;
                let iov = [IoSlice::new(text.as_bytes())];
                let rights = [ControlMessage::ScmRights(&fds)];
                Ok(sendmsg::<()>(
                    conn.as_raw_fd(),
                    &iov,
                    &rights,
                    MsgFlags::empty(),
                    None,
                )?)
            })
            .await?;
        if sent != text.len() {
            return Err(io::Error::other("the handoff message was cut short"));
        }
        Ok(())
    }
}

/// Listens on `path` with the socket file's permissions `mode` (whatever
/// the umask), replacing a stale socket there in one step: bound beside it,
/// given its mode, then renamed over it. Warns if others may replace the
/// file: its directory is writable by them without the sticky bit.
pub(crate) fn listen(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let mut beside = path.as_os_str().to_owned();
    beside.push(format!(".{}.tmp", std::process::id()));
    let beside = PathBuf::from(beside);
    let _ = std::fs::remove_file(&beside);
    let listener = UnixListener::bind(&beside)?;
    std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&beside, path)?;
    warn_if_others_may_replace(path);
    Ok(listener)
}

/// Warns when the directory of `path` lets others replace the file there
/// (writable by others, without the sticky bit).
fn warn_if_others_may_replace(path: &Path) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o7777),
                "the handoff path's directory is writable by others without the sticky bit: \
                 anyone can replace the socket; use a private directory (systemd: RuntimeDirectory=)",
            );
        }
    }
}
