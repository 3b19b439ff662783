//! The front door over real sockets (SPEC §4): ambiguous requests, browser
//! origins, per-address limits through trusted proxies, per-connection
//! message rates, and the per-address table's memory under 100 000
//! forwarded addresses.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pollcap::auth::{self, Auth};
use pollcap::reactor::BackendKind;
use tungstenite::Message;

use common::*;

const SECRET: &[u8] = b"front-door-test-secret-0123456789";

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str) -> String {
    auth::mint(SECRET, sub, now_unix(), 600)
}

/// A TCP connection to `addr` from the loopback address `from`.
fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends an upgrade request with `extra` headers on `s` and reads the
/// response head: its status, and the stream (open after a 101).
fn upgrade_on(mut s: TcpStream, extra: &str) -> (u16, String, TcpStream) {
    s.write_all(upgrade_request(extra).as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    if !text.starts_with("HTTP/1.1 101") {
        // The rest is the body of a refusal.
        let mut body = Vec::new();
        let _ = s.read_to_end(&mut body);
        let text = text + &String::from_utf8_lossy(&body);
        return (status_of(&text), text, s);
    }
    (101, text, s)
}

fn upgrade(addr: SocketAddr, extra: &str) -> (u16, String, TcpStream) {
    upgrade_on(connect_from("127.0.0.1", addr), extra)
}

fn with_auth(cfg: &mut pollcap::server::ServerConfig) {
    cfg.auth = Some(Auth::new(Some(SECRET.to_vec()), Default::default()));
}

#[test]
fn ambiguous_requests_get_400_naming_the_header() {
    let srv = start(BackendKind::Mio, &[], with_auth);
    let addr = srv.local_addr();
    let good = format!("Bearer {}", token("alice"));
    let twice = |name: &str, a: &str, b: &str| format!("{name}: {a}\r\n{name}: {b}\r\n");
    let cases = [
        (
            "Authorization",
            twice("Authorization", &good, "Bearer junk"),
        ),
        (
            "Authorization",
            twice("Authorization", "Bearer junk", &good),
        ),
        ("Origin", twice("Origin", "http://t", "http://evil.example")),
        // upgrade_request sends a key and a version already.
        ("Sec-WebSocket-Key", format!("Sec-WebSocket-Key: {KEY}\r\n")),
        (
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Version: 13\r\n".into(),
        ),
        ("Host", "Host: other\r\n".into()),
    ];
    for (name, extra) in cases {
        let (status, text, _) = upgrade(addr, &extra);
        assert_eq!(status, 400, "{name}: {text}");
        assert!(
            text.contains(&format!("more than one {name} header")),
            "{text}"
        );
    }
    // A header token and a different bearer.<token> entry: two credentials.
    let two = format!(
        "Authorization: {good}\r\nSec-WebSocket-Protocol: bearer.{}\r\n",
        token("mallory")
    );
    let (status, text, _) = upgrade(addr, &two);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("two credentials"), "{text}");
    // Each alone is fine.
    let (status, text, _) = upgrade(addr, &format!("Authorization: {good}\r\n"));
    assert_eq!(status, 101, "{text}");
    // The absolute form of the target (RFC 9112 §3.2.2).
    let r = raw_exchange(
        addr,
        b"GET http://t/health HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&r), 200, "{r}");
    srv.shutdown_handle().shutdown();
    srv.join().unwrap();
}

#[test]
fn a_foreign_origin_gets_403_before_any_token_is_checked() {
    let env = [("POLLCAP_ALLOWED_ORIGINS", "https://app.example.com")];
    let srv = start(BackendKind::Mio, &env, with_auth);
    let addr = srv.local_addr();
    let good = format!("Authorization: Bearer {}\r\n", token("alice"));
    let origin = |o: &str| format!("{good}Origin: {o}\r\n");
    assert_eq!(upgrade(addr, &origin("https://app.example.com")).0, 101);
    // The page's own origin (Host: t) is always allowed; no Origin is no browser.
    assert_eq!(upgrade(addr, &origin("http://t")).0, 101);
    assert_eq!(upgrade(addr, &good).0, 101);
    let before = metric(addr, "pollcap_auth_failures_total");
    for o in ["https://evil.example", "null", "http://t:8080"] {
        // A bad token too: the origin is refused before it is looked at.
        let (status, text, _) = upgrade(
            addr,
            &format!("Authorization: Bearer x.y.z\r\nOrigin: {o}\r\n"),
        );
        assert_eq!(status, 403, "{o}: {text}");
    }
    let m = metrics(addr);
    assert_eq!(
        m["pollcap_auth_failures_total"], before,
        "no auth attempt counted"
    );
    assert_eq!(
        m["pollcap_front_door_refusals_total{reason=\"origin\"}"],
        3.0
    );
    assert_eq!(m["pollcap_http_responses_total{status=\"403\"}"], 3.0);
    srv.shutdown_handle().shutdown();
    srv.join().unwrap();
}

#[test]
fn the_per_address_cap_answers_429_while_other_addresses_are_served() {
    each_backend(|kind| {
        let env = [("POLLCAP_MAX_CONNECTIONS_PER_IP", "2")];
        let srv = start(kind, &env, |_| {});
        let addr = srv.local_addr();
        let (s1, _, a) = upgrade_on(connect_from("127.0.0.1", addr), "");
        let (s2, _, _b) = upgrade_on(connect_from("127.0.0.1", addr), "");
        assert_eq!((s1, s2), (101, 101));
        let (s3, text, _) = upgrade_on(connect_from("127.0.0.1", addr), "");
        assert_eq!(s3, 429, "{text}");
        assert!(text.contains("Retry-After: "), "{text}");
        // Another address is served meanwhile.
        let (other, _, _c) = upgrade_on(connect_from("127.0.0.2", addr), "");
        assert_eq!(other, 101);
        // One of the two goes: its place is given back.
        drop(a);
        eventually(Duration::from_secs(5), || {
            (upgrade_on(connect_from("127.0.0.1", addr), "").0 == 101).then_some(())
        });
        let m = metrics(addr);
        assert!(m["pollcap_front_door_refusals_total{reason=\"ip_connections\"}"] >= 1.0);
        assert_eq!(m["pollcap_client_table_entries"], 2.0);
        srv.shutdown_handle().shutdown();
        srv.join().unwrap();
    });
}

#[test]
fn new_connections_per_address_are_a_token_bucket() {
    // 1 a second, 10 s worth at once.
    let env = [("POLLCAP_IP_CONNECTS_PER_SEC", "1")];
    let srv = start(BackendKind::Mio, &env, |_| {});
    let addr = srv.local_addr();
    for i in 0..10 {
        assert_eq!(upgrade(addr, "").0, 101, "connection {i}");
    }
    let (status, text, _) = upgrade(addr, "");
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("Retry-After: 1\r\n"), "{text}");
    assert_eq!(upgrade_on(connect_from("127.0.0.3", addr), "").0, 101);
    assert_eq!(
        metric(
            addr,
            "pollcap_front_door_refusals_total{reason=\"ip_rate\"}"
        ),
        1.0
    );
    srv.shutdown_handle().shutdown();
    srv.join().unwrap();
}

