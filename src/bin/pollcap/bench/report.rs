//! The bench's outputs: `report.md` (Markdown tables), `bench.json` and
//! the SVG charts, all from the measured rows.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::svg::{bar_chart, bar_chart_with, fmt_value};
use super::{BenchConfig, IdleCost, Row};

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

/// `bench.json`: one object per row.
pub fn to_json(rows: &[Row]) -> String {
    let rows: Vec<RowJson> = rows
        .iter()
        .map(|r| RowJson {
            backend: r.backend.name(),
            strategy: r.strategy.to_string(),
            recovery_ms: r.recovery.map(|d| d.as_secs_f64() * 1e3),
            idle: &r.idle,
            overshoot_p50_ms: r.overshoot_p50_ms,
            overshoot_p99_ms: r.overshoot_p99_ms,
            echo_msgs_per_sec: r.echo_msgs_per_sec,
            echo_p50_us: r.echo_p50_us,
            echo_p99_us: r.echo_p99_us,
            echo_cpu_us_per_msg: r.echo_cpu_us_per_msg,
            shutdown_ms: r.shutdown_ms,
        })
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
}

#[derive(Serialize)]
struct RowJson<'a> {
    backend: &'static str,
    strategy: String,
    recovery_ms: Option<f64>,
    idle: &'a [IdleCost],
    overshoot_p50_ms: Option<f64>,
    overshoot_p99_ms: Option<f64>,
    echo_msgs_per_sec: f64,
    echo_p50_us: u64,
    echo_p99_us: u64,
    echo_cpu_us_per_msg: Option<f64>,
    shutdown_ms: Option<f64>,
}

/// How heartbeat wakeups grow with the connection count: wakeups/s at the
/// largest count over those at the smallest non-zero one (soft deadlines
/// coalesce, so this should stay near 1 rather than follow the count).
pub fn heartbeat_growth(r: &Row) -> Option<f64> {
    let on: Vec<_> = r
        .idle
        .iter()
        .filter(|i| i.heartbeats && i.connections > 0)
        .collect();
    let few = on.iter().min_by_key(|i| i.connections)?;
    let many = on.iter().max_by_key(|i| i.connections)?;
    if few.connections == many.connections {
        return None;
    }
    Some(many.wakeups_per_sec? / few.wakeups_per_sec?)
}

pub fn report_markdown(cfg: &BenchConfig, rows: &[Row], chart_files: &[&str]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# pollcap bench: cap strategies × backends\n");
    let _ = writeln!(
        o,
        "One run on this machine ({} {}, {} CPUs). Idle hold {} s, heartbeats (when on) every 2 s, \
         with the connections opened evenly over one interval before the hold. \
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
    let _ = writeln!(o, " heartbeats on: wakeups/s, most ÷ fewest connections |");
    let _ = writeln!(o, "|---|{}---|", "---|".repeat(columns.len()));
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
        let _ = writeln!(o, " {} |", f(heartbeat_growth(r), 2));
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
