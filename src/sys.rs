//! The one place the crate takes ownership of raw file descriptors: those a
//! service manager passed at start-up (`LISTEN_FDS`) and those a predecessor
//! sent with `SCM_RIGHTS`. Every other system call goes through a safe wrapper.
#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

use socket2::Socket;

/// Takes ownership of a descriptor that recvmsg(2) just installed in this
/// process.
pub(crate) fn own_received(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process's table during the
    // recvmsg(2) that reported it, and this is the only place its number was
    // handed to: nothing else owns it or will close it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Takes ownership of descriptor `fd`, which a service manager passed to
/// this process, as a socket; fails without touching it if it is not open.
pub(crate) fn own_inherited(fd: RawFd) -> io::Result<Socket> {
    // SAFETY: the caller read `fd` from `LISTEN_FDS` addressed to this process
    // (`LISTEN_PID`) and cleared those variables under a lock before anything
    // else could read them, so this is the only owner in the process. An fd
    // number that is not open is never closed: see below.
    let socket = unsafe { Socket::from_raw_fd(fd) };
    match socket.r#type() {
        Err(e) if e.raw_os_error() == Some(libc_ebadf()) => {
            // Not open: dropping it would close a number someone may reuse.
            std::mem::forget(socket);
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("inherited descriptor {fd} is not open"),
            ))
        }
        _ => Ok(socket),
    }
}

fn libc_ebadf() -> i32 {
    nix::errno::Errno::EBADF as i32
}
