//! The run layer alone, time injected: no server, no sockets. Effects are
//! applied by hand (store operations to a real memory store); the source
//! is a double that reports by hand — a source that is not a pool handler.
//! (`agent_chat`'s own test runs the real handler through the layer.)

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;
use crate::reactor::{BackendKind, CapStrategy, Mailbox, Reactor};
use crate::store::{
    Deliveries, Delivery, MemoryStore, ResumeLimits, ResumeRequest, Resumed, RunStart,
};

const A: ConnRef = ConnRef { key: 1, id: 11 };
const B: ConnRef = ConnRef { key: 2, id: 22 };

struct Fix {
    runs: Runs,
    store: MemoryStore,
    metrics: Arc<ServerMetrics>,
    t0: Instant,
    /// Every effect applied so far, in order.
    log: Vec<Effect>,
    /// Where the store posts to followers on reactor 0.
    deliveries: Arc<Mailbox<crate::store::Delivered>>,
    _reactor: Reactor,
}

fn fix(budget: RunBudget, keeps_runs: bool) -> Fix {
    let reactor = Reactor::new(BackendKind::Mio, CapStrategy::Spin).unwrap();
    let deliveries = Arc::new(Mailbox::new(reactor.waker()));
    let boxes: Deliveries = Arc::from(vec![deliveries.clone()]);
    let store = MemoryStore::new(
        ResumeLimits {
            window: Duration::from_secs(300),
            run_events: 10_000,
            run_bytes: 1 << 20,
            total_events: 100_000,
            total_bytes: 16 << 20,
        },
        boxes,
    );
    let t0 = Instant::now();
    let metrics = Arc::new(ServerMetrics::default());
    let cfg = RunConfig {
        reactor: 0,
        execution: Duration::from_secs(15),
        budget,
        keeps_runs,
    };
    Fix {
        runs: Runs::new(cfg, metrics.clone(), WallClock::new(t0, 1_000_000)),
        store,
        metrics,
        t0,
        log: Vec::new(),
        deliveries,
        _reactor: reactor,
    }
}

fn roomy() -> RunBudget {
    RunBudget {
        max_events: 10_000,
        max_bytes: 4 << 20,
    }
}

impl Fix {
    /// Applies every queued effect: store operations to the store.
    fn settle(&mut self) {
        while let Some(e) = self.runs.poll_effect() {
            if let Effect::Store(op) = &e {
                let now = self.t0;
                match op.clone() {
                    StoreOp::Begin {
                        id,
                        owner,
                        deadline_unix_ms,
                    } => self.store.begin(
                        &RunStart {
                            id: &id,
                            owner: owner.as_deref(),
                            deadline_unix_ms,
                        },
                        now,
                    ),
                    StoreOp::Append { id, seq, text } => self.store.append(&id, seq, &text, now),
                    StoreOp::Finish { id, .. } => self.store.finish(&id, now),
                    StoreOp::Unfollow { id, follower } => self.store.unfollow(&id, follower),
                }
            }
            self.log.push(e);
        }
    }

