//! permessage-deflate for a client over tungstenite: the stream to put
//! under tungstenite's client ([`DeflateStream`]), which lets compressed
//! messages through the way the server's connection does (see
//! `conn::boundary`), and what to do with messages on each side
//! ([`DeflateStream::outbound`], [`DeflateStream::inbound`]).
//!
//! ```text
//! let stream = DeflateStream::new(tcp);            // before the handshake
//! request.headers_mut().insert("Sec-WebSocket-Extensions", CLIENT_OFFER);
//! let (mut ws, response) = tungstenite::client(request, stream)?;
//! ws.get_mut().accept(&response_extension_values)?; // the server's answer
//! ws.send(ws.get_ref().outbound(msg, threshold))?;
//! let msg = ws.get_mut().inbound(ws.read()?, max)?;  // after every read
//! ```

use std::io::{self, Read, Write};

use flate2::Decompress;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tungstenite::{Bytes, Message, Utf8Bytes};

use super::codec::{self, InflateError};
use super::negotiate::{self, Agreed};
use crate::conn::boundary::{Compressed, FrameBoundary};

/// The end of an HTTP head.
const HEAD_END: &[u8; 4] = b"\r\n\r\n";

/// A byte stream under a client's tungstenite. During the handshake it
/// hands over nothing past the end of a `101` response's head, so that
/// every frame passes through its frame tracker once the server's answer
/// is known ([`DeflateStream::accept`]); with the extension agreed, the
/// tracker rewrites compressed messages' first headers (tungstenite would
/// refuse RSV1) and reading stops at the end of each data message.
/// Without it, bytes pass unchanged.
#[derive(Debug)]
pub struct DeflateStream<S> {
    inner: S,
    frames: FrameBoundary,
    /// The first bytes of the response (its status line), then how much
    /// of the head's end has been matched; `None` once past the head.
    head: Option<HeadScan>,
    spill: Vec<u8>,
    spill_at: usize,
    agreed: Option<Agreed>,
    /// The server keeps its window between messages (no
    /// `server_no_context_takeover` in its answer): so must the inflater.
    inflater: Option<Box<Decompress>>,
    /// Bytes read from the stream below (the wire, for a plain stream).
    received: u64,
}

#[derive(Debug, Default)]
struct HeadScan {
    status: [u8; 12],
    seen: usize,
    matched: usize,
}

impl HeadScan {
    /// Takes `bytes` of the response; returns how many belong to the head
    /// when it ends within them.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, b) in bytes.iter().enumerate() {
            if self.seen < self.status.len() {
                self.status[self.seen] = *b;
            }
            self.seen += 1;
            self.matched = match (*b == HEAD_END[self.matched], *b == HEAD_END[0]) {
                (true, _) => self.matched + 1,
                (false, true) => 1,
                (false, false) => 0,
            };
            if self.matched == HEAD_END.len() {
                return Some(i + 1);
            }
        }
        None
    }

    /// A `101` answer, after which frames follow; any other response is
    /// read whole, body included, by the handshake.
    fn upgraded(&self) -> bool {
        self.seen >= 12 && &self.status[8..12] == b" 101"
    }
}

impl<S> DeflateStream<S> {
    /// Wraps a connected stream before the opening handshake.
    pub fn new(inner: S) -> DeflateStream<S> {
        DeflateStream {
            inner,
            frames: FrameBoundary::default(),
            head: Some(HeadScan::default()),
            spill: Vec::new(),
            spill_at: 0,
            agreed: None,
            inflater: None,
            received: 0,
        }
    }

    /// Bytes read from the stream below so far, the handshake included.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The stream below.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The stream below, mutably (e.g. to set its deadline).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// What was agreed, once [`DeflateStream::accept`] has seen the answer.
    pub fn agreed(&self) -> Option<Agreed> {
        self.agreed
    }

