//! State-machine tests with injected time over an in-memory duplex: every
//! phase deadline of SPEC §2 in microseconds of real time.

use super::*;
use crate::metrics::ServerMetrics;
use crate::settings::Profile;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;
use tungstenite::protocol::frame::coding::CloseCode;

type Buf = Rc<RefCell<VecDeque<u8>>>;

/// One end of an in-memory duplex; `WouldBlock` when empty.
struct End {
    rx: Buf,
    tx: Buf,
}

impl Read for End {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rx = self.rx.borrow_mut();
        if rx.is_empty() {
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
        self.tx.borrow_mut().extend(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn duplex() -> (End, End) {
    let a: Buf = Default::default();
    let b: Buf = Default::default();
    (
        End {
            rx: a.clone(),
            tx: b.clone(),
        },
        End { rx: b, tx: a },
    )
}

struct TestHost {
    cfg: ConnConfig,
    metrics: ServerMetrics,
}

impl Host for TestHost {
    fn config(&self) -> &ConnConfig {
        &self.cfg
    }
    fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }
    fn route(&self, _: Route, _: Instant) -> Response {
        http::text(200, "OK", "ok\n")
    }
    fn authenticate(&self, _: Option<&str>, _: Instant) -> Result<Option<String>, Response> {
        Ok(None)
    }
    fn admit(&self, _: &Session, _: Instant) -> Result<(), Response> {
        Ok(())
    }
    fn dispatch(&self, _: usize, _: &Arc<Session>, _: u64, _: Inbound, _: Arc<AtomicBool>) -> bool {
        false
    }
    fn unix_ms(&self, _: Instant) -> u64 {
        0
    }
}

fn host() -> TestHost {
    TestHost {
        cfg: ConnConfig {
            timeouts: Profile::Local.timeouts(),
            limits: Limits::default(),
            ws_path: "/ws".into(),
            app: App::Echo,
        },
        metrics: ServerMetrics::default(),
    }
}

const REQ: &str = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// An upgraded connection at `t0` and the client's WebSocket.
fn open(h: &TestHost, t0: Instant) -> (Conn<End>, WebSocket<End>) {
    let (server, mut client) = duplex();
    let mut c = Conn::new(0, 1, server, t0, 1.0);
    client.write_all(REQ.as_bytes()).unwrap();
    c.on_ready(true, false, t0, h);
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
    let h = host();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&h, t0);
    client.send(Message::text("hello")).unwrap();
    c.on_ready(true, false, t0, &h);
    assert_eq!(client.read().unwrap(), Message::text("hello"));
    assert_eq!(
        h.metrics
            .upgrades_total
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(c.holds_slot());
}

#[test]
fn connect_deadline_drops_a_silent_client() {
    let h = host();
    let t0 = Instant::now();
    let (server, _client) = duplex();
    let mut c = Conn::new(0, 1, server, t0, 1.0);
    assert_eq!(c.next_deadline(&h.cfg.timeouts), Some(t0 + secs(2.0)));
    c.on_timeout(t0 + secs(1.9), &h);
    assert_eq!(c.phase(), PhaseName::Http);
    c.on_timeout(t0 + secs(2.0), &h);
    assert!(c.is_done());
    assert_eq!(h.metrics.timeouts_of(TimeoutPhase::Connect), 1);
}

#[test]
fn handshake_deadline_answers_408() {
    let h = host();
    let t0 = Instant::now();
    let (server, mut client) = duplex();
    let mut c = Conn::new(0, 1, server, t0, 1.0);
    client.write_all(b"GET /ws HT").unwrap();
    c.on_ready(true, false, t0 + secs(0.1), &h);
    // A byte arrived: only the handshake deadline remains.
    assert_eq!(c.next_deadline(&h.cfg.timeouts), Some(t0 + secs(3.0)));
    c.on_timeout(t0 + secs(3.0), &h);
    assert!(c.is_done(), "408 written, then closed");
    let mut out = String::new();
    client.read_to_string(&mut out).ok();
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert_eq!(h.metrics.timeouts_of(TimeoutPhase::Handshake), 1);
}

#[test]
fn heartbeat_ping_then_pong_deadline_closes_1011() {
    let h = host();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&h, t0);
    let t = h.cfg.timeouts;
    assert_eq!(c.next_deadline(&t), Some(t0 + t.heartbeat_interval));
    let t1 = t0 + t.heartbeat_interval;
    c.on_timeout(t1, &h);
    // The client sees the Ping; it does not answer (its pong is never flushed).
    let mut raw: Vec<u8> = Vec::new();
    raw.extend(client.get_mut().rx.borrow().iter());
    assert_eq!(raw[0], 0x89, "a Ping frame was sent");
    assert_eq!(c.next_deadline(&t), Some(t1 + t.ping));
    c.on_timeout(t1 + t.ping, &h);
    assert_eq!(c.phase(), PhaseName::Closing);
    expect_close(&mut client, 1011, "keepalive ping timeout");
    assert_eq!(h.metrics.timeouts_of(TimeoutPhase::Ping), 1);
}

#[test]
fn any_inbound_frame_answers_the_ping_and_resets_heartbeat() {
    let h = host();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&h, t0);
    let t = h.cfg.timeouts;
    let t1 = t0 + t.heartbeat_interval;
    c.on_timeout(t1, &h);
    // The client reads the ping; tungstenite queues the pong; flush sends it.
    assert!(matches!(client.read(), Ok(Message::Ping(_))));
    client.flush().unwrap();
    let t2 = t1 + secs(0.5);
    c.on_ready(true, false, t2, &h);
    assert_eq!(c.next_deadline(&t), Some(t2 + t.heartbeat_interval));
    assert_eq!(h.metrics.timeouts_of(TimeoutPhase::Ping), 0);
}

