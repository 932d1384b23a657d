//! The shared coordinator: the drain phase, the live counts and the deadline,
//! which the futures in [`future`](crate::future) wait on.
//!
//! Every other part of the crate reports to a [`Watch`]: [`GracefulAccept`]
//! counts listeners and connections, [`DrainLayer`] counts requests, and the
//! server waits on [`Watch::shutdown_signal`]. A `Watch` is a handle to shared
//! state; cloning it is one reference-count increment.
//!
//! [`GracefulAccept`]: crate::GracefulAccept
//! [`DrainLayer`]: crate::DrainLayer

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst},
        Arc, Mutex, MutexGuard, OnceLock,
    },
    time::Duration,
};

use slab::Slab;
use tokio::{
    runtime::Handle,
    sync::{futures::OwnedNotified, Notify},
    time::Instant,
};

use crate::{
    future::{Drained, Draining, ListenersClosed, ShutdownSignal},
    io::{Slot, BETWEEN, READING_NEXT_HEAD, RECEIVING_BODY, RETIRING},
    observer::Observer,
    report::{DrainKind, DrainReport, ForceCause, Rounded},
    shared::SharedSocket,
};

/// Default [`WatchBuilder::grace`]: how long the drain may take before it is forced.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Default [`WatchBuilder::first_byte_grace`].
const DEFAULT_FIRST_BYTE_GRACE: Duration = Duration::from_secs(1);

/// Default [`WatchBuilder::request_head_grace`].
const DEFAULT_REQUEST_HEAD_GRACE: Duration = Duration::from_secs(2);

/// Default [`WatchBuilder::keep_alive_idle`].
const DEFAULT_KEEP_ALIVE_IDLE: Duration = Duration::from_millis(100);

/// Default [`WatchBuilder::linger`].
const DEFAULT_LINGER: Duration = Duration::from_secs(2);

/// Where a drain stands. Phases only move forward:
/// `Running → (LameDuck →) Draining → Drained`, or to `Forced` from
/// `LameDuck` or `Draining`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Serving normally; nothing has triggered the drain.
    Running,
    /// Triggered, during the [`lame_duck`](WatchBuilder::lame_duck) period:
    /// readiness reports unhealthy so load balancers stop routing here, but
    /// listeners keep accepting and requests are served as before, HTTP/1
    /// responses with `Connection: close`.
    LameDuck,
    /// Triggered, and the lame duck period (if any) over: listeners drain their accept queues and close, in-flight
    /// requests finish, HTTP/1 responses carry `Connection: close`.
    Draining,
    /// Every listener, connection and request is gone; the drain ended cleanly.
    Drained,
    /// The deadline passed or a second trigger came: every connection still
    /// open was told to close at once.
    Forced,
}

impl Phase {
    #[inline]
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Phase::Running,
            1 => Phase::LameDuck,
            2 => Phase::Draining,
            3 => Phase::Drained,
            _ => Phase::Forced,
        }
    }
}

/// Configures and builds a [`Watch`].
///
/// ```
/// use std::time::Duration;
/// use tower_drain::Watch;
///
/// let watch = Watch::builder()
///     .grace(Duration::from_secs(10))
///     .lame_duck(Duration::from_secs(3))
///     .first_byte_grace(Duration::from_millis(500))
///     .build()?;
/// # Ok::<(), tower_drain::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct WatchBuilder {
    grace: Duration,
    lame_duck: Duration,
    first_byte_grace: Duration,
    request_head_grace: Duration,
    keep_alive_idle: Duration,
    linger: Duration,
}

impl Default for WatchBuilder {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            lame_duck: Duration::ZERO,
            first_byte_grace: DEFAULT_FIRST_BYTE_GRACE,
            request_head_grace: DEFAULT_REQUEST_HEAD_GRACE,
            keep_alive_idle: DEFAULT_KEEP_ALIVE_IDLE,
            linger: DEFAULT_LINGER,
        }
    }
}

impl WatchBuilder {
    /// The hard deadline, counted from the trigger: whatever is still open
    /// then is forced closed. Default 30 s.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long the server goes on serving normally after the trigger while
    /// readiness already reports unhealthy, so that load balancers stop
    /// routing to it before it stops accepting. Default zero.
    ///
    /// Endpoint removal takes from under a second to many seconds to reach
    /// kube-proxy, ingress controllers and meshes; during that time they
    /// still send new connections. Through the period, [`Watch::is_ready`]
    /// is `false` (and [`Readiness`](crate::Readiness) answers 503), every
    /// listener keeps accepting, and HTTP/1 responses carry
    /// `Connection: close` so that keep-alive clients reconnect through the
    /// load balancer. Then the drain runs as usual. The
    /// [`grace`](WatchBuilder::grace) still counts from the trigger and must
    /// be longer; a second trigger during the period forces. A restart
    /// ([`DrainKind::Restart`](crate::DrainKind::Restart)) skips the period:
    /// another process serves the same sockets.
    pub fn lame_duck(mut self, period: Duration) -> Self {
        self.lame_duck = period;
        self
    }

