//! The connection state machine: one phase at a time, each with its deadline
//! (SPEC §2). It holds `tungstenite` over any non-blocking `Read + Write`,
//! takes `now` as input on every call, reports `next_deadline()`, and never
//! reads the clock — so tests drive a 45 s heartbeat in microseconds.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::{Error as WsError, Message};

use crate::app::{App, Inbound, MailKind, Session, event_json, run_id};
use crate::auth;
use crate::http::{self, HeadLimits, Parsed, Request, Response, Route};
use crate::metrics::{ServerMetrics, TimeoutPhase};
use crate::reactor::Interest;
use crate::settings::Timeouts;

mod boundary;
use boundary::FrameBoundary;

/// A burst (one inbound frame, or outbound bytes queued between two moments
/// of an empty write buffer) above this leaves tungstenite's buffers grown;
/// the connection then swaps tungstenite for a fresh one at the next point
/// where nothing is buffered either way. Below it, capacity is kept.
const COMPACT_OVER: usize = 32 * 1024;

/// Size and count limits (SPEC §4).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest inbound message (bytes); over it → close 1009.
    pub max_message: usize,
    /// Largest inbound frame payload (bytes); over it → close 1009.
    pub max_frame: usize,
    /// Most open WebSocket connections; over it → HTTP 503 + Retry-After.
    pub max_connections: usize,
    /// Bytes queued for a peer that does not read; over it → close 1008.
    pub max_outbound: usize,
    /// Request head limits (→ 431).
    pub head: HeadLimits,
    /// tungstenite's eagerly allocated read buffer per connection.
    pub read_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 1 << 20,
            max_frame: 1 << 20,
            max_connections: 10_000,
            max_outbound: 4 << 20,
            head: HeadLimits {
                max_bytes: 8 * 1024,
                max_headers: 32,
            },
            // Small on purpose: an idle connection's main cost. Large
            // messages still arrive whole (tungstenite reserves the frame's
            // length once its header is read); only syscall size is bounded.
            read_buffer: 512,
        }
    }
}

impl Limits {
    /// Batching threshold for outbound frames: below it, frames queue and go
    /// out in one write at the end of the turn.
    fn write_batch(&self) -> usize {
        (self.max_outbound / 2).min(16 * 1024)
    }

    pub fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .write_buffer_size(self.write_batch())
            .max_write_buffer_size(self.max_outbound)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_frame))
    }
}

/// Immutable per-server configuration every connection reads.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub ws_path: String,
    pub app: App,
}

/// Most handler runs one connection may have in flight; more are answered
/// `overloaded` so that one client cannot fill the shared pool.
pub const MAX_RUNS_PER_CONN: usize = 16;

/// What a connection needs from its server for one call.
pub trait Host {
    fn config(&self) -> &ConnConfig;
    fn metrics(&self) -> &ServerMetrics;
    /// Renders a plain route at `now`.
    fn route(&self, route: Route, now: Instant) -> Response;
    /// Checks a bearer token; `Ok(subject)` (None when auth is off) or the 401.
    fn authenticate(&self, token: Option<&str>, now: Instant) -> Result<Option<String>, Response>;
    /// Takes one WebSocket slot (breaker, limits, the app's `open`), or
    /// answers why not (401/500/503).
    fn admit(&self, session: &Session, now: Instant) -> Result<(), Response>;
    /// Queues one handler run on the pool; false when the pool is full.
    fn dispatch(
        &self,
        key: usize,
        session: &Arc<Session>,
        run: u64,
        input: Inbound,
        cancel: Arc<AtomicBool>,
    ) -> bool;
    /// Wall-clock milliseconds at `now`, for events the server writes itself.
    fn unix_ms(&self, now: Instant) -> u64;
}

/// A stream wrapper that remembers whether the last write would block,
/// counts inbound bytes (any inbound byte proves the peer alive), and saves
/// the read that would only say `WouldBlock` after a short read where the
/// platform allows it (see `platform::SHORT_READ_MEANS_DRAINED`): one
/// syscall less per message.
#[derive(Debug)]
pub struct Io<S> {
    inner: S,
    write_blocked: bool,
    drained: bool,
    bytes_in: u64,
    frames: FrameBoundary,
}

