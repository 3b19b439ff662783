//! One connection as a worker keeps it: the state machine, its poller
//! registration and timer, and where its admission stands (deciding,
//! then its session once open).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::Shared;
use crate::app::Session;
use crate::breaker::Permit;
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
    pub admission: Admission,
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
            admission: Admission::None,
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

    /// The upgrade waiting for the application's decision, taken out
    /// (admission `None` then); any other admission stays as it is.
    pub fn take_deciding(&mut self) -> Option<Box<Deciding>> {
        if !matches!(self.admission, Admission::Deciding(_)) {
            return None;
        }
        match std::mem::replace(&mut self.admission, Admission::None) {
            Admission::Deciding(d) => Some(d),
            _ => unreachable!("matched Deciding above"),
        }
    }

    /// The session of an open connection.
    pub fn session(&self) -> Option<&Arc<Session>> {
        match &self.admission {
            Admission::Open(s) => Some(s),
            _ => None,
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

/// Where a connection's admission stands. Past `None` it holds a
/// `max_connections` slot (counted in `open`), given back when it leaves
/// either state for good.
pub(super) enum Admission {
    /// Not admitted (yet, or ever).
    None,
    /// The server's checks passed; the application's `open` is deciding
    /// on the worker pool, and the request waits for its answer (under
    /// the handshake deadline).
    Deciding(Box<Deciding>),
    /// Accepted: the application's `close` is owed.
    Open(Arc<Session>),
}

/// What an upgrade waiting for the application's decision holds.
pub(super) struct Deciding {
    /// The circuit breaker's permit, settled by the decision.
    pub permit: Permit,
    /// The subprotocol to select if accepted.
    pub protocol: Option<&'static str>,
}
