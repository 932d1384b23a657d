//! Lossless graceful shutdown for tokio, tower, hyper and axum servers.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use tower_drain::{GracefulAccept, Watch};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let watch = Watch::new(); // or Watch::builder().grace(..).build()?
//!     watch.trigger_on_signals()?; // SIGTERM/SIGINT/SIGHUP drains, a second one forces
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     let listener = GracefulAccept::new(listener, watch.clone());
//!     let app = Router::new().route("/", get(|| async { "hello" }));
//!
//!     axum::serve(listener, app)
//!         .with_graceful_shutdown(watch.shutdown_signal())
//!         .await?;
//!     println!("{}", watch.drained().await);
//!     Ok(())
//! }
//! ```
//!
//! # Why
//!
//! When a server closes its listening socket, Linux resets every connection
//! that finished its TCP handshake but was not accepted yet. Those clients
//! have usually sent their request already and see `ECONNRESET`, not knowing
//! whether it was processed. `axum::serve(..).with_graceful_shutdown(..)`
//! closes the socket the moment its signal fires, and hyper then drops every
//! connection that has not read a byte yet.
//!
//! # How
//!
//! The drain runs in this order once the [`Watch`] is triggered:
//!
//! 1. [`Readiness`] answers 503, and every HTTP/1 keep-alive connection is
//!    told `Connection: close` on its next response ([`GracefulAccept`] adds
//!    `Connection: close` to its next request head), so it retires without a
//!    race. With a [`lame_duck`](WatchBuilder::lame_duck)
//!    period the server goes on serving until it ends, so that load
//!    balancers stop routing here before the listeners close.
//! 2. Each [`GracefulAccept`] stops waiting for new connections, accepts
//!    everything already queued in the kernel (bounded in count and time) and
//!    hands it to the server, then closes its socket: later clients are
//!    refused, which they can safely retry.
//! 3. [`Watch::shutdown_signal`] resolves once the listeners are closed,
//!    every connection has read its first byte (or stayed silent for the
//!    first-byte grace), no HTTP/1 request head is half read, and every
//!    keep-alive connection between requests has been idle for
//!    [`keep_alive_idle`](WatchBuilder::keep_alive_idle): axum stops, and
//!    hyper finishes in-flight requests and closes idle connections.
//! 4. [`Watch::drained`] resolves with a [`DrainReport`] when the last
//!    connection and request are gone.
//! 5. At the deadline ([`WatchBuilder::grace`]) or on a second trigger, every
//!    connection still open is closed, so `serve` returns.
//!
//! Every step is logged with `tracing` under the `tower_drain` target.
//!
//! # What is where
//!
//! - [`Watch`] coordinates the drain: built with a [`WatchBuilder`] (bad
//!   settings give a [`ConfigError`]), it moves through each [`Phase`], and
//!   the futures in [`future`] wait for each step.
//! - [`Observer`] sees the drain without controlling it (a `Watch` derefs to
//!   one for its read methods); [`Readiness`] answers load balancers and
//!   [`EndOnDrain`] ends a stream with it.
//! - [`GracefulAccept`] drains any [`DrainableListener`] and wraps each
//!   connection in a [`TrackedIo`]; `TlsAccept` and `TlsIo` (feature
//!   `rustls`) do the same over TLS.
//! - [`DrainLayer`] counts requests and marks responses `Connection: close`
//!   (for connections not accepted through [`GracefulAccept`]);
//!   its service, future and body are in [`layer`], and the axum hook-up in
//!   [`axum`](mod@axum).
//! - [`DrainReport`] says what the drain did, [`DrainKind`] whether it was a
//!   restart, [`ForceCause`] why it was forced.
//! - [`restart`] keeps sockets open across a restart.
//!
//! Inside, from the bottom up (no module imports one above it):
//!
//! - `state`: the shared state and the invariants concurrent code relies
//!   on: phases, counters, the registry of connections (each a `Slot`) and
//!   listeners, the end-of-drain check; `state::config` holds the settings.
//! - `report`, `shared` and `siblings` (a socket's standing across
//!   processes), `socket` (accepting without waiting, lowering the backlog),
//!   `framing` (HTTP/1 request boundaries), `linger`, `sys` (the only
//!   `unsafe`).
//! - `future`: the futures that wait on the state; `timers`: the drain's
//!   timed steps (lame duck end, cut-offs, deadline), one task per drain.
//! - `requests`: following a connection's requests (protocol, request
//!   heads, `Connection: close`), for `io` and `tls`.
//! - `observer`, `watch`, `builder`, `signal`: the handles and their set-up.
//! - `listener` and `reuseport` (steering a closing socket's new
//!   connections away), `accept`, `io`, `tls`, `tonic`: listeners and
//!   connections; `layer`, `axum`, `readiness`, `stream`: requests.
//! - `restart/`: listeners, handoff, activation, bind, upgrade, notify.
//!
//! # Restarts
//!
//! A restart that hands the listening socket on never closes it, so nothing
//! queued is reset: [`restart::Listeners`] (Unix) takes sockets from systemd
//! socket activation or from the server it replaces, or binds them, and
//! hands them to its own successor.
//!
//! # Features
//!
//! - `axum` (default): `axum::serve::Listener` for [`GracefulAccept`] (and
//!   `TlsAccept`), [`DrainLayer::around_router`], and [`Observer`] as an
//!   extractor.
//! - `rustls`: `TlsAccept`, TLS termination whose handshakes run
//!   concurrently and finish before the server stops.
//! - `tonic`: a [`GracefulAccept`] is a stream of connections that tonic's
//!   `serve_with_incoming_shutdown` takes, and [`TrackedIo`] is `Connected`.
//!   It needs Rust 1.88, as tonic 0.14 does; the rest builds with 1.85.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod accept;
#[cfg(feature = "axum")]
pub mod axum;
mod builder;
mod framing;
pub mod future;
mod io;
pub mod layer;
mod linger;
mod listener;
mod observer;
mod readiness;
mod report;
mod requests;
#[cfg(unix)]
pub mod restart;
#[cfg(any(target_os = "linux", target_os = "android"))]
mod reuseport;
mod shared;
mod siblings;
mod signal;
mod socket;
mod state;
mod stream;
#[cfg(unix)]
mod sys;
mod timers;
#[cfg(feature = "rustls")]
mod tls;
#[cfg(feature = "tonic")]
mod tonic;
mod watch;

pub use crate::accept::GracefulAccept;
pub use crate::builder::{ConfigError, WatchBuilder};
pub use crate::io::TrackedIo;
pub use crate::layer::DrainLayer;
pub use crate::listener::DrainableListener;
pub use crate::observer::Observer;
pub use crate::readiness::Readiness;
pub use crate::report::{DrainKind, DrainReport, ForceCause};
pub use crate::state::Phase;
pub use crate::stream::EndOnDrain;
#[cfg(feature = "rustls")]
pub use crate::tls::{TlsAccept, TlsIo};
pub use crate::watch::Watch;

/// The README's Rust snippets that are not marked `ignore`, compiled as
/// doctests so that the README cannot drift from the crate.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
