//! One request as a tower service call, timed by criterion: `poll_ready`,
//! `call`, the response future, the body read to its end, and the drop, on a
//! bare `service_fn` answering `Full<Bytes>` without allocating, the same
//! behind the counting layer, and behind `tower_drain::DrainLayer`:
//! `cargo bench -p tower-drain-measure --bench layer`.

use std::{
    convert::Infallible,
    future::{ready, Future, Ready},
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{service_fn, Layer, Service};
use tower_drain::{DrainLayer, Watch};

#[path = "common/count.rs"]
mod count;

use count::CountLayer;

/// The bare service: answers `hello` at once, without allocating.
fn hello(_request: Request<()>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    ready(Ok(Response::new(Full::new(Bytes::from_static(b"hello")))))
}

/// One request through `service`, as hyper drives it: ready, call, poll the
/// future, read the body to its end, drop the response.
fn one_request<S, B>(service: &mut S)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: Body,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    let Poll::Ready(Ok(response)) = pin!(service.call(Request::new(()))).poll(&mut cx) else {
        panic!("the hello service answers at once");
    };
    let mut body = pin!(response.into_body());
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        black_box(frame.ok());
    }
}

/// Times one request through each of the three services.
fn layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("one request");
    let mut bare = service_fn(hello);
    group.bench_function("bare", |b| b.iter(|| one_request(&mut bare)));
    let mut counted = CountLayer.layer(service_fn(hello));
    group.bench_function("count", |b| b.iter(|| one_request(&mut counted)));
    let mut drained = DrainLayer::new(Watch::new()).layer(service_fn(hello));
    group.bench_function("drain", |b| b.iter(|| one_request(&mut drained)));
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
