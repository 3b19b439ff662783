//! Which agent events can be relayed as the agent wrote them. Most need
//! no rewriting: a JSON object whose first field is `"type":"<plain
//! string>"`, with none of the envelope's names (`run_id`, `seq`, `ts`) at
//! its top level, no top-level key twice, and — an `agent_completed` — its
//! `final`. For those the general path (`events`: a `serde_json::Value`
//! built, the envelope's names removed, written again with `type` first)
//! gives the same event, at several times the cost. So the text is checked
//! by one borrowing serde pass that builds nothing, and passed on as it
//! is. Whatever the peek is unsure of (escapes in a key or in `type`,
//! whitespace before `type` or around the object, many keys, anything
//! invalid) goes the general way, which stays the one definition of an
//! event and of its errors.
//!
//! The check is the general path's own parse: every value goes through
//! `deserialize_any`, as `Value` does, so numbers out of range, strings
//! that do not decode (a lone surrogate) and nesting past serde_json's
//! limit fail here as they fail there. `IgnoredAny` would not do:
//! serde_json skips it without those checks.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// What the peek read of an event it lets through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peeked<'a> {
    /// The event's `type`.
    pub kind: &'a str,
    /// An `agent_thinking`'s `delta`, when it is a string (decoded).
    pub delta: Option<Cow<'a, str>>,
}

/// Most top-level keys compared for duplicates (pairwise, on the stack);
/// an event with more takes the general path.
const MAX_KEYS: usize = 16;

/// The event `text` if it can be relayed as written: its `type` and the
/// delta to keep; `None` sends it the general way.
pub fn peek(text: &str) -> Option<Peeked<'_>> {
    // `type` first, unescaped, and nothing around the object: the text
    // already is what the general path would start with.
    if !text.starts_with(r#"{"type":""#) || !text.ends_with('}') {
        return None;
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let peeked = de.deserialize_map(EventVisitor).ok()?;
    de.end().ok()?;
    Some(peeked)
}

/// Why the peek gave up (the general path says what is wrong, if anything).
fn general<E: de::Error>() -> E {
    E::custom("the general path decides")
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Peeked<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Peeked<'de>, A::Error> {
        let mut keys = [""; MAX_KEYS];
        let mut n = 0;
        let mut kind = None;
        let mut delta = None;
        let mut has_final = false;
        while let Some(key) = map.next_key_seed(Plain)? {
            if n == MAX_KEYS || keys[..n].contains(&key) {
                return Err(general());
            }
            keys[n] = key;
            n += 1;
            match key {
                "type" if n == 1 => kind = Some(map.next_value_seed(Plain)?),
                "type" | "run_id" | "seq" | "ts" => return Err(general()),
                "delta" if kind == Some("agent_thinking") => {
                    delta = map.next_value_seed(Check { keep: true })?;
                }
                _ => {
                    has_final |= key == "final";
                    map.next_value_seed(Check { keep: false })?;
                }
            }
        }
        match kind {
            Some("agent_completed") if !has_final => Err(general()),
            Some(kind) => Ok(Peeked { kind, delta }),
            None => Err(general()),
        }
    }
}

/// A string borrowed from the text as it is: one with an escape fails.
struct Plain;

