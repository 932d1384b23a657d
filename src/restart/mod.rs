//! Restarts that lose nothing: [`Listeners`] gives a server the listening
//! sockets it should serve (inherited from a service manager, received from
//! the server it replaces, or freshly bound) and hands them to its own
//! successor.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use tower_drain::{restart::Listeners, Watch};
//!
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! let watch = Watch::new();
//! watch.trigger_on_signals()?;
//! let mut listeners = Listeners::builder()
//!     .tcp("http", "127.0.0.1:3000".parse().unwrap())
//!     .handoff("/run/app/handoff.sock")
//!     .open(&watch)
//!     .await?;
//! let app = Router::new().route("/", get(|| async { "hello" }));
//! axum::serve(listeners.tcp("http")?, app)
//!     .with_graceful_shutdown(watch.shutdown_signal())
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Start a second copy of this program and it takes the socket over: the
//! first one drains its own connections and exits, while the socket and its
//! accept queue live on in the second. Under systemd socket activation the
//! service manager holds the socket, and the same program serves it.
//!
//! # What is guaranteed
//!
//! - Handoff and socket activation: the socket is never closed while it has
//!   a queue, so no connection is reset or refused by the restart.
//! - Independent `SO_REUSEPORT` sockets ([`ListenersBuilder::reuse_port`]
//!   without a handoff): best effort. The draining socket lowers its backlog
//!   and steers new connections to its siblings before it closes, but the
//!   kernel still resets a connection that reaches it in the instant of the
//!   close.
//!
//! # What is where
//!
//! - `listeners`: [`Listeners`] and its [`ListenersBuilder`]: where the
//!   sockets come from ([`Origin`]), matched to the configured names.
//! - `activation`: sockets inherited from systemd socket activation.
//! - `bind`: binding the sockets that were neither inherited nor received.
//! - `handoff`: passing the sockets to a successor, and receiving them from
//!   a predecessor, over a Unix socket.
//! - `upgrade`: starting the successor in place on a signal.
//! - `notify`: telling the service manager what the server does.
//! - `sockets`: a listening socket with its name, as all of them pass it.

mod activation;
mod bind;
mod handoff;
mod listeners;
mod notify;
mod sockets;
mod upgrade;

pub use self::listeners::{Listeners, ListenersBuilder, Origin};
