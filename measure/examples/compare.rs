//! Plain `axum::serve(..).with_graceful_shutdown(..)` against tower-drain,
//! when connections are queued in the kernel the moment shutdown starts.
//!
//! ```text
//! cargo run --release -p tower-drain-measure --example compare -- [--queued N] [--trials N]
//! ```
//!
//! Each trial binds a listener on 127.0.0.1, queues N connections that have
//! sent their request (default 50), starts the server with its shutdown
//! already signalled, and counts how many clients get their response. Prints
//! a Markdown table.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::future::{ready, Future};

use tokio::net::TcpListener;
use tower_drain::{GracefulAccept, Watch};

use common::{connect_and_send, hello as app, read_response, request, Tally};

/// Queues `queued` requests on a new listener, runs `serve` on it, and
/// tallies what the clients got.
async fn trial<F, Fut>(queued: usize, serve: F, tally: &mut Tally)
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::new();
    for _ in 0..queued {
        clients.push(connect_and_send(addr, &request("/")).await.unwrap());
    }
    let server = tokio::spawn(serve(listener));
    for mut client in clients {
        tally.add(&read_response(&mut client).await);
    }
    server.await.unwrap();
}

/// Plain axum, its graceful shutdown signalled from the start.
async fn plain_axum(listener: TcpListener) {
    axum::serve(listener, app())
        .with_graceful_shutdown(ready(()))
        .await
        .unwrap();
}

/// tower-drain, its watch triggered from the start.
async fn tower_drain(listener: TcpListener) {
    let watch = Watch::new();
    let listener = GracefulAccept::new(listener, watch.clone());
    watch.trigger();
    axum::serve(listener, app())
        .with_graceful_shutdown(watch.shutdown_signal())
        .await
        .unwrap();
}

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .map(|i| match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(value) => value,
            None => {
                eprintln!("usage: compare [--queued N] [--trials N]");
                std::process::exit(2);
            }
        })
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let queued = flag("--queued", 50);
    let trials = flag("--trials", 10);
    let (mut plain, mut drained) = (Tally::default(), Tally::default());
    for _ in 0..trials {
        trial(queued, plain_axum, &mut plain).await;
        trial(queued, tower_drain, &mut drained).await;
    }
    let total = queued * trials;
    println!("{queued} connections queued at shutdown, {trials} trials ({total} requests):\n");
    println!("| server | served | reset | closed unanswered | other |");
    println!("|---|---|---|---|---|");
    for (name, t) in [
        ("axum::serve + with_graceful_shutdown", &plain),
        ("tower-drain", &drained),
    ] {
        println!(
            "| {name} | {}/{total} | {} | {} | {} |",
            t.served, t.reset, t.unanswered, t.other
        );
    }
}
