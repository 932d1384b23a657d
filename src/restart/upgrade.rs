//! Upgrading in place on a signal, as nginx does on `SIGUSR2`: the running
//! server starts its successor itself, from the executable at the path it
//! was started from (so a freshly installed binary is picked up) with the
//! same arguments and environment, and the successor takes the sockets over
//! the handoff path like any other. The old server drains once the
//! successor says it is ready; if the successor cannot be started, exits,
//! or does not take over in time, the old one serves on and says why.
//!
//! Under systemd the successor is started by the service's main process, so
//! it runs in the service's control group, and it tells the service manager
//! that it is the new main process (`MAINPID=`, see `notify`).

use std::{ffi::OsString, io, path::PathBuf, process::ExitStatus, time::Duration};

use tokio::{
    process::{Child, Command},
    signal::unix::{signal, Signal, SignalKind},
};

use super::{notify, sockets::invalid};
use crate::Watch;

/// Default [`ListenersBuilder::upgrade_timeout`](crate::restart::ListenersBuilder::upgrade_timeout).
pub(crate) const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// The signals that drain ([`Watch::trigger_on_signals`]): an upgrade on
/// one of them would drain as well.
const DRAIN_SIGNALS: [(SignalKind, &str); 3] = [
    (SignalKind::terminate(), "SIGTERM"),
    (SignalKind::interrupt(), "SIGINT"),
    (SignalKind::hangup(), "SIGHUP"),
];

/// What an upgrade starts: this program as it was started.
#[derive(Debug)]
struct Program {
    exe: PathBuf,
    args: Vec<OsString>,
}

/// Installs the handler for `kind` and spawns the task that upgrades on it
/// until `watch` drains; the successor has `timeout` to take over.
///
/// # Errors
///
/// `InvalidInput` for a signal that drains (SIGTERM, SIGINT, SIGHUP) or
/// cannot be handled (SIGKILL, SIGSTOP, ...); whatever
/// [`std::env::current_exe`] reports.
pub(crate) fn start(kind: SignalKind, timeout: Duration, watch: Watch) -> io::Result<()> {
    if let Some((_, name)) = DRAIN_SIGNALS.iter().find(|(drains, _)| *drains == kind) {
        return Err(invalid(format!(
            "{name} drains the server; upgrade on another signal, such as SIGUSR2"
        )));
    }
    let signal = signal(kind).map_err(|e| {
        let number = kind.as_raw_value();
        invalid(format!("cannot upgrade on signal {number}: {e}"))
    })?;
    let program = Program {
        exe: std::env::current_exe()?,
        args: std::env::args_os().skip(1).collect(),
    };
    tokio::spawn(run(signal, program, timeout, watch));
    Ok(())
}

/// Upgrades at each signal until one succeeds or the drain starts.
async fn run(mut signal: Signal, program: Program, timeout: Duration, watch: Watch) {
    loop {
        tokio::select! {
            _ = signal.recv() => {}
            () = watch.draining() => return,
        }
        if watch.phase() != crate::Phase::Running {
            // A shutdown's lame duck period: the handoff refuses successors.
            tracing::warn!("upgrade signal ignored: the server is shutting down");
            return;
        }
        let exe = program.exe.display().to_string();
        tracing::info!(%exe, "upgrade signal received: starting a successor");
        notify::upgrading(&exe);
        match program.upgrade(&mut signal, timeout, &watch).await {
            Ok(pid) => {
                tracing::info!(pid, "upgraded: the successor took over");
                return;
            }
            Err(why) if watch.phase() != crate::Phase::Running => {
                tracing::warn!("upgrade abandoned: {why}");
                return;
            }
            Err(why) => {
                tracing::error!("upgrade failed, serving on: {why}");
                notify::upgrade_failed(&why);
            }
        }
    }
}

impl Program {
    /// Starts the successor and waits until it takes over (its pid), exits,
    /// or runs out of `timeout`; says why it failed. Further signals in the
    /// meantime are refused.
    async fn upgrade(
        &self,
        signal: &mut Signal,
        timeout: Duration,
        watch: &Watch,
    ) -> Result<u32, String> {
        let exe = self.exe.display();
        let child = Command::new(&self.exe)
            .args(&self.args)
            .spawn()
            .map_err(|e| format!("cannot start {exe}: {e}"))?;
        let mut successor = Successor {
            child,
            watch: watch.clone(),
        };
        let child = &mut successor.child;
        let pid = child.id().unwrap_or_default();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                () = watch.draining() => {
                    if watch.inner.is_handed_over() {
                        return Ok(pid);
                    }
                    stop(child).await;
                    return Err(format!("a shutdown started; stopped the successor (pid {pid})"));
                }
                status = child.wait() => {
                    return Err(format!("the successor (pid {pid}) {} before it took over", exited(status)));
                }
                () = &mut deadline => {
                    stop(child).await;
                    return Err(format!("the successor (pid {pid}) did not take over within {timeout:?}; stopped it"));
                }
                _ = signal.recv() => {
                    tracing::warn!(pid, "upgrade signal ignored: an upgrade is under way");
                }
            }
        }
    }
}

/// A successor started by an upgrade. Dropped before it took the sockets
/// over (the server exiting first, its task dropped with the runtime), it
/// is killed: a shutdown must not leave it running. Once it took over it is
/// left to run, whenever this is dropped: the handoff marks that
/// ([`Inner::hand_over`](crate::state::Inner::hand_over)) before it
/// triggers the drain, so before this process can exit.
struct Successor {
    child: Child,
    watch: Watch,
}

impl Drop for Successor {
    fn drop(&mut self) {
        if !self.watch.inner.is_handed_over() {
            let _ = self.child.start_kill();
        }
    }
}

/// Kills a successor that must not take over, and reaps it.
async fn stop(child: &mut Child) {
    if let Err(error) = child.kill().await {
        tracing::debug!(%error, "cannot stop the successor");
    }
}

fn exited(status: io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => format!("exited ({status})"),
        Err(error) => format!("cannot be waited for ({error})"),
    }
}
