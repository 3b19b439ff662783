//! The two renderings of one [`Report`]: `/health` JSON (the server's
//! description plus every declared family at its place) and `/metrics`
//! Prometheus text (every declared family), both walking [`families`].

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::ServerMetrics;
use super::families;
use super::families::{HealthAt, Num, Values};
use crate::auth::JwksView;
use crate::reactor::StatsSnapshot;
use crate::settings::{Group, Settings};
use crate::store::StoreView;

/// The circuit breaker as reported.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct BreakerView {
    pub state: &'static str,
    pub consecutive_failures: u32,
    pub threshold: u32,
    pub recovery_s: f64,
    pub failures_total: u64,
    pub rejections_total: u64,
    pub opened_total: u64,
}

/// The front door as reported: the per-address table, the subjects with
/// runs, the identity provider's key set (each `None` when not in use).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FrontDoorView {
    /// (entries, entries evicted because the table was full)
    pub client_table: Option<(u64, u64)>,
    pub subjects_with_runs: Option<u64>,
    pub jwks: Option<JwksView>,
}

/// The team's agent as reported.
#[derive(Clone, Debug)]
pub(crate) struct AgentView {
    /// `http` or `command`.
    pub kind: &'static str,
    /// Where (a URL without its query, or the command's first word).
    pub target: String,
    pub breaker: BreakerView,
}

/// Everything `/health` and `/metrics` report, gathered at one `now`.
pub(crate) struct Report<'a> {
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
    pub front_door: FrontDoorView,
    /// The team's agent, when one is configured.
    pub agent: Option<AgentView>,
}

/// Sets `value` at the dotted `path` of `root`, making objects on the way.
fn put(root: &mut Map<String, Value>, path: &str, value: Value) {
    let mut at = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            at.insert(part.to_string(), value);
            return;
        }
        let next = at
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        let Value::Object(next) = next else {
            unreachable!("made an object above")
        };
        at = next;
    }
}

fn json(n: Num) -> Value {
    match n {
        Num::U(n) => n.into(),
        Num::F(f) => f.into(),
    }
}

/// Adds the total of `samples` whose `label` is `value`.
fn total_where(values: &Values, label: &str, value: &str) -> Option<Num> {
    let Values::Samples(samples) = values else {
        return None;
    };
    samples
        .iter()
        .filter(|s| s.labels.iter().any(|(k, v)| *k == label && v == value))
        .map(|s| s.value)
        .reduce(|a, b| match (a, b) {
            (Num::U(a), Num::U(b)) => Num::U(a.saturating_add(b)),
            (a, b) => Num::F(a.as_f64() + b.as_f64()),
        })
}

/// The values of `label`, in first-seen order.
fn label_values(values: &Values, label: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Values::Samples(samples) = values {
        for s in samples {
            for (k, v) in &s.labels {
                if *k == label && !out.contains(v) {
                    out.push(v.clone());
                }
            }
        }
    }
    out
}

