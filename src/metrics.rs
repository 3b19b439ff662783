//! Server-wide counters (atomics, shared by every reactor thread) and their
//! two renderings: `/health` JSON and `/metrics` Prometheus text (SPEC §8).
//! Counted per connection event, never per message, so the hot path stays
//! free of shared cache lines.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

pub use crate::conn::{LingerEnd, TimeoutPhase};
use crate::histogram::Histogram;
use crate::reactor::StatsSnapshot;
use crate::settings::{Group, Settings};
use crate::store::StoreView;

/// Close codes the server sends, counted by code.
pub const CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1007, 1008, 1009, 1011, 1013];
/// HTTP statuses the server answers with, counted by status.
pub const HTTP_STATUSES: [u16; 11] = [101, 200, 400, 401, 404, 405, 408, 426, 431, 503, 500];

#[derive(Debug, Default)]
pub struct ServerMetrics {
    pub accepted_total: AtomicU64,
    /// Dropped at accept because the socket limit was reached.
    pub rejected_at_accept_total: AtomicU64,
    /// accept() failures (EMFILE, ENFILE, ENOBUFS...), each pausing accepts.
    pub accept_errors_total: AtomicU64,
    pub upgrades_total: AtomicU64,
    pub open: AtomicU64,
    pub timeouts: [AtomicU64; TimeoutPhase::ALL.len()],
    pub close_sent: [AtomicU64; CLOSE_CODES.len() + 1],
    pub http_status: [AtomicU64; HTTP_STATUSES.len() + 1],
    /// TCP accepted → 101 fully written.
    pub handshake_latency: Histogram,
    pub missed_deadlines_total: AtomicU64,
    /// Handler runs queued on the pool.
    pub runs_total: AtomicU64,
    /// Runs that went on after their connection was lost (kept for resume).
    pub runs_detached_total: AtomicU64,
    /// Runs cancelled because their client sent a Close frame.
    pub runs_cancelled_total: AtomicU64,
    /// tungstenite swapped for a fresh one to give back burst buffers.
    pub buffer_compactions_total: AtomicU64,
    /// Messages answered `overloaded` (pool or per-connection limit full).
    pub overloaded_total: AtomicU64,
    pub handler_panics_total: AtomicU64,
    /// Upgrades refused with 401.
    pub auth_failures_total: AtomicU64,
    /// TLS handshakes the transport refused (bad or plain-text bytes).
    pub tls_handshake_failures_total: AtomicU64,
    /// Plain-text requests on the TLS port (answered 400 in plain text).
    pub tls_plaintext_total: AtomicU64,
    /// Lingering closes after a response, by how they ended.
    pub lingered: [AtomicU64; LingerEnd::ALL.len()],
    /// Bytes read and thrown away by lingering closes.
    pub linger_discarded_bytes_total: AtomicU64,
    /// permessage-deflate counters, one slot per reactor thread.
    pub deflate: crate::deflate::stats::Registry,
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

/// The circuit breaker as reported.
#[derive(Clone, Debug, Serialize)]
pub struct BreakerView {
    pub state: &'static str,
    pub consecutive_failures: u32,
    pub threshold: u32,
    pub recovery_s: f64,
    pub failures_total: u64,
    pub rejections_total: u64,
    pub opened_total: u64,
}

/// The `/health` document (SPEC §8).
#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    environment: String,
    cloud_container: bool,
    profile: &'static str,
    backend: &'static str,
    poll_cap: String,
    reactor_threads: usize,
    app: &'static str,
    auth: bool,
    breaker: &'a BreakerView,
    handlers: Handlers,
    auth_failures: u64,
    /// The configured phase deadlines, from the settings' declarations.
    timeouts_s: Map<String, Value>,
    connections: Connections,
    handshake_latency_ms: Latency,
    /// Deadlines that expired, by phase.
    timeouts: Map<String, Value>,
    missed_deadlines: u64,
    tls: TlsView,
    /// The run store (resume): `up` false while Redis is unreachable.
    store: &'a StoreView,
    /// permessage-deflate counters.
    compression: crate::deflate::stats::Counts,
    reactor: ReactorView,
    uptime_s: f64,
}

#[derive(Serialize)]
struct TlsView {
    enabled: bool,
    reloads: u64,
    reload_failures: u64,
    handshake_failures: u64,
    plaintext_requests: u64,
}

