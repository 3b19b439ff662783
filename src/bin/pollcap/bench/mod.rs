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

use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod report;
mod svg;

use std::process::ExitCode;

use serde::Serialize;
use serde_json::Value;

use pollcap::reactor::{BackendKind, CapStrategy, Reactor, WakeReason};

use super::{fail, parse_list};
use crate::child::ServeChild;
use report::{charts, report_markdown, to_json};

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
    /// With heartbeats on, connections open evenly over this (one
    /// heartbeat interval), as ones that arrived over time would: a burst
    /// of accepts puts every ping in the same fraction of the interval, and
    /// fewer connections then look cheaper only for being bunched.
    pub heartbeat_ramp: Duration,
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
            heartbeat_ramp: Duration::from_secs(2),
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
        self.heartbeat_ramp = Duration::ZERO;
        self.echo_connections = 4;
        self.echo_duration = Duration::from_millis(300);
        self.shutdown_connections = 4;
        self.recovery_limit = Duration::from_millis(1500);
        self
    }
}

/// One idle measurement.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
struct ChildServer(ServeChild);

impl ChildServer {
    fn start(
        cfg: &BenchConfig,
        kind: BackendKind,
        cap: CapStrategy,
        env: &[(&str, &str)],
    ) -> io::Result<ChildServer> {
        let mut cmd = Command::new(&cfg.exe);
        cmd.args(["serve", "--app", "echo", "--listen", "127.0.0.1:0"])
            .args(["--threads", "1"])
            .args(["--backend", kind.name(), "--poll-cap", &cap_flag(cap)])
            .envs(env.iter().copied())
            .env("RUST_LOG", "info");
        ServeChild::spawn(cmd, drop).map(ChildServer)
    }

    fn url(&self) -> String {
        self.0.url()
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    fn health(&self) -> Option<Value> {
        serde_json::from_str(&super::load::http_get(&self.url(), "/health")?).ok()
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
    let ramp = if heartbeats {
        cfg.heartbeat_ramp
    } else {
        Duration::ZERO
    };
    let srv = ChildServer::start(cfg, kind, cap, env)?;
    let mut out = Vec::new();
    for &n in &cfg.idle_counts {
        let r = super::load::idle(&srv.url(), n, cfg.hold, ramp, None, Some(srv.pid()))?;
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
        let ws = super::load::connect(&srv.url(), Duration::from_secs(5))?;
        ws.get_ref()
            .tcp()
            .set_read_timeout(Some(Duration::from_secs(10)))?;
        clients.push(ws);
    }
    let t0 = Instant::now();
    if super::sys::terminate(srv.pid()).is_err() {
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
        silent.push(super::load::connect(&srv.url(), Duration::from_secs(5))?);
    }
    let e = super::load::echo(
        &srv.url(),
        cfg.echo_connections,
        &super::load::Payload::Bytes(32),
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
    std::fs::write(cfg.out_dir.join("bench.json"), to_json(&rows))?;
    for (file, chart) in &charts {
        std::fs::write(cfg.out_dir.join(file), chart)?;
    }
    Ok(report)
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Output directory.
    #[arg(long, default_value = "reports/bench")]
    out: std::path::PathBuf,
    /// Tiny sizes and short holds: checks the harness in seconds.
    #[arg(long)]
    quick: bool,
    /// Backends, comma-separated.
    #[arg(long, default_value = "mio,polling")]
    backends: String,
    /// Cap strategies, comma-separated: off (unbounded), 0 (spin), or ms.
    #[arg(long, default_value = "off,1000,100,0")]
    strategies: String,
    /// Idle connection counts, comma-separated (default 0,1000,10000).
    #[arg(long)]
    idle: Option<String>,
    /// Seconds each idle measurement holds its connections (default 4).
    #[arg(long)]
    hold: Option<String>,
}

fn bench_config(args: BenchArgs) -> Result<BenchConfig, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the pollcap binary: {e}"))?;
    let mut cfg = BenchConfig::new(exe, args.out);
    if args.quick {
        cfg = cfg.quick();
    }
    cfg.backends = parse_list(
        "--backends",
        &args.backends,
        "each must be mio or polling",
        BackendKind::parse,
    )?;
    cfg.strategies = parse_list(
        "--strategies",
        &args.strategies,
        "each must be off, 0 or whole milliseconds",
        CapStrategy::parse,
    )?;
    if let Some(list) = &args.idle {
        cfg.idle_counts = parse_list(
            "--idle",
            list,
            "each must be a whole number of connections <= 20000",
            |n| n.parse::<usize>().ok().filter(|&n| n <= 20_000),
        )?;
    }
    if let Some(h) = &args.hold {
        cfg.hold = pollcap::settings::seconds(h)
            .map_err(|rule| format!("invalid setting --hold={h:?}: {rule}"))?;
    }
    Ok(cfg)
}

/// `pollcap bench`: runs everything, prints the report.
pub fn command(args: BenchArgs) -> ExitCode {
    let cfg = match bench_config(args) {
        Ok(cfg) => cfg,
        Err(e) => return fail(e),
    };
    // The idle runs hold up to 10 000 client sockets in this process.
    let _ = super::sys::raise_fd_limit();
    let mut log = |line: &str| eprintln!("bench: {line}");
    match run(&cfg, &mut log) {
        Ok(report) => {
            print!("{report}");
            eprintln!("bench: wrote {}", cfg.out_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pollcap: bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
