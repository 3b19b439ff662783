//! `load soak`: the server under mixed load for a long time (see `mix`),
//! against a server it starts or a URL, then a verdict. The server's RSS
//! and open descriptors are sampled (/proc/PID) at the start, every second
//! for the peak, and at the end; its counters are read from /metrics.
//!
//! The start is sampled after a warm-up with the same mix (by default 10 %
//! of the duration, 15 to 60 s), once the server is quiet again: what the
//! load allocates for good — thread stacks, the worker pool, slab and
//! timer-queue capacity, per-thread allocator caches — is not a leak, and
//! would otherwise hide one behind a tolerance. A server the soak started
//! gives its free heap back every `sys::TRIM_EVERY`; quiet samples wait
//! one such period. The rules: end RSS <= start RSS x 1.05 + 2 MiB, end
//! descriptors == start descriptors, 0 missed deadlines, 0 handler
//! panics, 0 errors (clients that saw a wrong answer or failed to connect,
//! accept errors, overloaded answers, warning lines of a server it
//! started), and the server alive.
//!
//! The 2 MiB: the live heap of a quiet server still grew by 1.2 MB over
//! its first quarter hour of this mix (malloc_stats: 2.3, 3.1, 3.5 MB
//! after 75 s, +5 and +10 min) and levelled off — per-thread caches and
//! capacities reaching their high-water marks, not a leak, which keeps
//! growing. Without the trims RSS measured glibc's free space instead
//! (20 MB of heap for those 3.5 MB in use; quiet RSS from 17 to 26 MiB in
//! ten minutes), which says nothing about leaks.

mod mix;

use std::collections::BTreeMap;
use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use mix::MixConfig;
use mix::{MixStats, MixView};

use super::http_get;
use crate::child::ServeChild;

/// What `pollcap load soak` was asked to do.
pub struct SoakOptions {
    pub duration: Duration,
    pub warmup: Duration,
    pub mix: MixConfig,
}

/// The server's memory and descriptors at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    pub rss_bytes: u64,
    pub fds: u64,
}

fn usage(pid: Option<u32>) -> Option<Usage> {
    let pid = pid?;
    let (_, rss) = super::super::sys::process_usage(pid)?;
    let fds = super::super::sys::open_fds(pid)?;
    Some(Usage {
        rss_bytes: rss,
        fds,
    })
}

/// A `pollcap serve` started for the soak, killed on drop; its warning
/// lines are counted.
struct Spawned {
    server: ServeChild,
    warnings: Arc<AtomicU64>,
    first_warnings: Arc<Mutex<Vec<String>>>,
}

impl Spawned {
    fn start() -> io::Result<Spawned> {
        let mut cmd = Command::new(std::env::current_exe()?);
        // Loopback without auth (a token setup of the caller's would only
        // get in the way); every other setting from the environment.
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            // The memory run store keeps finished runs for the resume
            // window, up to its total bound (64 MiB by default): memory
            // meant to stay, which would fill during the soak and read as
            // growth. A 2 MiB bound is full before the start is sampled,
            // so the comparison sees leaks, not retention (the store's
            // own bounds are tested in `src/store`).
            .args(["--resume-run-bytes", "65536"])
            .args(["--resume-total-bytes", "2097152"])
            .env_remove("POLLCAP_JWT_SECRET")
            .env_remove("POLLCAP_TOKENS_FILE")
            .env_remove("POLLCAP_LISTEN")
            .env("RUST_LOG", "warn,pollcap::serve=info");
        let warnings = Arc::new(AtomicU64::new(0));
        let first_warnings = Arc::new(Mutex::new(Vec::new()));
        let (w, f) = (warnings.clone(), first_warnings.clone());
        let server = ServeChild::spawn(cmd, move |line| {
            let line = plain(&line);
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                w.fetch_add(1, Relaxed);
                let mut first = f.lock().unwrap_or_else(|p| p.into_inner());
                if first.len() < 10 {
                    first.push(line);
                }
            }
        })?;
        Ok(Spawned {
            server,
            warnings,
            first_warnings,
        })
    }
}

