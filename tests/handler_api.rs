//! The handler API over real sockets: `open` sees the request (path,
//! query, headers, peer) and may refuse it with a status of its own —
//! not counted by the circuit breaker — or fail (500, counted); a slow
//! decision is answered 503 at the handshake deadline; raw text and binary
//! messages go out in order with enveloped events, outside the sequence,
//! never replayed, and within the run's budget.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pollcap::app::{App, Decision, Handler, Inbound, Outbox, Refusal, Request, Session};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

/// What `open` saw, for the test to read.
#[derive(Debug)]
struct Seen {
    path: String,
    query: Option<String>,
    tenant: Option<String>,
    peer: std::net::IpAddr,
}

/// `open` refuses a request without `X-Tenant` (403, with a header of its
/// own), fails or panics when asked to (`X-Mode`), waits for the test when
/// `X-Mode: slow`; messages: "who" answers with the session, "mix" sends
/// events and raw messages, "flood" sends raw binary until cancelled,
/// "hold" keeps its pool thread until the test releases it.
struct Gate {
    seen: Mutex<Sender<Seen>>,
    /// `X-Mode: slow` waits for this before it accepts.
    slow: Mutex<Receiver<()>>,
    /// Every `close`, by connection id.
    closed: Mutex<Sender<u64>>,
    /// "hold" says it started here, then waits for `release`.
    holding: Mutex<Sender<()>>,
    release: Mutex<Receiver<()>>,
}

impl Handler for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }
    fn subprotocols(&self) -> &'static [&'static str] {
        &[]
    }
    fn resumable(&self) -> bool {
        true
    }
    fn open(&self, req: &Request) -> Decision {
        let _ = self.seen.lock().unwrap().send(Seen {
            path: req.path().to_string(),
            query: req.query().map(str::to_string),
            tenant: req.header("x-tenant").map(str::to_string),
            peer: req.peer(),
        });
        match req.header("X-Mode") {
            Some("fail") => return Decision::Fail("tenant database unreachable".into()),
            Some("panic") => panic!("a bug in open"),
            Some("slow") => {
                let _ = self
                    .slow
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
            }
            _ => {}
        }
        if req.path() != "/ws" {
            return Decision::refuse(404, "no such room");
        }
        match req.header("x-tenant") {
            None | Some("") => Decision::Refuse(
                Refusal::new(403, "tenant missing").with_header("X-Refused-By", "gate"),
            ),
            Some(_) => Decision::Accept,
        }
    }
    fn message(&self, session: &Session, input: Inbound, out: &Outbox) {
        let Inbound::Text(t) = input else { return };
        match t.as_str() {
            "who" => out.emit(
                "session",
                json!({
                    "path": session.path,
                    "query": session.query,
                    "peer": session.peer.to_string(),
                }),
            ),
            "mix" => {
                out.emit("a", json!({}));
                out.send_text("raw text");
                out.send_binary(vec![0u8, 1, 2, 255]);
                out.emit("b", json!({}));
                // Big enough to be compressed when the client agreed to it.
                out.send_binary(vec![7u8; 8192]);
            }
            "flood" => {
                while !out.is_cancelled() {
                    out.send_binary(vec![1u8; 1000]);
                }
            }
            "hold" => {
                let _ = self.holding.lock().unwrap().send(());
                let release = self.release.lock().unwrap();
                let _ = release.recv_timeout(Duration::from_secs(10));
                out.emit("held", json!({}));
            }
            _ => {}
        }
    }
    fn close(&self, session: &Session) {
        let _ = self.closed.lock().unwrap().send(session.conn_id);
    }
}

struct Fixture {
    app: Arc<Gate>,
    seen: Receiver<Seen>,
    slow: Sender<()>,
    closed: Receiver<u64>,
    holding: Receiver<()>,
    release: Sender<()>,
}

fn gate() -> Fixture {
    let (seen_tx, seen) = channel();
    let (slow, slow_rx) = channel();
    let (closed_tx, closed) = channel();
    let (holding_tx, holding) = channel();
    let (release, release_rx) = channel();
    let app = Arc::new(Gate {
        seen: Mutex::new(seen_tx),
        slow: Mutex::new(slow_rx),
        closed: Mutex::new(closed_tx),
        holding: Mutex::new(holding_tx),
        release: Mutex::new(release_rx),
    });
    Fixture {
        app,
        seen,
        slow,
        closed,
        holding,
        release,
    }
}

