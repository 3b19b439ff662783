//! A moment of descriptor shortage on pollcap's side is not the agent's
//! failure: runs that cannot open a socket to the agent end
//! `upstream_unavailable` at once, are counted apart, and leave the
//! agent's circuit breaker closed, so the first run after the shortage
//! goes through. Its own test binary: it lowers the whole process's
//! descriptor limit, which would starve any test running beside it.
#![cfg(unix)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::agent::{Behavior, END, FakeAgent, chunk, head, sse};
use common::*;
use pollcap::reactor::BackendKind;
use pollcap::source::upstream::UpstreamConfig;
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

fn chat(addr: SocketAddr) -> Client {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "agent_chat".parse().unwrap());
    tungstenite::client(req, s)
        .map_err(|_| "handshake")
        .unwrap()
        .0
}

/// One user_message; the run's last event.
fn ask(ws: &mut Client) -> Value {
    let m = json!({"type": "user_message", "text": "hi", "thread_id": "t1"});
    ws.send(Message::text(m.to_string())).unwrap();
    loop {
        let Message::Text(t) = ws.read().expect("an event") else {
            continue;
        };
        let e: Value = serde_json::from_str(t.as_str()).unwrap();
        if matches!(e["type"].as_str(), Some("agent_completed" | "error")) {
            return e;
        }
    }
}

/// The soft descriptor limit: set to `to`, returning what it was.
fn soft_limit(to: Option<libc::rlim_t>) -> libc::rlim_t {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer; then the same struct, changed, in.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        let was = l.rlim_cur;
        if let Some(to) = to {
            l.rlim_cur = to;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
        }
        was
    }
}

/// The lowest descriptor number free now: with the limit set there, the
/// next socket fails with EMFILE.
fn lowest_free_fd() -> libc::rlim_t {
    // SAFETY: dup of stdin's descriptor, closed at once.
    unsafe {
        let fd = libc::dup(0);
        assert!(fd >= 0);
        libc::close(fd);
        fd as libc::rlim_t
    }
}

#[test]
fn a_descriptor_shortage_here_is_not_held_against_the_agent() {
    let agent = FakeAgent::start(|_| {
        Behavior::Send(vec![
            head(200, "text/event-stream", true),
            chunk(&sse(&json!({"type": "agent_completed", "final": "ok"}))),
            END.to_vec(),
        ])
    });
    let url = agent.url();
    let srv = start(
        BackendKind::Mio,
        &[
            ("POLLCAP_AGENT_URL", url.as_str()),
            ("POLLCAP_AGENT_BREAKER_THRESHOLD", "2"),
            ("POLLCAP_AGENT_BREAKER_RECOVERY", "30"),
            ("WEBSOCKET_STALE_TIMEOUT", "30"),
            ("WEBSOCKET_CONNECTION_TIMEOUT", "60"),
        ],
        |c| {
            c.app = pollcap::apps::from_settings(&c.settings);
            c.upstream = UpstreamConfig::from_settings(&c.settings).unwrap();
        },
    );
    let a = srv.local_addr();
    let mut ws = chat(a);
    assert_eq!(ask(&mut ws)["final"], "ok");
    // Both ends of that run's agent connection are closed before the
    // limit is taken from the lowest free descriptor: one closed later
    // would leave a hole below it for the next connect.
    wait_metric(
        a,
        "pollcap_agent_runs_in_flight",
        Duration::from_secs(5),
        |v| v == 0.0,
    );
    eventually(Duration::from_secs(5), || {
        (agent.closed.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    });
    // No descriptor left: every run fails at once, on this side.
    let was = soft_limit(Some(lowest_free_fd()));
    let ends: Vec<(Value, Duration)> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            (ask(&mut ws), t0.elapsed())
        })
        .collect();
    soft_limit(Some(was));
    for (end, took) in &ends {
        assert_eq!(end["code"], "upstream_unavailable", "{end}");
        let m = end["message"].as_str().unwrap();
        assert!(m.contains("this server is short"), "{m}");
        assert!(*took < Duration::from_millis(500), "at once: {took:?}");
    }
    assert_eq!(agent.requests(), 1, "the agent was never reached");
    // Five failures past a threshold of two, and the breaker is closed:
    // the next run goes through.
    assert_eq!(ask(&mut ws)["final"], "ok");
    assert_eq!(agent.requests(), 2);
    let m = metrics(a);
    assert_eq!(m["pollcap_agent_local_failures_total"], 5.0);
    assert_eq!(m["pollcap_agent_breaker_opened_total"], 0.0);
}
