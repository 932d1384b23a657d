//! What the reference servers share: flags, routes, binding and the serve
//! loop. `server.rs` serves it over plain HTTP, `tls.rs` over HTTPS.

use std::{
    convert::Infallible, fmt::Debug, net::SocketAddr, path::PathBuf, process::ExitCode,
    time::Duration,
};

use axum::{
    body::Body,
    extract::{
        ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade},
        Query, State,
    },
    http::StatusCode,
    response::{
        sse::{Event, Sse},
        Response,
    },
    routing::{get, post},
    serve::Listener,
    Router,
};
use futures_util::{stream, Stream, StreamExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, signal::unix::SignalKind};
use tower_drain::{
    axum::TrackedConnection,
    restart::{Listeners, Origin},
    DrainLayer, EndOnDrain, GracefulAccept, Observer, Readiness, Watch,
};

/// The command-line options.
pub(crate) struct Options {
    pub(crate) addr: SocketAddr,
    pub(crate) reuse_port: bool,
    /// Where to take the socket over from, and serve it for a successor.
    pub(crate) handoff: Option<PathBuf>,
    /// `None`: the `Watch`'s default.
    pub(crate) grace: Option<Duration>,
    pub(crate) lame_duck: Duration,
    /// The signal that upgrades in place (`--upgrade-on`, with `--handoff`).
    pub(crate) upgrade_on: Option<SignalKind>,
    /// PEM files (TLS server only).
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

/// The usage text of `program`, a reference server on 127.0.0.1:`port` by
/// default; `tls` adds `--cert` and `--key`.
pub(crate) fn usage(program: &str, tls: bool, port: u16) -> String {
    let tls_flags = if tls {
        " [--cert CERT.pem --key KEY.pem]"
    } else {
        ""
    };
    let tls_help = if tls {
        "
  --cert FILE     PEM certificate chain (with --key; default: self-signed for localhost)
  --key FILE      PEM private key"
    } else {
        ""
    };
    format!(
        "\
usage: {program} [--addr ADDR] [--reuse-port] [--handoff PATH] [--grace SECS] [--lame-duck SECS] [--upgrade-on SIGNAL]{tls_flags}

  --addr ADDR     address to listen on (default 127.0.0.1:{port})
  --reuse-port    bind with SO_REUSEPORT, so a successor can share the port
  --handoff PATH  take the socket over from the server listening on PATH,
                  and listen there to hand it to a successor
  --grace SECS    hard deadline for the drain, in seconds (default 30)
  --lame-duck SECS
                  after the signal, report not ready (503 on /healthz) but
                  go on serving for this long before draining (default 0)
  --upgrade-on SIGNAL
                  on this signal (USR2 or USR1), start a successor from the
                  same executable and arguments and hand it the socket over
                  --handoff PATH (required with it){tls_help}"
    )
}

/// Parses the flags; `usage` is printed on error (exit 2), or to standard
/// output for `-h`/`--help` (exit 0). `tls` allows `--cert` and `--key`;
/// `port` is the default port on 127.0.0.1.
pub(crate) fn parse_args(usage: &str, tls: bool, port: u16) -> Result<Options, ExitCode> {
    if std::env::args()
        .skip(1)
        .any(|arg| arg == "-h" || arg == "--help")
    {
        println!("{usage}");
        return Err(ExitCode::SUCCESS);
    }
    parse(std::env::args().skip(1), tls, port).map_err(|message| usage_error(usage, &message))
}

/// Prints `message` and `usage`; exit code 2.
pub(crate) fn usage_error(usage: &str, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    eprintln!("{usage}");
    ExitCode::from(2)
}

fn parse(mut args: impl Iterator<Item = String>, tls: bool, port: u16) -> Result<Options, String> {
    let mut options = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        reuse_port: false,
        handoff: None,
        grace: None,
        lame_duck: Duration::ZERO,
        upgrade_on: None,
        cert: None,
        key: None,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--addr" => {
                let value = value("--addr")?;
                options.addr = value
                    .parse()
                    .map_err(|e| format!("--addr {value:?}: {e}"))?;
            }
            "--reuse-port" => options.reuse_port = true,
            "--handoff" => options.handoff = Some(value("--handoff")?.into()),
            "--grace" => options.grace = Some(seconds("--grace", &value("--grace")?)?),
            "--lame-duck" => options.lame_duck = seconds("--lame-duck", &value("--lame-duck")?)?,
            "--upgrade-on" => options.upgrade_on = Some(signal_named(&value("--upgrade-on")?)?),
            "--cert" if tls => options.cert = Some(value("--cert")?.into()),
            "--key" if tls => options.key = Some(value("--key")?.into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.upgrade_on.is_some() && options.handoff.is_none() {
        return Err("--upgrade-on needs --handoff PATH".into());
    }
    Ok(options)
}

/// `USR1` or `USR2` (with or without `SIG`): the signals an upgrade can use.
/// SIGTERM, SIGINT and SIGHUP drain; the others have meanings of their own.
fn signal_named(name: &str) -> Result<SignalKind, String> {
    match name.trim_start_matches("SIG") {
        "USR1" => Ok(SignalKind::user_defined1()),
        "USR2" => Ok(SignalKind::user_defined2()),
        "TERM" | "INT" | "HUP" => Err(format!(
            "--upgrade-on {name}: that signal drains the server; use USR2 or USR1"
        )),
        _ => Err(format!(
            "--upgrade-on {name:?}: not a signal an upgrade can use; use USR2 or USR1"
        )),
    }
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or(format!("{flag} {value:?}: not a number of seconds"))
}

/// A `Watch` with the `--grace` deadline and the `--lame-duck` period,
/// triggered by SIGTERM, SIGINT and SIGHUP. A lame duck that leaves no time
/// for the drain is bad input (exit 2).
pub(crate) fn watch(options: &Options) -> Result<Watch, ExitCode> {
    let mut builder = Watch::builder().lame_duck(options.lame_duck);
    if let Some(grace) = options.grace {
        builder = builder.grace(grace);
    }
    let watch = builder.build().map_err(|e| {
        eprintln!("error: --grace and --lame-duck: {e}");
        ExitCode::from(2)
    })?;
    watch
        .trigger_on_signals()
        .map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    Ok(watch)
}

/// The socket to serve: inherited from a service manager, taken over from
/// the server on `--handoff`, or bound to `--addr` (with `SO_REUSEPORT` if
/// `--reuse-port`). Bad input exits 2, other failures 1.
pub(crate) async fn listen(
    options: &Options,
    watch: &Watch,
) -> Result<GracefulAccept<TcpListener>, ExitCode> {
    let mut builder = Listeners::builder()
        .tcp("http", options.addr)
        .reuse_port(options.reuse_port);
    if let Some(path) = &options.handoff {
        builder = builder.handoff(path);
    }
    if let Some(signal) = options.upgrade_on {
        builder = builder.upgrade_on(signal);
    }
    let opened = builder.open(watch).await;
    let mut listeners = opened.map_err(|e| match e.kind() {
        // Bad input, or a handoff path held by a process not to be trusted.
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::PermissionDenied => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        _ => fail(e.to_string()),
    })?;
    match listeners.origin() {
        Origin::Bound => {}
        origin => tracing::info!(
            ?origin,
            "--addr {} ignored: serving the socket passed on",
            options.addr
        ),
    }
    listeners
        .tcp("http")
        .map_err(|e| fail(format!("cannot serve the socket: {e}")))
}

/// `GET /` → `hello`; `GET /slow?ms=N` → after N ms; `POST /upload` → the
/// body's length and SHA-256; `GET /healthz` → 200 while running (and
/// through a restart's drain), 503 from the trigger on; `GET /events` →
/// server-sent events until the drain; `GET /ws` → WebSocket echo until the
/// drain.
pub(crate) fn app(watch: &Watch) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/slow", get(slow))
        .route("/upload", post(upload))
        .route("/events", get(events))
        .route("/ws", get(ws))
        .route_service("/healthz", Readiness::new(watch.observer()))
        .with_state(watch.observer())
}

