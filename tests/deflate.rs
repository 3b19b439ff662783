//! permessage-deflate over real loopback sockets: the library client and
//! the probe against the in-process server (negotiated, declined, not
//! offered), a server that answers an extension it was not offered, and
//! the hostile inputs with their close codes and metrics.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::*;
use pollcap::client::{Client, ClientConfig, ClientError};
use pollcap::deflate::codec;
use pollcap::reactor::BackendKind;
use tungstenite::Message;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

fn echo_server(env: &[(&str, &str)]) -> pollcap::server::Server {
    start(BackendKind::Mio, env, |_| {})
}

fn client(deflate: bool) -> Client {
    Client::new(ClientConfig {
        max_attempts: 1,
        deflate,
        ..ClientConfig::default()
    })
}

/// A JSON text of about `n` bytes.
fn json(n: usize) -> String {
    let mut s = String::from("{\"type\":\"agent_thinking\",\"delta\":\"");
    let words = ["caps ", "every ", "wait ", "deadline ", "reactor "];
    let mut i = 0;
    while s.len() < n - 2 {
        s.push_str(words[i % 5]);
        i = (i * 7 + 3) % 5;
    }
    s.truncate(n - 2);
    s + "\"}"
}

#[test]
fn the_client_negotiates_and_messages_round_trip_compressed() {
    let srv = echo_server(&[]);
    let addr = srv.local_addr();
    let (mut conn, rep) = client(true).connect(&url(addr)).unwrap();
    assert_eq!(
        rep.deflate.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    // Under, just over, and well over the default threshold (512 bytes).
    for n in [10, 300, 600, 20_000] {
        let m = Message::text(json(n));
        conn.send(m.clone()).unwrap();
        assert_eq!(conn.recv().unwrap(), m, "{n} bytes");
    }
    conn.close().unwrap();
    // Both directions went compressed (the two messages over the threshold).
    let m = metrics(addr);
    assert_eq!(m["pollcap_deflate_messages_total{direction=\"in\"}"], 2.0);
    assert_eq!(m["pollcap_deflate_messages_total{direction=\"out\"}"], 2.0);
    assert!(
        m["pollcap_deflate_bytes_total{direction=\"out\",form=\"compressed\"}"]
            < m["pollcap_deflate_bytes_total{direction=\"out\",form=\"uncompressed\"}"] / 3.0
    );
}

#[test]
fn without_the_offer_or_with_the_server_off_nothing_is_compressed() {
    let on = echo_server(&[]);
    let (mut conn, rep) = client(false).connect(&url(on.local_addr())).unwrap();
    assert_eq!(rep.deflate, None);
    conn.send(Message::text(json(2000))).unwrap();
    assert_eq!(conn.recv().unwrap(), Message::text(json(2000)));
    let off = echo_server(&[("POLLCAP_DEFLATE", "off")]);
    let (_conn, rep) = client(true).connect(&url(off.local_addr())).unwrap();
    assert_eq!(rep.deflate, None);
    let m = metrics(off.local_addr());
    assert_eq!(m["pollcap_deflate_declined_total"], 1.0);
}

#[test]
fn an_extension_the_client_did_not_offer_fails_the_handshake() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(2) {
            let mut s = s.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim()
                .to_string();
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let _ = write!(
                s,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n\
                 Sec-WebSocket-Extensions: permessage-deflate; mystery=1\r\n\r\n"
            );
        }
    });
    for deflate in [false, true] {
        let err = client(deflate).connect(&url(addr)).unwrap_err();
        assert!(
            matches!(&err, ClientError::Handshake(m) if m.contains("permessage-deflate")),
            "{err}"
        );
    }
}

/// `pollcap probe --json` against `addr`, with `extra` flags.
#[cfg(feature = "cli")]
fn probe(addr: SocketAddr, extra: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pollcap"))
        .args(["probe", &url(addr), "--json", "--text", "compress me"])
        .args(extra)
        .env_remove("POLLCAP_TOKEN")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[cfg(feature = "cli")]
#[test]
fn the_probe_says_whether_the_endpoint_negotiated_compression() {
    use pollcap::app::App;
    use pollcap::apps::agent_chat::AgentChat;
    use std::sync::Arc;
    let agent = |env: &[(&str, &str)]| {
        start(BackendKind::Mio, env, |c| {
            c.app = App::Handler(Arc::new(AgentChat {
                pacing: Duration::ZERO,
                upstream: false,
            }));
        })
    };
    let on = agent(&[]);
    let r = probe(on.local_addr(), &[]);
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .ends_with("; permessage-deflate negotiated"),
        "{r}"
    );
    assert!(
        r["deflate"]
            .as_str()
            .unwrap()
            .starts_with("permessage-deflate")
    );
    let r = probe(on.local_addr(), &["--no-deflate"]);
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .contains("not offered (--no-deflate)"),
        "{r}"
    );
    assert_eq!(r["deflate_offered"], false);
    // A server (or a proxy) that strips the extension.
    let off = agent(&[("POLLCAP_DEFLATE", "off")]);
    let r = probe(off.local_addr(), &[]);
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .contains("offered but not negotiated"),
        "{r}"
    );
    assert_eq!(r["deflate"], serde_json::Value::Null);
}

/// A raw client after an upgrade with (or without) the offer.
fn raw(addr: SocketAddr, offer: bool) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(upgrade_request(if offer { OFFER } else { "" }).as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert_eq!(head.contains("permessage-deflate"), offer, "{head}");
    s
}

#[test]
fn hostile_compressed_input_gets_its_close_code_and_its_metric() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        let addr = srv.local_addr();
        // RSV1 without negotiation: 1002.
        let mut s = raw(addr, false);
        s.write_all(&frame(0x41, true, &codec::compress(b"hello", 15)))
            .unwrap();
        assert_eq!(read_close(&mut s).0, 1002);
        // Invalid deflate data: 1007.
        let mut s = raw(addr, true);
        s.write_all(&frame(0x41, true, &[0xff, 0xee, 0xdd]))
            .unwrap();
        let (code, reason, _) = read_close(&mut s);
        assert_eq!((code, reason.as_str()), (1007, "invalid compressed data"));
        // A deflate bomb: 8 KiB that would inflate to 8 MiB, over the 1 MiB
        // --max-message: 1009.
        let mut best = flate2::Compress::new(flate2::Compression::best(), false);
        let bomb = codec::compress_with(&mut best, &vec![b'a'; 8 << 20]);
        assert!(bomb.len() < 9000, "{}", bomb.len());
        let mut s = raw(addr, true);
        s.write_all(&frame(0x42, true, &bomb)).unwrap();
        let (code, reason, _) = read_close(&mut s);
        assert_eq!((code, reason.as_str()), (1009, "message too big"));
        let m = metrics(addr);
        assert_eq!(m["pollcap_close_frames_sent_total{code=\"1002\"}"], 1.0);
        assert_eq!(m["pollcap_close_frames_sent_total{code=\"1007\"}"], 1.0);
        assert_eq!(m["pollcap_close_frames_sent_total{code=\"1009\"}"], 1.0);
        // The server still serves.
        let (mut conn, _) = client(true).connect(&url(addr)).unwrap();
        conn.send(Message::text(json(1000))).unwrap();
        assert_eq!(conn.recv().unwrap(), Message::text(json(1000)));
    });
}
