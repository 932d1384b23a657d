//! Telling the service manager what the server does, by systemd's
//! `sd_notify` protocol (sd_notify(3)): ready once every listener serves,
//! which process is the service's main one after an upgrade, reloading
//! while an upgrade runs, and stopping, with the drain's progress and a
//! longer stop timeout, at a shutdown.
//!
//! Each message is one datagram to the socket `NOTIFY_SOCKET` names, sent
//! by the `sd-notify` crate; without `NOTIFY_SOCKET` nothing is sent. A
//! message that cannot be sent is logged at debug and otherwise ignored: the
//! service manager is told, never waited for.
//!
//! A drain after a handoff sends nothing: the service lives on in the
//! successor, which has already told the service manager it is the main
//! process and ready, and with `NotifyAccess=all` systemd would take this
//! process's `STOPPING=1` or `STATUS=` for the service's. Any other drain
//! ends the main process, a restart of a socket-activated service
//! ([`DrainKind::Restart`](crate::DrainKind::Restart)) included, and says
//! so.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::{
    report::DrainReport,
    state::{Inner, Steps},
};

/// How much longer than the time left to the deadline the service manager
/// is asked to wait at a shutdown: for the report and the process's exit.
const EXIT_MARGIN: Duration = Duration::from_secs(5);

/// Every listener serves: `READY=1`, and `MAINPID=` with this process's
/// pid if it took the service over from a predecessor, so that the service
/// manager follows the service to this process.
pub(crate) fn ready(took_over: bool) {
    let pid = std::process::id();
    let mut states = Vec::with_capacity(3);
    if took_over {
        states.push(NotifyState::MainPid(pid));
    }
    states.push(NotifyState::Ready);
    states.push(NotifyState::Status("serving"));
    send(&states);
}

/// An upgrade started a successor from `exe`: `RELOADING=1` with the time
/// (`MONOTONIC_USEC`, which `Type=notify-reload` requires).
pub(crate) fn upgrading(exe: &str) {
    let status = format!("upgrading: started {exe}");
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status(&status)]),
        Err(error) => tracing::debug!(%error, "cannot read the monotonic clock"),
    }
}

/// An upgrade failed and this process serves on: `READY=1` ends the
/// reload.
pub(crate) fn upgrade_failed(why: &str) {
    let status = format!("serving; upgrade failed: {why}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Follows a drain for the service manager: at a shutdown's trigger
/// `STOPPING=1`, with `EXTEND_TIMEOUT_USEC` until the deadline and a margin,
/// so that a grace longer than `TimeoutStopSec=` does not get the process
/// killed; then a `STATUS=` line when the listeners have closed, and the
/// report when the drain ends. Nothing after a handoff, whose successor now
/// speaks for the service; a drain that leaves the socket to the service
/// manager (socket activation) still ends this main process, so it is
/// told. Each is sent at its step (see [`Steps`]), so none is lost to a
/// process that exits at once.
#[derive(Debug)]
pub(crate) struct ServiceManager;

impl Steps for ServiceManager {
    fn triggered(&self, inner: &Inner) {
        if inner.is_handed_over() {
            return;
        }
        let left = inner.until_deadline().unwrap_or_default() + EXIT_MARGIN;
        let usec = u32::try_from(left.as_micros()).unwrap_or(u32::MAX);
        let status = format!(
            "draining: {} connections, {} requests in flight",
            inner.connections(),
            inner.requests()
        );
        send(&[
            NotifyState::Stopping,
            NotifyState::ExtendTimeoutUsec(usec),
            NotifyState::Status(&status),
        ]);
    }

    fn listeners_closed(&self, inner: &Inner) {
        if inner.is_handed_over() {
            return;
        }
        let status = format!(
            "draining: listeners closed, {} connections open",
            inner.connections()
        );
        send(&[NotifyState::Status(&status)]);
    }

    fn drained(&self, inner: &Inner, report: &DrainReport) {
        if !inner.is_handed_over() {
            send(&[NotifyState::Status(&report.to_string())]);
        }
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "cannot notify the service manager");
    }
}

/// Whether the service manager listens (`NOTIFY_SOCKET` is set).
pub(crate) fn is_listening() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}
