//! The load tools' client side: the target URL, TLS, blocking and
//! non-blocking streams, upgrades, and samples of the server process.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tungstenite::WebSocket;
use tungstenite::handshake::client::Request;

use pollcap::deflate::client::DeflateStream;
use pollcap::reactor::{BackendKind, CapStrategy, Interest, Reactor};
use pollcap::stream::Stream;
use pollcap::tls::TlsStream;

/// Samples of the server process around a measurement.
#[derive(Clone, Copy, Debug)]
pub struct ServerSample {
    pub cpu: Duration,
    pub rss: u64,
}

pub fn sample(pid: Option<u32>) -> Option<ServerSample> {
    let (cpu, rss) = crate::sys::process_usage(pid?)?;
    Some(ServerSample { cpu, rss })
}

/// The client TLS configuration of this run (wss:// URLs), set once.
static TLS: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// Trusts `ca_file` (or the web roots) for every wss:// connection.
pub fn tls_setup(ca_file: Option<&std::path::Path>) -> Result<(), String> {
    let roots = pollcap::tls::roots(ca_file)?;
    let config = rustls::ClientConfig::builder_with_provider(pollcap::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let _ = TLS.set(Arc::new(config));
    Ok(())
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    TLS.get_or_init(|| {
        pollcap::tls::roots(None)
            .map(|roots| {
                Arc::new(
                    rustls::ClientConfig::builder_with_provider(pollcap::tls::provider())
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default versions")
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                )
            })
            .expect("the built-in roots load")
    })
    .clone()
}

fn server_name(host: &str) -> io::Result<rustls::pki_types::ServerName<'static>> {
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A blocking client TLS session for `host` (SNI and verification on).
fn tls_session(host: &str) -> io::Result<rustls::ClientConnection> {
    rustls::ClientConnection::new(tls_config(), server_name(host)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A non-blocking stream to `t` (TLS for wss://; its handshake runs as
/// the stream is used).
pub fn nonblocking_stream(t: &Target) -> io::Result<Stream> {
    let tcp = mio::net::TcpStream::connect(t.addr)?;
    // TLS sends a flight of small writes: Nagle + delayed ACK would add 40 ms.
    tcp.set_nodelay(true)?;
    if !t.secure {
        return Ok(Stream::Plain(tcp));
    }
    let tls = TlsStream::client(tcp, tls_config(), server_name(&t.host)?)?;
    Ok(Stream::Tls(Box::new(tls)))
}

/// A blocking stream, plain or TLS.
pub enum Blocking {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Blocking {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Blocking::Plain(s) => s,
            Blocking::Tls(t) => &t.sock,
        }
    }
}

impl io::Read for Blocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Blocking::Plain(s) => s.read(buf),
            Blocking::Tls(t) => t.read(buf),
        }
    }
}

impl io::Write for Blocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Blocking::Plain(s) => s.write(buf),
            Blocking::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Blocking::Plain(s) => s.flush(),
            Blocking::Tls(t) => t.flush(),
        }
    }
}

/// Where a `ws://` or `wss://` URL points: parsed by the library client's
/// parser.
pub struct Target {
    pub request: Request,
    pub addr: SocketAddr,
    pub host: String,
    pub secure: bool,
    /// `host:port`, for `Host` headers.
    pub authority: String,
    /// Path and query of the WebSocket endpoint.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> io::Result<Target> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let (request, host, port) =
            pollcap::client::parse_url(url).map_err(|e| invalid(e.to_string()))?;
        let addr = (host.as_str(), port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let authority = request
            .uri()
            .authority()
            .map_or_else(|| format!("{host}:{port}"), |a| a.to_string());
        let path = request
            .uri()
            .path_and_query()
            .map_or("/".into(), |p| p.to_string());
        let secure = request.uri().scheme_str() == Some("wss");
        Ok(Target {
            request,
            addr,
            host,
            secure,
            authority,
            path,
        })
    }
}

/// A blocking client connected to `url` (ws:// or wss://host:port/path).
pub fn connect(url: &str, timeout: Duration) -> io::Result<WebSocket<Blocking>> {
    connect_as(url, timeout, None, &[])
}

