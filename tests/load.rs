//! Draining under continuous load, alone and beside a `SO_REUSEPORT` sibling.
//!
//! Clients here connect one at a time, so the accept queue is rarely full at
//! the trigger: these tests check that load sees only responses and
//! refusals, not the queue drain itself. That is checked deterministically,
//! with connections queued before the trigger, by `tests/drain.rs`
//! (`queued_connections_are_all_served`, `unix_listener_queue_is_drained`),
//! `integrations/tests/tls.rs` and `tests/watch.rs`, which fail when the queue drain is
//! skipped.

mod common;

use std::time::Instant;

use common::{
    load::{Load, Seen},
    *,
};
use tower_drain::Watch;

const CLIENTS: usize = 8;
/// Each client stops after this many requests, whatever happens.
const MAX_REQUESTS_PER_CLIENT: usize = 5_000;

/// Clients that each send one request per connection, in a loop, until told
/// to stop or, with `stop_when_refused`, refused.
async fn load(addr: std::net::SocketAddr, stop_when_refused: bool) -> Load {
    let builder = Load::builder(addr)
        .clients(CLIENTS)
        .max_requests(MAX_REQUESTS_PER_CLIENT);
    let builder = if stop_when_refused {
        builder.stop_when_refused()
    } else {
        builder
    };
    builder.start().await
}

/// The only reset the kernel allows: a handshake in flight at the instant
/// the listener closed (see the README). So every request was answered 200,
/// refused or reset, every reset overlaps the drain, and no client saw two.
/// Returns the tally.
fn assert_no_loss(seen: &Seen, drain_started: Instant, listeners_closed: Instant) -> Tally {
    let tally = seen.tally();
    let failed: Vec<_> = (seen.requests.iter())
        .filter(|r| !r.outcome.is_ok() && !matches!(r.outcome, Outcome::Refused | Outcome::Reset))
        .collect();
    assert!(failed.is_empty(), "{tally:#?}, failed: {failed:#?}");
    let resets: Vec<_> = (seen.requests.iter())
        .filter(|r| r.outcome == Outcome::Reset)
        .collect();
    for reset in &resets {
        assert!(
            reset.started <= listeners_closed && reset.ended >= drain_started,
            "a reset outside the drain is a lost connection: {reset:#?}; {tally:#?}"
        );
        let twice = resets.iter().filter(|r| r.client == reset.client).count();
        assert_eq!(
            twice, 1,
            "client {} saw {twice} resets: {resets:#?}",
            reset.client
        );
    }
    if !resets.is_empty() {
        eprintln!("resets at the instant of close(2): {}", resets.len());
    }
    tally
}

/// Triggers the drain and notes when it started and when the listeners had
/// all closed.
async fn drain(watch: &Watch) -> (Instant, Instant) {
    let started = Instant::now();
    watch.trigger();
    within("listeners to close", watch.listeners_closed()).await;
    (started, Instant::now())
}

/// Under continuous load, every request is answered 200 or its connection is
/// refused, but for the kernel's race at close(2): none is left unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_load_sees_only_responses_and_refusals() {
    let server = Server::start(bind(localhost(), false), Watch::new());
    let load = load(server.addr, true).await;
    load.wait_served(200).await;

    let (started, closed) = drain(&server.watch).await;
    let report = server.stopped().await;
    // Each client stops once refused.
    let seen = load.join().await;

    let tally = assert_no_loss(&seen, started, closed);
    assert!(tally.served >= 200, "{tally:#?}");
    assert_eq!(
        tally.refused, CLIENTS,
        "each client ran until refused: {tally:#?}"
    );
    assert_eq!(report.forced, None);
}

/// Two servers share a port with `SO_REUSEPORT`; draining one under load
/// loses nothing, and the other keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_sibling_takes_over_without_loss() {
    let first = Server::start(bind(localhost(), true), Watch::new());
    let second = Server::start(bind(first.addr, true), Watch::new());
    assert_eq!(first.addr, second.addr);

    let load = load(first.addr, false).await;
    load.wait_served(200).await;
    let (started, closed) = drain(&first.watch).await;
    let report = first.stopped().await;
    // The sibling keeps serving after the first one is gone.
    load.wait_served(200).await;
    let seen = load.stop().await;

    let tally = assert_no_loss(&seen, started, closed);
    assert_eq!(tally.refused, 0, "{tally:#?}");
    assert_eq!(report.forced, None);

    second.watch.trigger();
    second.stopped().await;
}
