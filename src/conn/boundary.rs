//! Follows frame boundaries in the inbound byte stream — headers only;
//! tungstenite does the real parsing — so a connection knows when
//! tungstenite holds no inbound bytes and no unfinished message, and may
//! swap it for a fresh one to give back buffers grown by a burst
//! (tungstenite keeps their capacity and offers no way to shrink them).
//!
//! With permessage-deflate negotiated it is also where a compressed
//! message gets past tungstenite, which fails any frame with RSV1 set and
//! offers no hook (RFC 7692 is not implemented there). The first header
//! of a data message with RSV1 set is rewritten as it passes, before
//! tungstenite reads it: RSV1 cleared and Text marked Binary (the payload
//! is deflate data, not UTF-8), both facts remembered until the message
//! is complete and the connection inflates it. tungstenite goes on doing
//! everything else: fragmentation, limits, control frames, masking. RSV1
//! anywhere else — a continuation, a control frame, a connection that did
//! not negotiate the extension — is left alone, and tungstenite fails the
//! connection with 1002 as before. So that "the message being completed"
//! is always the one whose first header was seen last, reading stops at
//! the end of each data message ([`FrameBoundary::feed`] returns how much
//! it took): tungstenite never holds bytes of the next message while it
//! completes one. The `frame_boundary` fuzz target checks both against
//! tungstenite (whose minor version Cargo.toml pins).

/// `flags` bits.
const IN_MESSAGE: u8 = 1;
/// permessage-deflate was negotiated: rewrite compressed first frames and
/// stop after each data message.
const DEFLATE: u8 = 2;
/// The data message begun last came compressed…
const COMPRESSED: u8 = 4;
/// …and as a text message.
const TEXT: u8 = 8;
/// The frame whose payload is being skipped ends a data message.
const ENDS_MESSAGE: u8 = 16;

/// Where the inbound stream stands relative to frame boundaries.
#[derive(Debug, Default)]
pub struct FrameBoundary {
    // Field order and u8 fields keep this at 32 bytes: every connection
    // carries one.
    head: [u8; 14],
    head_len: u8,
    /// [`IN_MESSAGE`] (a fragmented data message has started and its final
    /// frame not come) and the permessage-deflate bits.
    flags: u8,
    payload_left: u64,
    /// Largest frame payload seen since the last [`FrameBoundary::reset_largest`].
    largest: u64,
}

/// How a compressed message arrived: the connection inflates it once
/// tungstenite has it whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compressed {
    /// A text message (its UTF-8 is checked once inflated: 1007 if not).
    Text,
    /// A binary message.
    Binary,
}

