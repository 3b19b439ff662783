//! A non-blocking TLS transport: rustls' unbuffered (sans-IO) connection
//! over a non-blocking TCP socket, driven by the reactor like the plain
//! socket, with no thread per connection. The server's side, and the
//! client side for event-driven clients (the load tool).
//!
//! Buffers are this module's, not rustls': records are read into a stack
//! buffer and decrypted in place there, and plaintext and ciphertext go
//! straight to the caller and the socket when they fit. Only what cannot
//! be handed on at once — half a record, plaintext beyond the caller's
//! buffer, records the socket did not take — spills into a heap buffer,
//! which is freed as soon as it is empty. An idle TLS connection therefore
//! holds no buffer at all (rustls' buffered API keeps a 4 KiB read buffer
//! per connection for its whole life).
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
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{ClientConfig, ServerConfig};

use crate::conn::Transport;

/// The record type of a TLS handshake message: every ClientHello starts so.
const HANDSHAKE_RECORD: u8 = 0x16;
/// Bytes read from the socket per call (one full TLS record fits).
const READ_CHUNK: usize = 18 * 1024;
/// Plaintext encrypted per write call: one record.
const WRITE_CHUNK: usize = 16 * 1024;
/// Room for one record's header, content type, padding and tag.
const RECORD_OVERHEAD: usize = 256;
/// Records waiting for the socket beyond which writes say `WouldBlock`.
pub const OUT_LIMIT: usize = 64 * 1024;

/// What the stream needs of either side's unbuffered connection.
trait Records {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn handshaking(&self) -> bool;
    fn version_alpn(&self) -> (Option<rustls::ProtocolVersion>, Option<Vec<u8>>);
}

impl Records for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
    fn version_alpn(&self) -> (Option<rustls::ProtocolVersion>, Option<Vec<u8>>) {
        (
            self.protocol_version(),
            self.alpn_protocol().map(<[u8]>::to_vec),
        )
    }
}

impl Records for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
    fn version_alpn(&self) -> (Option<rustls::ProtocolVersion>, Option<Vec<u8>>) {
        (
            self.protocol_version(),
            self.alpn_protocol().map(<[u8]>::to_vec),
        )
    }
}

thread_local! {
    /// Scratch for socket reads and for encrypting one record: reused on
    /// each thread, so no call zero-fills a 17 KiB buffer (about 1 µs).
    static READ_SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
    static RECORD_SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0; WRITE_CHUNK + RECORD_OVERHEAD]);
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Removes `n` bytes from the front of a spill buffer, freeing it once empty.
fn consume(buf: &mut Vec<u8>, n: usize) {
    if n >= buf.len() {
        *buf = Vec::new();
    } else {
        buf.drain(..n);
    }
}