    /// How long a newly accepted connection may stay silent before the drain
    /// stops protecting it. Default 1 s.
    ///
    /// hyper closes a connection that has not read a byte the moment the
    /// server starts its graceful shutdown, even when the request already
    /// waits in the kernel, and one whose protocol it has not yet told apart
    /// (bytes that could still be the start of the HTTP/2 preface, such as
    /// the `P` of `POST`). [`Watch::shutdown_signal`] therefore holds back
    /// until every connection has read enough to choose HTTP/1 or HTTP/2, or
    /// until this long after the last connection was accepted. During the
    /// drain, TLS connections that have not received a byte by then are
    /// closed: their handshake would otherwise hold the drain.
    pub fn first_byte_grace(mut self, grace: Duration) -> Self {
        self.first_byte_grace = grace;
        self
    }

    /// How long into the drain an HTTP/1 connection may take to deliver a
    /// request head it has started before the drain closes it. Default 2 s.
    ///
    /// A connection that has sent part of a request head (`GET / HTT`) and
    /// stalls would otherwise hold the drain until the deadline. No request
    /// of it has started, so closing it loses nothing, and it does not count
    /// as forced: [`DrainReport::heads_cut_off`](crate::DrainReport::heads_cut_off)
    /// counts it. Until then, [`Watch::shutdown_signal`] waits for heads in
    /// progress (hyper closes a keep-alive connection whose next head it has
    /// not read whole) and for keep-alive connections to go idle (see
    /// [`keep_alive_idle`](WatchBuilder::keep_alive_idle)). The grace runs
    /// from the start of the drain, or from the last accepted connection if
    /// that is later. A grace as long as the [`grace`](WatchBuilder::grace)
    /// switches the closing off, for a server behind
    /// [`GracefulAccept`](crate::GracefulAccept) whose protocol is not HTTP.
    pub fn request_head_grace(mut self, grace: Duration) -> Self {
        self.request_head_grace = grace;
        self
    }

    /// How long an HTTP/1 keep-alive connection between two requests must
    /// have been idle (nothing read or written) before the drain lets the
    /// server close it. Default 100 ms.
    ///
    /// HTTP/1 has one way to retire a connection without a race: say
    /// `Connection: close` on a response (RFC 9112 §9.6). From the trigger
    /// on, tower-drain adds `Connection: close` to the next request head of
    /// every HTTP/1 connection, so the server answers it with
    /// `Connection: close` and closes the connection after the response
    /// ([`DrainReport::connections_retired`](crate::DrainReport::connections_retired)).
    /// A connection that receives no further request is closed between
    /// requests when [`Watch::shutdown_signal`] resolves, which it does only
    /// once every such connection has been idle this long: a client that
    /// used the connection a moment ago may be about to send on it, while
    /// one that has left it idle (a proxy's pool) sees the close before it
    /// picks the connection again
    /// ([`DrainReport::connections_closed_between_requests`](crate::DrainReport::connections_closed_between_requests)).
    /// The wait ends with the
    /// [`request_head_grace`](WatchBuilder::request_head_grace) at the latest.
    pub fn keep_alive_idle(mut self, idle: Duration) -> Self {
        self.keep_alive_idle = idle;
        self
    }

    /// How long a connection the server closes may linger. Default 2 s.
    ///
    /// Closing a socket whose client has sent bytes the server has not read
    /// (requests pipelined behind the last one answered) makes the kernel
    /// reset it (`tcp_close`), and the reset makes the client's stack drop
    /// response bytes it has not read yet. So when the server shuts a
    /// [`TrackedIo`](crate::TrackedIo) down, the write side is shut first
    /// (the client gets every byte, then a FIN), and if the client had sent
    /// more (bytes waiting to be read, or requests pipelined behind the one
    /// the connection closes after), what it still sends is read and
    /// discarded until it closes too, for at most this long: nginx's
    /// `lingering_close`. A connection with nothing unread closes at once. A client still sending when the time
    /// runs out is counted in
    /// [`DrainReport::lingers_cut_off`](crate::DrainReport::lingers_cut_off)
    /// during a drain. A forced drain stops lingering at once.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Builds the [`Watch`], or says why the configuration cannot drain.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_drain::{ConfigError, Watch};
    ///
    /// let too_long = Watch::builder()
    ///     .lame_duck(Duration::from_secs(30))
    ///     .grace(Duration::from_secs(30))
    ///     .build();
    /// assert!(matches!(too_long, Err(ConfigError::LameDuckTooLong { .. })));
    /// ```
    pub fn build(self) -> Result<Watch, ConfigError> {
        if self.grace.is_zero() {
            return Err(ConfigError::ZeroGrace);
        }
        if !self.lame_duck.is_zero() && self.lame_duck >= self.grace {
            return Err(ConfigError::LameDuckTooLong {
                lame_duck: self.lame_duck,
                grace: self.grace,
            });
        }
        Ok(Watch::with_config(self))
    }
}

