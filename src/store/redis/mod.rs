//! The Redis run store: a Stream per run (`pollcap:run:{ID}`, entry id
//! `SEQ-0` per event and `LAST-1` for the end, `MAXLEN ~ resume_run_events`)
//! and a meta key beside it (`pollcap:run:{ID}:meta`: the owner, the run's
//! execution deadline and the instance that runs it), both expiring
//! `resume_window` after the run's last write. Any instance can resume any
//! run: it reads the stream (`XRANGE`), then tails it with `XREAD BLOCK`
//! (100 ms at a time, every followed run in one call) until the end entry.
//!
//! **The lease.** Each instance (a random id per process) holds a lease in
//! one sorted set, [`LEASES`]: member = instance id, score = when the lease
//! lapses, in Redis's own clock (`TIME` inside a script), so clock skew
//! between instances cannot matter. The writer renews it every [`RENEW`]
//! for [`LEASE`] (one script call a second per instance, however many runs
//! it has), and names the instance in a run's meta only while it holds the
//! lease. A follower on another instance checks the owners of the runs it
//! tails every [`LEASE_CHECK`] (one script call for all of them); when an
//! owner's lease has lapsed and its stream holds nothing more, the follower
//! gets `resume_interrupted` ("the run's instance stopped"): within
//! `LEASE + LEASE_CHECK` (3.5 s) and one `XREAD` of the owner's last
//! renewal, so 2 to about 3.6 s after it died. Why not a key per instance
//! with a TTL: under the `volatile-ttl` eviction policy (ours, in
//! `platform/kubernetes/`) a 3 s key is the first to go, and a lease
//! evicted from a live instance would interrupt every follower of its
//! runs. A finished run needs no lease: its end entry ends the tail. The
//! set itself expires `resume_window` after the last renewal of any
//! instance, and every renewal drops the lapsed members; it is written
//! every second, so the TTL and LRU eviction policies reach it last.
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
//! reconnect attempts; the writer renews the lease every second even when
//! idle, so an outage and the way back show without traffic. Exactly-once
//! is checked, not assumed: a resume whose stored events have a gap
//! (writes dropped during an outage) is refused, and a tail that meets one
//! is interrupted.
//!
//! One file per job: the store's API, keys and queues (this file); `link`
//! (the connection, its deadlines, the breaker and the health); `writer`;
//! `reader` (resumes and tails); `lease` (renewing this instance's lease,
//! checking the others'); `reply` (parsing what Redis answers).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::Client;
use serde::{Deserialize, Serialize};
use tungstenite::Utf8Bytes;

// The store's types the threads need come through here: a file of this
// folder names its folder's module, never the store's.
#[cfg(all(test, unix))]
use super::Delivered;
use super::{
    Deliveries, Delivery, Follower, RedisTarget, ResumeLimits, ResumeRequest, Resumed, RunStart,
    StoreStats, new_run_id, post,
};
use crate::breaker::Breaker;

mod lease;
mod link;
#[cfg(all(test, unix))]
mod live_tests;
mod reader;
mod reply;
mod writer;

use link::Link;
use reader::{Read, reader};
use writer::{Write, writer};

/// Deadline of every Redis call (connect, each pipeline, each read).
pub const CALL: Duration = Duration::from_secs(1);
/// Writes queued for the writer; past it they are dropped (and counted):
/// a reactor never waits for Redis.
const WRITE_QUEUE: usize = 65_536;
/// Resume requests queued for the reader; past it they are refused.
const READ_QUEUE: usize = 4096;
/// Most writes in one pipeline.
const BATCH: usize = 1024;
/// How long a renewed lease lasts.
const LEASE: Duration = Duration::from_secs(3);
/// How often the writer renews this instance's lease.
const RENEW: Duration = Duration::from_secs(1);
/// How often the reader checks the leases of the runs it tails.
const LEASE_CHECK: Duration = Duration::from_millis(500);
/// The sorted set of instance leases: member = instance id, score = when
/// its lease lapses (Unix ms in Redis's clock).
const LEASES: &str = "pollcap:instances";

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
    /// The subject that may resume the run.
    owner: Option<String>,
    deadline_ms: u64,
    /// The instance running it, when it held its lease as the run began
    /// (absent: followers wait for the deadline plus a grace instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
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
            instance: new_run_id(),
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
        // The writer completes the meta: it knows whether it holds the lease.
        self.write(Write::Begin {
            id: run.id.to_string(),
            owner: run.owner.map(str::to_string),
            deadline_ms: run.deadline_unix_ms,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_a_run_in_one_cluster_slot() {
        assert_eq!(stream_key("abc"), "pollcap:run:{abc}");
        assert_eq!(meta_key("abc"), "pollcap:run:{abc}:meta");
    }
}
