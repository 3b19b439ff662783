//! Compressing and inflating whole messages (RFC 7692 §7.2) with one
//! compressor per window size and one decompressor per thread, reset for
//! every message: no state is kept between messages, so nothing is kept
//! per connection. zlib-rs through `flate2` (pure Rust, honours the window
//! size; `miniz_oxide` does not).

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tungstenite::Bytes;

/// What RFC 7692 §7.2.1 strips from the end of every compressed message
/// and §7.2.2 appends again before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compression levels, by message size (BENCHMARKS.md, "permessage-deflate",
/// JSON of 256 B to 16 KiB). zlib-rs' level 1 (zlib-ng's "quick": static
/// Huffman codes) costs about half of level 2 (dynamic codes) on small
/// messages, where dynamic codes hardly pay for themselves: a 1 KiB
/// message compresses to 0.68 at level 1 and 0.50 at level 2, for about
/// 8.5 and 19 µs. From [`LARGE`] bytes on, level 2's codes pay (16 KiB:
/// 0.42 at level 1, 0.31 at level 2), still under Bun's CPU for the same.
pub const LEVEL: u32 = 1;
/// The level from [`LARGE`] bytes on (see [`LEVEL`]).
pub const LEVEL_LARGE: u32 = 2;
/// Messages of at least this many bytes are compressed at [`LEVEL_LARGE`].
pub const LARGE: usize = 4096;

/// How much of what it sent compressed a connection in the takeover mode
/// remembers to compress the next message against (at most the client's
/// window). Measured on agent_chat runs (BENCHMARKS.md): 4 KiB holds the
/// last several events, whose envelope and text the next one repeats.
pub const HISTORY: usize = 4096;

/// What a connection in the takeover mode sent compressed last: the tail
/// of the client's inflate window, byte for byte (messages sent without
/// RSV1 never enter it).
#[derive(Debug, Default)]
pub struct History {
    bytes: Vec<u8>,
}

/// Messages compressed for sharing are kept (one per thread) only up to
/// this size, so the cache never holds a large message after it is sent.
const SHARE_MAX: usize = 64 * 1024;

/// Why an inbound message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the message limit (close 1009). Found before more
    /// than the limit was allocated.
    TooBig,
    /// Not valid deflate data (close 1007), with zlib's reason.
    Invalid(String),
}

#[derive(Default)]
struct Codec {
    /// One compressor per window size and level (index
    /// `(bits - 9) * 2 + large`), made on first use and reset before every
    /// message.
    deflaters: [Option<Box<Compress>>; 14],
    inflater: Option<Box<Decompress>>,
    /// The last message compressed with [`compress_shared`]: the source
    /// (held, so its address cannot be reused for other bytes), the
    /// window, and the result.
    shared: Option<(Bytes, u8, Bytes)>,
}

thread_local! {
    static CODEC: RefCell<Codec> = RefCell::new(Codec::default());
}

/// A compressor with a `bits` window (9..=15) at `level`.
pub fn new_compressor(bits: u8, level: u32) -> Compress {
    Compress::new_with_window_bits(Compression::new(level), false, bits.clamp(9, 15))
}

/// This thread's compressor for a `bits` window and a message of `len`
/// bytes, reset.
fn deflater(c: &mut Codec, bits: u8, len: usize) -> &mut Compress {
    let bits = bits.clamp(9, 15);
    let large = len >= LARGE;
    let level = if large { LEVEL_LARGE } else { LEVEL };
    let d = c.deflaters[usize::from(bits - 9) * 2 + usize::from(large)]
        .get_or_insert_with(|| Box::new(new_compressor(bits, level)));
    d.reset();
    d
}

/// Compresses one whole message with this thread's compressor for a
/// `bits` window (9..=15), starting from an empty window: the payload of a
/// frame with RSV1 set.
pub fn compress(data: &[u8], bits: u8) -> Vec<u8> {
    CODEC.with_borrow_mut(|c| compress_with(deflater(c, bits, data.len()), data))
}

/// Compresses one message against `history` (the client's window holds
/// the same bytes, since it inflates what we send in order) with this
/// thread's compressor for a `bits` window, and appends the message to
/// the history. A compressor primed with a dictionary is as good as one
/// that kept its context, and holds nothing between messages: what a
/// connection keeps is the history alone.
pub fn compress_after(history: &mut History, data: &[u8], bits: u8) -> Vec<u8> {
    CODEC.with_borrow_mut(|c| {
        let d = deflater(c, bits, data.len());
        if !history.bytes.is_empty() {
            // It cannot fail right after a reset; were it to, the message
            // would still be valid, referring only to itself.
            let _ = d.set_dictionary(&history.bytes);
        }
        compress_with(d, data)
    })
}

