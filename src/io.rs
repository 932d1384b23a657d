//! The connection wrapper: [`TrackedIo`] counts a connection as open until it
//! is dropped, follows where its requests start and end, tells a keep-alive
//! connection to close when the drain starts, closes it lingering, and fails
//! it when the drain closes it.

use std::{
    fmt, io,
    pin::Pin,
    sync::{
        atomic::{
            AtomicBool, AtomicU64, AtomicU8,
            Ordering::{Acquire, Relaxed, SeqCst},
        },
        Arc,
    },
    task::{ready, Context, Poll},
};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    framing::{FirstStream, Framing, Position},
    linger::{Linger, Lingered},
    watch::Inner,
};

pin_project! {
    /// An accepted connection, as [`GracefulAccept`](crate::GracefulAccept)
    /// hands it to the server.
    ///
    /// It forwards every `AsyncRead`/`AsyncWrite` call to the connection and
    /// adds:
    /// - the connection counts in
    ///   [`Watch::connections`](crate::Watch::connections) until this value
    ///   is dropped;
    /// - its reads tell the [`Watch`](crate::Watch) when the server has
    ///   chosen a protocol, and on HTTP/1 where each request head and body
    ///   starts and ends; from the trigger on, the next request head gets
    ///   `Connection: close` (see
    ///   [`keep_alive_idle`](crate::WatchBuilder::keep_alive_idle)), and the
    ///   request handed to the service carries it;
    /// - shutting it down closes it lingering (see
    ///   [`linger`](crate::WatchBuilder::linger));
    /// - once the drain closes it (forced, a head stalled past the
    ///   [`request_head_grace`](crate::WatchBuilder::request_head_grace), or
    ///   nothing to lose after the first-byte grace), every read and write
    ///   fails with [`io::ErrorKind::ConnectionAborted`], so the server drops
    ///   it.
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
    /// let _client = tokio::net::TcpStream::connect(addr).await?;
    /// let (io, _peer) = listener.accept().await;
    /// assert_eq!(watch.connections(), 1);
    /// io.get_ref().set_nodelay(true)?;
    /// drop(io);
    /// assert_eq!(watch.connections(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub struct TrackedIo<I> {
        #[pin]
        io: I,
        token: ConnectionToken,
        linger: Linger,
    }
}

impl<I> TrackedIo<I> {
    pub(crate) fn new(io: I, inner: &Arc<Inner>) -> Self {
        Self::with_token(io, ConnectionToken::new(inner))
    }

    /// Wraps a connection that was counted before its `io` existed.
    pub(crate) fn with_token(io: I, token: ConnectionToken) -> Self {
        Self {
            io,
            token,
            linger: Linger::default(),
        }
    }

    /// Marks the connection as carrying TLS records: its first byte is still
    /// waited for, the drain may close it while it has received none, and
    /// the request head is read (and tracked) above it.
    #[cfg(feature = "rustls")]
    pub(crate) fn encrypted(&mut self) {
        self.token.requests.stage = Stage::Encrypted;
        self.token.slot.transition(SERVING, SILENT);
    }

    /// The connection's entry in the registry.
    #[cfg(feature = "rustls")]
    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.token.slot
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// The wrapped connection, mutably. Reading from it directly bypasses the
    /// first-byte tracking.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.io
    }
}

impl<I: fmt::Debug> fmt::Debug for TrackedIo<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedIo")
            .field("io", &self.io)
            .field("awaiting_first_byte", &self.token.requests.is_awaiting())
            .finish()
    }
}

/// The bytes an HTTP/2 client sends first. hyper-util's automatic protocol
/// detection (what `axum::serve` uses) reads until the bytes differ from it
/// or match it whole, and a graceful shutdown before then drops the
/// connection unanswered.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the drain adds to the next HTTP/1 request head on a connection: the
/// server then answers it with `Connection: close` and closes the connection
/// after that response (RFC 9112 §9.6), so the client is told before the
/// connection closes and sends nothing more on it.
const CONNECTION_CLOSE: &[u8] = b"connection: close\r\n";

