//! permessage-deflate on a connection, over the in-memory duplex: the
//! offer and the answer, compressed messages both ways (the client side is
//! the library's own `deflate::client::DeflateStream` under a client-role
//! tungstenite), and every refusal with its close code.

use super::*;
use crate::deflate::client::DeflateStream;
use crate::deflate::codec;

const OFFER: &str = "permessage-deflate; client_max_window_bits";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fn request(extra: &str) -> String {
    if extra.is_empty() {
        return REQ.to_string();
    }
    REQ.replace("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n"))
}

/// Sends `req` (plus `early` bytes right behind it); returns the
/// connection, the 101's head, and the client end (nothing read past the
/// head).
fn upgrade(h: &mut Owner, t0: Instant, req: &str, early: &[u8]) -> (Conn<End>, String, End) {
    let (server, mut client) = duplex();
    let mut c = Conn::new(1, server, t0, 1.0);
    let mut bytes = req.as_bytes().to_vec();
    bytes.extend_from_slice(early);
    client.write_all(&bytes).unwrap();
    h.io(&mut c, t0);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        client.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    (c, String::from_utf8(head).unwrap(), client)
}

/// The `Sec-WebSocket-Extensions` answer in a response head.
fn answer(head: &str) -> Option<&str> {
    head.lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
}

/// A client that negotiated the extension: the library's client stream.
fn deflate_client(head: &str, end: End) -> WebSocket<DeflateStream<End>> {
    let mut s = DeflateStream::new(end);
    let values: Vec<&str> = answer(head).into_iter().collect();
    s.accept(&values).unwrap();
    WebSocket::from_raw_socket(s, Role::Client, None)
}

/// A masked client frame with this first byte and payload.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![b0];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=65535 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x11, 0x22, 0x33, 0x44];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn json(n: usize) -> String {
    let mut s = String::from("{\"type\":\"agent_thinking\",\"run_id\":\"r1\",\"deltas\":[");
    while s.len() < n {
        s.push_str("\"tok\",");
    }
    s.truncate(n);
    s
}

/// Reads until the server's Close, returning every message before it.
fn read_to_close<S: Read + Write>(
    ws: &mut WebSocket<S>,
    mut inflate: impl FnMut(&mut WebSocket<S>, Message) -> Message,
) -> (Vec<Message>, Option<(u16, String)>) {
    let mut got = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => {
                return (got, f.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Ok(m) => {
                let m = inflate(ws, m);
                got.push(m);
            }
            Err(_) => return (got, None),
        }
    }
}

#[test]
fn an_offer_is_answered_and_messages_go_compressed_both_ways() {
    let mut h = owner();
    h.limits.deflate.threshold = 64;
    let t0 = Instant::now();
    let (mut c, head, end) = upgrade(
        &mut h,
        t0,
        &request(&format!("Sec-WebSocket-Extensions: {OFFER}")),
        b"",
    );
    assert_eq!(answer(&head), Some(ANSWER), "{head}");
    let mut ws = deflate_client(&head, end);
    let big = json(2000);
    // Compressed by the client (RSV1), echoed compressed by the server.
    let m = ws.get_ref().outbound(Message::text(big.clone()), 0);
    assert!(matches!(&m, Message::Frame(f) if f.header().rsv1));
    ws.send(m).unwrap();
    // Small, uncompressed by the client; the echo stays under the threshold.
    ws.send(Message::text("hi")).unwrap();
    h.io(&mut c, t0);
    let raw: Vec<u8> = ws.get_ref().get_ref().rx.borrow().iter().copied().collect();
    assert_eq!(raw[0], 0xC1, "FIN + RSV1 + Text");
    assert!(raw.len() < big.len() / 4, "{} bytes on the wire", raw.len());
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = ws.read().unwrap();
        got.push(ws.get_mut().inbound(m, 1 << 20).unwrap());
    }
    assert_eq!(got, [Message::text(big), Message::text("hi")]);
    assert_eq!(h.count(&Event::CloseSent(1002)), 0);
}

