//! Handler failures over real sockets: a panicking handler closes only its
//! own connection with 1011 and the server carries on; a full worker pool
//! answers `overloaded` instead of queueing without bound.

mod common;

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pollcap::app::{App, Handler, Inbound, Outbox, Session};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

/// "boom" panics; "hold" blocks until released, then sends `held`;
/// anything else is echoed as one `echo` event.
struct TestApp {
    started: Mutex<Sender<()>>,
    release: Mutex<Receiver<()>>,
}

impl Handler for TestApp {
    fn name(&self) -> &'static str {
        "test"
    }
    fn subprotocols(&self) -> &'static [&'static str] {
        &["test"]
    }
    fn message(&self, _: &Session, input: Inbound, out: &Outbox) {
        let Inbound::Text(t) = input else { return };
        match t.as_str() {
            "boom" => panic!("handler bug"),
            "hold" => {
                self.started.lock().unwrap().send(()).unwrap();
                let _ = self
                    .release
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
                out.emit("held", serde_json::json!({}));
            }
            _ => out.emit("echo", serde_json::json!({ "text": t })),
        }
    }
}

fn test_app() -> (Arc<TestApp>, Receiver<()>, Sender<()>) {
    let (started_tx, started_rx) = channel();
    let (release_tx, release_rx) = channel();
    let app = Arc::new(TestApp {
        started: Mutex::new(started_tx),
        release: Mutex::new(release_rx),
    });
    (app, started_rx, release_tx)
}

fn next_event(ws: &mut Client) -> serde_json::Value {
    loop {
        match ws.read().expect("event") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_panicking_handler_closes_its_connection_1011_and_the_server_survives() {
    each_backend(|kind| {
        let (app, _started, _release) = test_app();
        let srv = start(kind, &[], |c| c.app = App::Handler(app.clone()));
        let a = srv.local_addr();
        let (mut victim, _) = ws_connect(a, None).unwrap();
        let (mut bystander, _) = ws_connect(a, None).unwrap();
        victim.send(Message::text("boom")).unwrap();
        // The run's end is told first (a resumed follower learns it too),
        // then the connection closes.
        let e = next_event(&mut victim);
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["seq"].as_u64()),
            (Some("error"), Some("handler_failure"), Some(1))
        );
        // A heartbeat Ping (every 0.3 s here) may come first on a busy machine.
        let first = loop {
            match victim.read() {
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                other => break other,
            }
        };
        match first {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(f.code, CloseCode::Error);
                assert_eq!(f.reason.as_str(), "handler failure");
            }
            other => panic!("{other:?}"),
        }
        bystander.send(Message::text("still fine")).unwrap();
        assert_eq!(next_event(&mut bystander)["text"], "still fine");
        let (mut fresh, _) = ws_connect(a, None).unwrap();
        fresh.send(Message::text("new")).unwrap();
        assert_eq!(next_event(&mut fresh)["type"], "echo");
        let m = metrics(a);
        assert_eq!(m["pollcap_handler_panics_total"], 1.0);
        assert_eq!(m["pollcap_close_frames_sent_total{code=\"1011\"}"], 1.0);
    });
}

#[test]
fn a_full_pool_answers_overloaded_and_recovers() {
    each_backend(|kind| {
        let (app, started, release) = test_app();
        let srv = start(kind, &[], |c| {
            c.app = App::Handler(app.clone());
            c.settings.pool_threads = 1;
            c.settings.pool_queue = 1;
        });
        let a = srv.local_addr();
        let (mut ws, _) = ws_connect(a, None).unwrap();
        ws.send(Message::text("hold")).unwrap();
        started
            .recv_timeout(Duration::from_secs(5))
            .expect("the only worker is busy");
        ws.send(Message::text("queued")).unwrap(); // fills the one queue slot
        ws.send(Message::text("refused")).unwrap();
        let e = next_event(&mut ws);
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("overloaded"))
        );
        assert_eq!(e["seq"], 1);
        release.send(()).unwrap();
        assert_eq!(next_event(&mut ws)["type"], "held");
        assert_eq!(next_event(&mut ws)["text"], "queued");
        ws.send(Message::text("after")).unwrap();
        assert_eq!(next_event(&mut ws)["text"], "after");
        assert_eq!(metrics(a)["pollcap_handler_overloaded_total"], 1.0);
    });
}

