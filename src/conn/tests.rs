//! State-machine tests with injected time over an in-memory duplex: every
//! phase deadline of SPEC §2 in microseconds of real time.

use super::*;
use crate::http;
use crate::settings::Profile;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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
    /// does (upgrade `/ws`, 404 elsewhere) and echoes messages.
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

#[test]
fn upgrade_then_echo() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    client.send(Message::text("hello")).unwrap();
    h.io(&mut c, t0);
    assert_eq!(client.read().unwrap(), Message::text("hello"));
    let opened = h
        .log
        .iter()
        .filter(|e| matches!(e, Event::Opened { .. }))
        .count();
    assert_eq!(opened, 1);
}

#[test]
fn connect_deadline_drops_a_silent_client() {
    let mut h = owner();
    let t0 = Instant::now();
    let (server, _client) = duplex();
    let mut c = Conn::new(1, server, t0, 1.0);
    assert_eq!(h.due(&c), Some(t0 + secs(2.0)));
    h.timeout(&mut c, t0 + secs(1.9));
    assert_eq!(c.phase(), PhaseName::Head);
    h.timeout(&mut c, t0 + secs(2.0));
    assert!(c.is_done());
    assert_eq!(h.timeouts_of(TimeoutPhase::Connect), 1);
}

#[test]
fn handshake_deadline_answers_408() {
    let mut h = owner();
    let t0 = Instant::now();
    let (server, mut client) = duplex();
    let mut c = Conn::new(1, server, t0, 1.0);
    client.write_all(b"GET /ws HT").unwrap();
    h.io(&mut c, t0 + secs(0.1));
    // A byte arrived: only the handshake deadline remains.
    assert_eq!(h.due(&c), Some(t0 + secs(3.0)));
    h.timeout(&mut c, t0 + secs(3.0));
    assert_eq!(c.phase(), PhaseName::Linger, "408 written, then lingering");
    let mut out = String::new();
    client.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert_eq!(h.timeouts_of(TimeoutPhase::Handshake), 1);
}

#[test]
fn heartbeat_ping_then_pong_deadline_closes_1011() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let t = h.timeouts;
    assert_eq!(
        c.poll_timeout(&t, Duration::ZERO).map(|w| w.at),
        Some(t0 + t.heartbeat_interval)
    );
    let t1 = t0 + t.heartbeat_interval;
    h.timeout(&mut c, t1);
    // The client sees the Ping; it does not answer (its pong is never flushed).
    let mut raw: Vec<u8> = Vec::new();
    raw.extend(client.get_mut().rx.borrow().iter());
    assert_eq!(raw[0], 0x89, "a Ping frame was sent");
    assert_eq!(
        c.poll_timeout(&t, Duration::ZERO).map(|w| w.at),
        Some(t1 + t.ping)
    );
    h.timeout(&mut c, t1 + t.ping);
    assert_eq!(c.phase(), PhaseName::Closing);
    expect_close(&mut client, 1011, "keepalive ping timeout");
    assert_eq!(h.timeouts_of(TimeoutPhase::Ping), 1);
}

#[test]
fn any_inbound_frame_answers_the_ping_and_resets_heartbeat() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let t = h.timeouts;
    let t1 = t0 + t.heartbeat_interval;
    h.timeout(&mut c, t1);
    // The client reads the ping; tungstenite queues the pong; flush sends it.
    assert!(matches!(client.read(), Ok(Message::Ping(_))));
    client.flush().unwrap();
    let t2 = t1 + secs(0.5);
    h.io(&mut c, t2);
    assert_eq!(
        c.poll_timeout(&t, Duration::ZERO).map(|w| w.at),
        Some(t2 + t.heartbeat_interval)
    );
    assert_eq!(h.timeouts_of(TimeoutPhase::Ping), 0);
}

#[test]
fn jitter_spreads_the_heartbeat() {
    let mut h = owner();
    let t0 = Instant::now();
    let (server, _client) = duplex();
    let c = Conn::new(1, server, t0, 1.05);
    let (mut c2, _) = open(&mut h, t0);
    drop(c);
    c2.jitter = 1.05;
    let t = h.timeouts;
    assert_eq!(
        c2.poll_timeout(&t, Duration::ZERO).map(|w| w.at),
        Some(t0 + t.heartbeat_interval.mul_f64(1.05))
    );
    assert_eq!(Conn::new(2, duplex().0, t0, 7.0).jitter, 1.1, "clamped");
}

