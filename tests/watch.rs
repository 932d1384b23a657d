//! Unit tests of `Watch`: phases, counts, the waiting futures, the deadline and the report, without sockets.

mod common;

use std::{
    convert::Infallible,
    fmt::Debug,
    future::Future,
    io,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{future::BoxFuture, FutureExt};
use http::{Request, Response};
use http_body_util::Empty;
use tokio::{
    io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream},
    sync::{mpsc, Barrier},
    task::JoinSet,
    time::Instant,
};
use tokio_test::{
    assert_pending, assert_ready,
    task::{self, Spawn},
};
use tower::{service_fn, ServiceExt};
use tower_drain::{
    future::{Drained, Draining, ListenersClosed, ShutdownSignal},
    layer::{DrainBody, DrainService},
    DrainableListener, ForceCause, GracefulAccept, Phase, TrackedIo, Watch,
};

use common::within;

/// The smallest step of the paused clock these tests take.
const TICK: Duration = Duration::from_millis(1);

// ----- listeners and connections in memory -----

/// A listener in memory: each [`Dialer::dial`] queues the server end of a
/// pipe, so `GracefulAccept` tracks connections without any socket.
struct MemoryListener(mpsc::UnboundedReceiver<DuplexStream>);

/// Connects to a [`MemoryListener`].
struct Dialer(mpsc::UnboundedSender<DuplexStream>);

type Listener = GracefulAccept<MemoryListener>;

impl DrainableListener for MemoryListener {
    type Io = DuplexStream;
    type Addr = ();
    type Queued = DuplexStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(DuplexStream, ())>> {
        match self.0.poll_recv(cx) {
            Poll::Ready(Some(io)) => Poll::Ready(Ok((io, ()))),
            // Every dialer is gone: nothing will ever connect again.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn try_accept(&mut self) -> io::Result<Option<DuplexStream>> {
        Ok(self.0.try_recv().ok())
    }

    fn register(io: DuplexStream) -> io::Result<(DuplexStream, ())> {
        Ok((io, ()))
    }

    fn local_addr(&self) -> io::Result<()> {
        Ok(())
    }
}

impl Dialer {
    /// Queues a new connection on the listener; returns the client's end.
    fn dial(&self) -> DuplexStream {
        let (client, server) = duplex(64);
        self.0.send(server).expect("the listener is alive");
        client
    }
}

/// A listener registered on `watch`, and the way to connect to it.
fn listen(watch: &Watch) -> (Listener, Dialer) {
    let (dialer, queue) = mpsc::unbounded_channel();
    let listener = GracefulAccept::new(MemoryListener(queue), watch.clone());
    (listener, Dialer(dialer))
}

/// Connects and accepts: the server's tracked end and the client's end.
async fn connect(
    listener: &mut Listener,
    dialer: &Dialer,
) -> (TrackedIo<DuplexStream>, DuplexStream) {
    let client = dialer.dial();
    let (io, ()) = within("the accept", listener.accept()).await;
    (io, client)
}

/// Reads `io` until it fails: the error's kind, and when it failed.
async fn read_error(mut io: TrackedIo<DuplexStream>) -> (io::ErrorKind, Instant) {
    let error = io.read(&mut [0; 1]).await.expect_err("the read fails");
    (error.kind(), Instant::now())
}

// ----- requests -----

/// A request in flight through a `DrainLayer`, until this response is dropped.
type InFlight = Response<DrainBody<Empty<Bytes>>>;

/// Starts a request through a `DrainService` reporting to `watch`.
fn open_request(watch: &Watch) -> InFlight {
    let handler =
        service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(Empty::new())) });
    DrainService::new(handler, watch.clone())
        .oneshot(Request::new(()))
        .now_or_never()
        .expect("the handler answers at once")
        .unwrap()
}

// ----- polling futures by hand -----

/// A future polled by hand until it resolves, and its output then.
struct Waiter<F: Future> {
    task: Spawn<F>,
    polled: bool,
    output: Option<F::Output>,
}

