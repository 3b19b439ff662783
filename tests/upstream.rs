//! Runs streamed from the team's agent over HTTP (SPEC §5 "Bring your own
//! agent"), against a scriptable agent on loopback: every event relayed in
//! order with pollcap's seq, the request it gets, each way an upstream goes
//! wrong answered with its code within its deadline (plus one cap) on a
//! connection that stays usable, the circuit breaker, cancellation
//! reaching the agent, and resume.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::agent::{Behavior, END, FakeAgent, chunk, head, line, sse};
use common::*;
use pollcap::reactor::BackendKind;
use pollcap::server::Server;
use pollcap::source::upstream::UpstreamConfig;
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

/// The agent deadlines of these tests (seconds): connect, response, idle;
/// and the whole run.
const DEADLINE: Duration = Duration::from_millis(500);
const EXECUTION: Duration = Duration::from_secs(3);

fn agent_server(kind: BackendKind, agent_url: &str, env: &[(&str, &str)]) -> Server {
    let mut vars: Vec<(&str, &str)> = vec![
        ("POLLCAP_AGENT_URL", agent_url),
        ("AGENT_CONNECT_TIMEOUT", "0.5"),
        ("AGENT_RESPONSE_TIMEOUT", "0.5"),
        ("AGENT_IDLE_TIMEOUT", "0.5"),
        ("AGENT_EXECUTION_TIMEOUT", "3"),
        ("WEBSOCKET_STALE_TIMEOUT", "30"),
        ("WEBSOCKET_CONNECTION_TIMEOUT", "60"),
    ];
    vars.extend_from_slice(env);
    start(kind, &vars, |c| {
        c.app = pollcap::apps::from_settings(&c.settings);
        c.upstream = UpstreamConfig::from_settings(&c.settings).unwrap();
    })
}

/// An agent_chat client, optionally with a `traceparent` on its upgrade.
fn chat(addr: SocketAddr, traceparent: Option<&str>) -> Client {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "agent_chat".parse().unwrap());
    if let Some(t) = traceparent {
        req.headers_mut().insert("traceparent", t.parse().unwrap());
    }
    tungstenite::client(req, s)
        .map_err(|_| "handshake")
        .unwrap()
        .0
}