impl<S> Io<S> {
    fn new(inner: S) -> Io<S> {
        Io {
            inner,
            write_blocked: false,
            drained: false,
            bytes_in: 0,
            frames: FrameBoundary::default(),
        }
    }
}

impl<S: Read> Read for Io<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if std::mem::take(&mut self.drained) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.inner.read(buf)?;
        self.bytes_in += n as u64;
        self.frames.feed(&buf[..n]);
        self.drained = crate::platform::SHORT_READ_MEANS_DRAINED && n > 0 && n < buf.len();
        Ok(n)
    }
}

impl<S: Write> Write for Io<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.write_blocked = true;
                Err(e)
            }
            r => {
                self.write_blocked = false;
                r
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The open phase's clocks (SPEC §2 "open" rows) and handler runs.
#[derive(Debug)]
struct Open {
    opened: Instant,
    last_inbound: Instant,
    last_app: Instant,
    ping_sent: Option<Instant>,
    bytes_seen: u64,
    runs: Vec<Run>,
    /// Draining with runs in flight: send 1001 once they finish, or at this
    /// instant at the latest.
    drain_by: Option<Instant>,
    /// Outbound bytes queued since the write buffer was last empty.
    pushed: usize,
}

/// One handler run in flight, under its execution deadline.
#[derive(Debug)]
struct Run {
    run: u64,
    deadline: Instant,
    cancel: Arc<AtomicBool>,
    /// Last event `seq` forwarded (a timeout error continues the sequence).
    last_seq: u64,
}

impl Open {
    fn cancel_runs(&mut self) {
        for r in self.runs.drain(..) {
            r.cancel.store(true, Ordering::Release);
        }
    }
}

enum After {
    Close,
    Upgrade { leftover: Vec<u8> },
}

enum Phase<S> {
    /// Reading the request head (connect + handshake deadlines).
    Http {
        io: Io<S>,
        buf: Vec<u8>,
        got_byte: bool,
    },
    /// Writing a complete HTTP response, then closing or upgrading.
    Respond {
        io: Io<S>,
        out: Vec<u8>,
        written: usize,
        after: After,
        deadline: Instant,
    },
    Open {
        ws: Box<WebSocket<Io<S>>>,
        open: Open,
    },
    /// Close sent or received; waiting for the handshake to finish.
    Closing {
        ws: Box<WebSocket<Io<S>>>,
        deadline: Instant,
        /// Wait for the peer's Close (graceful) or drop TCP as soon as ours
        /// is flushed (failing the connection, RFC 6455 §7.1.7).
        linger: bool,
    },
    /// Finished; the stream is kept so the owner can deregister it from the
    /// poller before it closes (required by the `polling` backend).
    Done(Option<S>),
}

/// Which phase a connection is in (for logs, tests and the audit sweep).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseName {
    Http,
    Respond,
    Open,
    Closing,
    Done,
}

pub struct Conn<S> {
    /// The owner's handle for this connection (where handler mail goes).
    key: usize,
    id: u64,
    next_run: u64,
    session: Option<Arc<Session>>,
    accepted: Instant,
    /// Heartbeat interval multiplier in [0.9, 1.1]: spreads pings.
    jitter: f64,
    holds_slot: bool,
    phase: Phase<S>,
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }
}