impl History {
    /// Appends a message the client will inflate, keeping the last
    /// `HISTORY` bytes (at most the `bits` window).
    pub fn push(&mut self, data: &[u8], bits: u8) {
        let keep = HISTORY.min(1 << bits.clamp(9, 15));
        if data.len() >= keep {
            self.bytes.clear();
            self.bytes.extend_from_slice(&data[data.len() - keep..]);
        } else {
            let drop = (self.bytes.len() + data.len()).saturating_sub(keep);
            self.bytes.drain(..drop);
            self.bytes.extend_from_slice(data);
        }
    }

    /// Bytes remembered.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Nothing remembered (a fresh context).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// [`compress`] for a message that may go to several connections (a run
/// followed by several clients): the same bytes sent again with the same
/// window are compressed once per thread. `Bytes` are immutable, and the
/// source is held while it is cached, so the same address and length mean
/// the same bytes.
pub fn compress_shared(data: &Bytes, bits: u8) -> Bytes {
    if data.len() > SHARE_MAX {
        return compress(data, bits).into();
    }
    let hit = CODEC.with_borrow(|c| match &c.shared {
        Some((src, b, out))
            if *b == bits && src.as_ptr() == data.as_ptr() && src.len() == data.len() =>
        {
            Some(out.clone())
        }
        _ => None,
    });
    if let Some(out) = hit {
        super::stats::add(super::stats::Counter::SharedHits, 1);
        return out;
    }
    let out = Bytes::from(compress(data, bits));
    CODEC.with_borrow_mut(|c| c.shared = Some((data.clone(), bits, out.clone())));
    out
}

/// Compresses `data` as one message with `d` as it stands (its window
/// kept from earlier messages or not): sync flush, tail removed.
pub fn compress_with(d: &mut Compress, data: &[u8]) -> Vec<u8> {
    // Deflate's worst case is the input plus 5 bytes per stored block of
    // up to 64 KiB; the sync flush adds at most one empty stored block.
    let mut out = Vec::with_capacity(data.len() + data.len() / 8192 * 5 + 16);
    let start = d.total_in();
    loop {
        let done = (d.total_in() - start) as usize;
        match d.compress_vec(&data[done..], &mut out, FlushCompress::Sync) {
            // The flush is complete once the output has room left over.
            Ok(_) if out.len() < out.capacity() => break,
            Ok(_) => out.reserve(out.capacity().max(64)),
            // Only a misuse of the stream can fail, and none is possible
            // here; were it to happen, the message still goes out valid.
            Err(e) => {
                tracing::warn!("deflate failed ({e}); the message goes in stored blocks");
                d.reset();
                return stored(data);
            }
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

/// `data` as deflate stored blocks (no compression), in the form
/// [`compress_with`] gives: what any inflater reads back as `data`.
fn stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 6);
    for chunk in data.chunks(65535) {
        let len = chunk.len() as u16;
        // BFINAL 0, BTYPE 00, padded to the byte: 0x00; then LEN, NLEN.
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    // What is left of the sync flush's empty stored block once its
    // `00 00 ff ff` is taken off.
    out.push(0);
    out
}

/// Inflates one whole message (the payload of its frames, RSV1 set on the
/// first) with this thread's decompressor, in one pass, under `max` bytes
/// of output. The window is 15 bits whatever the client used: a larger
/// window inflates anything a smaller one made.
pub fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    CODEC.with_borrow_mut(|c| {
        let d = c
            .inflater
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, 15)));
        d.reset(false);
        let r = inflate_with(d, data, max);
        // A failed or refused message may leave the stream mid-block.
        if r.is_err() {
            d.reset(false);
        }
        r
    })
}

