//! The load tool behind `pollcap load`: echo throughput/latency, agent
//! runs, handshake storms, idle-connection memory and the soak, against
//! any server on loopback. Every loop is bounded in count and time.
//! Server-side CPU and RSS are read from `/proc/PID` when `--server-pid` is
//! given. URLs are parsed by the library client's parser, like the probe's.

mod echo;
mod idle;
mod soak;
mod storm;

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use tungstenite::WebSocket;
use tungstenite::handshake::client::Request;

use std::sync::Arc;

use pollcap::deflate::client::DeflateStream;
use pollcap::reactor::{BackendKind, CapStrategy, Interest, Reactor};
use pollcap::stream::Stream;
use pollcap::tls::TlsStream;

pub use echo::{Payload, agent, echo};
pub use idle::idle;
pub use storm::storm;

#[derive(clap::Args)]
pub struct LoadArgs {
    #[command(subcommand)]
    mode: LoadMode,
    /// Server URL [default: ws://127.0.0.1:8765/ws; soak: a server it
    /// starts itself].
    #[arg(long, global = true)]
    url: Option<String>,
    /// Server process id, to report its CPU and RSS (Linux /proc).
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// For wss:// URLs: PEM file of the CA to trust instead of the web roots.
    #[arg(long, global = true, env = "POLLCAP_CA_FILE", value_name = "PATH")]
    ca_file: Option<std::path::PathBuf>,
    /// Do not offer permessage-deflate (the event-driven clients of echo,
    /// agent and idle offer it by default, as browsers do).
    #[arg(long, global = true)]
    no_deflate: bool,
}

#[derive(clap::Subcommand, Clone)]
enum LoadMode {
    /// C connections send S-byte messages for D seconds: msgs/s, latency.
    Echo {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value = "10", value_parser = positive_secs)]
        duration: Duration,
        /// Send S-byte JSON text messages (an agent event's shape and
        /// words) instead of S bytes of 'x'.
        #[arg(long)]
        json: bool,
        /// Send these messages in turn instead (one per line, text; e.g. an
        /// agent_chat run's events), each connection from the first.
        #[arg(long, value_name = "FILE", conflicts_with = "json")]
        replay: Option<std::path::PathBuf>,
    },
    /// C agent_chat connections, one message in flight each, for D seconds:
    /// complete runs/s and event latency. Token from --token or POLLCAP_TOKEN.
    Agent {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value = "10", value_parser = positive_secs)]
        duration: Duration,
        #[arg(long, env = "POLLCAP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The user_message text [default: "load test message N"];
        /// given more than once, each run takes the next one.
        #[arg(long)]
        text: Vec<String>,
    },
    /// K handshakes from P parallel clients: handshakes/s, p99.
    Storm {
        #[arg(long, default_value_t = 5000)]
        count: usize,
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
    /// K idle connections held for H seconds: server RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value = "10", value_parser = positive_secs)]
        hold: Duration,
        /// Open the connections evenly over this many seconds before the
        /// hold, as connections arriving over time do (0: all at once).
        #[arg(long, default_value = "0", value_parser = secs)]
        ramp: Duration,
        /// Before the hold, every connection sends one JSON message of this
        /// many bytes and reads its echo (echo servers): memory per idle
        /// connection after traffic.
        #[arg(long, value_name = "BYTES")]
        message: Option<usize>,
    },
    /// Mixed load for D seconds — agent runs, echo of large messages, idle
    /// holders, connection churn, slow and stalled readers — against a
    /// server it starts (or --url, with --server-pid for memory), then a
    /// verdict: RSS back within 5 % + 2 MiB of its start, descriptors
    /// back to their start, no missed deadline, no panic, no error. Exit
    /// status 1 if a check fails. Markdown, or JSON with --json.
    Soak {
        #[arg(long, default_value_t = 600.0)]
        duration: f64,
        /// Seconds of the same mix before the start sample [default: 10 %
        /// of the duration, 15 to 60].
        #[arg(long)]
        warmup: Option<f64>,
        /// agent_chat clients with one paced run in flight each.
        #[arg(long, default_value_t = 8)]
        agents: usize,
        /// Clients echoing messages of 16 B to 256 KiB.
        #[arg(long, default_value_t = 2)]
        echoes: usize,
        /// Slow readers (every other round a stalled one).
        #[arg(long, default_value_t = 2)]
        slow: usize,
        /// Threads opening and closing connections, about 100 a second each.
        #[arg(long, default_value_t = 2)]
        churn: usize,
        /// Idle connections held (and reopened when the server closes them).
        #[arg(long, default_value_t = 500)]
        idle: usize,
        #[arg(long, env = "POLLCAP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// Where the load goes when no --url is given.
const DEFAULT_URL: &str = "ws://127.0.0.1:8765/ws";

/// A `--duration`/`--hold` value: seconds in (0, 86400]. A bad value is a
/// usage error (exit 2, naming the flag), never a panic in
/// `Duration::from_secs_f64`.
fn positive_secs(v: &str) -> Result<Duration, String> {
    secs(v).and_then(|d| {
        if d.is_zero() {
            Err("must be more than 0 seconds".into())
        } else {
            Ok(d)
        }
    })
}

/// A `--ramp` value: seconds in [0, 86400].
fn secs(v: &str) -> Result<Duration, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err("must be a number of seconds from 0 to 86400".into()),
    }
}

