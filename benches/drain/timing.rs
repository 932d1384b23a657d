//! Part 3: how long the drain takes, from the trigger to the listening socket
//! closing and to `serve` returning, with connections waiting in the accept
//! queue or idle on keep-alive.

use std::{
    fmt, io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::future::{join_all, try_join_all};
use tokio::{net::TcpListener, runtime::Handle};
use tower_drain::{GracefulAccept, Watch};

use crate::{
    app::{bind, runtime, serve_drain, Running, Side},
    client::{answered, connect_and_send, within, Protocol, Sender},
    report::{self, Row, Table, Verdict},
};

/// Trials per scenario; the table shows the median and the worst.
const TRIALS: usize = 5;
/// The goal for the queue drain of 1000 connections: single-digit ms.
const FD_CLOSED_GOAL: Duration = Duration::from_millis(10);
/// The goal for `serve` returning after the last connection closed.
const SERVE_RETURNED_GOAL: Duration = Duration::from_millis(1);

/// What waits on the server when the drain is triggered.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// Connections in the kernel's accept queue, each with its request sent,
    /// not yet accepted: the server starts after the trigger.
    Queued(usize),
    /// Keep-alive connections that had one answer and are now idle.
    Idle(usize),
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scenario::Queued(n) => write!(f, "{n} queued"),
            Scenario::Idle(n) => write!(f, "{n} idle keep-alive"),
        }
    }
}

/// One drain, every instant measured from the trigger.
#[derive(Debug, Clone, Copy)]
struct Trial {
    fd_closed: Duration,
    serve_returned: Duration,
    /// When the last connection closed (the drain's own report).
    last_closed: Duration,
    /// Queued connections that got their `200 OK`.
    answered: usize,
}

/// Runs every scenario [`TRIALS`] times and adds the rows to `table`.
///
/// The servers run on a one-thread runtime and the clients on another, so
/// that the clients' work never delays the server's.
pub(crate) fn run(table: &mut Table) -> io::Result<()> {
    let servers = runtime("server")?;
    let servers = servers.handle();
    runtime("client")?.block_on(async {
        for scenario in [
            Scenario::Queued(0),
            Scenario::Queued(100),
            Scenario::Queued(1000),
            Scenario::Idle(1000),
        ] {
            eprintln!("drain timing: {scenario}, {TRIALS} trials");
            let (mut trials, mut baselines) = (Vec::new(), Vec::new());
            for _ in 0..TRIALS {
                trials.push(drain_trial(servers, scenario).await?);
                baselines.push(baseline(servers, scenario).await?);
            }
            rows(table, scenario, &trials, &baselines);
        }
        Ok(())
    })
}

/// Runs `f` in the context of the server runtime: what it binds or spawns
/// belongs to that runtime.
fn on<T>(servers: &Handle, f: impl FnOnce() -> T) -> T {
    let _context = servers.enter();
    f()
}

/// Sets `scenario` up on a drained server, triggers, and times the drain.
async fn drain_trial(servers: &Handle, scenario: Scenario) -> io::Result<Trial> {
    let watch = Watch::new();
    let listener = GracefulAccept::new(on(servers, bind)?, watch.clone());
    let addr = listener.local_addr()?;
    let spawn_serve = |listener| servers.spawn(timed(serve_drain(listener)));
    let (mut listener, mut serve) = (Some(listener), None);
    let (queued, _idle) = match scenario {
        Scenario::Queued(n) => (queue(addr, n).await?, Vec::new()),
        Scenario::Idle(n) => {
            serve = listener.take().map(spawn_serve);
            (Vec::new(), idle(addr, n).await?)
        }
    };
    let triggered = Instant::now();
    watch.trigger();
    let serve = serve
        .or_else(|| listener.map(spawn_serve))
        .expect("the server starts before or after the trigger");
    let answered = join_all(queued.into_iter().map(answered)).await;
    let (served, serve_returned) = within("serve to return", async {
        serve.await.map_err(io::Error::other)
    })
    .await?;
    served?;
    let report = within("the drain report", async { Ok(watch.drained().await) }).await?;
    Ok(Trial {
        // Recorded by the accepting task the moment it closes the socket; a
        // task waiting on `listeners_closed()` would add the time the busy
        // one-thread server runtime takes to schedule it.
        fd_closed: report.closing_listeners,
        serve_returned: serve_returned - triggered,
        last_closed: report.total(),
        answered: answered.into_iter().filter(|ok| *ok).count(),
    })
}

/// `future`'s output and the instant it completed.
async fn timed<T>(future: impl std::future::Future<Output = T>) -> (T, Instant) {
    let output = future.await;
    (output, Instant::now())
}

/// `n` connections in `addr`'s accept queue, each with a request sent.
async fn queue(addr: SocketAddr, n: usize) -> io::Result<Vec<tokio::net::TcpStream>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(connect_and_send(addr).await?);
    }
    Ok(clients)
}

/// `n` keep-alive connections to `addr` that have each had one answer.
async fn idle(addr: SocketAddr, n: usize) -> io::Result<Vec<Sender>> {
    try_join_all((0..n).map(|_| async move {
        let mut sender = Sender::connect(addr, Protocol::Http1).await?;
        within("a response", sender.get()).await?;
        Ok::<_, io::Error>(sender)
    }))
    .await
}

