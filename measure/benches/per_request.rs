//! Server instructions (callgrind) and heap allocations per request and per
//! connection, for an axum hello-world served seven ways:
//! `cargo bench -p tower-drain-measure --bench per_request` prints two markdown tables.
//!
//! The binary re-runs itself as a one-thread (`current_thread`) server child,
//! the side named by `TOWER_DRAIN_BENCH_SIDE`, under `valgrind
//! --tool=callgrind` when valgrind is installed. The parent (not under
//! valgrind) sends it N requests on one HTTP/1.1 keep-alive connection, or N
//! connections each with one `Connection: close` request, then closes the
//! child's standard input; the child shuts down gracefully and prints its
//! heap allocations (counting global allocator: allocations plus
//! reallocations). With two values of N, (X(high) − X(low)) / (high − low)
//! is the cost of one unit, start-up and shutdown cancelling out. Each run is
//! made twice, every side in turn, and the lower total is kept. The
//! callgrind files stay in `target/tmp/` for `callgrind_annotate`.

use std::{
    alloc::System,
    env,
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    process::Stdio,
    time::Duration,
};

use axum::{extract::Request, routing::get, Router, ServiceExt};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::oneshot,
};
use tower::Layer;
use tower_drain::{DrainLayer, GracefulAccept, Watch};

#[path = "common/count.rs"]
mod count;

use count::CountLayer;

/// Counts every heap allocation of the process.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Set to a side's name, it makes this binary that side's server child.
const SIDE_ENV: &str = "TOWER_DRAIN_BENCH_SIDE";
/// The bound on any single wait: reached only when something is broken.
const PATIENCE: Duration = Duration::from_secs(120);
/// How many times each child run is made; the lower total is kept.
const RUNS: usize = 2;

/// A way to serve the app; every side serves the same [`hello`] router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// `axum::serve(TcpListener, router).with_graceful_shutdown(..)`.
    Plain,
    /// Plain, with [`CountLayer`] through `Router::layer`.
    CountInside,
    /// Plain, with [`CountLayer`] around the whole `Router`.
    CountOutside,
    /// Plain, with `DrainLayer` through `Router::layer`.
    DrainInside,
    /// `GracefulAccept` + `Watch::shutdown_signal`, no per-request layer.
    Default,
    /// `Default`, with [`CountLayer`] around the whole `Router`.
    DefaultCountOutside,
    /// `Default`, with `DrainLayer::around_router`.
    DefaultDrainRouter,
}

impl Side {
    /// Every side, in declaration order (so `side as usize` indexes it).
    const ALL: [Side; 7] = [
        Side::Plain,
        Side::CountInside,
        Side::CountOutside,
        Side::DrainInside,
        Side::Default,
        Side::DefaultCountOutside,
        Side::DefaultDrainRouter,
    ];

    /// The side's name, in the tables and in [`SIDE_ENV`].
    fn name(self) -> &'static str {
        match self {
            Side::Plain => "plain",
            Side::CountInside => "count-inside",
            Side::CountOutside => "count-outside",
            Side::DrainInside => "drain-inside",
            Side::Default => "default",
            Side::DefaultCountOutside => "default+count-outside",
            Side::DefaultDrainRouter => "default+drain-router",
        }
    }

    /// The counting side with the same layer placement as this drain side.
    fn counterpart(self) -> Option<Side> {
        match self {
            Side::DrainInside => Some(Side::CountInside),
            Side::DefaultDrainRouter => Some(Side::DefaultCountOutside),
            _ => None,
        }
    }
}

/// What the parent makes the child serve.
#[derive(Debug, Clone, Copy)]
enum Workload {
    /// N requests, one after another, on one HTTP/1.1 keep-alive connection.
    KeepAlive,
    /// N connections, one after another, each with one `Connection: close`
    /// request, read until the server closes it.
    Connections,
}

impl Workload {
    /// The two values of N whose difference is measured.
    fn counts(self) -> [u64; 2] {
        match self {
            Workload::KeepAlive => [1_000, 5_000],
            Workload::Connections => [200, 1_000],
        }
    }

