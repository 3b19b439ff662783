//! Runs per subject across the instance (`max_runs_per_subject`): a run
//! is counted when it is prepared, against one `SubjectRuns` table shared
//! by every reactor's run layer, and given back when it ends or no source
//! takes it.

use std::sync::Arc;
use std::time::Instant;

use super::{ConnRef, Runs};
use crate::frontdoor::{Refused, SubjectRuns};

impl Runs {
    /// Counts each subject's runs in `subjects` (shared by every reactor):
    /// a subject at its limit gets `overloaded`.
    pub fn with_subject_limit(mut self, subjects: Option<Arc<SubjectRuns>>) -> Runs {
        self.subjects = subjects;
        self
    }

    /// Counts a run of `subject` (id `id`, asked for by `conn`): the
    /// subject to give back later (`None` when not limited), or `None`
    /// with the `overloaded` refusal queued.
    pub(super) fn charge(
        &mut self,
        now: Instant,
        conn: ConnRef,
        id: &str,
        subject: Option<&Arc<str>>,
    ) -> Option<Option<Arc<str>>> {
        let (Some(table), Some(s)) = (&self.subjects, subject) else {
            return Some(None);
        };
        if table.try_take(s) {
            return Some(Some(s.clone()));
        }
        self.metrics.refused(Refused::SubjectRuns);
        self.metrics.refusal_log.note(
            Refused::SubjectRuns,
            now,
            format_args!("subject {s:?} has its most runs in flight: overloaded"),
        );
        let m = "too many runs in flight for this user; retry later";
        self.refuse_with(now, conn, id, "overloaded", m);
        None
    }

    /// A counted run ended, or no source took it.
    pub(super) fn give_back(&self, charged: Option<&Arc<str>>) {
        if let (Some(t), Some(s)) = (&self.subjects, charged) {
            t.give_back(s);
        }
    }
}
