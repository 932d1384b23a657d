//! A hand-written hyper server (no axum) that loses no connection when it
//! stops: `GracefulAccept` hands out the connections, hyper-util's
//! `auto::Builder` serves each one under its `GracefulShutdown`, and
//! `DrainLayer` wraps a tower `service_fn`.
//!
//! ```text
//! cargo run --example hyper_server
//! curl -i 'http://127.0.0.1:3000/slow?ms=5000' &  # then, within 5 s, ctrl-c the server
//! ```
//!
//! `GET /` answers `hello`; `GET /slow?ms=N` answers after N milliseconds.
//! On SIGTERM or SIGINT the server accepts what the kernel has queued,
//! closes its socket, lets the slow request finish (its response says
//! `Connection: close`), then prints the drain report. A second signal
//! forces the close.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_drain::{DrainLayer, GracefulAccept, Watch};

/// Serves on 127.0.0.1:3000 until a signal, then drains and prints the report.
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let watch = Watch::new();
    watch.trigger_on_signals()?; // the first signal drains, a second one forces

    let listener = TcpListener::bind("127.0.0.1:3000").await?;
    let mut listener = GracefulAccept::new(listener, watch.clone());
    println!("listening on http://{}", listener.local_addr()?);

    let service = ServiceBuilder::new()
        .layer(DrainLayer::new(watch.clone()))
        .service_fn(handle);
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();

    // Resolves once the drain has accepted what the kernel queued and closed
    // the socket, which happens inside `accept`: so keep accepting until then.
    let signal = watch.shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            // `accept` first: it hands out every queued connection it has
            // taken before the signal can win. Once the socket is closed it
            // stays pending, and the signal ends the loop.
            biased;
            (io, _peer) = listener.accept() => {
                let service = TowerToHyperService::new(service.clone());
                let connection = builder.serve_connection(TokioIo::new(io), service);
                let connection = graceful.watch(connection.into_owned());
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        eprintln!("connection error: {error}");
                    }
                });
            }
            () = &mut signal => break,
        }
    }
    drop(listener);

    // In-flight requests finish, idle connections close; the deadline bounds it.
    graceful.shutdown().await;
    println!("{}", watch.drained().await);
    Ok(())
}

/// `GET /slow?ms=N` answers after N milliseconds (default 1000); anything
/// else answers `hello`.
async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/slow" {
        let ms = request
            .uri()
            .query()
            .and_then(|query| query.strip_prefix("ms="))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(Full::from(format!("slept {ms} ms\n"))));
    }
    Ok(Response::new(Full::from("hello\n")))
}
