//! TLS over real loopback sockets, on both backends: wss:// and https://
//! on one port, certificate problems named by the client, plain text and
//! stalled handshakes on the TLS port, and certificate rotation through
//! the files' modification time (the path every platform has; SIGHUP is
//! tested on the binary in tests/cli.rs).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::{TempDir, TestCa};
use common::*;
use pollcap::client::{Client, ClientConfig, ClientError};
use pollcap::reactor::BackendKind;
use pollcap::server::Server;
use pollcap::tls::{CertStore, TlsProblem};
use tungstenite::Message;

/// A TLS server (echo app) for `localhost` and 127.0.0.1, its CA, and the
/// directory holding ca.pem, cert.pem and key.pem.
fn tls_server(kind: BackendKind, env: &[(&str, &str)]) -> (Server, TestCa, TempDir) {
    let dir = TempDir::new("tls");
    let ca = TestCa::new("pollcap test CA");
    ca.write(&dir.path("ca.pem"));
    ca.write_leaf(
        &["localhost", "127.0.0.1"],
        &dir.path("cert.pem"),
        &dir.path("key.pem"),
    );
    let store = CertStore::open(&dir.path("cert.pem"), &dir.path("key.pem")).unwrap();
    let srv = start(kind, env, |c| c.tls = Some(Arc::new(store)));
    (srv, ca, dir)
}

fn client(ca: &Path) -> Client {
    Client::new(ClientConfig {
        max_attempts: 1,
        ca_file: Some(ca.to_path_buf()),
        handshake_timeout: Duration::from_secs(2),
        receive_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    })
}

fn wss(addr: SocketAddr, host: &str) -> String {
    format!("wss://{host}:{}/ws", addr.port())
}

