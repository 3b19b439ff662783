//! The Redis store against a real `redis-server` (Debian package; started
//! here on a free loopback port, killed when the test ends): two stores on
//! one Redis stand for two instances. Dropping a store stops its helper
//! threads, so its lease is no longer renewed: in-process, that is how an
//! instance dies. Every wait is bounded; deliveries are waited for on a
//! reactor woken by the store, as the server does.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::{Client, Connection, FromRedisValue};

use super::*;
use crate::reactor::{BackendKind, CapStrategy, Mailbox, Reactor};

/// A private redis-server: no persistence, loopback only.
struct Redis {
    child: Child,
    client: Client,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (scripts/test installs it)");
        let client = Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
        let mut r = Redis {
            child,
            client,
            port,
        };
        let up = eventually(Duration::from_secs(10), || {
            let mut c = r.client.get_connection_with_timeout(CALL).ok()?;
            ::redis::cmd("PING").query::<()>(&mut c).ok()
        });
        assert!(
            up.is_some() && r.child.try_wait().ok().flatten().is_none(),
            "redis-server did not answer on {port}"
        );
        r
    }

    fn conn(&self) -> Connection {
        let c = self
            .client
            .get_connection_with_timeout(CALL)
            .expect("Redis");
        c.set_read_timeout(Some(CALL)).expect("timeout");
        c
    }

    fn query<T: FromRedisValue>(&self, cmd: &mut ::redis::Cmd) -> T {
        cmd.query(&mut self.conn()).expect("Redis answers")
    }

    fn target(&self) -> RedisTarget {
        RedisTarget {
            url: format!("redis://127.0.0.1:{}", self.port),
            shown: format!("127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `check` until it gives something, for at most `limit` (Redis state
/// changed by another process: polled, 20 ms apart).
fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One instance: a store and the reactor its deliveries wake.
struct Side {
    reactor: Reactor,
    mailbox: Arc<Mailbox<Delivered>>,
    store: Option<RedisStore>,
    got: VecDeque<Delivered>,
}

impl Side {
    fn start(redis: &Redis, window: Duration) -> Side {
        let cap = CapStrategy::Fixed(Duration::from_millis(50));
        let reactor = Reactor::new(BackendKind::Mio, cap).expect("reactor");
        let mailbox = Arc::new(Mailbox::new(reactor.waker()));
        let limits = ResumeLimits {
            window,
            run_events: 100_000,
            run_bytes: 1 << 20,
            total_events: 1 << 20,
            total_bytes: 1 << 30,
        };
        let boxes: Deliveries = Arc::from(vec![mailbox.clone()]);
        let store = RedisStore::start(&redis.target(), limits, boxes).expect("store");
        Side {
            reactor,
            mailbox,
            store: Some(store),
            got: VecDeque::new(),
        }
    }

    fn store(&self) -> &RedisStore {
        self.store.as_ref().expect("a live instance")
    }

    fn instance(&self) -> String {
        self.store().link.instance.clone()
    }

    /// The instance dies: its threads stop, its lease is renewed no more.
    fn kill(&mut self) {
        self.store = None;
    }

    fn begin(&self, id: &str) {
        let deadline_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            + 120_000; // far: no follower may give up on the deadline
        self.store().begin(&RunStart {
            id,
            owner: Some("alice"),
            deadline_unix_ms,
        });
    }

    fn append(&self, id: &str, seq: u64) {
        let text = format!(r#"{{"type":"agent_thinking","seq":{seq}}}"#);
        self.store().append(id, seq, &text.into());
    }

    fn resume(&self, id: &str, after_seq: u64, token: u64) {
        let follower = Follower {
            reactor: 0,
            key: token as usize,
            conn_id: token,
            token,
        };
        let r = self
            .store()
            .resume(&ResumeRequest::new(id, after_seq), Some("alice"), follower);
        assert!(matches!(r, Resumed::Later), "{r:?}");
    }

    /// The next delivery within `limit`.
    fn next(&mut self, limit: Duration) -> Option<Delivered> {
        let end = Instant::now() + limit;
        loop {
            if let Some(d) = self.got.pop_front() {
                return Some(d);
            }
            if Instant::now() >= end {
                return None;
            }
            self.reactor.turn().expect("turn");
            self.got.extend(self.mailbox.take());
        }
    }

    fn expect(&mut self, want: Delivery) {
        let got = self.next(Duration::from_secs(5)).map(|d| d.what);
        assert_eq!(got, Some(want));
    }

    fn event(seq: u64) -> Delivery {
        let text = format!(r#"{{"type":"agent_thinking","seq":{seq}}}"#);
        Delivery::Event {
            seq,
            text: text.into(),
        }
    }
}

fn members(redis: &Redis) -> Vec<String> {
    redis.query(::redis::cmd("ZRANGE").arg(LEASES).arg(0).arg(-1))
}

/// Both instances hold their lease.
fn both_leased(redis: &Redis, a: &Side, b: &Side) {
    let (ia, ib) = (a.instance(), b.instance());
    let ok = eventually(Duration::from_secs(5), || {
        let m = members(redis);
        (m.contains(&ia) && m.contains(&ib)).then_some(())
    });
    assert!(
        ok.is_some(),
        "both leases in {LEASES}: {:?}",
        members(redis)
    );
}

/// Waits until the stream of `id` holds `n` entries (the writes landed).
fn written(redis: &Redis, id: &str, n: usize) {
    let ok = eventually(Duration::from_secs(5), || {
        let len: usize = redis.query(::redis::cmd("XLEN").arg(stream_key(id)));
        (len == n).then_some(())
    });
    assert!(ok.is_some(), "{n} entries of {id} in Redis");
}

#[test]
fn a_follower_learns_within_five_seconds_that_the_runs_instance_died() {
    let redis = Redis::start();
    // A short window: after the test, nothing may be left in Redis.
    let window = Duration::from_secs(2);
    let mut a = Side::start(&redis, window);
    let mut b = Side::start(&redis, window);
    both_leased(&redis, &a, &b);
    a.begin("r1");
    a.append("r1", 1);
    a.append("r1", 2);
    written(&redis, "r1", 2);
    let meta: String = redis.query(::redis::cmd("GET").arg(meta_key("r1")));
    assert!(meta.contains(&a.instance()), "{meta}");
    b.resume("r1", 0, 1);
    b.expect(Side::event(1));
    b.expect(Side::event(2));
    a.append("r1", 3);
    b.expect(Side::event(3)); // tailing the live run
    let ia = a.instance();
    a.kill();
    let killed = Instant::now();
    let d = b.next(Duration::from_secs(10)).expect("a delivery");
    let took = killed.elapsed();
    assert_eq!(d.what, Delivery::Interrupted("the run's instance stopped"));
    assert_eq!(d.token, 1);
    eprintln!("owner gone -> resume_interrupted: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        took >= Duration::from_secs(1),
        "not before the lease lapsed"
    );
    assert_eq!(b.store().stats().owner_lost_total.load(Relaxed), 1);
    // B's renewals drop A's lapsed lease from the set.
    let gone = eventually(Duration::from_secs(3), || {
        (!members(&redis).contains(&ia)).then_some(())
    });
    assert!(gone.is_some(), "{:?}", members(&redis));
    // Nothing is left behind: the run's keys and the lease set expire.
    b.kill();
    let empty = eventually(Duration::from_secs(8), || {
        let n: u64 = redis.query(&mut ::redis::cmd("DBSIZE"));
        (n == 0).then_some(())
    });
    let keys: Vec<String> = redis.query(::redis::cmd("KEYS").arg("*"));
    assert!(empty.is_some(), "left in Redis: {keys:?}");
}

#[test]
fn a_live_owners_run_is_never_interrupted_and_a_finished_one_needs_no_lease() {
    let redis = Redis::start();
    let window = Duration::from_secs(60);
    let mut a = Side::start(&redis, window);
    let mut b = Side::start(&redis, window);
    both_leased(&redis, &a, &b);
    // A slow run, followed on B for more than twice the lease: every
    // event comes, nothing else, then the end.
    a.begin("slow");
    a.append("slow", 1);
    written(&redis, "slow", 1);
    b.resume("slow", 0, 1);
    b.expect(Side::event(1));
    let started = Instant::now();
    let mut seq = 1;
    while started.elapsed() < LEASE * 2 + LEASE_CHECK {
        // Quiet for longer than a renewal and a check: nothing comes.
        let quiet = b.next(RENEW + LEASE_CHECK).map(|d| d.what);
        assert_eq!(quiet, None, "after event {seq}");
        seq += 1;
        a.append("slow", seq);
        b.expect(Side::event(seq));
    }
    a.store().finish("slow", seq);
    b.expect(Delivery::End);
    assert_eq!(b.store().stats().owner_lost_total.load(Relaxed), 0);

    // A run that ends just before its instance dies ends normally for
    // its follower; and once the lease has lapsed, the finished run
    // still resumes whole.
    a.begin("done");
    a.append("done", 1);
    written(&redis, "done", 1);
    b.resume("done", 0, 2);
    b.expect(Side::event(1));
    a.append("done", 2);
    a.store().finish("done", 2);
    let ia = a.instance();
    a.kill();
    b.expect(Side::event(2));
    b.expect(Delivery::End);
    let lapsed = eventually(LEASE * 2, || (!members(&redis).contains(&ia)).then_some(()));
    assert!(lapsed.is_some(), "A's lease lapsed");
    b.resume("done", 0, 3);
    b.expect(Side::event(1));
    b.expect(Side::event(2));
    b.expect(Delivery::End);
    assert_eq!(b.store().stats().owner_lost_total.load(Relaxed), 0);
}

#[test]
fn a_run_is_checked_against_its_owners_lease_only_on_other_instances() {
    let redis = Redis::start();
    let window = Duration::from_secs(60);
    let a = Side::start(&redis, window);
    let b = Side::start(&redis, window);
    both_leased(&redis, &a, &b);
    a.begin("r");
    a.append("r", 1);
    written(&redis, "r", 1);
    let owner = |side: &Side| {
        let mut conn = None;
        let link = &side.store().link;
        reader::resume(link, &mut conn, "r", Some("alice"), 0).map(|f| f.owner)
    };
    // On A the run is its own: alive while A is.
    assert_eq!(owner(&a), Ok(None));
    assert_eq!(owner(&b), Ok(Some(a.instance())));
}

/// `INFO commandstats`: calls per command.
fn calls(redis: &Redis) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis.query(::redis::cmd("INFO").arg("commandstats"));
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let n = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), n))
        })
        .collect()
}

