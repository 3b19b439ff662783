//! The server: one `socket2` listener, N reactor threads that each drive
//! their own connections, and the lifecycle around them (start, join,
//! shutdown handle).
//!
//! Reactor 0 owns the listener and accepts; other reactors receive sockets
//! through an inbox plus their waker. This is portable (no `SO_REUSEPORT`,
//! which Windows lacks) and keeps every socket on exactly one thread.
//!
//! Parts, one job each: `config` (what to start, validated once),
//! `worker` (one reactor thread's turn loop: accept, drive connections,
//! answer their events, apply the run layer's effects), `events` (the
//! answer to each event a connection reports), `entry` (a
//! connection as the worker keeps it), `admission` (auth, subprotocol,
//! breaker, limits, then the app's `open` on the pool and its decision), `messages` (application messages
//! to runs on the pool, and resumes), `agents` with `agent_io` and
//! `processes` (the team's agent: HTTP calls and processes, per reactor),
//! `routes` (health, metrics, the token check), `page` (the built-in
//! client at `/`) and `drain` (graceful shutdown). Runs themselves are
//! the run layer's (`crate::runs`).

mod admission;
mod agent_io;
mod agents;
mod config;
mod drain;
mod entry;
mod events;
mod messages;
mod page;
mod processes;
mod routes;
mod worker;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};

pub use crate::runs::MAX_RUNS_PER_CONN;
#[cfg(feature = "fuzzing")]
pub(crate) use admission::choose_subprotocol;
pub use config::{DroppedLines, ServerConfig, cert_config_error};

use crate::app::App;
use crate::breaker::Breaker;
use crate::frontdoor::{Clients, SubjectRuns};
use crate::metrics::ServerMetrics;
use crate::reactor::{Mailbox, Reactor, ReactorStats, Waker};
use crate::runs::Mail;
use crate::source::command::pipes::ProcMail;
use crate::source::pool::{Decided, Pool};
use crate::source::upstream::resolve::{Resolved, Resolver};
use crate::store::{Deliveries, Store};
use worker::Worker;

/// State shared by every reactor thread.
struct Shared {
    cfg: ServerConfig,
    metrics: Arc<ServerMetrics>,
    stats: Vec<Arc<ReactorStats>>,
    wakers: Vec<Arc<Waker>>,
    /// Accepted sockets (and their peers) handed to each reactor.
    inboxes: Vec<Mutex<Vec<(TcpStream, IpAddr)>>>,
    /// Each reactor's mail from its runs' sources, bounded in bytes.
    mailboxes: Vec<Arc<Mailbox<Mail>>>,
    /// Each reactor's answers from the application's `open` (one per
    /// connection waiting for one: bounded by the connections).
    decisions: Vec<Arc<Mailbox<Decided>>>,
    /// Each reactor's deliveries from the run store.
    deliveries: Deliveries,
    store: Store,
    breaker: Mutex<Breaker>,
    /// The agent's circuit breaker (SPEC §5), shared by every reactor.
    agent_breaker: Mutex<Breaker>,
    /// Name lookups for agent calls, off the reactors; each reactor's
    /// answers come back through its mailbox.
    resolver: Option<Resolver>,
    resolved: Vec<Arc<Mailbox<Resolved>>>,
    /// Each reactor's mail from its agent processes' pipes (one chunk in
    /// flight per process: bounded by `agent_max_procs`).
    proc_mail: Vec<Arc<Mailbox<ProcMail>>>,
    pool: Option<Pool>,
    draining: AtomicBool,
    started: Instant,
    /// Live TCP sockets (any phase); bounded by `max_sockets`.
    sockets: AtomicUsize,
    max_sockets: usize,
    /// Open connections and new-connection buckets per client address,
    /// when those limits are on.
    clients: Option<Clients>,
    /// Runs per subject across reactors, when limited.
    subjects: Option<Arc<SubjectRuns>>,
}

