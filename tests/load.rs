//! Draining under continuous load, alone and beside a `SO_REUSEPORT` sibling.
//!
//! Clients here connect one at a time, so the accept queue is rarely full at
//! the trigger: these tests check that load sees only responses and
//! refusals, not the queue drain itself. That is checked deterministically,
//! with connections queued before the trigger, by `tests/drain.rs`
//! (`queued_connections_are_all_served`, `unix_listener_queue_is_drained`),
//! `tests/tls.rs` and `tests/watch.rs`, which fail when the queue drain is
//! skipped.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    time::Instant,
};

use common::*;
use tokio::{sync::Semaphore, task::JoinSet};
use tower_drain::Watch;

const CLIENTS: usize = 8;
/// Each client stops after this many requests, whatever happens.
const MAX_REQUESTS_PER_CLIENT: usize = 5_000;

/// One request's outcome and when it was in progress.
#[derive(Debug, Clone)]
struct Attempt {
    outcome: Outcome,
    started: Instant,
    ended: Instant,
}

/// Clients that each send one request per connection, in a loop, until told
/// to stop or refused, and keep every attempt.
struct Load {
    /// One permit per successful response.
    ok: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
    clients: JoinSet<Vec<Attempt>>,
}

impl Load {
    fn start(addr: SocketAddr, stop_when_refused: bool) -> Self {
        let ok = Arc::new(Semaphore::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = JoinSet::new();
        for _ in 0..CLIENTS {
            let (ok, stop) = (ok.clone(), stop.clone());
            clients.spawn(async move {
                let mut attempts = Vec::new();
                while !stop.load(SeqCst) && attempts.len() < MAX_REQUESTS_PER_CLIENT {
                    let started = Instant::now();
                    let outcome = one_request(addr, "/").await;
                    if outcome.is_ok() {
                        ok.add_permits(1);
                    }
                    let refused = outcome == Outcome::Refused;
                    attempts.push(Attempt {
                        outcome,
                        started,
                        ended: Instant::now(),
                    });
                    if refused && stop_when_refused {
                        break;
                    }
                }
                attempts
            });
        }
        Self { ok, stop, clients }
    }

    async fn wait_ok(&self, responses: u32) {
        within("responses under load", self.ok.acquire_many(responses))
            .await
            .unwrap()
            .forget();
    }

    /// Stops the clients (at once, or once each was refused) and tallies.
    async fn finish(mut self, wait_for_refusal: bool) -> Tally {
        if !wait_for_refusal {
            self.stop.store(true, SeqCst);
        }
        let mut tally = Tally::default();
        while let Some(attempts) = within("the clients to stop", self.clients.join_next()).await {
            tally.add(attempts.unwrap());
        }
        tally
    }
}

#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    refused: usize,
    /// Requests whose connection was reset.
    resets: Vec<Attempt>,
    /// Anything but a response, a refusal or a reset.
    failed: Vec<Attempt>,
    /// Clients that saw more than one reset.
    reset_twice: usize,
}

impl Tally {
    fn add(&mut self, attempts: Vec<Attempt>) {
        let mut resets = 0;
        for attempt in attempts {
            match attempt.outcome {
                ref o if o.is_ok() => self.ok += 1,
                Outcome::Refused => self.refused += 1,
                Outcome::Reset => {
                    resets += 1;
                    self.resets.push(attempt);
                }
                _ => self.failed.push(attempt),
            }
        }
        self.reset_twice += usize::from(resets > 1);
    }

    /// The only reset the kernel allows: a handshake in flight at the instant
    /// the listener closed (see the README). So every reset must overlap the
    /// drain, and no client can see two.
    fn assert_no_loss(&self, drain_started: Instant, listeners_closed: Instant) {
        assert!(self.failed.is_empty(), "{self:#?}");
        assert_eq!(self.reset_twice, 0, "{self:#?}");
        for reset in &self.resets {
            assert!(
                reset.started <= listeners_closed && reset.ended >= drain_started,
                "a reset outside the drain is a lost connection: {self:#?}"
            );
        }
        if !self.resets.is_empty() {
            eprintln!("resets at the instant of close(2): {}", self.resets.len());
        }
    }
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
    let load = Load::start(server.addr, true);
    load.wait_ok(200).await;

    let (started, closed) = drain(&server.watch).await;
    let report = server.stopped().await;
    let tally = load.finish(true).await;

    tally.assert_no_loss(started, closed);
    assert!(tally.ok >= 200, "{tally:#?}");
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

    let load = Load::start(first.addr, false);
    load.wait_ok(200).await;
    let (started, closed) = drain(&first.watch).await;
    let report = first.stopped().await;
    // The sibling keeps serving after the first one is gone.
    load.wait_ok(200).await;
    let tally = load.finish(false).await;

    tally.assert_no_loss(started, closed);
    assert_eq!(tally.refused, 0, "{tally:#?}");
    assert_eq!(report.forced, None);

    second.watch.trigger();
    second.stopped().await;
}
