//! One agent run streamed from the upstream over HTTP/1.1, as a state
//! machine over a non-blocking socket, like a connection (`crate::conn`):
//! it takes readiness and the time, reports [`Output`]s, and says when it
//! next needs the time ([`Call::poll_timeout`]). Every wait has its
//! deadline: connect (TCP, TLS and writing the request), response (the
//! request sent → the response head) and idle (between reads of the
//! stream; keep-alive comments count). The run's own execution deadline
//! is the run layer's.
//!
//! Reading costs one system call per arrival where that is safe: after a
//! read that returned less than it asked for, the read that would only
//! say `WouldBlock` is skipped when the transport says a short read proves
//! the socket drained (`Transport::short_read_drains`: Unix, where epoll
//! and kqueue raise a new edge for every later arrival, and the polling
//! backend, level-triggered, reports what is left anyway; never on
//! Windows, where mio re-arms its poll only after a `WouldBlock`). One
//! case breaks the proof: the agent's FIN, when it came with the last
//! bytes, raised no edge of its own. The backend reports a hang-up as
//! readable *and writable*, and a call waits only to read once its
//! request is out, so writability it did not ask for is that hang-up: from
//! then on the call reads until EOF.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::UpstreamConfig;
use super::events::{Decoder, Framing, Read as EventRead};
use super::resolve::Unresolved;
use crate::conn::{TimeoutPhase, Transport};
use crate::httpc::{Error as HttpError, Exchange, Head};
use crate::reactor::Interest;
use crate::runs::Failure;
use crate::stream::Stream;
#[cfg(feature = "tls")]
use crate::tls::TlsStream;

/// Most body bytes of a refusal (a non-2xx answer) read for its message.
const REFUSAL_BODY: usize = 4096;
/// Bytes read in one call before the owner gets the time back (it comes
/// back on its next turn, which does not block).
const READ_BUDGET: usize = 256 * 1024;
/// Bytes asked of the socket per read, into one buffer per thread: no
/// zeroing per readiness, and a burst comes in few reads.
const READ_CHUNK: usize = 64 * 1024;
/// Decoded body capacity a call keeps between reads; a burst's is given
/// back (a run waits mostly, holding only what an event needs).
const KEEP_BODY: usize = 4 * 1024;

thread_local! {
    static READ_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// What a call reports.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// One event for the run (a JSON object's text, see `events`).
    Event(String),
    /// A 2xx head: the agent is there and answering.
    Answered,
    /// The run's last event was read.
    Done,
    /// The run ends with this error.
    Failed {
        failure: Failure,
        /// What the agent's circuit breaker makes of it.
        blame: Blame,
        timeout: Option<TimeoutPhase>,
    },
}

/// Whom a failed run is held against, for the agent's circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The agent is unavailable (no connection, timeouts, 5xx and 429,
    /// truncations): a failure.
    Agent,
    /// The agent answered, wrongly for this run (4xx, not a stream of
    /// events): it is there, which is what the breaker asks.
    Answered,
    /// This side failed before anything reached the agent (no descriptor,
    /// memory or local port; the resolver busy; the TLS set-up): no
    /// verdict on the agent.
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Resolving,
    Connecting,
    Sending,
    AwaitHead,
    Streaming,
    /// A non-2xx head: reading a little of the body for its message.
    Refused,
    Done,
}

pub struct Call {
    cfg: Arc<UpstreamConfig>,
    phase: Phase,
    x: Exchange,
    addrs: VecDeque<SocketAddr>,
    stream: Option<Stream>,
    /// A socket the owner has not registered yet.
    fresh: bool,
    /// Sockets given up on (a failed address), for the owner to
    /// deregister before they close.
    retired: Vec<Stream>,
    connect_by: Instant,
    deadline: Instant,
    head: Option<Head>,
    decoder: Option<Decoder>,
    body: Vec<u8>,
    more_input: bool,
    /// The agent's side is closed (a hang-up was reported): a short read
    /// proves nothing, read until EOF.
    hung_up: bool,
    last_error: String,
}

fn secs(d: Duration) -> String {
    crate::settings::secs(d)
}

