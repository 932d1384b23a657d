//! Turning new connections away from a listening socket that is about to
//! close, so that the close resets as few as the kernel allows.
//!
//! Two things, both unprivileged, both only for a socket no other process
//! holds (closing a shared socket resets nothing):
//!
//! - listen(2) again with a backlog of 0: with a queue that is not empty the
//!   kernel drops new SYNs instead of queueing them, and the client
//!   retransmits a second later, when the socket is closed (refused, which
//!   is safe) or a sibling takes it.
//! - In an `SO_REUSEPORT` group, a classic BPF program
//!   (`SO_ATTACH_REUSEPORT_CBPF`) that picks the group member for each new
//!   connection: the draining socket learns its own index by probing, then
//!   steers new connections to the others. The program applies to the whole
//!   group and outlives its author, so just before the socket closes it is
//!   replaced by one that always answers out of range, which the kernel
//!   treats as "no program": the group's usual hash, with no member stranded.
//!   A connection that reaches this socket between that and the close is
//!   still reset: no unprivileged program can name a socket that is about to
//!   leave its group. `cargo run --release -p tower-drain-measure --example
//!   restarts` measures what is left.

use std::{
    io,
    net::{SocketAddr, TcpStream},
    os::fd::AsFd,
    time::Duration,
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::socket::{setsockopt, sockopt::AttachReusePortCbpf},
};
use socket2::SockRef;
use tokio::net::TcpListener;

use crate::socket::{accept_now, lower_backlog};

/// Indices probed to find the socket's own place in its group.
const MAX_PROBED_INDEX: u32 = 16;

/// How long a probe connection may take to show up in the socket's queue
/// before it is taken to have gone to another member.
const PROBE_WAIT: Duration = Duration::from_millis(2);

/// A connection the probing took from the queue that was not a probe.
pub(crate) type Queued = (std::net::TcpStream, SocketAddr);

/// In an `SO_REUSEPORT` group steers new connections to the other members,
/// then lowers the backlog. Connections from clients that the probing
/// accepts go in `queued`.
pub(crate) fn steer_away(listener: &TcpListener, queued: &mut Vec<Queued>) {
    // Probing first: with a backlog of 0, a single queued connection makes
    // the queue full and the probe's SYN would be dropped.
    if SockRef::from(listener).reuse_port().unwrap_or(false) {
        steer(listener, queued);
    }
    lower_backlog(SockRef::from(listener));
}

fn steer(listener: &TcpListener, queued: &mut Vec<Queued>) {
    match own_index(listener, queued) {
        Ok(Some(index)) => match attach(listener, &avoiding(index)) {
            Ok(()) => tracing::info!(
                index,
                "steering new connections to the other SO_REUSEPORT members until the close (best effort: one arriving in the instant of the close may still be reset)",
            ),
            Err(error) => tracing::debug!(%error, "cannot steer new connections away"),
        },
        Ok(None) => {
            unsteer(listener);
            tracing::debug!("own index in the SO_REUSEPORT group not found; not steering");
        }
        Err(error) => {
            unsteer(listener);
            tracing::debug!(%error, "cannot probe the SO_REUSEPORT group; not steering");
        }
    }
}

/// Hands the group back to the kernel's usual hash (only if this socket
/// is in one).
pub(crate) fn unsteer(listener: &TcpListener) {
    if SockRef::from(listener).reuse_port().unwrap_or(false) {
        if let Err(error) = attach(listener, &[ret(u32::MAX)]) {
            tracing::debug!(%error, "cannot reset the SO_REUSEPORT program");
        }
    }
}

/// Finds this socket's index in its group: attach `ret #k`, connect to the
/// port, see whether the probe lands in this socket's queue.
///
/// Runs once per drain and blocks the calling thread: a loopback connect
/// and up to [`PROBE_WAIT`] for each index below its own.
fn own_index(listener: &TcpListener, queued: &mut Vec<Queued>) -> io::Result<Option<u32>> {
    let target = reachable(listener.local_addr()?);
    for index in 0..MAX_PROBED_INDEX {
        attach(listener, &[ret(index)])?;
        let probe = TcpStream::connect_timeout(&target, Duration::from_millis(100))?;
        if took_probe(listener, probe.local_addr()?, queued)? {
            return Ok(Some(index));
        }
    }
    Ok(None)
}

