//! A tonic gRPC server behind `GracefulAccept` and `DrainLayer`, over
//! loopback with a real tonic client: the handler sees the peer address, a
//! call in flight when the drain starts completes, its HTTP/2 connection is
//! told to go away (GOAWAY) while the call is still running, and the drain
//! ends clean only after the call.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use common::within;
use futures_util::stream;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, Notify},
};
use tonic::{
    transport::{Endpoint, Server, Uri},
    Request, Response, Status,
};
use tonic_health::pb::{
    health_check_response::ServingStatus,
    health_client::HealthClient,
    health_server::{Health, HealthServer},
    HealthCheckRequest, HealthCheckResponse,
};
use tower_drain::{DrainLayer, GracefulAccept, Phase, Watch};

/// HTTP/2 frame type of GOAWAY (RFC 9113, section 6.8).
const GOAWAY: u8 = 0x7;

/// HTTP/2 error code `NO_ERROR`: a graceful shutdown.
const NO_ERROR: u32 = 0;

/// A health service whose `Check` waits in its handler until the test
/// releases it, so the call is provably in flight.
struct HeldHealth {
    /// Told the peer address tonic gives each call that enters the handler.
    entered: mpsc::UnboundedSender<Option<SocketAddr>>,
    /// Lets the handler answer.
    release: Arc<Notify>,
}

#[tonic::async_trait]
impl Health for HeldHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.entered.send(request.remote_addr()).unwrap();
        self.release.notified().await;
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving.into(),
        }))
    }

    type WatchStream = stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("this test checks only"))
    }
}

/// What the client's end of its connection saw.
#[derive(Debug, PartialEq, Eq)]
enum ClientEvent {
    /// A GOAWAY frame arrived, with this error code.
    GoAway(u32),
    /// The connection ended: the client dropped it.
    Closed,
}

/// The client's connection, which reports the GOAWAY frames it reads and
/// its end.
struct Recording {
    io: TcpStream,
    /// Bytes read that do not make a whole frame yet.
    unparsed: Vec<u8>,
    events: mpsc::UnboundedSender<ClientEvent>,
}

impl Recording {
    /// Reports the GOAWAY frames among the whole frames read so far. The
    /// server's first bytes are already a frame (its SETTINGS).
    fn parse_frames(&mut self) {
        while let Some(header) = self.unparsed.get(..9) {
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let Some(frame) = self.unparsed.get(..9 + length) else {
                return;
            };
            if frame[3] == GOAWAY {
                // Payload: last stream id (4 bytes), error code (4 bytes).
                let code = u32::from_be_bytes(frame[13..17].try_into().unwrap());
                let _ = self.events.send(ClientEvent::GoAway(code));
            }
            self.unparsed.drain(..9 + length);
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = self.events.send(ClientEvent::Closed);
    }
}

impl AsyncRead for Recording {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.unparsed.extend_from_slice(&buf.filled()[before..]);
        this.parse_frames();
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn call_in_flight_completes_and_its_connection_goes_away() {
    let watch = Watch::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (entered, mut entered_rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let service = HeldHealth {
        entered,
        release: release.clone(),
    };
    let server = tokio::spawn(
        Server::builder()
            .layer(DrainLayer::new(watch.clone()))
            .add_service(HealthServer::new(service))
            .serve_with_incoming_shutdown(
                GracefulAccept::new(listener, watch.clone()),
                watch.shutdown_signal(),
            ),
    );

    // A tonic client whose connection reports what it reads.
    let (events, mut client_events) = mpsc::unbounded_channel();
    let connector = tower::service_fn(move |_: Uri| {
        let events = events.clone();
        async move {
            let io = TcpStream::connect(addr).await?;
            Ok::<_, io::Error>(TokioIo::new(Recording {
                io,
                unparsed: Vec::new(),
                events,
            }))
        }
    });
    let channel = within(
        "the client to connect",
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector(connector),
    )
    .await
    .unwrap();
    // The test holds `channel` to the end, so only the server can end its
    // connection.
    let mut client = HealthClient::new(channel.clone());
    let call = tokio::spawn(async move {
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
    });
    let peer = within("the call to reach its handler", entered_rx.recv())
        .await
        .unwrap();
    assert!(
        peer.is_some_and(|peer| peer.ip().is_loopback()),
        "tonic reads the peer address through TrackedIo: {peer:?}",
    );

    watch.trigger();

    // The client is told to go away while its call is still in the handler.
    let event = within("the client to hear of the drain", client_events.recv()).await;
    assert_eq!(
        event,
        Some(ClientEvent::GoAway(NO_ERROR)),
        "the client's connection must get a graceful GOAWAY while its call is in flight",
    );
    // The drain waits for the call.
    assert_eq!(
        watch.phase(),
        Phase::Draining,
        "the drain must not end while a call is in flight",
    );

    release.notify_one();
    let response = within("the call in flight", call)
        .await
        .unwrap()
        .expect("the call in flight when the drain started must succeed");
    assert_eq!(
        response.into_inner().status,
        i32::from(ServingStatus::Serving)
    );

    // The server then ends the client's connection, having told it nothing
    // but to go away.
    loop {
        match within("the client's connection to end", client_events.recv()).await {
            Some(ClientEvent::Closed) => break,
            event => assert_eq!(event, Some(ClientEvent::GoAway(NO_ERROR))),
        }
    }
    within("tonic to return", server)
        .await
        .unwrap()
        .expect("tonic serves until the shutdown signal");
    let report = within("the drain to end", watch.drained()).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.requests_completed, 1, "{report}");
    assert_eq!(report.requests_aborted, 0, "{report}");
    drop(channel);
}
