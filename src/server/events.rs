//! The answer to each event a connection reports (SPEC §4–§5): a request
//! routed, refused or admitted, an upgrade's metrics, a message to the
//! application, a Close that cancels runs, a deadline counted; and what
//! the run layer asks of the connection being driven, applied in order
//! with those answers.

use std::sync::atomic::Ordering::Relaxed;

use super::entry::Entry;
use super::messages::{self, Answer};
use super::{admission, routes};
use crate::conn::{Cx, Event, TimeoutPhase};
use crate::http::{self, Request};
use crate::runs::{ConnRef, Effect};

/// Applies `effect` to connection `e` (`here`) if it is for it; hands it
/// back otherwise.
pub(super) fn apply_here(
    here: ConnRef,
    e: &mut Entry,
    effect: Effect,
    cx: &mut Cx,
) -> Option<Effect> {
    match effect {
        Effect::Send { conn, msg } if conn == here => e.conn.send_run(msg, cx),
        Effect::Settled { conn } if conn == here => e.conn.runs_settled(cx),
        Effect::Close { conn, code, reason } if conn == here => {
            tracing::warn!(conn = conn.id, code, "closing: {reason}");
            e.conn.close(code, reason, cx)
        }
        other => return Some(other),
    }
    None
}

/// Answers one event of connection `key`: the decisions of SPEC §4–§5.
pub(super) fn answer(ax: &mut Answer, key: usize, e: &mut Entry, ev: Event, cx: &mut Cx) {
    let sh = ax.shared;
    let m = &sh.metrics;
    match ev {
        Event::Request(_) if e.conn.stream_mut().is_some_and(|s| s.plain_on_tls_port()) => {
            m.tls_plaintext_total.fetch_add(1, Relaxed);
            tracing::info!(conn = e.conn.id(), "plain-text request on the TLS port");
            let r = http::text(
                400,
                "Bad Request",
                "this port speaks TLS: use https:// or wss://\n",
            );
            e.conn.respond(r, cx);
        }
        Event::Request(head) => match http::classify(&head, &sh.cfg.settings.ws_path) {
            Request::Route(route) => {
                let r = routes::render(sh, route, &head, cx.now, ax.wall);
                e.conn.respond(r, cx);
            }
            Request::Reject(r) => e.conn.respond(r, cx),
            Request::Upgrade(u) => {
                admission::answer(sh, &u, head, (key, ax.reactor), e, cx, ax.wall)
            }
        },
        Event::Status(status) => m.http_status(status),
        Event::Opened { handshake } => {
            m.http_status(101);
            m.upgrades_total.fetch_add(1, Relaxed);
            m.handshake_latency.record_us(handshake.as_micros() as u64);
        }
        Event::Message(msg) => messages::on_message(ax, key, e, msg, cx),
        Event::PeerClosed => ax.runs.peer_closed(cx.now, e.at(key)),
        Event::Timeout(phase) => {
            m.timeout(phase);
            // An upgrade still waiting for the application was answered
            // 503 by the connection.
            if phase == TimeoutPhase::Handshake {
                admission::undecided(sh, e, true, cx.now);
            }
        }
        Event::CloseSent(code) => m.close_sent(code),
        Event::Compacted => {
            m.buffer_compactions_total.fetch_add(1, Relaxed);
        }
        Event::TransportFailed => {
            m.tls_handshake_failures_total.fetch_add(1, Relaxed);
        }
        Event::Lingered { end, discarded } => m.lingered(end, discarded),
    }
}
