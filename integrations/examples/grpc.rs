//! A tonic gRPC server that loses no call when it stops: the standard health
//! service (`grpc.health.v1.Health`) on 127.0.0.1:50051, or the address given.
//!
//! ```text
//! cargo run -p tower-drain-integrations --features tonic --example grpc -- [ADDR]
//! grpc_health_probe -addr 127.0.0.1:50051   # from another terminal, if installed
//! ```
//!
//! SIGTERM, SIGINT or SIGHUP drains: connections already queued are
//! accepted, each HTTP/2 connection gets a GOAWAY, calls in flight finish; a
//! second signal forces. Logs each phase to stderr (`RUST_LOG` is
//! respected), prints the report, and exits 0 after a clean drain, 1
//! otherwise.

#[path = "../../examples/logging/mod.rs"]
mod logging;

use std::{net::SocketAddr, process::ExitCode};

use tokio::net::TcpListener;
use tonic::transport::Server;
use tower_drain::{DrainLayer, GracefulAccept, Watch};

#[tokio::main]
async fn main() -> ExitCode {
    logging::init("info");
    match serve().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until a signal and the drain it starts are over; says whether the
/// drain was clean.
async fn serve() -> Result<bool, Box<dyn std::error::Error>> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(addr) => addr.parse()?,
        None => SocketAddr::from(([127, 0, 0, 1], 50051)),
    };
    let watch = Watch::new();
    watch.trigger_on_signals()?;

    let listener = GracefulAccept::new(TcpListener::bind(addr).await?, watch.clone());
    eprintln!(
        "serving grpc.health.v1.Health on {}",
        listener.local_addr()?
    );
    let (_reporter, health) = tonic_health::server::health_reporter();

    Server::builder()
        .layer(DrainLayer::new(watch.clone()))
        .add_service(health)
        .serve_with_incoming_shutdown(listener, watch.shutdown_signal())
        .await?;
    let report = watch.drained().await;
    println!("{report}");
    Ok(report.is_clean())
}
