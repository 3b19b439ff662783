//! The handler API: what application code implements ([`Handler`]), what
//! it is told ([`Session`], [`Inbound`]) and how it streams a run's events
//! back ([`Outbox`]). Handlers run on the worker pool (`crate::source`),
//! off the reactor threads; the server knows applications only through
//! this API (the built-in ones live in `crate::apps`).
//!
//! [`App::Echo`] is the exception: it answers inline on the reactor thread
//! because copying a frame back is cheaper than any hand-off (Autobahn's
//! peer).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::reactor::Mailbox;
use crate::runs::{self, Mail, Raw, RunBudget, SourceEvent, Ticket};

/// Who is on the other end of a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    pub conn_id: u64,
    /// The authenticated subject, if authentication is on.
    pub subject: Option<String>,
    /// The trace the upgrade request came with (W3C `traceparent`), if any.
    pub trace: Option<crate::trace::Trace>,
}

/// One inbound application message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    Text(String),
    Binary(Vec<u8>),
}

/// Application code. `open`/`close` run inline on the reactor thread during
/// the upgrade and at the end (keep them cheap: a lookup, a check);
/// `message` runs on the worker pool under the `execution` deadline.
pub trait Handler: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Subprotocols spoken, in server preference order.
    fn subprotocols(&self) -> &'static [&'static str];
    /// An error is a server fault: HTTP 500, counted by the circuit breaker.
    fn open(&self, _session: &Session) -> Result<(), String> {
        Ok(())
    }
    /// Handles one message; stream results through `out`, and stop early
    /// when `out.is_cancelled()` (the execution deadline passed).
    fn message(&self, session: &Session, input: Inbound, out: &Outbox);
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
    pub thread_id: String,
    pub text: String,
}

/// Which application a server runs.
#[derive(Clone)]
pub enum App {
    Echo,
    Handler(Arc<dyn Handler>),
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl App {
    pub fn name(&self) -> &'static str {
        match self {
            App::Echo => "echo",
            App::Handler(h) => h.name(),
        }
    }

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