#[test]
fn stale_connection_closes_1001_idle() {
    let mut h = owner();
    // Keep the peer alive with pings but send no application message.
    h.timeouts.stale = secs(20.0);
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let mut now = t0;
    for _ in 0..4 {
        now += secs(4.0);
        client.send(Message::Ping(vec![].into())).unwrap();
        h.io(&mut c, now);
        h.timeout(&mut c, now);
        assert_eq!(c.phase(), PhaseName::Open);
    }
    assert_eq!(h.due(&c), Some(t0 + secs(20.0)));
    h.timeout(&mut c, t0 + secs(20.0));
    expect_close(&mut client, 1001, "idle");
    assert_eq!(h.timeouts_of(TimeoutPhase::Stale), 1);
}

#[test]
fn lifetime_closes_1001_max_lifetime() {
    let mut h = owner();
    h.timeouts.connection = secs(10.0);
    h.timeouts.stale = secs(10.0);
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let mut now = t0;
    for _ in 0..4 {
        now += secs(2.4);
        client.send(Message::text("busy")).unwrap();
        h.io(&mut c, now);
    }
    h.timeout(&mut c, t0 + secs(10.0));
    expect_close(&mut client, 1001, "max lifetime");
    assert_eq!(h.timeouts_of(TimeoutPhase::Lifetime), 1);
}

#[test]
fn silent_peer_closes_at_heartbeat_timeout_when_ping_is_long() {
    let mut h = owner();
    // ping long enough that liveness (15 s) comes first.
    h.timeouts.ping = secs(4.9);
    h.timeouts.heartbeat_interval = secs(12.0);
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    h.timeout(&mut c, t0 + secs(12.0)); // ping sent
    assert_eq!(h.due(&c), Some(t0 + secs(15.0)));
    h.timeout(&mut c, t0 + secs(15.0));
    expect_close(&mut client, 1001, "heartbeat timeout");
    assert_eq!(h.timeouts_of(TimeoutPhase::Heartbeat), 1);
}

#[test]
fn closing_deadline_drops_a_peer_that_never_answers() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, _client) = open(&mut h, t0);
    h.drive(&mut c, t0, |c, cx| c.shutdown(cx));
    assert_eq!(c.phase(), PhaseName::Closing);
    assert_eq!(h.due(&c), Some(t0 + secs(1.0)));
    h.timeout(&mut c, t0 + secs(1.0));
    assert!(c.is_done());
    assert_eq!(h.timeouts_of(TimeoutPhase::Close), 1);
}

#[test]
fn peer_close_completes_the_handshake() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    client.close(None).unwrap();
    h.io(&mut c, t0);
    assert!(c.is_done(), "server echoes the close and drops TCP");
    assert!(matches!(client.read(), Ok(Message::Close(_))));
}

/// The owner closes (a drain, backpressure) right after a message, while
/// the peer's own Close is already in our buffers: the closing handshake
/// reads it on and completes, rather than leaving it unread until the
/// close deadline (the poller reports no new readiness for bytes already
/// read from the socket).
#[test]
fn a_close_begun_with_input_buffered_reads_the_peers_close() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    client.write(Message::text("bye")).unwrap();
    client.close(None).unwrap();
    c.handle_io(true, false, &mut h.cx(t0));
    assert!(c.has_more_input(), "stopped at the message");
    h.events.clear();
    h.drive(&mut c, t0, |c, cx| {
        c.close(1001, "server shutting down", cx)
    });
    assert!(c.is_done(), "still {:?}", c.phase());
    assert_eq!(h.timeouts_of(TimeoutPhase::Close), 0);
    expect_close(&mut client, 1001, "server shutting down");
}

#[test]
fn frames_sent_with_the_request_head_are_not_lost() {
    let mut h = owner();
    let t0 = Instant::now();
    let (server, client_end) = duplex();
    // Build the masked frame with a client-role WebSocket writing to a scratch duplex.
    let (scratch_a, scratch_b) = duplex();
    let mut framer = WebSocket::from_raw_socket(scratch_a, Role::Client, None);
    framer.send(Message::text("early")).unwrap();
    let frame: Vec<u8> = scratch_b.rx.borrow().iter().copied().collect();
    let mut client_end = client_end;
    let mut bytes = REQ.as_bytes().to_vec();
    bytes.extend(frame);
    client_end.write_all(&bytes).unwrap();
    let mut c = Conn::new(1, server, t0, 1.0);
    h.io(&mut c, t0);
    let mut head = vec![0u8; 129];
    let n = client_end.read(&mut head).unwrap();
    let end = head[..n].windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let rest = head[end..n].to_vec();
    client_end.rx.borrow_mut().extend(&rest);
    let mut client = WebSocket::from_raw_socket(client_end, Role::Client, None);
    assert_eq!(client.read().unwrap(), Message::text("early"));
}

