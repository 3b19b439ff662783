//! The run layer (SPEC §5): one owner for every run's bookkeeping.
//!
//! A run is an id, a subject, a `seq` counter, an execution deadline, a
//! cancel flag, a budget (events and bytes) and the connection that
//! follows it, if any. A run belongs to the reactor whose connection
//! started it and outlives that connection unless the client ends it with
//! a Close frame; its events are sealed here (`run_id`, `seq`, `ts`),
//! stored for resume and forwarded to whoever follows it.
//!
//! Sans-IO, as quinn-proto's `Connection`: [`Runs`] never reads a clock,
//! touches a socket or calls the store. Its owner (a server worker) feeds
//! it inputs — the time, an event from a run's source ([`Runs::source`]),
//! a message that asks to start or resume a run, a connection gone, a
//! store delivery — and applies the [`Effect`]s it queues: send these
//! bytes to connection K, store this event, stop this run's source, this
//! connection follows nothing any more. [`Runs::poll_timeout`] says when
//! [`Runs::expire`] is next due.
//!
//! Sources plug in by number: a source is told its run's number (in a
//! [`Ticket`]) and reports [`SourceEvent`]s for it; the layer does the
//! rest the same way for every source (the worker pool's handlers, and
//! any other), including the budget, the deadline and cancellation.
//!
//! Parts: `envelope` (the event JSON), `follows` (the one table of what
//! each connection follows), `resume` (following a run through the
//! store), `subjects` (runs per subject).

mod envelope;
mod follows;
mod resume;
mod subjects;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tungstenite::{Message, Utf8Bytes};

pub use crate::settings::RunBudget;
pub use envelope::{ErrorFields, body, error_event, resume_error, seal};

use crate::conn::TimeoutPhase;
use crate::frontdoor::SubjectRuns;
use crate::metrics::ServerMetrics;
use crate::reactor::WallClock;
use crate::store::{Follower, new_run_id};
use follows::{Follow, Follows};

/// Most runs one connection may follow at once (started or resumed); more
/// are answered `overloaded` so that one client cannot take every source.
pub const MAX_RUNS_PER_CONN: usize = 16;

/// A connection of this reactor: its slot and its id (a slot is reused,
/// an id never).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub key: usize,
    pub id: u64,
}

/// What a run's source reports.
#[derive(Debug, PartialEq)]
pub enum SourceEvent {
    /// One event: a JSON object's text (see [`body`]) without `run_id`,
    /// `seq` and `ts`, which the layer adds.
    Event(String),
    /// One message to send as it is: not an event (no `seq`, not stored,
    /// so a resume never replays it), counted against the run's budget
    /// like one and forwarded, in order with the events, to the
    /// connection that started the run while it is there.
    Raw(Raw),
    /// The source finished: the run ends after the events it sent.
    Done,
    /// The source failed: the run ends with this error event.
    Failed(Failure),
    /// An event could not be handed over (its reactor's mailbox was full):
    /// the run ends `overloaded` rather than go on with a gap.
    Dropped,
}

/// A raw message of a run (see [`SourceEvent::Raw`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Raw {
    Text(String),
    Binary(Vec<u8>),
}

impl Raw {
    fn len(&self) -> usize {
        match self {
            Raw::Text(t) => t.len(),
            Raw::Binary(b) => b.len(),
        }
    }

    fn into_message(self) -> Message {
        match self {
            Raw::Text(t) => Message::Text(t.into()),
            Raw::Binary(b) => Message::Binary(b.into()),
        }
    }
}

/// How a source failed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
    /// Close the follower's connection 1011 after the error event (a
    /// handler that panicked: the client would otherwise wait for events
    /// that never come).
    pub close: bool,
    /// The deadline that passed, when that is the failure.
    pub phase: Option<&'static str>,
    /// When a retry may succeed, when the source knows.
    pub retry_after_ms: Option<u64>,
}

/// One piece of a source's output for the reactor its run belongs to.
#[derive(Debug)]
pub struct Mail {
    /// The run's number (see [`Ticket`]).
    pub run: u64,
    pub what: SourceEvent,
}

