//! Blocking WebSocket client with the server's phase model (SPEC §6): DNS,
//! TCP connect, handshake, per-message receive and close each have a
//! deadline; failed attempts are retried with exponential backoff and full
//! jitter and progressive connect timeouts, guarded by a client-side
//! circuit breaker.
//!
//! The policy ([`backoff`], [`connect_timeout`], the breaker) is pure and
//! time-injected. The driver is blocking and reads the clock itself: a
//! client owns one socket at a time, so a reactor would add nothing. Every
//! wait is still bounded: socket timeouts are re-armed before each read and
//! write from one absolute deadline ([`DeadlineStream`]), so a peer
//! dribbling a byte at a time cannot stretch a phase, and name resolution
//! runs on a helper thread that is abandoned when its deadline passes
//! (the system resolver cannot be cancelled).

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::{CloseFrame, WebSocket, WebSocketConfig};
use tungstenite::{Error as WsError, Message};

use std::sync::Arc;

use crate::breaker::{Breaker, BreakerState};
use crate::deflate::client::DeflateStream;
use crate::tls::{self, ClientTls, TlsProblem};

/// Per-attempt connect timeouts of SPEC §6; the last repeats.
pub const DEFAULT_CONNECT_TIMEOUTS: [Duration; 5] = [
    Duration::from_millis(3000),
    Duration::from_millis(2000),
    Duration::from_millis(1500),
    Duration::from_millis(1000),
    Duration::from_millis(800),
];

/// Client settings; [`ClientConfig::default`] follows SPEC §6 where it
/// gives values (retries, backoff, connect timeouts). The handshake,
/// receive and close deadlines and the breaker's figures are ours: a
/// handshake has 5 s, a reply 15 s to start (the server's default
/// execution deadline), a close 2 s; 5 failed attempts in a row open the
/// breaker for 30 s (the backoff ceiling).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Connect timeout of attempt 1, 2, …; the last one repeats.
    pub connect_timeouts: Vec<Duration>,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub handshake_timeout: Duration,
    /// Longest wait for the next message (and for a send to complete).
    pub receive_timeout: Duration,
    pub close_timeout: Duration,
    /// Offered in `Sec-WebSocket-Protocol`, in order of preference.
    pub subprotocols: Vec<String>,
    /// Extra request headers, e.g. `Authorization: Bearer …`.
    pub headers: Vec<(String, String)>,
    pub breaker_threshold: u32,
    pub breaker_recovery: Duration,
    /// Deadline of the TLS handshake (`wss://`).
    pub tls_timeout: Duration,
    /// PEM file of the CA(s) to trust for `wss://` (a private CA);
    /// `None` trusts the built-in web roots (`webpki-roots`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Offer permessage-deflate (on by default); what the server answered
    /// is in [`ConnectReport::deflate`].
    pub deflate: bool,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            connect_timeouts: DEFAULT_CONNECT_TIMEOUTS.to_vec(),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            receive_timeout: Duration::from_secs(15),
            close_timeout: Duration::from_secs(2),
            subprotocols: Vec::new(),
            headers: Vec::new(),
            breaker_threshold: 5,
            breaker_recovery: Duration::from_secs(30),
            tls_timeout: Duration::from_secs(5),
            ca_file: None,
            deflate: true,
        }
    }
}

impl ClientConfig {
    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(mut self, token: &str) -> ClientConfig {
        self.headers
            .push(("Authorization".into(), format!("Bearer {token}")));
        self
    }
}

/// The wait before retry `n` (1 = after the first failed attempt): full
/// jitter, uniform in [0, min(max, base · 2ⁿ⁻¹)]; `unit` is a sample in
/// [0, 1].
pub fn backoff(base: Duration, max: Duration, n: u32, unit: f64) -> Duration {
    let doublings = n.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1u32 << doublings).min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// The connect timeout of attempt `n` (0-based): progressive, the last
