//! The system calls on a listening socket that draining it needs, below
//! both the listeners ([`DrainableListener`](crate::DrainableListener)) and
//! the `SO_REUSEPORT` steering: an accept that never waits, and lowering the
//! backlog.

use std::io;

use socket2::{SockAddr, SockRef, Socket};

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

/// listen(2) again with a backlog of 0: new connections are no longer queued
/// while the queue holds one, so they are retried later instead of reset.
pub(crate) fn lower_backlog(listener: SockRef<'_>) {
    if let Err(error) = listener.listen(0) {
        tracing::debug!(%error, "cannot lower the backlog");
    }
}
