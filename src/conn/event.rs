//! What a connection reports to its owner: the [`Event`]s of one call, and
//! the phase whose deadline expired ([`TimeoutPhase`]).

use std::time::Duration;

use tungstenite::Message;

use crate::http::Head;

/// A connection phase whose deadline can expire (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutPhase {
    Connect,
    Handshake,
    Ping,
    Heartbeat,
    Stale,
    Lifetime,
    Close,
    Execution,
}

impl TimeoutPhase {
    pub const ALL: [TimeoutPhase; 8] = [
        TimeoutPhase::Connect,
        TimeoutPhase::Handshake,
        TimeoutPhase::Ping,
        TimeoutPhase::Heartbeat,
        TimeoutPhase::Stale,
        TimeoutPhase::Lifetime,
        TimeoutPhase::Close,
        TimeoutPhase::Execution,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::Handshake => "handshake",
            TimeoutPhase::Ping => "ping",
            TimeoutPhase::Heartbeat => "heartbeat",
            TimeoutPhase::Stale => "stale",
            TimeoutPhase::Lifetime => "lifetime",
            TimeoutPhase::Close => "close",
            TimeoutPhase::Execution => "execution",
        }
    }
}

/// Something that happened on a connection during one call. Events that
/// ask for a decision say which.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A complete request head arrived. The connection waits (under its
    /// handshake deadline) for [`super::Conn::respond`] or, for an upgrade,
    /// [`super::Conn::accept`].
    Request(Box<Head>),
    /// An HTTP response with this status is being written (the 101 is
    /// reported as [`Event::Opened`] instead).
    Status(u16),
    /// The 101 was written: the WebSocket is open, `handshake` after the
    /// TCP accept.
    Opened { handshake: Duration },
    /// A complete text or binary message. The owner answers it (or not)
    /// with [`super::Conn::send`] or starts a run for it.
    Message(Message),
    /// The peer sent a Close frame of its own (not an answer to ours): the
    /// client ended the session, and the owner cancels the runs it started.
    /// A connection that ends without one was lost, and its runs go on.
    PeerClosed,
    /// A phase deadline expired (already acted on: Ping, Close or drop).
    Timeout(TimeoutPhase),
    /// The connection sent a Close frame with this code.
    CloseSent(u16),
    /// Buffers grown by a burst were given back.
    Compacted,
    /// The transport refused the peer's bytes before the upgrade (a TLS
    /// handshake failure, e.g. plain text or a bad ClientHello); dropped.
    TransportFailed,
}
