//! The soak's mixed load, one thread per worker until told to stop: agent
//! runs, echo of large messages, slow and stalled readers, connection churn
//! (WebSocket and plain HTTP, refusals included) and idle holders. Every
//! answer is checked; what a server may legitimately do under this load
//! (close a connection for its lifetime, idleness or backpressure) is
//! counted apart from errors.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pollcap::apps::agent_chat::{ClientMessage, EventView};
use pollcap::reactor::{BackendKind, CapStrategy, Reactor};
use serde::Serialize;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use super::super::client::{Blocking, ClientConn, Target, connect_as, open_client, open_stream};

/// What the workers need to know.
#[derive(Clone, Debug)]
pub struct MixConfig {
    pub url: String,
    pub token: Option<String>,
    pub agents: usize,
    pub echoes: usize,
    pub slow: usize,
    pub churn: usize,
    pub idle: usize,
}

/// Counters shared by the workers.
#[derive(Default)]
pub struct MixStats {
    pub agent_runs: AtomicU64,
    pub echoed_bytes: AtomicU64,
    pub echo_runs: AtomicU64,
    pub slow_runs: AtomicU64,
    pub stalled_cut: AtomicU64,
    pub stalled_survived: AtomicU64,
    pub churn_actions: AtomicU64,
    pub holders_opened: AtomicU64,
    pub pongs: AtomicU64,
    /// Runs lost to an expected server close (lifetime, idle).
    pub interrupted: AtomicU64,
    /// Server closes seen by clients, by code and reason.
    pub closes: Mutex<BTreeMap<String, u64>>,
    pub errors: AtomicU64,
    /// The first errors, for the report.
    pub first_errors: Mutex<Vec<String>>,
}