/// entry repeating; 3 s if the list is empty.
pub fn connect_timeout(timeouts: &[Duration], n: u32) -> Duration {
    timeouts
        .get(n as usize)
        .or(timeouts.last())
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUTS[0])
}

/// A sample in [0, 1) for jitter. std's hasher keys are random per
/// process; jitter needs spread, not cryptographic quality.
fn jitter_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What went wrong, in which phase.
#[derive(Debug)]
pub enum ClientError {
    InvalidUrl(String),
    Dns(String),
    DnsTimeout(Duration),
    Connect(SocketAddr, io::Error),
    ConnectTimeout(Duration),
    /// The TLS handshake failed: a certificate problem or a protocol error.
    Tls(TlsProblem),
    TlsTimeout(Duration),
    /// The CA file given for `wss://` cannot be used.
    CaFile(String),
    HandshakeTimeout(Duration),
    /// The server answered the upgrade with another status.
    Rejected {
        status: u16,
        retry_after: Option<String>,
        body: String,
    },
    Handshake(String),
    SendTimeout(Duration),
    ReceiveTimeout(Duration),
    CloseTimeout(Duration),
    /// The server closed the connection (its Close frame, if any).
    Closed(Option<CloseFrame>),
    Protocol(String),
    /// The client-side breaker is open: no attempt was made.
    BreakerOpen {
        retry_after: Duration,
    },
    /// Every attempt failed; the last error says how.
    GaveUp {
        attempts: u32,
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Worth another attempt: the network or the server failed, not the
    /// request (a 4xx other than 408/429 will fail the same way again).
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Dns(_)
            | ClientError::DnsTimeout(_)
            | ClientError::Connect(..)
            | ClientError::ConnectTimeout(_)
            | ClientError::TlsTimeout(_)
            | ClientError::HandshakeTimeout(_)
            | ClientError::Handshake(_) => true,
            // A certificate will not fix itself by retrying.
            ClientError::Tls(p) => !p.is_certificate(),
            ClientError::Rejected { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }

    /// The phase this error belongs to (for the probe's report).
    pub fn phase(&self) -> &'static str {
        match self {
            ClientError::InvalidUrl(_) => "url",
            ClientError::Dns(_) | ClientError::DnsTimeout(_) => "dns",
            ClientError::Connect(..) | ClientError::ConnectTimeout(_) => "tcp",
            ClientError::Tls(_) | ClientError::TlsTimeout(_) | ClientError::CaFile(_) => "tls",
            ClientError::HandshakeTimeout(_)
            | ClientError::Rejected { .. }
            | ClientError::Handshake(_) => "handshake",
            ClientError::SendTimeout(_)
            | ClientError::ReceiveTimeout(_)
            | ClientError::Closed(_)
            | ClientError::Protocol(_) => "message",
            ClientError::CloseTimeout(_) => "close",
            ClientError::BreakerOpen { .. } => "breaker",
            ClientError::GaveUp { last, .. } => last.phase(),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = crate::settings::secs;
        match self {
            ClientError::InvalidUrl(m) => write!(f, "invalid URL: {m}"),
            ClientError::Dns(m) => write!(f, "name resolution failed: {m}"),
            ClientError::DnsTimeout(d) => write!(f, "name resolution took longer than {}", s(*d)),
            ClientError::Connect(a, e) => write!(f, "TCP connect to {a} failed: {e}"),
            ClientError::ConnectTimeout(d) => write!(f, "TCP connect took longer than {}", s(*d)),
            ClientError::Tls(p) => write!(f, "{p}"),
            ClientError::TlsTimeout(d) => write!(f, "TLS handshake took longer than {}", s(*d)),
            ClientError::CaFile(m) => write!(f, "CA file: {m}"),
            ClientError::HandshakeTimeout(d) => {
                write!(f, "no complete upgrade response within {}", s(*d))
            }
            ClientError::Rejected {
                status,
                retry_after,
                body,
            } => {
                write!(f, "server answered {status} instead of 101")?;
                if let Some(r) = retry_after {
                    write!(f, " (Retry-After: {r})")?;
                }
                if !body.is_empty() {
                    write!(f, ": {}", body.trim())?;
                }
                Ok(())
            }
            ClientError::Handshake(m) => write!(f, "handshake failed: {m}"),
            ClientError::SendTimeout(d) => write!(f, "send not completed within {}", s(*d)),
            ClientError::ReceiveTimeout(d) => write!(f, "no message within {}", s(*d)),
            ClientError::CloseTimeout(d) => {
                write!(f, "closing handshake not completed within {}", s(*d))
            }
            ClientError::Closed(Some(c)) => {
                write!(
                    f,
                    "server closed the connection: {} {}",
                    u16::from(c.code),
                    c.reason
                )
            }
            ClientError::Closed(None) => write!(f, "server closed the connection"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::BreakerOpen { retry_after } => write!(
                f,
                "client circuit breaker open after repeated failures; next attempt in {}",
                s(*retry_after)
            ),
            ClientError::GaveUp { attempts, last } => {
                write!(f, "gave up after {attempts} attempts; last: {last}")
            }
        }
    }
}

impl std::error::Error for ClientError {}

/// A TCP stream whose reads and writes all end by one absolute deadline.
/// Expiry is reported as `TimedOut` (never `WouldBlock`, which tungstenite
/// would take for a non-blocking stream).
#[derive(Debug)]
pub struct DeadlineStream {
    inner: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
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
    Plain(DeadlineStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, DeadlineStream>>),
}

impl ClientStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => &s.inner,
            ClientStream::Tls(t) => &t.sock.inner,
        }
    }

    fn set_deadline(&mut self, at: Instant) {
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

fn timed_out(e: &WsError) -> bool {
    matches!(e, WsError::Io(io) if io.kind() == io::ErrorKind::TimedOut)
}

/// Phase durations of a successful connect.
#[derive(Clone, Debug)]
pub struct ConnectReport {
    /// Attempts made, this one included.
    pub attempts: u32,
    pub addr: SocketAddr,
    pub dns: Duration,
    pub tcp: Duration,
    /// The TLS handshake (`wss://` only).
    pub tls: Option<Duration>,
    /// The negotiated TLS version, e.g. `TLSv1_3` (`wss://` only).
    pub tls_version: Option<String>,
    pub handshake: Duration,
    /// The subprotocol the server selected.
    pub subprotocol: Option<String>,
    /// The permessage-deflate agreement, as the server answered it
    /// (`None`: not negotiated, or not offered).
    pub deflate: Option<String>,
}

/// An open connection; every call has its deadline.
#[derive(Debug)]
pub struct Connection {
    ws: WebSocket<DeflateStream<ClientStream>>,
    receive_timeout: Duration,
    close_timeout: Duration,
}

impl Connection {
    fn set_deadline(&mut self, d: Duration) {
        self.ws.get_mut().get_mut().set_deadline(Instant::now() + d);
    }

    /// Sends one message, completing within the receive timeout.
    pub fn send(&mut self, msg: Message) -> Result<(), ClientError> {
        self.set_deadline(self.receive_timeout);
        let msg = self
            .ws
            .get_ref()
            .outbound(msg, crate::deflate::DEFAULT_THRESHOLD);
        match self.ws.send(msg) {
            Ok(()) => Ok(()),
            Err(e) if timed_out(&e) => Err(ClientError::SendTimeout(self.receive_timeout)),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// The next text or binary message (Pings are answered on the way),
    /// within the receive timeout.
    pub fn recv(&mut self) -> Result<Message, ClientError> {
        self.set_deadline(self.receive_timeout);
        loop {
            match self.ws.read() {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                    let max = WebSocketConfig::default()
                        .max_message_size
                        .unwrap_or(usize::MAX);
                    return (self.ws.get_mut().inbound(m, max))
                        .map_err(|e| ClientError::Protocol(e.to_string()));
                }
                Ok(Message::Close(frame)) => return Err(ClientError::Closed(frame)),
                Ok(_) => {} // Ping (answered by tungstenite), Pong, raw frame
                Err(e) if timed_out(&e) => {
                    return Err(ClientError::ReceiveTimeout(self.receive_timeout));
                }
                Err(e) => return Err(self.failed(e)),
            }
        }
    }

    /// Asks to resume run `run_id` (SPEC §5): the server sends every event
    /// of the run after `after_seq` (the last `seq` this client has), in
    /// order and once each, then the live ones until the run's last; or
    /// one `{"type":"error","code":"resume_unavailable"}` and nothing else.
    /// Read them with [`Connection::recv`].
    pub fn resume(&mut self, run_id: &str, after_seq: u64) -> Result<(), ClientError> {
        let req = crate::store::ResumeRequest::new(run_id, after_seq);
        self.send(Message::text(req.to_json()))
    }

    /// Leaves without a Close frame, as a lost network would: TCP is shut
    /// down both ways. The server keeps this connection's runs going (a
    /// Close frame would cancel them), ready to be resumed.
    pub fn abort(self) {
        let _ = self
            .ws
            .get_ref()
            .get_ref()
            .tcp()
            .shutdown(std::net::Shutdown::Both);
    }

    /// Sends a normal Close and waits for the server's, within the close
    /// timeout; returns how long the closing handshake took.
    pub fn close(mut self) -> Result<Duration, ClientError> {
        let t0 = Instant::now();
        self.set_deadline(self.close_timeout);
        let mut r = self.ws.close(None);
        loop {
            match r {
                Ok(()) => {}
                Err(WsError::ConnectionClosed) => return Ok(t0.elapsed()),
                Err(e) if timed_out(&e) => {
                    return Err(ClientError::CloseTimeout(self.close_timeout));
                }
                // The server dropped TCP right after its Close (allowed).
                Err(WsError::Io(_)) | Err(WsError::AlreadyClosed) => return Ok(t0.elapsed()),
                Err(WsError::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => return Ok(t0.elapsed()),
                Err(e) => return Err(self.failed(e)),
            }
            r = self.ws.read().map(drop);
        }
    }

    fn failed(&self, e: WsError) -> ClientError {
        match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed => ClientError::Closed(None),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

/// Connects with retries, backoff and the breaker; reusable across
/// connects so the breaker remembers.
///
/// ```no_run
/// use pollcap::client::{Client, ClientConfig};
/// use tungstenite::Message;
///
/// let cfg = ClientConfig {
///     subprotocols: vec!["agent_chat".into()],
///     ..ClientConfig::default()
/// }
/// .bearer("a-token");
/// let (mut conn, report) = Client::new(cfg).connect("ws://127.0.0.1:8765/ws")?;
/// println!("handshake took {:?} after {} attempt(s)", report.handshake, report.attempts);
/// conn.send(Message::text(r#"{"type":"user_message","text":"hi"}"#))?;
/// let first = conn.recv()?; // within the receive deadline, or an error
/// println!("{first}");
/// conn.close()?;
///
/// // A run whose connection was lost after event 3 (seq 3) goes on on
/// // the server: reconnect (with the same retries) and resume it.
/// let (mut conn, _) = Client::new(ClientConfig::default()).connect("ws://127.0.0.1:8765/ws")?;
/// conn.resume("the run_id of its events", 3)?;
/// println!("{}", conn.recv()?); // seq 4, then the rest until agent_completed
/// # Ok::<(), pollcap::client::ClientError>(())
/// ```
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    breaker: Breaker,
    /// The roots for `wss://`, read once.
    roots: Option<Arc<rustls::RootCertStore>>,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Client {
        let breaker = Breaker::new(cfg.breaker_threshold, cfg.breaker_recovery);
        Client {
            cfg,
            breaker,
            roots: None,
        }
    }

    pub fn breaker_state(&mut self) -> BreakerState {
        self.breaker.state(Instant::now())
    }

    /// Opens `url` (`ws://host[:port]/path`). Retries what
    /// [`ClientError::retryable`] allows, up to `max_attempts`; attempts
    /// that fail through the network or the server count against the
    /// breaker, and an open breaker fails at once without touching the
    /// network.
    pub fn connect(&mut self, url: &str) -> Result<(Connection, ConnectReport), ClientError> {
        let attempts = self.cfg.max_attempts.max(1);
        let mut last = None;
        for n in 0..attempts {
            if n > 0 {
                let wait = backoff(
                    self.cfg.backoff_base,
                    self.cfg.backoff_max,
                    n,
                    jitter_unit(),
                );
                std::thread::sleep(wait);
            }
            let permit =
                self.breaker
                    .allow(Instant::now())
                    .map_err(|r| ClientError::BreakerOpen {
                        retry_after: r.retry_after,
                    })?;
            match self.attempt(url, connect_timeout(&self.cfg.connect_timeouts, n)) {
                Ok((conn, mut report)) => {
                    self.breaker.success(permit);
                    report.attempts = n + 1;
                    return Ok((conn, report));
                }
                Err(e) if e.retryable() => {
                    self.breaker.failure(permit, Instant::now());
                    last = Some(e);
                }
                Err(e) => {
                    // The server answered: it is up, whatever it said.
                    self.breaker.success(permit);
                    return Err(e);
                }
            }
        }
        let last = last.expect("at least one attempt");
        if attempts == 1 {
            return Err(last);
        }
        Err(ClientError::GaveUp {
            attempts,
            last: Box::new(last),
        })
    }

    /// One attempt: resolve, connect, upgrade.
    fn attempt(
        &mut self,
        url: &str,
        connect_in: Duration,
    ) -> Result<(Connection, ConnectReport), ClientError> {
        let (mut request, host, port) = parse_url(url)?;
        let secure = request.uri().scheme_str() == Some("wss");
        let headers = request.headers_mut();
        for (k, v) in &self.cfg.headers {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ClientError::InvalidUrl(format!("header {k:?}: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| ClientError::InvalidUrl(format!("header {k:?}: {e}")))?;
            headers.append(name, value);
        }
        if !self.cfg.subprotocols.is_empty() {
            let list = self.cfg.subprotocols.join(", ");
            let value = HeaderValue::from_str(&list)
                .map_err(|e| ClientError::InvalidUrl(format!("subprotocols {list:?}: {e}")))?;
            headers.insert("Sec-WebSocket-Protocol", value);
        }
        if self.cfg.deflate {
            let offer = HeaderValue::from_static(crate::deflate::negotiate::CLIENT_OFFER);
            headers.insert("Sec-WebSocket-Extensions", offer);
        }

        let t0 = Instant::now();
        let addrs = resolve(&host, port, connect_in)?;
        let dns = t0.elapsed();

        let t1 = Instant::now();
        let deadline = t0 + connect_in;
        let mut stream = None;
        let mut last_err = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    stream = Some((s, addr));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => last_err = Some(ClientError::Connect(addr, e)),
            }
        }
        let (tcp, addr) = match stream {
            Some(s) => s,
            None => return Err(last_err.unwrap_or(ClientError::ConnectTimeout(connect_in))),
        };
        let _ = tcp.set_nodelay(true);
        let tcp_time = t1.elapsed();

        let mut tls = None;
        let mut tls_version = None;
        let mut stream = ClientStream::Plain(DeadlineStream {
            inner: tcp,
            deadline: Instant::now() + self.cfg.tls_timeout,
        });
        if secure {
            let t = Instant::now();
            let ClientStream::Plain(plain) = stream else {
                unreachable!("plain until here")
            };
            let session = self.tls_handshake(&host, plain)?;
            tls_version = session.conn.protocol_version().map(|v| format!("{v:?}"));
            tls = Some(t.elapsed());
            stream = ClientStream::Tls(Box::new(session));
        }

        let t2 = Instant::now();
        stream.set_deadline(t2 + self.cfg.handshake_timeout);
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        // Under tungstenite: lets compressed messages through (see
        // `deflate::client`).
        let stream = DeflateStream::new(stream);
        let (mut ws, response) =
            match tungstenite::client::client_with_config(request, stream, Some(config)) {
                Ok(ok) => ok,
                Err(HandshakeError::Failure(WsError::Http(resp))) => {
                    let retry_after = resp
                        .headers()
                        .get("Retry-After")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body = resp
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    return Err(ClientError::Rejected {
                        status: resp.status().as_u16(),
                        retry_after,
                        body,
                    });
                }
                Err(HandshakeError::Failure(e)) if timed_out(&e) => {
                    return Err(ClientError::HandshakeTimeout(self.cfg.handshake_timeout));
                }
                Err(HandshakeError::Failure(e)) => {
                    return Err(ClientError::Handshake(e.to_string()));
                }
                // Only a non-blocking stream interrupts; ours times out instead.
                Err(HandshakeError::Interrupted(_)) => {
                    return Err(ClientError::HandshakeTimeout(self.cfg.handshake_timeout));
                }
            };
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let answer = crate::deflate::client::answer_values(&response);
        let deflate = ws
            .get_mut()
            .accept_answer(self.cfg.deflate, &answer)
            .map_err(ClientError::Handshake)?
            .map(|a| a.header_value());
        let report = ConnectReport {
            attempts: 1,
            addr,
            dns,
            tcp: tcp_time,
            tls,
            tls_version,
            handshake: t2.elapsed(),
            subprotocol,
            deflate,
        };
        let conn = Connection {
            ws,
            receive_timeout: self.cfg.receive_timeout,
            close_timeout: self.cfg.close_timeout,
        };
        Ok((conn, report))
    }
}

impl Client {
    /// The TLS handshake on a connected socket, under `tls_timeout`; SNI
    /// and hostname verification on. Failures are named (untrusted issuer,
    /// name mismatch, expired).
    fn tls_handshake(
        &mut self,
        host: &str,
        mut sock: DeadlineStream,
    ) -> Result<rustls::StreamOwned<rustls::ClientConnection, DeadlineStream>, ClientError> {
        let roots = match &self.roots {
            Some(r) => r.clone(),
            None => {
                let r = tls::roots(self.cfg.ca_file.as_deref()).map_err(ClientError::CaFile)?;
                self.roots = Some(r.clone());
                r
            }
        };
        let client_tls = ClientTls::new(roots).map_err(ClientError::CaFile)?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| ClientError::InvalidUrl(format!("{host}: {e}")))?;
        let mut conn = rustls::ClientConnection::new(client_tls.config.clone(), name)
            .map_err(|e| ClientError::Tls(TlsProblem::Other(e.to_string())))?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sock) {
                let refused = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                return Err(match refused {
                    Some(r) => ClientError::Tls(client_tls.problem(r)),
                    None if e.kind() == io::ErrorKind::TimedOut => {
                        ClientError::TlsTimeout(self.cfg.tls_timeout)
                    }
                    None => ClientError::Tls(TlsProblem::Other(format!(
                        "connection failed during the TLS handshake: {e}"
                    ))),
                });
            }
        }
        Ok(rustls::StreamOwned::new(conn, sock))
    }
}

/// Checks a `ws://` or `wss://host[:port]/path` URL; returns the upgrade
/// request (without our headers), the host and the port (80 or 443 by
/// default).
pub fn parse_url(
    url: &str,
) -> Result<(tungstenite::handshake::client::Request, String, u16), ClientError> {
    let request = url
        .into_client_request()
        .map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))?;
    let uri = request.uri();
    let default_port = match uri.scheme_str() {
        Some("ws") => 80,
        Some("wss") => 443,
        _ => {
            return Err(ClientError::InvalidUrl(format!(
                "{url}: the scheme must be ws:// or wss://"
            )));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| ClientError::InvalidUrl(format!("{url}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(default_port);
    Ok((request, host, port))
}

/// Resolves `host` within `limit`. IP literals need no lookup; names go to
/// the system resolver on a helper thread, abandoned if it overruns.
fn resolve(host: &str, port: u16, limit: Duration) -> Result<Vec<SocketAddr>, ClientError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::spawn(move || {
        let _ = tx.send((name.as_str(), port).to_socket_addrs().map(Vec::from_iter));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(ClientError::Dns(format!("{host}: no addresses"))),
        Ok(Err(e)) => Err(ClientError::Dns(format!("{host}: {e}"))),
        Err(_) => Err(ClientError::DnsTimeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let (base, max) = (ms(500), Duration::from_secs(30));
        // The ceiling doubles per retry: 0.5, 1, 2, 4, 8, 16, then 30 s.
        let ceilings: Vec<_> = (1..=8).map(|n| backoff(base, max, n, 1.0)).collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000].map(ms)
        );
        // Full jitter: anywhere from zero to the ceiling.
        assert_eq!(backoff(base, max, 3, 0.0), Duration::ZERO);
        assert_eq!(backoff(base, max, 3, 0.25), ms(500));
        // Out-of-range samples and huge retry counts stay bounded.
        assert_eq!(backoff(base, max, 3, 7.0), ms(2000));
        assert_eq!(backoff(base, max, u32::MAX, 1.0), max);
    }

    #[test]
    fn jitter_samples_are_spread_over_the_unit_interval() {
        let v: Vec<f64> = (0..200).map(|_| jitter_unit()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(v.iter().any(|&x| x < 0.25) && v.iter().any(|&x| x > 0.75));
    }

    #[test]
    fn connect_timeouts_are_progressive_and_the_last_repeats() {
        let t = DEFAULT_CONNECT_TIMEOUTS;
        let got: Vec<_> = (0..7).map(|n| connect_timeout(&t, n)).collect();
        assert_eq!(got, [3000, 2000, 1500, 1000, 800, 800, 800].map(ms));
        assert_eq!(connect_timeout(&[], 3), ms(3000));
    }

    #[test]
    fn retry_and_phase_classification() {
        let rejected = |status| ClientError::Rejected {
            status,
            retry_after: None,
            body: String::new(),
        };
        assert!(rejected(503).retryable());
        assert!(rejected(429).retryable());
        assert!(!rejected(401).retryable());
        assert!(!rejected(400).retryable());
        assert!(ClientError::ConnectTimeout(ms(1)).retryable());
        assert!(!ClientError::ReceiveTimeout(ms(1)).retryable());
        assert!(!ClientError::InvalidUrl("x".into()).retryable());
        assert_eq!(rejected(401).phase(), "handshake");
        let gave_up = ClientError::GaveUp {
            attempts: 3,
            last: Box::new(ClientError::ConnectTimeout(ms(800))),
        };
        assert_eq!(gave_up.phase(), "tcp");
        assert_eq!(
            gave_up.to_string(),
            "gave up after 3 attempts; last: TCP connect took longer than 0.8s"
        );
    }

    #[test]
    fn only_ws_and_wss_urls_are_accepted() {
        let (_, _, port) = parse_url("wss://example.com/ws").unwrap();
        assert_eq!(port, 443);
        let (_, _, port) = parse_url("ws://example.com/ws").unwrap();
        assert_eq!(port, 80);
        let mut c = Client::new(ClientConfig::default());
        for url in ["https://example.com/ws", "http://example.com/", "not a url"] {
            let e = c.attempt(url, ms(100)).unwrap_err();
            assert!(matches!(e, ClientError::InvalidUrl(_)), "{url}: {e}");
        }
    }
}
