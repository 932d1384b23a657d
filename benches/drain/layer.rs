//! Part 2: what `DrainLayer` costs one request as a tower service call —
//! `poll_ready`, `call`, the response future and the body, to the end —
//! against the bare service, timed by criterion, allocations counted.

use std::{
    convert::Infallible,
    future::{ready, Future, Ready},
    hint::black_box,
    io,
    pin::pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::Criterion;
use futures_util::task::noop_waker_ref;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use stats_alloc::{Region, INSTRUMENTED_SYSTEM};
use tower::{Service, ServiceExt};
use tower_drain::{layer::DrainService, Watch};

use crate::report::{self, Row, Table, Verdict};

/// Criterion samples per benchmark.
const SAMPLES: usize = 50;
/// Requests whose allocations are counted.
const COUNTED: usize = 10_000;
/// What "a handful of nanoseconds" is taken to mean.
const HANDFUL: Duration = Duration::from_nanos(10);

/// The bare service: answers `hello` without allocating.
fn hello(_request: Request<()>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    ready(Ok(Response::new(Full::new(Bytes::from_static(b"hello")))))
}

type Bare =
    tower::util::ServiceFn<fn(Request<()>) -> Ready<Result<Response<Full<Bytes>>, Infallible>>>;

fn bare() -> Bare {
    tower::service_fn(hello)
}

/// One request through `service`, as hyper drives it: ready, call, poll the
/// future, read the body to its end, drop the response.
pub(crate) fn one_request<S, B>(service: &mut S)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(service.poll_ready(&mut cx).is_ready());
    let future = pin!(service.call(Request::new(())));
    let Poll::Ready(response) = future.poll(&mut cx) else {
        panic!("the hello service answers at once");
    };
    let mut body = pin!(response.expect("hello never fails").into_body());
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        black_box(frame.ok());
    }
}

/// Times both services with criterion and counts their allocations.
pub(crate) fn run(table: &mut Table) -> io::Result<()> {
    let mut criterion = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let bare_time = time(&mut criterion, "bare service", bare());
    let drain_time = time(&mut criterion, "DrainService", drain());
    let noop_time = time(&mut criterion, "no-op body-wrapping layer", noop());
    table.row(Row {
        measure: "One request: poll_ready + call + future + body (criterion median)".into(),
        baseline: report::duration(bare_time),
        drain: report::duration(drain_time),
        change: report::signed(drain_time, bare_time),
        goal: "a handful of ns added (≤ 10 ns)",
        verdict: Verdict::from_goal(drain_time.saturating_sub(bare_time) <= HANDFUL),
    });
    table.row(Row {
        measure: "… the same through a no-op body-wrapping layer (`map_response` + `map_frame`)"
            .into(),
        baseline: report::duration(bare_time),
        drain: report::duration(noop_time),
        change: report::signed(noop_time, bare_time),
        goal: "",
        verdict: Verdict::Info,
    });
    let (bare_allocations, drain_allocations) =
        (allocations(&mut bare()), allocations(&mut drain()));
    table.row(Row {
        measure: format!("Heap allocations per request (counted over {COUNTED})"),
        baseline: format!("{bare_allocations:.2}"),
        drain: format!("{drain_allocations:.2}"),
        change: format!("{:+.2}", drain_allocations - bare_allocations),
        goal: "0",
        verdict: Verdict::from_goal(drain_allocations == 0.0),
    });
    Ok(())
}

fn drain() -> DrainService<Bare> {
    DrainService::new(bare(), Watch::new())
}

/// The floor of any layer that wraps the response body: one that changes
/// nothing.
fn noop() -> impl Service<Request<()>, Response = Response<impl Body>, Error = Infallible> {
    bare().map_response(|response| response.map(|body| body.map_frame(std::convert::identity)))
}

/// Benchmarks [`one_request`] on `service`; returns the median time per
/// request over the measured samples (criterion prints its own analysis).
fn time<S, B>(criterion: &mut Criterion, name: &str, mut service: S) -> Duration
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
{
    let mut per_request = Vec::new();
    criterion.bench_function(name, |bencher| {
        bencher.iter_custom(|requests| {
            let start = Instant::now();
            for _ in 0..requests {
                one_request(&mut service);
            }
            let elapsed = start.elapsed();
            per_request.push(elapsed.as_secs_f64() / requests as f64);
            elapsed
        });
    });
    // The last calls are the measured samples; the first ones warmed up.
    let measured = per_request.len().saturating_sub(SAMPLES);
    Duration::from_secs_f64(report::median(&mut per_request[measured..]))
}

/// Heap allocations (and reallocations) per request over [`COUNTED`] requests.
fn allocations<S, B>(service: &mut S) -> f64
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
{
    one_request(service);
    let region = Region::new(&INSTRUMENTED_SYSTEM);
    for _ in 0..COUNTED {
        one_request(service);
    }
    let change = region.change();
    (change.allocations + change.reallocations) as f64 / COUNTED as f64
}
