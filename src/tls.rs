//! TLS with rustls (feature `rustls`): [`TlsAccept`] runs handshakes
//! concurrently, bounds each by a timeout, and makes the drain wait for the
//! ones in progress.

use std::{
    fmt, io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    task::JoinSet,
};
use tokio_rustls::{rustls::ServerConfig, server::TlsStream, TlsAcceptor};

use crate::{
    requests::Requests, state::Inner, watch::Watch, DrainableListener, GracefulAccept, TrackedIo,
};

/// Default [`TlsAccept::handshake_timeout`].
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed handshake, how long to read and discard what the client
/// still sends before closing, so that the close is not a reset.
const LINGER: Duration = Duration::from_secs(1);

/// A TLS listener on top of a [`GracefulAccept`].
///
/// Each accepted connection's handshake runs in its own task, so a slow or
/// silent client never delays the others, and is bounded by the
/// [`handshake_timeout`](Self::handshake_timeout). A handshake in progress
/// counts as an open connection, and
/// [`Watch::shutdown_signal`] waits for it: when the drain starts, handshakes
/// already under way complete and their first request is served. A client
/// that never finishes is closed cleanly (TLS alert or end of stream) at the
/// handshake timeout or the drain deadline. Failed handshakes (plain HTTP on
/// the TLS port, a malformed or aborted ClientHello) are logged at debug level
/// and affect no other connection.
///
/// If the [`ServerConfig`] offers no ALPN protocols, `h2` and `http/1.1` are
/// offered, so HTTP/2 works over TLS.
///
/// With the `axum` feature it implements `axum::serve::Listener`.
///
/// # Cancel safety
///
/// [`accept`](TlsAccept::accept) is cancel safe: handshakes live in tasks, and
/// finished ones wait in the `TlsAccept` until the next call.
///
/// # Example
///
/// ```no_run
/// use std::{sync::Arc, time::Duration};
///
/// use axum::{routing::get, Router};
/// use tokio_rustls::rustls::{
///     crypto::ring,
///     pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
///     ServerConfig,
/// };
/// use tower_drain::{GracefulAccept, TlsAccept, Watch};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let certs = CertificateDer::pem_file_iter("cert.pem")?.collect::<Result<Vec<_>, _>>()?;
/// let key = PrivateKeyDer::from_pem_file("key.pem")?;
/// let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
///     .with_safe_default_protocol_versions()?
///     .with_no_client_auth()
///     .with_single_cert(certs, key)?;
///
/// let watch = Watch::new();
/// watch.trigger_on_signals()?;
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:3443").await?;
/// let listener = TlsAccept::new(GracefulAccept::new(listener, watch.clone()), Arc::new(config))
///     .handshake_timeout(Duration::from_secs(5));
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// axum::serve(listener, app)
///     .with_graceful_shutdown(watch.shutdown_signal())
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct TlsAccept<L: DrainableListener> {
    listener: GracefulAccept<L>,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    handshakes: JoinSet<Option<Handshaken<L>>>,
}

/// A finished handshake on its way to the server; it holds the handshake's
/// place in the count until the server has the connection.
struct Handshaken<L: DrainableListener> {
    stream: TlsStream<TrackedIo<L::Io>>,
    addr: L::Addr,
    _handshake: Handshake,
}

impl<L: DrainableListener> TlsAccept<L> {
    /// Terminates TLS with `config` on the connections `listener` accepts.
    pub fn new(listener: GracefulAccept<L>, config: Arc<ServerConfig>) -> Self {
        Self {
            listener,
            acceptor: TlsAcceptor::from(with_default_alpn(config)),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            handshakes: JoinSet::new(),
        }
    }

    /// The longest a handshake may take before the connection is closed.
    /// Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The [`Watch`] the listener reports to.
    pub fn watch(&self) -> &Watch {
        self.listener.watch()
    }

    /// The local address of the wrapped listener.
    ///
    /// # Errors
    ///
    /// Fails once the drain has closed the listener.
    pub fn local_addr(&self) -> io::Result<L::Addr> {
        self.listener.local_addr()
    }

