//! The per-address table shared by every reactor: open WebSocket
//! connections and a bucket of new connections for each client address
//! (IPv6 by /64, the block one subscriber gets). Bounded: at most
//! `capacity` entries; when full, every entry without an open connection
//! is dropped (their buckets start full again: the price of bounded
//! memory under more addresses than the table holds), and the audit
//! sweep drops those whose bucket has refilled, so an address that comes
//! and goes cannot grow it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use super::bucket::Bucket;
use crate::settings::{BURST_SECONDS, ClientLimits, canonical};

/// Least entries the table may hold (it holds at least
/// `max_connections`, so that every open connection's address fits).
pub const MIN_TABLE_ENTRIES: usize = 65_536;

/// The key a client address is counted under: IPv4 as is, IPv6 by /64.
pub fn key_of(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[derive(Debug)]
struct Slot {
    open: u32,
    connects: Bucket,
}

/// Why an address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// `max_connections_per_ip` open already.
    Connections,
    /// Out of new-connection tokens; one is back in this many seconds.
    Rate(u64),
}

/// Open connections and new-connection buckets per client address.
#[derive(Debug)]
pub struct Clients {
    table: Mutex<HashMap<IpAddr, Slot>>,
    capacity: usize,
    max_open: u32,
    rate: f64,
    burst: f64,
    /// Entries dropped because the table was full.
    pub evictions: AtomicU64,
}

impl Clients {
    /// The table for `limits`; `None` when both address limits are off
    /// (nothing is tracked, nothing is locked).
    pub fn new(limits: &ClientLimits, max_connections: usize) -> Option<Clients> {
        if limits.max_connections_per_ip == 0 && limits.ip_connects_per_sec == 0 {
            return None;
        }
        let rate = f64::from(limits.ip_connects_per_sec);
        Some(Clients {
            table: Mutex::new(HashMap::new()),
            capacity: MIN_TABLE_ENTRIES.max(max_connections),
            max_open: u32::try_from(limits.max_connections_per_ip).unwrap_or(u32::MAX),
            rate,
            burst: rate * f64::from(BURST_SECONDS),
            evictions: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Slot>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection from `key` at `now`: counted as open, or refused.
    /// Every attempt takes a token, refused or not.
    pub fn admit(&self, key: IpAddr, now: Instant) -> Result<(), Over> {
        let mut t = self.lock();
        if !t.contains_key(&key) && t.len() >= self.capacity {
            let before = t.len();
            t.retain(|_, s| s.open > 0);
            self.evictions.fetch_add((before - t.len()) as u64, Relaxed);
        }
        let slot = t.entry(key).or_insert_with(|| Slot {
            open: 0,
            connects: Bucket::full(self.burst, now),
        });
        if self.rate > 0.0
            && let Err(wait) = slot.connects.take(1.0, self.rate, self.burst, now)
        {
            return Err(Over::Rate(wait.ceil().max(1.0) as u64));
        }
        if self.max_open > 0 && slot.open >= self.max_open {
            return Err(Over::Connections);
        }
        slot.open += 1;
        Ok(())
    }

    /// A connection [`Clients::admit`] counted has ended.
    pub fn release(&self, key: IpAddr, now: Instant) {
        let mut t = self.lock();
        if let Some(s) = t.get_mut(&key) {
            s.open = s.open.saturating_sub(1);
            if s.open == 0 && (self.rate == 0.0 || s.connects.is_full(self.rate, self.burst, now)) {
                t.remove(&key);
            }
        }
    }

    /// Drops what there is nothing to remember of: no open connection and
    /// a full bucket.
    pub fn sweep(&self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.lock()
            .retain(|_, s| s.open > 0 || (rate > 0.0 && !s.connects.is_full(rate, burst, now)));
    }

    /// Entries now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(open: usize, rate: u32) -> ClientLimits {
        ClientLimits {
            max_connections_per_ip: open,
            ip_connects_per_sec: rate,
            conn_messages_per_sec: 0,
            conn_bytes_per_sec: 0,
            max_runs_per_subject: 0,
        }
    }

    fn ip(s: &str) -> IpAddr {
        key_of(s.parse().unwrap())
    }

    #[test]
    fn open_connections_per_address() {
        let c = Clients::new(&limits(2, 0), 10).unwrap();
        let t = Instant::now();
        assert_eq!(c.admit(ip("10.0.0.1"), t), Ok(()));
        assert_eq!(c.admit(ip("10.0.0.1"), t), Ok(()));
        assert_eq!(c.admit(ip("10.0.0.1"), t), Err(Over::Connections));
        assert_eq!(c.admit(ip("10.0.0.2"), t), Ok(()));
        c.release(ip("10.0.0.1"), t);
        assert_eq!(c.admit(ip("10.0.0.1"), t), Ok(()));
        // IPv6 by /64; mapped IPv4 as IPv4.
        assert_eq!(ip("2001:db8::1"), ip("2001:db8::ffff:2"));
        assert_ne!(ip("2001:db8::1"), ip("2001:db8:0:1::1"));
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
        assert!(Clients::new(&limits(0, 0), 10).is_none());
    }

    #[test]
    fn new_connections_per_second_and_retry_after() {
        let c = Clients::new(&limits(0, 2), 10).unwrap();
        let t = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..2 * BURST_SECONDS {
            assert_eq!(c.admit(a, t), Ok(()));
        }
        assert_eq!(c.admit(a, t), Err(Over::Rate(1)));
        assert_eq!(c.admit(ip("10.0.0.9"), t), Ok(()));
        assert_eq!(c.admit(a, t + Duration::from_millis(500)), Ok(()));
    }

    #[test]
    fn the_table_stays_bounded() {
        let c = Clients::new(&limits(5, 1), 10).unwrap();
        let t = Instant::now();
        let held = ip("192.168.0.1");
        c.admit(held, t).unwrap();
        for i in 0..(MIN_TABLE_ENTRIES as u32 * 2) {
            let a = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            c.admit(a, t).unwrap();
            c.release(a, t);
            assert!(c.len() <= MIN_TABLE_ENTRIES);
        }
        assert!(c.evictions.load(Relaxed) > 0);
        // An address with an open connection is never dropped.
        for _ in 0..4 {
            c.admit(held, t).unwrap();
        }
        assert_eq!(
            c.admit(held, t + Duration::from_secs(60)),
            Err(Over::Connections)
        );
        // Once buckets refill, the sweep forgets everything idle.
        c.sweep(t + Duration::from_secs(3600));
        assert_eq!(c.len(), 1);
    }
}
