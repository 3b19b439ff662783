//! The server: one `socket2` listener, N reactor threads that each drive
//! their own connections, accepted sockets handed out round-robin, the audit
//! sweep, and the graceful drain of SPEC §7.
//!
//! Reactor 0 owns the listener and accepts; other reactors receive sockets
//! through an inbox plus their waker. This is portable (no `SO_REUSEPORT`,
//! which Windows lacks) and keeps every socket on exactly one thread.
//!
//! Drain: "stop accepting" is read as "stop accepting WebSocket sessions":
//! the listener stays open so `/health` can answer 503 `draining` to load
//! balancers, `/ws` answers 503 + `Retry-After`, every open connection gets
//! close 1001, and each reactor exits once its connections are gone or the
//! `close` deadline has passed.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use slab::Slab;

use crate::app::{self, App, Inbound, Mailbox, Pool, Session};
use crate::auth::Auth;
use crate::breaker::Breaker;
use crate::conn::{Conn, ConnConfig, Host, Limits};
use crate::http::{self, Response, Route};
use crate::metrics::{BreakerView, Report, ServerMetrics};
use crate::reactor::{Interest, Reactor, ReactorStats, TimerId, Waker};
use crate::settings::{ConfigError, Settings};

/// Handler pool threads by default: handlers mostly wait (pacing, I/O), and
/// threads are cheap next to an unbounded queue.
pub const DEFAULT_POOL_THREADS: usize = 16;
/// Handler queue capacity by default (full: `overloaded` events).
pub const DEFAULT_POOL_QUEUE: usize = 1024;

/// Everything needed to start a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub settings: Settings,
    pub limits: Limits,
    /// Reactor threads (≥ 1).
    pub threads: usize,
    pub ws_path: String,
    pub app: App,
    /// Token checks; `None` = authentication off (loopback only, enforced
    /// by the binary).
    pub auth: Option<Auth>,
    /// Failure threshold and recovery time (profile defaults).
    pub breaker: (u32, Duration),
    /// Handler pool threads and queue capacity (for handler applications).
    pub pool_threads: usize,
    pub pool_queue: usize,
}

impl ServerConfig {
    /// Defaults for everything but the settings.
    pub fn new(settings: Settings) -> ServerConfig {
        let breaker = settings.profile.breaker();
        ServerConfig {
            settings,
            limits: Limits::default(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ws_path: "/ws".into(),
            app: App::Echo,
            auth: None,
            breaker,
            pool_threads: DEFAULT_POOL_THREADS,
            pool_queue: DEFAULT_POOL_QUEUE,
        }
    }

    /// Checks the limits; each error names the setting, value and rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let positive = [
            ("--max-message", l.max_message),
            ("--max-frame", l.max_frame),
            ("--max-connections", l.max_connections),
            ("--read-buffer", l.read_buffer),
            ("--threads", self.threads),
            ("--pool-threads", self.pool_threads),
            ("--pool-queue", self.pool_queue),
            ("--breaker-threshold", self.breaker.0 as usize),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::new(name, "0", "must be > 0"));
            }
        }
        if self.threads > 256 {
            return Err(ConfigError::new(
                "--threads",
                &self.threads.to_string(),
                "must be at most 256",
            ));
        }
        if l.max_outbound <= l.max_message + 14 {
            return Err(ConfigError::new(
                "--max-outbound",
                &l.max_outbound.to_string(),
                &format!(
                    "must exceed --max-message ({}) + 14 bytes of frame header, or one reply could never be queued",
                    l.max_message
                ),
            ));
        }
        if !self.ws_path.starts_with('/')
            || matches!(self.ws_path.as_str(), "/" | "/health" | "/metrics")
        {
            return Err(ConfigError::new(
                "--ws-path",
                &self.ws_path,
                "must start with '/' and not be /, /health or /metrics",
            ));
        }
        Ok(())
    }
}

