//! Following a connection's requests in the bytes the server reads from it,
//! for [`TrackedIo`](crate::TrackedIo) and, above TLS,
//! [`TlsIo`](crate::TlsIo): when the server has chosen a protocol, where
//! each HTTP/1 request head and body starts and ends (by [`framing`]), and,
//! from the trigger on, `Connection: close` added to the next request head.
//! What it finds it tells the connection's [`Slot`].
//!
//! [`framing`]: crate::framing

use std::{
    io,
    sync::Arc,
    task::{ready, Context, Poll},
};

use tokio::io::ReadBuf;

use crate::{
    framing::{FirstStream, Framing, Position},
    state::{
        Inner, Slot, BETWEEN, H2_NO_STREAM, READING_HEAD, READING_NEXT_HEAD, RECEIVING_BODY,
        RETIRING, SERVING,
    },
};

/// The bytes an HTTP/2 client sends first. hyper-util's automatic protocol
/// detection (what `axum::serve` uses) reads until the bytes differ from it
/// or match it whole, and a graceful shutdown before then drops the
/// connection unanswered.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the drain adds to the next HTTP/1 request head on a connection: the
/// server then answers it with `Connection: close` and closes the connection
/// after that response (RFC 9112 §9.6), so the client is told before the
/// connection closes and sends nothing more on it.
const CONNECTION_CLOSE: &[u8] = b"connection: close\r\n";

/// How far the server has read into a connection's requests.
///
/// What a graceful shutdown cannot see on its own follows from it:
/// - until the server has read enough to choose a protocol (one byte that is
///   not the start of the HTTP/2 preface, or the whole preface), the
///   connection counts as awaiting its first byte, and
///   [`Watch::shutdown_signal`](crate::Watch::shutdown_signal) holds back for
///   it, up to the first-byte grace;
/// - on HTTP/1, where each request starts and ends ([`Framing`]): its
///   [`Slot`] says whether the connection is between requests or reading a
///   head, which the drain waits for and may cut off;
/// - from the trigger on, it adds `Connection: close` to the next request
///   head, so that a keep-alive connection retires after its next response
///   instead of being closed between two requests while the client sends
///   the next one.
pub(crate) struct Requests {
    inner: Arc<Inner>,
    slot: Arc<Slot>,
    stage: Stage,
    /// What the slot was last told: the HTTP/1 states, or `SERVING`.
    state: u8,
    /// Bytes read but not yet handed to the server: the part of a read that
    /// made room for [`CONNECTION_CLOSE`], and its unsent rest.
    held: Vec<u8>,
}

enum Stage {
    /// The bytes are TLS records: only the first one is waited for; the
    /// [`TlsIo`](crate::TlsIo) above reads the requests.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code, reason = "set by TLS only"))]
    Encrypted,
    /// No protocol chosen yet: this many bytes of the HTTP/2 preface read.
    Protocol(usize),
    /// HTTP/1: where its requests stand, and if `Connection: close` was
    /// added to a request head, how many heads had ended before that one.
    Http1 {
        framing: Framing,
        closing: Option<u64>,
    },
    /// HTTP/2, no stream opened yet.
    Http2(FirstStream),
    /// HTTP/2, past the request that carries `Connection: close`, past what
    /// the framing can follow, or ended.
    Done,
}

impl Requests {
    pub(crate) fn new(inner: &Arc<Inner>, slot: Arc<Slot>) -> Self {
        inner.awaiting_first_byte();
        Self {
            inner: inner.clone(),
            slot,
            stage: Stage::Protocol(0),
            state: SERVING,
            held: Vec::new(),
        }
    }

    /// The bytes are TLS records: only the first one is waited for, and the
    /// drain may close the connection while it has received none.
    #[cfg(feature = "rustls")]
    pub(crate) fn encrypted(&mut self) {
        self.stage = Stage::Encrypted;
        self.slot.encrypted();
    }

    /// Reads through `read`: hands out held bytes first, then follows what
    /// `read` fills in `buf`, adding `Connection: close` to a request head
    /// from the trigger on.
    #[inline]
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        read: impl FnOnce(&mut Context<'_>, &mut ReadBuf<'_>) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        if !self.held.is_empty() {
            self.hand_out_held(buf);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = ready!(read(cx, buf));
        self.read(&result, buf, before);
        Poll::Ready(result)
    }