/// The error a run ends with when its execution deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub code: &'static str,
    pub phase: Option<&'static str>,
}

impl Expiry {
    /// A handler's run: `execution_timeout`.
    pub const HANDLER: Expiry = Expiry {
        code: "execution_timeout",
        phase: None,
    };
    /// An agent's run: `upstream_timeout`, phase `execution`.
    pub const AGENT: Expiry = Expiry {
        code: "upstream_timeout",
        phase: Some("execution"),
    };
}

/// A run about to start: what its source needs to know.
#[derive(Clone, Debug)]
pub struct Ticket {
    /// The run's number on this reactor (mail is addressed by it).
    pub run: u64,
    /// Its public id (128 random bits).
    pub id: Arc<str>,
    /// Set when the run ends early; the source stops at its next check.
    pub cancel: Arc<AtomicBool>,
    /// Its execution deadline.
    pub deadline: Instant,
    /// The subject this run is counted against (`max_runs_per_subject`),
    /// given back when it ends or is refused.
    pub charged: Option<Arc<str>>,
    /// How it ends when that passes.
    pub expiry: Expiry,
}

/// A change to the run store, for the owner to apply.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreOp {
    Begin {
        id: Arc<str>,
        owner: Option<Arc<str>>,
        deadline_unix_ms: u64,
    },
    Append {
        id: Arc<str>,
        seq: u64,
        text: Utf8Bytes,
    },
    /// The run ended after event `last_seq`.
    Finish { id: Arc<str>, last_seq: u64 },
    /// `follower` no longer follows run `id`.
    Unfollow { id: Arc<str>, follower: Follower },
}

/// What the owner must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send `msg` (an event's text, or a raw message) to the connection.
    Send {
        conn: ConnRef,
        msg: Message,
    },
    Store(StoreOp),
    /// Stop the source of run `run` (its cancel flag is set already).
    Stop {
        run: u64,
    },
    /// The connection follows no run any more (a drain waiting for its
    /// runs may close it now).
    Settled {
        conn: ConnRef,
    },
    /// Close the connection with `code`.
    Close {
        conn: ConnRef,
        code: u16,
        reason: &'static str,
    },
}

/// How the layer is set up.
#[derive(Clone, Copy, Debug)]
pub struct RunConfig {
    /// The reactor this layer belongs to (store deliveries come back here).
    pub reactor: usize,
    pub execution: Duration,
    pub budget: RunBudget,
    /// False with the store off: a run nobody can resume ends with its
    /// connection.
    pub keeps_runs: bool,
}

#[derive(Debug)]
struct Run {
    id: Arc<str>,
    // Read by `runs_of`, in the tests only.
    #[cfg_attr(not(test), expect(dead_code))]
    subject: Option<Arc<str>>,
    /// Last `seq` given out.
    seq: u64,
    deadline: Instant,
    expiry: Expiry,
    cancel: Arc<AtomicBool>,
    /// Budget used: events and body bytes.
    events: u64,
    bytes: u64,
    /// See [`Ticket::charged`].
    charged: Option<Arc<str>>,
}

/// How a run ends.
#[derive(Debug)]
enum End {
    Done,
    Failed(Failure),
    Expired,
    TooLarge(String),
    /// The client closed its connection with a Close frame.
    Cancelled,
    Dropped,
    /// Its connection is gone and nobody could resume it (store off).
    Abandoned,
    /// The server stopped before it ended.
    Drained,
}

/// The runs of one reactor and what its connections follow.
pub struct Runs {
    cfg: RunConfig,
    metrics: Arc<ServerMetrics>,
    wall: WallClock,
    runs: HashMap<u64, Run>,
    deadlines: BTreeSet<(Instant, u64)>,
    follows: Follows,
    effects: VecDeque<Effect>,
    /// Run numbers and follow tokens, never reused.
    next: u64,
    /// Runs per subject across the instance, when limited.
    subjects: Option<Arc<SubjectRuns>>,
}

