//! `pollcap bench` (SPEC §9): cap strategies × backends on this machine in
//! one run — idle cost, lost-wakeup recovery, deadline precision under
//! load, echo cost and shutdown reaction — written as a Markdown report,
//! JSON and SVG bar charts.
//!
//! Servers run as child `pollcap serve` processes so that their CPU (from
//! `/proc`) is theirs alone; the load comes from [`crate::load`]. Lost-wakeup
//! recovery needs no server: it is measured on a bare [`Reactor`] with its
//! waker suppressed, and an unrelated watchdog deadline stands in for "the
//! next thing that happens" to show what `unbounded` does without a cap.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::reactor::{BackendKind, CapStrategy, Reactor, WakeReason};

/// What to run; [`BenchConfig::new`] is the full benchmark (about five
/// minutes here), [`BenchConfig::quick`] a seconds-long smoke run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub exe: PathBuf,
    pub out_dir: PathBuf,
    pub backends: Vec<BackendKind>,
    pub strategies: Vec<CapStrategy>,
    pub idle_counts: Vec<usize>,
    pub hold: Duration,
    pub echo_connections: usize,
    pub echo_duration: Duration,
    pub shutdown_connections: usize,
    /// How long a suppressed wakeup may stay unnoticed before the
    /// watchdog deadline ends the wait ("never" in the report).
    pub recovery_limit: Duration,
}

impl BenchConfig {
    pub fn new(exe: PathBuf, out_dir: PathBuf) -> BenchConfig {
        BenchConfig {
            exe,
            out_dir,
            backends: BackendKind::ALL.to_vec(),
            strategies: vec![
                CapStrategy::Unbounded,
                CapStrategy::Fixed(Duration::from_secs(1)),
                CapStrategy::Fixed(Duration::from_millis(100)),
                CapStrategy::Spin,
            ],
            idle_counts: vec![0, 1000, 10_000],
            hold: Duration::from_secs(4),
            echo_connections: 100,
            echo_duration: Duration::from_secs(3),
            shutdown_connections: 100,
            recovery_limit: Duration::from_secs(3),
        }
    }

    /// Small sizes and short holds: checks the harness, not the machine.
    pub fn quick(mut self) -> BenchConfig {
        self.idle_counts = vec![0, 20];
        self.hold = Duration::from_millis(600);
        self.echo_connections = 4;
        self.echo_duration = Duration::from_millis(300);
        self.shutdown_connections = 4;
        self.recovery_limit = Duration::from_millis(1500);
        self
    }
}

/// One idle measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct IdleCost {
    pub connections: usize,
    pub heartbeats: bool,
    pub wakeups_per_sec: Option<f64>,
    pub cpu_ms_per_hour: Option<f64>,
}

/// Everything measured for one backend × strategy.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub backend: BackendKind,
    pub strategy: CapStrategy,
    pub idle: Vec<IdleCost>,
    /// Time to notice a suppressed wakeup; `None`: not within the limit.
    pub recovery: Option<Duration>,
    pub overshoot_p50_ms: Option<f64>,
    pub overshoot_p99_ms: Option<f64>,
    pub echo_msgs_per_sec: f64,
    pub echo_p50_us: u64,
    pub echo_p99_us: u64,
    pub echo_cpu_us_per_msg: Option<f64>,
    /// SIGTERM to the last Close frame read by the clients (Unix only).
    pub shutdown_ms: Option<f64>,
}

/// Heartbeats effectively off: intervals far beyond any hold.
const HEARTBEATS_OFF: &[(&str, &str)] = &[
    ("WEBSOCKET_HEARTBEAT_INTERVAL", "1000"),
    ("WEBSOCKET_HEARTBEAT_TIMEOUT", "2000"),
    ("WEBSOCKET_STALE_TIMEOUT", "3000"),
    ("WEBSOCKET_CONNECTION_TIMEOUT", "7200"),
];

/// Heartbeats every `interval` seconds (±10 %), pong within 1 s (still
/// valid for a 1 s cap: cap ≤ ping), no idle or lifetime close meanwhile.
fn heartbeats_every(interval: &'static str) -> [(&'static str, &'static str); 5] {
    [
        ("WEBSOCKET_PING_TIMEOUT", "1"),
        ("WEBSOCKET_HEARTBEAT_INTERVAL", interval),
        ("WEBSOCKET_HEARTBEAT_TIMEOUT", "6"),
        ("WEBSOCKET_STALE_TIMEOUT", "3000"),
        ("WEBSOCKET_CONNECTION_TIMEOUT", "7200"),
    ]
}

