//! The reactor: the only code that waits on the OS or reads the clock.
//!
//! One turn = wait `min(next deadline, cap)` → read `now` once → report ready
//! I/O → hand out expired deadlines, all at that one `now`. The timeout of the
//! next wait is computed from the same `now`, so time spent handling a turn
//! shows up as deadline overshoot (measured in the histogram) rather than
//! costing a second clock read.

mod backend;
mod cap;
mod clock;
mod mailbox;
mod stats;
mod timers;
mod waker;

use std::io;
use std::sync::Arc;
use std::time::Instant;

pub use backend::{BackendKind, Event, Interest};
pub use cap::{CapStrategy, WaitLimit, wait_timeout};
pub use clock::WallClock;
pub use mailbox::Mailbox;
pub use stats::{ReactorStats, StatsSnapshot, WakeReason};
pub use timers::{DeadlineQueue, Kind, TimerId};
pub use waker::Waker;

use crate::platform::Pollable;
use backend::Backend;

/// How long a settle waits per answer owed by a burst of soft timers: about
/// what a peer spends reading a ping and writing its pong on loopback,
/// doubled (see [`Reactor::settle_time`]).
pub const SETTLE_PER_ANSWER: std::time::Duration = std::time::Duration::from_micros(20);

/// What one turn observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Turn {
    /// The single clock reading of this turn.
    pub now: Instant,
    /// Why the wait returned.
    pub reason: WakeReason,
    /// A wake request was pending (whether or not its signal arrived).
    pub woken: bool,
}

/// A capped event loop over one OS poller, with a deadline queue whose timers
/// carry a `usize` token.
///
/// ```
/// use std::time::Duration;
/// use pollcap::reactor::{BackendKind, CapStrategy, Reactor, WakeReason};
///
/// let mut r = Reactor::new(BackendKind::Mio, CapStrategy::Fixed(Duration::from_secs(1)))?;
/// let t = r.timers().insert(7);
/// let due = r.now() + Duration::from_millis(20);
/// r.timers().set(t, Some(due));
/// // The deadline comes before the cap: the wait ends there.
/// let turn = r.turn()?;
/// assert_eq!(turn.reason, WakeReason::Deadline);
/// assert_eq!(r.pop_expired(), Some(7));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Reactor {
    backend: Backend,
    waker: Arc<Waker>,
    cap: CapStrategy,
    timers: DeadlineQueue<usize>,
    events: Vec<Event>,
    stats: Arc<ReactorStats>,
    now: Instant,
    wall: WallClock,
    /// How late a soft timer may fire (see [`Reactor::set_slack`]).
    slack: std::time::Duration,
    /// Soft timers fired in the current turn.
    soft_fired: usize,
    /// The current turn only collects the answers to a burst: soft timers
    /// wait for their window (or a later turn), so a window is not split.
    settling: bool,
}

impl Reactor {
    /// A reactor on a new OS poller of `kind`, whose waits never exceed `cap`
    /// (soft timers' slack is zero until [`Reactor::set_slack`]). Fails only
    /// if the OS refuses a poller or the waker's signal.
    pub fn new(kind: BackendKind, cap: CapStrategy) -> io::Result<Reactor> {
        let (backend, signal) = Backend::new(kind, 1024)?;
        let now = Instant::now();
        Ok(Reactor {
            backend,
            waker: Arc::new(Waker::new(signal)),
            cap,
            timers: DeadlineQueue::new(),
            events: Vec::with_capacity(1024),
            stats: Arc::new(ReactorStats::default()),
            now,
            wall: WallClock::read(now),
            slack: std::time::Duration::ZERO,
            soft_fired: 0,
            settling: false,
        })
    }

    /// The waker other threads use to end this reactor's wait.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// This reactor's counters, readable from any thread.
    pub fn stats(&self) -> Arc<ReactorStats> {
        self.stats.clone()
    }

    /// The cap on every wait.
    pub fn cap(&self) -> CapStrategy {
        self.cap
    }

    /// The clock reading of the last turn (or of construction).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Soft timers may fire up to `slack` after their deadline: the reactor
    /// wakes for them only at the end of the window that the earliest opens,
    /// and fires every soft timer due by then in that turn (due ones also
    /// ride along with any earlier turn). Its wakeups for them are bounded
    /// by 1/slack per second however many there are. Hard timers keep their
    /// precision. Zero by default.
    ///
    /// What soft timers send (a window's heartbeat pings) is answered in a
    /// burst too: after a turn that fired more than one soft timer, the next
    /// wait first lets the answers arrive for [`Reactor::settle_time`]
    /// (never past a hard deadline), so that the burst of pongs is read in
    /// one wakeup instead of one wakeup per early pong.
    pub fn set_slack(&mut self, slack: std::time::Duration) {
        self.slack = slack;
    }

    /// How late a soft timer may fire (see [`Reactor::set_slack`]).
    pub fn slack(&self) -> std::time::Duration {
        self.slack
    }

    /// How long the answers to a burst of `burst` soft timers are given to
    /// arrive: [`SETTLE_PER_ANSWER`] each, at least 1/25 of the slack (2 ms
    /// at the default 50 ms) and at most 1/5 of it (10 ms). A peer answers
    /// a burst one ping at a time, so a fixed settle caught only the first
    /// part of a large one and the rest woke the reactor a few times more
    /// (10 000 connections pinged every 2 s: 250 pings a window, pongs over
    /// about 5 ms on loopback). The cap bounds what the settle delays other
    /// connections' traffic by.
    pub fn settle_time(&self, burst: usize) -> std::time::Duration {
        let per = SETTLE_PER_ANSWER.saturating_mul(burst.min(u32::MAX as usize) as u32);
        per.clamp(self.slack / 25, self.slack / 5)
    }

