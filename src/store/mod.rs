//! The run store (SPEC §5 "Resume"): every event of a run, kept for
//! `resume_window` after the run's last event, so that a client whose
//! connection was lost can resume the run; in this process (`memory`), in
//! Redis Streams shared by every instance (`redis`), or nowhere (`off`).
//!
//! The server's reactors call in and never wait: the memory store answers
//! under a short lock; the Redis store hands every call to helper threads
//! and answers later. Whatever a store has for a connection that follows a
//! run (a resumed run's events, its end, a refusal) is posted to that
//! connection's reactor as a [`Delivered`], through its waker.
//!
//! Parts: `memory` (the in-process store), `redis` (helper threads and the
//! Streams layout). This file: the setting's value, the limits, run ids,
//! the resume request and what the stores deliver.

mod memory;
mod redis;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tungstenite::Utf8Bytes;

pub use memory::MemoryStore;
pub use redis::RedisStore;

use crate::reactor::Mailbox;
pub use crate::settings::{RedisTarget, ResumeLimits, StoreKind};

/// A new run id: 128 random bits from the operating system, base64url
/// (22 characters). With authentication off the id is the only key to a
/// run, so it must not be guessable.
pub fn new_run_id() -> String {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // The OS refused randomness (it never should): fall back to std's
        // randomly keyed hasher over a counter rather than stop serving.
        use std::hash::{BuildHasher, Hasher};
        static N: AtomicU64 = AtomicU64::new(0);
        for half in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(N.fetch_add(1, Relaxed));
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `{"type":"resume","run_id":"…","after_seq":N}`: the events of `run_id`
/// after `after_seq`, then its live ones until it ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    #[serde(rename = "type")]
    pub kind: ResumeTag,
    pub run_id: String,
    #[serde(default)]
    pub after_seq: u64,
}

/// The `type` of a resume request: only `"resume"` parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumeTag {
    Resume,
}

/// Longest run id accepted in a resume request (ours are 22 characters).
const MAX_RUN_ID: usize = 128;
/// Largest `after_seq` accepted: 2^53 - 1, the largest integer a JavaScript
/// client holds exactly (and far from any overflow in `after_seq + 1`).
pub const MAX_SEQ: u64 = (1 << 53) - 1;

impl ResumeRequest {
    pub fn new(run_id: &str, after_seq: u64) -> ResumeRequest {
        ResumeRequest {
            kind: ResumeTag::Resume,
            run_id: run_id.to_string(),
            after_seq,
        }
    }

