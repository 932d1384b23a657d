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

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use axum::{
    extract::{Query, State},
    http::StatusCode,
    routing::get,
    Router,
};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket};
use tower_drain::{DrainLayer, GracefulAccept, Watch};

const USAGE: &str = "\
usage: server [--addr ADDR] [--reuse-port] [--grace SECS]

  --addr ADDR     address to listen on (default 127.0.0.1:3000)
  --reuse-port    bind with SO_REUSEPORT, so a successor can share the port
  --grace SECS    hard deadline for the drain, in seconds (default 30)";

struct Options {
    addr: SocketAddr,
    reuse_port: bool,
    grace: Duration,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        reuse_port: false,
        grace: tower_drain::DEFAULT_GRACE,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--addr" => {
                let value = value("--addr")?;
                options.addr = value
                    .parse()
                    .map_err(|e| format!("--addr {value:?}: {e}"))?;
            }
            "--reuse-port" => options.reuse_port = true,
            "--grace" => {
                let value = value("--grace")?;
                options.grace = value
                    .parse::<f64>()
                    .ok()
                    .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                    .ok_or(format!("--grace {value:?}: not a number of seconds"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(reuse_port)?;
    #[cfg(not(unix))]
    if reuse_port {
        return Err(std::io::Error::other("--reuse-port needs a Unix system"));
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

fn app(watch: Watch) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/slow", get(slow))
        .route("/healthz", get(healthz))
        .with_state(watch.clone())
        .layer(DrainLayer::new(watch))
}

#[derive(Deserialize)]
struct Slow {
    ms: u64,
}

async fn slow(Query(Slow { ms }): Query<Slow>) -> String {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms")
}

async fn healthz(State(watch): State<Watch>) -> (StatusCode, &'static str) {
    if watch.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ok")
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(options).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until drained; `Ok(true)` if the drain ended cleanly.
async fn run(options: Options) -> Result<bool, String> {
    let watch = Watch::builder().grace(options.grace).build();
    watch
        .trigger_on_signals()
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let listener = bind(options.addr, options.reuse_port)
        .map_err(|e| format!("cannot listen on {}: {e}", options.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, reuse_port = options.reuse_port, grace = ?options.grace, "listening");

    axum::serve(
        GracefulAccept::new(listener, watch.clone()),
        app(watch.clone()),
    )
    .with_graceful_shutdown(watch.shutdown_signal())
    .await
    .map_err(|e| format!("server failed: {e}"))?;
    let report = watch.drained().await;
    tracing::info!(%report, "stopped");
    Ok(report.forced.is_none())
}