impl<F: Future> Waiter<F> {
    fn new(future: F) -> Self {
        Self {
            task: task::spawn(future),
            polled: false,
            output: None,
        }
    }

    /// Whether the future has resolved, polling it if it has not yet: one
    /// that was pending must have woken its task first (no lost wake-up).
    fn is_ready(&mut self) -> bool {
        if self.output.is_none() {
            let woken = self.task.is_woken();
            if let Poll::Ready(output) = self.task.poll() {
                assert!(woken || !self.polled, "resolved without waking its task");
                self.output = Some(output);
            }
            self.polled = true;
        }
        self.output.is_some()
    }

    /// The output of a resolved future.
    fn output(mut self) -> F::Output {
        assert!(self.is_ready(), "the future has not resolved");
        self.output.take().unwrap()
    }
}

/// Each of a watch's four futures, polled by hand.
struct Waiters {
    draining: Waiter<Draining>,
    listeners_closed: Waiter<ListenersClosed>,
    shutdown_signal: Waiter<ShutdownSignal>,
    drained: Waiter<Drained>,
}

impl Waiters {
    fn new(watch: &Watch) -> Self {
        Self {
            draining: Waiter::new(watch.draining()),
            listeners_closed: Waiter::new(watch.listeners_closed()),
            shutdown_signal: Waiter::new(watch.shutdown_signal()),
            drained: Waiter::new(watch.drained()),
        }
    }

    /// The names of the futures that have resolved.
    fn resolved(&mut self) -> Vec<&'static str> {
        [
            ("draining", self.draining.is_ready()),
            ("listeners_closed", self.listeners_closed.is_ready()),
            ("shutdown_signal", self.shutdown_signal.is_ready()),
            ("drained", self.drained.is_ready()),
        ]
        .into_iter()
        .filter_map(|(name, ready)| ready.then_some(name))
        .collect()
    }
}

/// Drops a pending `waiter()` mid-wait, makes another, runs `event`: the new
/// one is woken and resolves, and one made afterwards resolves at once.
fn assert_cancel_safe<F: Future>(waiter: impl Fn() -> F, event: impl FnOnce())
where
    F::Output: Debug,
{
    let mut cancelled = task::spawn(waiter());
    assert_pending!(cancelled.poll());
    drop(cancelled);
    let mut waiting = task::spawn(waiter());
    assert_pending!(waiting.poll());
    event();
    assert!(waiting.is_woken(), "the waiter's task was not woken");
    assert_ready!(waiting.poll());
    assert_ready!(task::spawn(waiter()).poll());
}

// ----- phases and counts -----

/// A new `Watch` is running, counts nothing, has no report, and keeps its configured grace.
#[test]
fn new_watch_is_running_and_empty() {
    let watch = Watch::new();
    assert_eq!(watch.phase(), Phase::Running);
    assert!(!watch.is_draining());
    assert_eq!(
        (watch.listeners(), watch.connections(), watch.requests()),
        (0, 0, 0)
    );
    assert_eq!(watch.report(), None);
    assert_eq!(watch.grace(), Duration::from_secs(30));
    let grace = Duration::from_secs(7);
    assert_eq!(
        Watch::builder().grace(grace).build().unwrap().grace(),
        grace
    );
}

/// `listeners()`, `connections()` and `requests()` count what is open, and closing it all does not end a drain that never started.
#[tokio::test]
async fn counts_follow_listeners_connections_and_requests() {
    let watch = Watch::new();
    let (mut listener, dialer) = listen(&watch);
    let (second_listener, _) = listen(&watch);
    let (io, _client) = connect(&mut listener, &dialer).await;
    let request = open_request(&watch);
    assert_eq!(
        (watch.listeners(), watch.connections(), watch.requests()),
        (2, 1, 1)
    );

    drop(second_listener);
    assert_eq!(watch.listeners(), 1);
    drop(io);
    assert_eq!(watch.connections(), 0);
    drop(request);
    assert_eq!(watch.requests(), 0);
    drop(listener);
    assert_eq!(watch.listeners(), 0);

    assert_eq!(watch.phase(), Phase::Running);
    assert_eq!(watch.report(), None);
}

