//! The reader thread: answers resumes (one pipeline reading the run's
//! meta key, first and last entries and the backlog, refusing a gap or a
//! foreign run), then tails every followed run in one `XREAD BLOCK` until
//! its end entry, a gap, its deadline plus [`GRACE`], or an outage.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::{Connection, Value};
use tungstenite::Utf8Bytes;

use super::link::Link;
use super::reply::{Entry, bulk, entries, streams};
use super::{BATCH, CALL, Delivery, Follower, Meta, meta_key, post, stream_key};

/// How long one `XREAD` waits for new entries.
const BLOCK: Duration = Duration::from_millis(100);
/// How long a follower on another instance waits past a run's execution
/// deadline for its end entry before giving up on it.
const GRACE: Duration = Duration::from_secs(5);

pub(super) enum Read {
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
pub(super) fn reader(link: &Link, rx: &Receiver<Read>) {
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
