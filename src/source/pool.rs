//! The worker pool, where every blocking [`Handler`] call runs: fixed
//! sets of threads with bounded queues. A run's job is one
//! `Handler::message` call under its execution deadline (the run layer
//! cancels it; the handler sees [`Outbox::is_cancelled`]) — the pool is
//! the run source behind every handler. An open's job is one
//! `Handler::open` deciding an upgrade, whose [`Decided`] goes back to its
//! reactor through a mailbox; opens have threads of their own, so that
//! runs holding every run thread for seconds cannot make upgrades wait
//! past their handshake deadline (a 503 counted by the breaker: load
//! turned into an outage).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use crate::app::{Decision, Handler, Inbound, Outbox, Request, Session};
use crate::metrics::ServerMetrics;
use crate::reactor::Mailbox;
use crate::runs::{ConnRef, Failure, SourceEvent};

/// One queued call.
pub type Job = Box<dyn FnOnce() + Send>;

/// The runs' threads and the opens' threads (a quarter as many, at least
/// two), each with a bounded queue: a full queue is refused (the caller
/// answers `overloaded`, or 503 to an upgrade), never grown. The runs'
/// queue is bounded twice: in jobs, and in the bytes of input that queued
/// and running jobs hold (each job owns a copy of its message: 1 024
/// queued 1 MiB messages would be 1 GiB); an open's input is a request
/// head, bounded by the head limits.
pub struct Pool {
    runs: Lane,
    opens: Lane,
}

impl Pool {
    /// `threads` run workers, at most `capacity` jobs waiting, at most
    /// `byte_budget` bytes of input held by waiting and running jobs; and
    /// `threads / 4` (at least 2) open workers with a queue of `capacity`.
    pub fn new(threads: usize, capacity: usize, byte_budget: usize) -> std::io::Result<Pool> {
        Ok(Pool {
            runs: Lane::new("pollcap-worker", threads, capacity, byte_budget)?,
            opens: Lane::new("pollcap-open", (threads / 4).max(2), capacity, usize::MAX)?,
        })
    }

    /// Queues a run's job that holds `bytes` of input, or gives it back
    /// when the queue is full or those bytes would take the input held by
    /// queued and running jobs past the byte budget.
    pub fn try_submit(&self, job: Job, bytes: usize) -> Result<(), Job> {
        self.runs.try_submit(job, bytes)
    }

    /// Queues an open's job, or gives it back when its queue is full.
    pub fn try_open(&self, job: Job) -> Result<(), Job> {
        self.opens.try_submit(job, 0)
    }

    /// Input bytes held by queued and running runs' jobs.
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.runs.held.load(Ordering::Relaxed)
    }

    /// True when no run's job could be queued now.
    pub fn saturated(&self) -> bool {
        self.runs.queued.load(Ordering::Relaxed) >= self.runs.capacity
    }

    /// The runs' threads (`--pool-threads`).
    pub fn threads(&self) -> usize {
        self.runs.threads
    }

    /// Runs' jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.runs.queued.load(Ordering::Relaxed)
    }

    /// The opens' threads.
    #[cfg(test)]
    pub fn open_threads(&self) -> usize {
        self.opens.threads
    }
}

/// One set of threads and its bounded queue.
struct Lane {
    tx: SyncSender<(Job, usize)>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    threads: usize,
    /// Input bytes of queued and running jobs.
    held: Arc<AtomicUsize>,
    byte_budget: usize,
}

impl Lane {
    fn new(
        name: &str,
        threads: usize,
        capacity: usize,
        byte_budget: usize,
    ) -> std::io::Result<Lane> {
        let (tx, rx) = sync_channel::<(Job, usize)>(capacity);
        let rx: Arc<Mutex<Receiver<(Job, usize)>>> = Arc::new(Mutex::new(rx));
        let queued = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        for i in 0..threads {
            let rx = rx.clone();
            let queued = queued.clone();
            let held = held.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    loop {
                        let (job, bytes) = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv()
                        {
                            Ok(job) => job,
                            Err(_) => return, // pool dropped
                        };
                        queued.fetch_sub(1, Ordering::Relaxed);
                        // Jobs report their own panics; this keeps the thread alive regardless.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                        // The job (and the input it owned) is gone.
                        held.fetch_sub(bytes, Ordering::Relaxed);
                    }
                })?;
        }
        Ok(Lane {
            tx,
            queued,
            capacity,
            threads,
            held,
            byte_budget,
        })
    }

    fn try_submit(&self, job: Job, bytes: usize) -> Result<(), Job> {
        let before = self.held.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.byte_budget {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            return Err(job);
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send((job, bytes)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((job, _))) | Err(TrySendError::Disconnected((job, _))) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.held.fetch_sub(bytes, Ordering::Relaxed);
                Err(job)
            }
        }
    }
}

