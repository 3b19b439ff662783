//! Resumable runs over real sockets with the memory store (SPEC §5
//! "Resume"): a run outlives a connection lost without a Close frame
//! (TCP gone, heartbeat timeout), a resume gets every event after
//! `after_seq` exactly once and in order, a finished run replays whole,
//! unknown and foreign runs get `resume_unavailable` and nothing else,
//! and a Close frame still cancels. The Redis store's acceptance runs in
//! tests/e2e/test_resume.py against a real redis-server.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pollcap::app::App;
use pollcap::apps::agent_chat::AgentChat;
use pollcap::auth::Auth;
use pollcap::reactor::BackendKind;
use pollcap::server::Server;
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

const SECRET: &[u8] = b"resume-test-secret-0123456789";
/// How long a test waits for what the server notices by itself.
const FIVE_S: Duration = Duration::from_secs(5);

/// An agent_chat server whose runs take about `pacing` × 10 events.
fn chat_server(kind: BackendKind, pacing_ms: u64, env: &[(&str, &str)], auth: bool) -> Server {
    start(kind, env, |c| {
        c.app = App::Handler(Arc::new(AgentChat {
            pacing: Duration::from_millis(pacing_ms),
            upstream: false,
        }));
        if auth {
            c.auth = Some(Auth::new(Some(SECRET.to_vec()), HashSet::new()));
        }
    })
}

fn token(sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    pollcap::auth::mint(SECRET, sub, now, 3600)
}

/// An agent_chat client over a plain tungstenite socket.
struct Chat(Client);

impl Chat {
    fn open(addr: SocketAddr, token: Option<&str>) -> Chat {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        let h = req.headers_mut();
        h.insert("Sec-WebSocket-Protocol", "agent_chat".parse().unwrap());
        if let Some(t) = token {
            h.insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (ws, _) = tungstenite::client(req, s).expect("upgrade");
        Chat(ws)
    }

    fn send(&mut self, v: Value) {
        self.0.send(Message::text(v.to_string())).unwrap();
    }

    fn ask(&mut self, text: &str) {
        self.send(json!({"type": "user_message", "text": text, "thread_id": "t"}));
    }

    fn resume(&mut self, run_id: &str, after_seq: u64) {
        self.send(json!({"type": "resume", "run_id": run_id, "after_seq": after_seq}));
    }

    /// The next event within `limit`; `None` if none came.
    fn next_within(&mut self, limit: Duration) -> Option<Value> {
        self.0.get_mut().set_read_timeout(Some(limit)).unwrap();
        loop {
            match self.0.read() {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(5))
            .expect("an event within 5 s")
    }

    /// Events until the run's last (`agent_completed` or an error).
    fn until_end(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let e = self.next();
            let end = e["type"] == "agent_completed" || e["type"] == "error";
            out.push(e);
            if end {
                return out;
            }
        }
    }

    /// Leaves without a Close frame: TCP is shut down both ways.
    fn drop_tcp(mut self) {
        self.0.get_mut().shutdown(std::net::Shutdown::Both).unwrap();
    }
}

/// Checks a whole run: one run id, seq 1, 2, 3… with no gap or repeat,
/// the five event types in order, `final` = the concatenated deltas.
fn check_whole(events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "{events:?}"
    );
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types[0], "agent_started");
    assert_eq!(
        types[types.len() - 3..],
        ["tool_executing", "tool_completed", "agent_completed"]
    );
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "agent_thinking")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(events.last().unwrap()["final"], deltas.as_str());
}

fn assert_unavailable(c: &mut Chat, run_id: &str) {
    let e = c.next();
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "resume_unavailable", "{e}");
    assert_eq!(e["run_id"], run_id);
    assert!(e.get("seq").is_none(), "no event of the run: {e}");
    assert_eq!(
        c.next_within(Duration::from_millis(300)),
        None,
        "nothing else follows"
    );
}

