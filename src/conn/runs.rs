//! The runs a connection follows: the ones its messages started and the
//! ones it resumed. Each run's events are forwarded in `seq` order and at
//! most once (a resumed run's stored and live events may overlap); the
//! owner decides when a run starts, ends or is cancelled (its execution
//! deadline, its cancel flag and its store live in the server), and a
//! drain waits for the runs followed here.

#[derive(Debug)]
struct Follow {
    run: u64,
    /// Last event `seq` forwarded.
    last_seq: u64,
}

#[derive(Debug, Default)]
pub(super) struct Runs {
    list: Vec<Follow>,
}

impl Runs {
    /// Follows `run`; events up to `after_seq` are not forwarded.
    pub(super) fn follow(&mut self, run: u64, after_seq: u64) {
        self.list.push(Follow {
            run,
            last_seq: after_seq,
        });
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Notes that event `seq` of `run` is being forwarded; false when the
    /// run is not followed here, or `seq` was forwarded already (or an
    /// earlier one: events only move forward).
    pub(super) fn forward(&mut self, run: u64, seq: u64) -> bool {
        match self.list.iter_mut().find(|r| r.run == run) {
            Some(r) if seq > r.last_seq => {
                r.last_seq = seq;
                true
            }
            _ => false,
        }
    }

    /// Stops following `run`; false when it was not followed.
    pub(super) fn finish(&mut self, run: u64) -> bool {
        match self.list.iter().position(|r| r.run == run) {
            Some(i) => {
                self.list.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub(super) fn clear(&mut self) {
        self.list.clear();
    }
}
