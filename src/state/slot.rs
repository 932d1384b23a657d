//! A connection's entry in the drain's registry: the state a connection and
//! the drain share, and through which the drain closes the connection.

use std::{
    io,
    sync::atomic::{
        AtomicBool, AtomicU64, AtomicU8,
        Ordering::{Acquire, Relaxed, SeqCst},
    },
    task::Waker,
};

use futures_util::task::AtomicWaker;

/// A connection's entry in the [`Watch`](crate::Watch)'s registry, shared by
/// the connection and the drain, through which the drain closes it.
pub(crate) struct Slot {
    /// The task last blocked on the connection, woken when it is closed.
    waker: AtomicWaker,
    /// `SILENT`, `SERVING`, `READING_HEAD`, `READING_NEXT_HEAD`,
    /// `RECEIVING_BODY`, `BETWEEN`, `RETIRING`, `H2_NO_STREAM`, or one
    /// of the closed states, which are final. Transitions are
    /// compare-exchanges, so a connection whose head completes as the drain
    /// closes it is either closed or serving, and counted once. The waker
    /// orders the closing store before the task's next check.
    state: AtomicU8,
    /// When the connection last read or wrote, once the drain has been
    /// triggered: nanoseconds since the `Watch` was created. Written by the
    /// connection's task, read by [`ShutdownSignal`](crate::future::ShutdownSignal),
    /// which only needs a recent value (`Relaxed`).
    last_active: AtomicU64,
    /// The client sent requests beyond the one the server closes the
    /// connection after (set and read by the connection's task).
    unanswered_input: AtomicBool,
}

/// A TLS connection that has not received a byte: nothing to lose.
pub(crate) const SILENT: u8 = 0;
/// Serving, or past what the framing can follow.
pub(crate) const SERVING: u8 = 1;
/// An HTTP/1 connection reading its first request head.
pub(crate) const READING_HEAD: u8 = 2;
/// An HTTP/1 connection reading a later request head: unlike the first,
/// hyper drops it unanswered if its graceful shutdown starts before the
/// head is whole.
pub(crate) const READING_NEXT_HEAD: u8 = 3;
/// An HTTP/1 connection whose request body is still arriving.
pub(crate) const RECEIVING_BODY: u8 = 4;
/// An HTTP/1 connection that has read whole requests only: between two
/// requests as far as its client is concerned, once its response is out.
pub(crate) const BETWEEN: u8 = 5;
/// An HTTP/1 connection whose current request carries `Connection: close`:
/// the server closes it after that response.
pub(crate) const RETIRING: u8 = 6;
/// An HTTP/2 connection whose client has opened no stream: nothing to lose.
pub(crate) const H2_NO_STREAM: u8 = 7;
const FORCED: u8 = 8;
const HEAD_CUT_OFF: u8 = 9;
const SILENCE_CUT_OFF: u8 = 10;

impl Slot {
    pub(crate) fn new() -> Self {
        Self {
            waker: AtomicWaker::new(),
            state: AtomicU8::new(SERVING),
            last_active: AtomicU64::new(0),
            unanswered_input: AtomicBool::new(false),
        }
    }

    /// The state, for the drain's sweeps.
    pub(crate) fn state(&self) -> u8 {
        self.state.load(SeqCst)
    }

    /// When the connection last read or wrote after the trigger.
    pub(crate) fn last_active(&self) -> u64 {
        self.last_active.load(Relaxed)
    }

    /// Closes the connection because the drain was forced.
    pub(crate) fn force(&self) {
        self.state.store(FORCED, SeqCst);
        self.waker.wake();
    }

    /// Closes the connection if it is still reading a request head, and
    /// says whether it did.
    pub(crate) fn cut_off_head(&self) -> bool {
        self.cut_off(READING_HEAD, HEAD_CUT_OFF) || self.cut_off(READING_NEXT_HEAD, HEAD_CUT_OFF)
    }

    /// Closes the connection if it has nothing to lose: a TLS connection
    /// that has not received a byte, or an HTTP/2 connection whose client
    /// opened no stream. Says whether it did.
    pub(crate) fn cut_off_silence(&self) -> bool {
        self.cut_off(SILENT, SILENCE_CUT_OFF) || self.cut_off(H2_NO_STREAM, SILENCE_CUT_OFF)
    }

    fn cut_off(&self, from: u8, to: u8) -> bool {
        let cut = self.transition(from, to);
        if cut {
            self.waker.wake();
        }
        cut
    }

    /// Marks a request head as started (`to` is `READING_HEAD` or
    /// `READING_NEXT_HEAD`); false if the connection is already closed.
    pub(crate) fn start_head(&self, to: u8) -> bool {
        // SeqCst: see `transition`.
        self.state
            .fetch_update(SeqCst, SeqCst, |state| {
                matches!(state, SERVING..=BETWEEN).then_some(to)
            })
            .is_ok()
    }

    /// Moves an open HTTP/1 connection to `to`; a closed one stays closed.
    pub(crate) fn moved(&self, to: u8) {
        // SeqCst: see `transition`.
        let _ = self.state.fetch_update(SeqCst, SeqCst, |state| {
            matches!(state, SERVING..=H2_NO_STREAM).then_some(to)
        });
    }

    /// A TLS connection that has not received a byte yet: the drain may
    /// close it after the first-byte grace.
    #[cfg(feature = "rustls")]
    pub(crate) fn encrypted(&self) {
        self.transition(SERVING, SILENT);
    }

    /// A TLS connection received its first byte.
    pub(crate) fn first_byte_received(&self) {
        self.transition(SILENT, SERVING);
    }

    fn transition(&self, from: u8, to: u8) -> bool {
        // SeqCst: `Inner::head_started` and the drain's sweep form a
        // store-then-load pair on `state` and the sweep's flag; at least one
        // of the two sees the other.
        self.state
            .compare_exchange(from, to, SeqCst, SeqCst)
            .is_ok()
    }

    /// Notes that the connection read or wrote at `now` (nanoseconds since
    /// the `Watch` was created).
    pub(crate) fn touch(&self, now: u64) {
        self.last_active.store(now, Relaxed);
    }

    /// Registers the task to wake when the drain closes the connection.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// The client sent requests beyond the one the server closes the
    /// connection after: its close must linger until the client has seen
    /// the end.
    pub(crate) fn note_unanswered_input(&self) {
        self.unanswered_input.store(true, Relaxed);
    }

    /// Whether [`note_unanswered_input`](Self::note_unanswered_input) was called.
    pub(crate) fn has_unanswered_input(&self) -> bool {
        self.unanswered_input.load(Relaxed)
    }

    /// Fails the operation if the drain has closed the connection.
    #[inline]
    pub(crate) fn check(&self) -> io::Result<()> {
        // Acquire pairs with the closing store; the waker orders a close that
        // lands after a pending poll's first check.
        match self.state.load(Acquire) {
            SILENT..=H2_NO_STREAM => Ok(()),
            FORCED => Err(closed("the drain was forced")),
            HEAD_CUT_OFF => Err(closed(
                "its request head was still incomplete when the request-head grace ran out",
            )),
            _ => Err(closed(
                "it was still silent (or, on HTTP/2, had opened no stream) when the first-byte grace ran out",
            )),
        }
    }
}

fn closed(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("connection closed by the drain: {why}"),
    )
}
