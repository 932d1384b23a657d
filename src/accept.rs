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
    io::{ConnectionToken, TrackedIo},
    listener::DrainableListener,
    shared::SharedSocket,
    watch::Watch,
    Draining,
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
/// already queued, handing each to the server like any other; when the queue
/// is empty (and stays empty for the [`straggler_wait`](Self::straggler_wait)),
/// or a [limit](Self::queue_drain_limit) is reached, it closes the socket
/// exactly once. From then on new connection attempts are refused and
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
    listener: Option<Open<L>>,
    watch: Watch,
    draining: Pin<Box<Draining>>,
    state: State,
    limits: Limits,
    /// Connections taken from the queue by the drain, counted but not yet
    /// registered with the runtime nor handed out.
    drained: VecDeque<(ConnectionToken, L::Queued)>,
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

/// The open socket and its registration, dropped together: the socket first,
/// then the registration, so `listeners_closed` implies the socket is closed.
struct Open<L> {
    listener: L,
    _registration: Registration,
}

struct Registration {
    watch: Watch,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.watch.inner.listener_closed();
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    connections: usize,
    timeout: Duration,
    straggler_wait: Duration,
}

enum State {
    Accepting,
    /// Pausing after an accept error such as `EMFILE`.
    Backoff(Pin<Box<Sleep>>),
    Draining(Drain),
    Closed,
}

struct Drain {
    accepted: usize,
    until: Instant,
    /// Armed when the queue is first found empty: until when to wait for
    /// stragglers, and a timer to wake the task then.
    stragglers: Option<(Instant, Pin<Box<Sleep>>)>,
    /// Armed after an accept error while draining.
    backoff: Option<Pin<Box<Sleep>>>,
}