/// Why a [`WatchBuilder`] cannot build a [`Watch`].
///
/// It converts into an [`std::io::Error`] of kind
/// [`InvalidInput`](std::io::ErrorKind::InvalidInput), so that `?` works in
/// a `main` returning `std::io::Result<()>`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A grace of zero: every drain would be forced the moment it starts.
    ZeroGrace,
    /// The lame duck period leaves no time for the drain before the
    /// deadline, which counts from the trigger too.
    LameDuckTooLong {
        /// The configured [`WatchBuilder::lame_duck`].
        lame_duck: Duration,
        /// The configured [`WatchBuilder::grace`].
        grace: Duration,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroGrace => f.write_str(
                "the grace must be longer than zero: every drain would be forced the moment it starts",
            ),
            ConfigError::LameDuckTooLong { lame_duck, grace } => write!(
                f,
                "the lame duck period ({lame_duck:?}) must be shorter than the grace ({grace:?}), which counts from the trigger too"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for std::io::Error {
    fn from(error: ConfigError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, error)
    }
}

/// The shared drain coordinator.
///
/// A `Watch` starts in [`Phase::Running`]. [`trigger`](Watch::trigger) starts
/// the drain; a second trigger, [`force`](Watch::force) or the
/// [`grace`](WatchBuilder::grace) deadline forces it. Listeners wrapped in
/// [`GracefulAccept`](crate::GracefulAccept) and services wrapped in
/// [`DrainLayer`](crate::DrainLayer) report to it; its futures wait for each
/// step of the drain without polling.
///
/// # Example
///
/// ```
/// use tower_drain::{Phase, Watch};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let watch = Watch::new();
/// let drained = tokio::spawn(watch.drained());
///
/// watch.trigger();
/// let report = drained.await.unwrap();
/// assert_eq!(watch.phase(), Phase::Drained);
/// assert_eq!(report.connections_forced, 0);
/// # }
/// ```
#[derive(Clone)]
pub struct Watch {
    pub(crate) inner: Arc<Inner>,
}

impl Default for Watch {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("phase", &self.phase())
            .field("listeners", &self.listeners())
            .field("connections", &self.connections())
            .field("requests", &self.requests())
            .finish()
    }
}

impl Watch {
    /// A `Watch` with the default [`grace`](WatchBuilder::grace) (30 s) and
    /// [`first_byte_grace`](WatchBuilder::first_byte_grace) (1 s).
    pub fn new() -> Self {
        Self::with_config(WatchBuilder::default())
    }

    fn with_config(config: WatchBuilder) -> Self {
        Watch {
            inner: Arc::new(Inner::new(config)),
        }
    }

    /// Configure a `Watch` before building it: see [`WatchBuilder`].
    pub fn builder() -> WatchBuilder {
        WatchBuilder::default()
    }

    /// Starts the drain; a second call forces it (see [`force`](Watch::force)).
    ///
    /// The first trigger moves to [`Phase::LameDuck`] if a
    /// [`lame_duck`](WatchBuilder::lame_duck) period is configured, else to
    /// [`Phase::Draining`], and arms the deadline
    /// ([`grace`](WatchBuilder::grace)) on the current tokio runtime, or the
    /// one the `Watch` was created on. Calls after the drain ended do nothing.
    pub fn trigger(&self) {
        let runtime = self.inner.runtime();
        // Decided before the phase moves, so that no readiness check sees
        // the drain without its kind.
        let restart = self.inner.phase() == Phase::Running && self.inner.lives_on();
        if restart {
            self.inner.restart.store(true, SeqCst);
        }
        let first = if restart || self.inner.config.lame_duck.is_zero() || runtime.is_none() {
            Phase::Draining
        } else {
            Phase::LameDuck
        };
        match self.inner.advance(Phase::Running, first) {
            Ok(()) => self.start(first, runtime),
            Err(Phase::LameDuck | Phase::Draining) => self.inner.force(ForceCause::SecondTrigger),
            Err(_) => {}
        }
    }

    /// Forces the drain now: every connection that is still open fails its
    /// next read or write, so the server drops it. Starts the drain first if
    /// it has not started. Does nothing once the drain has ended.
    pub fn force(&self) {
        if self.inner.advance(Phase::Running, Phase::Draining).is_ok() {
            self.inner.record_trigger(Phase::Draining);
        }
        self.inner.force(ForceCause::Force);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.inner.phase()
    }

    /// `true` until the trigger, and through a restart's drain
    /// ([`DrainKind::Restart`](crate::DrainKind::Restart)): the answer a
    /// readiness check wants. [`Readiness`](crate::Readiness) serves it.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// `true` once the drain proper has started (after the
    /// [`lame_duck`](WatchBuilder::lame_duck) period, if any), including once
    /// it has ended. For readiness, use [`is_ready`](Watch::is_ready), which
    /// turns at the trigger.
    pub fn is_draining(&self) -> bool {
        self.inner.is_draining()
    }

    /// The number of tracked connections that are open, including those
    /// still in a handshake.
    pub fn connections(&self) -> usize {
        self.inner.connections()
    }

    /// The number of requests in flight through a [`DrainLayer`](crate::DrainLayer),
    /// counting a response until its body has finished or been dropped.
    pub fn requests(&self) -> usize {
        self.inner.requests()
    }

    /// The number of [`GracefulAccept`](crate::GracefulAccept) listeners whose
    /// socket is still open.
    pub fn listeners(&self) -> usize {
        self.inner.listeners.load(SeqCst)
    }

    /// The hard deadline configured with [`WatchBuilder::grace`].
    pub fn grace(&self) -> Duration {
        self.inner.config.grace
    }

    /// The period configured with [`WatchBuilder::lame_duck`].
    pub fn lame_duck(&self) -> Duration {
        self.inner.config.lame_duck
    }

    /// The report of the drain, once it has ended (cleanly or forced).
    pub fn report(&self) -> Option<DrainReport> {
        self.inner.report()
    }

    /// Resolves once the drain has started (at once if it has): at the
    /// trigger, or at the end of the [`lame_duck`](WatchBuilder::lame_duck)
    /// period. The same as [`Observer::draining`].
    pub fn draining(&self) -> Draining {
        Draining::new(self.inner.clone())
    }