    /// The table's title.
    fn title(self) -> &'static str {
        match self {
            Workload::KeepAlive => "Per request: one HTTP/1.1 keep-alive connection",
            Workload::Connections => {
                "Per connection: connect, one `Connection: close` request, server closes"
            }
        }
    }

    /// Sends `count` units of this workload to the server at `addr`.
    async fn run(self, addr: SocketAddr, count: u64) -> io::Result<()> {
        let mut response = Vec::new();
        match self {
            Workload::KeepAlive => {
                let mut stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                for _ in 0..count {
                    stream
                        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                        .await?;
                    response.clear();
                    while !response.ends_with(ANSWER) {
                        if within(stream.read_buf(&mut response)).await? == 0 {
                            return Err(io::Error::other("closed before the answer"));
                        }
                    }
                    check(&response)?;
                }
            }
            Workload::Connections => {
                for _ in 0..count {
                    let mut stream = TcpStream::connect(addr).await?;
                    stream
                        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                        .await?;
                    response.clear();
                    within(stream.read_to_end(&mut response)).await?;
                    check(&response)?;
                }
            }
        }
        Ok(())
    }
}

/// The end of every answer: the app's `hello` after the head.
const ANSWER: &[u8] = b"\r\n\r\nhello";

/// Fails unless `response` is a whole `200 OK` with the app's answer.
fn check(response: &[u8]) -> io::Result<()> {
    if response.starts_with(b"HTTP/1.1 200 OK") && response.ends_with(ANSWER) {
        Ok(())
    } else {
        Err(io::Error::other("the answer is not `200 OK` `hello`"))
    }
}

/// Awaits `future`, failing with `TimedOut` after [`PATIENCE`].
async fn within<T>(future: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(PATIENCE, future)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the server did not answer"))?
}

/// The app: `GET /` answers `hello`.
fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

fn main() -> io::Result<()> {
    if let Ok(name) = env::var(SIDE_ENV) {
        let side = Side::ALL
            .into_iter()
            .find(|side| side.name() == name)
            .ok_or_else(|| io::Error::other(format!("unknown side {name:?}")))?;
        return child(side);
    }
    // `cargo test --all-targets` runs bench binaries without `--bench`.
    if !env::args().any(|arg| arg == "--bench") {
        eprintln!("run with `cargo bench -p tower-drain-measure --bench per_request`");
        return Ok(());
    }
    let valgrind = std::process::Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !valgrind {
        println!(
            "\n**valgrind not found: instruction counts are `n/a`** (Debian package `valgrind`)."
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for workload in [Workload::KeepAlive, Workload::Connections] {
        let costs = runtime.block_on(measure(workload, valgrind))?;
        print_table(workload, &costs);
    }
    Ok(())
}

/// The child: serves `side` on a one-thread runtime, prints its address,
/// stops gracefully when standard input closes, then prints how many heap
/// allocations it made.
fn child(side: Side) -> io::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(side))?;
    let stats = INSTRUMENTED_SYSTEM.stats();
    println!("{}", stats.allocations + stats.reallocations);
    Ok(())
}

/// Serves `side` on 127.0.0.1 until standard input closes.
async fn serve(side: Side) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let watch = Watch::new();
    let signal: Pin<Box<dyn Future<Output = ()> + Send>> = if matches!(
        side,
        Side::Default | Side::DefaultCountOutside | Side::DefaultDrainRouter
    ) {
        let trigger = watch.clone();
        tokio::spawn(async move {
            stdin_closed().await;
            trigger.trigger();
        });
        Box::pin(watch.shutdown_signal())
    } else {
        Box::pin(stdin_closed())
    };
    let drain = || DrainLayer::new(watch.clone());
    let count_outside = || ServiceExt::<Request>::into_make_service(CountLayer.layer(hello()));
    let graceful = |listener| GracefulAccept::new(listener, watch.clone());
    // Each side's listener and service have their own types.
    macro_rules! serve {
        ($listener:expr, $service:expr) => {
            axum::serve($listener, $service)
                .with_graceful_shutdown(signal)
                .await
        };
    }
    match side {
        Side::Plain => serve!(listener, hello()),
        Side::CountInside => serve!(listener, hello().layer(CountLayer)),
        Side::CountOutside => serve!(listener, count_outside()),
        Side::DrainInside => serve!(listener, hello().layer(drain())),
        Side::Default => serve!(graceful(listener), hello()),
        Side::DefaultCountOutside => serve!(graceful(listener), count_outside()),
        Side::DefaultDrainRouter => serve!(graceful(listener), drain().around_router(hello())),
    }
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

/// What one child run counted: instructions (under callgrind) and heap
/// allocations.
#[derive(Debug, Clone, Copy)]
struct Cost {
    /// Instructions executed, `None` without valgrind.
    instructions: Option<f64>,
    /// Heap allocations and reallocations.
    allocations: f64,
}

impl Cost {
    /// `f` applied to each figure of `self` and `other`.
    fn with(self, other: Cost, f: impl Fn(f64, f64) -> f64) -> Cost {
        Cost {
            instructions: self
                .instructions
                .zip(other.instructions)
                .map(|(a, b)| f(a, b)),
            allocations: f(self.allocations, other.allocations),
        }
    }