    /// The events sent to `conn` so far, as JSON.
    fn sent(&self, conn: ConnRef) -> Vec<Value> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Effect::Send {
                    conn: c,
                    msg: Message::Text(text),
                } if *c == conn => Some(serde_json::from_str(text.as_str()).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn has(&self, want: &Effect) -> bool {
        self.log.contains(want)
    }

    /// Starts a run for `conn` as the worker does, with no source yet.
    fn start(&mut self, conn: ConnRef, subject: Option<&str>) -> Ticket {
        let t = self
            .runs
            .prepare(self.t0, conn, None, false)
            .expect("a ticket");
        self.runs.start(t.clone(), conn, subject.map(Arc::from));
        self.settle();
        t
    }

    /// The double source reports `what` for run `run` at `now`.
    fn report(&mut self, now: Instant, run: u64, what: SourceEvent) {
        self.runs.source(now, Mail { run, what });
        self.settle();
    }

    fn event(&mut self, now: Instant, run: u64, delta: &str) {
        let b = body("agent_thinking", &serde_json::json!({ "delta": delta }));
        self.report(now, run, SourceEvent::Event(b));
    }
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[test]
fn a_run_outlives_its_connection_and_is_resumed_exactly_once_each() {
    let mut f = fix(roomy(), true);
    let t = f.start(A, Some("alice"));
    let t1 = f.t0 + Duration::from_millis(10);
    f.event(t1, t.run, "one");
    f.event(t1, t.run, "two");
    // The connection is lost (no Close): the run goes on, detached.
    f.runs.conn_gone(t1, A);
    f.settle();
    assert_eq!(f.metrics.runs_detached_total.load(Relaxed), 1);
    assert!(!f.has(&Effect::Stop { run: t.run }));
    f.event(t1, t.run, "three");
    assert_eq!(
        seqs(&f.sent(A)),
        [1, 2],
        "nothing goes to a gone connection"
    );
    // The client comes back as B and resumes after the event it has.
    let ask = f
        .runs
        .resume(B, ResumeRequest::new(&t.id, 1))
        .expect("a store question");
    let answer = f.store.resume(&ask.req, Some("alice"), ask.follower, t1);
    f.runs.resumed(ask.follower.token, answer);
    f.settle();
    assert_eq!(seqs(&f.sent(B)), [2, 3], "the backlog after seq 1");
    assert_eq!(f.runs.following(B), 1, "and the live ones to come");
    // Live events reach B through the store; a repeat is dropped.
    f.event(t1, t.run, "four");
    f.report(t1, t.run, SourceEvent::Done);
    let mut delivered = Vec::new();
    for d in f.deliveries.take() {
        delivered.push(d.token);
        f.runs.delivery(d.token, d.what);
    }
    f.runs.delivery(
        ask.follower.token,
        Delivery::Event {
            seq: 3,
            text: "{}".into(),
        },
    );
    f.settle();
    assert!(delivered.iter().all(|t| *t == ask.follower.token));
    assert_eq!(seqs(&f.sent(B)), [2, 3, 4], "each once, in order");
    assert_eq!(f.runs.following(B), 0, "the run's end ends the follow");
    assert_eq!(f.runs.follows.len(), 0, "A's follow went with A");
    assert!(f.has(&Effect::Settled { conn: B }));
    // Another subject may not read it.
    let ask = f.runs.resume(A, ResumeRequest::new(&t.id, 0)).unwrap();
    let answer = f.store.resume(&ask.req, Some("mallory"), ask.follower, t1);
    f.runs.resumed(ask.follower.token, answer);
    f.settle();
    let refused = f.sent(A).pop().unwrap();
    assert_eq!(refused["code"], "resume_unavailable");
    assert!(refused.get("seq").is_none());
}

#[test]
fn a_close_from_the_client_cancels_its_runs_and_stores_how_they_ended() {
    let mut f = fix(roomy(), true);
    let t = f.start(A, None);
    let t1 = f.t0 + Duration::from_millis(5);
    f.event(t1, t.run, "partial");
    f.runs.peer_closed(t1, A);
    f.settle();
    assert!(
        t.cancel.load(Relaxed),
        "the source is told through its flag"
    );
    assert!(f.has(&Effect::Stop { run: t.run }));
    assert_eq!(f.metrics.runs_cancelled_total.load(Relaxed), 1);
    let (stored, live) = match f
        .store
        .resume(&ResumeRequest::new(&t.id, 0), None, follower(9), t1)
    {
        Resumed::Now { backlog, live } => (backlog, live),
        other => panic!("{other:?}"),
    };
    assert!(!live);
    let last: Value = serde_json::from_str(stored.last().unwrap().1.as_str()).unwrap();
    assert_eq!(
        (last["code"].as_str(), last["seq"].as_u64()),
        (Some("cancelled"), Some(2))
    );
    // The source's late output goes nowhere.
    let before = f.log.len();
    f.event(t1, t.run, "late");
    assert_eq!(f.log.len(), before);
}

fn follower(token: u64) -> Follower {
    Follower {
        reactor: 0,
        key: 9,
        conn_id: 99,
        token,
    }
}

#[test]
fn the_execution_deadline_ends_a_run_on_time_and_only_then() {
    let mut f = fix(roomy(), true);
    let t = f.start(A, None);
    let deadline = f.t0 + Duration::from_secs(15);
    assert_eq!(f.runs.poll_timeout(), Some(deadline));
    f.runs.expire(deadline - Duration::from_millis(1));
    f.settle();
    assert_eq!(f.runs.len(), 1, "not before its deadline");
    f.event(f.t0, t.run, "one");
    f.runs.expire(deadline);
    f.settle();
    let last = f.sent(A).pop().unwrap();
    assert_eq!(last["code"], "execution_timeout");
    assert_eq!(last["seq"], 2, "the error continues the run's sequence");
    assert!(t.cancel.load(Relaxed));
    assert!(f.has(&Effect::Stop { run: t.run }));
    assert_eq!(f.metrics.timeouts_of(TimeoutPhase::Execution), 1);
    assert_eq!(f.runs.poll_timeout(), None);
    assert!(f.has(&Effect::Settled { conn: A }));
}

#[test]
fn a_run_past_its_event_or_byte_budget_ends_run_too_large_with_seq_continued() {
    // Events: three fit, the fourth ends the run.
    let mut f = fix(
        RunBudget {
            max_events: 3,
            max_bytes: 1 << 20,
        },
        true,
    );
    let t = f.start(A, None);
    for _ in 0..5 {
        f.event(f.t0, t.run, "x");
    }
    let got = f.sent(A);
    assert_eq!(seqs(&got), [1, 2, 3, 4]);
    assert_eq!(got[3]["code"], "run_too_large");
    assert!(got[3]["message"].as_str().unwrap().contains("3 events"));
    assert!(t.cancel.load(Relaxed) && f.has(&Effect::Stop { run: t.run }));
    // Bytes: a body that would pass the budget ends it, and is not sent.
    let mut f = fix(
        RunBudget {
            max_events: 100,
            max_bytes: 100,
        },
        true,
    );
    let t = f.start(A, None);
    f.event(f.t0, t.run, "small");
    f.event(f.t0, t.run, &"y".repeat(100));
    let got = f.sent(A);
    assert_eq!(seqs(&got), [1, 2]);
    assert_eq!(got[1]["code"], "run_too_large");
    assert!(got[1]["message"].as_str().unwrap().contains("100 bytes"));
    assert_eq!(f.metrics.runs_too_large_total.load(Relaxed), 1);
}

#[test]
fn a_source_that_is_not_a_pool_handler_gets_the_same_treatment() {
    // The double: it reports on its own schedule, fails with its own
    // error, and is told to stop through Stop as well as the flag.
    let mut f = fix(roomy(), true);
    let t = f.start(A, Some("bob"));
    assert_eq!(f.runs.runs_of("bob"), 1);
    let body = r#"{"type":"custom_event","n":1,"seq":77}"#.to_string();
    f.report(f.t0, t.run, SourceEvent::Event(body));
    f.report(
        f.t0,
        t.run,
        SourceEvent::Failed(Failure {
            code: "upstream_timeout",
            message: "no event for 30 s".into(),
            close: false,
            ..Failure::default()
        }),
    );
    let got = f.sent(A);
    assert_eq!(got[0]["type"], "custom_event");
    assert_eq!(got[0]["seq"], 1, "the layer's seq wins over the source's");
    assert_eq!(
        (got[1]["code"].as_str(), got[1]["seq"].as_u64()),
        (Some("upstream_timeout"), Some(2))
    );
    assert!(
        !f.log.iter().any(|e| matches!(e, Effect::Close { .. })),
        "the connection stays open"
    );
    // A full mailbox on the way: the run ends overloaded, counted.
    let t = f.start(A, None);
    f.report(f.t0, t.run, SourceEvent::Dropped);
    assert_eq!(f.sent(A).pop().unwrap()["code"], "overloaded");
    assert_eq!(f.metrics.run_events_dropped_total.load(Relaxed), 1);
    assert_eq!(f.runs.runs_of("bob"), 0);
}

#[test]
fn a_failed_handler_closes_its_connection_1011_after_the_error_event() {
    let mut f = fix(roomy(), true);
    let t = f.start(A, None);
    f.report(
        f.t0,
        t.run,
        SourceEvent::Failed(Failure {
            code: "handler_failure",
            message: "the handler failed".into(),
            close: true,
            ..Failure::default()
        }),
    );
    let order: Vec<&Effect> = f
        .log
        .iter()
        .filter(|e| {
            matches!(
                e,
                Effect::Send { .. } | Effect::Close { .. } | Effect::Settled { .. }
            )
        })
        .collect();
    assert!(matches!(order[0], Effect::Send { .. }));
    assert!(matches!(
        order[1],
        Effect::Close {
            conn: A,
            code: 1011,
            ..
        }
    ));
    assert!(matches!(order[2], Effect::Settled { conn: A }));
}

#[test]
fn with_the_store_off_a_run_ends_with_its_connection() {
    let mut f = fix(roomy(), false);
    let t = f.start(A, None);
    f.runs.conn_gone(f.t0, A);
    f.settle();
    assert!(t.cancel.load(Relaxed) && f.has(&Effect::Stop { run: t.run }));
    assert_eq!(f.runs.len(), 0);
    assert_eq!(f.runs.follows.len(), 0);
    assert_eq!(f.metrics.runs_detached_total.load(Relaxed), 0);
}

#[test]
fn a_connection_follows_at_most_its_share_and_draining_refuses_new_runs() {
    let mut f = fix(roomy(), true);
    for _ in 0..MAX_RUNS_PER_CONN {
        f.start(A, None);
    }
    assert!(f.runs.prepare(f.t0, A, None, false).is_none());
    assert!(f.runs.resume(A, ResumeRequest::new("x", 0)).is_none());
    f.settle();
    let got = f.sent(A);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| e["code"] == "overloaded"));
    assert_eq!(f.metrics.overloaded_total.load(Relaxed), 2);
    // Another connection is not affected, unless the server drains.
    assert!(f.runs.prepare(f.t0, B, None, false).is_some());
    assert!(f.runs.prepare(f.t0, B, None, true).is_none());
    f.settle();
    assert_eq!(f.sent(B)[0]["code"], "draining");
    assert_eq!(f.sent(B)[0]["seq"], 1);
}

