//! Following a run through the store (a `resume` message): the follow
//! asked for, the store's answer (the backlog, then live or not), and what
//! the store delivers after — each event once, in order, by `seq`.

use std::sync::atomic::Ordering::Relaxed;

use super::follows::Follow;
use super::{ConnRef, MAX_RUNS_PER_CONN, Runs, resume_error};
use crate::store::{Delivery, Follower, ResumeRequest, Resumed};

/// A resume for the owner to ask the store about; its answer goes to
/// [`Runs::resumed`].
#[derive(Clone, Debug)]
pub struct ResumeAsk {
    pub req: ResumeRequest,
    pub follower: Follower,
}

impl Runs {
    /// `conn` asks to follow a run through the store (a `resume`
    /// message): what to ask the store, or `None` with the refusal queued.
    pub fn resume(&mut self, conn: ConnRef, req: ResumeRequest) -> Option<ResumeAsk> {
        if self.following(conn) >= MAX_RUNS_PER_CONN {
            self.metrics.overloaded_total.fetch_add(1, Relaxed);
            let m = "too many runs in flight on this connection; retry later";
            self.send(conn, resume_error("overloaded", &req.run_id, m));
            return None;
        }
        let token = self.next_number();
        self.follows.link(
            token,
            Follow {
                conn,
                run_id: req.run_id.as_str().into(),
                last_seq: req.after_seq,
                home: false,
            },
        );
        let follower = Follower {
            reactor: self.cfg.reactor,
            key: conn.key,
            conn_id: conn.id,
            token,
        };
        Some(ResumeAsk { req, follower })
    }

    /// The store's answer to the resume of follow `token`.
    pub fn resumed(&mut self, token: u64, answer: Resumed) {
        match answer {
            Resumed::Unavailable(why) => self.refused(token, "resume_unavailable", why),
            Resumed::Now { backlog, live } => {
                for (seq, text) in backlog {
                    self.forward(token, seq, text);
                }
                if !live && let Some((f, left)) = self.unfollow(token) {
                    self.settle(f.conn, left);
                }
            }
            Resumed::Later => {}
        }
    }

    /// Something the store has for follow `token`.
    pub fn delivery(&mut self, token: u64, what: Delivery) {
        match what {
            Delivery::Event { seq, text } => self.forward(token, seq, text),
            Delivery::End => {
                if let Some((f, left)) = self.unfollow(token) {
                    self.settle(f.conn, left);
                }
            }
            Delivery::Unavailable(why) => self.refused(token, "resume_unavailable", why),
            Delivery::Interrupted(why) => self.refused(token, "resume_interrupted", why),
        }
    }

    /// Ends follow `token` with an error naming the run.
    fn refused(&mut self, token: u64, code: &str, why: &'static str) {
        let Some((f, left)) = self.unfollow(token) else {
            return;
        };
        let (message, log) = match code {
            "resume_unavailable" => ("the run is unknown, expired or not yours", "resume refused"),
            _ => (why, "resume interrupted"),
        };
        tracing::info!(conn = f.conn.id, run_id = %f.run_id, "{log}: {why}");
        self.send(f.conn, resume_error(code, &f.run_id, message));
        self.settle(f.conn, left);
    }
}
