//! The axum hook-up (feature `axum`): [`GracefulAccept`] is an
//! `axum::serve::Listener`, and [`Watch`] is an extractor.

use std::io;

use ::axum::{
    extract::FromRequestParts,
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
    serve::Listener,
};

use crate::{DrainableListener, GracefulAccept, TrackedIo, Watch};

impl<L: DrainableListener> Listener for GracefulAccept<L> {
    type Io = TrackedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        GracefulAccept::accept(self).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        GracefulAccept::local_addr(self)
    }
}

#[cfg(feature = "rustls")]
impl<L: DrainableListener> Listener for crate::TlsAccept<L> {
    type Io = crate::TlsIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        crate::TlsAccept::accept(self).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        crate::TlsAccept::local_addr(self)
    }
}

/// Extracts the [`Watch`] that [`DrainLayer::with_watch_extension`] put in the
/// request, so a handler can end a long-lived response when the drain starts.
///
/// [`DrainLayer::with_watch_extension`]: crate::DrainLayer::with_watch_extension
impl<S: Send + Sync> FromRequestParts<S> for Watch {
    type Rejection = MissingWatch;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Watch>().cloned().ok_or(MissingWatch)
    }
}

/// The rejection when a handler extracts a [`Watch`] but the request has none:
/// the router lacks `DrainLayer::new(watch).with_watch_extension()`.
///
/// ```
/// use axum::response::IntoResponse;
///
/// let response = tower_drain::MissingWatch.into_response();
/// assert_eq!(response.status(), 500);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MissingWatch;

impl IntoResponse for MissingWatch {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "tower_drain::Watch is missing from the request: add DrainLayer::new(watch).with_watch_extension() to the router",
        )
            .into_response()
    }
}