impl Shared {
    fn agent_breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.agent_breaker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts a drain from any thread (signal handler, tests, embedding code).
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Starts a graceful drain and returns at once: no new sessions
    /// (`/ws` answers 503 + `Retry-After`, `/health` 503 `draining`), every
    /// open connection gets close 1001 after its runs (at most half the
    /// `close` deadline), and each reactor exits once its connections are
    /// gone or `close` has passed. [`Server::join`] waits for that. Calling
    /// it again does nothing more.
    pub fn shutdown(&self) {
        self.shared.draining.store(true, Relaxed);
        for w in &self.shared.wakers {
            // A failed wake is covered by the cap: the flag is seen next turn.
            let _ = w.wake();
        }
    }

    /// Test hook: drop every wake signal from now on (lost wakeups), so the
    /// drain must be noticed through the cap. Hidden: for the tests, not an
    /// API.
    #[doc(hidden)]
    pub fn suppress_wakers(&self, on: bool) {
        for w in &self.shared.wakers {
            w.suppress(on);
        }
    }
}

/// A running server.
///
/// ```no_run
/// use pollcap::server::{Server, ServerConfig};
/// use pollcap::settings::Settings;
///
/// // Built-in defaults plus the process environment, as `pollcap serve`.
/// let settings = Settings::from_process(&[]).expect("valid settings");
/// let server = Server::start(ServerConfig::new(settings)).expect("listening");
/// println!("echo server on ws://{}/ws", server.local_addr());
/// let stop = server.shutdown_handle(); // e.g. from a signal handler
/// stop.shutdown();
/// server.join().expect("drained");
/// ```
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

impl Server {
    /// Binds and starts every reactor thread.
    pub fn start(cfg: ServerConfig) -> io::Result<Server> {
        let s = &cfg.settings;
        s.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let std_listener = crate::platform::bind_listener(s.listen, 1024)?;
        let local_addr = std_listener.local_addr()?;
        let listener = TcpListener::from_std(std_listener);

        let mut reactors = Vec::with_capacity(s.threads);
        for _ in 0..s.threads {
            reactors.push(Reactor::new(s.backend, s.poll_cap)?);
        }
        let max_sockets = s.limits.max_connections + 1024;
        let pool = match cfg.app {
            App::Handler(_) => Some(Pool::new(s.pool_threads, s.pool_queue, s.pool_queue_bytes)?),
            App::Echo => None,
        };
        let deliveries: Deliveries = reactors
            .iter()
            .map(|r| Arc::new(Mailbox::new(r.waker())))
            .collect();
        let store = Store::start(&s.store, s.resume, deliveries.clone())?;
        // The mail waiting for one reactor: bounded like the input its
        // handlers hold (and never below one run's whole budget).
        let mail_budget = s
            .pool_queue_bytes
            .max(usize::try_from(s.run_budget.max_bytes).unwrap_or(usize::MAX));
        let shared = Arc::new(Shared {
            deliveries,
            store,
            metrics: Arc::default(),
            stats: reactors.iter().map(|r| r.stats()).collect(),
            wakers: reactors.iter().map(|r| r.waker()).collect(),
            inboxes: (0..s.threads).map(|_| Mutex::new(Vec::new())).collect(),
            mailboxes: reactors
                .iter()
                .map(|r| Arc::new(Mailbox::bounded(r.waker(), mail_budget)))
                .collect(),
            decisions: reactors
                .iter()
                .map(|r| Arc::new(Mailbox::new(r.waker())))
                .collect(),
            breaker: Mutex::new(Breaker::new(s.breaker_threshold, s.breaker_recovery)),
            agent_breaker: Mutex::new(Breaker::new(
                s.agent.breaker_threshold,
                s.agent.breaker_recovery,
            )),
            resolver: match cfg.upstream {
                Some(_) => Some(Resolver::start()?),
                None => None,
            },
            resolved: reactors
                .iter()
                .map(|r| Arc::new(Mailbox::new(r.waker())))
                .collect(),
            proc_mail: reactors
                .iter()
                .map(|r| Arc::new(Mailbox::new(r.waker())))
                .collect(),
            pool,
            draining: AtomicBool::new(false),
            started: reactors[0].now(),
            sockets: AtomicUsize::new(0),
            max_sockets,
            clients: Clients::new(&s.clients, s.limits.max_connections),
            subjects: SubjectRuns::new(s.clients.max_runs_per_subject),
            cfg,
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

    /// The address the listener is bound to: the real port when the settings
    /// asked for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that starts the drain from any thread (a signal handler, a
    /// test, the embedding code); clone it freely.
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
