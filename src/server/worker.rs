//! One reactor thread's turn loop: wait, then accept, drive ready
//! connections, hand run mail and store deliveries to the run layer, run
//! expired deadlines — answering every event each connection reports and
//! applying every effect the run layer asks for — and finally sync each
//! touched connection's poller interest and timer with what it now needs.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use slab::Slab;

use super::agents::{AGENT, AgentStart, Agents};
use super::entry::{Admission, Entry};
use super::events::{answer, apply_here};
use super::messages::Answer;
use super::{Shared, admission};
use crate::app::App;
use crate::conn::{Conn, Cx, Event};
use crate::platform;
use crate::reactor::{Interest, Reactor, TimerId};
use crate::runs::{ConnRef, Effect, RunConfig, Runs, StoreOp};
use crate::store::RunStart;
use crate::stream::Stream;
use crate::tls::TlsStream;

pub(super) const LISTENER: usize = usize::MAX - 1;
const SWEEP: usize = usize::MAX - 2;
pub(super) const DRAIN: usize = usize::MAX - 3;
const ACCEPT: usize = usize::MAX - 4;
/// The earliest execution deadline of the runs homed here.
const RUNS: usize = usize::MAX - 5;

/// Messages one connection may have answered in one go; past it, the
/// connection waits for the next turn (which does not block) so that
/// other connections and due deadlines get their turn. A peer that keeps
/// its socket full, or answers every reply at once, cannot pin a reactor.
const READ_BUDGET: u32 = 64;

/// How long accepting pauses after accept() fails for lack of resources.
/// The connection waits in the backlog meanwhile. Retrying at once would
/// spin (a level-triggered backend reports the listener again every turn)
/// and waiting for the next arrival could strand it (edge-triggered epoll
/// reports nothing new), so the retry is on a timer, as nginx does.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// One reactor thread and the connections it owns.
pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) reactor: Reactor,
    listener: Option<TcpListener>,
    pub(super) shared: Arc<Shared>,
    pub(super) conns: Slab<Entry>,
    /// Events reported by the connection being driven, and a spare list
    /// to swap with while they are answered (no allocation per call).
    events: Vec<Event>,
    spare: Vec<Event>,
    next_id: u64,
    rr: usize,
    rng: u64,
    sweep: TimerId,
    pub(super) drain: Option<TimerId>,
    /// Retries accepting after a resource error; armed only while paused.
    accept_retry: TimerId,
    /// Connections that stopped at their read budget with input left,
    /// resumed after the next (non-blocking) turn.
    backlog: Vec<usize>,
    /// The run layer: the runs started on this reactor and what each
    /// connection follows; its one timer (the earliest execution
    /// deadline) and where that timer is armed now.
    pub(super) runs: Runs,
    runs_timer: TimerId,
    runs_armed: Option<Instant>,
    /// Effects of the run layer are being applied (applying them drives
    /// connections, which may queue more: the outer loop takes those).
    applying: bool,
    /// Effects taken out of the run layer, in order, not applied yet.
    deferred: VecDeque<Effect>,
    /// Agent runs asked for during a drive, started after it.
    pub(super) agent_starts: Vec<AgentStart>,
    /// The agent calls of this reactor.
    pub(super) agents: Agents,
    /// This turn's clock reading.
    now: Instant,
}

