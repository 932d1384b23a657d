//! The listener adapter: [`GracefulAccept`] accepts connections as usual until
//! the drain starts, then empties the kernel's accept queue with non-blocking
//! accepts and closes its socket, so no queued client is reset.

use std::{
    collections::VecDeque,
    fmt,
    future::{poll_fn, Future},
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

use crate::{
    future::Changes,
    io::{ConnectionToken, TrackedIo},
    listener::{DrainableListener, Mechanics},
    shared::SharedSocket,
    state::Inner,
    watch::Watch,
};

/// Default [`GracefulAccept::queue_drain_limit`].
const DEFAULT_QUEUE_DRAIN_LIMIT: usize = 65_536;

/// Default [`GracefulAccept::queue_drain_timeout`].
const DEFAULT_QUEUE_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Default [`GracefulAccept::straggler_wait`].
const DEFAULT_STRAGGLER_WAIT: Duration = Duration::from_millis(2);

/// How long to wait before accepting again after an error such as `EMFILE`.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A listener that drains its accept queue before it closes.
///
/// Until the [`Watch`] is triggered, [`accept`](GracefulAccept::accept) is the
/// wrapped listener's accept, with each connection wrapped in a [`TrackedIo`]
/// that counts it as open. Once triggered, it stops waiting for new
/// connections and accepts, without blocking, every connection the kernel has
/// already queued, handing each to the server like any other; once the queue
/// is empty it accepts what still arrives for the
/// [`straggler_wait`](Self::straggler_wait), then closes the socket exactly
/// once, or sooner if a [limit](Self::queue_drain_limit) is reached or the
/// drain is forced. From then on new connection attempts are refused and
/// `accept` stays pending.
///
/// With the `axum` feature it implements `axum::serve::Listener`.
///
/// A socket that another process also holds ([`shared`](Self::shared):
/// inherited from a service manager, or handed to a successor) is not
/// drained: at the trigger it stops accepting and closes its descriptor at
/// once, leaving the queue to the other holder. It never calls shutdown(2),
/// which would reset the queue for every holder.
///
/// Errors never end the accept loop: connections aborted by the peer are
/// skipped, and errors such as `EMFILE` (out of file descriptors) are logged
/// and retried after a short pause.
///
/// # Cancel safety
///
/// [`accept`](GracefulAccept::accept) is cancel safe: all its state lives in
/// the `GracefulAccept`, and it never holds an accepted connection across an
/// await point.
///
/// # Example
///
/// ```
/// use tower_drain::{GracefulAccept, Watch};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let watch = Watch::new();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let mut listener = GracefulAccept::new(listener, watch.clone());
///
/// // A client connects, and the drain starts before the server accepted it.
/// let _client = tokio::net::TcpStream::connect(addr).await?;
/// watch.trigger();
///
/// // The queued connection is still handed over...
/// let (_io, _peer) = listener.accept().await;
/// // ...and accepting on drives the drain to close the socket.
/// tokio::select! {
///     _ = listener.accept() => unreachable!("nothing else was queued"),
///     () = watch.listeners_closed() => {}
/// }
/// let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
/// assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
/// # Ok(())
/// # }
/// ```
pub struct GracefulAccept<L: DrainableListener> {
    state: State<L>,
    /// Connections the drain took from the queue, counted but not yet
    /// registered with the runtime nor handed out: one is handed out after
    /// each batch, and those left when the socket closes after it.
    drained: VecDeque<(ConnectionToken, L::Queued)>,
    /// Armed after an accept error such as `EMFILE`: no accept until it fires.
    backoff: Option<Pin<Box<Sleep>>>,
    watch: Watch,
    /// Wakes the task on the drain's changes: its start while accepting, a
    /// force while draining. Boxed because it is `!Unpin` and `accept` takes
    /// `&mut self`, not a pinned `self`.
    changes: Pin<Box<Changes>>,
    limits: Limits,
    shared: Arc<SharedSocket>,
    /// Whether `shared` has been told that this listener accepts.
    announced: bool,
}

/// A connection as [`GracefulAccept::accept`] returns it.
type Accepted<L> = (
    TrackedIo<<L as DrainableListener>::Io>,
    <L as DrainableListener>::Addr,
);

/// How many connections one call takes from the queue before handing one
/// out, so that the socket closes without waiting on the server between
/// connections, and no call blocks for long.
const DRAIN_BATCH: usize = 256;

/// Where a [`GracefulAccept`] stands. It only moves forward:
/// `Accepting → Draining → Closed`, or `Accepting → Closed` for a socket
/// another process holds too.
enum State<L> {
    /// Serving: accepting the usual way until the drain starts.
    Accepting { open: Open<L> },
    /// Emptying the kernel's queue; the socket closes when it is empty.
    Draining { open: Open<L>, drain: Drain },
    /// The socket is closed; only connections in `drained` are left.
    Closed,
}

/// The open socket and its registration, dropped together: the socket first,
/// then the registration, so `listeners_closed` implies the socket is closed.
struct Open<L> {
    listener: L,
    _registration: Registration,
}

struct Registration {
    watch: Watch,
    key: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.watch.inner.listener_closed(self.key);
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    connections: usize,
    timeout: Duration,
    straggler_wait: Duration,
}

/// The queue drain in progress.
struct Drain {
    /// Connections taken from the queue (and stragglers accepted) so far.
    accepted: usize,
    /// When the drain closes the socket however full the queue is.
    until: Instant,
    /// Armed when the queue is first found empty: until when to wait for
    /// stragglers, and a timer to wake the task then.
    stragglers: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl<L: DrainableListener> GracefulAccept<L> {
    /// Wraps `listener` so that it drains when `watch` is triggered.
    pub fn new(listener: L, watch: Watch) -> Self {
        Self::with_shared(listener, watch, Arc::default())
    }

    /// Wraps `listener`, whose standing across processes is `shared`.
    pub(crate) fn with_shared(listener: L, watch: Watch, shared: Arc<SharedSocket>) -> Self {
        let open = Open {
            listener,
            _registration: Registration {
                key: watch.inner.listener_opened(shared.clone()),
                watch: watch.clone(),
            },
        };
        Self {
            state: State::Accepting { open },
            drained: VecDeque::new(),
            backoff: None,
            changes: Box::pin(Changes::new(watch.inner.clone())),
            watch,
            limits: Limits {
                connections: DEFAULT_QUEUE_DRAIN_LIMIT,
                timeout: DEFAULT_QUEUE_DRAIN_TIMEOUT,
                straggler_wait: DEFAULT_STRAGGLER_WAIT,
            },
            shared,
            announced: false,
        }
    }

    /// The most connections one drain accepts from the queue before closing
    /// the socket anyway, so that a flood cannot keep it open. Default 65 536.
    pub fn queue_drain_limit(mut self, connections: usize) -> Self {
        self.limits.connections = connections;
        self
    }

    /// The longest the queue drain may take before the socket is closed
    /// anyway, so that continuous load cannot keep it open. Default 1 s.
    pub fn queue_drain_timeout(mut self, timeout: Duration) -> Self {
        self.limits.timeout = timeout;
        self
    }

    /// Once the queue is empty, how long to keep accepting connections whose
    /// handshake was still in flight when the drain started. Default 2 ms.
    pub fn straggler_wait(mut self, wait: Duration) -> Self {
        self.limits.straggler_wait = wait;
        self
    }

    /// Marks the socket as held by another process too, such as a socket
    /// inherited from a service manager: when the drain starts, this
    /// listener stops accepting and closes its descriptor without draining
    /// the queue, which the other holder serves.
    ///
    /// [`restart::Listeners`](crate::restart::Listeners) marks the sockets
    /// it inherits and hands over by itself.
    pub fn shared(self) -> Self {
        self.shared.set_elsewhere();
        self
    }

    /// The [`Watch`] this listener reports to.
    pub fn watch(&self) -> &Watch {
        &self.watch
    }

    /// The wrapped listener, or `None` once the drain has closed it.
    pub fn get_ref(&self) -> Option<&L> {
        match &self.state {
            State::Accepting { open } | State::Draining { open, .. } => Some(&open.listener),
            State::Closed => None,
        }
    }

    /// The local address of the wrapped listener.
    ///
    /// # Errors
    ///
    /// Fails once the drain has closed the listener.
    pub fn local_addr(&self) -> io::Result<L::Addr> {
        match self.get_ref() {
            Some(listener) => listener.local_addr(),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the listener was closed by the drain",
            )),
        }
    }

    /// Accepts the next connection.
    ///
    /// Once the drain has closed the socket and handed out every connection
    /// it took from the queue, this never resolves: a hand-written loop ends
    /// on [`Watch::shutdown_signal`], not on `accept`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: see the [type documentation](GracefulAccept#cancel-safety).
    pub async fn accept(&mut self) -> (TrackedIo<L::Io>, L::Addr) {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next connection; the poll form of
    /// [`accept`](GracefulAccept::accept).
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<(TrackedIo<L::Io>, L::Addr)> {
        if !self.announced {
            self.announced = true;
            self.shared.accepting();
        }
        loop {
            match self.poll_listener(cx) {
                Poll::Ready(Ok((io, addr))) => {
                    return Poll::Ready((TrackedIo::new(io, &self.watch.inner), addr))
                }
                Poll::Ready(Err(error)) => self.on_error(error),
                Poll::Pending => return self.next_drained().map_or(Poll::Pending, Poll::Ready),
            }
        }
    }

    /// Moves the state on, and accepts the usual way where the state does.
    /// `Pending` when there is nothing to do until woken, or connections in
    /// `drained` to hand out first.
    fn poll_listener(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(L::Io, L::Addr)>> {
        if matches!(self.state, State::Accepting { .. }) && self.poll_watch(cx) {
            self.start_drain();
        }
        let forced = matches!(self.state, State::Draining { .. }) && self.poll_watch(cx);
        if let State::Draining { drain, .. } = &self.state {
            if forced || drain.is_over(&self.limits) {
                self.close();
            }
        }
        if let Some(backoff) = &mut self.backoff {
            std::task::ready!(backoff.as_mut().poll(cx));
            self.backoff = None;
        }
        match &mut self.state {
            State::Accepting { open } => open.listener.poll_accept(cx),
            State::Draining { open, drain } => {
                if drain.stragglers.is_none() {
                    let limit = self.limits.connections;
                    // An accept error is returned (`?`) like any other.
                    if !drain.take_batch(
                        &mut open.listener,
                        &mut self.drained,
                        &self.watch,
                        limit,
                    )? {
                        // More is queued: hand out what was taken, and come
                        // back for the next batch even if none of it could
                        // be registered.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                // The queue is empty: accept stragglers the usual way until
                // the timer fires, then close.
                let (_, timer) = drain.stragglers.get_or_insert_with(|| {
                    let until = (Instant::now() + self.limits.straggler_wait).min(drain.until);
                    (until, Box::pin(tokio::time::sleep_until(until)))
                });
                match open.listener.poll_accept(cx) {
                    Poll::Ready(Ok(conn)) => {
                        drain.accepted += 1;
                        Poll::Ready(Ok(conn))
                    }
                    Poll::Pending if timer.as_mut().poll(cx).is_ready() => {
                        self.close();
                        Poll::Pending
                    }
                    polled => polled,
                }
            }
            State::Closed => Poll::Pending,
        }
    }

    /// Registers and hands out the next connection the drain took.
    fn next_drained(&mut self) -> Option<Accepted<L>> {
        while let Some((token, queued)) = self.drained.pop_front() {
            match L::register(queued) {
                Ok((io, addr)) => return Some((TrackedIo::with_token(io, token), addr)),
                Err(error) => {
                    tracing::warn!(%error, "cannot register a drained connection; closing it")
                }
            }
        }
        None
    }

    /// Whether the drain has reached what moves this listener on from its
    /// state: the drain's start while accepting, a force while draining.
    /// `false` registers the task to be woken when it does.
    fn poll_watch(&mut self, cx: &mut Context<'_>) -> bool {
        let moves_on: fn(&Inner) -> bool = match self.state {
            State::Accepting { .. } => Inner::is_draining,
            State::Draining { .. } => Inner::is_forced,
            State::Closed => return false,
        };
        self.changes
            .as_mut()
            .poll_until(cx, |inner, _| moves_on(inner).then_some(()))
            .is_ready()
    }

    /// `Accepting → Draining`, or `→ Closed` for a shared socket.
    fn start_drain(&mut self) {
        let State::Accepting { mut open } = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        let local_addr = describe(open.listener.local_addr());
        if self.shared.is_elsewhere() {
            tracing::info!(
                %local_addr,
                "closing a shared listener without draining: its queue stays with the other holder",
            );
            self.watch.inner.listener_left_shared();
            self.shared.close_copy();
            return;
        }
        tracing::debug!(%local_addr, "draining the accept queue");
        let mut queued = Vec::new();
        open.listener.steer_away(Mechanics, &mut queued);
        for queued in queued {
            self.drained
                .push_back((ConnectionToken::new(&self.watch.inner), queued));
        }
        let drain = Drain {
            accepted: self.drained.len(),
            until: Instant::now() + self.limits.timeout,
            stragglers: None,
        };
        self.state = State::Draining { open, drain };
    }

    fn on_error(&mut self, error: io::Error) {
        if is_transient(&error) {
            tracing::debug!(%error, "accept failed; the peer gave up, skipping it");
            return;
        }
        tracing::error!(%error, backoff = ?ACCEPT_ERROR_BACKOFF, "accept failed; retrying after a pause");
        self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_BACKOFF)));
    }

    /// `Draining → Closed`: closes the socket, once.
    fn close(&mut self) {
        let State::Draining { mut open, drain } = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        let local_addr = describe(open.listener.local_addr());
        let accepted = drain.accepted;
        let still_queued = open.listener.queue_len(Mechanics);
        match still_queued {
            Some(reset) if reset > 0 => tracing::error!(
                %local_addr,
                accepted_from_queue = accepted,
                reset,
                "closing the listener with connections still queued: the kernel resets them",
            ),
            _ => tracing::info!(
                %local_addr,
                accepted_from_queue = accepted,
                "closing the listener",
            ),
        }
        self.watch
            .inner
            .listener_drained(accepted, still_queued.unwrap_or(0));
        open.listener.unsteer(Mechanics);
        self.shared.close_copy();
    }
}

impl Drain {
    /// Whether to close the socket now: at the limit, out of time, or the
    /// wait for stragglers is over. The clock is read: the straggler timer
    /// (armed no later than `until`) cannot fire while the server keeps this
    /// task busy handing out drained connections.
    fn is_over(&self, limits: &Limits) -> bool {
        let now = Instant::now();
        self.accepted >= limits.connections
            || now >= self.until
            || self
                .stragglers
                .as_ref()
                .is_some_and(|(until, _)| now >= *until)
    }

    /// Takes up to a batch of queued connections into `drained`, counting
    /// each at once; `true` once the kernel reports the queue empty.
    fn take_batch<L: DrainableListener>(
        &mut self,
        listener: &mut L,
        drained: &mut VecDeque<(ConnectionToken, L::Queued)>,
        watch: &Watch,
        limit: usize,
    ) -> io::Result<bool> {
        for _ in 0..DRAIN_BATCH.min(limit.saturating_sub(self.accepted)) {
            let Some(queued) = listener.try_accept()? else {
                return Ok(true);
            };
            self.accepted += 1;
            drained.push_back((ConnectionToken::new(&watch.inner), queued));
        }
        Ok(false)
    }
}

fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

impl<L: DrainableListener> Drop for GracefulAccept<L> {
    fn drop(&mut self) {
        // Dropped mid-drain (a forced drain lets the server stop before
        // the queue is empty): count the drain and what the close resets.
        self.close();
        // Connections the drain took from the kernel's queue but the server
        // never took from us: closing them unread resets them, as the
        // kernel would have. The report must not call that clean.
        if !self.drained.is_empty() {
            tracing::error!(
                connections = self.drained.len(),
                "dropped with connections taken from the queue but not yet handed to the server: they are reset",
            );
            self.watch.inner.listener_drained(0, self.drained.len());
        }
    }
}

impl<L: DrainableListener + fmt::Debug> fmt::Debug for GracefulAccept<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracefulAccept")
            .field("listener", &self.get_ref())
            .field("watch", &self.watch)
            .field("drained", &self.drained.len())
            .finish_non_exhaustive()
    }
}

/// A listener's local address for the log.
fn describe(addr: io::Result<impl fmt::Debug>) -> String {
    match addr {
        Ok(addr) => format!("{addr:?}"),
        Err(error) => format!("unknown ({error})"),
    }
}
