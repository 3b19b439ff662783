//! A whole exchange over a blocking socket, for helper threads (never a
//! reactor): the connect deadline covers name resolution, TCP and TLS;
//! the response deadline the rest, head and body.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Error, Exchange, Head, Target};

/// A complete response.
#[derive(Debug)]
pub struct Fetched {
    pub head: Head,
    pub body: Vec<u8>,
}

/// Why a fetch failed.
#[derive(Debug)]
pub enum FetchError {
    /// Name resolution, TCP or TLS failed.
    Connect(String),
    /// A deadline passed: `connect` or `response`.
    Timeout(&'static str),
    /// The response broke HTTP/1.1.
    Http(Error),
    /// The body passed the limit.
    TooBig(usize),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Connect(e) => write!(f, "connect failed: {e}"),
            FetchError::Timeout(phase) => write!(f, "no {phase} within its deadline"),
            FetchError::Http(e) => write!(f, "{e}"),
            FetchError::TooBig(n) => write!(f, "the response passed {n} bytes"),
        }
    }
}

impl std::error::Error for FetchError {}

/// The deadlines and limits of one fetch.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connect: Duration,
    pub response: Duration,
    pub max_body: usize,
}

/// The client TLS configuration an `https://` fetch needs. Uninhabited
/// without feature `tls`: no such fetch can be asked for there (the
/// settings refuse an https:// URL at start-up).
#[cfg(feature = "tls")]
pub type TlsConfig = Arc<rustls::ClientConfig>;
#[cfg(not(feature = "tls"))]
pub type TlsConfig = std::convert::Infallible;

enum Conn {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            #[cfg(feature = "tls")]
            Conn::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            Conn::Tls(s) => s.flush(),
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Connects to `target` within `limit`: resolution, TCP, and the TLS
/// handshake when `tls` is given (`https://`).
fn connect(target: &Target, limit: Duration, tls: Option<&TlsConfig>) -> Result<Conn, FetchError> {
    let by = Instant::now() + limit;
    let left = || by.saturating_duration_since(Instant::now());
    let addrs: Vec<_> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| FetchError::Connect(format!("resolving {}: {e}", target.host)))?
        .collect();
    let mut last = FetchError::Connect(format!("{} has no address", target.host));
    let mut tcp = None;
    for a in addrs {
        if left().is_zero() {
            return Err(FetchError::Timeout("connect"));
        }
        match TcpStream::connect_timeout(&a, left()) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) if timed_out(&e) => last = FetchError::Timeout("connect"),
            Err(e) => last = FetchError::Connect(format!("{a}: {e}")),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let _ = tcp.set_nodelay(true);
    let (Some(config), true) = (tls, target.tls) else {
        return Ok(Conn::Plain(tcp));
    };
    #[cfg(not(feature = "tls"))]
    match *config {}
    #[cfg(feature = "tls")]
    tls_handshake(tcp, config, target, left)
}

/// The TLS handshake over `tcp`, by the connect deadline (`left`).
#[cfg(feature = "tls")]
fn tls_handshake(
    tcp: TcpStream,
    config: &TlsConfig,
    target: &Target,
    left: impl Fn() -> Duration,
) -> Result<Conn, FetchError> {
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| FetchError::Connect(format!("{}: {e}", target.host)))?;
    let session = rustls::ClientConnection::new(config.clone(), name)
        .map_err(|e| FetchError::Connect(e.to_string()))?;
    let mut s = rustls::StreamOwned::new(session, tcp);
    while s.conn.is_handshaking() {
        let t = left();
        if t.is_zero() {
            return Err(FetchError::Timeout("connect"));
        }
        let _ = s.sock.set_read_timeout(Some(t));
        let _ = s.sock.set_write_timeout(Some(t));
        match s.conn.complete_io(&mut s.sock) {
            Ok(_) => {}
            Err(e) if timed_out(&e) => return Err(FetchError::Timeout("connect")),
            Err(e) => return Err(FetchError::Connect(format!("TLS: {e}"))),
        }
    }
    Ok(Conn::Tls(Box::new(s)))
}

/// `method target` with `headers` and `body`, the whole response within
/// `limits`. `tls` is required for an `https://` target.
pub fn fetch(
    target: &Target,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limits: Limits,
    tls: Option<&TlsConfig>,
) -> Result<Fetched, FetchError> {
    if target.tls && tls.is_none() {
        return Err(FetchError::Connect(
            "https:// needs a TLS configuration".into(),
        ));
    }
    let mut x = Exchange::new(method, target, headers, body).map_err(FetchError::Http)?;
    let mut conn = connect(target, limits.connect, tls)?;
    let by = Instant::now() + limits.response;
    let left = || by.saturating_duration_since(Instant::now());
    let io = |e: std::io::Error| {
        if timed_out(&e) {
            FetchError::Timeout("response")
        } else {
            FetchError::Connect(e.to_string())
        }
    };
    while !x.request_sent() {
        let t = left();
        if t.is_zero() {
            return Err(FetchError::Timeout("response"));
        }
        let _ = conn.tcp().set_write_timeout(Some(t));
        let n = conn.write(x.to_send()).map_err(io)?;
        x.sent(n);
    }
    conn.flush().map_err(io)?;
    let mut head = None;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let t = left();
        if t.is_zero() {
            return Err(FetchError::Timeout("response"));
        }
        let _ = conn.tcp().set_read_timeout(Some(t));
        let n = match conn.read(&mut buf) {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: an EOF here.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            x.eof().map_err(FetchError::Http)?;
            break;
        }
        let p = x.feed(&buf[..n], &mut got).map_err(FetchError::Http)?;
        if got.len() > limits.max_body {
            return Err(FetchError::TooBig(limits.max_body));
        }
        head = head.or(p.head);
        if p.done {
            break;
        }
    }
    let head = head.ok_or(FetchError::Http(Error::NoResponse))?;
    Ok(Fetched { head, body: got })
}
