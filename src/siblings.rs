//! Whether another socket in the same `SO_REUSEPORT` group serves a
//! listener's address: then the service lives on after this process
//! drains, and the drain is a restart.
//!
//! Linux keeps no list of a group's members that a process can ask for, but
//! every listening TCP socket of the network namespace is a line of
//! `/proc/net/tcp` or `/proc/net/tcp6` (`tcp4_seq_show` and
//! `tcp6_seq_show` in the kernel's `net/ipv4/tcp_ipv4.c` and
//! `net/ipv6/tcp_ipv6.c`): its local address, its state (`0A`, listening)
//! and its inode. A sibling is a listening socket on the same address and
//! port whose inode is not one of this process's listeners. The kernel
//! forms a group only of sockets of the same effective uid
//! (`reuseport_match` in `net/ipv4/inet_connection_sock.c`), so a sibling
//! belongs to the same user. The table is read once per drain, at the
//! trigger; on another system nothing is found.

use std::{cell::OnceCell, net::SocketAddr};

use socket2::Socket;

/// A listening socket in an `SO_REUSEPORT` group: where it listens and
/// which socket it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    addr: SocketAddr,
    inode: u64,
}

impl Member {
    /// `socket` as a member of its group, or `None` if it is not bound with
    /// `SO_REUSEPORT` (or the system does not say).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn of(socket: &Socket) -> Option<Self> {
        use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
        if !socket.reuse_port().unwrap_or(false) {
            return None;
        }
        // stat(2) through the descriptor's link gives the socket's own
        // inode, the one `/proc/net/tcp` prints.
        let link = format!("/proc/self/fd/{}", socket.as_raw_fd());
        Some(Self {
            addr: socket.local_addr().ok()?.as_socket()?,
            inode: std::fs::metadata(link).ok()?.ino(),
        })
    }

    /// Nowhere else is a group's table read.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(crate) fn of(_: &Socket) -> Option<Self> {
        None
    }

    /// The socket's inode, by which this process knows its own.
    pub(crate) fn inode(&self) -> u64 {
        self.inode
    }
}

/// The listening sockets of the network namespace, as far as a drain asks:
/// each table is read at most once, however many listeners look in it.
#[derive(Debug)]
pub(crate) struct Tables {
    /// The inodes of this process's listeners: never siblings.
    ours: Vec<u64>,
    tcp: OnceCell<Option<String>>,
    tcp6: OnceCell<Option<String>>,
}

impl Tables {
    pub(crate) fn new(ours: Vec<u64>) -> Self {
        Self {
            ours,
            tcp: OnceCell::new(),
            tcp6: OnceCell::new(),
        }
    }

    /// Another socket listens on `member`'s address, and it is not one of
    /// ours. A table that cannot be read counts as no sibling: the drain is
    /// then taken for a shutdown, the cautious answer.
    pub(crate) fn has_sibling(&self, member: &Member) -> bool {
        let (cell, path) = if member.addr.is_ipv4() {
            (&self.tcp, "/proc/net/tcp")
        } else {
            (&self.tcp6, "/proc/net/tcp6")
        };
        let table = cell.get_or_init(|| match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(error) => {
                tracing::debug!(%error, path, "cannot look for SO_REUSEPORT siblings");
                None
            }
        });
        table.as_deref().is_some_and(|text| {
            listening_on(text, &local_address(member.addr)).any(|i| !self.ours.contains(&i))
        })
    }
}

/// `addr` as `/proc/net/tcp*` prints a local address: each 32-bit word of
/// the address as the CPU reads it, then the port, all in upper-case hex.
fn local_address(addr: SocketAddr) -> String {
    let words: Vec<u32> = match addr {
        SocketAddr::V4(v4) => vec![u32::from_ne_bytes(v4.ip().octets())],
        SocketAddr::V6(v6) => v6
            .ip()
            .octets()
            .chunks_exact(4)
            .map(|word| u32::from_ne_bytes([word[0], word[1], word[2], word[3]]))
            .collect(),
    };
    let words: String = words.iter().map(|word| format!("{word:08X}")).collect();
    format!("{words}:{:04X}", addr.port())
}

/// The inodes of the listening sockets on `local` in a `/proc/net/tcp*` table.
fn listening_on<'a>(table: &'a str, local: &'a str) -> impl Iterator<Item = u64> + 'a {
    /// `TCP_LISTEN` as the table prints the state.
    const LISTEN: &str = "0A";
    table.lines().skip(1).filter_map(move |line| {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when
        // retrnsmt uid timeout inode ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [_, address, _, LISTEN, _, _, _, _, _, inode, ..] if address == local => {
                inode.parse().ok()
            }
            _ => None,
        }
    })
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use socket2::{Domain, Type};

    use super::*;

    /// Two lines of a real `/proc/net/tcp`: a listener on 127.0.0.1:8080
    /// and a connection from it.
    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D1C2 01 00000000:00000000 00:00000000 00000000  1000        0 41240 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn finds_the_listener_on_an_address() {
        let local = local_address(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)));
        if cfg!(target_endian = "little") {
            assert_eq!(local, "0100007F:1F90");
        }
        assert_eq!(listening_on(TABLE, &local).collect::<Vec<_>>(), [41234]);
        let other = local_address(SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)));
        assert_eq!(listening_on(TABLE, &other).count(), 0);
    }

    #[test]
    fn prints_an_ipv6_address_word_by_word() {
        let local = local_address(SocketAddr::from((Ipv6Addr::LOCALHOST, 443)));
        if cfg!(target_endian = "little") {
            assert_eq!(local, "00000000000000000000000001000000:01BB");
        }
    }

    fn member(addr: SocketAddr) -> Socket {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.listen(8).unwrap();
        socket
    }

    /// A second member of the group is a sibling; this process's own
    /// socket is not.
    #[test]
    fn a_second_member_is_a_sibling() {
        let first = member(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let us = Member::of(&first).unwrap();
        assert!(!Tables::new(vec![us.inode()]).has_sibling(&us));

        let second = member(first.local_addr().unwrap().as_socket().unwrap());
        assert!(Tables::new(vec![us.inode()]).has_sibling(&us));
        let them = Member::of(&second).unwrap();
        assert!(!Tables::new(vec![us.inode(), them.inode()]).has_sibling(&us));

        drop(second);
        assert!(!Tables::new(vec![us.inode()]).has_sibling(&us));
    }

    #[test]
    fn a_socket_without_reuse_port_is_in_no_group() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        assert_eq!(Member::of(&socket), None);
    }
}
