//! Application messages (SPEC §5): echo inline; for a handler, a `resume`
//! (when the handler opts in) is asked of the store for the run layer,
//! and any other message starts a run on the worker pool — or is answered
//! `overloaded` / `draining` by the run layer.

use std::sync::Arc;

use tungstenite::Message;

use super::agents::AgentStart;
use super::entry::Entry;
use super::{Shared, admission};
use crate::app::{App, Inbound, Outbox, Start};
use crate::conn::Cx;
use crate::reactor::WallClock;
use crate::runs::{Expiry, Runs};
use crate::source::pool;
use crate::store::ResumeRequest;

/// What answering a message needs besides the connection.
pub(super) struct Answer<'a> {
    pub shared: &'a Shared,
    /// This reactor's index (where its runs' mail goes).
    pub reactor: usize,
    pub wall: WallClock,
    pub draining: bool,
    pub runs: &'a mut Runs,
    /// Agent runs to start once the drive is over (they need the reactor).
    pub agents: &'a mut Vec<AgentStart>,
}

/// Answers one application message of connection `key`: first against
/// the connection's message and byte buckets (over them: close 1008
/// `rate limit`), then by the application.
pub(super) fn on_message(ax: &mut Answer, key: usize, e: &mut Entry, msg: Message, cx: &mut Cx) {
    let sh = ax.shared;
    if let Some(rate) = &mut e.rate
        && admission::rate(sh, rate, msg.len(), e.conn.id(), cx.now).is_err()
    {
        return e.conn.close(1008, "rate limit", cx);
    }
    let (App::Handler(h), Some(pool)) = (&sh.cfg.app, &sh.pool) else {
        // Echo: copying a frame back is cheaper than any hand-off.
        return e.conn.send(msg, cx);
    };
    let conn = e.at(key);
    let session = e.session().cloned().unwrap_or_default();
    let input = match msg {
        Message::Text(t) => {
            if h.resumable()
                && let Some(req) = ResumeRequest::parse(t.as_str())
            {
                if let Some(ask) = ax.runs.resume(conn, req) {
                    let subject = session.subject.as_deref();
                    let answer = sh.store.resume(&ask.req, subject, ask.follower, cx.now);
                    ax.runs.resumed(ask.follower.token, answer);
                }
                return;
            }
            Inbound::Text(t.as_str().to_owned())
        }
        Message::Binary(b) => Inbound::Binary(b.to_vec()),
        _ => return,
    };
    let bytes = input.len();
    let subject = session.subject.as_deref().map(Arc::from);
    let Some(mut ticket) = ax.runs.prepare(cx.now, conn, subject.as_ref(), ax.draining) else {
        return;
    };
    if let Start::Agent(req) = h.start(&session, &input) {
        // The team's agent: the run starts now (it is followed from its
        // first event), its upstream call once the drive is over.
        ticket.expiry = Expiry::AGENT;
        ax.agents.push(AgentStart {
            run: ticket.run,
            run_id: ticket.id.clone(),
            req,
            subject: session.subject.clone(),
            trace: session.trace,
            deadline: ticket.deadline,
        });
        return ax.runs.start(ticket, conn, subject);
    }
    let budget = sh.cfg.settings.run_budget;
    let out = Outbox::new(&ticket, sh.mailboxes[ax.reactor].clone(), budget);
    let job = pool::job(h.clone(), session.clone(), input, out, sh.metrics.clone());
    if pool.try_submit(job, bytes).is_ok() {
        ax.runs.start(ticket, conn, subject);
    } else {
        tracing::info!(
            conn = conn.id,
            "handler pool full (jobs or message bytes): answering overloaded"
        );
        let m = "server busy; retry later";
        ax.runs.refuse(cx.now, ticket, conn, "overloaded", m);
    }
}