/// Writes spilled records; `WouldBlock` while some are left.
fn write_out(outgoing: &mut Vec<u8>, tcp: &mut TcpStream) -> io::Result<()> {
    while !outgoing.is_empty() {
        match tcp.write(outgoing) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => consume(outgoing, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `records` now where the socket takes them (after anything
/// already waiting); the rest spills into `outgoing`.
fn send_records(outgoing: &mut Vec<u8>, tcp: &mut TcpStream, records: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    if outgoing.is_empty() {
        while sent < records.len() {
            match tcp.write(&records[sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    outgoing.extend_from_slice(&records[sent..]);
    Ok(())
}

/// One TLS session and the bytes it could not hand on yet.
struct Session<C> {
    conn: C,
    /// Records (or half of one) read but not yet processed.
    incoming: Vec<u8>,
    /// Decrypted data the caller has not read yet.
    plaintext: Vec<u8>,
    /// Encoded records the socket has not taken yet.
    outgoing: Vec<u8>,
    peer_closed: bool,
    eof: bool,
    /// The last socket read was short (Unix: nothing more is waiting).
    drained: bool,
    failed: bool,
    /// close_notify was queued: it is sent once.
    notified: bool,
}

/// Where decrypted data goes while records are processed.
struct Sink<'a> {
    buf: &'a mut [u8],
    filled: usize,
}

/// Why processing stopped.
enum Stop {
    /// The handshake needs more input.
    Blocked,
    /// Established, nothing to do until more input or data to send.
    Idle,
    /// This many bytes of the data to send were encrypted and sent.
    Sent(usize),
    /// Both sides closed.
    Closed,
}

impl<C: Records> Session<C> {
    fn new(conn: C) -> Session<C> {
        Session {
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            outgoing: Vec::new(),
            peer_closed: false,
            eof: false,
            drained: false,
            failed: false,
            notified: false,
        }
    }

    /// Writes spilled records; `WouldBlock` while some are left.
    fn write_out(&mut self, tcp: &mut TcpStream) -> io::Result<()> {
        write_out(&mut self.outgoing, tcp)
    }

    /// Processes `input` (records, in order): decrypted data goes to
    /// `sink` then to the plaintext spill, handshake records are encoded
    /// and sent, and once established up to one record of `send` is
    /// encrypted and sent. Every state rustls reports is handled before it
    /// is asked again. Returns how many bytes of `input` were used up (the
    /// rest is an incomplete record or handshake message) and why it
    /// stopped.
    fn process(
        &mut self,
        tcp: &mut TcpStream,
        input: &mut [u8],
        sink: &mut Sink,
        send: Option<&[u8]>,
    ) -> io::Result<(usize, Stop)> {
        let mut used = 0;
        loop {
            let UnbufferedStatus { mut discard, state } = self.conn.process(&mut input[used..]);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    self.failed = true;
                    return Err(invalid(e));
                }
            };
            let stop = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        let record = record.map_err(invalid)?;
                        discard += record.discard;
                        let p = record.payload;
                        let room = (sink.buf.len() - sink.filled).min(p.len());
                        sink.buf[sink.filled..sink.filled + room].copy_from_slice(&p[..room]);
                        sink.filled += room;
                        self.plaintext.extend_from_slice(&p[room..]);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    let at = self.outgoing.len();
                    let written = match e.encode(&mut self.outgoing[at..]) {
                        Ok(n) => n,
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => {
                            self.outgoing.resize(at + required_size, 0);
                            e.encode(&mut self.outgoing[at..]).map_err(invalid)?
                        }
                        Err(other) => return Err(invalid(other)),
                    };
                    self.outgoing.truncate(at + written);
                    None
                }
                ConnectionState::TransmitTlsData(t) => {
                    // What the socket does not take now stays spilled and
                    // goes out exactly once, later: done() may be called.
                    match write_out(&mut self.outgoing, tcp) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                    t.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::WriteTraffic(mut w) => match send {
                    Some(data) if !data.is_empty() => {
                        let take = data.len().min(WRITE_CHUNK);
                        RECORD_SCRATCH.with_borrow_mut(|record| {
                            let n = w.encrypt(&data[..take], record).map_err(|e| match e {
                                EncryptError::InsufficientSize(s) => invalid(format!(
                                    "record buffer too small ({} needed)",
                                    s.required_size
                                )),
                                other => invalid(other),
                            })?;
                            send_records(&mut self.outgoing, tcp, &record[..n])
                        })?;
                        Some(Stop::Sent(take))
                    }
                    _ => Some(Stop::Idle),
                },
                ConnectionState::BlockedHandshake => Some(Stop::Blocked),
                ConnectionState::Closed => Some(Stop::Closed),
                // 0-RTT is not enabled; anything newer: wait for input.
                _ => Some(Stop::Blocked),
            };
            used += discard;
            if let Some(stop) = stop {
                return Ok((used, stop));
            }
        }
    }

    /// Reads one chunk from the socket into `chunk`: the byte count, or
    /// `WouldBlock` (after sending any waiting records) or an EOF error.
    fn recv(
        &mut self,
        tcp: &mut TcpStream,
        chunk: &mut [u8],
        received: &mut u64,
    ) -> io::Result<usize> {
        if std::mem::take(&mut self.drained) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        loop {
            match tcp.read(chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection without sending TLS close_notify",
                    ));
                }
                Ok(n) => {
                    *received += n as u64;
                    self.drained = crate::platform::SHORT_READ_MEANS_DRAINED && n < chunk.len();
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Handshake replies go out before waiting.
                    match self.write_out(tcp) {
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

    /// Processes the spill, then `fresh` bytes from the socket: whole
    /// records in place when nothing is spilled, the rest spilled.
    fn take_in(
        &mut self,
        tcp: &mut TcpStream,
        fresh: &mut [u8],
        sink: &mut Sink,
        send: Option<&[u8]>,
    ) -> io::Result<Stop> {
        if self.incoming.is_empty() {
            let (used, stop) = self.process(tcp, fresh, sink, send)?;
            self.incoming.extend_from_slice(&fresh[used..]);
            Ok(stop)
        } else {
            let mut pending = std::mem::take(&mut self.incoming);
            pending.extend_from_slice(fresh);
            let (used, stop) = self.process(tcp, &mut pending, sink, send)?;
            consume(&mut pending, used);
            self.incoming = pending;
            Ok(stop)
        }
    }

    /// Decrypted data into `buf`, until some arrives, the peer closes, or
    /// the socket says `WouldBlock`.
    fn read(
        &mut self,
        tcp: &mut TcpStream,
        buf: &mut [u8],
        received: &mut u64,
    ) -> io::Result<usize> {
        if !self.plaintext.is_empty() {
            let n = buf.len().min(self.plaintext.len());
            buf[..n].copy_from_slice(&self.plaintext[..n]);
            consume(&mut self.plaintext, n);
            return Ok(n);
        }
        let mut sink = Sink { buf, filled: 0 };
        self.take_in(tcp, &mut [], &mut sink, None)?;
        READ_SCRATCH.with_borrow_mut(|chunk| {
            loop {
                if sink.filled > 0 {
                    return Ok(sink.filled);
                }
                if self.peer_closed {
                    return Ok(0);
                }
                let n = self.recv(tcp, chunk, received)?;
                if let Stop::Closed = self.take_in(tcp, &mut chunk[..n], &mut sink, None)? {
                    self.peer_closed = true;
                }
            }
        })
    }

    /// Encrypts up to one record of `buf` and sends it; `WouldBlock`
    /// while the handshake is not finished or too much waits to be sent.
    fn write(&mut self, tcp: &mut TcpStream, buf: &[u8], received: &mut u64) -> io::Result<usize> {
        let r = self.write_record(tcp, buf, received);
        // Reads made here to push the handshake are incidental: the caller
        // did not read, so it will wait for readiness, and a short read
        // here must not answer its next read with `WouldBlock`.
        self.drained = false;
        r
    }

    fn write_record(
        &mut self,
        tcp: &mut TcpStream,
        buf: &[u8],
        received: &mut u64,
    ) -> io::Result<usize> {
        match self.write_out(tcp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.outgoing.len() < OUT_LIMIT => {}
            Err(e) => return Err(e),
        }
        // Data that arrives meanwhile (e.g. during the handshake) is kept.
        let mut none = [0u8; 0];
        let mut sink = Sink {
            buf: &mut none,
            filled: 0,
        };
        let mut fresh = 0;
        READ_SCRATCH.with_borrow_mut(|chunk| {
            loop {
                match self.take_in(tcp, &mut chunk[..fresh], &mut sink, Some(buf))? {
                    Stop::Sent(n) => return Ok(n),
                    Stop::Idle => return Ok(0), // `buf` was empty
                    Stop::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
                    Stop::Blocked => {
                        // Not established yet: read on to push the handshake.
                        fresh = self.recv(tcp, chunk, received)?;
                    }
                }
            }
        })
    }

    /// Queues close_notify once, after everything written before it, and
    /// writes out what it can: `WouldBlock` while records wait for the
    /// socket. A failed or unfinished session has nothing to notify.
    fn close_notify(&mut self, tcp: &mut TcpStream) -> io::Result<()> {
        if !self.notified && !self.failed && !self.conn.handshaking() {
            self.notified = true;
            let mut pending = std::mem::take(&mut self.incoming);
            let status = self.conn.process(&mut pending);
            if let Ok(ConnectionState::WriteTraffic(mut w)) = status.state {
                let mut record = [0u8; RECORD_OVERHEAD]; // small: an alert
                if let Ok(n) = w.queue_close_notify(&mut record) {
                    send_records(&mut self.outgoing, tcp, &record[..n])?;
                }
            }
        }
        self.write_out(tcp)
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

pub struct TlsStream {
    tcp: TcpStream,
    mode: Mode,
    received: u64,
}

/// Calls `$f` on the session of either side.
macro_rules! session {
    ($self:ident, $s:ident => $f:expr, plain => $p:expr) => {
        match &mut $self.mode {
            Mode::Server($s) => $f,
            Mode::Client($s) => $f,
            Mode::Plain | Mode::Sniff(_) => $p,
        }
    };
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

    /// The client side of a session on a connected socket, for `name`
    /// (SNI and verification): the handshake runs as the stream is read
    /// and written.
    pub fn client(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<TlsStream> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(invalid)?;
        Ok(TlsStream {
            tcp,
            mode: Mode::Client(Box::new(Session::new(conn))),
            received: 0,
        })
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
        let (version, alpn) = match &self.mode {
            Mode::Server(s) if !s.conn.handshaking() => s.conn.version_alpn(),
            Mode::Client(s) if !s.conn.handshaking() => s.conn.version_alpn(),
            _ => return None,
        };
        Some((version?, alpn))
    }

    /// Heap bytes held for data not yet handed on (0 when idle).
    pub fn buffered(&self) -> usize {
        match &self.mode {
            Mode::Server(s) => {
                s.incoming.capacity() + s.plaintext.capacity() + s.outgoing.capacity()
            }
            Mode::Client(s) => {
                s.incoming.capacity() + s.plaintext.capacity() + s.outgoing.capacity()
            }
            _ => 0,
        }
    }

    /// Decides the mode from the first byte, without consuming it.
    fn sniff(&mut self) -> io::Result<()> {
        let Mode::Sniff(config) = &self.mode else {
            return Ok(());
        };
        let mut first = [0u8; 1];
        match self.tcp.peek(&mut first)? {
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
        let (tcp, received) = (&mut self.tcp, &mut self.received);
        session!(self, s => s.read(tcp, buf, received), plain => {
            let n = tcp.read(buf)?;
            *received += n as u64;
            Ok(n)
        })
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sniff()?;
        let (tcp, received) = (&mut self.tcp, &mut self.received);
        session!(self, s => s.write(tcp, buf, received), plain => tcp.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        // A caller that flushes is done with this round of reading
        // (tungstenite-driven clients never call `end_reading`).
        self.end_reading();
        let tcp = &mut self.tcp;
        session!(self, s => s.write_out(tcp), plain => Ok(()))
    }
}

impl Transport for TlsStream {
    fn received(&self) -> u64 {
        self.received
    }

    fn short_read_drains(&self) -> bool {
        // A short read of plaintext says nothing about the socket; the
        // session keeps its own note of short socket reads.
        matches!(self.mode, Mode::Plain) && crate::platform::SHORT_READ_MEANS_DRAINED
    }

    fn handshaking(&self) -> bool {
        match &self.mode {
            Mode::Server(s) => s.conn.handshaking(),
            Mode::Client(s) => s.conn.handshaking(),
            Mode::Sniff(_) => true,
            Mode::Plain => false,
        }
    }

    fn shut_down(&mut self) {
        let tcp = &mut self.tcp;
        let _ = session!(self, s => s.close_notify(tcp), plain => Ok(()));
    }

    /// close_notify after everything written, then the socket's FIN: the
    /// peer reads the whole response, the end of the session, then EOF.
    fn close_write(&mut self) -> io::Result<()> {
        let tcp = &mut self.tcp;
        session!(self, s => s.close_notify(tcp), plain => Ok(()))?;
        self.tcp.shutdown(std::net::Shutdown::Write)
    }

    /// Raw bytes from the socket: a lingering close decrypts nothing.
    fn discard(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.received += n as u64;
        Ok(n)
    }

    fn end_reading(&mut self) {
        session!(self, s => s.drained = false, plain => ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A connected pair of non-blocking TLS streams over loopback.
    fn pair() -> (TlsStream, TlsStream) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pollcap-stream-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let server_cfg = Arc::new(crate::tls::load(&c, &k).unwrap());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client_cfg = Arc::new(
            ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
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