/// How far the server has read into a connection's requests.
///
/// What a graceful shutdown cannot see on its own follows from it:
/// - until the server has read enough to choose a protocol (one byte that is
///   not the start of the HTTP/2 preface, or the whole preface), the
///   connection counts as awaiting its first byte, and
///   [`Watch::shutdown_signal`](crate::Watch::shutdown_signal) holds back for
///   it, up to the first-byte grace;
/// - on HTTP/1, where each request starts and ends ([`Framing`]): its
///   [`Slot`] says whether the connection is between requests or reading a
///   head, which the drain waits for and may cut off;
/// - from the trigger on, it adds `Connection: close` to the next request
///   head, so that a keep-alive connection retires after its next response
///   instead of being closed between two requests while the client sends
///   the next one.
pub(crate) struct Requests {
    inner: Arc<Inner>,
    slot: Arc<Slot>,
    stage: Stage,
    /// What the slot was last told: the HTTP/1 states, or `SERVING`.
    state: u8,
    /// Bytes read but not yet handed to the server: the part of a read that
    /// made room for [`CONNECTION_CLOSE`], and its unsent rest.
    held: Vec<u8>,
}

enum Stage {
    /// The bytes are TLS records: only the first one is waited for; the
    /// [`TlsIo`](crate::TlsIo) above reads the requests.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code, reason = "set by TLS only"))]
    Encrypted,
    /// No protocol chosen yet: this many bytes of the HTTP/2 preface read.
    Protocol(usize),
    /// HTTP/1: where its requests stand, and if `Connection: close` was
    /// added to a request head, how many heads had ended before that one.
    Http1 {
        framing: Framing,
        closing: Option<u64>,
    },
    /// HTTP/2, no stream opened yet.
    Http2(FirstStream),
    /// HTTP/2, past the request that carries `Connection: close`, past what
    /// the framing can follow, or ended.
    Done,
}

impl Requests {
    pub(crate) fn new(inner: &Arc<Inner>, slot: Arc<Slot>) -> Self {
        inner.awaiting_first_byte();
        Self {
            inner: inner.clone(),
            slot,
            stage: Stage::Protocol(0),
            state: SERVING,
            held: Vec::new(),
        }
    }

    /// Reads through `read`: hands out held bytes first, then follows what
    /// `read` fills in `buf`, adding `Connection: close` to a request head
    /// from the trigger on.
    #[inline]
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        read: impl FnOnce(&mut Context<'_>, &mut ReadBuf<'_>) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        if !self.held.is_empty() {
            self.hand_out_held(buf);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = ready!(read(cx, buf));
        self.read(&result, buf, before);
        Poll::Ready(result)
    }

    /// Notes a finished read: its `result`, and `buf`, whose bytes from
    /// `before` on it filled. The end of the stream (no bytes into a buffer
    /// with room) and an error end the tracking: the server will not drop
    /// the connection unanswered.
    #[inline]
    fn read(&mut self, result: &io::Result<()>, buf: &mut ReadBuf<'_>, before: usize) {
        if matches!(self.stage, Stage::Done) {
            return;
        }
        let bytes = &buf.filled()[before..];
        if result.is_err() || bytes.is_empty() && buf.remaining() > 0 {
            self.end();
            return;
        }
        match &mut self.stage {
            Stage::Protocol(matched) => {
                let matched = *matched;
                let expected = &H2_PREFACE[matched..];
                let n = bytes.len().min(expected.len());
                if bytes[..n] != expected[..n] {
                    self.inner.first_byte_read();
                    // HTTP/1: what was taken for the start of the preface
                    // began the first request.
                    let mut framing = Framing::new();
                    framing.read(&H2_PREFACE[..matched], false);
                    self.stage = Stage::Http1 {
                        framing,
                        closing: None,
                    };
                    self.follow(buf, before);
                } else if matched + n < H2_PREFACE.len() {
                    self.stage = Stage::Protocol(matched + n);
                } else {
                    self.inner.first_byte_read();
                    self.stage = Stage::Http2(FirstStream::default());
                    self.enter(H2_NO_STREAM);
                    self.watch_for_a_stream(&buf.filled()[before + n..]);
                }
            }
            Stage::Http1 { .. } => self.follow(buf, before),
            Stage::Http2(_) => self.watch_for_a_stream(&buf.filled()[before..]),
            Stage::Encrypted => self.end(),
            Stage::Done => {}
        }
    }

