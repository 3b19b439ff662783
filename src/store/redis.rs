//! The Redis run store: a Stream per run (`pollcap:run:{ID}`, entry id
//! `SEQ-0` per event and `LAST-1` for the end, `MAXLEN ~ resume_run_events`)
//! and a meta key beside it (`pollcap:run:{ID}:meta`: the owner and the
//! run's execution deadline), both expiring `resume_window` after the
//! run's last write. Any instance can resume any run: it reads the stream
//! (`XRANGE`), then tails it with `XREAD BLOCK` (100 ms at a time, every
//! followed run in one call) until the end entry.
//!
//! No Redis call runs on a reactor. Two helper threads own one connection
//! each: the writer batches the reactors' writes into pipelines (order
//! kept: one thread), the reader answers resumes and tails. Each call has
//! a deadline (socket timeouts of [`CALL`]); results reach the reactors as
//! deliveries through their wakers. Like the blocking client, these
//! threads read the clock themselves: they own no connection and no timer
//! of the server's.
//!
//! When Redis is unreachable chat goes on: writes are dropped and counted,
//! resumes are answered `resume_unavailable`, followed runs are told
//! `resume_interrupted`, `/health` says `degraded`, and one log line marks
//! each change of state. A breaker (threshold 1, one second) paces the
//! reconnect attempts; the writer sends `PING` after every idle second, so
//! an outage and the way back show without traffic. Exactly-once is checked,
//! not assumed: a resume whose stored events have a gap (writes dropped
//! during an outage) is refused, and a tail that meets one is interrupted.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::{Client, Connection, ErrorKind, RedisError, Value};
use serde::{Deserialize, Serialize};
use tungstenite::Utf8Bytes;

use super::{
    Deliveries, Delivery, Follower, RedisTarget, ResumeLimits, ResumeRequest, Resumed, RunStart,
    StoreStats, post,
};
use crate::breaker::Breaker;

/// Deadline of every Redis call (connect, each pipeline, each read).
pub const CALL: Duration = Duration::from_secs(1);
/// How long one `XREAD` waits for new entries.
const BLOCK: Duration = Duration::from_millis(100);
/// How long a follower on another instance waits past a run's execution
/// deadline for its end entry before giving up on it.
const GRACE: Duration = Duration::from_secs(5);
/// Writes queued for the writer; past it they are dropped (and counted):
/// a reactor never waits for Redis.
const WRITE_QUEUE: usize = 65_536;
/// Resume requests queued for the reader; past it they are refused.
const READ_QUEUE: usize = 4096;
/// Most writes in one pipeline.
const BATCH: usize = 1024;

fn stream_key(id: &str) -> String {
    // The braces keep both keys of a run in one Redis Cluster slot.
    format!("pollcap:run:{{{id}}}")
}

fn meta_key(id: &str) -> String {
    format!("pollcap:run:{{{id}}}:meta")
}

/// What the meta key holds.
#[derive(Serialize, Deserialize)]
struct Meta {
    owner: Option<String>,
    deadline_ms: u64,
}

enum Write {
    Begin {
        id: String,
        meta: String,
    },
    Event {
        id: String,
        seq: u64,
        text: Utf8Bytes,
    },
    End {
        id: String,
        last_seq: u64,
    },
}

impl Write {
    fn id(&self) -> &str {
        match self {
            Write::Begin { id, .. } | Write::Event { id, .. } | Write::End { id, .. } => id,
        }
    }
}

enum Read {
    Resume {
        id: String,
        subject: Option<String>,
        after_seq: u64,
        follower: Follower,
    },
    Unfollow {
        token: u64,
    },
}

/// What both helper threads share: the client, the health and the breaker.
struct Link {
    client: Client,
    shown: String,
    stats: StoreStats,
    up: AtomicBool,
    breaker: Mutex<Breaker>,
    limits: ResumeLimits,
    deliveries: Deliveries,
}

