//! An `agent_chat` client for the agent tests: connect, send one
//! `user_message`, read a run's events up to its last.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

use super::Client;

/// An `agent_chat` client (reads time out after 10 s: a test never hangs).
pub fn chat(addr: SocketAddr) -> Client {
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

/// The next event (pings and pongs skipped). A read interrupted by a
/// signal is tried again: on Linux a socket read with a timeout fails with
/// `EINTR` after the process was stopped and continued (signal(7)), which
/// a shared test machine may do; tungstenite keeps what it had read.
pub fn next(ws: &mut Client) -> Value {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).unwrap(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                continue;
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// Sends one `user_message` with `text`, without waiting.
pub fn send(ws: &mut Client, text: &str) {
    let m = json!({"type": "user_message", "text": text, "thread_id": "t1"});
    ws.send(Message::text(m.to_string())).unwrap();
}

/// Sends one `user_message`; the run's events up to its last.
pub fn ask(ws: &mut Client, text: &str) -> Vec<Value> {
    send(ws, text);
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

pub fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Asserts pollcap's envelope on a run: one `run_id`, `seq` 1..N, a `ts`.
pub fn check_envelope(events: &[Value]) {
    let run_id = events[0]["run_id"].as_str().unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "pollcap's seq, 1..N: {events:?}");
        assert_eq!(e["run_id"], run_id);
        assert!(e["ts"].as_u64().unwrap() > 1_600_000_000_000);
    }
}