#[test]
fn a_run_dropped_after_3_events_resumes_exactly_once_then_replays_whole() {
    each_backend(|kind| {
        let srv = chat_server(kind, 40, &[], false);
        let a = srv.local_addr();
        let mut c = Chat::open(a, None);
        c.ask("resume me please, all the way to the end");
        let first: Vec<Value> = (0..3).map(|_| c.next()).collect();
        let run_id = first[0]["run_id"].as_str().unwrap().to_string();
        assert_eq!(run_id.len(), 22, "a random id: {run_id}");
        c.drop_tcp();
        // The server notices the loss and keeps the run going.
        wait_metric(a, "pollcap_runs_detached_total", FIVE_S, |n| n >= 1.0);
        let mut c = Chat::open(a, None);
        c.resume(&run_id, 3);
        let rest = c.until_end();
        let mut all = first.clone();
        all.extend(rest);
        check_whole(&all);
        // Within the window a finished run replays whole from 0, and a
        // resume after its last event has nothing to send.
        let mut d = Chat::open(a, None);
        d.resume(&run_id, 0);
        let replay = d.until_end();
        assert_eq!(replay, all, "byte for byte the events first sent");
        assert_eq!(d.next_within(Duration::from_millis(200)), None);
        let m = metrics(a);
        assert_eq!(m["pollcap_resumes_total"], 2.0);
        assert_eq!(m["pollcap_resumes_unavailable_total"], 0.0);
        assert!(m["pollcap_store_events"] >= all.len() as f64);
    });
}

#[test]
fn a_run_outlives_a_heartbeat_timeout() {
    // The client stops answering (its socket stays open): the server's
    // ping goes unanswered and it closes 1011; the run goes on.
    let srv = chat_server(BackendKind::Mio, 100, &[], false);
    let a = srv.local_addr();
    let mut c = Chat::open(a, None);
    c.ask("slow and steady");
    let first = c.next();
    let run_id = first["run_id"].as_str().unwrap().to_string();
    wait_metric(a, "pollcap_timeouts_total{phase=\"ping\"}", FIVE_S, |n| {
        n >= 1.0
    });
    // What the silent client had not read yet is in the store.
    let mut c2 = Chat::open(a, None);
    c2.resume(&run_id, 1);
    let mut all = vec![first];
    all.extend(c2.until_end());
    check_whole(&all);
    drop(c);
}

#[test]
fn unknown_and_foreign_runs_get_resume_unavailable_and_nothing_else() {
    let srv = chat_server(BackendKind::Mio, 0, &[], true);
    let a = srv.local_addr();
    let alice = token("alice");
    let mut c = Chat::open(a, Some(&alice));
    c.ask("alice's secret");
    let events = c.until_end();
    let run_id = events[0]["run_id"].as_str().unwrap().to_string();
    let mut bob = Chat::open(a, Some(&token("bob")));
    bob.resume(&run_id, 0);
    assert_unavailable(&mut bob, &run_id);
    bob.resume("AAAAAAAAAAAAAAAAAAAAAA", 0);
    assert_unavailable(&mut bob, "AAAAAAAAAAAAAAAAAAAAAA");
    // The owner, on another connection, gets it all.
    let mut again = Chat::open(a, Some(&alice));
    again.resume(&run_id, 0);
    assert_eq!(again.until_end(), events);
    // The connection is fine after a refusal.
    bob.ask("bob's own");
    check_whole(&bob.until_end());
    assert_eq!(metric(a, "pollcap_resumes_unavailable_total"), 2.0);
}

#[test]
fn a_close_frame_still_cancels_the_run() {
    let srv = chat_server(BackendKind::Mio, 50, &[], false);
    let a = srv.local_addr();
    let mut c = Chat::open(a, None);
    c.ask("stop me after two");
    let first: Vec<Value> = (0..2).map(|_| c.next()).collect();
    let run_id = first[0]["run_id"].as_str().unwrap().to_string();
    c.0.close(None).unwrap();
    while c.0.read().is_ok() {} // until the server's Close and EOF
    wait_metric(a, "pollcap_runs_cancelled_total", FIVE_S, |n| n >= 1.0);
    // Its stored events end with `cancelled`, right after what was sent.
    let mut d = Chat::open(a, None);
    d.resume(&run_id, 0);
    let got = d.until_end();
    let last = got.last().unwrap();
    assert_eq!(
        (&last["type"], &last["code"]),
        (&json!("error"), &json!("cancelled"))
    );
    assert!(got.iter().all(|e| e["type"] != "agent_completed"));
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=got.len() as u64).collect::<Vec<_>>());
    assert_eq!(&got[..2], &first[..]);
}

#[test]
fn with_the_store_off_every_resume_is_unavailable() {
    let srv = chat_server(BackendKind::Mio, 0, &[("POLLCAP_STORE", "off")], false);
    let a = srv.local_addr();
    let mut c = Chat::open(a, None);
    c.ask("not kept");
    let events = c.until_end();
    check_whole(&events);
    let run_id = events[0]["run_id"].as_str().unwrap();
    c.resume(run_id, 0);
    assert_unavailable(&mut c, run_id);
    let health = body_of(&get(a, "/health")).to_string();
    let h: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["store"]["kind"], "off");
    assert_eq!(h["status"], "healthy");
}
