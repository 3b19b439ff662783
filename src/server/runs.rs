//! Messages to the application and the runs they start (SPEC §5): echo
//! inline; for a handler, a run on the worker pool per message (or an
//! `overloaded` / `draining` error event). A run belongs to the reactor of
//! the connection that started it and outlives that connection unless the
//! client ends it with a Close frame: its events are stamped with the
//! reactor's clock, kept in the run store and forwarded to the connection
//! while it is there; its execution deadline ends it with an
//! `execution_timeout` error. A `resume` message follows a run from the
//! store: its stored events after `after_seq`, then the live ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use tungstenite::{Message, Utf8Bytes};

use super::Shared;
use super::worker::{Entry, Worker};
use crate::agent::ErrorFields;
use crate::app::{self, App, Inbound, Mail, MailKind, Outbox};
use crate::conn::{Cx, TimeoutPhase};
use crate::reactor::WallClock;
use crate::store::{Delivery, Follower, ResumeRequest, Resumed, RunStart, new_run_id};

/// Most runs one connection may follow at once (started or resumed); more
/// are answered `overloaded` so that one client cannot fill the shared pool.
pub const MAX_RUNS_PER_CONN: usize = 16;

/// A run that started on this reactor.
pub(super) struct HomeRun {
    id: Arc<str>,
    cancel: Arc<AtomicBool>,
    deadline: Instant,
    /// Last event `seq` (a server error continues the sequence).
    last_seq: u64,
    /// The connection that started it, while it is there: `(key, conn id)`.
    origin: Option<(usize, u64)>,
}

/// The runs of one reactor, by the server's run number.
#[derive(Default)]
pub(super) struct HomeRuns {
    map: HashMap<u64, HomeRun>,
    /// The execution deadline of the run started last, for the worker to
    /// arm its runs timer with (one timer for all: deadlines come in the
    /// order runs start).
    pub arm: Option<Instant>,
}

impl HomeRuns {
    /// The earliest execution deadline, if any run is in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.map.values().map(|r| r.deadline).min()
    }

    /// Runs due at `now`.
    pub fn due(&self, now: Instant) -> Vec<u64> {
        self.map
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// What a connection follows, as the worker must settle it when the
/// connection ends.
#[derive(Debug)]
pub(super) enum RunRef {
    /// A run it started (homed on this reactor).
    Home(u64),
    /// A run it resumed, followed from the store under `token`.
    Follow { token: u64, run_id: Arc<str> },
}

impl RunRef {
    fn number(&self) -> u64 {
        match self {
            RunRef::Home(n) => *n,
            RunRef::Follow { token, .. } => *token,
        }
    }
}

/// What answering a message needs besides the connection.
pub(super) struct RunCx<'a> {
    pub shared: &'a Shared,
    /// This reactor's index (where its runs' mail goes).
    pub reactor: usize,
    pub wall: WallClock,
    pub draining: bool,
    pub home: &'a mut HomeRuns,
}

/// An error event of run `run_id` written by the server, stamped now.
fn error_event(
    wall: WallClock,
    now: Instant,
    run_id: &str,
    seq: u64,
    fields: ErrorFields,
) -> String {
    let mut text = app::event_text("error", run_id, seq, &fields);
    app::stamp(&mut text, wall.unix_ms(now));
    text
}

/// The answer to a resume that cannot be served: `{"type":"error",
/// "code":"resume_unavailable"}` with the run id and a message, and no
/// event of the run. Unknown, expired and foreign runs read the same.
fn resume_error(code: &str, run_id: &str, message: &str) -> Message {
    #[derive(serde::Serialize)]
    struct ResumeError<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        code: &'a str,
        run_id: &'a str,
        message: &'a str,
    }
    let e = ResumeError {
        kind: "error",
        code,
        run_id,
        message,
    };
    Message::text(serde_json::to_string(&e).unwrap_or_default())
}

