//! The circuit breaker (SPEC §4): counts failures that are the server's
//! fault, refuses while open, and lets one trial through when half-open.
//! The server guards upgrades with it (503 while open); the client guards
//! connect attempts (SPEC §6). Time is an input; nothing here reads a clock.

use std::time::{Duration, Instant};

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused until `recovery` has passed since it opened.
    Open,
    /// Recovery has passed: one trial call goes through; its outcome closes
    /// the breaker again or reopens it.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`, as `/health` and `/metrics` show it.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Why a call may not proceed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Seconds until a retry can succeed (for `Retry-After`).
    pub retry_after: Duration,
}

/// What a caller holds while its upgrade is in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// An ordinary call while closed.
    Normal,
    /// The single half-open trial: its outcome decides the state.
    Trial,
}

/// A circuit breaker: opens after `threshold` failures in a row, stays open
/// for `recovery`, then lets one trial through. Its counters are totals
/// since it was made, for `/health` and `/metrics`.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    recovery: Duration,
    state: BreakerState,
    /// Consecutive failures while closed.
    failures: u32,
    opened_at: Option<Instant>,
    trial_out: bool,
    /// Failures reported, in every state.
    pub total_failures: u64,
    /// Calls refused while open or while the half-open trial was out.
    pub total_rejections: u64,
    /// Times it opened.
    pub times_opened: u64,
}

impl Breaker {
    /// A closed breaker; `threshold` is at least 1, `recovery` is how long it
    /// stays open.
    pub fn new(threshold: u32, recovery: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            recovery,
            state: BreakerState::Closed,
            failures: 0,
            opened_at: None,
            trial_out: false,
            total_failures: 0,
            total_rejections: 0,
            times_opened: 0,
        }
    }

    /// The state at `now` (open turns half-open once `recovery` has passed).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        if self.state == BreakerState::Open
            && self.opened_at.is_some_and(|t| now >= t + self.recovery)
        {
            self.state = BreakerState::HalfOpen;
            self.trial_out = false;
        }
        self.state
    }

    /// Failures in a row that open it.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// How long it stays open before a trial.
    pub fn recovery(&self) -> Duration {
        self.recovery
    }

    /// Failures in a row while closed, so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Asks to start a call (an upgrade, a connect attempt) at `now`.
    pub fn allow(&mut self, now: Instant) -> Result<Permit, Refused> {
        match self.state(now) {
            BreakerState::Closed => Ok(Permit::Normal),
            BreakerState::HalfOpen if !self.trial_out => {
                self.trial_out = true;
                Ok(Permit::Trial)
            }
            BreakerState::HalfOpen => {
                self.total_rejections += 1;
                Err(Refused {
                    retry_after: Duration::from_secs(1),
                })
            }
            BreakerState::Open => {
                self.total_rejections += 1;
                let until = self.opened_at.map_or(self.recovery, |t| {
                    (t + self.recovery).saturating_duration_since(now)
                });
                Err(Refused {
                    retry_after: until.max(Duration::from_secs(1)),
                })
            }
        }
    }

    /// The call went through.
    pub fn success(&mut self, permit: Permit) {
        match permit {
            Permit::Trial => {
                self.state = BreakerState::Closed;
                self.trial_out = false;
                self.opened_at = None;
                self.failures = 0;
            }
            Permit::Normal if self.state == BreakerState::Closed => self.failures = 0,
            Permit::Normal => {}
        }
    }

    /// The attempt ended with no verdict (its client left): a trial's
    /// slot is free for the next caller.
    pub fn release(&mut self, permit: Permit) {
        if permit == Permit::Trial {
            self.trial_out = false;
        }
    }

    /// The call failed through the guarded side's fault.
    pub fn failure(&mut self, permit: Permit, now: Instant) {
        self.total_failures += 1;
        let trip = match permit {
            Permit::Trial => true,
            Permit::Normal if self.state == BreakerState::Closed => {
                self.failures += 1;
                self.failures >= self.threshold
            }
            Permit::Normal => false,
        };
        if trip {
            self.state = BreakerState::Open;
            self.opened_at = Some(now);
            self.trial_out = false;
            self.failures = 0;
            self.times_opened += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn closed_to_open_after_threshold_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, s(10));
        for _ in 0..2 {
            let p = b.allow(t0).unwrap();
            b.failure(p, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        let p = b.allow(t0).unwrap();
        b.failure(p, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        let r = b.allow(t0 + s(4)).unwrap_err();
        assert_eq!(r.retry_after, s(6));
        assert_eq!(b.total_rejections, 1);
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, s(10));
        let p = b.allow(t0).unwrap();
        b.failure(p, t0);
        let p = b.allow(t0).unwrap();
        b.success(p);
        let p = b.allow(t0).unwrap();
        b.failure(p, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn half_open_admits_exactly_one_trial_and_closes_on_success() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, s(5));
        let p = b.allow(t0).unwrap();
        b.failure(p, t0);
        assert_eq!(b.state(t0 + s(5)), BreakerState::HalfOpen);
        let trial = b.allow(t0 + s(5)).unwrap();
        assert_eq!(trial, Permit::Trial);
        assert!(b.allow(t0 + s(5)).is_err(), "only one trial");
        b.success(trial);
        assert_eq!(b.state(t0 + s(5)), BreakerState::Closed);
        assert_eq!(b.allow(t0 + s(5)).unwrap(), Permit::Normal);
    }

    #[test]
    fn a_failed_trial_reopens_for_a_full_recovery_period() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, s(5));
        let p = b.allow(t0).unwrap();
        b.failure(p, t0);
        let t1 = t0 + s(6);
        let trial = b.allow(t1).unwrap();
        b.failure(trial, t1);
        assert_eq!(b.state(t1), BreakerState::Open);
        assert_eq!(b.allow(t1 + s(4)).unwrap_err().retry_after, s(1));
        assert_eq!(b.state(t1 + s(5)), BreakerState::HalfOpen);
        assert_eq!(b.times_opened, 2);
    }
}
