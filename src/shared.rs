//! What a listening socket held by more than one process needs: knowing that
//! it is shared (then its queue is never drained nor closed from here) or
//! has `SO_REUSEPORT` siblings, the copy a handoff sends, and the signal
//! that this process accepts on it.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use socket2::Socket;
use tokio::sync::Semaphore;

use crate::siblings::{Member, Tables};

/// One listening socket's standing across processes, shared by its
/// [`GracefulAccept`](crate::GracefulAccept) and the handoff that may send it.
#[derive(Debug, Default)]
pub(crate) struct SharedSocket {
    /// Another process holds the socket too (a service manager, or a
    /// successor that said it is ready). Only ever goes from `false` to
    /// `true`; `Release`/`Acquire` so that a drain seeing it also sees the
    /// handoff that set it.
    elsewhere: AtomicBool,
    /// The copy of the socket a handoff sends to a successor. Dropped when
    /// the listener closes, so that closing the listener closes the socket.
    copy: Mutex<Option<Socket>>,
    /// Gets a permit when the listener first accepts: a successor says it is
    /// ready once every listener it received does.
    accepting: Option<Arc<Semaphore>>,
    /// The socket's place in an `SO_REUSEPORT` group, if it was bound with
    /// `SO_REUSEPORT`: a sibling there serves the address too.
    member: Option<Member>,
}

impl SharedSocket {
    /// A socket another process holds from the start (inherited, received).
    pub(crate) fn elsewhere() -> Self {
        Self {
            elsewhere: AtomicBool::new(true),
            ..Self::default()
        }
    }

    /// Keeps `copy` for a handoff, until the listener closes.
    pub(crate) fn with_copy(self, copy: Socket) -> Self {
        *self.lock_copy() = Some(copy);
        self
    }

    /// Adds a permit to `accepting` when the listener first accepts.
    pub(crate) fn with_accepting(mut self, accepting: Arc<Semaphore>) -> Self {
        self.accepting = Some(accepting);
        self
    }

    /// Looks for `SO_REUSEPORT` siblings of `socket` when the drain starts.
    pub(crate) fn with_siblings_of(mut self, socket: &Socket) -> Self {
        self.member = Member::of(socket);
        self
    }

    /// The inode of a socket in an `SO_REUSEPORT` group.
    pub(crate) fn inode(&self) -> Option<u64> {
        self.member.map(|member| member.inode())
    }

    /// Another process serves the socket's address after this one closes
    /// it: it holds the socket too, or a socket in its `SO_REUSEPORT` group
    /// other than this process's own, as `tables` list them.
    pub(crate) fn lives_on(&self, tables: &Tables) -> bool {
        self.is_elsewhere()
            || self
                .member
                .is_some_and(|member| tables.has_sibling(&member))
    }

    pub(crate) fn is_elsewhere(&self) -> bool {
        self.elsewhere.load(Ordering::Acquire)
    }

    /// A successor now holds the socket.
    pub(crate) fn set_elsewhere(&self) {
        self.elsewhere.store(true, Ordering::Release);
    }

    /// The listener is closing: drop the copy with it.
    pub(crate) fn close_copy(&self) {
        self.lock_copy().take();
    }

    /// The listener accepts for the first time (called once).
    pub(crate) fn accepting(&self) {
        if let Some(accepting) = &self.accepting {
            accepting.add_permits(1);
        }
    }

    /// The copy a handoff sends, or `None` once the listener closed.
    pub(crate) fn lock_copy(&self) -> std::sync::MutexGuard<'_, Option<Socket>> {
        self.copy.lock().unwrap_or_else(|e| e.into_inner())
    }
}
