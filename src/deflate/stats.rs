//! Compression counters: messages and bytes before and after compression
//! in each direction, negotiations, refusals. Counted per message, so each
//! thread writes only its own slot (no shared cache line on the hot path,
//! no read-modify-write); a server's reactor threads bind their slots to
//! its [`Registry`], which `/health` and `/metrics` sum when they render.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One counter of [`Counts`].
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    /// Connections that negotiated the extension.
    Negotiated,
    /// Upgrade requests whose offers were all declined (or came from a
    /// client whose compression is known broken).
    Declined,
    /// Messages sent compressed, their bytes before and after.
    OutMessages,
    OutBytes,
    OutWire,
    /// Messages sent uncompressed on a connection that negotiated the
    /// extension (under `--deflate-threshold`).
    OutSkipped,
    /// Compressed messages received, their bytes on the wire and inflated.
    InMessages,
    InWire,
    InBytes,
    /// Sends that reused a compression made for another connection.
    SharedHits,
    /// Inbound messages refused: inflating past `--max-message` (1009).
    TooBig,
    /// Inbound messages refused: invalid deflate data or UTF-8 (1007).
    Invalid,
}

const N: usize = Counter::Invalid as usize + 1;

struct Slot([AtomicU64; N]);

/// The slots of one server's threads (in its `ServerMetrics`); threads
/// that belong to no server count in a registry nobody renders.
#[derive(Debug, Default)]
pub struct Registry {
    slots: Mutex<Vec<Arc<Slot>>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

static UNBOUND: Registry = Registry {
    slots: Mutex::new(Vec::new()),
};

thread_local! {
    static SLOT: std::cell::RefCell<Option<Arc<Slot>>> = const { std::cell::RefCell::new(None) };
}

fn new_slot(registry: &Registry) -> Arc<Slot> {
    let slot = Arc::new(Slot(std::array::from_fn(|_| AtomicU64::new(0))));
    registry
        .slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(slot.clone());
    slot
}

/// Makes this thread count into `registry` from now on (a server's
/// reactor thread, as it starts).
pub fn bind(registry: &Registry) {
    SLOT.with_borrow_mut(|s| *s = Some(new_slot(registry)));
}

/// Adds `n` to this thread's `c`.
pub fn add(c: Counter, n: u64) {
    SLOT.with_borrow_mut(|s| {
        let slot = s.get_or_insert_with(|| new_slot(&UNBOUND));
        let a = &slot.0[c as usize];
        // Only this thread writes its slot: no read-modify-write needed.
        a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
    });
}

/// The counters summed over every thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub negotiated: u64,
    pub declined: u64,
    pub out_messages: u64,
    pub out_bytes: u64,
    pub out_wire_bytes: u64,
    pub out_skipped: u64,
    pub in_messages: u64,
    pub in_wire_bytes: u64,
    pub in_bytes: u64,
    pub shared_hits: u64,
    pub refused_too_big: u64,
    pub refused_invalid: u64,
}

impl Registry {
    /// The counters of every thread bound here, summed.
    pub fn snapshot(&self) -> Counts {
        let mut t = [0u64; N];
        for slot in self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for (sum, a) in t.iter_mut().zip(&slot.0) {
                *sum = sum.wrapping_add(a.load(Relaxed));
            }
        }
        use Counter::*;
        let g = |c: Counter| t[c as usize];
        Counts {
            negotiated: g(Negotiated),
            declined: g(Declined),
            out_messages: g(OutMessages),
            out_bytes: g(OutBytes),
            out_wire_bytes: g(OutWire),
            out_skipped: g(OutSkipped),
            in_messages: g(InMessages),
            in_wire_bytes: g(InWire),
            in_bytes: g(InBytes),
            shared_hits: g(SharedHits),
            refused_too_big: g(TooBig),
            refused_invalid: g(Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_count_in_their_own_slots_and_the_registry_sums_them() {
        let reg = Registry::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    bind(&reg);
                    for _ in 0..1000 {
                        add(Counter::SharedHits, 1);
                    }
                    add(Counter::InWire, 7);
                });
            }
            // An unbound thread counts elsewhere.
            s.spawn(|| add(Counter::SharedHits, 5));
        });
        let c = reg.snapshot();
        assert_eq!((c.shared_hits, c.in_wire_bytes), (4000, 28));
    }
}
