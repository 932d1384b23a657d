//! Long-lived responses that end when the drain starts: [`EndOnDrain`] ends
//! a stream (server-sent events, a chunked body) at the drain, optionally
//! with one last item, so the response finishes and its connection closes
//! instead of holding the drain until the deadline.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::Stream;
use pin_project_lite::pin_project;

use crate::{future::Draining, Observer};

pin_project! {
    /// A stream that yields the items of another until the drain starts
    /// ([`Observer::draining`]), then its [`final_item`](EndOnDrain::final_item)
    /// if one was given, and ends.
    ///
    /// The drain is checked before each item, so a stream that always has
    /// an item ready still ends.
    ///
    /// Server-sent events that say goodbye when the drain starts:
    ///
    /// ```
    /// use std::convert::Infallible;
    ///
    /// use axum::{
    ///     response::sse::{Event, Sse},
    ///     routing::get,
    ///     Router,
    /// };
    /// use futures_util::stream::{self, Stream};
    /// use tower_drain::{EndOnDrain, Observer, Watch};
    ///
    /// fn events(observer: &Observer) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    ///     let ticks = stream::repeat_with(|| Ok(Event::default().data("tick")));
    ///     let last = Ok(Event::default().event("close").data("draining"));
    ///     Sse::new(EndOnDrain::new(ticks, observer).final_item(last))
    /// }
    ///
    /// let watch = Watch::new();
    /// let observer = watch.observer();
    /// let app: Router = Router::new()
    ///     .route("/events", get(move || async move { events(&observer) }));
    /// ```
    #[must_use = "streams do nothing unless polled"]
    pub struct EndOnDrain<S: Stream> {
        #[pin]
        stream: S,
        #[pin]
        draining: Draining,
        last: Option<S::Item>,
        ended: bool,
    }
}

impl<S: Stream> EndOnDrain<S> {
    /// Ends `stream` when the drain `observer` sees starts.
    pub fn new(stream: S, observer: &Observer) -> Self {
        Self {
            stream,
            draining: observer.draining(),
            last: None,
            ended: false,
        }
    }

    /// Yields `item` when the drain starts, before ending: a goodbye event
    /// the client can act on.
    pub fn final_item(mut self, item: S::Item) -> Self {
        self.last = Some(item);
        self
    }
}

impl<S: Stream> Stream for EndOnDrain<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if this.draining.poll(cx).is_ready() {
            *this.ended = true;
            return Poll::Ready(this.last.take());
        }
        let next = this.stream.poll_next(cx);
        *this.ended = matches!(next, Poll::Ready(None));
        next
    }
}

impl<S: Stream + fmt::Debug> fmt::Debug for EndOnDrain<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndOnDrain")
            .field("stream", &self.stream)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