fn next(ws: &mut Client) -> Value {
    loop {
        match ws.read().expect("an event") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Sends one user_message; the run's events up to its last.
fn ask(ws: &mut Client, text: &str) -> Vec<Value> {
    let m = json!({"type": "user_message", "text": text, "thread_id": "t1"});
    ws.send(Message::text(m.to_string())).unwrap();
    let mut out = Vec::new();
    loop {
        let e = next(ws);
        let last = matches!(e["type"].as_str(), Some("agent_completed" | "error"));
        out.push(e);
        if last {
            return out;
        }
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// A well-behaved stream's events (the agent's own `agent_started`
/// included: pollcap sends its own and drops this one).
fn good_events() -> Vec<Value> {
    vec![
        json!({"type": "agent_started", "seq": 40}),
        json!({"type": "agent_thinking", "delta": "Hel", "run_id": "theirs"}),
        json!({"type": "my_custom", "x": 1}),
        json!({"type": "agent_thinking", "delta": "lo"}),
        json!({"type": "tool_executing", "tool": "search"}),
        json!({"type": "agent_completed"}),
    ]
}

fn good_sse() -> Behavior {
    let mut pieces = vec![head(200, "text/event-stream; charset=utf-8", true)];
    pieces.extend(good_events().iter().map(|e| chunk(&sse(e))));
    pieces.push(END.to_vec());
    Behavior::Send(pieces)
}

fn good_jsonl() -> Behavior {
    let body: Vec<u8> = good_events().iter().flat_map(line).collect();
    Behavior::Send(vec![head(200, "application/x-ndjson", false), body])
}

fn check_good_run(events: &[Value]) {
    assert_eq!(
        types(events),
        [
            "agent_started",
            "agent_thinking",
            "my_custom",
            "agent_thinking",
            "tool_executing",
            "agent_completed"
        ],
        "events: {events:?}"
    );
    let run_id = events[0]["run_id"].as_str().unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "pollcap's seq, 1..N");
        assert_eq!(e["run_id"], run_id);
        assert!(e["ts"].as_u64().unwrap() > 1_600_000_000_000);
    }
    assert_eq!(events[0]["thread_id"], "t1");
    assert_eq!(events[2]["x"], 1, "a custom event passes through");
    assert_eq!(events[5]["final"], "Hello", "final filled from the deltas");
}

#[test]
fn sse_and_json_lines_agents_relay_every_event_in_order() {
    each_backend(|kind| {
        let agent = FakeAgent::start(|s| match s.body["text"].as_str() {
            Some("jsonl") => good_jsonl(),
            _ => good_sse(),
        });
        let srv = agent_server(kind, &agent.url(), &[("POLLCAP_AGENT_TOKEN", "s3cret")]);
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut ws = chat(srv.local_addr(), Some(trace));
        let sse_run = ask(&mut ws, "sse");
        check_good_run(&sse_run);
        check_good_run(&ask(&mut ws, "jsonl"));
        // What the agent was asked.
        let seen = agent.seen.lock().unwrap()[0].clone();
        assert_eq!(seen.request_line, "POST /agent HTTP/1.1");
        let h = |k: &str| seen.headers.get(k).map(String::as_str);
        assert_eq!(h("content-type"), Some("application/json"));
        assert_eq!(h("accept"), Some("text/event-stream, application/jsonl"));
        assert_eq!(h("idempotency-key"), sse_run[0]["run_id"].as_str());
        assert_eq!(h("authorization"), Some("Bearer s3cret"));
        let tp: Vec<&str> = h("traceparent").unwrap().split('-').collect();
        assert_eq!(
            tp[1], "4bf92f3577b34da6a3ce929d0e0e4736",
            "the upgrade's trace"
        );
        assert_ne!(tp[2], "00f067aa0ba902b7", "a request of its own in it");
        let b = &seen.body;
        assert_eq!(b["run_id"], sse_run[0]["run_id"]);
        assert_eq!(
            (b["thread_id"].as_str(), b["text"].as_str()),
            (Some("t1"), Some("sse"))
        );
        assert!(b["subject"].is_null(), "authentication is off");
        let left = b["deadline_ms"].as_u64().unwrap();
        assert!(
            left <= 3000 && left > 2000,
            "the time left of the run: {left}"
        );
        // A run without a trace of its own gets a new one per run.
        let mut plain = chat(srv.local_addr(), None);
        ask(&mut plain, "sse");
        ask(&mut plain, "sse");
        let seen = agent.seen.lock().unwrap();
        let trace_of = |i: usize| {
            seen[i].headers["traceparent"]
                .split('-')
                .nth(1)
                .unwrap()
                .to_string()
        };
        assert_ne!(trace_of(2), trace_of(3));
        assert_eq!(
            metric(srv.local_addr(), "pollcap_agent_requests_total"),
            4.0
        );
    });
}

/// Each way an upstream goes wrong: its code, its phase, when it came.
#[test]
fn every_hostile_upstream_gets_its_error_within_its_deadline() {
    let agent = FakeAgent::start(|s| {
        match s.body["text"].as_str().unwrap_or("") {
        "silent" => Behavior::Hold(vec![]),
        "stall" => Behavior::Hold(vec![
            head(200, "text/event-stream", true),
            chunk(&sse(&json!({"type": "agent_thinking", "delta": "a"}))),
        ]),
        "pings" => Behavior::Repeat {
            first: head(200, "text/event-stream", true),
            piece: chunk(b": keep-alive\n\n"),
            every: Duration::from_millis(100),
        },
        "html" => Behavior::Send(vec![
            head(200, "text/html", false),
            b"<html><body>Bad gateway</body></html>".to_vec(),
        ]),
        "huge" => Behavior::Send(vec![
            head(200, "application/jsonl", false),
            vec![b'x'; 10 << 20],
        ]),
        "mid-chunk" => Behavior::Send(vec![
            head(200, "text/event-stream", true),
            b"40\r\ndata: {\"type\":\"agent_thi".to_vec(),
        ]),
        "no-end" => Behavior::Send(vec![
            head(200, "text/event-stream", true),
            chunk(&sse(&json!({"type": "agent_thinking", "delta": "a"}))),
            END.to_vec(),
        ]),
        "rejected" => Behavior::Send(vec![
            b"HTTP/1.1 422 Unprocessable\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n{\"detail\":\"text is too short\"}"
                .to_vec(),
        ]),
        "closed" => Behavior::Close,
        _ => good_sse(),
    }
    });
    each_backend(|kind| {
        let srv = agent_server(
            kind,
            &agent.url(),
            &[("POLLCAP_AGENT_BREAKER_THRESHOLD", "100")],
        );
        let mut ws = chat(srv.local_addr(), None);
        let cases: [(&str, &str, Option<&str>, Option<Duration>); 9] = [
            (
                "silent",
                "upstream_timeout",
                Some("response"),
                Some(DEADLINE),
            ),
            ("stall", "upstream_timeout", Some("idle"), Some(DEADLINE)),
            (
                "pings",
                "upstream_timeout",
                Some("execution"),
                Some(EXECUTION),
            ),
            ("html", "upstream_invalid", None, None),
            ("huge", "upstream_invalid", None, None),
            ("mid-chunk", "upstream_truncated", None, None),
            ("no-end", "upstream_truncated", None, None),
            ("rejected", "upstream_rejected", None, None),
            ("closed", "upstream_unavailable", None, None),
        ];
        for (text, code, phase, deadline) in cases {
            let t0 = Instant::now();
            let events = ask(&mut ws, text);
            let took = t0.elapsed();
            let end = events.last().unwrap();
            assert_eq!(end["code"], code, "{text}: {end}");
            assert_eq!(end["phase"].as_str(), phase, "{text}: {end}");
            assert_eq!(
                end["seq"],
                events.len() as u64,
                "{text}: the error continues the run"
            );
            match deadline {
                Some(d) => assert_near(took, d, text),
                None => assert!(took < DEADLINE, "{text}: at once, took {took:?}"),
            }
            // The connection is still usable: the next run completes.
            check_good_run(&ask(&mut ws, "good"));
        }
        assert!(
            ask(&mut ws, "rejected").last().unwrap()["message"]
                .as_str()
                .unwrap()
                .contains("text is too short")
        );
        let m = metrics(srv.local_addr());
        assert_eq!(m["pollcap_timeouts_total{phase=\"agent_response\"}"], 1.0);
        assert_eq!(m["pollcap_timeouts_total{phase=\"agent_idle\"}"], 1.0);
        assert_eq!(m["pollcap_timeouts_total{phase=\"execution\"}"], 1.0);
        assert_eq!(
            m["pollcap_agent_failures_total{code=\"upstream_truncated\"}"],
            2.0
        );
        assert_eq!(m["pollcap_agent_runs_in_flight"], 0.0, "every call closed");
    });
}

#[test]
fn a_refused_connection_is_upstream_unavailable_at_once() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let srv = agent_server(BackendKind::Mio, &format!("http://{closed}/agent"), &[]);
    let mut ws = chat(srv.local_addr(), None);
    let t0 = Instant::now();
    let events = ask(&mut ws, "hello");
    assert_eq!(events.last().unwrap()["code"], "upstream_unavailable");
    assert!(t0.elapsed() < DEADLINE);
    ws.send(Message::Ping(vec![1].into())).unwrap();
    loop {
        if let Message::Pong(_) = ws.read().unwrap() {
            break; // still open
        }
    }
}

#[test]
fn a_failing_agent_opens_the_breaker_and_gets_no_request_until_recovery() {
    let agent = FakeAgent::start(|_| {
        Behavior::Send(vec![
            b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ])
    });
    let srv = agent_server(
        BackendKind::Mio,
        &agent.url(),
        &[
            ("POLLCAP_AGENT_BREAKER_THRESHOLD", "3"),
            ("POLLCAP_AGENT_BREAKER_RECOVERY", "1"),
        ],
    );
    let a = srv.local_addr();
    let mut ws = chat(a, None);
    for _ in 0..3 {
        let end = ask(&mut ws, "x").pop().unwrap();
        assert_eq!(
            (end["code"].as_str(), end["retry_after_ms"].as_u64()),
            (Some("upstream_unavailable"), Some(2000))
        );
    }
    assert_eq!(agent.requests(), 3);
    // Open: answered at once, without a request.
    for _ in 0..3 {
        let t0 = Instant::now();
        let end = ask(&mut ws, "x").pop().unwrap();
        assert_eq!(end["code"], "upstream_unavailable");
        assert!(end["retry_after_ms"].as_u64().unwrap() > 0);
        assert!(t0.elapsed() < DEADLINE);
    }
    assert_eq!(agent.requests(), 3, "no request while the breaker is open");
    let health: Value = serde_json::from_str(body_of(&get(a, "/health"))).unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["agent"]["breaker"]["state"], "open");
    assert_eq!(
        status_of(&get(a, "/health")),
        200,
        "degraded, still serving"
    );
    // Upgrades are not refused for an upstream fault.
    let _other = chat(a, None);
    // After the recovery period one trial goes through (and fails again).
    eventually(Duration::from_secs(5), || {
        ask(&mut ws, "x");
        (agent.requests() == 4).then_some(())
    });
    assert_eq!(metric(a, "pollcap_agent_breaker_opened_total"), 2.0);
}

