//! A fixed-bucket, lock-free histogram of microsecond values: written by one
//! reactor thread, read by whichever thread renders `/health` or `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (µs) of the buckets; a final implicit `+Inf` bucket follows.
pub const BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// Counts of microsecond values in the [`BOUNDS_US`] buckets, with their
/// count and sum: one writer, any readers (relaxed atomics).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Non-cumulative counts per bucket (last = over the largest bound).
    pub buckets: [u64; BOUNDS_US.len() + 1],
    /// Values recorded.
    pub count: u64,
    /// Their sum (µs).
    pub sum_us: u64,
}

impl Histogram {
    /// Records one value (µs); past the largest bound it lands in `+Inf`.
    pub fn record_us(&self, us: u64) {
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            count: self.count.load(Relaxed),
            sum_us: self.sum_us.load(Relaxed),
            ..Snapshot::default()
        };
        for (d, b) in s.buckets.iter_mut().zip(&self.buckets) {
            *d = b.load(Relaxed);
        }
        s
    }
}

impl Snapshot {
    /// Adds another snapshot (to aggregate reactors).
    pub fn merge(&mut self, o: &Snapshot) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.count += o.count;
        self.sum_us += o.sum_us;
    }

    /// The mean (µs); 0 when empty.
    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64
        }
    }

    /// Upper bound (µs) of the bucket holding quantile `q` (0..=1); the
    /// estimate Prometheus' `histogram_quantile` would give at a bucket edge.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return BOUNDS_US.get(i).copied().unwrap_or(u64::MAX);
            }
        }
        u64::MAX
    }

    /// Appends Prometheus histogram lines for `name` (values in seconds).
    pub fn write_prometheus(&self, out: &mut String, name: &str, labels: &str) {
        use std::fmt::Write;
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            cum += n;
            let le = match BOUNDS_US.get(i) {
                Some(b) => format!("{}", *b as f64 / 1e6),
                None => "+Inf".into(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_quantiles_and_mean() {
        let h = Histogram::default();
        for us in [10, 60, 60, 400, 2_000_000_000] {
            h.record_us(us);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets[0], 1); // <= 50
        assert_eq!(s.buckets[1], 2); // <= 100
        assert_eq!(s.buckets[3], 1); // <= 500
        assert_eq!(s.buckets[BOUNDS_US.len()], 1); // +Inf
        assert_eq!(s.quantile_us(0.5), 100);
        assert_eq!(s.quantile_us(0.8), 500);
        assert_eq!(s.quantile_us(1.0), u64::MAX);
        let mut out = String::new();
        s.write_prometheus(&mut out, "x_seconds", "");
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(out.contains("x_seconds_count 5\n"));
    }
}
