//! The one place for system calls without a safe wrapper: taking ownership
//! of raw file descriptors (those a service manager passed at start-up,
//! `LISTEN_FDS`, and those a predecessor sent with `SCM_RIGHTS`), and reading
//! `TCP_INFO`. Every other system call goes through a safe wrapper.
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

/// How many connections wait in a TCP listener's accept queue: for a
/// listening socket, `TCP_INFO`'s `tcpi_unacked` is the queue's length.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn accept_queue_len(listener: std::os::fd::BorrowedFd<'_>) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; std::mem::size_of::<libc::tcp_info>()];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes that outlives the
    // call; the kernel writes at most `len` bytes into it and stores the
    // length it wrote in `len`. `listener` is open for the whole call.
    let result = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    let at = std::mem::offset_of!(libc::tcp_info, tcpi_unacked);
    let field = info
        .get(at..at + 4)
        .filter(|_| len as usize >= at + 4)
        .ok_or_else(|| io::Error::other("TCP_INFO too short"))?;
    let unacked = u32::from_ne_bytes(field.try_into().expect("four bytes"));
    Ok(unacked as usize)
}

fn libc_ebadf() -> i32 {
    nix::errno::Errno::EBADF as i32
}
