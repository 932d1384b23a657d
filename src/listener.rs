//! Listeners whose accept queue can be drained: [`DrainableListener`], for
//! tokio's `TcpListener` and (on Unix) `UnixListener`.

use std::{
    fmt, io,
    task::{Context, Poll},
};

use socket2::SockRef;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};

pub(crate) use self::mechanics::Mechanics;
use crate::socket::{accept_now, lower_backlog};

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
///
/// Dropping the listener must close it: `GracefulAccept` drops it once the
/// queue is empty.
///
/// These four methods are all a listener implements. What else the drain
/// does to tokio's own listeners before it closes them (lowering the
/// backlog, steering new connections to `SO_REUSEPORT` siblings, asking the
/// kernel how many connections are still queued) is the drain's mechanics,
/// not part of this trait's contract: those methods take a value only
/// tower-drain can make, so they can be neither called nor overridden
/// outside it, and for another listener they do nothing.
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
    #[doc(hidden)]
    fn steer_away(&mut self, _: Mechanics, queued: &mut Vec<Self::Queued>) {
        let _ = queued;
    }

    /// Called just before the drained socket closes: undoes whatever
    /// [`steer_away`](Self::steer_away) left that outlives the socket (an
    /// `SO_REUSEPORT` group's program). The default does nothing.
    #[doc(hidden)]
    fn unsteer(&mut self, _: Mechanics) {}

    /// How many connections wait in the queue, if the kernel says: asked
    /// just before the drained socket closes, since the close resets them.
    /// The default says nothing (`None`); tokio's `TcpListener` answers on
    /// Linux.
    #[doc(hidden)]
    fn queue_len(&self, _: Mechanics) -> Option<usize> {
        None
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// Whatever getsockname(2) reports.
    fn local_addr(&self) -> io::Result<Self::Addr>;
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
    fn steer_away(&mut self, _: Mechanics, queued: &mut Vec<Self::Queued>) {
        crate::reuseport::steer_away(self, queued);
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn steer_away(&mut self, _: Mechanics, _: &mut Vec<Self::Queued>) {
        lower_backlog(SockRef::from(&*self));
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn unsteer(&mut self, _: Mechanics) {
        crate::reuseport::unsteer(self);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn queue_len(&self, _: Mechanics) -> Option<usize> {
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

    fn steer_away(&mut self, _: Mechanics, _: &mut Vec<Self::Queued>) {
        lower_backlog(SockRef::from(&*self));
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        tokio::net::UnixListener::local_addr(self)
    }
}

mod mechanics {
    /// What only tower-drain can make: the argument of the
    /// [`DrainableListener`](super::DrainableListener) methods that are the
    /// drain's mechanics, so that no other crate calls or overrides them.
    #[derive(Debug, Clone, Copy)]
    #[allow(
        unreachable_pub,
        reason = "named in a public trait, made in this crate alone"
    )]
    pub struct Mechanics;
}