/// Accepts from the queue until the probe from `probe` shows up (`true`) or
/// the queue stays empty for [`PROBE_WAIT`] (`false`).
fn took_probe(
    listener: &TcpListener,
    probe: SocketAddr,
    queued: &mut Vec<Queued>,
) -> io::Result<bool> {
    loop {
        match accept_now(SockRef::from(listener))? {
            Some((socket, peer)) => match peer.as_socket() {
                Some(peer) if peer == probe => return Ok(true),
                Some(peer) => queued.push((socket.into(), peer)),
                None => {}
            },
            None => {
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                let wait = PollTimeout::try_from(PROBE_WAIT).unwrap_or(PollTimeout::ZERO);
                if poll(&mut fds, wait)? == 0 {
                    return Ok(false);
                }
            }
        }
    }
}

/// Where a client on this machine reaches a socket bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, v4.port()))
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6.port()))
        }
        addr => addr,
    }
}

/// A program that never picks `index`: the members below it in turn at
/// random, or member 1 when `index` is 0.
fn avoiding(index: u32) -> Vec<libc::sock_filter> {
    if index == 0 {
        return vec![ret(1)];
    }
    // A = random; A %= index; return A.
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const MOD_K: u16 = 0x94; // BPF_ALU | BPF_MOD | BPF_K
    const RET_A: u16 = 0x16; // BPF_RET | BPF_A
    const AD_RANDOM: u32 = (-0x1000_i32 + 56) as u32; // SKF_AD_OFF + SKF_AD_RANDOM
    vec![
        insn(LD_W_ABS, AD_RANDOM),
        insn(MOD_K, index),
        insn(RET_A, 0),
    ]
}

/// `return k`: the member at index `k`, or the usual hash if out of range.
fn ret(k: u32) -> libc::sock_filter {
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    insn(RET_K, k)
}

fn insn(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn attach(listener: &TcpListener, program: &[libc::sock_filter]) -> io::Result<()> {
    let program = libc::sock_fprog {
        len: program.len() as u16,
        // The kernel copies the program; it only reads through this pointer.
        filter: program.as_ptr().cast_mut(),
    };
    setsockopt(listener, AttachReusePortCbpf, &program)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, net::Ipv4Addr};

    use socket2::{Domain, Socket, Type};

    use super::*;

    /// A member of the `SO_REUSEPORT` group on `addr` (port 0: a new group).
    fn member(addr: SocketAddr) -> TcpListener {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.listen(1024).unwrap();
        socket.set_nonblocking(true).unwrap();
        TcpListener::from_std(socket.into()).unwrap()
    }

    /// Opens `count` connections to the group and waits until each is in a
    /// member's queue: how many went to `a` and to `b`. Other connections
    /// (probes that landed on `b`) are not counted.
    fn spread(count: usize, a: &TcpListener, b: &TcpListener) -> (usize, usize) {
        let target = a.local_addr().unwrap();
        let clients: Vec<_> = (0..count)
            .map(|_| TcpStream::connect(target).unwrap())
            .collect();
        let mut waiting: HashSet<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        let mut got = [0, 0];
        loop {
            for (member, got) in [a, b].into_iter().zip(&mut got) {
                while let Some((_, peer)) = accept_now(SockRef::from(member)).unwrap() {
                    if waiting.remove(&peer.as_socket().unwrap()) {
                        *got += 1;
                    }
                }
            }
            if waiting.is_empty() {
                return (got[0], got[1]);
            }
            let mut fds = [a, b].map(|m| PollFd::new(m.as_fd(), PollFlags::POLLIN));
            assert!(
                poll(&mut fds, PollTimeout::from(60_000u16)).unwrap() > 0,
                "{} connections never reached a queue",
                waiting.len()
            );
        }
    }

    /// Steering sends every new connection to the other member; unsteering
    /// hands the group back to the kernel's hash, which uses both.
    #[tokio::test]
    async fn steering_sends_new_connections_to_the_other_member() {
        let a = member(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let b = member(a.local_addr().unwrap());

        let mut queued = Vec::new();
        steer_away(&a, &mut queued);
        assert!(queued.is_empty(), "no client was queued: {queued:?}");
        assert_eq!(spread(64, &a, &b), (0, 64));

        // The drain lowered the backlog; give `a` room again to see the hash.
        SockRef::from(&a).listen(1024).unwrap();
        unsteer(&a);
        let (to_a, to_b) = spread(64, &a, &b);
        assert!(to_a > 0 && to_b > 0, "{to_a} and {to_b}");
    }

    /// Connections already queued when the probing starts are kept for the
    /// drain, not dropped.
    #[tokio::test]
    async fn probing_keeps_the_queued_clients() {
        let a = member(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let client = TcpStream::connect(a.local_addr().unwrap()).unwrap();
        let b = member(a.local_addr().unwrap());

        let mut queued = Vec::new();
        steer_away(&a, &mut queued);
        let peers: Vec<_> = queued.iter().map(|(_, peer)| *peer).collect();
        assert_eq!(peers, [client.local_addr().unwrap()]);
        drop(b);
    }
}
