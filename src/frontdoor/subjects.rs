//! Runs in flight per authenticated subject, across every reactor of the
//! instance. A run belongs to one reactor's run layer, but a user with
//! many tabs has connections on several: the count is shared. One lock
//! taken when a run starts and when it ends (never per event), and an
//! entry only while the subject has a run, so the table is bounded by the
//! runs in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Runs in flight per subject, at most `max` each.
#[derive(Debug)]
pub struct SubjectRuns {
    max: u32,
    table: Mutex<HashMap<Arc<str>, u32>>,
}

impl SubjectRuns {
    /// `None` when the limit is off (0).
    pub fn new(max: usize) -> Option<Arc<SubjectRuns>> {
        (max > 0).then(|| {
            Arc::new(SubjectRuns {
                max: u32::try_from(max).unwrap_or(u32::MAX),
                table: Mutex::new(HashMap::new()),
            })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u32>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more run for `subject`, if it has fewer than the limit.
    pub fn try_take(&self, subject: &Arc<str>) -> bool {
        let mut t = self.lock();
        let n = t.entry(subject.clone()).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// A run [`SubjectRuns::try_take`] counted has ended.
    pub fn give_back(&self, subject: &str) {
        let mut t = self.lock();
        if let Some(n) = t.get_mut(subject) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(subject);
            }
        }
    }

    /// Runs in flight for `subject`.
    #[cfg(test)]
    pub fn of(&self, subject: &str) -> u32 {
        self.lock().get(subject).copied().unwrap_or(0)
    }

    /// Subjects with a run in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_subject_and_forgets_idle_ones() {
        let s = SubjectRuns::new(2).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        assert!(s.try_take(&a) && s.try_take(&a));
        assert!(!s.try_take(&a));
        assert!(s.try_take(&b));
        s.give_back("alice");
        assert!(s.try_take(&a));
        assert_eq!(s.of("alice"), 2);
        for _ in 0..3 {
            s.give_back("alice");
            s.give_back("bob");
        }
        assert!(s.is_empty());
        assert!(SubjectRuns::new(0).is_none());
    }
}