/// Answers one application message of `e`.
pub(super) fn on_message(rc: &mut RunCx, key: usize, e: &mut Entry, msg: Message, cx: &mut Cx) {
    let sh = rc.shared;
    let (App::Handler(h), Some(pool)) = (&sh.cfg.app, &sh.pool) else {
        // Echo: copying a frame back is cheaper than any hand-off.
        return e.conn.send(msg, cx);
    };
    let input = match msg {
        Message::Text(t) => {
            if let Some(req) = ResumeRequest::parse(t.as_str()) {
                return on_resume(rc, key, e, req, cx);
            }
            Inbound::Text(t.as_str().to_owned())
        }
        Message::Binary(b) => Inbound::Binary(b.to_vec()),
        _ => return,
    };
    let input_bytes = match &input {
        Inbound::Text(t) => t.len(),
        Inbound::Binary(b) => b.len(),
    };
    let run = sh.next_run.fetch_add(1, Relaxed) + 1;
    let run_id = new_run_id();
    let conn_id = e.conn.id();
    let refusal = if rc.draining {
        ErrorFields {
            code: "draining",
            message: "server shutting down; reconnect elsewhere",
        }
    } else {
        let cancel = Arc::new(AtomicBool::new(false));
        let session = e.session.clone().unwrap_or_default();
        let out = Outbox::new(
            run,
            run_id.clone(),
            cancel.clone(),
            sh.mailboxes[rc.reactor].clone(),
        );
        let queued = e.conn.runs_in_flight() < MAX_RUNS_PER_CONN
            && pool
                .try_submit(
                    app::job(h.clone(), session.clone(), input, out),
                    input_bytes,
                )
                .is_ok();
        if queued {
            sh.metrics.runs_total.fetch_add(1, Relaxed);
            let deadline = cx.now + cx.timeouts.execution;
            sh.store.begin(
                &RunStart {
                    id: &run_id,
                    owner: session.subject.as_deref(),
                    deadline_unix_ms: rc.wall.unix_ms(deadline),
                },
                cx.now,
            );
            rc.home.map.insert(
                run,
                HomeRun {
                    id: run_id.into(),
                    cancel,
                    deadline,
                    last_seq: 0,
                    origin: Some((key, conn_id)),
                },
            );
            rc.home.arm = Some(deadline);
            e.conn.follow(run, 0);
            e.runs.push(RunRef::Home(run));
            return;
        }
        sh.metrics.overloaded_total.fetch_add(1, Relaxed);
        tracing::info!(
            conn = conn_id,
            "handler pool full (jobs, message bytes or runs per connection): answering overloaded"
        );
        ErrorFields {
            code: "overloaded",
            message: "server busy; retry later",
        }
    };
    let reply = error_event(rc.wall, cx.now, &run_id, 1, refusal);
    e.conn.send(Message::text(reply), cx);
}

/// A `resume` request: the run's events after `after_seq` from the store,
/// then its live ones, or `resume_unavailable` and nothing else.
fn on_resume(rc: &mut RunCx, key: usize, e: &mut Entry, req: ResumeRequest, cx: &mut Cx) {
    let sh = rc.shared;
    if e.conn.runs_in_flight() >= MAX_RUNS_PER_CONN {
        sh.metrics.overloaded_total.fetch_add(1, Relaxed);
        let m = "too many runs in flight on this connection; retry later";
        return e.conn.send(resume_error("overloaded", &req.run_id, m), cx);
    }
    let token = sh.next_run.fetch_add(1, Relaxed) + 1;
    let follower = Follower {
        reactor: rc.reactor,
        key,
        conn_id: e.conn.id(),
        token,
    };
    let subject = e.session.as_ref().and_then(|s| s.subject.as_deref());
    let run_id: Arc<str> = req.run_id.as_str().into();
    match sh.store.resume(&req, subject, follower, cx.now) {
        Resumed::Unavailable(why) => {
            tracing::info!(
                conn = e.conn.id(),
                run_id = %req.run_id,
                "resume refused: {why}"
            );
            let m = "the run is unknown, expired or not yours";
            e.conn
                .send(resume_error("resume_unavailable", &req.run_id, m), cx);
        }
        Resumed::Now { backlog, live } => {
            e.conn.follow(token, req.after_seq);
            for (seq, text) in backlog {
                e.conn.run_event(token, seq, text, cx);
            }
            if live {
                e.runs.push(RunRef::Follow { token, run_id });
            } else {
                e.conn.run_finished(token, cx);
            }
        }
        Resumed::Later => {
            e.conn.follow(token, req.after_seq);
            e.runs.push(RunRef::Follow { token, run_id });
        }
    }
}