#[test]
fn jitter_spreads_the_heartbeat() {
    let h = host();
    let t0 = Instant::now();
    let (server, _client) = duplex();
    let c = Conn::new(0, 1, server, t0, 1.05);
    let (mut c2, _) = open(&h, t0);
    drop(c);
    c2.jitter = 1.05;
    let t = h.cfg.timeouts;
    assert_eq!(
        c2.next_deadline(&t),
        Some(t0 + t.heartbeat_interval.mul_f64(1.05))
    );
    assert_eq!(Conn::new(0, 2, duplex().0, t0, 7.0).jitter, 1.1, "clamped");
}

#[test]
fn stale_connection_closes_1001_idle() {
    let mut h = host();
    // Keep the peer alive with pings but send no application message.
    h.cfg.timeouts.stale = secs(20.0);
    let t0 = Instant::now();
    let (mut c, mut client) = open(&h, t0);
    let mut now = t0;
    for _ in 0..4 {
        now += secs(4.0);
        client.send(Message::Ping(vec![].into())).unwrap();
        c.on_ready(true, false, now, &h);
        c.on_timeout(now, &h);
        assert_eq!(c.phase(), PhaseName::Open);
    }
    assert_eq!(c.next_deadline(&h.cfg.timeouts), Some(t0 + secs(20.0)));
    c.on_timeout(t0 + secs(20.0), &h);
    expect_close(&mut client, 1001, "idle");
    assert_eq!(h.metrics.timeouts_of(TimeoutPhase::Stale), 1);
}

#[test]
fn lifetime_closes_1001_max_lifetime() {
    let mut h = host();
    h.cfg.timeouts.connection = secs(10.0);
    h.cfg.timeouts.stale = secs(10.0);
    let t0 = Instant::now();
    let (mut c, mut client) = open(&h, t0);
    let mut now = t0;
    for _ in 0..4 {
        now += secs(2.4);
        client.send(Message::text("busy")).unwrap();
        c.on_ready(true, false, now, &h);
    }
    c.on_timeout(t0 + secs(10.0), &h);
    expect_close(&mut client, 1001, "max lifetime");
    assert_eq!(h.metrics.timeouts_of(TimeoutPhase::Lifetime), 1);
}

#[test]
fn silent_peer_closes_at_heartbeat_timeout_when_ping_is_long() {
    let mut h = host();
    // ping long enough that liveness (15 s) comes first.
    h.cfg.timeouts.ping = secs(4.9);
    h.cfg.timeouts.heartbeat_interval = secs(12.0);
    let t0 = Instant::now();
    let (mut c, mut client) = open(&h, t0);
    c.on_timeout(t0 + secs(12.0), &h); // ping sent
    assert_eq!(c.next_deadline(&h.cfg.timeouts), Some(t0 + secs(15.0)));
    c.on_timeout(t0 + secs(15.0), &h);
    expect_close(&mut client, 1001, "heartbeat timeout");
    assert_eq!(h.metrics.timeouts_of(TimeoutPhase::Heartbeat), 1);
}

#[test]
fn closing_deadline_drops_a_peer_that_never_answers() {
    let h = host();
    let t0 = Instant::now();
    let (mut c, _client) = open(&h, t0);
    c.shutdown(t0, &h);
    assert_eq!(c.phase(), PhaseName::Closing);
    assert_eq!(c.next_deadline(&h.cfg.timeouts), Some(t0 + secs(1.0)));
    c.on_timeout(t0 + secs(1.0), &h);
    assert!(c.is_done());
    assert_eq!(h.metrics.timeouts_of(TimeoutPhase::Close), 1);
}

