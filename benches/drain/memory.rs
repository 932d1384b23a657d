//! Part 4: the memory the tracking adds, per open connection (the
//! `TrackedIo` wrapper and its registration) and per request in flight (the
//! response future and body wrappers, which live inside hyper's connection
//! task, not on the heap).

use std::{
    convert::Infallible,
    future::poll_fn,
    io,
    mem::size_of,
    net::SocketAddr,
    task::{Context, Poll},
};

use axum::{body::Body, routing::future::RouteFuture};
use stats_alloc::{Region, INSTRUMENTED_SYSTEM};
use tokio::net::{TcpListener, TcpStream};
use tower_drain::{
    layer::{DrainBody, ResponseFuture},
    GracefulAccept, TrackedIo, Watch,
};

use crate::{
    app::bind,
    report::{Row, Table, Verdict},
};

/// Connections accepted, and held open, per measurement.
const CONNECTIONS: usize = 1000;

/// A listener whose accepted connections are held and counted.
trait Accept {
    type Io;
    fn addr(&self) -> io::Result<SocketAddr>;
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Self::Io>;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    fn addr(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<TcpStream> {
        self.poll_accept(cx)
            .map(|accepted| accepted.expect("accept").0)
    }
}

impl Accept for GracefulAccept<TcpListener> {
    type Io = TrackedIo<TcpStream>;
    fn addr(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<TrackedIo<TcpStream>> {
        self.poll_accept(cx).map(|(io, _)| io)
    }
}

/// Heap use while [`CONNECTIONS`] accepted connections are open.
#[derive(Debug, Clone, Copy)]
struct Heap {
    allocations: f64,
    live_bytes: f64,
}

/// Measures the sizes and the heap per connection and adds the rows to `table`.
pub(crate) fn run(table: &mut Table) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (plain, tracked) = runtime.block_on(async {
        let plain = heap_per_connection(bind()?).await?;
        let tracked = heap_per_connection(GracefulAccept::new(bind()?, Watch::new())).await?;
        Ok::<_, io::Error>((plain, tracked))
    })?;
    let added_bytes = tracked.live_bytes - plain.live_bytes;
    table.row(Row {
        measure: format!(
            "Heap per open connection ({CONNECTIONS} held; tokio's own registration included)"
        ),
        baseline: format!(
            "{:.0} B in {:.2} allocations",
            plain.live_bytes, plain.allocations
        ),
        drain: format!(
            "{:.0} B in {:.2} allocations",
            tracked.live_bytes, tracked.allocations
        ),
        change: format!(
            "{added_bytes:+.0} B, {:+.2} allocations",
            tracked.allocations - plain.allocations
        ),
        goal: "report it",
        verdict: Verdict::Info,
    });
    size_row(
        table,
        "Connection IO: `TrackedIo<TcpStream>` vs `TcpStream`",
        size_of::<TcpStream>(),
        size_of::<TrackedIo<TcpStream>>(),
    );
    type Future = RouteFuture<Infallible>;
    size_row(
        table,
        "Request in flight: `ResponseFuture` vs axum's `RouteFuture`",
        size_of::<Future>(),
        size_of::<ResponseFuture<Future>>(),
    );
    size_row(
        table,
        "Response body: `DrainBody<Body>` vs axum's `Body`",
        size_of::<Body>(),
        size_of::<DrainBody<Body>>(),
    );
    Ok(())
}

fn size_row(table: &mut Table, measure: &str, bare: usize, wrapped: usize) {
    table.row(Row {
        measure: format!("{measure} (size_of, no heap)"),
        baseline: format!("{bare} B"),
        drain: format!("{wrapped} B"),
        change: format!("{:+} B", wrapped as isize - bare as isize),
        goal: "report it",
        verdict: Verdict::Info,
    });
}

/// Connects [`CONNECTIONS`] clients, then accepts them all through
/// `listener` and holds them, counting the heap the accepts took.
async fn heap_per_connection(mut listener: impl Accept) -> io::Result<Heap> {
    let addr = listener.addr()?;
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(TcpStream::connect(addr).await?);
    }
    let mut held = Vec::with_capacity(CONNECTIONS);
    let region = Region::new(&INSTRUMENTED_SYSTEM);
    for _ in 0..CONNECTIONS {
        held.push(poll_fn(|cx| listener.poll_next(cx)).await);
    }
    let change = region.change();
    let live = change.bytes_allocated as f64 - change.bytes_deallocated as f64;
    Ok(Heap {
        allocations: (change.allocations + change.reallocations) as f64 / CONNECTIONS as f64,
        live_bytes: live / CONNECTIONS as f64,
    })
}