#[test]
fn a_client_close_reaches_the_agent_and_a_lost_connection_does_not() {
    let agent = FakeAgent::start(|_| {
        Behavior::Hold(vec![
            head(200, "text/event-stream", true),
            chunk(&sse(&json!({"type": "agent_thinking", "delta": "working"}))),
        ])
    });
    let srv = agent_server(
        BackendKind::Mio,
        &agent.url(),
        &[
            ("AGENT_IDLE_TIMEOUT", "3"),
            ("AGENT_EXECUTION_TIMEOUT", "10"),
        ],
    );
    let mut ws = chat(srv.local_addr(), None);
    let m = json!({"type": "user_message", "text": "go", "thread_id": "t"});
    ws.send(Message::text(m.to_string())).unwrap();
    assert_eq!(next(&mut ws)["type"], "agent_started");
    assert_eq!(next(&mut ws)["type"], "agent_thinking");
    let closed = Instant::now();
    ws.close(None).unwrap();
    let _ = ws.flush();
    let gone = agent
        .gone
        .recv_timeout(Duration::from_secs(1))
        .expect("the agent saw its client go");
    assert!(gone.duration_since(closed) < Duration::from_secs(1));
    // A connection lost without a Close: the upstream read goes on.
    let mut ws = chat(srv.local_addr(), None);
    ws.send(Message::text(m.to_string())).unwrap();
    assert_eq!(next(&mut ws)["type"], "agent_started");
    assert_eq!(next(&mut ws)["type"], "agent_thinking");
    ws.get_mut().shutdown(std::net::Shutdown::Both).unwrap();
    assert!(
        agent
            .gone
            .recv_timeout(Duration::from_millis(1500))
            .is_err(),
        "the run goes on for a resume"
    );
    assert_eq!(
        metric(srv.local_addr(), "pollcap_runs_cancelled_total"),
        1.0
    );
}

