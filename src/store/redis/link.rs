//! The helper threads' shared side of Redis: the client and how to
//! (re)connect under the call deadline ([`CALL`]) and the breaker, what a
//! failed call means (a lost connection marks the store down; an error
//! reply does not), and the up/down state with its one log line per change.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use ::redis::{Client, Connection, ErrorKind, RedisError};

use super::{CALL, Deliveries, ResumeLimits, StoreStats};
use crate::breaker::Breaker;

/// What both helper threads share: the client, the health and the breaker.
pub(super) struct Link {
    pub client: Client,
    pub shown: String,
    pub stats: StoreStats,
    pub up: AtomicBool,
    pub breaker: Mutex<Breaker>,
    pub limits: ResumeLimits,
    pub deliveries: Deliveries,
}

impl Link {
    /// The thread's connection, (re)connecting if the breaker allows.
    pub fn connection<'a>(&self, slot: &'a mut Option<Connection>) -> Option<&'a mut Connection> {
        if slot.is_none() {
            let permit = {
                let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
                b.allow(Instant::now()).ok()?
            };
            let r = self
                .client
                .get_connection_with_timeout(CALL)
                .and_then(|mut c| {
                    c.set_read_timeout(Some(CALL))?;
                    c.set_write_timeout(Some(CALL))?;
                    ::redis::cmd("PING").query::<()>(&mut c)?;
                    Ok(c)
                });
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(c) => {
                    b.success(permit);
                    drop(b);
                    self.mark_up();
                    *slot = Some(c);
                }
                Err(e) => {
                    b.failure(permit, Instant::now());
                    drop(b);
                    self.mark_down(&e);
                    return None;
                }
            }
        }
        slot.as_mut()
    }

    /// A call failed: a lost connection marks the store down (and drops
    /// the connection); an error reply leaves it up.
    pub fn failed(&self, e: &RedisError, slot: &mut Option<Connection>) {
        self.stats.errors_total.fetch_add(1, Relaxed);
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.kind() == ErrorKind::Io
        {
            *slot = None;
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(p) = b.allow(Instant::now()) {
                b.failure(p, Instant::now());
            }
            drop(b);
            self.mark_down(e);
        } else {
            tracing::warn!("run store: Redis answered an error: {e}");
        }
    }

    fn mark_down(&self, e: &RedisError) {
        if self.up.swap(false, Relaxed) {
            self.stats.outages_total.fetch_add(1, Relaxed);
            tracing::warn!(
                "run store: Redis {} unreachable ({e}); chat goes on, resume is unavailable \
                 until it is back",
                self.shown
            );
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Relaxed) {
            tracing::info!(
                "run store: Redis {} reachable; resume available",
                self.shown
            );
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.limits.window.as_millis().max(1) as u64
    }
}
