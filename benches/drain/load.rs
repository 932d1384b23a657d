//! Part 1a: throughput and latency over loopback, plain axum against the
//! drain, alternating in rounds so that machine noise hits both sides alike.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{
    app::{runtime, Running, Side},
    client::{Protocol, Sender},
    report::{self, Row, Table, Verdict},
};

/// Rounds per protocol; each round measures both sides once.
const ROUNDS: usize = 15;
/// Requests in flight at any time (connections for HTTP/1.1).
const CONCURRENCY: usize = 64;
/// HTTP/2 connections; [`CONCURRENCY`] streams are spread over them.
const HTTP2_CONNECTIONS: usize = 4;
/// Load before each measured window, not counted.
const WARM_UP: Duration = Duration::from_millis(100);
/// The measured window of one side in one round.
const WINDOW: Duration = Duration::from_millis(400);

/// What one side did in one measured window.
#[derive(Debug, Default)]
struct Sample {
    requests_per_second: f64,
    /// Every request's latency in nanoseconds, sorted.
    latencies: Vec<u64>,
}

impl Sample {
    fn p(&self, percentile: f64) -> Duration {
        Duration::from_nanos(report::percentile(&self.latencies, percentile))
    }
}

/// Runs the rounds for HTTP/1.1 and HTTP/2 and adds their rows to `table`.
///
/// The servers run on a one-thread runtime, the clients on another, so each
/// gets one of the machine's two cores.
pub(crate) fn run(table: &mut Table) -> io::Result<()> {
    let servers = runtime("server")?;
    let clients = runtime("client")?;
    let running = servers.block_on(async {
        Ok::<_, io::Error>([Running::start(Side::Plain)?, Running::start(Side::Drain)?])
    })?;
    let addrs = running.each_ref().map(|server| server.addr);
    for protocol in [Protocol::Http1, Protocol::Http2] {
        eprintln!("load: {protocol}, {ROUNDS} rounds of {WINDOW:?} per side");
        let rounds = clients.block_on(rounds(addrs, protocol))?;
        rows(table, protocol, &rounds);
    }
    servers.block_on(async {
        for server in running {
            server.stop().await?;
        }
        Ok(())
    })
}

/// `ROUNDS` pairs of samples, `[plain, drain]`; the side that goes first
/// alternates from round to round.
async fn rounds(addrs: [SocketAddr; 2], protocol: Protocol) -> io::Result<Vec<[Sample; 2]>> {
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let mut pair: [Sample; 2] = Default::default();
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            pair[side] = measure(addrs[side], protocol).await?;
        }
        rounds.push(pair);
    }
    Ok(rounds)
}

/// Opens the connections, warms up, then measures one window.
async fn measure(addr: SocketAddr, protocol: Protocol) -> io::Result<Sample> {
    let senders = connect(addr, protocol).await?;
    let (senders, _) = drive(senders, WARM_UP).await?;
    let (_, sample) = drive(senders, WINDOW).await?;
    Ok(sample)
}

/// [`CONCURRENCY`] senders: one connection each for HTTP/1.1, or clones
/// spread over [`HTTP2_CONNECTIONS`] for HTTP/2.
async fn connect(addr: SocketAddr, protocol: Protocol) -> io::Result<Vec<Sender>> {
    let connections = match protocol {
        Protocol::Http1 => CONCURRENCY,
        Protocol::Http2 => HTTP2_CONNECTIONS,
    };
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(Sender::connect(addr, protocol).await?);
    }
    if protocol == Protocol::Http1 {
        return Ok(opened);
    }
    Ok((0..CONCURRENCY)
        .map(|i| opened[i % connections].share().expect("an HTTP/2 sender"))
        .collect())
}

/// Every sender requests in a loop until `window` is over; returns the
/// senders for the next window and what they did.
async fn drive(senders: Vec<Sender>, window: Duration) -> io::Result<(Vec<Sender>, Sample)> {
    let start = Instant::now();
    let until = start + window;
    let workers: Vec<_> = senders
        .into_iter()
        .map(|sender| tokio::spawn(worker(sender, until)))
        .collect();
    let mut senders = Vec::with_capacity(workers.len());
    let mut latencies = Vec::new();
    for worker in workers {
        let (sender, worker_latencies) = worker.await.map_err(io::Error::other)??;
        senders.push(sender);
        latencies.extend(worker_latencies);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let sample = Sample {
        requests_per_second: latencies.len() as f64 / elapsed,
        latencies,
    };
    Ok((senders, sample))
}

/// One request at a time on `sender` until `until`, timing each.
async fn worker(mut sender: Sender, until: Instant) -> io::Result<(Sender, Vec<u64>)> {
    let mut latencies = Vec::with_capacity(64 * 1024);
    loop {
        let start = Instant::now();
        if start >= until {
            return Ok((sender, latencies));
        }
        crate::client::within("a response", sender.get()).await?;
        latencies.push(start.elapsed().as_nanos() as u64);
    }
}

/// The throughput ratio per round, and p50/p99 per side.
fn rows(table: &mut Table, protocol: Protocol, rounds: &[[Sample; 2]]) {
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|[plain, drain]| drain.requests_per_second / plain.requests_per_second)
        .collect();
    let (low, high) = report::range(&ratios);
    let ratio = report::median(&mut ratios);
    let throughput = |side: usize| {
        let mut rps: Vec<f64> = rounds.iter().map(|r| r[side].requests_per_second).collect();
        format!("{:.0} req/s", report::median(&mut rps))
    };
    table.row(Row {
        measure: format!(
            "{protocol} throughput, {CONCURRENCY} in flight (median of {ROUNDS} rounds)"
        ),
        baseline: throughput(0),
        drain: throughput(1),
        change: format!("ratio {ratio:.3} (rounds {low:.3}–{high:.3})"),
        goal: "ratio ≥ 0.99",
        verdict: noisy_verdict(ratio >= 0.99, low <= 1.0 && 1.0 <= high),
    });
    for percentile in [50.0, 99.0] {
        latency_row(table, protocol, rounds, percentile);
    }
}

/// The median over rounds of one latency percentile, per side. The goal
/// holds when the drain's figure lies within the spread of plain axum's
/// rounds.
fn latency_row(table: &mut Table, protocol: Protocol, rounds: &[[Sample; 2]], percentile: f64) {
    let per_round = |side: usize| -> Vec<f64> {
        rounds
            .iter()
            .map(|r| r[side].p(percentile).as_secs_f64())
            .collect()
    };
    let (mut plain, mut drain) = (per_round(0), per_round(1));
    let (low, high) = report::range(&plain);
    let (plain, drain) = (report::median(&mut plain), report::median(&mut drain));
    let seconds = |s: f64| report::duration(Duration::from_secs_f64(s));
    table.row(Row {
        measure: format!("{protocol} latency p{percentile:.0} (median of rounds)"),
        baseline: format!("{} ({}–{})", seconds(plain), seconds(low), seconds(high)),
        drain: seconds(drain),
        change: report::percent_change(drain, plain),
        goal: "unchanged within noise",
        verdict: if percentile < 99.0 {
            Verdict::Info
        } else {
            Verdict::from_goal(drain <= high)
        },
    });
}

/// `Met` if `ok`; a miss that the round-to-round spread covers is `Noise`.
fn noisy_verdict(ok: bool, within_spread: bool) -> Verdict {
    match (ok, within_spread) {
        (true, _) => Verdict::Met,
        (false, true) => Verdict::Noise,
        (false, false) => Verdict::Missed,
    }
}