/// With nothing open, `trigger()` ends the drain at once and every future resolves immediately.
#[tokio::test]
async fn trigger_with_nothing_open_drains_at_once() {
    let watch = Watch::new();
    watch.trigger();
    assert_eq!(watch.phase(), Phase::Drained);
    assert!(watch.is_draining());
    let mut waiters = Waiters::new(&watch);
    assert_eq!(
        waiters.resolved(),
        ["draining", "listeners_closed", "shutdown_signal", "drained"]
    );
    let report = waiters.drained.output();
    assert_eq!(report.forced, None);
    assert_eq!(report.requests_completed, 0);
    assert_eq!(watch.report(), Some(report));
}

/// Running → Draining → Drained: each future resolves at its step and not before, and the report is clean.
#[tokio::test]
async fn drain_runs_through_its_phases() {
    let watch = Watch::new();
    let (listener, _dialer) = listen(&watch);
    let request = open_request(&watch);
    let mut waiters = Waiters::new(&watch);
    assert!(waiters.resolved().is_empty());

    watch.trigger();
    assert_eq!(watch.phase(), Phase::Draining);
    assert_eq!(waiters.resolved(), ["draining"]);

    drop(listener);
    assert_eq!(watch.phase(), Phase::Draining);
    assert_eq!(
        waiters.resolved(),
        ["draining", "listeners_closed", "shutdown_signal"]
    );
    assert_eq!(watch.report(), None);

    drop(request);
    assert_eq!(watch.phase(), Phase::Drained);
    assert_eq!(
        waiters.resolved(),
        ["draining", "listeners_closed", "shutdown_signal", "drained"]
    );
    let report = waiters.drained.output();
    assert_eq!(report.forced, None);
    assert_eq!(report.requests_completed, 1);
    assert_eq!(report.connections_forced, 0);
    assert_eq!(watch.report(), Some(report));
}

/// An open connection alone holds the drain open until it is dropped.
#[tokio::test]
async fn open_connection_holds_the_drain() {
    let watch = Watch::new();
    let (mut listener, dialer) = listen(&watch);
    let (io, _client) = connect(&mut listener, &dialer).await;
    drop(listener);
    let mut drained = task::spawn(watch.drained());

    watch.trigger();
    assert_eq!(watch.phase(), Phase::Draining);
    assert_pending!(drained.poll());

    drop(io);
    assert_eq!(watch.phase(), Phase::Drained);
    assert!(drained.is_woken(), "drained() did not wake its task");
    assert_eq!(assert_ready!(drained.poll()).forced, None);
}

// ----- forcing -----

/// A second `trigger()` forces: open connections fail, `shutdown_signal()` resolves with the listener still open, and later calls do not change the cause.
#[tokio::test]
async fn second_trigger_forces() {
    let watch = Watch::new();
    let (mut listener, dialer) = listen(&watch);
    let (mut io, _client) = connect(&mut listener, &dialer).await;
    let mut waiters = Waiters::new(&watch);

    watch.trigger();
    assert_eq!(watch.phase(), Phase::Draining);
    assert!(io.read(&mut [0; 1]).now_or_never().is_none());
    watch.trigger();
    assert_eq!(watch.phase(), Phase::Forced);
    let error = io.read(&mut [0; 1]).now_or_never().unwrap().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    assert_eq!(waiters.resolved(), ["draining", "shutdown_signal"]);

    watch.trigger();
    watch.force();
    assert_eq!(watch.report(), None, "the listener and connection are open");
    drop((listener, io));
    assert_eq!(watch.phase(), Phase::Forced);
    let report = waiters.drained.output();
    assert_eq!(report.forced, Some(ForceCause::SecondTrigger));
    assert_eq!(report.connections_forced, 1);
}