/// Runs `handler.message` as one pool job, reporting its end through the
/// outbox: done, or — when it panicked — a `handler_failure` that closes
/// its connection 1011 (counted in `panics`).
pub fn job(
    handler: Arc<dyn Handler>,
    session: Arc<Session>,
    input: Inbound,
    out: Outbox,
    panics: Arc<ServerMetrics>,
) -> Job {
    Box::new(move || {
        let result = catch_unwind(AssertUnwindSafe(|| handler.message(&session, input, &out)));
        let what = match result {
            Ok(()) => SourceEvent::Done,
            Err(p) => {
                let msg = panic_message(&*p);
                panics.handler_panics_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(run_id = out.run_id(), "handler panicked: {msg}; run failed");
                SourceEvent::Failed(Failure {
                    code: "handler_failure",
                    message: "the handler failed".into(),
                    close: true,
                    ..Failure::default()
                })
            }
        };
        out.post(what);
    })
}

/// A handler's answer to connection `conn`'s upgrade request, for its
/// reactor; `session` is what every later call of the connection gets.
#[derive(Debug)]
pub struct Decided {
    pub conn: ConnRef,
    pub session: Arc<Session>,
    pub decision: Decision,
}

/// Runs `handler.open` as one pool job; its decision (a panic is a
/// [`Decision::Fail`], counted in `panics`) goes to `reply`. The request's
/// headers are dropped here, on the pool: only the session goes back.
pub fn open_job(
    handler: Arc<dyn Handler>,
    request: Request,
    conn: ConnRef,
    reply: Arc<Mailbox<Decided>>,
    panics: Arc<ServerMetrics>,
) -> Job {
    Box::new(move || {
        let result = catch_unwind(AssertUnwindSafe(|| handler.open(&request)));
        let decision = match result {
            Ok(d) => d,
            Err(p) => {
                let msg = panic_message(&*p);
                panics.handler_panics_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(conn = conn.id, "handler panicked in open: {msg}");
                // The message stays in the log: a client gets no internals.
                Decision::Fail("the handler panicked".into())
            }
        };
        reply.post(Decided {
            conn,
            session: Arc::new(request.session),
            decision,
        });
    })
}