#[test]
fn every_finished_connection_hands_its_stream_back_for_deregistration() {
    let mut h = owner();
    let t0 = Instant::now();
    // After an HTTP response with Connection: close.
    let (server, mut client) = duplex();
    let mut c = Conn::new(1, server, t0, 1.0);
    client.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
    h.io(&mut c, t0);
    client.shut();
    h.io(&mut c, t0);
    assert!(c.is_done());
    assert!(c.stream_mut().is_some(), "404 path");
    // After a lingering close cut at its deadline.
    let (server, mut client) = duplex();
    let mut c = Conn::new(3, server, t0, 1.0);
    client.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
    h.io(&mut c, t0);
    h.timeout(&mut c, t0 + secs(1.0));
    assert!(
        c.is_done() && c.stream_mut().is_some(),
        "linger deadline path"
    );
    // After a connect timeout.
    let (server, _client) = duplex();
    let mut c = Conn::new(2, server, t0, 1.0);
    h.timeout(&mut c, t0 + secs(2.0));
    assert!(
        c.is_done() && c.stream_mut().is_some(),
        "connect timeout path"
    );
    // After a WebSocket close handshake.
    let (mut c, mut client) = open(&mut h, t0);
    client.close(None).unwrap();
    h.io(&mut c, t0);
    assert!(
        c.is_done() && c.stream_mut().is_some(),
        "close handshake path"
    );
    // After a close deadline.
    let (mut c, _client) = open(&mut h, t0);
    h.drive(&mut c, t0, |c, cx| c.shutdown(cx));
    h.timeout(&mut c, t0 + secs(1.0));
    assert!(
        c.is_done() && c.stream_mut().is_some(),
        "close deadline path"
    );
}

#[test]
fn a_head_trickled_byte_by_byte_still_upgrades_and_bad_lines_fail_early() {
    let mut h = owner();
    let t0 = Instant::now();
    let (server, mut client) = duplex();
    let mut c = Conn::new(1, server, t0, 1.0);
    for b in REQ.as_bytes() {
        client.write_all(&[*b]).unwrap();
        h.io(&mut c, t0);
    }
    assert_eq!(c.phase(), PhaseName::Open);

    // A malformed request line is refused when that line ends, not at the
    // end of the head or at the handshake deadline.
    let (server, mut client) = duplex();
    let mut c = Conn::new(2, server, t0, 1.0);
    client.write_all(b"\x01BAD / HTTP/1.1\r\n").unwrap();
    h.io(&mut c, t0);
    assert_eq!(c.phase(), PhaseName::Linger);
    let mut out = String::new();
    client.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
}

#[test]
fn a_burst_gives_its_buffers_back_and_the_connection_carries_on() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    // Small traffic never swaps tungstenite.
    for i in 0..50 {
        client.send(Message::text(format!("small {i}"))).unwrap();
        h.io(&mut c, t0);
        assert_eq!(client.read().unwrap(), Message::text(format!("small {i}")));
    }
    assert_eq!(h.count(&Event::Compacted), 0);
    let big = Message::binary(vec![7u8; 200_000]);
    client.send(big.clone()).unwrap();
    h.io(&mut c, t0);
    assert_eq!(client.read().unwrap(), big);
    assert_eq!(h.count(&Event::Compacted), 1, "one burst, one swap");
    // The fresh tungstenite continues the same stream.
    client.send(Message::text("after")).unwrap();
    h.io(&mut c, t0);
    assert_eq!(client.read().unwrap(), Message::text("after"));
    assert_eq!(h.count(&Event::Compacted), 1);
}

#[test]
fn no_swap_inside_a_fragmented_message_or_with_bytes_buffered() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let part = |fin: bool, op: Data, n: usize| {
        let mut f = Frame::message(vec![b'a'; n], OpCode::Data(op), fin);
        f.header_mut().mask = Some([1, 2, 3, 4]);
        f
    };
    // A big first fragment, then a Ping: the message is unfinished, so
    // swapping now would lose it.
    client
        .write(Message::Frame(part(false, Data::Text, 100_000)))
        .unwrap();
    client.write(Message::Ping(b"p".to_vec().into())).unwrap();
    client.flush().unwrap();
    h.io(&mut c, t0);
    assert_eq!(client.read().unwrap(), Message::Pong(b"p".to_vec().into()));
    assert_eq!(h.count(&Event::Compacted), 0, "message unfinished");
    // The final fragment, followed by half of the next frame's bytes.
    client
        .write(Message::Frame(part(true, Data::Continue, 10)))
        .unwrap();
    client.flush().unwrap();
    let next = {
        let mut v = Vec::new();
        part(true, Data::Text, 5).format(&mut v).unwrap();
        v
    };
    client.get_mut().write_all(&next[..4]).unwrap();
    h.io(&mut c, t0);
    assert_eq!(
        client.read().unwrap(),
        Message::text("a".repeat(100_010)),
        "reassembled across the Ping"
    );
    assert_eq!(h.count(&Event::Compacted), 0, "half a frame buffered");
    client.get_mut().write_all(&next[4..]).unwrap();
    h.io(&mut c, t0);
    assert_eq!(client.read().unwrap(), Message::text("aaaaa"));
    assert_eq!(h.count(&Event::Compacted), 1, "now nothing is buffered");
}

