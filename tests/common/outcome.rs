//! What became of one request, as a raw HTTP/1.1 client or hyper sees it.

use std::io;

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A complete response with this status and `Connection` header.
    Response { status: u16, connection_close: bool },
    /// The connection attempt was refused: safe to retry.
    Refused,
    /// The connection was reset: the client cannot know what happened.
    Reset,
    /// The server closed the connection without answering.
    Unanswered,
    /// Anything else, said in words: an incomplete response, a timeout.
    Other(String),
}

impl Outcome {
    /// Whether the request was answered 200.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Response { status: 200, .. })
    }

    /// The outcome of a request whose connection failed with `error`.
    pub fn of_error(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => Outcome::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Outcome::Reset,
            _ => Outcome::Other(error.to_string()),
        }
    }

    /// The outcome of a request hyper sent on a connection that failed
    /// with `error`.
    pub fn of_hyper_error(error: &hyper::Error) -> Self {
        use std::error::Error as _;
        match error.source().and_then(|e| e.downcast_ref::<io::Error>()) {
            Some(error) => Self::of_error(error),
            None if error.is_incomplete_message() => Outcome::Unanswered,
            None => Outcome::Other(error.to_string()),
        }
    }

    /// The outcome of a complete response hyper read: its status, and
    /// whether a `Connection` header of it says `close`.
    pub fn of_response<B>(response: &hyper::Response<B>) -> Self {
        let connection_close = response
            .headers()
            .get_all(hyper::header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("close"));
        Outcome::Response {
            status: response.status().as_u16(),
            connection_close,
        }
    }

    /// Reads everything a server sent on a connection until it closed it:
    /// a response whose head and whole body (as `Content-Length` announces
    /// it) are there, or what else it was.
    pub fn parse(response: &[u8]) -> Self {
        if response.is_empty() {
            return Outcome::Unanswered;
        }
        let text = String::from_utf8_lossy(response);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Outcome::Other(format!("incomplete response {text:?}"));
        };
        let Some(status) = head.split(' ').nth(1).and_then(|s| s.parse().ok()) else {
            return Outcome::Other(format!("no status in {head:?}"));
        };
        let header = |name: &str| {
            head.lines().skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let length = header("content-length").and_then(|value| value.parse::<usize>().ok());
        match length {
            Some(length) if body.len() < length => {
                Outcome::Other(format!("body cut short: {} of {length} bytes", body.len()))
            }
            _ => Outcome::Response {
                status,
                connection_close: head
                    .lines()
                    .any(|line| line.eq_ignore_ascii_case("connection: close")),
            },
        }
    }
}
