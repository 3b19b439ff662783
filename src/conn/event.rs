//! What a connection reports to its owner: the [`Event`]s of one call, the
//! phase whose deadline expired ([`TimeoutPhase`]), and how a lingering
//! close ended ([`LingerEnd`]).

use std::time::Duration;

use tungstenite::Message;

use crate::http::Head;

/// A phase whose deadline can expire: a connection's (SPEC §2), a run's
/// (`Execution`), or an agent run's upstream leg (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// No request byte within `connect` of the accept (dropped silently).
    Connect,
    /// No complete upgrade within `handshake` of the accept: 408, or
    /// dropped (TLS unfinished, or the 101 half written).
    Handshake,
    /// No frame within `ping` after the server's Ping (close 1011).
    Ping,
    /// No inbound byte for `heartbeat_timeout` (close 1001).
    Heartbeat,
    /// No application message for `stale` (close 1001 "idle").
    Stale,
    /// Open for `connection` (close 1001 "max lifetime").
    Lifetime,
    /// The closing handshake, or a response that ends the connection, was
    /// not done within `close` (dropped).
    Close,
    /// A run outlived `execution`: it ends with an error event,
    /// `execution_timeout` (a handler's) or `upstream_timeout` (an agent's).
    Execution,
    /// The lingering close after a response that ends the connection.
    Linger,
    /// Upstream agent: DNS, TCP and TLS.
    AgentConnect,
    /// Upstream agent: from the request to the response head (or the
    /// subprocess's first line).
    AgentResponse,
    /// Upstream agent: the longest gap between two reads of its stream.
    AgentIdle,
}

impl TimeoutPhase {
    /// Every phase, in the order `/metrics` lists them.
    pub const ALL: [TimeoutPhase; 12] = [
        TimeoutPhase::Connect,
        TimeoutPhase::Handshake,
        TimeoutPhase::Ping,
        TimeoutPhase::Heartbeat,
        TimeoutPhase::Stale,
        TimeoutPhase::Lifetime,
        TimeoutPhase::Close,
        TimeoutPhase::Execution,
        TimeoutPhase::Linger,
        TimeoutPhase::AgentConnect,
        TimeoutPhase::AgentResponse,
        TimeoutPhase::AgentIdle,
    ];

    /// The `phase` label in `/metrics` and the logs.
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
            TimeoutPhase::Linger => "linger",
            TimeoutPhase::AgentConnect => "agent_connect",
            TimeoutPhase::AgentResponse => "agent_response",
            TimeoutPhase::AgentIdle => "agent_idle",
        }
    }
}

/// Why a lingering close ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LingerEnd {
    /// The peer closed its side: the normal end.
    PeerClosed,
    /// The `close` deadline passed first.
    Deadline,
    /// The peer sent more than `linger_bytes` after the response.
    ByteCap,
    /// The socket failed (e.g. reset by the peer).
    Error,
}

impl LingerEnd {
    /// Every end, in the order `/metrics` lists them.
    pub const ALL: [LingerEnd; 4] = [
        LingerEnd::PeerClosed,
        LingerEnd::Deadline,
        LingerEnd::ByteCap,
        LingerEnd::Error,
    ];

    /// The `end` label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            LingerEnd::PeerClosed => "peer_closed",
            LingerEnd::Deadline => "deadline",
            LingerEnd::ByteCap => "byte_cap",
            LingerEnd::Error => "error",
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
    Opened {
        /// TCP accept → 101 written.
        handshake: Duration,
    },
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
    /// A lingering close ended (the connection is done), after `discarded`
    /// bytes were read and thrown away. A deadline end is also reported as
    /// [`Event::Timeout`] (phase `Linger`).
    Lingered {
        /// How it ended.
        end: LingerEnd,
        /// Bytes read and thrown away after the response.
        discarded: u64,
    },
}
