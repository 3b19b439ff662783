//! Helpers for socket-level tests: an in-process server with short
//! timeouts, raw HTTP, a tungstenite client, and a raw frame codec for
//! clients that misbehave on purpose.
#![allow(dead_code)]

pub mod agent;
pub mod certs;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pollcap::reactor::BackendKind;
use pollcap::server::{Server, ServerConfig};
use pollcap::settings::Settings;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;

pub const MS: Duration = Duration::from_millis(1);
/// Generous slack for timing assertions on a loaded 2-core machine.
pub const SLACK: Duration = Duration::from_millis(500);
/// Slack for one reactor wait timed directly, with no server in between
/// (tests/reactor.rs): tighter than [`SLACK`].
pub const WAIT_SLACK: Duration = Duration::from_millis(150);

/// Short timeouts (seconds) that keep the hierarchy valid.
pub const FAST: &[(&str, &str)] = &[
    ("WEBSOCKET_CONNECT_TIMEOUT", "0.2"),
    ("WEBSOCKET_HANDSHAKE_TIMEOUT", "0.3"),
    ("WEBSOCKET_PING_TIMEOUT", "0.2"),
    ("WEBSOCKET_HEARTBEAT_INTERVAL", "0.3"),
    ("WEBSOCKET_HEARTBEAT_TIMEOUT", "1"),
    ("WEBSOCKET_STALE_TIMEOUT", "2"),
    ("WEBSOCKET_CONNECTION_TIMEOUT", "3"),
    ("WEBSOCKET_CLOSE_TIMEOUT", "0.2"),
    ("WEBSOCKET_CLEANUP_INTERVAL", "0.5"),
    ("POLLCAP_POLL_CAP_MS", "100"),
];

/// Settings for `kind` from `FAST` overridden by `env`, on a free port.
pub fn settings(kind: BackendKind, env: &[(&str, &str)]) -> Settings {
    let mut map: HashMap<String, String> = FAST
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in env {
        map.insert(k.to_string(), v.to_string());
    }
    map.insert("POLLCAP_BACKEND".into(), kind.name().into());
    map.insert("POLLCAP_LISTEN".into(), "127.0.0.1:0".into());
    Settings::resolve(&|k| map.get(k).cloned(), &[]).expect("valid test settings")
}

pub fn start(
    kind: BackendKind,
    env: &[(&str, &str)],
    tweak: impl FnOnce(&mut ServerConfig),
) -> Server {
    let mut cfg = ServerConfig::new(settings(kind, env));
    cfg.settings.threads = 2;
    tweak(&mut cfg);
    Server::start(cfg).expect("server starts")
}

pub fn each_backend(test: impl Fn(BackendKind)) {
    for kind in BackendKind::ALL {
        eprintln!("--- backend {}", kind.name());
        test(kind);
    }
}

/// Sends raw bytes, reads until the server closes (bounded by `limit`).
pub fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

pub fn get(addr: SocketAddr, path: &str) -> String {
    raw_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
}

pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

pub fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Reads `/metrics` and returns every sample as `name{labels}` → value,
/// checking each line is well formed on the way.
pub fn metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let r = get(addr, "/metrics");
    assert_eq!(status_of(&r), 200, "{r}");
    let mut out = HashMap::new();
    for line in body_of(&r).lines() {
        if line.starts_with('#') || line.is_empty() {
            assert!(
                line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(!name.contains(' '), "bad name in {line:?}");
        out.insert(name.to_string(), v);
    }
    out
}

pub fn metric(addr: SocketAddr, key: &str) -> f64 {
    *metrics(addr)
        .get(key)
        .unwrap_or_else(|| panic!("metric {key} missing"))
}

/// Polls `/metrics` until sample `key` is there and satisfies `want`, for
/// at most `limit`, and returns its value; fails naming the sample and its
/// last value otherwise.
pub fn wait_metric(
    addr: SocketAddr,
    key: &str,
    limit: Duration,
    want: impl Fn(f64) -> bool,
) -> f64 {
    let t0 = Instant::now();
    let mut last = None;
    let met = eventually(limit, || {
        last = metrics(addr).get(key).copied();
        match last {
            Some(v) if want(v) => Some(Some(v)),
            _ if t0.elapsed() >= limit => Some(None),
            _ => None,
        }
    });
    met.unwrap_or_else(|| match last {
        Some(v) => panic!("{key} is {v} after {limit:?}: not the value waited for"),
        None => panic!("{key} is missing from /metrics after {limit:?}"),
    })
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

/// A raw TCP client after a successful upgrade (response head consumed).
pub fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(upgrade_request("").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed during handshake");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A masked client frame.
pub fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// One unmasked server frame: (opcode, payload), or None on EOF.
pub fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).ok()?;
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).ok()?;
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).ok()?;
    Some((h[0] & 0x0f, p))
}

/// Reads frames until a Close; returns (code, reason) and when it came.
pub fn read_close(s: &mut TcpStream) -> (u16, String, Instant) {
    loop {
        let (op, p) = read_frame(s).expect("connection ended without a Close frame");
        if op == 0x8 {
            let code = u16::from_be_bytes([p[0], p[1]]);
            return (
                code,
                String::from_utf8_lossy(&p[2..]).into_owned(),
                Instant::now(),
            );
        }
    }
}

/// True once the peer has closed TCP (read returns 0 or an error).
pub fn wait_eof(s: &mut TcpStream) -> Instant {
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

pub type Client = WebSocket<TcpStream>;

/// A tungstenite client with optional subprotocols.
pub fn ws_connect(
    addr: SocketAddr,
    protocols: Option<&str>,
) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    tungstenite::client(req, s).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
    })
}

/// Asserts `took` lies in [want, want + SLACK].
pub fn assert_near(took: Duration, want: Duration, what: &str) {
    assert!(
        took + 5 * MS >= want && took <= want + SLACK,
        "{what}: took {took:?}, expected about {want:?}"
    );
}

/// The real binary, started through `program args` (the binary itself, or
/// a shell that execs it), killed on drop if a test ends before it exits.
pub struct Spawned {
    pub child: Option<std::process::Child>,
    pub addr: SocketAddr,
    /// The start-up line (it names the bound address and the settings).
    pub startup: String,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The rest of a spawned server's log, unread.
pub type Log = std::io::Lines<std::io::BufReader<std::process::ChildStderr>>;

/// Starts the server with `RUST_LOG=info` and waits for its start-up line.
pub fn spawn_server(program: &str, args: &[&str], env: &[(&str, &str)]) -> Spawned {
    let (spawned, lines) = spawn_server_undrained(program, args, env);
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    spawned
}

/// [`spawn_server`], handing back the rest of its log unread: stderr stays
/// a pipe that fills up unless the caller reads it.
pub fn spawn_server_undrained(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Spawned, Log) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut spawned = Spawned {
        child: Some(child),
        addr: "0.0.0.0:0".parse().unwrap(),
        startup: String::new(),
    };
    loop {
        let line = lines.next().expect("start-up line").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            spawned.addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            spawned.startup = line;
            break;
        }
    }
    (spawned, lines)
}

/// Calls `f` until it returns `Some`, for at most `limit` (then panics
/// naming the limit): a bounded wait for something the test cannot be
/// told of directly, such as a metric.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