#[test]
fn an_upstream_run_is_resumed_after_a_drop_exactly_once_each() {
    let events: Vec<Value> = (0..8)
        .map(|i| json!({"type": "agent_thinking", "delta": format!("{i} ")}))
        .chain([json!({"type": "agent_completed"})])
        .collect();
    let agent = FakeAgent::start(move |_| {
        let mut pieces = vec![head(200, "application/jsonl", true)];
        pieces.extend(events.iter().map(|e| chunk(&line(e))));
        pieces.push(END.to_vec());
        Behavior::Paced(pieces, Duration::from_millis(100))
    });
    let srv = agent_server(BackendKind::Mio, &agent.url(), &[]);
    let mut ws = chat(srv.local_addr(), None);
    let m = json!({"type": "user_message", "text": "go", "thread_id": "t"});
    ws.send(Message::text(m.to_string())).unwrap();
    let first = next(&mut ws);
    let second = next(&mut ws);
    let run_id = first["run_id"].as_str().unwrap().to_string();
    ws.get_mut().shutdown(std::net::Shutdown::Both).unwrap();
    let mut again = chat(srv.local_addr(), None);
    let resume = json!({"type": "resume", "run_id": run_id, "after_seq": second["seq"]});
    again.send(Message::text(resume.to_string())).unwrap();
    let mut seqs = vec![1, 2];
    loop {
        let e = next(&mut again);
        seqs.push(e["seq"].as_u64().unwrap());
        if e["type"] == "agent_completed" {
            assert_eq!(e["final"], "0 1 2 3 4 5 6 7 ");
            break;
        }
    }
    assert_eq!(
        seqs,
        (1..=10).collect::<Vec<u64>>(),
        "each event once, in order"
    );
}

#[test]
fn two_hundred_concurrent_agent_runs_all_complete() {
    let agent = FakeAgent::start(|s| match s.body["text"].as_str() {
        Some("jsonl") => good_jsonl(),
        _ => good_sse(),
    });
    // This test is about concurrency, not deadlines: on a loaded CI host
    // 200 connects at once to the fake agent's single accept thread can
    // overflow its backlog, and a dropped SYN is retried after 1 s, past
    // the 0.5 s deadlines the other tests use.
    let srv = agent_server(
        BackendKind::Mio,
        &agent.url(),
        &[
            ("POLLCAP_MAX_CONNECTIONS", "1000"),
            ("AGENT_CONNECT_TIMEOUT", "5"),
            ("AGENT_RESPONSE_TIMEOUT", "5"),
            ("AGENT_IDLE_TIMEOUT", "5"),
            ("AGENT_EXECUTION_TIMEOUT", "20"),
        ],
    );
    let a = srv.local_addr();
    let clients: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let mut ws = chat(a, None);
                let text = if i % 2 == 0 { "sse" } else { "jsonl" };
                check_good_run(&ask(&mut ws, text));
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a run completed");
    }
    assert_eq!(agent.requests(), 200);
    assert_eq!(metric(a, "pollcap_agent_runs_in_flight"), 0.0);
}