#[test]
fn a_binary_message_fragmented_with_a_ping_inside_is_inflated_whole() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, head, mut end) = upgrade(
        &mut h,
        t0,
        &request(&format!("Sec-WebSocket-Extensions: {OFFER}")),
        b"",
    );
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
    let z = codec::compress(&data, 15);
    let (a, rest) = z.split_at(z.len() / 3);
    let (b, d) = rest.split_at(rest.len() / 2);
    let mut bytes = frame(0x42, a); // RSV1, Binary, more to come
    bytes.extend(frame(0x89, b"ping"));
    bytes.extend(frame(0x00, b));
    bytes.extend(frame(0x80, d));
    // A second, uncompressed message right behind it, in the same read.
    bytes.extend(frame(0x81, b"after"));
    end.write_all(&bytes).unwrap();
    h.io(&mut c, t0);
    let mut ws = deflate_client(&head, end);
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = ws.read().unwrap();
        got.push(ws.get_mut().inbound(m, 1 << 20).unwrap());
    }
    assert_eq!(
        got,
        [
            Message::Pong(tungstenite::Bytes::from_static(b"ping")),
            Message::binary(data),
            Message::text("after")
        ]
    );
}

#[test]
fn compressed_frames_sent_with_the_request_head_are_rewritten_too() {
    let mut h = owner();
    let t0 = Instant::now();
    let mut early = Vec::new();
    for i in 0..5 {
        let text = format!("{i}:{}", json(300));
        early.extend(frame(0xC1, &codec::compress(text.as_bytes(), 15)));
    }
    let (mut c, head, end) = upgrade(
        &mut h,
        t0,
        &request(&format!("Sec-WebSocket-Extensions: {OFFER}")),
        &early,
    );
    h.io(&mut c, t0);
    let mut ws = deflate_client(&head, end);
    for i in 0..5 {
        let m = ws.read().unwrap();
        let m = ws.get_mut().inbound(m, 1 << 20).unwrap();
        assert_eq!(m, Message::text(format!("{i}:{}", json(300))));
    }
}

#[test]
fn no_answer_without_an_acceptable_offer_and_the_handshake_goes_on() {
    let safari = "User-Agent: Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 \
                  (KHTML, like Gecko) Version/15.2 Safari/605.1.15";
    for (extra, deflate) in [
        (String::new(), true),
        (format!("Sec-WebSocket-Extensions: {OFFER}"), false),
        (
            "Sec-WebSocket-Extensions: permessage-deflate; bogus".into(),
            true,
        ),
        (
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8".into(),
            true,
        ),
        (
            format!("Sec-WebSocket-Extensions: {OFFER}\r\n{safari}"),
            true,
        ),
    ] {
        let mut h = owner();
        if !deflate {
            h.limits.deflate.mode = crate::deflate::Mode::Off;
        }
        let t0 = Instant::now();
        let (c, head, _end) = upgrade(&mut h, t0, &request(&extra), b"");
        assert!(head.starts_with("HTTP/1.1 101 "), "{extra}: {head}");
        assert_eq!(answer(&head), None, "{extra}");
        assert_eq!(c.phase(), PhaseName::Open);
    }
    // Safari 15.4 and later are answered.
    let mut h = owner();
    let ua = safari.replace("15.2", "15.4");
    let (_c, head, _end) = upgrade(
        &mut h,
        Instant::now(),
        &request(&format!("Sec-WebSocket-Extensions: {OFFER}\r\n{ua}")),
        b"",
    );
    assert_eq!(answer(&head), Some(ANSWER));
}

/// Opens with or without the extension, sends `bytes`, and returns the
/// close the server sent and the events.
fn refused(negotiate: bool, bytes: &[u8], max_message: usize) -> (Option<(u16, String)>, Owner) {
    let mut h = owner();
    h.limits.max_message = max_message;
    let t0 = Instant::now();
    let extra = if negotiate {
        format!("Sec-WebSocket-Extensions: {OFFER}")
    } else {
        String::new()
    };
    let (mut c, head, mut end) = upgrade(&mut h, t0, &request(&extra), b"");
    end.write_all(bytes).unwrap();
    h.io(&mut c, t0);
    h.drive(&mut c, t0, |c, cx| c.handle_io(false, true, cx));
    let mut ws = deflate_client(&head, end);
    let (_, close) = read_to_close(&mut ws, |ws, m| ws.get_mut().inbound(m, 1 << 30).unwrap());
    (close, h)
}

