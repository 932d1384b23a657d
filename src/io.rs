//! The connection wrapper: [`TrackedIo`] counts a connection as open until it
//! is dropped, follows where its requests start and end, tells a keep-alive
//! connection to close when the drain starts, closes it lingering, and fails
//! it when the drain closes it.

use std::{
    fmt, io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    linger::{Linger, Lingered},
    requests::Requests,
    state::{Inner, Slot},
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
        self.token.requests.encrypted();
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
        slot.register(cx.waker());
        slot.check()?;
    } else {
        touch(slot, inner);
    }
    result
}

/// [`guard`] for a task that registered before it called: a close after the
/// check wakes it, so a pending poll needs nothing more.
#[inline]
fn guard_registered<T>(
    slot: &Slot,
    inner: &Inner,
    cx: &mut Context<'_>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    slot.check()?;
    let result = poll(cx);
    if result.is_ready() {
        touch(slot, inner);
    }
    result
}

/// From the trigger on, notes that the connection was active now.
#[inline]
fn touch(slot: &Slot, inner: &Inner) {
    if inner.is_triggered() {
        slot.touch(inner.elapsed_nanos());
    }
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
            slot.register(cx.waker());
            guard_registered(slot, inner, cx, |cx| io.poll_read(cx, buf))
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
            let expect_more = slot.has_unanswered_input();
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
