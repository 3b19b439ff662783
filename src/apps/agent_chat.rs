//! The built-in `agent_chat` application (SPEC §5): for each `user_message` a
//! small deterministic agent streams `agent_started`, `agent_thinking`
//! deltas, `tool_executing`, `tool_completed` (a real tool: text statistics
//! of the message) and `agent_completed` whose `final` is the concatenated
//! deltas. Anything else gets a `bad_request` error event; the connection
//! stays open.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::app::{AgentRequest, Handler, Inbound, Outbox, Session, Start};
use crate::runs::ErrorFields;

/// Largest `pacing_ms` a message may ask for.
pub const MAX_PACING_MS: u64 = 1000;

/// A client → server message of the `agent_chat` protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Starts a run that answers `text`.
    UserMessage {
        /// What the user said.
        text: String,
        /// The conversation it belongs to (echoed in `agent_started` and
        /// `agent_completed`; empty when not given).
        #[serde(default)]
        thread_id: String,
        /// Simulates a slow agent: the pause between events (0..=1000 ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pacing_ms: Option<u64>,
    },
}

/// One server → client event as a client reads it: the fixed fields and
/// those of every event type (absent ones are `None`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct EventView {
    /// The event's `type` (`agent_started`, `agent_thinking`, …, `error`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The run it belongs to (every event of a run has it).
    pub run_id: Option<String>,
    /// Its place in the run, 1, 2, … (what a resume names).
    pub seq: Option<u64>,
    /// When the server sent it, ms since the Unix epoch.
    pub ts: Option<u64>,
    /// `agent_thinking`: the next piece of the answer.
    pub delta: Option<String>,
    /// `tool_executing` / `tool_completed`: the tool's name.
    pub tool: Option<String>,
    /// `agent_completed`: the whole answer.
    #[serde(rename = "final")]
    pub final_text: Option<String>,
    /// `error`: its code (SPEC §5).
    pub code: Option<String>,
    /// `error`: what happened, in words.
    pub message: Option<String>,
}

#[derive(Serialize)]
struct Started<'a> {
    thread_id: &'a str,
}

#[derive(Serialize)]
struct Thinking<'a> {
    delta: &'a str,
}

#[derive(Serialize)]
struct Tool<'a> {
    tool: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a TextStats>,
}

#[derive(Serialize)]
struct Completed<'a> {
    thread_id: &'a str,
    #[serde(rename = "final")]
    final_text: String,
}

/// The `agent_chat` application (SPEC §5): each `user_message` is one
/// run, streamed by the built-in demo agent or by the team's agent.
pub struct AgentChat {
    /// Pause between events (setting `pacing_ms`, 5 ms by default:
    /// streaming is visible, runs stay short).
    pub pacing: Duration,
    /// A `user_message` goes to the team's agent (`--agent-url`,
    /// `--agent-cmd`) instead of the built-in demo.
    pub upstream: bool,
}

impl Handler for AgentChat {
    fn name(&self) -> &'static str {
        "agent_chat"
    }

    fn subprotocols(&self) -> &'static [&'static str] {
        &["agent_chat"]
    }

    fn resumable(&self) -> bool {
        true
    }

    /// With an agent configured, every well-formed `user_message` is its
    /// run; anything else stays here (and gets `bad_request`).
    fn start(&self, _session: &Session, input: &Inbound) -> Start {
        let Inbound::Text(t) = input else {
            return Start::Pool;
        };
        if !self.upstream {
            return Start::Pool;
        }
        match serde_json::from_str(t) {
            Ok(ClientMessage::UserMessage {
                text, thread_id, ..
            }) => Start::Agent(AgentRequest { thread_id, text }),
            Err(_) => Start::Pool,
        }
    }

    fn message(&self, _session: &Session, input: Inbound, out: &Outbox) {
        let text = match input {
            Inbound::Text(t) => t,
            Inbound::Binary(_) => {
                return bad_request(out, "binary frames are not supported; send JSON text");
            }
        };
        let (message, thread_id, pacing) = match serde_json::from_str(&text) {
            Ok(ClientMessage::UserMessage {
                text,
                thread_id,
                pacing_ms,
            }) => (text, thread_id, pacing_ms),
            Err(e) => return bad_request(out, &format!("bad message: {e}")),
        };
        // Optional per-message pacing ("simulate a slow agent"), capped; the
        // execution deadline bounds it like any other run.
        let pacing = match pacing {
            None => self.pacing,
            Some(ms) if ms <= MAX_PACING_MS => Duration::from_millis(ms),
            Some(_) => {
                return bad_request(out, &format!("\"pacing_ms\" must be 0..={MAX_PACING_MS}"));
            }
        };
        let thread_id = thread_id.as_str();

        out.emit("agent_started", Started { thread_id });
        let stats = text_stats(&message);
        let deltas = reply_deltas(&message, &stats);
        for delta in &deltas {
            if !out.pause(pacing) {
                return;
            }
            out.emit("agent_thinking", Thinking { delta });
        }
        if !out.pause(pacing) {
            return;
        }
        let tool = "text_stats";
        out.emit("tool_executing", Tool { tool, result: None });
        if !out.pause(pacing) {
            return;
        }
        let result = Some(&stats);
        out.emit("tool_completed", Tool { tool, result });
        if !out.pause(pacing) {
            return;
        }
        let final_text = deltas.concat();
        out.emit(
            "agent_completed",
            Completed {
                thread_id,
                final_text,
            },
        );
    }
}