/// State shared by every reactor thread.
struct Shared {
    settings: Settings,
    conn: ConnConfig,
    metrics: ServerMetrics,
    stats: Vec<Arc<ReactorStats>>,
    wakers: Vec<Arc<Waker>>,
    inboxes: Vec<Mutex<Vec<TcpStream>>>,
    mailboxes: Vec<Arc<Mailbox>>,
    auth: Option<Auth>,
    breaker: Mutex<Breaker>,
    pool: Option<Pool>,
    draining: AtomicBool,
    started: Instant,
    /// Wall clock at `started`, so event timestamps need no second clock read.
    started_unix_ms: u64,
    /// Live TCP sockets (any phase); bounded by `max_sockets`.
    sockets: AtomicUsize,
    max_sockets: usize,
}

impl Shared {
    fn report(&self, now: Instant) -> Report<'_> {
        let reactors = self.stats.iter().map(|s| s.snapshot()).collect();
        let breaker = {
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            BreakerView {
                state: b.state(now).name(),
                consecutive_failures: b.consecutive_failures(),
                threshold: b.threshold(),
                recovery_s: b.recovery().as_secs_f64(),
                failures_total: b.total_failures,
                rejections_total: b.total_rejections,
                opened_total: b.times_opened,
            }
        };
        Report {
            settings: &self.settings,
            metrics: &self.metrics,
            breaker,
            app: self.conn.app.name(),
            pool: self.pool.as_ref().map(|p| (p.threads(), p.queued())),
            auth: self.auth.is_some(),
            reactors,
            reactor_threads: self.stats.len(),
            draining: self.draining.load(Relaxed),
            uptime: now.saturating_duration_since(self.started),
            max_connections: self.conn.limits.max_connections,
        }
    }
}

/// The view of the server one reactor thread gives its connections.
#[derive(Clone, Copy)]
struct ReactorHost<'a> {
    shared: &'a Shared,
    index: usize,
}

impl Host for ReactorHost<'_> {
    fn config(&self) -> &ConnConfig {
        &self.shared.conn
    }

    fn metrics(&self) -> &ServerMetrics {
        &self.shared.metrics
    }

    fn route(&self, route: Route, now: Instant) -> Response {
        let sh = self.shared;
        let report = sh.report(now);
        match route {
            Route::Health => {
                let (code, reason) = if report.draining {
                    (503, "Service Unavailable")
                } else {
                    (200, "OK")
                };
                http::response(
                    code,
                    reason,
                    "application/json",
                    report.health_json().as_bytes(),
                )
            }
            Route::Metrics => http::response(
                200,
                "OK",
                "text/plain; version=0.0.4; charset=utf-8",
                report.prometheus().as_bytes(),
            ),
            Route::Index => http::response(
                200,
                "OK",
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><title>pollcap</title><h1>pollcap</h1>\
                     <p>WebSocket endpoint: <code>{}</code> · <a href=\"/health\">health</a> · \
                     <a href=\"/metrics\">metrics</a></p>\n",
                    sh.conn.ws_path
                )
                .as_bytes(),
            ),
        }
    }

    fn authenticate(&self, token: Option<&str>, now: Instant) -> Result<Option<String>, Response> {
        let Some(auth) = &self.shared.auth else {
            return Ok(None);
        };
        let unix_s = self.unix_ms(now) / 1000;
        match auth.check(token, unix_s) {
            Ok(id) => Ok(Some(id.subject)),
            Err(e) => {
                self.shared
                    .metrics
                    .auth_failures_total
                    .fetch_add(1, Relaxed);
                let r = http::text(401, "Unauthorized", &format!("{e}\n"));
                Err(http::with_header(r, "WWW-Authenticate", "Bearer"))
            }
        }
    }

    fn admit(&self, session: &Session, now: Instant) -> Result<(), Response> {
        let sh = self.shared;
        let busy = |body: &str, retry: Duration| {
            let r = http::text(503, "Service Unavailable", body);
            http::with_header(r, "Retry-After", &retry.as_secs().max(1).to_string())
        };
        if sh.draining.load(Relaxed) {
            return Err(busy("server draining\n", sh.settings.timeouts.close));
        }
        let permit = sh
            .breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(now)
            .map_err(|r| {
                busy(
                    "circuit breaker open: server failing; retry later\n",
                    r.retry_after,
                )
            })?;
        let fail = |r: Response| {
            sh.breaker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .failure(permit, now);
            Err(r)
        };
        // The connection limit is capacity, not a fault: it answers 503
        // without tripping the breaker (which would turn load into an outage).
        let max = sh.conn.limits.max_connections as u64;
        if sh
            .metrics
            .open
            .fetch_update(Relaxed, Relaxed, |o| (o < max).then_some(o + 1))
            .is_err()
        {
            sh.breaker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .success(permit);
            return Err(busy("too many connections\n", sh.settings.timeouts.close));
        }
        if let App::Handler(h) = &sh.conn.app {
            if sh.pool.as_ref().is_some_and(|p| p.saturated()) {
                sh.metrics.open.fetch_sub(1, Relaxed);
                tracing::warn!(conn = session.conn_id, "handler pool saturated at open");
                return fail(busy("server overloaded\n", sh.settings.timeouts.close));
            }
            if let Err(e) = h.open(session) {
                sh.metrics.open.fetch_sub(1, Relaxed);
                tracing::warn!(conn = session.conn_id, "application refused to open: {e}");
                return fail(http::text(
                    500,
                    "Internal Server Error",
                    &format!("application failed to open the session: {e}\n"),
                ));
            }
        }
        sh.breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .success(permit);
        Ok(())
    }

    fn dispatch(
        &self,
        key: usize,
        session: &Arc<Session>,
        run: u64,
        input: Inbound,
        cancel: Arc<AtomicBool>,
    ) -> bool {
        let sh = self.shared;
        let (App::Handler(h), Some(pool)) = (&sh.conn.app, &sh.pool) else {
            return false;
        };
        let out = app::Outbox::new(
            key,
            session.conn_id,
            run,
            cancel,
            sh.mailboxes[self.index].clone(),
        );
        pool.try_submit(app::job(h.clone(), session.clone(), input, out))
            .is_ok()
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.shared.started_unix_ms
            + now
                .saturating_duration_since(self.shared.started)
                .as_millis() as u64
    }
}

