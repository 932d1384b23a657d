//! Lingering close: when the server closes a connection, shut its write side
//! down first (so the client gets every response byte, then a FIN); if the
//! client had sent more than the server read, read and discard what it
//! still sends until it closes too, or for a bounded time; only then close
//! the socket.
//!
//! Closing a socket whose receive buffer holds unread bytes makes the kernel
//! send RST instead of FIN (`tcp_close`), and a reset makes the client's
//! stack drop response bytes it has not read yet: a client that pipelined
//! requests and reads slowly would see its last responses cut off. nginx
//! (`lingering_close`) and Apache close this way.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

/// Where a connection's lingering close stands.
#[derive(Debug, Default)]
pub(crate) struct Linger {
    /// Whether the write side is shut down.
    shut: bool,
    /// When lingering ends: set when lingering begins, boxed so that a
    /// connection stays `Unpin` (as axum requires).
    until: Option<Pin<Box<Sleep>>>,
    /// Whether the client sent anything after the shutdown.
    discarded: bool,
}

/// How a lingering close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lingered {
    /// The client closed its side, or the connection failed: nothing unread.
    Clean,
    /// The time ran out on a client that was still sending after the
    /// shutdown: what it sends next meets a closed socket and a reset.
    CutOff,
}

impl Linger {
    /// Shuts the write side of `io` down, then reads and discards its input:
    /// with nothing waiting to be read, and no more expected (`expect_more`:
    /// the client had pipelined requests that will not be answered, whose
    /// bytes may still be on their way), the socket can close at once (a
    /// FIN, not a reset); otherwise until the client closes, the connection
    /// fails, or `time` has passed since lingering began.
    ///
    /// # Errors
    ///
    /// What shutting the write side down reports.
    pub(crate) fn poll_close<I: AsyncRead + AsyncWrite>(
        &mut self,
        mut io: Pin<&mut I>,
        time: Duration,
        expect_more: bool,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Lingered>> {
        if !self.shut {
            ready!(io.as_mut().poll_shutdown(cx))?;
            self.shut = true;
        }
        let mut discard = [0; 1024];
        loop {
            let mut buf = ReadBuf::new(&mut discard);
            match io.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Poll::Ready(Ok(Lingered::Clean))
                }
                Poll::Ready(Ok(())) => self.discarded = true,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(Lingered::Clean)),
                Poll::Pending if !self.discarded && !expect_more => {
                    return Poll::Ready(Ok(Lingered::Clean))
                }
                Poll::Pending => break,
            }
        }
        let until = self
            .until
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(time)));
        ready!(until.as_mut().poll(cx));
        Poll::Ready(Ok(if self.discarded {
            Lingered::CutOff
        } else {
            Lingered::Clean
        }))
    }
}
