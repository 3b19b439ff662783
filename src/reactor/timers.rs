//! The deadline queue: an indexed binary min-heap with one slot per timer.
//!
//! Heartbeat deadlines move later on every inbound frame, so "reset later" is
//! the hot path. It is O(1) and never allocates: the slot's wanted deadline is
//! stored and the heap key is left as a lower bound, corrected lazily when it
//! reaches the top. Moving a deadline earlier sifts up, O(log n). Each timer
//! has at most one heap entry, so the heap never grows past the number of
//! timers however often they are reset.

use std::time::Instant;

/// A handle to one timer in a [`DeadlineQueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId(u32);

const NOT_QUEUED: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<T> {
    /// The deadline the owner wants; `None` = disarmed.
    deadline: Option<Instant>,
    /// Position in `heap`, or `NOT_QUEUED`.
    pos: u32,
    value: Option<T>,
}

/// Timers keyed by [`TimerId`], each carrying a `T` returned when it expires.
#[derive(Debug)]
pub struct DeadlineQueue<T> {
    slots: Vec<Slot<T>>,
    /// (key, slot); key <= the slot's deadline (a lower bound).
    heap: Vec<(Instant, u32)>,
    free: Vec<u32>,
}

impl<T> Default for DeadlineQueue<T> {
    fn default() -> Self {
        DeadlineQueue {
            slots: Vec::new(),
            heap: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Copy> DeadlineQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a disarmed timer carrying `value`.
    pub fn insert(&mut self, value: T) -> TimerId {
        let slot = Slot {
            deadline: None,
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

    /// Arms (`Some`), moves, or disarms (`None`) a timer.
    #[inline]
    pub fn set(&mut self, id: TimerId, deadline: Option<Instant>) {
        let i = id.0 as usize;
        let slot = &mut self.slots[i];
        slot.deadline = deadline;
        let pos = slot.pos;
        match (deadline, pos) {
            (None, NOT_QUEUED) => {}
            (None, pos) => self.heap_remove(pos as usize),
            (Some(d), NOT_QUEUED) => {
                self.heap.push((d, id.0));
                let last = self.heap.len() - 1;
                self.slots[i].pos = last as u32;
                self.sift_up(last);
            }
            (Some(d), pos) => {
                // Later: keep the old key as a lower bound (fixed lazily).
                if d < self.heap[pos as usize].0 {
                    self.heap[pos as usize].0 = d;
                    self.sift_up(pos as usize);
                }
            }
        }
    }

    /// The deadline the timer is armed for.
    pub fn deadline(&self, id: TimerId) -> Option<Instant> {
        self.slots[id.0 as usize].deadline
    }

    /// The earliest armed deadline (exact: stale keys are corrected here).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        loop {
            let &(key, slot) = self.heap.first()?;
            let want = self.slots[slot as usize]
                .deadline
                .expect("queued timers are armed");
            if want == key {
                return Some(key);
            }
            self.heap[0].0 = want;
            self.sift_down(0);
        }
    }

    /// Pops one timer whose deadline is `<= now`, disarming it; returns its
    /// value and the deadline it was due at.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(T, Instant)> {
        loop {
            let &(key, slot) = self.heap.first()?;
            if key > now {
                return None;
            }
            let s = &self.slots[slot as usize];
            let want = s.deadline.expect("queued timers are armed");
            if want > key {
                self.heap[0].0 = want;
                self.sift_down(0);
                continue;
            }
            let value = s.value.expect("queued timers are live");
            self.slots[slot as usize].deadline = None;
            self.heap_remove(0);
            return Some((value, want));
        }
    }

    /// Armed timers.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Allocated heap capacity (for the no-growth test and the benchmark).
    pub fn heap_capacity(&self) -> usize {
        self.heap.capacity()
    }

    fn heap_remove(&mut self, pos: usize) {
        let removed = self.heap.swap_remove(pos);
        self.slots[removed.1 as usize].pos = NOT_QUEUED;
        if pos < self.heap.len() {
            self.slots[self.heap[pos].1 as usize].pos = pos as u32;
            self.sift_down(pos);
            self.sift_up(pos);
        }
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.heap[parent].0 <= self.heap[pos].0 {
                break;
            }
            self.swap(pos, parent);
            pos = parent;
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * pos + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let child = if r < n && self.heap[r].0 < self.heap[l].0 {
                r
            } else {
                l
            };
            if self.heap[pos].0 <= self.heap[child].0 {
                break;
            }
            self.swap(pos, child);
            pos = child;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.slots[self.heap[a].1 as usize].pos = a as u32;
        self.slots[self.heap[b].1 as usize].pos = b as u32;
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
        std::iter::from_fn(|| q.pop_expired(now).map(|(v, _)| v)).collect()
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
        let (v, due) = q.pop_expired(t0 + ms(6)).unwrap();
        assert_eq!((v, due), (1, t0 + ms(5)));
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
                    while let Some((v, due)) = q.pop_expired(now) {
                        assert_eq!(model[v as usize], Some(due));
                        assert!(due <= now);
                        model[v as usize] = None;
                    }
                    assert!(model.iter().flatten().all(|d| *d > now));
                }
            }
        }
    }
}
