//! One connection as a worker keeps it: the state machine, its poller
//! registration and timer, and its session once admitted.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::Shared;
use crate::app::Session;
use crate::conn::Conn;
use crate::frontdoor::ConnRate;
use crate::reactor::{Interest, TimerId};
use crate::runs::ConnRef;
use crate::stream::Stream;

/// One connection and what the worker keeps beside it. What it follows
/// is the run layer's to know (`crate::runs`), not kept here.
pub(super) struct Entry {
    pub conn: Conn<Stream>,
    pub timer: TimerId,
    pub interest: Interest,
    /// Set once admitted: the connection holds a `max_connections` slot
    /// and the application's `close` is owed.
    pub session: Option<Arc<Session>>,
    /// The TCP peer until the upgrade is admitted; then the client
    /// address it was counted under in the per-address table, if
    /// `counted` (one field for both: 20 bytes on every connection).
    pub addr: IpAddr,
    /// `addr` holds a place in the per-address table, given back when the
    /// connection goes.
    pub counted: bool,
    /// Message and byte buckets, when those limits are on (boxed: nothing
    /// on an idle connection's entry when they are off).
    pub rate: Option<Box<ConnRate>>,
}

impl Entry {
    /// A connection from `peer`, not admitted yet.
    pub fn new(conn: Conn<Stream>, timer: TimerId, peer: IpAddr) -> Entry {
        Entry {
            conn,
            timer,
            interest: Interest::READABLE,
            session: None,
            addr: peer,
            counted: false,
            rate: None,
        }
    }

    /// Gives the connection's place in the per-address table back (when it
    /// goes).
    pub fn give_back_address(&self, sh: &Shared, now: Instant) {
        if let (Some(clients), true) = (&sh.clients, self.counted) {
            clients.release(self.addr, now);
        }
    }

    /// This connection as the run layer names it.
    pub fn at(&self, key: usize) -> ConnRef {
        ConnRef {
            key,
            id: self.conn.id(),
        }
    }
}
