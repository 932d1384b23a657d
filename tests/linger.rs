//! Lingering close, against the reference server as a process: a client
//! that pipelines many requests and reads the answers slowly gets whole
//! responses and a clean end of stream at a drain, never a reset that
//! would cut off what it had not read yet.

mod common;

use std::time::Duration;

use common::{process::Process, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Requests sent in one go.
const REQUESTS: usize = 200_000;

/// 200,000 `GET /` (6 MB) pipelined in one go, the answers read at about 2 MB/s,
/// SIGTERM once some have arrived: the stream ends with a FIN after whole
/// responses (the server shut its side, then read and discarded the rest of
/// the pipeline until the client closed), and the server exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_of_a_long_pipeline_gets_whole_responses_and_a_fin() {
    let server = Process::start("", "").await;
    let (mut reader, mut writer) = TcpStream::connect(server.addr).await.unwrap().into_split();
    let pipeline = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(REQUESTS);
    let writing = tokio::spawn(async move {
        // The server stops reading requests at the drain and discards the
        // rest; a write may then fail once the connection is gone.
        let _ = writer.write_all(&pipeline).await;
        writer
    });

    let mut received = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let mut pace = tokio::time::interval(Duration::from_millis(30));
    let mut signalled = false;
    let end = within("the end of the stream", async {
        loop {
            pace.tick().await;
            match reader.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
            if !signalled && received.len() > 256 * 1024 {
                server.signal("TERM");
                signalled = true;
            }
        }
    })
    .await;
    assert!(signalled, "the stream ended before the drain");
    end.expect("the stream must end with a FIN, not a reset");

    let text = String::from_utf8(received).unwrap();
    let responses: Vec<_> = text.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert!(
        responses.len() < REQUESTS,
        "the drain cut the pipeline short"
    );
    for (i, response) in responses.iter().enumerate() {
        assert!(
            response.ends_with("\r\n\r\nhello"),
            "response {i}: {response:?}"
        );
    }
    assert!(responses.last().unwrap().contains("connection: close"));
    drop(reader);
    drop(writing.await.unwrap());
    assert_eq!(server.exit().await.code(), Some(0));
}

/// A client that never stops sending is not lingered on for ever: after the
/// linger time (2 s) the connection is closed with its input unread, and the
/// report says so (not clean: exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_stops_sending_is_cut_off_and_counted() {
    let mut server = Process::start("", "").await;
    let (mut reader, mut writer) = TcpStream::connect(server.addr).await.unwrap().into_split();
    let writing = tokio::spawn(async move {
        let batch = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(100);
        while writer.write_all(&batch).await.is_ok() {}
    });
    let (answered, first_answer) = tokio::sync::oneshot::channel();
    let reading = tokio::spawn(async move {
        let mut buf = vec![0; 64 * 1024];
        let mut answered = Some(answered);
        while let Ok(1..) = reader.read(&mut buf).await {
            if let Some(answered) = answered.take() {
                let _ = answered.send(());
            }
        }
    });
    within("the first answers", first_answer).await.unwrap();
    server.signal("TERM");
    let stopped = server.wait_for_log("stopped").await;
    assert!(stopped.contains(" 1 lingering close cut off"), "{stopped}");
    assert_eq!(server.exit().await.code(), Some(1));
    within("the reader to end", reading).await.unwrap();
    within("the writer to end", writing).await.unwrap();
}