/// Two reactors' run layers share one count per subject: a subject at its
/// limit gets `overloaded` on either, and a run that ends (or a ticket
/// that no source took) gives its place back.
#[test]
fn a_subject_has_at_most_its_runs_across_reactors() {
    let shared = crate::frontdoor::SubjectRuns::new(3);
    let mut one = fix(roomy(), true);
    let mut two = fix(roomy(), true);
    one.runs = std::mem::replace(
        &mut one.runs,
        Runs::new(
            RunConfig {
                reactor: 0,
                execution: Duration::from_secs(15),
                budget: roomy(),
                keeps_runs: true,
            },
            one.metrics.clone(),
            WallClock::new(one.t0, 1_000_000),
        ),
    )
    .with_subject_limit(shared.clone());
    two.runs = std::mem::replace(
        &mut two.runs,
        Runs::new(
            RunConfig {
                reactor: 1,
                execution: Duration::from_secs(15),
                budget: roomy(),
                keeps_runs: true,
            },
            two.metrics.clone(),
            WallClock::new(two.t0, 1_000_000),
        ),
    )
    .with_subject_limit(shared.clone());
    let alice: Arc<str> = "alice".into();
    let bob: Arc<str> = "bob".into();
    let a1 = one.runs.prepare(one.t0, A, Some(&alice), false).unwrap();
    one.runs.start(a1.clone(), A, Some(alice.clone()));
    let a2 = two.runs.prepare(two.t0, B, Some(&alice), false).unwrap();
    two.runs.start(a2, B, Some(alice.clone()));
    // A ticket no source took gives its place back.
    let refused = two.runs.prepare(two.t0, B, Some(&alice), false).unwrap();
    two.runs
        .refuse(two.t0, refused, B, "overloaded", "pool full");
    let a3 = two.runs.prepare(two.t0, B, Some(&alice), false).unwrap();
    two.runs.start(a3, B, Some(alice.clone()));
    assert!(one.runs.prepare(one.t0, A, Some(&alice), false).is_none());
    one.settle();
    assert_eq!(one.sent(A).last().unwrap()["code"], "overloaded");
    assert_eq!(
        one.metrics
            .refusals_of(crate::frontdoor::Refused::SubjectRuns),
        1
    );
    // Others are not affected, nor requests without a subject.
    assert!(one.runs.prepare(one.t0, A, Some(&bob), false).is_some());
    assert!(one.runs.prepare(one.t0, A, None, false).is_some());
    // The run on reactor one ends: alice may start one again.
    one.runs.source(
        one.t0,
        Mail {
            run: a1.run,
            what: SourceEvent::Done,
        },
    );
    let shared = shared.unwrap();
    assert_eq!(shared.of("alice"), 2);
    assert!(two.runs.prepare(two.t0, B, Some(&alice), false).is_some());
}

