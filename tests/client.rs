//! The blocking client and the probe over real loopback sockets: each
//! phase deadline is total (a dribbling peer cannot stretch it), retries
//! back off and feed the client-side breaker, 4xx answers are not retried,
//! and the probe (the binary's `pollcap probe --json`) passes a healthy
//! agent_chat server and names the failing phase of an unhealthy one.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use pollcap::app::App;
use pollcap::apps::agent_chat::AgentChat;
use pollcap::breaker::BreakerState;
use pollcap::client::{Client, ClientConfig, ClientError};
use pollcap::reactor::BackendKind;
use tungstenite::Message;

fn quick(attempts: u32) -> ClientConfig {
    ClientConfig {
        max_attempts: attempts,
        connect_timeouts: vec![Duration::from_secs(2)],
        backoff_base: 10 * MS,
        backoff_max: 40 * MS,
        handshake_timeout: 300 * MS,
        receive_timeout: 300 * MS,
        close_timeout: 300 * MS,
        ..ClientConfig::default()
    }
}

/// A fake server: for each connection, reads the request head and runs
/// `answer` on the socket; counts accepted connections.
fn fake_server(
    answer: impl Fn(&mut std::net::TcpStream) + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            seen.fetch_add(1, Ordering::SeqCst);
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
                head.push(b[0]);
            }
            answer(&mut s);
        }
    });
    (addr, count)
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

#[test]
fn connects_echoes_and_closes_with_phase_timings() {
    let srv = start(BackendKind::Mio, &[], |_| {});
    let mut client = Client::new(quick(1));
    let (mut conn, report) = client.connect(&url(srv.local_addr())).unwrap();
    assert_eq!(report.attempts, 1);
    assert_eq!(report.addr, srv.local_addr());
    assert_eq!(report.subprotocol, None);
    conn.send(Message::text("hi")).unwrap();
    assert_eq!(conn.recv().unwrap(), Message::text("hi"));
    conn.close().unwrap();
}

#[test]
fn a_dribbling_server_is_cut_at_the_handshake_deadline() {
    // One byte of a 101 response every 50 ms: each read succeeds, so only
    // a deadline over the whole handshake can end it.
    let (addr, _) = fake_server(|s| {
        for b in b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n".iter() {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(50 * MS); // the peer's pace, not synchronisation
        }
    });
    let t0 = Instant::now();
    let err = Client::new(quick(1)).connect(&url(addr)).unwrap_err();
    assert!(matches!(err, ClientError::HandshakeTimeout(_)), "{err}");
    assert_near(t0.elapsed(), 300 * MS, "handshake deadline");
}

#[test]
fn the_receive_deadline_covers_pings_in_between() {
    // The server pings every 0.3 s (FAST) and sends nothing else; Pings are
    // answered but do not reset the client's deadline.
    let srv = start(BackendKind::Mio, &[], |_| {});
    let mut cfg = quick(1);
    cfg.receive_timeout = 700 * MS;
    let (mut conn, _) = Client::new(cfg).connect(&url(srv.local_addr())).unwrap();
    let t0 = Instant::now();
    let err = conn.recv().unwrap_err();
    assert!(matches!(err, ClientError::ReceiveTimeout(_)), "{err}");
    assert_near(t0.elapsed(), 700 * MS, "receive deadline");
    assert_eq!(
        metric(srv.local_addr(), "pollcap_timeouts_total{phase=\"ping\"}"),
        0.0,
        "the client answered the server's pings meanwhile"
    );
}

