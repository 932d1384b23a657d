//! Triggering the drain from the operating system: SIGTERM, SIGINT and
//! SIGHUP on Unix, ctrl-c elsewhere. The first signal drains, the second
//! forces.

use std::io;

use crate::Watch;

impl Watch {
    /// Triggers the drain on SIGTERM, SIGINT or SIGHUP (ctrl-c on other
    /// systems): the first signal starts the drain, the second forces it.
    ///
    /// SIGHUP drains too, rather than killing the process mid-request as it
    /// does by default: terminals and admins send it routinely. To restart,
    /// start a successor (see [`restart`](crate::restart)).
    ///
    /// The handlers are installed before this returns, and a task on the
    /// current tokio runtime then waits for the signals until the drain ends.
    /// The [crate example](crate) calls it first thing in `main`.
    ///
    /// # Errors
    ///
    /// Fails if the signal handlers cannot be installed.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime.
    pub fn trigger_on_signals(&self) -> io::Result<()> {
        let mut signals = Signals::install()?;
        let watch = self.clone();
        tokio::spawn(async move {
            let drained = watch.drained();
            tokio::pin!(drained);
            loop {
                tokio::select! {
                    name = signals.recv() => {
                        // The drain first: a subscriber that panics (one
                        // writing to a closed stderr) must not stop it.
                        watch.trigger();
                        tracing::info!(signal = %name, "signal received");
                    }
                    _ = &mut drained => return,
                }
            }
        });
        Ok(())
    }
}

#[cfg(unix)]
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> io::Result<Self> {
        Ok(Self)
    }

    async fn recv(&mut self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "ctrl-c",
            Err(error) => {
                tracing::error!(%error, "cannot listen for ctrl-c");
                std::future::pending().await
            }
        }
    }
}