/// A panic's message, when it has one.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::reactor::{BackendKind, CapStrategy, Reactor};
    use crate::runs::{Mail, RunBudget, Ticket};

    #[test]
    fn a_full_pool_refuses_instead_of_growing() {
        let pool = Pool::new(1, 1, 1 << 20).unwrap();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        // Occupy the only thread until released.
        let occupy = Box::new(move || {
            started_tx.send(()).unwrap();
            gate_rx.recv().ok();
        });
        assert!(pool.try_submit(occupy, 0).is_ok());
        started_rx.recv().unwrap();
        assert!(pool.try_submit(Box::new(|| {}), 0).is_ok(), "one queued");
        assert!(pool.saturated());
        assert!(pool.try_submit(Box::new(|| {}), 0).is_err(), "queue full");
        gate_tx.send(()).unwrap();
    }

    #[test]
    fn opens_have_threads_that_runs_cannot_take() {
        let pool = Pool::new(1, 1, 1 << 20).unwrap();
        assert_eq!(pool.open_threads(), 2);
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let busy = Box::new(move || {
            started_tx.send(()).unwrap();
            gate_rx.recv().ok();
        });
        assert!(pool.try_submit(busy, 0).is_ok());
        started_rx.recv().unwrap();
        assert!(pool.try_submit(Box::new(|| {}), 0).is_ok(), "queued");
        assert!(pool.saturated(), "every run thread and queue slot taken");
        // An open still runs at once, on a thread of its own.
        let (opened_tx, opened_rx) = std::sync::mpsc::channel::<String>();
        let open = Box::new(move || {
            let name = std::thread::current().name().unwrap_or("").to_string();
            opened_tx.send(name).unwrap();
        });
        assert!(pool.try_open(open).is_ok());
        let thread = opened_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(thread.starts_with("pollcap-open-"), "{thread}");
        gate_tx.send(()).unwrap();
    }

    #[test]
    fn input_bytes_held_by_jobs_are_bounded_and_given_back() {
        let pool = Pool::new(1, 8, 1000).unwrap();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        // A running job holds its 600 bytes until it ends.
        let running = Box::new(move || {
            gate_rx.recv().ok();
        });
        assert!(pool.try_submit(running, 600).is_ok());
        let queued = Box::new(move || done_tx.send(()).unwrap());
        assert!(pool.try_submit(queued, 400).is_ok(), "600 + 400 fit 1000");
        assert!(
            pool.try_submit(Box::new(|| {}), 1).is_err(),
            "one byte over"
        );
        assert_eq!(pool.held_bytes(), 1000, "a refusal holds nothing");
        assert!(pool.queued() < 8, "the job queue is far from full");
        gate_tx.send(()).unwrap();
        done_rx.recv().unwrap();
        // Both ran: their bytes come back (the worker gives them back
        // right after each job returns).
        let t0 = std::time::Instant::now();
        while pool.held_bytes() != 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "bytes never given back"
            );
            std::thread::yield_now();
        }
        assert!(pool.try_submit(Box::new(|| {}), 1000).is_ok());
    }

    #[test]
    fn a_job_posts_its_events_then_its_end_and_a_panic_fails_the_run() {
        struct Boom;
        impl Handler for Boom {
            fn name(&self) -> &'static str {
                "boom"
            }
            fn subprotocols(&self) -> &'static [&'static str] {
                &[]
            }
            fn message(&self, _: &Session, _: Inbound, out: &Outbox) {
                out.emit("a", serde_json::json!({}));
                out.emit("b", serde_json::json!({"x": 1}));
                panic!("kaboom");
            }
        }
        let r = Reactor::new(BackendKind::Mio, CapStrategy::Spin).unwrap();
        let mb = Arc::new(Mailbox::new(r.waker()));
        let ticket = Ticket {
            run: 9,
            id: "r9".into(),
            cancel: Default::default(),
            deadline: std::time::Instant::now(),
            charged: None,
            expiry: crate::runs::Expiry::HANDLER,
        };
        let budget = RunBudget {
            max_events: 100,
            max_bytes: 1 << 20,
        };
        let metrics = Arc::new(ServerMetrics::default());
        let out = Outbox::new(&ticket, mb.clone(), budget);
        job(
            Arc::new(Boom),
            Arc::new(Session::default()),
            Inbound::Text("x".into()),
            out,
            metrics.clone(),
        )();
        let mail: Vec<Mail> = mb.take();
        assert_eq!(mail.len(), 3);
        assert!(mail.iter().all(|m| m.run == 9));
        assert_eq!(mail[0].what, SourceEvent::Event(r#"{"type":"a"}"#.into()));
        assert_eq!(
            mail[1].what,
            SourceEvent::Event(r#"{"type":"b","x":1}"#.into())
        );
        assert!(
            matches!(&mail[2].what, SourceEvent::Failed(f) if f.code == "handler_failure" && f.close)
        );
        assert_eq!(metrics.handler_panics_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_open_job_reports_the_decision_and_a_panic_is_a_failure() {
        struct Gate;
        impl Handler for Gate {
            fn name(&self) -> &'static str {
                "gate"
            }
            fn subprotocols(&self) -> &'static [&'static str] {
                &[]
            }
            fn open(&self, req: &Request) -> Decision {
                match req.header("x-key") {
                    Some("boom") => panic!("bad key"),
                    Some(_) => Decision::Accept,
                    None => Decision::refuse(403, "no key"),
                }
            }
            fn message(&self, _: &Session, _: Inbound, _: &Outbox) {}
        }
        let r = Reactor::new(BackendKind::Mio, CapStrategy::Spin).unwrap();
        let reply = Arc::new(Mailbox::new(r.waker()));
        let metrics = Arc::new(ServerMetrics::default());
        let conn = ConnRef { key: 3, id: 33 };
        for (key, want) in [
            (Some("ok"), Decision::Accept),
            (None, Decision::refuse(403, "no key")),
            (Some("boom"), Decision::Fail("the handler panicked".into())),
        ] {
            let mut request = Request::default();
            request.session.conn_id = 33;
            request.headers = key
                .map(|k| ("X-Key".into(), k.into()))
                .into_iter()
                .collect();
            open_job(
                Arc::new(Gate),
                request,
                conn,
                reply.clone(),
                metrics.clone(),
            )();
            let mut got = reply.take();
            assert_eq!(got.len(), 1);
            let d = got.pop().unwrap();
            assert_eq!((d.conn, d.session.conn_id), (conn, 33));
            assert_eq!(d.decision, want);
        }
        assert_eq!(metrics.handler_panics_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_outbox_stops_at_its_budget_and_a_full_mailbox_ends_the_run() {
        let r = Reactor::new(BackendKind::Mio, CapStrategy::Spin).unwrap();
        let ticket = Ticket {
            run: 1,
            id: "r1".into(),
            cancel: Default::default(),
            deadline: std::time::Instant::now(),
            charged: None,
            expiry: crate::runs::Expiry::HANDLER,
        };
        // Two messages fit the budget (an event, a raw one); the third is
        // posted (the run layer ends the run at it) and cancels the run:
        // nothing follows.
        let mb = Arc::new(Mailbox::new(r.waker()));
        let budget = RunBudget {
            max_events: 2,
            max_bytes: 1 << 20,
        };
        let out = Outbox::new(&ticket, mb.clone(), budget);
        out.emit("e", serde_json::json!({}));
        for _ in 0..10 {
            out.send_binary(vec![0u8; 10]);
        }
        assert!(out.is_cancelled(), "raw messages count like events");
        assert_eq!(mb.take().len(), 3);
        // A mailbox with room for one event: the second is refused, the
        // run is cancelled and told why; nothing is queued after it.
        let ticket = Ticket {
            cancel: Default::default(),
            ..ticket
        };
        let mb = Arc::new(Mailbox::bounded(r.waker(), 16));
        let out = Outbox::new(&ticket, mb.clone(), budget);
        out.emit("e", serde_json::json!({}));
        out.emit("e", serde_json::json!({}));
        out.emit("e", serde_json::json!({}));
        let mail = mb.take();
        assert_eq!(mail.len(), 2);
        assert_eq!(mail[1].what, SourceEvent::Dropped);
        assert!(!out.pause(Duration::from_secs(5)), "cancelled: no wait");
    }
}
