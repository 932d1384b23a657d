//! Part 1b: the figures noise cannot move. The bench binary re-runs itself
//! as a one-thread server (under `valgrind --tool=callgrind` when it is
//! installed), the parent sends it exactly N requests, and the difference
//! between two values of N gives the server's instructions and heap
//! allocations per request, start-up and shutdown cancelling out.

use std::{io, net::SocketAddr, path::Path, process::Stdio};

use futures_util::future::try_join_all;
use stats_alloc::INSTRUMENTED_SYSTEM;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{ChildStdout, Command},
    sync::oneshot,
};

use crate::{
    app::{Running, Side},
    client::{one_shot, within, Protocol, Sender},
    report::{self, Row, Table, Verdict},
};

/// Set to a side's name (`plain`, `drain`, …), it makes the bench binary
/// the server child.
pub(crate) const CHILD_ENV: &str = "TOWER_DRAIN_BENCH_SERVER";

/// What the parent asks of the child server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// N requests, one after another, on one HTTP/1.1 keep-alive connection.
    KeepAlive,
    /// N connections, one after another, each with one request that asks
    /// the server to close it; the next connects once the server has.
    ConnectionPerRequest,
}

impl Workload {
    /// The two counts whose difference is measured.
    fn counts(self) -> [u64; 2] {
        match self {
            Workload::KeepAlive => [1_000, 5_000],
            Workload::ConnectionPerRequest => [200, 1_000],
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Workload::KeepAlive => "request (HTTP/1.1 keep-alive)",
            Workload::ConnectionPerRequest => "connection (connect, 1 request, server closes)",
        }
    }

    async fn run(self, addr: SocketAddr, count: u64) -> io::Result<()> {
        match self {
            Workload::KeepAlive => {
                let mut sender = Sender::connect(addr, Protocol::Http1).await?;
                for _ in 0..count {
                    within("a response", sender.get()).await?;
                }
            }
            Workload::ConnectionPerRequest => {
                for _ in 0..count {
                    one_shot(addr).await?;
                }
            }
        }
        Ok(())
    }
}

/// The child: serves `side` on a `current_thread` runtime, prints its
/// address, stops gracefully when its standard input closes, then prints how
/// many heap allocations it made.
pub(crate) fn child(side: Side) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = Running::start(side)?;
        println!("{}", server.addr);
        stdin_closed().await;
        server.stop().await
    })?;
    let stats = INSTRUMENTED_SYSTEM.stats();
    println!("allocations {}", stats.allocations + stats.reallocations);
    Ok(())
}