/// `force()` from Running starts and forces the drain at once; the report waits for the listener to close.
#[tokio::test]
async fn force_from_running() {
    let watch = Watch::new();
    let (listener, _dialer) = listen(&watch);
    let mut waiters = Waiters::new(&watch);

    watch.force();
    assert_eq!(watch.phase(), Phase::Forced);
    assert!(watch.is_draining());
    assert_eq!(waiters.resolved(), ["draining", "shutdown_signal"]);
    assert_eq!(watch.report(), None);

    drop(listener);
    assert_eq!(
        waiters.resolved(),
        ["draining", "listeners_closed", "shutdown_signal", "drained"]
    );
    let report = waiters.drained.output();
    assert_eq!(report.forced, Some(ForceCause::Force));
    assert_eq!(report.connections_forced, 0);
}

/// `force()` while draining counts the connections open at that moment, not those closed before.
#[tokio::test]
async fn force_counts_open_connections() {
    let watch = Watch::new();
    let (mut listener, dialer) = listen(&watch);
    let mut connections = Vec::new();
    for _ in 0..3 {
        connections.push(connect(&mut listener, &dialer).await);
    }
    let request = open_request(&watch);
    watch.trigger();
    drop(connections.pop());
    assert_eq!(watch.connections(), 2);

    watch.force();
    assert_eq!(watch.phase(), Phase::Forced);
    drop((listener, connections, request));
    let report = watch.report().expect("everything is closed");
    assert_eq!(report.forced, Some(ForceCause::Force));
    assert_eq!(report.connections_forced, 2);
    assert_eq!(report.requests_completed, 1);
}

/// Once the drain has ended, cleanly or forced, `trigger()` and `force()` change nothing.
#[tokio::test]
async fn calls_after_the_end_do_nothing() {
    let clean = Watch::new();
    clean.trigger();
    let forced = Watch::new();
    forced.force();

    for (watch, phase) in [(clean, Phase::Drained), (forced, Phase::Forced)] {
        let report = watch.report().expect("nothing was open");
        watch.trigger();
        watch.force();
        watch.trigger();
        assert_eq!(watch.phase(), phase);
        assert_eq!(watch.report(), Some(report));
    }
}

// ----- the report -----

/// `requests_completed` counts the requests that finish after the trigger, including those started during the drain.
#[tokio::test]
async fn requests_completed_counts_requests_finished_after_the_trigger() {
    let watch = Watch::new();
    let finished_before = open_request(&watch);
    let in_flight = [open_request(&watch), open_request(&watch)];
    drop(finished_before);

    watch.trigger();
    let started_during = open_request(&watch);
    assert_eq!(watch.requests(), 3);
    drop(in_flight);
    assert_eq!(watch.phase(), Phase::Draining);
    drop(started_during);

    assert_eq!(watch.phase(), Phase::Drained);
    let report = watch.report().expect("the last request ended the drain");
    assert_eq!(report.requests_completed, 3);
    assert_eq!(report.forced, None);
}

// ----- the deadline (paused time) -----

/// A drain held open past `grace` is forced exactly `grace` after the trigger, not before, and reports "deadline".
#[tokio::test(start_paused = true)]
async fn deadline_forces_exactly_at_grace() {
    const GRACE: Duration = Duration::from_secs(10);
    let watch = Watch::builder().grace(GRACE).build().unwrap();
    let (mut listener, dialer) = listen(&watch);
    let (io, _client) = connect(&mut listener, &dialer).await;
    let request = open_request(&watch);
    // The deadline counts from the trigger, not from the watch's creation.
    tokio::time::sleep(GRACE * 2).await;

    let triggered = Instant::now();
    watch.trigger();
    let forced_read = tokio::spawn(read_error(io));
    tokio::time::sleep(GRACE - TICK).await;
    assert_eq!(watch.phase(), Phase::Draining);
    assert!(!forced_read.is_finished());

    within("the deadline", watch.shutdown_signal()).await;
    assert_eq!(triggered.elapsed(), GRACE);
    assert_eq!(watch.phase(), Phase::Forced);
    let (error, failed_at) = within("the forced read", forced_read).await.unwrap();
    assert_eq!(error, io::ErrorKind::ConnectionAborted);
    assert_eq!(failed_at - triggered, GRACE);

    drop((listener, request));
    let report = within("the report", watch.drained()).await;
    assert_eq!(report.forced, Some(ForceCause::Deadline));
    assert_eq!(report.connections_forced, 1);
    assert_eq!(report.requests_completed, 1);
}

