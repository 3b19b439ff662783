//! One reactor thread's turn loop: wait, then accept, drive ready
//! connections, deliver handler mail, run expired deadlines — answering
//! every event each connection reports — and finally sync each touched
//! connection's poller interest and timer with what it now needs.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use slab::Slab;

use super::runs::{self, HomeRuns, RunCx, RunRef};
use super::{Shared, admission, routes};
use crate::app::{App, Session};
use crate::conn::{Conn, Cx, Event};
use crate::http::{self, Request};
use crate::platform;
use crate::reactor::{Interest, Reactor, TimerId};
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

/// One connection and what the worker keeps beside it.
pub(super) struct Entry {
    pub conn: Conn<Stream>,
    pub timer: TimerId,
    pub interest: Interest,
    /// Set once admitted: the connection holds a `max_connections` slot
    /// and the application's `close` is owed.
    pub session: Option<Arc<Session>>,
    /// The runs it follows: started here, or resumed.
    pub runs: Vec<RunRef>,
}

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
    /// The runs started on this reactor, and their one timer.
    pub(super) home: HomeRuns,
    pub(super) runs_timer: TimerId,
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
            home: HomeRuns::default(),
            runs_timer,
        })
    }

    pub(super) fn run(mut self) -> io::Result<()> {
        tracing::debug!(reactor = self.index, "reactor started");
        crate::deflate::stats::bind(&self.shared.metrics.deflate);
        loop {
            let turn = if self.backlog.is_empty() {
                self.reactor.turn()?
            } else {
                self.reactor.turn_busy()?
            };
            let now = turn.now;
            if self.index == 0 && self.shared.cfg.tls.is_some() && platform::take_sighup() {
                self.reload_certificates("SIGHUP");
            }
            if turn.woken {
                self.take_inbox(now);
                self.take_mail(now);
                self.take_deliveries(now);
                if self.drain.is_none() && self.shared.draining.load(Relaxed) {
                    self.start_drain(now);
                }
            }
            for i in 0..self.reactor.events().len() {
                let ev = self.reactor.events()[i];
                if ev.token == LISTENER {
                    self.accept(now);
                } else {
                    self.drive(ev.token, now, |e, cx, _| {
                        e.conn.handle_io(ev.readable, ev.writable, cx)
                    });
                }
            }
            while let Some(token) = self.reactor.pop_expired() {
                match token {
                    SWEEP => self.audit(now),
                    ACCEPT => self.resume_accept(now),
                    DRAIN => self.drain_deadline(),
                    RUNS => self.expire_runs(now),
                    key => self.drive(key, now, |e, cx, _| e.conn.handle_timeout(cx)),
                }
            }
            for key in std::mem::take(&mut self.backlog) {
                self.drive(key, now, |e, cx, _| {
                    if e.conn.has_more_input() {
                        e.conn.handle_io(true, false, cx);
                    }
                });
            }
            if self.drain.is_some() && self.conns.is_empty() {
                tracing::debug!(reactor = self.index, "drained");
                return Ok(());
            }
        }
    }

    /// Calls `f` on connection `key`, answers every event it reports
    /// (answers may report more), reads on while a message left input
    /// behind (up to [`READ_BUDGET`] messages; the rest waits for the
    /// backlog), flushes the answers together, then syncs the connection
    /// with the reactor.
    pub(super) fn drive(
        &mut self,
        key: usize,
        now: Instant,
        f: impl FnOnce(&mut Entry, &mut Cx, &mut RunCx),
    ) {
        let wall = self.reactor.wall();
        let Worker {
            shared,
            conns,
            events,
            spare,
            index,
            drain,
            backlog,
            home,
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
        let mut rc = RunCx {
            shared,
            reactor: *index,
            wall,
            draining: drain.is_some(),
            home,
        };
        f(e, &mut cx, &mut rc);
        let mut budget = READ_BUDGET;
        loop {
            while !cx.events.is_empty() {
                std::mem::swap(spare, cx.events);
                for ev in spare.drain(..) {
                    answer(&mut rc, key, e, ev, &mut cx);
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
        self.arm_runs_timer();
        self.sync(key);
    }

    /// [`Worker::drive`] on connection `key` if it is still connection
    /// `conn_id` (the slot may have been reused).
    pub(super) fn drive_conn(
        &mut self,
        key: usize,
        conn_id: u64,
        now: Instant,
        f: impl FnOnce(&mut Entry, &mut Cx, &mut RunCx),
    ) {
        if self.conns.get(key).is_some_and(|e| e.conn.id() == conn_id) {
            self.drive(key, now, f);
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let stream = match listener.accept() {
                Ok((s, _peer)) => s,
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
                self.add(stream, now);
            } else {
                self.shared.inboxes[target]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(stream);
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
        for s in streams {
            self.add(s, now);
        }
    }

    /// Delivers what the run store has for connections following runs.
    fn take_deliveries(&mut self, now: Instant) {
        for d in self.shared.deliveries[self.index].take() {
            self.drive_conn(d.key, d.conn_id, now, |e, cx, _| {
                runs::on_delivery(e, d.token, d.what, cx)
            });
        }
    }

    fn add(&mut self, stream: TcpStream, now: Instant) {
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
        self.conns.insert(Entry {
            conn,
            timer,
            interest: Interest::READABLE,
            session: None,
            runs: Vec::new(),
        });
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
        self.detach_runs(key, &mut e);
        if let Some(s) = e.conn.stream_mut() {
            let _ = self.reactor.deregister_before_close(s);
        }
        self.reactor.timers().remove(e.timer);
        if let Some(session) = &e.session {
            self.shared.metrics.open.fetch_sub(1, Relaxed);
            if let App::Handler(h) = &self.shared.cfg.app {
                h.close(session);
            }
        }
        self.shared.sockets.fetch_sub(1, Relaxed);
    }

    /// The audit sweep: any connection whose phase deadline has passed while
    /// the queue holds no earlier-or-equal deadline for it was missed.
    fn audit(&mut self, now: Instant) {
        self.shared.store.sweep(now);
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
            self.drive(key, now, |e, cx, _| e.conn.handle_timeout(cx));
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

/// Answers one event of connection `key`: the decisions of SPEC §4–§5.
fn answer(rc: &mut RunCx, key: usize, e: &mut Entry, ev: Event, cx: &mut Cx) {
    let sh = rc.shared;
    let m = &sh.metrics;
    match ev {
        Event::Request(_) if e.conn.stream_mut().is_some_and(|s| s.plain_on_tls_port()) => {
            m.tls_plaintext_total.fetch_add(1, Relaxed);
            tracing::info!(conn = e.conn.id(), "plain-text request on the TLS port");
            let r = http::text(
                400,
                "Bad Request",
                "this port speaks TLS: use https:// or wss://\n",
            );
            e.conn.respond(r, cx);
        }
        Event::Request(head) => match http::classify(&head, &sh.cfg.settings.ws_path) {
            Request::Route(route) => {
                let r = routes::render(sh, route, &head, cx.now, rc.wall);
                e.conn.respond(r, cx);
            }
            Request::Reject(r) => e.conn.respond(r, cx),
            Request::Upgrade(u) => match admission::admit(sh, &u, e.conn.id(), cx.now, rc.wall) {
                Ok(a) => {
                    e.session = Some(a.session);
                    e.conn.accept(a.protocol, cx);
                }
                Err(r) => e.conn.respond(r, cx),
            },
        },
        Event::Status(status) => m.http_status(status),
        Event::Opened { handshake } => {
            m.http_status(101);
            m.upgrades_total.fetch_add(1, Relaxed);
            m.handshake_latency.record_us(handshake.as_micros() as u64);
        }
        Event::Message(msg) => runs::on_message(rc, key, e, msg, cx),
        Event::PeerClosed => runs::on_peer_closed(rc, e, cx.now),
        Event::Timeout(phase) => m.timeout(phase),
        Event::CloseSent(code) => m.close_sent(code),
        Event::Compacted => {
            m.buffer_compactions_total.fetch_add(1, Relaxed);
        }
        Event::TransportFailed => {
            m.tls_handshake_failures_total.fetch_add(1, Relaxed);
        }
        Event::Lingered { end, discarded } => m.lingered(end, discarded),
    }
}
