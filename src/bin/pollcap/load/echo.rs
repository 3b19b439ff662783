//! Event-driven load clients on pollcap's own reactor: `echo` (one message
//! in flight per connection) and `agent` (one `agent_chat` run in flight per
//! connection).

use std::io;
use std::time::{Duration, Instant};

use tungstenite::Message;

use pollcap::apps::agent_chat::ClientMessage;
use pollcap::reactor::Interest;
use serde::Serialize;

use super::{open_clients, percentiles, sample, us_per, would_block};

#[derive(Debug)]
pub struct EchoResult {
    pub messages: u64,
    pub elapsed: Duration,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    pub server_cpu: Option<Duration>,
}

/// C connections, each with one S-byte message in flight, for D. The client
/// is event-driven on pollcap's own reactor (one thread): a thread per
/// connection would bill the kernel's cost of waking 100 blocked threads to
/// the server's writes and measure the client instead of the server.
pub fn echo(
    url: &str,
    connections: usize,
    size: usize,
    duration: Duration,
    pid: Option<u32>,
) -> io::Result<EchoResult> {
    let (mut reactor, clients) = open_clients(url, connections, None, &[])?;
    let mut conns: Vec<_> = clients
        .into_iter()
        .map(|ws| (ws, Instant::now(), Interest::READABLE, false))
        .collect();
    let payload = tungstenite::Bytes::from(vec![b'x'; size]);
    let mut rtts: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut errors = 0u64;
    let before = sample(pid);
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut live = 0;
    for (ws, sent, _, _) in conns.iter_mut() {
        *sent = Instant::now();
        match ws.send(Message::Binary(payload.clone())) {
            Ok(()) => live += 1,
            Err(e) if would_block(&e) => live += 1,
            Err(_) => errors += 1,
        }
    }
    // Bounded by time, and by count (50 M replies).
    while live > 0 && rtts.len() < 50_000_000 {
        let turn = reactor.turn()?;
        let done = turn.now >= end;
        for i in 0..reactor.events().len() {
            let ev = reactor.events()[i];
            let (ws, sent, interest, closed) = &mut conns[ev.token];
            if *closed {
                continue;
            }
            if ev.writable {
                let _ = ws.flush();
            }
            loop {
                match ws.read() {
                    Ok(Message::Binary(_)) => {
                        rtts.push(sent.elapsed().as_micros() as u64);
                        if done {
                            let _ = ws.close(None);
                            *closed = true;
                            live -= 1;
                            break;
                        }
                        *sent = Instant::now();
                        match ws.send(Message::Binary(payload.clone())) {
                            Ok(()) => {}
                            Err(e) if would_block(&e) => {}
                            Err(_) => {
                                errors += 1;
                                *closed = true;
                                live -= 1;
                                break;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) if would_block(&e) => {
                        break;
                    }
                    Err(_) => {
                        errors += 1;
                        *closed = true;
                        live -= 1;
                        break;
                    }
                }
            }
            if *closed {
                continue;
            }
            // Ask for write readiness only while a flush is pending.
            let want = match ws.flush() {
                Err(e) if would_block(&e) => Interest::BOTH,
                _ => Interest::READABLE,
            };
            if want != *interest {
                reactor.reregister(ws.get_mut(), ev.token, want)?;
                *interest = want;
            }
        }
        if turn.now > end + Duration::from_secs(5) {
            break; // replies that never came are errors, not a hang
        }
    }
    let elapsed = t0.elapsed();
    let after = sample(pid);
    errors += live as u64;
    let p = percentiles(&mut rtts, &[0.5, 0.99, 0.999]);
    Ok(EchoResult {
        messages: rtts.len() as u64,
        elapsed,
        p50_us: p[0],
        p99_us: p[1],
        p999_us: p[2],
        errors,
        server_cpu: before.zip(after).map(|(b, a)| a.cpu.saturating_sub(b.cpu)),
    })
}

#[derive(Debug)]
pub struct AgentResult {
    pub runs: u64,
    pub events: u64,
    pub elapsed: Duration,
    /// Latency from sending a user_message to each of its events.
    pub event_p50_us: u64,
    pub event_p99_us: u64,
    /// Latency from sending a user_message to its agent_completed.
    pub run_p50_us: u64,
    pub run_p99_us: u64,
    pub incomplete: u64,
    pub server_cpu: Option<Duration>,
    /// Server RSS at the end (bytes).
    pub server_rss: Option<u64>,
}

/// C agent_chat connections, each with one user_message in flight, for D:
/// complete runs per second and event latency. Messages ask for pacing 0.
pub fn agent(
    url: &str,
    token: Option<&str>,
    connections: usize,
    duration: Duration,
    pid: Option<u32>,
) -> io::Result<AgentResult> {
    let (mut reactor, mut conns) = open_clients(url, connections, token, &["agent_chat"])?;
    let msg = |i: u64| {
        let m = ClientMessage::UserMessage {
            text: format!("load test message {i}"),
            thread_id: String::new(),
            pacing_ms: Some(0),
        };
        Message::text(serde_json::to_string(&m).expect("plain message serializes"))
    };
    let mut sent_at = vec![Instant::now(); connections];
    let mut closed = vec![false; connections];
    let mut events = Vec::with_capacity(1 << 20);
    let mut runs = Vec::with_capacity(1 << 18);
    let mut incomplete = 0u64;
    let before = sample(pid);
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut live = 0usize;
    for (i, ws) in conns.iter_mut().enumerate() {
        sent_at[i] = Instant::now();
        match ws.send(msg(i as u64)) {
            Err(e) if !would_block(&e) => incomplete += 1,
            _ => live += 1,
        }
    }
    let mut n = connections as u64;
    // Bounded by time (plus 10 s for stragglers) and by count.
    while live > 0 && runs.len() < 10_000_000 {
        let turn = reactor.turn()?;
        if turn.now > end + Duration::from_secs(10) {
            break;
        }
        for k in 0..reactor.events().len() {
            let i = reactor.events()[k].token;
            if closed[i] {
                continue;
            }
            let ws = &mut conns[i];
            loop {
                match ws.read() {
                    Ok(Message::Text(t)) => {
                        let lat = sent_at[i].elapsed().as_micros() as u64;
                        events.push(lat);
                        if t.as_str().contains(r#""type":"error""#) {
                            incomplete += 1;
                        }
                        if !t.as_str().contains(r#""type":"agent_completed""#) {
                            continue;
                        }
                        runs.push(lat);
                        if turn.now >= end {
                            let _ = ws.close(None);
                            closed[i] = true;
                            live -= 1;
                            break;
                        }
                        n += 1;
                        sent_at[i] = Instant::now();
                        if let Err(e) = ws.send(msg(n)) {
                            if !would_block(&e) {
                                incomplete += 1;
                                closed[i] = true;
                                live -= 1;
                                break;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) if would_block(&e) => break,
                    Err(_) => {
                        incomplete += 1;
                        closed[i] = true;
                        live -= 1;
                        break;
                    }
                }
            }
        }
    }
    let elapsed = t0.elapsed();
    let after = sample(pid);
    incomplete += live as u64;
    let pe = percentiles(&mut events, &[0.5, 0.99]);
    let pr = percentiles(&mut runs, &[0.5, 0.99]);
    Ok(AgentResult {
        runs: runs.len() as u64,
        events: events.len() as u64,
        elapsed,
        event_p50_us: pe[0],
        event_p99_us: pe[1],
        run_p50_us: pr[0],
        run_p99_us: pr[1],
        incomplete,
        server_cpu: before.zip(after).map(|(b, a)| a.cpu.saturating_sub(b.cpu)),
        server_rss: after.map(|a| a.rss),
    })
}

/// `load echo` output.
#[derive(Serialize)]
pub struct EchoReport {
    mode: &'static str,
    connections: usize,
    size: usize,
    messages: u64,
    seconds: f64,
    messages_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    errors: u64,
    server_cpu_us_per_message: Option<f64>,
}

impl EchoResult {
    pub fn report(&self, connections: usize, size: usize) -> EchoReport {
        let secs = self.elapsed.as_secs_f64();
        EchoReport {
            mode: "echo",
            connections,
            size,
            messages: self.messages,
            seconds: secs,
            messages_per_sec: self.messages as f64 / secs,
            p50_us: self.p50_us,
            p99_us: self.p99_us,
            p999_us: self.p999_us,
            errors: self.errors,
            server_cpu_us_per_message: us_per(self.server_cpu, self.messages),
        }
    }
}

/// `load agent` output.
#[derive(Serialize)]
pub struct AgentReport {
    mode: &'static str,
    connections: usize,
    runs: u64,
    events: u64,
    seconds: f64,
    runs_per_sec: f64,
    event_p50_us: u64,
    event_p99_us: u64,
    run_p50_us: u64,
    run_p99_us: u64,
    incomplete: u64,
    server_cpu_us_per_run: Option<f64>,
    server_rss_kib: Option<f64>,
}

impl AgentResult {
    pub fn report(&self, connections: usize) -> AgentReport {
        let secs = self.elapsed.as_secs_f64();
        AgentReport {
            mode: "agent",
            connections,
            runs: self.runs,
            events: self.events,
            seconds: secs,
            runs_per_sec: self.runs as f64 / secs,
            event_p50_us: self.event_p50_us,
            event_p99_us: self.event_p99_us,
            run_p50_us: self.run_p50_us,
            run_p99_us: self.run_p99_us,
            incomplete: self.incomplete,
            server_cpu_us_per_run: us_per(self.server_cpu, self.runs),
            server_rss_kib: self.server_rss.map(|b| b as f64 / 1024.0),
        }
    }
}
