//! `load idle`: K connections held idle, the server's memory per
//! connection, its CPU and its wakeups meanwhile.

use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{connect, reactor_waits, sample};

#[derive(Debug)]
pub struct IdleResult {
    pub connections: usize,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub server_cpu_while_idle: Option<Duration>,
    pub hold: Duration,
    /// Server reactor waits per second while idle (all reactors), from /metrics.
    pub wakeups_per_sec: Option<f64>,
}

impl IdleResult {
    pub fn bytes_per_connection(&self) -> Option<f64> {
        let (b, a) = (self.rss_before?, self.rss_after?);
        Some(a.saturating_sub(b) as f64 / self.connections.max(1) as f64)
    }
}

/// Opens K connections, holds them idle for `hold` (answering pings), and
/// reports the server's RSS growth per connection and CPU while idle.
pub fn idle(url: &str, count: usize, hold: Duration, pid: Option<u32>) -> io::Result<IdleResult> {
    let before = sample(pid);
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(connect(url, Duration::from_secs(5))?);
    }
    // Reading the counter costs the server a few wakeups of its own (accept,
    // request, close), and the window holds the tail of one reading and the
    // head of the next: two back-to-back readings measure that and it is
    // subtracted, so an idle server that never wakes reads 0.
    let calibrate = reactor_waits(url);
    let waits_before = reactor_waits(url);
    // CPU and RSS are sampled inside the readings, so their work is not
    // billed to the idle connections (and the allocator has settled).
    let settled = sample(pid);
    let t0 = Instant::now();
    // Hold: answer pings with non-blocking sweeps every 100 ms, bounded by `hold`.
    for ws in &mut clients {
        ws.get_ref().tcp().set_nonblocking(true)?;
    }
    while t0.elapsed() < hold {
        for ws in &mut clients {
            let _ = ws.read();
        }
        std::thread::sleep(Duration::from_millis(100)); // pacing, not synchronisation
    }
    let held = t0.elapsed();
    let after = sample(pid);
    let waits_after = reactor_waits(url);
    Ok(IdleResult {
        connections: count,
        rss_before: before.map(|s| s.rss),
        rss_after: settled.map(|s| s.rss),
        server_cpu_while_idle: settled.zip(after).map(|(b, a)| a.cpu.saturating_sub(b.cpu)),
        hold: held,
        wakeups_per_sec: calibrate
            .zip(waits_before)
            .zip(waits_after)
            .map(|((c, b), a)| {
                let own = b.saturating_sub(c);
                a.saturating_sub(b).saturating_sub(own) as f64 / held.as_secs_f64()
            }),
    })
}

/// `load idle` output.
#[derive(Serialize)]
pub struct IdleReport {
    mode: &'static str,
    connections: usize,
    server_rss_before_bytes: Option<u64>,
    server_rss_after_bytes: Option<u64>,
    server_kib_per_connection: Option<f64>,
    server_cpu_ms_while_idle: Option<f64>,
    hold_seconds: f64,
    server_wakeups_per_sec: Option<f64>,
}

impl IdleResult {
    pub fn report(&self) -> IdleReport {
        IdleReport {
            mode: "idle",
            connections: self.connections,
            server_rss_before_bytes: self.rss_before,
            server_rss_after_bytes: self.rss_after,
            server_kib_per_connection: self.bytes_per_connection().map(|b| b / 1024.0),
            server_cpu_ms_while_idle: self.server_cpu_while_idle.map(|d| d.as_secs_f64() * 1e3),
            hold_seconds: self.hold.as_secs_f64(),
            server_wakeups_per_sec: self.wakeups_per_sec,
        }
    }
}