#[test]
fn retries_back_off_then_the_breaker_fails_fast() {
    let (addr, count) = fake_server(|s| {
        let _ = s.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy",
        );
    });
    let mut cfg = quick(3);
    cfg.breaker_threshold = 3;
    cfg.breaker_recovery = Duration::from_secs(60);
    let mut client = Client::new(cfg);
    let err = client.connect(&url(addr)).unwrap_err();
    let ClientError::GaveUp { attempts, last } = &err else {
        panic!("{err}");
    };
    assert_eq!(*attempts, 3);
    assert!(
        matches!(**last, ClientError::Rejected { status: 503, ref retry_after, .. } if retry_after.as_deref() == Some("7")),
        "{last}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert_eq!(client.breaker_state(), BreakerState::Open);
    // Open: refused without a connection attempt.
    let err = client.connect(&url(addr)).unwrap_err();
    assert!(matches!(err, ClientError::BreakerOpen { .. }), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn a_client_error_status_is_not_retried_and_does_not_trip_the_breaker() {
    let (addr, count) = fake_server(|s| {
        let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
    });
    let mut cfg = quick(3);
    cfg.breaker_threshold = 1;
    let mut client = Client::new(cfg);
    let err = client.connect(&url(addr)).unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected { status: 401, .. }),
        "{err}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

fn agent_server(env: &[(&str, &str)], pacing: Duration) -> pollcap::server::Server {
    start(BackendKind::Mio, env, move |c| {
        c.app = App::Handler(Arc::new(AgentChat {
            pacing,
            upstream: false,
        }));
    })
}

/// `pollcap probe URL --json` with the deadlines of [`quick`] (receive
/// deadline `receive` seconds): its report and exit code.
fn probe(url: &str, receive: &str, text: &str) -> (serde_json::Value, Option<i32>) {
    probe_with(url, receive, text, &[])
}

fn probe_with(
    url: &str,
    receive: &str,
    text: &str,
    extra: &[&str],
) -> (serde_json::Value, Option<i32>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pollcap"))
        .args(["probe", url, "--json", "--text", text])
        .args(extra)
        .args(["--connect-timeout", "2", "--handshake-timeout", "0.3"])
        .args(["--receive-timeout", receive, "--close-timeout", "0.3"])
        .env_remove("POLLCAP_TOKEN")
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    (report, out.status.code())
}

fn verdict(r: &serde_json::Value) -> &str {
    r["verdict"].as_str().unwrap()
}

#[test]
fn the_probe_passes_a_healthy_agent_chat_server() {
    let srv = agent_server(&[], 2 * MS);
    let (r, code) = probe(&url(srv.local_addr()), "0.3", "hello probe");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(code, Some(0));
    assert!(verdict(&r).starts_with("OK"), "{}", verdict(&r));
    assert!(r["events"].as_u64().unwrap() >= 5);
    let phases = r["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 6);
    for p in phases {
        assert_eq!(p["ok"], true, "{}", p["phase"]);
        assert!(p["ms"].is_number(), "{}", p["phase"]);
    }
}

#[test]
fn the_probe_names_the_failing_phase() {
    // Execution deadline shorter than the run: an execution_timeout event.
    let srv = agent_server(&[("AGENT_EXECUTION_TIMEOUT", "0.2")], 100 * MS);
    let (r, code) = probe(&url(srv.local_addr()), "2", "slow");
    assert_eq!(r["ok"], false);
    assert_eq!(code, Some(1));
    let v = verdict(&r);
    assert!(
        v.starts_with("FAIL at all_events") && v.contains("execution_timeout"),
        "{v}"
    );
    // The echo app does not speak agent_chat: refused with 400.
    let echo = start(BackendKind::Mio, &[], |_| {});
    let (r, _) = probe(&url(echo.local_addr()), "0.3", "x");
    let v = verdict(&r);
    assert!(
        v.starts_with("FAIL at handshake") && v.contains("400"),
        "{v}"
    );
    // Nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (r, code) = probe(&url(closed), "0.3", "x");
    assert!(verdict(&r).starts_with("FAIL at tcp"), "{}", verdict(&r));
    assert_eq!(r["phases"][0]["ok"], true);
    assert_eq!(code, Some(1));
}

#[test]
fn the_probe_drops_reconnects_resumes_and_checks_exactly_once() {
    let srv = agent_server(&[], 20 * MS);
    let u = url(srv.local_addr());
    let (r, code) = probe_with(
        &u,
        "2",
        "drop me",
        &["--drop-after", "3", "--attempts", "3"],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(code, Some(0));
    let v = verdict(&r);
    assert!(
        v.contains("resumed after a drop at event 3: exactly once, no gap"),
        "{v}"
    );
    let phases = r["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "dns",
            "tcp",
            "handshake",
            "first_event",
            "resume",
            "all_events",
            "close"
        ]
    );
    assert!(phases.iter().all(|p| p["ok"] == true), "{r}");
    assert!(
        phases[4]["detail"]
            .as_str()
            .unwrap()
            .contains("resumed from seq 4")
    );
    assert_eq!(r["attempts"], 2, "one connect before the drop, one after");
    assert_eq!(metric(srv.local_addr(), "pollcap_resumes_total"), 1.0);
    // A server that keeps no runs: the resume phase names the refusal.
    let off = agent_server(&[("POLLCAP_STORE", "off")], 20 * MS);
    let (r, code) = probe_with(&url(off.local_addr()), "2", "x", &["--drop-after", "2"]);
    assert_eq!(code, Some(1));
    let v = verdict(&r);
    assert!(
        v.starts_with("FAIL at resume") && v.contains("resume_unavailable"),
        "{v}"
    );
    // A run shorter than --drop-after cannot test resume: said so.
    let (r, _) = probe_with(&u, "2", "x", &["--drop-after", "500"]);
    let v = verdict(&r);
    assert!(
        v.starts_with("FAIL at resume") && v.contains("before --drop-after 500"),
        "{v}"
    );
}
