//! The transport wrapper under tungstenite ([`Io`]) and the buffer sizing
//! that goes with it: batching thresholds, and giving back the buffers a
//! burst grew ([`COMPACT_OVER`]).

use std::io::{self, Read, Write};

use tungstenite::protocol::WebSocketConfig;

use super::boundary::FrameBoundary;
use crate::settings::Limits;

/// A burst (one inbound frame, or outbound bytes queued between two moments
/// of an empty write buffer) above this leaves tungstenite's buffers grown;
/// the connection then swaps tungstenite for a fresh one at the next point
/// where nothing is buffered either way. Below it, capacity is kept.
pub(super) const COMPACT_OVER: usize = 32 * 1024;

/// Batching threshold for outbound frames: below it, frames queue and go
/// out in one write when the owner flushes.
fn write_batch(l: &Limits) -> usize {
    (l.max_outbound / 2).min(16 * 1024)
}

/// tungstenite's configuration for these limits.
pub fn ws_config(l: &Limits) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(l.read_buffer)
        .write_buffer_size(write_batch(l))
        .max_write_buffer_size(l.max_outbound)
        .max_message_size(Some(l.max_message))
        .max_frame_size(Some(l.max_frame))
}

/// A stream wrapper that remembers whether the last write would block,
/// counts inbound bytes (any inbound byte proves the peer alive), follows
/// frame boundaries, and saves the read that would only say `WouldBlock`
/// after a short read where the platform allows it (see
/// `platform::SHORT_READ_MEANS_DRAINED`): one syscall less per message.
#[derive(Debug)]
pub struct Io<S> {
    pub(super) inner: S,
    pub(super) write_blocked: bool,
    drained: bool,
    pub(super) bytes_in: u64,
    pub(super) frames: FrameBoundary,
}

impl<S> Io<S> {
    pub(super) fn new(inner: S) -> Io<S> {
        Io {
            inner,
            write_blocked: false,
            drained: false,
            bytes_in: 0,
            frames: FrameBoundary::default(),
        }
    }
}

impl<S: Read> Read for Io<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if std::mem::take(&mut self.drained) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.inner.read(buf)?;
        self.bytes_in += n as u64;
        self.frames.feed(&buf[..n]);
        self.drained = crate::platform::SHORT_READ_MEANS_DRAINED && n > 0 && n < buf.len();
        Ok(n)
    }
}

impl<S: Write> Write for Io<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.write_blocked = true;
                Err(e)
            }
            r => {
                self.write_blocked = false;
                r
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