    /// A read-only view of the drain, for handlers, long-lived responses and
    /// readiness checks: it cannot trigger or force it.
    pub fn observer(&self) -> Observer {
        Observer::new(self.inner.clone())
    }

    /// Resolves once the drain has started and every listener has closed its
    /// socket: from then on, new connection attempts are refused.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: see [`future`](crate::future#cancel-safety).
    pub fn listeners_closed(&self) -> ListenersClosed {
        ListenersClosed::new(self.inner.clone())
    }

    /// Resolves with the [`DrainReport`] once the drain has ended: it was
    /// triggered, and every listener, tracked connection and request is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: see [`future`](crate::future#cancel-safety).
    pub fn drained(&self) -> Drained {
        Drained::new(self.inner.clone())
    }

    /// The future to hand to `axum::serve(..).with_graceful_shutdown(..)`.
    ///
    /// When it resolves, axum drops its listener and asks every connection to
    /// finish gracefully, and hyper closes at once any connection that has not
    /// read a byte. So it resolves only when that is safe: the drain has
    /// started, every [`GracefulAccept`](crate::GracefulAccept) has drained
    /// its accept queue and closed its socket, every TLS handshake in progress
    /// has ended, and every connection has read its first byte or been silent
    /// for the
    /// [`first_byte_grace`](WatchBuilder::first_byte_grace). It resolves at
    /// once if the drain is forced. The [crate example](crate) shows it in
    /// use.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: see [`future`](crate::future#cancel-safety).
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        ShutdownSignal::new(self.inner.clone())
    }

    fn start(&self, to: Phase, runtime: Option<Handle>) {
        self.inner.record_trigger(to);
        match runtime {
            Some(runtime) => self.inner.arm_timers(self.clone(), &runtime),
            None => tracing::warn!(
                "no tokio runtime to time the drain on; its deadline is not enforced"
            ),
        }
        self.inner.changed();
    }
}

/// The shared state behind every clone of a [`Watch`].
///
/// # Invariants
///
/// - **The phase only moves forward**: `Running → (LameDuck →) Draining →
///   Drained`, or to `Forced` from `LameDuck` or `Draining`, always by
///   compare-exchange ([`advance`](Self::advance)), so each step is taken
///   once, by one caller.
/// - **Every atomic is `SeqCst`.** The end of the drain is decided by one
///   thread reading what others wrote (the phase, `listeners`, `requests`,
///   the connection registry); one total order over all of them is what
///   makes the next point hold. They are touched a few times per connection
///   or request, where `SeqCst` costs what `AcqRel` does on x86.
/// - **The end cannot be missed.** The drain has ended when the phase is
///   `Draining` and no listener, request or connection is left. Each event
///   that can make that true calls [`finish_if_drained`](Self::finish_if_drained)
///   after its own store: the phase change (through [`changed`](Self::changed)),
///   the last listener closing, the last request ending, the last
///   connection closing (its removal and the phase change are ordered by
///   the registry's mutex, which `finish_if_drained` takes). Whichever store
///   is last in that order is followed by a check that sees every other, so
///   some caller finds everything empty. `report` is written once: a
///   `OnceLock`, checked again under the timeline lock.
/// - **Lock order**: `timeline`, then `connections` (only [`force`](Self::force)
///   holds both). No lock is held across an await.
/// - **No lost wake-up**: waiters register with `notify` before they check
///   their condition, and every store a waiter waits on is followed by
///   `notify_waiters`.
pub(crate) struct Inner {
    config: WatchBuilder,
    phase: AtomicU8,
    requests: AtomicUsize,
    listeners: AtomicUsize,
    /// Connections accepted that have not read a byte yet.
    awaiting_first_byte: AtomicUsize,
    /// Connections accepted but still in a (TLS) handshake.
    handshaking: AtomicUsize,
    /// When the newest connection was accepted, in nanoseconds since `epoch`.
    last_accept: AtomicU64,
    accepted_from_queue: AtomicUsize,
    /// Connections still queued when their listener closed.
    reset_in_queue: AtomicUsize,
    /// Listeners closed without a drain because another process holds them.
    listeners_shared: AtomicUsize,
    requests_completed: AtomicUsize,
    requests_aborted: AtomicUsize,
    /// Set once a `DrainLayer` wrapped a service: requests are counted.
    requests_counted: AtomicBool,
    /// Every open connection, through which the drain closes it.
    connections: Mutex<Slab<Arc<Slot>>>,
    /// Every open listener's standing across processes.
    listener_sockets: Mutex<Slab<Arc<SharedSocket>>>,
    /// Set at the trigger if every listener was held elsewhere too.
    restart: AtomicBool,
    /// Set once the request-head grace has run out: a connection that
    /// starts its first request head from then on is closed at once.
    heads_expired: AtomicBool,
    /// Connections closed with a request head incomplete.
    heads_cut_off: AtomicUsize,
    /// HTTP/1 connections closed after a request that the drain marked
    /// `Connection: close`.
    connections_retired: AtomicUsize,
    /// Request bodies still arriving when the drain was forced.
    bodies_cut_off: AtomicUsize,
    /// Lingering closes that ran out of time on a client still sending.
    lingers_cut_off: AtomicUsize,
    /// HTTP/1 connections closed between requests after the trigger.
    connections_closed_between_requests: AtomicUsize,
    /// Woken on every change a waiter may be waiting for.
    notify: Arc<Notify>,
    timeline: Mutex<Timeline>,
    report: OnceLock<DrainReport>,
    runtime: Option<Handle>,
    epoch: Instant,
}