/// One HTTPS request over a rustls client trusting `ca`; the whole response.
fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> String {
    let roots = pollcap::tls::roots(Some(ca)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(pollcap::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    // The server closes with close_notify after Connection: close.
    tls.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn https_metric(addr: SocketAddr, ca: &Path, key: &str) -> f64 {
    let r = https_get(addr, ca, "/metrics");
    body_of(&r)
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {key} missing"))
}

#[test]
fn wss_and_https_share_the_port() {
    each_backend(|kind| {
        let (srv, _ca, dir) = tls_server(kind, &[]);
        let addr = srv.local_addr();
        let ca = dir.path("ca.pem");
        for host in ["localhost", "127.0.0.1"] {
            let mut c = client(&ca);
            let (mut conn, report) = c.connect(&wss(addr, host)).unwrap();
            assert!(report.tls.is_some(), "a TLS phase was timed");
            assert!(
                matches!(report.tls_version.as_deref(), Some("TLSv1_3")),
                "{report:?}"
            );
            // Larger than one TLS record and tungstenite's read buffer: the
            // server must read every decrypted byte, not wait for readiness.
            let big = "x".repeat(40_000);
            for m in ["hello over tls", big.as_str()] {
                conn.send(Message::text(m)).unwrap();
                assert_eq!(conn.recv().unwrap(), Message::text(m));
            }
            conn.close().unwrap();
        }
        let health = https_get(addr, &ca, "/health");
        assert_eq!(status_of(&health), 200, "{health}");
        let j: serde_json::Value = serde_json::from_str(body_of(&health)).unwrap();
        assert_eq!(j["tls"]["enabled"], true);
        assert!(https_get(addr, &ca, "/").starts_with("HTTP/1.1 200 "));
    });
}

#[test]
fn certificate_problems_are_named() {
    let (srv, _ca, dir) = tls_server(BackendKind::Mio, &[]);
    let addr = srv.local_addr();
    // A client trusting another CA: not trusted, the issuer named.
    let other = TestCa::new("Some Other CA");
    other.write(&dir.path("other.pem"));
    let err = client(&dir.path("other.pem"))
        .connect(&wss(addr, "localhost"))
        .unwrap_err();
    match &err {
        ClientError::Tls(TlsProblem::Untrusted { issuer }) => {
            assert_eq!(issuer.as_deref(), Some("CN=pollcap test CA"))
        }
        other => panic!("{other}"),
    }
    assert_eq!(err.phase(), "tls");
    assert!(!err.retryable(), "a certificate does not fix itself");
    assert_eq!(
        err.to_string(),
        "certificate not trusted (issuer \"CN=pollcap test CA\")"
    );
    // The web roots do not know a private CA either.
    let mut c = Client::new(ClientConfig {
        max_attempts: 1,
        ..ClientConfig::default()
    });
    let err = c.connect(&wss(addr, "localhost")).unwrap_err();
    assert!(
        matches!(err, ClientError::Tls(TlsProblem::Untrusted { .. })),
        "{err}"
    );

    // A certificate for another name, and an expired one.
    let ca = TestCa::new("pollcap test CA 2");
    ca.write(&dir.path("ca2.pem"));
    for (names, expired, want) in [
        (&["other.example"][..], false, "certificate name mismatch"),
        (&["localhost"][..], true, "certificate expired"),
    ] {
        let (cert, key) = ca.leaf(names, expired);
        std::fs::write(dir.path("c.pem"), cert).unwrap();
        std::fs::write(dir.path("k.pem"), key).unwrap();
        let store = CertStore::open(&dir.path("c.pem"), &dir.path("k.pem")).unwrap();
        let srv = start(BackendKind::Mio, &[], |c| c.tls = Some(Arc::new(store)));
        let err = client(&dir.path("ca2.pem"))
            .connect(&wss(srv.local_addr(), "localhost"))
            .unwrap_err();
        assert!(err.to_string().starts_with(want), "{err}");
        assert_eq!(err.phase(), "tls");
    }
}

#[test]
fn plain_text_on_the_tls_port_gets_a_plain_400_and_the_server_is_unharmed() {
    each_backend(|kind| {
        let (srv, _ca, dir) = tls_server(kind, &[]);
        let addr = srv.local_addr();
        let t0 = Instant::now();
        let r = raw_exchange(addr, upgrade_request("").as_bytes(), Duration::from_secs(5));
        assert!(t0.elapsed() < Duration::from_secs(1), "fails quickly");
        assert_eq!(status_of(&r), 400, "{r}");
        assert!(r.contains("this port speaks TLS"), "{r}");
        // Garbage that starts like a TLS record: refused by the transport.
        let r = raw_exchange(
            addr,
            &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
            Duration::from_secs(5),
        );
        assert!(!r.starts_with("HTTP/"), "a TLS alert, not HTTP");
        let ca = dir.path("ca.pem");
        assert_eq!(
            https_metric(addr, &ca, "pollcap_tls_plaintext_requests_total"),
            1.0
        );
        assert_eq!(
            https_metric(addr, &ca, "pollcap_tls_handshake_failures_total"),
            1.0
        );
        let (mut conn, _) = client(&ca).connect(&wss(addr, "localhost")).unwrap();
        conn.send(Message::text("still serving")).unwrap();
        assert_eq!(conn.recv().unwrap(), Message::text("still serving"));
    });
}

/// The first bytes a real client sends: a TLS ClientHello.
fn client_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(pollcap::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut c =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn stalled_tls_handshakes_are_cut_at_their_deadlines() {
    each_backend(|kind| {
        let (srv, _ca, dir) = tls_server(kind, &[]);
        let addr = srv.local_addr();
        let hello = client_hello();
        assert!(hello.len() > 100);
        // Half a ClientHello, then nothing: the handshake deadline (0.3 s).
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&hello[..hello.len() / 2]).unwrap();
        let cut = wait_eof(&mut s);
        assert_near(cut - t0, Duration::from_millis(300), "mid-ClientHello");
        // Nothing at all: the connect deadline (0.2 s).
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let cut = wait_eof(&mut s);
        assert_near(cut - t0, Duration::from_millis(200), "silent TLS client");
        let ca = dir.path("ca.pem");
        assert_eq!(
            https_metric(addr, &ca, "pollcap_timeouts_total{phase=\"handshake\"}"),
            1.0
        );
        assert_eq!(
            https_metric(addr, &ca, "pollcap_timeouts_total{phase=\"connect\"}"),
            1.0
        );
    });
}

/// Connects until the server presents a certificate `ca` trusts, within
/// `limit`; returns how long that took.
fn until_trusted(addr: SocketAddr, ca: &Path, limit: Duration) -> Duration {
    let t0 = Instant::now();
    eventually(limit, || {
        let trusted = client(ca).connect(&wss(addr, "localhost")).is_ok();
        trusted.then(|| t0.elapsed())
    })
}

#[test]
fn replaced_certificate_files_are_served_after_the_next_sweep_and_bad_ones_refused() {
    // Audit sweeps every 0.5 s (FAST) check the files' modification time.
    let (srv, _ca, dir) = tls_server(BackendKind::Mio, &[]);
    let addr = srv.local_addr();
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    // A new pair from another CA: new connections get it, with no restart.
    let next = TestCa::new("pollcap rotated CA");
    next.write(&dir.path("next.pem"));
    assert!(
        client(&dir.path("next.pem"))
            .connect(&wss(addr, "localhost"))
            .is_err()
    );
    next.write_leaf(&["localhost"], &cert, &key);
    // The rotated certificate is served.
    let took = until_trusted(addr, &dir.path("next.pem"), Duration::from_secs(5));
    assert!(
        took < Duration::from_secs(3),
        "within a sweep or two: {took:?}"
    );
    let next_ca = dir.path("next.pem");
    assert_eq!(
        https_metric(addr, &next_ca, "pollcap_tls_reloads_total"),
        1.0
    );
    // A broken replacement: refused, counted, and the rotated pair stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    // The reload is attempted.
    eventually(Duration::from_secs(5), || {
        (https_metric(addr, &next_ca, "pollcap_tls_reload_failures_total") >= 1.0).then_some(())
    });
    let (mut conn, _) = client(&next_ca).connect(&wss(addr, "localhost")).unwrap();
    conn.send(Message::text("old pair")).unwrap();
    assert_eq!(conn.recv().unwrap(), Message::text("old pair"));
}

/// A TLS client over a blocking socket, trusting `ca`.
fn tls_client(
    addr: SocketAddr,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let roots = pollcap::tls::roots(Some(ca)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(pollcap::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// The lingering close over TLS: after a refusal the server sends the
/// response, then close_notify, then its FIN (rustls reads a clean end
/// only in that order), and discards the records the client still sends.
#[test]
fn a_refusal_over_tls_ends_with_close_notify_then_fin_and_lingers() {
    each_backend(|kind| {
        let (srv, _ca, dir) = tls_server(kind, &[("WEBSOCKET_CLOSE_TIMEOUT", "3")]);
        let addr = srv.local_addr();
        let ca = dir.path("ca.pem");
        let mut bytes = b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
        while bytes.len() < 256 * 1024 {
            bytes.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
        }
        let mut tls = tls_client(addr, &ca);
        tls.write_all(&bytes).expect("the pipeline is read");
        tls.flush().unwrap();
        let mut out = Vec::new();
        tls.read_to_end(&mut out)
            .expect("close_notify, then EOF: no truncation, no reset");
        let r = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&r), 404, "{r}");
        assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "one answer: {r}");
        drop(tls);
        // HEAD over TLS: the head only, then the same clean end.
        let mut tls = tls_client(addr, &ca);
        tls.write_all(b"HEAD /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        tls.read_to_end(&mut out).unwrap();
        let r = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&r), 200, "{r}");
        assert!(r.ends_with("\r\n\r\n"), "no body: {r:?}");
        drop(tls);
        let lingers = "pollcap_lingering_closes_total{end=\"peer_closed\"}";
        // Both lingers end.
        eventually(Duration::from_secs(5), || {
            (https_metric(addr, &ca, lingers) >= 2.0).then_some(())
        });
        assert!(https_metric(addr, &ca, "pollcap_linger_discarded_bytes_total") > 100_000.0);
    });
}
