//! The load generator's side: hyper client connections over HTTP/1.1
//! keep-alive or HTTP/2 (prior knowledge), and raw one-shot clients.

use std::{fmt, io, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The outer bound on any single wait of the benchmark's clients: only
/// reached when something is broken.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// Awaits `future`, failing with `TimedOut` after [`PATIENCE`].
pub(crate) async fn within<T>(
    what: &str,
    future: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(PATIENCE, future)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("timed out: {what}")))?
}

/// The HTTP version a load generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 with keep-alive: one request at a time per connection.
    Http1,
    /// HTTP/2 over cleartext (prior knowledge): many streams per connection.
    Http2,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        })
    }
}

/// A client connection's request sender. HTTP/2 senders are clones that
/// share one connection.
#[derive(Debug)]
pub(crate) enum Sender {
    /// An HTTP/1.1 connection.
    Http1(http1::SendRequest<Empty<Bytes>>),
    /// A handle on an HTTP/2 connection.
    Http2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// Opens a connection to `addr`, driven by a task of the current runtime
    /// that ends when either side closes it.
    pub(crate) async fn connect(addr: SocketAddr, protocol: Protocol) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        Ok(match protocol {
            Protocol::Http1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(io::Error::other)?;
                tokio::spawn(conn);
                Sender::Http1(sender)
            }
            Protocol::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(io::Error::other)?;
                tokio::spawn(conn);
                Sender::Http2(sender)
            }
        })
    }

    /// Another handle on the same connection: HTTP/2 only, as an HTTP/1.1
    /// connection carries one request at a time.
    pub(crate) fn share(&self) -> Option<Self> {
        match self {
            Sender::Http1(_) => None,
            Sender::Http2(sender) => Some(Sender::Http2(sender.clone())),
        }
    }

    /// `GET /`, reading the whole response; fails unless it is `200 hello`.
    pub(crate) async fn get(&mut self) -> io::Result<()> {
        let request = hyper::Request::get("http://127.0.0.1/")
            .body(Empty::new())
            .expect("a valid request");
        let response = match self {
            Sender::Http1(sender) => {
                sender.ready().await.map_err(io::Error::other)?;
                sender.send_request(request).await
            }
            Sender::Http2(sender) => {
                sender.ready().await.map_err(io::Error::other)?;
                sender.send_request(request).await
            }
        }
        .map_err(io::Error::other)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?;
        if status != 200 || body.to_bytes() != "hello" {
            return Err(io::Error::other(format!("unexpected response {status}")));
        }
        Ok(())
    }
}

/// A keep-alive `GET /` as raw bytes: any `Connection: close` in the answer
/// comes from the server.
const RAW_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// Connects and sends one request without reading the answer.
pub(crate) async fn connect_and_send(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(RAW_REQUEST).await?;
    Ok(stream)
}

/// One request on a fresh connection that asks the server to close it, read
/// to the end: fails unless the answer is `200 OK`.
pub(crate) async fn one_shot(addr: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    if answered(stream).await {
        Ok(())
    } else {
        Err(io::Error::other("no 200 OK before the server closed"))
    }
}

/// Reads until the server closes `stream`; `true` when what came was a
/// `200 OK` answer (the drain closes the connection after it).
pub(crate) async fn answered(mut stream: TcpStream) -> bool {
    let mut response = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
    matches!(read, Ok(Ok(_))) && response.starts_with(b"HTTP/1.1 200 OK")
}
