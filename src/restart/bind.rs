//! Binding a fresh listening socket with the options a server usually wants:
//! `SO_REUSEADDR`, optionally `SO_REUSEPORT`, `IPV6_V6ONLY`, the backlog, and
//! `TCP_NODELAY` inherited by every accepted connection.

use std::{io, net::SocketAddr, path::Path};

use socket2::{Domain, Socket, Type};

/// How [`Listeners`](crate::restart::Listeners) binds a socket it did not
/// inherit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BindOptions {
    pub(crate) reuse_port: bool,
    pub(crate) backlog: i32,
    pub(crate) only_v6: Option<bool>,
    pub(crate) nodelay: bool,
}

impl Default for BindOptions {
    fn default() -> Self {
        Self {
            reuse_port: false,
            backlog: 1024,
            only_v6: None,
            nodelay: false,
        }
    }
}

impl BindOptions {
    /// A non-blocking, close-on-exec TCP socket listening on `addr`.
    pub(crate) fn tcp(&self, addr: SocketAddr) -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
        socket.set_reuse_address(true)?;
        if self.reuse_port {
            set_reuse_port(&socket)?;
        }
        if let (Some(only_v6), SocketAddr::V6(_)) = (self.only_v6, addr) {
            socket.set_only_v6(only_v6)?;
        }
        // Linux and the BSDs copy it to every socket accept(2) returns.
        socket.set_tcp_nodelay(self.nodelay)?;
        socket.bind(&addr.into())?;
        socket.listen(self.backlog)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    /// A non-blocking, close-on-exec Unix socket listening on `path`.
    pub(crate) fn unix(&self, path: &Path) -> io::Result<Socket> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
        socket.bind(&socket2::SockAddr::unix(path)?)?;
        socket.listen(self.backlog)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }
}

#[cfg(unix)]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

#[cfg(not(unix))]
fn set_reuse_port(_: &Socket) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_REUSEPORT needs a Unix system",
    ))
}
