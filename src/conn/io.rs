//! What the connection needs of the byte stream under it ([`Transport`]),
//! the wrapper it puts between that stream and tungstenite ([`Io`]), and
//! the buffer sizing that goes with it: batching thresholds, and giving
//! back the buffers a message grew ([`KEEP_GROWN`]).

use std::io::{self, Read, Write};

use tungstenite::protocol::WebSocketConfig;

use super::boundary::FrameBoundary;
use crate::deflate::Agreed;
use crate::deflate::codec::History;
use crate::settings::Limits;

/// What tungstenite may keep, per connection, of the buffer capacity a
/// message grew: its read buffer keeps the size of the largest frame read
/// (the frame is split off the same allocation) and its write buffer that
/// of the largest batch written. When a frame or a batch was larger, the
/// connection swaps tungstenite for a fresh one at the next point where
/// nothing is buffered either way, so that a quiet connection is back to
/// its idle footprint. tungstenite offers no way to shrink its buffers, and
/// a fresh one costs about what a message costs the allocator anyway: a
/// `Box` and a read buffer allocated, the grown buffers freed (measured in
/// BENCHMARKS.md, "Idle means idle").
pub(super) const KEEP_GROWN: usize = 256;

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

/// A non-blocking byte stream under a connection: plain TCP, TLS, or an
/// in-memory pipe in tests. `read` and `write` return `WouldBlock` when
/// they cannot make progress; `flush` returns `WouldBlock` while bytes the
/// stream accepted are still waiting for the socket.
pub trait Transport: Read + Write {
    /// Bytes received from the peer at this level (for TLS: records, the
    /// handshake included). The first proves the peer is there (the
    /// connect deadline), later ones that it is alive.
    fn received(&self) -> u64;

    /// Whether a read that returned fewer bytes than asked proves nothing
    /// more is waiting anywhere, so the read that would only say
    /// `WouldBlock` can be skipped (see `platform::SHORT_READ_MEANS_DRAINED`).
    fn short_read_drains(&self) -> bool;

    /// The transport's own handshake (TLS) is still running: an HTTP
    /// answer cannot be delivered on it yet.
    fn handshaking(&self) -> bool {
        false
    }

    /// Ends the transport's session politely (TLS `close_notify`), best
    /// effort, right before the connection lets go of it.
    fn shut_down(&mut self) {}

    /// The reader stops reading for now (it will wait for readiness): a
    /// short read seen earlier proves nothing about data that arrives
    /// later, so the next read must ask the socket.
    fn end_reading(&mut self) {}

    /// Ends the sending side for a lingering close: writes out what the
    /// transport still holds, ends its session (TLS `close_notify`), then
    /// shuts down the socket's write side, so the peer reads every byte
    /// and then EOF. `WouldBlock` while bytes wait for the socket: call
    /// again once it is writable. Calling it again after `Ok` is harmless.
    fn close_write(&mut self) -> io::Result<()> {
        self.flush()
    }

    /// Reads and throws away what the peer sends, below any session (a
    /// lingering close decrypts nothing). `Ok(0)` at EOF.
    fn discard(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }
}

/// A stream wrapper that remembers whether the last write would block,
/// counts inbound bytes (any inbound byte proves the peer alive), follows
/// frame boundaries, and saves the read that would only say `WouldBlock`
/// after a short read where the platform allows it (see
/// `platform::SHORT_READ_MEANS_DRAINED`): one syscall less per message.
///
/// It also decouples the size of a socket read from tungstenite's read
/// buffer. tungstenite allocates that buffer up front and never reads
/// more than its size at once, so the buffer is what an idle connection
/// costs and, for large messages, what a syscall brings in. Here the
/// socket is read into a per-thread scratch buffer of `SCRATCH` bytes (64 KiB);
/// what tungstenite did not ask for waits in `spill`, allocated only
/// while it holds bytes. Reads never say `WouldBlock` while it does.
#[derive(Debug)]
pub struct Io<S> {
    pub(super) inner: S,
    pub(super) write_blocked: bool,
    drained: bool,
    pub(super) bytes_in: u64,
    pub(super) frames: FrameBoundary,
    /// The permessage-deflate agreement: offered in the 101 while the
    /// request waits for its answer, in force once open.
    pub(super) deflate: Option<Agreed>,
    /// `--deflate takeover` only: what this connection sent compressed
    /// last, while it follows a run (dropped when it has none left).
    pub(super) history: Option<Box<History>>,
    spill: Vec<u8>,
    spill_at: usize,
}

