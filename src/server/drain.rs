//! The graceful drain of SPEC §7 on one reactor thread.
//!
//! "Stop accepting" is read as "stop accepting WebSocket sessions": the
//! listener stays open so `/health` can answer 503 `draining` to load
//! balancers, `/ws` answers 503 + `Retry-After`, every open connection gets
//! close 1001 (after its in-flight runs, for at most half the `close`
//! deadline), and the reactor exits once its connections are gone or the
//! `close` deadline has passed.

use std::time::{Duration, Instant};

use super::worker::{DRAIN, Worker};

impl Worker {
    /// Tells every connection to close and arms the drain deadline.
    pub(super) fn start_drain(&mut self, now: Instant) {
        let close = self.shared.cfg.settings.timeouts.close;
        tracing::info!(
            reactor = self.index,
            connections = self.conns.len(),
            "draining"
        );
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        // Marked draining first: messages read from here on are refused.
        let id = self.reactor.timers().insert(DRAIN);
        self.drain = Some(id);
        for key in keys {
            let busy = self.following(key) > 0;
            self.drive(key, now, |e, cx| e.conn.shutdown(busy, cx));
        }
        self.reactor
            .timers()
            .set(id, Some(now + close + Duration::from_millis(1)));
    }

    /// The drain deadline: whatever is still open is dropped.
    pub(super) fn drain_deadline(&mut self) {
        let left: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        tracing::info!(
            reactor = self.index,
            left = left.len(),
            "drain deadline: dropping remaining connections"
        );
        for k in left {
            self.remove(k);
        }
    }
}