/// The client sent a Close frame: it ended the session, so the runs it
/// started are cancelled, and their stored events end with a `cancelled`
/// error (a later resume learns how the run ended). Runs it resumed are
/// left to finish: they may run on another instance.
pub(super) fn on_peer_closed(rc: &mut RunCx, e: &mut Entry, now: Instant) {
    let sh = rc.shared;
    e.runs.retain(|r| {
        let RunRef::Home(n) = r else { return true };
        if let Some(run) = rc.home.map.remove(n) {
            run.cancel.store(true, Relaxed);
            let seq = run.last_seq + 1;
            let fields = ErrorFields {
                code: "cancelled",
                message: "the client closed the connection",
            };
            let text = error_event(rc.wall, now, &run.id, seq, fields);
            sh.store.append(&run.id, seq, &text.into(), now);
            sh.store.finish(&run.id, seq, now);
            sh.metrics.runs_cancelled_total.fetch_add(1, Relaxed);
        }
        false
    });
}

/// Something the store has for a connection that follows a run.
pub(super) fn on_delivery(e: &mut Entry, token: u64, what: Delivery, cx: &mut Cx) {
    if let Delivery::Event { seq, text } = what {
        return e.conn.run_event(token, seq, text, cx);
    }
    let Some(at) = e.runs.iter().position(|r| r.number() == token) else {
        return;
    };
    let RunRef::Follow { run_id, .. } = e.runs.swap_remove(at) else {
        return;
    };
    e.conn.run_finished(token, cx);
    match what {
        Delivery::Unavailable(why) => {
            tracing::info!(conn = e.conn.id(), run_id = %run_id, "resume refused: {why}");
            let m = "the run is unknown, expired or not yours";
            e.conn
                .send(resume_error("resume_unavailable", &run_id, m), cx);
        }
        Delivery::Interrupted(why) => {
            tracing::info!(conn = e.conn.id(), run_id = %run_id, "resume interrupted: {why}");
            e.conn
                .send(resume_error("resume_interrupted", &run_id, why), cx);
        }
        Delivery::Event { .. } | Delivery::End => {}
    }
}

/// How a run ended.
pub(super) enum RunEnd {
    /// The handler returned.
    Done,
    /// The handler panicked: `handler_failure`, and its connection closes
    /// 1011 (SPEC §4).
    Panicked(String),
    /// Its execution deadline passed: cancelled, `execution_timeout`.
    Expired,
}

impl Worker {
    /// Delivers the pool's output to the runs of this reactor: each event
    /// is stamped, stored and forwarded to the run's connection if it is
    /// still there. Output of a run that ended (expired, cancelled) is
    /// dropped.
    pub(super) fn take_mail(&mut self, now: Instant) {
        let wall = self.reactor.wall();
        for Mail { run, kind } in self.shared.mailboxes[self.index].take() {
            let Some(h) = self.home.map.get_mut(&run) else {
                continue;
            };
            match kind {
                MailKind::Event { seq, mut text } => {
                    app::stamp(&mut text, wall.unix_ms(now));
                    h.last_seq = seq;
                    let text = Utf8Bytes::from(text);
                    self.shared.store.append(&h.id, seq, &text, now);
                    if let Some((key, conn_id)) = h.origin {
                        self.drive_conn(key, conn_id, now, |e, cx, _| {
                            e.conn.run_event(run, seq, text, cx)
                        });
                    }
                }
                MailKind::Done => self.end_run(run, RunEnd::Done, now),
                MailKind::Panicked(why) => self.end_run(run, RunEnd::Panicked(why), now),
            }
        }
    }

