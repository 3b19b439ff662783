//! The metric families other than the plain counters, and the types of
//! the one table both renderings walk: what a family is called, what kind
//! it is, where `/health` shows it, and how its values are read from a
//! [`Report`].

use std::sync::atomic::Ordering::Relaxed;

use super::{AGENT_CODES, CLOSE_CODES, HTTP_STATUSES, LingerEnd, Refused, TimeoutPhase};
use crate::histogram::Snapshot;
use crate::metrics::Report;

/// Prometheus type of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (`_total`).
    Counter,
    /// Goes up and down (a level: open connections, breaker state).
    Gauge,
    /// Buckets, count and sum (`_bucket`, `_count`, `_sum`).
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE` word.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value: counts stay exact integers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Num {
    U(u64),
    F(f64),
}

impl Num {
    pub fn as_f64(self) -> f64 {
        match self {
            Num::U(n) => n as f64,
            Num::F(f) => f,
        }
    }

    fn add(self, o: Num) -> Num {
        match (self, o) {
            (Num::U(a), Num::U(b)) => Num::U(a.saturating_add(b)),
            (a, b) => Num::F(a.as_f64() + b.as_f64()),
        }
    }
}

/// One labelled value (`labels` empty for a family of one).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: Num,
}

/// What a family holds now.
pub(crate) enum Values {
    Samples(Vec<Sample>),
    /// One histogram per label set (`/health` shows their total count).
    Histograms(Vec<(Vec<(&'static str, String)>, Snapshot)>),
}

impl Values {
    pub fn one(v: u64) -> Values {
        Values::Samples(vec![Sample {
            labels: Vec::new(),
            value: Num::U(v),
        }])
    }

    fn float(v: f64) -> Values {
        Values::Samples(vec![Sample {
            labels: Vec::new(),
            value: Num::F(v),
        }])
    }

    /// An optional value: no sample at all when absent.
    fn maybe(v: Option<u64>) -> Values {
        Values::Samples(v.map_or_else(Vec::new, |v| {
            vec![Sample {
                labels: Vec::new(),
                value: Num::U(v),
            }]
        }))
    }

    /// One sample per `(label value, value)`.
    fn by(label: &'static str, it: impl IntoIterator<Item = (String, u64)>) -> Values {
        Values::Samples(
            it.into_iter()
                .map(|(l, v)| Sample {
                    labels: vec![(label, l)],
                    value: Num::U(v),
                })
                .collect(),
        )
    }

    /// Per reactor and per `label`: `rows(i)` lists one reactor's values.
    fn per_reactor(
        r: &Report,
        label: &'static str,
        rows: impl Fn(&crate::reactor::StatsSnapshot) -> Vec<(&'static str, u64)>,
    ) -> Values {
        let mut out = Vec::new();
        for (i, s) in r.reactors.iter().enumerate() {
            for (l, v) in rows(s) {
                out.push(Sample {
                    labels: vec![("reactor", i.to_string()), (label, l.to_string())],
                    value: Num::U(v),
                });
            }
        }
        Values::Samples(out)
    }

    /// The sum of every sample, or of every histogram's count; `None`
    /// when there is none.
    pub fn total(&self) -> Option<Num> {
        match self {
            Values::Samples(s) => s.iter().map(|s| s.value).reduce(Num::add),
            Values::Histograms(h) => h.iter().map(|(_, h)| Num::U(h.count)).reduce(Num::add),
        }
    }
}

/// Where `/health` shows a family.
#[derive(Clone, Copy, Debug)]
pub enum HealthAt {
    /// The total of every sample at this dotted path (`null` with none).
    Total(&'static str),
    /// `true` at this path when the total is not 0.
    Flag(&'static str),
    /// An object at this path: each value of the label, its total.
    ByLabel(&'static str, &'static str),
    /// Each listed value of the label at its own path (`(value, path)`),
    /// totalled over the other labels.
    Keys(&'static str, &'static [(&'static str, &'static str)]),
    /// The value of the label whose sample is 1 (a state), at this path.
    Which(&'static str, &'static str),
}

/// One metric family: declared here once, rendered by both outputs.
pub struct Family {
    /// The Prometheus name, e.g. `pollcap_timeouts_total`.
    pub name: &'static str,
    /// The `# HELP` line: what it counts, in one sentence.
    pub help: &'static str,
    /// Its Prometheus type.
    pub kind: Kind,
    /// Where `/health` shows it.
    pub health: HealthAt,
    pub(crate) read: fn(&Report) -> Values,
}

