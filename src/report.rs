//! What a finished drain did: the counts and timings of [`DrainReport`].

use std::{fmt, time::Duration};

/// What happened during a drain, available from [`Watch::drained`] and
/// [`Watch::report`] once it has ended.
///
/// [`Watch::drained`]: crate::Watch::drained
/// [`Watch::report`]: crate::Watch::report
///
/// Its `Display` is one line for a log: how the drain ended and how long it
/// took, then every counter that is not zero. Durations are rounded to three
/// significant digits (`2.51ms`, `28.7µs`, `5.00s`). For example:
///
/// ```text
/// shutdown drained in 212ms (listeners 2.48ms, connections 209ms): 3 connections accepted from the queue, 4 requests completed, 1 keep-alive connection retired by a response
/// shutdown drained in 2.51ms (listeners 2.48ms, connections 28.7µs): no connection or request counted
/// shutdown forced by the deadline after 30.0s (listeners 2.48ms, connections 30.0s): 1 request completed, 1 request aborted, 1 connection forced
/// restart drained in 276µs (listeners 239µs, connections 36.8µs): 1 listener left to another process; requests not counted (no DrainLayer)
/// ```
///
/// Requests are counted only by a [`DrainLayer`](crate::DrainLayer): without
/// one, the line ends with "requests not counted (no DrainLayer)".
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let watch = tower_drain::Watch::new();
/// watch.trigger();
/// let report = watch.drained().await;
/// println!("{report}"); // shutdown drained in 52.1µs (listeners 12.0µs, connections 40.1µs): ...
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
    /// Requests that ended with their response after the trigger. Counted
    /// by a [`DrainLayer`](crate::DrainLayer): zero without one. Where a
    /// request ends is where [`Watch::requests`](crate::Watch::requests)
    /// stops counting it: through `Router::layer` (or any other service)
    /// when its response body ended; around a whole router
    /// (`DrainLayer::around_router`, feature `axum`) when
    /// its response head was ready.
    pub requests_completed: usize,
    /// Requests that ended after the trigger without their whole response:
    /// the handler's future or the response body was dropped (the client
    /// went away, or the drain was forced), or the service or the body
    /// failed. Counted by a [`DrainLayer`](crate::DrainLayer): zero without
    /// one.
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
    /// Whether a [`DrainLayer`](crate::DrainLayer) wrapped a service of this
    /// `Watch`, so that `requests_completed` and `requests_aborted` mean
    /// something; the `Display` says "requests not counted" otherwise.
    pub(crate) requests_counted: bool,
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

impl ForceCause {
    /// What forced the drain, after "forced" in the report.
    fn by(self) -> &'static str {
        match self {
            ForceCause::Deadline => "by the deadline",
            ForceCause::SecondTrigger => "by a second trigger",
            ForceCause::Force => "by Watch::force",
        }
    }
}

/// One line: `{kind} drained in {total}` (or `{kind} forced by {cause} after
/// {total}`), the time each phase took, then every counter that is not zero
/// (see the examples on [`DrainReport`]).
impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = Rounded(self.total());
        match self.forced {
            None => write!(f, "{} drained in {total}", self.kind)?,
            Some(cause) => write!(f, "{} forced {} after {total}", self.kind, cause.by())?,
        }
        f.write_str(" (")?;
        if !self.lame_duck.is_zero() {
            write!(f, "lame duck {}, ", Rounded(self.lame_duck))?;
        }
        write!(
            f,
            "listeners {}, connections {}): ",
            Rounded(self.closing_listeners),
            Rounded(self.closing_connections),
        )?;
        // (count, singular, plural, what happened to them)
        let counters = [
            (
                self.accepted_from_queue,
                "connection",
                "connections",
                "accepted from the queue",
            ),
            (
                self.reset_in_queue,
                "connection",
                "connections",
                "reset in the queue",
            ),
            (
                self.listeners_shared,
                "listener",
                "listeners",
                "left to another process",
            ),
            (self.requests_completed, "request", "requests", "completed"),
            (self.requests_aborted, "request", "requests", "aborted"),
            (
                self.heads_cut_off,
                "connection",
                "connections",
                "with an incomplete request head closed",
            ),
            (
                self.connections_retired,
                "keep-alive connection",
                "keep-alive connections",
                "retired by a response",
            ),
            (
                self.connections_closed_between_requests,
                "connection",
                "connections",
                "closed between requests",
            ),
            (
                self.bodies_cut_off,
                "request body",
                "request bodies",
                "cut off",
            ),
            (
                self.lingers_cut_off,
                "lingering close",
                "lingering closes",
                "cut off",
            ),
            (
                self.connections_forced,
                "connection",
                "connections",
                "forced",
            ),
        ];
        let mut separator = "";
        for (count, one, many, what) in counters {
            if count > 0 {
                let noun = if count == 1 { one } else { many };
                write!(f, "{separator}{count} {noun} {what}")?;
                separator = ", ";
            }
        }
        match (separator.is_empty(), self.requests_counted) {
            (true, true) => f.write_str("no connection or request counted"),
            (true, false) => {
                f.write_str("no connection counted; requests not counted (no DrainLayer)")
            }
            (false, true) => Ok(()),
            (false, false) => f.write_str("; requests not counted (no DrainLayer)"),
        }
    }
}

