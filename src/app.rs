//! The handler API: what application code implements ([`Handler`]), what
//! it is told ([`Request`] when a client asks to connect, [`Session`] and
//! [`Inbound`] after), how it answers that ask ([`Decision`]) and how a
//! run's output goes back ([`Outbox`]: enveloped events, raw messages).
//! The server knows applications only through this API (the built-in
//! ones live in `crate::apps`); [`guide`] is the page on writing one.
//!
//! [`App::Echo`] is the exception: it answers inline on the reactor thread
//! because copying a frame back is cheaper than any hand-off (Autobahn's
//! peer).

pub mod guide;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::reactor::Mailbox;
use crate::runs::{self, Mail, Raw, RunBudget, SourceEvent, Ticket};

/// Who is on the other end of a connection, and what it asked for: given
/// to every call of the connection's handler. Small on purpose (it lives
/// as long as the connection): the request's headers are not kept, see
/// [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The connection's id, unique within the server's lifetime.
    pub conn_id: u64,
    /// The authenticated subject, if authentication is on.
    pub subject: Option<String>,
    /// The trace the upgrade request came with (W3C `traceparent`), if any.
    pub trace: Option<crate::trace::Trace>,
    /// The client's address: the TCP peer, or the client a trusted proxy
    /// names (`--trust-proxy`; `X-Forwarded-For` / `Forwarded`).
    pub peer: IpAddr,
    /// The request's path, without its query (the WebSocket path).
    pub path: String,
    /// The request's query string (after `?`, undecoded), if any.
    pub query: Option<String>,
}

impl Default for Session {
    /// A session of nobody in particular (for tests): connection 0 from
    /// `0.0.0.0`, path `/ws`.
    fn default() -> Session {
        Session {
            conn_id: 0,
            subject: None,
            trace: None,
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            path: "/ws".into(),
            query: None,
        }
    }
}

/// A client's upgrade request, as [`Handler::open`] sees it: the session
/// it would open and every header line it came with. Read-only, and
/// bounded like the request head itself (`--max-head-bytes`,
/// `--max-headers`). Only `open` sees the headers: keeping them for every
/// later call would cost every idle connection its whole head (up to
/// 8 KiB each); a handler that needs a header later keeps what it needs
/// itself, keyed by [`Session::conn_id`] (and drops it in
/// [`Handler::close`]).
///
/// The headers are as the client sent them, credentials included
/// (`Authorization`; a browser's `bearer.<token>` entry in
/// `Sec-WebSocket-Protocol`): the server checked the token already (see
/// [`Session::subject`]); do not log them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// What every later call of this connection is given.
    pub session: Session,
    /// Every header line in order: its name as sent, its value trimmed
    /// (bytes that are not UTF-8 replaced by U+FFFD).
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The request's path, without its query.
    pub fn path(&self) -> &str {
        &self.session.path
    }

    /// The query string (after `?`, undecoded), if any.
    pub fn query(&self) -> Option<&str> {
        self.session.query.as_deref()
    }

    /// The client's address (see [`Session::peer`]).
    pub fn peer(&self) -> IpAddr {
        self.session.peer
    }

    /// The first value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A handler's answer to an upgrade request ([`Handler::open`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Open the WebSocket: the client gets its `101`.
    Accept,
    /// The handler's decision not to: the client gets this status instead
    /// of the `101`. Not a fault: the circuit breaker does not count it.
    Refuse(Refusal),
    /// The handler could not decide (a database it needs is down, ...):
    /// `500`, counted by the circuit breaker as a server fault, like a
    /// panic in `open`. The text goes to the log and the response body.
    Fail(String),
}

impl Decision {
    /// [`Decision::Refuse`] with `status` and `reason` (the body).
    pub fn refuse(status: u16, reason: impl Into<String>) -> Decision {
        Decision::Refuse(Refusal::new(status, reason))
    }
}

