//! The reactor suite over real loopback sockets, run for both backends:
//! capped idle waits, deadline-ended waits, the waker, a suppressed (lost)
//! wakeup recovered by the cap, and readiness of accepted sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::time::{Duration, Instant};

use common::{MS, WAIT_SLACK as SLACK, each_backend};
use pollcap::reactor::{BackendKind, CapStrategy, Interest, Reactor, WakeReason};

fn fixed(ms: u32) -> CapStrategy {
    CapStrategy::Fixed(ms * MS)
}

#[test]
fn idle_wait_ends_at_the_cap() {
    each_backend(|kind| {
        let mut r = Reactor::new(kind, fixed(200)).unwrap();
        let t0 = Instant::now();
        let turn = r.turn().unwrap();
        let took = t0.elapsed();
        assert_eq!(turn.reason, WakeReason::Cap, "{kind:?}");
        assert!(
            took >= 200 * MS && took <= 200 * MS + SLACK,
            "{kind:?}: {took:?}"
        );
        let s = r.stats().snapshot();
        assert_eq!((s.waits, s.by_cap), (1, 1));
    });
}

#[test]
fn a_deadline_before_the_cap_ends_the_wait() {
    each_backend(|kind| {
        let mut r = Reactor::new(kind, fixed(1000)).unwrap();
        let t0 = Instant::now();
        let id = r.timers().insert(7);
        let due = r.now() + 50 * MS;
        r.timers().set(id, Some(due));
        let turn = r.turn().unwrap();
        let took = t0.elapsed();
        assert_eq!(turn.reason, WakeReason::Deadline, "{kind:?}");
        assert!(turn.now >= due);
        assert!(
            took >= 50 * MS && took < 50 * MS + SLACK,
            "{kind:?}: {took:?}"
        );
        assert_eq!(r.pop_expired(), Some(7));
        assert_eq!(r.pop_expired(), None);
        let s = r.stats().snapshot();
        assert_eq!(s.by_deadline, 1);
        assert_eq!(s.overshoot.count, 1, "overshoot recorded");
    });
}

#[test]
fn the_waker_ends_a_wait_early() {
    each_backend(|kind| {
        let mut r = Reactor::new(kind, fixed(5000)).unwrap();
        let waker = r.waker();
        let t0 = Instant::now();
        let th = std::thread::spawn(move || waker.wake().unwrap());
        let turn = r.turn().unwrap();
        th.join().unwrap();
        assert_eq!(turn.reason, WakeReason::Waker, "{kind:?}");
        assert!(turn.woken);
        assert!(t0.elapsed() < 1000 * MS, "{kind:?}: {:?}", t0.elapsed());
        assert_eq!(r.stats().snapshot().by_waker, 1);
    });
}

#[test]
fn a_lost_wakeup_is_recovered_within_one_cap() {
    each_backend(|kind| {
        let mut r = Reactor::new(kind, fixed(200)).unwrap();
        let waker = r.waker();
        waker.suppress(true);
        // The request is recorded, its signal never sent: a lost wakeup.
        waker.wake().unwrap();
        let t0 = Instant::now();
        let turn = r.turn().unwrap();
        let took = t0.elapsed();
        assert_eq!(turn.reason, WakeReason::Cap, "{kind:?}");
        assert!(turn.woken, "{kind:?}: the pending request is seen");
        assert!(
            took >= 200 * MS && took <= 200 * MS + SLACK,
            "{kind:?}: {took:?}"
        );
        assert_eq!(r.stats().snapshot().lost_wakeups_recovered, 1);
    });
}

#[test]
fn without_a_cap_a_lost_wakeup_waits_for_something_else() {
    // The contrast that motivates the cap: unbounded, the suppressed wake is
    // only noticed when an unrelated deadline (here 300 ms) fires.
    each_backend(|kind| {
        let mut r = Reactor::new(kind, CapStrategy::Unbounded).unwrap();
        let waker = r.waker();
        waker.suppress(true);
        let id = r.timers().insert(1);
        let due = r.now() + 300 * MS;
        r.timers().set(id, Some(due));
        waker.wake().unwrap();
        let turn = r.turn().unwrap();
        assert_eq!(turn.reason, WakeReason::Deadline, "{kind:?}");
        assert!(turn.now >= due);
        assert!(turn.woken);
    });
}