impl MixStats {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut first = self.first_errors.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < 10 {
            first.push(what);
        }
    }

    fn closed(&self, f: &CloseFrame) {
        let key = format!("{} {}", u16::from(f.code), f.reason);
        let mut closes = self.closes.lock().unwrap_or_else(|p| p.into_inner());
        *closes.entry(key).or_default() += 1;
    }

    pub fn view(&self) -> MixView {
        MixView {
            agent_runs: self.agent_runs.load(Relaxed),
            echo_runs: self.echo_runs.load(Relaxed),
            echoed_mib: self.echoed_bytes.load(Relaxed) as f64 / (1 << 20) as f64,
            slow_runs: self.slow_runs.load(Relaxed),
            stalled_readers_cut: self.stalled_cut.load(Relaxed),
            stalled_readers_survived: self.stalled_survived.load(Relaxed),
            churn_actions: self.churn_actions.load(Relaxed),
            idle_holders_opened: self.holders_opened.load(Relaxed),
            pongs_to_server_pings: self.pongs.load(Relaxed),
            runs_interrupted_by_expected_closes: self.interrupted.load(Relaxed),
            server_closes: self
                .closes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            client_errors: self.errors.load(Relaxed),
            first_client_errors: self
                .first_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// The counters as reported.
#[derive(Clone, Debug, Serialize)]
pub struct MixView {
    pub agent_runs: u64,
    pub echo_runs: u64,
    pub echoed_mib: f64,
    pub slow_runs: u64,
    pub stalled_readers_cut: u64,
    pub stalled_readers_survived: u64,
    pub churn_actions: u64,
    pub idle_holders_opened: u64,
    pub pongs_to_server_pings: u64,
    pub runs_interrupted_by_expected_closes: u64,
    pub server_closes: BTreeMap<String, u64>,
    pub client_errors: u64,
    pub first_client_errors: Vec<String>,
}

/// Closes a server may send under this load without anything being wrong.
fn expected_close(f: &CloseFrame) -> bool {
    matches!(
        (u16::from(f.code), f.reason.as_str()),
        (1001, "max lifetime" | "idle" | "heartbeat timeout") | (1008, "backpressure")
    )
}

/// Runs the mix until `stop`; returns when every worker has finished.
pub fn run(cfg: &MixConfig, stats: &Arc<MixStats>, stop: &Arc<AtomicBool>) {
    std::thread::scope(|s| {
        for i in 0..cfg.agents {
            s.spawn(move || agent_worker(cfg, stats, stop, i));
        }
        for i in 0..cfg.echoes {
            s.spawn(move || echo_worker(cfg, stats, stop, i));
        }
        for i in 0..cfg.slow {
            s.spawn(move || slow_worker(cfg, stats, stop, i));
        }
        for i in 0..cfg.churn {
            s.spawn(move || churn_worker(cfg, stats, stop, i));
        }
        if cfg.idle > 0 {
            s.spawn(move || idle_worker(cfg, stats, stop));
        }
    });
}

type Ws = WebSocket<Blocking>;

const TIMEOUT: Duration = Duration::from_secs(10);

fn connect(cfg: &MixConfig) -> io::Result<Ws> {
    connect_as(&cfg.url, TIMEOUT, cfg.token.as_deref(), &["agent_chat"])
}

fn user_message(text: &str, pacing_ms: u64) -> Message {
    let m = ClientMessage::UserMessage {
        text: text.to_string(),
        thread_id: String::new(),
        pacing_ms: Some(pacing_ms),
    };
    Message::text(serde_json::to_string(&m).expect("a plain message serializes"))
}

/// How reading one run ended.
enum RunEnd {
    /// Every event, in order, with the right final text.
    Complete,
    /// The server closed the connection as it may (lifetime, idle...).
    Closed,
}

/// Reads one run's events and checks them (SPEC §5): agent_started with
/// seq 1, one or more agent_thinking, tool_executing, tool_completed,
/// agent_completed whose final is the deltas and ends with the echo of
/// `text`; seq grows by exactly 1, one run_id. `pace` is slept before each
/// read (a slow reader).
fn read_run(ws: &mut Ws, text: &str, pace: Duration, stats: &MixStats) -> Result<RunEnd, String> {
    let mut seq = 0u64;
    let mut run_id: Option<String> = None;
    let mut deltas = String::new();
    let mut stage = 0; // 0 started, 1 thinking, 2 tool_executing, 3 tool_completed
    loop {
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
        let msg = match ws.read() {
            Ok(m) => m,
            Err(e) => return Err(format!("connection failed during a run: {e}")),
        };
        let t = match msg {
            Message::Text(t) => t,
            Message::Close(Some(f)) if expected_close(&f) => {
                stats.closed(&f);
                return Ok(RunEnd::Closed);
            }
            Message::Close(f) => return Err(format!("unexpected close during a run: {f:?}")),
            _ => continue,
        };
        let e: EventView =
            serde_json::from_str(t.as_str()).map_err(|e| format!("bad event JSON: {e}"))?;
        if e.seq != Some(seq + 1) {
            return Err(format!("seq {:?} after {seq} ({})", e.seq, e.kind));
        }
        seq += 1;
        match (&run_id, &e.run_id) {
            (None, Some(id)) => run_id = Some(id.clone()),
            (Some(a), Some(b)) if a == b => {}
            _ => return Err(format!("run_id changed: {:?} -> {:?}", run_id, e.run_id)),
        }
        let ok = match (stage, e.kind.as_str()) {
            (0, "agent_started") if seq == 1 => {
                stage = 1;
                true
            }
            (1, "agent_thinking") => {
                deltas.push_str(e.delta.as_deref().unwrap_or_default());
                true
            }
            (1, "tool_executing") if seq > 2 => {
                stage = 2;
                true
            }
            (2, "tool_completed") => {
                stage = 3;
                true
            }
            (3, "agent_completed") => {
                let fin = e.final_text.unwrap_or_default();
                if fin != deltas || !fin.ends_with(&format!("Echo: {text}")) {
                    return Err(format!("final text wrong ({} bytes)", fin.len()));
                }
                return Ok(RunEnd::Complete);
            }
            _ => false,
        };
        if !ok {
            return Err(format!("event {} out of order at seq {seq}", e.kind));
        }
    }
}

/// Closes politely and waits (bounded) for the server's answer.
fn goodbye(mut ws: Ws) {
    let _ = ws.close(None);
    let t0 = Instant::now();
    while t0.elapsed() < TIMEOUT {
        if ws.read().is_err() {
            break;
        }
    }
}

/// Repeats `one` (a run on a connection) until stop, reconnecting after
/// an expected close; errors are counted and the connection replaced.
fn session_loop(
    cfg: &MixConfig,
    stats: &MixStats,
    stop: &AtomicBool,
    mut one: impl FnMut(&mut Ws, u64) -> Result<RunEnd, String>,
) {
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        let mut ws = match connect(cfg) {
            Ok(ws) => ws,
            Err(e) => {
                stats.error(format!("connect: {e}"));
                std::thread::sleep(Duration::from_millis(200)); // back off, then retry
                continue;
            }
        };
        loop {
            if stop.load(Relaxed) {
                return goodbye(ws);
            }
            n += 1;
            match one(&mut ws, n) {
                Ok(RunEnd::Complete) => {}
                Ok(RunEnd::Closed) => {
                    stats.interrupted.fetch_add(1, Relaxed);
                    break;
                }
                Err(e) => {
                    stats.error(e);
                    break;
                }
            }
        }
    }
}

/// Small messages, paced like a real agent (2 ms between events).
fn agent_worker(cfg: &MixConfig, stats: &MixStats, stop: &AtomicBool, i: usize) {
    session_loop(cfg, stats, stop, |ws, n| {
        let text = format!("soak agent {i} message {n}");
        ws.send(user_message(&text, 2))
            .map_err(|e| format!("send: {e}"))?;
        let end = read_run(ws, &text, Duration::ZERO, stats)?;
        if let RunEnd::Complete = end {
            stats.agent_runs.fetch_add(1, Relaxed);
        }
        Ok(end)
    });
}

/// A text of `len` bytes in long words (few, large events).
fn big_text(len: usize, tag: u64) -> String {
    let word = format!("{tag:x}{}", "w".repeat(1023));
    let mut s = String::with_capacity(len + 1024);
    while s.len() < len {
        s.push_str(&word);
        s.push(' ');
    }
    s.truncate(len);
    if s.ends_with(' ') {
        s.pop();
        s.push('w');
    }
    s
}

/// Messages from 16 B to 256 KiB echoed back in the final text (burst
/// buffers grown and given back), a Ping of our own now and then, one
/// message every 20 ms.
fn echo_worker(cfg: &MixConfig, stats: &MixStats, stop: &AtomicBool, i: usize) {
    const SIZES: [usize; 5] = [16, 1024, 16 * 1024, 64 * 1024, 256 * 1024];
    session_loop(cfg, stats, stop, |ws, n| {
        let text = big_text(SIZES[(n as usize + i) % SIZES.len()], n);
        ws.send(user_message(&text, 0))
            .map_err(|e| format!("send: {e}"))?;
        let end = read_run(ws, &text, Duration::ZERO, stats)?;
        if let RunEnd::Complete = end {
            stats.echo_runs.fetch_add(1, Relaxed);
            stats.echoed_bytes.fetch_add(text.len() as u64, Relaxed);
            if n % 10 == 0 {
                let payload = n.to_be_bytes().to_vec();
                ws.send(Message::Ping(payload.clone().into()))
                    .map_err(|e| format!("ping: {e}"))?;
                loop {
                    match ws.read().map_err(|e| format!("pong: {e}"))? {
                        Message::Pong(p) if p.as_ref() == payload.as_slice() => break,
                        Message::Pong(p) => return Err(format!("pong {p:?} for {payload:?}")),
                        Message::Ping(_) => {} // the server's heartbeat, answered by tungstenite
                        Message::Close(Some(f)) if expected_close(&f) => {
                            stats.closed(&f);
                            return Ok(RunEnd::Closed);
                        }
                        other => return Err(format!("{other:?} instead of a pong")),
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20)); // pacing of the mix
        }
        Ok(end)
    });
}

/// Alternately a slow reader (a 64 KiB run read one event every 5 ms) and
/// a stalled one (twelve 512 KiB runs, then nothing read for 3 s: the
/// server must cut it, 1008 backpressure, or deliver everything).
fn slow_worker(cfg: &MixConfig, stats: &MixStats, stop: &AtomicBool, i: usize) {
    let mut round = i as u64;
    while !stop.load(Relaxed) {
        round += 1;
        let mut ws = match connect(cfg) {
            Ok(ws) => ws,
            Err(e) => {
                stats.error(format!("connect: {e}"));
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if round % 2 == 0 {
            let text = big_text(64 * 1024, round);
            let r = ws
                .send(user_message(&text, 0))
                .map_err(|e| format!("send: {e}"))
                .and_then(|_| read_run(&mut ws, &text, Duration::from_millis(5), stats));
            match r {
                Ok(RunEnd::Complete) => {
                    stats.slow_runs.fetch_add(1, Relaxed);
                    goodbye(ws);
                }
                Ok(RunEnd::Closed) => {
                    stats.interrupted.fetch_add(1, Relaxed);
                }
                Err(e) => stats.error(format!("slow reader: {e}")),
            }
        } else {
            stalled(ws, round, stats);
        }
    }
}

fn stalled(mut ws: Ws, round: u64, stats: &MixStats) {
    let text = big_text(512 * 1024, round);
    for _ in 0..12 {
        if ws.send(user_message(&text, 0)).is_err() {
            break; // already cut
        }
    }
    std::thread::sleep(Duration::from_secs(3)); // the stall
    // Now read what there is: complete runs, or the cut.
    let mut completed = 0;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) if t.as_str().contains(r#""type":"agent_completed""#) => {
                completed += 1;
                if completed == 12 {
                    stats.stalled_survived.fetch_add(1, Relaxed);
                    return goodbye(ws);
                }
            }
            // Backpressure, as expected; or, had the stall outlasted a
            // heartbeat, the ping deadline.
            Ok(Message::Close(Some(f)))
                if expected_close(&f) || f.reason.as_str() == "keepalive ping timeout" =>
            {
                stats.closed(&f);
                stats.stalled_cut.fetch_add(1, Relaxed);
                return;
            }
            Ok(Message::Close(f)) => return stats.error(format!("stalled reader: close {f:?}")),
            Ok(_) => {}
            // Cut after the close deadline: the Close was dropped with
            // the rest of what the reader never read.
            Err(_) => {
                stats.stalled_cut.fetch_add(1, Relaxed);
                return;
            }
        }
    }
}

/// One plain HTTP exchange; the status line's code (reads to EOF).
fn http(t: &Target, request: &[u8]) -> Result<u16, String> {
    let mut s = open_stream(t, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("read (a reset loses the answer): {e}"))?;
    let line = String::from_utf8_lossy(&out[..out.len().min(32)]).into_owned();
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {line:?}"))
}

/// Connections that come and go, about 100 actions a second per worker:
/// WebSocket sessions of one run, closed or just dropped; plain requests,
/// refusals, pipelined junk behind a 404; connections that send nothing.
fn churn_worker(cfg: &MixConfig, stats: &MixStats, stop: &AtomicBool, i: usize) {
    let t = match Target::parse(&cfg.url) {
        Ok(t) => t,
        Err(e) => return stats.error(format!("url: {e}")),
    };
    let host = t.authority.clone();
    let mut n = i as u64;
    while !stop.load(Relaxed) {
        n += 1;
        let get =
            |path: &str, method: &str| format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let result = match n % 8 {
            0 | 1 => connect(cfg)
                .map_err(|e| format!("connect: {e}"))
                .and_then(|mut ws| {
                    let text = format!("churn {i} {n}");
                    ws.send(user_message(&text, 0))
                        .map_err(|e| format!("send: {e}"))?;
                    read_run(&mut ws, &text, Duration::ZERO, stats)?;
                    if n % 8 == 0 {
                        goodbye(ws);
                    } // else: dropped without a Close, as a lost client
                    Ok(())
                }),
            2 => expect(http(&t, get("/health", "GET").as_bytes()), 200),
            3 => expect(http(&t, get("/metrics", "HEAD").as_bytes()), 200),
            4 => expect(http(&t, get("/nope", "GET").as_bytes()), 404),
            5 => expect(http(&t, b"GET /health HTTP/1.1\r\n\r\n"), 400),
            6 => {
                let mut req = get("/nope", "GET").into_bytes();
                req.extend(std::iter::repeat_n(b'j', 64 * 1024));
                expect(http(&t, &req), 404)
            }
            _ => open_stream(&t, TIMEOUT)
                .map(drop)
                .map_err(|e| format!("connect: {e}")),
        };
        match result {
            Ok(()) => {
                stats.churn_actions.fetch_add(1, Relaxed);
            }
            Err(e) => stats.error(format!("churn: {e}")),
        }
        std::thread::sleep(Duration::from_millis(10)); // pacing of the mix
    }
}

fn expect(got: Result<u16, String>, want: u16) -> Result<(), String> {
    match got? {
        s if s == want => Ok(()),
        s => Err(format!("status {s}, expected {want}")),
    }
}

/// Reads holders `keys` until they would block, answering the server's
/// Pings; a holder the server closed is dropped (reopened later).
fn serve_holders(
    holders: &mut [Option<ClientConn>],
    keys: impl IntoIterator<Item = usize>,
    stats: &MixStats,
) {
    for k in keys {
        let Some(ws) = holders.get_mut(k).and_then(Option::as_mut) else {
            continue;
        };
        let closed = loop {
            match ws.read() {
                Ok(Message::Ping(_)) => {
                    stats.pongs.fetch_add(1, Relaxed);
                }
                Ok(Message::Close(Some(f))) if expected_close(&f) => {
                    stats.closed(&f);
                }
                Ok(Message::Close(f)) => {
                    stats.error(format!("idle holder closed: {f:?}"));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    break false;
                }
                Err(_) => break true,
            }
        };
        let _ = ws.flush(); // the Pongs
        if closed {
            holders[k] = None;
        }
    }
}

/// Idle agent_chat connections on one event-driven thread, answering the
/// server's Pings; a holder the server closes (idle, lifetime) is opened
/// again. Every second all holders are read, so an event lost while a
/// replacement's handshake turned the reactor cannot strand a Ping.
fn idle_worker(cfg: &MixConfig, stats: &MixStats, stop: &AtomicBool) {
    let fail = |e: io::Error| stats.error(format!("idle holders: {e}"));
    let target = match Target::parse(&cfg.url) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let mut reactor = match Reactor::new(
        BackendKind::Mio,
        CapStrategy::Fixed(Duration::from_millis(100)),
    ) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let token = cfg.token.as_deref();
    let mut holders: Vec<Option<ClientConn>> = Vec::new();
    for t in 0..cfg.idle {
        match open_client(&mut reactor, &target, t, token, &["agent_chat"]) {
            Ok(ws) => {
                stats.holders_opened.fetch_add(1, Relaxed);
                holders.push(Some(ws));
            }
            Err(e) => {
                fail(e);
                holders.push(None);
            }
        }
        if t % 10 == 9 {
            serve_holders(&mut holders, 0..t, stats); // their Pings meanwhile
        }
    }
    let mut sweep = Instant::now();
    while !stop.load(Relaxed) {
        let keys: Vec<usize> = match reactor.turn() {
            Ok(_) => reactor.events().iter().map(|e| e.token).collect(),
            Err(e) => return fail(e),
        };
        let all = sweep.elapsed() >= Duration::from_secs(1);
        if !all {
            serve_holders(&mut holders, keys, stats);
            continue;
        }
        sweep = Instant::now();
        serve_holders(&mut holders, 0..cfg.idle, stats);
        // Reopen what the server closed, a few at a time: hundreds close
        // together at the stale deadline, and a handshake turns the reactor
        // without serving the others, whose Pings must still be answered
        // within the ping deadline.
        let closed: Vec<usize> = (0..cfg.idle).filter(|&k| holders[k].is_none()).collect();
        for (n, k) in closed.into_iter().take(100).enumerate() {
            if stop.load(Relaxed) {
                break;
            }
            match open_client(&mut reactor, &target, k, token, &["agent_chat"]) {
                Ok(ws) => {
                    stats.holders_opened.fetch_add(1, Relaxed);
                    holders[k] = Some(ws);
                }
                Err(e) => fail(e),
            }
            if n % 10 == 9 {
                serve_holders(&mut holders, 0..cfg.idle, stats);
            }
        }
    }
    for ws in holders.iter_mut().flatten() {
        let _ = ws.close(None);
        let _ = ws.flush();
    }
    // The server answers each Close and closes TCP; read until it has.
    let t0 = Instant::now();
    while holders.iter().any(Option::is_some) && t0.elapsed() < TIMEOUT {
        if reactor.turn().is_err() {
            break;
        }
        for h in holders.iter_mut() {
            if let Some(ws) = h {
                match ws.read() {
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Ok(_) => {}
                    Err(_) => *h = None,
                }
            }
        }
    }
}
