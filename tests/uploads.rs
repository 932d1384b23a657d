//! Request bodies in flight at a drain, against the reference server as a
//! process: an upload still arriving at SIGTERM is read to its end and
//! answered (`Content-Length`, chunked, HTTP/2), `Expect: 100-continue` is
//! honoured before and during the drain, and a body that stalls is cut off
//! at the deadline and counted.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{process::Process, read_until, within};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

/// The upload: long enough that, sent at [`RATE`] with SIGTERM after its
/// first [`PIECE`]s, it is still arriving when the request-head grace (2 s)
/// has run out.
const SIZE: usize = 4 * 1024 * 1024;
/// Bytes sent per tick.
const PIECE: usize = 64 * 1024;
/// About 1 MiB/s.
const TICK: Duration = Duration::from_millis(62);

/// Deterministic, incompressible-looking bytes.
fn body() -> Vec<u8> {
    (0..SIZE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// What `POST /upload` answers for `body`.
fn receipt(body: &[u8]) -> String {
    let hex: String = Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{} {hex}\n", body.len())
}

/// `pieces`, one per [`TICK`], from a task that also SIGTERMs the server
/// `pid` once a quarter of them are out.
fn paced(pid: u32, pieces: Vec<Vec<u8>>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let quarter = pieces.len() / 4;
        let mut tick = tokio::time::interval(TICK);
        for (i, piece) in pieces.into_iter().enumerate() {
            tick.tick().await;
            if i == quarter {
                let kill = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
                assert!(kill.unwrap().success());
            }
            if tx.send(piece).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Writes what `pieces` yields to `stream`.
async fn write_all_of(stream: &mut TcpStream, mut pieces: mpsc::Receiver<Vec<u8>>) {
    while let Some(piece) = pieces.recv().await {
        stream.write_all(&piece).await.unwrap();
    }
}

/// Reads a whole HTTP/1.1 response the server closes after; its head and body.
async fn response(stream: &mut TcpStream) -> (String, String) {
    let mut read = Vec::new();
    within("the answer", stream.read_to_end(&mut read))
        .await
        .unwrap();
    let text = String::from_utf8(read).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

/// Asserts a `200` with the receipt of `body`.
fn assert_received(head: &str, answer: &str, body: &[u8]) {
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(answer, receipt(body));
}

/// Asserts that the response said `Connection: close`.
fn assert_closing(head: &str) {
    assert!(head.contains("connection: close"), "{head}");
}

/// Sends `head`, then `pieces` paced, SIGTERM after a quarter of them: the
/// upload is read to its end and answered with its length and hash and
/// `Connection: close`; the server exits 0.
async fn upload_in_flight_finishes(head: &str, pieces: Vec<Vec<u8>>, body: &[u8]) {
    let server = Process::start("", "").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    write_all_of(&mut stream, paced(server.pid(), pieces)).await;
    let (head, answer) = response(&mut stream).await;
    assert_received(&head, &answer, body);
    assert_closing(&head);
    assert_eq!(server.exit().await.code(), Some(0));
}

/// An upload with `Content-Length` whose body is still arriving at SIGTERM,
/// and 3 s after (past the request-head grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_in_flight_with_content_length_finishes() {
    let body = body();
    let head = format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n");
    let pieces = body.chunks(PIECE).map(<[u8]>::to_vec).collect();
    upload_in_flight_finishes(&head, pieces, &body).await;
}

/// The same upload, chunked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_in_flight_finishes() {
    let body = body();
    let head = "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut pieces: Vec<Vec<u8>> = body
        .chunks(PIECE)
        .map(|chunk| [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat())
        .collect();
    pieces.push(b"0\r\n\r\n".to_vec());
    upload_in_flight_finishes(head, pieces, &body).await;
}

/// The same upload over HTTP/2 (h2c): the stream in flight is read to its
/// end and answered; the server exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upload_in_flight_finishes() {
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let server = Process::start("", "").await;
    let body = body();
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let pieces = body.chunks(PIECE).map(<[u8]>::to_vec).collect();
    let frames = receiver_stream(paced(server.pid(), pieces))
        .map(|piece| Ok::<_, std::io::Error>(Frame::data(Bytes::from(piece))));
    let request = hyper::Request::post("http://t/upload")
        .body(StreamBody::new(frames))
        .unwrap();
    let response = within("the answer", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(answer, receipt(&body).as_bytes());
    within("the connection to end", conn).await.unwrap().ok();
    assert_eq!(server.exit().await.code(), Some(0));
}

/// A stream of what `rx` receives.
fn receiver_stream<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// `Expect: 100-continue` with the head in before the drain: the client
/// gets its `100 Continue`, sends its body after SIGTERM, and gets its
/// final answer. (Whether that answer says `Connection: close` depends on
/// whether hyper's graceful shutdown starts before it: the head was read
/// before the drain, and the answer can be out within a millisecond of it.
/// The connection is closed after it either way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_before_the_drain_is_honoured() {
    let mut server = Process::start("", "").await;
    let body = &body()[..PIECE];
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    read_until(&mut stream, CONTINUE).await;
    server.signal("TERM");
    server.wait_for_log("drain started").await;
    stream.write_all(body).await.unwrap();
    let (head, answer) = response(&mut stream).await;
    assert_received(&head, &answer, body);
    assert_eq!(server.exit().await.code(), Some(0));
}

/// `Expect: 100-continue` on a keep-alive connection whose next head is
/// finished during the drain: the connection is retiring, and the request
/// still gets its `100 Continue` and a final answer, never a silent close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_during_the_drain_is_answered() {
    let mut server = Process::start("", "").await;
    let body = &body()[..PIECE];
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // One write: once the first answer is back, the server has read the
    // start of the second head with the first request.
    let requests = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n\r\n\
         POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n",
        body.len()
    );
    stream.write_all(requests.as_bytes()).await.unwrap();
    read_until(&mut stream, b"hello").await;
    server.signal("TERM");
    server.wait_for_log("drain started").await;
    stream.write_all(b"\r\n").await.unwrap();
    read_until(&mut stream, CONTINUE).await;
    stream.write_all(body).await.unwrap();
    let (head, answer) = response(&mut stream).await;
    assert_received(&head, &answer, body);
    assert_closing(&head);
    assert_eq!(server.exit().await.code(), Some(0));
}

/// A body that stalls at half holds the drain to the deadline, no longer:
/// the connection is closed then, the server exits 1, and the report counts
/// the request body cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_is_cut_off_at_the_deadline() {
    let mut server = Process::start("", "--grace 2").await;
    let body = body();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..SIZE / 2]).await.unwrap();
    server.signal("TERM");
    let stopped = server.wait_for_log("stopped").await;
    assert!(
        stopped.contains("report=shutdown forced by the deadline after "),
        "{stopped}"
    );
    assert!(stopped.contains(" 1 request body cut off, "), "{stopped}");
    assert!(
        stopped.ends_with(", 1 connection forced; requests not counted (no DrainLayer)"),
        "{stopped}"
    );
    assert_eq!(server.exit().await.code(), Some(1));
    let (head, _) = response(&mut stream).await;
    assert!(head.is_empty(), "{head}");
}
