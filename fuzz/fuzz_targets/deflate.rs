//! permessage-deflate (src/deflate, src/conn/boundary.rs): inflating
//! arbitrary bytes under a cap, and whole round trips through the tracker
//! and tungstenite.
//!
//! Input: a mode byte, then the mode's own program.
//! - Inflate (mode even): a cap selector, then raw bytes taken as a
//!   compressed message's payload.
//! - Round trip (mode odd): a window and chunking selector, then messages
//!   (text or binary, sizes from the input, content from the input or
//!   repeated), each compressed (alone, or against the history of the
//!   ones before, as the takeover mode does), cut into frames at random
//!   sizes with Pings between them, masked, and read by a server-role
//!   tungstenite through the tracker in random pieces.
//!
//! Invariants:
//! - inflating never panics, returns at most `cap` bytes or `TooBig`, and
//!   the heap it takes stays within twice the cap plus the input and the
//!   decompressor's state (a deflate bomb is refused before its size is
//!   allocated); whatever inflates, compressed again, inflates to itself;
//! - every message comes out of tungstenite whole and inflates to exactly
//!   what was sent, reported with its type, whatever the fragmentation and
//!   the pieces the bytes arrived in; the Pings come out too.

#![no_main]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use pollcap::deflate::codec::{self, History, InflateError};
use pollcap::fuzzing::{Compressed, FrameBoundary};
use pollcap_fuzz::{Bytes, client_frame, live_heap, peak_heap, reset_peak_heap};
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    if b.byte() % 2 == 0 {
        inflate(&mut b);
    } else {
        round_trip(&mut b);
    }
}

fn inflate(b: &mut Bytes) {
    let cap = [0usize, 1, 100, 4096, 65536, 1 << 20][usize::from(b.byte() % 6)];
    let input = b.rest();
    let before = live_heap();
    reset_peak_heap();
    let r = codec::inflate(input, cap);
    // The decompressor is per thread and made on first use (about 50 KiB
    // with its window): allow for it once.
    let taken = peak_heap().saturating_sub(before);
    assert!(
        taken <= 2 * cap + input.len() + 128 * 1024,
        "{taken} bytes taken to inflate {} under a cap of {cap}",
        input.len()
    );
    match r {
        Ok(out) => {
            assert!(
                out.len() <= cap,
                "{} bytes out, over the cap {cap}",
                out.len()
            );
            let again = codec::compress(&out, 15);
            assert_eq!(codec::inflate(&again, cap).as_deref(), Ok(&out[..]));
        }
        Err(InflateError::TooBig) | Err(InflateError::Invalid(_)) => {}
    }
}

/// Reads a queue through the tracker, as `conn::Io` does.
struct Tracked {
    queue: Rc<RefCell<VecDeque<u8>>>,
    frames: Rc<RefCell<FrameBoundary>>,
    piece: usize,
    seed: u32,
}

impl Read for Tracked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut q = self.queue.borrow_mut();
        if q.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 17;
        self.seed ^= self.seed << 5;
        let n = buf
            .len()
            .min(q.len())
            .min(1 + self.seed as usize % self.piece);
        for (d, b) in buf.iter_mut().zip(q.drain(..n)) {
            *d = b;
        }
        let kept = self.frames.borrow_mut().feed(&mut buf[..n]);
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

fn round_trip(b: &mut Bytes) {
    let sel = b.byte();
    let bits = 9 + sel % 7;
    let takeover = sel & 0x80 != 0;
    let piece = [1usize, 7, 64, 1000, 70_000][usize::from(b.byte() % 5)];
    let seed = u32::from(b.byte()) | 1;
    let mut sent = Vec::new();
    let mut wire = Vec::new();
    let mut history = History::default();
    let mut mask = [1u8, 2, 3, 4];
    while !b.is_empty() && sent.len() < 16 && wire.len() < 64 * 1024 {
        let kind = b.byte();
        let len = match b.byte() {
            n @ 0..=199 => usize::from(n),
            n => usize::from(n) * 100,
        };
        let body: Vec<u8> = if kind & 2 == 0 {
            b.take(len).to_vec()
        } else {
            let unit = b.take(4).to_vec();
            unit.iter().copied().cycle().take(len).collect()
        };
        // A text message must be UTF-8: make it so.
        let text = kind & 1 == 1;
        let body = if text {
            String::from_utf8_lossy(&body).into_owned().into_bytes()
        } else {
            body
        };
        let z = if takeover {
            let z = codec::compress_after(&mut history, &body, bits);
            history.push(&body, bits);
            z
        } else {
            codec::compress(&body, bits)
        };
        // Cut into 1..=4 frames, a Ping after the first.
        let frames = 1 + usize::from(b.byte() % 4);
        let step = z.len() / frames + 1;
        let mut chunks: Vec<&[u8]> = z.chunks(step).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, c) in chunks.iter().enumerate() {
            let opcode = if i > 0 {
                0
            } else if text {
                1
            } else {
                2
            };
            let rsv1 = if i == 0 { 0x40 } else { 0 };
            let fin = if i == last { 0x80 } else { 0 };
            mask = [mask[1], mask[2], mask[3], mask[0].wrapping_add(b.byte())];
            wire.extend(client_frame(fin | rsv1 | opcode, c, mask));
            if i == 0 && last > 0 {
                wire.extend(client_frame(0x89, b"p", mask));
            }
        }
        sent.push((text, body, last > 0));
    }
    let queue = Rc::new(RefCell::new(wire.into_iter().collect::<VecDeque<u8>>()));
    let frames = Rc::new(RefCell::new(FrameBoundary::default()));
    frames.borrow_mut().set_deflate();
    let io = Tracked {
        queue,
        frames: frames.clone(),
        piece,
        seed,
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(128)
        .max_message_size(None)
        .max_frame_size(None);
    let mut ws = WebSocket::from_raw_socket(io, Role::Server, Some(config));
    // The client's side of the takeover mode: one window for the stream.
    let mut window = flate2::Decompress::new(false);
    let mut got = Vec::new();
    let mut pings = 0;
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Binary(z)) => {
                let kind = frames.borrow().compressed();
                let body = if takeover {
                    codec::inflate_with(&mut window, &z, usize::MAX >> 1)
                } else {
                    codec::inflate(&z, usize::MAX >> 1)
                }
                .unwrap_or_else(|e| panic!("message {} does not inflate: {e:?}", got.len()));
                got.push((kind == Some(Compressed::Text), body, kind.is_some()));
            }
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("tungstenite refused a valid stream: {e}"),
        }
    }
    assert_eq!(got.len(), sent.len(), "every message arrived");
    for (i, ((t1, b1, _), (t2, b2, compressed))) in sent.iter().zip(&got).enumerate() {
        assert!(compressed, "message {i} reported uncompressed");
        assert_eq!(t1, t2, "message {i}: text or binary");
        assert!(
            b1 == b2,
            "message {i}: {} bytes sent, {} inflated",
            b1.len(),
            b2.len()
        );
    }
    assert_eq!(
        pings,
        sent.iter().filter(|(_, _, fragmented)| *fragmented).count()
    );
}
