//! The frame-boundary tracker (src/conn/boundary.rs) against tungstenite's
//! own parsing of the same bytes, fed in arbitrary pieces.
//!
//! Input: one byte of limits (its top bit: permessage-deflate on), two of
//! chunking, then a program of client frames (any first byte, every length
//! form, masked or not) and raw bytes.
//!
//! Invariants:
//! - wherever the bytes are cut, the tracker says "between messages"
//!   exactly where tungstenite's header parser puts the end of a frame
//!   and no fragmented data message is open, and its largest payload is
//!   the largest tungstenite announced (compared up to the first header
//!   tungstenite refuses, where the connection would be failed);
//! - what the connection does with the answer is safe: a tungstenite
//!   swapped for a fresh one at every point the tracker calls "between
//!   messages" (after reading until it would block, as the connection
//!   does) reads exactly the messages and the error that one tungstenite
//!   reading the whole stream reads;
//! - with permessage-deflate on, the tracker's rewrite as the bytes pass
//!   (in pieces, stopping at each data message's end) gives tungstenite
//!   exactly what an offline rewrite of the whole stream gives it (every
//!   data message's first header with RSV1: RSV1 cleared, Text marked
//!   Binary), the same messages, the same error, and each message
//!   reported with the compression the offline pass found for it;
//! - tungstenite (pinned at 0.30 in Cargo.toml) still refuses a frame
//!   with RSV1 and still sends a `Message::Frame`'s RSV1 as it is: the
//!   behaviour the seam relies on.

#![no_main]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Cursor, Read, Write};
use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use pollcap::fuzzing::{Compressed, FrameBoundary};
use pollcap_fuzz::{Bytes, Feed, client_frame};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::OpCode;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::{Error, Message};

fuzz_target!(|data: &[u8]| run(data));

/// The bytes tungstenite reads pass through the tracker first, as in
/// `conn::Io`: what it does not take goes back to the front of the queue.
struct Tracked {
    queue: Rc<RefCell<VecDeque<u8>>>,
    frames: Rc<RefCell<FrameBoundary>>,
}

impl Read for Tracked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut q = self.queue.borrow_mut();
        if q.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(q.len());
        for (d, b) in buf.iter_mut().zip(q.drain(..n)) {
            *d = b;
        }
        let kept = self.frames.borrow_mut().feed(&mut buf[..n]);
        assert!(kept > 0, "the tracker took nothing of {n} bytes");
        for b in buf[kept..n].iter().rev() {
            q.push_front(*b);
        }
        Ok(kept)
    }
}

