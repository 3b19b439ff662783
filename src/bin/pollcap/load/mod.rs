//! The load tool behind `pollcap load`: echo throughput/latency, agent
//! runs, handshake storms and idle-connection memory, against any server on
//! loopback. Every loop is bounded in count and time. Server-side CPU and
//! RSS are read from `/proc/PID` when `--server-pid` is given. URLs are
//! parsed by the library client's parser, like the probe's.

mod echo;
mod idle;
mod storm;

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use tungstenite::WebSocket;
use tungstenite::handshake::client::Request;

use pollcap::reactor::{BackendKind, CapStrategy, Interest, Reactor};

pub use echo::{agent, echo};
pub use idle::idle;
pub use storm::storm;

#[derive(clap::Args)]
pub struct LoadArgs {
    #[command(subcommand)]
    mode: LoadMode,
    /// Server URL.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8765/ws")]
    url: String,
    /// Server process id, to report its CPU and RSS (Linux /proc).
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand, Clone)]
enum LoadMode {
    /// C connections send S-byte messages for D seconds: msgs/s, latency.
    Echo {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// C agent_chat connections, one message in flight each, for D seconds:
    /// complete runs/s and event latency. Token from --token or POLLCAP_TOKEN.
    Agent {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, env = "POLLCAP_TOKEN", hide_env_values = true)]
        token: Option<String>,
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
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
    },
}

/// Runs one load mode and prints its figures.
pub fn command(args: LoadArgs) -> ExitCode {
    let (url, pid) = (args.url.as_str(), args.server_pid);
    let result = match args.mode {
        LoadMode::Echo {
            connections,
            size,
            duration,
        } => echo(
            url,
            connections,
            size,
            Duration::from_secs_f64(duration),
            pid,
        )
        .map(|r| json(&r.report(connections, size))),
        LoadMode::Agent {
            connections,
            duration,
            token,
        } => agent(
            url,
            token.as_deref(),
            connections,
            Duration::from_secs_f64(duration),
            pid,
        )
        .map(|r| json(&r.report(connections))),
        LoadMode::Storm { count, parallel } => {
            storm(url, count, parallel, pid).map(|r| json(&r.report(parallel)))
        }
        LoadMode::Idle { count, hold } => {
            idle(url, count, Duration::from_secs_f64(hold), pid).map(|r| json(&r.report()))
        }
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

/// Where a `ws://` URL points: parsed by the library client's parser.
pub struct Target {
    pub request: Request,
    pub addr: SocketAddr,
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
        Ok(Target {
            request,
            addr,
            authority,
            path,
        })
    }
}

/// A blocking client connected to `url` (ws://host:port/path).
pub fn connect(url: &str, timeout: Duration) -> io::Result<WebSocket<TcpStream>> {
    connect_as(url, timeout, None, &[])
}

/// Like [`connect`], with a bearer token and subprotocols.
pub fn connect_as(
    url: &str,
    timeout: Duration,
    token: Option<&str>,
    protocols: &[&str],
) -> io::Result<WebSocket<TcpStream>> {
    let Target {
        mut request, addr, ..
    } = Target::parse(url)?;
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
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
    let (ws, _) = tungstenite::client(request, s).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(ws)
}

type ClientConn = WebSocket<mio::net::TcpStream>;

/// C connected clients registered with a client-side reactor (token = index).
fn open_clients(
    url: &str,
    connections: usize,
    token: Option<&str>,
    protocols: &[&str],
) -> io::Result<(Reactor, Vec<ClientConn>)> {
    let reactor = Reactor::new(
        BackendKind::Mio,
        CapStrategy::Fixed(Duration::from_millis(100)),
    )?;
    let mut conns = Vec::with_capacity(connections);
    for t in 0..connections {
        let std_stream = connect_as(url, Duration::from_secs(5), token, protocols)?.into_inner();
        std_stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(std_stream);
        reactor.register(&mut stream, t, Interest::READABLE)?;
        conns.push(WebSocket::from_raw_socket(
            stream,
            tungstenite::protocol::Role::Client,
            None,
        ));
    }
    Ok((reactor, conns))
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
    let mut s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let host = t.authority;
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
