//! Poll-cap strategies and the arithmetic of one wait:
//! `timeout = min(time to next deadline, cap)`, and which of the two limited it.

use std::fmt;
use std::time::{Duration, Instant};

/// How long one OS wait may last at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapStrategy {
    /// No cap: wait only for deadlines and events (must be chosen explicitly).
    Unbounded,
    /// Every wait lasts at most this long.
    Fixed(Duration),
    /// Zero timeout: a busy loop, for the benchmark only.
    Spin,
}

impl CapStrategy {
    /// Parses the `POLLCAP_POLL_CAP_MS` / `--poll-cap` forms:
    /// `off`/`unbounded`, `0`/`spin`, or whole milliseconds.
    pub fn parse(v: &str) -> Option<CapStrategy> {
        match v.trim().to_ascii_lowercase().as_str() {
            "off" | "unbounded" | "none" => Some(CapStrategy::Unbounded),
            "spin" => Some(CapStrategy::Spin),
            // Any spelling of zero (`0`, `00`) is the spin strategy: a
            // zero cap is one, and is reported as one.
            ms => ms.parse::<u64>().ok().map(|ms| match ms {
                0 => CapStrategy::Spin,
                ms => CapStrategy::Fixed(Duration::from_millis(ms)),
            }),
        }
    }

    /// The longest a wait may last, or `None` for unbounded.
    pub fn limit(self) -> Option<Duration> {
        match self {
            CapStrategy::Unbounded => None,
            CapStrategy::Fixed(d) => Some(d),
            CapStrategy::Spin => Some(Duration::ZERO),
        }
    }
}

impl fmt::Display for CapStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapStrategy::Unbounded => f.write_str("unbounded"),
            CapStrategy::Fixed(d) => write!(f, "fixed({}ms)", d.as_millis()),
            CapStrategy::Spin => f.write_str("spin"),
        }
    }
}

/// Which limit bounded a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitLimit {
    /// The next deadline comes first (or is already due).
    Deadline,
    /// The cap comes first.
    Cap,
    /// Neither: no deadline and no cap.
    Forever,
    /// The caller had work left and did not wait at all.
    Busy,
}

/// The timeout for one wait at `now`, and which limit set it.
pub fn wait_timeout(
    now: Instant,
    next_deadline: Option<Instant>,
    cap: CapStrategy,
) -> (Option<Duration>, WaitLimit) {
    let to_deadline = next_deadline.map(|d| d.saturating_duration_since(now));
    match (to_deadline, cap.limit()) {
        (Some(d), Some(c)) if d <= c => (Some(d), WaitLimit::Deadline),
        (_, Some(c)) => (Some(c), WaitLimit::Cap),
        (Some(d), None) => (Some(d), WaitLimit::Deadline),
        (None, None) => (None, WaitLimit::Forever),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn parse_forms() {
        assert_eq!(CapStrategy::parse("off"), Some(CapStrategy::Unbounded));
        assert_eq!(CapStrategy::parse("0"), Some(CapStrategy::Spin));
        assert_eq!(
            CapStrategy::parse("1000"),
            Some(CapStrategy::Fixed(1000 * MS))
        );
        // Found by the `settings` fuzz target: `00` was a "fixed(0ms)" cap,
        // shown differently from the `0` (spin) it behaves as.
        assert_eq!(CapStrategy::parse("00"), Some(CapStrategy::Spin));
        assert_eq!(CapStrategy::parse("+0"), Some(CapStrategy::Spin));
        assert_eq!(CapStrategy::parse("1.5"), None);
        assert_eq!(CapStrategy::parse("-1"), None);
        assert_eq!(CapStrategy::parse(""), None);
    }

    #[test]
    fn deadline_before_cap_wins() {
        let now = Instant::now();
        let cap = CapStrategy::Fixed(1000 * MS);
        assert_eq!(
            wait_timeout(now, Some(now + 50 * MS), cap),
            (Some(50 * MS), WaitLimit::Deadline)
        );
        assert_eq!(
            wait_timeout(now, Some(now + 5000 * MS), cap),
            (Some(1000 * MS), WaitLimit::Cap)
        );
        assert_eq!(
            wait_timeout(now, None, cap),
            (Some(1000 * MS), WaitLimit::Cap)
        );
    }

    #[test]
    fn overdue_deadline_means_zero_wait() {
        let now = Instant::now() + 10 * MS;
        let past = now - 5 * MS;
        assert_eq!(
            wait_timeout(now, Some(past), CapStrategy::Unbounded),
            (Some(Duration::ZERO), WaitLimit::Deadline)
        );
    }

    #[test]
    fn unbounded_and_spin() {
        let now = Instant::now();
        assert_eq!(
            wait_timeout(now, None, CapStrategy::Unbounded),
            (None, WaitLimit::Forever)
        );
        assert_eq!(
            wait_timeout(now, Some(now + 7 * MS), CapStrategy::Unbounded),
            (Some(7 * MS), WaitLimit::Deadline)
        );
        assert_eq!(
            wait_timeout(now, Some(now + 7 * MS), CapStrategy::Spin),
            (Some(Duration::ZERO), WaitLimit::Cap)
        );
    }

    #[test]
    fn equal_deadline_and_cap_counts_as_deadline() {
        let now = Instant::now();
        let cap = CapStrategy::Fixed(100 * MS);
        assert_eq!(
            wait_timeout(now, Some(now + 100 * MS), cap).1,
            WaitLimit::Deadline
        );
    }
}
