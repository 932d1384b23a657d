//! Nothing tower-drain adds allocates per request. `DrainLayer`: `call`, the response future
//! and the response body, read to its end, are counted by a counting global
//! allocator while the drain is idle and while it runs. Only the measuring
//! thread's allocations count, so the test harness's own threads cannot
//! add to them.

use std::{
    convert::Infallible,
    future::{ready, Future, Ready},
    pin::pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::task::noop_waker_ref;
use http::{header, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::Service;
use tower_drain::{layer::DrainService, Watch};

/// Requests counted per check.
const REQUESTS: usize = 1_000;

/// Answers `hello` without allocating. The response already has a header,
/// as real responses do, so that adding `Connection: close` while draining
/// finds the header map allocated.
fn hello(_request: Request<()>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"hello")));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    ready(Ok(response))
}

/// One request as hyper drives it: ready, call, poll the future, read the
/// body to its end, drop everything.
fn one_request<S, B>(service: &mut S)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: Body,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(service.poll_ready(&mut cx).is_ready());
    let future = pin!(service.call(Request::new(())));
    let Poll::Ready(Ok(response)) = future.poll(&mut cx) else {
        panic!("the hello service answers at once");
    };
    let mut body = pin!(response.into_body());
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        assert!(frame.is_ok());
    }
}

/// Allocations made on this thread by [`REQUESTS`] requests.
fn allocations<S, B>(service: &mut S) -> u64
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: Body,
{
    one_request(service); // anything lazily set up on first use
    allocation_counter::measure(|| {
        for _ in 0..REQUESTS {
            one_request(service);
        }
    })
    .count_total
}

#[test]
fn drain_layer_does_not_allocate_per_request() {
    let mut bare = tower::service_fn(hello);
    let hello_allocates = allocations(&mut bare);
    let hello_allocates_per_request = hello_allocates / REQUESTS as u64;
    // The bare service builds a header map per request: the counter sees it.
    assert!(hello_allocates_per_request >= 1, "{hello_allocates}");

    let watch = Watch::new();
    let mut drained = DrainService::new(tower::service_fn(hello), watch.clone());
    assert_eq!(
        allocations(&mut drained),
        hello_allocates,
        "DrainService must not allocate per request (the bare service makes {hello_allocates_per_request} per request)"
    );
    assert_eq!(watch.requests(), 0, "every request was counted out");

    // While draining: the responses carry `Connection: close`, still without
    // allocating. The listener keeps the drain from ending at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _listener = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tower_drain::GracefulAccept::new(listener, watch.clone())
    });
    let _context = runtime.enter();
    watch.trigger();
    assert!(watch.is_draining());
    assert_eq!(
        allocations(&mut drained),
        hello_allocates,
        "DrainService must not allocate per request while draining"
    );
}

/// Allocations per request on a server thread, between two keep-alive runs
/// of different lengths, so that set-up and signalling cancel out.
fn server_allocations_per_request(tracked: bool) -> f64 {
    const SHORT: usize = 200;
    const LONG: usize = 1_200;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let watch = Watch::new();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let _context = runtime.enter();
    if tracked {
        let listener = tower_drain::GracefulAccept::new(listener, watch.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
    } else {
        runtime.spawn(async move { axum::serve(listener, app).await });
    }

    // The client runs on a thread of its own, so only the server's
    // allocations are counted; it sends `n` requests for each `n` received.
    let (runs, next_run) = std::sync::mpsc::channel::<usize>();
    let (done, run_done) = tokio::sync::mpsc::unbounded_channel::<()>();
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            while let Ok(n) = next_run.recv() {
                for _ in 0..n {
                    let request = Request::get("/")
                        .header(header::HOST, "localhost")
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap();
                    let response = sender.send_request(request).await.unwrap();
                    http_body_util::BodyExt::collect(response.into_body())
                        .await
                        .unwrap();
                }
                done.send(()).unwrap();
            }
        });
    });
    let mut run_done = run_done;
    let mut run = |n: usize| {
        allocation_counter::measure(|| {
            runs.send(n).unwrap();
            runtime.block_on(run_done.recv()).unwrap();
        })
        .count_total
    };
    run(SHORT); // warm up: the connection and everything set up lazily
    let short = run(SHORT);
    let long = run(LONG);
    drop(runs);
    client.join().unwrap();
    (long as f64 - short as f64) / (LONG - SHORT) as f64
}

/// The documented setup, `GracefulAccept` with no per-request layer, makes
/// the same heap allocations per request as plain axum: its tracking is per
/// connection. One more allocation per request would add 1.0.
#[test]
fn tracked_connections_do_not_allocate_per_request() {
    let plain = server_allocations_per_request(false);
    let tracked = server_allocations_per_request(true);
    assert!(
        plain >= 1.0,
        "the counter sees axum's own allocations: {plain}"
    );
    assert!(
        (tracked - plain).abs() < 0.5,
        "plain axum makes {plain:.2} allocations per request, GracefulAccept {tracked:.2}"
    );
}
