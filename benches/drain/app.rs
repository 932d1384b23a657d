//! The server under test: an axum hello-world, served plain, with the drain
//! hooked up exactly as the crate documents it, or with half of it.

use std::{fmt, future::Future, io, net::SocketAddr};

use axum::{body::Body, http::Response, routing::get, Router};
use axum::{extract::Request, ServiceExt};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{combinators::MapFrame, BodyExt};
use tokio::{
    net::{TcpListener, TcpSocket},
    runtime::Runtime,
    sync::oneshot,
    task::JoinHandle,
};
use tower::{util::MapResponseLayer, ServiceBuilder};
use tower_drain::{layer::DrainBody, DrainLayer, GracefulAccept, Watch};

/// Which server. `Plain` and `Drain` are what the issue compares; the two
/// others split the drain's cost between its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// `axum::serve(listener, app).with_graceful_shutdown(signal)`.
    Plain,
    /// `GracefulAccept` + `DrainLayer` + `Watch::shutdown_signal`, as the
    /// crate documents it.
    Drain,
    /// `GracefulAccept` + `Watch::shutdown_signal`, without `DrainLayer`.
    ListenerOnly,
    /// Plain axum with a no-op `Router::layer` that wraps the response body,
    /// as `DrainLayer` does: what axum charges for any such layer.
    NoopLayer,
    /// Like `Drain`, but with `DrainLayer` around the whole `Router` instead
    /// of inside it (`Router::layer`).
    DrainOutside,
}

impl Side {
    /// Every side, plain first.
    pub(crate) const ALL: [Side; 5] = [
        Side::Plain,
        Side::Drain,
        Side::ListenerOnly,
        Side::NoopLayer,
        Side::DrainOutside,
    ];

    /// The name used in the child's environment.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Plain => "plain",
            Side::Drain => "drain",
            Side::ListenerOnly => "listener-only",
            Side::NoopLayer => "noop-layer",
            Side::DrainOutside => "drain-outside",
        }
    }

    /// The side named `name`.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|side| side.name() == name)
    }

    /// The app this side serves, reporting to `watch`.
    fn app(self, watch: &Watch) -> Router {
        match self {
            Side::Plain | Side::ListenerOnly | Side::DrainOutside => hello(),
            Side::Drain => hello().layer(DrainLayer::new(watch.clone())),
            Side::NoopLayer => hello().layer(MapResponseLayer::new(wrap_body as fn(_) -> _)),
        }
    }

    /// Whether this side accepts through `GracefulAccept`.
    fn tracks_connections(self) -> bool {
        matches!(self, Side::Drain | Side::ListenerOnly | Side::DrainOutside)
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The app: `GET /` answers `hello`.
pub(crate) fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// A response body wrapped in a body that changes nothing.
type Wrapped = Response<MapFrame<Body, fn(Frame<Bytes>) -> Frame<Bytes>>>;

/// Wraps the response body in a no-op body, as a body-wrapping layer does.
fn wrap_body(response: Response<Body>) -> Wrapped {
    response.map(|body| body.map_frame(std::convert::identity as fn(_) -> _))
}

/// Binds 127.0.0.1 on a free port with a backlog deep enough for every
/// connection the benchmarks queue.
pub(crate) fn bind() -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.listen(4096)
}

/// A multi-thread runtime with one worker: the server side or the client
/// side of a measurement, each on one of the machine's two cores.
pub(crate) fn runtime(name: &str) -> io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("bench-{name}"))
        .enable_all()
        .build()
}

/// Plain axum, until `signal` resolves.
pub(crate) async fn serve_plain(
    listener: TcpListener,
    app: Router,
    signal: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
}

/// `app` on a `GracefulAccept`, until its watch says the server may stop.
pub(crate) async fn serve_tracked(
    listener: GracefulAccept<TcpListener>,
    app: Router,
) -> io::Result<()> {
    let signal = listener.watch().shutdown_signal();
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
}

/// `app` behind `DrainLayer` applied around the whole router, on a
/// `GracefulAccept`, until its watch says the server may stop. axum wants
/// `Response<Body>`, so the `DrainBody` is boxed into a `Body`.
pub(crate) async fn serve_outside(
    listener: GracefulAccept<TcpListener>,
    app: Router,
) -> io::Result<()> {
    let watch = listener.watch().clone();
    let service = ServiceBuilder::new()
        .map_response(|response: Response<DrainBody<Body>>| response.map(Body::new))
        .layer(DrainLayer::new(watch.clone()))
        .service(app);
    let service = ServiceExt::<Request>::into_make_service(service);
    axum::serve(listener, service)
        .with_graceful_shutdown(watch.shutdown_signal())
        .await
}

/// The app behind `DrainLayer`, on a `GracefulAccept`, until its watch has
/// drained.
pub(crate) async fn serve_drain(listener: GracefulAccept<TcpListener>) -> io::Result<()> {
    let app = Side::Drain.app(listener.watch());
    serve_tracked(listener, app).await
}

/// A server running in a task of the current runtime.
#[derive(Debug)]
pub(crate) struct Running {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    stop: Stop,
    task: JoinHandle<io::Result<()>>,
}

#[derive(Debug)]
enum Stop {
    Signal(oneshot::Sender<()>),
    Trigger(Watch),
}

impl Running {
    /// Binds a free port and serves `side` on it.
    pub(crate) fn start(side: Side) -> io::Result<Self> {
        let listener = bind()?;
        let addr = listener.local_addr()?;
        let watch = Watch::new();
        let app = side.app(&watch);
        let (stop, task) = if side.tracks_connections() {
            let listener = GracefulAccept::new(listener, watch.clone());
            let task = if side == Side::DrainOutside {
                tokio::spawn(serve_outside(listener, app))
            } else {
                tokio::spawn(serve_tracked(listener, app))
            };
            (Stop::Trigger(watch), task)
        } else {
            let (tx, rx) = oneshot::channel();
            let signal = async move {
                let _ = rx.await;
            };
            (
                Stop::Signal(tx),
                tokio::spawn(serve_plain(listener, app, signal)),
            )
        };
        Ok(Self { addr, stop, task })
    }

    /// Shuts the server down gracefully and waits for `serve` to return.
    pub(crate) async fn stop(self) -> io::Result<()> {
        match self.stop {
            Stop::Signal(tx) => drop(tx.send(())),
            Stop::Trigger(watch) => watch.trigger(),
        }
        self.task.await.map_err(io::Error::other)?
    }
}