#[test]
fn rsv1_where_it_does_not_belong_closes_1002() {
    let z = codec::compress(b"hello hello hello", 15);
    let cases: [(&str, bool, Vec<u8>); 4] = [
        ("not negotiated", false, frame(0xC1, &z)),
        (
            "on a continuation",
            true,
            [frame(0x01, b"he"), frame(0xC0, b"llo")].concat(),
        ),
        ("on a Ping", true, frame(0xC9, b"p")),
        ("RSV2", true, frame(0xA1, b"x")),
    ];
    for (what, negotiate, bytes) in cases {
        let (close, h) = refused(negotiate, &bytes, 1 << 20);
        assert_eq!(close, Some((1002, "protocol error".into())), "{what}");
        assert_eq!(h.count(&Event::CloseSent(1002)), 1, "{what}");
    }
}

#[test]
fn invalid_deflate_data_and_invalid_utf8_close_1007() {
    let not_utf8 = codec::compress(&[0xff, 0xfe, 0xfd], 15);
    for (what, bytes, reason) in [
        (
            "garbage",
            frame(0xC1, &[0xff, 0xee, 0xdd, 0xcc]),
            "invalid compressed data",
        ),
        (
            "a binary one too",
            frame(0xC2, &[0x07]),
            "invalid compressed data",
        ),
        ("not UTF-8", frame(0xC1, &not_utf8), "invalid UTF-8"),
    ] {
        let (close, h) = refused(true, &bytes, 1 << 20);
        assert_eq!(close, Some((1007, reason.into())), "{what}");
        assert_eq!(h.count(&Event::CloseSent(1007)), 1, "{what}");
    }
}

#[test]
fn a_message_that_inflates_past_max_message_closes_1009() {
    let zeros = vec![0u8; 4 << 20];
    let mut best = flate2::Compress::new(flate2::Compression::best(), false);
    let z = codec::compress_with(&mut best, &zeros);
    assert!(z.len() < 8 * 1024);
    let (close, h) = refused(true, &frame(0xC2, &z), 1 << 20);
    assert_eq!(close, Some((1009, "message too big".into())));
    assert_eq!(h.count(&Event::CloseSent(1009)), 1);
    // At the limit it passes.
    let (close, _) = refused(true, &frame(0xC2, &z), 4 << 20);
    assert_eq!(close, None, "no close: the message was echoed");
}

#[test]
fn the_takeover_mode_compresses_a_run_against_its_history_and_forgets_it_after() {
    let mut h = owner();
    h.limits.deflate.mode = crate::deflate::Mode::Takeover;
    let t0 = Instant::now();
    let (mut c, head, end) = upgrade(
        &mut h,
        t0,
        &request(&format!("Sec-WebSocket-Extensions: {OFFER}")),
        b"",
    );
    assert_eq!(
        answer(&head),
        Some("permessage-deflate; client_no_context_takeover")
    );
    let mut ws = deflate_client(&head, end);
    let events: Vec<String> = (1..=40)
        .map(|seq| {
            format!(
                "{{\"type\":\"agent_thinking\",\"run_id\":\"Zq3kP0aX-7Vb2Qm9LrT1sA\",\"seq\":{seq},\
                 \"delta\":\" word{}\",\"ts\":17965288441{seq:02}}}",
                seq % 9
            )
        })
        .collect();
    for e in &events {
        h.drive(&mut c, t0, |c, cx| c.send_run(Message::text(e.clone()), cx));
    }
    let wire = ws.get_ref().get_ref().rx.borrow().len();
    let plain: usize = events.iter().map(|e| e.len()).sum();
    assert!(wire * 3 < plain, "{wire} bytes on the wire for {plain}");
    for e in &events {
        let m = ws.read().unwrap();
        assert_eq!(
            ws.get_mut().inbound(m, 1 << 20).unwrap(),
            Message::text(e.clone())
        );
    }
    let Phase::Open { ws: sws, .. } = &c.phase else {
        panic!("open")
    };
    assert!(
        sws.get_ref().history.is_some(),
        "kept while the run streams"
    );
    h.drive(&mut c, t0, |c, cx| {
        c.runs_settled(cx);
    });
    let Phase::Open { ws: sws, .. } = &c.phase else {
        panic!("open")
    };
    assert!(sws.get_ref().history.is_none(), "let go once quiet");
    // Outside a run the threshold applies again and messages stand alone.
    ws.send(Message::text(json(1000))).unwrap();
    h.io(&mut c, t0);
    let m = ws.read().unwrap();
    assert_eq!(
        ws.get_mut().inbound(m, 1 << 20).unwrap(),
        Message::text(json(1000))
    );
}

