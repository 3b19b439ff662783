//! A server-side TLS transport: rustls' sans-IO connection over a
//! non-blocking TCP socket, driven by the reactor like the plain socket
//! (`read_tls` / `process_new_packets` / `write_tls`), with no thread per
//! connection.
//!
//! Reads return plaintext until rustls has none and the socket says
//! `WouldBlock`, so decrypted data is never left waiting for a readiness
//! event that will not come. Writes hand plaintext to rustls only while its
//! buffer of unsent records is under its limit, and report `WouldBlock`
//! beyond it, so tungstenite's own limit (close 1008) still bounds memory.
//!
//! The first byte decides the mode: a TLS handshake starts with 0x16; any
//! other byte is a plain-text client on the TLS port, which the server
//! answers in plain text (400) instead of a TLS alert it cannot read.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

use crate::conn::Transport;

/// The record type of a TLS handshake message: every ClientHello starts so.
const HANDSHAKE_RECORD: u8 = 0x16;

enum Mode {
    /// Nothing read yet: the first byte decides.
    Sniff(Arc<ServerConfig>),
    Tls(Box<ServerConnection>),
    /// Not TLS at all: bytes pass through, for a plain-text refusal.
    Plain,
}

pub struct TlsStream {
    tcp: TcpStream,
    mode: Mode,
    received: u64,
}

impl TlsStream {
    /// A TLS session to be negotiated on an accepted socket.
    pub fn new(tcp: TcpStream, config: Arc<ServerConfig>) -> TlsStream {
        TlsStream {
            tcp,
            mode: Mode::Sniff(config),
            received: 0,
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// The client spoke plain text to this TLS port.
    pub fn is_plain(&self) -> bool {
        matches!(self.mode, Mode::Plain)
    }

    /// The negotiated protocol version and ALPN protocol, once established.
    pub fn negotiated(&self) -> Option<(rustls::ProtocolVersion, Option<Vec<u8>>)> {
        match &self.mode {
            Mode::Tls(c) if !c.is_handshaking() => {
                Some((c.protocol_version()?, c.alpn_protocol().map(<[u8]>::to_vec)))
            }
            _ => None,
        }
    }

    /// Decides the mode from the first byte, without consuming it.
    fn sniff(&mut self) -> io::Result<()> {
        let Mode::Sniff(config) = &self.mode else {
            return Ok(());
        };
        let mut first = [0u8; 1];
        match self.tcp.peek(&mut first)? {
            0 => return Ok(()), // EOF: the read that follows reports it
            _ if first[0] == HANDSHAKE_RECORD => {
                let conn = ServerConnection::new(config.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                self.mode = Mode::Tls(Box::new(conn));
            }
            _ => self.mode = Mode::Plain,
        }
        Ok(())
    }

    /// Writes queued records until none are left or the socket blocks.
    fn write_records(tls: &mut ServerConnection, tcp: &mut TcpStream) -> io::Result<()> {
        while tls.wants_write() {
            match tls.write_tls(tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `WouldBlock` is the normal "socket full" answer, not a failure.
fn blocked(r: &io::Result<()>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sniff()?;
        let tls = match &mut self.mode {
            Mode::Tls(tls) => tls,
            Mode::Plain | Mode::Sniff(_) => {
                let n = self.tcp.read(buf)?;
                self.received += n as u64;
                return Ok(n);
            }
        };
        loop {
            // Plaintext already decrypted comes first.
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n), // 0: the peer sent close_notify
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e), // EOF without close_notify
            }
            let got = match tls.read_tls(&mut self.tcp) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Handshake replies and alerts go out now.
                    let w = Self::write_records(tls, &mut self.tcp);
                    if w.is_err() && !blocked(&w) {
                        return w.map(|()| 0);
                    }
                    return Err(e);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.received += got as u64;
            if let Err(e) = tls.process_new_packets() {
                // rustls queued an alert: send it, then fail.
                let _ = Self::write_records(tls, &mut self.tcp);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            let w = Self::write_records(tls, &mut self.tcp);
            if w.is_err() && !blocked(&w) {
                return w.map(|()| 0);
            }
            if got == 0 {
                // The socket is closed: rustls now says whether cleanly.
                return match tls.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sniff()?;
        let tls = match &mut self.mode {
            Mode::Tls(tls) => tls,
            Mode::Plain | Mode::Sniff(_) => return self.tcp.write(buf),
        };
        let first = Self::write_records(tls, &mut self.tcp);
        if first.is_err() && !blocked(&first) {
            return first.map(|()| 0);
        }
        // rustls takes plaintext only while its unsent records are under
        // its buffer limit; past it, this is backpressure.
        let n = tls.writer().write(buf)?;
        let _ = Self::write_records(tls, &mut self.tcp);
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.mode {
            Mode::Tls(tls) => {
                Self::write_records(tls, &mut self.tcp)?;
                tls.writer().flush()
            }
            Mode::Plain | Mode::Sniff(_) => Ok(()),
        }
    }
}

impl Transport for TlsStream {
    fn received(&self) -> u64 {
        self.received
    }

    fn short_read_drains(&self) -> bool {
        // A short read of plaintext says nothing about the socket.
        matches!(self.mode, Mode::Plain) && crate::platform::SHORT_READ_MEANS_DRAINED
    }

    fn handshaking(&self) -> bool {
        match &self.mode {
            Mode::Tls(tls) => tls.is_handshaking(),
            Mode::Sniff(_) => true,
            Mode::Plain => false,
        }
    }

    fn shut_down(&mut self) {
        if let Mode::Tls(tls) = &mut self.mode
            && !tls.is_handshaking()
        {
            tls.send_close_notify();
            let _ = Self::write_records(tls, &mut self.tcp);
        }
    }
}