// ----- the lame duck period (paused time) -----

/// Through the lame duck period readiness is off but nothing drains: the listener keeps accepting and the drain starts exactly when the period ends; the deadline still counts from the trigger.
#[tokio::test(start_paused = true)]
async fn lame_duck_serves_until_its_period_ends() {
    const LAME_DUCK: Duration = Duration::from_secs(5);
    const GRACE: Duration = Duration::from_secs(20);
    let watch = Watch::builder()
        .lame_duck(LAME_DUCK)
        .grace(GRACE)
        .build()
        .unwrap();
    let (mut listener, dialer) = listen(&watch);
    let (held, _client) = connect(&mut listener, &dialer).await;
    let triggered = Instant::now();
    watch.trigger();
    assert_eq!(watch.phase(), Phase::LameDuck);
    assert!(!watch.is_ready());
    assert!(!watch.is_draining());

    tokio::time::sleep(LAME_DUCK - TICK).await;
    let (_io, _client) = connect(&mut listener, &dialer).await;
    assert_eq!(watch.phase(), Phase::LameDuck);
    within("the lame duck period", watch.draining()).await;
    assert_eq!(triggered.elapsed(), LAME_DUCK);
    assert_eq!(watch.phase(), Phase::Draining);

    drop(listener);
    let (_, forced_at) = within("the deadline", read_error(held)).await;
    assert_eq!(forced_at - triggered, GRACE);
}

/// A second trigger during the lame duck period forces the drain.
#[tokio::test(start_paused = true)]
async fn second_trigger_during_the_lame_duck_forces() {
    let watch = Watch::builder()
        .lame_duck(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut listener, dialer) = listen(&watch);
    let (io, _client) = connect(&mut listener, &dialer).await;
    watch.trigger();
    watch.trigger();
    assert_eq!(watch.phase(), Phase::Forced);
    let (error, _) = within("the forced read", read_error(io)).await;
    assert_eq!(error, io::ErrorKind::ConnectionAborted);
    drop(listener);
    let report = within("the report", watch.drained()).await;
    assert_eq!(report.forced, Some(ForceCause::SecondTrigger));
}

/// A lame duck period that leaves no time before the deadline is refused when the `Watch` is built.
#[test]
fn lame_duck_as_long_as_the_grace_is_a_config_error() {
    let built = Watch::builder()
        .lame_duck(Duration::from_secs(30))
        .grace(Duration::from_secs(30))
        .build();
    let error = built.expect_err("no time left to drain");
    assert!(
        error.to_string().contains("shorter than the grace"),
        "{error}"
    );
}

/// The deadline counts from the trigger even when the runtime is busy before it runs the deadline's task.
#[tokio::test(start_paused = true)]
async fn deadline_counts_from_the_trigger_on_a_busy_runtime() {
    const GRACE: Duration = Duration::from_secs(10);
    let watch = Watch::builder().grace(GRACE).build().unwrap();
    let (_listener, _dialer) = listen(&watch);
    let triggered = Instant::now();
    watch.trigger();
    // Time passes before the runtime polls any task, as on a busy runtime.
    tokio::time::advance(GRACE / 2).await;
    within("the deadline", watch.shutdown_signal()).await;
    assert_eq!(triggered.elapsed(), GRACE);
}

// ----- shutdown_signal and first bytes -----

