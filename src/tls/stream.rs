//! The TLS transport on a non-blocking socket: moves bytes between a
//! sans-IO [`Session`] (`session.rs`) and the mio socket, driven by the
//! reactor like the plain socket, with no thread per connection. The
//! server's side, and the client side for event-driven clients (the load
//! tool). Deadlines are the connection's, not this module's.
//!
//! Socket reads go into a per-thread scratch buffer and are fed to the
//! session from there; a sealed record goes straight to the socket, and
//! only what the socket does not take is kept (by the session, freed once
//! sent), so an idle TLS connection holds no buffer.
//!
//! Reads return plaintext until none is left and the socket says
//! `WouldBlock`, so decrypted data is never stranded waiting for a
//! readiness event that will not come. Writes take plaintext only while
//! less than [`OUT_LIMIT`] of records wait for the socket, and report
//! `WouldBlock` beyond it, so tungstenite's limit (close 1008) still bounds
//! memory.
//!
//! The first byte decides the mode: a TLS handshake starts with 0x16; any
//! other byte is a plain-text client on the TLS port, which the server
//! answers in plain text (400) instead of a TLS alert it cannot read.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ServerConfig};

use super::session::{RECORD_BUF, Records, Sealed, Session, invalid};
use crate::conn::Transport;

/// The record type of a TLS handshake message: every ClientHello starts so.
const HANDSHAKE_RECORD: u8 = 0x16;
/// Bytes read from the socket per call (one full TLS record fits).
const READ_CHUNK: usize = 18 * 1024;
/// Records waiting for the socket beyond which writes say `WouldBlock`.
pub const OUT_LIMIT: usize = 64 * 1024;

thread_local! {
    /// Scratch for socket reads and for sealing one record: reused on
    /// each thread, so no call zero-fills a 17 KiB buffer (about 1 µs).
    static READ_SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
    static RECORD_SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0; RECORD_BUF]);
}

/// The socket side of a TLS stream.
struct Socket {
    tcp: TcpStream,
    /// Bytes read from the socket (records, the handshake included).
    received: u64,
    /// The last socket read was short (Unix: nothing more is waiting).
    drained: bool,
}

