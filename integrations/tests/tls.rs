//! Drain-safe TLS over real loopback sockets with real rustls clients.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{
    client::TlsStream,
    rustls::{crypto::ring, pki_types::PrivateKeyDer, ClientConfig, RootCertStore, ServerConfig},
    TlsConnector,
};
use tower_drain::{GracefulAccept, TlsAccept, Watch};

/// A self-signed certificate for `localhost`, as a server config and a
/// client that trusts it.
struct Tls {
    server: Arc<ServerConfig>,
    client: ClientConfig,
}

impl Tls {
    fn new() -> Self {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let provider = Arc::new(ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            server: Arc::new(server),
            client,
        }
    }

    /// A connector that offers `alpn`.
    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut client = self.client.clone();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(client))
    }

    /// Serves the test app over TLS on a free port.
    fn start(&self, watch: &Watch, handshake_timeout: Duration) -> Server {
        let listener = GracefulAccept::new(bind(localhost(), false), watch.clone());
        self.serve(listener, handshake_timeout)
    }

    /// Serves the test app over TLS on `listener`.
    fn serve(&self, listener: GracefulAccept<TcpListener>, handshake_timeout: Duration) -> Server {
        let addr = listener.local_addr().unwrap();
        let watch = listener.watch().clone();
        let listener =
            TlsAccept::new(listener, self.server.clone()).handshake_timeout(handshake_timeout);
        Server::spawn(listener, addr, watch)
    }
}

/// Completes a TLS handshake for `localhost` on `stream`.
async fn handshake(connector: &TlsConnector, stream: TcpStream) -> TlsStream<TcpStream> {
    let name = "localhost".try_into().unwrap();
    within("the TLS handshake", connector.connect(name, stream))
        .await
        .unwrap()
}

/// One HTTP/1.1 request over a new TLS connection that closes after it.
async fn https_get(connector: &TlsConnector, addr: SocketAddr, path: &str) -> Outcome {
    let mut tls = handshake(connector, TcpStream::connect(addr).await.unwrap()).await;
    tls.write_all(&closing_request(path)).await.unwrap();
    within("the response", read_response(&mut tls)).await
}

/// A response whose connection the server closes after it.
fn served_and_closed() -> Outcome {
    Outcome::Response {
        status: 200,
        connection_close: true,
    }
}

/// A connection accepted before the drain whose client only then performs
/// its handshake and sends its request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_started_after_trigger_is_served() {
    let tls = Tls::new();
    // Silent until after the trigger, which the first-byte grace allows.
    let watch = Watch::builder()
        .first_byte_grace(Duration::from_secs(3600))
        .build()
        .unwrap();
    let server = tls.start(&watch, Duration::from_secs(30));
    let stream = TcpStream::connect(server.addr).await.unwrap();
    // The accept queue is first in, first out: once a later client has its
    // answer, the server has accepted `stream` and started its handshake.
    let connector = tls.connector(&[b"http/1.1"]);
    assert_eq!(
        https_get(&connector, server.addr, "/").await,
        served_and_closed()
    );
    assert_eq!(watch.connections(), 1);

    watch.trigger();
    within("listeners to close", watch.listeners_closed()).await;
    let mut tls_stream = handshake(&connector, stream).await;
    tls_stream.write_all(&request("/")).await.unwrap();
    let outcome = within("the response", read_response(&mut tls_stream)).await;
    assert_eq!(outcome, served_and_closed());

    let report = server.stopped().await;
    assert_eq!(report.forced, None);
    assert_eq!(report.requests_completed, 1);
}

/// A client that never sends its ClientHello holds the drain no longer than
/// the first-byte grace (not the handshake timeout nor the deadline), sees a
/// clean end of stream, does not make the drain forced, and does not delay
/// anyone else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_the_first_byte_grace() {
    let tls = Tls::new();
    let watch = Watch::builder()
        .grace(Duration::from_secs(3600))
        .first_byte_grace(Duration::from_millis(200))
        .build()
        .unwrap();
    let server = tls.start(&watch, Duration::from_secs(3600));
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let connector = tls.connector(&[b"http/1.1"]);
    for _ in 0..3 {
        assert_eq!(
            https_get(&connector, server.addr, "/").await,
            served_and_closed()
        );
    }

    watch.trigger();
    let report = server.stopped().await;
    assert_eq!(report.forced, None);
    let mut buf = [0u8; 16];
    assert_eq!(
        silent.read(&mut buf).await.unwrap(),
        0,
        "a clean end of stream"
    );
}