/// `--poll-cap` form of a strategy.
fn cap_flag(s: CapStrategy) -> String {
    match s {
        CapStrategy::Unbounded => "off".into(),
        CapStrategy::Spin => "0".into(),
        CapStrategy::Fixed(d) => d.as_millis().max(1).to_string(),
    }
}

/// A child `pollcap serve --app echo`, killed on drop.
struct ChildServer {
    child: Child,
    addr: SocketAddr,
}

impl ChildServer {
    fn start(
        cfg: &BenchConfig,
        kind: BackendKind,
        cap: CapStrategy,
        env: &[(&str, &str)],
    ) -> io::Result<ChildServer> {
        let mut child = Command::new(&cfg.exe)
            .args([
                "serve",
                "--app",
                "echo",
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "1",
            ])
            .args(["--backend", kind.name(), "--poll-cap", &cap_flag(cap)])
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("no stderr"))?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                return Err(io::Error::other("server exited before listening"));
            };
            let line = line?;
            if let Some(rest) = line.split("listening on ").nth(1) {
                let a = rest.split_whitespace().next().unwrap_or_default();
                break a
                    .parse()
                    .map_err(|_| io::Error::other(format!("bad address in {line:?}")))?;
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(ChildServer { child, addr })
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn health(&self) -> Option<Value> {
        serde_json::from_str(&crate::load::http_get(&self.url(), "/health")?).ok()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Time for a bare reactor to notice a wake request whose signal was lost.
pub fn lost_wakeup_recovery(
    kind: BackendKind,
    cap: CapStrategy,
    limit: Duration,
) -> io::Result<Option<Duration>> {
    let mut r = Reactor::new(kind, cap)?;
    let waker = r.waker();
    waker.suppress(true);
    let watchdog = r.timers().insert(0);
    let due = r.now() + limit;
    r.timers().set(watchdog, Some(due));
    waker.wake()?;
    let t0 = Instant::now();
    loop {
        let turn = r.turn()?;
        if turn.woken {
            // Seen at the watchdog means only an unrelated event revealed it.
            return Ok((turn.reason != WakeReason::Deadline).then(|| t0.elapsed()));
        }
        if turn.now >= due {
            return Ok(None);
        }
    }
}

fn idle_cost(
    cfg: &BenchConfig,
    kind: BackendKind,
    cap: CapStrategy,
    heartbeats: bool,
) -> io::Result<Vec<IdleCost>> {
    let on = heartbeats_every("2");
    let env = if heartbeats { &on[..] } else { HEARTBEATS_OFF };
    let srv = ChildServer::start(cfg, kind, cap, env)?;
    let mut out = Vec::new();
    for &n in &cfg.idle_counts {
        let r = crate::load::idle(&srv.url(), n, cfg.hold, Some(srv.pid()))?;
        out.push(IdleCost {
            connections: n,
            heartbeats,
            wakeups_per_sec: r.wakeups_per_sec,
            cpu_ms_per_hour: r
                .server_cpu_while_idle
                .map(|c| c.as_secs_f64() * 1e3 * 3600.0 / r.hold.as_secs_f64()),
        });
    }
    Ok(out)
}

/// SIGTERM to the last Close frame, with `n` clients connected.
fn shutdown_reaction(srv: &ChildServer, n: usize) -> io::Result<Option<f64>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let ws = crate::load::connect(&srv.url(), Duration::from_secs(5))?;
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))?;
        clients.push(ws);
    }
    let t0 = Instant::now();
    if crate::platform::terminate(srv.pid()).is_err() {
        return Ok(None);
    }
    let mut last = Duration::ZERO;
    for ws in &mut clients {
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Close(_)) => {
                    last = t0.elapsed();
                    break;
                }
                Ok(_) => {}
                Err(_) => return Ok(None),
            }
        }
    }
    Ok(Some(last.as_secs_f64() * 1e3))
}

