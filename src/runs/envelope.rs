//! The event envelope (SPEC §5): every event a client reads is one JSON
//! object with `type`, the source's own fields, then `run_id`, `seq` and
//! `ts` — the last three always written here, by the run layer, so a
//! source can neither forge nor forget them.

use std::fmt::Write as _;

/// The fields of an `error` event.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ErrorFields<'a> {
    pub code: &'a str,
    pub message: &'a str,
    /// Which deadline passed (`upstream_timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<&'a str>,
    /// When a retry may succeed (`upstream_unavailable`, when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl<'a> ErrorFields<'a> {
    /// An error with a code and a message only.
    pub fn new(code: &'a str, message: &'a str) -> ErrorFields<'a> {
        ErrorFields {
            code,
            message,
            ..ErrorFields::default()
        }
    }
}

#[derive(serde::Serialize)]
struct Body<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    fields: &'a T,
}

#[derive(serde::Serialize)]
struct BodyOnly<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
}

/// The body of one event of type `kind`: `{"type":kind, ..fields}`.
/// `fields` must serialize as a map (a struct or a JSON object); anything
/// else is left out. The names `type`, `run_id`, `seq` and `ts` belong to
/// the envelope: a source's fields of those names are overwritten by it
/// (JSON readers keep the last).
pub fn body(kind: &str, fields: &impl serde::Serialize) -> String {
    serde_json::to_string(&Body { kind, fields })
        .unwrap_or_else(|_| serde_json::to_string(&BodyOnly { kind }).unwrap_or_default())
}

/// Completes a body into the event a client reads: appends `run_id`,
/// `seq` and `ts` (Unix milliseconds) as its last fields. A body that is
/// not a JSON object's text is replaced by an empty one (a source must
/// not send one; this keeps the output JSON whatever it sent).
pub fn seal(mut body: String, run_id: &str, seq: u64, unix_ms: u64) -> String {
    let trimmed = body.trim_end().len();
    body.truncate(trimmed);
    if !(body.starts_with('{') && body.ends_with('}')) {
        body = "{}".into();
    }
    body.pop();
    let sep = if body.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    let _ = write!(
        body,
        "{sep}\"run_id\":\"{run_id}\",\"seq\":{seq},\"ts\":{unix_ms}}}"
    );
    body
}

/// A complete `error` event of run `run_id`.
pub fn error_event(run_id: &str, seq: u64, unix_ms: u64, fields: &ErrorFields) -> String {
    seal(body("error", fields), run_id, seq, unix_ms)
}

/// The answer to a resume that cannot be served (`resume_unavailable`,
/// `resume_interrupted`, `overloaded`): an error naming the run, outside
/// any run's sequence (no `seq`).
pub fn resume_error(code: &str, run_id: &str, message: &str) -> String {
    #[derive(serde::Serialize)]
    struct ResumeError<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        code: &'a str,
        run_id: &'a str,
        message: &'a str,
    }
    let e = ResumeError {
        kind: "error",
        code,
        run_id,
        message,
    };
    serde_json::to_string(&e).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn the_envelope_is_written_last_and_wins_over_a_sources_fields() {
        let b = body("agent_thinking", &json!({"delta": "hi", "seq": 99}));
        let v: Value = serde_json::from_str(&seal(b, "r1", 3, 1234)).unwrap();
        assert_eq!(v["type"], "agent_thinking");
        assert_eq!(v["delta"], "hi");
        assert_eq!(
            (v["run_id"].as_str(), v["seq"].as_u64()),
            (Some("r1"), Some(3))
        );
        assert_eq!(v["ts"], 1234);
        // A body without fields, and one that is not an object at all.
        let v: Value = serde_json::from_str(&seal(body("x", &json!(5)), "r", 1, 2)).unwrap();
        assert_eq!(v, json!({"type": "x", "run_id": "r", "seq": 1, "ts": 2}));
        let v: Value = serde_json::from_str(&seal("[1]".into(), "r", 1, 2)).unwrap();
        assert_eq!(v, json!({"run_id": "r", "seq": 1, "ts": 2}));
        let v: Value = serde_json::from_str(&seal("{ } ".into(), "r", 1, 2)).unwrap();
        assert_eq!(v, json!({"run_id": "r", "seq": 1, "ts": 2}));
    }
}