#[test]
fn a_close_frame_cancels_its_runs_and_a_lost_connection_does_not() {
    // A run holding a worker reports whether its cancel flag was set
    // before its one-second pause ended.
    struct Watch(Mutex<Sender<bool>>);
    impl Handler for Watch {
        fn name(&self) -> &'static str {
            "watch"
        }
        fn subprotocols(&self) -> &'static [&'static str] {
            &[]
        }
        fn message(&self, _: &Session, _: Inbound, out: &Outbox) {
            self.0.lock().unwrap().send(false).unwrap();
            let cancelled = !out.pause(Duration::from_secs(1));
            self.0.lock().unwrap().send(cancelled).unwrap();
        }
    }
    // (store, how the client leaves, whether the run is cancelled)
    let cases: [(&str, bool, bool); 3] = [
        ("memory", true, true),   // a Close frame: the client ended it
        ("memory", false, false), // TCP gone: the run goes on, kept for resume
        ("off", false, true),     // nothing keeps runs: lost means cancelled
    ];
    each_backend(|kind| {
        for (store, close_frame, cancelled) in cases {
            let (tx, rx) = channel();
            let app = Arc::new(Watch(Mutex::new(tx)));
            let srv = start(kind, &[("POLLCAP_STORE", store)], |c| {
                c.app = App::Handler(app.clone())
            });
            let (mut ws, _) = ws_connect(srv.local_addr(), None).unwrap();
            ws.send(Message::text("work")).unwrap();
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
            if close_frame {
                ws.close(None).unwrap();
                let _ = ws.flush();
            } else {
                ws.get_mut().shutdown(std::net::Shutdown::Both).unwrap();
            }
            let saw = rx.recv_timeout(Duration::from_secs(5)).expect("run ended");
            assert_eq!(saw, cancelled, "store={store} close_frame={close_frame}");
            let m = metrics(srv.local_addr());
            let count = |k: &str| m[k] as u64;
            assert_eq!(
                count("pollcap_runs_cancelled_total"),
                u64::from(close_frame)
            );
            let detached = u64::from(!close_frame && store == "memory");
            assert_eq!(count("pollcap_runs_detached_total"), detached);
        }
    });
}

#[test]
fn a_drain_lets_running_handlers_finish_before_1001() {
    each_backend(|kind| {
        let (app, started, release) = test_app();
        // close 2 s: runs may take up to 1 s of it, the close handshake the rest.
        let srv = start(kind, &[("WEBSOCKET_CLOSE_TIMEOUT", "2")], |c| {
            c.app = App::Handler(app.clone())
        });
        let (mut ws, _) = ws_connect(srv.local_addr(), None).unwrap();
        ws.send(Message::text("hold")).unwrap();
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        let handle = srv.shutdown_handle();
        handle.shutdown();
        // While the run finishes, new work is refused, not started.
        ws.send(Message::text("late")).unwrap();
        let e = next_event(&mut ws);
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("draining"))
        );
        release.send(()).unwrap();
        assert_eq!(
            next_event(&mut ws)["type"],
            "held",
            "the in-flight run completed"
        );
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(f.code, CloseCode::Away);
                assert_eq!(f.reason.as_str(), "server shutting down");
            }
            other => panic!("{other:?}"),
        }
        let _ = ws.flush();
        drop(ws);
        srv.join().unwrap();
    });
}

