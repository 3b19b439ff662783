//! Reactor micro-benchmarks: the cost of one wait turn with no events per
//! backend × strategy, and deadline-queue insert / reset / pop at 10k and
//! 100k timers. Results and the command live in BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pollcap::reactor::{BackendKind, CapStrategy, DeadlineQueue, Reactor};

fn wait_turn(c: &mut Criterion) {
    let mut g = c.benchmark_group("wait_turn");
    for kind in BackendKind::ALL {
        // A turn with nothing ready: a zero-timeout OS wait plus bookkeeping.
        // `fixed` and `unbounded` get a timer that is already due, so their
        // wait is zero too and only the strategy's arithmetic differs.
        let strategies = [
            ("spin", CapStrategy::Spin),
            ("fixed_1s", CapStrategy::Fixed(Duration::from_secs(1))),
            ("unbounded", CapStrategy::Unbounded),
        ];
        for (name, cap) in strategies {
            let mut r = Reactor::new(kind, cap).unwrap();
            let id = r.timers().insert(0);
            g.bench_function(format!("{}/{name}", kind.name()), |b| {
                b.iter(|| {
                    let past = r.now();
                    r.timers().set(id, Some(past));
                    let t = r.turn().unwrap();
                    black_box(r.pop_expired());
                    black_box(t)
                })
            });
        }
    }
    g.finish();
}

fn deadline_queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("deadline_queue");
    for n in [10_000usize, 100_000] {
        let t0 = Instant::now();
        let filled = || {
            let mut q = DeadlineQueue::new();
            let ids: Vec<_> = (0..n)
                .map(|i| {
                    let id = q.insert(i);
                    q.set(id, Some(t0 + Duration::from_micros((i * 7919 % n) as u64)));
                    id
                })
                .collect();
            (q, ids)
        };

        g.bench_function(format!("insert_arm/{n}"), |b| {
            b.iter_batched_ref(
                &filled,
                |(q, _)| {
                    let id = q.insert(usize::MAX);
                    q.set(id, Some(t0 + Duration::from_micros(n as u64 / 2)));
                },
                BatchSize::LargeInput,
            )
        });

        // The heartbeat path: push a random timer's deadline later.
        let (mut q, ids) = filled();
        let mut k = 0usize;
        let mut later = t0 + Duration::from_secs(10);
        g.bench_function(format!("reset_later/{n}"), |b| {
            b.iter(|| {
                k = (k + 7919) % n;
                later += Duration::from_nanos(1);
                q.set(ids[k], Some(later));
            })
        });

        // Moving earlier sifts up: the slow path, measured for contrast.
        let (mut q, ids) = filled();
        let mut early = t0;
        g.bench_function(format!("reset_earlier/{n}"), |b| {
            b.iter(|| {
                k = (k + 7919) % n;
                early -= Duration::from_nanos(1);
                q.set(ids[k], Some(early));
            })
        });

        g.bench_function(format!("pop_expired/{n}"), |b| {
            b.iter_batched_ref(
                &filled,
                |(q, _)| black_box(q.pop_expired(t0 + Duration::from_secs(1))),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = wait_turn, deadline_queue
}
criterion_main!(benches);