/// A duration for people: rounded (half up) to three significant digits,
/// in the largest unit of `ns`, `µs`, `ms` and `s` that keeps a whole part:
/// `512ns`, `28.7µs`, `2.51ms`, `1.00ms` (for 999.6 µs), `5.00s`, `1230s`.
/// The report and the log fields print every duration so.
pub(crate) struct Rounded(pub(crate) Duration);

impl fmt::Display for Rounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = |n: u128| n.checked_ilog10().map_or(1, |log| log + 1);
        let nanos = self.0.as_nanos();
        let step = 10u128.pow(digits(nanos).saturating_sub(3));
        let nanos = (nanos + step / 2) / step * step;
        let (scale, unit): (u128, _) = if nanos < 1_000 {
            return write!(f, "{nanos}ns");
        } else if nanos < 1_000_000 {
            (1_000, "µs")
        } else if nanos < 1_000_000_000 {
            (1_000_000, "ms")
        } else {
            (1_000_000_000, "s")
        };
        let whole = nanos / scale;
        match 3u32.saturating_sub(digits(whole)) {
            0 => write!(f, "{whole}{unit}"),
            decimals => {
                let fraction = nanos % scale / (scale / 10u128.pow(decimals));
                write!(
                    f,
                    "{whole}.{fraction:0width$}{unit}",
                    width = decimals as usize
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clean shutdown with nothing counted, requests counted by a layer.
    fn report() -> DrainReport {
        DrainReport {
            kind: DrainKind::Shutdown,
            accepted_from_queue: 0,
            reset_in_queue: 0,
            heads_cut_off: 0,
            connections_retired: 0,
            connections_closed_between_requests: 0,
            listeners_shared: 0,
            requests_completed: 0,
            requests_aborted: 0,
            connections_forced: 0,
            bodies_cut_off: 0,
            lingers_cut_off: 0,
            forced: None,
            lame_duck: Duration::ZERO,
            closing_listeners: Duration::from_nanos(2_482_664),
            closing_connections: Duration::from_nanos(28_733),
            requests_counted: true,
        }
    }

    fn rounded(nanos: u64) -> String {
        Rounded(Duration::from_nanos(nanos)).to_string()
    }

    #[test]
    fn durations_are_rounded_to_three_significant_digits() {
        assert_eq!(rounded(0), "0ns");
        assert_eq!(rounded(7), "7ns");
        assert_eq!(rounded(999), "999ns");
        assert_eq!(rounded(1_000), "1.00µs");
        assert_eq!(rounded(28_733), "28.7µs");
        assert_eq!(rounded(28_750), "28.8µs"); // half up
        assert_eq!(rounded(512_400), "512µs");
        assert_eq!(rounded(999_499), "999µs");
        assert_eq!(rounded(999_500), "1.00ms"); // rounding up changes the unit
        assert_eq!(rounded(2_511_397), "2.51ms");
        assert_eq!(rounded(40_060_000), "40.1ms");
        assert_eq!(rounded(999_999_999), "1.00s");
        assert_eq!(rounded(2_115_000_000), "2.12s");
        assert_eq!(rounded(30_004_000_000), "30.0s");
        assert_eq!(rounded(1_234_000_000_000), "1230s");
        assert_eq!(Rounded(Duration::MAX).to_string(), "18400000000000000000s");
    }

    #[test]
    fn zero_counters_are_omitted() {
        assert_eq!(
            report().to_string(),
            "shutdown drained in 2.51ms (listeners 2.48ms, connections 28.7µs): \
             no connection or request counted"
        );
        let report = DrainReport {
            requests_completed: 4,
            connections_retired: 2,
            ..report()
        };
        assert_eq!(
            report.to_string(),
            "shutdown drained in 2.51ms (listeners 2.48ms, connections 28.7µs): \
             4 requests completed, 2 keep-alive connections retired by a response"
        );
    }

    #[test]
    fn counts_agree_in_number() {
        let each = |count| DrainReport {
            accepted_from_queue: count,
            reset_in_queue: count,
            listeners_shared: count,
            requests_completed: count,
            requests_aborted: count,
            heads_cut_off: count,
            connections_retired: count,
            connections_closed_between_requests: count,
            bodies_cut_off: count,
            lingers_cut_off: count,
            connections_forced: count,
            ..report()
        };
        assert_eq!(
            each(1).to_string(),
            "shutdown drained in 2.51ms (listeners 2.48ms, connections 28.7µs): \
             1 connection accepted from the queue, 1 connection reset in the queue, \
             1 listener left to another process, 1 request completed, 1 request aborted, \
             1 connection with an incomplete request head closed, \
             1 keep-alive connection retired by a response, 1 connection closed between requests, \
             1 request body cut off, 1 lingering close cut off, 1 connection forced"
        );
        assert_eq!(
            each(2).to_string(),
            "shutdown drained in 2.51ms (listeners 2.48ms, connections 28.7µs): \
             2 connections accepted from the queue, 2 connections reset in the queue, \
             2 listeners left to another process, 2 requests completed, 2 requests aborted, \
             2 connections with an incomplete request head closed, \
             2 keep-alive connections retired by a response, 2 connections closed between requests, \
             2 request bodies cut off, 2 lingering closes cut off, 2 connections forced"
        );
    }

    #[test]
    fn a_forced_drain_says_so_and_why() {
        let forced = |cause| DrainReport {
            forced: Some(cause),
            lame_duck: Duration::from_millis(1_000),
            closing_connections: Duration::from_nanos(3_997_517_336),
            requests_completed: 1,
            requests_aborted: 1,
            connections_forced: 1,
            ..report()
        };
        assert_eq!(
            forced(ForceCause::Deadline).to_string(),
            "shutdown forced by the deadline after 5.00s \
             (lame duck 1.00s, listeners 2.48ms, connections 4.00s): \
             1 request completed, 1 request aborted, 1 connection forced"
        );
        let by_signal = forced(ForceCause::SecondTrigger).to_string();
        assert!(
            by_signal.starts_with("shutdown forced by a second trigger after 5.00s ("),
            "{by_signal}"
        );
        let by_call = forced(ForceCause::Force).to_string();
        assert!(
            by_call.starts_with("shutdown forced by Watch::force after 5.00s ("),
            "{by_call}"
        );
        assert!(!report().to_string().contains("forced"));
    }

    #[test]
    fn requests_without_a_layer_are_not_counted() {
        let restart = DrainReport {
            kind: DrainKind::Restart,
            listeners_shared: 1,
            requests_counted: false,
            ..report()
        };
        assert_eq!(
            restart.to_string(),
            "restart drained in 2.51ms (listeners 2.48ms, connections 28.7µs): \
             1 listener left to another process; requests not counted (no DrainLayer)"
        );
        let nothing = DrainReport {
            requests_counted: false,
            ..report()
        };
        assert_eq!(
            nothing.to_string(),
            "shutdown drained in 2.51ms (listeners 2.48ms, connections 28.7µs): \
             no connection counted; requests not counted (no DrainLayer)"
        );
    }
}