/// The lease's cost does not grow with the runs: with N live runs on A,
/// each followed on B, A renews once a second and B checks twice a second
/// (`POLLCAP_LEASE_RUNS` sets N, 1000 by default; BENCHMARKS.md has 10 000).
#[test]
fn the_lease_costs_a_few_calls_a_second_however_many_runs() {
    let n: u64 = std::env::var("POLLCAP_LEASE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let redis = Redis::start();
    let window = Duration::from_secs(60);
    let a = Side::start(&redis, window);
    let mut b = Side::start(&redis, window);
    both_leased(&redis, &a, &b);
    for i in 0..n {
        let id = format!("run-{i}");
        a.begin(&id);
        a.append(&id, 1);
    }
    let last = format!("run-{}", n - 1);
    written(&redis, &last, 1);
    // Followed in chunks the read queue takes.
    for chunk in (0..n).collect::<Vec<_>>().chunks(READ_QUEUE / 2) {
        for &i in chunk {
            b.resume(&format!("run-{i}"), 0, i + 1);
        }
        for _ in chunk {
            let d = b.next(Duration::from_secs(30)).expect("a delivery");
            assert!(matches!(d.what, Delivery::Event { seq: 1, .. }), "{d:?}");
        }
    }
    let before = calls(&redis);
    let t = Instant::now();
    assert_eq!(b.next(Duration::from_secs(3)).map(|d| d.what), None);
    let after = calls(&redis);
    let secs = t.elapsed().as_secs_f64();
    let rate = |k: &str| {
        (after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)) as f64 / secs
    };
    let total: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
    let each: Vec<String> = after
        .keys()
        .map(|k| format!("{k} {:.1}", rate(k)))
        .filter(|s| !s.ends_with(" 0.0"))
        .collect();
    eprintln!(
        "{n} live runs followed across instances: EVAL {:.1}/s (the lease), all commands \
         {:.1}/s (those inside scripts included): {}",
        rate("eval"),
        total as f64 / secs,
        each.join(", ")
    );
    // A: 1 renewal/s; B: 1 renewal/s and 2 checks/s.
    assert!(rate("eval") <= 5.0, "{:.1} EVAL/s", rate("eval"));
    assert!(rate("eval") >= 2.0, "{:.1} EVAL/s", rate("eval"));
}
