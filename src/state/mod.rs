//! The drain's shared state and the invariants that concurrent code relies
//! on: the [`Phase`], the live counts and the report's counters, the registry
//! of open connections (each a [`Slot`]) and of listening sockets, and the
//! end-of-drain check. Every [`Watch`] and [`Observer`] is a handle to one
//! [`Inner`]; the connections, listeners and requests report to it, and the
//! futures in [`future`](crate::future) wait on it.
//!
//! [`Watch`]: crate::Watch
//! [`Observer`]: crate::Observer

mod config;
mod phase;
mod slot;

use std::{
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

pub use self::phase::Phase;
pub(crate) use self::{
    config::Config,
    slot::{
        Slot, BETWEEN, H2_NO_STREAM, READING_HEAD, READING_NEXT_HEAD, RECEIVING_BODY, RETIRING,
        SERVING,
    },
};
use crate::{
    report::{DrainKind, DrainReport, ForceCause, Rounded},
    shared::SharedSocket,
    siblings::Tables,
};

/// The shared state behind every clone of a [`Watch`](crate::Watch).
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
    config: Config,
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
    /// A successor took this process's sockets over the handoff path and
    /// serves in its place: set before that handoff triggers the drain.
    handed_over: AtomicBool,
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
    /// Told of each step as it is taken (see [`Steps`]); set once.
    steps: OnceLock<Box<dyn Steps>>,
    runtime: Option<Handle>,
    epoch: Instant,
}