    /// The request in a text message, if that is what it is. Cheap for
    /// every other message: only text mentioning `"resume"` is parsed.
    pub fn parse(text: &str) -> Option<ResumeRequest> {
        if !text.contains("\"resume\"") {
            return None;
        }
        let r: ResumeRequest = serde_json::from_str(text).ok()?;
        let ok = !r.run_id.is_empty() && r.run_id.len() <= MAX_RUN_ID && r.after_seq <= MAX_SEQ;
        ok.then_some(r)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A connection following a run: where its deliveries go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Follower {
    /// The reactor that owns the connection.
    pub reactor: usize,
    pub key: usize,
    pub conn_id: u64,
    /// The server's number for this following (one per resume).
    pub token: u64,
}

/// What a store has for a following connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// One event, stamped, as the run's own connection got it.
    Event { seq: u64, text: Utf8Bytes },
    /// The run ended after the events delivered.
    End,
    /// The resume is refused (unknown, expired, foreign, trimmed, store
    /// unreachable); nothing was delivered.
    Unavailable(&'static str),
    /// Events stopped coming after some were delivered (the store became
    /// unreachable, or the run's instance stopped before its end: its
    /// lease lapsed, or, without one, its deadline passed).
    Interrupted(&'static str),
}

/// A delivery for one following connection.
#[derive(Debug)]
pub struct Delivered {
    /// The connection's slot and id, as in its [`Follower`]. Not read:
    /// the worker finds the follow by `token` alone.
    #[expect(dead_code, reason = "unread since deliveries go by token")]
    pub key: usize,
    #[expect(dead_code, reason = "unread since deliveries go by token")]
    pub conn_id: u64,
    pub token: u64,
    pub what: Delivery,
}

/// Every reactor's delivery mailbox, by reactor index.
pub type Deliveries = Arc<[Arc<Mailbox<Delivered>>]>;

fn post(boxes: &Deliveries, f: &Follower, what: Delivery) {
    if let Some(b) = boxes.get(f.reactor) {
        b.post(Delivered {
            key: f.key,
            conn_id: f.conn_id,
            token: f.token,
            what,
        });
    }
}

/// The answer to a resume request.
#[derive(Debug)]
pub enum Resumed {
    /// The events after `after_seq` so far; `live`: the run goes on and
    /// its next events will be delivered.
    Now {
        backlog: Vec<(u64, Utf8Bytes)>,
        live: bool,
    },
    /// Refused: why (for the log; the client learns only that it is).
    Unavailable(&'static str),
    /// The answer will be delivered (Redis).
    Later,
}

/// A run as the store first hears of it.
#[derive(Clone, Debug)]
pub struct RunStart<'a> {
    pub id: &'a str,
    /// Who may resume it: the authenticated subject, or `None` when
    /// authentication is off (then whoever presents the id).
    pub owner: Option<&'a str>,
    /// When its execution deadline passes, in Unix milliseconds (a
    /// follower on another instance stops waiting after it).
    pub deadline_unix_ms: u64,
}

/// Counters every store keeps (atomics; read by `/health` and `/metrics`).
#[derive(Debug, Default)]
pub struct StoreStats {
    pub resumes_total: AtomicU64,
    pub resumes_unavailable_total: AtomicU64,
    /// Events dropped to stay within the per-run limits.
    pub evicted_run_limit_total: AtomicU64,
    /// Events dropped to stay within the total limits.
    pub evicted_total_limit_total: AtomicU64,
    /// Runs dropped whole, at the end of their window or for room.
    pub runs_expired_total: AtomicU64,
    /// Redis: calls that failed (error or deadline).
    pub errors_total: AtomicU64,
    /// Redis: events never written (store down, or its queue full).
    pub writes_dropped_total: AtomicU64,
    /// Redis: times the connection went down.
    pub outages_total: AtomicU64,
    /// Redis: followed runs interrupted because their instance's lease
    /// lapsed (it died, or lost Redis).
    pub owner_lost_total: AtomicU64,
}

/// The store as `/health` and `/metrics` show it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreView {
    pub kind: &'static str,
    /// False while Redis is unreachable (then `/health` is `degraded`).
    pub up: bool,
    /// Memory store: what it holds now.
    pub runs: Option<u64>,
    pub events: Option<u64>,
    pub bytes: Option<u64>,
    pub resumes: u64,
    pub resumes_unavailable: u64,
    pub evicted_run_limit: u64,
    pub evicted_total_limit: u64,
    pub runs_expired: u64,
    pub errors: u64,
    pub writes_dropped: u64,
    pub outages: u64,
    pub owner_lost: u64,
}

/// The configured store.
pub enum Store {
    Off(Arc<StoreStats>),
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// Starts the store `kind` (Redis: its helper threads; an unreachable
    /// Redis is not an error, the server starts degraded).
    pub fn start(
        kind: &StoreKind,
        limits: ResumeLimits,
        deliveries: Deliveries,
    ) -> std::io::Result<Store> {
        Ok(match kind {
            StoreKind::Off => Store::Off(Arc::default()),
            StoreKind::Memory => Store::Memory(MemoryStore::new(limits, deliveries)),
            StoreKind::Redis(t) => Store::Redis(RedisStore::start(t, limits, deliveries)?),
        })
    }

    /// False for `off`: runs end with their connection.
    pub fn keeps_runs(&self) -> bool {
        !matches!(self, Store::Off(_))
    }

    pub fn stats(&self) -> &StoreStats {
        match self {
            Store::Off(s) => s,
            Store::Memory(m) => m.stats(),
            Store::Redis(r) => r.stats(),
        }
    }

    pub fn begin(&self, run: &RunStart, now: Instant) {
        match self {
            Store::Off(_) => {}
            Store::Memory(m) => m.begin(run, now),
            Store::Redis(r) => r.begin(run),
        }
    }

    /// Event `seq` of run `id` (stamped).
    pub fn append(&self, id: &str, seq: u64, text: &Utf8Bytes, now: Instant) {
        match self {
            Store::Off(_) => {}
            Store::Memory(m) => m.append(id, seq, text, now),
            Store::Redis(r) => r.append(id, seq, text),
        }
    }

    /// Run `id` ended after event `last_seq`.
    pub fn finish(&self, id: &str, last_seq: u64, now: Instant) {
        match self {
            Store::Off(_) => {}
            Store::Memory(m) => m.finish(id, now),
            Store::Redis(r) => r.finish(id, last_seq),
        }
    }

    /// Answers a resume request of `subject` for `follower`.
    pub fn resume(
        &self,
        req: &ResumeRequest,
        subject: Option<&str>,
        follower: Follower,
        now: Instant,
    ) -> Resumed {
        let r = match self {
            Store::Off(_) => Resumed::Unavailable("the store is off"),
            Store::Memory(m) => m.resume(req, subject, follower, now),
            Store::Redis(r) => r.resume(req, subject, follower),
        };
        // Redis counts its own answers when they come.
        let s = self.stats();
        match r {
            Resumed::Unavailable(_) => s.resumes_unavailable_total.fetch_add(1, Relaxed),
            Resumed::Now { .. } => s.resumes_total.fetch_add(1, Relaxed),
            Resumed::Later => 0,
        };
        r
    }

    /// `follower` no longer follows run `id` (its connection ended).
    pub fn unfollow(&self, id: &str, follower: Follower) {
        match self {
            Store::Off(_) => {}
            Store::Memory(m) => m.unfollow(id, follower),
            Store::Redis(r) => r.unfollow(follower),
        }
    }

    /// Drops what passed its window (the memory store does it on every
    /// write too; this covers a quiet server).
    pub fn sweep(&self, now: Instant) {
        if let Store::Memory(m) = self {
            m.sweep(now)
        }
    }

    pub fn view(&self) -> StoreView {
        let s = self.stats();
        let mut v = StoreView {
            kind: match self {
                Store::Off(_) => "off",
                Store::Memory(_) => "memory",
                Store::Redis(_) => "redis",
            },
            up: true,
            resumes: s.resumes_total.load(Relaxed),
            resumes_unavailable: s.resumes_unavailable_total.load(Relaxed),
            evicted_run_limit: s.evicted_run_limit_total.load(Relaxed),
            evicted_total_limit: s.evicted_total_limit_total.load(Relaxed),
            runs_expired: s.runs_expired_total.load(Relaxed),
            errors: s.errors_total.load(Relaxed),
            writes_dropped: s.writes_dropped_total.load(Relaxed),
            outages: s.outages_total.load(Relaxed),
            owner_lost: s.owner_lost_total.load(Relaxed),
            ..StoreView::default()
        };
        match self {
            Store::Memory(m) => {
                let (runs, events, bytes) = m.held();
                v.runs = Some(runs as u64);
                v.events = Some(events as u64);
                v.bytes = Some(bytes as u64);
            }
            Store::Redis(r) => v.up = r.is_up(),
            Store::Off(_) => {}
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_long_random_and_url_safe() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_run_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.len(), 22);
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
        }
    }

    #[test]
    fn only_well_formed_resume_requests_parse() {
        let r = ResumeRequest::parse(r#"{"type":"resume","run_id":"abc","after_seq":3}"#);
        assert_eq!(r, Some(ResumeRequest::new("abc", 3)));
        let r = ResumeRequest::parse(r#"{"type":"resume","run_id":"abc"}"#).unwrap();
        assert_eq!(r.after_seq, 0, "after_seq defaults to 0: replay everything");
        for not in [
            r#"{"type":"user_message","text":"please \"resume\""}"#,
            r#"{"type":"resume"}"#,
            r#"{"type":"resume","run_id":""}"#,
            r#"{"type":"resume","run_id":"a","after_seq":-1}"#,
            r#"{"type":"resume","run_id":"a","after_seq":1,"x":1}"#,
        ] {
            assert_eq!(ResumeRequest::parse(not), None, "{not}");
        }
        let long = format!(r#"{{"type":"resume","run_id":"{}"}}"#, "a".repeat(200));
        assert_eq!(ResumeRequest::parse(&long), None);
        let huge = format!(
            r#"{{"type":"resume","run_id":"a","after_seq":{}}}"#,
            u64::MAX
        );
        assert_eq!(ResumeRequest::parse(&huge), None, "no overflow to reach");
        let max = format!(r#"{{"type":"resume","run_id":"a","after_seq":{MAX_SEQ}}}"#);
        assert_eq!(
            ResumeRequest::parse(&max).map(|r| r.after_seq),
            Some(MAX_SEQ)
        );
        assert_eq!(
            ResumeRequest::new("x", 2).to_json(),
            r#"{"type":"resume","run_id":"x","after_seq":2}"#
        );
    }
}
