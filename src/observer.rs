//! What observes a drain without controlling it: an [`Observer`] tells
//! handlers, long-lived responses and readiness checks where the drain stands,
//! and cannot trigger or force it. The [`Watch`] hands them out.
//!
//! [`Watch`]: crate::Watch

use std::{fmt, sync::Arc};

use crate::{
    future::Draining,
    watch::{Inner, Phase},
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
    inner: Arc<Inner>,
}

impl Observer {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Where the drain stands.
    pub fn phase(&self) -> Phase {
        self.inner.phase()
    }

    /// `true` until the trigger, and through a restart's drain
    /// ([`DrainKind::Restart`](crate::DrainKind::Restart)): the answer a
    /// readiness check wants.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// `true` once the drain proper has started (after the lame duck period,
    /// if any), and after it has ended.
    pub fn is_draining(&self) -> bool {
        self.inner.is_draining()
    }

    /// Resolves once the drain has started (at once if it has): the moment
    /// for a long-lived response to end itself.
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
