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

/// A listener that [`GracefulAccept`](crate::GracefulAccept) can drain.
///
/// Besides the usual readiness-driven accept, it must offer an accept that
/// never waits and says for certain whether the kernel's queue is empty.
/// tokio's `poll_accept` cannot: with stale readiness it returns `Pending`
/// without asking the kernel.
///
/// Implemented for [`tokio::net::TcpListener`] and, on Unix,
/// [`tokio::net::UnixListener`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use tower_drain::DrainableListener;
///
/// let mut listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// // Nothing queued: the kernel says so at once.
/// assert!(listener.try_accept()?.is_none());
/// # Ok(())
/// # }
/// ```
pub trait DrainableListener: Send + 'static {
    /// The accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The peer's address.
    type Addr: Send + fmt::Debug;

    /// Waits for the next connection, like `TcpListener::poll_accept`.
    ///
    /// # Errors
    ///
    /// Whatever accept(2) reports; [`GracefulAccept`](crate::GracefulAccept)
    /// skips or retries every error.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Self::Addr)>>;

    /// Accepts a queued connection without waiting: `Ok(None)` means the
    /// kernel reported the queue empty.
    ///
    /// # Errors
    ///
    /// Whatever accept(2) reports, except `EAGAIN`.
    fn try_accept(&mut self) -> io::Result<Option<(Self::Io, Self::Addr)>>;

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// Whatever getsockname(2) reports.
    fn local_addr(&self) -> io::Result<Self::Addr>;
}

/// Accepts one connection from `listener`'s queue with a non-blocking
/// accept(2), returning it non-blocking and close-on-exec.
fn accept_now(listener: SockRef<'_>) -> io::Result<Option<(socket2::Socket, socket2::SockAddr)>> {
    match listener.accept() {
        Ok((socket, addr)) => {
            socket.set_nonblocking(true)?;
            Ok(Some((socket, addr)))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

impl DrainableListener for TcpListener {
    type Io = TcpStream;
    type Addr = std::net::SocketAddr;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Self::Addr)>> {
        TcpListener::poll_accept(self, cx)
    }

    fn try_accept(&mut self) -> io::Result<Option<(Self::Io, Self::Addr)>> {
        let Some((socket, addr)) = accept_now(SockRef::from(&*self))? else {
            return Ok(None);
        };
        let addr = addr.as_socket().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "accepted a non-IP peer address")
        })?;
        Ok(Some((TcpStream::from_std(socket.into())?, addr)))
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        TcpListener::local_addr(self)
    }
}

#[cfg(unix)]
impl DrainableListener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Io, Self::Addr)>> {
        tokio::net::UnixListener::poll_accept(self, cx)
    }

    fn try_accept(&mut self) -> io::Result<Option<(Self::Io, Self::Addr)>> {
        let Some((socket, _)) = accept_now(SockRef::from(&*self))? else {
            return Ok(None);
        };
        let stream = tokio::net::UnixStream::from_std(socket.into())?;
        let addr = stream.peer_addr()?;
        Ok(Some((stream, addr)))
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        tokio::net::UnixListener::local_addr(self)
    }
}
