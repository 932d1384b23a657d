//! Configuring a [`Watch`]: the [`WatchBuilder`], and the [`ConfigError`]
//! that says why a configuration cannot drain.

use std::{fmt, time::Duration};

use crate::{state::Config, watch::Watch};

/// Configures and builds a [`Watch`].
///
/// ```
/// use std::time::Duration;
/// use tower_drain::Watch;
///
/// let watch = Watch::builder()
///     .grace(Duration::from_secs(10))
///     .lame_duck(Duration::from_secs(3))
///     .first_byte_grace(Duration::from_millis(500))
///     .build()?;
/// # Ok::<(), tower_drain::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct WatchBuilder {
    config: Config,
}

impl Watch {
    /// Configure a `Watch` before building it: see [`WatchBuilder`].
    pub fn builder() -> WatchBuilder {
        WatchBuilder::default()
    }
}

impl WatchBuilder {
    /// The hard deadline, counted from the trigger: whatever is still open
    /// then is forced closed. Default 30 s.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.config.grace = grace;
        self
    }

    /// How long the server goes on serving normally after the trigger while
    /// readiness already reports unhealthy, so that load balancers stop
    /// routing to it before it stops accepting. Default zero.
    ///
    /// Endpoint removal takes from under a second to many seconds to reach
    /// kube-proxy, ingress controllers and meshes; during that time they
    /// still send new connections. Through the period, [`Watch::is_ready`](crate::Observer::is_ready)
    /// is `false` (and [`Readiness`](crate::Readiness) answers 503), every
    /// listener keeps accepting, and HTTP/1 responses carry
    /// `Connection: close` so that keep-alive clients reconnect through the
    /// load balancer. Then the drain runs as usual. The
    /// [`grace`](WatchBuilder::grace) still counts from the trigger and must
    /// be longer; a second trigger during the period forces. A restart
    /// ([`DrainKind::Restart`](crate::DrainKind::Restart)) skips the period:
    /// another process serves the same sockets.
    pub fn lame_duck(mut self, period: Duration) -> Self {
        self.config.lame_duck = period;
        self
    }

    /// How long a newly accepted connection may stay silent before the drain
    /// stops protecting it. Default 1 s.
    ///
    /// hyper closes a connection that has not read a byte the moment the
    /// server starts its graceful shutdown, even when the request already
    /// waits in the kernel, and one whose protocol it has not yet told apart
    /// (bytes that could still be the start of the HTTP/2 preface, such as
    /// the `P` of `POST`). [`Watch::shutdown_signal`] therefore holds back
    /// until every connection has read enough to choose HTTP/1 or HTTP/2, or
    /// until this long after the last connection was accepted. During the
    /// drain, TLS connections that have not received a byte by then are
    /// closed: their handshake would otherwise hold the drain.
    pub fn first_byte_grace(mut self, grace: Duration) -> Self {
        self.config.first_byte_grace = grace;
        self
    }

    /// How long into the drain an HTTP/1 connection may take to deliver a
    /// request head it has started before the drain closes it. Default 2 s.
    ///
    /// A connection that has sent part of a request head (`GET / HTT`) and
    /// stalls would otherwise hold the drain until the deadline. No request
    /// of it has started, so closing it loses nothing, and it does not count
    /// as forced: [`DrainReport::heads_cut_off`](crate::DrainReport::heads_cut_off)
    /// counts it. Until then, [`Watch::shutdown_signal`] waits for heads in
    /// progress (hyper closes a keep-alive connection whose next head it has
    /// not read whole) and for keep-alive connections to go idle (see
    /// [`keep_alive_idle`](WatchBuilder::keep_alive_idle)). The grace runs
    /// from the start of the drain, or from the last accepted connection if
    /// that is later. A grace as long as the [`grace`](WatchBuilder::grace)
    /// switches the closing off, for a server behind
    /// [`GracefulAccept`](crate::GracefulAccept) whose protocol is not HTTP.
    pub fn request_head_grace(mut self, grace: Duration) -> Self {
        self.config.request_head_grace = grace;
        self
    }

    /// How long an HTTP/1 keep-alive connection between two requests must
    /// have been idle (nothing read or written) before the drain lets the
    /// server close it. Default 100 ms.
    ///
    /// HTTP/1 has one way to retire a connection without a race: say
    /// `Connection: close` on a response (RFC 9112 §9.6). From the trigger
    /// on, tower-drain adds `Connection: close` to the next request head of
    /// every HTTP/1 connection, so the server answers it with
    /// `Connection: close` and closes the connection after the response
    /// ([`DrainReport::connections_retired`](crate::DrainReport::connections_retired)).
    /// A connection that receives no further request is closed between
    /// requests when [`Watch::shutdown_signal`] resolves, which it does only
    /// once every such connection has been idle this long: a client that
    /// used the connection a moment ago may be about to send on it, while
    /// one that has left it idle (a proxy's pool) sees the close before it
    /// picks the connection again
    /// ([`DrainReport::connections_closed_between_requests`](crate::DrainReport::connections_closed_between_requests)).
    /// The wait ends with the
    /// [`request_head_grace`](WatchBuilder::request_head_grace) at the latest.
    pub fn keep_alive_idle(mut self, idle: Duration) -> Self {
        self.config.keep_alive_idle = idle;
        self
    }

    /// How long a connection the server closes may linger. Default 2 s.
    ///
    /// Closing a socket whose client has sent bytes the server has not read
    /// (requests pipelined behind the last one answered) makes the kernel
    /// reset it (`tcp_close`), and the reset makes the client's stack drop
    /// response bytes it has not read yet. So when the server shuts a
    /// [`TrackedIo`](crate::TrackedIo) down, the write side is shut first
    /// (the client gets every byte, then a FIN), and if the client had sent
    /// more (bytes waiting to be read, or requests pipelined behind the one
    /// the connection closes after), what it still sends is read and
    /// discarded until it closes too, for at most this long: nginx's
    /// `lingering_close`. A connection with nothing unread closes at once. A client still sending when the time
    /// runs out is counted in
    /// [`DrainReport::lingers_cut_off`](crate::DrainReport::lingers_cut_off)
    /// during a drain. A forced drain stops lingering at once.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
        self
    }

    /// Builds the [`Watch`], or says why the configuration cannot drain.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_drain::{ConfigError, Watch};
    ///
    /// let too_long = Watch::builder()
    ///     .lame_duck(Duration::from_secs(30))
    ///     .grace(Duration::from_secs(30))
    ///     .build();
    /// assert!(matches!(too_long, Err(ConfigError::LameDuckTooLong { .. })));
    /// ```
    pub fn build(self) -> Result<Watch, ConfigError> {
        if self.config.grace.is_zero() {
            return Err(ConfigError::ZeroGrace);
        }
        if !self.config.lame_duck.is_zero() && self.config.lame_duck >= self.config.grace {
            return Err(ConfigError::LameDuckTooLong {
                lame_duck: self.config.lame_duck,
                grace: self.config.grace,
            });
        }
        Ok(Watch::with_config(self.config))
    }
}

/// Why a [`WatchBuilder`] cannot build a [`Watch`].
///
/// It converts into an [`std::io::Error`] of kind
/// [`InvalidInput`](std::io::ErrorKind::InvalidInput), so that `?` works in
/// a `main` returning `std::io::Result<()>`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A grace of zero: every drain would be forced the moment it starts.
    ZeroGrace,
    /// The lame duck period leaves no time for the drain before the
    /// deadline, which counts from the trigger too.
    LameDuckTooLong {
        /// The configured [`WatchBuilder::lame_duck`].
        lame_duck: Duration,
        /// The configured [`WatchBuilder::grace`].
        grace: Duration,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroGrace => f.write_str(
                "the grace must be longer than zero: every drain would be forced the moment it starts",
            ),
            ConfigError::LameDuckTooLong { lame_duck, grace } => write!(
                f,
                "the lame duck period ({lame_duck:?}) must be shorter than the grace ({grace:?}), which counts from the trigger too"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for std::io::Error {
    fn from(error: ConfigError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, error)
    }
}