fn measure(
    cfg: &BenchConfig,
    kind: BackendKind,
    cap: CapStrategy,
    log: &mut dyn FnMut(&str),
) -> io::Result<Row> {
    log(&format!("{} × {}: lost-wakeup recovery", kind.name(), cap));
    let recovery = lost_wakeup_recovery(kind, cap, cfg.recovery_limit)?;
    log(&format!("{} × {}: idle, heartbeats off", kind.name(), cap));
    let mut idle = idle_cost(cfg, kind, cap, false)?;
    log(&format!("{} × {}: idle, heartbeats on", kind.name(), cap));
    idle.extend(idle_cost(cfg, kind, cap, true)?);
    log(&format!(
        "{} × {}: echo beside silent connections, then SIGTERM",
        kind.name(),
        cap
    ));
    // Busy connections never ping (any inbound byte is a sign of life), so
    // silent ones supply the deadlines whose overshoot is measured under
    // load: a heartbeat at ~1.2 s, the pong deadline 1 s later (1011), then
    // the close deadline.
    let srv = ChildServer::start(cfg, kind, cap, &heartbeats_every("1.2"))?;
    let mut silent = Vec::with_capacity(cfg.echo_connections);
    for _ in 0..cfg.echo_connections {
        silent.push(crate::load::connect(&srv.url(), Duration::from_secs(5))?);
    }
    let e = crate::load::echo(
        &srv.url(),
        cfg.echo_connections,
        32,
        cfg.echo_duration,
        Some(srv.pid()),
    )?;
    let health = srv.health();
    drop(silent);
    // No samples (e.g. an echo run shorter than a heartbeat): n/a, not 0.
    let reactor = health.as_ref().map(|h| &h["reactor"]).filter(|r| {
        r["deadline_overshoot_count"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    let shutdown_ms = shutdown_reaction(&srv, cfg.shutdown_connections)?;
    Ok(Row {
        backend: kind,
        strategy: cap,
        idle,
        recovery,
        overshoot_p50_ms: reactor.and_then(|r| r["deadline_overshoot_p50_ms"].as_f64()),
        overshoot_p99_ms: reactor.and_then(|r| r["deadline_overshoot_p99_ms"].as_f64()),
        echo_msgs_per_sec: e.messages as f64 / e.elapsed.as_secs_f64().max(1e-9),
        echo_p50_us: e.p50_us,
        echo_p99_us: e.p99_us,
        echo_cpu_us_per_msg: e
            .server_cpu
            .map(|c| c.as_secs_f64() * 1e6 / e.messages.max(1) as f64),
        shutdown_ms,
    })
}

/// Runs every backend × strategy, interleaved by strategy, writes
/// `report.md`, `bench.json` and the SVG charts into `out_dir`, and returns
/// the report.
pub fn run(cfg: &BenchConfig, log: &mut dyn FnMut(&str)) -> io::Result<String> {
    let mut rows = Vec::new();
    for &cap in &cfg.strategies {
        for &kind in &cfg.backends {
            rows.push(measure(cfg, kind, cap, log)?);
        }
    }
    std::fs::create_dir_all(&cfg.out_dir)?;
    let charts = charts(cfg, &rows);
    let names: Vec<&str> = charts.iter().map(|(n, _)| n.as_str()).collect();
    let report = report_markdown(cfg, &rows, &names);
    std::fs::write(cfg.out_dir.join("report.md"), &report)?;
    std::fs::write(cfg.out_dir.join("bench.json"), to_json(&rows).to_string())?;
    for (file, chart) in &charts {
        std::fs::write(cfg.out_dir.join(file), chart)?;
    }
    Ok(report)
}

fn label(r: &Row) -> String {
    format!("{} · {}", r.backend.name(), r.strategy)
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn recovery_text(r: &Row, limit: Duration) -> String {
    match r.recovery {
        Some(d) if d < Duration::from_millis(1) => format!("{:.0} µs", d.as_secs_f64() * 1e6),
        Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
        None => format!("never (> {} s)", limit.as_secs_f64()),
    }
}

pub fn to_json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "backend": r.backend.name(),
                    "strategy": r.strategy.to_string(),
                    "recovery_ms": r.recovery.map(|d| d.as_secs_f64() * 1e3),
                    "idle": r.idle.iter().map(|i| json!({
                        "connections": i.connections,
                        "heartbeats": i.heartbeats,
                        "wakeups_per_sec": i.wakeups_per_sec,
                        "cpu_ms_per_hour": i.cpu_ms_per_hour,
                    })).collect::<Vec<_>>(),
                    "overshoot_p50_ms": r.overshoot_p50_ms,
                    "overshoot_p99_ms": r.overshoot_p99_ms,
                    "echo_msgs_per_sec": r.echo_msgs_per_sec,
                    "echo_p50_us": r.echo_p50_us,
                    "echo_p99_us": r.echo_p99_us,
                    "echo_cpu_us_per_msg": r.echo_cpu_us_per_msg,
                    "shutdown_ms": r.shutdown_ms,
                })
            })
            .collect(),
    )
}