/// Resolves when standard input reaches its end (the parent closed it).
async fn stdin_closed() {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// One child run: the instructions it executed (under callgrind) and its
/// heap allocations.
#[derive(Debug, Clone, Copy)]
struct Profile {
    instructions: Option<u64>,
    allocations: u64,
}

/// What one unit of a workload costs a side: the difference between two
/// runs divided by the difference of their counts.
#[derive(Debug, Clone, Copy)]
struct Cost {
    instructions: Option<f64>,
    allocations: f64,
}

impl Cost {
    fn between(low: Profile, high: Profile, span: u64) -> Self {
        let per_unit = |low: u64, high: u64| (high as f64 - low as f64) / span as f64;
        Self {
            instructions: low
                .instructions
                .zip(high.instructions)
                .map(|(low, high)| per_unit(low, high)),
            allocations: per_unit(low.allocations, high.allocations),
        }
    }

    fn instructions(&self) -> String {
        self.instructions
            .map_or_else(|| "n/a".into(), |n| format!("{n:.0}"))
    }

    fn instructions_change(&self, base: &Cost) -> String {
        match (self.instructions, base.instructions) {
            (Some(this), Some(base)) => format!(
                "{:+.0} ({})",
                this - base,
                report::percent_change(this, base)
            ),
            _ => "valgrind not installed".into(),
        }
    }
}

/// Runs both workloads for both sides and adds their rows to `table`.
pub(crate) fn run(table: &mut Table) -> io::Result<()> {
    let valgrind = valgrind_installed();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for workload in [Workload::KeepAlive, Workload::ConnectionPerRequest] {
        eprintln!(
            "callgrind: per {}, counts {:?}, valgrind {valgrind}",
            workload.unit(),
            workload.counts()
        );
        let costs = runtime.block_on(per_unit(workload, valgrind))?;
        rows(table, workload, &costs);
    }
    Ok(())
}

fn valgrind_installed() -> bool {
    std::process::Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// What one unit of `workload` costs each side, in [`Side::ALL`] order.
async fn per_unit(workload: Workload, valgrind: bool) -> io::Result<Vec<Cost>> {
    let [low, high] = workload.counts();
    let runs = Side::ALL
        .into_iter()
        .flat_map(|side| [low, high].map(|count| profile(side, workload, count, valgrind)));
    let profiles = try_join_all(runs).await?;
    Ok(profiles
        .chunks(2)
        .map(|pair| Cost::between(pair[0], pair[1], high - low))
        .collect())
}

/// Starts the child for `side`, runs `count` units of `workload` against it,
/// stops it and reads what it measured.
async fn profile(
    side: Side,
    workload: Workload,
    count: u64,
    valgrind: bool,
) -> io::Result<Profile> {
    let out = std::env::temp_dir().join(format!(
        "tower-drain-bench-{}-{side}-{workload:?}-{count}.callgrind",
        std::process::id()
    ));
    let mut child = command(&out, valgrind)
        .env(CHILD_ENV, side.name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let addr = next_line(&mut lines).await?;
    let addr = addr.parse().map_err(io::Error::other)?;
    workload.run(addr, count).await?;
    drop(child.stdin.take());
    let allocations = next_line(&mut lines).await?;
    within("the server to exit", child.wait()).await?;
    let instructions = valgrind.then(|| total_instructions(&out)).transpose()?;
    let _ = std::fs::remove_file(&out);
    Ok(Profile {
        instructions,
        allocations: allocations
            .strip_prefix("allocations ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad child output {allocations:?}")))?,
    })
}

/// This binary, under callgrind writing to `out` if `valgrind`.
fn command(out: &Path, valgrind: bool) -> Command {
    let exe = std::env::current_exe().expect("the bench binary's path");
    if !valgrind {
        return Command::new(exe);
    }
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe);
    command
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> io::Result<String> {
    within("a line from the server", lines.next_line())
        .await?
        .ok_or_else(|| io::Error::other("the server exited early"))
}

/// The `totals:` (or `summary:`) line of a callgrind output file: every
/// instruction the process executed.
fn total_instructions(out: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(out)?;
    text.lines()
        .filter_map(|line| {
            line.strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
        })
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .next_back()
        .ok_or_else(|| io::Error::other(format!("no totals in {}", out.display())))
}

/// The drain against plain axum, with the goals; then, for attribution, the
/// listener half of the drain alone, axum's cost of any body-wrapping
/// `Router::layer`, and the drain with its layer outside the router.
fn rows(table: &mut Table, workload: Workload, costs: &[Cost]) {
    let cost = |side: Side| costs[Side::ALL.iter().position(|s| *s == side).expect("a side")];
    let (plain, drain) = (cost(Side::Plain), cost(Side::Drain));
    let unit = workload.unit();
    let per_request = workload == Workload::KeepAlive;
    let goal = |goal: &'static str| if per_request { goal } else { "" };
    let verdict = |measured: bool, ok: bool| match (per_request, measured) {
        (false, _) => Verdict::Info,
        (true, false) => Verdict::Unavailable,
        (true, true) => Verdict::from_goal(ok),
    };
    table.row(Row {
        measure: format!("Server instructions per {unit}"),
        baseline: plain.instructions(),
        drain: drain.instructions(),
        change: drain.instructions_change(&plain),
        goal: goal("≤ 1% more"),
        verdict: verdict(
            plain.instructions.is_some(),
            drain.instructions <= plain.instructions.map(|n| n * 1.01),
        ),
    });
    table.row(Row {
        measure: format!("Server heap allocations per {unit}"),
        baseline: format!("{:.2}", plain.allocations),
        drain: format!("{:.2}", drain.allocations),
        change: format!("{:+.2}", drain.allocations - plain.allocations),
        goal: goal("no allocation added"),
        verdict: verdict(true, drain.allocations - plain.allocations < 0.01),
    });
    for (side, what) in [
        (Side::ListenerOnly, "GracefulAccept without DrainLayer"),
        (
            Side::NoopLayer,
            "plain + no-op body-wrapping `Router::layer`",
        ),
        (
            Side::DrainOutside,
            "drain, `DrainLayer` around the `Router`",
        ),
    ] {
        let cost = cost(side);
        table.row(Row {
            measure: format!("… {what}: instructions, allocations per {unit}"),
            baseline: format!("{}, {:.2}", plain.instructions(), plain.allocations),
            drain: format!("{}, {:.2}", cost.instructions(), cost.allocations),
            change: format!(
                "{}, {:+.2}",
                cost.instructions_change(&plain),
                cost.allocations - plain.allocations
            ),
            goal: "",
            verdict: Verdict::Info,
        });
    }
}
