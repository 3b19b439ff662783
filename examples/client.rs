//! The blocking client against an `agent_chat` server: connect under
//! deadlines, send a `user_message`, read a few events, leave mid-run as a
//! lost network would, reconnect and resume after the last `seq`.
//!
//! ```sh
//! cargo run --release -- serve &    # agent_chat on 127.0.0.1:8765, no auth
//! cargo run --example client        # or: -- ws://HOST:PORT/ws
//! ```

use std::error::Error;
use std::time::Duration;

use pollcap::{Client, ClientConfig, Connection, Message};
use serde_json::{Value, json};

/// The next event and its `seq`, within the receive deadline.
fn next(conn: &mut Connection) -> Result<(u64, Value), Box<dyn Error>> {
    let event: Value = serde_json::from_str(conn.recv()?.to_text()?)?;
    println!("  seq {} {}", event["seq"], event["type"]);
    let seq = event["seq"].as_u64().ok_or("not a run's event")?;
    Ok((seq, event))
}

fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::args().nth(1);
    let url = url.as_deref().unwrap_or("ws://127.0.0.1:8765/ws");
    let cfg = ClientConfig {
        subprotocols: vec!["agent_chat".into()],
        connect_timeouts: vec![Duration::from_secs(2)], // per attempt
        max_attempts: 3,                                // jittered backoff between
        receive_timeout: Duration::from_secs(5),        // per message
        ..ClientConfig::default()
    };
    let mut client = Client::new(cfg); // one client: its breaker remembers
    let (mut conn, report) = client.connect(url)?;
    println!("connected to {} in {:?}", report.addr, report.handshake);
    let ask = json!({"type": "user_message", "text": "hello pollcap", "pacing_ms": 20});
    conn.send(Message::text(ask.to_string()))?;
    let (mut last, mut event) = (0, Value::Null);
    while last < 3 {
        (last, event) = next(&mut conn)?;
    }
    let run_id = event["run_id"].as_str().unwrap_or_default().to_string();
    conn.abort(); // no Close frame: the server keeps the run going for resume
    println!("left after seq {last}; reconnecting to resume {run_id}");
    let (mut conn, _) = client.connect(url)?;
    conn.resume(&run_id, last)?;
    let after = last;
    loop {
        let (seq, event) = next(&mut conn)?;
        if seq != last + 1 {
            return Err(format!("seq {seq} after {last}: a gap or a repeat").into());
        }
        last = seq;
        if event["type"] == "agent_completed" {
            break;
        }
    }
    conn.close()?;
    println!(
        "resumed after seq {after}: {} more, none missing",
        last - after
    );
    Ok(())
}
