//! systemd socket activation: the listening sockets a service manager passed
//! to this process (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, from fd 3).
//!
//! The manager keeps its own copy of each socket, so the accept queue
//! survives this process: connections that arrive while it restarts wait in
//! the kernel for the next instance instead of being reset.

use std::{io, os::fd::RawFd, sync::Mutex};

use socket2::{Socket, Type};

use super::sockets::{invalid, NamedSocket};
use crate::sys;

/// The first descriptor a service manager passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// Serialises taking the variables, so that two callers cannot both own the
/// same descriptors: the first takes them, later ones find nothing.
static TAKE: Mutex<()> = Mutex::new(());

/// Takes the sockets passed to this process, if any, and clears the
/// variables so that child processes do not take them too. Each is checked
/// to be a listening stream socket and made non-blocking and close-on-exec.
///
/// `Ok(None)`: no sockets were passed to this process (no `LISTEN_PID`, or
/// one naming another process).
pub(crate) fn take() -> io::Result<Option<Vec<NamedSocket>>> {
    let _taking = TAKE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pid) = std::env::var_os("LISTEN_PID") else {
        return Ok(None);
    };
    let count = std::env::var_os("LISTEN_FDS");
    let names = std::env::var_os("LISTEN_FDNAMES");
    if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        tracing::debug!(?pid, "LISTEN_PID names another process; nothing inherited");
        return Ok(None);
    }
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let count = count
        .as_ref()
        .and_then(|c| c.to_str())
        .and_then(|c| c.parse::<RawFd>().ok())
        .filter(|c| (0..=(RawFd::MAX - FIRST_FD)).contains(c))
        .ok_or_else(|| {
            invalid(format!(
                "LISTEN_FDS={count:?} is not a count of descriptors"
            ))
        })?;
    let names = names.map(|n| n.to_string_lossy().into_owned());
    let mut names = names.as_deref().map(|n| n.split(':'));
    (FIRST_FD..FIRST_FD + count)
        .map(|fd| {
            let name = names
                .as_mut()
                .and_then(Iterator::next)
                .map_or_else(|| format!("fd{fd}"), str::to_owned);
            adopt(fd).map(|socket| NamedSocket { name, socket })
        })
        .collect::<io::Result<_>>()
        .map(Some)
}

/// Owns `fd` and checks that it is a listening stream socket.
fn adopt(fd: RawFd) -> io::Result<Socket> {
    let socket = sys::own_inherited(fd)?;
    let what = |e: io::Error| invalid(format!("inherited descriptor {fd}: {e}"));
    if socket.r#type().map_err(what)? != Type::STREAM {
        return Err(invalid(format!(
            "inherited descriptor {fd} is not a stream socket"
        )));
    }
    if !socket.is_listener().map_err(what)? {
        return Err(invalid(format!(
            "inherited descriptor {fd} is not listening"
        )));
    }
    socket.set_nonblocking(true).map_err(what)?;
    socket.set_cloexec(true).map_err(what)?;
    Ok(socket)
}