    /// Ends every run whose execution deadline has passed; re-arms the
    /// runs timer for the next.
    pub(super) fn expire_runs(&mut self, now: Instant) {
        for run in self.home.due(now) {
            self.end_run(run, RunEnd::Expired, now);
        }
        let next = self.home.next_deadline();
        let timer = self.runs_timer;
        self.reactor.timers().set(timer, next);
    }

    /// Arms the runs timer for a run just started, unless it is due sooner.
    pub(super) fn arm_runs_timer(&mut self) {
        if let Some(at) = self.home.arm.take() {
            let timer = self.runs_timer;
            if self.reactor.timer_deadline(timer).is_none_or(|t| t > at) {
                self.reactor.timers().set(timer, Some(at));
            }
        }
    }

    /// Ends `run`: its closing error event if any (continuing its
    /// sequence), the store told, its connection (if there) told.
    pub(super) fn end_run(&mut self, run: u64, end: RunEnd, now: Instant) {
        let Some(h) = self.home.map.remove(&run) else {
            return;
        };
        let sh = self.shared.clone();
        let wall = self.reactor.wall();
        let error = match &end {
            RunEnd::Done => None,
            RunEnd::Panicked(why) => {
                sh.metrics.handler_panics_total.fetch_add(1, Relaxed);
                tracing::warn!(run_id = %h.id, "handler panicked: {why}; run failed");
                let fields = ErrorFields {
                    code: "handler_failure",
                    message: "the handler failed",
                };
                Some(error_event(wall, now, &h.id, h.last_seq + 1, fields))
            }
            RunEnd::Expired => {
                h.cancel.store(true, Relaxed);
                sh.metrics.timeout(TimeoutPhase::Execution);
                tracing::info!(run_id = %h.id, "execution deadline passed; run cancelled");
                let message = format!(
                    "the handler did not finish within {}",
                    crate::settings::secs(sh.cfg.settings.timeouts.execution)
                );
                let fields = ErrorFields {
                    code: "execution_timeout",
                    message: &message,
                };
                Some(error_event(wall, now, &h.id, h.last_seq + 1, fields))
            }
        };
        let error = error.map(|text| (h.last_seq + 1, Utf8Bytes::from(text)));
        let mut last_seq = h.last_seq;
        if let Some((seq, text)) = &error {
            sh.store.append(&h.id, *seq, text, now);
            last_seq = *seq;
        }
        sh.store.finish(&h.id, last_seq, now);
        let Some((key, conn_id)) = h.origin else {
            return;
        };
        self.drive_conn(key, conn_id, now, |e, cx, _| {
            if let Some((seq, text)) = error {
                e.conn.run_event(run, seq, text, cx);
            }
            e.runs.retain(|r| r.number() != run);
            match end {
                RunEnd::Panicked(_) => {
                    if e.conn.run_failed(run, cx) {
                        tracing::warn!(
                            conn = e.conn.id(),
                            run,
                            "closed 1011 after a handler failure"
                        );
                    }
                }
                RunEnd::Done | RunEnd::Expired => {
                    e.conn.run_finished(run, cx);
                }
            }
        });
    }

    /// Settles what connection `e` followed, as it goes: runs it started
    /// go on without it (or, with the store off, are cancelled, since
    /// nobody could ever read their events); resumed runs are unfollowed.
    pub(super) fn detach_runs(&mut self, key: usize, e: &mut Entry) {
        let sh = self.shared.clone();
        for r in e.runs.drain(..) {
            match r {
                RunRef::Home(n) if sh.store.keeps_runs() => {
                    if let Some(h) = self.home.map.get_mut(&n) {
                        h.origin = None;
                        sh.metrics.runs_detached_total.fetch_add(1, Relaxed);
                        tracing::debug!(run_id = %h.id, "connection lost; the run goes on");
                    }
                }
                RunRef::Home(n) => {
                    if let Some(h) = self.home.map.remove(&n) {
                        h.cancel.store(true, Relaxed);
                    }
                }
                RunRef::Follow { token, run_id } => {
                    let follower = Follower {
                        reactor: self.index,
                        key,
                        conn_id: e.conn.id(),
                        token,
                    };
                    sh.store.unfollow(&run_id, follower);
                }
            }
        }
    }
}