/// Length of a frame header given its first two bytes.
fn header_len(b0_b1: [u8; 2]) -> usize {
    let mask = if b0_b1[1] & 0x80 != 0 { 4 } else { 0 };
    let ext = match b0_b1[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + mask
}

impl FrameBoundary {
    /// Observes bytes in the order they are handed to tungstenite,
    /// rewriting the first header byte of a compressed message when
    /// permessage-deflate is on. Returns how many of them were taken: all
    /// of them, except with permessage-deflate, where it stops right
    /// after the last byte of a data message. At least one byte is taken
    /// from any non-empty input.
    pub fn feed(&mut self, bytes: &mut [u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            if self.payload_left > 0 {
                let k = ((bytes.len() - at) as u64).min(self.payload_left);
                self.payload_left -= k;
                at += k as usize;
            } else {
                if self.head_len == 0 {
                    self.first_header_byte(&mut bytes[at]);
                }
                self.head[usize::from(self.head_len)] = bytes[at];
                self.head_len += 1;
                at += 1;
                if self.head_len >= 2
                    && usize::from(self.head_len) == header_len([self.head[0], self.head[1]])
                {
                    self.end_of_header();
                }
            }
            if self.payload_left == 0
                && self.head_len == 0
                && self.flags & (DEFLATE | ENDS_MESSAGE) == DEFLATE | ENDS_MESSAGE
            {
                self.flags &= !ENDS_MESSAGE;
                return at;
            }
        }
        at
    }

    /// The first byte of a frame header: a compressed message's first
    /// frame is rewritten and remembered.
    fn first_header_byte(&mut self, b0: &mut u8) {
        let opcode = *b0 & 0x0f;
        let first_data = matches!(opcode, 1 | 2) && self.flags & IN_MESSAGE == 0;
        if self.flags & DEFLATE == 0 || !first_data {
            return;
        }
        self.flags &= !(COMPRESSED | TEXT);
        if *b0 & 0x40 != 0 {
            // RSV1 off, opcode Binary; FIN, RSV2 and RSV3 as they were.
            *b0 = (*b0 & !0x4f) | 0x02;
            self.flags |= COMPRESSED | if opcode == 1 { TEXT } else { 0 };
        }
    }

    fn end_of_header(&mut self) {
        let h = &self.head[..usize::from(self.head_len)];
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        };
        // Data frames (continuation 0, text 1, binary 2) open or continue a
        // message until FIN; control frames (8–15) may interleave.
        self.flags &= !ENDS_MESSAGE;
        if opcode < 8 {
            if fin {
                self.flags &= !IN_MESSAGE;
                self.flags |= ENDS_MESSAGE;
            } else {
                self.flags |= IN_MESSAGE;
            }
        }
        self.largest = self.largest.max(len);
        self.payload_left = len;
        self.head_len = 0;
    }

    /// Turns the permessage-deflate rewrite on (the extension was
    /// negotiated).
    pub fn set_deflate(&mut self) {
        self.flags |= DEFLATE;
    }

    /// How the data message begun last arrived, if compressed. Called
    /// when tungstenite reports it complete: reading stopped at its end,
    /// so no later message has begun.
    pub fn compressed(&self) -> Option<Compressed> {
        match self.flags & (COMPRESSED | TEXT) {
            f if f == COMPRESSED | TEXT => Some(Compressed::Text),
            COMPRESSED => Some(Compressed::Binary),
            _ => None,
        }
    }

    /// True between whole messages: no partial header, payload or message.
    pub fn between_messages(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0 && self.flags & IN_MESSAGE == 0
    }

    /// Largest frame payload seen since the last reset (bytes): how large a
    /// buffer the connection really needed.
    pub fn largest(&self) -> u64 {
        self.largest
    }

    /// Starts a new measure of [`FrameBoundary::largest`].
    pub fn reset_largest(&mut self) {
        self.largest = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked frame as a client sends it.
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn the_tracker_stays_small() {
        assert_eq!(std::mem::size_of::<FrameBoundary>(), 32);
    }

    #[test]
    fn whole_frames_of_every_length_form_end_on_a_boundary() {
        for len in [0, 1, 125, 126, 65535, 65536, 200_000] {
            let mut b = FrameBoundary::default();
            let f = frame(true, 2, len);
            b.feed(&mut f.clone()[..f.len() - 1]);
            assert!(!b.between_messages(), "{len}: one byte short");
            b.feed(&mut f.clone()[f.len() - 1..]);
            assert!(b.between_messages(), "{len}");
            assert_eq!(b.largest(), len as u64);
        }
    }

    #[test]
    fn byte_by_byte_feeding_finds_the_same_boundaries() {
        let mut stream = frame(true, 1, 300);
        stream.extend(frame(true, 9, 4)); // a Ping
        stream.extend(frame(true, 2, 70_000));
        let mut b = FrameBoundary::default();
        let mut boundaries = Vec::new();
        for (i, byte) in stream.iter().enumerate() {
            b.feed(&mut [*byte]);
            if b.between_messages() {
                boundaries.push(i + 1);
            }
        }
        let a = frame(true, 1, 300).len();
        let p = frame(true, 9, 4).len();
        assert_eq!(boundaries, [a, a + p, stream.len()]);
    }

    #[test]
    fn a_fragmented_message_is_open_until_its_final_frame_even_across_pings() {
        let mut b = FrameBoundary::default();
        b.feed(&mut frame(false, 1, 10));
        assert!(!b.between_messages(), "first fragment");
        b.feed(&mut frame(true, 9, 0));
        assert!(!b.between_messages(), "a Ping inside the message");
        b.feed(&mut frame(false, 0, 10));
        assert!(!b.between_messages(), "middle fragment");
        b.feed(&mut frame(true, 0, 10));
        assert!(b.between_messages(), "final fragment");
        b.reset_largest();
        assert_eq!(b.largest(), 0);
    }
}