impl Write for Tracked {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One frame as tungstenite's header parser sees it.
struct Seen {
    header_end: u64,
    end: u64,
    len: u64,
    /// A data frame (text, binary, continuation) and its FIN bit.
    data: bool,
    fin: bool,
}

/// Frames of `s` per tungstenite, and where it would refuse a header.
fn tungstenite_frames(s: &[u8]) -> (Vec<Seen>, Option<u64>) {
    let mut frames = Vec::new();
    let mut at = 0u64;
    while (at as usize) < s.len() {
        let mut cur = Cursor::new(&s[at as usize..]);
        match FrameHeader::parse(&mut cur) {
            Ok(Some((h, len))) => {
                let header_end = at + cur.position();
                let end = header_end.saturating_add(len);
                frames.push(Seen {
                    header_end,
                    end,
                    len,
                    data: matches!(h.opcode, OpCode::Data(_)),
                    fin: h.is_final,
                });
                at = end;
            }
            Ok(None) => break,
            Err(_) => return (frames, Some(at)),
        }
    }
    (frames, None)
}

/// What the tracker must say as the stream is cut further and further
/// (cuts only grow, so each frame is looked at once).
#[derive(Default)]
struct Expect {
    ended: usize,
    headed: usize,
    in_message: bool,
    largest: u64,
}

impl Expect {
    /// (between messages, largest payload) after `k` bytes.
    fn at(&mut self, frames: &[Seen], k: u64) -> (bool, u64) {
        while let Some(f) = frames.get(self.headed).filter(|f| f.header_end <= k) {
            self.largest = self.largest.max(f.len);
            self.headed += 1;
        }
        let mut on_end = k == 0;
        while let Some(f) = frames.get(self.ended).filter(|f| f.end <= k) {
            if f.data {
                self.in_message = !f.fin;
            }
            on_end = f.end == k;
            self.ended += 1;
        }
        // A cut exactly at the end of an earlier frame (no new one ended).
        if self.ended > 0 && frames[self.ended - 1].end == k {
            on_end = true;
        }
        (on_end && !self.in_message, self.largest)
    }
}

fn program(b: &mut Bytes) -> Vec<u8> {
    let mut s = Vec::new();
    while !b.is_empty() && s.len() < 256 * 1024 {
        let op = b.byte();
        if op % 8 == 7 {
            let n = usize::from(b.byte() % 32);
            s.extend_from_slice(b.take(n));
            continue;
        }
        let first = b.byte();
        let sel = b.byte();
        let len = match sel {
            0..=199 => usize::from(sel % 126),
            200..=239 => 126 + usize::from(b.u16()),
            _ => [65535, 65536, 70_000, 40_000][usize::from(sel % 4)],
        };
        let fill = b.byte();
        let payload: Vec<u8> = if fill < 200 {
            std::iter::repeat_n(b'a' + fill % 26, len).collect()
        } else {
            b.take(len).to_vec()
        };
        let mut f = client_frame(first, &payload, [b.byte(), b.byte(), b.byte(), b.byte()]);
        if op % 8 == 6 {
            // Unmasked: clear the bit and drop the key.
            let key_at = match f[1] & 0x7f {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            f[1] &= 0x7f;
            let unmasked: Vec<u8> = f[key_at + 4..]
                .iter()
                .enumerate()
                .map(|(i, x)| x ^ f[key_at + i % 4])
                .collect();
            f.truncate(key_at);
            f.extend(unmasked);
        }
        s.extend(f);
    }
    s
}

/// A message as kind, length and a hash of its bytes (cheap to compare).
fn describe(m: &Message) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let (kind, bytes): (&str, &[u8]) = match m {
        Message::Text(t) => ("text", t.as_bytes()),
        Message::Binary(b) => ("binary", &b[..]),
        Message::Ping(b) => ("ping", &b[..]),
        Message::Pong(b) => ("pong", &b[..]),
        Message::Close(c) => return format!("close {c:?}"),
        Message::Frame(f) => ("frame", f.payload()),
    };
    bytes.hash(&mut h);
    format!("{kind} {} {:x}", bytes.len(), h.finish())
}

/// Reads until `WouldBlock`; `Err` ends the stream (an error or a Close).
/// A data message is logged with the compression the tracker reports.
fn read_all(
    ws: &mut WebSocket<Tracked>,
    log: &mut Vec<String>,
    frames: &RefCell<FrameBoundary>,
    deflate: bool,
) -> Result<(), ()> {
    loop {
        match ws.read() {
            Ok(m) => {
                let close = matches!(m, Message::Close(_));
                let mut line = describe(&m);
                if deflate && matches!(m, Message::Text(_) | Message::Binary(_)) {
                    line.push_str(&format!(" {:?}", frames.borrow().compressed()));
                }
                log.push(line);
                if close {
                    return Err(());
                }
            }
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => {
                log.push(format!("error: {e}"));
                return Err(());
            }
        }
    }
}

/// tungstenite's behaviour that the seam relies on (a change fails here).
fn tungstenite_still_refuses_rsv1_and_sends_it() {
    let mut q = VecDeque::new();
    q.extend(client_frame(0xC1, b"x", [1, 2, 3, 4]));
    let queue = Rc::new(RefCell::new(q));
    let mut ws = WebSocket::from_raw_socket(
        Feed(queue.clone()),
        Role::Server,
        Some(WebSocketConfig::default()),
    );
    assert!(
        matches!(
            ws.read(),
            Err(Error::Protocol(
                tungstenite::error::ProtocolError::NonZeroReservedBits
            ))
        ),
        "tungstenite accepted a frame with RSV1"
    );
    let mut out = WebSocket::from_raw_socket(Sink(Vec::new()), Role::Server, None);
    let mut f = tungstenite::protocol::frame::Frame::message(
        tungstenite::Bytes::from_static(b"zz"),
        OpCode::Data(tungstenite::protocol::frame::coding::Data::Text),
        true,
    );
    f.header_mut().rsv1 = true;
    out.send(Message::Frame(f))
        .expect("the sink takes everything");
    assert_eq!(
        out.get_ref().0,
        b"\xC1\x02zz",
        "tungstenite changed a Frame it sent"
    );
}

/// Collects what is written.
struct Sink(Vec<u8>);

impl Read for Sink {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The offline rewrite, written from RFC 7692 §6.1 independently of the
/// tracker: every data frame that starts a message (Text or Binary while
/// no fragmented message is open) with RSV1 gets RSV1 cleared and the
/// Binary opcode; the compression of each message, in order. Stops at the
/// first header tungstenite refuses.
fn offline_rewrite(s: &[u8]) -> (Vec<u8>, Vec<Option<Compressed>>) {
    let mut out = s.to_vec();
    let mut kinds = Vec::new();
    let mut at = 0usize;
    let mut open = false;
    while at < s.len() {
        let mut cur = Cursor::new(&s[at..]);
        let Ok(Some((h, len))) = FrameHeader::parse(&mut cur) else {
            break;
        };
        let b0 = s[at];
        let opcode = b0 & 0x0f;
        if opcode < 8 {
            if matches!(opcode, 1 | 2) && !open {
                let kind = if b0 & 0x40 != 0 {
                    out[at] = (b0 & !0x4f) | 0x02;
                    Some(if opcode == 1 {
                        Compressed::Text
                    } else {
                        Compressed::Binary
                    })
                } else {
                    None
                };
                kinds.push(kind);
            }
            open = !h.is_final;
        }
        at = (at as u64 + cur.position())
            .saturating_add(len)
            .min(s.len() as u64) as usize;
    }
    (out, kinds)
}

fn run(data: &[u8]) {
    tungstenite_still_refuses_rsv1_and_sends_it();
    let mut b = Bytes::new(data);
    let c = b.byte();
    let deflate = c & 0x80 != 0;
    let config = WebSocketConfig::default()
        .read_buffer_size([1, 128, 4096][usize::from(c % 3)])
        .max_frame_size(Some([64, 1024, 70_000][usize::from((c >> 2) % 3)]))
        .max_message_size(Some([64, 1024, 70_000][usize::from((c >> 4) % 3)]));
    let mut seed = u32::from(b.byte()) | 1;
    let piece = [1usize, 3, 16, 200, 5000][usize::from(b.byte() % 5)];
    let stream = program(&mut b);
    // At most a few thousand cuts: a long stream is cut in larger pieces.
    let piece = piece.max(stream.len() / 2048);
    let (frames, refused) = tungstenite_frames(&stream);
    let last = refused.unwrap_or(u64::MAX);

    // The tracker alone, fed in pieces (all of each piece, in as many
    // calls as it takes).
    let mut cuts = Vec::new();
    let mut tracker = FrameBoundary::default();
    if deflate {
        tracker.set_deflate();
    }
    let mut expect = Expect::default();
    let mut at = 0;
    while at < stream.len() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (1 + seed as usize % piece).min(stream.len() - at);
        let mut piece = stream[at..at + n].to_vec();
        let mut took = 0;
        while took < n {
            let k = tracker.feed(&mut piece[took..]);
            assert!(k > 0, "the tracker took nothing");
            took += k;
        }
        at += n;
        cuts.push(at);
        if at as u64 > last {
            break;
        }
        let (between, largest) = expect.at(&frames, at as u64);
        assert_eq!(
            tracker.between_messages(),
            between,
            "after {at} bytes: tracker says between={} (frames {:?})",
            tracker.between_messages(),
            frames.iter().map(|f| f.end).collect::<Vec<_>>()
        );
        assert_eq!(tracker.largest(), largest, "after {at} bytes");
    }

