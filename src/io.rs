//! The connection wrapper: [`TrackedIo`] counts a connection as open until it
//! is dropped, follows how far the server has read into its first request,
//! and fails it when the drain closes it.

use std::{
    fmt, io,
    pin::Pin,
    sync::{
        atomic::{
            AtomicU8,
            Ordering::{Acquire, SeqCst},
        },
        Arc,
    },
    task::{ready, Context, Poll},
};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::watch::Inner;

pin_project! {
    /// An accepted connection, as [`GracefulAccept`](crate::GracefulAccept)
    /// hands it to the server.
    ///
    /// It forwards every `AsyncRead`/`AsyncWrite` call to the connection and
    /// adds three things: the connection counts in
    /// [`Watch::connections`](crate::Watch::connections) until this value is
    /// dropped; its reads tell the [`Watch`](crate::Watch) when the server
    /// has chosen a protocol and read its first request head; and once the
    /// drain closes it (forced, or its head stalled past the
    /// [`request_head_grace`](crate::WatchBuilder::request_head_grace)),
    /// every read and write fails with
    /// [`io::ErrorKind::ConnectionAborted`], so the server drops it.
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
    }
}

impl<I> TrackedIo<I> {
    pub(crate) fn new(io: I, inner: &Arc<Inner>) -> Self {
        Self::with_token(io, ConnectionToken::new(inner))
    }

    /// Wraps a connection that was counted before its `io` existed.
    pub(crate) fn with_token(io: I, token: ConnectionToken) -> Self {
        Self { io, token }
    }

    /// Marks the connection as carrying TLS records: its first byte is still
    /// waited for, the drain may close it while it has received none, and
    /// the request head is read (and tracked) above it.
    #[cfg(feature = "rustls")]
    pub(crate) fn encrypted(&mut self) {
        self.token.head.stage = Stage::Encrypted;
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
            .field("awaiting_first_byte", &self.token.head.is_awaiting())
            .finish()
    }
}

/// The bytes an HTTP/2 client sends first. hyper-util's automatic protocol
/// detection (what `axum::serve` uses) reads until the bytes differ from it
/// or match it whole, and a graceful shutdown before then drops the
/// connection unanswered.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How far the server has read into a connection's first request.
///
/// Two things a graceful shutdown cannot wait for on its own follow from it:
/// - until the server has read enough to choose a protocol (one byte that is
///   not the start of the HTTP/2 preface, or the whole preface), the
///   connection counts as awaiting its first byte, and
///   [`Watch::shutdown_signal`](crate::Watch::shutdown_signal) holds back for
///   it, up to the first-byte grace;
/// - while an HTTP/1 connection has not delivered its first request head (up
///   to the blank line that ends it), its [`Slot`] says so, and the drain may
///   close it after the request-head grace: no request of it has started.
///
/// Later requests on a keep-alive connection need no tracking: hyper closes a
/// connection between requests itself when the graceful shutdown starts.
pub(crate) struct RequestHead {
    inner: Arc<Inner>,
    slot: Arc<Slot>,
    stage: Stage,
}

enum Stage {
    /// The bytes are TLS records: only the first one is waited for; the
    /// [`TlsIo`](crate::TlsIo) above reads the request head.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code, reason = "set by TLS only"))]
    Encrypted,
    /// No protocol chosen yet: this many bytes of the HTTP/2 preface read.
    Protocol(usize),
    /// HTTP/1, reading the first request head.
    Head(BlankLine),
    /// The head (or the preface) is complete, or the connection ended.
    Done,
}

impl RequestHead {
    pub(crate) fn new(inner: &Arc<Inner>, slot: Arc<Slot>) -> Self {
        inner.awaiting_first_byte();
        Self {
            inner: inner.clone(),
            slot,
            stage: Stage::Protocol(0),
        }
    }

    /// Notes a finished read: its `result`, and `buf`, whose bytes from
    /// `before` on it filled. The end of the stream (no bytes into a buffer
    /// with room) and an error end the tracking: the server will not drop
    /// the connection unanswered.
    #[inline]
    pub(crate) fn read(&mut self, result: &io::Result<()>, buf: &ReadBuf<'_>, before: usize) {
        if matches!(self.stage, Stage::Done) {
            return;
        }
        let bytes = &buf.filled()[before..];
        if result.is_err() || bytes.is_empty() && buf.remaining() > 0 {
            self.end();
            return;
        }
        match &mut self.stage {
            Stage::Encrypted => self.end(),
            Stage::Protocol(matched) => {
                let matched = *matched;
                let expected = &H2_PREFACE[matched..];
                let n = bytes.len().min(expected.len());
                if bytes[..n] != expected[..n] {
                    self.inner.first_byte_read();
                    self.start_head(&H2_PREFACE[..matched], bytes);
                } else if matched + n < H2_PREFACE.len() {
                    self.stage = Stage::Protocol(matched + n);
                } else {
                    self.end();
                }
            }
            Stage::Head(blank) => {
                if blank.ends_in(bytes) {
                    self.slot.head_ended();
                    self.stage = Stage::Done;
                }
            }
            Stage::Done => {}
        }
    }

    /// HTTP/1 chosen: `read` so far, which may already hold the whole head.
    fn start_head(&mut self, preface: &[u8], bytes: &[u8]) {
        let mut blank = BlankLine::default();
        if blank.ends_in(preface) || blank.ends_in(bytes) {
            self.stage = Stage::Done;
        } else {
            self.stage = Stage::Head(blank);
            self.inner.head_started(&self.slot);
        }
    }