/// Bytes asked of the socket per read (see [`Io`]).
pub const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

impl<S> Io<S> {
    pub(super) fn new(inner: S) -> Io<S> {
        Io {
            inner,
            write_blocked: false,
            drained: false,
            bytes_in: 0,
            frames: FrameBoundary::default(),
            deflate: None,
            history: None,
            spill: Vec::new(),
            spill_at: 0,
        }
    }

    #[cfg(test)]
    pub(super) fn spill_capacity(&self) -> usize {
        self.spill.capacity()
    }

    /// Bytes that arrived with the request head: read before the socket,
    /// and before what still waits in the spill (a read of the head can
    /// stop with bytes there), through the frame tracker like any other.
    pub(super) fn unread(&mut self, mut bytes: Vec<u8>) {
        if self.spill_at < self.spill.len() {
            bytes.extend_from_slice(&self.spill[self.spill_at..]);
        }
        self.spill = bytes;
        self.spill_at = 0;
    }
}

impl<S: Transport> Io<S> {
    /// See [`Transport::end_reading`]: the shortcut after a short read holds
    /// only until the owner waits again.
    pub(super) fn end_reading(&mut self) {
        self.drained = false;
        self.inner.end_reading();
    }

    /// One read of the socket into `buf`, with the drained note.
    fn read_socket(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes_in += n as u64;
        self.drained = self.inner.short_read_drains() && n > 0 && n < buf.len();
        Ok(n)
    }
}

impl<S: Transport> Read for Io<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            // Asks for nothing: the socket is not read (its bytes would
            // all go to the spill).
            return Ok(0);
        }
        // What the frame tracker does not take (it stops at the end of a
        // data message under permessage-deflate) waits in the spill.
        if self.spill_at < self.spill.len() {
            let rest = &self.spill[self.spill_at..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            let kept = self.frames.feed(&mut buf[..n]);
            self.spill_at += kept;
            if self.spill_at == self.spill.len() {
                // Give the memory back: an idle connection holds no spill.
                self.spill = Vec::new();
                self.spill_at = 0;
            }
            return Ok(kept);
        }
        if std::mem::take(&mut self.drained) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if buf.len() >= SCRATCH / 4 {
            let n = self.read_socket(buf)?;
            let kept = self.frames.feed(&mut buf[..n]);
            if kept < n {
                self.spill = buf[kept..n].to_vec();
            }
            return Ok(kept);
        }
        SCRATCH_BUF.with_borrow_mut(|scratch| -> io::Result<usize> {
            let got = self.read_socket(scratch)?;
            let n = got.min(buf.len());
            buf[..n].copy_from_slice(&scratch[..n]);
            let kept = self.frames.feed(&mut buf[..n]);
            if got > kept {
                self.spill = scratch[kept..got].to_vec();
            }
            Ok(kept)
        })
    }
}

impl<S: Transport> Write for Io<S> {
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
        // A TLS transport holds records the socket did not take yet.
        let r = self.inner.flush();
        self.write_blocked = matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        r
    }
}

impl Transport for mio::net::TcpStream {
    fn received(&self) -> u64 {
        // Counted by `Io` for plain streams: every byte reaches it.
        0
    }

    fn short_read_drains(&self) -> bool {
        crate::platform::SHORT_READ_MEANS_DRAINED
    }

    fn close_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Runs `f` with this thread's socket scratch buffer (reads whose bytes
/// are not kept: the lingering close).
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH_BUF.with_borrow_mut(|b| f(b))
}