impl<S: Read + Write> Conn<S> {
    /// A connection accepted at `now`, known to its owner as `key`;
    /// `jitter` is clamped to [0.9, 1.1].
    pub fn new(key: usize, id: u64, stream: S, now: Instant, jitter: f64) -> Conn<S> {
        Conn {
            key,
            id,
            next_run: 0,
            session: None,
            accepted: now,
            jitter: jitter.clamp(0.9, 1.1),
            holds_slot: false,
            phase: Phase::Http {
                io: Io::new(stream),
                buf: Vec::new(),
                got_byte: false,
            },
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn phase(&self) -> PhaseName {
        match self.phase {
            Phase::Http { .. } => PhaseName::Http,
            Phase::Respond { .. } => PhaseName::Respond,
            Phase::Open { .. } => PhaseName::Open,
            Phase::Closing { .. } => PhaseName::Closing,
            Phase::Done(_) => PhaseName::Done,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done(_))
    }

    /// The upgraded session (for the application's `close` hook).
    pub fn session(&self) -> Option<&Arc<Session>> {
        self.session.as_ref()
    }

    /// True while this connection counts against `max_connections`.
    pub fn holds_slot(&self) -> bool {
        self.holds_slot
    }

    /// The stream, for (de)registration with the reactor.
    pub fn stream_mut(&mut self) -> Option<&mut S> {
        match &mut self.phase {
            Phase::Http { io, .. } | Phase::Respond { io, .. } => Some(&mut io.inner),
            Phase::Open { ws, .. } | Phase::Closing { ws, .. } => Some(&mut ws.get_mut().inner),
            Phase::Done(s) => s.as_mut(),
        }
    }

    /// Readiness this phase needs: read while reading, write only while
    /// output is blocked (no busy loop under level-triggered polling).
    pub fn interest(&self) -> Interest {
        let blocked = match &self.phase {
            Phase::Http { .. } | Phase::Done(_) => false,
            Phase::Respond { .. } => {
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

    /// The earliest instant at which `on_timeout` has work to do.
    pub fn next_deadline(&self, t: &Timeouts) -> Option<Instant> {
        match &self.phase {
            Phase::Http { got_byte, .. } => {
                let hs = self.accepted + t.handshake;
                Some(if *got_byte {
                    hs
                } else {
                    hs.min(self.accepted + t.connect)
                })
            }
            Phase::Respond { deadline, .. } | Phase::Closing { deadline, .. } => Some(*deadline),
            Phase::Open { open, .. } => {
                let beat = match open.ping_sent {
                    Some(sent) => sent + t.ping,
                    None => open.last_inbound + t.heartbeat_interval.mul_f64(self.jitter),
                };
                let runs = open
                    .runs
                    .iter()
                    .map(|r| r.deadline)
                    .chain(open.drain_by)
                    .min();
                let d = beat
                    .min(open.last_inbound + t.heartbeat_timeout)
                    .min(open.last_app + t.stale)
                    .min(open.opened + t.connection);
                Some(runs.map_or(d, |r| r.min(d)))
            }
            Phase::Done(_) => None,
        }
    }

    /// Handles readiness reported by the reactor.
    pub fn on_ready(&mut self, readable: bool, writable: bool, now: Instant, host: &dyn Host) {
        if writable {
            self.write_some(now, host);
        }
        if readable {
            self.read_some(now, host);
        }
    }

    /// Handles every deadline due at `now`.
    pub fn on_timeout(&mut self, now: Instant, host: &dyn Host) {
        self.expire_runs(now, host);
        if let Phase::Open { open, .. } = &self.phase
            && open.drain_by.is_some_and(|d| now >= d)
        {
            tracing::info!(
                conn = self.id,
                runs = open.runs.len(),
                "drain: runs did not finish in time; closing"
            );
            return self.begin_close(1001, "server shutting down", now, host);
        }
        let t = host.config().timeouts;
        let m = host.metrics();
        match &mut self.phase {
            Phase::Http { got_byte, .. } => {
                if !*got_byte && now >= self.accepted + t.connect {
                    m.timeout(TimeoutPhase::Connect);
                    tracing::info!(conn = self.id, "connect timeout: no request byte; dropped");
                    self.finish();
                } else if now >= self.accepted + t.handshake {
                    m.timeout(TimeoutPhase::Handshake);
                    tracing::info!(conn = self.id, "handshake timeout: answering 408");
                    let r = http::text(
                        408,
                        "Request Timeout",
                        "request head not received in time\n",
                    );
                    self.respond(r, After::Close, now + t.close, now, host);
                }
            }
            Phase::Respond {
                deadline, after, ..
            } if now >= *deadline => {
                m.timeout(match after {
                    After::Upgrade { .. } => TimeoutPhase::Handshake,
                    After::Close => TimeoutPhase::Close,
                });
                tracing::info!(conn = self.id, "response not written in time; dropped");
                self.finish();
            }
            Phase::Closing { deadline, .. } if now >= *deadline => {
                m.timeout(TimeoutPhase::Close);
                tracing::info!(
                    conn = self.id,
                    "close timeout: peer never finished closing; dropped"
                );
                self.finish();
            }
            Phase::Open { ws, open } => {
                let expired = if now >= open.opened + t.connection {
                    Some((TimeoutPhase::Lifetime, 1001, "max lifetime"))
                } else if now >= open.last_app + t.stale {
                    Some((TimeoutPhase::Stale, 1001, "idle"))
                } else if now >= open.last_inbound + t.heartbeat_timeout {
                    Some((TimeoutPhase::Heartbeat, 1001, "heartbeat timeout"))
                } else if open.ping_sent.is_some_and(|s| now >= s + t.ping) {
                    Some((TimeoutPhase::Ping, 1011, "keepalive ping timeout"))
                } else {
                    None
                };
                if let Some((phase, code, reason)) = expired {
                    m.timeout(phase);
                    tracing::info!(
                        conn = self.id,
                        phase = phase.name(),
                        code,
                        reason,
                        "deadline expired; closing"
                    );
                    self.begin_close(code, reason, now, host);
                    return;
                }
                let beat_due = open.last_inbound + t.heartbeat_interval.mul_f64(self.jitter);
                if open.ping_sent.is_none() && now >= beat_due {
                    open.ping_sent = Some(now);
                    let payload = self.id.to_be_bytes().to_vec();
                    match ws.send(Message::Ping(payload.into())) {
                        Ok(()) => {}
                        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(WsError::WriteBufferFull(_)) => {
                            self.begin_close(1008, "backpressure", now, host)
                        }
                        Err(e) => self.fail(e),
                    }
                }
            }
            _ => {}
        }
    }

    /// Starts the graceful close of SPEC §7 (server shutting down).
    /// In-flight handler runs may finish first (nothing may follow a Close
    /// frame): the Close waits for them, for at most half the `close`
    /// deadline, so that the closing handshake keeps the other half and the
    /// whole drain stays within `close` + one cap.
    pub fn shutdown(&mut self, now: Instant, host: &dyn Host) {
        match &mut self.phase {
            Phase::Open { open, .. } if !open.runs.is_empty() => {
                open.drain_by = Some(now + host.config().timeouts.close / 2);
            }
            Phase::Open { .. } => self.begin_close(1001, "server shutting down", now, host),
            // Mid-handshake connections are dropped: they hold no session.
            Phase::Http { .. } => self.finish(),
            _ => {}
        }
    }

    fn respond(
        &mut self,
        r: Response,
        after: After,
        deadline: Instant,
        now: Instant,
        host: &dyn Host,
    ) {
        let Phase::Http { io, .. } = std::mem::replace(&mut self.phase, Phase::Done(None)) else {
            return;
        };
        if r.status != 101 {
            host.metrics().http_status(r.status);
            if r.status >= 400 {
                tracing::info!(conn = self.id, status = r.status, "refused request");
            }
        }
        self.phase = Phase::Respond {
            io,
            out: r.bytes,
            written: 0,
            after,
            deadline,
        };
        self.write_some(now, host);
    }

    fn read_some(&mut self, now: Instant, host: &dyn Host) {
        match &mut self.phase {
            Phase::Http { .. } => self.read_head(now, host),
            Phase::Open { .. } | Phase::Closing { .. } => self.drive_ws(now, host),
            Phase::Respond { .. } | Phase::Done(_) => {}
        }
    }

    fn read_head(&mut self, now: Instant, host: &dyn Host) {
        let cfg = host.config();
        let limits = cfg.limits.head;
        let Phase::Http { io, buf, got_byte } = &mut self.phase else {
            return;
        };
        let old_len = buf.len();
        let mut chunk = [0u8; 1024];
        loop {
            if buf.len() > limits.max_bytes {
                break; // parse() answers 431
            }
            match io.read(&mut chunk) {
                Ok(0) => {
                    tracing::debug!(conn = self.id, "peer closed before a full request head");
                    self.finish();
                    return;
                }
                Ok(n) => {
                    *got_byte = true;
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(conn = self.id, "read error before upgrade: {e}");
                    self.finish();
                    return;
                }
            }
        }
        // httparse judges complete lines only: re-parse when a line ended
        // (or the size limit is hit), not after every byte a slow client
        // trickles in, which would make a slowloris cost quadratic work.
        if buf.len() <= limits.max_bytes && !buf[old_len..].contains(&b'\n') {
            return;
        }
        let (request, len) = match http::parse(buf, limits, &cfg.ws_path) {
            Parsed::Partial => return,
            Parsed::Complete { request, len } => (request, len),
        };
        let close_by = now + cfg.timeouts.close;
        match request {
            Request::Reject(r) => self.respond(r, After::Close, close_by, now, host),
            Request::Route(route) => {
                let r = host.route(route, now);
                self.respond(r, After::Close, close_by, now, host)
            }
            Request::Upgrade(u) => {
                let token = auth::token_from(u.authorization.as_deref(), &u.protocols);
                let subject = match host.authenticate(token, now) {
                    Ok(s) => s,
                    Err(r) => return self.respond(r, After::Close, close_by, now, host),
                };
                // A `bearer.<token>` entry carries a credential, not a
                // protocol: it is never selected or echoed back.
                let offered: Vec<String> = u
                    .protocols
                    .iter()
                    .filter(|p| !p.starts_with(auth::SUBPROTOCOL_PREFIX))
                    .cloned()
                    .collect();
                let supported = cfg.app.subprotocols();
                let protocol = http::select_protocol(&offered, supported);
                if !offered.is_empty() && protocol.is_none() {
                    let body = format!(
                        "unsupported subprotocol; supported: {}\n",
                        supported.join(", ")
                    );
                    let r = http::text(400, "Bad Request", &body);
                    return self.respond(r, After::Close, close_by, now, host);
                }
                let session = Session {
                    conn_id: self.id,
                    subject,
                };
                if let Err(r) = host.admit(&session, now) {
                    return self.respond(r, After::Close, close_by, now, host);
                }
                self.holds_slot = true;
                self.session = Some(Arc::new(session));
                let leftover = buf[len..].to_vec();
                let r = Response {
                    status: 101,
                    bytes: http::switching_protocols(&u.key, protocol),
                };
                let deadline = self.accepted + cfg.timeouts.handshake;
                self.respond(r, After::Upgrade { leftover }, deadline, now, host);
            }
        }
    }

    fn write_some(&mut self, now: Instant, host: &dyn Host) {
        match &mut self.phase {
            Phase::Respond {
                io, out, written, ..
            } => {
                while *written < out.len() {
                    match io.write(&out[*written..]) {
                        Ok(0) => {
                            self.finish();
                            return;
                        }
                        Ok(n) => *written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            self.finish();
                            return;
                        }
                    }
                }
                self.response_written(now, host);
            }
            Phase::Open { ws, .. } | Phase::Closing { ws, .. } => {
                let r = ws.flush();
                let flushed = r.is_ok();
                self.after_flush(r);
                if flushed {
                    self.compact(host);
                }
            }
            _ => {}
        }
    }

    /// Called with the write buffer empty. tungstenite keeps the capacity a
    /// burst grew its buffers to until the connection closes (measured:
    /// +1.96 MiB per connection after one 1 MB echo); when a burst passed
    /// and nothing is buffered either way — no inbound bytes (every
    /// complete frame was read: reads run until `WouldBlock`), no
    /// unfinished message, nothing to write — a fresh tungstenite with the
    /// same configuration loses nothing and gives the memory back.
    fn compact(&mut self, host: &dyn Host) {
        let Phase::Open { ws, open } = &mut self.phase else {
            return;
        };
        let frames = &ws.get_ref().frames;
        let burst = frames.largest() > COMPACT_OVER as u64 || open.pushed > COMPACT_OVER;
        if !burst {
            open.pushed = 0;
            return;
        }
        if !frames.between_messages() {
            return; // keep the counts: compact at the next quiet point
        }
        let Phase::Open { ws, mut open } = std::mem::replace(&mut self.phase, Phase::Done(None))
        else {
            unreachable!("matched Open above")
        };
        let config = *ws.get_config();
        let mut io = ws.into_inner();
        io.frames.reset_largest();
        open.pushed = 0;
        let ws = WebSocket::from_raw_socket(io, Role::Server, Some(config));
        self.phase = Phase::Open {
            ws: Box::new(ws),
            open,
        };
        host.metrics()
            .buffer_compactions_total
            .fetch_add(1, Ordering::Relaxed);
    }

    fn response_written(&mut self, now: Instant, host: &dyn Host) {
        let Phase::Respond { io, after, .. } =
            std::mem::replace(&mut self.phase, Phase::Done(None))
        else {
            return;
        };
        let After::Upgrade { leftover } = after else {
            // Connection: close. Keep the stream: the owner must deregister
            // it before it closes (the `polling` backend on Windows keeps
            // its own handle map, and a reused handle would fail to register).
            self.phase = Phase::Done(Some(io.inner));
            return;
        };
        let cfg = host.config();
        let m = host.metrics();
        m.http_status(101);
        m.upgrades_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let latency = now.saturating_duration_since(self.accepted);
        m.handshake_latency.record_us(latency.as_micros() as u64);
        let mut io = io;
        // The tracker saw the request head too: frames start after it.
        io.frames = FrameBoundary::default();
        io.frames.feed(&leftover);
        let ws = WebSocket::from_partially_read(
            io,
            leftover,
            Role::Server,
            Some(cfg.limits.ws_config()),
        );
        self.phase = Phase::Open {
            ws: Box::new(ws),
            open: Open {
                opened: now,
                last_inbound: now,
                last_app: now,
                ping_sent: None,
                bytes_seen: 0,
                runs: Vec::new(),
                drain_by: None,
                pushed: 0,
            },
        };
        // Frames may have arrived with the request head.
        self.drive_ws(now, host);
    }

    /// Reads every available frame, answers through the app, then flushes.
    fn drive_ws(&mut self, now: Instant, host: &dyn Host) {
        let app = &host.config().app;
        loop {
            let (ws, open) = match &mut self.phase {
                Phase::Open { ws, open } => (ws, Some(open)),
                Phase::Closing { ws, .. } => (ws, None),
                _ => return,
            };
            let msg = match ws.read() {
                Ok(msg) => msg,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.read_error(e, now, host);
                    continue;
                }
            };
            let Some(open) = open else {
                continue; // closing: data is discarded until the peer's Close
            };
            let reply = match msg {
                Message::Text(_) | Message::Binary(_) => {
                    open.last_app = now;
                    match app {
                        App::Echo => Some(msg),
                        App::Handler(_) => {
                            let input = match msg {
                                Message::Text(t) => Inbound::Text(t.as_str().to_owned()),
                                Message::Binary(b) => Inbound::Binary(b.to_vec()),
                                _ => unreachable!("matched data messages"),
                            };
                            self.next_run += 1;
                            let run = self.next_run;
                            let cancel = Arc::new(AtomicBool::new(false));
                            let session = self.session.clone().unwrap_or_default();
                            let m = host.metrics();
                            let draining = open.drain_by.is_some();
                            if !draining
                                && open.runs.len() < MAX_RUNS_PER_CONN
                                && host.dispatch(self.key, &session, run, input, cancel.clone())
                            {
                                m.runs_total.fetch_add(1, Ordering::Relaxed);
                                open.runs.push(Run {
                                    run,
                                    deadline: now + host.config().timeouts.execution,
                                    cancel,
                                    last_seq: 0,
                                });
                                None
                            } else {
                                let fields = if draining {
                                    serde_json::json!({
                                        "code": "draining",
                                        "message": "server shutting down; reconnect elsewhere",
                                    })
                                } else {
                                    m.overloaded_total.fetch_add(1, Ordering::Relaxed);
                                    tracing::info!(
                                        conn = self.id,
                                        "handler pool full: answering overloaded"
                                    );
                                    serde_json::json!({
                                        "code": "overloaded",
                                        "message": "server busy; retry later",
                                    })
                                };
                                let id = run_id(self.id, run);
                                let text = event_json("error", &id, 1, host.unix_ms(now), fields);
                                Some(Message::text(text))
                            }
                        }
                    }
                }
                Message::Close(_) => {
                    // tungstenite queued the echo of the peer's Close.
                    let deadline = now + host.config().timeouts.close;
                    self.enter_closing(deadline, true);
                    None
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
            };
            if let Some(reply) = reply {
                self.push(reply, now, host);
            }
        }
        if let Phase::Open { ws, open } = &mut self.phase {
            let seen = ws.get_ref().bytes_in;
            if seen != open.bytes_seen {
                // Any inbound byte is a sign of life: resets heartbeat,
                // liveness and the outstanding ping.
                open.bytes_seen = seen;
                open.last_inbound = now;
                open.ping_sent = None;
            }
        }
        self.write_some(now, host);
    }

    /// Queues one outbound message (flushed at the end of the call).
    fn push(&mut self, msg: Message, now: Instant, host: &dyn Host) {
        let Phase::Open { ws, open } = &mut self.phase else {
            return;
        };
        open.last_app = now;
        open.pushed = open.pushed.saturating_add(msg.len());
        match ws.write(msg) {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(WsError::WriteBufferFull(_)) => {
                tracing::info!(conn = self.id, "slow consumer: outbound buffer full");
                self.begin_close(1008, "backpressure", now, host);
            }
            Err(e) => self.fail(e),
        }
    }

    /// Delivers mail from a handler run. Mail for a run that already timed
    /// out, or for a connection that is closing, is dropped.
    pub fn deliver(&mut self, run: u64, kind: MailKind, now: Instant, host: &dyn Host) {
        let Phase::Open { open, .. } = &mut self.phase else {
            return;
        };
        let Some(i) = open.runs.iter().position(|r| r.run == run) else {
            return;
        };
        match kind {
            MailKind::Event { seq, text } => {
                open.runs[i].last_seq = seq;
                self.push(Message::text(text), now, host);
            }
            MailKind::Done => {
                open.runs.swap_remove(i);
                if open.drain_by.is_some() && open.runs.is_empty() {
                    self.begin_close(1001, "server shutting down", now, host);
                }
            }
            MailKind::Panicked(why) => {
                open.runs.swap_remove(i);
                host.metrics()
                    .handler_panics_total
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(conn = self.id, run, "handler panicked: {why}; closing 1011");
                self.begin_close(1011, "handler failure", now, host);
            }
        }
        self.write_some(now, host);
    }

    /// Runs past the execution deadline: cancel, tell the client, count.
    fn expire_runs(&mut self, now: Instant, host: &dyn Host) {
        let Phase::Open { open, .. } = &mut self.phase else {
            return;
        };
        if !open.runs.iter().any(|r| now >= r.deadline) {
            return;
        }
        let mut expired = Vec::new();
        open.runs.retain(|r| {
            let due = now >= r.deadline;
            if due {
                r.cancel.store(true, Ordering::Release);
                expired.push((r.run, r.last_seq));
            }
            !due
        });
        let limit = host.config().timeouts.execution;
        for (run, last_seq) in expired {
            host.metrics().timeout(TimeoutPhase::Execution);
            tracing::info!(
                conn = self.id,
                run,
                "execution deadline passed; run cancelled"
            );
            let fields = serde_json::json!({
                "code": "execution_timeout",
                "message": format!("the handler did not finish within {}", crate::settings::secs(limit)),
            });
            let text = event_json(
                "error",
                &run_id(self.id, run),
                last_seq + 1,
                host.unix_ms(now),
                fields,
            );
            self.push(Message::text(text), now, host);
        }
        self.write_some(now, host);
    }

    fn read_error(&mut self, e: WsError, now: Instant, host: &dyn Host) {
        if matches!(self.phase, Phase::Closing { .. }) {
            // Closing: any error ends it (ConnectionClosed is the normal end).
            self.finish();
            return;
        }
        match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed => self.finish(),
            WsError::Capacity(c) => {
                tracing::info!(conn = self.id, "inbound too big: {c}");
                self.begin_close(1009, "message too big", now, host);
            }
            WsError::Utf8(_) => {
                tracing::info!(conn = self.id, "invalid UTF-8 in a text message");
                self.begin_close(1007, "invalid UTF-8", now, host);
            }
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                tracing::debug!(conn = self.id, "peer left without a close handshake");
                self.finish();
            }
            WsError::Protocol(p) => {
                tracing::info!(conn = self.id, "protocol error: {p}");
                self.begin_close(1002, "protocol error", now, host);
            }
            WsError::WriteBufferFull(_) => {
                tracing::info!(conn = self.id, "slow consumer: outbound buffer full");
                self.begin_close(1008, "backpressure", now, host);
            }
            other => self.fail(other),
        }
    }

    /// Sends a Close and enters the closing phase (deadline `close`). Peer
    /// faults (1002 protocol, 1007 bad data, 1009 too big) fail the
    /// connection: TCP is dropped once the Close is flushed, since the peer
    /// may never send a well-formed Close of its own.
    fn begin_close(&mut self, code: u16, reason: &'static str, now: Instant, host: &dyn Host) {
        let deadline = now + host.config().timeouts.close;
        let linger = !matches!(code, 1002 | 1007 | 1009);
        let Phase::Open { ws, .. } = &mut self.phase else {
            return;
        };
        host.metrics().close_sent(code);
        // Room for the Close frame even when the buffer is full (backpressure).
        ws.set_config(|c| c.max_write_buffer_size = c.max_write_buffer_size.saturating_add(256));
        let r = ws.close(Some(close_frame(code, reason)));
        self.enter_closing(deadline, linger);
        self.after_flush(r);
    }

    fn enter_closing(&mut self, deadline: Instant, linger: bool) {
        if let Phase::Open { .. } = self.phase {
            let Phase::Open { ws, mut open } =
                std::mem::replace(&mut self.phase, Phase::Done(None))
            else {
                unreachable!()
            };
            // No more events will be delivered: let running handlers stop.
            open.cancel_runs();
            self.phase = Phase::Closing {
                ws,
                deadline,
                linger,
            };
        }
    }

    fn after_flush(&mut self, r: Result<(), WsError>) {
        match r {
            Ok(()) => {
                if let Phase::Closing { linger: false, .. } = self.phase {
                    self.finish();
                }
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The closing handshake finished, or the socket broke: drop it.
            Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => self.finish(),
            Err(e) => self.fail(e),
        }
    }

    /// Ends the connection, keeping the stream for deregistration.
    fn finish(&mut self) {
        let stream = match std::mem::replace(&mut self.phase, Phase::Done(None)) {
            Phase::Http { io, .. } | Phase::Respond { io, .. } => Some(io.inner),
            Phase::Open { ws, mut open } => {
                open.cancel_runs();
                Some(ws.into_inner().inner)
            }
            Phase::Closing { ws, .. } => Some(ws.into_inner().inner),
            Phase::Done(s) => s,
        };
        self.phase = Phase::Done(stream);
    }

    fn fail(&mut self, e: WsError) {
        tracing::debug!(conn = self.id, "connection failed: {e}");
        self.finish();
    }
}

#[cfg(test)]
mod tests;