#[derive(Deserialize)]
struct Slow {
    ms: u64,
}

async fn slow(Query(Slow { ms }): Query<Slow>) -> String {
    tracing::info!(ms, "slow request started");
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms")
}

/// The largest body `POST /upload` reads, in bytes: a larger one is answered
/// 413 as soon as it is seen to be larger.
pub(crate) const UPLOAD_LIMIT: usize = 64 * 1024 * 1024;

/// Reads the whole body as it arrives and answers `LENGTH SHA256-HEX`, so a
/// client can check that nothing was lost: 413 past [`UPLOAD_LIMIT`], 400 if
/// the body fails (the client went away, or sent a malformed body).
async fn upload(body: Body) -> Result<String, StatusCode> {
    let mut data = body.into_data_stream();
    let (mut length, mut hash) = (0, Sha256::new());
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        length += chunk.len();
        if length > UPLOAD_LIMIT {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        hash.update(&chunk);
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{length} {hex}\n"))
}

/// `data: tick N` every 100 ms; when the drain starts, `event: close` with
/// `data: draining`, and the stream ends.
async fn events(
    State(observer): State<Observer>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok(Event::default().data(format!("tick {n}"))), n + 1))
    });
    let last = Ok(Event::default().event("close").data("draining"));
    Sse::new(EndOnDrain::new(ticks, &observer).final_item(last))
}

