//! Handler runs in flight on one connection, each under its execution
//! deadline (SPEC §2 "execution"): started by the owner, fed events, ended
//! by completion, by expiry (cancelled and reported), or by the connection
//! closing (cancelled: nothing may follow a Close frame).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::event::Event;

#[derive(Debug)]
struct Run {
    run: u64,
    deadline: Instant,
    cancel: Arc<AtomicBool>,
    /// Last event `seq` forwarded (a timeout error continues the sequence).
    last_seq: u64,
}

#[derive(Debug, Default)]
pub(super) struct Runs {
    list: Vec<Run>,
}

impl Runs {
    pub(super) fn start(&mut self, run: u64, deadline: Instant, cancel: Arc<AtomicBool>) {
        self.list.push(Run {
            run,
            deadline,
            cancel,
            last_seq: 0,
        });
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.list.iter().map(|r| r.deadline).min()
    }

    /// Notes that event `seq` of `run` is being forwarded; false when the
    /// run is not (or no longer) live here, and the event must be dropped.
    pub(super) fn forward(&mut self, run: u64, seq: u64) -> bool {
        match self.list.iter_mut().find(|r| r.run == run) {
            Some(r) => {
                r.last_seq = seq;
                true
            }
            None => false,
        }
    }

    /// Ends `run`; false when it was not live.
    pub(super) fn finish(&mut self, run: u64) -> bool {
        match self.list.iter().position(|r| r.run == run) {
            Some(i) => {
                self.list.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Cancels every run due at `now` and reports each.
    pub(super) fn expire(&mut self, now: Instant, conn: u64, out: &mut Vec<Event>) {
        self.list.retain(|r| {
            if now < r.deadline {
                return true;
            }
            r.cancel.store(true, Ordering::Release);
            tracing::info!(
                conn,
                run = r.run,
                "execution deadline passed; run cancelled"
            );
            out.push(Event::RunExpired {
                run: r.run,
                last_seq: r.last_seq,
            });
            false
        });
    }

    /// Cancels every run (no more events will be delivered).
    pub(super) fn cancel_all(&mut self) {
        for r in self.list.drain(..) {
            r.cancel.store(true, Ordering::Release);
        }
    }
}