#[test]
fn behind_a_trusted_proxy_forwarded_addresses_are_limited_separately() {
    let env = [
        ("POLLCAP_MAX_CONNECTIONS_PER_IP", "1"),
        ("POLLCAP_TRUST_PROXY", "127.0.0.1/32"),
    ];
    let srv = start(BackendKind::Mio, &env, |_| {});
    let addr = srv.local_addr();
    let via = |xff: &str| upgrade(addr, &format!("X-Forwarded-For: {xff}\r\n"));
    let (a, _, _keep_a) = via("198.51.100.1");
    assert_eq!(a, 101);
    assert_eq!(via("198.51.100.1").0, 429, "same client");
    // A forged first entry does not make the same client another one.
    assert_eq!(via("203.0.113.9, 198.51.100.1").0, 429);
    let (b, _, _keep_b) = via("198.51.100.2");
    assert_eq!(b, 101, "another client");
    let (c, _, _keep_c) = upgrade(addr, "Forwarded: for=\"[2001:db8::1]:443\"\r\n");
    assert_eq!(c, 101, "Forwarded works too");
    // From a peer that is not a trusted proxy, the header is ignored: the
    // second request counts against 127.0.0.2 itself, whatever it claims.
    let from2 = |xff: &str| {
        upgrade_on(
            connect_from("127.0.0.2", addr),
            &format!("X-Forwarded-For: {xff}\r\n"),
        )
    };
    let (d, _, _keep_d) = from2("192.0.2.4");
    assert_eq!(d, 101);
    assert_eq!(
        from2("192.0.2.5").0,
        429,
        "a forged header from an untrusted peer"
    );
    // Two forwarding headers that disagree: 400.
    let (e, text, _) = upgrade(
        addr,
        "X-Forwarded-For: 192.0.2.6\r\nForwarded: for=192.0.2.7\r\n",
    );
    assert_eq!(e, 400, "{text}");
    srv.shutdown_handle().shutdown();
    srv.join().unwrap();
}

fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q) as usize]
}