impl Call {
    /// A call that sends `x` once its target is resolved.
    pub fn new(cfg: Arc<UpstreamConfig>, x: Exchange, now: Instant) -> Call {
        let connect_by = now + cfg.timeouts.connect;
        Call {
            cfg,
            phase: Phase::Resolving,
            x,
            addrs: VecDeque::new(),
            stream: None,
            fresh: false,
            retired: Vec::new(),
            connect_by,
            deadline: connect_by,
            head: None,
            decoder: None,
            body: Vec::new(),
            more_input: false,
            hung_up: false,
            last_error: String::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Reading stopped at the budget with input left: call
    /// [`Call::handle_io`] again on the next turn.
    pub fn has_more_input(&self) -> bool {
        self.more_input && !self.is_done()
    }

    /// When [`Call::handle_timeout`] next has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.is_done()).then_some(self.deadline)
    }

    pub fn interest(&self) -> Interest {
        match self.phase {
            Phase::Connecting | Phase::Sending => Interest::BOTH,
            _ => Interest::READABLE,
        }
    }

    pub fn stream_mut(&mut self) -> Option<&mut Stream> {
        self.stream.as_mut()
    }

    /// True once per new socket: the owner registers it now.
    pub fn take_fresh(&mut self) -> bool {
        std::mem::take(&mut self.fresh)
    }

    /// Sockets to deregister before they are dropped.
    pub fn take_retired(&mut self) -> Vec<Stream> {
        std::mem::take(&mut self.retired)
    }

    /// Ends the call (the run ended elsewhere): the socket is the owner's
    /// to deregister and drop, which closes it — the agent sees its
    /// client go.
    pub fn stop(&mut self) -> Option<Stream> {
        self.phase = Phase::Done;
        self.stream.take()
    }

    fn fail(&mut self, out: &mut Vec<Output>, code: &'static str, message: String, blame: Blame) {
        self.phase = Phase::Done;
        out.push(Output::Failed {
            failure: Failure {
                code,
                message,
                ..Failure::default()
            },
            blame,
            timeout: None,
        });
    }

    /// Ends the call for a failure of this side (say, its socket could not
    /// be watched): `upstream_unavailable`, not held against the agent.
    pub fn fail_here(&mut self, message: String, out: &mut Vec<Output>) {
        if !self.is_done() {
            self.fail(out, "upstream_unavailable", message, Blame::Local);
        }
    }

    /// The target's addresses (or why there are none).
    pub fn resolved(
        &mut self,
        r: Result<Vec<SocketAddr>, Unresolved>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if self.phase != Phase::Resolving {
            return;
        }
        match r {
            Ok(addrs) => {
                self.addrs = addrs.into();
                self.connect_next(now, out);
            }
            Err(e) => {
                let m = format!("cannot resolve the agent's host: {}", e.message);
                let blame = if e.local { Blame::Local } else { Blame::Agent };
                self.fail(out, "upstream_unavailable", m, blame);
            }
        }
    }

    /// Starts connecting to the next address, or fails with the last error.
    fn connect_next(&mut self, now: Instant, out: &mut Vec<Output>) {
        if let Some(old) = self.stream.take() {
            self.retired.push(old);
        }
        while let Some(addr) = self.addrs.pop_front() {
            match mio::net::TcpStream::connect(addr) {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    #[cfg(not(feature = "tls"))]
                    let stream = Stream::Plain(tcp);
                    #[cfg(feature = "tls")]
                    let stream = match &self.cfg.tls {
                        None => Stream::Plain(tcp),
                        Some((config, name)) => {
                            match TlsStream::client(tcp, config.clone(), name.clone()) {
                                Ok(t) => Stream::Tls(Box::new(t)),
                                Err(e) => {
                                    // The same for every address: ours.
                                    let m = format!("cannot start TLS to the agent: {e}");
                                    return self.fail(out, "upstream_unavailable", m, Blame::Local);
                                }
                            }
                        }
                    };
                    self.stream = Some(stream);
                    self.fresh = true;
                    self.phase = Phase::Connecting;
                    self.deadline = self.connect_by;
                    return;
                }
                Err(e) if crate::platform::is_local_shortage(&e) => {
                    // No socket (or port) here: the next address would
                    // fare no better, and the agent was never asked.
                    let m = format!("cannot connect to the agent: this server is short: {e}");
                    return self.fail(out, "upstream_unavailable", m, Blame::Local);
                }
                Err(e) => self.last_error = format!("{addr}: {e}"),
            }
        }
        let _ = now;
        let m = format!("cannot connect to the agent: {}", self.last_error);
        self.fail(out, "upstream_unavailable", m, Blame::Agent);
    }

    /// Readiness of the socket.
    pub fn handle_io(
        &mut self,
        readable: bool,
        writable: bool,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.more_input = false;
        // Writable while the call waits only to read: a hang-up or an
        // error (see the module's doc). It stays: nothing comes after it.
        self.hung_up |= writable && self.interest() == Interest::READABLE;
        if self.phase == Phase::Connecting && (readable || writable) {
            match self.connected() {
                Ok(true) => self.phase = Phase::Sending,
                Ok(false) => return,
                Err(e) => {
                    self.last_error = e.to_string();
                    return self.connect_next(now, out);
                }
            }
        }
        if self.phase == Phase::Sending {
            self.send(now, out);
        }
        if matches!(
            self.phase,
            Phase::AwaitHead | Phase::Streaming | Phase::Refused
        ) {
            self.read(now, out);
        }
    }