/// Starts a drain from any thread (signal handler, tests, embedding code).
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.shared.draining.store(true, Relaxed);
        for w in &self.shared.wakers {
            // A failed wake is covered by the cap: the flag is seen next turn.
            let _ = w.wake();
        }
    }

    /// Test hook: drop every wake signal from now on (lost wakeups), so the
    /// drain must be noticed through the cap.
    pub fn suppress_wakers(&self, on: bool) {
        for w in &self.shared.wakers {
            w.suppress(on);
        }
    }
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

impl Server {
    /// Binds and starts every reactor thread.
    pub fn start(cfg: ServerConfig) -> io::Result<Server> {
        cfg.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let std_listener = crate::platform::bind_listener(cfg.settings.listen, 1024)?;
        let local_addr = std_listener.local_addr()?;
        let listener = TcpListener::from_std(std_listener);

        let mut reactors = Vec::with_capacity(cfg.threads);
        for _ in 0..cfg.threads {
            reactors.push(Reactor::new(cfg.settings.backend, cfg.settings.poll_cap)?);
        }
        let max_sockets = cfg.limits.max_connections + 1024;
        let pool = match cfg.app {
            App::Handler(_) => Some(Pool::new(cfg.pool_threads, cfg.pool_queue)?),
            App::Echo => None,
        };
        let started = reactors[0].now();
        let shared = Arc::new(Shared {
            conn: ConnConfig {
                timeouts: cfg.settings.timeouts,
                limits: cfg.limits,
                ws_path: cfg.ws_path.clone(),
                app: cfg.app,
            },
            settings: cfg.settings.clone(),
            metrics: ServerMetrics::default(),
            stats: reactors.iter().map(|r| r.stats()).collect(),
            wakers: reactors.iter().map(|r| r.waker()).collect(),
            inboxes: (0..cfg.threads).map(|_| Mutex::new(Vec::new())).collect(),
            mailboxes: reactors
                .iter()
                .map(|r| Arc::new(Mailbox::new(r.waker())))
                .collect(),
            auth: cfg.auth.clone(),
            breaker: Mutex::new(Breaker::new(cfg.breaker.0, cfg.breaker.1)),
            pool,
            draining: AtomicBool::new(false),
            started,
            started_unix_ms: app::unix_ms(),
            sockets: AtomicUsize::new(0),
            max_sockets,
        });

        let mut listener = Some(listener);
        let mut threads = Vec::new();
        for (index, reactor) in reactors.into_iter().enumerate() {
            let worker = Worker::new(index, reactor, listener.take(), shared.clone())?;
            let handle = std::thread::Builder::new()
                .name(format!("pollcap-reactor-{index}"))
                .spawn(move || worker.run())?;
            threads.push(handle);
        }
        Ok(Server {
            shared,
            local_addr,
            threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: self.shared.clone(),
        }
    }

    /// Waits for every reactor thread to finish (after a drain).
    pub fn join(self) -> io::Result<()> {
        for t in self.threads {
            t.join()
                .map_err(|_| io::Error::other("reactor thread panicked"))??;
        }
        Ok(())
    }
}

const LISTENER: usize = usize::MAX - 1;
const SWEEP: usize = usize::MAX - 2;
const DRAIN: usize = usize::MAX - 3;
const ACCEPT: usize = usize::MAX - 4;

/// How long accepting pauses after accept() fails for lack of resources.
/// The connection waits in the backlog meanwhile. Retrying at once would
/// spin (a level-triggered backend reports the listener again every turn)
/// and waiting for the next arrival could strand it (edge-triggered epoll
/// reports nothing new), so the retry is on a timer, as nginx does.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

struct Entry {
    conn: Conn<TcpStream>,
    timer: TimerId,
    interest: Interest,
}

/// One reactor thread and the connections it owns.
struct Worker {
    index: usize,
    reactor: Reactor,
    listener: Option<TcpListener>,
    shared: Arc<Shared>,
    conns: Slab<Entry>,
    next_id: u64,
    rr: usize,
    rng: u64,
    sweep: TimerId,
    drain: Option<TimerId>,
    /// Retries accepting after a resource error; armed only while paused.
    accept_retry: TimerId,
}

impl Worker {
    fn new(
        index: usize,
        mut reactor: Reactor,
        mut listener: Option<TcpListener>,
        shared: Arc<Shared>,
    ) -> io::Result<Worker> {
        if let Some(l) = listener.as_mut() {
            reactor.register(l, LISTENER, Interest::READABLE)?;
        }
        let sweep = reactor.timers().insert(SWEEP);
        let first_sweep = reactor.now() + shared.settings.timeouts.cleanup_interval;
        reactor.timers().set(sweep, Some(first_sweep));
        let accept_retry = reactor.timers().insert(ACCEPT);
        Ok(Worker {
            index,
            reactor,
            listener,
            shared,
            conns: Slab::new(),
            next_id: (index as u64) << 48,
            rr: index,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1),
            sweep,
            drain: None,
            accept_retry,
        })
    }

