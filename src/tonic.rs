//! The tonic hook-up (feature `tonic`): [`GracefulAccept`] is a stream of
//! connections, which tonic's `serve_with_incoming_shutdown` takes as its
//! incoming stream, and [`TrackedIo`] passes on the wrapped connection's
//! `Connected` information (the peer address for TCP).
//!
//! tonic serves the connections like hyper does for axum: when
//! [`Watch::shutdown_signal`](crate::Watch::shutdown_signal) resolves it
//! stops polling the stream, sends each HTTP/2 connection a GOAWAY, and
//! waits for the calls in flight.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use ::tonic::transport::server::Connected;
use futures_util::Stream;

use crate::{DrainableListener, GracefulAccept, TrackedIo};

/// With the `tonic` feature: the accepted connections, as tonic's
/// `serve_with_incoming_shutdown` takes them.
///
/// Each item is [`poll_accept`](GracefulAccept::poll_accept)'s connection
/// without its address (tonic reads it through `Connected`). It never yields
/// an error (accept errors are skipped or retried) and never ends: once the
/// drain has closed the listener it stays pending, and tonic stops polling
/// it when the shutdown signal resolves.
///
/// Serving the standard health service (`tonic-health`, a dependency of the
/// repository's `integrations/` workspace member, where this fragment is compiled
/// whole as `examples/grpc.rs`):
///
/// ```ignore
/// use tokio::net::TcpListener;
/// use tonic::transport::Server;
/// use tower_drain::{DrainLayer, GracefulAccept, Watch};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let watch = Watch::new();
/// let listener = GracefulAccept::new(TcpListener::bind("127.0.0.1:0").await?, watch.clone());
/// let (_reporter, health) = tonic_health::server::health_reporter();
/// watch.trigger_on_signals()?;
///
/// Server::builder()
///     .layer(DrainLayer::new(watch.clone()))
///     .add_service(health)
///     .serve_with_incoming_shutdown(listener, watch.shutdown_signal())
///     .await?;
/// println!("{}", watch.drained().await);
/// # Ok(())
/// # }
/// ```
impl<L> Stream for GracefulAccept<L>
where
    L: DrainableListener,
    Self: Unpin,
{
    type Item = Result<TrackedIo<L::Io>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .poll_accept(cx)
            .map(|(io, _addr)| Some(Ok(io)))
    }
}

/// With the `tonic` feature: the wrapped connection's information, which
/// tonic puts in each request's extensions (`TcpConnectInfo` for TCP).
impl<I: Connected> Connected for TrackedIo<I> {
    type ConnectInfo = I::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}
