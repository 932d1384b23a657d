//! The sockets a server serves across restarts: [`Listeners`], opened by a
//! [`ListenersBuilder`] from a service manager's sockets, a predecessor's or
//! freshly bound ones, and handed to each server's successor.

use std::{
    collections::VecDeque, fmt, io, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration,
};

use socket2::Socket;
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::SignalKind,
    sync::Semaphore,
};

use super::{
    activation,
    bind::BindOptions,
    handoff::{self, Handoff, Offered, Predecessor, Trust, MAX_SOCKETS},
    notify,
    sockets::{invalid, NamedSocket},
    upgrade,
};
use crate::{shared::SharedSocket, GracefulAccept, Watch};

/// Default [`ListenersBuilder::handoff_timeout`].
const DEFAULT_HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`ListenersBuilder::handoff_mode`]: the owner alone.
const DEFAULT_HANDOFF_MODE: u32 = 0o600;

/// Where a server's listening sockets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// Inherited from a service manager (`LISTEN_FDS`), which keeps them.
    ServiceManager,
    /// Received from the server this one replaces, over the handoff path.
    Predecessor,
    /// Bound by this process.
    Bound,
}

/// What to listen on, by name.
#[derive(Debug, Clone)]
enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => addr.fmt(f),
            Address::Unix(path) => path.display().fmt(f),
        }
    }
}

/// Configures [`Listeners`]: the sockets to serve, by name, and how to bind
/// them when nothing is inherited.
#[derive(Debug, Clone)]
#[must_use]
pub struct ListenersBuilder {
    addresses: Vec<(String, Address)>,
    handoff: Option<PathBuf>,
    handoff_timeout: Duration,
    handoff_mode: u32,
    trust: Trust,
    bind: BindOptions,
    upgrade_on: Option<SignalKind>,
    upgrade_timeout: Duration,
    notify: bool,
}

/// The listening sockets a server should serve, from [`Listeners::builder`].
///
/// Take each one with [`tcp`](Self::tcp) or [`unix`](Self::unix), as a
/// [`GracefulAccept`] that knows whether another process holds its socket.
pub struct Listeners {
    origin: Origin,
    watch: Watch,
    sockets: Vec<Listening>,
    /// The names of the sockets already taken.
    taken: Vec<String>,
}

/// A socket to serve: its name, and its standing across processes, which
/// its [`GracefulAccept`] and the handoff share.
struct Listening {
    name: String,
    socket: Socket,
    shared: Arc<SharedSocket>,
}

impl Listeners {
    /// Configures the sockets to serve.
    pub fn builder() -> ListenersBuilder {
        ListenersBuilder {
            addresses: Vec::new(),
            handoff: None,
            handoff_timeout: DEFAULT_HANDOFF_TIMEOUT,
            handoff_mode: DEFAULT_HANDOFF_MODE,
            trust: Trust::default(),
            bind: BindOptions::default(),
            upgrade_on: None,
            upgrade_timeout: upgrade::DEFAULT_UPGRADE_TIMEOUT,
            notify: true,
        }
    }

    /// Where the sockets came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Takes the TCP listener named `name`.
    ///
    /// # Errors
    ///
    /// `NotFound` if there is none by that name (or it was taken),
    /// `InvalidInput` if that socket is not TCP.
    pub fn tcp(&mut self, name: &str) -> io::Result<GracefulAccept<TcpListener>> {
        let (socket, shared) = self.take(name, false)?;
        let listener = TcpListener::from_std(socket.into())?;
        Ok(GracefulAccept::with_shared(
            listener,
            self.watch.clone(),
            shared,
        ))
    }

    /// Takes the Unix listener named `name`.
    ///
    /// # Errors
    ///
    /// `NotFound` if there is none by that name (or it was taken),
    /// `InvalidInput` if that socket is not a Unix socket.
    pub fn unix(&mut self, name: &str) -> io::Result<GracefulAccept<UnixListener>> {
        let (socket, shared) = self.take(name, true)?;
        let listener = UnixListener::from_std(socket.into())?;
        Ok(GracefulAccept::with_shared(
            listener,
            self.watch.clone(),
            shared,
        ))
    }

