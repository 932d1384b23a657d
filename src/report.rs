//! What a finished drain did: the counts and timings of [`DrainReport`].

use std::{fmt, time::Duration};

/// What happened during a drain, available from [`Watch::drained`] and
/// [`Watch::report`] once it has ended.
///
/// [`Watch::drained`]: crate::Watch::drained
/// [`Watch::report`]: crate::Watch::report
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let watch = tower_drain::Watch::new();
/// watch.trigger();
/// let report = watch.drained().await;
/// println!("{report}"); // drained in 52µs (listeners 12µs, connections 40µs): ...
/// if !report.is_clean() {
///     eprintln!("lost {} queued connections, forced: {:?}", report.reset_in_queue, report.forced);
///     std::process::exit(1);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Whether the service lived on in another process (a restart) or
    /// stopped here (a shutdown).
    pub kind: DrainKind,
    /// Connections accepted from the kernel's accept queues after the trigger,
    /// which closing the listeners straight away would have reset.
    pub accepted_from_queue: usize,
    /// Connections still waiting in an accept queue when its listener
    /// closed, which the kernel reset: the drain could not accept them in
    /// time (out of file descriptors, say) or they arrived in the instant of
    /// the close. Counted where the kernel says (TCP on Linux). Also counts
    /// connections the drain took from the queue that the server never took
    /// from the [`GracefulAccept`](crate::GracefulAccept) before dropping it.
    pub reset_in_queue: usize,
    /// Connections closed because a request head was still incomplete when
    /// the [`request_head_grace`](crate::WatchBuilder::request_head_grace)
    /// ran out: that request had not started.
    pub heads_cut_off: usize,
    /// HTTP/1 connections retired by a response: the drain added
    /// `Connection: close` to their next request head, so the server said
    /// `Connection: close` on the response and closed the connection after
    /// it (see [`keep_alive_idle`](crate::WatchBuilder::keep_alive_idle)).
    pub connections_retired: usize,
    /// HTTP/1 connections that closed between requests after the trigger,
    /// with every request they had sent read, none of them marked by the
    /// drain: idle keep-alive connections closed once idle for
    /// [`keep_alive_idle`](crate::WatchBuilder::keep_alive_idle), connections
    /// closed after a response that hyper marked `Connection: close` at the
    /// shutdown signal, and connections their client closed.
    pub connections_closed_between_requests: usize,
    /// Listeners whose socket another process also held (a successor, or a
    /// service manager): closed without draining, their queue left to it.
    pub listeners_shared: usize,
    /// Requests whose whole response was produced (their response body
    /// ended) after the trigger.
    pub requests_completed: usize,
    /// Requests that ended after the trigger without their whole response:
    /// the handler's future or the response body was dropped (the client
    /// went away, or the drain was forced), or the service or the body
    /// failed.
    pub requests_aborted: usize,
    /// Connections still open when the drain was forced, and so closed.
    pub connections_forced: usize,
    /// Of the connections forced, HTTP/1 connections (tracked by
    /// [`GracefulAccept`](crate::GracefulAccept)) whose request body was
    /// still arriving: requests cut off, never completed.
    pub bodies_cut_off: usize,
    /// Connections whose lingering close ran out of time while their client
    /// was still sending (see [`linger`](crate::WatchBuilder::linger)): the
    /// kernel answers what it sends next with a reset, which can cut off
    /// responses the client has not read yet.
    pub lingers_cut_off: usize,
    /// Why the drain was forced, or `None` if it ended cleanly.
    pub forced: Option<ForceCause>,
    /// From the trigger until the lame duck period ended (zero without one).
    pub lame_duck: Duration,
    /// From the start of the drain proper (the trigger, or the end of the
    /// lame duck period) until every listener had drained its queue and
    /// closed.
    pub closing_listeners: Duration,
    /// From the listeners closing until the last connection and request ended.
    pub closing_connections: Duration,
}

impl DrainReport {
    /// From the trigger until the drain ended: `lame_duck`,
    /// `closing_listeners` and `closing_connections`.
    pub fn total(&self) -> Duration {
        self.lame_duck + self.closing_listeners + self.closing_connections
    }

    /// The drain lost nothing it could see: it was not forced, no
    /// connection was reset in an accept queue, and no lingering close was
    /// cut off.
    pub fn is_clean(&self) -> bool {
        self.forced.is_none() && self.reset_in_queue == 0 && self.lingers_cut_off == 0
    }
}

/// What a drain was for, decided at the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DrainKind {
    /// The service stops here: readiness fails from the trigger on, and a
    /// [`lame_duck`](crate::WatchBuilder::lame_duck) period runs first.
    Shutdown,
    /// The service lives on in another process: at the trigger every
    /// listener was held by another process too (handed to a successor, or
    /// held by the service manager), or had a sibling in its `SO_REUSEPORT`
    /// group there (a socket bound by
    /// [`ListenersBuilder::reuse_port`](crate::restart::ListenersBuilder::reuse_port),
    /// found in Linux's `/proc/net/tcp`). Readiness stays healthy and the
    /// lame duck period is skipped: another process answers on the same
    /// address, so taking this one out of rotation would take the whole
    /// service out.
    Restart,
}

impl fmt::Display for DrainKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DrainKind::Shutdown => "shutdown",
            DrainKind::Restart => "restart",
        })
    }
}

/// Why a drain was forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForceCause {
    /// The [`grace`](crate::WatchBuilder::grace) ran out.
    Deadline,
    /// The drain was triggered a second time (a second signal).
    SecondTrigger,
    /// [`Watch::force`](crate::Watch::force) was called.
    Force,
}

impl fmt::Display for ForceCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForceCause::Deadline => "deadline",
            ForceCause::SecondTrigger => "second trigger",
            ForceCause::Force => "force()",
        })
    }
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} drained in {:?} ({}listeners {:?}, connections {:?}): {} accepted from the queue, {} reset in the queue, {} listeners left to another process, {} requests completed, {} aborted, {} connections with an incomplete request head closed, {} keep-alive connections retired by a response, {} closed between requests, {} request bodies cut off, {} lingering closes cut off, {} connections forced",
            self.kind,
            self.total(),
            if self.lame_duck.is_zero() {
                String::new()
            } else {
                format!("lame duck {:?}, ", self.lame_duck)
            },
            self.closing_listeners,
            self.closing_connections,
            self.accepted_from_queue,
            self.reset_in_queue,
            self.listeners_shared,
            self.requests_completed,
            self.requests_aborted,
            self.heads_cut_off,
            self.connections_retired,
            self.connections_closed_between_requests,
            self.bodies_cut_off,
            self.lingers_cut_off,
            self.connections_forced,
        )?;
        match self.forced {
            Some(cause) => write!(f, " ({cause})"),
            None => Ok(()),
        }
    }
}