/// A log line without its colour codes (`ESC [ ... m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every sample of the server's /metrics, `name{labels}` -> value.
fn metrics(url: &str) -> Option<BTreeMap<String, f64>> {
    let body = http_get(url, "/metrics")?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// Samples whose name starts with `prefix`, by their label value.
fn family(m: &BTreeMap<String, f64>, prefix: &str) -> BTreeMap<String, u64> {
    m.iter()
        .filter_map(|(k, v)| {
            let label = k.strip_prefix(prefix)?.split('"').nth(1)?;
            (*v > 0.0).then(|| (label.to_string(), *v as u64))
        })
        .collect()
}

/// Waits until the server has no WebSocket open, then until its
/// descriptor count holds still for half a second (lingering closes end
/// within `close`; no request of ours is in flight meanwhile), bounded by
/// `limit`, then `trim_wait` more (a server we started gives free heap
/// back every `sys::TRIM_EVERY`); then samples.
fn quiet_usage(url: &str, pid: Option<u32>, limit: Duration, trim_wait: Duration) -> Option<Usage> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let open = metrics(url).and_then(|m| m.get("pollcap_connections_open").copied());
        if open == Some(0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250)); // polling interval, bounded by `limit`
    }
    let mut last = usage(pid)?;
    let mut still = 0;
    while still < 2 && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(250)); // sampling interval, bounded by `limit`
        let now = usage(pid)?;
        still = if now.fds == last.fds { still + 1 } else { 0 };
        last = now;
    }
    if trim_wait.is_zero() {
        return Some(last);
    }
    std::thread::sleep(trim_wait); // one trim period, so the sample follows a trim
    usage(pid)
}

/// One verdict line.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub mode: &'static str,
    pub url: String,
    pub server_started_by_soak: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Before the warm-up, at the start (after it, quiet), the peak during
    /// the soak, and at the end (quiet again).
    pub fresh: Option<Usage>,
    pub start: Option<Usage>,
    pub peak: Option<Usage>,
    pub end: Option<Usage>,
    pub load: MixView,
    pub missed_deadlines: u64,
    pub handler_panics: u64,
    pub accept_errors: u64,
    pub overloaded: u64,
    pub server_warnings: u64,
    pub first_server_warnings: Vec<String>,
    pub connections_accepted: u64,
    pub upgrades: u64,
    pub handler_runs: u64,
    pub timeouts: BTreeMap<String, u64>,
    pub close_frames_sent: BTreeMap<String, u64>,
    pub http_responses: BTreeMap<String, u64>,
    pub lingering_closes: BTreeMap<String, u64>,
    pub checks: Vec<Check>,
    pub passed: usize,
    pub failed: usize,
}

/// RSS may end this much above start: 5 % plus 2 MiB (see the module doc).
fn rss_allowed(start: u64) -> u64 {
    start + start / 20 + 2 * 1024 * 1024
}