async fn ws(State(observer): State<Observer>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, observer))
}

/// How long `/ws` waits for the client's answer to its Close.
const WEBSOCKET_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Echoes messages until the drain starts, then sends Close 1001 ("going
/// away") and reads on until the client answers it, at most
/// [`WEBSOCKET_CLOSE_TIMEOUT`].
async fn echo(mut socket: WebSocket, observer: Observer) {
    let draining = observer.draining();
    tokio::pin!(draining);
    loop {
        tokio::select! {
            () = &mut draining => break,
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    if socket.send(message).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let going_away = CloseFrame {
        code: close_code::AWAY,
        reason: "server draining".into(),
    };
    if socket.send(Message::Close(Some(going_away))).await.is_ok() {
        // The client's Close ends the stream; one that never answers is let
        // go after the close timeout (RFC 6455 §7.1.1 lets the server close
        // the TCP connection then), not held to the deadline.
        let answered = async { while let Some(Ok(_)) = socket.recv().await {} };
        let _ = tokio::time::timeout(WEBSOCKET_CLOSE_TIMEOUT, answered).await;
    }
}

/// Serves the app until drained. Exit 0 after a clean drain, 1 after a
/// forced one, one that reset queued connections, or an error.
pub(crate) async fn serve<L>(listener: L, watch: Watch) -> ExitCode
where
    L: Listener,
    L::Addr: Debug,
    L::Io: TrackedConnection,
{
    let app = app(&watch);
    let served = if watch.lame_duck().is_zero() {
        // No per-request layer: `GracefulAccept` tracks the connections,
        // which is all the drain needs.
        axum::serve(listener, app)
            .with_graceful_shutdown(watch.shutdown_signal())
            .await
    } else {
        // `GracefulAccept` marks keep-alive connections `Connection: close`
        // from the trigger on; `DrainLayer` adds request counts to the
        // report, for the lame duck period's requests.
        let app = DrainLayer::new(watch.clone()).around_router(app);
        axum::serve(listener, app)
            .with_graceful_shutdown(watch.shutdown_signal())
            .await
    };
    if let Err(e) = served {
        return fail(format!("server failed: {e}"));
    }
    let report = watch.drained().await;
    tracing::info!(%report, "stopped");
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints `message` as an error; exit code 1.
pub(crate) fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