/// An upgrade request to `target` with `headers`; the whole response.
fn upgrade(addr: SocketAddr, target: &str, headers: &str) -> String {
    let r = upgrade_request(headers).replacen("GET /ws ", &format!("GET {target} "), 1);
    raw_exchange(addr, r.as_bytes(), Duration::from_secs(5))
}

/// A tungstenite client with extra headers.
fn connect(addr: SocketAddr, target: &str, headers: &[(&'static str, &str)]) -> Client {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("ws://{addr}{target}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(*k, v.parse().expect("header value"));
    }
    tungstenite::client(req, s).expect("upgrade accepted").0
}

/// The next text or binary message (heartbeat pings skipped).
fn next(ws: &mut Client) -> Message {
    loop {
        match ws.read().expect("a message") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

fn event(ws: &mut Client) -> Value {
    match next(ws) {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("an event"),
        other => panic!("expected an event, got {other:?}"),
    }
}

fn breaker_counts(addr: SocketAddr) -> [f64; 4] {
    let m = metrics(addr);
    [
        m["pollcap_breaker_failures_total"],
        m["pollcap_breaker_consecutive_failures"],
        m["pollcap_breaker_opened_total"],
        m["pollcap_breaker_rejections_total"],
    ]
}

fn health(addr: SocketAddr) -> Value {
    serde_json::from_str(body_of(&get(addr, "/health"))).unwrap()
}

#[test]
fn open_reads_the_request_and_refuses_with_its_status_which_the_breaker_does_not_count() {
    each_backend(|kind| {
        let f = gate();
        let app = f.app.clone();
        // Two failures would open the breaker: five refusals must not.
        let srv = start(kind, &[], |c| {
            c.app = App::Handler(app);
            c.settings.breaker_threshold = 2;
        });
        let a = srv.local_addr();
        let before = breaker_counts(a);
        for _ in 0..5 {
            let r = upgrade(a, "/ws?room=7", "X-Other: 1\r\n");
            assert_eq!(status_of(&r), 403, "{r}");
            assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{r}");
            assert!(r.contains("\r\nX-Refused-By: gate\r\n"), "{r}");
            assert_eq!(body_of(&r), "tenant missing\n");
            let seen = f.seen.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(
                (seen.path.as_str(), seen.query.as_deref(), seen.tenant),
                ("/ws", Some("room=7"), None)
            );
        }
        let h = health(a);
        assert_eq!(h["breaker"]["state"], "closed", "{h}");
        assert_eq!(breaker_counts(a), before, "the breaker counted nothing");
        let m = metrics(a);
        assert_eq!(m["pollcap_handler_open_refusals_total"], 5.0);
        assert_eq!(m["pollcap_http_responses_total{status=\"403\"}"], 5.0);
        assert_eq!(m["pollcap_connections_open"], 0.0, "slots given back");
        // The handler accepts a tenant: its open saw the query, and later
        // calls see the path, the query and the peer in the session.
        let mut ws = connect(a, "/ws?room=42&lang=en", &[("X-Tenant", "acme")]);
        let seen = f.seen.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(seen.query.as_deref(), Some("room=42&lang=en"));
        assert_eq!(seen.tenant.as_deref(), Some("acme"));
        assert!(seen.peer.is_loopback(), "{:?}", seen.peer);
        ws.send(Message::text("who")).unwrap();
        let e = event(&mut ws);
        assert_eq!(e["type"], "session");
        assert_eq!(
            (&e["path"], &e["query"], &e["peer"]),
            (
                &json!("/ws"),
                &json!("room=42&lang=en"),
                &json!("127.0.0.1")
            )
        );
        assert_eq!(metric(a, "pollcap_upgrades_total"), 1.0);
    });
}

#[test]
fn an_open_that_fails_or_panics_is_a_500_that_the_breaker_counts() {
    each_backend(|kind| {
        let f = gate();
        let app = f.app.clone();
        let srv = start(kind, &[], |c| {
            c.app = App::Handler(app);
            c.settings.breaker_threshold = 2;
            c.settings.breaker_recovery = Duration::from_secs(60);
        });
        let a = srv.local_addr();
        let r = upgrade(a, "/ws", "X-Tenant: acme\r\nX-Mode: fail\r\n");
        assert_eq!(status_of(&r), 500, "{r}");
        assert!(body_of(&r).contains("tenant database unreachable"), "{r}");
        let r = upgrade(a, "/ws", "X-Tenant: acme\r\nX-Mode: panic\r\n");
        assert_eq!(status_of(&r), 500, "{r}");
        assert!(!body_of(&r).contains("a bug in open"), "no internals: {r}");
        // Two failures: the breaker is open, and says so before any open.
        let r = upgrade(a, "/ws", "X-Tenant: acme\r\n");
        assert_eq!(status_of(&r), 503, "{r}");
        assert!(r.contains("circuit breaker open"), "{r}");
        assert_eq!(health(a)["breaker"]["state"], "open");
        let m = metrics(a);
        assert_eq!(m["pollcap_breaker_failures_total"], 2.0);
        assert_eq!(m["pollcap_handler_panics_total"], 1.0);
        assert_eq!(m["pollcap_handler_open_refusals_total"], 0.0);
        assert_eq!(m["pollcap_connections_open"], 0.0);
        let opens = f.seen.try_iter().count();
        assert_eq!(opens, 2, "the breaker refused the third before open");
    });
}

#[test]
fn a_slow_decision_is_answered_503_at_the_handshake_deadline_and_a_late_accept_is_closed() {
    each_backend(|kind| {
        let f = gate();
        let app = f.app.clone();
        let srv = start(kind, &[], |c| c.app = App::Handler(app));
        let a = srv.local_addr();
        let handshake = Duration::from_millis(300); // FAST
        let t0 = Instant::now();
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = upgrade_request("X-Tenant: acme\r\nX-Mode: slow\r\n");
        s.write_all(req.as_bytes()).unwrap();
        f.seen
            .recv_timeout(Duration::from_secs(5))
            .expect("open is deciding");
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        let took = t0.elapsed();
        assert_eq!(status_of(&r), 503, "{r}");
        assert!(r.contains("Retry-After: 1\r\n"), "{r}");
        assert!(took <= handshake + SLACK, "answered after {took:?}");
        let m = metrics(a);
        assert_eq!(m["pollcap_timeouts_total{phase=\"handshake\"}"], 1.0);
        assert_eq!(
            m["pollcap_breaker_failures_total"], 1.0,
            "too slow is a fault"
        );
        assert_eq!(m["pollcap_connections_open"], 0.0);
        // The open goes on and accepts, too late: its session is closed.
        f.slow.send(()).unwrap();
        f.closed
            .recv_timeout(Duration::from_secs(5))
            .expect("close follows a late accept");
        assert_eq!(metric(a, "pollcap_upgrades_total"), 0.0);
        // A refused or accepted connection meanwhile is unaffected.
        let mut ws = connect(a, "/ws", &[("X-Tenant", "acme")]);
        ws.send(Message::text("who")).unwrap();
        assert_eq!(event(&mut ws)["type"], "session");
    });
}

/// Opens have threads of their own: runs holding every run thread (one
/// here) for longer than the handshake deadline do not delay an upgrade.
#[test]
fn a_pool_busy_with_long_runs_still_decides_upgrades_in_time() {
    each_backend(|kind| {
        let f = gate();
        let app = f.app.clone();
        let srv = start(kind, &[], |c| {
            c.app = App::Handler(app);
            c.settings.pool_threads = 1;
            c.settings.pool_queue = 4;
        });
        let a = srv.local_addr();
        let mut busy = connect(a, "/ws", &[("X-Tenant", "acme")]);
        busy.send(Message::text("hold")).unwrap();
        f.holding
            .recv_timeout(Duration::from_secs(5))
            .expect("the only run thread is taken");
        for _ in 0..3 {
            let r = upgrade(a, "/ws", "X-Other: 1\r\n");
            assert_eq!(status_of(&r), 403, "decided, not 503: {r}");
        }
        let mut ws = connect(a, "/ws", &[("X-Tenant", "acme")]);
        let m = metrics(a);
        assert_eq!(m["pollcap_timeouts_total{phase=\"handshake\"}"], 0.0);
        assert_eq!(m["pollcap_breaker_failures_total"], 0.0);
        f.release.send(()).unwrap();
        assert_eq!(event(&mut busy)["type"], "held");
        ws.send(Message::text("who")).unwrap();
        assert_eq!(event(&mut ws)["type"], "session");
    });
}

#[test]
fn raw_text_and_binary_go_out_as_sent_in_order_with_the_runs_events() {
    each_backend(|kind| {
        let f = gate();
        let app = f.app.clone();
        let srv = start(kind, &[], |c| c.app = App::Handler(app));
        let a = srv.local_addr();
        let mut ws = connect(a, "/ws", &[("X-Tenant", "acme")]);
        ws.send(Message::text("mix")).unwrap();
        let first = event(&mut ws);
        assert_eq!((&first["type"], &first["seq"]), (&json!("a"), &json!(1)));
        assert_eq!(next(&mut ws), Message::text("raw text"));
        assert_eq!(next(&mut ws), Message::binary(vec![0u8, 1, 2, 255]));
        let second = event(&mut ws);
        assert_eq!(
            (&second["type"], &second["seq"], &second["run_id"]),
            (&json!("b"), &json!(2), &first["run_id"]),
            "raw messages take no seq"
        );
        assert_eq!(next(&mut ws), Message::binary(vec![7u8; 8192]));
        // Through permessage-deflate (pollcap's client offers it): the
        // binary message is compressed on the way like any other.
        let mut cfg = pollcap::client::ClientConfig {
            deflate: true,
            headers: vec![("X-Tenant".into(), "acme".into())],
            ..Default::default()
        };
        cfg.receive_timeout = Duration::from_secs(5);
        let (mut c, report) = pollcap::client::Client::new(cfg)
            .connect(&format!("ws://{a}/ws"))
            .unwrap();
        assert!(report.deflate.is_some(), "deflate agreed");
        let out = |a| metrics(a)["pollcap_deflate_messages_total{direction=\"out\"}"];
        let compressed = out(a);
        c.send(Message::text("mix")).unwrap();
        let got: Vec<Message> = (0..5).map(|_| c.recv().unwrap()).collect();
        assert_eq!(got[1], Message::text("raw text"));
        assert_eq!(got[2], Message::binary(vec![0u8, 1, 2, 255]));
        assert_eq!(got[4], Message::binary(vec![7u8; 8192]));
        assert!(out(a) > compressed, "the 8 KiB binary went out compressed");
    });
}

#[test]
fn a_raw_send_past_the_run_budget_ends_the_run_and_a_resume_replays_events_only() {
    each_backend(|kind| {
        let f = gate();
        let app = f.app.clone();
        let budget = 20_000;
        let srv = start(kind, &[("POLLCAP_RUN_MAX_BYTES", "20000")], |c| {
            c.app = App::Handler(app)
        });
        let a = srv.local_addr();
        let mut ws = connect(a, "/ws", &[("X-Tenant", "acme")]);
        ws.send(Message::text("flood")).unwrap();
        let mut bytes = 0;
        let end = loop {
            match next(&mut ws) {
                Message::Binary(b) => bytes += b.len(),
                Message::Text(t) => break serde_json::from_str::<Value>(t.as_str()).unwrap(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            (&end["type"], &end["code"], &end["seq"]),
            (&json!("error"), &json!("run_too_large"), &json!(1)),
            "{end}"
        );
        assert!(bytes > budget / 2 && bytes <= budget, "{bytes} raw bytes");
        assert_eq!(metric(a, "pollcap_runs_too_large_total"), 1.0);
        // Resumed from the start: the stored events only (the error).
        let resume = json!({"type": "resume", "run_id": end["run_id"], "after_seq": 0});
        ws.send(Message::text(resume.to_string())).unwrap();
        let again = event(&mut ws);
        assert_eq!((&again["seq"], &again["code"]), (&json!(1), &end["code"]));
        ws.send(Message::text("who")).unwrap();
        assert_eq!(
            event(&mut ws)["type"],
            "session",
            "nothing else was replayed"
        );
    });
}