/// When each step of the drain happened; written rarely, under a lock.
#[derive(Default)]
struct Timeline {
    triggered: Option<Instant>,
    /// The trigger, or the end of the lame duck period.
    drain_started: Option<Instant>,
    listeners_closed: Option<Instant>,
    forced: Option<(Instant, ForceCause, usize)>,
}

impl Inner {
    fn new(config: WatchBuilder) -> Self {
        Self {
            config,
            phase: AtomicU8::new(Phase::Running as u8),
            requests: AtomicUsize::new(0),
            listeners: AtomicUsize::new(0),
            awaiting_first_byte: AtomicUsize::new(0),
            handshaking: AtomicUsize::new(0),
            last_accept: AtomicU64::new(0),
            accepted_from_queue: AtomicUsize::new(0),
            reset_in_queue: AtomicUsize::new(0),
            listeners_shared: AtomicUsize::new(0),
            requests_completed: AtomicUsize::new(0),
            requests_aborted: AtomicUsize::new(0),
            requests_counted: AtomicBool::new(false),
            connections: Mutex::new(Slab::new()),
            listener_sockets: Mutex::new(Slab::new()),
            restart: AtomicBool::new(false),
            heads_expired: AtomicBool::new(false),
            heads_cut_off: AtomicUsize::new(0),
            connections_retired: AtomicUsize::new(0),
            bodies_cut_off: AtomicUsize::new(0),
            lingers_cut_off: AtomicUsize::new(0),
            connections_closed_between_requests: AtomicUsize::new(0),
            notify: Arc::new(Notify::new()),
            timeline: Mutex::default(),
            report: OnceLock::new(),
            runtime: Handle::try_current().ok(),
            epoch: Instant::now(),
        }
    }

    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(SeqCst))
    }

    /// Past the trigger and the lame duck period.
    #[inline]
    pub(crate) fn is_draining(&self) -> bool {
        !matches!(self.phase(), Phase::Running | Phase::LameDuck)
    }

    /// Before the trigger, or draining for a restart.
    #[inline]
    pub(crate) fn is_ready(&self) -> bool {
        !self.is_triggered() || self.restart.load(SeqCst)
    }

    /// Past the trigger: HTTP/1 responses say `Connection: close`.
    #[inline]
    pub(crate) fn is_triggered(&self) -> bool {
        self.phase() != Phase::Running
    }

    /// Every open listener is held by another process too, or has an
    /// `SO_REUSEPORT` sibling there: the service lives on after this one
    /// drains.
    fn lives_on(&self) -> bool {
        let sockets = self.lock_listener_sockets();
        let ours: Vec<u64> = sockets.iter().filter_map(|(_, s)| s.inode()).collect();
        !sockets.is_empty() && sockets.iter().all(|(_, shared)| shared.lives_on(&ours))
    }

    /// What the drain is for; settled before the trigger moves the phase.
    pub(crate) fn kind(&self) -> DrainKind {
        if self.restart.load(SeqCst) {
            DrainKind::Restart
        } else {
            DrainKind::Shutdown
        }
    }

    #[inline]
    pub(crate) fn is_forced(&self) -> bool {
        self.phase() == Phase::Forced
    }

    /// The drain has started and every listener has closed its socket.
    pub(crate) fn listeners_closed(&self) -> bool {
        self.is_draining() && self.listeners.load(SeqCst) == 0
    }

    /// No connection can arrive any more and every TLS handshake has
    /// ended, or the drain is forced: the first condition of
    /// [`ShutdownSignal`].
    pub(crate) fn listeners_done(&self) -> bool {
        self.listeners_closed() && self.handshaking.load(SeqCst) == 0 || self.is_forced()
    }

    /// Until when [`ShutdownSignal`] holds back once the listeners are
    /// done, as far as can be told now: `None` if nothing holds it (or the
    /// drain is forced). It waits for connections to read their first byte
    /// (up to the first-byte grace), and, up to the request-head grace, for
    /// HTTP/1 request heads in progress to end and for keep-alive
    /// connections between requests to be idle for `keep_alive_idle`.
    pub(crate) fn shutdown_hold(&self) -> Option<Instant> {
        if self.is_forced() {
            return None;
        }
        let first_byte =
            (self.awaiting_first_byte.load(SeqCst) > 0).then(|| self.first_byte_grace_end());
        first_byte.max(self.keep_alive_hold())
    }

    /// Until when keep-alive connections hold [`ShutdownSignal`]: the end of
    /// the request-head grace while a head is in progress, else when the
    /// most recently active connection between requests will have been idle
    /// for `keep_alive_idle`. Activity is only noted from the trigger on, so
    /// each connection counts as active at the trigger.
    fn keep_alive_hold(&self) -> Option<Instant> {
        let now = Instant::now();
        let window_end = self.request_head_grace_end();
        if now >= window_end {
            return None;
        }
        let mut last_active = None;
        for (_, slot) in self.lock_connections().iter() {
            match slot.state() {
                READING_NEXT_HEAD => return Some(window_end),
                BETWEEN => last_active = last_active.max(Some(slot.last_active())),
                _ => {}
            }
        }
        let last_active =
            (self.epoch + Duration::from_nanos(last_active?)).max(self.lock_timeline().triggered?);
        let idle_end = last_active + self.config.keep_alive_idle;
        (idle_end > now).then_some(idle_end.min(window_end))
    }

    pub(crate) fn connections(&self) -> usize {
        self.lock_connections().len()
    }

    pub(crate) fn requests(&self) -> usize {
        self.requests.load(SeqCst)
    }

    pub(crate) fn report(&self) -> Option<DrainReport> {
        self.report.get().cloned()
    }

    /// Moves the phase from `from` to `to`; on failure returns the phase found.
    fn advance(&self, from: Phase, to: Phase) -> Result<(), Phase> {
        self.phase
            .compare_exchange(from as u8, to as u8, SeqCst, SeqCst)
            .map(drop)
            .map_err(Phase::from_u8)
    }

    /// A registration for the next [`changed`](Self::changed), owned.
    pub(crate) fn notified(&self) -> OwnedNotified {
        self.notify.clone().notified_owned()
    }

    fn changed(&self) {
        self.notify.notify_waiters();
        self.finish_if_drained();
    }

    /// Once the newest connection has been accepted for the first-byte
    /// grace, closes every TLS connection that has not received a byte (its
    /// handshake would otherwise hold [`Watch::shutdown_signal`] until the
    /// handshake timeout) and every HTTP/2 connection whose client opened no
    /// stream (it would hold the drain until the deadline): closing them
    /// loses nothing.
    async fn cut_off_silent_handshakes(&self) {
        self.sleep_past(Self::first_byte_grace_end).await;
        let cut = self.cut_off_where(Slot::cut_off_silence);
        if cut > 0 {
            tracing::info!(
                connections = cut,
                "closed connections with nothing to lose after the first-byte grace (TLS silent, HTTP/2 without a stream)",
            );
        }
    }

    /// Applies `cut_off` to every connection; how many it closed.
    fn cut_off_where(&self, cut_off: impl Fn(&Slot) -> bool) -> usize {
        let connections = self.lock_connections();
        connections.iter().filter(|(_, slot)| cut_off(slot)).count()
    }

    /// Sleeps until the instant `until` computes, computed anew on waking:
    /// it moves with the newest accept.
    async fn sleep_past(&self, until: impl Fn(&Self) -> Instant) {
        loop {
            let until = until(self);
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    }

    /// Once the request-head grace has run out, closes every connection
    /// still reading a request head.
    async fn cut_off_stalled_heads(&self) {
        self.sleep_past(Self::request_head_grace_end).await;
        // See `head_started` for why SeqCst.
        self.heads_expired.store(true, SeqCst);
        let cut = self.cut_off_where(Slot::cut_off_head);
        if cut > 0 {
            self.heads_cut_off.fetch_add(cut, SeqCst);
            tracing::info!(
                connections = cut,
                grace = ?self.config.request_head_grace,
                "closed connections whose request head was still incomplete",
            );
        }
    }

    /// When the newest connection's first-byte grace runs out.
    fn first_byte_grace_end(&self) -> Instant {
        self.last_accept() + self.config.first_byte_grace
    }

    /// When the request-head grace runs out: counted from the start of the
    /// drain, or from the newest accept if that is later.
    fn request_head_grace_end(&self) -> Instant {
        let started = self.lock_timeline().drain_started;
        started.unwrap_or_else(Instant::now).max(self.last_accept())
            + self.config.request_head_grace
    }

    /// Nanoseconds since the `Watch` was created: how connections note when
    /// they were last active.
    pub(crate) fn elapsed_nanos(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
    }

    fn last_accept(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last_accept.load(SeqCst))
    }

    fn lock_connections(&self) -> MutexGuard<'_, Slab<Arc<Slot>>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_listener_sockets(&self) -> MutexGuard<'_, Slab<Arc<SharedSocket>>> {
        self.listener_sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock_timeline(&self) -> MutexGuard<'_, Timeline> {
        self.timeline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes the trigger, which moved the phase to `to`.
    fn record_trigger(&self, to: Phase) {
        let now = Instant::now();
        let mut timeline = self.lock_timeline();
        timeline.triggered = Some(now);
        if to == Phase::LameDuck {
            drop(timeline);
            tracing::info!(
                period = ?self.config.lame_duck,
                "lame duck period started: not ready, still serving",
            );
        } else {
            timeline.drain_started = Some(now);
            drop(timeline);
            self.log_drain_started("drain started");
        }
    }

    fn log_drain_started(&self, message: &'static str) {
        tracing::info!(
            kind = %self.kind(),
            listeners = self.listeners.load(SeqCst),
            connections = self.lock_connections().len(),
            requests = self.requests.load(SeqCst),
            "{message}",
        );
    }

    /// How long until the deadline, once triggered.
    pub(crate) fn until_deadline(&self) -> Option<Duration> {
        let triggered = self.lock_timeline().triggered?;
        Some((triggered + self.config.grace).saturating_duration_since(Instant::now()))
    }

    /// The runtime to time the drain on: the current one, or the one the
    /// `Watch` was created on.
    fn runtime(&self) -> Option<Handle> {
        Handle::try_current().ok().or_else(|| self.runtime.clone())
    }

    /// Spawns the task that takes the drain's timed steps: the end of the
    /// lame duck period, closing silent TLS connections and stalled request
    /// heads once the listeners are closed, and the deadline.
    fn arm_timers(&self, watch: Watch, runtime: &Handle) {
        // Counted from the trigger, not from when the task first runs.
        let triggered = Instant::now();
        let deadline = triggered + self.config.grace;
        let cuts_heads = self.config.request_head_grace < self.config.grace;
        runtime.spawn(async move {
            let steps = async {
                if watch.phase() == Phase::LameDuck {
                    tokio::time::sleep_until(triggered + watch.lame_duck()).await;
                    watch.inner.end_lame_duck();
                }
                // From here on no connection can be accepted any more.
                watch.listeners_closed().await;
                let heads = async {
                    if cuts_heads {
                        watch.inner.cut_off_stalled_heads().await;
                    }
                };
                tokio::join!(watch.inner.cut_off_silent_handshakes(), heads);
                std::future::pending::<()>().await;
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => watch.inner.force(ForceCause::Deadline),
                _ = watch.drained() => {}
                () = steps => {}
            }
        });
    }

    /// The lame duck period is over: the drain proper starts.
    fn end_lame_duck(&self) {
        if self.advance(Phase::LameDuck, Phase::Draining).is_ok() {
            self.lock_timeline().drain_started = Some(Instant::now());
            self.log_drain_started("lame duck period over; drain started");
            self.changed();
        }
    }

    fn force(&self, cause: ForceCause) {
        // The timeline lock is held across the phase change, so a drain that
        // ends concurrently either sees the force recorded or wins before it.
        let mut timeline = self.lock_timeline();
        let forced = self.advance(Phase::LameDuck, Phase::Forced).is_ok()
            || self.advance(Phase::Draining, Phase::Forced).is_ok();
        if !forced {
            return;
        }
        let connections = self.lock_connections();
        let open = connections.len();
        let bodies = connections
            .iter()
            .filter(|(_, slot)| slot.state() == RECEIVING_BODY)
            .count();
        timeline.forced = Some((Instant::now(), cause, open));
        self.bodies_cut_off.store(bodies, SeqCst);
        drop(timeline);
        tracing::warn!(
            %cause,
            connections = open,
            requests = self.requests.load(SeqCst),
            "drain forced; closing every open connection",
        );
        for (_, slot) in connections.iter() {
            slot.force();
        }
        drop(connections);
        self.changed();
    }

    /// Ends the drain if nothing is left open; the first caller to see that
    /// writes the report and wakes the waiters.
    fn finish_if_drained(&self) {
        if !self.is_draining()
            || self.report.get().is_some()
            || self.listeners.load(SeqCst) != 0
            || self.requests.load(SeqCst) != 0
            || !self.lock_connections().is_empty()
        {
            return;
        }
        let timeline = self.lock_timeline();
        if self.report.get().is_some() {
            return;
        }
        let _ = self.advance(Phase::Draining, Phase::Drained);
        let report = self.build_report(&timeline, Instant::now());
        drop(timeline);
        if report.reset_in_queue > 0 {
            tracing::error!(%report, "drain complete, but connections were reset in an accept queue");
        } else {
            tracing::info!(
                accepted_from_queue = report.accepted_from_queue,
                listeners_shared = report.listeners_shared,
                heads_cut_off = report.heads_cut_off,
                connections_retired = report.connections_retired,
                connections_closed_between_requests = report.connections_closed_between_requests,
                // Only a `DrainLayer` counts requests.
                requests_completed = report.requests_counted.then_some(report.requests_completed),
                requests_aborted = report.requests_counted.then_some(report.requests_aborted),
                connections_forced = report.connections_forced,
                // Only when forced, and only for a lame duck period.
                forced = report.forced.map(tracing::field::display),
                lame_duck = (!report.lame_duck.is_zero())
                    .then(|| tracing::field::display(Rounded(report.lame_duck))),
                closing_listeners = %Rounded(report.closing_listeners),
                closing_connections = %Rounded(report.closing_connections),
                "drain complete",
            );
        }
        let _ = self.report.set(report);
        self.notify.notify_waiters();
    }

    fn build_report(&self, timeline: &Timeline, now: Instant) -> DrainReport {
        let triggered = timeline.triggered.unwrap_or(now);
        let started = timeline.drain_started.unwrap_or(triggered);
        let listeners_closed = timeline.listeners_closed.unwrap_or(started);
        DrainReport {
            kind: self.kind(),
            accepted_from_queue: self.accepted_from_queue.load(SeqCst),
            reset_in_queue: self.reset_in_queue.load(SeqCst),
            heads_cut_off: self.heads_cut_off.load(SeqCst),
            connections_retired: self.connections_retired.load(SeqCst),
            connections_closed_between_requests: self
                .connections_closed_between_requests
                .load(SeqCst),
            listeners_shared: self.listeners_shared.load(SeqCst),
            requests_completed: self.requests_completed.load(SeqCst),
            requests_aborted: self.requests_aborted.load(SeqCst),
            requests_counted: self.requests_counted.load(SeqCst),
            connections_forced: timeline.forced.map_or(0, |(_, _, open)| open),
            bodies_cut_off: self.bodies_cut_off.load(SeqCst),
            lingers_cut_off: self.lingers_cut_off.load(SeqCst),
            forced: timeline.forced.map(|(_, cause, _)| cause),
            lame_duck: started.saturating_duration_since(triggered),
            closing_listeners: listeners_closed - started,
            closing_connections: now.saturating_duration_since(listeners_closed),
        }
    }

    // ----- what listeners, connections and requests report -----

    /// A listener opened, whose standing across processes is `shared`;
    /// the key to close it with.
    pub(crate) fn listener_opened(&self, shared: Arc<SharedSocket>) -> usize {
        self.listeners.fetch_add(1, SeqCst);
        self.lock_listener_sockets().insert(shared)
    }

    /// A listener this process alone held is closing: it accepted
    /// `accepted` connections from its queue, and `reset` were still queued.
    pub(crate) fn listener_drained(&self, accepted: usize, reset: usize) {
        self.accepted_from_queue.fetch_add(accepted, SeqCst);
        self.reset_in_queue.fetch_add(reset, SeqCst);
    }

    pub(crate) fn listener_left_shared(&self) {
        self.listeners_shared.fetch_add(1, SeqCst);
    }

    pub(crate) fn listener_closed(&self, key: usize) {
        self.lock_listener_sockets().remove(key);
        if self.listeners.fetch_sub(1, SeqCst) == 1 && self.is_draining() {
            let mut timeline = self.lock_timeline();
            let now = Instant::now();
            timeline.listeners_closed.get_or_insert(now);
            let elapsed = now - timeline.triggered.unwrap_or(now);
            drop(timeline);
            tracing::info!(
                accepted_from_queue = self.accepted_from_queue.load(SeqCst),
                elapsed = %Rounded(elapsed),
                "all listeners closed",
            );
        }
        self.changed();
    }

    pub(crate) fn connection_opened(&self, slot: Arc<Slot>) -> usize {
        let mut connections = self.lock_connections();
        // `force` changes the phase before it takes this lock: a connection
        // registered after it went through the registry sees the phase here.
        if self.is_forced() {
            slot.force();
        }
        connections.insert(slot)
    }

    /// How long a closing connection may linger.
    pub(crate) fn linger_time(&self) -> Duration {
        self.config.linger
    }

    /// A lingering close ran out of time on a client still sending; counted
    /// from the trigger on.
    pub(crate) fn linger_cut_off(&self) {
        if self.is_triggered() {
            self.lingers_cut_off.fetch_add(1, SeqCst);
        }
    }

    /// A connection stopped reading a head or being between requests after
    /// the trigger: [`ShutdownSignal`] may be waiting for it.
    pub(crate) fn hold_released(&self) {
        self.notify.notify_waiters();
    }

    /// `slot`'s connection started a request head (HTTP/1).
    pub(crate) fn head_started(&self, slot: &Slot, state: u8) {
        // The store in `start_head` and this load pair with the sweep's
        // store of `heads_expired` and its compare-exchange on every slot
        // (all SeqCst): a head that starts during the sweep is cut off by one
        // of the two, and counted once.
        if slot.start_head(state) && self.heads_expired.load(SeqCst) && slot.cut_off_head() {
            self.heads_cut_off.fetch_add(1, SeqCst);
        }
    }

    /// A connection was handed to the server and has not been read yet.
    pub(crate) fn awaiting_first_byte(&self) {
        self.awaiting_first_byte.fetch_add(1, SeqCst);
        self.last_accept.store(self.elapsed_nanos(), SeqCst);
    }

    /// The connection in slot `key` closed, in `state`.
    pub(crate) fn connection_closed(&self, key: usize, state: u8) {
        if self.is_triggered() {
            match state {
                RETIRING => self.connections_retired.fetch_add(1, SeqCst),
                BETWEEN => self
                    .connections_closed_between_requests
                    .fetch_add(1, SeqCst),
                _ => 0,
            };
        }
        let mut connections = self.lock_connections();
        connections.remove(key);
        let last = connections.is_empty();
        drop(connections);
        if matches!(state, BETWEEN | READING_NEXT_HEAD) && self.is_triggered() {
            self.hold_released();
        }
        if last && self.is_draining() {
            self.finish_if_drained();
        }
    }

    pub(crate) fn first_byte_read(&self) {
        if self.awaiting_first_byte.fetch_sub(1, SeqCst) == 1 && self.is_draining() {
            self.notify.notify_waiters();
        }
    }

    #[cfg(feature = "rustls")]
    pub(crate) fn handshake_started(&self) {
        self.handshaking.fetch_add(1, SeqCst);
    }

    #[cfg(feature = "rustls")]
    pub(crate) fn handshake_finished(&self) {
        if self.handshaking.fetch_sub(1, SeqCst) == 1 && self.is_draining() {
            self.notify.notify_waiters();
        }
    }

    /// A `DrainLayer` wrapped a service: the report counts requests.
    pub(crate) fn count_requests(&self) {
        self.requests_counted.store(true, SeqCst);
    }

    #[inline]
    pub(crate) fn request_started(&self) {
        self.requests.fetch_add(1, SeqCst);
    }

    #[inline]
    pub(crate) fn request_finished(&self, completed: bool) {
        let last = self.requests.fetch_sub(1, SeqCst) == 1;
        // Counted from the trigger, lame duck period included.
        if self.is_triggered() {
            let count = if completed {
                &self.requests_completed
            } else {
                &self.requests_aborted
            };
            count.fetch_add(1, SeqCst);
            if last {
                self.finish_if_drained();
            }
        }
    }
}