/// Runs the soak: against `url` (with `pid` for memory and descriptors,
/// when local), or against a server it starts when `url` is `None`.
pub fn soak(url: Option<&str>, pid: Option<u32>, opts: SoakOptions) -> io::Result<SoakReport> {
    let mut spawned = match url {
        Some(_) => None,
        None => Some(Spawned::start()?),
    };
    let url = match (&spawned, url) {
        (Some(s), _) => s.server.url(),
        (None, Some(u)) => u.to_string(),
        (None, None) => unreachable!("one of them is set"),
    };
    let pid = spawned.as_ref().map(|s| s.server.pid()).or(pid);
    let health: serde_json::Value = http_get(&url, "/health")
        .and_then(|b| serde_json::from_str(&b).ok())
        .ok_or_else(|| io::Error::other(format!("no /health answer at {url}")))?;
    let close = health["timeouts_s"]["close"].as_f64().unwrap_or(10.0);
    let settle = Duration::from_secs_f64(close) + Duration::from_secs(10);
    let trim_wait = match spawned {
        Some(_) => super::super::sys::TRIM_EVERY + Duration::from_secs(1),
        None => Duration::ZERO,
    };
    let mut cfg = opts.mix.clone();
    cfg.url = url.clone();

    let fresh = usage(pid);
    eprintln!("soak: warm-up {:?} against {url}", opts.warmup);
    let warm_stats = Arc::new(MixStats::default());
    run_for(&cfg, &warm_stats, opts.warmup, pid, &mut None);
    let start = quiet_usage(&url, pid, settle, trim_wait);
    let before = metrics(&url).unwrap_or_default();

    eprintln!("soak: {:?} of mixed load", opts.duration);
    let stats = Arc::new(MixStats::default());
    let mut peak = start;
    run_for(&cfg, &stats, opts.duration, pid, &mut peak);
    let end = quiet_usage(&url, pid, settle, trim_wait);
    let after = metrics(&url).unwrap_or_default();
    let alive = spawned.as_mut().is_none_or(|s| s.server.alive());

    let delta = |k: &str| {
        (after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0)).max(0.0)
            as u64
    };
    // Counters over the whole life of the server (warm-up included): a
    // missed deadline or a panic at any time fails the soak.
    let total = |k: &str| after.get(k).copied().unwrap_or(0.0) as u64;
    let load = stats.view();
    let warm = warm_stats.view();
    let (server_warnings, first_server_warnings) = match &spawned {
        Some(s) => (
            s.warnings.load(Relaxed),
            s.first_warnings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        ),
        None => (0, Vec::new()),
    };
    let mut report = SoakReport {
        mode: "soak",
        url: url.clone(),
        server_started_by_soak: spawned.is_some(),
        duration_s: opts.duration.as_secs_f64(),
        warmup_s: opts.warmup.as_secs_f64(),
        fresh,
        start,
        peak,
        end,
        missed_deadlines: total("pollcap_missed_deadlines_total"),
        handler_panics: total("pollcap_handler_panics_total"),
        accept_errors: total("pollcap_accept_errors_total"),
        overloaded: total("pollcap_handler_overloaded_total"),
        server_warnings,
        first_server_warnings,
        connections_accepted: delta("pollcap_connections_accepted_total"),
        upgrades: delta("pollcap_upgrades_total"),
        handler_runs: delta("pollcap_handler_runs_total"),
        timeouts: family(&after, "pollcap_timeouts_total{"),
        close_frames_sent: family(&after, "pollcap_close_frames_sent_total{"),
        http_responses: family(&after, "pollcap_http_responses_total{"),
        lingering_closes: family(&after, "pollcap_lingering_closes_total{"),
        load,
        checks: Vec::new(),
        passed: 0,
        failed: 0,
    };
    let mut checks = Vec::new();
    let mut check = |name, ok, detail: String| checks.push(Check { name, ok, detail });
    match (start, end) {
        (Some(s), Some(e)) => {
            let allowed = rss_allowed(s.rss_bytes);
            check(
                "rss",
                e.rss_bytes <= allowed,
                format!(
                    "end {} <= start {} x 1.05 + 2 MiB = {}",
                    mib(e.rss_bytes),
                    mib(s.rss_bytes),
                    mib(allowed)
                ),
            );
            check(
                "fds",
                e.fds == s.fds,
                format!("end {} == start {}", e.fds, s.fds),
            );
        }
        // No local server (no --server-pid): nothing to compare, and no
        // check claims to have passed.
        _ => {
            if let Some(pid) = pid {
                let why = format!("could not read /proc/{pid} at the start or the end");
                check("rss+fds", false, why);
            }
        }
    }
    check(
        "missed_deadlines",
        report.missed_deadlines == 0,
        format!("{} (must be 0)", report.missed_deadlines),
    );
    check(
        "panics",
        report.handler_panics == 0,
        format!("{} handler panics", report.handler_panics),
    );
    let errors = report.load.client_errors
        + warm.client_errors
        + report.accept_errors
        + report.overloaded
        + report.server_warnings;
    check(
        "errors",
        errors == 0,
        format!(
            "client {} (warm-up {}), accept {}, overloaded {}, server warnings {}",
            report.load.client_errors,
            warm.client_errors,
            report.accept_errors,
            report.overloaded,
            report.server_warnings
        ),
    );
    check(
        "server_alive",
        alive,
        if alive { "running" } else { "exited" }.into(),
    );
    if !warm.first_client_errors.is_empty() && report.load.first_client_errors.is_empty() {
        report.load.first_client_errors = warm.first_client_errors;
    }
    report.passed = checks.iter().filter(|c| c.ok).count();
    report.failed = checks.len() - report.passed;
    report.checks = checks;
    Ok(report)
}