/// Runs one load mode and prints its figures.
pub fn command(args: LoadArgs) -> ExitCode {
    let pid = args.server_pid;
    let url = args.url.as_deref().unwrap_or(DEFAULT_URL);
    DEFLATE.store(!args.no_deflate, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = tls_setup(args.ca_file.as_deref()) {
        eprintln!("pollcap load: {e}");
        return ExitCode::from(2);
    }
    let result = match args.mode {
        LoadMode::Soak {
            duration,
            warmup,
            agents,
            echoes,
            slow,
            churn,
            idle,
            token,
        } => {
            let seconds = |what: &str, v: f64| {
                if v.is_finite() && v > 0.0 && v <= 86_400.0 {
                    Ok(Duration::from_secs_f64(v))
                } else {
                    Err(format!(
                        "{what} must be a number of seconds in (0, 86400], got {v}"
                    ))
                }
            };
            let warmup = warmup.unwrap_or((duration / 10.0).clamp(15.0, 60.0));
            let (duration, warmup) =
                match (seconds("--duration", duration), seconds("--warmup", warmup)) {
                    (Ok(d), Ok(w)) => (d, w),
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("pollcap load soak: {e}");
                        return ExitCode::from(2);
                    }
                };
            let opts = soak::SoakOptions {
                duration,
                warmup,
                mix: soak::MixConfig {
                    url: String::new(),
                    token,
                    agents,
                    echoes,
                    slow,
                    churn,
                    idle,
                },
            };
            return match soak::soak(args.url.as_deref(), pid, opts) {
                Ok(r) => {
                    if args.json {
                        println!("{}", json(&r));
                    } else {
                        print!("{}", r.markdown());
                    }
                    if r.failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("pollcap load soak: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        LoadMode::Echo {
            connections,
            size,
            duration,
            json: json_payload,
            replay,
        } => {
            let payload = match (replay, json_payload) {
                (Some(path), _) => match std::fs::read_to_string(&path) {
                    Ok(t) => echo::Payload::Replay(t.lines().map(str::to_string).collect()),
                    Err(e) => {
                        eprintln!("pollcap load echo: --replay {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                },
                (None, true) => echo::Payload::Json(size),
                (None, false) => echo::Payload::Bytes(size),
            };
            echo(url, connections, &payload, duration, pid)
                .map(|r| json(&r.report(connections, size)))
        }
        LoadMode::Agent {
            connections,
            duration,
            token,
            text,
        } => agent(url, token.as_deref(), connections, duration, &text, pid)
            .map(|r| json(&r.report(connections))),
        LoadMode::Storm { count, parallel } => {
            storm(url, count, parallel, pid).map(|r| json(&r.report(parallel)))
        }
        LoadMode::Idle {
            count,
            hold,
            ramp,
            message,
        } => idle(url, count, hold, ramp, message, pid).map(|r| json(&r.report())),
    };
    match result {
        Ok(j) => {
            if args.json {
                println!("{j}");
            } else if let Some(map) = j.as_object() {
                for (k, v) in map {
                    println!("{k:<32} {v}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pollcap load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn json(report: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(report).unwrap_or_default()
}

/// Server CPU µs per unit of work.
fn us_per(cpu: Option<Duration>, n: u64) -> Option<f64> {
    cpu.map(|d| d.as_secs_f64() * 1e6 / n.max(1) as f64)
}

/// Samples of the server process around a measurement.
#[derive(Clone, Copy, Debug)]
pub struct ServerSample {
    pub cpu: Duration,
    pub rss: u64,
}

pub fn sample(pid: Option<u32>) -> Option<ServerSample> {
    let (cpu, rss) = super::sys::process_usage(pid?)?;
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
static DEFLATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

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
fn open_clients(
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

fn client_reactor() -> io::Result<Reactor> {
    Reactor::new(
        BackendKind::Mio,
        CapStrategy::Fixed(Duration::from_millis(100)),
    )
}

/// One client, registered on `reactor` under token `t` and upgraded within
/// 5 s. The reactor's turns meanwhile are spent on this handshake: events
/// for other tokens are dropped, so a caller with open clients must read
/// them until `WouldBlock` afterwards (the reactor is edge-triggered).
fn open_client(
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

fn would_block(e: &tungstenite::Error) -> bool {
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
