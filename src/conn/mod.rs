//! The connection state machine (SPEC §2): one phase at a time, each with
//! its deadline, over any non-blocking `Read + Write`.
//!
//! It reports and its owner decides. Every call takes the time as input
//! ([`Cx::now`]) and appends what happened to the owner's event list
//! ([`Event`]); requests wait for the owner's answer ([`Conn::respond`],
//! [`Conn::accept`]), messages for the owner's reply ([`Conn::send`]) or
//! run ([`Conn::send_run`]). It never reads the clock and never calls
//! into the server, so tests drive a 45 s heartbeat in microseconds.
//!
//! The owner's loop after any call: answer the events; while
//! [`Conn::has_more_input`], read on; then [`Conn::flush`] once. Reading
//! never writes, so the replies to a burst leave together.
//!
//! The event list belongs to the caller rather than to each connection:
//! a queue per connection would cost memory on every idle connection, or
//! an allocation per message.
//!
//! It knows nothing of runs: the owner's run layer decides what goes out,
//! and tells a draining connection when its runs are over
//! ([`Conn::shutdown`], [`Conn::runs_settled`]).
//!
//! Jobs, one file each: `head` (the request head and the HTTP response),
//! `linger` (the lingering close after a response that ends the
//! connection), `ws` (the open and closing phases over tungstenite), `io`
//! (the transport wrapper and buffer sizing), `boundary` (frame
//! boundaries, for giving buffers back and for the permessage-deflate
//! rewrite), `deflate` (compression).

pub(crate) mod boundary;
mod deflate;
mod event;
mod head;
mod io;
mod linger;
mod ws;

use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocket;

pub use event::{Event, LingerEnd, TimeoutPhase};
pub use io::{Io, Transport, ws_config};

use crate::reactor::Interest;
use crate::settings::{Limits, Timeouts};
use head::After;

/// When a connection next has work to do, and how precisely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wake {
    /// When.
    pub at: Instant,
    /// Soft: the deadline may be handled up to the reactor's slack late
    /// (heartbeat, liveness, stale, lifetime). Hard: on time (connect,
    /// handshake, pong, close, the drain).
    pub soft: bool,
}

/// What one call needs: the time, the configuration, and where to report.
pub struct Cx<'a> {
    /// The caller's clock reading for this call.
    pub now: Instant,
    /// The phase deadlines.
    pub timeouts: &'a Timeouts,
    /// The size limits.
    pub limits: &'a Limits,
    /// Events of this call are appended here.
    pub events: &'a mut Vec<Event>,
}

/// The open phase's clocks (SPEC §2 "open" rows).
#[derive(Debug)]
struct Open {
    opened: Instant,
    last_inbound: Instant,
    last_app: Instant,
    ping_sent: Option<Instant>,
    bytes_seen: u64,
    /// Draining with runs in flight (the drain gate): send 1001 once the
    /// owner says they are over, or at this instant at the latest.
    drain_by: Option<Instant>,
    /// Outbound bytes queued since the write buffer was last empty.
    pushed: usize,
    /// Pong bytes owed since the write buffer was last empty: a peer that
    /// pings without reading the answers is a slow consumer too.
    pongs_owed: usize,
    /// The owner's run layer sent a run's event here and has not said the
    /// connection follows nothing since ([`Conn::runs_settled`]): the
    /// takeover mode keeps its compression history while this holds.
    following: bool,
}

enum Phase<S> {
    /// Reading the request head (connect + handshake deadlines).
    Head {
        io: Io<S>,
        buf: Vec<u8>,
        got_byte: bool,
    },
    /// A complete head was reported; waiting for the owner's answer
    /// (handshake deadline). `buf[len..]` arrived after the head.
    Decide {
        io: Io<S>,
        buf: Vec<u8>,
        len: usize,
        key: Option<String>,
        /// A HEAD request: the answer goes out without its body.
        head_only: bool,
    },
    /// Writing a complete HTTP response, then lingering or upgrading.
    Respond {
        io: Io<S>,
        out: Vec<u8>,
        written: usize,
        after: After,
        deadline: Instant,
    },
    /// A response that ends the connection was written: the write side is
    /// shut down (once the transport has sent everything) and input is
    /// discarded until the peer closes, `deadline` (the response's `close`
    /// deadline, which this phase shares) or `linger_bytes`.
    Linger {
        io: Io<S>,
        deadline: Instant,
        discarded: u64,
        write_closed: bool,
    },
    Open {
        ws: Box<WebSocket<Io<S>>>,
        open: Open,
    },
    /// Close sent or received; waiting for the handshake to finish.
    Closing {
        ws: Box<WebSocket<Io<S>>>,
        deadline: Instant,
        /// Wait for the peer's Close (graceful), or stop reading frames as
        /// soon as ours is flushed (failing the connection, RFC 6455
        /// §7.1.7): a lingering close then ends TCP without a reset that
        /// could destroy our Close unread.
        await_close: bool,
    },
    /// Finished; the stream is kept so the owner can deregister it from the
    /// poller before it closes (required by the `polling` backend).
    Done(Option<S>),
}

