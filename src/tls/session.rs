//! A TLS session, bytes in and bytes out, as rustls' unbuffered API is:
//! fed the bytes received ([`Session::feed`]), it hands back decrypted
//! data and keeps the records to send ([`Session::to_send`]); given
//! plaintext ([`Session::seal`]) it encrypts one record into the caller's
//! buffer. No socket, no clock: [`super::TlsStream`] moves the bytes
//! between it and the socket, and tests drive two sessions in memory.
//!
//! Buffers are this module's, not rustls': records are decrypted in place
//! in the caller's buffer, plaintext goes straight to the caller's buffer,
//! and sealed records to the caller's, when they fit. Only what cannot be
//! handed on at once — half a record, plaintext beyond the caller's buffer,
//! records not sent yet — spills into a heap buffer, which is freed as
//! soon as it is empty. An idle session therefore holds no buffer at all
//! ([`Session::buffered`] is 0; rustls' buffered API keeps a 4 KiB read
//! buffer per connection for its whole life).

use std::io;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

/// Plaintext sealed per call: one record.
const WRITE_CHUNK: usize = 16 * 1024;
/// Room for one record's header, content type, padding and tag.
const RECORD_OVERHEAD: usize = 256;
/// The size of the buffer [`Session::seal`] writes a record into.
pub const RECORD_BUF: usize = WRITE_CHUNK + RECORD_OVERHEAD;

/// What the session needs of either side's unbuffered connection.
pub trait Records {
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

pub fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
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

/// What [`Session::seal`] did with the plaintext.
#[derive(Debug, PartialEq, Eq)]
pub enum Sealed {
    /// `taken` bytes of plaintext became the first `len` bytes of the
    /// record buffer, to be sent after [`Session::to_send`].
    Record { taken: usize, len: usize },
    /// The handshake needs more input first.
    Handshaking,
    /// There was no plaintext.
    Nothing,
    /// The session is closed both ways.
    Closed,
}

/// One TLS session and the bytes it could not hand on yet.
pub struct Session<C> {
    conn: C,
    /// Records (or half of one) received but not yet processed.
    incoming: Vec<u8>,
    /// Decrypted data the caller has not read yet.
    plaintext: Vec<u8>,
    /// Encoded records not sent yet.
    outgoing: Vec<u8>,
    /// rustls asked for `outgoing` to be transmitted (handshake records).
    transmit: bool,
    peer_closed: bool,
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
    /// This many bytes of the data to send were sealed into a record of
    /// this length.
    Sealed(usize, usize),
    /// Both sides closed.
    Closed,
}

impl<C: Records> Session<C> {
    pub fn new(conn: C) -> Session<C> {
        Session {
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            outgoing: Vec::new(),
            transmit: false,
            peer_closed: false,
            failed: false,
            notified: false,
        }
    }

    pub fn handshaking(&self) -> bool {
        self.conn.handshaking()
    }

    /// The negotiated protocol version and ALPN protocol, once established.
    pub fn negotiated(&self) -> Option<(rustls::ProtocolVersion, Option<Vec<u8>>)> {
        if self.conn.handshaking() {
            return None;
        }
        let (version, alpn) = self.conn.version_alpn();
        Some((version?, alpn))
    }

    /// Heap bytes held for data not yet handed on (0 when idle).
    pub fn buffered(&self) -> usize {
        self.incoming.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }

    /// The peer ended the session (close_notify), or it is closed.
    #[inline]
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Decrypted data is waiting for [`Session::read_plaintext`].
    #[inline]
    pub fn has_plaintext(&self) -> bool {
        !self.plaintext.is_empty()
    }