/// A client that stalls inside its first request head holds the drain no
/// longer than the request-head grace, and the drain is not forced;
/// requests in flight on other connections outlive the grace and are
/// answered. (That the encrypted bytes are never scanned for a head is
/// checked in `src/io.rs`: rustls's ClientHello happens to hold a blank
/// line, so this test cannot see it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_head_is_closed_after_its_grace() {
    const HELD: usize = 8;
    let tls = Tls::new();
    let watch = Watch::builder()
        .grace(Duration::from_secs(3600))
        .request_head_grace(Duration::from_millis(200))
        .build()
        .unwrap();
    let server = tls.start(&watch, Duration::from_secs(3600));
    let connector = tls.connector(&[b"http/1.1"]);
    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut tls_stream =
            handshake(&connector, TcpStream::connect(server.addr).await.unwrap()).await;
        tls_stream.write_all(&request("/hold")).await.unwrap();
        held.push(tls_stream);
    }
    server.gate.wait_entered(HELD as u32).await;
    let mut stalled = handshake(&connector, TcpStream::connect(server.addr).await.unwrap()).await;
    stalled.write_all(b"GET / HTT").await.unwrap();

    watch.trigger();
    let outcome = within("the close", read_response(&mut stalled)).await;
    // An end of stream, not a reset: the connection was dropped before any
    // response, so without a TLS close_notify.
    assert!(
        matches!(&outcome, Outcome::Other(e) if e.contains("without sending TLS close_notify")),
        "{outcome:?}"
    );
    server.gate.release_all();
    for mut tls_stream in held {
        let outcome = within("the answer", read_response(&mut tls_stream)).await;
        assert_eq!(outcome, served_and_closed());
    }
    let report = server.stopped().await;
    assert_eq!(report.heads_cut_off, 1);
    assert_eq!(report.requests_completed, HELD);
    assert_eq!(report.forced, None);
}

/// HTTP/2 over TLS: a stream in flight at the drain completes, and the
/// client is told to go away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_in_flight_completes_with_goaway() {
    let tls = Tls::new();
    let watch = Watch::new();
    let server = tls.start(&watch, Duration::from_secs(30));
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let tls_stream = handshake(&tls.connector(&[b"h2"]), stream).await;
    assert_eq!(tls_stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2_stream_in_flight_completes_with_goaway(tls_stream, server).await;
}

/// TLS connections queued in the kernel, their ClientHello sent, when the
/// drain starts are all served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tls_connections_are_all_served_and_closed() {
    const QUEUED: usize = 50;
    let tls = Tls::new();
    let listener = bind(localhost(), false);
    let addr = listener.local_addr().unwrap();
    let connector = tls.connector(&[b"http/1.1"]);
    let mut clients = Vec::new();
    for _ in 0..QUEUED {
        let stream = TcpStream::connect(addr).await.unwrap();
        let connector = connector.clone();
        clients.push(tokio::spawn(async move {
            let mut tls_stream = handshake(&connector, stream).await;
            tls_stream.write_all(&request("/")).await.unwrap();
            read_response(&mut tls_stream).await
        }));
    }
    let watch = Watch::new();
    let listener = GracefulAccept::new(listener, watch.clone());
    watch.trigger();
    let server = tls.serve(listener, Duration::from_secs(30));

    for client in clients {
        assert_eq!(
            within("a queued response", client).await.unwrap(),
            served_and_closed()
        );
    }
    let report = server.stopped().await;
    assert_eq!(report.accepted_from_queue, QUEUED);
    assert_eq!(report.requests_completed, QUEUED);
}

/// Plain HTTP, garbage and an aborted ClientHello on the TLS port fail
/// cleanly (an alert and end of stream, never a reset) and disturb no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_fail_cleanly() {
    let tls = Tls::new();
    let watch = Watch::new();
    let server = tls.start(&watch, Duration::from_secs(30));
    let connector = tls.connector(&[b"http/1.1"]);
    let garbage: [&[u8]; 3] = [
        &request("/"),
        &[0xde, 0xad, 0xbe, 0xef].repeat(64),
        // The first bytes of a ClientHello record, then the client gives up.
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01],
    ];
    for bytes in garbage {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let aborted = bytes.len() == 8;
        if aborted {
            stream.shutdown().await.unwrap();
        }
        let mut answer = Vec::new();
        within("the server to close", stream.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|e| panic!("{bytes:?} ended with {e}, not a clean close"));
        if !answer.is_empty() {
            assert_eq!(answer[0], 0x15, "an alert record: {answer:?}");
        }
        assert_eq!(
            https_get(&connector, server.addr, "/").await,
            served_and_closed()
        );
    }
    watch.trigger();
    assert_eq!(server.stopped().await.forced, None);
}

/// A keep-alive connection over TLS is retired like one in the clear: its
/// next request after the trigger has `Connection: close` added to the
/// decrypted head, so the response says it and the server closes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_is_retired_by_its_next_response() {
    use hyper::header::CONNECTION;
    use hyper_util::rt::TokioIo;

    let tls = Tls::new();
    let watch = Watch::builder()
        .keep_alive_idle(Duration::from_secs(100))
        .request_head_grace(Duration::from_secs(100))
        .grace(Duration::from_secs(200))
        .build()
        .unwrap();
    let server = tls.start(&watch, Duration::from_secs(30));
    let connector = tls.connector(&[b"http/1.1"]);
    let stream = handshake(&connector, TcpStream::connect(server.addr).await.unwrap()).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let first = sender.send_request(get_request("/")).await.unwrap();
    assert!(first.headers().get(CONNECTION).is_none());

    watch.trigger();
    within("listeners to close", watch.listeners_closed()).await;
    // The connection takes a request again once it has finished the last.
    within("the connection to be ready", sender.ready())
        .await
        .unwrap();
    let second = sender.send_request(get_request("/")).await.unwrap();
    assert_eq!(second.headers().get(CONNECTION).unwrap(), "close");
    within("the retired connection to close", conn)
        .await
        .unwrap()
        .unwrap();
    let report = server.stopped().await;
    assert_eq!(report.connections_retired, 1, "{report}");
    assert!(report.is_clean(), "{report}");
}
