//! An agent's stream of events, read from the bytes of a response body:
//! Server-Sent Events (`text/event-stream`: each event's `data:` lines
//! are one JSON event; comments and blank keep-alives are only traffic)
//! or JSON Lines (`application/jsonl`, `application/x-ndjson`: one JSON
//! event per line). Each event must be a JSON object with a string
//! `type`; its `run_id`, `seq` and `ts` are dropped (the run layer writes
//! its own), and an `agent_completed` without `final` gets the
//! concatenated `agent_thinking` deltas. Nothing past `max_line` bytes is
//! ever buffered: a longer line or event is an error.
//!
//! An event that needs none of that rewriting is relayed as the agent
//! wrote it (`peek` decides); the others take the general path below.

use serde_json::{Map, Value};

use super::peek::peek;

/// Room left after an event relayed as written for the envelope the run
/// layer appends (`"run_id"`, `"seq"`, `"ts"`: about 70 bytes), so that
/// sealing it does not move it.
const ENVELOPE_ROOM: usize = 80;

/// The framing of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `text/event-stream`: an event's `data:` lines, ended by a blank line.
    Sse,
    /// `application/jsonl` and its aliases: one event per line.
    JsonLines,
}

impl Framing {
    /// The framing a response's media type announces, if it is one.
    pub fn of(media_type: &str) -> Option<Framing> {
        match media_type {
            "text/event-stream" => Some(Framing::Sse),
            "application/jsonl" | "application/x-ndjson" | "application/jsonlines" => {
                Some(Framing::JsonLines)
            }
            _ => None,
        }
    }
}

/// Why the stream is not a stream of events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    TooLong(usize),
    NotJson(String),
    NotAnEvent,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::TooLong(n) => write!(f, "an event or line is longer than {n} bytes"),
            Invalid::NotJson(e) => write!(f, "an event is not JSON: {e}"),
            Invalid::NotAnEvent => {
                f.write_str("an event is not a JSON object with a string \"type\"")
            }
        }
    }
}

/// One event read from the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Read {
    /// The event's JSON text, without `run_id`, `seq` and `ts`.
    pub body: String,
    /// `agent_completed` or `error`: the run ends with it.
    pub last: bool,
    /// `agent_started`: pollcap sends its own when the agent answers, so
    /// the agent's is not relayed a second time.
    pub started: bool,
}

/// Reads events out of body bytes as they come.
pub struct Decoder {
    framing: Framing,
    max_line: usize,
    /// The current line, not yet ended.
    line: Vec<u8>,
    /// SSE: the `data:` lines of the current event, joined by `\n`.
    data: Vec<u8>,
    has_data: bool,
    /// The last byte fed was a CR (a following LF belongs to it).
    after_cr: bool,
    /// The `agent_thinking` deltas so far (for a `final` left out).
    deltas: String,
    max_deltas: usize,
    /// Events that need no rewriting are relayed as written.
    as_written: bool,
}

impl Decoder {
    /// `max_line`: the longest line (JSON Lines) or event data (SSE);
    /// `max_deltas`: the most delta bytes kept for a missing `final`.
    pub fn new(framing: Framing, max_line: usize, max_deltas: usize) -> Decoder {
        Decoder {
            framing,
            max_line,
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            deltas: String::new(),
            max_deltas,
            as_written: true,
        }
    }

