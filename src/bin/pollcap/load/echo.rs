//! Event-driven load clients on pollcap's own reactor: `echo` (one message
//! in flight per connection) and `agent` (one `agent_chat` run in flight per
//! connection).

use std::io;
use std::time::{Duration, Instant};

use tungstenite::Message;

use pollcap::apps::agent_chat::ClientMessage;
use pollcap::reactor::Interest;
use serde::Serialize;

use super::{inbound, open_clients, outbound, percentiles, sample, us_per, would_block};

/// What `load echo` sends.
pub enum Payload {
    /// S bytes of 'x' (binary).
    Bytes(usize),
    /// An S-byte JSON text message: an agent event's shape and words.
    Json(usize),
    /// These text messages in turn.
    Replay(Vec<String>),
}

/// Words of an agent's answer, for JSON payloads that compress like text.
const WORDS: &[&str] = &[
    "the",
    "reactor",
    "caps",
    "every",
    "wait",
    "on",
    "poller",
    "and",
    "each",
    "connection",
    "phase",
    "has",
    "a",
    "deadline",
    "when",
    "peer",
    "stalls",
    "server",
    "closes",
    "it",
    "after",
    "heartbeat",
    "timeout",
    "run",
    "outlives",
    "its",
    "client",
    "resume",
    "from",
    "store",
    "events",
    "are",
    "stamped",
    "with",
    "seq",
    "so",
    "gap",
    "reorder",
    "can",
    "be",
    "told",
    "apart",
    "load",
    "balancer",
    "drops",
    "silent",
    "peers",
    "sixty",
    "seconds",
    "tokens",
    "stream",
    "as",
    "deltas",
    "final",
    "answer",
    "carries",
    "whole",
    "text",
    "again",
    "mobile",
    "links",
    "flaky",
    "compression",
    "saves",
    "bytes",
    "memory",
    "idle",
    "costs",
    "nothing",
    "more",
    "but",
    "cpu",
    "per",
    "message",
    "matters",
    "to",
    "operators",
    "of",
    "chat",
    "backends",
    "in",
    "containers",
    "kubernetes",
    "cloud",
    "windows",
    "timers",
    "soft",
    "hard",
    "slack",
    "wakeups",
    "second",
    "budget",
    "bounded",
];

/// A JSON text message of exactly `n` bytes: an agent_thinking event (or,
/// when that does not fit, `{"delta":"…"}`), its words drawn by a fixed generator
/// from `seed`.
pub fn json_message(n: usize, seed: u64) -> String {
    let event = format!(
        "{{\"type\":\"agent_thinking\",\"run_id\":\"Zq3kP0aX-7Vb2Qm9LrT1sA\",\"seq\":{},\"delta\":\"",
        seed % 1000
    );
    let event_tail = "\",\"ts\":1796528844179}";
    let (head, tail) = if n >= event.len() + event_tail.len() {
        (event, event_tail)
    } else {
        ("{\"delta\":\"".to_string(), "\"}")
    };
    let room = n.saturating_sub(head.len() + tail.len());
    let mut text = String::with_capacity(room + 16);
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
    while text.len() < room {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        text.push(' ');
    }
    text.truncate(room);
    head + &text + tail
}

impl Payload {
    /// The `i`-th message connection `conn` sends. No two JSON messages
    /// are the same, nor two replays of a run: a server that keeps its
    /// compression context between messages must not find whole messages
    /// it sent before.
    fn message(&self, conn: usize, i: u64, bytes: &tungstenite::Bytes) -> Message {
        match self {
            Payload::Bytes(_) => Message::Binary(bytes.clone()),
            Payload::Json(n) => Message::text(json_message(*n, ((conn as u64) << 32) + i)),
            Payload::Replay(lines) => {
                let n = lines.len().max(1) as u64;
                let line = &lines[(i % n) as usize];
                Message::text(with_run_id(line, conn as u64, i / n))
            }
        }
    }
}

/// `line` with the value of its `"run_id"` replaced by one of the same
/// length made from `conn`, the replay's `cycle` and the value itself (a
/// new id for each run of each replay).
fn with_run_id(line: &str, conn: u64, cycle: u64) -> String {
    const KEY: &str = "\"run_id\":\"";
    let Some(at) = line.find(KEY).map(|a| a + KEY.len()) else {
        return line.to_string();
    };
    let Some(len) = line[at..].find('"') else {
        return line.to_string();
    };
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let old = line[at..at + len]
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut x = ((conn << 32) ^ cycle ^ old).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let id: String = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect();
    format!("{}{id}{}", &line[..at], &line[at + len..])
}

