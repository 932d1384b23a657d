//! The drain's timed steps, taken by one task per drain that the trigger
//! spawns on the shared state: the end of the lame duck period, closing the
//! connections that have nothing to lose or whose request head stalls once
//! the listeners are closed, and the deadline.

use std::sync::Arc;

use tokio::{runtime::Handle, time::Instant};

use crate::{
    future::{Drained, ListenersClosed},
    report::ForceCause,
    state::{Inner, Phase},
};

/// Spawns on `runtime` the task that takes the drain's timed steps, counted
/// from now, the trigger.
pub(crate) fn arm(inner: Arc<Inner>, runtime: &Handle) {
    // Counted from the trigger, not from when the task first runs.
    let triggered = Instant::now();
    let config = inner.config();
    let deadline = triggered + config.grace;
    let lame_duck_end = triggered + config.lame_duck;
    let cuts_heads = config.request_head_grace < config.grace;
    runtime.spawn(async move {
        let steps = async {
            if inner.phase() == Phase::LameDuck {
                tokio::time::sleep_until(lame_duck_end).await;
                inner.end_lame_duck();
            }
            // From here on no connection can be accepted any more.
            ListenersClosed::new(inner.clone()).await;
            let heads = async {
                if cuts_heads {
                    cut_off_stalled_heads(&inner).await;
                }
            };
            tokio::join!(cut_off_silent_handshakes(&inner), heads);
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => inner.force(ForceCause::Deadline),
            _ = Drained::new(inner.clone()) => {}
            () = steps => {}
        }
    });
}

/// Once the newest connection has been accepted for the first-byte grace,
/// closes every TLS connection that has not received a byte (its handshake
/// would otherwise hold [`Watch::shutdown_signal`](crate::Watch::shutdown_signal)
/// until the handshake timeout) and every HTTP/2 connection whose client
/// opened no stream (it would hold the drain until the deadline): closing
/// them loses nothing.
async fn cut_off_silent_handshakes(inner: &Inner) {
    sleep_past(inner, Inner::first_byte_grace_end).await;
    let cut = inner.cut_off_silence();
    if cut > 0 {
        tracing::info!(
            connections = cut,
            "closed connections with nothing to lose after the first-byte grace (TLS silent, HTTP/2 without a stream)",
        );
    }
}

/// Once the request-head grace has run out, closes every connection still
/// reading a request head.
async fn cut_off_stalled_heads(inner: &Inner) {
    sleep_past(inner, Inner::request_head_grace_end).await;
    let cut = inner.cut_off_heads();
    if cut > 0 {
        tracing::info!(
            connections = cut,
            grace = ?inner.config().request_head_grace,
            "closed connections whose request head was still incomplete",
        );
    }
}

/// Sleeps until the instant `until` computes, computed anew on waking: it
/// moves with the newest accept.
async fn sleep_past(inner: &Inner, until: impl Fn(&Inner) -> Instant) {
    loop {
        let until = until(inner);
        if Instant::now() >= until {
            return;
        }
        tokio::time::sleep_until(until).await;
    }
}