    // One tungstenite for the whole stream, and one swapped for a fresh
    // one wherever the tracker says it may be: the same messages.
    let mut logs = [Vec::new(), Vec::new()];
    for (swap, log) in logs.iter_mut().enumerate() {
        let queue = Rc::new(RefCell::new(VecDeque::new()));
        let frames = Rc::new(RefCell::new(FrameBoundary::default()));
        if deflate {
            frames.borrow_mut().set_deflate();
        }
        let io = Tracked {
            queue: queue.clone(),
            frames: frames.clone(),
        };
        let mut ws = WebSocket::from_raw_socket(io, Role::Server, Some(config));
        let mut from = 0;
        for &cut in &cuts {
            queue.borrow_mut().extend(&stream[from..cut]);
            from = cut;
            if read_all(&mut ws, log, &frames, deflate).is_err() {
                break;
            }
            if swap == 1 && frames.borrow().between_messages() {
                // As the connection compacts: only with nothing to write.
                ws.flush().expect("the sink takes everything");
                let io = ws.into_inner();
                ws = WebSocket::from_raw_socket(io, Role::Server, Some(config));
                log.push("swapped".into());
            }
        }
    }
    let [whole, swapped] = logs;
    let swapped: Vec<String> = swapped.into_iter().filter(|l| l != "swapped").collect();
    assert_eq!(
        whole, swapped,
        "a swap at a tracked boundary changed what was read"
    );
    if !deflate {
        return;
    }
    // The offline rewrite, read in one go by a plain tungstenite: the same
    // messages, each with the compression found for it.
    let (rewritten, kinds) = offline_rewrite(&stream);
    // The same bytes as the tracked reading was given.
    let given = cuts.last().copied().unwrap_or(0);
    let queue = Rc::new(RefCell::new(
        rewritten[..given].iter().copied().collect::<VecDeque<u8>>(),
    ));
    let mut ws = WebSocket::from_raw_socket(Feed(queue), Role::Server, Some(config));
    let mut reference = Vec::new();
    let mut data_messages = 0;
    loop {
        match ws.read() {
            Ok(m) => {
                let close = matches!(m, Message::Close(_));
                let mut line = describe(&m);
                if matches!(m, Message::Text(_) | Message::Binary(_)) {
                    let kind = kinds.get(data_messages).copied().flatten();
                    line.push_str(&format!(" {kind:?}"));
                    data_messages += 1;
                }
                reference.push(line);
                if close {
                    break;
                }
            }
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                reference.push(format!("error: {e}"));
                break;
            }
        }
    }
    assert_eq!(
        whole, reference,
        "the rewrite as the bytes pass differs from the offline rewrite"
    );
}