#[test]
fn readiness_of_listener_and_accepted_socket_is_reported() {
    each_backend(|kind| {
        let mut r = Reactor::new(kind, fixed(1000)).unwrap();
        let mut listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        r.register(&mut listener, 1, Interest::READABLE).unwrap();
        let mut client = StdStream::connect(addr).unwrap();

        let deadline = Instant::now() + 2000 * MS;
        let wait_for = |r: &mut Reactor, token: usize| loop {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: no event for token {token}"
            );
            let turn = r.turn().unwrap();
            if r.events().iter().any(|e| e.token == token && e.readable) {
                assert_eq!(turn.reason, WakeReason::Io);
                return;
            }
        };
        wait_for(&mut r, 1);
        let (mut stream, _) = listener.accept().unwrap();
        r.register(&mut stream, 2, Interest::READABLE).unwrap();
        client.write_all(b"ping").unwrap();
        wait_for(&mut r, 2);
        let mut buf = [0u8; 8];
        let n = stream.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");

        // Write interest on demand: reported writable once asked for.
        r.reregister(&mut stream, 2, Interest::BOTH).unwrap();
        let turn = r.turn().unwrap();
        assert_eq!(turn.reason, WakeReason::Io);
        assert!(r.events().iter().any(|e| e.token == 2 && e.writable));
        r.deregister(&mut stream).unwrap();
        r.deregister(&mut listener).unwrap();
    });
}

#[test]
fn spin_never_blocks() {
    each_backend(|kind| {
        let mut r = Reactor::new(kind, CapStrategy::Spin).unwrap();
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(r.turn().unwrap().reason, WakeReason::Cap);
        }
        assert!(t0.elapsed() < 1000 * MS);
    });
}

#[test]
fn soft_timers_of_one_window_fire_in_one_turn_and_hard_ones_on_time() {
    each_backend(|kind| {
        let mut r = Reactor::new(kind, fixed(1000)).unwrap();
        r.set_slack(Duration::from_millis(200));
        let t0 = r.now();
        // 10 000 soft deadlines from 10 ms to 40 ms, one hard one at 20 ms:
        // were it held to the soft window, it would fire at 210 ms.
        for i in 0..10_000u32 {
            let id = r.timers().insert(i as usize);
            let at = t0 + Duration::from_millis(10) + Duration::from_nanos(u64::from(i) * 3_000);
            r.timers().set_soft(id, Some(at));
        }
        let hard = r.timers().insert(usize::MAX);
        r.timers().set(hard, Some(t0 + Duration::from_millis(20)));
        let mut turns = 0;
        let mut fired = 0;
        let mut hard_at = None;
        while fired < 10_001 {
            assert!(turns < 10, "too many turns: {turns}");
            let turn = r.turn().unwrap();
            turns += 1;
            while let Some(token) = r.pop_expired() {
                fired += 1;
                if token == usize::MAX {
                    hard_at = Some(turn.now.duration_since(t0));
                }
            }
        }
        // At most one wakeup at the hard deadline (it takes the soft ones
        // already due) and one at the end of the window the rest opened
        // (fewer if the machine was slow to wake us).
        let s = r.stats().snapshot();
        assert!(s.by_deadline <= 1 && s.by_soft_deadline <= 1, "{s:?}");
        // (A settle after the first burst collects answers, firing nothing.)
        assert!(
            turns <= 2 + (s.interrupted + s.busy) as usize,
            "{turns} turns: {s:?}"
        );
        assert_eq!((s.hard_fired, s.soft_fired), (1, 10_000));
        let late = hard_at.unwrap().saturating_sub(Duration::from_millis(20));
        assert!(
            late < 100 * MS,
            "the hard timer waited for the window: {late:?}"
        );
    });
}

#[test]
fn a_settle_grows_with_the_burst_it_waits_for_within_bounds() {
    let mut r = Reactor::new(BackendKind::Mio, fixed(1000)).unwrap();
    r.set_slack(Duration::from_millis(50));
    // A few pings: the floor (1/25 of the slack).
    assert_eq!(r.settle_time(2), Duration::from_millis(2));
    // 250 pings owe 250 pongs, 20 µs each.
    assert_eq!(r.settle_time(250), Duration::from_millis(5));
    // Never more than 1/5 of the slack, however large the burst.
    assert_eq!(r.settle_time(usize::MAX), Duration::from_millis(10));
    r.set_slack(Duration::ZERO);
    assert_eq!(r.settle_time(250), Duration::ZERO);
}
