//! The reference server: an axum app that loses no connection when it stops.
//!
//! ```text
//! cargo run --release --example server -- [--addr ADDR] [--reuse-port] [--handoff PATH] [--grace SECS] [--lame-duck SECS] [--upgrade-on SIGNAL]
//! ```
//!
//! Routes: `GET /` answers `hello`; `GET /slow?ms=N` answers after N
//! milliseconds; `POST /upload` reads the whole body (up to 64 MiB, 413
//! beyond) and answers its length and SHA-256 in hex; `GET /healthz` answers
//! 200 while running (and through a restart's drain) and 503 (with
//! `Retry-After`) from the signal on; `GET /events` sends server-sent events
//! (`data: tick N` every 100 ms) and, when the drain starts, `event: close`
//! then ends; `GET /ws` echoes WebSocket messages and, when the drain
//! starts, sends Close 1001 and waits for the client's answer. SIGTERM,
//! SIGINT or SIGHUP drains (after the `--lame-duck` period, during which
//! everything is served but `/healthz`), a second one forces. Each
//! phase and the final report are logged to stderr (`RUST_LOG` is
//! respected). Exits 0 after a clean drain, 1 after a forced one, one that
//! reset queued connections, or an error, 2 on bad input
//! (flags, an inherited descriptor that is not a listening socket, a
//! handoff path that is not a socket, lies in a missing directory, or is
//! served by a process of another user).
//!
//! Restarts: a second copy started with the same `--handoff PATH` takes the
//! socket over, and the first drains and exits 0 by itself; with
//! `--upgrade-on USR2` the server starts that copy itself on SIGUSR2 (from
//! the executable's path, so a new build there is picked up) and serves on
//! if it fails. Started by a service manager with `LISTEN_PID`/`LISTEN_FDS`
//! naming it, the server serves the inherited socket and ignores `--addr`.
//! With `NOTIFY_SOCKET` set it tells the service manager `READY=1` (and
//! `MAINPID=` after an upgrade), `RELOADING=1` at an upgrade, `STOPPING=1`
//! at a shutdown, and the drain's progress as `STATUS=`.

mod logging;
mod reference;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let usage = reference::usage("server", false, 3000);
    let options = match reference::parse_args(&usage, false, 3000) {
        Ok(options) => options,
        Err(code) => return code,
    };
    logging::init("info");
    let watch = match reference::watch(&options) {
        Ok(watch) => watch,
        Err(code) => return code,
    };
    match reference::listen(&options, &watch).await {
        Ok(listener) => reference::serve(listener, watch).await,
        Err(code) => code,
    }
}
