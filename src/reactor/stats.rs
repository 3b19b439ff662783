//! Per-reactor counters (SPEC §1): waits and how each ended (soft and hard
//! deadlines apart), timers fired by kind, lost wakeups recovered by the
//! cap, and how late timers fired.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::histogram::{Histogram, Snapshot};

/// Why one wait returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeReason {
    /// Ready I/O was reported.
    Io,
    /// The waker was signalled.
    Waker,
    /// The next hard deadline came before the cap.
    Deadline,
    /// The slack window of the next soft deadline ended before the cap.
    SoftDeadline,
    /// The cap came first.
    Cap,
    /// The wait was interrupted by a signal (EINTR).
    Interrupted,
    /// A non-blocking turn (work was left over) that found nothing new.
    Busy,
}

/// One reactor's counters, written by its thread and read from any (relaxed
/// atomics: a [`snapshot`](Self::snapshot) is exact per counter, not across
/// counters).
#[derive(Debug, Default)]
pub struct ReactorStats {
    pub(crate) waits: AtomicU64,
    pub(crate) by_io: AtomicU64,
    pub(crate) by_waker: AtomicU64,
    pub(crate) by_deadline: AtomicU64,
    pub(crate) by_soft_deadline: AtomicU64,
    pub(crate) by_cap: AtomicU64,
    pub(crate) interrupted: AtomicU64,
    pub(crate) busy: AtomicU64,
    /// Wake requests found pending after a wait that the waker did not end:
    /// a lost or suppressed wakeup, recovered by the cap or a deadline.
    pub(crate) lost_wakeups_recovered: AtomicU64,
    /// Timers fired, by kind.
    pub(crate) hard_fired: AtomicU64,
    pub(crate) soft_fired: AtomicU64,
    /// How late hard deadlines were handled (µs).
    pub(crate) overshoot: Histogram,
    /// How late soft deadlines were handled (µs): up to the slack by design.
    pub(crate) soft_lateness: Histogram,
}

/// A plain copy of [`ReactorStats`], summable across reactors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Waits returned, whatever ended them (the sum of the `by_*`,
    /// `interrupted` and `busy` counts).
    pub waits: u64,
    /// Waits ended by ready I/O.
    pub by_io: u64,
    /// Waits ended by the waker (mail from another thread).
    pub by_waker: u64,
    /// Waits ended by a hard deadline.
    pub by_deadline: u64,
    /// Waits ended by the end of a soft deadline's slack window.
    pub by_soft_deadline: u64,
    /// Waits ended by the cap: nothing happened for a whole cap.
    pub by_cap: u64,
    /// Waits interrupted by a signal (EINTR).
    pub interrupted: u64,
    /// Non-blocking turns (work was left over) that found nothing new.
    pub busy: u64,
    /// Wake requests found pending after a wait the waker did not end: a lost
    /// or suppressed signal, recovered by the cap or a deadline.
    pub lost_wakeups_recovered: u64,
    /// Hard timers fired.
    pub hard_fired: u64,
    /// Soft timers fired.
    pub soft_fired: u64,
    /// How late hard deadlines were handled (µs).
    pub overshoot: Snapshot,
    /// How late soft deadlines were handled (µs): up to the slack by design.
    pub soft_lateness: Snapshot,
}

impl ReactorStats {
    pub(crate) fn count(&self, reason: WakeReason) {
        self.waits.fetch_add(1, Relaxed);
        let c = match reason {
            WakeReason::Io => &self.by_io,
            WakeReason::Waker => &self.by_waker,
            WakeReason::Deadline => &self.by_deadline,
            WakeReason::SoftDeadline => &self.by_soft_deadline,
            WakeReason::Cap => &self.by_cap,
            WakeReason::Interrupted => &self.interrupted,
            WakeReason::Busy => &self.busy,
        };
        c.fetch_add(1, Relaxed);
    }

    /// A timer of `kind` fired `late_us` after its deadline.
    pub(crate) fn fired(&self, kind: crate::reactor::Kind, late_us: u64) {
        match kind {
            crate::reactor::Kind::Hard => {
                self.hard_fired.fetch_add(1, Relaxed);
                self.overshoot.record_us(late_us);
            }
            crate::reactor::Kind::Soft => {
                self.soft_fired.fetch_add(1, Relaxed);
                self.soft_lateness.record_us(late_us);
            }
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            waits: self.waits.load(Relaxed),
            by_io: self.by_io.load(Relaxed),
            by_waker: self.by_waker.load(Relaxed),
            by_deadline: self.by_deadline.load(Relaxed),
            by_soft_deadline: self.by_soft_deadline.load(Relaxed),
            by_cap: self.by_cap.load(Relaxed),
            interrupted: self.interrupted.load(Relaxed),
            busy: self.busy.load(Relaxed),
            lost_wakeups_recovered: self.lost_wakeups_recovered.load(Relaxed),
            hard_fired: self.hard_fired.load(Relaxed),
            soft_fired: self.soft_fired.load(Relaxed),
            overshoot: self.overshoot.snapshot(),
            soft_lateness: self.soft_lateness.snapshot(),
        }
    }
}

impl StatsSnapshot {
    /// Adds `o`'s counts and histograms to these (a server's total over its
    /// reactors).
    pub fn merge(&mut self, o: &StatsSnapshot) {
        self.waits += o.waits;
        self.by_io += o.by_io;
        self.by_waker += o.by_waker;
        self.by_deadline += o.by_deadline;
        self.by_soft_deadline += o.by_soft_deadline;
        self.hard_fired += o.hard_fired;
        self.soft_fired += o.soft_fired;
        self.soft_lateness.merge(&o.soft_lateness);
        self.by_cap += o.by_cap;
        self.interrupted += o.interrupted;
        self.busy += o.busy;
        self.lost_wakeups_recovered += o.lost_wakeups_recovered;
        self.overshoot.merge(&o.overshoot);
    }
}
