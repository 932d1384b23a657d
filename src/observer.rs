//! What observes a drain without controlling it: an [`Observer`] tells
//! handlers, long-lived responses and readiness checks where the drain stands,
//! and cannot trigger or force it. The [`Watch`] hands them out, and derefs
//! to its own: these read methods are the one home of what both answer.
//!
//! [`Watch`]: crate::Watch

use std::{fmt, sync::Arc};

use crate::{
    future::Draining,
    state::{Inner, Phase},
};

/// A read-only view of a drain: its phase, and a future that resolves when
/// it starts. Cloning it is one reference-count increment.
///
/// ```
/// use tower_drain::Watch;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let watch = Watch::new();
/// let observer = watch.observer();
/// let draining = tokio::spawn(observer.draining());
/// assert!(observer.is_ready());
///
/// watch.trigger();
/// draining.await.unwrap();
/// assert!(!observer.is_ready() && observer.is_draining());
/// # }
/// ```
#[derive(Clone)]
pub struct Observer {
    /// The drain's shared state, which every part of the crate reports to
    /// (through the [`Watch`](crate::Watch) that derefs to this).
    pub(crate) inner: Arc<Inner>,
}

impl Observer {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Where the drain stands: the current phase.
    pub fn phase(&self) -> Phase {
        self.inner.phase()
    }

    /// `true` until the trigger, and through a restart's drain
    /// ([`DrainKind::Restart`](crate::DrainKind::Restart)): the answer a
    /// readiness check wants. [`Readiness`](crate::Readiness) serves it.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// `true` once the drain proper has started (after the
    /// [`lame_duck`](crate::WatchBuilder::lame_duck) period, if any),
    /// including once it has ended. For readiness, use
    /// [`is_ready`](Self::is_ready), which turns at the trigger.
    pub fn is_draining(&self) -> bool {
        self.inner.is_draining()
    }

    /// Resolves once the drain has started (at once if it has): at the
    /// trigger, or at the end of the
    /// [`lame_duck`](crate::WatchBuilder::lame_duck) period; the moment for a
    /// long-lived response to end itself.
    pub fn draining(&self) -> Draining {
        Draining::new(self.inner.clone())
    }

    /// Time left until the deadline, once triggered.
    pub(crate) fn until_deadline(&self) -> Option<std::time::Duration> {
        self.inner.until_deadline()
    }
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("phase", &self.phase())
            .finish()
    }
}
