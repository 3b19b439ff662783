//! Server-wide metrics, each declared once: the plain counters in
//! `counters!` below, every family (labelled, histograms, the store's,
//! the breaker's, the reactors') in `families`. `/health` JSON and
//! `/metrics` Prometheus text are both rendered by walking that one table
//! (`render`), so a metric cannot be in one and missing from the other.
//!
//! Public: that table, read-only ([`families()`]: each family's name,
//! help, type and place in `/health`). The counters themselves are the
//! server's own.
//!
//! The counters are plain atomics bumped per connection event, never per
//! message, so the hot path stays free of shared cache lines.

mod compression;
mod families;
mod render;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub(crate) use crate::conn::{LingerEnd, TimeoutPhase};
pub(crate) use crate::frontdoor::Refused;
pub(crate) use families::{FAMILIES, Num, Sample, Values};
pub use families::{Family, HealthAt, Kind};

/// Every family: the plain counters first, then the rest, compression
/// last.
pub fn families() -> impl Iterator<Item = &'static Family> {
    COUNTERS
        .iter()
        .chain(FAMILIES)
        .chain(compression::COMPRESSION)
}
pub(crate) use render::{AgentView, BreakerView, FrontDoorView, Report};

use crate::frontdoor::RefusalLog;

use crate::histogram::Histogram;

/// Close codes the server sends, counted by code.
pub(crate) const CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1007, 1008, 1009, 1011, 1013];
/// The error codes of agent runs (SPEC §5), counted by code.
pub(crate) const AGENT_CODES: [&str; 5] = [
    "upstream_timeout",
    "upstream_unavailable",
    "upstream_rejected",
    "upstream_invalid",
    "upstream_truncated",
];
/// HTTP statuses the server answers with, counted by status.
pub(crate) const HTTP_STATUSES: [u16; 13] = [
    101, 200, 400, 401, 403, 404, 405, 408, 426, 429, 431, 503, 500,
];

