//! The in-process run store: one log per run under one short lock, kept
//! `resume_window` after the run ends, bounded per run and in total
//! (events and bytes). A resume reads the log and, if the run goes on,
//! joins its followers under the same lock, so every later event is
//! delivered to it and none is missed or repeated. Time is an input.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tungstenite::Utf8Bytes;

use super::{
    Deliveries, Delivery, Follower, ResumeLimits, ResumeRequest, Resumed, RunStart, StoreStats,
    post,
};

/// Bytes counted for a run's record besides its events (the map entry,
/// the log, the id and owner are added to it): measured order of size,
/// so that many empty runs also fill the total.
const RECORD_BYTES: usize = 160;
/// Bytes counted per event besides its text (queue slot and shared buffer
/// header).
const EVENT_BYTES: usize = 64;

#[derive(Debug)]
struct Log {
    id: Arc<str>,
    owner: Option<Box<str>>,
    /// `(seq, stamped text)`, oldest first; the oldest may have been
    /// dropped for the limits.
    events: VecDeque<(u64, Utf8Bytes)>,
    /// Text bytes of `events`.
    bytes: usize,
    last_seq: u64,
    finished: bool,
    followers: Vec<Follower>,
}

impl Log {
    /// What this record counts in the total, events excluded.
    fn record_bytes(id: &str, owner: Option<&str>) -> usize {
        RECORD_BYTES + id.len() + owner.map_or(0, str::len)
    }
}

#[derive(Debug, Default)]
struct Inner {
    runs: HashMap<Arc<str>, Log>,
    /// Finished runs in the order they finished, with when they expire.
    /// The window is one constant, so this is also their expiry order.
    finished: VecDeque<(Instant, Arc<str>)>,
    events: usize,
    bytes: usize,
}

impl Inner {
    /// Drops run `id` whole; returns how many events it held.
    fn drop_run(&mut self, id: &str) -> usize {
        let Some(log) = self.runs.remove(id) else {
            return 0;
        };
        let n = log.events.len();
        self.events -= n;
        self.bytes -= log.bytes + n * EVENT_BYTES + Log::record_bytes(id, log.owner.as_deref());
        n
    }

    /// Drops the oldest event of run `id`; false when it has none.
    fn drop_oldest(&mut self, id: &str) -> bool {
        let Some(log) = self.runs.get_mut(id) else {
            return false;
        };
        let Some((_, text)) = log.events.pop_front() else {
            return false;
        };
        log.bytes -= text.len();
        self.events -= 1;
        self.bytes -= text.len() + EVENT_BYTES;
        true
    }
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    limits: ResumeLimits,
    stats: StoreStats,
    deliveries: Deliveries,
}

