//! The load tool behind `pollcap load`: echo throughput/latency, handshake
//! storms and idle-connection memory, against any server on loopback.
//! Every loop is bounded in count and time. Server-side CPU and RSS are read
//! from `/proc/PID` when `--server-pid` is given.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

/// Samples of the server process around a measurement.
#[derive(Clone, Copy, Debug)]
pub struct ServerSample {
    pub cpu: Duration,
    pub rss: u64,
}

pub fn sample(pid: Option<u32>) -> Option<ServerSample> {
    let (cpu, rss) = crate::platform::process_usage(pid?)?;
    Some(ServerSample { cpu, rss })
}

/// A blocking client connected to `url` (ws://host:port/path).
pub fn connect(url: &str, timeout: Duration) -> io::Result<WebSocket<TcpStream>> {
    connect_as(url, timeout, None, &[])
}

/// Like [`connect`], with a bearer token and subprotocols.
pub fn connect_as(
    url: &str,
    timeout: Duration,
    token: Option<&str>,
    protocols: &[&str],
) -> io::Result<WebSocket<TcpStream>> {
    use tungstenite::client::IntoClientRequest;
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "url must start with ws://"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = url
        .into_client_request()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let bad = |e: tungstenite::http::header::InvalidHeaderValue| {
        io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
    };
    if let Some(t) = token {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().map_err(bad)?);
    }
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols.join(", ").parse().map_err(bad)?,
        );
    }
    let (ws, _) = tungstenite::client(req, s).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(ws)
}

type ClientConn = WebSocket<mio::net::TcpStream>;

/// C connected clients registered with a client-side reactor (token = index).
fn open_clients(
    url: &str,
    connections: usize,
    token: Option<&str>,
    protocols: &[&str],
) -> io::Result<(crate::reactor::Reactor, Vec<ClientConn>)> {
    use crate::reactor::{BackendKind, CapStrategy, Interest, Reactor};
    let reactor = Reactor::new(
        BackendKind::Mio,
        CapStrategy::Fixed(Duration::from_millis(100)),
    )?;
    let mut conns = Vec::with_capacity(connections);
    for t in 0..connections {
        let std_stream = connect_as(url, Duration::from_secs(5), token, protocols)?.into_inner();
        std_stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(std_stream);
        reactor.register(&mut stream, t, Interest::READABLE)?;
        conns.push(WebSocket::from_raw_socket(
            stream,
            tungstenite::protocol::Role::Client,
            None,
        ));
    }
    Ok((reactor, conns))
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Latency percentiles in µs from unsorted samples.
pub fn percentiles(samples: &mut [u64], qs: &[f64]) -> Vec<u64> {
    samples.sort_unstable();
    qs.iter()
        .map(|q| {
            if samples.is_empty() {
                0
            } else {
                let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
                samples[i]
            }
        })
        .collect()
}

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
    use crate::reactor::Interest;
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
        Message::text(format!(
            r#"{{"type":"user_message","text":"load test message {i}","pacing_ms":0}}"#
        ))
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
    })
}

#[derive(Debug)]
pub struct StormResult {
    pub handshakes: u64,
    pub elapsed: Duration,
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
    pub server_cpu: Option<Duration>,
}

/// One handshake in flight: connect, send the upgrade request, read the
/// 101, send a Close, wait for the server to drop TCP.
struct Attempt {
    stream: mio::net::TcpStream,
    started: Instant,
    state: u8, // 0 = sending request, 1 = reading 101, 2 = closing
    head: Vec<u8>,
}