/// A listener whose `accept()` is polled during the drain hands over its queued connections, then closes itself; the report counts them.
#[tokio::test]
async fn polled_listener_drains_its_queue_then_closes() {
    let watch = Watch::new();
    let (mut listener, dialer) = listen(&watch);
    let _clients = [dialer.dial(), dialer.dial()];
    let mut shutdown_signal = task::spawn(watch.shutdown_signal());
    watch.trigger();
    assert_pending!(shutdown_signal.poll());

    let server = tokio::spawn(async move {
        loop {
            drop(listener.accept().await);
        }
    });
    within("the listener to close", watch.listeners_closed()).await;
    assert_eq!(watch.listeners(), 0);
    assert!(
        shutdown_signal.is_woken(),
        "shutdown_signal() did not wake its task"
    );
    assert_ready!(shutdown_signal.poll());
    let report = within("the drain", watch.drained()).await;
    assert_eq!(report.accepted_from_queue, 2);
    server.abort();
}

/// A force while the listener waits for stragglers wakes it, and it closes at once rather than when the wait ends.
#[tokio::test]
async fn force_closes_a_listener_waiting_for_stragglers() {
    let watch = Watch::new();
    let (listener, _dialer) = listen(&watch);
    let mut listener = listener.straggler_wait(Duration::from_secs(3600));
    watch.trigger();
    let mut accept = task::spawn(listener.accept());
    assert_pending!(accept.poll(), "the queue is empty: waiting for stragglers");
    assert_eq!(watch.listeners(), 1);

    watch.force();
    assert!(accept.is_woken(), "the force did not wake the listener");
    assert_pending!(accept.poll());
    assert_eq!(watch.listeners(), 0);
}

/// The queue drain timeout also bounds the wait for stragglers: the listener closes exactly then.
#[tokio::test(start_paused = true)]
async fn queue_drain_timeout_bounds_the_wait_for_stragglers() {
    const TIMEOUT: Duration = Duration::from_millis(100);
    let watch = Watch::new();
    let (listener, _dialer) = listen(&watch);
    let mut listener = listener
        .straggler_wait(Duration::from_secs(3600))
        .queue_drain_timeout(TIMEOUT);
    let triggered = Instant::now();
    watch.trigger();
    let server = tokio::spawn(async move {
        loop {
            drop(listener.accept().await);
        }
    });
    within("the listener to close", watch.listeners_closed()).await;
    assert_eq!(triggered.elapsed(), TIMEOUT);
    server.abort();
}

/// `shutdown_signal()` holds back while an accepted connection has not read its first byte, and resolves once it has.
#[tokio::test]
async fn shutdown_signal_waits_for_the_first_byte() {
    let watch = Watch::builder()
        .first_byte_grace(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (mut listener, dialer) = listen(&watch);
    let (mut io, mut client) = connect(&mut listener, &dialer).await;
    watch.trigger();
    drop(listener);
    let mut shutdown_signal = task::spawn(watch.shutdown_signal());
    assert_pending!(shutdown_signal.poll());

    client.write_all(b"G").await.unwrap();
    io.read_exact(&mut [0; 1]).await.unwrap();
    assert!(
        shutdown_signal.is_woken(),
        "shutdown_signal() did not wake its task"
    );
    assert_ready!(shutdown_signal.poll());
}

/// Bytes that could still be the start of the HTTP/2 preface do not decide the protocol: `shutdown_signal()` holds back until a byte differs from it (`P`, then `OST`) or the whole preface has been read.
#[tokio::test]
async fn shutdown_signal_waits_until_the_protocol_is_decided() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for (first, rest) in [
        (&b"P"[..], &b"OST / HTTP/1.1\r\n"[..]),
        (&PREFACE[..23], &PREFACE[23..]),
    ] {
        let watch = Watch::builder()
            .first_byte_grace(Duration::from_secs(3600))
            .build()
            .unwrap();
        let (mut listener, dialer) = listen(&watch);
        let (mut io, mut client) = connect(&mut listener, &dialer).await;
        client.write_all(first).await.unwrap();
        io.read_exact(&mut vec![0; first.len()]).await.unwrap();
        watch.trigger();
        drop(listener);
        let mut shutdown_signal = task::spawn(watch.shutdown_signal());
        assert_pending!(shutdown_signal.poll(), "after {first:?}");

        client.write_all(rest).await.unwrap();
        io.read_exact(&mut vec![0; rest.len()]).await.unwrap();
        assert!(shutdown_signal.is_woken(), "not woken after {rest:?}");
        assert_ready!(shutdown_signal.poll(), "after {rest:?}");
    }
}