    /// Accepts the next connection whose TLS handshake has completed.
    ///
    /// A connection whose handshake is under way, or has not started (a
    /// client that connects and stays silent), is not returned, but counts
    /// in [`Watch::connections`] meanwhile.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: see the [type documentation](TlsAccept#cancel-safety).
    pub async fn accept(&mut self) -> (TlsIo<L::Io>, L::Addr) {
        loop {
            tokio::select! {
                (io, addr) = self.listener.accept() => self.start_handshake(io, addr),
                Some(joined) = self.handshakes.join_next() => match joined {
                    Ok(Some(done)) => {
                        let io = TlsIo::new(done.stream, &self.listener.watch().inner);
                        return (io, done.addr);
                    }
                    Ok(None) => {}
                    Err(error) => tracing::error!(%error, "TLS handshake task failed"),
                },
            }
        }
    }

    fn start_handshake(&mut self, mut io: TrackedIo<L::Io>, addr: L::Addr) {
        io.encrypted();
        let handshake = Handshake::new(&self.listener.watch().inner);
        let accept = self.acceptor.accept(io).into_fallible();
        let timeout = self.handshake_timeout;
        self.handshakes.spawn(async move {
            match tokio::time::timeout(timeout, accept).await {
                Ok(Ok(stream)) => Some(Handshaken {
                    stream,
                    addr,
                    _handshake: handshake,
                }),
                Ok(Err((error, io))) => {
                    tracing::debug!(peer = ?addr, %error, "TLS handshake failed");
                    linger(io).await;
                    None
                }
                Err(_) => {
                    tracing::debug!(peer = ?addr, ?timeout, "TLS handshake timed out");
                    None
                }
            }
        });
    }
}

/// Offers `h2` and `http/1.1` when `config` offers no ALPN protocol.
fn with_default_alpn(config: Arc<ServerConfig>) -> Arc<ServerConfig> {
    if !config.alpn_protocols.is_empty() {
        return config;
    }
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Closes a connection whose handshake failed without resetting it: sends
/// end of stream (after any alert), then discards what the client still
/// sends for a moment, so no unread data turns the close into a reset.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    let _ = io.shutdown().await;
    let mut discard = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(1..) = io.read(&mut discard).await {}
    })
    .await;
}

impl<L: DrainableListener + fmt::Debug> fmt::Debug for TlsAccept<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAccept")
            .field("listener", &self.listener)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

/// A handshake's place in the count [`Watch::shutdown_signal`] waits for.
struct Handshake {
    inner: Arc<Inner>,
}

impl Handshake {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.handshake_started();
        Self {
            inner: inner.clone(),
        }
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.inner.handshake_finished();
    }
}

pin_project! {
    /// A TLS connection as [`TlsAccept`] hands it to the server: the stream,
    /// which counts as awaiting its first byte until the server reads
    /// decrypted application data from it, and whose first request head is
    /// followed in that data.
    ///
    /// The rustls session is behind [`get_ref`](Self::get_ref):
    ///
    /// ```
    /// use tower_drain::TlsIo;
    ///
    /// fn alpn_and_sni<I>(io: &TlsIo<I>) -> (Option<&[u8]>, Option<&str>) {
    ///     let (_io, session) = io.get_ref().get_ref();
    ///     (session.alpn_protocol(), session.server_name())
    /// }
    /// ```
    pub struct TlsIo<I> {
        #[pin]
        stream: TlsStream<TrackedIo<I>>,
        requests: Requests,
    }
}

impl<I> TlsIo<I> {
    fn new(stream: TlsStream<TrackedIo<I>>, inner: &Arc<Inner>) -> Self {
        let slot = stream.get_ref().0.slot().clone();
        Self {
            stream,
            requests: Requests::new(inner, slot),
        }
    }

    /// The TLS stream: the connection and the rustls session, for the
    /// negotiated ALPN protocol, the SNI name or client certificates.
    pub fn get_ref(&self) -> &TlsStream<TrackedIo<I>> {
        &self.stream
    }
}

impl<I: fmt::Debug> fmt::Debug for TlsIo<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIo")
            .field("io", self.stream.get_ref().0)
            .finish_non_exhaustive()
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let stream = this.stream;
        this.requests
            .poll_read(cx, buf, |cx, buf| stream.poll_read(cx, buf))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
