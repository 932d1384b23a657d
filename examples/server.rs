//! The reference server: an axum app that loses no connection when it stops.
//!
//! ```text
//! cargo run --release --example server -- [--addr ADDR] [--reuse-port] [--grace SECS]
//! ```
//!
//! Routes: `GET /` answers `hello`; `GET /slow?ms=N` answers after N
//! milliseconds; `GET /healthz` answers 200 while running and 503 once
//! draining. SIGTERM or SIGINT drains, a second one forces. Each phase and
//! the final report are logged to stderr (`RUST_LOG` is respected). Exits 0
//! after a clean drain, 1 after a forced one or an error, 2 on bad flags.

mod reference;

use std::process::ExitCode;

use tower_drain::GracefulAccept;

const USAGE: &str = "\
usage: server [--addr ADDR] [--reuse-port] [--grace SECS]

  --addr ADDR     address to listen on (default 127.0.0.1:3000)
  --reuse-port    bind with SO_REUSEPORT, so a successor can share the port
  --grace SECS    hard deadline for the drain, in seconds (default 30)";

#[tokio::main]
async fn main() -> ExitCode {
    let options = match reference::parse_args(USAGE, false, 3000) {
        Ok(options) => options,
        Err(code) => return code,
    };
    reference::init_tracing();
    let (watch, listener) = match reference::watch(&options)
        .and_then(|watch| Ok((watch, reference::bind(&options)?)))
    {
        Ok(ready) => ready,
        Err(message) => return reference::fail(message),
    };
    reference::serve(GracefulAccept::new(listener, watch.clone()), watch).await
}