/// A connection silent for `first_byte_grace` after its accept stops holding `shutdown_signal()` back, exactly then.
#[tokio::test(start_paused = true)]
async fn shutdown_signal_gives_up_on_silent_connections() {
    const FIRST_BYTE_GRACE: Duration = Duration::from_secs(1);
    let watch = Watch::builder()
        .first_byte_grace(FIRST_BYTE_GRACE)
        .build()
        .unwrap();
    let (mut listener, dialer) = listen(&watch);
    let (_io, _client) = connect(&mut listener, &dialer).await;
    let accepted = Instant::now();
    tokio::time::sleep(FIRST_BYTE_GRACE / 4).await;
    watch.trigger();
    drop(listener);

    let shutdown_signal = tokio::spawn(watch.shutdown_signal());
    tokio::time::sleep_until(accepted + FIRST_BYTE_GRACE - TICK).await;
    assert!(!shutdown_signal.is_finished());
    within("the first-byte grace", shutdown_signal)
        .await
        .unwrap();
    assert_eq!(accepted.elapsed(), FIRST_BYTE_GRACE);
}

/// A connection that delivered part of its first request head and stalled is closed `request_head_grace` after the trigger, exactly then, and counted apart from forced ones; connections whose head is complete (`\r\n` or bare `\n` line ends, split across reads) stay open. (An HTTP/2 connection that opens no stream is closed after the first-byte grace: `tests/reference_server.rs`.)
#[tokio::test(start_paused = true)]
async fn stalled_request_head_is_cut_off_after_its_grace() {
    const HEAD_GRACE: Duration = Duration::from_secs(2);
    let watch = Watch::builder()
        .request_head_grace(HEAD_GRACE)
        .build()
        .unwrap();
    let (mut listener, dialer) = listen(&watch);
    let mut complete = Vec::new();
    for parts in [
        &[&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]][..],
        &[b"GET / HTTP/1.0\n\n"],
        &[b"GET / HTTP/1.1\r\nHost: a\r\n\r", b"\n"],
    ] {
        let (mut io, mut client) = connect(&mut listener, &dialer).await;
        for part in parts {
            client.write_all(part).await.unwrap();
            io.read_exact(&mut vec![0; part.len()]).await.unwrap();
        }
        complete.push((tokio::spawn(read_error(io)), client));
    }
    let (mut io, mut client) = connect(&mut listener, &dialer).await;
    client.write_all(b"GET / HTT").await.unwrap();
    io.read_exact(&mut [0; 9]).await.unwrap();

    let triggered = Instant::now();
    watch.trigger();
    drop(listener);
    let stalled = tokio::spawn(read_error(io));
    tokio::time::sleep_until(triggered + HEAD_GRACE - TICK).await;
    assert!(!stalled.is_finished());
    let (kind, at) = within("the head grace", stalled).await.unwrap();
    assert_eq!(kind, io::ErrorKind::ConnectionAborted);
    assert_eq!(at, triggered + HEAD_GRACE);
    for (read, _client) in &complete {
        assert!(!read.is_finished(), "a complete head was cut off");
    }

    for (read, _client) in complete {
        read.abort();
    }
    let report = within("the drain", watch.drained()).await;
    assert_eq!(report.heads_cut_off, 1);
    assert_eq!(report.forced, None);
}