/// Found by the `conn` fuzz target: a head read that stops at the size
/// limit leaves bytes in the spill behind those read with the head; both
/// must reach tungstenite, in order.
#[test]
fn frames_behind_a_head_read_that_stopped_at_the_limit_keep_their_order() {
    for offer in [false, true] {
        let mut h = owner();
        h.limits.max_head_bytes = 256;
        let t0 = Instant::now();
        let texts: Vec<String> = (0..6).map(|i| format!("{i}:{}", json(400))).collect();
        let mut early = Vec::new();
        for t in &texts {
            early.extend(if offer {
                frame(0xC1, &codec::compress(t.as_bytes(), 15))
            } else {
                frame(0x81, t.as_bytes())
            });
        }
        let extra = if offer {
            format!("Sec-WebSocket-Extensions: {OFFER}")
        } else {
            String::new()
        };
        let (mut c, head, end) = upgrade(&mut h, t0, &request(&extra), &early);
        assert!(head.len() < 256, "{}", head.len());
        h.io(&mut c, t0);
        let mut ws = deflate_client(&head, end);
        for t in &texts {
            let m = ws.read().unwrap();
            assert_eq!(
                ws.get_mut().inbound(m, 1 << 20).unwrap(),
                Message::text(t.clone())
            );
        }
    }
}

/// What the seam relies on in tungstenite (pinned at 0.30 in Cargo.toml;
/// the `frame_boundary` fuzz target checks it too): a frame with RSV1 is
/// refused, and a `Message::Frame` with RSV1 goes out as it is.
#[test]
fn tungstenite_still_refuses_rsv1_and_sends_it_unchanged() {
    let (mut a, b) = duplex();
    a.write_all(&frame(0xC1, b"x")).unwrap();
    let mut server = WebSocket::from_raw_socket(b, Role::Server, None);
    assert!(matches!(
        server.read(),
        Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::NonZeroReservedBits
        ))
    ));
    let (c, d) = duplex();
    let mut server = WebSocket::from_raw_socket(c, Role::Server, None);
    let mut f = tungstenite::protocol::frame::Frame::message(
        tungstenite::Bytes::from_static(b"zz"),
        tungstenite::protocol::frame::coding::OpCode::Data(
            tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    f.header_mut().rsv1 = true;
    server.send(Message::Frame(f)).unwrap();
    let sent: Vec<u8> = d.rx.borrow().iter().copied().collect();
    assert_eq!(sent, b"\xC1\x02zz");
}

#[test]
fn the_declared_defaults_are_on_and_the_clients_threshold() {
    let d = Limits::default().deflate;
    assert_eq!(d.mode, crate::deflate::Mode::On);
    assert_eq!(d.threshold, crate::deflate::DEFAULT_THRESHOLD);
}

#[test]
fn an_event_followed_by_two_connections_is_compressed_once() {
    let stats = crate::deflate::stats::Registry::default();
    crate::deflate::stats::bind(&stats);
    let mut h = owner();
    let t0 = Instant::now();
    let offer = request(&format!("Sec-WebSocket-Extensions: {OFFER}"));
    let (mut a, head_a, end_a) = upgrade(&mut h, t0, &offer, b"");
    let (mut b, head_b, end_b) = upgrade(&mut h, t0, &offer, b"");
    // One event, as the store hands the same bytes to every follower.
    let event = tungstenite::Utf8Bytes::from(json(3000));
    h.drive(&mut a, t0, |c, cx| {
        c.send_run(Message::Text(event.clone()), cx)
    });
    h.drive(&mut b, t0, |c, cx| {
        c.send_run(Message::Text(event.clone()), cx)
    });
    let counts = stats.snapshot();
    assert_eq!((counts.out_messages, counts.shared_hits), (2, 1));
    for (head, end) in [(head_a, end_a), (head_b, end_b)] {
        let mut ws = deflate_client(&head, end);
        let m = ws.read().unwrap();
        assert_eq!(
            ws.get_mut().inbound(m, 1 << 20).unwrap(),
            Message::Text(event.clone())
        );
    }
}
