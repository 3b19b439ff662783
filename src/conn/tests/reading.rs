//! Reading and writing: frames that come with the head, trickled heads,
//! buffers a burst grew given back, large reads, pipelining, HEAD, and a
//! ping flood.

use super::*;

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