    /// Stops tracking: the connection is past its first head, or gone.
    fn end(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Encrypted => {
                self.slot.first_byte_received();
                self.inner.first_byte_read();
            }
            Stage::Protocol(_) => self.inner.first_byte_read(),
            Stage::Head(_) => self.slot.head_ended(),
            Stage::Done => {}
        }
    }

    fn is_awaiting(&self) -> bool {
        matches!(self.stage, Stage::Encrypted | Stage::Protocol(_))
    }
}

impl Drop for RequestHead {
    fn drop(&mut self) {
        self.end();
    }
}

/// Finds the blank line that ends an HTTP/1 head (`\r\n\r\n`, or bare
/// `\n` line ends, which hyper accepts too) across reads.
#[derive(Default)]
struct BlankLine {
    /// 0: inside a line; 1: just after `\n`; 2: after `\n\r`.
    state: u8,
}

impl BlankLine {
    /// Whether the head ends within `bytes`, read after what came before.
    fn ends_in(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            self.state = match (self.state, byte) {
                (1 | 2, b'\n') => return true,
                (_, b'\n') => 1,
                (1, b'\r') => 2,
                _ => 0,
            };
        }
        false
    }
}

/// A connection's entry in the [`Watch`](crate::Watch)'s registry, shared by
/// the connection and the drain, through which the drain closes it.
pub(crate) struct Slot {
    /// The task last blocked on the connection, woken when it is closed.
    waker: AtomicWaker,
    /// `SILENT`, `SERVING`, `READING_HEAD`, or one of the closed states,
    /// which are final. Transitions are compare-exchanges, so a connection
    /// whose head completes as the drain closes it is either closed or
    /// serving, and counted once. The waker orders the closing store before
    /// the task's next check.
    state: AtomicU8,
}

/// A TLS connection that has not received a byte: nothing to lose.
const SILENT: u8 = 0;
const SERVING: u8 = 1;
/// An HTTP/1 connection reading its first request head.
const READING_HEAD: u8 = 2;
const FORCED: u8 = 3;
const HEAD_CUT_OFF: u8 = 4;
const SILENCE_CUT_OFF: u8 = 5;

impl Slot {
    pub(crate) fn new() -> Self {
        Self {
            waker: AtomicWaker::new(),
            state: AtomicU8::new(SERVING),
        }
    }

    /// Closes the connection because the drain was forced.
    pub(crate) fn force(&self) {
        self.state.store(FORCED, SeqCst);
        self.waker.wake();
    }

    /// Closes the connection if it is still reading its first request head,
    /// and says whether it did.
    pub(crate) fn cut_off_head(&self) -> bool {
        self.cut_off(READING_HEAD, HEAD_CUT_OFF)
    }

    /// Closes the connection if it is a TLS connection that has not
    /// received a byte, and says whether it did.
    pub(crate) fn cut_off_silence(&self) -> bool {
        self.cut_off(SILENT, SILENCE_CUT_OFF)
    }

    fn cut_off(&self, from: u8, to: u8) -> bool {
        let cut = self.transition(from, to);
        if cut {
            self.waker.wake();
        }
        cut
    }

    /// Marks the first request head as started; false if the connection is
    /// already closed.
    pub(crate) fn start_head(&self) -> bool {
        self.transition(SERVING, READING_HEAD)
    }

    fn head_ended(&self) {
        self.transition(READING_HEAD, SERVING);
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

    /// Fails the operation if the drain has closed the connection.
    #[inline]
    fn check(&self) -> io::Result<()> {
        // Acquire pairs with the closing store; the waker orders a close that
        // lands after a pending poll's first check.
        match self.state.load(Acquire) {
            SILENT | SERVING | READING_HEAD => Ok(()),
            FORCED => Err(closed("the drain was forced")),
            HEAD_CUT_OFF => Err(closed(
                "its request head was still incomplete when the request-head grace ran out",
            )),
            _ => Err(closed(
                "it was still silent when the first-byte grace ran out",
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
    head: RequestHead,
}

impl ConnectionToken {
    pub(crate) fn new(inner: &Arc<Inner>) -> Self {
        let slot = Arc::new(Slot::new());
        let key = inner.connection_opened(slot.clone());
        Self {
            inner: inner.clone(),
            key,
            head: RequestHead::new(inner, slot.clone()),
            slot,
        }
    }

    /// Wraps an inner poll: fails it once the drain has closed the
    /// connection, and when it is pending, registers the task to be woken by
    /// a close. The state is checked again after registering, so a close in
    /// between cannot be missed.
    #[inline]
    fn guard<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.slot.check()?;
        let result = poll(cx);
        if result.is_pending() {
            self.slot.waker.register(cx.waker());
            self.slot.check()?;
        }
        result
    }
}

impl Drop for ConnectionToken {
    fn drop(&mut self) {
        self.head.end();
        self.inner.connection_closed(self.key);
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
        let before = buf.filled().len();
        let result = ready!(this.token.guard(cx, |cx| this.io.poll_read(cx, buf)));
        this.token.head.read(&result, buf, before);
        Poll::Ready(result)
    }
}

impl<I: AsyncWrite> AsyncWrite for TrackedIo<I> {
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

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
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

#[cfg(test)]
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
