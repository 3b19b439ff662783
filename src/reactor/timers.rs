//! The deadline queue: indexed binary min-heaps with one slot per timer,
//! for hard deadlines (exact) and soft ones (may be handled up to a slack
//! late, so that every soft timer of one slack window fires in one turn).
//!
//! Heartbeat deadlines move later on every inbound frame, so "reset later" is
//! the hot path. It is O(1) and never allocates: the slot's wanted deadline is
//! stored and the heap key is left as a lower bound, corrected lazily when it
//! reaches the top. Moving a deadline earlier sifts up, O(log n); moving a
//! timer between kinds is a removal and an insertion. Each timer has at most
//! one heap entry, so the heaps never grow past the number of timers however
//! often they are reset.

use std::time::{Duration, Instant};

/// A handle to one timer in a [`DeadlineQueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId(u32);

/// How precisely a deadline must be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Kept to the reactor's precision.
    Hard = 0,
    /// May be handled up to the reactor's slack late.
    Soft = 1,
}

const NOT_QUEUED: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<T> {
    /// The deadline the owner wants; `None` = disarmed.
    deadline: Option<Instant>,
    kind: Kind,
    /// Position in the heap of `kind`, or `NOT_QUEUED`.
    pos: u32,
    value: Option<T>,
}

/// Timers keyed by [`TimerId`], each carrying a `T` returned when it expires.
#[derive(Debug)]
pub struct DeadlineQueue<T> {
    slots: Vec<Slot<T>>,
    /// Per kind: (key, slot); key <= the slot's deadline (a lower bound).
    heaps: [Vec<(Instant, u32)>; 2],
    free: Vec<u32>,
}

impl<T> Default for DeadlineQueue<T> {
    fn default() -> Self {
        DeadlineQueue {
            slots: Vec::new(),
            heaps: [Vec::new(), Vec::new()],
            free: Vec::new(),
        }
    }
}