#[test]
fn peer_close_completes_the_handshake() {
    let h = host();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&h, t0);
    client.close(None).unwrap();
    c.on_ready(true, false, t0, &h);
    assert!(c.is_done(), "server echoes the close and drops TCP");
    assert!(matches!(client.read(), Ok(Message::Close(_))));
}

#[test]
fn frames_sent_with_the_request_head_are_not_lost() {
    let h = host();
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
    let mut c = Conn::new(0, 1, server, t0, 1.0);
    c.on_ready(true, false, t0, &h);
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
    let h = host();
    let t0 = Instant::now();
    // After an HTTP response with Connection: close.
    let (server, mut client) = duplex();
    let mut c = Conn::new(0, 1, server, t0, 1.0);
    client.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
    c.on_ready(true, false, t0, &h);
    assert!(c.is_done());
    assert!(c.stream_mut().is_some(), "404 path");
    // After a connect timeout.
    let (server, _client) = duplex();
    let mut c = Conn::new(0, 2, server, t0, 1.0);
    c.on_timeout(t0 + secs(2.0), &h);
    assert!(
        c.is_done() && c.stream_mut().is_some(),
        "connect timeout path"
    );
    // After a WebSocket close handshake.
    let (mut c, mut client) = open(&h, t0);
    client.close(None).unwrap();
    c.on_ready(true, false, t0, &h);
    assert!(
        c.is_done() && c.stream_mut().is_some(),
        "close handshake path"
    );
    // After a close deadline.
    let (mut c, _client) = open(&h, t0);
    c.shutdown(t0, &h);
    c.on_timeout(t0 + secs(1.0), &h);
    assert!(
        c.is_done() && c.stream_mut().is_some(),
        "close deadline path"
    );
}

#[test]
fn a_head_trickled_byte_by_byte_still_upgrades_and_bad_lines_fail_early() {
    let h = host();
    let t0 = Instant::now();
    let (server, mut client) = duplex();
    let mut c = Conn::new(0, 1, server, t0, 1.0);
    for b in REQ.as_bytes() {
        client.write_all(&[*b]).unwrap();
        c.on_ready(true, false, t0, &h);
    }
    assert_eq!(c.phase(), PhaseName::Open);

    // A malformed request line is refused when that line ends, not at the
    // end of the head or at the handshake deadline.
    let (server, mut client) = duplex();
    let mut c = Conn::new(0, 2, server, t0, 1.0);
    client.write_all(b"\x01BAD / HTTP/1.1\r\n").unwrap();
    c.on_ready(true, false, t0, &h);
    assert!(c.is_done());
    let mut out = String::new();
    client.read_to_string(&mut out).ok();
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
}

fn compactions(h: &TestHost) -> u64 {
    h.metrics
        .buffer_compactions_total
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_burst_gives_its_buffers_back_and_the_connection_carries_on() {
    let h = host();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&h, t0);
    // Small traffic never swaps tungstenite.
    for i in 0..50 {
        client.send(Message::text(format!("small {i}"))).unwrap();
        c.on_ready(true, false, t0, &h);
        assert_eq!(client.read().unwrap(), Message::text(format!("small {i}")));
    }
    assert_eq!(compactions(&h), 0);
    let big = Message::binary(vec![7u8; 200_000]);
    client.send(big.clone()).unwrap();
    c.on_ready(true, false, t0, &h);
    assert_eq!(client.read().unwrap(), big);
    assert_eq!(compactions(&h), 1, "one burst, one swap");
    // The fresh tungstenite continues the same stream.
    client.send(Message::text("after")).unwrap();
    c.on_ready(true, false, t0, &h);
    assert_eq!(client.read().unwrap(), Message::text("after"));
    assert_eq!(compactions(&h), 1);
}

#[test]
fn no_swap_inside_a_fragmented_message_or_with_bytes_buffered() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let h = host();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&h, t0);
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
    c.on_ready(true, false, t0, &h);
    assert_eq!(client.read().unwrap(), Message::Pong(b"p".to_vec().into()));
    assert_eq!(compactions(&h), 0, "message unfinished");
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
    c.on_ready(true, false, t0, &h);
    assert_eq!(
        client.read().unwrap(),
        Message::text("a".repeat(100_010)),
        "reassembled across the Ping"
    );
    assert_eq!(compactions(&h), 0, "half a frame buffered");
    client.get_mut().write_all(&next[4..]).unwrap();
    c.on_ready(true, false, t0, &h);
    assert_eq!(client.read().unwrap(), Message::text("aaaaa"));
    assert_eq!(compactions(&h), 1, "now nothing is buffered");
}