fn bad_request(out: &Outbox, message: &str) {
    let code = "bad_request";
    out.emit("error", ErrorFields::new(code, message));
}

/// The tool's result: statistics of a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TextStats {
    /// Whitespace-separated words.
    pub words: usize,
    /// Distinct words, compared case-insensitively.
    pub unique_words: usize,
    /// Unicode scalar values.
    pub characters: usize,
    /// UTF-8 bytes.
    pub bytes: usize,
    /// Lines, as `str::lines` counts them (an empty text has none).
    pub lines: usize,
    /// The longest word in characters (the last one, on a tie).
    pub longest_word: String,
}

/// The tool: statistics of a message.
pub fn text_stats(s: &str) -> TextStats {
    let words: Vec<&str> = s.split_whitespace().collect();
    let mut unique: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
    unique.sort();
    unique.dedup();
    let longest = words
        .iter()
        .max_by_key(|w| w.chars().count())
        .copied()
        .unwrap_or("");
    TextStats {
        words: words.len(),
        unique_words: unique.len(),
        characters: s.chars().count(),
        bytes: s.len(),
        lines: s.lines().count(),
        longest_word: longest.to_string(),
    }
}

/// The most `agent_thinking` deltas one reply streams. Deltas group three
/// words each until a reply would need more; then the groups grow, so that
/// a message of one megabyte of spaces (a million empty words) costs 64
/// events, not 350 000 queued for one connection.
pub const MAX_DELTAS: usize = 64;

