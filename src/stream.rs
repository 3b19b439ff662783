//! The byte stream under a connection: plain TCP, or TLS over TCP. One
//! type for an owner to hold and a reactor to poll (the server's worker,
//! the load tool's clients); the connection sees only its `Transport`.

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::conn::Transport;
use crate::platform::{Pollable, RawSource};
use crate::tls::TlsStream;

/// A non-blocking socket a connection runs over, plain or TLS, registered
/// with a [`Reactor`](crate::reactor::Reactor) as one source.
pub enum Stream {
    /// Plain TCP (`ws://`, `http://`).
    Plain(TcpStream),
    /// Boxed: a TLS session is large, and plain connections stay small.
    Tls(Box<TlsStream>),
}

impl Stream {
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.tcp(),
        }
    }

    fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.tcp_mut(),
        }
    }

    /// A plain-text client on a TLS port (answered in plain text).
    pub fn plain_on_tls_port(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.is_plain())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

impl Transport for Stream {
    fn received(&self) -> u64 {
        match self {
            Stream::Plain(s) => s.received(),
            Stream::Tls(t) => t.received(),
        }
    }

    fn short_read_drains(&self) -> bool {
        match self {
            Stream::Plain(s) => s.short_read_drains(),
            Stream::Tls(t) => t.short_read_drains(),
        }
    }

    fn handshaking(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.handshaking())
    }

    fn shut_down(&mut self) {
        if let Stream::Tls(t) = self {
            t.shut_down();
        }
    }

    fn end_reading(&mut self) {
        if let Stream::Tls(t) = self {
            t.end_reading();
        }
    }

    fn close_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.close_write(),
            Stream::Tls(t) => t.close_write(),
        }
    }

    fn discard(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.discard(buf),
            Stream::Tls(t) => t.discard(buf),
        }
    }
}

impl mio::event::Source for Stream {
    fn register(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        self.tcp_mut().register(r, token, interest)
    }

    fn reregister(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        self.tcp_mut().reregister(r, token, interest)
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.tcp_mut().deregister(r)
    }
}

impl Pollable for Stream {
    fn raw_source(&self) -> RawSource {
        self.tcp().raw_source()
    }
}
