//! The queue drain over real loopback sockets, with a queue longer than the
//! drain's batch (256 connections taken from the kernel per call to
//! `accept`) and with a `queue_drain_limit` below the queue's length: what
//! is served, and what the report counts as reset.
//!
//! Every client connects and sends its request before the server accepts
//! anything, and the test waits until the kernel reports all of them in
//! the listener's accept queue (`/proc/net/tcp`) before the drain starts.

mod common;

use std::sync::Once;

use common::*;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tower_drain::{GracefulAccept, Watch};

/// Raises this process's soft limit on open descriptors (`RLIMIT_NOFILE`,
/// often 1024) to its hard limit, once: the two tests here, run in
/// parallel, hold about 2,400 sockets at once.
fn raise_descriptor_limit() {
    static RAISE: Once = Once::new();
    RAISE.call_once(|| {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        if soft < hard {
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
        }
    });
}

/// More than two batches of 256: the drain takes the queue in three calls
/// (256, 256, 88).
const QUEUED: usize = 600;

/// A queue longer than one batch is drained to the end: every queued
/// connection is answered, and the report counts each as taken from the
/// queue, none as reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_longer_than_a_batch_is_all_served() {
    raise_descriptor_limit();
    let (listener, clients) = queued(QUEUED).await;
    // The queue drain's timeout is not under test: the default 1 s could
    // cut the drain short on a loaded machine.
    let listener = GracefulAccept::new(listener, Watch::new()).queue_drain_timeout(PATIENCE);
    let server = Server::drain_then_serve(listener);

    for mut client in clients {
        assert_served_and_closed(&mut client, "a queued response").await;
    }
    let report = server.stopped().await;
    assert_eq!(report.accepted_from_queue, QUEUED, "{report}");
    assert_eq!(report.reset_in_queue, 0, "{report}");
    assert_eq!(report.requests_completed, QUEUED, "{report}");
    assert!(report.is_clean(), "{report}");
}

/// With `queue_drain_limit(100)`, the drain takes exactly 100 connections
/// from a queue of 600 and then closes the socket: those 100 are answered,
/// the kernel resets the other 500 unanswered, and the report counts 100
/// taken and 500 reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_drain_limit_serves_the_limit_and_counts_the_rest_as_reset() {
    const LIMIT: usize = 100;
    raise_descriptor_limit();
    let (listener, clients) = queued(QUEUED).await;
    let listener = GracefulAccept::new(listener, Watch::new())
        .queue_drain_limit(LIMIT)
        .queue_drain_timeout(PATIENCE);
    let server = Server::drain_then_serve(listener);

    let (mut served, mut reset) = (0, 0);
    for mut client in clients {
        match within("a queued connection's end", read_response(&mut client)).await {
            Outcome::Response {
                status: 200,
                connection_close: true,
            } => served += 1,
            Outcome::Reset | Outcome::Unanswered => reset += 1,
            other => panic!("neither served nor reset: {other:?}"),
        }
    }
    assert_eq!((served, reset), (LIMIT, QUEUED - LIMIT));
    let report = server.stopped().await;
    assert_eq!(report.accepted_from_queue, LIMIT, "{report}");
    assert_eq!(report.reset_in_queue, QUEUED - LIMIT, "{report}");
    assert_eq!(report.requests_completed, LIMIT, "{report}");
    assert_eq!(report.forced, None, "{report}");
    assert!(!report.is_clean(), "{report}");
}