impl Link {
    /// The thread's connection, (re)connecting if the breaker allows.
    fn connection<'a>(&self, slot: &'a mut Option<Connection>) -> Option<&'a mut Connection> {
        if slot.is_none() {
            let permit = {
                let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
                b.allow(Instant::now()).ok()?
            };
            let r = self
                .client
                .get_connection_with_timeout(CALL)
                .and_then(|mut c| {
                    c.set_read_timeout(Some(CALL))?;
                    c.set_write_timeout(Some(CALL))?;
                    ::redis::cmd("PING").query::<()>(&mut c)?;
                    Ok(c)
                });
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(c) => {
                    b.success(permit);
                    drop(b);
                    self.mark_up();
                    *slot = Some(c);
                }
                Err(e) => {
                    b.failure(permit, Instant::now());
                    drop(b);
                    self.mark_down(&e);
                    return None;
                }
            }
        }
        slot.as_mut()
    }

    /// A call failed: a lost connection marks the store down (and drops
    /// the connection); an error reply leaves it up.
    fn failed(&self, e: &RedisError, slot: &mut Option<Connection>) {
        self.stats.errors_total.fetch_add(1, Relaxed);
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.kind() == ErrorKind::Io
        {
            *slot = None;
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(p) = b.allow(Instant::now()) {
                b.failure(p, Instant::now());
            }
            drop(b);
            self.mark_down(e);
        } else {
            tracing::warn!("run store: Redis answered an error: {e}");
        }
    }

    fn mark_down(&self, e: &RedisError) {
        if self.up.swap(false, Relaxed) {
            self.stats.outages_total.fetch_add(1, Relaxed);
            tracing::warn!(
                "run store: Redis {} unreachable ({e}); chat goes on, resume is unavailable \
                 until it is back",
                self.shown
            );
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Relaxed) {
            tracing::info!(
                "run store: Redis {} reachable; resume available",
                self.shown
            );
        }
    }

    fn window_ms(&self) -> u64 {
        self.limits.window.as_millis().max(1) as u64
    }
}

pub struct RedisStore {
    link: Arc<Link>,
    writes: SyncSender<Write>,
    reads: SyncSender<Read>,
}

impl RedisStore {
    /// Starts the helper threads. An unreachable Redis is no error: the
    /// server starts degraded and the writer keeps probing.
    pub fn start(
        target: &RedisTarget,
        limits: ResumeLimits,
        deliveries: Deliveries,
    ) -> std::io::Result<RedisStore> {
        let client = Client::open(target.url.as_str()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("store {}: {e}", target.shown),
            )
        })?;
        let link = Arc::new(Link {
            client,
            shown: target.shown.clone(),
            stats: StoreStats::default(),
            up: AtomicBool::new(true),
            breaker: Mutex::new(Breaker::new(1, Duration::from_secs(1))),
            limits,
            deliveries,
        });
        let (writes, wrx) = sync_channel(WRITE_QUEUE);
        let (reads, rrx) = sync_channel(READ_QUEUE);
        let l = link.clone();
        std::thread::Builder::new()
            .name("pollcap-redis-writer".into())
            .spawn(move || writer(&l, &wrx))?;
        let l = link.clone();
        std::thread::Builder::new()
            .name("pollcap-redis-reader".into())
            .spawn(move || reader(&l, &rrx))?;
        Ok(RedisStore {
            link,
            writes,
            reads,
        })
    }

    pub fn stats(&self) -> &StoreStats {
        &self.link.stats
    }

    pub fn is_up(&self) -> bool {
        self.link.up.load(Relaxed)
    }

    fn write(&self, w: Write) {
        let dropped = match self.writes.try_send(w) {
            Ok(()) => false,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => true,
        };
        if dropped {
            self.link.stats.writes_dropped_total.fetch_add(1, Relaxed);
        }
    }

    pub fn begin(&self, run: &RunStart) {
        let meta = Meta {
            owner: run.owner.map(str::to_string),
            deadline_ms: run.deadline_unix_ms,
        };
        let meta = serde_json::to_string(&meta).unwrap_or_default();
        self.write(Write::Begin {
            id: run.id.to_string(),
            meta,
        });
    }

    pub fn append(&self, id: &str, seq: u64, text: &Utf8Bytes) {
        self.write(Write::Event {
            id: id.to_string(),
            seq,
            text: text.clone(),
        });
    }

    pub fn finish(&self, id: &str, last_seq: u64) {
        self.write(Write::End {
            id: id.to_string(),
            last_seq,
        });
    }

    pub fn resume(
        &self,
        req: &ResumeRequest,
        subject: Option<&str>,
        follower: Follower,
    ) -> Resumed {
        if !self.is_up() {
            return Resumed::Unavailable("the store (Redis) is unreachable");
        }
        let r = Read::Resume {
            id: req.run_id.clone(),
            subject: subject.map(str::to_string),
            after_seq: req.after_seq,
            follower,
        };
        match self.reads.try_send(r) {
            Ok(()) => Resumed::Later,
            Err(_) => Resumed::Unavailable("too many resumes waiting for the store"),
        }
    }

    pub fn unfollow(&self, follower: Follower) {
        // A full queue only delays the cleanup: the tail ends at the run's
        // end or deadline anyway, and its deliveries find no connection.
        let _ = self.reads.try_send(Read::Unfollow {
            token: follower.token,
        });
    }
}

