//! Raw HTTP/1.1 clients that classify every outcome, and hyper's client
//! connection.

use std::{io, net::SocketAddr};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

use super::{within, Outcome};

/// Reads from `stream` until what it read ends with `end`; fails if the
/// server closes the connection first.
pub async fn read_until(stream: &mut TcpStream, end: &[u8]) -> String {
    let mut read = Vec::new();
    while !read.ends_with(end) {
        let mut buf = [0; 1024];
        let n = within("an answer", stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&read));
        read.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(read).unwrap()
}

/// A keep-alive request: a `Connection: close` in the answer comes from the server.
pub fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

/// Reads one response from `stream` (until the server closes it).
pub async fn read_response(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Outcome {
    let mut buf = Vec::new();
    match stream.read_to_end(&mut buf).await {
        Ok(_) => Outcome::parse(&buf),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Outcome::Reset,
        Err(e) => Outcome::Other(e.to_string()),
    }
}

/// Reads the answer on `stream` (until the server closes it), and fails
/// unless it is a 200 that says `Connection: close`, as every response after
/// the trigger does.
pub async fn assert_served_and_closed(stream: &mut TcpStream, what: &str) {
    let outcome = within(what, read_response(stream)).await;
    assert_eq!(
        outcome,
        Outcome::Response {
            status: 200,
            connection_close: true
        }
    );
}

/// Connects and sends `request` (from [`request`] or [`closing_request`]),
/// without reading. Reading a keep-alive request's answer to the end only
/// ends once the server closes the connection: when it drains.
pub async fn connect_and_send(addr: SocketAddr, request: &[u8]) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    Ok(stream)
}

/// A request that asks the server to close the connection after answering.
pub fn closing_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// One request on a fresh connection that asks to be closed after it, every
/// failure classified.
pub async fn one_request(addr: SocketAddr, path: &str) -> Outcome {
    match connect_and_send(addr, &closing_request(path)).await {
        Ok(mut stream) => read_response(&mut stream).await,
        Err(e) => Outcome::of_error(&e),
    }
}

/// A hyper HTTP/1.1 client connection: the sender, and the task driving the
/// connection, which ends when either side closes it.
pub type Http1Client = (
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    JoinHandle<hyper::Result<()>>,
);

/// An HTTP/1.1 client connection to `addr`.
pub async fn http1_client(addr: SocketAddr) -> Http1Client {
    try_http1_client(addr).await.unwrap()
}

/// An HTTP/1.1 client connection to `addr`, or why there is none.
pub async fn try_http1_client(addr: SocketAddr) -> io::Result<Http1Client> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
    Ok((sender, tokio::spawn(conn)))
}

/// `GET path` on an HTTP/1.1 client connection.
pub fn get_request(path: &str) -> hyper::Request<http_body_util::Empty<bytes::Bytes>> {
    hyper::Request::get(path)
        .header("host", "test")
        .body(http_body_util::Empty::new())
        .unwrap()
}