/// K handshakes with P in flight at once, from one event-driven thread.
pub fn storm(
    url: &str,
    count: usize,
    parallel: usize,
    pid: Option<u32>,
) -> io::Result<StormResult> {
    use crate::reactor::{BackendKind, CapStrategy, Interest, Reactor};
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "url must start with ws://"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let request = format!(
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    // A masked Close frame with no payload (mask key 0).
    let close = [0x88u8, 0x80, 0, 0, 0, 0];
    let mut reactor = Reactor::new(
        BackendKind::Mio,
        CapStrategy::Fixed(Duration::from_millis(100)),
    )?;
    let mut slots: Vec<Option<Attempt>> = (0..parallel.max(1)).map(|_| None).collect();
    let mut started = 0usize;
    let mut lat = Vec::with_capacity(count);
    let mut errors = 0u64;
    let before = sample(pid);
    let t0 = Instant::now();
    let limit = t0 + Duration::from_secs(120);
    let start = |slot: usize,
                 reactor: &mut Reactor,
                 slots: &mut Vec<Option<Attempt>>,
                 started: &mut usize|
     -> io::Result<()> {
        if *started >= count {
            return Ok(());
        }
        *started += 1;
        let mut stream = mio::net::TcpStream::connect(addr)?;
        reactor.register(&mut stream, slot, Interest::BOTH)?;
        slots[slot] = Some(Attempt {
            stream,
            started: Instant::now(),
            state: 0,
            head: Vec::new(),
        });
        Ok(())
    };
    for slot in 0..slots.len() {
        start(slot, &mut reactor, &mut slots, &mut started)?;
    }
    let mut finished = 0usize;
    while finished < started && Instant::now() < limit {
        reactor.turn()?;
        for i in 0..reactor.events().len() {
            let ev = reactor.events()[i];
            let Some(a) = slots[ev.token].as_mut() else {
                continue;
            };
            let mut end = None;
            if a.state == 0 && ev.writable {
                match a.stream.write(request.as_bytes()) {
                    Ok(n) if n == request.len() => a.state = 1,
                    Ok(_) | Err(_) => end = Some(false),
                }
            }
            if a.state >= 1 && ev.readable {
                let mut buf = [0u8; 1024];
                loop {
                    match a.stream.read(&mut buf) {
                        Ok(0) => {
                            end = Some(a.state == 2);
                            break;
                        }
                        Ok(n) if a.state == 1 => {
                            a.head.extend_from_slice(&buf[..n]);
                            if a.head.windows(4).any(|w| w == b"\r\n\r\n") {
                                if !a.head.starts_with(b"HTTP/1.1 101 ") {
                                    end = Some(false);
                                    break;
                                }
                                lat.push(a.started.elapsed().as_micros() as u64);
                                a.state = 2;
                                if a.stream.write(&close).is_err() {
                                    end = Some(false);
                                    break;
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            end = Some(a.state == 2);
                            break;
                        }
                    }
                }
            }
            if let Some(ok) = end {
                if !ok {
                    errors += 1;
                }
                let _ = reactor.deregister(&mut a.stream);
                slots[ev.token] = None;
                finished += 1;
                start(ev.token, &mut reactor, &mut slots, &mut started)?;
            }
        }
    }
    let elapsed = t0.elapsed();
    let after = sample(pid);
    errors += (started - finished) as u64;
    let p = percentiles(&mut lat, &[0.5, 0.99]);
    Ok(StormResult {
        handshakes: lat.len() as u64,
        elapsed,
        p50_us: p[0],
        p99_us: p[1],
        errors,
        server_cpu: before.zip(after).map(|(b, a)| a.cpu.saturating_sub(b.cpu)),
    })
}

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
        ws.get_mut().set_nonblocking(true)?;
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

/// The body of `GET path` on the server behind a `ws://host/...` URL
/// (its plain HTTP routes answer with `Connection: close`).
pub fn http_get(url: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let host = url.strip_prefix("ws://")?.split('/').next()?;
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    Some(response.split_once("\r\n\r\n")?.1.to_string())
}

/// Sum of `pollcap_reactor_waits_total` from the server's `/metrics`.
pub fn reactor_waits(url: &str) -> Option<u64> {
    Some(
        http_get(url, "/metrics")?
            .lines()
            .filter(|l| l.starts_with("pollcap_reactor_waits_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum(),
    )
}