    /// Takes the server's answer: the `Sec-WebSocket-Extensions` values of
    /// its `101`. An answer the client may not accept is an error, and the
    /// client must fail the connection (RFC 7692 §5).
    pub fn accept(&mut self, values: &[&str]) -> Result<Option<Agreed>, String> {
        self.accept_answer(true, values)
    }

    /// [`DeflateStream::accept`] for a client that may not have offered
    /// the extension: then any extension in the answer is an error.
    pub fn accept_answer(
        &mut self,
        offered: bool,
        values: &[&str],
    ) -> Result<Option<Agreed>, String> {
        if !offered && values.iter().any(|v| !v.trim().is_empty()) {
            return Err(format!(
                "the server answered an extension that was not offered: {:?}",
                values.join(", ")
            ));
        }
        let agreed = negotiate::client_accept(values)?;
        self.agreed = agreed;
        self.head = None;
        if let Some(a) = agreed {
            self.frames.set_deflate();
            if !a.server_no_context_takeover {
                self.inflater = Some(Box::new(Decompress::new_with_window_bits(false, 15)));
            }
        }
        Ok(agreed)
    }

    /// `msg` as it should be sent: compressed (one frame, RSV1 set) when
    /// the extension was agreed, the message is at least `threshold` bytes
    /// and compression makes it smaller. Every message starts from an
    /// empty window (always allowed), so no state is kept.
    pub fn outbound(&self, msg: Message, threshold: usize) -> Message {
        let Some(a) = self.agreed else {
            return msg;
        };
        let (opcode, data) = match msg {
            Message::Text(t) if t.len() >= threshold => (OpData::Text, Bytes::from(t)),
            Message::Binary(b) if b.len() >= threshold => (OpData::Binary, b),
            other => return other,
        };
        let z = codec::compress(&data, a.client_window());
        let compressed = z.len() < data.len();
        let mut f = if compressed {
            Frame::message(z, OpCode::Data(opcode), true)
        } else {
            Frame::message(data, OpCode::Data(opcode), true)
        };
        f.header_mut().rsv1 = compressed;
        Message::Frame(f)
    }

    /// A message tungstenite read, inflated (under `max` bytes) if it came
    /// compressed.
    pub fn inbound(&mut self, msg: Message, max: usize) -> Result<Message, InboundError> {
        let Some(kind) = self.frames.compressed() else {
            return Ok(msg);
        };
        let Message::Binary(data) = msg else {
            return Ok(msg);
        };
        let inflated = match self.inflater.as_deref_mut() {
            Some(d) => codec::inflate_with(d, &data, max),
            None => codec::inflate(&data, max),
        }
        .map_err(InboundError::Inflate)?;
        match kind {
            Compressed::Binary => Ok(Message::Binary(inflated.into())),
            Compressed::Text => Utf8Bytes::try_from(inflated)
                .map(Message::Text)
                .map_err(|_| InboundError::Utf8),
        }
    }
}

/// The `Sec-WebSocket-Extensions` values of a handshake response.
pub fn answer_values(response: &tungstenite::handshake::client::Response) -> Vec<&str> {
    response
        .headers()
        .get_all("Sec-WebSocket-Extensions")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// Why a compressed message from the server could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum InboundError {
    /// It did not inflate (corrupt, or over the size limit).
    Inflate(InflateError),
    /// A text message that is not UTF-8 once inflated.
    Utf8,
}

impl std::fmt::Display for InboundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InboundError::Inflate(InflateError::TooBig) => {
                f.write_str("a compressed message inflates past the size limit")
            }
            InboundError::Inflate(InflateError::Invalid(why)) => {
                write!(f, "invalid compressed data: {why}")
            }
            InboundError::Utf8 => f.write_str("a compressed text message is not UTF-8"),
        }
    }
}

impl std::error::Error for InboundError {}