/// The families that are not plain counters.
pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "pollcap_timeouts_total",
        help: "Phase deadlines that expired, by phase.",
        kind: Kind::Counter,
        health: HealthAt::ByLabel("timeouts", "phase"),
        read: |r| {
            Values::by(
                "phase",
                TimeoutPhase::ALL
                    .iter()
                    .map(|p| (p.name().to_string(), r.metrics.timeouts_of(*p))),
            )
        },
    },
    Family {
        name: "pollcap_close_frames_sent_total",
        help: "Close frames initiated by the server, by code.",
        kind: Kind::Counter,
        health: HealthAt::ByLabel("close_frames_sent", "code"),
        read: |r| {
            Values::by(
                "code",
                r.metrics.close_sent.iter().enumerate().map(|(i, c)| {
                    let code = CLOSE_CODES.get(i).map_or("other".into(), u16::to_string);
                    (code, c.load(Relaxed))
                }),
            )
        },
    },
    Family {
        name: "pollcap_http_responses_total",
        help: "HTTP responses, by status.",
        kind: Kind::Counter,
        health: HealthAt::ByLabel("http_responses", "status"),
        read: |r| {
            Values::by(
                "status",
                r.metrics.http_status.iter().enumerate().map(|(i, c)| {
                    let s = HTTP_STATUSES.get(i).map_or("other".into(), u16::to_string);
                    (s, c.load(Relaxed))
                }),
            )
        },
    },
    Family {
        name: "pollcap_lingering_closes_total",
        help: "Lingering closes after a response that ends the connection, by how they ended.",
        kind: Kind::Counter,
        health: HealthAt::ByLabel("linger.closes", "end"),
        read: |r| {
            Values::by(
                "end",
                LingerEnd::ALL.iter().map(|e| {
                    (
                        e.name().to_string(),
                        r.metrics.lingered[*e as usize].load(Relaxed),
                    )
                }),
            )
        },
    },
    Family {
        name: "pollcap_agent_failures_total",
        help: "Agent runs that failed, by error code.",
        kind: Kind::Counter,
        health: HealthAt::ByLabel("agent.failures", "code"),
        read: |r| {
            Values::by(
                "code",
                AGENT_CODES
                    .iter()
                    .zip(&r.metrics.agent_failures)
                    .map(|(c, n)| (c.to_string(), n.load(Relaxed))),
            )
        },
    },
    Family {
        name: "pollcap_agent_breaker_state",
        help: "The agent's circuit breaker state (1 = current; absent without an agent).",
        kind: Kind::Gauge,
        health: HealthAt::Which("agent.breaker.state", "state"),
        read: |r| match &r.agent {
            Some(a) => Values::by(
                "state",
                ["closed", "open", "half_open"]
                    .map(|s| (s.to_string(), u64::from(a.breaker.state == s))),
            ),
            None => Values::Samples(Vec::new()),
        },
    },
    Family {
        name: "pollcap_agent_breaker_opened_total",
        help: "Times the agent's circuit breaker opened.",
        kind: Kind::Counter,
        health: HealthAt::Total("agent.breaker.opened_total"),
        read: |r| Values::maybe(r.agent.as_ref().map(|a| a.breaker.opened_total)),
    },
    Family {
        name: "pollcap_agent_breaker_rejections_total",
        help: "Agent runs answered upstream_unavailable at once while its breaker was open.",
        kind: Kind::Counter,
        health: HealthAt::Total("agent.breaker.rejections_total"),
        read: |r| Values::maybe(r.agent.as_ref().map(|a| a.breaker.rejections_total)),
    },
    Family {
        name: "pollcap_front_door_refusals_total",
        help: "Requests, connections and messages the front door refused, by reason \
               (origin 403; ip_connections, ip_rate 429; forwarded 400; conn_messages, \
               conn_bytes close 1008; subject_runs overloaded).",
        kind: Kind::Counter,
        health: HealthAt::ByLabel("front_door.refusals", "reason"),
        read: |r| {
            Values::by(
                "reason",
                Refused::ALL
                    .iter()
                    .map(|why| (why.name().to_string(), r.metrics.refusals_of(*why))),
            )
        },
    },
    Family {
        name: "pollcap_client_table_entries",
        help: "Client addresses remembered by the per-address limits (bounded).",
        kind: Kind::Gauge,
        health: HealthAt::Total("front_door.client_table.entries"),
        read: |r| Values::maybe(r.front_door.client_table.map(|t| t.0)),
    },
    Family {
        name: "pollcap_client_table_evictions_total",
        help: "Idle client addresses dropped because the per-address table was full.",
        kind: Kind::Counter,
        health: HealthAt::Total("front_door.client_table.evictions"),
        read: |r| Values::maybe(r.front_door.client_table.map(|t| t.1)),
    },
    Family {
        name: "pollcap_subjects_with_runs",
        help: "Subjects with a run in flight (counted for --max-runs-per-subject).",
        kind: Kind::Gauge,
        health: HealthAt::Total("front_door.subjects_with_runs"),
        read: |r| Values::maybe(r.front_door.subjects_with_runs),
    },
    Family {
        name: "pollcap_jwks_up",
        help: "1 while the identity provider's key set refreshes (0: the last good set is in \
               use; /health degraded).",
        kind: Kind::Gauge,
        health: HealthAt::Total("jwks.up"),
        read: |r| Values::maybe(r.front_door.jwks.map(|j| u64::from(j.up))),
    },
    Family {
        name: "pollcap_jwks_keys",
        help: "Usable keys in the key set in use.",
        kind: Kind::Gauge,
        health: HealthAt::Total("jwks.keys"),
        read: |r| Values::maybe(r.front_door.jwks.map(|j| j.keys)),
    },
    Family {
        name: "pollcap_jwks_fetches_total",
        help: "Key set fetches (or file reloads), by result.",
        kind: Kind::Counter,
        health: HealthAt::Keys(
            "result",
            &[("ok", "jwks.fetches_ok"), ("failed", "jwks.fetches_failed")],
        ),
        read: |r| match r.front_door.jwks {
            Some(j) => Values::by(
                "result",
                [
                    ("ok".to_string(), j.fetches_ok),
                    ("failed".to_string(), j.fetches_failed),
                ],
            ),
            None => Values::Samples(Vec::new()),
        },
    },
    Family {
        name: "pollcap_jwks_kid_refreshes_total",
        help: "Key set refreshes started by a token naming an unknown kid (at most one per 30 s).",
        kind: Kind::Counter,
        health: HealthAt::Total("jwks.kid_refreshes"),
        read: |r| Values::maybe(r.front_door.jwks.map(|j| j.kid_refreshes)),
    },
    Family {
        name: "pollcap_handshake_duration_seconds",
        help: "TCP accept to 101 written.",
        kind: Kind::Histogram,
        health: HealthAt::Total("handshake_latency_ms.count"),
        read: |r| Values::Histograms(vec![(Vec::new(), r.metrics.handshake_latency.snapshot())]),
    },
    Family {
        name: "pollcap_pool_threads",
        help: "Threads of the handler pool (absent without one).",
        kind: Kind::Gauge,
        health: HealthAt::Total("handlers.pool_threads"),
        read: |r| Values::maybe(r.pool.map(|p| p.0 as u64)),
    },
    Family {
        name: "pollcap_pool_queued",
        help: "Jobs waiting for a handler pool thread.",
        kind: Kind::Gauge,
        health: HealthAt::Total("handlers.pool_queued"),
        read: |r| Values::maybe(r.pool.map(|p| p.1 as u64)),
    },
    Family {
        name: "pollcap_resumes_total",
        help: "Resume requests served (stored events, then live ones).",
        kind: Kind::Counter,
        health: HealthAt::Total("store.resumes"),
        read: |r| Values::one(r.store.resumes),
    },
    Family {
        name: "pollcap_resumes_unavailable_total",
        help: "Resume requests answered resume_unavailable.",
        kind: Kind::Counter,
        health: HealthAt::Total("store.resumes_unavailable"),
        read: |r| Values::one(r.store.resumes_unavailable),
    },
    Family {
        name: "pollcap_store_runs_expired_total",
        help: "Runs dropped from the store (their window passed, or room was needed).",
        kind: Kind::Counter,
        health: HealthAt::Total("store.runs_expired"),
        read: |r| Values::one(r.store.runs_expired),
    },
    Family {
        name: "pollcap_store_errors_total",
        help: "Run store calls that failed (Redis error or deadline).",
        kind: Kind::Counter,
        health: HealthAt::Total("store.errors"),
        read: |r| Values::one(r.store.errors),
    },
    Family {
        name: "pollcap_store_writes_dropped_total",
        help: "Events not written to the run store (Redis down or its queue full).",
        kind: Kind::Counter,
        health: HealthAt::Total("store.writes_dropped"),
        read: |r| Values::one(r.store.writes_dropped),
    },
    Family {
        name: "pollcap_store_outages_total",
        help: "Times the run store became unreachable.",
        kind: Kind::Counter,
        health: HealthAt::Total("store.outages"),
        read: |r| Values::one(r.store.outages),
    },
    Family {
        name: "pollcap_store_owner_lost_total",
        help: "Followed runs ended resume_interrupted because their instance's lease in Redis lapsed.",
        kind: Kind::Counter,
        health: HealthAt::Total("store.owner_lost"),
        read: |r| Values::one(r.store.owner_lost),
    },
    Family {
        name: "pollcap_store_up",
        help: "1 while the run store is reachable (0: Redis down; resume unavailable).",
        kind: Kind::Gauge,
        health: HealthAt::Flag("store.up"),
        read: |r| Values::one(u64::from(r.store.up)),
    },
    Family {
        name: "pollcap_store_runs",
        help: "Runs held by the memory store.",
        kind: Kind::Gauge,
        health: HealthAt::Total("store.runs"),
        read: |r| Values::maybe(r.store.runs),
    },
    Family {
        name: "pollcap_store_events",
        help: "Events held by the memory store.",
        kind: Kind::Gauge,
        health: HealthAt::Total("store.events"),
        read: |r| Values::maybe(r.store.events),
    },
    Family {
        name: "pollcap_store_bytes",
        help: "Bytes held by the memory store (events and records).",
        kind: Kind::Gauge,
        health: HealthAt::Total("store.bytes"),
        read: |r| Values::maybe(r.store.bytes),
    },
    Family {
        name: "pollcap_store_evicted_events_total",
        help: "Stored events dropped to stay within a limit.",
        kind: Kind::Counter,
        health: HealthAt::Keys(
            "limit",
            &[
                ("run", "store.evicted_run_limit"),
                ("total", "store.evicted_total_limit"),
            ],
        ),
        read: |r| {
            Values::by(
                "limit",
                [
                    ("run".to_string(), r.store.evicted_run_limit),
                    ("total".to_string(), r.store.evicted_total_limit),
                ],
            )
        },
    },
    Family {
        name: "pollcap_tls_reloads_total",
        help: "Certificate pairs reloaded (SIGHUP or changed files).",
        kind: Kind::Counter,
        health: HealthAt::Total("tls.reloads"),
        read: |r| Values::one(r.tls.map_or(0, |t| t.0)),
    },
    Family {
        name: "pollcap_tls_reload_failures_total",
        help: "Certificate reloads refused (the previous pair stays).",
        kind: Kind::Counter,
        health: HealthAt::Total("tls.reload_failures"),
        read: |r| Values::one(r.tls.map_or(0, |t| t.1)),
    },
    Family {
        name: "pollcap_log_lines_dropped_total",
        help: "Log lines dropped because the log output fell behind (never blocking a reactor).",
        kind: Kind::Counter,
        health: HealthAt::Total("log_lines_dropped"),
        read: |r| Values::one(r.log_lines_dropped.unwrap_or(0)),
    },
    Family {
        name: "pollcap_breaker_failures_total",
        help: "Server-fault upgrade failures counted by the circuit breaker.",
        kind: Kind::Counter,
        health: HealthAt::Total("breaker.failures_total"),
        read: |r| Values::one(r.breaker.failures_total),
    },
    Family {
        name: "pollcap_breaker_rejections_total",
        help: "Upgrades refused with 503 while the breaker was open.",
        kind: Kind::Counter,
        health: HealthAt::Total("breaker.rejections_total"),
        read: |r| Values::one(r.breaker.rejections_total),
    },
    Family {
        name: "pollcap_breaker_opened_total",
        help: "Times the breaker opened.",
        kind: Kind::Counter,
        health: HealthAt::Total("breaker.opened_total"),
        read: |r| Values::one(r.breaker.opened_total),
    },
    Family {
        name: "pollcap_breaker_consecutive_failures",
        help: "Server-fault failures in a row (the breaker opens at its threshold).",
        kind: Kind::Gauge,
        health: HealthAt::Total("breaker.consecutive_failures"),
        read: |r| Values::one(r.breaker.consecutive_failures.into()),
    },
    Family {
        name: "pollcap_breaker_state",
        help: "Circuit breaker state (1 = current).",
        kind: Kind::Gauge,
        health: HealthAt::Which("breaker.state", "state"),
        read: |r| {
            Values::by(
                "state",
                ["closed", "open", "half_open"]
                    .map(|s| (s.to_string(), u64::from(r.breaker.state == s))),
            )
        },
    },
    Family {
        name: "pollcap_draining",
        help: "1 while the server drains.",
        kind: Kind::Gauge,
        health: HealthAt::Flag("draining"),
        read: |r| Values::one(u64::from(r.draining)),
    },
    Family {
        name: "pollcap_reactor_waits_total",
        help: "OS waits, by reactor and what ended them.",
        kind: Kind::Counter,
        health: HealthAt::Keys(
            "ended_by",
            &[
                ("io", "reactor.by_io"),
                ("waker", "reactor.by_waker"),
                ("hard_deadline", "reactor.by_deadline"),
                ("soft_deadline", "reactor.by_soft_deadline"),
                ("cap", "reactor.by_cap"),
                ("interrupted", "reactor.interrupted"),
                ("busy", "reactor.busy"),
            ],
        ),
        read: |r| {
            Values::per_reactor(r, "ended_by", |s| {
                vec![
                    ("io", s.by_io),
                    ("waker", s.by_waker),
                    ("hard_deadline", s.by_deadline),
                    ("soft_deadline", s.by_soft_deadline),
                    ("cap", s.by_cap),
                    ("interrupted", s.interrupted),
                    ("busy", s.busy),
                ]
            })
        },
    },
    Family {
        name: "pollcap_reactor_timers_fired_total",
        help: "Timers fired, by reactor and kind (soft: may fire up to the slack late).",
        kind: Kind::Counter,
        health: HealthAt::Keys(
            "kind",
            &[
                ("hard", "reactor.hard_timers_fired"),
                ("soft", "reactor.soft_timers_fired"),
            ],
        ),
        read: |r| {
            Values::per_reactor(r, "kind", |s| {
                vec![("hard", s.hard_fired), ("soft", s.soft_fired)]
            })
        },
    },
    Family {
        name: "pollcap_reactor_lost_wakeups_recovered_total",
        help: "Wake requests whose signal never arrived, recovered by the cap or a deadline.",
        kind: Kind::Counter,
        health: HealthAt::Total("reactor.lost_wakeups_recovered"),
        read: |r| {
            Values::Samples(
                r.reactors
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Sample {
                        labels: vec![("reactor", i.to_string())],
                        value: Num::U(s.lost_wakeups_recovered),
                    })
                    .collect(),
            )
        },
    },
    Family {
        name: "pollcap_deadline_overshoot_seconds",
        help: "How late expired hard deadlines were handled.",
        kind: Kind::Histogram,
        health: HealthAt::Total("reactor.deadline_overshoot_count"),
        read: |r| {
            Values::Histograms(
                r.reactors
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (vec![("reactor", i.to_string())], s.overshoot.clone()))
                    .collect(),
            )
        },
    },
    Family {
        name: "pollcap_poll_cap_seconds",
        help: "The configured cap (-1 = unbounded).",
        kind: Kind::Gauge,
        health: HealthAt::Total("poll_cap_s"),
        read: |r| {
            Values::float(
                r.settings
                    .poll_cap
                    .limit()
                    .map_or(-1.0, |d| d.as_secs_f64()),
            )
        },
    },
    Family {
        name: "pollcap_uptime_seconds",
        help: "Seconds since start.",
        kind: Kind::Gauge,
        health: HealthAt::Total("uptime_s"),
        read: |r| Values::float(r.uptime.as_secs_f64()),
    },
];