/// Runs the real `agent_chat` handler for one message on this thread and
/// returns its mail (events without `ts`, then Done).
fn agent_run(input: &str, run: u64) -> Vec<crate::app::MailKind> {
    use crate::agent::AgentChat;
    use crate::app::{Handler, Inbound, Mailbox, Outbox, Session};
    use crate::reactor::{BackendKind, CapStrategy, Reactor};
    let r = Reactor::new(BackendKind::Mio, CapStrategy::Spin).unwrap();
    let mailbox = Arc::new(Mailbox::new(r.waker()));
    let out = Outbox::new(
        run,
        format!("r{run}"),
        Arc::new(AtomicBool::new(false)),
        mailbox.clone(),
    );
    let agent = AgentChat {
        pacing: Duration::ZERO,
    };
    agent.message(&Session::default(), Inbound::Text(input.into()), &out);
    let mut mail: Vec<_> = mailbox.take().into_iter().map(|m| m.kind).collect();
    mail.push(crate::app::MailKind::Done);
    mail
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

#[test]
fn a_full_agent_chat_run_streams_every_event_in_order() {
    use crate::app::{MailKind, stamp};
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let msg = r#"{"type":"user_message","text":"hello deadline world","thread_id":"t"}"#;
    client.send(Message::text(msg)).unwrap();
    // The owner starts run 1 for the message instead of echoing it.
    c.handle_io(true, false, &mut h.cx(t0));
    let events = std::mem::take(&mut h.events);
    assert!(matches!(&events[..], [Event::Message(Message::Text(t))] if t.as_str() == msg));
    assert!(c.follow(1, 0));
    assert_eq!(c.runs_in_flight(), 1);
    // Its events arrive over about 1 s of injected time, each stamped by
    // the owner.
    let mut now = t0;
    for mail in agent_run(msg, 1) {
        now += Duration::from_millis(100);
        match mail {
            MailKind::Event { seq, mut text } => {
                stamp(&mut text, 1_000 + seq);
                c.run_event(1, seq, text, &mut h.cx(now));
                c.flush(&mut h.cx(now));
            }
            MailKind::Done => assert!(c.run_finished(1, &mut h.cx(now))),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(c.runs_in_flight(), 0);
    let got = read_events(&mut client);
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"agent_started"));
    assert_eq!(
        &types[types.len() - 3..],
        ["tool_executing", "tool_completed", "agent_completed"]
    );
    assert!(
        types[1..types.len() - 3]
            .iter()
            .all(|t| *t == "agent_thinking")
    );
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=got.len() as u64).collect::<Vec<_>>());
    assert!(
        got.iter()
            .all(|e| e["ts"].as_u64() == Some(1_000 + e["seq"].as_u64().unwrap()))
    );
    assert_eq!(c.phase(), PhaseName::Open);
}

#[test]
fn a_followed_run_is_forwarded_in_order_and_once_each() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let ev = |seq: u64| format!(r#"{{"type":"agent_thinking","run_id":"r","seq":{seq}}}"#);
    // A resume from after_seq 2: what the client has is not sent again,
    // a repeat or a step back is dropped, the run's end stops the rest.
    assert!(c.follow(7, 2));
    for seq in [1, 2, 3, 3, 4, 2, 5] {
        c.run_event(7, seq, ev(seq), &mut h.cx(t0));
    }
    // Events of a run not followed here go nowhere.
    c.run_event(8, 1, ev(1), &mut h.cx(t0));
    assert!(c.run_finished(7, &mut h.cx(t0)));
    assert!(!c.run_finished(7, &mut h.cx(t0)), "only once");
    c.run_event(7, 6, ev(6), &mut h.cx(t0));
    c.flush(&mut h.cx(t0));
    let seqs: Vec<u64> = read_events(&mut client)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert_eq!(c.phase(), PhaseName::Open, "the connection stays open");
}

