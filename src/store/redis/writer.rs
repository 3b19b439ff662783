//! The writer thread: the reactors' writes, queued without waiting,
//! batched into one pipeline per round (order kept: one thread), each run
//! touched renewing its window; an idle second sends `PING`, so an outage
//! and the way back show without traffic. Writes that cannot be made are
//! dropped and counted, never retried out of order.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use ::redis::Connection;
use tungstenite::Utf8Bytes;

use super::link::Link;
use super::{BATCH, meta_key, stream_key};

pub(super) enum Write {
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

/// The writer thread: batches of writes as one pipeline each; probes a
/// down Redis every second.
pub(super) fn writer(link: &Link, rx: &Receiver<Write>) {
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
