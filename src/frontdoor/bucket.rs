//! A token bucket with time as input: `rate` tokens a second up to
//! `capacity`, each request taking some. Used per client address (new
//! connections) and per connection (messages, bytes).

use std::time::Instant;

/// Tokens left and when they were last counted. `f32` keeps a table entry
/// small; rates and capacities up to 2^24 stay exact.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f32,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(capacity: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: capacity as f32,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, capacity: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (f64::from(self.tokens) + dt * rate).min(capacity) as f32;
        self.last = now;
    }

    /// Takes `n` tokens at `now` (refilled at `rate` a second, up to
    /// `capacity`), or says in how many seconds `n` would be there.
    pub fn take(&mut self, n: f64, rate: f64, capacity: f64, now: Instant) -> Result<(), f64> {
        self.refill(rate, capacity, now);
        if f64::from(self.tokens) >= n {
            self.tokens -= n as f32;
            Ok(())
        } else {
            Err((n - f64::from(self.tokens)) / rate)
        }
    }

    /// Whether the bucket is full again at `now` (nothing to remember).
    pub fn is_full(&self, rate: f64, capacity: f64, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, capacity, now);
        f64::from(b.tokens) >= capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refills_at_its_rate_up_to_its_capacity() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3.0, t0);
        for _ in 0..3 {
            assert_eq!(b.take(1.0, 1.0, 3.0, t0), Ok(()));
        }
        let wait = b.take(1.0, 1.0, 3.0, t0).unwrap_err();
        assert!((wait - 1.0).abs() < 1e-6, "{wait}");
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(1.0, 1.0, 3.0, t1).is_err());
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(b.take(1.0, 1.0, 3.0, t2), Ok(()));
        // Never more than the capacity, however long it rests.
        let t3 = t2 + Duration::from_secs(3600);
        assert!(b.is_full(1.0, 3.0, t3));
        for _ in 0..3 {
            assert_eq!(b.take(1.0, 1.0, 3.0, t3), Ok(()));
        }
        assert!(b.take(1.0, 1.0, 3.0, t3).is_err());
        // Bytes: one take larger than one token.
        let mut b = Bucket::full(100.0, t0);
        assert_eq!(b.take(60.0, 10.0, 100.0, t0), Ok(()));
        assert!(b.take(60.0, 10.0, 100.0, t0).is_err());
        assert_eq!(
            b.take(60.0, 10.0, 100.0, t0 + Duration::from_secs(2)),
            Ok(())
        );
    }
}
