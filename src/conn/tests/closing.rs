//! Closing: the peer's Close and ours, the drain gate, failing the
//! connection after a peer fault, and the lingering close after a refusal.

use super::*;

#[test]
fn closing_deadline_drops_a_peer_that_never_answers() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, _client) = open(&mut h, t0);
    h.drive(&mut c, t0, |c, cx| c.shutdown(false, cx));
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
fn only_a_close_the_client_starts_is_reported_as_peer_closed() {
    let mut h = owner();
    let t0 = Instant::now();
    // The client's own Close: reported, and nothing more goes out.
    let (mut c, mut client) = open(&mut h, t0);
    client.close(None).unwrap();
    h.io(&mut c, t0);
    assert_eq!(h.count(&Event::PeerClosed), 1);
    assert_ne!(c.phase(), PhaseName::Open, "closing or done");
    c.send(Message::text(r#"{"late":true}"#), &mut h.cx(t0));
    c.flush(&mut h.cx(t0));
    assert!(matches!(client.read(), Ok(Message::Close(_))));
    assert!(read_events(&mut client).is_empty());
    // The client answering our Close: not reported (the server ended it).
    let (mut c, mut client) = open(&mut h, t0);
    h.drive(&mut c, t0, |c, cx| c.shutdown(false, cx));
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
    // Runs that end while nothing drains change nothing.
    h.drive(&mut a, t0, |c, cx| c.runs_settled(cx));
    assert_eq!(a.phase(), PhaseName::Open);
    for (c, busy) in [(&mut a, true), (&mut b, true), (&mut idle, false)] {
        h.drive(c, t0, |c, cx| c.shutdown(busy, cx));
    }
    // No runs: closed at once.
    assert_eq!(idle.phase(), PhaseName::Closing);
    expect_close(&mut client_idle, 1001, "server shutting down");
    // Runs in flight: the Close waits, for at most half the close deadline.
    assert_eq!(a.phase(), PhaseName::Open);
    let half = t0 + h.timeouts.close / 2;
    assert_eq!(h.due(&a), Some(half));
    // A finishes its run in time: its last event, then the Close when
    // the owner says its runs are over.
    let t1 = t0 + Duration::from_millis(100);
    h.drive(&mut a, t1, |c, cx| {
        c.send(Message::text(r#"{"type":"agent_completed","seq":1}"#), cx);
        c.runs_settled(cx);
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
    h.drive(&mut c, t0, |c, cx| c.shutdown(false, cx));
    h.timeout(&mut c, t0 + secs(1.0));
    assert!(
        c.is_done() && c.stream_mut().is_some(),
        "close deadline path"
    );
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