/// Runs the mix for `d`, sampling usage every second into `peak`.
fn run_for(
    cfg: &MixConfig,
    stats: &Arc<MixStats>,
    d: Duration,
    pid: Option<u32>,
    peak: &mut Option<Usage>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let (stats, stop2) = (stats.clone(), stop.clone());
        s.spawn(move || mix::run(cfg, &stats, &stop2));
        let end = Instant::now() + d;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_secs(1).min(end - Instant::now()));
            if let Some(u) = usage(pid) {
                let p = peak.get_or_insert(u);
                p.rss_bytes = p.rss_bytes.max(u.rss_bytes);
                p.fds = p.fds.max(u.fds);
            }
        }
        stop.store(true, Relaxed);
    });
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

impl SoakReport {
    /// The report as Markdown, ending with the `checks:` line.
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "## pollcap soak: {} s of mixed load (warm-up {} s), {}{}\n",
            self.duration_s,
            self.warmup_s,
            self.url,
            if self.server_started_by_soak {
                " (started by the soak)"
            } else {
                ""
            }
        );
        o.push_str("| server | RSS | open descriptors |\n|---|---|---|\n");
        for (name, u) in [
            ("fresh (before warm-up)", self.fresh),
            ("start (after warm-up, quiet)", self.start),
            ("peak", self.peak),
            ("end (quiet)", self.end),
        ] {
            match u {
                Some(u) => {
                    let _ = writeln!(o, "| {name} | {} | {} |", mib(u.rss_bytes), u.fds);
                }
                None => {
                    let _ = writeln!(o, "| {name} | n/a | n/a |");
                }
            }
        }
        let l = &self.load;
        let _ = writeln!(
            o,
            "\nLoad: {} agent runs, {} echo runs ({:.1} MiB echoed), {} slow-reader runs, \
             {} stalled readers cut and {} served in full, {} churn actions, {} idle holders \
             opened, {} pongs to server pings, {} runs ended by an expected close.",
            l.agent_runs,
            l.echo_runs,
            l.echoed_mib,
            l.slow_runs,
            l.stalled_readers_cut,
            l.stalled_readers_survived,
            l.churn_actions,
            l.idle_holders_opened,
            l.pongs_to_server_pings,
            l.runs_interrupted_by_expected_closes
        );
        let _ = writeln!(
            o,
            "Server: {} connections accepted, {} upgrades, {} handler runs; \
             timeouts {:?}; close frames {:?}; closes seen by clients {:?}; \
             HTTP {:?}; lingering closes {:?}.\n",
            self.connections_accepted,
            self.upgrades,
            self.handler_runs,
            self.timeouts,
            self.close_frames_sent,
            l.server_closes,
            self.http_responses,
            self.lingering_closes
        );
        o.push_str("| check | result | detail |\n|---|---|---|\n");
        for c in &self.checks {
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                c.name,
                if c.ok { "ok" } else { "FAILED" },
                c.detail
            );
        }
        for e in l
            .first_client_errors
            .iter()
            .chain(&self.first_server_warnings)
        {
            let _ = writeln!(o, "\n    {e}");
        }
        let _ = writeln!(
            o,
            "\nchecks: {} passed, {} failed",
            self.passed, self.failed
        );
        o
    }
}