/// A connection that starts its first request head after the head grace has run out is closed at once.
#[tokio::test(start_paused = true)]
async fn request_head_started_after_its_grace_is_cut_off_at_once() {
    const HEAD_GRACE: Duration = Duration::from_secs(2);
    let watch = Watch::builder()
        .request_head_grace(HEAD_GRACE)
        .build()
        .unwrap();
    let (mut listener, dialer) = listen(&watch);
    let (mut io, mut client) = connect(&mut listener, &dialer).await;
    watch.trigger();
    drop(listener);
    tokio::time::sleep(HEAD_GRACE + TICK).await;

    client.write_all(b"GE").await.unwrap();
    io.read_exact(&mut [0; 2]).await.unwrap();
    let (kind, _) = read_error(io).await;
    assert_eq!(kind, io::ErrorKind::ConnectionAborted);
    let report = within("the drain", watch.drained()).await;
    assert_eq!(report.heads_cut_off, 1);
    assert_eq!(report.forced, None);
}

// ----- cancel safety and lost wake-ups -----

/// `draining()` dropped mid-wait: a new one still sees the trigger.
#[tokio::test]
async fn draining_is_cancel_safe() {
    let watch = Watch::new();
    assert_cancel_safe(|| watch.draining(), || watch.trigger());
}

/// `listeners_closed()` dropped mid-wait: a new one still sees the last listener close.
#[tokio::test]
async fn listeners_closed_is_cancel_safe() {
    let watch = Watch::new();
    let (listener, _dialer) = listen(&watch);
    watch.trigger();
    assert_cancel_safe(|| watch.listeners_closed(), || drop(listener));
}

/// `shutdown_signal()` dropped mid-wait: a new one still sees the force.
#[tokio::test]
async fn shutdown_signal_is_cancel_safe() {
    let watch = Watch::new();
    let (_listener, _dialer) = listen(&watch);
    watch.trigger();
    assert_cancel_safe(|| watch.shutdown_signal(), || watch.force());
}

/// `drained()` dropped mid-wait: a new one still sees the last request end.
#[tokio::test]
async fn drained_is_cancel_safe() {
    let watch = Watch::new();
    let request = open_request(&watch);
    watch.trigger();
    assert_cancel_safe(|| watch.drained(), || drop(request));
}

/// Many tasks creating waiters on a multi-thread runtime while other tasks trigger and close everything: every waiter finishes, 200 times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_never_miss_a_concurrent_drain() {
    const WAITERS: usize = 8;
    for _ in 0..200 {
        let watch = Watch::new();
        let (listener, _dialer) = listen(&watch);
        let request = open_request(&watch);
        let start = Arc::new(Barrier::new(WAITERS + 3));
        let mut tasks = JoinSet::new();
        let mut spawn = |task: BoxFuture<'static, ()>| {
            let start = start.clone();
            tasks.spawn(async move {
                start.wait().await;
                task.await;
            });
        };
        for i in 0..WAITERS {
            let watch = watch.clone();
            spawn(Box::pin(async move {
                match i % 4 {
                    0 => watch.draining().await,
                    1 => watch.listeners_closed().await,
                    2 => watch.shutdown_signal().await,
                    _ => watch.drained().map(drop).await,
                }
            }));
        }
        let trigger = watch.clone();
        spawn(Box::pin(async move { trigger.trigger() }));
        spawn(Box::pin(async move { drop(listener) }));
        spawn(Box::pin(async move { drop(request) }));

        within("every waiter", async {
            while let Some(task) = tasks.join_next().await {
                task.unwrap();
            }
        })
        .await;
        assert_eq!(watch.phase(), Phase::Drained);
    }
}

/// A configuration that cannot drain is an error that `?` turns into an
/// `io::Error` (`InvalidInput`), as a `main` returning `io::Result` needs.
#[test]
fn config_errors_become_io_errors() {
    fn build(grace: Duration) -> std::io::Result<Watch> {
        Ok(Watch::builder().grace(grace).build()?)
    }
    let error = build(Duration::ZERO).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("longer than zero"), "{error}");
    assert!(build(Duration::from_secs(1)).is_ok());
}