/// The response a handler refuses an upgrade with: a status (3xx, 4xx or
/// 5xx), a plain-text body, and any headers of its own (`WWW-Authenticate`,
/// `Retry-After`, `Location`). The server writes `Content-Type`,
/// `Content-Length` and `Connection: close` itself. A status outside
/// 300..=599, or a header that is not a valid HTTP field or one of those
/// three, is a bug in the handler: the client then gets `500` (logged,
/// counted by the breaker) rather than a malformed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status the client gets instead of `101` (300..=599).
    pub status: u16,
    /// The response body (a line of text is enough: it is what the
    /// client's error shows).
    pub reason: String,
    /// Extra response headers (name, value), e.g. `Retry-After`.
    pub headers: Vec<(String, String)>,
}

impl Refusal {
    /// A refusal with `status` and `reason`, no headers of its own.
    pub fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// Adds header `name: value` to the response.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Refusal {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// One inbound application message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A text message (valid UTF-8, checked by the connection).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

impl Inbound {
    /// The message's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Inbound::Text(t) => t.len(),
            Inbound::Binary(b) => b.len(),
        }
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Application code: one value serves every connection, from several
/// threads at once. [`Handler::open`] and [`Handler::message`] run on the
/// worker pool, never on a reactor thread, so they may block (under their
/// deadlines); the rest is called on the reactor thread and must be cheap
/// (see the [`guide`]).
pub trait Handler: Send + Sync + 'static {
    /// The application's name (logs, `/health`).
    fn name(&self) -> &'static str;
    /// Subprotocols spoken, in server preference order. A client that
    /// offers only others is refused with 400 before `open` is asked.
    fn subprotocols(&self) -> &'static [&'static str];
    /// Decides an upgrade request that passed the server's own checks
    /// (origin, limits, token, subprotocol, breaker). Runs on the worker
    /// pool before the `101` is written, within the handshake deadline: a
    /// decision that comes later finds the client answered `503` already
    /// (counted by the breaker, like a failure). A panic is a
    /// [`Decision::Fail`].
    fn open(&self, _request: &Request) -> Decision {
        Decision::Accept
    }
    /// Handles one message on the worker pool under the `execution`
    /// deadline: its run's output goes through `out`; stop early when
    /// `out.is_cancelled()`.
    fn message(&self, session: &Session, input: Inbound, out: &Outbox);
    /// The connection of an accepted `open` is gone (called once, on the
    /// reactor thread: keep it cheap). Its runs may still be going.
    fn close(&self, _session: &Session) {}
    /// Where the run for `input` comes from: this handler's
    /// [`Handler::message`] on the worker pool (the default), or the
    /// team's own agent configured on the server (`--agent-url`,
    /// `--agent-cmd`). Called on the reactor thread: keep it cheap.
    fn start(&self, _session: &Session, _input: &Inbound) -> Start {
        Start::Pool
    }
    /// Opts into resume (SPEC §5): `true` makes a text message
    /// `{"type":"resume","run_id":…,"after_seq":N}` a resume request,
    /// answered by the run layer (the run's events after `N`, then its
    /// live ones) and never passed to [`Handler::message`].
    fn resumable(&self) -> bool {
        false
    }
}

/// Where a message's run comes from (see [`Handler::start`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// `Handler::message` on the worker pool.
    Pool,
    /// The configured agent, asked this.
    Agent(AgentRequest),
}

/// What an agent is asked for one message; the server adds the run id,
/// the subject and the time left (SPEC §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRequest {
    /// The conversation the message belongs to.
    pub thread_id: String,
    /// The user's text.
    pub text: String,
}

/// Which application a server runs.
#[derive(Clone)]
pub enum App {
    /// Every message back, inline on the reactor (no pool, no runs).
    Echo,
    /// A [`Handler`] on the worker pool.
    Handler(Arc<dyn Handler>),
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl App {
    /// The application's name.
    pub fn name(&self) -> &'static str {
        match self {
            App::Echo => "echo",
            App::Handler(h) => h.name(),
        }
    }

    /// The subprotocols it speaks, in preference order.
    pub fn subprotocols(&self) -> &'static [&'static str] {
        match self {
            App::Echo => &["echo"],
            App::Handler(h) => h.subprotocols(),
        }
    }
}