    /// Follows the HTTP/1 bytes `buf` holds from `before` on, adds
    /// `Connection: close` to a head once the drain has been triggered, and
    /// tells the slot where the connection stands.
    fn follow(&mut self, buf: &mut ReadBuf<'_>, before: usize) {
        let Stage::Http1 { framing, closing } = &mut self.stage else {
            unreachable!("following HTTP/1");
        };
        let insert = closing.is_none() && self.inner.is_triggered();
        // The head `Connection: close` goes into is the one in progress, or
        // the first to start: either way, the heads before it have ended.
        let heads_before = framing.heads();
        let insert_at = framing.read(&buf.filled()[before..], insert);
        if insert_at.is_some() {
            *closing = Some(heads_before);
        }
        let (now, heads, closing) = (framing.position(), framing.heads(), *closing);
        if let Some(at) = insert_at {
            self.insert_connection_close(buf, before + at);
        }
        // Once the request that carries `Connection: close` is read (its
        // body too), the server reads nothing more: stop following.
        let retiring =
            closing.is_some_and(|n| heads > n + 1 || heads == n + 1 && now != Position::Body);
        if retiring && (now == Position::Head || closing.is_some_and(|n| heads > n + 1)) {
            // Requests pipelined behind it will never be answered: the close
            // must linger until the client has seen the end.
            self.slot.unanswered_input.store(true, Relaxed);
        }
        self.enter(match now {
            _ if retiring => RETIRING,
            Position::Head if heads > 0 => READING_NEXT_HEAD,
            Position::Head => READING_HEAD,
            Position::Body => RECEIVING_BODY,
            Position::Between => BETWEEN,
            Position::Lost => SERVING,
        });
        if retiring || now == Position::Lost {
            self.stage = Stage::Done;
        }
    }

    /// Follows HTTP/2 frames until the client opens a stream: until then the
    /// drain may close the connection once it has been accepted for the
    /// first-byte grace, as it does a silent one.
    fn watch_for_a_stream(&mut self, bytes: &[u8]) {
        let Stage::Http2(first) = &mut self.stage else {
            unreachable!("watching HTTP/2");
        };
        if first.read(bytes) {
            self.stage = Stage::Done;
            self.enter(SERVING);
        }
    }

    /// Tells the slot that the connection is now in `state`, if it was not.
    fn enter(&mut self, state: u8) {
        let was = std::mem::replace(&mut self.state, state);
        if state == was {
            return;
        }
        if matches!(state, READING_HEAD | READING_NEXT_HEAD) {
            self.inner.head_started(&self.slot, state);
        } else {
            self.slot.moved(state);
        }
        if matches!(was, READING_NEXT_HEAD | BETWEEN) && self.inner.is_triggered() {
            self.inner.hold_released();
        }
    }

    /// Puts [`CONNECTION_CLOSE`] at `at` in `buf`, holding back what follows
    /// it for the next reads if it no longer fits.
    #[cold]
    fn insert_connection_close(&mut self, buf: &mut ReadBuf<'_>, at: usize) {
        self.held.extend_from_slice(CONNECTION_CLOSE);
        self.held.extend_from_slice(&buf.filled()[at..]);
        buf.set_filled(at);
        self.hand_out_held(buf);
    }

    /// Moves as many held bytes into `buf` as fit.
    #[cold]
    fn hand_out_held(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.held.len().min(buf.remaining());
        buf.put_slice(&self.held[..n]);
        self.held.drain(..n);
    }

    /// Stops tracking: the connection ended or failed, or is being dropped.
    fn end(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Encrypted => {
                self.slot.first_byte_received();
                self.inner.first_byte_read();
            }
            Stage::Protocol(_) => self.inner.first_byte_read(),
            Stage::Http1 { .. } | Stage::Http2(_) => self.enter(SERVING),
            Stage::Done => {}
        }
    }

    fn is_awaiting(&self) -> bool {
        matches!(self.stage, Stage::Encrypted | Stage::Protocol(_))
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.end();
    }
}

/// A connection's entry in the [`Watch`](crate::Watch)'s registry, shared by
/// the connection and the drain, through which the drain closes it.
pub(crate) struct Slot {
    /// The task last blocked on the connection, woken when it is closed.
    waker: AtomicWaker,
    /// `SILENT`, `SERVING`, `READING_HEAD`, `READING_NEXT_HEAD`,
    /// `RECEIVING_BODY`, `BETWEEN`, `RETIRING`, `H2_NO_STREAM`, or one
    /// of the closed states, which are final. Transitions are
    /// compare-exchanges, so a connection whose head completes as the drain
    /// closes it is either closed or serving, and counted once. The waker
    /// orders the closing store before the task's next check.
    state: AtomicU8,
    /// When the connection last read or wrote, once the drain has been
    /// triggered: nanoseconds since the `Watch` was created. Written by the
    /// connection's task, read by [`ShutdownSignal`](crate::future::ShutdownSignal),
    /// which only needs a recent value (`Relaxed`).
    last_active: AtomicU64,
    /// The client sent requests beyond the one the server closes the
    /// connection after (set and read by the connection's task).
    unanswered_input: AtomicBool,
}

