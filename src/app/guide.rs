//! # Writing a handler
//!
//! A [`Handler`] is the application behind the WebSocket path: one value,
//! shared by every connection of the server ([`App::Handler`] in
//! [`ServerConfig::app`](crate::server::ServerConfig::app)). The server
//! does the rest — the phases and their deadlines, authentication, the
//! front door's limits, the envelope, the budget, resume, the drain.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use pollcap::app::{App, Decision, Handler, Inbound, Outbox, Request, Session};
//! use pollcap::server::{Server, ServerConfig};
//! use pollcap::settings::Settings;
//! use serde_json::json;
//!
//! struct Rooms;
//!
//! impl Handler for Rooms {
//!     fn name(&self) -> &'static str { "rooms" }
//!     fn subprotocols(&self) -> &'static [&'static str] { &["rooms.v1"] }
//!     fn resumable(&self) -> bool { true }
//!
//!     // On the worker pool, before the 101: may look things up.
//!     fn open(&self, req: &Request) -> Decision {
//!         match req.header("x-tenant") {
//!             Some(t) if t == "acme" => Decision::Accept,
//!             Some(_) => Decision::refuse(403, "unknown tenant"),
//!             None => Decision::refuse(400, "send X-Tenant"),
//!         }
//!     }
//!
//!     // One run per message, on the worker pool, under `execution`.
//!     fn message(&self, session: &Session, input: Inbound, out: &Outbox) {
//!         let Inbound::Text(text) = input else { return };
//!         out.emit("started", json!({ "room": session.query }));
//!         for word in text.split_whitespace() {
//!             if !out.pause(Duration::from_millis(20)) {
//!                 return; // cancelled: deadline, Close, budget
//!             }
//!             out.emit("word", json!({ "word": word }));
//!         }
//!         out.send_binary(text.into_bytes()); // raw: not an event
//!         out.emit("done", json!({}));
//!     }
//! }
//!
//! let mut cfg = ServerConfig::new(Settings::from_process(&[]).unwrap());
//! cfg.app = App::Handler(Arc::new(Rooms));
//! Server::start(cfg).unwrap().join().unwrap();
//! ```
//!
//! `examples/streaming_handler.rs` is a complete program (`cargo run
//! --example streaming_handler`).
//!
//! ## Threads
//!
//! - [`Handler::open`] and [`Handler::message`] run on the **worker pool**,
//!   never on a reactor thread: they may block — a database lookup, an
//!   HTTP call — within their deadlines (below). Messages have
//!   `--pool-threads` threads; opens have threads of their own (a quarter
//!   as many, at least two), so runs that hold every message thread for
//!   seconds never make an upgrade wait for its decision. The queues are
//!   bounded (`--pool-queue` jobs each, `--pool-queue-bytes` of messages
//!   held): when they are full an upgrade is answered `503` and a message
//!   an `overloaded` error event, never queued without bound.
//! - [`Handler::close`], [`Handler::start`], [`Handler::resumable`],
//!   [`Handler::name`] and [`Handler::subprotocols`] are called on the
//!   **reactor thread** that owns the connection: a map lookup, a parse,
//!   no I/O and no lock held for long — a reactor that waits, waits for
//!   every connection it owns.
//! - One handler value serves every connection, from several threads at
//!   once: it is `Send + Sync`. Each message is a run of its own, so one
//!   connection may have several `message` calls running together (up to
//!   [`MAX_RUNS_PER_CONN`](crate::runs::MAX_RUNS_PER_CONN)), in no
//!   particular order. Keep per-connection state behind a lock, keyed by
//!   [`Session::conn_id`].
//!
//! ## Opening: accept, refuse, fail
//!
//! An upgrade request first passes the server's own checks, cheapest
//! first: the browser's origin (403), the client address's limits (429),
//! the token (401), the subprotocol (400), then a slot — not draining,
//! breaker closed, under `--max-connections` (503). Only then is
//! [`Handler::open`] asked, with the [`Request`]: the path, the query
//! string (undecoded), every header line, the client's address (through
//! trusted proxies) and the authenticated subject. Its [`Decision`] comes
//! before the `101`:
//!
//! | decision | the client gets | the circuit breaker |
//! |---|---|---|
//! | [`Decision::Accept`] | `101`, then the WebSocket | a success |
//! | [`Decision::Refuse`] | the [`Refusal`]'s status, body and headers | not a failure (a success: `open` works) |
//! | [`Decision::Fail`], or a panic in `open` | `500` | a failure |
//! | no decision within the handshake deadline | `503` + `Retry-After: 1` | a failure |
//!
//! A refusal is the handler's decision, not a fault: refusing every
//! stranger never opens the breaker (`pollcap_handler_open_refusals_total`
//! counts them). A failure is a fault: enough of them in a row open the
//! breaker, and every upgrade is then answered `503` without asking
//! `open` until it recovers. A refusal's status is 3xx, 4xx or 5xx, and
//! its headers exclude `Content-Type`, `Content-Length`, `Connection` and
//! `Transfer-Encoding`, which the server writes; anything else is a bug
//! in the handler, answered `500` and counted.
//!
//! The handshake deadline (`--handshake-timeout`) runs from the TCP
//! accept, so `open` gets what the TLS handshake and the request head
//! left of it. A decision that comes later finds the client answered
//! `503` already; the late `open` is not interrupted (it is plain code on
//! a pool thread), and if it accepted, [`Handler::close`] follows at once
//! — `close` follows every accepted `open`, once (unless the server stops
//! first).
//!
//! Only `open` sees the headers: a connection keeps its [`Session`]
//! (conn id, subject, trace, peer, path, query), given to every later
//! call, but not its head, which could cost every idle connection up to
//! `--max-head-bytes`. Keep what you need from the headers yourself, keyed
//! by [`Session::conn_id`], and drop it in `close`. The headers include
//! the client's credentials (`Authorization`, a browser's
//! `bearer.<token>` subprotocol entry): the server checked them already —
//! [`Session::subject`] is the result — so do not log them.
//!
//! ## The envelope
//!
//! [`Outbox::emit`]`(kind, fields)` sends one **event**:
//! `{"type": kind, ..fields, "run_id": …, "seq": …, "ts": …}`. The run
//! layer writes the last three, so a handler can neither forge nor forget
//! them: `run_id` names the run (22 random base64url characters, one per
//! message), `seq` starts at 1 and grows by exactly 1 per event of the
//! run (a client tells a gap from a reorder), and `ts` is the Unix time
//! in milliseconds when the reactor took the event. Fields named `type`,
//! `run_id`, `seq` or `ts` are overwritten. A run ends when `message`
//! returns; an end the server decides (`execution_timeout`,
//! `run_too_large`, `overloaded`, `cancelled`, `draining`,
//! `handler_failure`) is an `error` event that continues the sequence.
//!
//! ## Raw messages
//!
//! [`Outbox::send_text`] and [`Outbox::send_binary`] send a message as it
//! is: no envelope, no `seq`, and **not stored**, so a resume never
//! replays one. A raw message reaches the connection that started the
//! run, while it is there, in order with the run's events; it is
//! compressed like any other message when the client agreed to
//! permessage-deflate, and it counts against the run's budget like an
//! event. Use raw messages for what a reconnecting client can do without
//! (audio frames, a protocol of your own); use events for what it must
//! not miss.
//!
//! ## Cancellation
//!
//! A run is cancelled when its execution deadline passes
//! (`--execution-timeout`; the client gets `execution_timeout`), when its
//! client ends the session with a Close frame (`cancelled`, stored for
//! anyone resuming), when its budget or its reactor's mailbox runs out
//! (below), and when the server stops before it ends (a drain lets runs
//! finish for half the `close` deadline; then `draining`). A connection
//! **lost** without a Close frame (a reset, a heartbeat timeout) does not
//! cancel its runs while a store keeps them (`--store memory`, the
//! default, or Redis): the client may resume them.
//! With `--store off` nobody could, and they are cancelled.
//!
//! Cancellation is cooperative: [`Outbox::is_cancelled`] turns true and
//! [`Outbox::pause`] returns `false` at once, but the pool thread is yours
//! until `message` returns. Check between steps, wait with `pause` rather
//! than `sleep`, and bound your own blocking calls (a database query with
//! its own timeout). Whatever a cancelled run still emits is dropped.
//!
//! A panic in `message` ends the run with `handler_failure` and closes its
//! connection `1011` (the client would otherwise wait for events that
//! never come); a panic in `open` is a `500`. Either is counted in
//! `pollcap_handler_panics_total`; the server carries on.
//!
//! ## Limits
//!
//! - **The run's budget**: at most `--run-max-events` messages (10 000)
//!   and `--run-max-bytes` bytes of them (4 MiB), events and raw messages
//!   alike. Past either the run ends `run_too_large` and is cancelled.
//! - **The reactor's mailbox**: a run's output waits for its reactor in a
//!   mailbox bounded in bytes (`--pool-queue-bytes`, or one run's budget
//!   if larger). Output it has no room for ends the run `overloaded`
//!   (`pollcap_run_events_dropped_total`), never a silent gap.
//! - **Per connection**: at most [`MAX_RUNS_PER_CONN`](crate::runs::MAX_RUNS_PER_CONN)
//!   runs in flight (more are answered `overloaded`), inbound messages up
//!   to `--max-message`, outbound bytes queued up to `--max-outbound` (a
//!   client that does not read is closed `1008`). Per subject:
//!   `--max-runs-per-subject`.
//!
//! ## Resume
//!
//! A handler whose [`Handler::resumable`] is `true` lets a client that
//! lost its connection send `{"type":"resume","run_id":…,"after_seq":N}`
//! on a new one: the run layer answers it — never `message` — with every
//! stored event of that run with `seq > N`, in order and once each, then
//! the live ones until the run ends. What is stored is the run's events,
//! including the `error` that ended it, for `--resume-window` after the
//! run ends (bounded per run and in total); raw messages are not. A run is
//! readable only by the subject that started it; an unknown, expired or
//! foreign run is answered `{"type":"error","code":"resume_unavailable"}`.
//! With `--store redis://…` a run started on one instance resumes on any
//! other.

#[allow(unused_imports)] // the links above
use super::{App, Decision, Handler, Outbox, Refusal, Request, Session};