    /// Decrypted data kept from earlier input, into `buf`.
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.plaintext.len());
        buf[..n].copy_from_slice(&self.plaintext[..n]);
        consume(&mut self.plaintext, n);
        n
    }

    /// Records waiting to be sent, in order.
    #[inline]
    pub fn to_send(&self) -> &[u8] {
        &self.outgoing
    }

    /// The first `n` bytes of [`Session::to_send`] were sent.
    pub fn sent(&mut self, n: usize) {
        consume(&mut self.outgoing, n);
    }

    /// Keeps `records` to be sent after everything already waiting (the
    /// part of a sealed record the socket did not take).
    pub fn queue(&mut self, records: &[u8]) {
        self.outgoing.extend_from_slice(records);
    }

    /// True once after rustls produced records that should go out now
    /// (handshake flights), not only when data is written.
    #[inline]
    pub fn take_transmit(&mut self) -> bool {
        std::mem::take(&mut self.transmit)
    }

    /// Received bytes in: processes what was kept from earlier input, then
    /// `fresh`. Decrypted data fills `buf` (the count is returned), behind
    /// any kept from before, and what does not fit is kept for
    /// [`Session::read_plaintext`]; handshake replies join
    /// [`Session::to_send`]; an incomplete record is kept.
    pub fn feed(&mut self, fresh: &mut [u8], buf: &mut [u8]) -> io::Result<usize> {
        let kept = if self.plaintext.is_empty() {
            0
        } else {
            self.read_plaintext(buf)
        };
        let mut sink = Sink {
            buf: &mut buf[kept..],
            filled: 0,
        };
        self.take_in(fresh, &mut sink, None, &mut [])?;
        Ok(kept + sink.filled)
    }

    /// Plaintext out: processes what was kept from earlier input and
    /// `fresh` (decrypted data is kept, not lost), then, once established,
    /// seals up to one record of `data` into `record` (at least
    /// [`RECORD_BUF`] long).
    pub fn seal(&mut self, fresh: &mut [u8], data: &[u8], record: &mut [u8]) -> io::Result<Sealed> {
        let mut none = [0u8; 0];
        let mut sink = Sink {
            buf: &mut none,
            filled: 0,
        };
        Ok(match self.take_in(fresh, &mut sink, Some(data), record)? {
            Stop::Sealed(taken, len) => Sealed::Record { taken, len },
            Stop::Idle => Sealed::Nothing,
            Stop::Closed => Sealed::Closed,
            Stop::Blocked => Sealed::Handshaking,
        })
    }

    /// Queues close_notify once, after everything sealed before it. A
    /// failed or unfinished session has nothing to notify. Input kept
    /// from earlier is given up: the session is ending.
    pub fn close_notify(&mut self) {
        if self.notified || self.failed || self.conn.handshaking() {
            return;
        }
        self.notified = true;
        let mut pending = std::mem::take(&mut self.incoming);
        let status = self.conn.process(&mut pending);
        if let Ok(ConnectionState::WriteTraffic(mut w)) = status.state {
            let mut record = [0u8; RECORD_OVERHEAD]; // small: an alert
            if let Ok(n) = w.queue_close_notify(&mut record) {
                self.outgoing.extend_from_slice(&record[..n]);
            }
        }
    }

    /// Processes the kept input, then `fresh`: whole records in place when
    /// nothing is kept, the rest kept.
    fn take_in(
        &mut self,
        fresh: &mut [u8],
        sink: &mut Sink,
        send: Option<&[u8]>,
        record: &mut [u8],
    ) -> io::Result<Stop> {
        let stop = if self.incoming.is_empty() {
            let (used, stop) = self.process(fresh, sink, send, record)?;
            self.incoming.extend_from_slice(&fresh[used..]);
            stop
        } else {
            let mut pending = std::mem::take(&mut self.incoming);
            pending.extend_from_slice(fresh);
            let (used, stop) = self.process(&mut pending, sink, send, record)?;
            consume(&mut pending, used);
            self.incoming = pending;
            stop
        };
        if let Stop::Closed = stop {
            self.peer_closed = true;
        }
        Ok(stop)
    }

    /// Processes `input` (records, in order): decrypted data goes to
    /// `sink` then to the plaintext spill, handshake records are encoded
    /// into the outgoing spill, and once established up to one record of
    /// `send` is sealed into `record`. Every state rustls reports is
    /// handled before it is asked again. Returns how many bytes of `input`
    /// were used up (the rest is an incomplete record or handshake
    /// message) and why it stopped.
    fn process(
        &mut self,
        input: &mut [u8],
        sink: &mut Sink,
        send: Option<&[u8]>,
        record: &mut [u8],
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
                    // The records stay in `outgoing` until the caller sends
                    // them, exactly once: done() may be called now.
                    self.transmit = true;
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
                        let n = w.encrypt(&data[..take], record).map_err(|e| match e {
                            EncryptError::InsufficientSize(s) => invalid(format!(
                                "record buffer too small ({} needed)",
                                s.required_size
                            )),
                            other => invalid(other),
                        })?;
                        Some(Stop::Sealed(take, n))
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
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::Arc;

    type Server = Session<UnbufferedServerConnection>;
    type Client = Session<UnbufferedClientConnection>;

    /// A server configuration (the server's own, from
    /// [`super::super::certs`]) and a client trusting it, made in memory.
    pub(in crate::tls) fn configs(
        client_alpn: &[&[u8]],
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let server = super::super::certs::server_config(vec![cert.der().clone()], der).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(super::super::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = client_alpn.iter().map(|p| p.to_vec()).collect();
        (Arc::new(server), Arc::new(client))
    }

    fn sessions(client_alpn: &[&[u8]]) -> (Server, Client) {
        let (server, client) = configs(client_alpn);
        let server = Session::new(UnbufferedServerConnection::new(server).unwrap());
        let name = "localhost".try_into().unwrap();
        let client = Session::new(UnbufferedClientConnection::new(client, name).unwrap());
        (server, client)
    }

    /// Moves everything `from` has to send into `to`, `chunk` bytes at a
    /// time (records split anywhere); returns what `to` decrypted, read
    /// through a buffer of `read` bytes.
    fn deliver<A: Records, B: Records>(
        from: &mut Session<A>,
        to: &mut Session<B>,
        chunk: usize,
        read: usize,
    ) -> Vec<u8> {
        let wire = from.to_send().to_vec();
        from.sent(wire.len());
        let mut got = Vec::new();
        let mut buf = vec![0u8; read];
        for piece in wire.chunks(chunk) {
            let mut piece = piece.to_vec();
            let n = to.feed(&mut piece, &mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        while to.has_plaintext() {
            let n = to.read_plaintext(&mut buf);
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Drives the handshake to the end, in memory.
    fn handshake(server: &mut Server, client: &mut Client) {
        let mut record = vec![0u8; RECORD_BUF];
        // The client starts: its ClientHello comes out when asked to write.
        assert_eq!(
            client.seal(&mut [], b"", &mut record).unwrap(),
            Sealed::Handshaking
        );
        assert!(client.take_transmit(), "the ClientHello is due");
        for _ in 0..4 {
            if !server.handshaking() && !client.handshaking() {
                break;
            }
            assert!(deliver(client, server, usize::MAX, 64).is_empty());
            assert!(deliver(server, client, usize::MAX, 64).is_empty());
        }
        assert!(!server.handshaking() && !client.handshaking());
        // The server's last flight (tickets) may still be on its way.
        deliver(server, client, usize::MAX, 64);
        deliver(client, server, usize::MAX, 64);
    }

    /// Seals all of `data` on `from`, every record queued for sending.
    fn write_all<A: Records>(from: &mut Session<A>, data: &[u8]) {
        let mut record = vec![0u8; RECORD_BUF];
        let mut at = 0;
        while at < data.len() {
            match from.seal(&mut [], &data[at..], &mut record).unwrap() {
                Sealed::Record { taken, len } => {
                    assert!(taken > 0 && len > taken, "a record carries its plaintext");
                    from.queue(&record[..len]);
                    at += taken;
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_handshake_and_data_both_ways_run_in_memory() {
        let (mut server, mut client) = sessions(&[b"http/1.1"]);
        assert!(server.negotiated().is_none(), "not established yet");
        handshake(&mut server, &mut client);
        let (version, alpn) = server.negotiated().unwrap();
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        write_all(&mut client, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            deliver(&mut client, &mut server, usize::MAX, 512),
            b"GET / HTTP/1.1\r\n\r\n"
        );
        write_all(&mut server, b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(
            deliver(&mut server, &mut client, usize::MAX, 512),
            b"HTTP/1.1 200 OK\r\n\r\n"
        );
    }

    #[test]
    fn without_alpn_from_the_client_none_is_negotiated() {
        let (mut server, mut client) = sessions(&[]);
        handshake(&mut server, &mut client);
        assert_eq!(server.negotiated().map(|n| n.1), Some(None));
    }

    #[test]
    fn nothing_is_sealed_before_the_handshake_or_without_plaintext() {
        let (mut server, mut client) = sessions(&[]);
        let mut record = vec![0u8; RECORD_BUF];
        assert_eq!(
            server.seal(&mut [], b"early", &mut record).unwrap(),
            Sealed::Handshaking
        );
        handshake(&mut server, &mut client);
        assert_eq!(
            server.seal(&mut [], b"", &mut record).unwrap(),
            Sealed::Nothing
        );
        // One record at most per call.
        let big = vec![7u8; 3 * WRITE_CHUNK];
        match server.seal(&mut [], &big, &mut record).unwrap() {
            Sealed::Record { taken, .. } => assert_eq!(taken, WRITE_CHUNK),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_idle_session_holds_no_buffer_after_a_burst_split_anywhere() {
        let (mut server, mut client) = sessions(&[]);
        handshake(&mut server, &mut client);
        assert_eq!((server.buffered(), client.buffered()), (0, 0));
        // A burst larger than a record, delivered 1000 bytes at a time
        // (half records kept) and read through a small buffer (plaintext
        // kept): every spill is freed once it is handed on.
        let burst: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        write_all(&mut client, &burst);
        assert!(
            client.buffered() >= burst.len(),
            "records waiting to be sent"
        );
        assert_eq!(deliver(&mut client, &mut server, 1000, 100), burst);
        assert_eq!((server.buffered(), client.buffered()), (0, 0));
        write_all(&mut server, &burst);
        assert_eq!(deliver(&mut server, &mut client, 7, 4096), burst);
        assert_eq!((server.buffered(), client.buffered()), (0, 0));
    }

    #[test]
    fn half_a_record_is_kept_until_the_rest_arrives() {
        let (mut server, mut client) = sessions(&[]);
        handshake(&mut server, &mut client);
        write_all(&mut client, b"hello");
        let mut wire = client.to_send().to_vec();
        client.sent(wire.len());
        let mut buf = [0u8; 64];
        let half = wire.len() / 2;
        assert_eq!(server.feed(&mut wire[..half], &mut buf).unwrap(), 0);
        assert!(server.buffered() >= half, "the half record is kept");
        assert_eq!(server.feed(&mut wire[half..], &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(server.buffered(), 0);
    }

    #[test]
    fn sent_records_leave_the_queue_and_free_it() {
        let (mut server, mut client) = sessions(&[]);
        handshake(&mut server, &mut client);
        write_all(&mut server, b"abc");
        let n = server.to_send().len();
        assert!(n > 3);
        server.sent(1);
        assert_eq!(server.to_send().len(), n - 1);
        server.sent(n - 1);
        assert!(server.to_send().is_empty());
        assert_eq!(server.buffered(), 0);
    }

    #[test]
    fn close_notify_is_queued_once_and_ends_the_peers_reading() {
        let (mut server, mut client) = sessions(&[]);
        handshake(&mut server, &mut client);
        write_all(&mut server, b"last words");
        server.close_notify();
        let queued = server.to_send().len();
        server.close_notify();
        assert_eq!(server.to_send().len(), queued, "once");
        assert!(!client.peer_closed());
        // The data first, then the end of the session.
        assert_eq!(deliver(&mut server, &mut client, 11, 64), b"last words");
        assert!(client.peer_closed());
        let mut buf = [0u8; 8];
        assert_eq!(client.feed(&mut [], &mut buf).unwrap(), 0);
    }

    #[test]
    fn an_unfinished_session_has_nothing_to_notify() {
        let (mut server, _client) = sessions(&[]);
        server.close_notify();
        assert!(server.to_send().is_empty());
    }

    #[test]
    fn garbage_is_refused_and_the_failed_session_sends_no_close_notify() {
        let (mut server, mut client) = sessions(&[]);
        handshake(&mut server, &mut client);
        // A record header for application data, then bytes that do not
        // decrypt.
        let mut junk = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        junk.extend([0xAB; 0x20]);
        let mut buf = [0u8; 64];
        let e = server.feed(&mut junk, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let before = server.to_send().len();
        server.close_notify();
        assert_eq!(
            server.to_send().len(),
            before,
            "no close_notify after a failure"
        );
    }

    #[test]
    fn a_client_hello_that_is_not_tls_is_refused_without_panic() {
        let (mut server, _client) = sessions(&[]);
        let mut buf = [0u8; 16];
        let mut junk = *b"\x16\x03\x01\x00\x05\x01\x02\x03\x04\x05";
        assert!(server.feed(&mut junk, &mut buf).is_err());
    }
}