impl Worker {
    pub(super) fn new(
        index: usize,
        mut reactor: Reactor,
        mut listener: Option<TcpListener>,
        shared: Arc<Shared>,
    ) -> io::Result<Worker> {
        if let Some(l) = listener.as_mut() {
            reactor.register(l, LISTENER, Interest::READABLE)?;
        }
        reactor.set_slack(shared.cfg.settings.timer_slack);
        let sweep = reactor.timers().insert(SWEEP);
        let first_sweep = reactor.now() + shared.cfg.settings.timeouts.cleanup_interval;
        // The audit is a soft deadline: it may run up to a slack late.
        reactor.timers().set_soft(sweep, Some(first_sweep));
        let accept_retry = reactor.timers().insert(ACCEPT);
        let runs_timer = reactor.timers().insert(RUNS);
        let s = &shared.cfg.settings;
        let runs = Runs::new(
            RunConfig {
                reactor: index,
                execution: s.timeouts.execution,
                budget: s.run_budget,
                keeps_runs: shared.store.keeps_runs(),
            },
            shared.metrics.clone(),
            reactor.wall(),
        )
        .with_subject_limit(shared.subjects.clone());
        let now = reactor.now();
        Ok(Worker {
            index,
            reactor,
            listener,
            shared,
            conns: Slab::new(),
            events: Vec::new(),
            spare: Vec::new(),
            next_id: (index as u64) << 48,
            rr: index,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1),
            sweep,
            drain: None,
            accept_retry,
            backlog: Vec::new(),
            runs,
            runs_timer,
            runs_armed: None,
            applying: false,
            deferred: VecDeque::new(),
            agent_starts: Vec::new(),
            agents: Agents::default(),
            now,
        })
    }

    pub(super) fn run(mut self) -> io::Result<()> {
        tracing::debug!(reactor = self.index, "reactor started");
        crate::deflate::stats::bind(&self.shared.metrics.deflate);
        loop {
            let turn = if self.backlog.is_empty() && self.agents.backlog.is_empty() {
                self.reactor.turn()?
            } else {
                self.reactor.turn_busy()?
            };
            let now = turn.now;
            self.now = now;
            self.runs.set_wall(self.reactor.wall());
            if self.index == 0 && self.shared.cfg.tls.is_some() && platform::take_sighup() {
                self.reload_certificates("SIGHUP");
            }
            if turn.woken {
                self.take_inbox(now);
                self.take_decisions(now);
                self.take_mail(now);
                self.take_deliveries(now);
                self.take_resolved(now);
                self.take_process_mail(now);
                if self.drain.is_none() && self.shared.draining.load(Relaxed) {
                    self.start_drain(now);
                }
            }
            for i in 0..self.reactor.events().len() {
                let ev = self.reactor.events()[i];
                if ev.token == LISTENER {
                    self.accept(now);
                } else if (AGENT..DRAIN).contains(&ev.token) {
                    self.agent_io(ev.token - AGENT, ev.readable, ev.writable, now);
                } else {
                    self.drive(ev.token, now, |e, cx| {
                        e.conn.handle_io(ev.readable, ev.writable, cx)
                    });
                }
            }
            while let Some(token) = self.reactor.pop_expired() {
                match token {
                    SWEEP => self.audit(now),
                    ACCEPT => self.resume_accept(now),
                    DRAIN => self.drain_deadline(),
                    RUNS => {
                        self.runs_armed = None;
                        self.runs.expire(now);
                        self.apply_effects(now);
                    }
                    key if key >= AGENT => self.agent_timeout(key - AGENT, now),
                    key => self.drive(key, now, |e, cx| e.conn.handle_timeout(cx)),
                }
            }
            self.agent_backlog(now);
            for key in std::mem::take(&mut self.backlog) {
                self.drive(key, now, |e, cx| {
                    if e.conn.has_more_input() {
                        e.conn.handle_io(true, false, cx);
                    }
                });
            }
            if self.drain.is_some() && self.conns.is_empty() {
                // Runs nobody follows end with the server: their agent calls
                // close, their processes are stopped (and reaped, then we go).
                self.runs.shutdown(now);
                self.apply_effects(now);
                if self.agents.procs.is_empty() {
                    tracing::debug!(reactor = self.index, "drained");
                    return Ok(());
                }
            }
        }
    }

    /// Calls `f` on connection `key`, answers every event it reports
    /// (answers may report more) and applies at once what the run layer
    /// asks of this connection, reads on while a message left input
    /// behind (up to [`READ_BUDGET`] messages; the rest waits for the
    /// backlog), flushes the answers together, syncs the connection with
    /// the reactor, then applies the run layer's other effects.
    pub(super) fn drive(&mut self, key: usize, now: Instant, f: impl FnOnce(&mut Entry, &mut Cx)) {
        let wall = self.reactor.wall();
        let Worker {
            shared,
            conns,
            events,
            spare,
            index,
            drain,
            backlog,
            runs,
            deferred,
            agent_starts,
            ..
        } = self;
        let Some(e) = conns.get_mut(key) else {
            return;
        };
        let settings = &shared.cfg.settings;
        let mut cx = Cx {
            now,
            timeouts: &settings.timeouts,
            limits: &settings.limits,
            events,
        };
        let mut ax = Answer {
            shared,
            reactor: *index,
            wall,
            draining: drain.is_some(),
            runs,
            agents: agent_starts,
        };
        let here = e.at(key);
        // Inline only when no older effect waits: effects apply in order.
        let inline = deferred.is_empty();
        let mut later = Vec::new();
        f(e, &mut cx);
        let mut budget = READ_BUDGET;
        loop {
            while !cx.events.is_empty() {
                std::mem::swap(spare, cx.events);
                for ev in spare.drain(..) {
                    answer(&mut ax, key, e, ev, &mut cx);
                }
                // What the run layer has for this connection goes out in
                // order with the answers; the rest after the drive.
                while let Some(effect) = ax.runs.poll_effect() {
                    let left = match inline {
                        true => apply_here(here, e, effect, &mut cx),
                        false => Some(effect),
                    };
                    later.extend(left);
                }
            }
            if e.conn.has_more_input() {
                if budget == 0 {
                    if !backlog.contains(&key) {
                        backlog.push(key);
                    }
                } else {
                    budget -= 1;
                    e.conn.handle_io(true, false, &mut cx);
                    continue;
                }
            }
            e.conn.flush(&mut cx);
            if cx.events.is_empty() {
                break;
            }
        }
        self.sync(key);
        self.deferred.extend(later);
        self.apply_effects(now);
        if !self.agent_starts.is_empty() {
            self.start_agents(now);
        }
    }

    /// [`Worker::drive`] on connection `conn` if it is still there (the
    /// slot may have been reused).
    fn drive_conn(&mut self, conn: ConnRef, now: Instant, f: impl FnOnce(&mut Entry, &mut Cx)) {
        if self
            .conns
            .get(conn.key)
            .is_some_and(|e| e.conn.id() == conn.id)
        {
            self.drive(conn.key, now, f);
        }
    }

    /// Applies the run layer's effects until none is left, then arms its
    /// timer. Sends to one connection that come in a row go out in one
    /// drive (one flush).
    pub(super) fn apply_effects(&mut self, now: Instant) {
        if self.applying {
            return; // the loop below, further up the stack, takes them
        }
        self.applying = true;
        loop {
            if self.deferred.is_empty() {
                let runs = &mut self.runs;
                self.deferred
                    .extend(std::iter::from_fn(|| runs.poll_effect()));
            }
            let Some(effect) = self.deferred.pop_front() else {
                break;
            };
            match effect {
                Effect::Send { conn, msg } => {
                    let mut batch = vec![msg];
                    while let Some(Effect::Send { conn: c, .. }) = self.deferred.front()
                        && *c == conn
                    {
                        if let Some(Effect::Send { msg, .. }) = self.deferred.pop_front() {
                            batch.push(msg);
                        }
                    }
                    self.drive_conn(conn, now, |e, cx| {
                        for msg in batch {
                            e.conn.send_run(msg, cx);
                        }
                    });
                }
                Effect::Store(op) => self.store(op, now),
                // Pool runs stop at their cancel flag, already set; an
                // agent call closes its socket.
                Effect::Stop { run } => self.stop_agent(run),
                Effect::Settled { conn } => {
                    self.drive_conn(conn, now, |e, cx| e.conn.runs_settled(cx))
                }
                Effect::Close { conn, code, reason } => self.drive_conn(conn, now, |e, cx| {
                    tracing::warn!(conn = conn.id, code, "closing: {reason}");
                    e.conn.close(code, reason, cx)
                }),
            }
        }
        self.applying = false;
        let next = self.runs.poll_timeout();
        if next != self.runs_armed {
            self.runs_armed = next;
            let timer = self.runs_timer;
            self.reactor.timers().set(timer, next);
        }
    }

    /// Applies one change to the run store.
    fn store(&self, op: StoreOp, now: Instant) {
        let store = &self.shared.store;
        match op {
            StoreOp::Begin {
                id,
                owner,
                deadline_unix_ms,
            } => store.begin(
                &RunStart {
                    id: &id,
                    owner: owner.as_deref(),
                    deadline_unix_ms,
                },
                now,
            ),
            StoreOp::Append { id, seq, text } => store.append(&id, seq, &text, now),
            StoreOp::Finish { id, last_seq } => store.finish(&id, last_seq, now),
            StoreOp::Unfollow { id, follower } => store.unfollow(&id, follower),
        }
    }

    /// Runs connection `key` follows.
    pub(super) fn following(&self, key: usize) -> usize {
        self.conns
            .get(key)
            .map_or(0, |e| self.runs.following(e.at(key)))
    }

    /// Answers the upgrades the application decided on the pool.
    fn take_decisions(&mut self, now: Instant) {
        for d in self.shared.decisions[self.index].take() {
            let waiting = self.conns.get(d.conn.key).is_some_and(|e| {
                e.conn.id() == d.conn.id && matches!(e.admission, Admission::Deciding(_))
            });
            let shared = self.shared.clone();
            if waiting {
                self.drive(d.conn.key, now, |e, cx| {
                    admission::decided(&shared, e, d, cx)
                });
            } else {
                admission::late(&shared, d);
            }
        }
    }

    /// Hands the worker pool's output to the run layer.
    fn take_mail(&mut self, now: Instant) {
        for mail in self.shared.mailboxes[self.index].take() {
            self.runs.source(now, mail);
        }
        self.apply_effects(now);
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (stream, peer) = match listener.accept() {
                Ok((s, peer)) => (s, peer.ip()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The peer gave up before we accepted: nothing to pause for.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // EMFILE and friends: the backlog keeps the connection.
                    self.shared
                        .metrics
                        .accept_errors_total
                        .fetch_add(1, Relaxed);
                    tracing::warn!(
                        "accept failed: {e}; pausing accepts for {} ms",
                        ACCEPT_PAUSE.as_millis()
                    );
                    self.pause_accept(now);
                    return;
                }
            };
            let m = &self.shared.metrics;
            m.accepted_total.fetch_add(1, Relaxed);
            if self.shared.sockets.fetch_add(1, Relaxed) >= self.shared.max_sockets {
                self.shared.sockets.fetch_sub(1, Relaxed);
                m.rejected_at_accept_total.fetch_add(1, Relaxed);
                tracing::warn!("socket limit reached; dropping a new connection");
                continue;
            }
            if !platform::ACCEPTED_INHERIT_NODELAY {
                let _ = stream.set_nodelay(true);
            }
            // During a drain nothing is handed to reactors that may be gone.
            let n = self.shared.inboxes.len();
            let target = if self.drain.is_some() {
                self.index
            } else {
                self.rr % n
            };
            self.rr = self.rr.wrapping_add(1);
            if target == self.index {
                self.add(stream, peer, now);
            } else {
                self.shared.inboxes[target]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((stream, peer));
                let _ = self.shared.wakers[target].wake();
            }
        }
    }

    /// Stops watching the listener until `accept_retry` fires.
    fn pause_accept(&mut self, now: Instant) {
        if let Some(l) = self.listener.as_mut()
            && let Err(e) = self.reactor.deregister(l)
        {
            tracing::warn!("deregistering the listener failed: {e}");
        }
        let at = now + ACCEPT_PAUSE;
        self.reactor.timers().set(self.accept_retry, Some(at));
    }

    /// Watches the listener again and accepts what waited in the backlog
    /// (registration alone need not report it with an edge-triggered backend).
    fn resume_accept(&mut self, now: Instant) {
        let Some(l) = self.listener.as_mut() else {
            return;
        };
        if let Err(e) = self.reactor.register(l, LISTENER, Interest::READABLE) {
            tracing::warn!("re-registering the listener failed: {e}");
            self.pause_accept(now);
            return;
        }
        self.accept(now);
    }

    fn take_inbox(&mut self, now: Instant) {
        let streams = std::mem::take(
            &mut *self.shared.inboxes[self.index]
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (s, peer) in streams {
            self.add(s, peer, now);
        }
    }

    /// Hands what the run store has for followers to the run layer.
    fn take_deliveries(&mut self, now: Instant) {
        for d in self.shared.deliveries[self.index].take() {
            self.runs.delivery(d.token, d.what);
        }
        self.apply_effects(now);
    }

    fn add(&mut self, stream: TcpStream, peer: std::net::IpAddr, now: Instant) {
        let mut stream = match &self.shared.cfg.tls {
            Some(certs) => Stream::Tls(Box::new(TlsStream::new(stream, certs.config()))),
            None => Stream::Plain(stream),
        };
        let key = self.conns.vacant_key();
        if let Err(e) = self.reactor.register(&mut stream, key, Interest::READABLE) {
            tracing::warn!("register failed: {e}");
            self.shared.sockets.fetch_sub(1, Relaxed);
            return;
        }
        self.next_id += 1;
        // xorshift: jitter in [0.9, 1.1] spreads heartbeats of a burst.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = 0.9 + 0.2 * (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        let conn = Conn::new(self.next_id, stream, now, jitter);
        let timer = self.reactor.timers().insert(key);
        self.conns.insert(Entry::new(conn, timer, peer));
        self.sync(key);
    }

    /// After any call into a connection: drop it if done, else update its
    /// poller interest and its one timer.
    fn sync(&mut self, key: usize) {
        let t = &self.shared.cfg.settings.timeouts;
        let e = &mut self.conns[key];
        if e.conn.is_done() {
            self.remove(key);
            return;
        }
        let want = e.conn.interest();
        if want != e.interest {
            if let Some(s) = e.conn.stream_mut()
                && let Err(err) = self.reactor.reregister(s, key, want)
            {
                tracing::warn!(conn = e.conn.id(), "reregister failed: {err}");
            }
            e.interest = want;
        }
        let wake = e.conn.poll_timeout(t, self.reactor.slack());
        let timer = e.timer;
        match wake {
            Some(w) if w.soft => self.reactor.timers().set_soft(timer, Some(w.at)),
            w => self.reactor.timers().set(timer, w.map(|w| w.at)),
        }
    }

    pub(super) fn remove(&mut self, key: usize) {
        let mut e = self.conns.remove(key);
        let now = self.now;
        self.runs.conn_gone(now, e.at(key));
        if let Some(s) = e.conn.stream_mut() {
            let _ = self.reactor.deregister_before_close(s);
        }
        self.reactor.timers().remove(e.timer);
        e.give_back_address(&self.shared, now);
        admission::undecided(&self.shared, &mut e, false, now);
        if let Some(session) = e.session() {
            self.shared.metrics.open.fetch_sub(1, Relaxed);
            if let App::Handler(h) = &self.shared.cfg.app {
                h.close(session);
            }
        }
        self.shared.sockets.fetch_sub(1, Relaxed);
        self.apply_effects(now);
    }

    /// The audit sweep: any connection whose phase deadline has passed while
    /// the queue holds no earlier-or-equal deadline for it was missed.
    fn audit(&mut self, now: Instant) {
        self.shared.store.sweep(now);
        if self.index == 0
            && let Some(clients) = &self.shared.clients
        {
            clients.sweep(now);
        }
        let t = self.shared.cfg.settings.timeouts;
        let slack = self.reactor.slack();
        let mut missed = Vec::new();
        for (key, e) in self.conns.iter() {
            let due = e.conn.poll_timeout(&t, slack).map(|w| w.at);
            let queued = self.reactor.timer_deadline(e.timer);
            if due.is_some_and(|d| d < now) && queued.is_none_or(|q| q > now) {
                missed.push(key);
            }
        }
        for key in missed {
            self.shared
                .metrics
                .missed_deadlines_total
                .fetch_add(1, Relaxed);
            tracing::warn!(
                conn = self.conns[key].conn.id(),
                "audit: deadline missed by the queue; handling now"
            );
            self.drive(key, now, |e, cx| e.conn.handle_timeout(cx));
        }
        if self.index == 0
            && let Some(certs) = &self.shared.cfg.tls
            && certs.changed_on_disk()
        {
            self.reload_certificates("the files changed");
        }
        let next = now + t.cleanup_interval;
        let sweep = self.sweep;
        self.reactor.timers().set_soft(sweep, Some(next));
    }

    /// Loads the certificate pair again for new connections; a bad pair is
    /// refused with one warning and a metric, and the old one stays.
    fn reload_certificates(&self, why: &str) {
        let Some(certs) = &self.shared.cfg.tls else {
            return;
        };
        match certs.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded ({why}): new connections get it"),
            Err(e) => tracing::warn!(
                "TLS certificate reload ({why}) refused, the previous one stays: {e}"
            ),
        }
    }
}