/// A run's way back to the server: its output goes, through its reactor's
/// mailbox, to the run layer, which seals events (`run_id`, `seq`, `ts`),
/// stores and forwards them, and forwards raw messages as they are.
/// Bounded by the run's budget, raw messages included: past it the run is
/// cancelled and ends with `run_too_large`; output the mailbox has no room
/// for ends the run `overloaded` (counted, never lost unseen).
pub struct Outbox {
    run: u64,
    run_id: Arc<str>,
    cancel: Arc<AtomicBool>,
    mailbox: Arc<Mailbox<Mail>>,
    budget: RunBudget,
    events: AtomicU64,
    bytes: AtomicU64,
}

impl Outbox {
    /// The way back for the run of `ticket`, through `mailbox`, within
    /// `budget`.
    pub fn new(ticket: &Ticket, mailbox: Arc<Mailbox<Mail>>, budget: RunBudget) -> Outbox {
        Outbox {
            run: ticket.run,
            run_id: ticket.id.clone(),
            cancel: ticket.cancel.clone(),
            mailbox,
            budget,
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// The run's public id (what a client resumes it by).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// True once the run ended early (its execution deadline, its
    /// client's Close, its budget): stop, nothing more is delivered.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    /// Sends one event `{type, ..fields, run_id, seq, ts}`; `seq` starts
    /// at 1 and grows by 1 per event of the run. Events are stored for
    /// resume. `fields` must serialize as a map; the names `type`,
    /// `run_id`, `seq` and `ts` belong to the envelope. Dropped silently
    /// once cancelled.
    pub fn emit(&self, kind: &str, fields: impl serde::Serialize) {
        if self.is_cancelled() {
            return;
        }
        let body = runs::body(kind, &fields);
        self.hand_over(body.len(), SourceEvent::Event(body));
    }

    /// Sends one text message as it is: no envelope, no `seq`, not stored,
    /// so never replayed by a resume — only the connection that started
    /// the run gets it, while it is there. In order with the run's events;
    /// counted against the run's budget like one. Dropped silently once
    /// cancelled.
    pub fn send_text(&self, text: impl Into<String>) {
        if self.is_cancelled() {
            return;
        }
        let text = text.into();
        self.hand_over(text.len(), SourceEvent::Raw(Raw::Text(text)));
    }

    /// Sends one binary message, as [`Outbox::send_text`] sends text
    /// (compressed like any message when the connection agreed to
    /// permessage-deflate).
    pub fn send_binary(&self, data: impl Into<Vec<u8>>) {
        if self.is_cancelled() {
            return;
        }
        let data = data.into();
        self.hand_over(data.len(), SourceEvent::Raw(Raw::Binary(data)));
    }

    /// Counts `len` bytes of output against the budget and posts it.
    fn hand_over(&self, len: usize, what: SourceEvent) {
        let len64 = len as u64;
        let events = self.events.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes.fetch_add(len64, Ordering::Relaxed) + len64;
        if events > self.budget.max_events || bytes > self.budget.max_bytes {
            // The run layer ends the run at this one: nothing after it is
            // worth queueing.
            self.cancel.store(true, Ordering::Release);
        }
        let mail = Mail {
            run: self.run,
            what,
        };
        if self.mailbox.try_post(mail, len).is_err() {
            self.cancel.store(true, Ordering::Release);
            self.post(SourceEvent::Dropped);
        }
    }

    /// Waits `d` unless cancelled first; returns false when cancelled.
    pub fn pause(&self, d: Duration) -> bool {
        // Handlers are plain blocking code on pool threads; slices of 5 ms
        // bound how long a cancelled run keeps its thread.
        let slice = Duration::from_millis(5);
        let mut left = d;
        while !left.is_zero() {
            if self.is_cancelled() {
                return false;
            }
            let step = left.min(slice);
            std::thread::sleep(step);
            left -= step;
        }
        !self.is_cancelled()
    }

    /// Posts the run's end (always accepted: one small mail per run).
    pub(crate) fn post(&self, what: SourceEvent) {
        self.mailbox.post(Mail {
            run: self.run,
            what,
        });
    }
}
