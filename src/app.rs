//! Applications behind the WebSocket endpoint: the [`Handler`] trait, the
//! bounded worker [`Pool`] that runs handlers off the reactor threads, and the
//! [`Outbox`] through which a run streams events back to its reactor (a
//! mailbox plus the reactor's waker; the cap covers a lost wake).
//!
//! `echo` is the exception: it answers inline on the reactor thread because
//! copying a frame back is cheaper than any hand-off (Autobahn's peer).

use std::fmt::{self, Write as _};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::reactor::Waker;

/// Who is on the other end of a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    pub conn_id: u64,
    /// The authenticated subject, if authentication is on.
    pub subject: Option<String>,
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

/// What a run sends back to the connection's reactor.
#[derive(Debug, PartialEq, Eq)]
pub enum MailKind {
    /// One event, as JSON text without its `ts` (see [`stamp`]).
    Event {
        seq: u64,
        text: String,
    },
    Done,
    Panicked(String),
}

/// One piece of a run's output, for the reactor the run belongs to.
#[derive(Debug)]
pub struct Mail {
    /// The run, as numbered by the server (not its public `run_id`).
    pub run: u64,
    pub kind: MailKind,
}

/// One reactor's incoming mail from other threads (the pool's runs, the
/// run store): a queue plus the reactor's waker.
pub struct Mailbox<T = Mail> {
    queue: Mutex<Vec<T>>,
    waker: Arc<Waker>,
}

impl<T> Mailbox<T> {
    pub fn new(waker: Arc<Waker>) -> Mailbox<T> {
        Mailbox {
            queue: Mutex::new(Vec::new()),
            waker,
        }
    }

    pub fn post(&self, mail: T) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(mail);
        // A failed wake is recovered by the cap.
        let _ = self.waker.wake();
    }

    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A run's way back to the server: events go to the reactor the run
/// belongs to, which stamps, stores and forwards them.
pub struct Outbox {
    run: u64,
    run_id: String,
    seq: AtomicU64,
    cancel: Arc<AtomicBool>,
    mailbox: Arc<Mailbox>,
}

impl Outbox {
    /// The way back for run number `run`, whose public id is `run_id`.
    pub fn new(run: u64, run_id: String, cancel: Arc<AtomicBool>, mailbox: Arc<Mailbox>) -> Outbox {
        Outbox {
            run,
            run_id,
            seq: AtomicU64::new(0),
            cancel,
            mailbox,
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    /// Sends one event `{type, run_id, seq, ts, ..fields}`; `seq` starts
    /// at 1 and grows by 1 per event of the run. Dropped silently once
    /// cancelled. `ts` is added on the reactor thread when the event goes
    /// out, from the reactor's clock: one time base for every event.
    pub fn emit(&self, kind: &str, fields: impl serde::Serialize) {
        if self.is_cancelled() {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let text = event_text(kind, &self.run_id, seq, &fields);
        self.post(MailKind::Event { seq, text });
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

    fn post(&self, kind: MailKind) {
        self.mailbox.post(Mail {
            run: self.run,
            kind,
        });
    }
}

/// The fixed fields of every event; the handler's own fields follow.
#[derive(serde::Serialize)]
struct EventHead<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    run_id: &'a str,
    seq: u64,
    #[serde(flatten)]
    fields: &'a T,
}

#[derive(serde::Serialize)]
struct EventHeadOnly<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    run_id: &'a str,
    seq: u64,
}

/// The JSON text of one event, without `ts`. `fields` must serialize as
/// a map (a struct or a JSON object); anything else is left out. Handlers
/// should not use the names `type`, `run_id`, `seq` or `ts` for fields.
pub fn event_text(kind: &str, run_id: &str, seq: u64, fields: &impl serde::Serialize) -> String {
    let head = EventHead {
        kind,
        run_id,
        seq,
        fields,
    };
    serde_json::to_string(&head).unwrap_or_else(|_| {
        serde_json::to_string(&EventHeadOnly { kind, run_id, seq }).unwrap_or_default()
    })
}

/// Adds `"ts": unix_ms` to an event's JSON text (the last field).
pub fn stamp(text: &mut String, unix_ms: u64) {
    if text.ends_with('}') {
        text.pop();
        let sep = if text.ends_with('{') { "" } else { "," };
        let _ = write!(text, "{sep}\"ts\":{unix_ms}}}");
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads with a bounded queue: a full queue is refused
/// (the caller answers `overloaded`), never grown. Bounded twice: in jobs,
/// and in the bytes of input that queued and running jobs hold (each job
/// owns a copy of its message: 1 024 queued 1 MiB messages would be 1 GiB).
pub struct Pool {
    tx: SyncSender<(Job, usize)>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    threads: usize,
    /// Input bytes of queued and running jobs.
    held: Arc<AtomicUsize>,
    byte_budget: usize,
}

impl Pool {
    /// `threads` workers, at most `capacity` jobs waiting, at most
    /// `byte_budget` bytes of input held by waiting and running jobs.
    pub fn new(threads: usize, capacity: usize, byte_budget: usize) -> std::io::Result<Pool> {
        let (tx, rx) = sync_channel::<(Job, usize)>(capacity);
        let rx: Arc<Mutex<Receiver<(Job, usize)>>> = Arc::new(Mutex::new(rx));
        let queued = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        for i in 0..threads {
            let rx = rx.clone();
            let queued = queued.clone();
            let held = held.clone();
            std::thread::Builder::new()
                .name(format!("pollcap-worker-{i}"))
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
        Ok(Pool {
            tx,
            queued,
            capacity,
            threads,
            held,
            byte_budget,
        })
    }

    /// Queues a job that holds `bytes` of input, or gives it back when the
    /// queue is full or those bytes would take the input held by queued
    /// and running jobs past the byte budget.
    pub fn try_submit(&self, job: Job, bytes: usize) -> Result<(), Job> {
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

    /// Input bytes held by queued and running jobs.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// True when no job could be queued now.
    pub fn saturated(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.capacity
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Runs `handler.message` as one pool job, reporting completion or a panic
/// through the outbox.
pub fn job(handler: Arc<dyn Handler>, session: Arc<Session>, input: Inbound, out: Outbox) -> Job {
    Box::new(move || {
        let result = catch_unwind(AssertUnwindSafe(|| handler.message(&session, input, &out)));
        let kind = match result {
            Ok(()) => MailKind::Done,
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                MailKind::Panicked(msg)
            }
        };
        out.post(kind);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::{BackendKind, CapStrategy, Reactor};

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
    fn events_carry_increasing_seq_and_panics_are_reported() {
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
        let out = Outbox::new(9, "r9".into(), Arc::new(AtomicBool::new(false)), mb.clone());
        job(
            Arc::new(Boom),
            Arc::new(Session::default()),
            Inbound::Text("x".into()),
            out,
        )();
        let mail = mb.take();
        assert_eq!(mail.len(), 3);
        let seqs: Vec<u64> = mail
            .iter()
            .filter_map(|m| match &m.kind {
                MailKind::Event { seq, text } => {
                    let mut text = text.clone();
                    stamp(&mut text, 1234);
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["ts"], 1234);
                    assert_eq!(v["seq"], *seq);
                    assert_eq!(v["run_id"], "r9");
                    Some(*seq)
                }
                _ => None,
            })
            .collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(mail[2].kind, MailKind::Panicked("kaboom".into()));
        assert_eq!(mail[2].run, 9);
    }
}