/// The writer thread: batches of writes as one pipeline each; probes a
/// down Redis every second.
fn writer(link: &Link, rx: &Receiver<Write>) {
    let mut conn: Option<Connection> = None;
    // Connect at once: an unreachable Redis at start-up is logged now.
    let _ = link.connection(&mut conn);
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(w) => w,
            Err(RecvTimeoutError::Timeout) => {
                // Idle: a PING keeps `/health` true on a quiet instance.
                match conn.as_mut() {
                    None => {
                        let _ = link.connection(&mut conn);
                    }
                    Some(c) => {
                        if let Err(e) = ::redis::cmd("PING").query::<()>(c) {
                            link.failed(&e, &mut conn);
                        }
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let events = batch
            .iter()
            .filter(|w| matches!(w, Write::Event { .. }))
            .count() as u64;
        let Some(c) = link.connection(&mut conn) else {
            link.stats.writes_dropped_total.fetch_add(events, Relaxed);
            continue;
        };
        let pipe = pipeline(link, &batch);
        if let Err(e) = pipe.query::<()>(c) {
            link.stats.writes_dropped_total.fetch_add(events, Relaxed);
            link.failed(&e, &mut conn);
        }
    }
}

/// One pipeline for a batch: the writes in order, then the window
/// renewed once per run touched.
fn pipeline(link: &Link, batch: &[Write]) -> ::redis::Pipeline {
    let window = link.window_ms();
    let mut p = ::redis::pipe();
    let mut touched: HashSet<&str> = HashSet::new();
    for w in batch {
        match w {
            Write::Begin { id, meta } => {
                p.cmd("SET")
                    .arg(meta_key(id))
                    .arg(meta.as_str())
                    .arg("PX")
                    .arg(window)
                    .ignore();
            }
            Write::Event { id, seq, text } => {
                p.cmd("XADD")
                    .arg(stream_key(id))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(link.limits.run_events)
                    .arg(format!("{seq}-0"))
                    .arg("e")
                    .arg(text.as_str())
                    .ignore();
            }
            Write::End { id, last_seq } => {
                p.cmd("XADD")
                    .arg(stream_key(id))
                    .arg(format!("{last_seq}-1"))
                    .arg("end")
                    .arg(1)
                    .ignore();
            }
        }
        touched.insert(w.id());
    }
    for id in touched {
        p.cmd("PEXPIRE").arg(stream_key(id)).arg(window).ignore();
        p.cmd("PEXPIRE").arg(meta_key(id)).arg(window).ignore();
    }
    p
}

/// One stored entry: event `seq`, or the end after event `seq`.
#[derive(Debug, PartialEq)]
struct Entry {
    seq: u64,
    end: bool,
    text: Option<String>,
}

fn bulk(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// `[[id, [field, value, …]], …]` (an `XRANGE` reply, or one stream of an
/// `XREAD` reply).
fn entries(v: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    for e in items(v) {
        let parts = items(e);
        let (Some(id), Some(fields)) = (parts.first().and_then(bulk), parts.get(1)) else {
            continue;
        };
        let Some((ms, n)) = id.split_once('-') else {
            continue;
        };
        let (Ok(seq), Ok(n)) = (ms.parse::<u64>(), n.parse::<u64>()) else {
            continue;
        };
        let fields = items(fields);
        let text = fields
            .chunks(2)
            .find(|kv| kv.first().and_then(bulk).as_deref() == Some("e"))
            .and_then(|kv| kv.get(1).and_then(bulk));
        out.push(Entry {
            seq,
            end: n == 1,
            text,
        });
    }
    out
}

/// An `XREAD` reply as `(key, entries)`: RESP2 (arrays) or RESP3 (a map).
fn streams(v: &Value) -> Vec<(String, Vec<Entry>)> {
    match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, e)| Some((bulk(k)?, entries(e))))
            .collect(),
        other => items(other)
            .iter()
            .filter_map(|s| {
                let p = items(s);
                Some((bulk(p.first()?)?, entries(p.get(1)?)))
            })
            .collect(),
    }
}

