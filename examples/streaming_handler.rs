//! A custom handler whose runs stream events a client can resume.
//!
//! `cargo run --example streaming_handler`, send any text to
//! `ws://127.0.0.1:8765/ws` (`POLLCAP_LISTEN` moves it) and read ten
//! `tick` events then `done`. Drop the connection mid-run, reconnect, and
//! send `{"type":"resume","run_id":"<its run_id>","after_seq":<last seq>}`:
//! the rest arrives, each event once, in order.

use std::sync::Arc;
use std::time::Duration;

use pollcap::app::{App, Handler, Inbound, Outbox, Session};
use pollcap::server::{Server, ServerConfig};
use pollcap::settings::Settings;
use serde_json::json;

/// Ten `tick` events about the message's text, 50 ms apart, then `done`.
struct Ticker;

impl Handler for Ticker {
    fn name(&self) -> &'static str {
        "ticker"
    }

    fn subprotocols(&self) -> &'static [&'static str] {
        &[]
    }

    /// Runs outlive a lost connection; the run layer answers resumes.
    fn resumable(&self) -> bool {
        true
    }

    fn message(&self, _session: &Session, input: Inbound, out: &Outbox) {
        let Inbound::Text(topic) = input else {
            let error = json!({"code": "bad_request", "message": "send text"});
            return out.emit("error", error);
        };
        for n in 1..=10 {
            // False once the run is cancelled (deadline, Close, budget).
            if !out.pause(Duration::from_millis(50)) {
                return;
            }
            out.emit("tick", json!({ "topic": topic, "n": n }));
        }
        out.emit("done", json!({ "topic": topic }));
    }
}

fn main() -> std::io::Result<()> {
    // Built-in defaults, then the environment (POLLCAP_LISTEN, timeouts...).
    let settings = Settings::from_process(&[]).map_err(std::io::Error::other)?;
    let mut cfg = ServerConfig::new(settings);
    cfg.app = App::Handler(Arc::new(Ticker));
    let server = Server::start(cfg)?;
    println!("listening on ws://{}/ws", server.local_addr());
    server.join()
}