impl<T: Copy> DeadlineQueue<T> {
    /// An empty queue; it allocates as timers are inserted, and reuses the
    /// slots of removed ones.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a disarmed timer carrying `value`.
    pub fn insert(&mut self, value: T) -> TimerId {
        let slot = Slot {
            deadline: None,
            kind: Kind::Hard,
            pos: NOT_QUEUED,
            value: Some(value),
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                TimerId(i)
            }
            None => {
                self.slots.push(slot);
                TimerId((self.slots.len() - 1) as u32)
            }
        }
    }

    /// Removes a timer entirely; its id may be reused afterwards.
    pub fn remove(&mut self, id: TimerId) {
        self.set(id, None);
        let slot = &mut self.slots[id.0 as usize];
        if slot.value.take().is_some() {
            self.free.push(id.0);
        }
    }

    /// Arms (`Some`), moves, or disarms (`None`) a hard timer.
    #[inline]
    pub fn set(&mut self, id: TimerId, deadline: Option<Instant>) {
        self.arm(id, deadline, Kind::Hard);
    }

    /// Arms, moves, or disarms a soft timer.
    #[inline]
    pub fn set_soft(&mut self, id: TimerId, deadline: Option<Instant>) {
        self.arm(id, deadline, Kind::Soft);
    }

    /// Arms, moves, or disarms a timer of `kind`.
    #[inline]
    pub fn arm(&mut self, id: TimerId, deadline: Option<Instant>, kind: Kind) {
        let i = id.0 as usize;
        let slot = &self.slots[i];
        if slot.pos != NOT_QUEUED && slot.kind != kind {
            // Changing kind: leave the old heap first.
            let (old, pos) = (slot.kind, slot.pos);
            self.heap_remove(old, pos as usize);
        }
        let slot = &mut self.slots[i];
        slot.deadline = deadline;
        slot.kind = kind;
        let pos = slot.pos;
        let k = kind as usize;
        match (deadline, pos) {
            (None, NOT_QUEUED) => {}
            (None, pos) => self.heap_remove(kind, pos as usize),
            (Some(d), NOT_QUEUED) => {
                self.heaps[k].push((d, id.0));
                let last = self.heaps[k].len() - 1;
                self.slots[i].pos = last as u32;
                self.sift_up(kind, last);
            }
            (Some(d), pos) => {
                // Later: keep the old key as a lower bound (fixed lazily).
                if d < self.heaps[k][pos as usize].0 {
                    self.heaps[k][pos as usize].0 = d;
                    self.sift_up(kind, pos as usize);
                }
            }
        }
    }

    /// The deadline the timer is armed for.
    pub fn deadline(&self, id: TimerId) -> Option<Instant> {
        self.slots[id.0 as usize].deadline
    }

    /// The earliest armed deadline of `kind` (exact: stale keys are
    /// corrected here).
    pub fn next_of(&mut self, kind: Kind) -> Option<Instant> {
        let k = kind as usize;
        loop {
            let &(key, slot) = self.heaps[k].first()?;
            let want = self.slots[slot as usize]
                .deadline
                .expect("queued timers are armed");
            if want == key {
                return Some(key);
            }
            self.heaps[k][0].0 = want;
            self.sift_down(kind, 0);
        }
    }

    /// The earliest armed deadline of either kind.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let hard = self.next_of(Kind::Hard);
        let soft = self.next_of(Kind::Soft);
        hard.into_iter().chain(soft).min()
    }

    /// When to wake: the next hard deadline, or the end of the slack window
    /// that opens at the next soft deadline, whichever comes first, and
    /// which of the two it is.
    pub fn next_wake(&mut self, slack: Duration) -> Option<(Instant, Kind)> {
        let hard = self.next_of(Kind::Hard).map(|d| (d, Kind::Hard));
        let soft = self.next_of(Kind::Soft).map(|d| (d + slack, Kind::Soft));
        match (hard, soft) {
            (Some(h), Some(s)) => Some(if h.0 <= s.0 { h } else { s }),
            (h, s) => h.or(s),
        }
    }

    /// Pops one timer (of either kind) whose deadline is `<= now`,
    /// disarming it; returns its value, the deadline it was due at and its
    /// kind.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(T, Instant, Kind)> {
        self.pop_expired_of(now, &[Kind::Hard, Kind::Soft])
    }

    /// [`Self::pop_expired`] limited to `kinds`.
    pub fn pop_expired_of(&mut self, now: Instant, kinds: &[Kind]) -> Option<(T, Instant, Kind)> {
        for &kind in kinds {
            let k = kind as usize;
            while let Some(&(key, slot)) = self.heaps[k].first() {
                if key > now {
                    break;
                }
                let s = &self.slots[slot as usize];
                let want = s.deadline.expect("queued timers are armed");
                if want > key {
                    self.heaps[k][0].0 = want;
                    self.sift_down(kind, 0);
                    continue;
                }
                let value = s.value.expect("queued timers are live");
                self.slots[slot as usize].deadline = None;
                self.heap_remove(kind, 0);
                return Some((value, want, kind));
            }
        }
        None
    }

    /// Armed timers.
    pub fn len(&self) -> usize {
        self.heaps[0].len() + self.heaps[1].len()
    }

    /// No timer armed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Allocated heap capacity (for the no-growth test and the benchmark).
    pub fn heap_capacity(&self) -> usize {
        self.heaps[0].capacity() + self.heaps[1].capacity()
    }

    fn heap_remove(&mut self, kind: Kind, pos: usize) {
        let k = kind as usize;
        let removed = self.heaps[k].swap_remove(pos);
        self.slots[removed.1 as usize].pos = NOT_QUEUED;
        if pos < self.heaps[k].len() {
            self.slots[self.heaps[k][pos].1 as usize].pos = pos as u32;
            self.sift_down(kind, pos);
            self.sift_up(kind, pos);
        }
    }

    fn sift_up(&mut self, kind: Kind, mut pos: usize) {
        let k = kind as usize;
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.heaps[k][parent].0 <= self.heaps[k][pos].0 {
                break;
            }
            self.swap(kind, pos, parent);
            pos = parent;
        }
    }

    fn sift_down(&mut self, kind: Kind, mut pos: usize) {
        let k = kind as usize;
        let n = self.heaps[k].len();
        loop {
            let l = 2 * pos + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let heap = &self.heaps[k];
            let child = if r < n && heap[r].0 < heap[l].0 { r } else { l };
            if heap[pos].0 <= heap[child].0 {
                break;
            }
            self.swap(kind, pos, child);
            pos = child;
        }
    }

    fn swap(&mut self, kind: Kind, a: usize, b: usize) {
        let heap = &mut self.heaps[kind as usize];
        heap.swap(a, b);
        let (sa, sb) = (heap[a].1, heap[b].1);
        self.slots[sa as usize].pos = a as u32;
        self.slots[sb as usize].pos = b as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(q: &mut DeadlineQueue<u32>, now: Instant) -> Vec<u32> {
        std::iter::from_fn(|| q.pop_expired(now).map(|(v, _, _)| v)).collect()
    }

    #[test]
    fn pops_in_deadline_order() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new();
        let order = [5u32, 1, 4, 2, 3];
        for v in order {
            let id = q.insert(v);
            q.set(id, Some(t0 + ms(v as u64 * 10)));
        }
        assert_eq!(q.next_deadline(), Some(t0 + ms(10)));
        assert_eq!(drain(&mut q, t0 + ms(25)), vec![1, 2]);
        assert_eq!(drain(&mut q, t0 + ms(100)), vec![3, 4, 5]);
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn reset_later_and_earlier() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new();
        let a = q.insert(1u32);
        let b = q.insert(2u32);
        q.set(a, Some(t0 + ms(10)));
        q.set(b, Some(t0 + ms(20)));
        q.set(a, Some(t0 + ms(30))); // later: lazy
        assert_eq!(q.next_deadline(), Some(t0 + ms(20)), "stale key corrected");
        assert_eq!(drain(&mut q, t0 + ms(15)), Vec::<u32>::new());
        q.set(a, Some(t0 + ms(5))); // earlier: sift up
        assert_eq!(q.next_deadline(), Some(t0 + ms(5)));
        let (v, due, kind) = q.pop_expired(t0 + ms(6)).unwrap();
        assert_eq!((v, due, kind), (1, t0 + ms(5), Kind::Hard));
        assert_eq!(q.deadline(a), None, "popped timers are disarmed");
    }

    #[test]
    fn cancel_and_remove() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new();
        let ids: Vec<_> = (0..10u32)
            .map(|v| {
                let id = q.insert(v);
                q.set(id, Some(t0 + ms(v as u64)));
                id
            })
            .collect();
        q.set(ids[3], None);
        q.remove(ids[7]);
        assert_eq!(q.len(), 8);
        assert_eq!(drain(&mut q, t0 + ms(100)), vec![0, 1, 2, 4, 5, 6, 8, 9]);
        // the removed slot is reused
        let again = q.insert(42);
        assert_eq!(again, ids[7]);
    }

    #[test]
    fn a_million_resets_do_not_grow_the_queue() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new();
        let ids: Vec<_> = (0..100u32).map(|v| q.insert(v)).collect();
        for (i, id) in ids.iter().enumerate() {
            q.set(*id, Some(t0 + ms(i as u64)));
        }
        let cap = q.heap_capacity();
        let mut now = t0;
        for n in 0..1_000_000u64 {
            // every timer pushed later, as a heartbeat reset does; sometimes earlier
            let id = ids[(n % 100) as usize];
            now += Duration::from_micros(1);
            let d = if n % 1000 == 0 { now } else { now + ms(1000) };
            q.set(id, Some(d));
        }
        assert_eq!(q.len(), 100);
        assert_eq!(
            q.heap_capacity(),
            cap,
            "no allocation after a million resets"
        );
        // and the queue is still correct: every timer was last pushed past
        // `now`, so nothing is due until one is moved back.
        assert_eq!(drain(&mut q, now), Vec::<u32>::new());
        q.set(ids[42], Some(now));
        assert_eq!(drain(&mut q, now), vec![42]);
        while let Some(d) = q.next_deadline() {
            assert!(d > now);
            q.pop_expired(d).unwrap();
        }
    }

    #[test]
    fn heap_matches_a_naive_model_under_random_operations() {
        // Deterministic xorshift so failures reproduce.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new();
        let mut model: Vec<Option<Instant>> = Vec::new();
        let mut ids = Vec::new();
        for v in 0..64u32 {
            ids.push(q.insert(v));
            model.push(None);
        }
        let mut now = t0;
        for _ in 0..20_000 {
            let k = (rnd() % 64) as usize;
            match rnd() % 4 {
                0 => {
                    q.set(ids[k], None);
                    model[k] = None;
                }
                1 | 2 => {
                    let d = now + ms(rnd() % 50);
                    q.set(ids[k], Some(d));
                    model[k] = Some(d);
                }
                _ => {
                    now += ms(rnd() % 10);
                    let want_next = model.iter().flatten().min().copied();
                    assert_eq!(q.next_deadline(), want_next);
                    while let Some((v, due, _)) = q.pop_expired(now) {
                        assert_eq!(model[v as usize], Some(due));
                        assert!(due <= now);
                        model[v as usize] = None;
                    }
                    assert!(model.iter().flatten().all(|d| *d > now));
                }
            }
        }
    }

    #[test]
    fn a_soft_window_opens_at_the_first_soft_deadline_and_hard_ones_stay_exact() {
        let t0 = Instant::now();
        let slack = ms(50);
        let mut q = DeadlineQueue::new();
        let ids: Vec<_> = (0..100u32).map(|v| q.insert(v)).collect();
        // 100 soft deadlines spread over one 50 ms window.
        for (i, id) in ids.iter().enumerate() {
            q.set_soft(*id, Some(t0 + Duration::from_micros(i as u64 * 490)));
        }
        assert_eq!(q.next_wake(slack), Some((t0 + slack, Kind::Soft)));
        // A hard deadline inside the window is not pushed to its end.
        let hard = q.insert(999);
        q.set(hard, Some(t0 + ms(10)));
        assert_eq!(q.next_wake(slack), Some((t0 + ms(10), Kind::Hard)));
        assert_eq!(drain(&mut q, t0 + ms(10)), {
            // Soft timers already due at 10 ms fire with the hard one.
            let mut v: Vec<u32> = (0..=20).collect();
            v.insert(0, 999);
            v
        });
        // Waking at the window's end fires every remaining soft timer.
        let (wake, kind) = q.next_wake(slack).unwrap();
        assert_eq!(kind, Kind::Soft);
        assert_eq!(drain(&mut q, wake), (21..100).collect::<Vec<u32>>());
        assert!(q.is_empty());
    }

    #[test]
    fn timers_move_between_kinds_without_duplicates() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new();
        let a = q.insert(1u32);
        q.set_soft(a, Some(t0 + ms(30)));
        q.set(a, Some(t0 + ms(20))); // now hard
        q.set_soft(a, Some(t0 + ms(40))); // soft again, later
        assert_eq!(q.len(), 1, "one entry per timer");
        assert_eq!(q.next_wake(ms(5)), Some((t0 + ms(45), Kind::Soft)));
        assert_eq!(q.pop_expired(t0 + ms(39)), None, "never early");
        assert_eq!(
            q.pop_expired(t0 + ms(44)),
            Some((1, t0 + ms(40), Kind::Soft))
        );
        assert!(q.is_empty());
    }

    #[test]
    fn resetting_every_turn_never_grows_either_heap() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new();
        let ids: Vec<_> = (0..1000u32).map(|v| q.insert(v)).collect();
        for (i, id) in ids.iter().enumerate() {
            q.set_soft(*id, Some(t0 + ms(i as u64)));
        }
        let cap = q.heap_capacity();
        let mut now = t0;
        for turn in 0..2000u64 {
            now += ms(1);
            // Every connection saw a frame: its heartbeat moves later.
            for id in &ids {
                q.set_soft(*id, Some(now + ms(15_000)));
            }
            // Now and then one sends a ping: a hard pong deadline.
            let id = ids[(turn % 1000) as usize];
            q.set(id, Some(now + ms(5_000)));
            q.set_soft(id, Some(now + ms(15_000)));
        }
        assert_eq!(q.len(), 1000);
        assert!(
            q.heap_capacity() <= cap + 8,
            "{} vs {cap}",
            q.heap_capacity()
        );
        assert_eq!(drain(&mut q, now), Vec::<u32>::new());
    }

    #[test]
    fn two_kinds_match_a_naive_model_under_random_operations() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let t0 = Instant::now();
        let slack = ms(7);
        let mut q = DeadlineQueue::new();
        let mut model: Vec<Option<(Instant, Kind)>> = vec![None; 64];
        let ids: Vec<_> = (0..64u32).map(|v| q.insert(v)).collect();
        let mut now = t0;
        for _ in 0..20_000 {
            let k = (rnd() % 64) as usize;
            match rnd() % 5 {
                0 => {
                    q.set(ids[k], None);
                    model[k] = None;
                }
                1 | 2 => {
                    let kind = if rnd() % 2 == 0 {
                        Kind::Hard
                    } else {
                        Kind::Soft
                    };
                    let d = now + ms(rnd() % 50);
                    q.arm(ids[k], Some(d), kind);
                    model[k] = Some((d, kind));
                }
                _ => {
                    let want = model
                        .iter()
                        .flatten()
                        .map(|&(d, kind)| match kind {
                            Kind::Hard => (d, Kind::Hard),
                            Kind::Soft => (d + slack, Kind::Soft),
                        })
                        .min_by_key(|&(d, kind)| (d, kind as u8));
                    let got = q.next_wake(slack);
                    assert_eq!(got.map(|g| g.0), want.map(|w| w.0));
                    now += ms(rnd() % 10);
                    while let Some((v, due, kind)) = q.pop_expired(now) {
                        assert_eq!(model[v as usize], Some((due, kind)));
                        assert!(due <= now);
                        model[v as usize] = None;
                    }
                    assert!(model.iter().flatten().all(|(d, _)| *d > now));
                }
            }
        }
    }

    #[test]
    fn ten_thousand_soft_deadlines_in_one_window_take_one_wakeup() {
        let t0 = Instant::now();
        let slack = ms(50);
        let mut q = DeadlineQueue::new();
        // 10 000 connections whose heartbeats fall within one 50 ms window
        // (jitter spreads them over distinct microseconds).
        for i in 0..10_000u32 {
            let id = q.insert(i);
            q.set_soft(id, Some(t0 + Duration::from_micros(u64::from(i) * 5)));
        }
        let mut wakeups = 0;
        let mut fired = 0;
        let mut now = t0;
        while let Some((wake, _)) = q.next_wake(slack) {
            now = now.max(wake);
            wakeups += 1;
            fired += drain(&mut q, now).len();
        }
        assert_eq!((wakeups, fired), (1, 10_000));
        // Without slack, the same deadlines cost a wakeup each (distinct µs).
        for i in 0..100u32 {
            let id = q.insert(i);
            q.set_soft(id, Some(t0 + Duration::from_micros(u64::from(i) * 5)));
        }
        let mut wakeups = 0;
        while let Some((wake, _)) = q.next_wake(Duration::ZERO) {
            wakeups += 1;
            drain(&mut q, wake);
        }
        assert_eq!(wakeups, 100);
    }
}