    /// The same decoder with every event on the general path: the
    /// reference the as-written path is checked against (tests, fuzzing).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn general_only(mut self) -> Decoder {
        self.as_written = false;
        self
    }

    /// Feeds body bytes; complete events are appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Read>) -> Result<(), Invalid> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.after_cr && rest[0] == b'\n' {
                rest = &rest[1..];
                self.after_cr = false;
                continue;
            }
            self.after_cr = false;
            match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
                Some(end) => {
                    self.take(&rest[..end])?;
                    self.after_cr = rest[end] == b'\r';
                    rest = &rest[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.end_line(&line, out)?;
                    self.line = line;
                    self.line.clear();
                }
                None => {
                    self.take(rest)?;
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    fn take(&mut self, part: &[u8]) -> Result<(), Invalid> {
        if self.line.len() + part.len() > self.max_line {
            return Err(Invalid::TooLong(self.max_line));
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    /// The stream ended: an unterminated last line still counts (JSON
    /// Lines), a pending SSE event too.
    pub fn finish(&mut self, out: &mut Vec<Read>) -> Result<(), Invalid> {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            self.end_line(&line, out)?;
        }
        if self.framing == Framing::Sse {
            self.end_line(b"", out)?;
        }
        Ok(())
    }

    fn end_line(&mut self, line: &[u8], out: &mut Vec<Read>) -> Result<(), Invalid> {
        match self.framing {
            Framing::JsonLines => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    return Ok(()); // a keep-alive
                }
                out.push(self.event(line)?);
            }
            Framing::Sse => {
                if line.is_empty() {
                    if self.has_data {
                        let data = std::mem::take(&mut self.data);
                        self.has_data = false;
                        out.push(self.event(&data)?);
                        self.data = data;
                        self.data.clear();
                    }
                    return Ok(());
                }
                if line[0] == b':' {
                    return Ok(()); // a comment: traffic only
                }
                let (field, value) = match line.iter().position(|b| *b == b':') {
                    Some(i) => {
                        let v = &line[i + 1..];
                        (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                    }
                    None => (line, &b""[..]),
                };
                if field == b"data" {
                    let extra = usize::from(self.has_data);
                    if self.data.len() + extra + value.len() > self.max_line {
                        return Err(Invalid::TooLong(self.max_line));
                    }
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                }
                // `event`, `id`, `retry` and unknown fields: the event's
                // type is its JSON `type`.
            }
        }
        Ok(())
    }

    fn event(&mut self, json: &[u8]) -> Result<Read, Invalid> {
        if self.as_written
            && let Ok(text) = std::str::from_utf8(json)
            && let Some(p) = peek(text)
        {
            if let Some(d) = &p.delta {
                self.keep_delta(d);
            }
            let mut body = String::with_capacity(text.len() + ENVELOPE_ROOM);
            body.push_str(text);
            return Ok(Read {
                body,
                last: matches!(p.kind, "agent_completed" | "error"),
                started: p.kind == "agent_started",
            });
        }
        self.general(json)
    }

    /// The most thinking the run keeps for a `final` left out.
    fn keep_delta(&mut self, d: &str) {
        if self.deltas.len() + d.len() <= self.max_deltas {
            self.deltas.push_str(d);
        }
    }

    /// Any event: parsed, the envelope's names removed, `final` filled in,
    /// written again with `type` first.
    fn general(&mut self, json: &[u8]) -> Result<Read, Invalid> {
        let v: Value = serde_json::from_slice(json).map_err(|e| Invalid::NotJson(e.to_string()))?;
        let Value::Object(mut m) = v else {
            return Err(Invalid::NotAnEvent);
        };
        let kind = match m.get("type") {
            Some(Value::String(t)) => t.clone(),
            _ => return Err(Invalid::NotAnEvent),
        };
        for k in ["run_id", "seq", "ts"] {
            m.remove(k);
        }
        match kind.as_str() {
            "agent_thinking" => {
                if let Some(Value::String(d)) = m.get("delta") {
                    self.keep_delta(d);
                }
            }
            "agent_completed" if !m.contains_key("final") => {
                m.insert(
                    "final".into(),
                    Value::String(std::mem::take(&mut self.deltas)),
                );
            }
            _ => {}
        }
        let last = matches!(kind.as_str(), "agent_completed" | "error");
        let started = kind == "agent_started";
        Ok(Read {
            body: body_with_type_first(&kind, m),
            last,
            started,
        })
    }
}

/// The event's text with `type` first (as pollcap's own events), then
/// the agent's fields.
fn body_with_type_first(kind: &str, mut m: Map<String, Value>) -> String {
    m.remove("type");
    let mut fields = serde_json::to_string(&Value::Object(m)).unwrap_or_else(|_| "{}".into());
    let head = serde_json::to_string(&Value::String(kind.into())).unwrap_or_default();
    let sep = if fields.len() > 2 { "," } else { "" };
    fields.replace_range(..1, &format!("{{\"type\":{head}{sep}"));
    fields
}

/// The same JSON value, a float's last bits aside: serde_json parses
/// some long numbers an ulp off, so the general path's rewrite of one
/// is itself not exact (the as-written text keeps the agent's digits).
/// For the differential test and its fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| same_value(v, w)))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(v, w)| same_value(v, w))
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(framing: Framing, bytes: &[u8], step: usize) -> Result<Vec<Value>, Invalid> {
        let mut d = Decoder::new(framing, 1024, 1 << 20);
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            d.feed(piece, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect())
    }

    #[test]
    fn sse_and_json_lines_read_the_same_events_whatever_the_splits() {
        let sse = b": keep-alive\n\ndata: {\"type\":\"agent_started\",\"seq\":99}\n\n\
            event: x\r\ndata: {\"type\":\"agent_thinking\",\r\ndata: \"delta\":\"Hel\"}\r\n\r\n\
            data:{\"type\":\"my_tool\",\"n\":1}\r\r\
            data: {\"type\":\"agent_thinking\",\"delta\":\"lo\"}\n\n\
            data: {\"type\":\"agent_completed\",\"run_id\":\"theirs\"}\n\n";
        let jsonl = b"{\"type\":\"agent_started\",\"seq\":99}\n\n\
            {\"type\":\"agent_thinking\",\"delta\":\"Hel\"}\r\n{\"type\":\"my_tool\",\"n\":1}\n\
            {\"type\":\"agent_thinking\",\"delta\":\"lo\"}\n{\"type\":\"agent_completed\",\"run_id\":\"theirs\"}";
        for step in [1, 2, 5, 17, 4096] {
            for (f, bytes) in [(Framing::Sse, &sse[..]), (Framing::JsonLines, &jsonl[..])] {
                let ev = all(f, bytes, step).unwrap();
                let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
                assert_eq!(
                    types,
                    [
                        "agent_started",
                        "agent_thinking",
                        "my_tool",
                        "agent_thinking",
                        "agent_completed"
                    ],
                    "{f:?} step {step}"
                );
                assert_eq!(ev[0].get("seq"), None, "the agent's seq is not kept");
                assert_eq!(ev[2], json!({"type": "my_tool", "n": 1}));
                assert_eq!(ev[4], json!({"type": "agent_completed", "final": "Hello"}));
            }
        }
    }

    #[test]
    fn a_final_given_is_kept_and_the_last_events_are_marked() {
        let mut d = Decoder::new(Framing::JsonLines, 1024, 1 << 20);
        let mut out = Vec::new();
        d.feed(b"{\"type\":\"agent_thinking\",\"delta\":\"a\"}\n{\"type\":\"agent_completed\",\"final\":\"mine\"}\n{\"type\":\"error\",\"code\":\"x\"}\n", &mut out)
            .unwrap();
        assert_eq!(
            out.iter().map(|r| r.last).collect::<Vec<_>>(),
            [false, true, true]
        );
        assert!(out[1].body.contains("\"final\":\"mine\""));
        assert!(out[0].body.starts_with("{\"type\":\"agent_thinking\""));
    }

    #[test]
    fn what_is_not_an_event_or_too_long_is_refused_without_buffering_it() {
        for (bytes, want) in [
            (&b"<html>oops</html>\n"[..], "json"),
            (&b"[1,2]\n"[..], "event"),
            (&b"{\"type\":5}\n"[..], "event"),
            (&b"{\"kind\":\"x\"}\n"[..], "event"),
        ] {
            let e = all(Framing::JsonLines, bytes, 3).unwrap_err();
            match want {
                "json" => assert!(matches!(e, Invalid::NotJson(_)), "{e:?}"),
                _ => assert_eq!(e, Invalid::NotAnEvent),
            }
        }
        // A line longer than the cap fails as soon as it passes it.
        let mut d = Decoder::new(Framing::JsonLines, 64, 1 << 20);
        let mut out = Vec::new();
        assert!(d.feed(&[b'x'; 60], &mut out).is_ok());
        assert_eq!(d.feed(&[b'x'; 10], &mut out), Err(Invalid::TooLong(64)));
        assert!(d.line.len() <= 64, "nothing past the cap is held");
        // SSE data lines add up.
        let mut d = Decoder::new(Framing::Sse, 64, 1 << 20);
        let line = format!("data: {}\n", "y".repeat(40));
        assert!(d.feed(line.as_bytes(), &mut out).is_ok());
        assert_eq!(d.feed(line.as_bytes(), &mut out), Err(Invalid::TooLong(64)));
    }

    /// Random event texts in the forms agents write and in the forms the
    /// as-written path must send the general way (see `peek`).
    mod samples {
        use rand::Rng;
        use rand::rngs::StdRng;

        const KINDS: [&str; 9] = [
            "agent_thinking",
            "agent_thinking",
            "agent_completed",
            "error",
            "agent_started",
            "tool_executing",
            "my_tool",
            "agent\\u005fcompleted",
            "x\\\"y",
        ];
        const KEYS: [&str; 14] = [
            "delta",
            "delta",
            "final",
            "tool",
            "result",
            "run_id",
            "seq",
            "ts",
            "type",
            "n",
            "a",
            "run\\u005fid",
            "caf\u{e9}",
            "data",
        ];
        const PIECES: [&str; 14] = [
            "a",
            "Hel",
            "lo",
            " ",
            "\\n",
            "\\\"",
            "\\u00e9",
            "\u{e9}",
            "\\ud83d\\ude00",
            "\\/",
            "\u{1f600}",
            "\\u0000",
            "\\t",
            "\\\\",
        ];
        const NUMBERS: [&str; 15] = [
            // serde_json parses this one an ulp off (found by the fuzz
            // target): the general path's rewrite is itself not exact.
            "55555555555555555555555555555555555555555555525555555555555555555551.5e15",
            "0",
            "7",
            "-12",
            "1.5",
            "2.50",
            "-0",
            "-0.0",
            "1e5",
            "1E-3",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
            "-9223372036854775808",
            "0.1",
        ];

        fn pick<'a>(r: &mut StdRng, from: &[&'a str]) -> &'a str {
            from[r.gen_range(0..from.len())]
        }

        fn ws(r: &mut StdRng) -> &'static str {
            if r.gen_ratio(1, 15) {
                [" ", "\t", "  "][r.gen_range(0..3)]
            } else {
                ""
            }
        }

        fn string(r: &mut StdRng) -> String {
            let mut s = String::from("\"");
            for _ in 0..r.gen_range(0..4) {
                s += pick(r, &PIECES);
            }
            if r.gen_ratio(1, 200) {
                s += "\\ud800"; // a lone surrogate: not JSON text for serde_json
            }
            s + "\""
        }

        fn value(r: &mut StdRng, depth: u32) -> String {
            match r.gen_range(0..12) {
                0 => "null".into(),
                1 => ["true", "false"][r.gen_range(0..2)].into(),
                2 if r.gen_ratio(1, 50) => "1e400".into(), // out of range
                2 | 3 => pick(r, &NUMBERS).into(),
                4 if depth < 3 => {
                    let items: Vec<String> = (0..r.gen_range(0..4))
                        .map(|_| value(r, depth + 1))
                        .collect();
                    format!("[{}{}]", ws(r), items.join(&format!("{},{}", ws(r), ws(r))))
                }
                5 if depth < 3 => object(r, depth + 1),
                _ => string(r),
            }
        }

        fn object(r: &mut StdRng, depth: u32) -> String {
            let fields: Vec<String> = (0..r.gen_range(0..4))
                .map(|_| {
                    format!(
                        "\"{}\"{}:{}{}",
                        pick(r, &KEYS),
                        ws(r),
                        ws(r),
                        value(r, depth)
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }

        pub fn event(r: &mut StdRng) -> String {
            let mut t = String::new();
            t += ws(r);
            t += "{";
            t += ws(r);
            let kind = pick(r, &KINDS);
            let mut fields = match r.gen_range(0..20) {
                0 => vec![format!("\"n\":{}", value(r, 1))], // no type first
                1 => vec![format!("\"type\":{}", value(r, 1))],
                _ => vec![format!("\"type\"{}:{}\"{kind}\"", ws(r), ws(r))],
            };
            for _ in 0..r.gen_range(0..5) {
                let key = pick(r, &KEYS);
                let v = match (key, r.gen_ratio(3, 4)) {
                    ("delta" | "final", true) => string(r),
                    _ => value(r, 1),
                };
                fields.push(format!("{}\"{key}\"{}:{}{v}", ws(r), ws(r), ws(r)));
            }
            if kind == "agent_completed" && r.gen_ratio(1, 2) {
                let v = string(r);
                fields.push(format!("\"final\":{v}"));
            }
            t += &fields.join(",");
            t += ws(r);
            t += "}";
            t += ws(r);
            if r.gen_ratio(1, 30) {
                t.pop(); // cut short
            }
            t
        }
    }

    /// The as-written path changes how an event is written, never what
    /// it says: over random events, the same JSON value as the general
    /// path's (see `same_value`), a text the general path rewrites into
    /// exactly its own output, `type` first, the same end and start marks,
    /// the same errors, and the same thinking kept for a `final` left out.
    #[test]
    fn events_relayed_as_written_say_what_the_general_path_says() {
        use rand::SeedableRng;
        let mut r = rand::rngs::StdRng::seed_from_u64(19);
        let (mut fast, mut general) = (0, 0);
        for _stream in 0..200 {
            let mut a = Decoder::new(Framing::JsonLines, 1 << 16, 1 << 20);
            let mut b = Decoder::new(Framing::JsonLines, 1 << 16, 1 << 20).general_only();
            let mut texts: Vec<String> = (0..50).map(|_| samples::event(&mut r)).collect();
            texts.push(r#"{"type":"agent_completed"}"#.into());
            for text in &texts {
                let line = format!("{text}\n");
                let (mut x, mut y) = (Vec::new(), Vec::new());
                match (
                    a.feed(line.as_bytes(), &mut x),
                    b.feed(line.as_bytes(), &mut y),
                ) {
                    (Ok(()), Ok(())) => {}
                    (Err(e), Err(f)) => {
                        assert_eq!(e, f, "{text}");
                        continue;
                    }
                    (e, f) => panic!("{text}: {e:?} vs {f:?}"),
                }
                assert_eq!(x.len(), y.len(), "{text}");
                let Some((x, y)) = x.pop().zip(y.pop()) else {
                    continue; // blank: a keep-alive
                };
                if x.body == *text {
                    fast += 1;
                } else {
                    general += 1;
                }
                assert_eq!((x.last, x.started), (y.last, y.started), "{text}");
                assert!(x.body.starts_with("{\"type\":"), "{text} -> {}", x.body);
                if x.body != y.body {
                    let vx: Value = serde_json::from_str(&x.body).unwrap();
                    let vy: Value = serde_json::from_str(&y.body).unwrap();
                    assert!(same_value(&vx, &vy), "{text}: {} vs {}", x.body, y.body);
                    let mut again = Decoder::new(Framing::JsonLines, 1 << 16, 0).general_only();
                    let mut z = Vec::new();
                    again
                        .feed(format!("{}\n", x.body).as_bytes(), &mut z)
                        .unwrap();
                    assert_eq!(z[0].body, y.body, "{text}");
                }
            }
        }
        // Both paths are exercised, the as-written one the most.
        assert!(
            fast > 1500 && general > 1500,
            "{fast} as written, {general} general"
        );
    }
}
