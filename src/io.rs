//! The connection wrapper: [`TrackedIo`] counts a connection as open until it
//! is dropped, notes when it reads its first byte, and fails it when the drain
//! is forced.

use std::{
    fmt, io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::watch::{ForceSlot, Inner};

pin_project! {
    /// An accepted connection, as [`GracefulAccept`](crate::GracefulAccept)
    /// hands it to the server.
    ///
    /// It forwards every `AsyncRead`/`AsyncWrite` call to the connection and
    /// adds three things: the connection counts in
    /// [`Watch::connections`](crate::Watch::connections) until this value is
    /// dropped; its first read tells the [`Watch`](crate::Watch) the server
    /// has started on it; and once the drain is forced every read and write
    /// fails with [`io::ErrorKind::ConnectionAborted`], so the server drops it.
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

    /// The wrapped connection.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let watch = tower_drain::Watch::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let mut listener = tower_drain::GracefulAccept::new(listener, watch.clone());
    /// # let _client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    /// # let (mut io, _) = listener.accept().await;
    /// assert!(io.get_ref().peer_addr()?.ip().is_loopback());
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// The wrapped connection, mutably. Reading from it directly bypasses the
    /// first-byte tracking.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # let watch = tower_drain::Watch::new();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let mut listener = tower_drain::GracefulAccept::new(listener, watch.clone());
    /// # let _client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    /// # let (mut io, _) = listener.accept().await;
    /// io.get_mut().set_nodelay(true)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.io
    }
}

impl<I: fmt::Debug> fmt::Debug for TrackedIo<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedIo")
            .field("io", &self.io)
            .field("awaiting_first_byte", &self.token.first_byte.is_awaiting())
            .finish()
    }
}

/// The bytes an HTTP/2 client sends first. hyper-util's automatic protocol
/// detection (what `axum::serve` uses) reads until the bytes differ from it
/// or match it whole, and a graceful shutdown before then drops the
/// connection unanswered.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Counts a connection as awaiting its first byte until the server has read
/// enough to choose a protocol, or the connection drops: while any is,
/// [`Watch::shutdown_signal`](crate::Watch::shutdown_signal) holds back, up
/// to the first-byte grace. Enough is one byte that is not the start of the
/// HTTP/2 preface, or the whole preface.
pub(crate) struct FirstByte {
    inner: Option<Arc<Inner>>,
    /// How many bytes read so far are the start of the HTTP/2 preface.
    preface: usize,
}

impl FirstByte {
    pub(crate) fn new(inner: &Arc<Inner>) -> Self {
        inner.awaiting_first_byte();
        Self {
            inner: Some(inner.clone()),
            preface: 0,
        }
    }

    /// Notes a finished read: its `result`, and `buf`, whose bytes from
    /// `before` on it filled. The end of the stream and an error release
    /// the connection: the server will not drop it unanswered.
    #[inline]
    pub(crate) fn read(&mut self, result: &io::Result<()>, buf: &ReadBuf<'_>, before: usize) {
        if self.inner.is_none() {
            return;
        }
        let bytes = &buf.filled()[before..];
        if result.is_ok() && !bytes.is_empty() {
            let expected = &H2_PREFACE[self.preface..];
            let n = bytes.len().min(expected.len());
            if bytes[..n] == expected[..n] && self.preface + n < H2_PREFACE.len() {
                self.preface += n;
                return;
            }
        }
        self.release();
    }

    /// Stops counting the connection as awaiting.
    fn release(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.first_byte_read();
        }
    }

    fn is_awaiting(&self) -> bool {
        self.inner.is_some()
    }
}

impl Drop for FirstByte {
    fn drop(&mut self) {
        self.release();
    }
}

/// A connection's registration with the [`Watch`](crate::Watch), released on drop.
pub(crate) struct ConnectionToken {
    inner: Arc<Inner>,
    key: usize,
    force: ForceSlot,
    first_byte: FirstByte,
}

impl ConnectionToken {
    pub(crate) fn new(inner: &Arc<Inner>) -> Self {
        let force = Arc::new(AtomicWaker::new());
        let key = inner.connection_opened(force.clone());
        Self {
            inner: inner.clone(),
            key,
            force,
            first_byte: FirstByte::new(inner),
        }
    }

    /// Fails the operation if the drain is forced.
    #[inline]
    fn check_forced(&self) -> io::Result<()> {
        if self.inner.is_forced() {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed: the drain was forced",
            ))
        } else {
            Ok(())
        }
    }

    /// Wraps an inner poll: fails it once forced, and when it is pending,
    /// registers the task to be woken by a force. The force flag is checked
    /// after registering, so a force in between cannot be missed.
    #[inline]
    fn guard<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.check_forced()?;
        let result = poll(cx);
        if result.is_pending() {
            self.force.register(cx.waker());
            self.check_forced()?;
        }
        result
    }
}

impl Drop for ConnectionToken {
    fn drop(&mut self) {
        self.first_byte.release();
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
        this.token.first_byte.read(&result, buf, before);
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
