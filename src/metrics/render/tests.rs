//! Both renderings of one report carry every declared family, with the
//! same values: parsed back from the text, not read from the table.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::metrics::families::Kind;
use crate::settings::Profile;

/// `name{labels}` → value, from Prometheus text.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "{line}");
            continue;
        }
        let (k, v) = line.rsplit_once(' ').unwrap();
        assert!(
            out.insert(k.to_string(), v.parse().unwrap()).is_none(),
            "{k} twice"
        );
    }
    let mut unique = typed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), typed.len(), "a family typed twice");
    out
}

/// The samples of family `name` as (labels text, value).
fn series<'a>(prom: &'a HashMap<String, f64>, name: &str) -> Vec<(&'a str, f64)> {
    prom.iter()
        .filter_map(|(k, v)| {
            let labels = k.strip_prefix(name)?;
            let labels = match labels.strip_prefix('{') {
                Some(l) => l.strip_suffix('}')?,
                None if labels.is_empty() => "",
                None => return None,
            };
            Some((labels, *v))
        })
        .collect()
}

fn at<'a>(health: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(health, |v, k| &v[k])
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn sum_where(s: &[(&str, f64)], label: &str, value: &str) -> f64 {
    let want = format!("{label}=\"{value}\"");
    s.iter()
        .filter(|(l, _)| l.split(',').any(|p| p == want))
        .map(|(_, v)| v)
        .sum()
}

fn report<'a>(settings: &'a Settings, m: &'a ServerMetrics) -> Report<'a> {
    let mut r0 = StatsSnapshot {
        waits: 50,
        by_io: 11,
        by_waker: 12,
        by_deadline: 13,
        by_soft_deadline: 14,
        by_cap: 15,
        interrupted: 16,
        busy: 17,
        lost_wakeups_recovered: 18,
        hard_fired: 19,
        soft_fired: 20,
        ..StatsSnapshot::default()
    };
    r0.overshoot.count = 3;
    r0.overshoot.buckets[0] = 3;
    let mut r1 = r0.clone();
    r1.by_io = 1000;
    r1.hard_fired = 2000;
    Report {
        settings,
        metrics: m,
        breaker: BreakerView {
            state: "half_open",
            consecutive_failures: 4,
            threshold: 5,
            recovery_s: 10.0,
            failures_total: 31,
            rejections_total: 32,
            opened_total: 33,
        },
        app: "agent_chat",
        pool: Some((16, 41)),
        auth: true,
        reactors: vec![r0, r1],
        reactor_threads: 2,
        draining: false,
        uptime: Duration::from_millis(12_345),
        max_connections: 10_000,
        tls: Some((51, 52)),
        store: StoreView {
            kind: "memory",
            up: true,
            runs: Some(61),
            events: Some(62),
            bytes: Some(63),
            resumes: 64,
            resumes_unavailable: 65,
            evicted_run_limit: 66,
            evicted_total_limit: 67,
            runs_expired: 68,
            errors: 69,
            writes_dropped: 70,
            outages: 71,
            owner_lost: 72,
        },
        log_lines_dropped: Some(81),
        front_door: FrontDoorView {
            client_table: Some((91, 92)),
            subjects_with_runs: Some(93),
            jwks: Some(crate::auth::JwksView {
                up: true,
                keys: 94,
                fetches_ok: 95,
                fetches_failed: 96,
                kid_refreshes: 97,
            }),
        },
        agent: Some(AgentView {
            kind: "http",
            target: "http://agent:8000".into(),
            breaker: BreakerView {
                state: "open",
                consecutive_failures: 0,
                threshold: 5,
                recovery_s: 10.0,
                failures_total: 91,
                rejections_total: 92,
                opened_total: 93,
            },
        }),
    }
}

#[test]
fn health_and_metrics_carry_every_declared_family_with_the_same_values() {
    let settings = Settings::defaults(Profile::Local);
    let m = ServerMetrics::default();
    m.fill_distinct();
    let r = report(&settings, &m);
    let health = r.health();
    let prom = parse(&r.prometheus());
    let mut checked = 0;
    for f in families() {
        let s = match f.kind {
            Kind::Histogram => series(&prom, &format!("{}_count", f.name)),
            _ => series(&prom, f.name),
        };
        assert!(!s.is_empty(), "{} missing from /metrics", f.name);
        let total: f64 = s.iter().map(|(_, v)| v).sum();
        match f.health {
            HealthAt::Total(path) => assert_eq!(num(at(&health, path)), total, "{}", f.name),
            HealthAt::Flag(path) => {
                assert_eq!(
                    at(&health, path).as_bool(),
                    Some(total != 0.0),
                    "{}",
                    f.name
                )
            }
            HealthAt::ByLabel(path, label) => {
                let obj = at(&health, path).as_object().expect(path);
                assert!(!obj.is_empty(), "{}", f.name);
                for (k, v) in obj {
                    assert_eq!(num(v), sum_where(&s, label, k), "{} {k}", f.name);
                }
                let listed: f64 = obj.values().map(num).sum();
                assert_eq!(listed, total, "{}: every label value listed", f.name);
            }
            HealthAt::Keys(label, keys) => {
                let mut listed = 0.0;
                for (v, path) in keys {
                    let want = sum_where(&s, label, v);
                    assert_eq!(num(at(&health, path)), want, "{} {v}", f.name);
                    listed += want;
                }
                assert_eq!(listed, total, "{}: every label value has a key", f.name);
            }
            HealthAt::Which(path, label) => {
                let state = at(&health, path).as_str().expect(path);
                assert_eq!(sum_where(&s, label, state), 1.0, "{}", f.name);
                assert_eq!(total, 1.0, "{}: one state at a time", f.name);
            }
        }
        checked += 1;
    }
    assert!(checked > 40, "{checked} families");
    // Distinct values: a reader pointed at the wrong counter shows up.
    assert_eq!(health["handlers"]["runs"], m.runs_total.load(Relaxed));
    assert_eq!(health["reactor"]["by_io"], 1011);
    assert_eq!(health["breaker"]["state"], "half_open");
    assert_eq!(health["store"]["up"], true);
    assert_eq!(health["handshake_latency_ms"]["count"], 3);
}

#[test]
fn absent_values_are_null_in_health_and_left_out_of_metrics() {
    let settings = Settings::defaults(Profile::Local);
    let m = ServerMetrics::default();
    let mut r = report(&settings, &m);
    r.pool = None;
    r.store.runs = None;
    let health = r.health();
    assert!(health["handlers"]["pool_threads"].is_null());
    assert!(health["store"]["runs"].is_null());
    let text = r.prometheus();
    assert!(!text.contains("pollcap_pool_threads"));
    assert!(!text.contains("pollcap_store_runs "));
    assert!(text.contains("pollcap_store_events 62"));
}