    /// This cost against `base`: the instruction difference (ratio), and
    /// the allocation difference.
    fn versus(self, base: Cost) -> String {
        // Rounded first, so that a difference of −0.0002 reads +0.00.
        let allocations = ((self.allocations - base.allocations) * 100.0).round() / 100.0 + 0.0;
        let allocations = format!("{allocations:+.2}");
        match self.instructions.zip(base.instructions) {
            Some((this, base)) => {
                format!("{:+.0} ({:.3}×), {allocations}", this - base, this / base)
            }
            None => allocations,
        }
    }
}

/// The per-unit cost of `workload` on each side, in [`Side::ALL`] order.
async fn measure(workload: Workload, valgrind: bool) -> io::Result<Vec<Cost>> {
    let [low, high] = workload.counts();
    let mut lowest: Vec<[Option<Cost>; 2]> = vec![[None; 2]; Side::ALL.len()];
    for _ in 0..RUNS {
        for side in Side::ALL {
            for (slot, count) in lowest[side as usize].iter_mut().zip([low, high]) {
                let cost = profile(side, workload, count, valgrind).await?;
                eprintln!(
                    "per_request: {workload:?} × {count} on {}: {cost:?}",
                    side.name()
                );
                *slot = Some(slot.map_or(cost, |kept| kept.with(cost, f64::min)));
            }
        }
    }
    let span = (high - low) as f64;
    let per_unit = |[l, h]: [Option<Cost>; 2]| {
        let (l, h) = (l.expect("measured"), h.expect("measured"));
        h.with(l, |h, l| (h - l) / span)
    };
    Ok(lowest.into_iter().map(per_unit).collect())
}

/// Starts the child for `side`, sends it `count` units of `workload`, stops
/// it and reads what it counted.
async fn profile(side: Side, workload: Workload, count: u64, valgrind: bool) -> io::Result<Cost> {
    let out = callgrind_file(side, workload, count);
    let exe = env::current_exe()?;
    let mut command = if valgrind {
        let mut command = Command::new("valgrind");
        command
            .args(["--tool=callgrind", "--quiet"])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(exe);
        command
    } else {
        Command::new(exe)
    };
    let mut child = command
        .env(SIDE_ENV, side.name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next_line = async || {
        within(lines.next_line())
            .await?
            .ok_or_else(|| io::Error::other("the server exited early"))
    };
    let addr = next_line().await?.parse().map_err(io::Error::other)?;
    workload.run(addr, count).await?;
    drop(child.stdin.take());
    let allocations = next_line().await?.parse().map_err(io::Error::other)?;
    let status = within(child.wait()).await?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "{} exited with {status}",
            side.name()
        )));
    }
    let instructions = if valgrind {
        Some(total_instructions(&out)? as f64)
    } else {
        None
    };
    Ok(Cost {
        instructions,
        allocations,
    })
}

/// Where the callgrind run of `side` on `count` units of `workload` writes.
fn callgrind_file(side: Side, workload: Workload, count: u64) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "per_request-{}-{workload:?}-{count}.callgrind",
        side.name()
    ))
}

/// The `totals:` (or `summary:`) line of a callgrind output file: every
/// instruction the process executed.
fn total_instructions(out: &Path) -> io::Result<u64> {
    std::fs::read_to_string(out)?
        .lines()
        .filter_map(|line| {
            line.strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
        })
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no totals in {}", out.display())))
}

/// Prints the markdown table of `costs` (one per side, in [`Side::ALL`] order).
fn print_table(workload: Workload, costs: &[Cost]) {
    let [low, high] = workload.counts();
    println!(
        "\n### {}\n\n(X({high}) − X({low})) / {}, lower of {RUNS} runs; the `vs` columns give \
         the instruction difference (ratio) and the allocation difference.\n",
        workload.title(),
        high - low
    );
    println!(
        "| side | instructions | allocations | vs plain | vs counting layer, same placement |"
    );
    println!("|---|---:|---:|---:|---:|");
    let plain = costs[Side::Plain as usize];
    for (side, cost) in Side::ALL.into_iter().zip(costs) {
        let instructions = cost
            .instructions
            .map_or("n/a".into(), |n| format!("{n:.0}"));
        let vs_plain = if side == Side::Plain {
            "—".into()
        } else {
            cost.versus(plain)
        };
        let vs_count = side
            .counterpart()
            .map_or("—".into(), |count| cost.versus(costs[count as usize]));
        println!(
            "| {} | {instructions} | {:.2} | {vs_plain} | {vs_count} |",
            side.name(),
            cost.allocations
        );
    }
}
