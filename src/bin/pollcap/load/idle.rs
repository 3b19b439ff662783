//! `load idle`: K connections held idle, the server's memory per
//! connection, its CPU and its wakeups meanwhile.

use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{open_clients, reactor_waits, sample};

#[derive(Debug)]
pub struct IdleResult {
    pub connections: usize,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub server_cpu_while_idle: Option<Duration>,
    pub hold: Duration,
    /// Server reactor waits per second while idle (all reactors), from
    /// /metrics (pollcap only).
    pub wakeups_per_sec: Option<f64>,
    /// Server threads' context switches per second while idle (Linux
    /// /proc; any server): how often it was woken.
    pub ctx_switches_per_sec: Option<f64>,
    /// Connections the server closed during the hold.
    pub closed: usize,
    /// Pings the server sent during the hold (all connections).
    pub pings: u64,
}

impl IdleResult {
    pub fn bytes_per_connection(&self) -> Option<f64> {
        let (b, a) = (self.rss_before?, self.rss_after?);
        Some(a.saturating_sub(b) as f64 / self.connections.max(1) as f64)
    }
}

/// Opens K connections, holds them idle for `hold`, and reports the
/// server's RSS growth per connection, its CPU and its wakeups meanwhile.
/// The clients are event-driven: a Ping is answered as soon as it arrives,
/// as a real client answers it (a client that batched its Pongs would
/// batch the server's wakeups for it).
pub fn idle(url: &str, count: usize, hold: Duration, pid: Option<u32>) -> io::Result<IdleResult> {
    let before = sample(pid);
    let (mut reactor, mut clients) = open_clients(url, count, None, &[])?;
    // Reading the counter costs the server a few wakeups of its own (accept,
    // request, close), and the window holds the tail of one reading and the
    // head of the next: two back-to-back readings measure that and it is
    // subtracted, so an idle server that never wakes reads 0.
    let calibrate = reactor_waits(url);
    let waits_before = reactor_waits(url);
    // CPU and RSS are sampled inside the readings, so their work is not
    // billed to the idle connections (and the allocator has settled).
    let settled = sample(pid);
    let switches_before = pid.and_then(super::super::sys::context_switches);
    let t0 = Instant::now();
    let end = t0 + hold;
    let mut closed = vec![false; count];
    let mut pings = 0u64;
    loop {
        let turn = reactor.turn()?;
        if turn.now >= end {
            break;
        }
        for i in 0..reactor.events().len() {
            let k = reactor.events()[i].token;
            if closed[k] {
                continue;
            }
            let ws = &mut clients[k];
            loop {
                match ws.read() {
                    // tungstenite queued the Pong.
                    Ok(tungstenite::Message::Ping(_)) => pings += 1,
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        break;
                    }
                    Err(_) => {
                        closed[k] = true;
                        break;
                    }
                }
            }
            let _ = ws.flush();
        }
    }
    let held = t0.elapsed();
    let after = sample(pid);
    let switches_after = pid.and_then(super::super::sys::context_switches);
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
        ctx_switches_per_sec: switches_before
            .zip(switches_after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / held.as_secs_f64()),
        closed: closed.iter().filter(|c| **c).count(),
        pings,
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
    server_cpu_percent_while_idle: Option<f64>,
    server_ctx_switches_per_sec: Option<f64>,
    closed_during_hold: usize,
    /// Pings received per second during the hold: the heartbeat rate the
    /// server actually kept (peers round their intervals differently).
    pings_per_sec: f64,
    /// Server CPU during the hold divided by the pings in it: the cost of
    /// one heartbeat cycle (ping out, pong in) when nothing else happens.
    server_cpu_us_per_ping: Option<f64>,
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
            server_cpu_percent_while_idle: self
                .server_cpu_while_idle
                .map(|d| 100.0 * d.as_secs_f64() / self.hold.as_secs_f64()),
            server_ctx_switches_per_sec: self.ctx_switches_per_sec,
            closed_during_hold: self.closed,
            pings_per_sec: self.pings as f64 / self.hold.as_secs_f64(),
            server_cpu_us_per_ping: self
                .server_cpu_while_idle
                .filter(|_| self.pings > 0)
                .map(|d| d.as_secs_f64() * 1e6 / self.pings as f64),
        }
    }
}