pub fn report_markdown(cfg: &BenchConfig, rows: &[Row], chart_files: &[&str]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# pollcap bench: cap strategies × backends\n");
    let _ = writeln!(
        o,
        "One run on this machine ({} {}, {} CPUs). Idle hold {} s, heartbeats (when on) every 2 s. \
         Echo: {} connections × 32 B for {} s beside as many silent connections, whose heartbeat, \
         pong and close deadlines are the ones measured for overshoot. Shutdown: {} connections. \
         n/a: not measurable here (CPU needs Linux /proc, SIGTERM needs Unix) or no samples.\n",
        std::env::consts::OS,
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cfg.hold.as_secs_f64(),
        cfg.echo_connections,
        cfg.echo_duration.as_secs_f64(),
        cfg.shutdown_connections,
    );
    let _ = writeln!(o, "## Idle cost\n");
    let _ = write!(o, "| backend · strategy |");
    let columns: Vec<(usize, bool)> = rows
        .first()
        .map(|r| {
            r.idle
                .iter()
                .map(|i| (i.connections, i.heartbeats))
                .collect()
        })
        .unwrap_or_default();
    for (n, hb) in &columns {
        let _ = write!(
            o,
            " {n} idle, heartbeats {}: wakeups/s · CPU ms/h |",
            if *hb { "on" } else { "off" }
        );
    }
    let _ = writeln!(o, "\n|---|{}", "---|".repeat(columns.len()));
    for r in rows {
        let _ = write!(o, "| {} |", label(r));
        for i in &r.idle {
            let _ = write!(
                o,
                " {} · {} |",
                f(i.wakeups_per_sec, 1),
                f(i.cpu_ms_per_hour, 0)
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "\n## Lost wakeups, deadlines, load, shutdown\n");
    let _ = writeln!(
        o,
        "| backend · strategy | lost-wakeup recovery | deadline overshoot p50 / p99 (ms) | echo msg/s | echo p50 / p99 (µs) | server CPU µs/msg | SIGTERM → last Close (ms) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} / {} | {} | {} / {} | {} | {} |",
            label(r),
            recovery_text(r, cfg.recovery_limit),
            f(r.overshoot_p50_ms, 2),
            f(r.overshoot_p99_ms, 2),
            f(Some(r.echo_msgs_per_sec), 0),
            r.echo_p50_us,
            r.echo_p99_us,
            f(r.echo_cpu_us_per_msg, 1),
            f(r.shutdown_ms, 1),
        );
    }
    let _ = writeln!(
        o,
        "\nCharts: {}.",
        chart_files
            .iter()
            .map(|n| format!("[{n}]({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    o
}

/// The SVG charts: (file name, SVG text).
pub fn charts(cfg: &BenchConfig, rows: &[Row]) -> Vec<(String, String)> {
    let labels: Vec<String> = rows.iter().map(label).collect();
    let mut out = Vec::new();
    let biggest = cfg.idle_counts.iter().copied().max().unwrap_or(0);
    for hb in [false, true] {
        let pick = |r: &Row| {
            r.idle
                .iter()
                .find(|i| i.connections == biggest && i.heartbeats == hb)
                .cloned()
        };
        let name = if hb { "on" } else { "off" };
        let wake: Vec<Option<f64>> = rows
            .iter()
            .map(|r| pick(r).and_then(|i| i.wakeups_per_sec))
            .collect();
        out.push((
            format!("idle-wakeups-heartbeats-{name}.svg"),
            bar_chart(
                &format!("Wakeups/s, {biggest} idle connections, heartbeats {name} (log scale)"),
                &labels,
                &wake,
                true,
            ),
        ));
        let cpu: Vec<Option<f64>> = rows
            .iter()
            .map(|r| pick(r).and_then(|i| i.cpu_ms_per_hour))
            .collect();
        out.push((
            format!("idle-cpu-heartbeats-{name}.svg"),
            bar_chart(&format!("Server CPU ms per hour, {biggest} idle connections, heartbeats {name} (log scale)"), &labels, &cpu, true),
        ));
    }
    let limit_ms = cfg.recovery_limit.as_secs_f64() * 1e3;
    let rec: Vec<Option<f64>> = rows
        .iter()
        .map(|r| Some(r.recovery.map_or(limit_ms, |d| d.as_secs_f64() * 1e3)))
        .collect();
    let texts: Vec<String> = rows
        .iter()
        .map(|r| {
            r.recovery
                .map_or("never".into(), |d| fmt_value(d.as_secs_f64() * 1e3))
        })
        .collect();
    out.push((
        "lost-wakeup-recovery.svg".into(),
        bar_chart_with(
            &format!("Lost-wakeup recovery, ms (never = not noticed within {limit_ms:.0} ms)"),
            &labels,
            &rec,
            false,
            &texts,
        ),
    ));
    let over: Vec<Option<f64>> = rows.iter().map(|r| r.overshoot_p99_ms).collect();
    out.push((
        "deadline-overshoot-p99.svg".into(),
        bar_chart(
            "Deadline overshoot p99 under echo load, ms",
            &labels,
            &over,
            false,
        ),
    ));
    let eps: Vec<Option<f64>> = rows.iter().map(|r| Some(r.echo_msgs_per_sec)).collect();
    out.push((
        "echo-throughput.svg".into(),
        bar_chart("Echo messages/s", &labels, &eps, false),
    ));
    let p99: Vec<Option<f64>> = rows.iter().map(|r| Some(r.echo_p99_us as f64)).collect();
    out.push((
        "echo-p99.svg".into(),
        bar_chart("Echo round trip p99, µs", &labels, &p99, false),
    ));
    let sd: Vec<Option<f64>> = rows.iter().map(|r| r.shutdown_ms).collect();
    out.push((
        "shutdown-reaction.svg".into(),
        bar_chart("SIGTERM to last Close frame, ms", &labels, &sd, false),
    ));
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart, one bar per label; missing values say n/a.
/// On a log scale, values are drawn as log10(1 + v).
pub fn bar_chart(title: &str, labels: &[String], values: &[Option<f64>], log: bool) -> String {
    let texts: Vec<String> = values
        .iter()
        .map(|v| v.map_or(String::new(), fmt_value))
        .collect();
    bar_chart_with(title, labels, values, log, &texts)
}

/// [`bar_chart`] with the text printed beside each bar given.
pub fn bar_chart_with(
    title: &str,
    labels: &[String],
    values: &[Option<f64>],
    log: bool,
    texts: &[String],
) -> String {
    let scale = |v: f64| {
        if log {
            (1.0 + v.max(0.0)).log10()
        } else {
            v.max(0.0)
        }
    };
    let max = values
        .iter()
        .flatten()
        .map(|&v| scale(v))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (left, width, bar_h, gap) = (230.0, 420.0, 18.0, 8.0);
    let height = 40.0 + labels.len() as f64 * (bar_h + gap) + 10.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n",
        xml_escape(title),
        w = left + width + 110.0,
    );
    for (i, ((l, v), text)) in labels.iter().zip(values).zip(texts).enumerate() {
        let y = 36.0 + i as f64 * (bar_h + gap);
        let _ = writeln!(
            s,
            "<text x=\"{x}\" y=\"{ty}\" text-anchor=\"end\">{}</text>",
            xml_escape(l),
            x = left - 8.0,
            ty = y + bar_h - 5.0
        );
        match v {
            Some(v) => {
                let w = (scale(*v) / max * width).max(1.0);
                let _ = writeln!(
                    s,
                    "<rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{bar_h}\" fill=\"#3b7dd8\"/>\n\
                     <text x=\"{tx:.1}\" y=\"{ty}\">{}</text>",
                    xml_escape(text),
                    tx = left + w + 6.0,
                    ty = y + bar_h - 5.0
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "<text x=\"{left}\" y=\"{ty}\" fill=\"#888\">n/a</text>",
                    ty = y + bar_h - 5.0
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_chart_is_valid_svg_with_every_label_and_value() {
        let labels = vec![
            "mio · spin".to_string(),
            "a<b".to_string(),
            "none".to_string(),
        ];
        let svg = bar_chart("T & t", &labels, &[Some(2000.0), Some(0.5), None], true);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("T &amp; t") && svg.contains("a&lt;b"));
        assert!(svg.contains(">2000<") && svg.contains(">0.500<") && svg.contains(">n/a<"));
        assert_eq!(svg.matches("<rect").count(), 2);
        // The largest value gets the full width on either scale.
        assert!(svg.contains("width=\"420.0\""));
    }

    #[test]
    fn cap_flags_round_trip_through_the_parser() {
        for s in [
            CapStrategy::Unbounded,
            CapStrategy::Spin,
            CapStrategy::Fixed(Duration::from_millis(100)),
            CapStrategy::Fixed(Duration::from_secs(1)),
        ] {
            assert_eq!(CapStrategy::parse(&cap_flag(s)), Some(s));
        }
    }
}