/// Follows a drain's steps from outside the process, such as a service
/// manager. Each method runs at its step, on the thread that takes it and
/// before any waiter is woken for it, so that a process that exits as soon
/// as the drain has ended has said everything. They must not block for long
/// nor call back into the drain.
pub(crate) trait Steps: Send + Sync + 'static {
    /// The drain was triggered; its kind is settled.
    fn triggered(&self, inner: &Inner);
    /// The drain's last listener closed.
    fn listeners_closed(&self, inner: &Inner);
    /// The drain ended with `report`.
    fn drained(&self, inner: &Inner, report: &DrainReport);
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
    pub(crate) fn new(config: Config) -> Self {
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
            handed_over: AtomicBool::new(false),
            heads_expired: AtomicBool::new(false),
            heads_cut_off: AtomicUsize::new(0),
            connections_retired: AtomicUsize::new(0),
            bodies_cut_off: AtomicUsize::new(0),
            lingers_cut_off: AtomicUsize::new(0),
            connections_closed_between_requests: AtomicUsize::new(0),
            notify: Arc::new(Notify::new()),
            timeline: Mutex::default(),
            report: OnceLock::new(),
            steps: OnceLock::new(),
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

    /// The first trigger: moves the phase out of `Running`, to `Draining`
    /// for a restart, without a lame duck period, or when nothing can time
    /// the period (`timed` false), else to `LameDuck`. The phase it moved
    /// to, or on failure the phase found.
    pub(crate) fn trigger(&self, timed: bool) -> Result<Phase, Phase> {
        // Decided before the phase moves, so that no readiness check sees
        // the drain without its kind.
        let restart = self.phase() == Phase::Running && self.lives_on();
        if restart {
            self.restart.store(true, SeqCst);
        }
        let first = if restart || self.config.lame_duck.is_zero() || !timed {
            Phase::Draining
        } else {
            Phase::LameDuck
        };
        self.advance(Phase::Running, first).map(|()| first)
    }

    /// Every open listener is held by another process too, or has an
    /// `SO_REUSEPORT` sibling there: the service lives on after this one
    /// drains.
    fn lives_on(&self) -> bool {
        let sockets = self.lock_listener_sockets();
        let ours = sockets.iter().filter_map(|(_, s)| s.inode()).collect();
        let tables = Tables::new(ours);
        !sockets.is_empty() && sockets.iter().all(|(_, shared)| shared.lives_on(&tables))
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
    /// [`ShutdownSignal`](crate::future::ShutdownSignal).
    pub(crate) fn listeners_done(&self) -> bool {
        self.listeners_closed() && self.handshaking.load(SeqCst) == 0 || self.is_forced()
    }

    /// Until when [`ShutdownSignal`](crate::future::ShutdownSignal) holds back once the listeners are
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

    /// Until when keep-alive connections hold [`ShutdownSignal`](crate::future::ShutdownSignal): the end of
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

    /// What the [`WatchBuilder`](crate::WatchBuilder) configured.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn listeners(&self) -> usize {
        self.listeners.load(SeqCst)
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
    pub(crate) fn advance(&self, from: Phase, to: Phase) -> Result<(), Phase> {
        self.phase
            .compare_exchange(from as u8, to as u8, SeqCst, SeqCst)
            .map(drop)
            .map_err(Phase::from_u8)
    }

    /// A registration for the next [`changed`](Self::changed), owned.
    pub(crate) fn notified(&self) -> OwnedNotified {
        self.notify.clone().notified_owned()
    }

    pub(crate) fn changed(&self) {
        self.notify.notify_waiters();
        self.finish_if_drained();
    }

    /// Closes every TLS connection that has not received a byte and every
    /// HTTP/2 connection whose client opened no stream: they have nothing
    /// to lose. How many it closed.
    pub(crate) fn cut_off_silence(&self) -> usize {
        self.cut_off_where(Slot::cut_off_silence)
    }

    /// The request-head grace has run out: closes every connection still
    /// reading a request head, and from now on each one that starts a head
    /// (see [`head_started`](Self::head_started)). How many it closed.
    pub(crate) fn cut_off_heads(&self) -> usize {
        // See `head_started` for why SeqCst.
        self.heads_expired.store(true, SeqCst);
        let cut = self.cut_off_where(Slot::cut_off_head);
        if cut > 0 {
            self.heads_cut_off.fetch_add(cut, SeqCst);
        }
        cut
    }

    /// Applies `cut_off` to every connection; how many it closed.
    fn cut_off_where(&self, cut_off: impl Fn(&Slot) -> bool) -> usize {
        let connections = self.lock_connections();
        connections.iter().filter(|(_, slot)| cut_off(slot)).count()
    }

    /// When the newest connection's first-byte grace runs out.
    pub(crate) fn first_byte_grace_end(&self) -> Instant {
        self.last_accept() + self.config.first_byte_grace
    }

    /// When the request-head grace runs out: counted from the start of the
    /// drain, or from the newest accept if that is later.
    pub(crate) fn request_head_grace_end(&self) -> Instant {
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

    /// Has `steps` told of each step of the drain from now on, unless
    /// something already is.
    pub(crate) fn follow_steps(&self, steps: Box<dyn Steps>) {
        let _ = self.steps.set(steps);
    }

    /// A successor took the sockets over and serves in this process's
    /// place; called before the handoff triggers the drain.
    pub(crate) fn hand_over(&self) {
        self.handed_over.store(true, SeqCst);
    }

    /// Whether a successor took the sockets over (see
    /// [`hand_over`](Self::hand_over)): the service's main process is now
    /// another one.
    pub(crate) fn is_handed_over(&self) -> bool {
        self.handed_over.load(SeqCst)
    }

    /// Notes the trigger, which moved the phase to `to`.
    pub(crate) fn record_trigger(&self, to: Phase) {
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
        if let Some(steps) = self.steps.get() {
            steps.triggered(self);
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
    pub(crate) fn runtime(&self) -> Option<Handle> {
        Handle::try_current().ok().or_else(|| self.runtime.clone())
    }

    /// The lame duck period is over: the drain proper starts.
    pub(crate) fn end_lame_duck(&self) {
        if self.advance(Phase::LameDuck, Phase::Draining).is_ok() {
            self.lock_timeline().drain_started = Some(Instant::now());
            self.log_drain_started("lame duck period over; drain started");
            self.changed();
        }
    }

    pub(crate) fn force(&self, cause: ForceCause) {
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
        if let Some(steps) = self.steps.get() {
            steps.drained(self, &report);
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
            if let Some(steps) = self.steps.get() {
                steps.listeners_closed(self);
            }
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
    /// the trigger: [`ShutdownSignal`](crate::future::ShutdownSignal) may be waiting for it.
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