impl MemoryStore {
    pub fn new(limits: ResumeLimits, deliveries: Deliveries) -> MemoryStore {
        MemoryStore {
            inner: Mutex::default(),
            limits,
            stats: StoreStats::default(),
            deliveries,
        }
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs, events and bytes held now.
    pub fn held(&self) -> (usize, usize, usize) {
        let g = self.lock();
        (g.runs.len(), g.events, g.bytes)
    }

    pub fn begin(&self, run: &RunStart, now: Instant) {
        let mut g = self.lock();
        self.expire(&mut g, now);
        let id: Arc<str> = run.id.into();
        g.bytes += Log::record_bytes(run.id, run.owner);
        g.runs.insert(
            id.clone(),
            Log {
                id: id.clone(),
                owner: run.owner.map(Into::into),
                events: VecDeque::new(),
                bytes: 0,
                last_seq: 0,
                finished: false,
                followers: Vec::new(),
            },
        );
        self.make_room(&mut g, &id);
    }

    pub fn append(&self, id: &str, seq: u64, text: &Utf8Bytes, now: Instant) {
        let mut g = self.lock();
        self.expire(&mut g, now);
        let Inner {
            runs,
            events,
            bytes,
            ..
        } = &mut *g;
        let Some(log) = runs.get_mut(id) else {
            return;
        };
        if log.finished {
            return;
        }
        log.events.push_back((seq, text.clone()));
        log.bytes += text.len();
        log.last_seq = seq;
        *events += 1;
        *bytes += text.len() + EVENT_BYTES;
        // Posted after the lock is released: a post may wake a reactor (a
        // syscall), and every reactor shares this lock. (A follower that
        // resumes meanwhile has the event in its backlog; a connection
        // drops what it already has.)
        let followers = log.followers.clone();
        let l = self.limits;
        while log.events.len() > l.run_events || log.bytes > l.run_bytes {
            let Some((_, old)) = log.events.pop_front() else {
                break;
            };
            log.bytes -= old.len();
            *events -= 1;
            *bytes -= old.len() + EVENT_BYTES;
            self.stats.evicted_run_limit_total.fetch_add(1, Relaxed);
        }
        self.make_room(&mut g, id);
        drop(g);
        for f in &followers {
            let what = Delivery::Event {
                seq,
                text: text.clone(),
            };
            post(&self.deliveries, f, what);
        }
    }

    pub fn finish(&self, id: &str, now: Instant) {
        let mut g = self.lock();
        let Some(log) = g.runs.get_mut(id) else {
            return;
        };
        if log.finished {
            return;
        }
        let id = log.id.clone();
        log.finished = true;
        let followers = std::mem::take(&mut log.followers);
        g.finished.push_back((now + self.limits.window, id));
        self.expire(&mut g, now);
        drop(g);
        for f in &followers {
            post(&self.deliveries, f, Delivery::End);
        }
    }

    pub fn resume(
        &self,
        req: &ResumeRequest,
        subject: Option<&str>,
        follower: Follower,
        now: Instant,
    ) -> Resumed {
        let mut g = self.lock();
        self.expire(&mut g, now);
        let Some(log) = g.runs.get_mut(req.run_id.as_str()) else {
            return Resumed::Unavailable("unknown or expired run");
        };
        if log.owner.as_deref() != subject {
            return Resumed::Unavailable("the run belongs to another subject");
        }
        let first = log.events.front().map_or(log.last_seq + 1, |e| e.0);
        if req.after_seq + 1 < first {
            return Resumed::Unavailable("events after after_seq were dropped (resume limits)");
        }
        if log.finished && req.after_seq > log.last_seq {
            return Resumed::Unavailable("after_seq is past the run's last event");
        }
        let backlog = log
            .events
            .iter()
            .filter(|(seq, _)| *seq > req.after_seq)
            .cloned()
            .collect();
        let live = !log.finished;
        if live {
            log.followers.push(follower);
        }
        Resumed::Now { backlog, live }
    }

    pub fn unfollow(&self, id: &str, follower: Follower) {
        if let Some(log) = self.lock().runs.get_mut(id) {
            log.followers.retain(|f| f.token != follower.token);
        }
    }

    pub fn sweep(&self, now: Instant) {
        let mut g = self.lock();
        self.expire(&mut g, now);
    }

    /// Drops the finished runs whose window has passed.
    fn expire(&self, g: &mut Inner, now: Instant) {
        while let Some((at, _)) = g.finished.front() {
            if *at > now {
                break;
            }
            if let Some((_, id)) = g.finished.pop_front() {
                g.drop_run(&id);
                self.stats.runs_expired_total.fetch_add(1, Relaxed);
            }
        }
    }

    /// Back within the totals: the oldest finished runs go first, whole;
    /// with none left, the oldest events of the run `id` being written.
    fn make_room(&self, g: &mut Inner, id: &str) {
        let l = self.limits;
        while g.events > l.total_events || g.bytes > l.total_bytes {
            if let Some((_, old)) = g.finished.pop_front() {
                let n = g.drop_run(&old);
                self.stats.runs_expired_total.fetch_add(1, Relaxed);
                self.stats
                    .evicted_total_limit_total
                    .fetch_add(n as u64, Relaxed);
            } else if g.drop_oldest(id) {
                self.stats.evicted_total_limit_total.fetch_add(1, Relaxed);
            } else {
                break; // only live records: bounded by the runs in flight
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::Mailbox;
    use crate::reactor::{BackendKind, CapStrategy, Reactor};
    use crate::store::Delivered;
    use std::time::Duration;

    fn limits() -> ResumeLimits {
        ResumeLimits {
            window: Duration::from_secs(300),
            run_events: 100,
            run_bytes: 10_000,
            total_events: 1000,
            total_bytes: 1 << 20,
        }
    }

    struct Fixture {
        _reactor: Reactor,
        mailbox: Arc<Mailbox<Delivered>>,
        store: MemoryStore,
        t0: Instant,
    }

    fn fixture(limits: ResumeLimits) -> Fixture {
        let reactor = Reactor::new(BackendKind::Mio, CapStrategy::Spin).unwrap();
        let mailbox = Arc::new(Mailbox::new(reactor.waker()));
        let boxes: Deliveries = Arc::from(vec![mailbox.clone()]);
        Fixture {
            _reactor: reactor,
            mailbox,
            store: MemoryStore::new(limits, boxes),
            t0: Instant::now(),
        }
    }

    fn start(f: &Fixture, id: &str, owner: Option<&str>) {
        let run = RunStart {
            id,
            owner,
            deadline_unix_ms: 0,
        };
        f.store.begin(&run, f.t0);
    }

    fn ev(seq: u64) -> Utf8Bytes {
        format!(r#"{{"type":"agent_thinking","seq":{seq},"delta":"x"}}"#).into()
    }

    fn follower(token: u64) -> Follower {
        Follower {
            reactor: 0,
            key: 7,
            conn_id: 9,
            token,
        }
    }

    fn resume(f: &Fixture, id: &str, who: Option<&str>, after: u64, token: u64) -> Resumed {
        let req = ResumeRequest::new(id, after);
        f.store.resume(&req, who, follower(token), f.t0)
    }

    fn seqs(r: &Resumed) -> (Vec<u64>, bool) {
        match r {
            Resumed::Now { backlog, live } => (backlog.iter().map(|e| e.0).collect(), *live),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_resume_gets_the_rest_then_the_live_events_exactly_once() {
        let f = fixture(limits());
        start(&f, "run", Some("alice"));
        for seq in 1..=3 {
            f.store.append("run", seq, &ev(seq), f.t0);
        }
        let r = resume(&f, "run", Some("alice"), 1, 5);
        assert_eq!(seqs(&r), (vec![2, 3], true));
        assert!(f.mailbox.take().is_empty(), "nothing live yet");
        f.store.append("run", 4, &ev(4), f.t0);
        f.store.finish("run", f.t0);
        let got: Vec<Delivery> = f.mailbox.take().into_iter().map(|d| d.what).collect();
        assert_eq!(
            got,
            [
                Delivery::Event {
                    seq: 4,
                    text: ev(4)
                },
                Delivery::End
            ]
        );
        // Replayed whole from 0 once finished, within the window.
        let r = resume(&f, "run", Some("alice"), 0, 6);
        assert_eq!(seqs(&r), (vec![1, 2, 3, 4], false));
        let r = resume(&f, "run", Some("alice"), 4, 7);
        assert_eq!(seqs(&r), (vec![], false), "nothing missed");
        assert_eq!(f.store.stats().runs_expired_total.load(Relaxed), 0);
    }

    #[test]
    fn unknown_foreign_past_the_end_and_expired_runs_are_unavailable() {
        let f = fixture(limits());
        start(&f, "run", Some("alice"));
        f.store.append("run", 1, &ev(1), f.t0);
        let unavailable = |r: Resumed| matches!(r, Resumed::Unavailable(_));
        assert!(unavailable(resume(&f, "nope", Some("alice"), 0, 1)));
        assert!(unavailable(resume(&f, "run", Some("bob"), 0, 1)));
        assert!(unavailable(resume(&f, "run", None, 0, 1)));
        f.store.finish("run", f.t0);
        assert!(unavailable(resume(&f, "run", Some("alice"), 2, 1)));
        // Kept for the window after the end, then gone.
        let req = ResumeRequest::new("run", 0);
        let just_in = f.t0 + limits().window - Duration::from_millis(1);
        let r = f.store.resume(&req, Some("alice"), follower(1), just_in);
        assert_eq!(seqs(&r), (vec![1], false));
        let r = f
            .store
            .resume(&req, Some("alice"), follower(1), f.t0 + limits().window);
        assert!(unavailable(r));
        assert_eq!(f.store.held(), (0, 0, 0), "everything given back");
        assert!(f.mailbox.take().is_empty(), "a refusal delivers nothing");
    }

    #[test]
    fn with_auth_off_the_run_id_is_the_key() {
        let f = fixture(limits());
        start(&f, "run", None);
        f.store.append("run", 1, &ev(1), f.t0);
        assert_eq!(seqs(&resume(&f, "run", None, 0, 1)), (vec![1], true));
    }

    #[test]
    fn per_run_limits_drop_the_oldest_and_refuse_resuming_before_them() {
        let f = fixture(ResumeLimits {
            run_events: 3,
            ..limits()
        });
        start(&f, "run", None);
        for seq in 1..=5 {
            f.store.append("run", seq, &ev(seq), f.t0);
        }
        assert_eq!(f.store.held().1, 3);
        assert_eq!(f.store.stats().evicted_run_limit_total.load(Relaxed), 2);
        assert!(matches!(
            resume(&f, "run", None, 1, 1),
            Resumed::Unavailable(_)
        ));
        assert_eq!(seqs(&resume(&f, "run", None, 2, 2)).0, vec![3, 4, 5]);
        // Bytes too: one event's text is 46 bytes.
        let f = fixture(ResumeLimits {
            run_bytes: 100,
            ..limits()
        });
        start(&f, "run", None);
        for seq in 1..=5 {
            f.store.append("run", seq, &ev(seq), f.t0);
        }
        assert_eq!(f.store.held().1, 2);
    }

    #[test]
    fn the_totals_drop_the_oldest_finished_runs_first() {
        let per_run = 10 * (46 + EVENT_BYTES) + Log::record_bytes("r0", None);
        let f = fixture(ResumeLimits {
            total_bytes: 3 * per_run,
            ..limits()
        });
        for r in 0..5 {
            let id = format!("r{r}");
            start(&f, &id, None);
            for seq in 1..=10 {
                f.store.append(&id, seq, &ev(seq), f.t0);
            }
            f.store.finish(&id, f.t0 + Duration::from_secs(r));
        }
        let (runs, events, bytes) = f.store.held();
        assert_eq!((runs, events), (3, 30));
        assert!(bytes <= 3 * per_run);
        for gone in ["r0", "r1"] {
            assert!(matches!(
                resume(&f, gone, None, 0, 1),
                Resumed::Unavailable(_)
            ));
        }
        assert_eq!(seqs(&resume(&f, "r4", None, 0, 1)).0.len(), 10);
        assert_eq!(f.store.stats().evicted_total_limit_total.load(Relaxed), 20);
        // A live run alone over the total loses its oldest events instead.
        let f = fixture(ResumeLimits {
            total_events: 4,
            run_events: 4,
            ..limits()
        });
        start(&f, "big", None);
        for seq in 1..=6 {
            f.store.append("big", seq, &ev(seq), f.t0);
        }
        assert_eq!(seqs(&resume(&f, "big", None, 2, 1)).0, vec![3, 4, 5, 6]);
    }

    #[test]
    fn an_unfollowed_connection_gets_nothing_more() {
        let f = fixture(limits());
        start(&f, "run", None);
        assert_eq!(seqs(&resume(&f, "run", None, 0, 3)), (vec![], true));
        f.store.unfollow("run", follower(3));
        f.store.append("run", 1, &ev(1), f.t0);
        f.store.finish("run", f.t0);
        assert!(f.mailbox.take().is_empty());
    }
}
