//! The instances' leases: how the writer renews this instance's, and how
//! the reader learns which owners of the runs it tails have lost theirs.
//!
//! One sorted set, [`LEASES`], for every instance: member = instance id,
//! score = when its lease lapses, in Unix ms of Redis's own clock (`TIME`
//! read inside the script), so no two hosts' clocks are ever compared. A
//! renewal also drops the members that lapsed and extends the set's TTL;
//! a check reads the owners' scores against the same clock. Each is one
//! script call, whatever the number of runs: a renewal a [`RENEW`] per
//! instance, a check a [`LEASE_CHECK`] per instance that tails runs of
//! other instances.
//!
//! A failed renewal is never retried at once (the breaker paces
//! reconnects), and an error reply (scripts refused) is logged once per
//! failing stretch: the runs begun meanwhile do not name their instance,
//! and their followers fall back to the run's deadline.

use std::time::Instant;

use ::redis::{Connection, RedisError};

use super::link::{Link, lost};
use super::{LEASE, LEASE_CHECK, LEASES, RENEW};

/// Renews the lease of `ARGV[1]` for `ARGV[2]` ms, drops lapsed members,
/// and keeps the set `ARGV[3]` ms.
const RENEW_SCRIPT: &str = "\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1";

/// 1 for each instance of `ARGV` whose lease has not lapsed, else 0.
const CHECK_SCRIPT: &str = "\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = {}
for i, id in ipairs(ARGV) do
  local s = redis.call('ZSCORE', KEYS[1], id)
  if s and tonumber(s) > now then held[i] = 1 else held[i] = 0 end
end
return held";

/// This instance's lease, as the writer keeps it.
pub(super) struct Lease {
    /// The last renewal succeeded and nothing failed since: a run begun
    /// now may name this instance in its meta.
    pub held: bool,
    /// When the next renewal is due.
    next: Instant,
    /// An error reply to the renewal has been logged.
    refused: bool,
}

impl Lease {
    pub fn new() -> Lease {
        Lease {
            held: false,
            next: Instant::now(),
            refused: false,
        }
    }

    /// How long until the next renewal (zero: due).
    pub fn wait(&self) -> std::time::Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    pub fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// The connection was lost: the lease is not known to be held, and is
    /// renewed first thing once the connection is back.
    pub fn lost(&mut self) {
        self.held = false;
        self.next = Instant::now();
    }

    /// Renews the lease, connecting if need be (the breaker allowing). It
    /// is also the writer's idle probe: it shows an outage and the way
    /// back without traffic.
    pub fn renew(&mut self, link: &Link, conn: &mut Option<Connection>) {
        self.next = Instant::now() + RENEW;
        let Some(c) = link.connection(conn) else {
            self.held = false;
            return;
        };
        let set_ms = link.window_ms().max(LEASE.as_millis() as u64);
        let r = ::redis::cmd("EVAL")
            .arg(RENEW_SCRIPT)
            .arg(1)
            .arg(LEASES)
            .arg(&link.instance)
            .arg(LEASE.as_millis() as u64)
            .arg(set_ms)
            .query::<()>(c);
        match r {
            Ok(()) => {
                self.held = true;
                self.refused = false;
            }
            Err(e) => {
                self.held = false;
                if lost(&e) {
                    link.failed(&e, conn);
                } else {
                    link.refused(&e, !self.refused);
                    self.refused = true;
                }
            }
        }
    }
}

/// The reader's checks of other instances' leases.
pub(super) struct Watch {
    last: Option<Instant>,
    refused: bool,
}

impl Watch {
    pub fn new() -> Watch {
        Watch {
            last: None,
            refused: false,
        }
    }

    /// A check is due ([`LEASE_CHECK`] after the last).
    pub fn due(&self) -> bool {
        self.last.is_none_or(|l| l.elapsed() >= LEASE_CHECK)
    }

    /// Which of `owners` have lost their lease. `Err`: the connection was
    /// lost (the store is down). Owners the reply does not account for,
    /// or an error reply, count as holding theirs: a follower is never
    /// interrupted on a guess.
    pub fn lapsed(
        &mut self,
        link: &Link,
        conn: &mut Option<Connection>,
        owners: Vec<String>,
    ) -> Result<Vec<String>, ()> {
        self.last = Some(Instant::now());
        if owners.is_empty() {
            return Ok(Vec::new());
        }
        let Some(c) = link.connection(conn) else {
            return Err(());
        };
        let mut cmd = ::redis::cmd("EVAL");
        cmd.arg(CHECK_SCRIPT).arg(1).arg(LEASES);
        for o in &owners {
            cmd.arg(o.as_str());
        }
        let held: Vec<i64> = match cmd.query(c) {
            Ok(v) => v,
            Err(e) => return self.failed(link, conn, &e),
        };
        self.refused = false;
        Ok(owners
            .into_iter()
            .zip(held.into_iter().chain(std::iter::repeat(1)))
            .filter(|(_, h)| *h == 0)
            .map(|(o, _)| o)
            .collect())
    }

    fn failed(
        &mut self,
        link: &Link,
        conn: &mut Option<Connection>,
        e: &RedisError,
    ) -> Result<Vec<String>, ()> {
        if lost(e) {
            link.failed(e, conn);
            return Err(());
        }
        link.refused(e, !self.refused);
        self.refused = true;
        Ok(Vec::new())
    }
}