/// A run followed by tailing its stream.
struct Tail {
    follower: Follower,
    key: String,
    /// Last event delivered (the next must be `last_seq + 1`).
    last_seq: u64,
    /// The run's execution deadline (Unix ms) plus [`GRACE`].
    give_up_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The reader thread: resumes, then every followed run in one `XREAD`.
fn reader(link: &Link, rx: &Receiver<Read>) {
    let mut conn: Option<Connection> = None;
    let mut tails: Vec<Tail> = Vec::new();
    loop {
        let mut reqs = Vec::new();
        if tails.is_empty() {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(r) => reqs.push(r),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            reqs.push(r);
        }
        for r in reqs {
            match r {
                Read::Unfollow { token } => tails.retain(|t| t.follower.token != token),
                Read::Resume {
                    id,
                    subject,
                    after_seq,
                    follower,
                } => {
                    let out = resume(link, &mut conn, &id, subject.as_deref(), after_seq);
                    match out {
                        Err(why) => {
                            link.stats.resumes_unavailable_total.fetch_add(1, Relaxed);
                            post(&link.deliveries, &follower, Delivery::Unavailable(why));
                        }
                        Ok((backlog, give_up_ms)) => {
                            link.stats.resumes_total.fetch_add(1, Relaxed);
                            let mut tail = Tail {
                                follower,
                                key: stream_key(&id),
                                last_seq: after_seq,
                                give_up_ms,
                            };
                            if deliver(link, &mut tail, backlog) {
                                tails.push(tail);
                            }
                        }
                    }
                }
            }
        }
        if tails.is_empty() {
            continue;
        }
        tail_once(link, &mut conn, &mut tails);
    }
}

/// Delivers entries in order to one tail; false once it is over (its end
/// entry, or a gap).
fn deliver(link: &Link, tail: &mut Tail, got: Vec<Entry>) -> bool {
    for e in got {
        if e.end {
            if e.seq == tail.last_seq {
                post(&link.deliveries, &tail.follower, Delivery::End);
            } else {
                let why = "events missing before the run's end (the store dropped writes)";
                post(&link.deliveries, &tail.follower, Delivery::Interrupted(why));
            }
            return false;
        }
        if e.seq <= tail.last_seq {
            continue; // the client has it
        }
        if e.seq != tail.last_seq.saturating_add(1) {
            let why = "events missing in the store (it dropped writes)";
            post(&link.deliveries, &tail.follower, Delivery::Interrupted(why));
            return false;
        }
        // An event entry without its text is a store fault, not an empty
        // event: the follower is told, as for a gap.
        let Some(text) = e.text else {
            let why = "an event without its text in the store";
            post(&link.deliveries, &tail.follower, Delivery::Interrupted(why));
            return false;
        };
        tail.last_seq = e.seq;
        let text = Utf8Bytes::from(text);
        post(
            &link.deliveries,
            &tail.follower,
            Delivery::Event { seq: e.seq, text },
        );
    }
    true
}

/// Reads what a resume needs in one pipeline: the meta key, the first and
/// last entries, and the entries after `after_seq`. `Ok`: the backlog and
/// when to give up tailing; `Err`: why the resume is refused.
fn resume(
    link: &Link,
    conn: &mut Option<Connection>,
    id: &str,
    subject: Option<&str>,
    after_seq: u64,
) -> Result<(Vec<Entry>, u64), &'static str> {
    let unreachable = "the store (Redis) is unreachable";
    let c = link.connection(conn).ok_or(unreachable)?;
    let key = stream_key(id);
    let mut p = ::redis::pipe();
    p.cmd("GET").arg(meta_key(id));
    p.cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1);
    p.cmd("XREVRANGE")
        .arg(&key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1);
    p.cmd("XRANGE")
        .arg(&key)
        .arg(format!("({after_seq}-0"))
        .arg("+")
        .arg("COUNT")
        .arg(link.limits.run_events + 2);
    let r: Result<Vec<Value>, _> = p.query(c);
    let v = match r {
        Ok(v) if v.len() == 4 => v,
        Ok(_) => return Err("the store answered something unexpected"),
        Err(e) => {
            link.failed(&e, conn);
            return Err(unreachable);
        }
    };
    let meta: Meta = bulk(&v[0])
        .and_then(|m| serde_json::from_str(&m).ok())
        .ok_or("unknown or expired run")?;
    if meta.owner.as_deref() != subject {
        return Err("the run belongs to another subject");
    }
    let first = entries(&v[1]);
    let last = entries(&v[2]);
    if let Some(f) = first.first().filter(|f| !f.end)
        && after_seq + 1 < f.seq
    {
        return Err("events after after_seq were dropped (resume limits)");
    }
    if let Some(l) = last.first().filter(|l| l.end)
        && after_seq > l.seq
    {
        return Err("after_seq is past the run's last event");
    }
    let backlog = entries(&v[3]);
    // Contiguous from after_seq + 1; the end entry carries the last seq.
    for (expected, e) in (after_seq + 1..).zip(backlog.iter()) {
        let ok = if e.end {
            e.seq == expected - 1
        } else {
            e.seq == expected
        };
        if !ok {
            return Err("events missing in the store (it dropped writes)");
        }
    }
    let give_up = meta.deadline_ms.saturating_add(GRACE.as_millis() as u64);
    Ok((backlog, give_up))
}

