//! `load storm`: handshakes (upgrade, then close) with P in flight, from
//! one event-driven thread.

use std::io;
use std::time::{Duration, Instant};

use pollcap::reactor::{BackendKind, CapStrategy, Interest, Reactor};
use serde::Serialize;

use pollcap::stream::Stream;

use super::{Target, percentiles, sample, us_per};

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
    stream: Stream,
    started: Instant,
    state: u8, // 0 = sending request, 1 = reading 101, 2 = closing
    /// Bytes of the request sent so far.
    sent: usize,
    head: Vec<u8>,
}

/// K handshakes with P in flight at once, from one event-driven thread.
pub fn storm(
    url: &str,
    count: usize,
    parallel: usize,
    token: Option<&str>,
    pid: Option<u32>,
) -> io::Result<StormResult> {
    use std::io::{Read, Write};
    let target = &Target::parse(url)?;
    let (authority, path) = (&target.authority, &target.path);
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
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
        // wss://: the TLS handshake runs as the attempt reads and writes.
        let mut stream = super::nonblocking_stream(target)?;
        reactor.register(&mut stream, slot, Interest::BOTH)?;
        slots[slot] = Some(Attempt {
            stream,
            started: Instant::now(),
            state: 0,
            sent: 0,
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
            // On any event: with wss:// the TLS handshake needs reads as
            // well as writes before the request can go out.
            while a.state == 0 {
                match a.stream.write(&request.as_bytes()[a.sent..]) {
                    Ok(n) => {
                        a.sent += n;
                        if a.sent == request.len() {
                            a.state = 1;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        end = Some(false);
                        break;
                    }
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

/// `load storm` output.
#[derive(Serialize)]
pub struct StormReport {
    mode: &'static str,
    parallel: usize,
    handshakes: u64,
    seconds: f64,
    handshakes_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    server_cpu_us_per_handshake: Option<f64>,
}

impl StormResult {
    pub fn report(&self, parallel: usize) -> StormReport {
        let secs = self.elapsed.as_secs_f64();
        StormReport {
            mode: "storm",
            parallel,
            handshakes: self.handshakes,
            seconds: secs,
            handshakes_per_sec: self.handshakes as f64 / secs,
            p50_us: self.p50_us,
            p99_us: self.p99_us,
            errors: self.errors,
            server_cpu_us_per_handshake: us_per(self.server_cpu, self.handshakes),
        }
    }
}