/// The pool is bounded in message bytes too: a message that would take the
/// bytes held by queued and running jobs past `pool_queue_bytes` is
/// answered `overloaded` while the job queue still has room, and the bytes
/// come back as jobs finish.
#[test]
fn the_pool_refuses_messages_past_its_byte_budget_and_recovers() {
    each_backend(|kind| {
        let (app, started, release) = test_app();
        let srv = start(kind, &[], |c| {
            c.app = App::Handler(app.clone());
            c.settings.pool_threads = 1;
            c.settings.pool_queue = 100;
            c.settings.limits.max_message = 64;
            c.settings.pool_queue_bytes = 100;
        });
        let a = srv.local_addr();
        let (mut ws, _) = ws_connect(a, None).unwrap();
        ws.send(Message::text("hold")).unwrap(); // 4 bytes, running
        started
            .recv_timeout(Duration::from_secs(5))
            .expect("the only worker is busy");
        let big = "x".repeat(64);
        ws.send(Message::text(big.clone())).unwrap(); // 68 of 100: queued
        ws.send(Message::text(big.clone())).unwrap(); // 132: refused
        let e = next_event(&mut ws);
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("overloaded"))
        );
        release.send(()).unwrap();
        assert_eq!(next_event(&mut ws)["type"], "held");
        assert_eq!(next_event(&mut ws)["text"], big.as_str());
        ws.send(Message::text(big.clone())).unwrap();
        assert_eq!(next_event(&mut ws)["text"], big.as_str());
        assert_eq!(metrics(a)["pollcap_handler_overloaded_total"], 1.0);
    });
}

/// Resident memory of this process (the server runs in it), in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A custom handler that emits without limit is cut at its run's budget:
/// its client reads every event of the budget in order, then
/// `run_too_large` continuing the sequence; a flood nobody reads is cut
/// the same way; memory stays bounded and other connections are served
/// meanwhile.
#[test]
fn a_handler_that_emits_without_limit_is_cut_at_its_budget() {
    // "flood": 1 KiB events until cancelled; anything else: one event.
    struct Flood;
    impl Handler for Flood {
        fn name(&self) -> &'static str {
            "flood"
        }
        fn subprotocols(&self) -> &'static [&'static str] {
            &[]
        }
        fn message(&self, _: &Session, input: Inbound, out: &Outbox) {
            let Inbound::Text(t) = input else { return };
            if t != "flood" {
                return out.emit("pong", serde_json::json!({ "text": t }));
            }
            let chunk = "x".repeat(1000);
            while !out.is_cancelled() {
                out.emit("chunk", serde_json::json!({ "data": chunk }));
            }
        }
    }
    each_backend(|kind| {
        let budget = 2 << 20;
        let srv = start(
            kind,
            &[
                ("POLLCAP_RUN_MAX_BYTES", "2097152"),
                ("AGENT_EXECUTION_TIMEOUT", "60"),
            ],
            |c| c.app = App::Handler(Arc::new(Flood)),
        );
        let a = srv.local_addr();
        let before = rss();
        // A flood nobody reads: the run is cut at its budget all the same.
        let (mut deaf, _) = ws_connect(a, None).unwrap();
        deaf.send(Message::text("flood")).unwrap();
        // A reader gets every event of its budget, in order, then the end.
        let (mut reader, _) = ws_connect(a, None).unwrap();
        reader.send(Message::text("flood")).unwrap();
        let mut seq = 0;
        let mut bytes = 0;
        let end = loop {
            let e = next_event(&mut reader);
            seq += 1;
            assert_eq!(e["seq"], seq, "no gap, no repeat");
            if e["type"] != "chunk" {
                break e;
            }
            bytes += e["data"].as_str().unwrap().len() as u64;
        };
        assert_eq!(end["code"], "run_too_large", "{end}");
        assert!(
            bytes > budget / 2 && bytes <= budget,
            "{bytes} bytes delivered"
        );
        // Others are served meanwhile, and after.
        let (mut polite, _) = ws_connect(a, None).unwrap();
        polite.send(Message::text("hello")).unwrap();
        assert_eq!(next_event(&mut polite)["text"], "hello");
        let m = common::eventually(Duration::from_secs(10), || {
            let m = metrics(a);
            (m["pollcap_runs_too_large_total"] >= 2.0).then_some(m)
        });
        assert_eq!(m["pollcap_handler_runs_total"], 3.0);
        // Two floods held at most their budgets (events in the store, the
        // deaf client's outbound buffer) — not the 60 s of flooding the
        // execution deadline would have allowed.
        let grown = rss().saturating_sub(before);
        assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);
        drop(deaf);
    });
}
