//! Wall-clock time on the reactor's time base: event timestamps and token
//! expiry are derived from the turn's monotonic `now` plus an anchor, so
//! nothing above the reactor reads a clock of its own.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the anchor is re-read, so that a stepped system clock (NTP)
/// shows up in timestamps within this long.
pub(crate) const REANCHOR: Duration = Duration::from_secs(1);

/// A pairing of one monotonic instant with the Unix time at that instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    at: Instant,
    unix_ms: u64,
}

impl WallClock {
    /// An anchor from explicit values (tests, replay).
    pub fn new(at: Instant, unix_ms: u64) -> WallClock {
        WallClock { at, unix_ms }
    }

    /// Reads the system clock for the monotonic instant `at`.
    pub(crate) fn read(at: Instant) -> WallClock {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        WallClock { at, unix_ms }
    }

    /// Unix milliseconds at `now` (instants before the anchor map to it).
    pub fn unix_ms(&self, now: Instant) -> u64 {
        self.unix_ms + now.saturating_duration_since(self.at).as_millis() as u64
    }

    /// Unix seconds at `now`.
    pub fn unix_secs(&self, now: Instant) -> u64 {
        self.unix_ms(now) / 1000
    }

    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_follows_the_monotonic_offset() {
        let t0 = Instant::now();
        let w = WallClock::new(t0, 1_700_000_000_000);
        assert_eq!(w.unix_ms(t0), 1_700_000_000_000);
        assert_eq!(
            w.unix_ms(t0 + Duration::from_millis(1500)),
            1_700_000_001_500
        );
        assert_eq!(w.unix_secs(t0 + Duration::from_millis(1500)), 1_700_000_001);
        // An instant before the anchor saturates instead of going back.
        let later = WallClock::new(t0 + Duration::from_secs(1), 5_000);
        assert_eq!(later.unix_ms(t0), 5_000);
    }
}
