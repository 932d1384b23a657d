//! Listeners whose accept queue can be drained: [`DrainableListener`], for
//! tokio's `TcpListener` and (on Unix) `UnixListener`.

use std::{
    fmt, io,
    task::{Context, Poll},
};

use socket2::{SockAddr, SockRef, Socket};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};

/// A listener that [`GracefulAccept`](crate::GracefulAccept) can drain.
///
/// Besides the usual readiness-driven accept, it must offer an accept that
/// never waits and says for certain whether the kernel's queue is empty.
/// tokio's `poll_accept` cannot: with stale readiness it returns `Pending`
/// without asking the kernel. Connections taken that way are registered
/// with the runtime only when they are handed to the server, so that the
/// drain closes the socket after one system call per queued connection.
///
/// Implemented for [`tokio::net::TcpListener`] and, on Unix,
/// [`tokio::net::UnixListener`].
///
/// # Implementing
///
/// Another listener (a vsock, an in-memory transport for tests) can be
/// drained if it can answer "is anything queued?" without waiting:
///
/// - [`poll_accept`](Self::poll_accept) is the normal accept.
/// - [`try_accept`](Self::try_accept) takes one queued connection at once,
///   or says `Ok(None)` only when nothing is queued: the drain closes the
///   listener after that answer, so a wrong `None` loses connections.
/// - [`Queued`](Self::Queued) is a connection taken by `try_accept` and not
///   yet set up for the server (for a socket: not yet registered with the
///   runtime); [`register`](Self::register) finishes that when the server
///   takes it. Where there is nothing to defer, `Queued` is `Io` and
///   `register` returns it.
/// - `steer_away`, `unsteer` and `queue_len` have defaults that do nothing.
///
/// Dropping the listener must close it: `GracefulAccept` drops it once the
/// queue is empty.
pub trait DrainableListener: Send + 'static {
    /// The accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The peer's address.
    type Addr: Send + fmt::Debug;
    /// A connection taken from the queue by [`try_accept`](Self::try_accept),
    /// not yet registered with the runtime.
    type Queued: Send + 'static;

    /// Waits for the next connection, like `TcpListener::poll_accept`.
    ///
    /// # Errors
    ///
    /// Whatever accept(2) reports; [`GracefulAccept`](crate::GracefulAccept)
    /// skips or retries every error.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Self::Addr)>>;

    /// Takes a queued connection without waiting: `Ok(None)` means the
    /// kernel reported the queue empty.
    ///
    /// # Errors
    ///
    /// Whatever accept(2) reports, except `EAGAIN`.
    fn try_accept(&mut self) -> io::Result<Option<Self::Queued>>;

    /// Registers a connection from [`try_accept`](Self::try_accept) with the
    /// current tokio runtime.
    ///
    /// # Errors
    ///
    /// Whatever the registration reports.
    fn register(queued: Self::Queued) -> io::Result<(Self::Io, Self::Addr)>;

    /// Called once when a drain starts on a socket no other process holds:
    /// asks the kernel to send new connections elsewhere, so that fewer
    /// arrive in the instant before the socket closes. Connections it takes
    /// from the queue on the way go in `queued`. The default does nothing.
    ///
    /// For tokio's listeners it lowers the backlog to 0, and for a TCP
    /// socket in an `SO_REUSEPORT` group on Linux it steers new connections
    /// to the other members.
    fn steer_away(&mut self, queued: &mut Vec<Self::Queued>) {
        let _ = queued;
    }

    /// Called just before the drained socket closes: undoes whatever
    /// [`steer_away`](Self::steer_away) left that outlives the socket (an
    /// `SO_REUSEPORT` group's program). The default does nothing.
    fn unsteer(&mut self) {}

    /// How many connections wait in the queue, if the kernel says: asked
    /// just before the drained socket closes, since the close resets them.
    /// The default says nothing (`None`); tokio's `TcpListener` answers on
    /// Linux.
    fn queue_len(&self) -> Option<usize> {
        None
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// Whatever getsockname(2) reports.
    fn local_addr(&self) -> io::Result<Self::Addr>;
}

/// Takes one connection from `listener`'s queue with a non-blocking
/// accept(2), returning it non-blocking and close-on-exec, or `None` if the
/// queue is empty.
pub(crate) fn accept_now(listener: SockRef<'_>) -> io::Result<Option<(Socket, SockAddr)>> {
    match accept_nonblocking(listener) {
        Ok(accepted) => Ok(Some(accepted)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// One accept4(2) where there is one: no `fcntl` calls after it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn accept_nonblocking(listener: SockRef<'_>) -> io::Result<(Socket, SockAddr)> {
    listener.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn accept_nonblocking(listener: SockRef<'_>) -> io::Result<(Socket, SockAddr)> {
    let (socket, addr) = listener.accept()?;
    socket.set_nonblocking(true)?;
    Ok((socket, addr))
}

impl DrainableListener for TcpListener {
    type Io = TcpStream;
    type Addr = std::net::SocketAddr;
    type Queued = (std::net::TcpStream, std::net::SocketAddr);

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Self::Addr)>> {
        TcpListener::poll_accept(self, cx)
    }

    fn try_accept(&mut self) -> io::Result<Option<Self::Queued>> {
        let Some((socket, addr)) = accept_now(SockRef::from(&*self))? else {
            return Ok(None);
        };
        let addr = addr.as_socket().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "accepted a non-IP peer address")
        })?;
        Ok(Some((socket.into(), addr)))
    }

    fn register((stream, addr): Self::Queued) -> io::Result<(Self::Io, Self::Addr)> {
        Ok((TcpStream::from_std(stream)?, addr))
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn steer_away(&mut self, queued: &mut Vec<Self::Queued>) {
        crate::reuseport::steer_away(self, queued);
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn steer_away(&mut self, _: &mut Vec<Self::Queued>) {
        lower_backlog(SockRef::from(&*self));
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn unsteer(&mut self) {
        crate::reuseport::unsteer(self);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn queue_len(&self) -> Option<usize> {
        use std::os::fd::AsFd;
        crate::sys::accept_queue_len(self.as_fd()).ok()
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        TcpListener::local_addr(self)
    }
}

#[cfg(unix)]
impl DrainableListener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    type Queued = std::os::unix::net::UnixStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Self::Addr)>> {
        tokio::net::UnixListener::poll_accept(self, cx)
    }

    fn try_accept(&mut self) -> io::Result<Option<Self::Queued>> {
        Ok(accept_now(SockRef::from(&*self))?.map(|(socket, _)| socket.into()))
    }

    fn register(queued: Self::Queued) -> io::Result<(Self::Io, Self::Addr)> {
        let stream = tokio::net::UnixStream::from_std(queued)?;
        let addr = stream.peer_addr()?;
        Ok((stream, addr))
    }

    fn steer_away(&mut self, _: &mut Vec<Self::Queued>) {
        lower_backlog(SockRef::from(&*self));
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        tokio::net::UnixListener::local_addr(self)
    }
}

/// listen(2) again with a backlog of 0: new connections are no longer queued
/// while the queue holds one, so they are retried later instead of reset.
pub(crate) fn lower_backlog(listener: SockRef<'_>) {
    if let Err(error) = listener.listen(0) {
        tracing::debug!(%error, "cannot lower the backlog");
    }
}