/// Ends every tail: Redis cannot be reached, so none can be followed on.
fn unreachable_for_all(link: &Link, tails: &mut Vec<Tail>) {
    for t in tails.drain(..) {
        let why = "the store (Redis) became unreachable";
        post(&link.deliveries, &t.follower, Delivery::Interrupted(why));
    }
}

/// One `XREAD BLOCK` over every followed run; delivers what came, ends
/// the tails that are over or past their run's deadline.
fn tail_once(link: &Link, conn: &mut Option<Connection>, tails: &mut Vec<Tail>) {
    let Some(c) = link.connection(conn) else {
        return unreachable_for_all(link, tails);
    };
    // Per stream, from the earliest position any of its followers needs.
    let mut keys: BTreeMap<&str, u64> = BTreeMap::new();
    for t in tails.iter() {
        keys.entry(&t.key)
            .and_modify(|from| *from = (*from).min(t.last_seq))
            .or_insert(t.last_seq);
    }
    let mut cmd = ::redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS");
    for k in keys.keys() {
        cmd.arg(*k);
    }
    for from in keys.values() {
        cmd.arg(format!("{from}-0"));
    }
    let _ = c.set_read_timeout(Some(CALL + BLOCK));
    let r: Result<Value, _> = cmd.query(c);
    let _ = c.set_read_timeout(Some(CALL));
    let got = match r {
        Ok(v) => streams(&v),
        Err(e) => {
            link.failed(&e, conn);
            return unreachable_for_all(link, tails);
        }
    };
    let now = unix_ms();
    tails.retain_mut(|t| {
        let mine: Vec<Entry> = got
            .iter()
            .filter(|(k, _)| *k == t.key)
            .flat_map(|(_, es)| {
                es.iter().map(|e| Entry {
                    seq: e.seq,
                    end: e.end,
                    text: e.text.clone(),
                })
            })
            .collect();
        if !deliver(link, t, mine) {
            return false;
        }
        if now > t.give_up_ms {
            let why = "the run's instance stopped before the run ended";
            post(&link.deliveries, &t.follower, Delivery::Interrupted(why));
            return false;
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_replies_parse_into_events_and_the_end() {
        let xrange = Value::Array(vec![
            Value::Array(vec![b("4-0"), Value::Array(vec![b("e"), b("{\"seq\":4}")])]),
            Value::Array(vec![b("4-1"), Value::Array(vec![b("end"), b("1")])]),
        ]);
        let got = entries(&xrange);
        assert_eq!(
            got,
            [
                Entry {
                    seq: 4,
                    end: false,
                    text: Some("{\"seq\":4}".into())
                },
                Entry {
                    seq: 4,
                    end: true,
                    text: None
                }
            ]
        );
        let xread = Value::Array(vec![Value::Array(vec![b("pollcap:run:{x}"), xrange])]);
        let s = streams(&xread);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, "pollcap:run:{x}");
        assert_eq!(s[0].1.len(), 2);
        assert!(streams(&Value::Nil).is_empty(), "a BLOCK that timed out");
    }

    #[test]
    fn keys_keep_a_run_in_one_cluster_slot() {
        assert_eq!(stream_key("abc"), "pollcap:run:{abc}");
        assert_eq!(meta_key("abc"), "pollcap:run:{abc}:meta");
    }
}