/// Which phase a connection is in (for logs, tests and the audit sweep).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseName {
    /// Reading the request head (connect, then handshake deadline).
    Head,
    /// A complete head was reported: waiting for the owner's answer
    /// (handshake deadline).
    Decide,
    /// Writing an HTTP response or the 101 (handshake or close deadline).
    Respond,
    /// After a response that ends the connection: input discarded until the
    /// peer closes (close deadline, `linger_bytes`).
    Linger,
    /// WebSocket open: heartbeat, liveness, stale and lifetime deadlines.
    Open,
    /// Close sent or received: waiting for the closing handshake (close
    /// deadline).
    Closing,
    /// Finished: the owner deregisters and drops it.
    Done,
}

/// One connection's state machine over a non-blocking transport `S`: the
/// request head, the owner's decision, the response or the 101, then the
/// WebSocket until it closes, each phase under its deadline. Time comes in
/// ([`Cx::now`]), events go out ([`Cx::events`]); the next deadline is
/// [`Conn::poll_timeout`].
pub struct Conn<S> {
    id: u64,
    accepted: Instant,
    /// Heartbeat interval multiplier in [0.9, 1.1]: spreads pings.
    jitter: f64,
    phase: Phase<S>,
    /// Reading stopped at a reported message, or after a batch of frames,
    /// with input left (see [`Conn::has_more_input`]).
    more_input: bool,
}

impl<S: Transport> Conn<S> {
    /// A connection accepted at `now`; `jitter` is clamped to [0.9, 1.1].
    pub fn new(id: u64, stream: S, now: Instant, jitter: f64) -> Conn<S> {
        Conn {
            id,
            accepted: now,
            jitter: jitter.clamp(0.9, 1.1),
            phase: Phase::Head {
                io: Io::new(stream),
                buf: Vec::new(),
                got_byte: false,
            },
            more_input: false,
        }
    }

    /// The id given at [`Conn::new`] (in every log line about it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The current phase.
    pub fn phase(&self) -> PhaseName {
        match self.phase {
            Phase::Head { .. } => PhaseName::Head,
            Phase::Decide { .. } => PhaseName::Decide,
            Phase::Respond { .. } => PhaseName::Respond,
            Phase::Linger { .. } => PhaseName::Linger,
            Phase::Open { .. } => PhaseName::Open,
            Phase::Closing { .. } => PhaseName::Closing,
            Phase::Done(_) => PhaseName::Done,
        }
    }