/// Raw messages go to the run's own connection, in order with its events,
/// outside the sequence; they are never stored (a resume replays events
/// only), and they count against the budget like events.
#[test]
fn raw_messages_are_forwarded_in_order_never_stored_and_budgeted() {
    let mut f = fix(
        RunBudget {
            max_events: 100,
            max_bytes: 128,
        },
        true,
    );
    let t = f.start(A, Some("alice"));
    f.event(f.t0, t.run, "one");
    let raw = |r: Raw| SourceEvent::Raw(r);
    f.report(f.t0, t.run, raw(Raw::Text("plain".into())));
    f.report(f.t0, t.run, raw(Raw::Binary(vec![0, 1, 255])));
    f.event(f.t0, t.run, "two");
    let to_a: Vec<&Message> = f
        .log
        .iter()
        .filter_map(|e| match e {
            Effect::Send { conn, msg } if *conn == A => Some(msg),
            _ => None,
        })
        .collect();
    assert_eq!(to_a.len(), 4);
    assert!(to_a[0].to_text().unwrap().contains(r#""seq":1"#));
    assert_eq!(*to_a[1], Message::text("plain"));
    assert_eq!(*to_a[2], Message::binary(vec![0, 1, 255]));
    assert!(
        to_a[3].to_text().unwrap().contains(r#""seq":2"#),
        "a raw message takes no seq"
    );
    // A resume from the start replays the two events only.
    let ask = f.runs.resume(B, ResumeRequest::new(&t.id, 0)).unwrap();
    let answer = f.store.resume(&ask.req, Some("alice"), ask.follower, f.t0);
    f.runs.resumed(ask.follower.token, answer);
    f.settle();
    assert_eq!(seqs(&f.sent(B)), [1, 2]);
    // Bytes so far: two bodies of 39 and the raw 8; a raw message that
    // would pass 128 ends the run, continuing the sequence, unsent.
    f.report(f.t0, t.run, raw(Raw::Binary(vec![7; 64])));
    let last = match f
        .log
        .iter()
        .rev()
        .find(|e| matches!(e, Effect::Send { .. }))
    {
        Some(Effect::Send {
            conn: A,
            msg: Message::Text(t),
        }) => serde_json::from_str::<Value>(t.as_str()).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (last["code"].as_str(), last["seq"].as_u64()),
        (Some("run_too_large"), Some(3))
    );
    assert!(
        !f.log
            .iter()
            .any(|e| matches!(e, Effect::Send { msg: Message::Binary(b), .. } if b.len() == 64))
    );
    assert!(t.cancel.load(Relaxed));
}
