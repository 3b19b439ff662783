//! State-machine tests with injected time over an in-memory duplex: every
//! phase deadline of SPEC §2 in microseconds of real time.

use super::*;
use crate::http;
use crate::settings::Profile;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::Duration;
use tungstenite::Message;
use tungstenite::protocol::Role;
use tungstenite::protocol::frame::coding::CloseCode;

type Buf = Rc<RefCell<VecDeque<u8>>>;

/// One end of an in-memory duplex; `WouldBlock` when empty, EOF once the
/// other end shut down its sending side and everything was read.
struct End {
    rx: Buf,
    tx: Buf,
    /// The other end's sending side is shut down.
    rx_shut: Rc<Cell<bool>>,
    tx_shut: Rc<Cell<bool>>,
    /// `close_write` says `WouldBlock` this many times first (a TLS
    /// transport with records waiting for the socket).
    close_blocks: u32,
    /// Writes say `WouldBlock` while the peer holds this many unread
    /// bytes (a full socket buffer).
    tx_limit: usize,
}

impl End {
    /// Shuts down this end's sending side (the peer reads EOF).
    fn shut(&self) {
        self.tx_shut.set(true);
    }
}

impl Read for End {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rx = self.rx.borrow_mut();
        if rx.is_empty() {
            if self.rx_shut.get() {
                return Ok(0);
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(rx.len());
        for (d, s) in buf.iter_mut().zip(rx.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }
}

impl Write for End {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut tx = self.tx.borrow_mut();
        let room = self.tx_limit.saturating_sub(tx.len());
        if room == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(room);
        tx.extend(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for End {
    fn received(&self) -> u64 {
        0
    }
    fn short_read_drains(&self) -> bool {
        false
    }
    fn close_write(&mut self) -> io::Result<()> {
        if self.close_blocks > 0 {
            self.close_blocks -= 1;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.shut();
        Ok(())
    }
}

fn duplex() -> (End, End) {
    let a: Buf = Default::default();
    let b: Buf = Default::default();
    let a_shut: Rc<Cell<bool>> = Default::default();
    let b_shut: Rc<Cell<bool>> = Default::default();
    (
        End {
            rx: a.clone(),
            tx: b.clone(),
            rx_shut: a_shut.clone(),
            tx_shut: b_shut.clone(),
            close_blocks: 0,
            tx_limit: usize::MAX,
        },
        End {
            rx: b,
            tx: a,
            rx_shut: b_shut,
            tx_shut: a_shut,
            close_blocks: 0,
            tx_limit: usize::MAX,
        },
    )
}

/// The owner's side of the API, acting as a server would: configuration,
/// the event list, and the decisions. No mock of anything: the decisions
/// are plain calls.
struct Owner {
    timeouts: Timeouts,
    limits: Limits,
    events: Vec<Event>,
    /// Every event ever reported, for assertions.
    log: Vec<Event>,
}

impl Owner {
    fn cx(&mut self, now: Instant) -> Cx<'_> {
        Cx {
            now,
            timeouts: &self.timeouts,
            limits: &self.limits,
            events: &mut self.events,
        }
    }

    /// Runs `f`, then answers requests the way `pollcap serve --app echo`
    /// does (upgrade `/ws`, 404 elsewhere but `/later`, left waiting for
    /// an answer) and echoes messages.
    fn drive<S: Transport>(
        &mut self,
        c: &mut Conn<S>,
        now: Instant,
        f: impl FnOnce(&mut Conn<S>, &mut Cx),
    ) {
        f(c, &mut self.cx(now));
        loop {
            let batch = std::mem::take(&mut self.events);
            if batch.is_empty() {
                if c.has_more_input() {
                    c.handle_io(true, false, &mut self.cx(now));
                    continue;
                }
                c.flush(&mut self.cx(now));
                if self.events.is_empty() {
                    break;
                }
                continue;
            }
            for ev in batch {
                match &ev {
                    Event::Request(head) => match head.path.as_str() {
                        "/ws" => c.accept(None, &mut self.cx(now)),
                        // Left undecided, as an application still deciding.
                        "/later" => {}
                        _ => c.respond(http::text(404, "Not Found", "no\n"), &mut self.cx(now)),
                    },
                    Event::Message(m) => c.send(m.clone(), &mut self.cx(now)),
                    _ => {}
                }
                self.log.push(ev);
            }
        }
    }

    fn io<S: Transport>(&mut self, c: &mut Conn<S>, now: Instant) {
        self.drive(c, now, |c, cx| c.handle_io(true, false, cx));
    }

    fn timeout<S: Transport>(&mut self, c: &mut Conn<S>, now: Instant) {
        self.drive(c, now, |c, cx| c.handle_timeout(cx));
    }

    /// The next deadline, whatever its kind.
    fn due<S: Transport>(&self, c: &Conn<S>) -> Option<Instant> {
        c.poll_timeout(&self.timeouts, Duration::ZERO).map(|w| w.at)
    }

    fn count(&self, want: &Event) -> usize {
        self.log.iter().filter(|e| *e == want).count()
    }

    fn timeouts_of(&self, phase: TimeoutPhase) -> usize {
        self.count(&Event::Timeout(phase))
    }
}

fn owner() -> Owner {
    Owner {
        timeouts: Profile::Local.timeouts(),
        limits: Limits::default(),
        events: Vec::new(),
        log: Vec::new(),
    }
}

const REQ: &str = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// An upgraded connection at `t0` and the client's WebSocket.
fn open(h: &mut Owner, t0: Instant) -> (Conn<End>, WebSocket<End>) {
    let (server, mut client) = duplex();
    let mut c = Conn::new(1, server, t0, 1.0);
    client.write_all(REQ.as_bytes()).unwrap();
    h.io(&mut c, t0);
    assert_eq!(c.phase(), PhaseName::Open);
    let mut head = vec![0u8; 4096];
    let n = client.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101 "));
    (c, WebSocket::from_raw_socket(client, Role::Client, None))
}

fn expect_close(client: &mut WebSocket<End>, code: u16, reason: &str) {
    loop {
        match client.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(f.code, CloseCode::from(code));
                assert_eq!(f.reason.as_str(), reason);
                return;
            }
            Ok(_) => continue,
            Err(e) => panic!("expected close {code}, got {e}"),
        }
    }
}

/// Reads every text message the client has, as JSON.
fn read_events(client: &mut WebSocket<End>) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    loop {
        match client.read() {
            Ok(Message::Text(t)) => out.push(serde_json::from_str(t.as_str()).unwrap()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return out;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A connection that answered `request` (404 from the test owner) at `t0`.
fn refused(h: &mut Owner, t0: Instant, request: &[u8]) -> (Conn<End>, End) {
    let (server, mut client) = duplex();
    let mut c = Conn::new(1, server, t0, 1.0);
    client.write_all(request).unwrap();
    h.io(&mut c, t0);
    (c, client)
}

mod closing;
mod deadlines;
mod deflate;
mod reading;
