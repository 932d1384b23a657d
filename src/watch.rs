//! The public handle to a drain: a [`Watch`] triggers and forces it and
//! hands out the futures in [`future`](crate::future) that wait for each of
//! its steps; everything that only reads the drain it shares with an
//! [`Observer`], to which it derefs.
//!
//! Every other part of the crate reports to a `Watch`: [`GracefulAccept`]
//! counts listeners and connections, [`DrainLayer`] counts requests, and the
//! server waits on [`Watch::shutdown_signal`]. A `Watch` is a handle to the
//! shared state; cloning it is one reference-count increment.
//!
//! [`GracefulAccept`]: crate::GracefulAccept
//! [`DrainLayer`]: crate::DrainLayer

use std::{fmt, ops::Deref, sync::Arc, time::Duration};

use tokio::runtime::Handle;

use crate::{
    future::{Drained, ListenersClosed, ShutdownSignal},
    observer::Observer,
    report::{DrainReport, ForceCause},
    state::{Config, Inner, Phase},
    timers,
};

/// The shared drain coordinator.
///
/// A `Watch` starts in [`Phase::Running`]. [`trigger`](Watch::trigger) starts
/// the drain; a second trigger, [`force`](Watch::force) or the
/// [`grace`](crate::WatchBuilder::grace) deadline forces it. Listeners wrapped in
/// [`GracefulAccept`](crate::GracefulAccept) and services wrapped in
/// [`DrainLayer`](crate::DrainLayer) report to it; its futures wait for each
/// step of the drain without polling.
///
/// # Example
///
/// ```
/// use tower_drain::{Phase, Watch};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let watch = Watch::new();
/// let drained = tokio::spawn(watch.drained());
///
/// watch.trigger();
/// let report = drained.await.unwrap();
/// assert_eq!(watch.phase(), Phase::Drained);
/// assert_eq!(report.connections_forced, 0);
/// # }
/// ```
///
/// Everything that only reads the drain ([`phase`](Observer::phase),
/// [`is_ready`](Observer::is_ready), [`is_draining`](Observer::is_draining),
/// [`draining`](Observer::draining)) is the [`Observer`]'s, which a `Watch`
/// derefs to: `watch.phase()` is `watch.observer().phase()`.
#[derive(Clone)]
pub struct Watch {
    observer: Observer,
}

impl Deref for Watch {
    type Target = Observer;

    fn deref(&self) -> &Observer {
        &self.observer
    }
}

impl Default for Watch {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("phase", &self.phase())
            .field("listeners", &self.listeners())
            .field("connections", &self.connections())
            .field("requests", &self.requests())
            .finish()
    }
}

impl Watch {
    /// A `Watch` with the default [`grace`](crate::WatchBuilder::grace) (30 s) and
    /// [`first_byte_grace`](crate::WatchBuilder::first_byte_grace) (1 s).
    pub fn new() -> Self {
        Self::with_config(Config::default())
    }

    pub(crate) fn with_config(config: Config) -> Self {
        Watch {
            observer: Observer::new(Arc::new(Inner::new(config))),
        }
    }

    /// Starts the drain; a second call forces it (see [`force`](Watch::force)).
    ///
    /// The first trigger moves to [`Phase::LameDuck`] if a
    /// [`lame_duck`](crate::WatchBuilder::lame_duck) period is configured, else to
    /// [`Phase::Draining`], and arms the deadline
    /// ([`grace`](crate::WatchBuilder::grace)) on the current tokio runtime, or the
    /// one the `Watch` was created on. Calls after the drain ended do nothing.
    pub fn trigger(&self) {
        let runtime = self.inner.runtime();
        match self.inner.trigger(runtime.is_some()) {
            Ok(first) => self.start(first, runtime),
            Err(Phase::LameDuck | Phase::Draining) => self.inner.force(ForceCause::SecondTrigger),
            Err(_) => {}
        }
    }

    /// Forces the drain now: every connection that is still open fails its
    /// next read or write, so the server drops it. Starts the drain first if
    /// it has not started. Does nothing once the drain has ended.
    pub fn force(&self) {
        // Untimed: straight to `Draining`, whatever the lame duck period.
        if let Ok(first) = self.inner.trigger(false) {
            self.inner.record_trigger(first);
        }
        self.inner.force(ForceCause::Force);
    }

    /// The number of tracked connections that are open, including those
    /// still in a handshake.
    pub fn connections(&self) -> usize {
        self.inner.connections()
    }

    /// The number of requests in flight through a [`DrainLayer`](crate::DrainLayer).
    ///
    /// Where a request ends depends on where the layer stands: through
    /// `Router::layer` (or any other service) it counts until its response
    /// body has finished or been dropped; around a whole router
    /// (`DrainLayer::around_router`, feature `axum`) it
    /// counts until its response head is ready, and the connection, which
    /// the drain tracks, keeps the drain open until the body is written.
    pub fn requests(&self) -> usize {
        self.inner.requests()
    }

    /// The number of [`GracefulAccept`](crate::GracefulAccept) listeners whose
    /// socket is still open.
    pub fn listeners(&self) -> usize {
        self.inner.listeners()
    }

    /// The hard deadline configured with [`WatchBuilder::grace`](crate::WatchBuilder::grace).
    pub fn grace(&self) -> Duration {
        self.inner.config().grace
    }

    /// The period configured with [`WatchBuilder::lame_duck`](crate::WatchBuilder::lame_duck).
    pub fn lame_duck(&self) -> Duration {
        self.inner.config().lame_duck
    }

    /// The report of the drain, once it has ended (cleanly or forced).
    pub fn report(&self) -> Option<DrainReport> {
        self.inner.report()
    }

    /// A read-only view of the drain, for handlers, long-lived responses and
    /// readiness checks: it cannot trigger or force it.
    pub fn observer(&self) -> Observer {
        self.observer.clone()
    }

    /// Resolves once the drain has started and every listener has closed its
    /// socket: from then on, new connection attempts are refused.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: see [`future`](crate::future#cancel-safety).
    pub fn listeners_closed(&self) -> ListenersClosed {
        ListenersClosed::new(self.inner.clone())
    }

    /// Resolves with the [`DrainReport`] once the drain has ended: it was
    /// triggered, and every listener, tracked connection and request is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: see [`future`](crate::future#cancel-safety).
    pub fn drained(&self) -> Drained {
        Drained::new(self.inner.clone())
    }

    /// The future to hand to `axum::serve(..).with_graceful_shutdown(..)`.
    ///
    /// When it resolves, axum drops its listener and asks every connection to
    /// finish gracefully, and hyper closes at once any connection that has not
    /// read a byte. So it resolves only when that is safe: the drain has
    /// started, every [`GracefulAccept`](crate::GracefulAccept) has drained
    /// its accept queue and closed its socket, every TLS handshake in progress
    /// has ended, and every connection has read its first byte or been silent
    /// for the
    /// [`first_byte_grace`](crate::WatchBuilder::first_byte_grace). It resolves at
    /// once if the drain is forced. The [crate example](crate) shows it in
    /// use.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: see [`future`](crate::future#cancel-safety).
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        ShutdownSignal::new(self.inner.clone())
    }

    fn start(&self, to: Phase, runtime: Option<Handle>) {
        self.inner.record_trigger(to);
        match runtime {
            Some(runtime) => timers::arm(self.inner.clone(), &runtime),
            None => tracing::warn!(
                "no tokio runtime to time the drain on; its deadline is not enforced"
            ),
        }
        self.inner.changed();
    }
}
