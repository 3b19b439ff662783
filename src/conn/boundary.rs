//! Follows frame boundaries in the inbound byte stream — headers only;
//! tungstenite does the real parsing — so a connection knows when
//! tungstenite holds no inbound bytes and no unfinished message, and may
//! swap it for a fresh one to give back buffers grown by a burst
//! (tungstenite keeps their capacity and offers no way to shrink them).

/// Where the inbound stream stands relative to frame boundaries.
#[derive(Debug, Default)]
pub struct FrameBoundary {
    // Field order and a u8 length keep this at 32 bytes: every connection
    // carries one.
    head: [u8; 14],
    head_len: u8,
    /// A fragmented data message has started and its final frame not come.
    in_message: bool,
    payload_left: u64,
    /// Largest frame payload seen since the last [`FrameBoundary::reset_largest`].
    largest: u64,
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
    /// Observes bytes in the order they were read from the socket.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let k = (bytes.len() as u64).min(self.payload_left);
                self.payload_left -= k;
                bytes = &bytes[k as usize..];
                continue;
            }
            self.head[usize::from(self.head_len)] = bytes[0];
            self.head_len += 1;
            bytes = &bytes[1..];
            if self.head_len >= 2
                && usize::from(self.head_len) == header_len([self.head[0], self.head[1]])
            {
                self.end_of_header();
            }
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
        if opcode < 8 {
            self.in_message = !fin;
        }
        self.largest = self.largest.max(len);
        self.payload_left = len;
        self.head_len = 0;
    }

    /// True between whole messages: no partial header, payload or message.
    pub fn between_messages(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0 && !self.in_message
    }

    pub fn largest(&self) -> u64 {
        self.largest
    }

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
            b.feed(&f[..f.len() - 1]);
            assert!(!b.between_messages(), "{len}: one byte short");
            b.feed(&f[f.len() - 1..]);
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
            b.feed(&[*byte]);
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
        b.feed(&frame(false, 1, 10));
        assert!(!b.between_messages(), "first fragment");
        b.feed(&frame(true, 9, 0));
        assert!(!b.between_messages(), "a Ping inside the message");
        b.feed(&frame(false, 0, 10));
        assert!(!b.between_messages(), "middle fragment");
        b.feed(&frame(true, 0, 10));
        assert!(b.between_messages(), "final fragment");
        b.reset_largest();
        assert_eq!(b.largest(), 0);
    }
}