impl<'de> DeserializeSeed<'de> for Plain {
    type Value = &'de str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'de str, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Plain {
    type Value = &'de str;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string without escapes")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<&'de str, E> {
        Ok(v)
    }

    // `visit_str` (a string decoded from escapes) keeps the default: an
    // error.
}

/// Any JSON value, checked as `serde_json::Value` would parse it but not
/// built; a string's text kept when `keep` asks (borrowed unless escaped).
#[derive(Clone, Copy)]
struct Check {
    keep: bool,
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(self.keep.then_some(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.keep.then(|| Cow::Owned(v.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let each = Check { keep: false };
        while seq.next_element_seed(each)?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let each = Check { keep: false };
        while map.next_key_seed(each)?.is_some() {
            map.next_value_seed(each)?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Option<&str> {
        peek(text).map(|p| p.kind)
    }

    #[test]
    fn plain_events_are_relayed_as_written() {
        for text in [
            r#"{"type":"agent_thinking","delta":"Hel"}"#,
            r#"{"type":"my_tool"}"#,
            r#"{"type":"tool_completed","tool":"search","result":{"hits":[1,2.5,-3e2,null,true]}}"#,
            r#"{"type":"agent_completed","final":"Hello"}"#,
            r#"{"type":"agent_completed","final":null}"#,
            r#"{"type":"error","code":"x","message":"a \"quoted\" line\n"}"#,
            // The envelope's names below the top level are the agent's.
            r#"{"type":"x","data":{"run_id":"theirs","seq":1,"ts":2,"type":"y"}}"#,
            // Whitespace inside is valid JSON, kept as written.
            r#"{"type":"x", "a" : [ 1 , 2 ] }"#,
            r#"{"type":"x","big":123456789012345678901234567890}"#,
        ] {
            assert!(peek(text).is_some(), "{text}");
        }
        assert_eq!(kind(r#"{"type":"my_tool","n":1}"#), Some("my_tool"));
    }

    #[test]
    fn what_needs_rewriting_or_is_unsure_takes_the_general_path() {
        for text in [
            // The envelope's names at the top level are dropped there.
            r#"{"type":"x","run_id":"theirs"}"#,
            r#"{"type":"x","seq":4}"#,
            r#"{"type":"x","ts":1}"#,
            // A final to fill in.
            r#"{"type":"agent_completed"}"#,
            r#"{"type":"agent_completed","result":"no final"}"#,
            // Keys twice: the general path keeps the last.
            r#"{"type":"x","type":"agent_completed","final":"f"}"#,
            r#"{"type":"x","a":1,"a":2}"#,
            // Escapes in `type` or in a key (this one is run_id).
            r#"{"type":"agent\u005fcompleted","final":"f"}"#,
            r#"{"type":"x","run\u005fid":"theirs"}"#,
            // `type` not first, not a string, or not there.
            r#"{"a":1,"type":"x"}"#,
            r#"{"type":5}"#,
            r#"{"type":null}"#,
            // Whitespace before `type` or around the object.
            r#"{ "type":"x"}"#,
            r#"{"type" :"x"}"#,
            r#"{"type": "x"}"#,
            r#" {"type":"x"}"#,
            r#"{"type":"x"} "#,
            // Not one object, or not JSON.
            r#"[{"type":"x"}]"#,
            r#"{"type":"x"}{"type":"y"}"#,
            r#"{"type":"x","a":}"#,
            r#"{"type":"x","a":1,}"#,
            r#"{"type":"x""#,
            "",
            // What serde_json's Value refuses, so the peek refuses too.
            r#"{"type":"x","n":1e400}"#,
            r#"{"type":"x","s":"\ud800"}"#,
            r#"{"type":"x","s":"\q"}"#,
        ] {
            assert_eq!(peek(text), None, "{text}");
        }
        let keys: String = (0..MAX_KEYS).map(|i| format!(",\"k{i}\":{i}")).collect();
        assert_eq!(peek(&format!("{{\"type\":\"x\"{keys}}}")), None);
        let deep = format!(
            "{{\"type\":\"x\",\"d\":{}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(peek(&deep), None, "past serde_json's nesting limit");
    }

    #[test]
    fn a_thinking_delta_is_read_decoded() {
        let p = peek(r#"{"type":"agent_thinking","delta":"a\nb"}"#).unwrap();
        assert_eq!(p.delta.as_deref(), Some("a\nb"));
        let p = peek(r#"{"type":"agent_thinking","delta":"ab"}"#).unwrap();
        assert!(matches!(p.delta, Some(Cow::Borrowed("ab"))));
        let p = peek(r#"{"type":"agent_thinking","delta":5}"#).unwrap();
        assert_eq!(p.delta, None);
        let p = peek(r#"{"type":"other","delta":"not kept"}"#).unwrap();
        assert_eq!(p.delta, None);
    }
}
