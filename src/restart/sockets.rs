//! A listening socket with the name the server's configuration gives it, as
//! a service manager, a predecessor or binding provides it, and the error
//! for a socket or a setting that does not fit.

use std::io;

use socket2::Socket;

/// A listening socket and its name: a service manager's
/// `FileDescriptorName=` (systemd's default is the socket unit's name),
/// the name a predecessor sent, or the configured one.
#[derive(Debug)]
pub(crate) struct NamedSocket {
    pub(crate) name: String,
    pub(crate) socket: Socket,
}

/// An `InvalidInput` error saying `message`.
pub(crate) fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}