impl<L: DrainableListener> GracefulAccept<L> {
    /// Wraps `listener` so that it drains when `watch` is triggered.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let watch = tower_drain::Watch::new();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let listener = tower_drain::GracefulAccept::new(listener, watch.clone());
    /// assert_eq!(watch.listeners(), 1);
    /// # drop(listener);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(listener: L, watch: Watch) -> Self {
        Self::with_shared(listener, watch, Arc::default())
    }

    /// Wraps `listener`, whose standing across processes is `shared`.
    pub(crate) fn with_shared(listener: L, watch: Watch, shared: Arc<SharedSocket>) -> Self {
        watch.inner.listener_opened();
        let draining = Box::pin(watch.draining());
        Self {
            listener: Some(Open {
                listener,
                _registration: Registration {
                    watch: watch.clone(),
                },
            }),
            watch,
            draining,
            state: State::Accepting,
            drained: VecDeque::new(),
            shared,
            announced: false,
            limits: Limits {
                connections: DEFAULT_QUEUE_DRAIN_LIMIT,
                timeout: DEFAULT_QUEUE_DRAIN_TIMEOUT,
                straggler_wait: DEFAULT_STRAGGLER_WAIT,
            },
        }
    }

    /// The most connections one drain accepts from the queue before closing
    /// the socket anyway, so that a flood cannot keep it open. Default 65 536.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let watch = tower_drain::Watch::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let listener = tower_drain::GracefulAccept::new(listener, watch).queue_drain_limit(1024);
    /// # drop(listener);
    /// # Ok(())
    /// # }
    /// ```
    pub fn queue_drain_limit(mut self, connections: usize) -> Self {
        self.limits.connections = connections;
        self
    }

    /// The longest the queue drain may take before the socket is closed
    /// anyway, so that continuous load cannot keep it open. Default 1 s.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let watch = tower_drain::Watch::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let listener = tower_drain::GracefulAccept::new(listener, watch)
    ///     .queue_drain_timeout(std::time::Duration::from_millis(200));
    /// # drop(listener);
    /// # Ok(())
    /// # }
    /// ```
    pub fn queue_drain_timeout(mut self, timeout: Duration) -> Self {
        self.limits.timeout = timeout;
        self
    }

    /// Once the queue is empty, how long to keep accepting connections whose
    /// handshake was still in flight when the drain started. Default 2 ms.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let watch = tower_drain::Watch::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let listener = tower_drain::GracefulAccept::new(listener, watch)
    ///     .straggler_wait(std::time::Duration::from_millis(10));
    /// # drop(listener);
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let watch = tower_drain::Watch::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let mut listener = tower_drain::GracefulAccept::new(listener, watch.clone());
    /// assert_eq!(listener.watch().listeners(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch(&self) -> &Watch {
        &self.watch
    }

    /// The wrapped listener, or `None` once the drain has closed it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let watch = tower_drain::Watch::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let mut listener = tower_drain::GracefulAccept::new(listener, watch.clone());
    /// assert!(listener.get_ref().is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_ref(&self) -> Option<&L> {
        self.listener.as_ref().map(|open| &open.listener)
    }

    /// The local address of the wrapped listener.
    ///
    /// # Errors
    ///
    /// Fails once the drain has closed the listener.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let watch = tower_drain::Watch::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let mut listener = tower_drain::GracefulAccept::new(listener, watch.clone());
    /// assert!(listener.local_addr()?.ip().is_loopback());
    /// # Ok(())
    /// # }
    /// ```
    pub fn local_addr(&self) -> io::Result<L::Addr> {
        match &self.listener {
            Some(open) => open.listener.local_addr(),
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let watch = tower_drain::Watch::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let mut listener = tower_drain::GracefulAccept::new(listener, watch.clone());
    /// let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    /// let (io, peer) = listener.accept().await;
    /// assert_eq!(peer, client.local_addr()?);
    /// assert_eq!(watch.connections(), 1);
    /// # drop(io);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn accept(&mut self) -> (TrackedIo<L::Io>, L::Addr) {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next connection; the poll form of
    /// [`accept`](GracefulAccept::accept).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let watch = tower_drain::Watch::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let mut listener = tower_drain::GracefulAccept::new(listener, watch.clone());
    /// let _client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    /// let (_io, _peer) = std::future::poll_fn(|cx| listener.poll_accept(cx)).await;
    /// assert_eq!(watch.connections(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<(TrackedIo<L::Io>, L::Addr)> {
        if !self.announced {
            self.announced = true;
            self.shared.accepting();
        }
        loop {
            if matches!(self.state, State::Accepting | State::Backoff(_)) && self.poll_triggered(cx)
            {
                self.start_drain();
            }
            let step = match (&mut self.state, &mut self.listener) {
                (State::Closed, _) | (_, None) => Step::Pending,
                (State::Accepting, Some(open)) => match open.listener.poll_accept(cx) {
                    Poll::Ready(Ok(conn)) => return Poll::Ready(self.track(conn)),
                    Poll::Ready(Err(e)) => Step::Error(e),
                    Poll::Pending => return Poll::Pending,
                },
                (State::Backoff(sleep), _) => {
                    std::task::ready!(sleep.as_mut().poll(cx));
                    self.state = State::Accepting;
                    continue;
                }
                (State::Draining(drain), Some(open)) => {
                    let into = Handoff {
                        queue: &mut self.drained,
                        watch: &self.watch,
                    };
                    drain.poll_fill(&mut open.listener, into, &self.limits, cx)
                }
            };
            match step {
                Step::Yield(conn) => return Poll::Ready(self.track(conn)),
                Step::Error(e) => self.on_error(e),
                Step::Close => self.close(),
                Step::Pending => return self.next_drained().map_or(Poll::Pending, Poll::Ready),
            }
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

    fn poll_triggered(&mut self, cx: &mut Context<'_>) -> bool {
        self.watch.is_draining() || self.draining.as_mut().poll(cx).is_ready()
    }

    fn start_drain(&mut self) {
        if self.shared.is_elsewhere() {
            tracing::info!(
                local_addr = ?self.local_addr_for_log(),
                "closing a shared listener without draining: its queue stays with the other holder",
            );
            self.watch.inner.listener_left_shared();
            self.state = State::Closed;
            self.shared.close_copy();
            self.listener = None;
            return;
        }
        tracing::debug!(local_addr = ?self.local_addr_for_log(), "draining the accept queue");
        if let Some(open) = &mut self.listener {
            let mut queued = Vec::new();
            open.listener.steer_away(&mut queued);
            for queued in queued {
                self.drained
                    .push_back((ConnectionToken::new(&self.watch.inner), queued));
            }
        }
        let accepted = self.drained.len();
        self.state = State::Draining(Drain {
            accepted,
            until: Instant::now() + self.limits.timeout,
            stragglers: None,
            backoff: None,
        });
    }

    fn track(&self, (io, addr): (L::Io, L::Addr)) -> Accepted<L> {
        (TrackedIo::new(io, &self.watch.inner), addr)
    }

    fn on_error(&mut self, error: io::Error) {
        if is_transient(&error) {
            tracing::debug!(%error, "accept failed; the peer gave up, skipping it");
            return;
        }
        tracing::error!(%error, backoff = ?ACCEPT_ERROR_BACKOFF, "accept failed; retrying after a pause");
        let sleep = Box::pin(tokio::time::sleep(ACCEPT_ERROR_BACKOFF));
        match &mut self.state {
            State::Draining(drain) => drain.backoff = Some(sleep),
            state => *state = State::Backoff(sleep),
        }
    }

    /// Closes the socket, once: later polls find `listener` empty.
    fn close(&mut self) {
        let accepted = match std::mem::replace(&mut self.state, State::Closed) {
            State::Draining(drain) => drain.accepted,
            _ => 0,
        };
        let still_queued = self
            .listener
            .as_ref()
            .and_then(|open| open.listener.queue_len());
        match still_queued {
            Some(reset) if reset > 0 => tracing::error!(
                local_addr = ?self.local_addr_for_log(),
                accepted_from_queue = accepted,
                reset,
                "closing the listener with connections still queued: the kernel resets them",
            ),
            _ => tracing::info!(
                local_addr = ?self.local_addr_for_log(),
                accepted_from_queue = accepted,
                "closing the listener",
            ),
        }
        self.watch
            .inner
            .listener_drained(accepted, still_queued.unwrap_or(0));
        if let Some(open) = &mut self.listener {
            open.listener.unsteer();
        }
        self.shared.close_copy();
        self.listener = None;
    }

    fn local_addr_for_log(&self) -> Option<L::Addr> {
        self.listener.as_ref()?.listener.local_addr().ok()
    }
}

/// What one turn of the accept state machine decided, besides returning a
/// connection.
enum Step<C> {
    /// A straggler accepted the usual way.
    Yield(C),
    Error(io::Error),
    Close,
    /// Nothing to do until woken: hand out a drained connection if any.
    Pending,
}

/// Where the drain puts the connections it takes from the queue.
struct Handoff<'a, L: DrainableListener> {
    queue: &'a mut VecDeque<(ConnectionToken, L::Queued)>,
    watch: &'a Watch,
}

impl Drain {
    /// Takes up to a batch of connections from the queue; once it is empty,
    /// waits for stragglers, then asks to close.
    fn poll_fill<L: DrainableListener>(
        &mut self,
        listener: &mut L,
        mut into: Handoff<'_, L>,
        limits: &Limits,
        cx: &mut Context<'_>,
    ) -> Step<(L::Io, L::Addr)> {
        if into.watch.inner.is_forced()
            || self.accepted >= limits.connections
            || Instant::now() >= self.until
        {
            return Step::Close;
        }
        if let Some(backoff) = &mut self.backoff {
            if backoff.as_mut().poll(cx).is_pending() {
                return Step::Pending;
            }
            self.backoff = None;
        }
        if self.stragglers.is_none() {
            match self.take_batch(listener, &mut into, limits) {
                Ok(true) => {}
                Ok(false) => return Step::Pending,
                Err(e) => return Step::Error(e),
            }
        }
        let (until, timer) = self.stragglers.get_or_insert_with(|| {
            let until = Instant::now() + limits.straggler_wait;
            (until, Box::pin(tokio::time::sleep_until(until)))
        });
        let step = poll_stragglers(listener, *until, timer.as_mut(), cx);
        if matches!(step, Step::Yield(_)) {
            self.accepted += 1;
        }
        step
    }

    /// Takes up to a batch of queued connections, counting each at once;
    /// `true` once the kernel reports the queue empty.
    fn take_batch<L: DrainableListener>(
        &mut self,
        listener: &mut L,
        into: &mut Handoff<'_, L>,
        limits: &Limits,
    ) -> io::Result<bool> {
        for _ in 0..DRAIN_BATCH.min(limits.connections - self.accepted) {
            let Some(queued) = listener.try_accept()? else {
                return Ok(true);
            };
            self.accepted += 1;
            into.queue
                .push_back((ConnectionToken::new(&into.watch.inner), queued));
        }
        Ok(false)
    }
}

/// The queue was found empty: accepts, the usual readiness-driven way, what
/// arrives until `until`. The end of the wait is read from the clock, not only
/// from the timer, which cannot fire while the server keeps this task busy
/// handing out drained connections.
fn poll_stragglers<L: DrainableListener>(
    listener: &mut L,
    until: Instant,
    timer: Pin<&mut Sleep>,
    cx: &mut Context<'_>,
) -> Step<(L::Io, L::Addr)> {
    if Instant::now() >= until {
        return Step::Close;
    }
    match listener.poll_accept(cx) {
        Poll::Ready(Ok(conn)) => Step::Yield(conn),
        Poll::Ready(Err(e)) => Step::Error(e),
        Poll::Pending if timer.poll(cx).is_ready() => Step::Close,
        Poll::Pending => Step::Pending,
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
            .field(
                "listener",
                &self.listener.as_ref().map(|open| &open.listener),
            )
            .field("watch", &self.watch)
            .field("drained", &self.drained.len())
            .finish_non_exhaustive()
    }
}
