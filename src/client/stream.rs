//! The stream under a client connection: TCP whose every read and write
//! ends by one absolute deadline, plain or with TLS on top (the records
//! inherit the deadline).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::Error as WsError;

/// A TCP stream whose reads and writes all end by one absolute deadline.
/// Expiry is reported as `TimedOut` (never `WouldBlock`, which tungstenite
/// would take for a non-blocking stream).
#[derive(Debug)]
pub struct DeadlineStream {
    inner: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    pub(super) fn new(inner: TcpStream, deadline: Instant) -> DeadlineStream {
        DeadlineStream { inner, deadline }
    }

    fn arm(&self, set: impl Fn(&TcpStream, Option<Duration>) -> io::Result<()>) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        set(&self.inner, Some(left))
    }

    fn expired(e: io::Error) -> io::Error {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            io::ErrorKind::TimedOut.into()
        } else {
            e
        }
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(TcpStream::set_read_timeout)?;
        self.inner.read(buf).map_err(Self::expired)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(TcpStream::set_write_timeout)?;
        self.inner.write(buf).map_err(Self::expired)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The connection's stream: plain, or TLS over the same deadline-bound
/// socket (the TLS records inherit its deadlines).
#[derive(Debug)]
pub enum ClientStream {
    /// `ws://`: the socket itself.
    Plain(DeadlineStream),
    /// `wss://`: a rustls session over the socket.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, DeadlineStream>>),
}

impl ClientStream {
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => &s.inner,
            ClientStream::Tls(t) => &t.sock.inner,
        }
    }

    /// Every read and write from now on ends by `at`.
    pub(super) fn set_deadline(&mut self, at: Instant) {
        match self {
            ClientStream::Plain(s) => s.deadline = at,
            ClientStream::Tls(t) => t.sock.deadline = at,
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.read(buf),
            ClientStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.write(buf),
            ClientStream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.flush(),
            ClientStream::Tls(t) => t.flush(),
        }
    }
}

/// The stream's deadline passed (as tungstenite reports it).
pub(super) fn timed_out(e: &WsError) -> bool {
    matches!(e, WsError::Io(io) if io.kind() == io::ErrorKind::TimedOut)
}
