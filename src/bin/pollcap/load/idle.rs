//! `load idle`: K connections held idle, the server's memory per
//! connection, its CPU and its wakeups meanwhile.

use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use pollcap::reactor::Reactor;
use tungstenite::Message;

use super::{
    ClientConn, Target, client_reactor, inbound, open_client, outbound, reactor_waits, sample,
};

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
    /// Connections that negotiated permessage-deflate.
    pub deflate: usize,
    /// The size of the message each connection exchanged before the hold.
    pub message: Option<usize>,
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
///
/// With a `ramp` the connections are opened evenly over it, in 50 ms
/// steps, before the hold starts: a server whose connections arrived over
/// time has their heartbeats spread over the whole interval, while a burst
/// of accepts puts them all in the same fraction of it.
pub fn idle(
    url: &str,
    count: usize,
    hold: Duration,
    ramp: Duration,
    message: Option<usize>,
    pid: Option<u32>,
) -> io::Result<IdleResult> {
    let before = sample(pid);
    let target = Target::parse(url)?;
    let mut reactor = client_reactor()?;
    let mut clients = Vec::with_capacity(count);
    let mut closed = vec![false; count];
    let mut pings = 0u64;
    let steps = (ramp.as_millis() / 50).max(1) as usize;
    let ramp_start = Instant::now();
    for step in 1..=steps {
        while clients.len() < count * step / steps {
            let t = clients.len();
            clients.push(open_client(&mut reactor, &target, t, None, &[])?);
        }
        // Opening dropped the other clients' events: read them all.
        for k in 0..clients.len() {
            answer(&mut clients[k], &mut closed[k], &mut pings);
        }
        let next = ramp_start + ramp * step as u32 / steps as u32;
        serve_until(&mut reactor, &mut clients, &mut closed, &mut pings, next)?;
    }
    if let Some(size) = message {
        exchange(&mut reactor, &mut clients, &mut closed, &mut pings, size)?;
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
    let switches_before = pid.and_then(super::super::sys::context_switches);
    let t0 = Instant::now();
    pings = 0;
    serve_until(
        &mut reactor,
        &mut clients,
        &mut closed,
        &mut pings,
        t0 + hold,
    )?;
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
        deflate: clients
            .iter()
            .filter(|ws| ws.get_ref().agreed().is_some())
            .count(),
        message,
    })
}

/// Every client sends one JSON message of `size` bytes and reads its echo
/// (within 30 s in all); then they go quiet.
fn exchange(
    reactor: &mut Reactor,
    clients: &mut [ClientConn],
    closed: &mut [bool],
    pings: &mut u64,
    size: usize,
) -> io::Result<()> {
    let mut waiting = vec![false; clients.len()];
    for (i, ws) in clients.iter_mut().enumerate() {
        let m = outbound(ws, Message::text(super::echo::json_message(size, i as u64)));
        match ws.send(m) {
            Ok(()) => waiting[i] = true,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                waiting[i] = true;
            }
            Err(_) => closed[i] = true,
        }
    }
    let mut left = waiting.iter().filter(|w| **w).count();
    let end = Instant::now() + Duration::from_secs(30);
    // Replies that came while sending.
    for k in 0..clients.len() {
        read_reply(
            &mut clients[k],
            &mut closed[k],
            &mut waiting[k],
            &mut left,
            pings,
        );
    }
    while left > 0 {
        let turn = reactor.turn()?;
        for i in 0..reactor.events().len() {
            let k = reactor.events()[i].token;
            read_reply(
                &mut clients[k],
                &mut closed[k],
                &mut waiting[k],
                &mut left,
                pings,
            );
        }
        if turn.now >= end {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{left} echoes missing after 30 s"),
            ));
        }
    }
    Ok(())
}

/// Reads one client until `WouldBlock`, counting its echo.
fn read_reply(
    ws: &mut ClientConn,
    closed: &mut bool,
    waiting: &mut bool,
    left: &mut usize,
    pings: &mut u64,
) {
    if *closed {
        return;
    }
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Ping(_)) => *pings += 1,
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if inbound(ws, m).is_some() && std::mem::take(waiting) {
                    *left -= 1;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                *closed = true;
                if std::mem::take(waiting) {
                    *left -= 1;
                }
                return;
            }
        }
    }
    let _ = ws.flush();
}

/// Answers the clients' pings until `end`.
fn serve_until(
    reactor: &mut Reactor,
    clients: &mut [ClientConn],
    closed: &mut [bool],
    pings: &mut u64,
    end: Instant,
) -> io::Result<()> {
    loop {
        let turn = reactor.turn()?;
        // The turn's events are handled even past `end`: the reactor is
        // edge-triggered, so a readiness dropped here would never come back.
        for i in 0..reactor.events().len() {
            let k = reactor.events()[i].token;
            answer(&mut clients[k], &mut closed[k], pings);
        }
        if turn.now >= end {
            return Ok(());
        }
    }
}

/// Reads one client until `WouldBlock`; tungstenite queues a Pong for each
/// Ping, and the flush sends them.
fn answer(ws: &mut ClientConn, closed: &mut bool, pings: &mut u64) {
    if *closed {
        return;
    }
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Ping(_)) => *pings += 1,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                *closed = true;
                return;
            }
        }
    }
    let _ = ws.flush();
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
    /// Connections that negotiated permessage-deflate.
    deflate_connections: usize,
    /// The JSON message each connection exchanged before the hold.
    message_bytes: Option<usize>,
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
            deflate_connections: self.deflate,
            message_bytes: self.message,
        }
    }
}