#[test]
fn only_a_close_the_client_starts_is_reported_as_peer_closed() {
    let mut h = owner();
    let t0 = Instant::now();
    // The client's own Close: reported, and nothing more goes out.
    let (mut c, mut client) = open(&mut h, t0);
    c.follow(1, 0);
    client.close(None).unwrap();
    h.io(&mut c, t0);
    assert_eq!(h.count(&Event::PeerClosed), 1);
    assert_ne!(c.phase(), PhaseName::Open, "closing or done");
    c.run_event(1, 1, r#"{"late":true}"#, &mut h.cx(t0));
    c.flush(&mut h.cx(t0));
    assert!(matches!(client.read(), Ok(Message::Close(_))));
    assert!(read_events(&mut client).is_empty());
    // The client answering our Close: not reported (the server ended it).
    let (mut c, mut client) = open(&mut h, t0);
    h.drive(&mut c, t0, |c, cx| c.shutdown(cx));
    expect_close(&mut client, 1001, "server shutting down");
    let _ = client.flush();
    h.io(&mut c, t0);
    assert_eq!(h.count(&Event::PeerClosed), 1, "still the first one only");
}

#[test]
fn a_drain_waits_for_runs_in_flight_then_closes_1001() {
    let mut h = owner();
    let t0 = Instant::now();
    // Two connections with a run each, and one without.
    let (mut a, mut client_a) = open(&mut h, t0);
    let (mut b, mut client_b) = open(&mut h, t0);
    let (mut idle, mut client_idle) = open(&mut h, t0);
    a.follow(1, 0);
    b.follow(1, 0);
    for c in [&mut a, &mut b, &mut idle] {
        h.drive(c, t0, |c, cx| c.shutdown(cx));
    }
    // No runs: closed at once.
    assert_eq!(idle.phase(), PhaseName::Closing);
    expect_close(&mut client_idle, 1001, "server shutting down");
    // Runs in flight: the Close waits, for at most half the close deadline.
    assert_eq!(a.phase(), PhaseName::Open);
    let half = t0 + h.timeouts.close / 2;
    assert_eq!(h.due(&a), Some(half));
    // A finishes its run in time: its last event, then the Close.
    let t1 = t0 + Duration::from_millis(100);
    a.run_event(1, 1, r#"{"type":"agent_completed","seq":1}"#, &mut h.cx(t1));
    h.drive(&mut a, t1, |c, cx| {
        c.run_finished(1, cx);
    });
    assert!(
        matches!(client_a.read(), Ok(Message::Text(_))),
        "the run's last event went out before the Close"
    );
    expect_close(&mut client_a, 1001, "server shutting down");
    // B does not: at half the close deadline it is closed.
    h.timeout(&mut b, half);
    expect_close(&mut client_b, 1001, "server shutting down");
    assert_eq!(b.phase(), PhaseName::Closing);
    // The closing handshake then has the rest of the close deadline.
    assert_eq!(h.due(&b), Some(half + h.timeouts.close));
}

#[test]
fn answers_go_out_before_the_close_that_a_later_frame_brings() {
    let mut h = owner();
    let t0 = Instant::now();
    // A message, then a frame with a reserved bit set, in one read.
    let (mut c, mut client) = open(&mut h, t0);
    client.write(Message::text("first")).unwrap();
    client.flush().unwrap();
    client
        .get_mut()
        .tx
        .borrow_mut()
        .extend([0xC1, 0x80, 0, 0, 0, 0]);
    h.io(&mut c, t0);
    assert_eq!(client.read().unwrap(), Message::text("first"), "echo first");
    expect_close(&mut client, 1002, "protocol error");
    // Failing the connection: no frame is read after our Close; the write
    // side is shut and TCP ends by a lingering close, not by a reset.
    assert_eq!(c.phase(), PhaseName::Linger);
    assert!(client.get_ref().rx_shut.get(), "EOF follows the Close");
    // A message, then the peer's Close, in one read.
    let (mut c, mut client) = open(&mut h, t0);
    client.write(Message::text("last words")).unwrap();
    client.close(None).unwrap();
    h.io(&mut c, t0);
    assert_eq!(client.read().unwrap(), Message::text("last words"));
    assert!(matches!(client.read(), Ok(Message::Close(_))));
}

#[test]
fn heartbeats_are_soft_and_pongs_drains_and_closes_are_hard() {
    let mut h = owner();
    let t0 = Instant::now();
    let slack = Duration::from_millis(50);
    let (mut c, _client) = open(&mut h, t0);
    let t = h.timeouts;
    // Idle and open: the heartbeat, a soft deadline.
    assert_eq!(
        c.poll_timeout(&t, slack),
        Some(Wake {
            at: t0 + t.heartbeat_interval,
            soft: true
        })
    );
    // A drain due within the slack after the heartbeat: reported hard, and
    // the heartbeat is handled with it.
    let mut d = owner();
    d.timeouts.close = (t.heartbeat_interval + Duration::from_millis(20)) * 2;
    let (mut busy, _client_busy) = open(&mut d, t0);
    busy.follow(1, 0);
    d.drive(&mut busy, t0, |c, cx| c.shutdown(cx));
    let drain = t0 + d.timeouts.close / 2;
    assert_eq!(
        busy.poll_timeout(&t, slack),
        Some(Wake {
            at: drain,
            soft: false
        })
    );
    // With no slack the heartbeat comes first, still soft.
    assert_eq!(
        busy.poll_timeout(&t, Duration::ZERO),
        Some(Wake {
            at: t0 + t.heartbeat_interval,
            soft: true
        })
    );
    // The ping is sent: its pong deadline is hard.
    let t1 = t0 + t.heartbeat_interval + Duration::from_millis(30);
    h.timeout(&mut c, t1);
    assert_eq!(
        c.poll_timeout(&t, slack),
        Some(Wake {
            at: t1 + t.ping,
            soft: false
        })
    );
    // Closing: hard.
    h.drive(&mut c, t1, |c, cx| c.shutdown(cx));
    assert_eq!(
        c.poll_timeout(&t, slack),
        Some(Wake {
            at: t1 + t.close,
            soft: false
        })
    );
}

#[test]
fn a_soft_deadline_handled_late_by_the_slack_acts_as_on_time() {
    // The ping goes out at the end of the window, the pong deadline
    // counts from there, and the stale close is still 1001 "idle".
    let mut h = owner();
    let t0 = Instant::now();
    let slack = Duration::from_millis(50);
    let (mut c, mut client) = open(&mut h, t0);
    let t = h.timeouts;
    let late = t0 + t.heartbeat_interval + slack;
    h.timeout(&mut c, late);
    assert!(matches!(client.read(), Ok(Message::Ping(_))));
    assert_eq!(c.poll_timeout(&t, slack).map(|w| w.at), Some(late + t.ping));
}

/// A transport that counts the reads that reach it.
struct Counting {
    end: End,
    reads: usize,
    drains: bool,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        self.end.read(buf)
    }
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.end.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Counting {
    fn received(&self) -> u64 {
        0
    }
    fn short_read_drains(&self) -> bool {
        self.drains
    }
}

#[test]
fn the_socket_is_read_in_large_pieces_and_the_spill_is_given_back() {
    for drains in [false, true] {
        let (mut peer, end) = duplex();
        let sent: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).unwrap();
        let mut io = Io::new(Counting {
            end,
            reads: 0,
            drains,
        });
        // tungstenite asks for its read buffer's size at a time.
        let mut buf = [0u8; 128];
        let mut got = Vec::new();
        loop {
            match io.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, sent, "every byte, in order");
        // 64 KiB + 64 KiB + the rest; the read that only says WouldBlock
        // is saved where a short read proves the socket drained.
        let expected = if drains { 3 } else { 4 };
        assert_eq!(io.inner.reads, expected, "drains={drains}");
        assert_eq!(io.spill_capacity(), 0, "no memory held between reads");
        assert_eq!(io.bytes_in, sent.len() as u64);
    }
}

#[test]
fn pipelined_messages_behind_a_large_one_all_arrive_in_order() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let big = Message::binary((0..100_000u32).map(|i| i as u8).collect::<Vec<_>>());
    client.write(big.clone()).unwrap();
    for i in 0..300 {
        client.write(Message::text(format!("m{i}"))).unwrap();
    }
    client.flush().unwrap();
    h.io(&mut c, t0);
    assert_eq!(client.read().unwrap(), big);
    for i in 0..300 {
        assert_eq!(client.read().unwrap(), Message::text(format!("m{i}")));
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

fn lingered(h: &Owner) -> Vec<(LingerEnd, u64)> {
    h.log
        .iter()
        .filter_map(|e| match e {
            Event::Lingered { end, discarded } => Some((*end, *discarded)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_refusal_shuts_the_write_side_and_discards_until_the_peer_closes() {
    let mut h = owner();
    let t0 = Instant::now();
    // A pipelined second request behind the refused one.
    let second = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut req = b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    req.extend_from_slice(second);
    let (mut c, mut client) = refused(&mut h, t0, &req);
    assert_eq!(c.phase(), PhaseName::Linger);
    assert_eq!(c.interest(), Interest::READABLE);
    // The response, then EOF: the write side was shut down after it.
    let mut out = String::new();
    client.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "one answer: {out}");
    // The deadline is the response's close deadline; it is hard.
    let t = h.timeouts;
    assert_eq!(
        c.poll_timeout(&t, secs(0.05)),
        Some(Wake {
            at: t0 + t.close,
            soft: false
        })
    );
    // What the peer still sends is read and thrown away.
    client.write_all(&[b'x'; 5000]).unwrap();
    h.io(&mut c, t0 + secs(0.1));
    assert_eq!(c.phase(), PhaseName::Linger);
    assert!(client.tx.borrow().is_empty(), "all of it was read");
    client.shut();
    h.io(&mut c, t0 + secs(0.2));
    assert!(c.is_done());
    // The pipelined request was read with the head (it is not counted:
    // only what arrives in the linger phase is).
    assert_eq!(lingered(&h), [(LingerEnd::PeerClosed, 5000)]);
    assert_eq!(h.timeouts_of(TimeoutPhase::Linger), 0);
}

#[test]
fn a_peer_that_never_closes_is_dropped_at_the_close_deadline() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, _client) = refused(&mut h, t0, b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    let close = h.timeouts.close;
    h.timeout(&mut c, t0 + close - secs(0.001));
    assert_eq!(c.phase(), PhaseName::Linger, "not before its deadline");
    h.timeout(&mut c, t0 + close);
    assert!(c.is_done());
    assert_eq!(h.timeouts_of(TimeoutPhase::Linger), 1);
    assert_eq!(lingered(&h), [(LingerEnd::Deadline, 0)]);
}

#[test]
fn a_peer_that_keeps_sending_is_dropped_past_the_byte_cap() {
    let mut h = owner();
    h.limits.linger_bytes = 1000;
    let t0 = Instant::now();
    let (mut c, mut client) = refused(&mut h, t0, b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    client.write_all(&[b'x'; 1000]).unwrap();
    h.io(&mut c, t0);
    assert_eq!(c.phase(), PhaseName::Linger, "the cap itself is allowed");
    client.write_all(b"y").unwrap();
    h.io(&mut c, t0);
    assert!(c.is_done());
    assert_eq!(lingered(&h), [(LingerEnd::ByteCap, 1001)]);
}

#[test]
fn the_write_side_is_shut_only_once_the_transport_has_sent_everything() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut server, mut client) = duplex();
    server.close_blocks = 2;
    let mut c = Conn::new(1, server, t0, 1.0);
    client
        .write_all(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    h.io(&mut c, t0);
    assert_eq!(c.phase(), PhaseName::Linger);
    // Records wait for the socket: write readiness is wanted, no EOF yet.
    assert_eq!(c.interest(), Interest::BOTH);
    let mut out = Vec::new();
    assert!(client.read_to_end(&mut out).is_err(), "WouldBlock, not EOF");
    h.drive(&mut c, t0, |c, cx| c.handle_io(false, true, cx));
    assert_eq!(c.interest(), Interest::BOTH, "still blocked once");
    h.drive(&mut c, t0, |c, cx| c.handle_io(false, true, cx));
    assert_eq!(c.interest(), Interest::READABLE);
    client.read_to_end(&mut out).unwrap();
    assert!(out.starts_with(b"HTTP/1.1 404 "));
    // The peer closing while the write side waits also ends it.
    client.shut();
    h.io(&mut c, t0);
    assert!(c.is_done());
}

#[test]
fn a_head_request_gets_the_head_of_the_answer_only() {
    let mut h = owner();
    let t0 = Instant::now();
    let (_c, mut client) = refused(&mut h, t0, b"HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut out = String::new();
    client.read_to_string(&mut out).unwrap();
    // The test owner answers 404 with the body "no\n".
    assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
    assert!(out.contains("Content-Length: 3\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "no body: {out:?}");
}

#[test]
fn a_ping_flood_whose_pongs_are_not_read_is_closed_1008() {
    let mut h = owner();
    h.limits.max_outbound = 4096;
    let t0 = Instant::now();
    let ping = || Message::Ping(vec![b'p'; 125].into());
    // A peer that reads: 100 Pongs (12.7 KB, over the limit) go out.
    let (mut c, mut client) = open(&mut h, t0);
    for _ in 0..100 {
        client.write(ping()).unwrap();
    }
    client.flush().unwrap();
    // One call reads a batch of them and hands the connection back, so a
    // flood cannot pin the reactor (the owner's read budget counts it).
    c.handle_io(true, false, &mut h.cx(t0));
    assert!(c.has_more_input(), "stopped after a batch");
    h.io(&mut c, t0);
    assert!(!c.has_more_input());
    assert_eq!(c.phase(), PhaseName::Open);
    let mut pongs = 0;
    while let Ok(m) = client.read() {
        assert!(matches!(m, Message::Pong(_)), "{m:?}");
        pongs += 1;
    }
    assert!(pongs >= 1, "answered");
    // A peer whose window is full after 2 KiB and that never reads.
    let (mut c, mut client) = open(&mut h, t0);
    c.stream_mut().unwrap().tx_limit = 2048;
    for _ in 0..100 {
        client.write(ping()).unwrap();
    }
    client.flush().unwrap();
    h.io(&mut c, t0);
    assert_eq!(c.phase(), PhaseName::Closing);
    assert_eq!(h.count(&Event::CloseSent(1008)), 1);
    // Nothing piled up: what the socket took, and tungstenite's bounded buffer.
    assert!(client.get_ref().rx.borrow().len() <= 2048);
    // Once the peer reads, the Close arrives after the Pongs.
    c.stream_mut().unwrap().tx_limit = usize::MAX;
    h.drive(&mut c, t0, |c, cx| c.handle_io(false, true, cx));
    expect_close(&mut client, 1008, "backpressure");
}

/// A transport whose writes block while `choked` is set.
struct Choked {
    end: End,
    choked: Rc<std::cell::Cell<bool>>,
}

impl Read for Choked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.end.read(buf)
    }
}

impl Write for Choked {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.choked.get() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.end.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Choked {
    fn received(&self) -> u64 {
        0
    }
    fn short_read_drains(&self) -> bool {
        false
    }
}

/// Found by the `conn` fuzz target: after a peer fault (here a frame over
/// `max_frame`: 1009) whose Close could not be flushed at once, more bytes
/// from the peer made the connection read through tungstenite again, which
/// after its error reads into an empty buffer: taken as the peer's EOF,
/// the connection was dropped with the 1009 never sent (and a debug build
/// of tungstenite panicked on its own assertion).
#[test]
fn a_peer_fault_close_waits_for_writable_and_reads_nothing_more() {
    let mut h = owner();
    h.limits.max_frame = 1000;
    let t0 = Instant::now();
    let (server, mut client) = duplex();
    let choked = Rc::new(std::cell::Cell::new(false));
    let mut c = Conn::new(
        1,
        Choked {
            end: server,
            choked: choked.clone(),
        },
        t0,
        1.0,
    );
    client.write_all(REQ.as_bytes()).unwrap();
    h.io(&mut c, t0);
    assert_eq!(c.phase(), PhaseName::Open);
    let mut head = vec![0u8; 4096];
    let n = client.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101 "));
    // A masked binary frame announcing 2000 bytes, over the limit; the
    // socket takes no bytes just now.
    choked.set(true);
    client
        .write_all(&[0x82, 0x80 | 126, 0x07, 0xD0, 1, 2, 3, 4])
        .unwrap();
    client.write_all(&[0u8; 100]).unwrap();
    h.io(&mut c, t0);
    assert_eq!(h.count(&Event::CloseSent(1009)), 1);
    assert_eq!(c.phase(), PhaseName::Closing);
    assert!(
        !c.interest().readable && c.interest().writable,
        "failing the connection: wait to write, read nothing"
    );
    // More of the peer's bytes arrive (a level-triggered poller may still
    // report them): nothing is read, the Close still waits.
    client.write_all(&[0u8; 500]).unwrap();
    h.io(&mut c, t0);
    assert_eq!(
        c.phase(),
        PhaseName::Closing,
        "dropped before the 1009 went out"
    );
    // Writable: the Close goes out, then the lingering close ends TCP.
    choked.set(false);
    h.drive(&mut c, t0, |c, cx| c.handle_io(false, true, cx));
    assert_eq!(c.phase(), PhaseName::Linger);
    let mut ws = WebSocket::from_raw_socket(client, Role::Client, None);
    expect_close(&mut ws, 1009, "message too big");
}

/// Found by the `conn` fuzz target (with a 1-byte read buffer): a frame
/// over `max_frame` right behind a message, in one burst, with the socket
/// not writable. The read loop went on after the 1009 and read through
/// tungstenite's refused frame: a debug build panicked on tungstenite's
/// own assertion, a release build lost the echo and the Close.
#[test]
fn a_peer_fault_found_mid_burst_stops_the_reading_at_once() {
    let mut h = owner();
    h.limits.read_buffer = 1;
    h.limits.max_frame = 1024;
    let t0 = Instant::now();
    let (server, mut client) = duplex();
    let choked = Rc::new(std::cell::Cell::new(false));
    let mut c = Conn::new(
        1,
        Choked {
            end: server,
            choked: choked.clone(),
        },
        t0,
        1.0,
    );
    client.write_all(REQ.as_bytes()).unwrap();
    h.io(&mut c, t0);
    let mut head = vec![0u8; 4096];
    let n = client.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101 "));
    choked.set(true);
    // "vvvvv"; the first 9 bytes of a fragmented text; a Pong (with RSV1)
    // announcing 65535 bytes, and some of them.
    let mut bytes = vec![129, 133, 0, 7, 3, 39, 118, 113, 117, 81, 118];
    bytes.extend([1, 137, 2, 1, 128, 1, 96, 99, 226, 99, 96, 99, 226, 99, 96]);
    bytes.extend([218, 254, 255, 255, 94, 94, 94, 94]);
    bytes.extend([47u8; 600]);
    client.write_all(&bytes).unwrap();
    h.io(&mut c, t0);
    assert_eq!(c.phase(), PhaseName::Closing);
    assert_eq!(h.count(&Event::CloseSent(1009)), 1);
    choked.set(false);
    h.drive(&mut c, t0, |c, cx| c.handle_io(false, true, cx));
    assert_eq!(c.phase(), PhaseName::Linger);
    let mut ws = WebSocket::from_raw_socket(client, Role::Client, None);
    assert_eq!(ws.read().unwrap(), Message::text("vvvvv"), "the echo first");
    expect_close(&mut ws, 1009, "message too big");
}

mod deflate;