impl Runs {
    pub fn new(cfg: RunConfig, metrics: Arc<ServerMetrics>, wall: WallClock) -> Runs {
        Runs {
            cfg,
            metrics,
            wall,
            runs: HashMap::new(),
            deadlines: BTreeSet::new(),
            follows: Follows::default(),
            effects: VecDeque::new(),
            next: 0,
            subjects: None,
        }
    }

    /// The reactor's wall clock for this turn (event `ts`).
    pub fn set_wall(&mut self, wall: WallClock) {
        self.wall = wall;
    }

    /// The next effect to apply.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Runs::expire`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Runs homed here.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Runs `conn` follows (started or resumed).
    pub fn following(&self, conn: ConnRef) -> usize {
        self.follows.count(conn)
    }

    fn next_number(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn send(&mut self, conn: ConnRef, text: String) {
        let msg = Message::Text(text.into());
        self.effects.push_back(Effect::Send { conn, msg });
    }

    fn store(&mut self, op: StoreOp) {
        self.effects.push_back(Effect::Store(op));
    }

    /// An error event answering a message that starts no run: a run id of
    /// its own and `seq` 1, never stored.
    fn refuse_with(&mut self, now: Instant, conn: ConnRef, id: &str, code: &str, message: &str) {
        if code == "overloaded" {
            self.metrics.overloaded_total.fetch_add(1, Relaxed);
        }
        let text = error_event(
            id,
            1,
            self.wall.unix_ms(now),
            &ErrorFields::new(code, message),
        );
        self.send(conn, text);
    }

    /// A message of `conn` (authenticated as `subject`) asks for a run:
    /// its ticket, or `None` with the refusal queued (draining, `conn`
    /// follows too many runs, or the subject has too many in flight). The
    /// ticket goes to [`Runs::start`] or [`Runs::refuse`].
    pub fn prepare(
        &mut self,
        now: Instant,
        conn: ConnRef,
        subject: Option<&Arc<str>>,
        draining: bool,
    ) -> Option<Ticket> {
        let id: Arc<str> = new_run_id().into();
        if draining {
            let m = "server shutting down; reconnect elsewhere";
            self.refuse_with(now, conn, &id, "draining", m);
            return None;
        }
        if self.following(conn) >= MAX_RUNS_PER_CONN {
            tracing::info!(
                conn = conn.id,
                "too many runs on one connection: overloaded"
            );
            let m = "too many runs in flight on this connection; retry later";
            self.refuse_with(now, conn, &id, "overloaded", m);
            return None;
        }
        let charged = self.charge(now, conn, &id, subject)?;
        Some(Ticket {
            run: self.next_number(),
            id,
            cancel: Arc::new(AtomicBool::new(false)),
            deadline: now + self.cfg.execution,
            charged,
            expiry: Expiry::HANDLER,
        })
    }

    /// A source took the run of `ticket` on: it starts, followed by `conn`.
    pub fn start(&mut self, ticket: Ticket, conn: ConnRef, subject: Option<Arc<str>>) {
        self.metrics.runs_total.fetch_add(1, Relaxed);
        let Ticket {
            run,
            id,
            cancel,
            deadline,
            charged,
            expiry,
        } = ticket;
        self.store(StoreOp::Begin {
            id: id.clone(),
            owner: subject.clone(),
            deadline_unix_ms: self.wall.unix_ms(deadline),
        });
        self.follows.link(
            run,
            Follow {
                conn,
                run_id: id.clone(),
                last_seq: 0,
                home: true,
            },
        );
        self.deadlines.insert((deadline, run));
        self.runs.insert(
            run,
            Run {
                id,
                subject,
                seq: 0,
                deadline,
                expiry,
                cancel,
                events: 0,
                bytes: 0,
                charged,
            },
        );
    }

    /// No source took the run of `ticket` on (`code`: why, e.g.
    /// `overloaded`): the message is answered with an error instead.
    pub fn refuse(
        &mut self,
        now: Instant,
        ticket: Ticket,
        conn: ConnRef,
        code: &str,
        message: &str,
    ) {
        self.give_back(ticket.charged.as_ref());
        self.refuse_with(now, conn, &ticket.id, code, message);
    }

    /// Output of run `mail.run`'s source. Output of a run that ended
    /// (expired, cancelled, over budget) is dropped: its source was told.
    pub fn source(&mut self, now: Instant, mail: Mail) {
        let Some(run) = self.runs.get_mut(&mail.run) else {
            return;
        };
        let len = match &mail.what {
            SourceEvent::Event(body) => body.len(),
            SourceEvent::Raw(raw) => raw.len(),
            _ => 0,
        };
        if matches!(mail.what, SourceEvent::Event(_) | SourceEvent::Raw(_)) {
            let budget = self.cfg.budget;
            let bytes = run.bytes.saturating_add(len as u64);
            if run.events + 1 > budget.max_events {
                let why = format!("the run passed its budget of {} events", budget.max_events);
                return self.end(now, mail.run, End::TooLarge(why));
            }
            if bytes > budget.max_bytes {
                let why = format!("the run passed its budget of {} bytes", budget.max_bytes);
                return self.end(now, mail.run, End::TooLarge(why));
            }
            run.events += 1;
            run.bytes = bytes;
        }
        match mail.what {
            SourceEvent::Event(body) => {
                run.seq += 1;
                let seq = run.seq;
                let id = run.id.clone();
                let text = Utf8Bytes::from(seal(body, &id, seq, self.wall.unix_ms(now)));
                self.store(StoreOp::Append {
                    id,
                    seq,
                    text: text.clone(),
                });
                self.forward(mail.run, seq, text);
            }
            SourceEvent::Raw(raw) => {
                // The run's own connection only: followers through the
                // store read stored events, and a raw message is not one.
                if let Some(conn) = self.follows.conn_of(mail.run) {
                    let msg = raw.into_message();
                    self.effects.push_back(Effect::Send { conn, msg });
                }
            }
            SourceEvent::Done => self.end(now, mail.run, End::Done),
            SourceEvent::Failed(f) => self.end(now, mail.run, End::Failed(f)),
            SourceEvent::Dropped => self.end(now, mail.run, End::Dropped),
        }
    }

    /// Ends every run whose execution deadline has passed at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, run)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.end(now, run, End::Expired);
        }
    }

    /// Sends event `seq` to whoever follows `token`, once.
    fn forward(&mut self, token: u64, seq: u64, text: Utf8Bytes) {
        if let Some(conn) = self.follows.forward(token, seq) {
            let msg = Message::Text(text);
            self.effects.push_back(Effect::Send { conn, msg });
        }
    }

    /// Ends follow `token`, with how many its connection still follows.
    fn unfollow(&mut self, token: u64) -> Option<(Follow, usize)> {
        self.follows.unlink(token)
    }

    /// Tells the owner that `conn` follows nothing any more, if so.
    fn settle(&mut self, conn: ConnRef, left: usize) {
        if left == 0 {
            self.effects.push_back(Effect::Settled { conn });
        }
    }

    fn end(&mut self, now: Instant, number: u64, end: End) {
        let Some(run) = self.runs.remove(&number) else {
            return;
        };
        self.deadlines.remove(&(run.deadline, number));
        run.cancel.store(true, Relaxed);
        self.give_back(run.charged.as_ref());
        if !matches!(end, End::Done | End::Failed(_)) {
            self.effects.push_back(Effect::Stop { run: number });
        }
        let m = &self.metrics;
        let execution;
        let error: Option<ErrorFields> = match &end {
            End::Done | End::Abandoned => None,
            End::Failed(f) => Some(ErrorFields {
                code: f.code,
                message: &f.message,
                phase: f.phase,
                retry_after_ms: f.retry_after_ms,
            }),
            End::Expired => {
                m.timeout(TimeoutPhase::Execution);
                tracing::info!(run_id = %run.id, "execution deadline passed; run cancelled");
                execution = format!(
                    "the run did not finish within {}",
                    crate::settings::secs(self.cfg.execution)
                );
                Some(ErrorFields {
                    code: run.expiry.code,
                    message: &execution,
                    phase: run.expiry.phase,
                    retry_after_ms: None,
                })
            }
            End::TooLarge(why) => {
                m.runs_too_large_total.fetch_add(1, Relaxed);
                tracing::info!(run_id = %run.id, "{why}; run cancelled");
                Some(ErrorFields::new("run_too_large", why))
            }
            End::Cancelled => {
                m.runs_cancelled_total.fetch_add(1, Relaxed);
                Some(ErrorFields::new(
                    "cancelled",
                    "the client closed the connection",
                ))
            }
            End::Drained => Some(ErrorFields::new(
                "draining",
                "the server shut down before the run ended; retry elsewhere",
            )),
            End::Dropped => {
                m.run_events_dropped_total.fetch_add(1, Relaxed);
                tracing::warn!(run_id = %run.id, "an event found the mailbox full; run ended");
                let why = "the server could not keep up with this run's events";
                Some(ErrorFields::new("overloaded", why))
            }
        };
        let mut last = run.seq;
        if let Some(fields) = error {
            last += 1;
            let text = Utf8Bytes::from(error_event(&run.id, last, self.wall.unix_ms(now), &fields));
            self.store(StoreOp::Append {
                id: run.id.clone(),
                seq: last,
                text: text.clone(),
            });
            self.forward(number, last, text);
        }
        if !matches!(end, End::Abandoned) {
            self.store(StoreOp::Finish {
                id: run.id.clone(),
                last_seq: last,
            });
        }
        if let Some((f, left)) = self.unfollow(number) {
            if matches!(&end, End::Failed(f) if f.close) {
                self.effects.push_back(Effect::Close {
                    conn: f.conn,
                    code: 1011,
                    reason: "handler failure",
                });
            }
            self.settle(f.conn, left);
        }
    }

    /// The server stops: every run still here ends with a `draining`
    /// error (stored, so a resume elsewhere learns how it ended) and its
    /// source is stopped.
    pub fn shutdown(&mut self, now: Instant) {
        let numbers: Vec<u64> = self.runs.keys().copied().collect();
        for n in numbers {
            self.end(now, n, End::Drained);
        }
    }

    /// Runs homed here that `subject` started.
    #[cfg(test)]
    pub fn runs_of(&self, subject: &str) -> usize {
        self.runs
            .values()
            .filter(|r| r.subject.as_deref() == Some(subject))
            .count()
    }

    /// `conn`'s client sent a Close frame: it ended the session, so the
    /// runs it started are cancelled (a later resume reads how they
    /// ended). Runs it resumed are left to finish: they may belong to
    /// another instance.
    pub fn peer_closed(&mut self, now: Instant, conn: ConnRef) {
        for token in self.follows.of(conn) {
            if self.runs.contains_key(&token) {
                self.end(now, token, End::Cancelled);
            }
        }
    }

    /// `conn` is gone: runs it started go on without it (or end, when the
    /// store is off, since nobody could ever read their events); runs it
    /// resumed are unfollowed.
    pub fn conn_gone(&mut self, now: Instant, conn: ConnRef) {
        for token in self.follows.of(conn) {
            let Some((f, _)) = self.follows.unlink(token) else {
                continue;
            };
            if !f.home {
                let follower = Follower {
                    reactor: self.cfg.reactor,
                    key: conn.key,
                    conn_id: conn.id,
                    token,
                };
                self.store(StoreOp::Unfollow {
                    id: f.run_id,
                    follower,
                });
            } else if self.cfg.keeps_runs {
                self.metrics.runs_detached_total.fetch_add(1, Relaxed);
                tracing::debug!(run_id = %f.run_id, "connection lost; the run goes on");
            } else {
                self.end(now, token, End::Abandoned);
            }
        }
    }
}