impl Report<'_> {
    /// `healthy`, `degraded` (at the connection limit, a deadline was
    /// missed by the queue, a breaker — the server's or the agent's — is
    /// not closed, the run store is unreachable, or the key set could not
    /// be refreshed) or `draining`.
    pub fn status(&self) -> &'static str {
        if self.draining {
            "draining"
        } else if self.metrics.open.load(Relaxed) as usize >= self.max_connections
            || self.metrics.missed_deadlines_total.load(Relaxed) > 0
            || self.breaker.state != "closed"
            || self
                .agent
                .as_ref()
                .is_some_and(|a| a.breaker.state != "closed")
            || !self.store.up
            || self.front_door.jwks.is_some_and(|j| !j.up)
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

    /// The `/health` document (SPEC §8): what the server is, then every
    /// declared family at its place.
    pub fn health_json(&self) -> String {
        serde_json::to_string(&self.health()).unwrap_or_else(|_| "{}".into())
    }

    /// [`Report::health_json`] as a value.
    pub fn health(&self) -> Value {
        let s = self.settings;
        let h = self.metrics.handshake_latency.snapshot();
        let ms = |us: u64| us as f64 / 1000.0;
        let r = self.reactor_total();
        let mut root = Map::new();
        let described: [(&str, Value); 24] = [
            ("status", self.status().into()),
            ("environment", s.environment.label().into()),
            ("cloud_container", s.environment.is_cloud_container().into()),
            ("profile", s.profile.name().into()),
            ("backend", s.backend.name().into()),
            ("poll_cap", s.poll_cap.to_string().into()),
            ("reactor_threads", self.reactor_threads.into()),
            ("app", self.app.into()),
            ("auth", self.auth.into()),
            ("timeouts_s", Value::Object(s.group(Group::Timeouts))),
            ("breaker.threshold", self.breaker.threshold.into()),
            ("breaker.recovery_s", self.breaker.recovery_s.into()),
            ("connections.max", self.max_connections.into()),
            ("handshake_latency_ms.avg", (h.mean_us() / 1000.0).into()),
            ("handshake_latency_ms.p50", ms(h.quantile_us(0.50)).into()),
            ("handshake_latency_ms.p95", ms(h.quantile_us(0.95)).into()),
            ("handshake_latency_ms.p99", ms(h.quantile_us(0.99)).into()),
            ("tls.enabled", self.tls.is_some().into()),
            ("store.kind", self.store.kind.into()),
            ("reactor.waits", r.waits.into()),
            (
                "reactor.deadline_overshoot_p50_ms",
                ms(r.overshoot.quantile_us(0.50)).into(),
            ),
            (
                "reactor.deadline_overshoot_p99_ms",
                ms(r.overshoot.quantile_us(0.99)).into(),
            ),
            (
                "reactor.soft_lateness_p50_ms",
                ms(r.soft_lateness.quantile_us(0.50)).into(),
            ),
            (
                "reactor.soft_lateness_p99_ms",
                ms(r.soft_lateness.quantile_us(0.99)).into(),
            ),
        ];
        for (path, v) in described {
            put(&mut root, path, v);
        }
        if let Some(a) = &self.agent {
            put(&mut root, "agent.kind", a.kind.into());
            put(&mut root, "agent.target", a.target.clone().into());
            put(
                &mut root,
                "agent.breaker.threshold",
                a.breaker.threshold.into(),
            );
            put(
                &mut root,
                "agent.breaker.recovery_s",
                a.breaker.recovery_s.into(),
            );
        }
        for f in families() {
            let values = (f.read)(self);
            match f.health {
                HealthAt::Total(path) => {
                    put(&mut root, path, values.total().map_or(Value::Null, json));
                }
                HealthAt::Flag(path) => {
                    let on = values.total().is_some_and(|n| n.as_f64() != 0.0);
                    put(&mut root, path, on.into());
                }
                HealthAt::ByLabel(path, label) => {
                    let mut m = Map::new();
                    for v in label_values(&values, label) {
                        let n = total_where(&values, label, &v).map_or(Value::Null, json);
                        m.insert(v, n);
                    }
                    put(&mut root, path, Value::Object(m));
                }
                HealthAt::Keys(label, keys) => {
                    // A family with no sample at all (not in use) is null.
                    let any = values.total().is_some();
                    for (v, path) in keys {
                        let n = total_where(&values, label, v).unwrap_or(Num::U(0));
                        put(&mut root, path, if any { json(n) } else { Value::Null });
                    }
                }
                HealthAt::Which(path, label) => {
                    let which = label_values(&values, label).into_iter().find(|v| {
                        total_where(&values, label, v).is_some_and(|n| n.as_f64() == 1.0)
                    });
                    put(&mut root, path, which.map_or(Value::Null, Value::from));
                }
            }
        }
        Value::Object(root)
    }

    /// The `/metrics` text: every declared family, Prometheus exposition
    /// format 0.0.4.
    pub fn prometheus(&self) -> String {
        let mut o = String::with_capacity(16 * 1024);
        for f in families() {
            let values = (f.read)(self);
            if let Values::Samples(s) = &values
                && s.is_empty()
            {
                continue; // absent (e.g. the memory store's gauges on Redis)
            }
            let (name, help, kind) = (f.name, f.help, f.kind.name());
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            match values {
                Values::Samples(samples) => {
                    for s in samples {
                        let labels = labels_text(&s.labels);
                        let braces = if labels.is_empty() {
                            String::new()
                        } else {
                            format!("{{{labels}}}")
                        };
                        let _ = match s.value {
                            Num::U(n) => writeln!(o, "{name}{braces} {n}"),
                            Num::F(x) => writeln!(o, "{name}{braces} {x}"),
                        };
                    }
                }
                Values::Histograms(hs) => {
                    for (labels, h) in hs {
                        h.write_prometheus(&mut o, name, &labels_text(&labels));
                    }
                }
            }
        }
        o
    }
}

fn labels_text(labels: &[(&'static str, String)]) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests;
