//! The drain's phases, in the order they are taken: what a [`Watch`] and an
//! [`Observer`] report, stored in the shared state as one atomic byte.
//!
//! [`Watch`]: crate::Watch
//! [`Observer`]: crate::Observer

/// Where a drain stands. Phases only move forward:
/// `Running → (LameDuck →) Draining → Drained`, or to `Forced` from
/// `LameDuck` or `Draining`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Serving normally; nothing has triggered the drain.
    Running,
    /// Triggered, during the [`lame_duck`](crate::WatchBuilder::lame_duck) period:
    /// readiness reports unhealthy so load balancers stop routing here, but
    /// listeners keep accepting and requests are served as before, HTTP/1
    /// responses with `Connection: close`.
    LameDuck,
    /// Triggered, and the lame duck period (if any) over: listeners drain their accept queues and close, in-flight
    /// requests finish, HTTP/1 responses carry `Connection: close`.
    Draining,
    /// Every listener, connection and request is gone; the drain ended cleanly.
    Drained,
    /// The deadline passed or a second trigger came: every connection still
    /// open was told to close at once.
    Forced,
}

impl Phase {
    #[inline]
    pub(crate) fn from_u8(value: u8) -> Self {
        match value {
            0 => Phase::Running,
            1 => Phase::LameDuck,
            2 => Phase::Draining,
            3 => Phase::Drained,
            _ => Phase::Forced,
        }
    }
}