/// A TLS connection that has not received a byte: nothing to lose.
const SILENT: u8 = 0;
/// Serving, or past what the framing can follow.
const SERVING: u8 = 1;
/// An HTTP/1 connection reading its first request head.
pub(crate) const READING_HEAD: u8 = 2;
/// An HTTP/1 connection reading a later request head: unlike the first,
/// hyper drops it unanswered if its graceful shutdown starts before the
/// head is whole.
pub(crate) const READING_NEXT_HEAD: u8 = 3;
/// An HTTP/1 connection whose request body is still arriving.
pub(crate) const RECEIVING_BODY: u8 = 4;
/// An HTTP/1 connection that has read whole requests only: between two
/// requests as far as its client is concerned, once its response is out.
pub(crate) const BETWEEN: u8 = 5;
/// An HTTP/1 connection whose current request carries `Connection: close`:
/// the server closes it after that response.
pub(crate) const RETIRING: u8 = 6;
/// An HTTP/2 connection whose client has opened no stream: nothing to lose.
const H2_NO_STREAM: u8 = 7;
const FORCED: u8 = 8;
const HEAD_CUT_OFF: u8 = 9;
const SILENCE_CUT_OFF: u8 = 10;

impl Slot {
    pub(crate) fn new() -> Self {
        Self {
            waker: AtomicWaker::new(),
            state: AtomicU8::new(SERVING),
            last_active: AtomicU64::new(0),
            unanswered_input: AtomicBool::new(false),
        }
    }

    /// The state, for the drain's sweeps.
    pub(crate) fn state(&self) -> u8 {
        self.state.load(SeqCst)
    }

    /// When the connection last read or wrote after the trigger.
    pub(crate) fn last_active(&self) -> u64 {
        self.last_active.load(Relaxed)
    }

    /// Closes the connection because the drain was forced.
    pub(crate) fn force(&self) {
        self.state.store(FORCED, SeqCst);
        self.waker.wake();
    }

    /// Closes the connection if it is still reading a request head, and
    /// says whether it did.
    pub(crate) fn cut_off_head(&self) -> bool {
        self.cut_off(READING_HEAD, HEAD_CUT_OFF) || self.cut_off(READING_NEXT_HEAD, HEAD_CUT_OFF)
    }

    /// Closes the connection if it has nothing to lose: a TLS connection
    /// that has not received a byte, or an HTTP/2 connection whose client
    /// opened no stream. Says whether it did.
    pub(crate) fn cut_off_silence(&self) -> bool {
        self.cut_off(SILENT, SILENCE_CUT_OFF) || self.cut_off(H2_NO_STREAM, SILENCE_CUT_OFF)
    }

    fn cut_off(&self, from: u8, to: u8) -> bool {
        let cut = self.transition(from, to);
        if cut {
            self.waker.wake();
        }
        cut
    }

    /// Marks a request head as started (`to` is `READING_HEAD` or
    /// `READING_NEXT_HEAD`); false if the connection is already closed.
    pub(crate) fn start_head(&self, to: u8) -> bool {
        // SeqCst: see `transition`.
        self.state
            .fetch_update(SeqCst, SeqCst, |state| {
                matches!(state, SERVING..=BETWEEN).then_some(to)
            })
            .is_ok()
    }

    /// Moves an open HTTP/1 connection to `to`; a closed one stays closed.
    fn moved(&self, to: u8) {
        // SeqCst: see `transition`.
        let _ = self.state.fetch_update(SeqCst, SeqCst, |state| {
            matches!(state, SERVING..=H2_NO_STREAM).then_some(to)
        });
    }

    fn first_byte_received(&self) {
        self.transition(SILENT, SERVING);
    }

    fn transition(&self, from: u8, to: u8) -> bool {
        // SeqCst: `Inner::head_started` and the drain's sweep form a
        // store-then-load pair on `state` and the sweep's flag; at least one
        // of the two sees the other.
        self.state
            .compare_exchange(from, to, SeqCst, SeqCst)
            .is_ok()
    }

    /// Notes that the connection read or wrote at `now` (nanoseconds since
    /// the `Watch` was created).
    fn touch(&self, now: u64) {
        self.last_active.store(now, Relaxed);
    }