#[derive(Serialize)]
struct Handlers {
    pool_threads: Option<usize>,
    pool_queued: Option<usize>,
    runs: u64,
    runs_detached: u64,
    runs_cancelled: u64,
    overloaded: u64,
    panics: u64,
}

#[derive(Serialize)]
struct Connections {
    open: u64,
    total: u64,
    upgrades: u64,
    max: usize,
}

#[derive(Serialize)]
struct Latency {
    count: u64,
    avg: f64,
    p50: f64,
    p95: f64,
    p99: f64,
}

#[derive(Serialize)]
struct ReactorView {
    waits: u64,
    by_io: u64,
    by_waker: u64,
    by_deadline: u64,
    by_soft_deadline: u64,
    by_cap: u64,
    interrupted: u64,
    busy: u64,
    lost_wakeups_recovered: u64,
    deadline_overshoot_count: u64,
    deadline_overshoot_p50_ms: f64,
    deadline_overshoot_p99_ms: f64,
    hard_timers_fired: u64,
    soft_timers_fired: u64,
    soft_lateness_p50_ms: f64,
    soft_lateness_p99_ms: f64,
}

/// Everything `/health` and `/metrics` report, gathered at one `now`.
pub struct Report<'a> {
    pub settings: &'a Settings,
    pub metrics: &'a ServerMetrics,
    pub breaker: BreakerView,
    pub app: &'static str,
    /// (threads, queued jobs) of the handler pool, if the app uses one.
    pub pool: Option<(usize, usize)>,
    pub auth: bool,
    /// One snapshot per reactor thread, in thread order.
    pub reactors: Vec<StatsSnapshot>,
    pub reactor_threads: usize,
    pub draining: bool,
    pub uptime: Duration,
    pub max_connections: usize,
    /// (reloads, refused reloads) of the certificate pair, when TLS is on.
    pub tls: Option<(u64, u64)>,
    pub store: StoreView,
    /// Log lines the log writer dropped rather than block, when it counts.
    pub log_lines_dropped: Option<u64>,
}