    fn take(&mut self, name: &str, unix: bool) -> io::Result<(Socket, Arc<SharedSocket>)> {
        let at = self
            .sockets
            .iter()
            .position(|listening| listening.name == name)
            .ok_or_else(|| {
                let why = if self.taken.iter().any(|n| n == name) {
                    format!("listener {name:?} was already taken")
                } else {
                    format!("no listener named {name:?}")
                };
                io::Error::new(io::ErrorKind::NotFound, why)
            })?;
        if socket_is_unix(&self.sockets[at].socket)? != unix {
            let kind = if unix { "a Unix" } else { "a TCP" };
            return Err(invalid(format!("listener {name:?} is not {kind} socket")));
        }
        let Listening {
            name,
            socket,
            shared,
        } = self.sockets.swap_remove(at);
        self.taken.push(name);
        Ok((socket, shared))
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        // A socket nobody took must close, copies included.
        for Listening { name, shared, .. } in self.sockets.drain(..) {
            tracing::warn!(%name, "listener never taken; closing it");
            shared.close_copy();
        }
    }
}

impl fmt::Debug for Listeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listeners")
            .field("origin", &self.origin)
            .field(
                "names",
                &self.sockets.iter().map(|l| &l.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ListenersBuilder {
    /// A TCP listener named `name`, bound to `addr` unless inherited.
    pub fn tcp(mut self, name: impl Into<String>, addr: SocketAddr) -> Self {
        self.addresses.push((name.into(), Address::Tcp(addr)));
        self
    }

    /// A Unix listener named `name`, bound to `path` unless inherited.
    pub fn unix(mut self, name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.addresses
            .push((name.into(), Address::Unix(path.into())));
        self
    }

    /// The Unix socket path a successor connects to for the sockets: this
    /// server takes them from a server listening there, then listens there
    /// for its own successor.
    pub fn handoff(mut self, path: impl Into<PathBuf>) -> Self {
        self.handoff = Some(path.into());
        self
    }

    /// How long either side of a handoff waits for the other. Default 10 s.
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.handoff_timeout = timeout;
        self
    }

    /// The permissions of the socket file this server creates on the
    /// handoff path, whatever the umask. Default `0o600`: the owner alone
    /// may connect (connecting to a Unix socket needs write permission on
    /// it, `unix(7)`).
    pub fn handoff_mode(mut self, mode: u32) -> Self {
        self.handoff_mode = mode;
        self
    }

    /// Also hands sockets to, and takes them from, processes whose effective
    /// uid is `uid`. By default only processes of this one's effective uid
    /// and root take part in a handoff; the peer is identified by the kernel
    /// (`SO_PEERCRED` on Linux, `getpeereid` elsewhere), and a refused one is
    /// logged with its pid and uid.
    pub fn handoff_allow_uid(mut self, uid: u32) -> Self {
        self.trust.uids.push(uid);
        self
    }

    /// Also hands sockets to, and takes them from, processes whose effective
    /// gid is `gid` (see [`handoff_allow_uid`](Self::handoff_allow_uid)).
    pub fn handoff_allow_gid(mut self, gid: u32) -> Self {
        self.trust.gids.push(gid);
        self
    }

    /// Binds TCP sockets with `SO_REUSEPORT`, so that an independent
    /// successor can bind the same port. Default off.
    ///
    /// On Linux a drain that finds another process's socket listening on
    /// the same address (its `SO_REUSEPORT` sibling) is a
    /// [`DrainKind::Restart`](crate::DrainKind::Restart).
    pub fn reuse_port(mut self, reuse_port: bool) -> Self {
        self.bind.reuse_port = reuse_port;
        self
    }

    /// Upgrades in place on `signal` (SIGUSR2 is the convention nginx set):
    /// the server starts its successor itself, from the executable at the
    /// path it was started from ([`std::env::current_exe`] when
    /// [`open`](Self::open) runs, so a binary installed there since is
    /// picked up) with the same arguments and environment, and the
    /// successor takes the sockets over the [`handoff`](Self::handoff)
    /// path, which this needs. This server drains once the successor is
    /// ready ([`DrainKind::Restart`](crate::DrainKind::Restart)).
    ///
    /// If the successor cannot be started (the path is gone or not
    /// executable), exits, or does not take over within
    /// [`upgrade_timeout`](Self::upgrade_timeout) (it is killed then), this
    /// server serves on and logs why at error; the next signal tries again.
    /// A signal during an upgrade is ignored with a warning. Under systemd,
    /// `ExecReload=/bin/kill -USR2 $MAINPID` with `NotifyAccess=all`: see
    /// the README's unit files.
    pub fn upgrade_on(mut self, signal: SignalKind) -> Self {
        self.upgrade_on = Some(signal);
        self
    }

    /// How long a successor started by [`upgrade_on`](Self::upgrade_on) may
    /// take to take over before it is killed. Default 30 s.
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_timeout = timeout;
        self
    }

    /// Whether to tell the service manager what the server does when
    /// `NOTIFY_SOCKET` is set (systemd's sd_notify(3) protocol, for
    /// `Type=notify` and `Type=notify-reload` units). Default on; turn it
    /// off to send `READY=1` yourself, for example after warming a cache.
    ///
    /// - `READY=1` once every listener serves, with `MAINPID=` of this
    ///   process when it took the sockets over from a predecessor (the
    ///   service manager then follows the service to this process; it needs
    ///   `NotifyAccess=all`).
    /// - At an [`upgrade_on`](Self::upgrade_on) signal `RELOADING=1` with
    ///   `MONOTONIC_USEC=`, and `READY=1` again if the upgrade fails.
    /// - At a shutdown's trigger `STOPPING=1` and `EXTEND_TIMEOUT_USEC=` the
    ///   time left to the [`grace`](crate::WatchBuilder::grace)'s end plus
    ///   5 s, so that `TimeoutStopSec=` does not kill a drain in progress.
    /// - `STATUS=` lines with what the drain does, and its report.
    ///
    /// A restart's drain sends nothing: the successor speaks for the
    /// service.
    pub fn notify_service_manager(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// The accept-queue length asked of listen(2). Default 1024.
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.bind.backlog = backlog;
        self
    }

    /// `IPV6_V6ONLY` for IPv6 addresses. Default: the system's.
    pub fn only_v6(mut self, only_v6: bool) -> Self {
        self.bind.only_v6 = Some(only_v6);
        self
    }

    /// `TCP_NODELAY` on every accepted connection (set on the listener,
    /// which accepted sockets inherit). Default off.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.bind.nodelay = nodelay;
        self
    }

    /// Gets the sockets: inherited from a service manager if it passed any
    /// to this process, else received from a server on the handoff path if
    /// one is there, else bound. With a handoff path, a task then serves it
    /// for the next successor until the drain starts.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for bad input: an inherited descriptor that is not a
    /// listening stream socket, a name the inherited or received sockets
    /// lack, a received socket on another address than configured (a TCP
    /// port of 0 takes any), a handoff path that is not a socket or whose
    /// directory does not exist. `PermissionDenied` if the server on the handoff path is a
    /// process this one does not trust (see
    /// [`handoff_allow_uid`](Self::handoff_allow_uid)): nothing is taken from
    /// it. Otherwise what binding or the handoff reports.
    pub async fn open(self, watch: &Watch) -> io::Result<Listeners> {
        if self.addresses.len() > MAX_SOCKETS {
            return Err(invalid(format!("at most {MAX_SOCKETS} listeners")));
        }
        if let Some(name) = self
            .addresses
            .iter()
            .map(|(n, _)| n)
            .find(|n| n.contains('\n'))
        {
            return Err(invalid(format!("listener name {name:?} has a newline")));
        }
        if self.upgrade_on.is_some() && self.handoff.is_none() {
            return Err(invalid(
                "an upgrade on a signal needs a handoff path".into(),
            ));
        }
        let mut successor = None;
        let (origin, sockets) = if let Some(inherited) = activation::take()? {
            (
                Origin::ServiceManager,
                self.pick(inherited, Origin::ServiceManager)?,
            )
        } else if let Some((predecessor, received)) = self.connect().await? {
            successor = Some(predecessor);
            (
                Origin::Predecessor,
                self.pick(received, Origin::Predecessor)?,
            )
        } else {
            (Origin::Bound, self.bind()?)
        };
        let accepting = Arc::new(Semaphore::new(0));
        let sockets = sockets
            .into_iter()
            .map(|named| self.share(origin, named, &accepting))
            .collect::<io::Result<Vec<_>>>()?;
        let serving = Serving {
            accepting,
            count: sockets.len(),
            notify: self.notify && notify::is_listening(),
        };
        let notify = serving.notify;
        if let Some(path) = &self.handoff {
            let handoff = Handoff {
                sockets: sockets
                    .iter()
                    .map(|listening| Offered {
                        name: listening.name.clone(),
                        shared: listening.shared.clone(),
                    })
                    .collect(),
                watch: watch.clone(),
                timeout: self.handoff_timeout,
                backlog: self.bind.backlog,
                trust: self.trust.clone(),
                path: path.clone(),
            };
            match successor {
                Some(predecessor) => {
                    tokio::spawn(take_over(predecessor, handoff, serving));
                }
                None => {
                    let listener = handoff::listen(path, self.handoff_mode).map_err(|e| {
                        let path = path.display();
                        io::Error::new(
                            e.kind(),
                            format!("cannot listen on handoff path {path}: {e}"),
                        )
                    })?;
                    tokio::spawn(handoff.serve(listener));
                    tokio::spawn(serving.announce());
                }
            }
        } else {
            tokio::spawn(serving.announce());
        }
        // Last, once nothing can fail: these outlive this call.
        if let Some(signal) = self.upgrade_on {
            upgrade::start(signal, self.upgrade_timeout, watch.clone())?;
        }
        if notify {
            watch.inner.follow_steps(Box::new(notify::ServiceManager));
        }
        for listening in &sockets {
            log_socket(origin, &listening.name, &listening.socket);
        }
        Ok(Listeners {
            origin,
            watch: watch.clone(),
            sockets,
            taken: Vec::new(),
        })
    }

    /// The standing of a socket across processes: held by a service manager
    /// from the start, copied for a handoff if there is one.
    fn share(
        &self,
        origin: Origin,
        NamedSocket { name, socket }: NamedSocket,
        accepting: &Arc<Semaphore>,
    ) -> io::Result<Listening> {
        let mut shared = match origin {
            Origin::ServiceManager => SharedSocket::elsewhere(),
            Origin::Predecessor | Origin::Bound => SharedSocket::default(),
        };
        if self.handoff.is_some() {
            shared = shared.with_copy(socket.try_clone()?);
        }
        let shared = shared
            .with_accepting(accepting.clone())
            .with_siblings_of(&socket);
        Ok(Listening {
            name,
            socket,
            shared: Arc::new(shared),
        })
    }

    async fn connect(&self) -> io::Result<Option<(Predecessor, handoff::Sockets)>> {
        match &self.handoff {
            Some(path) => handoff::connect(path, &self.trust, self.handoff_timeout).await,
            None => Ok(None),
        }
    }

    /// Matches the `available` sockets (from `origin`) to the configured
    /// names. Sockets a service manager passes may be unnamed: the only one
    /// serves the only name configured. Sockets from a predecessor must
    /// carry the configured names and be on the configured addresses (a
    /// port of 0 takes any), so that a successor never serves another
    /// address than it was told without saying so. Sockets left over are
    /// closed.
    fn pick(&self, available: Vec<NamedSocket>, origin: Origin) -> io::Result<Vec<NamedSocket>> {
        let how = match origin {
            Origin::ServiceManager => "inherited",
            Origin::Predecessor | Origin::Bound => "received",
        };
        let mut available: VecDeque<_> = available.into();
        if let ([(name, _)], 1, Origin::ServiceManager) =
            (self.addresses.as_slice(), available.len(), origin)
        {
            let NamedSocket { socket, .. } = available.pop_front().expect("one socket");
            return Ok(vec![NamedSocket {
                name: name.clone(),
                socket,
            }]);
        }
        let names: Vec<_> = available.iter().map(|s| s.name.clone()).collect();
        let picked = self
            .addresses
            .iter()
            .map(|(name, address)| {
                let at = available
                    .iter()
                    .position(|s| s.name == *name)
                    .ok_or_else(|| {
                        invalid(format!(
                            "no {how} socket named {name:?} (there are {names:?})"
                        ))
                    })?;
                let NamedSocket { socket, .. } =
                    available.remove(at).expect("position is in range");
                if origin == Origin::Predecessor {
                    check_address(name, address, &socket)?;
                }
                Ok(NamedSocket {
                    name: name.clone(),
                    socket,
                })
            })
            .collect::<io::Result<_>>()?;
        for NamedSocket { name, .. } in available {
            tracing::warn!(%name, "{how} socket not configured here; closing it");
        }
        Ok(picked)
    }

    fn bind(&self) -> io::Result<Vec<NamedSocket>> {
        self.addresses
            .iter()
            .map(|(name, address)| {
                let socket = match address {
                    Address::Tcp(addr) => self.bind.tcp(*addr),
                    Address::Unix(path) => self.bind.unix(path),
                };
                let describe = |e: io::Error| {
                    io::Error::new(e.kind(), format!("cannot listen on {address}: {e}"))
                };
                Ok(NamedSocket {
                    name: name.clone(),
                    socket: socket.map_err(describe)?,
                })
            })
            .collect()
    }
}