/// Inflates `data` then the tail with `d` as it stands, under `max`.
pub fn inflate_with(d: &mut Decompress, data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let limit = max.saturating_add(1);
    // Typical JSON inflates 3–10×; grow by doubling from there, never past
    // one byte over the limit (that byte proves the message too big).
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).max(256).min(limit));
    for (i, input) in [data, &TAIL[..]].into_iter().enumerate() {
        let mut at = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= limit {
                    return Err(InflateError::TooBig);
                }
                let grow = out.capacity().min(limit - out.len());
                out.reserve_exact(grow);
            }
            let (in0, out0) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(&input[at..], &mut out, FlushDecompress::Sync)
                .map_err(|e| InflateError::Invalid(e.to_string()))?;
            let consumed = (d.total_in() - in0) as usize;
            at += consumed;
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            let stalled = consumed == 0 && out.len() == out0;
            match status {
                Status::StreamEnd => {
                    // A final block ends the message; the peer's bytes
                    // after it are not deflate data.
                    if i == 0 && at < data.len() {
                        return Err(InflateError::Invalid("data after the final block".into()));
                    }
                    return Ok(out);
                }
                // Everything read, and the output was not what stopped it.
                _ if at == input.len() && (out.len() < out.capacity() || stalled) => break,
                // Input left and room to write, yet nothing moved.
                _ if stalled => return Err(InflateError::Invalid("inflate stalled".into())),
                _ => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("{\"type\":\"agent_thinking\",\"items\":[");
        let mut i = 0;
        while s.len() < n {
            s.push_str(&format!("{{\"i\":{i},\"delta\":\"tok{}\"}},", i % 7));
            i += 1;
        }
        s.truncate(n);
        s.into_bytes()
    }

    #[test]
    fn round_trips_at_every_window_and_size() {
        for bits in 9..=15 {
            for n in [0, 1, 32, 1024, 16 * 1024, 200_000] {
                let data = json(n);
                let z = compress(&data, bits);
                assert!(!z.ends_with(&TAIL), "the tail is stripped");
                assert_eq!(
                    inflate(&z, 1 << 20).unwrap(),
                    data,
                    "bits {bits}, {n} bytes"
                );
            }
        }
        assert!(compress(&json(16 * 1024), 15).len() < 16 * 1024 / 4);
    }

    #[test]
    fn each_message_starts_afresh() {
        // The same message twice compresses to the same bytes: nothing of
        // the first is referenced by the second.
        let m = json(2000);
        assert_eq!(compress(&m, 15), compress(&m, 15));
        // And it inflates on a decompressor that never saw the first.
        let z = compress(&m, 15);
        let mut fresh = Decompress::new(false);
        assert_eq!(inflate_with(&mut fresh, &z, 1 << 20).unwrap(), m);
    }

    #[test]
    fn a_bomb_is_refused_before_its_size_is_allocated() {
        // Level 9 reaches deflate's ratio ceiling (about 1030:1).
        let zeros = vec![0u8; 8 << 20];
        let mut c = Compress::new(Compression::best(), false);
        let z = compress_with(&mut c, &zeros);
        assert!(z.len() < 16 * 1024, "{}", z.len());
        assert_eq!(inflate(&z, 1 << 20), Err(InflateError::TooBig));
        assert_eq!(
            inflate(&z, 8 << 20).unwrap().len(),
            8 << 20,
            "exactly the limit passes"
        );
        assert_eq!(inflate(&z, (8 << 20) - 1), Err(InflateError::TooBig));
        // The thread's decompressor is usable again at once.
        assert_eq!(inflate(&compress(b"ok", 15), 10).unwrap(), b"ok");
    }

    #[test]
    fn the_stored_fallback_inflates_to_its_input() {
        for n in [0, 1, 65535, 65536, 200_000] {
            let data = json(n);
            assert_eq!(inflate(&stored(&data), 1 << 20).unwrap(), data, "{n}");
        }
    }

    #[test]
    fn invalid_data_is_named() {
        for bad in [&[0xff, 0xff, 0xff][..], &[0x07], &[0x04, 0x00, 0xff]] {
            assert!(
                matches!(inflate(bad, 1 << 20), Err(InflateError::Invalid(_))),
                "{bad:?}"
            );
        }
        // A stream that ends with a final block, then garbage.
        let mut d = Compress::new(Compression::new(1), false);
        let mut z = Vec::with_capacity(64);
        d.compress_vec(b"hello", &mut z, FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflate(&z, 100).unwrap(), b"hello");
        z.push(0x42);
        assert!(matches!(inflate(&z, 100), Err(InflateError::Invalid(_))));
    }

    #[test]
    fn messages_compressed_against_the_history_inflate_with_a_kept_window() {
        // The client's side: one decompressor for the whole stream.
        let mut client = Decompress::new_with_window_bits(false, 15);
        let mut h = History::default();
        let mut plain_total = 0;
        let mut wire_total = 0;
        for i in 0..50 {
            let m = format!(
                "{{\"type\":\"agent_thinking\",\"run_id\":\"Zq3kP0aX\",\"seq\":{i},\"delta\":\"token {}\"}}",
                i * 7
            );
            let z = compress_after(&mut h, m.as_bytes(), 15);
            h.push(m.as_bytes(), 15);
            assert!(h.len() <= HISTORY);
            plain_total += m.len();
            wire_total += z.len();
            assert_eq!(
                inflate_with(&mut client, &z, 1 << 20).unwrap(),
                m.as_bytes(),
                "{i}"
            );
        }
        assert!(
            wire_total * 3 < plain_total,
            "{wire_total} of {plain_total}"
        );
        // A small window keeps a small history.
        let mut h = History::default();
        h.push(&json(3000), 9);
        assert_eq!(h.len(), 512);
    }

    #[test]
    fn shared_compression_reuses_the_result_for_the_same_bytes() {
        let m = Bytes::from(json(3000));
        let a = compress_shared(&m, 15);
        let b = compress_shared(&m.clone(), 15);
        assert_eq!(a.as_ptr(), b.as_ptr(), "compressed once");
        let c = compress_shared(&m, 12);
        assert_ne!(a.as_ptr(), c.as_ptr(), "another window is another result");
        let other = Bytes::from(json(3000));
        let d = compress_shared(&other, 12);
        assert_ne!(
            c.as_ptr(),
            d.as_ptr(),
            "equal bytes elsewhere are compressed again"
        );
        assert_eq!(inflate(&d, 1 << 20).unwrap(), &other[..]);
    }
}
