//! Messages to the application and its answers back: echo inline; for a
//! handler, a run on the worker pool per message (or an `overloaded` /
//! `draining` error event), the events it streams back through the
//! mailbox stamped with the reactor's clock, and the `execution_timeout`
//! error when a run passes its deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use tungstenite::Message;

use super::Shared;
use super::worker::Entry;
use crate::agent::ErrorFields;
use crate::app::{self, App, Inbound, Mail, MailKind, Outbox, run_id};
use crate::conn::{Cx, TimeoutPhase};
use crate::reactor::WallClock;

/// Most handler runs one connection may have in flight; more are answered
/// `overloaded` so that one client cannot fill the shared pool.
pub const MAX_RUNS_PER_CONN: usize = 16;

/// What answering a message needs besides the connection.
pub(super) struct RunCx<'a> {
    pub shared: &'a Shared,
    /// This reactor's index (where its runs' mail goes).
    pub reactor: usize,
    pub wall: WallClock,
    pub draining: bool,
}

/// An event the server writes itself (not a handler's), stamped now.
fn server_event(
    rc: &RunCx,
    cx: &Cx,
    conn_id: u64,
    run: u64,
    seq: u64,
    fields: ErrorFields,
) -> Message {
    let mut text = app::event_text("error", &run_id(conn_id, run), seq, &fields);
    app::stamp(&mut text, rc.wall.unix_ms(cx.now));
    Message::text(text)
}

/// Answers one application message of `e`.
pub(super) fn on_message(rc: &RunCx, key: usize, e: &mut Entry, msg: Message, cx: &mut Cx) {
    let sh = rc.shared;
    let (App::Handler(h), Some(pool)) = (&sh.cfg.app, &sh.pool) else {
        // Echo: copying a frame back is cheaper than any hand-off.
        return e.conn.send(msg, cx);
    };
    let input = match msg {
        Message::Text(t) => Inbound::Text(t.as_str().to_owned()),
        Message::Binary(b) => Inbound::Binary(b.to_vec()),
        _ => return,
    };
    e.next_run += 1;
    let run = e.next_run;
    let conn_id = e.conn.id();
    let refusal = if rc.draining {
        Some(ErrorFields {
            code: "draining",
            message: "server shutting down; reconnect elsewhere",
        })
    } else {
        let cancel = Arc::new(AtomicBool::new(false));
        let session = e.session.clone().unwrap_or_default();
        let out = Outbox::new(
            key,
            conn_id,
            run,
            cancel.clone(),
            sh.mailboxes[rc.reactor].clone(),
        );
        let queued = e.conn.runs_in_flight() < MAX_RUNS_PER_CONN
            && pool
                .try_submit(app::job(h.clone(), session, input, out))
                .is_ok();
        if queued {
            sh.metrics.runs_total.fetch_add(1, Relaxed);
            e.conn.run_started(run, cancel, cx);
            return;
        }
        sh.metrics.overloaded_total.fetch_add(1, Relaxed);
        tracing::info!(conn = conn_id, "handler pool full: answering overloaded");
        Some(ErrorFields {
            code: "overloaded",
            message: "server busy; retry later",
        })
    };
    if let Some(fields) = refusal {
        let reply = server_event(rc, cx, conn_id, run, 1, fields);
        e.conn.send(reply, cx);
    }
}

/// A run passed its execution deadline (the connection cancelled it):
/// count it and tell the client, continuing the run's sequence.
pub(super) fn on_expired(rc: &RunCx, e: &mut Entry, run: u64, last_seq: u64, cx: &mut Cx) {
    rc.shared.metrics.timeout(TimeoutPhase::Execution);
    let limit = cx.timeouts.execution;
    let message = format!(
        "the handler did not finish within {}",
        crate::settings::secs(limit)
    );
    let fields = ErrorFields {
        code: "execution_timeout",
        message: &message,
    };
    let reply = server_event(rc, cx, e.conn.id(), run, last_seq + 1, fields);
    e.conn.send(reply, cx);
}

/// Delivers one piece of a run's output to its connection.
pub(super) fn deliver(rc: &RunCx, e: &mut Entry, mail: Mail, cx: &mut Cx) {
    match mail.kind {
        MailKind::Event { seq, mut text } => {
            app::stamp(&mut text, rc.wall.unix_ms(cx.now));
            e.conn.run_event(mail.run, seq, text, cx);
        }
        MailKind::Done => {
            e.conn.run_finished(mail.run, cx);
        }
        MailKind::Panicked(why) => {
            if e.conn.run_failed(mail.run, cx) {
                rc.shared.metrics.handler_panics_total.fetch_add(1, Relaxed);
                tracing::warn!(
                    conn = e.conn.id(),
                    run = mail.run,
                    "handler panicked: {why}; closed 1011"
                );
            }
        }
    }
}