/// The reply, in word-group deltas (always at least two, at most
/// [`MAX_DELTAS`]).
pub fn reply_deltas(message: &str, stats: &TextStats) -> Vec<String> {
    let reply = format!(
        "You wrote {} words and {} characters. The longest word is \"{}\". Echo: {}",
        stats.words, stats.characters, stats.longest_word, message
    );
    let words: Vec<&str> = reply.split(' ').collect();
    let group = words.len().div_ceil(MAX_DELTAS).max(3);
    words
        .chunks(group)
        .enumerate()
        .map(|(i, c)| {
            let chunk = c.join(" ");
            if i == 0 { chunk } else { format!(" {chunk}") }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::{BackendKind, CapStrategy, Mailbox, Reactor};
    use crate::runs::{Mail, RunBudget, SourceEvent, Ticket};
    use std::sync::Arc;

    /// The events one message makes, sealed as the run layer would.
    fn run(input: Inbound) -> Vec<serde_json::Value> {
        let r = Reactor::new(BackendKind::Mio, CapStrategy::Spin).unwrap();
        let mb = Arc::new(Mailbox::new(r.waker()));
        let ticket = Ticket {
            run: 1,
            id: "r1".into(),
            cancel: Default::default(),
            deadline: std::time::Instant::now(),
            charged: None,
            expiry: crate::runs::Expiry::HANDLER,
        };
        let budget = RunBudget {
            max_events: 10_000,
            max_bytes: 4 << 20,
        };
        let out = Outbox::new(&ticket, mb.clone(), budget);
        AgentChat {
            pacing: Duration::ZERO,
            upstream: false,
        }
        .message(&Session::default(), input, &out);
        mb.take()
            .into_iter()
            .enumerate()
            .map(|(i, Mail { what, .. })| match what {
                SourceEvent::Event(body) => {
                    let text = crate::runs::seal(body, "r1", i as u64 + 1, 0);
                    serde_json::from_str(&text).unwrap()
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// A message of spaces only is a huge number of empty words: the reply
    /// still streams in at most MAX_DELTAS events and loses nothing.
    #[test]
    fn a_reply_of_many_words_streams_in_a_bounded_number_of_deltas() {
        let text = format!("a{}b", " ".repeat(200_000));
        let msg = serde_json::json!({"type": "user_message", "text": text, "thread_id": "t"});
        let ev = run(Inbound::Text(msg.to_string()));
        let deltas: Vec<&str> = ev
            .iter()
            .filter(|e| e["type"] == "agent_thinking")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert!(
            (2..=MAX_DELTAS).contains(&deltas.len()),
            "{} deltas",
            deltas.len()
        );
        let joined = deltas.concat();
        assert!(joined.ends_with(&format!("Echo: {text}")));
        assert_eq!(ev.last().unwrap()["final"], joined);
        // Short replies keep their three-word groups.
        let short = reply_deltas("one two three", &text_stats("one two three"));
        assert!(short.iter().all(|d| d.trim_start().split(' ').count() <= 3));
    }

    /// The real handler through an outbox and the run layer, as a server
    /// runs it: every event sealed once, in order, stamped when taken.
    #[test]
    fn a_full_run_streams_every_event_in_order_through_the_run_layer() {
        use crate::reactor::WallClock;
        use crate::runs::{ConnRef, Effect, RunConfig, Runs};
        let t0 = std::time::Instant::now();
        let budget = RunBudget {
            max_events: 10_000,
            max_bytes: 4 << 20,
        };
        let cfg = RunConfig {
            reactor: 0,
            execution: Duration::from_secs(15),
            budget,
            keeps_runs: true,
        };
        let mut runs = Runs::new(cfg, Arc::default(), WallClock::new(t0, 1_000_000));
        let conn = ConnRef { key: 1, id: 7 };
        let ticket = runs.prepare(t0, conn, None, false).unwrap();
        runs.start(ticket.clone(), conn, None);
        let r = Reactor::new(BackendKind::Mio, CapStrategy::Spin).unwrap();
        let mb = Arc::new(Mailbox::new(r.waker()));
        let out = Outbox::new(&ticket, mb.clone(), budget);
        let msg = r#"{"type":"user_message","text":"hello deadline world","thread_id":"t"}"#;
        let agent = AgentChat {
            pacing: Duration::ZERO,
            upstream: false,
        };
        agent.message(&Session::default(), Inbound::Text(msg.into()), &out);
        let mut now = t0;
        for m in mb.take() {
            now += Duration::from_millis(100);
            runs.source(now, m);
        }
        runs.source(
            now,
            Mail {
                run: ticket.run,
                what: SourceEvent::Done,
            },
        );
        let mut got = Vec::new();
        let mut settled = false;
        while let Some(e) = runs.poll_effect() {
            match e {
                Effect::Send {
                    conn: c,
                    msg: tungstenite::Message::Text(text),
                } if c == conn => {
                    got.push(serde_json::from_str::<serde_json::Value>(text.as_str()).unwrap())
                }
                Effect::Settled { conn: c } => settled = c == conn,
                _ => {}
            }
        }
        let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types.first(), Some(&"agent_started"));
        assert_eq!(
            &types[types.len() - 3..],
            ["tool_executing", "tool_completed", "agent_completed"]
        );
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e["seq"], i as u64 + 1);
            assert_eq!(e["run_id"].as_str(), Some(&*ticket.id));
            assert_eq!(e["ts"], 1_000_000 + 100 * (i as u64 + 1));
        }
        assert!(settled, "the run's end settles its connection");
    }

    #[test]
    fn events_in_order_with_final_as_concatenated_deltas() {
        let ev = run(Inbound::Text(
            r#"{"type":"user_message","text":"hello streaming world","thread_id":"t1"}"#.into(),
        ));
        let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let thinking = types.iter().filter(|t| **t == "agent_thinking").count();
        assert!(thinking >= 2);
        let mut want = vec!["agent_started"];
        want.extend(std::iter::repeat_n("agent_thinking", thinking));
        want.extend(["tool_executing", "tool_completed", "agent_completed"]);
        assert_eq!(types, want);
        let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[1] > w[0]));
        let deltas: String = ev
            .iter()
            .filter(|e| e["type"] == "agent_thinking")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        let last = ev.last().unwrap();
        assert_eq!(last["final"], deltas);
        assert!(deltas.ends_with("Echo: hello streaming world"));
        assert_eq!(last["thread_id"], "t1");
        let tool = &ev[ev.len() - 2];
        assert_eq!(tool["result"]["words"], 3);
        assert_eq!(tool["result"]["longest_word"], "streaming");
    }

    #[test]
    fn malformed_and_unknown_inputs_get_bad_request() {
        for input in [
            Inbound::Text("{not json".into()),
            Inbound::Text(r#"{"type":"nope"}"#.into()),
            Inbound::Text(r#"{"text":"no type"}"#.into()),
            Inbound::Text(r#"{"type":"user_message","text":5}"#.into()),
            Inbound::Text(r#"{"type":"user_message","text":"x","pacing_ms":5000}"#.into()),
            Inbound::Binary(vec![1, 2]),
        ] {
            let ev = run(input.clone());
            assert_eq!(ev.len(), 1, "{input:?}");
            assert_eq!(ev[0]["type"], "error");
            assert_eq!(ev[0]["code"], "bad_request");
            assert!(ev[0]["message"].as_str().unwrap().len() > 5);
        }
    }
}
