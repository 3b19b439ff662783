//! Idle means idle (issue 20): the real binary's memory per connection,
//! never used and after traffic, with and without permessage-deflate.
//! Raw sockets in one thread each; the server's RSS from /proc. The
//! server trims its heap every 10 s (`pollcap serve`), so a figure "after"
//! is read once a trim has passed (a bounded wait for the condition).
//! Linux only: it reads /proc and sets rlimits.
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{frame, spawn_server};
use pollcap::deflate::codec;

const BIN: &str = env!("CARGO_BIN_EXE_pollcap");
/// Connections per server.
const N: usize = 2000;
/// The message each connection sends once.
const SIZE: usize = 8 * 1024;
const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Room for two servers' worth of sockets in this process.
fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(20_000);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// An 8 KiB JSON message, as agent events look.
fn message(i: usize) -> String {
    let mut s = format!("{{\"type\":\"agent_completed\",\"run_id\":\"r{i}\",\"final\":\"");
    let words = [
        "the ",
        "reactor ",
        "caps ",
        "every ",
        "wait ",
        "and ",
        "deadline ",
    ];
    let mut k = i;
    while s.len() < SIZE - 2 {
        s.push_str(words[k % words.len()]);
        k = k.wrapping_mul(31).wrapping_add(7);
    }
    s.truncate(SIZE - 2);
    s.push_str("\"}");
    s
}

fn connect(addr: SocketAddr, deflate: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra = if deflate { OFFER } else { "" };
    s.write_all(common::upgrade_request(extra).as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed during the handshake");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(head.contains("permessage-deflate"), deflate, "{head}");
    s
}

/// One server frame: (first byte, payload).
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (h[0], p)
}

/// The smallest RSS seen within `window` (a heap trim falls inside it).
fn settled(pid: u32, window: Duration) -> u64 {
    let end = Instant::now() + window;
    let mut low = rss(pid);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200)); // sampling period
        low = low.min(rss(pid));
    }
    low
}

struct Figures {
    fresh: u64,
    never_used: u64,
    after: u64,
}

fn kib_per_conn(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / N as f64 / 1024.0
}

fn measure(deflate: bool) -> Figures {
    let srv = spawn_server(
        BIN,
        &[
            "serve",
            "--app",
            "echo",
            "--threads",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "5000",
        ],
        // No ping during the test: the raw clients never answer one.
        &[
            ("WEBSOCKET_HEARTBEAT_INTERVAL", "200"),
            ("WEBSOCKET_HEARTBEAT_TIMEOUT", "300"),
            ("WEBSOCKET_STALE_TIMEOUT", "300"),
            ("WEBSOCKET_CONNECTION_TIMEOUT", "600"),
            ("POLLCAP_DEFLATE", "on"),
        ],
    );
    let pid = srv.child.as_ref().unwrap().id();
    let fresh = settled(pid, Duration::from_millis(500));
    let mut conns: Vec<TcpStream> = (0..N).map(|_| connect(srv.addr, deflate)).collect();
    // Past a trim: what N connections cost before any message.
    let never_used = settled(pid, Duration::from_secs(11));
    // Every connection sends its message, then every one reads the echo.
    for (i, c) in conns.iter_mut().enumerate() {
        let m = message(i);
        let bytes = if deflate {
            frame(0x41, true, &codec::compress(m.as_bytes(), 15))
        } else {
            frame(0x1, true, m.as_bytes())
        };
        c.write_all(&bytes).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let (b0, payload) = read_frame(c);
        let text = if deflate {
            assert_eq!(b0, 0xC1, "FIN, RSV1, Text");
            codec::inflate(&payload, 1 << 20).unwrap()
        } else {
            assert_eq!(b0, 0x81, "FIN, Text");
            payload
        };
        assert_eq!(text, message(i).as_bytes());
    }
    // Quiet again: the footprint returns to its never-used figure once a
    // trim has passed (bounded).
    let limit = Instant::now() + Duration::from_secs(25);
    let mut after = rss(pid);
    while kib_per_conn(never_used, after) > 0.5 && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(200)); // sampling period
        after = after.min(rss(pid));
    }
    drop(conns);
    Figures {
        fresh,
        never_used,
        after,
    }
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc/PID/status")]
fn after_an_8_kib_message_a_connection_returns_to_its_idle_footprint() {
    raise_fd_limit();
    let (plain, deflate) = std::thread::scope(|s| {
        let a = s.spawn(|| measure(false));
        let b = s.spawn(|| measure(true));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (what, f) in [("uncompressed", &plain), ("permessage-deflate", &deflate)] {
        let idle = kib_per_conn(f.fresh, f.never_used);
        let grown = kib_per_conn(f.never_used, f.after);
        println!(
            "{what}: {idle:.2} KiB per idle connection, {:.2} KiB after one 8 KiB message \
             ({grown:+.2})",
            kib_per_conn(f.fresh, f.after)
        );
        assert!(
            grown <= 0.5,
            "{what}: {grown:.2} KiB more per connection after traffic (idle {idle:.2} KiB)"
        );
    }
}