#[derive(Debug)]
pub struct EchoResult {
    pub messages: u64,
    /// Bytes the clients read from their sockets (replies on the wire).
    pub wire_bytes: u64,
    /// Payload bytes of the replies (inflated).
    pub payload_bytes: u64,
    /// Connections that negotiated permessage-deflate.
    pub deflate: usize,
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
    payload: &Payload,
    duration: Duration,
    pid: Option<u32>,
) -> io::Result<EchoResult> {
    let (mut reactor, clients) = open_clients(url, connections, None, &[])?;
    let deflate = clients
        .iter()
        .filter(|ws| ws.get_ref().agreed().is_some())
        .count();
    let received_at_start: u64 = clients.iter().map(|ws| ws.get_ref().received()).sum();
    // (client, sent at, interest, closed, messages sent)
    let mut conns: Vec<_> = clients
        .into_iter()
        .map(|ws| (ws, Instant::now(), Interest::READABLE, false, 0u64))
        .collect();
    let size = match payload {
        Payload::Bytes(n) | Payload::Json(n) => *n,
        Payload::Replay(_) => 0,
    };
    let bytes = tungstenite::Bytes::from(vec![b'x'; size]);
    let mut rtts: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut payload_bytes = 0u64;
    let mut errors = 0u64;
    let before = sample(pid);
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut live = 0;
    for (k, (ws, sent, _, _, n)) in conns.iter_mut().enumerate() {
        *sent = Instant::now();
        let m = outbound(ws, payload.message(k, *n, &bytes));
        *n += 1;
        match ws.send(m) {
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
            let (ws, sent, interest, closed, n) = &mut conns[ev.token];
            if *closed {
                continue;
            }
            if ev.writable {
                let _ = ws.flush();
            }
            loop {
                let reply = match ws.read() {
                    Ok(m @ (Message::Binary(_) | Message::Text(_))) => inbound(ws, m).ok_or(()),
                    Ok(_) => continue,
                    Err(e) if would_block(&e) => break,
                    Err(_) => Err(()),
                };
                match reply {
                    Ok(reply) => {
                        payload_bytes += reply.len() as u64;
                        rtts.push(sent.elapsed().as_micros() as u64);
                        if done {
                            let _ = ws.close(None);
                            *closed = true;
                            live -= 1;
                            break;
                        }
                        *sent = Instant::now();
                        let m = outbound(ws, payload.message(ev.token, *n, &bytes));
                        *n += 1;
                        match ws.send(m) {
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
                    Err(()) => {
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
                reactor.reregister(ws.get_mut().get_mut(), ev.token, want)?;
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
    let received: u64 = conns.iter().map(|c| c.0.get_ref().received()).sum();
    let p = percentiles(&mut rtts, &[0.5, 0.99, 0.999]);
    Ok(EchoResult {
        messages: rtts.len() as u64,
        wire_bytes: received - received_at_start,
        payload_bytes,
        deflate,
        elapsed,
        p50_us: p[0],
        p99_us: p[1],
        p999_us: p[2],
        errors,
        server_cpu: before.zip(after).map(|(b, a)| a.cpu.saturating_sub(b.cpu)),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_replayed_run_gets_a_new_run_id_of_the_same_length() {
        let line = r#"{"type":"agent_started","run_id":"P84QF_4c0E-jbpYIqHLuWw","seq":1}"#;
        let a = super::with_run_id(line, 1, 0);
        let b = super::with_run_id(line, 1, 1);
        assert_eq!((a.len(), b.len()), (line.len(), line.len()));
        assert_ne!(a, b);
        assert!(
            a.starts_with(r#"{"type":"agent_started","run_id":""#) && a.ends_with(r#"","seq":1}"#)
        );
        assert_eq!(super::with_run_id("no id", 1, 1), "no id");
    }

    #[test]
    fn json_messages_have_the_size_asked_for() {
        for n in [20, 32, 95, 96, 1024, 16384] {
            let m = super::json_message(n, 7);
            assert_eq!(m.len(), n.max(12), "{m}");
            assert!(serde_json::from_str::<serde_json::Value>(&m).is_ok(), "{m}");
        }
    }
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
    /// Bytes the clients read from their sockets (the events on the wire).
    pub wire_bytes: u64,
    /// Bytes of the events (inflated).
    pub payload_bytes: u64,
    pub deflate: usize,
}

/// C agent_chat connections, each with one user_message in flight, for D:
/// complete runs per second and event latency. Messages ask for pacing 0.
pub fn agent(
    url: &str,
    token: Option<&str>,
    connections: usize,
    duration: Duration,
    texts: &[String],
    pid: Option<u32>,
) -> io::Result<AgentResult> {
    let (mut reactor, mut conns) = open_clients(url, connections, token, &["agent_chat"])?;
    let deflate = conns
        .iter()
        .filter(|ws| ws.get_ref().agreed().is_some())
        .count();
    let received_at_start: u64 = conns.iter().map(|ws| ws.get_ref().received()).sum();
    let mut payload_bytes = 0u64;
    let msg = |i: u64| {
        let m = ClientMessage::UserMessage {
            text: match texts.len() {
                0 => format!("load test message {i}"),
                n => texts[i as usize % n].clone(),
            },
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
                let read = match ws.read() {
                    Ok(m @ (Message::Text(_) | Message::Binary(_))) => inbound(ws, m).ok_or(()),
                    Ok(_) => continue,
                    Err(e) if would_block(&e) => break,
                    Err(_) => Err(()),
                };
                match read {
                    Ok(Message::Text(t)) => {
                        payload_bytes += t.len() as u64;
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
                    Err(()) => {
                        incomplete += 1;
                        closed[i] = true;
                        live -= 1;
                        break;
                    }
                }
            }
        }
    }
    let received: u64 = conns.iter().map(|ws| ws.get_ref().received()).sum();
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
        wire_bytes: received - received_at_start,
        payload_bytes,
        deflate,
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
    /// Connections that negotiated permessage-deflate.
    deflate_connections: usize,
    /// Bytes received per reply: on the wire (frame headers included, the
    /// closing handshake too) and its payload once inflated.
    wire_bytes_per_message: f64,
    payload_bytes_per_message: f64,
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
            deflate_connections: self.deflate,
            wire_bytes_per_message: self.wire_bytes as f64 / self.messages.max(1) as f64,
            payload_bytes_per_message: self.payload_bytes as f64 / self.messages.max(1) as f64,
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
    deflate_connections: usize,
    /// Bytes received per complete run: on the wire, and its events'
    /// payload once inflated.
    wire_bytes_per_run: f64,
    payload_bytes_per_run: f64,
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
            deflate_connections: self.deflate,
            wire_bytes_per_run: self.wire_bytes as f64 / self.runs.max(1) as f64,
            payload_bytes_per_run: self.payload_bytes as f64 / self.runs.max(1) as f64,
        }
    }
}
