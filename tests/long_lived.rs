//! Long-lived responses end cleanly when the drain starts, over real
//! sockets against the reference server: server-sent events end with a
//! final event, a WebSocket is closed with 1001 ("going away").

mod common;

use common::{process::*, *};
use futures_util::{SinkExt, StreamExt};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tokio_tungstenite::tungstenite::{protocol::frame::coding::CloseCode, Message};

/// An open `/events` stream ends with `event: close` and the chunked
/// terminator when the drain starts, and the server exits 0 without waiting
/// for its (hour-long) deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_end_with_a_final_event() {
    let server = Process::start("", "--grace 3600").await;
    let mut stream = connect_and_send(server.addr, &request("/events"))
        .await
        .unwrap();
    let mut received = Vec::new();
    within("the first event", async {
        while !String::from_utf8_lossy(&received).contains("data: tick 0") {
            let mut buf = [0; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "the stream ended early");
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await;

    server.signal("TERM");
    within("the end of the stream", stream.read_to_end(&mut received))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("event: close\ndata: draining\n\n"), "{text}");
    assert!(text.ends_with("\r\n0\r\n\r\n"), "{text}");
    assert_eq!(server.exit().await.code(), Some(0));
}

/// An open `/ws` WebSocket receives Close 1001 when the drain starts; once
/// the client answers it, the server exits 0 without waiting for its
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_is_closed_going_away() {
    let server = Process::start("", "--grace 3600").await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let url = format!("ws://{}/ws", server.addr);
    let (mut ws, _) = within("the upgrade", tokio_tungstenite::client_async(url, stream))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let echo = within("the echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echo, Message::text("hello"));

    server.signal("TERM");
    let close = within("the close", ws.next()).await.unwrap().unwrap();
    let Message::Close(Some(frame)) = close else {
        panic!("expected a Close frame, got {close:?}");
    };
    assert_eq!(frame.code, CloseCode::Away);
    // Reading on sends the client's answer and ends the stream.
    while let Some(message) = within("the close handshake", ws.next()).await {
        message.unwrap();
    }
    assert_eq!(server.exit().await.code(), Some(0));
}

/// A WebSocket client that never answers the server's Close holds the
/// drain for the close timeout (1 s), not to the deadline: the server
/// closes the connection and exits 0, nothing forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_client_that_never_answers_close_is_let_go() {
    let mut server = Process::start("", "--grace 3600").await;
    let upgrade = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut stream = connect_and_send(server.addr, upgrade.as_bytes())
        .await
        .unwrap();
    read_until(&mut stream, b"\r\n\r\n").await;

    server.signal("TERM");
    // Reads the Close frame and waits, answering nothing, for the server to
    // close the connection.
    let mut received = Vec::new();
    within("the server to close", stream.read_to_end(&mut received))
        .await
        .unwrap();
    assert_eq!(
        received.get(..4),
        Some(&[0x88, 0x11, 0x03, 0xe9][..]),
        "Close 1001"
    );
    let stopped = server.wait_for_log("stopped").await;
    assert!(!stopped.contains("forced"), "{stopped}");
    assert_eq!(server.exit().await.code(), Some(0));
}