    fn run(mut self) -> io::Result<()> {
        tracing::debug!(reactor = self.index, "reactor started");
        loop {
            let turn = self.reactor.turn()?;
            let now = turn.now;
            if turn.woken {
                self.take_inbox(now);
                self.take_mail(now);
                if self.drain.is_none() && self.shared.draining.load(Relaxed) {
                    self.start_drain(now);
                }
            }
            for i in 0..self.reactor.events().len() {
                let ev = self.reactor.events()[i];
                if ev.token == LISTENER {
                    self.accept(now);
                } else if let Some(e) = self.conns.get_mut(ev.token) {
                    e.conn.on_ready(
                        ev.readable,
                        ev.writable,
                        now,
                        &ReactorHost {
                            shared: &self.shared,
                            index: self.index,
                        },
                    );
                    self.sync(ev.token);
                }
            }
            while let Some(token) = self.reactor.pop_expired() {
                match token {
                    SWEEP => self.audit(now),
                    ACCEPT => self.resume_accept(now),
                    DRAIN => {
                        let left: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                        tracing::info!(
                            reactor = self.index,
                            left = left.len(),
                            "drain deadline: dropping remaining connections"
                        );
                        for k in left {
                            self.remove(k);
                        }
                    }
                    key => {
                        if let Some(e) = self.conns.get_mut(key) {
                            e.conn.on_timeout(
                                now,
                                &ReactorHost {
                                    shared: &self.shared,
                                    index: self.index,
                                },
                            );
                            self.sync(key);
                        }
                    }
                }
            }
            if self.drain.is_some() && self.conns.is_empty() {
                tracing::debug!(reactor = self.index, "drained");
                return Ok(());
            }
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
            let _ = stream.set_nodelay(true);
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
        if let Some(l) = self.listener.as_mut() {
            if let Err(e) = self.reactor.deregister(l) {
                tracing::warn!("deregistering the listener failed: {e}");
            }
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

    /// Delivers handler output to its connections (if still the same one).
    fn take_mail(&mut self, now: Instant) {
        for mail in self.shared.mailboxes[self.index].take() {
            let Some(e) = self.conns.get_mut(mail.key) else {
                continue;
            };
            if e.conn.id() != mail.conn_id {
                continue; // the slot was reused: that connection is gone
            }
            let host = ReactorHost {
                shared: &self.shared,
                index: self.index,
            };
            e.conn.deliver(mail.run, mail.kind, now, &host);
            self.sync(mail.key);
        }
    }

    fn add(&mut self, mut stream: TcpStream, now: Instant) {
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
        let conn = Conn::new(key, self.next_id, stream, now, jitter);
        let timer = self.reactor.timers().insert(key);
        self.conns.insert(Entry {
            conn,
            timer,
            interest: Interest::READABLE,
        });
        self.sync(key);
    }

    /// After any call into a connection: drop it if done, else update its
    /// poller interest and its one timer.
    fn sync(&mut self, key: usize) {
        let t = self.shared.settings.timeouts;
        let e = &mut self.conns[key];
        if e.conn.is_done() {
            self.remove(key);
            return;
        }
        let want = e.conn.interest();
        if want != e.interest {
            if let Some(s) = e.conn.stream_mut() {
                if let Err(err) = self.reactor.reregister(s, key, want) {
                    tracing::warn!(conn = e.conn.id(), "reregister failed: {err}");
                }
            }
            e.interest = want;
        }
        let deadline = e.conn.next_deadline(&t);
        let timer = e.timer;
        self.reactor.timers().set(timer, deadline);
    }

    fn remove(&mut self, key: usize) {
        let mut e = self.conns.remove(key);
        if let Some(s) = e.conn.stream_mut() {
            let _ = self.reactor.deregister(s);
        }
        self.reactor.timers().remove(e.timer);
        if e.conn.holds_slot() {
            self.shared.metrics.open.fetch_sub(1, Relaxed);
            if let (Some(session), App::Handler(h)) = (e.conn.session(), &self.shared.conn.app) {
                h.close(session);
            }
        }
        self.shared.sockets.fetch_sub(1, Relaxed);
    }

    /// The audit sweep: any connection whose phase deadline has passed while
    /// the queue holds no earlier-or-equal deadline for it was missed.
    fn audit(&mut self, now: Instant) {
        let t = self.shared.settings.timeouts;
        let mut missed = Vec::new();
        for (key, e) in self.conns.iter() {
            let due = e.conn.next_deadline(&t);
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
            self.conns[key].conn.on_timeout(
                now,
                &ReactorHost {
                    shared: &self.shared,
                    index: self.index,
                },
            );
            self.sync(key);
        }
        let next = now + t.cleanup_interval;
        let sweep = self.sweep;
        self.reactor.timers().set(sweep, Some(next));
    }

    fn start_drain(&mut self, now: Instant) {
        let close = self.shared.settings.timeouts.close;
        tracing::info!(
            reactor = self.index,
            connections = self.conns.len(),
            "draining"
        );
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.conns[key].conn.shutdown(
                now,
                &ReactorHost {
                    shared: &self.shared,
                    index: self.index,
                },
            );
            self.sync(key);
        }
        let id = self.reactor.timers().insert(DRAIN);
        self.reactor
            .timers()
            .set(id, Some(now + close + Duration::from_millis(1)));
        self.drain = Some(id);
    }
}