/// When every listener serves: each gets a permit in `accepting` when it
/// first accepts.
struct Serving {
    accepting: Arc<Semaphore>,
    count: usize,
    /// Tell the service manager then.
    notify: bool,
}

impl Serving {
    /// Resolves once every listener accepts.
    async fn wait(&self) {
        let all = u32::try_from(self.count).unwrap_or(u32::MAX);
        let _ = self.accepting.acquire_many(all).await;
    }

    /// Tells the service manager that the server is ready once it is.
    async fn announce(self) {
        if self.notify {
            self.wait().await;
            notify::ready(false);
        }
    }
}

/// In a successor: says ready once every listener accepts, then serves the
/// handoff path for the next one.
async fn take_over(predecessor: Predecessor, handoff: Handoff, serving: Serving) {
    serving.wait().await;
    match predecessor.ready(handoff.timeout).await {
        Ok(listener) => {
            handoff.restore_backlog();
            tracing::info!("took over from the predecessor");
            if serving.notify {
                notify::ready(true);
            }
            handoff.serve(listener).await;
        }
        Err(error) => {
            tracing::error!(%error, "the takeover failed; the predecessor keeps serving, this server steps down");
            handoff.watch.trigger();
        }
    }
}

fn log_socket(origin: Origin, name: &str, socket: &Socket) {
    let addr = socket.local_addr().ok();
    let addr = addr.as_ref().and_then(|a| {
        a.as_socket()
            .map(|a| a.to_string())
            .or_else(|| a.as_pathname().map(|p| p.display().to_string()))
    });
    tracing::info!(?origin, %name, addr = %addr.as_deref().unwrap_or("?"), "listening");
}

fn socket_is_unix(socket: &Socket) -> io::Result<bool> {
    Ok(socket.local_addr()?.is_unix())
}

/// Fails with `InvalidInput` unless `socket`, received from a predecessor
/// for `name`, is on `address` as configured here (a TCP port of 0 takes
/// any address).
fn check_address(name: &str, address: &Address, socket: &Socket) -> io::Result<()> {
    let local = socket.local_addr()?;
    let matches = match address {
        Address::Tcp(addr) => addr.port() == 0 || local.as_socket() == Some(*addr),
        Address::Unix(path) => local.as_pathname() == Some(path.as_path()),
    };
    if matches {
        return Ok(());
    }
    let got = local
        .as_socket()
        .map(|a| a.to_string())
        .or_else(|| local.as_pathname().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "an unnamed socket".to_owned());
    Err(invalid(format!(
        "listener {name:?}: the predecessor's socket is on {got}, not on {address} as configured here"
    )))
}
