//! The futures that wait for each step of a drain: [`Draining`],
//! [`ListenersClosed`], [`ShutdownSignal`] and [`Drained`], which resolve in
//! that order (a forced drain lets `ShutdownSignal` go first). A [`Watch`]
//! hands them out; none of them polls.
//!
//! ```
//! use tower_drain::Watch;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let watch = Watch::new();
//! let drained = tokio::spawn(watch.drained());
//!
//! watch.trigger();
//! watch.draining().await;
//! watch.listeners_closed().await;
//! watch.shutdown_signal().await;
//! let report = drained.await.unwrap();
//! assert!(report.forced.is_none());
//! # }
//! ```
//!
//! # Cancel safety
//!
//! Each is cancel safe: it holds nothing but its registration for the next
//! change (and `ShutdownSignal` a timer), and a new one sees whatever
//! happened meanwhile. Building one needs no runtime; polling
//! `ShutdownSignal` needs tokio's timer.
//!
//! [`Watch`]: crate::Watch

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::{
    sync::futures::OwnedNotified,
    time::{Instant, Sleep},
};

use crate::{report::DrainReport, state::Inner};

pin_project! {
    /// A registration for the next change of a drain, renewed each time it
    /// fires: what every future here, and `GracefulAccept`, waits with.
    pub(crate) struct Changes {
        inner: Arc<Inner>,
        #[pin]
        notified: OwnedNotified,
    }
}

impl Changes {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        let notified = inner.notified();
        Self { inner, notified }
    }

    /// Resolves with what `ready` returns once it returns `Some`.
    ///
    /// The registration is enabled before `ready` is asked: `notify_waiters`
    /// wakes only registered waiters, and every change that can make a
    /// condition true notifies after its store, so a change right after the
    /// check still wakes this task.
    pub(crate) fn poll_until<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut ready: impl FnMut(&Inner, &mut Context<'_>) -> Option<T>,
    ) -> Poll<T> {
        let mut this = self.project();
        loop {
            this.notified.as_mut().enable();
            if let Some(output) = ready(this.inner, cx) {
                return Poll::Ready(output);
            }
            ready!(this.notified.as_mut().poll(cx));
            this.notified.set(this.inner.notified());
        }
    }
}

/// Defines a named future that resolves with what `$ready` returns once it
/// returns `Some`.
macro_rules! wait_for {
    ($(#[$doc:meta])* $name:ident -> $output:ty, $ready:expr) => {
        pin_project! {
            $(#[$doc])*
            #[must_use = "futures do nothing unless polled"]
            pub struct $name {
                #[pin]
                changes: Changes,
            }
        }

        impl $name {
            pub(crate) fn new(inner: Arc<Inner>) -> Self {
                Self {
                    changes: Changes::new(inner),
                }
            }
        }

        impl Future for $name {
            type Output = $output;

            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<$output> {
                let ready: fn(&Inner) -> Option<$output> = $ready;
                self.project().changes.poll_until(cx, |inner, _| ready(inner))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }
    };
}

wait_for!(
    /// Future returned by [`Watch::draining`](crate::Watch::draining) and
    /// [`Observer::draining`](crate::Observer::draining).
    Draining -> (),
    |inner| inner.is_draining().then_some(())
);

wait_for!(
    /// Future returned by [`Watch::listeners_closed`](crate::Watch::listeners_closed).
    ListenersClosed -> (),
    |inner| inner.listeners_closed().then_some(())
);

wait_for!(
    /// Future returned by [`Watch::drained`](crate::Watch::drained).
    Drained -> DrainReport,
    Inner::report
);

pin_project! {
    /// Future returned by [`Watch::shutdown_signal`](crate::Watch::shutdown_signal).
    //
    // `grace` wakes the task when what holds it back may have run out (the
    // first-byte grace, a keep-alive connection's idle time, the request-head
    // grace). It is created on first need, so that building the future needs
    // no runtime.
    #[must_use = "futures do nothing unless polled"]
    pub struct ShutdownSignal {
        #[pin]
        changes: Changes,
        #[pin]
        grace: Option<Sleep>,
    }
}

impl ShutdownSignal {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self {
            changes: Changes::new(inner),
            grace: None,
        }
    }
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let mut changes = this.changes;
        let mut grace = this.grace;
        ready!(changes.as_mut().poll_until(cx, |inner, cx| {
            if !inner.listeners_done() {
                return None;
            }
            let Some(until) = inner.shutdown_hold() else {
                return Some(());
            };
            (Instant::now() >= until || hold_over(grace.as_mut(), until, cx)).then_some(())
        }));
        tracing::debug!(
            connections = changes.inner.connections(),
            requests = changes.inner.requests(),
            "listeners drained; the server may stop accepting and finish its connections",
        );
        Poll::Ready(())
    }
}

/// Arms `grace` to fire at `until` (which moves with the newest accept and
/// with keep-alive connections' activity) and polls it.
fn hold_over(mut grace: Pin<&mut Option<Sleep>>, until: Instant, cx: &mut Context<'_>) -> bool {
    match grace.as_mut().as_pin_mut() {
        Some(sleep) if sleep.deadline() == until => {}
        Some(sleep) => sleep.reset(until),
        None => grace.set(Some(tokio::time::sleep_until(until))),
    }
    grace
        .as_pin_mut()
        .is_some_and(|sleep| sleep.poll(cx).is_ready())
}

impl fmt::Debug for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownSignal").finish_non_exhaustive()
    }
}