impl Report<'_> {
    /// `healthy`, `degraded` (at the connection limit, a deadline was
    /// missed by the queue, the breaker is not closed, or the run store is
    /// unreachable) or `draining`.
    pub fn status(&self) -> &'static str {
        if self.draining {
            "draining"
        } else if self.metrics.open.load(Relaxed) as usize >= self.max_connections
            || self.metrics.missed_deadlines_total.load(Relaxed) > 0
            || self.breaker.state != "closed"
            || !self.store.up
        {
            "degraded"
        } else {
            "healthy"
        }
    }

    /// All reactors summed.
    pub fn reactor_total(&self) -> StatsSnapshot {
        let mut t = StatsSnapshot::default();
        for r in &self.reactors {
            t.merge(r);
        }
        t
    }

    pub fn health_json(&self) -> String {
        let m = self.metrics;
        let h = m.handshake_latency.snapshot();
        let ms = |us: u64| us as f64 / 1000.0;
        let r = self.reactor_total();
        let health = Health {
            status: self.status(),
            environment: self.settings.environment.label(),
            cloud_container: self.settings.environment.is_cloud_container(),
            profile: self.settings.profile.name(),
            backend: self.settings.backend.name(),
            poll_cap: self.settings.poll_cap.to_string(),
            reactor_threads: self.reactor_threads,
            app: self.app,
            auth: self.auth,
            breaker: &self.breaker,
            handlers: Handlers {
                pool_threads: self.pool.map(|p| p.0),
                pool_queued: self.pool.map(|p| p.1),
                runs: m.runs_total.load(Relaxed),
                runs_detached: m.runs_detached_total.load(Relaxed),
                runs_cancelled: m.runs_cancelled_total.load(Relaxed),
                overloaded: m.overloaded_total.load(Relaxed),
                panics: m.handler_panics_total.load(Relaxed),
            },
            auth_failures: m.auth_failures_total.load(Relaxed),
            timeouts_s: self.settings.group(Group::Timeouts),
            connections: Connections {
                open: m.open.load(Relaxed),
                total: m.accepted_total.load(Relaxed),
                upgrades: m.upgrades_total.load(Relaxed),
                max: self.max_connections,
            },
            handshake_latency_ms: Latency {
                count: h.count,
                avg: h.mean_us() / 1000.0,
                p50: ms(h.quantile_us(0.50)),
                p95: ms(h.quantile_us(0.95)),
                p99: ms(h.quantile_us(0.99)),
            },
            timeouts: TimeoutPhase::ALL
                .iter()
                .map(|p| (p.name().to_string(), m.timeouts_of(*p).into()))
                .collect(),
            missed_deadlines: m.missed_deadlines_total.load(Relaxed),
            tls: TlsView {
                enabled: self.tls.is_some(),
                reloads: self.tls.map_or(0, |t| t.0),
                reload_failures: self.tls.map_or(0, |t| t.1),
                handshake_failures: m.tls_handshake_failures_total.load(Relaxed),
                plaintext_requests: m.tls_plaintext_total.load(Relaxed),
            },
            store: &self.store,
            compression: m.deflate.snapshot(),
            reactor: ReactorView {
                waits: r.waits,
                by_io: r.by_io,
                by_waker: r.by_waker,
                by_deadline: r.by_deadline,
                by_soft_deadline: r.by_soft_deadline,
                by_cap: r.by_cap,
                interrupted: r.interrupted,
                busy: r.busy,
                lost_wakeups_recovered: r.lost_wakeups_recovered,
                deadline_overshoot_count: r.overshoot.count,
                deadline_overshoot_p50_ms: ms(r.overshoot.quantile_us(0.50)),
                deadline_overshoot_p99_ms: ms(r.overshoot.quantile_us(0.99)),
                hard_timers_fired: r.hard_fired,
                soft_timers_fired: r.soft_fired,
                soft_lateness_p50_ms: ms(r.soft_lateness.quantile_us(0.50)),
                soft_lateness_p99_ms: ms(r.soft_lateness.quantile_us(0.99)),
            },
            uptime_s: self.uptime.as_secs_f64(),
        };
        serde_json::to_string(&health).unwrap_or_else(|_| "{}".into())
    }

    pub fn prometheus(&self) -> String {
        let m = self.metrics;
        let mut o = String::with_capacity(8192);
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut o,
            "pollcap_connections_accepted_total",
            "TCP connections accepted.",
            m.accepted_total.load(Relaxed),
        );
        counter(
            &mut o,
            "pollcap_connections_rejected_at_accept_total",
            "TCP connections dropped at accept (socket limit).",
            m.rejected_at_accept_total.load(Relaxed),
        );
        counter(
            &mut o,
            "pollcap_accept_errors_total",
            "accept() failures (e.g. out of file descriptors); each pauses accepting for 100 ms.",
            m.accept_errors_total.load(Relaxed),
        );
        counter(
            &mut o,
            "pollcap_buffer_compactions_total",
            "Connections that gave back buffer memory grown by a burst.",
            m.buffer_compactions_total.load(Relaxed),
        );
        counter(
            &mut o,
            "pollcap_upgrades_total",
            "WebSocket upgrades completed (101 written).",
            m.upgrades_total.load(Relaxed),
        );
        let counters = [
            (
                "pollcap_handler_runs_total",
                "Handler runs queued on the worker pool.",
                m.runs_total.load(Relaxed),
            ),
            (
                "pollcap_runs_detached_total",
                "Runs that went on after their connection was lost (kept for resume).",
                m.runs_detached_total.load(Relaxed),
            ),
            (
                "pollcap_runs_cancelled_total",
                "Runs cancelled because their client sent a Close frame.",
                m.runs_cancelled_total.load(Relaxed),
            ),
            (
                "pollcap_resumes_total",
                "Resume requests served (stored events, then live ones).",
                self.store.resumes,
            ),
            (
                "pollcap_resumes_unavailable_total",
                "Resume requests answered resume_unavailable.",
                self.store.resumes_unavailable,
            ),
            (
                "pollcap_store_runs_expired_total",
                "Runs dropped from the store (their window passed, or room was needed).",
                self.store.runs_expired,
            ),
            (
                "pollcap_store_errors_total",
                "Run store calls that failed (Redis error or deadline).",
                self.store.errors,
            ),
            (
                "pollcap_store_writes_dropped_total",
                "Events not written to the run store (Redis down or its queue full).",
                self.store.writes_dropped,
            ),
            (
                "pollcap_store_outages_total",
                "Times the run store became unreachable.",
                self.store.outages,
            ),
            (
                "pollcap_handler_overloaded_total",
                "Messages answered overloaded (pool or per-connection limit full).",
                m.overloaded_total.load(Relaxed),
            ),
            (
                "pollcap_handler_panics_total",
                "Handler panics (connection closed 1011).",
                m.handler_panics_total.load(Relaxed),
            ),
            (
                "pollcap_auth_failures_total",
                "Upgrades refused with 401.",
                m.auth_failures_total.load(Relaxed),
            ),
            (
                "pollcap_tls_handshake_failures_total",
                "TLS handshakes refused by the transport (bad or plain-text bytes).",
                m.tls_handshake_failures_total.load(Relaxed),
            ),
            (
                "pollcap_tls_plaintext_requests_total",
                "Plain-text requests on the TLS port (answered 400).",
                m.tls_plaintext_total.load(Relaxed),
            ),
            (
                "pollcap_tls_reloads_total",
                "Certificate pairs reloaded (SIGHUP or changed files).",
                self.tls.map_or(0, |t| t.0),
            ),
            (
                "pollcap_tls_reload_failures_total",
                "Certificate reloads refused (the previous pair stays).",
                self.tls.map_or(0, |t| t.1),
            ),
            (
                "pollcap_log_lines_dropped_total",
                "Log lines dropped because the log output fell behind (never blocking a reactor).",
                self.log_lines_dropped.unwrap_or(0),
            ),
            (
                "pollcap_breaker_failures_total",
                "Server-fault upgrade failures counted by the circuit breaker.",
                self.breaker.failures_total,
            ),
            (
                "pollcap_breaker_rejections_total",
                "Upgrades refused with 503 while the breaker was open.",
                self.breaker.rejections_total,
            ),
            (
                "pollcap_breaker_opened_total",
                "Times the breaker opened.",
                self.breaker.opened_total,
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut o, name, help, v);
        }
        let gauge = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut o,
            "pollcap_store_up",
            "1 while the run store is reachable (0: Redis down; resume unavailable).",
            u64::from(self.store.up),
        );
        for (name, help, v) in [
            (
                "pollcap_store_runs",
                "Runs held by the memory store.",
                self.store.runs,
            ),
            (
                "pollcap_store_events",
                "Events held by the memory store.",
                self.store.events,
            ),
            (
                "pollcap_store_bytes",
                "Bytes held by the memory store (events and records).",
                self.store.bytes,
            ),
        ] {
            if let Some(v) = v {
                gauge(&mut o, name, help, v);
            }
        }
        let _ = writeln!(
            o,
            "# HELP pollcap_store_evicted_events_total Stored events dropped to stay within a limit.\n\
             # TYPE pollcap_store_evicted_events_total counter\n\
             pollcap_store_evicted_events_total{{limit=\"run\"}} {}\n\
             pollcap_store_evicted_events_total{{limit=\"total\"}} {}",
            self.store.evicted_run_limit, self.store.evicted_total_limit
        );
        o.push_str("# HELP pollcap_breaker_state Circuit breaker state (1 = current).\n# TYPE pollcap_breaker_state gauge\n");
        for st in ["closed", "open", "half_open"] {
            let _ = writeln!(
                o,
                "pollcap_breaker_state{{state=\"{st}\"}} {}",
                u8::from(self.breaker.state == st)
            );
        }
        counter(
            &mut o,
            "pollcap_missed_deadlines_total",
            "Deadlines found expired by the audit sweep (must stay 0).",
            m.missed_deadlines_total.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP pollcap_connections_open Open WebSocket connections.\n# TYPE pollcap_connections_open gauge\npollcap_connections_open {}",
            m.open.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP pollcap_draining 1 while the server drains.\n# TYPE pollcap_draining gauge\npollcap_draining {}",
            self.draining as u8
        );

        o.push_str("# HELP pollcap_timeouts_total Phase deadlines that expired, by phase.\n# TYPE pollcap_timeouts_total counter\n");
        for p in TimeoutPhase::ALL {
            let _ = writeln!(
                o,
                "pollcap_timeouts_total{{phase=\"{}\"}} {}",
                p.name(),
                m.timeouts_of(p)
            );
        }
        o.push_str("# HELP pollcap_lingering_closes_total Lingering closes after a response that ends the connection, by how they ended.\n# TYPE pollcap_lingering_closes_total counter\n");
        for end in LingerEnd::ALL {
            let _ = writeln!(
                o,
                "pollcap_lingering_closes_total{{end=\"{}\"}} {}",
                end.name(),
                m.lingered[end as usize].load(Relaxed)
            );
        }
        counter(
            &mut o,
            "pollcap_linger_discarded_bytes_total",
            "Bytes read and discarded by lingering closes.",
            m.linger_discarded_bytes_total.load(Relaxed),
        );
        o.push_str("# HELP pollcap_close_frames_sent_total Close frames initiated by the server, by code.\n# TYPE pollcap_close_frames_sent_total counter\n");
        for (i, c) in m.close_sent.iter().enumerate() {
            let code = CLOSE_CODES
                .get(i)
                .map_or("other".to_string(), |c| c.to_string());
            let _ = writeln!(
                o,
                "pollcap_close_frames_sent_total{{code=\"{code}\"}} {}",
                c.load(Relaxed)
            );
        }
        o.push_str("# HELP pollcap_http_responses_total HTTP responses, by status.\n# TYPE pollcap_http_responses_total counter\n");
        for (i, c) in m.http_status.iter().enumerate() {
            let s = HTTP_STATUSES
                .get(i)
                .map_or("other".to_string(), |s| s.to_string());
            let _ = writeln!(
                o,
                "pollcap_http_responses_total{{status=\"{s}\"}} {}",
                c.load(Relaxed)
            );
        }
        o.push_str("# HELP pollcap_handshake_duration_seconds TCP accept to 101 written.\n# TYPE pollcap_handshake_duration_seconds histogram\n");
        m.handshake_latency.snapshot().write_prometheus(
            &mut o,
            "pollcap_handshake_duration_seconds",
            "",
        );

        // Per reactor thread (SPEC §1), labelled `reactor="N"`.
        o.push_str("# HELP pollcap_reactor_waits_total OS waits, by reactor and what ended them.\n# TYPE pollcap_reactor_waits_total counter\n");
        for (i, r) in self.reactors.iter().enumerate() {
            for (reason, v) in [
                ("io", r.by_io),
                ("waker", r.by_waker),
                ("hard_deadline", r.by_deadline),
                ("soft_deadline", r.by_soft_deadline),
                ("cap", r.by_cap),
                ("interrupted", r.interrupted),
                ("busy", r.busy),
            ] {
                let _ = writeln!(
                    o,
                    "pollcap_reactor_waits_total{{reactor=\"{i}\",ended_by=\"{reason}\"}} {v}"
                );
            }
        }
        o.push_str("# HELP pollcap_reactor_timers_fired_total Timers fired, by reactor and kind (soft: may fire up to the slack late).\n# TYPE pollcap_reactor_timers_fired_total counter\n");
        for (i, r) in self.reactors.iter().enumerate() {
            for (kind, v) in [("hard", r.hard_fired), ("soft", r.soft_fired)] {
                let _ = writeln!(
                    o,
                    "pollcap_reactor_timers_fired_total{{reactor=\"{i}\",kind=\"{kind}\"}} {v}"
                );
            }
        }
        o.push_str("# HELP pollcap_reactor_lost_wakeups_recovered_total Wake requests whose signal never arrived, recovered by the cap or a deadline.\n# TYPE pollcap_reactor_lost_wakeups_recovered_total counter\n");
        for (i, r) in self.reactors.iter().enumerate() {
            let _ = writeln!(
                o,
                "pollcap_reactor_lost_wakeups_recovered_total{{reactor=\"{i}\"}} {}",
                r.lost_wakeups_recovered
            );
        }
        o.push_str("# HELP pollcap_deadline_overshoot_seconds How late expired hard deadlines were handled.\n# TYPE pollcap_deadline_overshoot_seconds histogram\n");
        for (i, r) in self.reactors.iter().enumerate() {
            r.overshoot.write_prometheus(
                &mut o,
                "pollcap_deadline_overshoot_seconds",
                &format!("reactor=\"{i}\""),
            );
        }
        let _ = writeln!(
            o,
            "# HELP pollcap_poll_cap_seconds The configured cap (-1 = unbounded).\n# TYPE pollcap_poll_cap_seconds gauge\npollcap_poll_cap_seconds {}",
            self.settings
                .poll_cap
                .limit()
                .map_or(-1.0, |d| d.as_secs_f64())
        );
        let _ = writeln!(
            o,
            "# HELP pollcap_uptime_seconds Seconds since start.\n# TYPE pollcap_uptime_seconds gauge\npollcap_uptime_seconds {}",
            self.uptime.as_secs_f64()
        );
        m.deflate.snapshot().prometheus(&mut o);
        o
    }
}