impl<S: Read> Read for DeflateStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let from_spill = self.spill_at < self.spill.len();
        let n = if from_spill {
            let rest = &self.spill[self.spill_at..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            n
        } else {
            let n = self.inner.read(buf)?;
            self.received += n as u64;
            n
        };
        let kept = match &mut self.head {
            Some(scan) => match scan.scan(&buf[..n]) {
                Some(end) if scan.upgraded() => {
                    // Frames follow: hold them until the answer is known.
                    self.head = None;
                    end
                }
                Some(_) => {
                    self.head = None;
                    n
                }
                None => n,
            },
            None => self.frames.feed(&mut buf[..n]),
        };
        if from_spill {
            self.spill_at += kept;
            if self.spill_at == self.spill.len() {
                self.spill = Vec::new();
                self.spill_at = 0;
            }
        } else if kept < n {
            self.spill = buf[kept..n].to_vec();
            self.spill_at = 0;
        }
        Ok(kept)
    }
}

impl<S: Write> Write for DeflateStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream that reads from a script and discards writes.
    struct Script(Cursor<Vec<u8>>);
    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A server frame (unmasked).
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![b0];
        match payload.len() {
            n @ 0..=125 => f.push(n as u8),
            n => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_head_ends_a_read_only_for_a_101() {
        let mut s = DeflateStream::new(Script(Cursor::new(
            b"HTTP/1.1 101 Switching\r\nA: b\r\n\r\n\x81\x02hi".to_vec(),
        )));
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].ends_with(b"\r\n\r\n"), "stops at the head's end");
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x81\x02hi");
        let mut s = DeflateStream::new(Script(Cursor::new(
            b"HTTP/1.1 400 Bad\r\nContent-Length: 3\r\n\r\nno\n".to_vec(),
        )));
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].ends_with(b"no\n"),
            "a refusal is read with its body"
        );
    }

    #[test]
    fn a_compressed_message_from_the_server_is_read_through_tungstenite() {
        let text = "{\"type\":\"agent_thinking\",\"delta\":\"".repeat(20);
        let z = codec::compress(text.as_bytes(), 15);
        let mut wire = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        // A compressed text message in two fragments, a Ping between, then
        // an uncompressed text message.
        let (a, b) = z.split_at(z.len() / 2);
        wire.extend(frame(0x41, a)); // RSV1, Text, not final
        wire.extend(frame(0x89, b"p"));
        wire.extend(frame(0x80, b)); // final continuation
        wire.extend(frame(0x81, b"plain"));
        let mut s = DeflateStream::new(Script(Cursor::new(wire)));
        let mut head = [0u8; 64];
        let n = s.read(&mut head).unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 101"));
        let a = s
            .accept(&["permessage-deflate; server_no_context_takeover"])
            .unwrap()
            .unwrap();
        assert!(a.server_no_context_takeover);
        let mut ws =
            tungstenite::WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Client, None);
        let mut got = Vec::new();
        loop {
            match ws.read() {
                Ok(m) => got.push(ws.get_mut().inbound(m, 1 << 20).unwrap()),
                Err(tungstenite::Error::Io(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
                Err(tungstenite::Error::Protocol(p)) => {
                    assert_eq!(
                        p,
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
                    );
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            got,
            [
                Message::Ping(Bytes::from_static(b"p")),
                Message::text(text),
                Message::text("plain")
            ]
        );
    }

    #[test]
    fn outbound_compresses_at_the_threshold_only_when_agreed() {
        let mut s = DeflateStream::new(Script(Cursor::new(Vec::new())));
        let m = Message::text("x".repeat(300));
        assert_eq!(s.outbound(m.clone(), 0), m, "nothing agreed yet");
        s.accept(&["permessage-deflate; client_max_window_bits=9"])
            .unwrap();
        let Message::Frame(f) = s.outbound(m.clone(), 100) else {
            panic!("a frame")
        };
        assert!(f.header().rsv1);
        assert_eq!(
            codec::inflate(f.payload(), 1000).unwrap(),
            "x".repeat(300).as_bytes()
        );
        assert_eq!(s.outbound(m.clone(), 301), m, "under the threshold");
    }
}
