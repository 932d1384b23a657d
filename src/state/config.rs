//! The drain's settings, as a [`WatchBuilder`] collects them, with their
//! defaults.
//!
//! [`WatchBuilder`]: crate::WatchBuilder

use std::time::Duration;

/// Default [`crate::WatchBuilder::grace`]: how long the drain may take before it is forced.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Default [`crate::WatchBuilder::first_byte_grace`].
const DEFAULT_FIRST_BYTE_GRACE: Duration = Duration::from_secs(1);

/// Default [`crate::WatchBuilder::request_head_grace`].
const DEFAULT_REQUEST_HEAD_GRACE: Duration = Duration::from_secs(2);

/// Default [`crate::WatchBuilder::keep_alive_idle`].
const DEFAULT_KEEP_ALIVE_IDLE: Duration = Duration::from_millis(100);

/// Default [`crate::WatchBuilder::linger`].
const DEFAULT_LINGER: Duration = Duration::from_secs(2);

/// What a [`WatchBuilder`](crate::WatchBuilder) configured; each field is
/// documented at its setter.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) grace: Duration,
    pub(crate) lame_duck: Duration,
    pub(crate) first_byte_grace: Duration,
    pub(crate) request_head_grace: Duration,
    pub(crate) keep_alive_idle: Duration,
    pub(crate) linger: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            lame_duck: Duration::ZERO,
            first_byte_grace: DEFAULT_FIRST_BYTE_GRACE,
            request_head_grace: DEFAULT_REQUEST_HEAD_GRACE,
            keep_alive_idle: DEFAULT_KEEP_ALIVE_IDLE,
            linger: DEFAULT_LINGER,
        }
    }
}