    /// The TCP connect finished: `Ok(false)` while it is still going.
    fn connected(&mut self) -> io::Result<bool> {
        let Some(s) = &self.stream else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let tcp = s.tcp();
        if let Some(e) = tcp.take_error()? {
            return Err(e);
        }
        match tcp.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes the request (through TLS, which finishes its handshake on
    /// the way); the response deadline starts once it is all out.
    fn send(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        while !self.x.request_sent() {
            match s.write(self.x.to_send()) {
                Ok(0) => return self.broken("the agent closed the connection", out),
                Ok(n) => self.x.sent(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.broken(&e.to_string(), out),
            }
        }
        match s.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => return self.broken(&e.to_string(), out),
        }
        if s.handshaking() {
            return;
        }
        self.phase = Phase::AwaitHead;
        self.deadline = now + self.cfg.timeouts.response;
    }

    /// The socket broke before the run's last event.
    fn broken(&mut self, why: &str, out: &mut Vec<Output>) {
        match self.phase {
            Phase::Connecting | Phase::Sending | Phase::AwaitHead => {
                let m = format!("the agent's connection ended before its answer: {why}");
                self.fail(out, "upstream_unavailable", m, Blame::Agent);
            }
            Phase::Streaming => {
                let m = format!("the agent's stream ended before agent_completed or error: {why}");
                self.fail(out, "upstream_truncated", m, Blame::Agent);
            }
            Phase::Refused => self.refused(out),
            Phase::Resolving | Phase::Done => {}
        }
    }

    fn read(&mut self, now: Instant, out: &mut Vec<Output>) {
        READ_BUF.with_borrow_mut(|buf| self.read_into(buf, now, out));
    }

    fn read_into(&mut self, buf: &mut [u8], now: Instant, out: &mut Vec<Output>) {
        let mut taken = 0;
        while !self.is_done() {
            if taken >= READ_BUDGET {
                self.more_input = true;
                return;
            }
            let Some(s) = self.stream.as_mut() else {
                return;
            };
            if self.hung_up {
                // A TLS stream skips the same read on its own: not now.
                s.end_reading();
            }
            let n = match s.read(buf) {
                Ok(0) => return self.eof(out),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.end_reading();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return self.eof(out),
                Err(e) => return self.broken(&e.to_string(), out),
            };
            let drained = n < buf.len() && !self.hung_up && s.short_read_drains();
            taken += n;
            // Any byte is traffic: keep-alive comments included.
            if matches!(self.phase, Phase::Streaming | Phase::Refused) {
                self.deadline = now + self.cfg.timeouts.idle;
            }
            match self.x.feed(&buf[..n], &mut self.body) {
                Ok(p) => {
                    if let Some(head) = p.head {
                        self.on_head(head, now, out);
                    }
                    self.take_body(out);
                    if p.done && !self.is_done() {
                        self.ended(out);
                    }
                }
                Err(e) => return self.http_error(e, out),
            }
            if drained {
                // Nothing is waiting: the next arrival raises readiness.
                if let Some(s) = self.stream.as_mut() {
                    s.end_reading();
                }
                return;
            }
        }
    }

    fn on_head(&mut self, head: Head, now: Instant, out: &mut Vec<Output>) {
        self.deadline = now + self.cfg.timeouts.idle;
        if !(200..300).contains(&head.status) {
            self.phase = Phase::Refused;
            self.head = Some(head);
            return;
        }
        let media = head.media_type.clone().unwrap_or_default();
        self.head = Some(head);
        out.push(Output::Answered);
        match Framing::of(&media) {
            Some(f) => {
                let c = &self.cfg;
                self.decoder = Some(Decoder::new(f, c.max_line, c.max_deltas));
                self.phase = Phase::Streaming;
            }
            None => {
                let shown = if media.is_empty() { "none" } else { &media };
                let m = format!(
                    "the agent answered with content type {shown}; expected text/event-stream \
                     or application/jsonl"
                );
                self.fail(out, "upstream_invalid", m, Blame::Answered);
            }
        }
    }

    /// Decodes the body bytes read so far into events.
    fn take_body(&mut self, out: &mut Vec<Output>) {
        match self.phase {
            Phase::Streaming => {
                let Some(d) = self.decoder.as_mut() else {
                    return;
                };
                let mut reads = Vec::new();
                let r = d.feed(&self.body, &mut reads);
                self.body.clear();
                if self.body.capacity() > KEEP_BODY {
                    self.body = Vec::new();
                }
                self.emit(reads, out);
                if let Err(e) = r
                    && !self.is_done()
                {
                    self.fail(out, "upstream_invalid", e.to_string(), Blame::Answered);
                }
            }
            Phase::Refused if self.body.len() >= REFUSAL_BODY => self.refused(out),
            _ => {}
        }
    }

    fn emit(&mut self, reads: Vec<EventRead>, out: &mut Vec<Output>) {
        for r in reads {
            if self.is_done() {
                return; // nothing after the last event
            }
            if r.started {
                continue; // pollcap sent its own when the agent answered
            }
            out.push(Output::Event(r.body));
            if r.last {
                self.phase = Phase::Done;
                out.push(Output::Done);
            }
        }
    }

    /// The response is complete (its framing says so), or the connection
    /// ended it.
    fn ended(&mut self, out: &mut Vec<Output>) {
        match self.phase {
            Phase::Streaming => {
                if let Some(d) = self.decoder.as_mut() {
                    let mut reads = Vec::new();
                    let r = d.finish(&mut reads);
                    self.emit(reads, out);
                    if let Err(e) = r
                        && !self.is_done()
                    {
                        return self.fail(out, "upstream_invalid", e.to_string(), Blame::Answered);
                    }
                }
                if !self.is_done() {
                    let m = "the agent's stream ended before agent_completed or error".into();
                    self.fail(out, "upstream_truncated", m, Blame::Agent);
                }
            }
            Phase::Refused => self.refused(out),
            _ => self.broken("no response", out),
        }
    }

    fn eof(&mut self, out: &mut Vec<Output>) {
        match self.x.eof() {
            Ok(()) => self.ended(out),
            Err(HttpError::Truncated) if self.phase == Phase::Refused => self.refused(out),
            Err(e) => self.broken(&e.to_string(), out),
        }
    }

    fn http_error(&mut self, e: HttpError, out: &mut Vec<Output>) {
        match e {
            HttpError::BadHead(_) | HttpError::BadBody(_) => {
                let m = format!("the agent's answer is not HTTP/1.1: {e}");
                self.fail(out, "upstream_invalid", m, Blame::Answered);
            }
            other => self.broken(&other.to_string(), out),
        }
    }

    /// A non-2xx answer, named by its status and its body's message.
    fn refused(&mut self, out: &mut Vec<Output>) {
        let Some(head) = self.head.clone() else {
            return;
        };
        let said = message_of(&self.body);
        let status = head.status;
        let message = match &said {
            Some(m) => format!("the agent answered {status}: {m}"),
            None => format!("the agent answered {status}"),
        };
        self.phase = Phase::Done;
        let (code, blame) = match status {
            429 | 500..=599 => ("upstream_unavailable", Blame::Agent),
            400..=499 => ("upstream_rejected", Blame::Answered),
            _ => ("upstream_invalid", Blame::Answered),
        };
        out.push(Output::Failed {
            failure: Failure {
                code,
                message,
                retry_after_ms: head
                    .retry_after_s
                    .filter(|_| code == "upstream_unavailable")
                    .map(|s| s.saturating_mul(1000)),
                ..Failure::default()
            },
            blame,
            timeout: None,
        });
    }

    /// A deadline passed, if it did by `now`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.is_done() || now < self.deadline {
            return;
        }
        let t = &self.cfg.timeouts;
        let (phase, name, message) = match self.phase {
            Phase::Resolving | Phase::Connecting | Phase::Sending => (
                TimeoutPhase::AgentConnect,
                "connect",
                format!("no connection to the agent within {}", secs(t.connect)),
            ),
            Phase::AwaitHead => (
                TimeoutPhase::AgentResponse,
                "response",
                format!(
                    "no response head from the agent within {}",
                    secs(t.response)
                ),
            ),
            Phase::Streaming | Phase::Refused => (
                TimeoutPhase::AgentIdle,
                "idle",
                format!("nothing from the agent for {}", secs(t.idle)),
            ),
            Phase::Done => return,
        };
        self.phase = Phase::Done;
        out.push(Output::Failed {
            failure: Failure {
                code: "upstream_timeout",
                message,
                phase: Some(name),
                ..Failure::default()
            },
            blame: Blame::Agent,
            timeout: Some(phase),
        });
    }
}

/// The message a refusal's body gives: JSON `message`, `detail` (FastAPI:
/// a string, or a list of `{msg}`) or `error`; or short plain text.
fn message_of(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&body[..body.len().min(REFUSAL_BODY)]);
    let said = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => {
            let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
            s(&v["message"])
                .or_else(|| s(&v["detail"]))
                .or_else(|| s(&v["detail"][0]["msg"]))
                .or_else(|| s(&v["error"]))
                .or_else(|| s(&v["error"]["message"]))
        }
        Err(_) => {
            let t = text.trim();
            (!t.is_empty() && !t.starts_with('<')).then(|| t.to_string())
        }
    }?;
    let mut said: String = said.chars().filter(|c| !c.is_control()).take(200).collect();
    if said.is_empty() {
        return None;
    }
    said.shrink_to_fit();
    Some(said)
}

#[cfg(test)]
mod tests;