    /// Wall-clock time on this reactor's time base: `wall().unix_ms(now)`.
    pub fn wall(&self) -> WallClock {
        self.wall
    }

    /// The deadline queue: insert a timer carrying a token, arm it with
    /// [`DeadlineQueue::set`]; it comes back from [`Reactor::pop_expired`].
    pub fn timers(&mut self) -> &mut DeadlineQueue<usize> {
        &mut self.timers
    }

    /// The deadline a timer is armed for (read-only peek for audits).
    pub fn timer_deadline(&self, id: TimerId) -> Option<Instant> {
        self.timers.deadline(id)
    }

    /// Registers `src` under `token` for `interest`: its readiness comes back
    /// in [`Reactor::events`] after a turn. Read and write until `WouldBlock`
    /// (mio is edge-triggered).
    pub fn register(
        &self,
        src: &mut dyn Pollable,
        token: usize,
        interest: Interest,
    ) -> io::Result<()> {
        self.backend.register(src, token, interest)
    }

    /// Changes `src`'s interest (e.g. [`Interest::BOTH`] while output waits).
    pub fn reregister(
        &self,
        src: &mut dyn Pollable,
        token: usize,
        interest: Interest,
    ) -> io::Result<()> {
        self.backend.reregister(src, token, interest)
    }

    /// Stops reporting `src`.
    pub fn deregister(&self, src: &mut dyn Pollable) -> io::Result<()> {
        self.backend.deregister(src)
    }

    /// Deregisters `src` unless closing it will: its owner is about to
    /// close it (one `epoll_ctl` less per connection with mio on Unix).
    pub fn deregister_before_close(&self, src: &mut dyn Pollable) -> io::Result<()> {
        if crate::platform::CLOSE_REMOVES_FROM_POLLER && self.backend.kind() == BackendKind::Mio {
            return Ok(());
        }
        self.backend.deregister(src)
    }

    /// Waits once, for at most `min(next deadline, cap)`, then reads the clock.
    pub fn turn(&mut self) -> io::Result<Turn> {
        self.wait_turn(false)
    }

    /// A turn that does not block: the caller has work left over (a
    /// connection stopped at its budget) and only wants new events and due
    /// deadlines before resuming it. Counted as `busy` when nothing came.
    pub fn turn_busy(&mut self) -> io::Result<Turn> {
        self.wait_turn(true)
    }

    fn wait_turn(&mut self, busy: bool) -> io::Result<Turn> {
        let burst = std::mem::take(&mut self.soft_fired);
        let settle = burst > 1 && !busy;
        self.settling = settle;
        if settle {
            // The burst's answers arrive meanwhile; a hard deadline cuts it
            // short. Counted from now, when the burst has gone out: sending
            // it took part of the turn.
            let until = Instant::now() + self.settle_time(burst);
            let until = self
                .timers
                .next_of(Kind::Hard)
                .map_or(until, |h| h.min(until));
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                std::thread::sleep(left);
            }
        }
        let wake = self.timers.next_wake(self.slack);
        let next = wake.map(|w| w.0);
        let (timeout, limit) = if busy || settle {
            (Some(std::time::Duration::ZERO), WaitLimit::Busy)
        } else {
            wait_timeout(self.now, next, self.cap)
        };
        let started = self.now;
        self.events.clear();
        let waited = self.backend.wait(&mut self.events, timeout);
        self.now = Instant::now();
        if self.wall.age(self.now) >= clock::REANCHOR {
            self.wall = WallClock::read(self.now);
        }
        let woken = self.waker.take_pending();
        let reason = match waited {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => WakeReason::Interrupted,
            Err(e) => return Err(e),
            Ok(()) if !self.events.is_empty() => WakeReason::Io,
            Ok(()) if woken && !self.waker.is_suppressed() => WakeReason::Waker,
            Ok(()) => match (limit, timeout) {
                (WaitLimit::Busy, _) => WakeReason::Busy,
                (WaitLimit::Deadline, _) if next.is_some_and(|d| self.now >= d) => {
                    match wake.map(|w| w.1) {
                        Some(Kind::Soft) => WakeReason::SoftDeadline,
                        _ => WakeReason::Deadline,
                    }
                }
                (WaitLimit::Cap, Some(t)) if self.now.duration_since(started) >= t => {
                    WakeReason::Cap
                }
                // Returned early with nothing to report (EINTR on some
                // platforms, a stale wake signal): counted, not misfiled.
                _ => WakeReason::Interrupted,
            },
        };
        self.stats.count(reason);
        if woken
            && matches!(
                reason,
                WakeReason::Cap | WakeReason::Deadline | WakeReason::SoftDeadline
            )
        {
            self.stats
                .lost_wakeups_recovered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Turn {
            now: self.now,
            reason,
            woken,
        })
    }

    /// Ready I/O of the last turn.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Pops one timer due at this turn's `now`, recording how late it is
    /// (hard timers: overshoot; soft ones: their own histogram, since
    /// lateness within the slack is by design). Due soft timers ride along
    /// with any turn but a settle (which only collects a burst's answers):
    /// the reactor wakes for them only at the end of a window, and never
    /// fires one early.
    pub fn pop_expired(&mut self) -> Option<usize> {
        let (token, due, kind) = if self.settling {
            self.timers.pop_expired_of(self.now, &[Kind::Hard])?
        } else {
            self.timers.pop_expired(self.now)?
        };
        let late = self.now.saturating_duration_since(due).as_micros() as u64;
        self.stats.fired(kind, late);
        if kind == Kind::Soft {
            self.soft_fired += 1;
        }
        Some(token)
    }
}
