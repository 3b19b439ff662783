//! A reactor's incoming mail from other threads: a queue plus the
//! reactor's waker (a lost wake is covered by the cap). Bounded in bytes
//! when asked: what does not fit is handed back to the sender, never
//! grown into and never dropped silently.

use std::sync::{Arc, Mutex};

use super::Waker;

/// Mail of type `T` for one reactor.
pub struct Mailbox<T> {
    queue: Mutex<Queue<T>>,
    waker: Arc<Waker>,
    /// Most bytes [`Mailbox::try_post`] lets wait at once.
    budget: usize,
}

struct Queue<T> {
    items: Vec<T>,
    /// Bytes of the items posted with [`Mailbox::try_post`].
    bytes: usize,
}

impl<T> Mailbox<T> {
    /// A mailbox whose senders are bounded elsewhere.
    pub fn new(waker: Arc<Waker>) -> Mailbox<T> {
        Mailbox::bounded(waker, usize::MAX)
    }

    /// A mailbox that holds at most `budget` bytes of counted mail.
    pub fn bounded(waker: Arc<Waker>, budget: usize) -> Mailbox<T> {
        Mailbox {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                bytes: 0,
            }),
            waker,
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Posts `mail` whatever the budget (small, bounded mail: a run's end,
    /// a store delivery) and wakes the reactor.
    pub fn post(&self, mail: T) {
        self.lock().items.push(mail);
        let _ = self.waker.wake();
    }

    /// Posts `mail`, counted as `bytes`, unless that would take the mail
    /// waiting past the budget: then it is handed back.
    pub fn try_post(&self, mail: T, bytes: usize) -> Result<(), T> {
        {
            let mut q = self.lock();
            if q.bytes.saturating_add(bytes) > self.budget {
                return Err(mail);
            }
            q.bytes += bytes;
            q.items.push(mail);
        }
        let _ = self.waker.wake();
        Ok(())
    }

    /// Everything waiting, oldest first; the budget is free again.
    pub fn take(&self) -> Vec<T> {
        let mut q = self.lock();
        q.bytes = 0;
        std::mem::take(&mut q.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::{BackendKind, CapStrategy, Reactor};

    #[test]
    fn counted_mail_is_bounded_and_the_budget_comes_back_when_taken() {
        let r = Reactor::new(BackendKind::Mio, CapStrategy::Spin).unwrap();
        let mb = Mailbox::bounded(r.waker(), 100);
        assert!(mb.try_post(1, 60).is_ok());
        assert_eq!(mb.try_post(2, 41), Err(2), "over the budget: handed back");
        mb.post(3); // uncounted mail always fits
        assert!(mb.try_post(4, 40).is_ok(), "exactly the budget");
        assert_eq!(mb.take(), [1, 3, 4]);
        assert!(mb.try_post(5, 100).is_ok(), "taken: room again");
    }
}