    /// Fails the operation if the drain has closed the connection.
    #[inline]
    fn check(&self) -> io::Result<()> {
        // Acquire pairs with the closing store; the waker orders a close that
        // lands after a pending poll's first check.
        match self.state.load(Acquire) {
            SILENT..=H2_NO_STREAM => Ok(()),
            FORCED => Err(closed("the drain was forced")),
            HEAD_CUT_OFF => Err(closed(
                "its request head was still incomplete when the request-head grace ran out",
            )),
            _ => Err(closed(
                "it was still silent (or, on HTTP/2, had opened no stream) when the first-byte grace ran out",
            )),
        }
    }
}

fn closed(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("connection closed by the drain: {why}"),
    )
}

/// A connection's registration with the [`Watch`](crate::Watch), released on drop.
pub(crate) struct ConnectionToken {
    inner: Arc<Inner>,
    key: usize,
    slot: Arc<Slot>,
    requests: Requests,
}

impl ConnectionToken {
    pub(crate) fn new(inner: &Arc<Inner>) -> Self {
        let slot = Arc::new(Slot::new());
        let key = inner.connection_opened(slot.clone());
        Self {
            inner: inner.clone(),
            key,
            requests: Requests::new(inner, slot.clone()),
            slot,
        }
    }

    #[inline]
    fn guard<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        guard(&self.slot, &self.inner, cx, poll)
    }
}

/// Wraps an inner poll of the connection in `slot`: fails it once the drain
/// has closed the connection, and when it is pending, registers the task to
/// be woken by a close. The state is checked again after registering, so a
/// close in between cannot be missed. From the trigger on, notes when the
/// connection was last active.
#[inline]
fn guard<T>(
    slot: &Slot,
    inner: &Inner,
    cx: &mut Context<'_>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    slot.check()?;
    let result = poll(cx);
    if result.is_pending() {
        slot.waker.register(cx.waker());
        slot.check()?;
    } else if inner.is_triggered() {
        slot.touch(inner.elapsed_nanos());
    }
    result
}

impl Drop for ConnectionToken {
    fn drop(&mut self) {
        let state = self.slot.state();
        self.requests.end();
        self.inner.connection_closed(self.key, state);
    }
}

impl<I: AsyncRead> AsyncRead for TrackedIo<I> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let io = this.io;
        let ConnectionToken {
            inner,
            slot,
            requests,
            ..
        } = this.token;
        requests.poll_read(cx, buf, |cx, buf| {
            // The task that reads drives the connection: a force wakes it
            // even when the server reads no more (a request pipelined behind
            // a slow one sits in its buffer), and its next flush fails.
            slot.waker.register(cx.waker());
            guard(slot, inner, cx, |cx| io.poll_read(cx, buf))
        })
    }
}

impl<I: AsyncRead + AsyncWrite> AsyncWrite for TrackedIo<I> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        this.token.guard(cx, |cx| this.io.poll_write(cx, buf))
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        this.token.guard(cx, |cx| this.io.poll_flush(cx))
    }

    /// Closes lingering (see [`WatchBuilder::linger`](crate::WatchBuilder::linger)):
    /// shuts the write side down, then reads and discards what the client
    /// still sends until it closes too, the linger time has passed, or the
    /// drain is forced.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let ConnectionToken { inner, slot, .. } = this.token;
        let lingered = guard(slot, inner, cx, |cx| {
            let expect_more = slot.unanswered_input.load(Relaxed);
            this.linger
                .poll_close(this.io, inner.linger_time(), expect_more, cx)
        });
        if ready!(lingered)? == Lingered::CutOff {
            inner.linger_cut_off();
        }
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        this.token
            .guard(cx, |cx| this.io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(all(test, feature = "rustls"))]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::Watch;

    /// Reads `bytes` through a tracked connection, encrypted or not, and
    /// says whether the drain could then cut off its request head.
    async fn head_pending_after(bytes: &[u8], encrypted: bool) -> bool {
        let watch = Watch::new();
        let (mut client, server) = duplex(64);
        let mut io = TrackedIo::new(server, &watch.inner);
        if encrypted {
            io.encrypted();
        }
        client.write_all(bytes).await.unwrap();
        io.read_exact(&mut vec![0; bytes.len()]).await.unwrap();
        io.token.slot.cut_off_head()
    }

    /// The bytes under TLS are records, not a request head: only the
    /// decrypted stream above them is tracked.
    #[tokio::test]
    async fn encrypted_bytes_never_start_a_request_head() {
        let record = b"\x17\x03\x03\x00\x09GET / HTT";
        assert!(head_pending_after(record, false).await);
        assert!(!head_pending_after(record, true).await);
    }
}
