//! What the measuring examples share (`compare.rs`, `restarts.rs`): the app
//! they serve, a raw HTTP/1.1 client, and the tally of what became of
//! requests.

use std::{io, net::SocketAddr};

use axum::{routing::get, Router};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The app every measured server serves: `/` answers `hello`.
pub(crate) fn app() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// What became of one request.
#[derive(Clone, Copy)]
pub(crate) enum Outcome {
    /// A response with status 200.
    Served,
    /// A response with another status: a proxy's 502 or 503, say.
    Status(u16),
    /// The connection attempt was refused: safe to retry.
    Refused,
    /// The connection was reset: the client cannot know what happened.
    Reset,
    /// The server closed the connection without answering.
    Unanswered,
    /// Anything else.
    Other,
}

/// Connects to `addr` and sends `GET /`, without reading the answer;
/// `close` asks the server to close the connection once it has answered,
/// otherwise only the server decides when it closes.
pub(crate) async fn send(addr: SocketAddr, close: bool) -> io::Result<TcpStream> {
    let connection = if close { "close" } else { "keep-alive" };
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET / HTTP/1.1\r\nHost: example\r\nConnection: {connection}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

/// Reads everything the server sends on `stream` until it closes it.
pub(crate) async fn answer(mut stream: TcpStream) -> Outcome {
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes).await {
        Ok(0) => Outcome::Unanswered,
        Ok(_) => bytes
            .strip_prefix(b"HTTP/1.1 ")
            .and_then(|rest| std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok())
            .map_or(Outcome::Other, Outcome::of_status),
        Err(error) => failure(&error),
    }
}

impl Outcome {
    /// The outcome of a response with status `status`.
    pub(crate) fn of_status(status: u16) -> Self {
        match status {
            200 => Outcome::Served,
            status => Outcome::Status(status),
        }
    }
}

/// The outcome of a request whose connection failed with `error`.
pub(crate) fn failure(error: &io::Error) -> Outcome {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::Refused,
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Outcome::Reset,
        _ => Outcome::Other,
    }
}

/// How many requests had each outcome.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) sent: usize,
    pub(crate) served: usize,
    pub(crate) refused: usize,
    pub(crate) reset: usize,
    pub(crate) unanswered: usize,
    /// Answered 502 Bad Gateway (by a proxy).
    pub(crate) bad_gateway: usize,
    /// Answered 503 Service Unavailable (by a proxy).
    pub(crate) unavailable: usize,
    /// Anything else, other statuses included.
    pub(crate) other: usize,
}

impl Tally {
    /// Counts one request.
    pub(crate) fn add(&mut self, outcome: Outcome) {
        self.sent += 1;
        *match outcome {
            Outcome::Served => &mut self.served,
            Outcome::Refused => &mut self.refused,
            Outcome::Reset => &mut self.reset,
            Outcome::Unanswered => &mut self.unanswered,
            Outcome::Status(502) => &mut self.bad_gateway,
            Outcome::Status(503) => &mut self.unavailable,
            Outcome::Status(_) | Outcome::Other => &mut self.other,
        } += 1;
    }
}