/// Declares each plain counter (or gauge) once: its field in
/// [`ServerMetrics`], its Prometheus name, its place in `/health` and its
/// help text. [`families`] lists them with the other families.
macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident: $kind:ident $name:literal at $health:literal, $help:literal;)*) => {
        /// Every counter of the server, shared by the reactor threads.
        #[derive(Debug, Default)]
        pub(crate) struct ServerMetrics {
            $($(#[$doc])* pub $field: AtomicU64,)*
            /// Deadlines that expired, by phase ([`TimeoutPhase`]).
            pub timeouts: [AtomicU64; TimeoutPhase::ALL.len()],
            /// Close frames the server began, by code ([`CLOSE_CODES`], then other).
            pub close_sent: [AtomicU64; CLOSE_CODES.len() + 1],
            /// HTTP responses, by status ([`HTTP_STATUSES`], then other).
            pub http_status: [AtomicU64; HTTP_STATUSES.len() + 1],
            /// TCP accepted → 101 fully written.
            pub handshake_latency: Histogram,
            /// Lingering closes after a response, by how they ended.
            pub lingered: [AtomicU64; LingerEnd::ALL.len()],
            /// Front-door refusals, by reason ([`Refused`]).
            pub refusals: [AtomicU64; Refused::ALL.len()],
            /// Their log lines, at most one a second per reason.
            pub refusal_log: RefusalLog,
            /// Agent runs that failed, by code ([`AGENT_CODES`]).
            pub agent_failures: [AtomicU64; AGENT_CODES.len()],
            /// permessage-deflate counters, one slot per reactor thread.
            pub deflate: crate::deflate::stats::Registry,
        }

        #[cfg(test)]
        impl ServerMetrics {
            /// Gives every counter a value of its own, so that a test can
            /// tell which one a rendering shows.
            pub(crate) fn fill_distinct(&self) {
                let mut n = 100;
                let mut next = || {
                    n += 7;
                    n
                };
                $(self.$field.store(next(), Relaxed);)*
                for a in self
                    .timeouts
                    .iter()
                    .chain(&self.close_sent)
                    .chain(&self.http_status)
                    .chain(&self.lingered)
                    .chain(&self.refusals)
                    .chain(&self.agent_failures)
                {
                    a.store(next(), Relaxed);
                }
                for us in [150, 2_500, 90_000] {
                    self.handshake_latency.record_us(us);
                }
            }
        }

        /// The plain counters as families, in declaration order.
        pub(crate) const COUNTERS: &[Family] = &[
            $(Family {
                name: $name,
                help: $help,
                kind: Kind::$kind,
                health: HealthAt::Total($health),
                read: |r| Values::one(r.metrics.$field.load(Relaxed)),
            },)*
        ];
    };
}

counters! {
    accepted_total: Counter "pollcap_connections_accepted_total" at "connections.total",
        "TCP connections accepted.";
    /// Dropped at accept because the socket limit was reached.
    rejected_at_accept_total: Counter "pollcap_connections_rejected_at_accept_total"
        at "connections.rejected_at_accept",
        "TCP connections dropped at accept (socket limit).";
    /// accept() failures (EMFILE, ENFILE, ENOBUFS...), each pausing accepts.
    accept_errors_total: Counter "pollcap_accept_errors_total" at "connections.accept_errors",
        "accept() failures (e.g. out of file descriptors); each pauses accepting for 100 ms.";
    upgrades_total: Counter "pollcap_upgrades_total" at "connections.upgrades",
        "WebSocket upgrades completed (101 written).";
    /// Open WebSocket sessions (admitted, not yet removed).
    open: Gauge "pollcap_connections_open" at "connections.open",
        "Open WebSocket connections.";
    /// tungstenite swapped for a fresh one to give back burst buffers.
    buffer_compactions_total: Counter "pollcap_buffer_compactions_total"
        at "connections.buffer_compactions",
        "Connections that gave back buffer memory grown by a burst.";
    missed_deadlines_total: Counter "pollcap_missed_deadlines_total" at "missed_deadlines",
        "Deadlines found expired by the audit sweep (must stay 0).";
    /// Runs started (a source took them on).
    runs_total: Counter "pollcap_handler_runs_total" at "handlers.runs",
        "Runs started (handler runs queued on the worker pool, and other sources).";
    /// Runs that went on after their connection was lost (kept for resume).
    runs_detached_total: Counter "pollcap_runs_detached_total" at "handlers.runs_detached",
        "Runs that went on after their connection was lost (kept for resume).";
    /// Runs cancelled because their client sent a Close frame.
    runs_cancelled_total: Counter "pollcap_runs_cancelled_total" at "handlers.runs_cancelled",
        "Runs cancelled because their client sent a Close frame.";
    /// Runs ended with `run_too_large` (past their event or byte budget).
    runs_too_large_total: Counter "pollcap_runs_too_large_total" at "handlers.runs_too_large",
        "Runs ended with run_too_large (past --run-max-events or --run-max-bytes).";
    /// Events a run's source produced that its reactor's mailbox refused
    /// (it was full): the run ends `overloaded`, nothing is lost unseen.
    run_events_dropped_total: Counter "pollcap_run_events_dropped_total"
        at "handlers.run_events_dropped",
        "Run events refused by a full reactor mailbox (the run ends overloaded).";
    /// Messages answered `overloaded` (pool or per-connection limit full).
    overloaded_total: Counter "pollcap_handler_overloaded_total" at "handlers.overloaded",
        "Messages answered overloaded (pool or per-connection limit full).";
    handler_panics_total: Counter "pollcap_handler_panics_total" at "handlers.panics",
        "Handler panics (in a run: connection closed 1011; in open: 500).";
    /// Upgrades the application's `open` refused with a status of its
    /// choice (not counted by the breaker).
    open_refusals_total: Counter "pollcap_handler_open_refusals_total"
        at "handlers.open_refusals",
        "Upgrades the application refused in open, with a status of its choice.";
    /// Upgrades refused with 401.
    auth_failures_total: Counter "pollcap_auth_failures_total" at "auth_failures",
        "Upgrades refused with 401.";
    /// TLS handshakes the transport refused (bad or plain-text bytes).
    tls_handshake_failures_total: Counter "pollcap_tls_handshake_failures_total"
        at "tls.handshake_failures",
        "TLS handshakes refused by the transport (bad or plain-text bytes).";
    /// Plain-text requests on the TLS port (answered 400 in plain text).
    tls_plaintext_total: Counter "pollcap_tls_plaintext_requests_total"
        at "tls.plaintext_requests",
        "Plain-text requests on the TLS port (answered 400).";
    /// Bytes read and thrown away by lingering closes.
    linger_discarded_bytes_total: Counter "pollcap_linger_discarded_bytes_total"
        at "linger.discarded_bytes",
        "Bytes read and discarded by lingering closes.";
    /// Requests made to the team's agent (or processes spawned).
    agent_requests_total: Counter "pollcap_agent_requests_total" at "agent.requests",
        "Runs sent to the team's agent (HTTP requests made, processes spawned).";
    /// Agent runs that failed on this side before reaching the agent.
    agent_local_failures_total: Counter "pollcap_agent_local_failures_total"
        at "agent.local_failures",
        "Agent runs that failed on this side before reaching the agent (no descriptor, memory or local port; the resolver busy): answered upstream_unavailable, not counted by the agent's circuit breaker.";
    /// Agent calls open now, on every reactor.
    agent_in_flight: Gauge "pollcap_agent_runs_in_flight" at "agent.in_flight",
        "Agent runs whose upstream request (or process) is open now.";
    /// Agent processes alive now (`--agent-cmd`), at most `agent_max_procs`.
    agent_processes: Gauge "pollcap_agent_processes" at "agent.processes",
        "Agent processes alive now (--agent-cmd; at most --agent-max-procs).";
    /// Lines agent processes wrote to stderr that went to the log.
    agent_stderr_lines_total: Counter "pollcap_agent_stderr_lines_total"
        at "agent.stderr_lines",
        "Lines agent processes wrote to stderr that went to the log.";
    /// Stderr lines past a process's rate limit, not logged.
    agent_stderr_dropped_total: Counter "pollcap_agent_stderr_dropped_total"
        at "agent.stderr_dropped",
        "Stderr lines of agent processes not logged (past 20 lines a second per process).";
}

impl ServerMetrics {
    pub fn timeout(&self, phase: TimeoutPhase) {
        self.timeouts[phase as usize].fetch_add(1, Relaxed);
    }

    pub fn timeouts_of(&self, phase: TimeoutPhase) -> u64 {
        self.timeouts[phase as usize].load(Relaxed)
    }

    pub fn lingered(&self, end: LingerEnd, discarded: u64) {
        self.lingered[end as usize].fetch_add(1, Relaxed);
        self.linger_discarded_bytes_total
            .fetch_add(discarded, Relaxed);
    }

    pub fn refused(&self, why: Refused) {
        self.refusals[why as usize].fetch_add(1, Relaxed);
    }

    pub fn refusals_of(&self, why: Refused) -> u64 {
        self.refusals[why as usize].load(Relaxed)
    }

    /// An agent run failed with `code` (one of [`AGENT_CODES`]).
    pub fn agent_failure(&self, code: &str) {
        if let Some(i) = AGENT_CODES.iter().position(|c| *c == code) {
            self.agent_failures[i].fetch_add(1, Relaxed);
        }
    }

    pub fn close_sent(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.close_sent[i].fetch_add(1, Relaxed);
    }

    pub fn http_status(&self, status: u16) {
        let i = HTTP_STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(HTTP_STATUSES.len());
        self.http_status[i].fetch_add(1, Relaxed);
    }
}
