//! The writer thread: the reactors' writes, queued without waiting,
//! batched into one pipeline per round (order kept: one thread), each run
//! touched renewing its window; and this instance's lease, renewed every
//! second before the next batch or on its own when idle (so an outage and
//! the way back show without traffic). A run's meta names this instance
//! only while the lease is held, and the renewal goes first on a new
//! connection: no follower sees a run whose owner has not taken its lease.
//! Writes that cannot be made are dropped and counted, never retried out
//! of order.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};

use ::redis::Connection;
use tungstenite::Utf8Bytes;

use super::lease::Lease;
use super::link::Link;
use super::{BATCH, Meta, meta_key, stream_key};

pub(super) enum Write {
    Begin {
        id: String,
        owner: Option<String>,
        deadline_ms: u64,
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

/// The writer thread: batches of writes as one pipeline each, the lease
/// renewed every second (which also probes a down Redis).
pub(super) fn writer(link: &Link, rx: &Receiver<Write>) {
    let mut conn: Option<Connection> = None;
    let mut lease = Lease::new();
    loop {
        let first = match rx.recv_timeout(lease.wait()) {
            Ok(w) => w,
            Err(RecvTimeoutError::Timeout) => {
                // Due, and nothing to write: the renewal on its own (at
                // start-up too: an unreachable Redis is logged at once).
                lease.renew(link, &mut conn);
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
        if lease.due() {
            lease.renew(link, &mut conn);
        }
        let Some(c) = link.connection(&mut conn) else {
            link.stats.writes_dropped_total.fetch_add(events, Relaxed);
            continue;
        };
        let instance = lease.held.then_some(link.instance.as_str());
        let pipe = pipeline(link, &batch, instance);
        if let Err(e) = pipe.query::<()>(c) {
            link.stats.writes_dropped_total.fetch_add(events, Relaxed);
            link.failed(&e, &mut conn);
            if conn.is_none() {
                lease.lost();
            }
        }
    }
}

/// One pipeline for a batch: the writes in order, then the window
/// renewed once per run touched. A run begun names `instance` in its meta
/// (this one, while it holds its lease).
fn pipeline(link: &Link, batch: &[Write], instance: Option<&str>) -> ::redis::Pipeline {
    let window = link.window_ms();
    let mut p = ::redis::pipe();
    let mut touched: HashSet<&str> = HashSet::new();
    for w in batch {
        match w {
            Write::Begin {
                id,
                owner,
                deadline_ms,
            } => {
                let meta = Meta {
                    owner: owner.clone(),
                    deadline_ms: *deadline_ms,
                    instance: instance.map(str::to_string),
                };
                let meta = serde_json::to_string(&meta).unwrap_or_default();
                p.cmd("SET")
                    .arg(meta_key(id))
                    .arg(meta)
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