#[test]
fn a_message_flood_closes_1008_while_a_polite_client_keeps_its_p99() {
    each_backend(|kind| {
        let env = [("POLLCAP_CONN_MESSAGES_PER_SEC", "100")];
        let srv = start(kind, &env, |_| {});
        let addr = srv.local_addr();
        let (mut polite, _) = ws_connect(addr, None).unwrap();
        let rtt = |c: &mut Client| {
            let t = Instant::now();
            c.send(Message::text("hello")).unwrap();
            match c.read().unwrap() {
                Message::Text(t) => assert_eq!(t.as_str(), "hello"),
                other => panic!("{other:?}"),
            }
            t.elapsed()
        };
        let quiet: Vec<Duration> = (0..50).map(|_| rtt(&mut polite)).collect();
        // The flood: as fast as the socket takes it, never reading until
        // the server has had enough.
        let flooder = std::thread::spawn(move || {
            let mut s = raw_ws(addr);
            let msg = frame(0x1, true, b"flood");
            let mut sent = 0u32;
            let mut burst = Vec::new();
            for _ in 0..100 {
                burst.extend_from_slice(&msg);
            }
            // 3 000 messages: three times the bucket (10 s of 100/s), few
            // enough bytes that the server reads them all while closing.
            while sent < 3_000 && s.write_all(&burst).is_ok() {
                sent += 100;
            }
            // Read echoes until the Close.
            loop {
                match read_frame(&mut s) {
                    Some((0x8, payload)) => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        return (
                            sent,
                            code,
                            String::from_utf8_lossy(&payload[2..]).into_owned(),
                        );
                    }
                    Some(_) => {}
                    None => panic!("no close frame after {sent} messages"),
                }
            }
        });
        let mut busy = Vec::new();
        while !flooder.is_finished() || busy.len() < 50 {
            busy.push(rtt(&mut polite));
            std::thread::sleep(Duration::from_millis(2));
        }
        let (sent, code, reason) = flooder.join().unwrap();
        assert!(sent >= 1100, "the flood ran: {sent} messages");
        assert_eq!((code, reason.as_str()), (1008, "rate limit"));
        let (p99_quiet, p99_busy) = (quantile(quiet, 0.99), quantile(busy.clone(), 0.99));
        eprintln!(
            "polite p99: {p99_quiet:?} quiet, {p99_busy:?} during the flood ({} samples)",
            busy.len()
        );
        assert!(
            p99_busy < Duration::from_millis(100),
            "polite p99 {p99_busy:?} during the flood (quiet: {p99_quiet:?})"
        );
        // The polite client is still served.
        rtt(&mut polite);
        let m = metrics(addr);
        assert_eq!(
            m["pollcap_front_door_refusals_total{reason=\"conn_messages\"}"],
            1.0
        );
        assert_eq!(m["pollcap_close_frames_sent_total{code=\"1008\"}"], 1.0);
        srv.shutdown_handle().shutdown();
        srv.join().unwrap();
    });
}

#[cfg(feature = "cli")]
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// `count` upgrade attempts, each with a distinct forwarded address from
/// `first`, refused at the token check (401: after the table counted
/// the address), over `threads` clients.
#[cfg(feature = "cli")]
fn forwarded_attempts(addr: SocketAddr, first: u32, count: u32, threads: u32) {
    let per = count / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..per {
                    let ip =
                        std::net::IpAddr::from((0x0a00_0000 + first + t * per + i).to_be_bytes());
                    let req = upgrade_request(&format!("X-Forwarded-For: {ip}\r\n"));
                    let r = raw_exchange(addr, req.as_bytes(), Duration::from_secs(10));
                    assert_eq!(status_of(&r), 401, "{r}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[cfg(feature = "cli")] // runs the binary
#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads RSS from /proc")]
fn a_hundred_thousand_forwarded_addresses_leave_rss_bounded() {
    let secret = String::from_utf8(SECRET.to_vec()).unwrap();
    let srv = spawn_server(
        env!("CARGO_BIN_EXE_pollcap"),
        &[
            "serve",
            "--app",
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--trust-proxy",
            "127.0.0.1/32",
            "--ip-connects-per-sec",
            "1",
        ],
        &[
            ("POLLCAP_JWT_SECRET", secret.as_str()),
            ("RUST_LOG", "warn"),
        ],
    );
    let pid = srv.child.as_ref().unwrap().id();
    forwarded_attempts(srv.addr, 0, 10_000, 8);
    let warm = rss_kib(pid);
    forwarded_attempts(srv.addr, 10_000, 60_000, 8);
    let full = rss_kib(pid);
    forwarded_attempts(srv.addr, 70_000, 30_000, 8);
    let after = rss_kib(pid);
    let m = metrics(srv.addr);
    let entries = m["pollcap_client_table_entries"];
    let evicted = m["pollcap_client_table_evictions_total"];
    eprintln!(
        "RSS: {warm} KiB after 10k addresses, {full} KiB after 70k, {after} KiB after 100k; \
         {entries} entries, {evicted} evicted"
    );
    assert!(entries <= 65_536.0, "{entries} entries");
    assert!(evicted >= 100_000.0 - 65_536.0, "{evicted} evicted");
    // The table is full at 70k: the last 30 000 addresses cost nothing more.
    assert!(after <= full + 2048, "RSS grew from {full} to {after} KiB");
    assert!(
        after <= warm + 16 * 1024,
        "RSS grew from {warm} to {after} KiB"
    );
}