    /// Finished: nothing more will happen; deregister and drop it.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done(_))
    }

    /// The stream, for (de)registration with the reactor.
    pub fn stream_mut(&mut self) -> Option<&mut S> {
        match &mut self.phase {
            Phase::Head { io, .. }
            | Phase::Decide { io, .. }
            | Phase::Respond { io, .. }
            | Phase::Linger { io, .. } => Some(&mut io.inner),
            Phase::Open { ws, .. } | Phase::Closing { ws, .. } => Some(&mut ws.get_mut().inner),
            Phase::Done(s) => s.as_mut(),
        }
    }

    /// Readiness this phase needs: read while reading, write only while
    /// output is blocked (no busy loop under level-triggered polling).
    pub fn interest(&self) -> Interest {
        let blocked = match &self.phase {
            Phase::Head { .. } | Phase::Decide { .. } | Phase::Done(_) => false,
            Phase::Respond { .. } => {
                return Interest {
                    readable: false,
                    writable: true,
                };
            }
            Phase::Linger { write_closed, .. } => !*write_closed,
            // Failing the connection (a peer fault): only our Close is left
            // to write and nothing is read (see `Conn::drive_ws`); once it
            // is flushed the lingering close reads again.
            Phase::Closing {
                await_close: false, ..
            } => {
                return Interest {
                    readable: false,
                    writable: true,
                };
            }
            Phase::Open { ws, .. } | Phase::Closing { ws, .. } => ws.get_ref().write_blocked,
        };
        if blocked {
            Interest::BOTH
        } else {
            Interest::READABLE
        }
    }

    /// When [`Conn::handle_timeout`] next has work to do. Hard deadlines
    /// are reported as they are. The soft ones (SPEC §2: heartbeat,
    /// liveness, stale, lifetime) are reported as soft unless a hard one
    /// falls within `slack` after them: then the hard one is reported, and
    /// the soft ones due by then are handled with it (at most `slack` late).
    pub fn poll_timeout(&self, t: &Timeouts, slack: Duration) -> Option<Wake> {
        let hard = |at| Some(Wake { at, soft: false });
        match &self.phase {
            Phase::Head { got_byte, .. } => {
                let hs = self.accepted + t.handshake;
                hard(if *got_byte {
                    hs
                } else {
                    hs.min(self.accepted + t.connect)
                })
            }
            Phase::Decide { .. } => hard(self.accepted + t.handshake),
            Phase::Respond { deadline, .. }
            | Phase::Linger { deadline, .. }
            | Phase::Closing { deadline, .. } => hard(*deadline),
            Phase::Open { open, .. } => {
                let beat = match open.ping_sent {
                    Some(_) => None, // the pong deadline (hard) replaces it
                    None => Some(open.last_inbound + t.heartbeat_interval.mul_f64(self.jitter)),
                };
                let soft = beat
                    .into_iter()
                    .chain([
                        open.last_inbound + t.heartbeat_timeout,
                        open.last_app + t.stale,
                        open.opened + t.connection,
                    ])
                    .min();
                let firm = open
                    .ping_sent
                    .map(|sent| sent + t.ping)
                    .into_iter()
                    .chain(open.drain_by)
                    .min();
                match (firm, soft) {
                    (Some(h), Some(s)) if h > s + slack => Some(Wake { at: s, soft: true }),
                    (Some(h), _) => hard(h),
                    (None, s) => s.map(|at| Wake { at, soft: true }),
                }
            }
            Phase::Done(_) => None,
        }
    }

    /// Handles readiness reported by the reactor.
    pub fn handle_io(&mut self, readable: bool, writable: bool, cx: &mut Cx) {
        if let Phase::Linger { .. } = self.phase {
            return self.drive_linger(cx);
        }
        if writable {
            self.write_some(cx);
        }
        if !readable {
            return;
        }
        match self.phase {
            Phase::Head { .. } => self.read_head(cx),
            Phase::Open { .. } | Phase::Closing { .. } => self.drive_ws(cx),
            // Nothing is read while the owner decides or a response goes
            // out; an edge-triggered poller is caught up by the next phase
            // (it reads until WouldBlock on entry).
            Phase::Decide { .. }
            | Phase::Respond { .. }
            | Phase::Linger { .. }
            | Phase::Done(_) => {}
        }
    }

    /// True when reading stopped at a reported message, or after a batch
    /// of frames that are not messages (control frames; anything while
    /// closing): answer it, then call `handle_io(true, false, ..)` again
    /// (an edge-triggered poller will not report the rest). One message at
    /// a time keeps answers in order with what follows in the stream — an
    /// echo goes out before the Close that a protocol error or the peer's
    /// Close frame brings — and costs no syscall where a short read proved
    /// the socket drained. The batch keeps a ping flood from pinning the
    /// reactor: the owner's read budget counts it like a message. Flush
    /// once the input is drained: replies to a burst go out together.
    pub fn has_more_input(&self) -> bool {
        self.more_input
            && matches!(
                self.phase,
                Phase::Open { .. }
                    | Phase::Closing {
                        await_close: true,
                        ..
                    }
            )
    }

    /// Handles every deadline due at `cx.now`.
    pub fn handle_timeout(&mut self, cx: &mut Cx) {
        match self.phase {
            Phase::Head { .. } | Phase::Decide { .. } | Phase::Respond { .. } => {
                self.head_timeout(cx)
            }
            Phase::Linger { .. } => self.linger_timeout(cx),
            Phase::Open { .. } | Phase::Closing { .. } => self.ws_timeout(cx),
            Phase::Done(_) => {}
        }
    }

    /// Starts the graceful close of SPEC §7 (server shutting down).
    /// In-flight runs (`busy`: the owner's run layer says this connection
    /// follows some) may finish first, since nothing may follow a Close
    /// frame: the Close waits for [`Conn::runs_settled`], for at most half
    /// the `close` deadline, so that the closing handshake keeps the other
    /// half and the whole drain stays within `close` + one cap.
    pub fn shutdown(&mut self, busy: bool, cx: &mut Cx) {
        match &mut self.phase {
            Phase::Open { open, .. } if busy => {
                open.drain_by = Some(cx.now + cx.timeouts.close / 2);
            }
            Phase::Open { .. } => self.begin_close(1001, "server shutting down", cx),
            // Mid-handshake connections are dropped: they hold no session.
            Phase::Head { .. } | Phase::Decide { .. } => self.finish(),
            _ => {}
        }
    }

    /// The owner's run layer: this connection follows no run any more. A
    /// drain waiting for its runs closes now.
    pub fn runs_settled(&mut self, cx: &mut Cx) {
        if let Phase::Open { open, .. } = &mut self.phase {
            open.following = false;
            if open.drain_by.is_some() {
                self.begin_close(1001, "server shutting down", cx);
            }
        }
    }

    /// Ends the connection, keeping the stream for deregistration. The
    /// transport ends its own session first (TLS `close_notify`).
    fn finish(&mut self) {
        let stream = match std::mem::replace(&mut self.phase, Phase::Done(None)) {
            Phase::Head { io, .. }
            | Phase::Decide { io, .. }
            | Phase::Respond { io, .. }
            | Phase::Linger { io, .. } => Some(io.inner),
            Phase::Open { ws, .. } => Some(ws.into_inner().inner),
            Phase::Closing { ws, .. } => Some(ws.into_inner().inner),
            Phase::Done(s) => s,
        };
        self.end(stream);
    }

    /// Ends the transport's session and keeps the stream.
    fn end(&mut self, mut stream: Option<S>) {
        if let Some(s) = stream.as_mut() {
            s.shut_down();
        }
        self.phase = Phase::Done(stream);
    }
}

#[cfg(test)]
mod tests;
