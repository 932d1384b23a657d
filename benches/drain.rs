//! The tower-drain benchmark suite: `cargo bench --bench drain` runs every
//! part and prints one markdown table (the one in `BENCHMARKS.md`).
//!
//! 1. Loopback HTTP/1.1 keep-alive and HTTP/2 throughput and latency, plain
//!    `axum::serve` against the same app with `GracefulAccept` +
//!    `DrainLayer`, alternating in rounds; then the server's instructions and
//!    heap allocations per request under callgrind, which noise cannot move.
//! 2. `DrainLayer` as a tower service call against the bare service
//!    (criterion), with its heap allocations counted.
//! 3. Drain timing: trigger → listening socket closed and trigger → `serve`
//!    returned, with connections in the accept queue or idle on keep-alive.
//! 4. Memory the tracking adds per connection and per request in flight.
//!
//! Heap allocations are counted by a counting global allocator
//! (`stats_alloc`), the same for every side. Run with
//! `TOWER_DRAIN_BENCH_SERVER` set to a side (`plain`, `drain`,
//! `listener-only`, `noop-layer`, `drain-outside`), the binary is instead the
//! one-thread server that part 1b profiles. `cargo bench --bench drain --
//! NAME..` runs only the parts named (`load callgrind layer timing memory`).

use std::{
    alloc::System,
    io,
    time::{Duration, Instant},
};

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[path = "drain/app.rs"]
mod app;
#[path = "drain/callgrind.rs"]
mod callgrind;
#[path = "drain/client.rs"]
mod client;
#[path = "drain/layer.rs"]
mod layer;
#[path = "drain/load.rs"]
mod load;
#[path = "drain/memory.rs"]
mod memory;
#[path = "drain/report.rs"]
mod report;
#[path = "drain/timing.rs"]
mod timing;

use app::Side;
use report::Table;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A part of the suite: its name on the command line, its section title,
/// and what adds its rows to the table.
type Part = (&'static str, &'static str, fn(&mut Table) -> io::Result<()>);

/// Every part, in the order they run; `cargo bench --bench drain -- NAME..`
/// runs only the parts named.
const PARTS: [Part; 5] = [
    (
        "load",
        "1a. Loopback HTTP, wall clock: plain axum vs GracefulAccept + DrainLayer",
        load::run,
    ),
    (
        "callgrind",
        "1b. The same server, one thread, under callgrind: cost per request and per connection",
        callgrind::run,
    ),
    (
        "layer",
        "2. DrainLayer as a tower service call: bare service vs DrainService",
        layer::run,
    ),
    (
        "timing",
        "3. Drain timing, from the trigger (median and max of 5 trials)",
        timing::run,
    ),
    ("memory", "4. Memory added by the tracking", memory::run),
];

fn main() -> io::Result<()> {
    if let Ok(side) = std::env::var(callgrind::CHILD_ENV) {
        let side = Side::from_name(&side)
            .ok_or_else(|| io::Error::other(format!("unknown server side {side:?}")))?;
        return callgrind::child(side);
    }
    // `cargo test --all-targets` runs bench binaries without `--bench`:
    // the suite takes minutes, so it only runs when asked for.
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("the drain benchmarks run with `cargo bench --bench drain`");
        return Ok(());
    }
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let started = Instant::now();
    let mut table = Table::default();
    for (name, title, run) in PARTS {
        if chosen.is_empty() || chosen.iter().any(|c| c == name) {
            table.section(title);
            run(&mut table)?;
        }
    }
    println!(
        "\n## tower-drain benchmarks\n\n{}",
        machine(started.elapsed())
    );
    println!("{table}");
    Ok(())
}

/// One line on what ran the benchmarks, and how long it took.
fn machine(elapsed: Duration) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|name| name.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| std::env::consts::OS.into(), |r| r.trim().to_owned());
    format!(
        "Machine: {cpu}, {cpus} CPUs, Linux {kernel}; release build; suite ran in {:.0} s.",
        elapsed.as_secs_f64()
    )
}