/// TCP, then TLS for wss://: a connected blocking stream.
pub fn open_stream(t: &Target, timeout: Duration) -> io::Result<Blocking> {
    let s = TcpStream::connect_timeout(&t.addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    if !t.secure {
        return Ok(Blocking::Plain(s));
    }
    let mut tls = rustls::StreamOwned::new(tls_session(&t.host)?, s);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(Blocking::Tls(Box::new(tls)))
}

/// Like [`connect`], with a bearer token and subprotocols.
pub fn connect_as(
    url: &str,
    timeout: Duration,
    token: Option<&str>,
    protocols: &[&str],
) -> io::Result<WebSocket<Blocking>> {
    let target = Target::parse(url)?;
    let s = open_stream(&target, timeout)?;
    let request = upgrade_request(target.request, token, protocols)?;
    let (ws, _) = tungstenite::client(request, s).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(ws)
}

/// An event-driven client: its stream under tungstenite lets compressed
/// messages through (`pollcap::deflate::client`) and counts the bytes
/// received.
pub type ClientConn = WebSocket<DeflateStream<Stream>>;

/// Whether the event-driven clients offer permessage-deflate (`--no-deflate`).
pub static DEFLATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// What a client sends: compressed if permessage-deflate was agreed and
/// the message is at least the default threshold.
pub fn outbound(ws: &ClientConn, msg: tungstenite::Message) -> tungstenite::Message {
    ws.get_ref()
        .outbound(msg, pollcap::deflate::DEFAULT_THRESHOLD)
}

/// A message a client read, inflated if it came compressed; `None` if it
/// cannot be (the load treats it as an error).
pub fn inbound(ws: &mut ClientConn, msg: tungstenite::Message) -> Option<tungstenite::Message> {
    ws.get_mut().inbound(msg, 64 << 20).ok()
}

/// C connected clients registered with a client-side reactor (token =
/// index). Each connects, negotiates TLS (wss://) and upgrades without
/// blocking, on that reactor, within 5 s.
pub fn open_clients(
    url: &str,
    connections: usize,
    token: Option<&str>,
    protocols: &[&str],
) -> io::Result<(Reactor, Vec<ClientConn>)> {
    let mut reactor = client_reactor()?;
    let target = Target::parse(url)?;
    let mut conns = Vec::with_capacity(connections);
    for t in 0..connections {
        conns.push(open_client(&mut reactor, &target, t, token, protocols)?);
    }
    Ok((reactor, conns))
}

pub fn client_reactor() -> io::Result<Reactor> {
    Reactor::new(
        BackendKind::Mio,
        CapStrategy::Fixed(Duration::from_millis(100)),
    )
}

/// One client, registered on `reactor` under token `t` and upgraded within
/// 5 s. The reactor's turns meanwhile are spent on this handshake: events
/// for other tokens are dropped, so a caller with open clients must read
/// them until `WouldBlock` afterwards (the reactor is edge-triggered).
pub fn open_client(
    reactor: &mut Reactor,
    target: &Target,
    t: usize,
    token: Option<&str>,
    protocols: &[&str],
) -> io::Result<ClientConn> {
    use tungstenite::HandshakeError;
    let mut stream = nonblocking_stream(target)?;
    reactor.register(&mut stream, t, Interest::BOTH)?;
    let mut request = upgrade_request(target.request.clone(), token, protocols)?;
    let offer = DEFLATE.load(std::sync::atomic::Ordering::Relaxed);
    if offer {
        request.headers_mut().insert(
            "Sec-WebSocket-Extensions",
            tungstenite::http::HeaderValue::from_static(pollcap::deflate::negotiate::CLIENT_OFFER),
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut step = tungstenite::client(request, DeflateStream::new(stream));
    let mut ws = loop {
        match step {
            Ok((mut ws, response)) => {
                let answer = pollcap::deflate::client::answer_values(&response);
                ws.get_mut()
                    .accept_answer(offer, &answer)
                    .map_err(io::Error::other)?;
                break ws;
            }
            Err(HandshakeError::Interrupted(mid)) => {
                if std::time::Instant::now() > deadline {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                reactor.turn()?;
                step = mid.handshake();
            }
            Err(HandshakeError::Failure(e)) => return Err(io::Error::other(e.to_string())),
        }
    };
    // The handshake stopped reading after the response: forget that.
    pollcap::conn::Transport::end_reading(ws.get_mut().get_mut());
    reactor.reregister(ws.get_mut().get_mut(), t, Interest::READABLE)?;
    Ok(ws)
}

/// The upgrade request with a bearer token and subprotocols.
fn upgrade_request(
    mut request: Request,
    token: Option<&str>,
    protocols: &[&str],
) -> io::Result<Request> {
    let bad = |e: tungstenite::http::header::InvalidHeaderValue| {
        io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
    };
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().map_err(bad)?);
    }
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols.join(", ").parse().map_err(bad)?,
        );
    }
    Ok(request)
}

pub fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Latency percentiles in µs from unsorted samples.
pub fn percentiles(samples: &mut [u64], qs: &[f64]) -> Vec<u64> {
    samples.sort_unstable();
    qs.iter()
        .map(|q| {
            if samples.is_empty() {
                0
            } else {
                let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
                samples[i]
            }
        })
        .collect()
}

/// The body of `GET path` on the server behind a `ws://host/...` URL
/// (its plain HTTP routes answer with `Connection: close`).
pub fn http_get(url: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let t = Target::parse(url).ok()?;
    let mut s = open_stream(&t, Duration::from_secs(5)).ok()?;
    let host = &t.authority;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    Some(response.split_once("\r\n\r\n")?.1.to_string())
}

/// Sum of `pollcap_reactor_waits_total` from the server's `/metrics`.
pub fn reactor_waits(url: &str) -> Option<u64> {
    Some(
        http_get(url, "/metrics")?
            .lines()
            .filter(|l| l.starts_with("pollcap_reactor_waits_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum(),
    )
}
