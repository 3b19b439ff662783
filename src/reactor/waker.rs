//! The cross-thread waker. A wake request is a flag plus an OS signal; the
//! flag is what the reactor trusts, so a lost signal is recovered by the next
//! capped wait. `suppress` drops the signal on purpose to prove exactly that.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use super::backend::Signal;

/// Wakes a reactor from another thread: [`Waker::wake`] sets a flag and
/// signals the poller. The flag is what the reactor trusts, so a lost
/// signal costs at most one cap. Shared as `Arc<Waker>`
/// ([`Reactor::waker`](super::Reactor::waker)).
pub struct Waker {
    signal: Signal,
    pending: AtomicBool,
    suppressed: AtomicBool,
}

impl Waker {
    pub(crate) fn new(signal: Signal) -> Waker {
        Waker {
            signal,
            pending: AtomicBool::new(false),
            suppressed: AtomicBool::new(false),
        }
    }

    /// Asks the reactor to run a turn soon. Cheap when a request is already
    /// pending (no second syscall).
    pub fn wake(&self) -> io::Result<()> {
        if self.pending.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if self.suppressed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.signal.fire()
    }

    /// Test and benchmark hook: while set, wake requests are recorded but the
    /// OS signal is never sent (a "lost wakeup"). Hidden: for the tests and
    /// the binary's benchmark, not an API.
    #[doc(hidden)]
    pub fn suppress(&self, on: bool) {
        self.suppressed.store(on, Ordering::Release);
    }

    pub(crate) fn is_suppressed(&self) -> bool {
        self.suppressed.load(Ordering::Acquire)
    }

    /// Consumes the pending request, if any.
    pub(crate) fn take_pending(&self) -> bool {
        self.pending.swap(false, Ordering::AcqRel)
    }
}