/// What the scenario costs without the drain's server: for a queue, the
/// time a tight non-blocking accept(2) loop takes to empty it, and the time
/// `GracefulAccept` alone (no server) takes from the trigger to closing its
/// socket; for idle connections, plain axum's trigger → `serve` returned.
async fn baseline(servers: &Handle, scenario: Scenario) -> io::Result<Baseline> {
    match scenario {
        Scenario::Queued(n) => {
            let listener = bind()?;
            let _clients = queue(listener.local_addr()?, n).await?;
            let accept_loop = accept_all(listener)?;
            let listener = bind()?;
            let _clients = queue(listener.local_addr()?, n).await?;
            Ok(Baseline {
                accept_loop,
                graceful_accept: graceful_accept_alone(listener).await,
                ..Baseline::default()
            })
        }
        Scenario::Idle(n) => {
            let server = on(servers, || Running::start(Side::Plain))?;
            let _idle = idle(server.addr, n).await?;
            let triggered = Instant::now();
            server.stop().await?;
            Ok(Baseline {
                plain_axum: triggered.elapsed(),
                ..Baseline::default()
            })
        }
    }
}

/// See [`baseline`]; the figures that do not apply to a scenario are zero.
#[derive(Debug, Clone, Copy, Default)]
struct Baseline {
    accept_loop: Duration,
    graceful_accept: Duration,
    plain_axum: Duration,
}

/// Triggers a drain on `listener` and accepts, holding every connection,
/// until it closes its socket; returns how long that took.
async fn graceful_accept_alone(listener: TcpListener) -> Duration {
    let watch = Watch::new();
    let mut listener = GracefulAccept::new(listener, watch.clone());
    let mut held = Vec::new();
    let closed = watch.listeners_closed();
    tokio::pin!(closed);
    let triggered = Instant::now();
    watch.trigger();
    loop {
        tokio::select! {
            accepted = listener.accept() => held.push(accepted),
            () = &mut closed => return triggered.elapsed(),
        }
    }
}

/// Accepts with non-blocking accept(2) until the queue is empty.
fn accept_all(listener: TcpListener) -> io::Result<Duration> {
    let listener = listener.into_std()?;
    let start = Instant::now();
    let mut accepted = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _)) => accepted.push(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(start.elapsed()),
            Err(e) => return Err(e),
        }
    }
}

fn rows(table: &mut Table, scenario: Scenario, trials: &[Trial], baselines: &[Baseline]) {
    let median = |of: fn(&Baseline) -> Duration| {
        report::seconds(Spread::of(baselines, |b| of(b).as_secs_f64()).median)
    };
    let (queued, baseline_fd, baseline_serve) = match scenario {
        Scenario::Queued(n) => (
            n,
            format!(
                "accept(2) loop {}; GracefulAccept alone {}",
                median(|b| b.accept_loop),
                median(|b| b.graceful_accept)
            ),
            "—".into(),
        ),
        Scenario::Idle(_) => (
            0,
            "—".into(),
            format!("{} (plain axum)", median(|b| b.plain_axum)),
        ),
    };
    let answered = trials.iter().map(|t| t.answered).min().unwrap_or(0);
    let fd_closed = Spread::of(trials, |t| t.fd_closed.as_secs_f64());
    table.row(Row {
        measure: format!("{scenario}: trigger → fd closed"),
        baseline: baseline_fd,
        drain: fd_closed.to_string(),
        change: format!("{answered}/{queued} queued answered"),
        goal: "median single-digit ms, all answered",
        verdict: Verdict::from_goal(fd_closed.median() < FD_CLOSED_GOAL && answered == queued),
    });
    table.row(Row {
        measure: format!("{scenario}: trigger → serve returned"),
        baseline: baseline_serve,
        drain: Spread::of(trials, |t| t.serve_returned.as_secs_f64()).to_string(),
        change: String::new(),
        goal: "",
        verdict: Verdict::Info,
    });
    let lag = Spread::of(trials, |t| {
        t.serve_returned.as_secs_f64() - t.last_closed.as_secs_f64()
    });
    table.row(Row {
        measure: format!("{scenario}: last connection closed → serve returned"),
        baseline: "—".into(),
        drain: lag.to_string(),
        change: String::new(),
        goal: "≤ 1 ms",
        verdict: Verdict::from_goal(lag.worst() <= SERVE_RETURNED_GOAL),
    });
}

/// The median and the worst of one figure over the trials, in seconds (a
/// figure may be negative: `serve` can return a hair before the drain's own
/// report of the last close).
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    worst: f64,
}

impl Spread {
    fn of<T>(trials: &[T], figure: impl Fn(&T) -> f64) -> Self {
        let mut values: Vec<f64> = trials.iter().map(figure).collect();
        let (_, worst) = report::range(&values);
        Self {
            median: report::median(&mut values),
            worst,
        }
    }

    fn median(&self) -> Duration {
        Duration::from_secs_f64(self.median.max(0.0))
    }

    fn worst(&self) -> Duration {
        Duration::from_secs_f64(self.worst.max(0.0))
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (median, worst) = (report::seconds(self.median), report::seconds(self.worst));
        write!(f, "{median} (max {worst})")
    }
}