    /// Notes a finished read: its `result`, and `buf`, whose bytes from
    /// `before` on it filled. The end of the stream (no bytes into a buffer
    /// with room) and an error end the tracking: the server will not drop
    /// the connection unanswered.
    #[inline]
    fn read(&mut self, result: &io::Result<()>, buf: &mut ReadBuf<'_>, before: usize) {
        if matches!(self.stage, Stage::Done) {
            return;
        }
        let bytes = &buf.filled()[before..];
        if result.is_err() || bytes.is_empty() && buf.remaining() > 0 {
            self.end();
            return;
        }
        match &mut self.stage {
            Stage::Protocol(matched) => {
                let matched = *matched;
                let expected = &H2_PREFACE[matched..];
                let n = bytes.len().min(expected.len());
                if bytes[..n] != expected[..n] {
                    self.inner.first_byte_read();
                    // HTTP/1: what was taken for the start of the preface
                    // began the first request.
                    let mut framing = Framing::new();
                    framing.read(&H2_PREFACE[..matched], false);
                    self.stage = Stage::Http1 {
                        framing,
                        closing: None,
                    };
                    self.follow(buf, before);
                } else if matched + n < H2_PREFACE.len() {
                    self.stage = Stage::Protocol(matched + n);
                } else {
                    self.inner.first_byte_read();
                    self.stage = Stage::Http2(FirstStream::default());
                    self.enter(H2_NO_STREAM);
                    self.watch_for_a_stream(&buf.filled()[before + n..]);
                }
            }
            Stage::Http1 { .. } => self.follow(buf, before),
            Stage::Http2(_) => self.watch_for_a_stream(&buf.filled()[before..]),
            Stage::Encrypted => self.end(),
            Stage::Done => {}
        }
    }

    /// Follows the HTTP/1 bytes `buf` holds from `before` on, adds
    /// `Connection: close` to a head once the drain has been triggered, and
    /// tells the slot where the connection stands.
    fn follow(&mut self, buf: &mut ReadBuf<'_>, before: usize) {
        let Stage::Http1 { framing, closing } = &mut self.stage else {
            unreachable!("following HTTP/1");
        };
        let insert = closing.is_none() && self.inner.is_triggered();
        // The head `Connection: close` goes into is the one in progress, or
        // the first to start: either way, the heads before it have ended.
        let heads_before = framing.heads();
        let insert_at = framing.read(&buf.filled()[before..], insert);
        if insert_at.is_some() {
            *closing = Some(heads_before);
        }
        let (now, heads, closing) = (framing.position(), framing.heads(), *closing);
        if let Some(at) = insert_at {
            self.insert_connection_close(buf, before + at);
        }
        // Once the request that carries `Connection: close` is read (its
        // body too), the server reads nothing more: stop following.
        let retiring =
            closing.is_some_and(|n| heads > n + 1 || heads == n + 1 && now != Position::Body);
        if retiring && (now == Position::Head || closing.is_some_and(|n| heads > n + 1)) {
            // Requests pipelined behind it will never be answered: the close
            // must linger until the client has seen the end.
            self.slot.note_unanswered_input();
        }
        self.enter(match now {
            _ if retiring => RETIRING,
            Position::Head if heads > 0 => READING_NEXT_HEAD,
            Position::Head => READING_HEAD,
            Position::Body => RECEIVING_BODY,
            Position::Between => BETWEEN,
            Position::Lost => SERVING,
        });
        if retiring || now == Position::Lost {
            self.stage = Stage::Done;
        }
    }

    /// Follows HTTP/2 frames until the client opens a stream: until then the
    /// drain may close the connection once it has been accepted for the
    /// first-byte grace, as it does a silent one.
    fn watch_for_a_stream(&mut self, bytes: &[u8]) {
        let Stage::Http2(first) = &mut self.stage else {
            unreachable!("watching HTTP/2");
        };
        if first.read(bytes) {
            self.stage = Stage::Done;
            self.enter(SERVING);
        }
    }

    /// Tells the slot that the connection is now in `state`, if it was not.
    fn enter(&mut self, state: u8) {
        let was = std::mem::replace(&mut self.state, state);
        if state == was {
            return;
        }
        if matches!(state, READING_HEAD | READING_NEXT_HEAD) {
            self.inner.head_started(&self.slot, state);
        } else {
            self.slot.moved(state);
        }
        if matches!(was, READING_NEXT_HEAD | BETWEEN) && self.inner.is_triggered() {
            self.inner.hold_released();
        }
    }

    /// Puts [`CONNECTION_CLOSE`] at `at` in `buf`, holding back what follows
    /// it for the next reads if it no longer fits.
    #[cold]
    fn insert_connection_close(&mut self, buf: &mut ReadBuf<'_>, at: usize) {
        self.held.extend_from_slice(CONNECTION_CLOSE);
        self.held.extend_from_slice(&buf.filled()[at..]);
        buf.set_filled(at);
        self.hand_out_held(buf);
    }

    /// Moves as many held bytes into `buf` as fit.
    #[cold]
    fn hand_out_held(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.held.len().min(buf.remaining());
        buf.put_slice(&self.held[..n]);
        self.held.drain(..n);
    }

    /// Stops tracking: the connection ended or failed, or is being dropped.
    pub(crate) fn end(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Encrypted => {
                self.slot.first_byte_received();
                self.inner.first_byte_read();
            }
            Stage::Protocol(_) => self.inner.first_byte_read(),
            Stage::Http1 { .. } | Stage::Http2(_) => self.enter(SERVING),
            Stage::Done => {}
        }
    }

    pub(crate) fn is_awaiting(&self) -> bool {
        matches!(self.stage, Stage::Encrypted | Stage::Protocol(_))
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.end();
    }
}