impl Socket {
    /// Sends the records the session keeps; `WouldBlock` while some are left.
    fn write_out<C: Records>(&mut self, s: &mut Session<C>) -> io::Result<()> {
        while !s.to_send().is_empty() {
            match self.tcp.write(s.to_send()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => s.sent(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends the records rustls asked to transmit (handshake flights),
    /// as far as the socket takes them now: what it does not take goes
    /// out, exactly once, when it is writable.
    #[inline]
    fn transmit<C: Records>(&mut self, s: &mut Session<C>) -> io::Result<()> {
        if s.take_transmit() {
            self.transmit_now(s)
        } else {
            Ok(())
        }
    }

    #[inline(never)]
    fn transmit_now<C: Records>(&mut self, s: &mut Session<C>) -> io::Result<()> {
        match self.write_out(s) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// Sends a sealed `record` now where the socket takes it (after
    /// anything already waiting); the session keeps the rest.
    fn send_record<C: Records>(&mut self, s: &mut Session<C>, record: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        if s.to_send().is_empty() {
            while sent < record.len() {
                match self.tcp.write(&record[sent..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        s.queue(&record[sent..]);
        Ok(())
    }

    /// Reads one chunk from the socket into `chunk`: the byte count, or
    /// `WouldBlock` (after sending any waiting records) or an EOF error.
    fn recv<C: Records>(&mut self, s: &mut Session<C>, chunk: &mut [u8]) -> io::Result<usize> {
        if std::mem::take(&mut self.drained) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        loop {
            match self.tcp.read(chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection without sending TLS close_notify",
                    ));
                }
                Ok(n) => {
                    self.received += n as u64;
                    self.drained = crate::platform::SHORT_READ_MEANS_DRAINED && n < chunk.len();
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Handshake replies go out before waiting.
                    match self.write_out(s) {
                        Ok(()) => {}
                        Err(w) if w.kind() == io::ErrorKind::WouldBlock => {}
                        Err(w) => return Err(w),
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Decrypted data into `buf`, until some arrives, the peer closes, or
    /// the socket says `WouldBlock`.
    fn read<C: Records>(&mut self, s: &mut Session<C>, buf: &mut [u8]) -> io::Result<usize> {
        if s.has_plaintext() {
            return Ok(s.read_plaintext(buf));
        }
        let mut filled = s.feed(&mut [], buf)?;
        self.transmit(s)?;
        READ_SCRATCH.with_borrow_mut(|chunk| {
            loop {
                if filled > 0 {
                    return Ok(filled);
                }
                if s.peer_closed() {
                    return Ok(0);
                }
                let n = self.recv(s, chunk)?;
                filled = s.feed(&mut chunk[..n], buf)?;
                self.transmit(s)?;
            }
        })
    }

    /// Seals up to one record of `buf` and sends it; `WouldBlock` while
    /// the handshake is not finished or too much waits to be sent.
    fn write<C: Records>(&mut self, s: &mut Session<C>, buf: &[u8]) -> io::Result<usize> {
        let r = self.write_record(s, buf);
        // Reads made here to push the handshake are incidental: the caller
        // did not read, so it will wait for readiness, and a short read
        // here must not answer its next read with `WouldBlock`.
        self.drained = false;
        r
    }

    fn write_record<C: Records>(&mut self, s: &mut Session<C>, buf: &[u8]) -> io::Result<usize> {
        match self.write_out(s) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && s.to_send().len() < OUT_LIMIT => {}
            Err(e) => return Err(e),
        }
        // Data that arrives meanwhile (e.g. during the handshake) is kept.
        let mut fresh = 0;
        READ_SCRATCH.with_borrow_mut(|chunk| {
            RECORD_SCRATCH.with_borrow_mut(|record| {
                loop {
                    let sealed = s.seal(&mut chunk[..fresh], buf, record)?;
                    self.transmit(s)?;
                    match sealed {
                        Sealed::Record { taken, len } => {
                            self.send_record(s, &record[..len])?;
                            return Ok(taken);
                        }
                        Sealed::Nothing => return Ok(0), // `buf` was empty
                        Sealed::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
                        Sealed::Handshaking => {
                            // Not established yet: read on to push the handshake.
                            fresh = self.recv(s, chunk)?;
                        }
                    }
                }
            })
        })
    }

    /// Queues close_notify once, after everything written before it, and
    /// writes out what it can: `WouldBlock` while records wait for the
    /// socket.
    fn close_notify<C: Records>(&mut self, s: &mut Session<C>) -> io::Result<()> {
        s.close_notify();
        self.write_out(s)
    }
}

enum Mode {
    /// Nothing read yet: the first byte decides.
    Sniff(Arc<ServerConfig>),
    Server(Box<Session<UnbufferedServerConnection>>),
    Client(Box<Session<UnbufferedClientConnection>>),
    /// Not TLS at all: bytes pass through, for a plain-text refusal.
    Plain,
}

/// A TLS session over a non-blocking mio socket, server or client side:
/// `Read`/`Write` move plaintext, the stream moves the records. A server
/// stream sniffs the first byte: a plain-text client on the TLS port is
/// passed through for a plain-text 400 ([`TlsStream::is_plain`]).
pub struct TlsStream {
    sock: Socket,
    mode: Mode,
}

/// Calls `$f` on the session of either side.
macro_rules! session {
    ($mode:expr, $s:ident => $f:expr, plain => $p:expr) => {
        match $mode {
            Mode::Server($s) => $f,
            Mode::Client($s) => $f,
            Mode::Plain | Mode::Sniff(_) => $p,
        }
    };
}

impl TlsStream {
    fn with(tcp: TcpStream, mode: Mode) -> TlsStream {
        TlsStream {
            sock: Socket {
                tcp,
                received: 0,
                drained: false,
            },
            mode,
        }
    }

    /// A TLS session to be negotiated on an accepted socket.
    pub fn new(tcp: TcpStream, config: Arc<ServerConfig>) -> TlsStream {
        TlsStream::with(tcp, Mode::Sniff(config))
    }

    /// The client side of a session on a connected socket, for `name`
    /// (SNI and verification): the handshake runs as the stream is read
    /// and written.
    pub fn client(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<TlsStream> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(invalid)?;
        Ok(TlsStream::with(
            tcp,
            Mode::Client(Box::new(Session::new(conn))),
        ))
    }

    /// The socket under it.
    pub fn tcp(&self) -> &TcpStream {
        &self.sock.tcp
    }

    /// The socket under it, to register with a reactor.
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.sock.tcp
    }

    /// The client spoke plain text to this TLS port.
    pub fn is_plain(&self) -> bool {
        matches!(self.mode, Mode::Plain)
    }

    /// The negotiated protocol version and ALPN protocol, once established.
    pub fn negotiated(&self) -> Option<(rustls::ProtocolVersion, Option<Vec<u8>>)> {
        session!(&self.mode, s => s.negotiated(), plain => None)
    }

    /// Heap bytes held for data not yet handed on (0 when idle).
    pub fn buffered(&self) -> usize {
        session!(&self.mode, s => s.buffered(), plain => 0)
    }

    /// Decides the mode from the first byte, without consuming it.
    fn sniff(&mut self) -> io::Result<()> {
        let Mode::Sniff(config) = &self.mode else {
            return Ok(());
        };
        let mut first = [0u8; 1];
        match self.sock.tcp.peek(&mut first)? {
            0 => {} // EOF: the read that follows reports it
            _ if first[0] == HANDSHAKE_RECORD => {
                let conn = UnbufferedServerConnection::new(config.clone()).map_err(invalid)?;
                self.mode = Mode::Server(Box::new(Session::new(conn)));
            }
            _ => self.mode = Mode::Plain,
        }
        Ok(())
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sniff()?;
        let sock = &mut self.sock;
        session!(&mut self.mode, s => sock.read(s, buf), plain => {
            let n = sock.tcp.read(buf)?;
            sock.received += n as u64;
            Ok(n)
        })
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sniff()?;
        let sock = &mut self.sock;
        session!(&mut self.mode, s => sock.write(s, buf), plain => sock.tcp.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        // A caller that flushes is done with this round of reading
        // (tungstenite-driven clients never call `end_reading`).
        self.end_reading();
        let sock = &mut self.sock;
        session!(&mut self.mode, s => sock.write_out(s), plain => Ok(()))
    }
}

impl Transport for TlsStream {
    fn received(&self) -> u64 {
        self.sock.received
    }

    fn short_read_drains(&self) -> bool {
        // A short read of plaintext says nothing about the socket; the
        // stream keeps its own note of short socket reads.
        matches!(self.mode, Mode::Plain) && crate::platform::SHORT_READ_MEANS_DRAINED
    }

    fn handshaking(&self) -> bool {
        match &self.mode {
            Mode::Server(s) => s.handshaking(),
            Mode::Client(s) => s.handshaking(),
            Mode::Sniff(_) => true,
            Mode::Plain => false,
        }
    }

    fn shut_down(&mut self) {
        let sock = &mut self.sock;
        let _ = session!(&mut self.mode, s => sock.close_notify(s), plain => Ok(()));
    }

    /// close_notify after everything written, then the socket's FIN: the
    /// peer reads the whole response, the end of the session, then EOF.
    fn close_write(&mut self) -> io::Result<()> {
        let sock = &mut self.sock;
        session!(&mut self.mode, s => sock.close_notify(s), plain => Ok(()))?;
        self.sock.tcp.shutdown(std::net::Shutdown::Write)
    }

    /// Raw bytes from the socket: a lingering close decrypts nothing.
    fn discard(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.tcp.read(buf)?;
        self.sock.received += n as u64;
        Ok(n)
    }

    fn end_reading(&mut self) {
        self.sock.drained = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A connected pair of non-blocking TLS streams over loopback (the
    /// certificates made in memory).
    fn pair() -> (TlsStream, TlsStream) {
        let (server_cfg, client_cfg) = crate::tls::session::tests::configs(&[]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client_tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_tcp, _) = listener.accept().unwrap();
        server_tcp.set_nonblocking(true).unwrap();
        let server = TlsStream::new(TcpStream::from_std(server_tcp), server_cfg);
        let name = "localhost".try_into().unwrap();
        let client = TlsStream::client(client_tcp, client_cfg, name).unwrap();
        (server, client)
    }

    /// Moves `data` from `from` to `to` through both sockets, bounded.
    fn transfer(from: &mut TlsStream, to: &mut TlsStream, data: &[u8]) -> Vec<u8> {
        let t0 = Instant::now();
        let (mut sent, mut got) = (0, Vec::new());
        let mut buf = [0u8; 512];
        while got.len() < data.len() {
            assert!(t0.elapsed() < Duration::from_secs(5), "stuck");
            if sent < data.len() {
                match from.write(&data[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            } else {
                let _ = from.flush();
            }
            match to.read(&mut buf) {
                Ok(0) => panic!("closed"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn data_after_a_readiness_event_is_read_even_if_the_last_read_was_short() {
        use mio::{Events, Interest, Poll, Token};
        let (mut server, mut client) = pair();
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(client.tcp_mut(), Token(0), Interest::READABLE)
            .unwrap();
        // The client only writes: its writes push the handshake, reading
        // the server's flight (a short read) on the way.
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            assert!(t0.elapsed() < Duration::from_secs(5), "no handshake");
            let _ = server.read(&mut buf);
            match client.write(b"ping") {
                Ok(4) => break,
                Ok(n) => panic!("wrote {n}"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        // (No flush: a flush also ends a round of reading.)
        while server.read(&mut buf).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(5), "ping not received");
        }
        // Later data must be read once the socket reports it.
        server.write_all(b"pong").unwrap();
        server.flush().unwrap();
        let mut got = Vec::new();
        let mut events = Events::with_capacity(8);
        // Edge-triggered: the client reads only when told to, as a
        // reactor does; a stranded byte is never reported again.
        while got.len() < 4 {
            assert!(t0.elapsed() < Duration::from_secs(2), "stranded: {got:?}");
            poll.poll(&mut events, Some(Duration::from_millis(200)))
                .unwrap();
            if events.is_empty() {
                continue;
            }
            loop {
                match client.read(&mut buf) {
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert!(got.ends_with(b"pong"), "{got:?}");
    }

    #[test]
    fn an_idle_session_holds_no_buffer_even_after_a_burst() {
        let (mut server, mut client) = pair();
        assert_eq!(transfer(&mut client, &mut server, b"hello"), b"hello");
        assert!(!server.handshaking() && !client.handshaking());
        assert_eq!(transfer(&mut server, &mut client, b"world"), b"world");
        // A burst both ways, larger than a record and than the socket
        // buffers, read in small pieces.
        let burst: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(transfer(&mut client, &mut server, &burst), burst);
        assert_eq!(transfer(&mut server, &mut client, &burst), burst);
        // Nothing pending either way: every spill buffer was freed.
        assert_eq!(server.buffered(), 0);
        assert_eq!(client.buffered(), 0);
        // Established; the test client offered no ALPN.
        assert_eq!(server.negotiated().map(|n| n.1), Some(None));
    }
}
