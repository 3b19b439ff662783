//! Reading Redis replies into stream entries: `XRANGE` replies and
//! `XREAD` replies (RESP2 arrays or a RESP3 map), an entry id `SEQ-0` an
//! event and `SEQ-1` the end. Anything malformed is skipped, never
//! trusted: the reader checks the sequence it gets.

use ::redis::Value;

/// One stored entry: event `seq`, or the end after event `seq`.
#[derive(Debug, PartialEq)]
pub(super) struct Entry {
    pub seq: u64,
    pub end: bool,
    pub text: Option<String>,
}

pub(super) fn bulk(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// `[[id, [field, value, …]], …]` (an `XRANGE` reply, or one stream of an
/// `XREAD` reply).
pub(super) fn entries(v: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    for e in items(v) {
        let parts = items(e);
        let (Some(id), Some(fields)) = (parts.first().and_then(bulk), parts.get(1)) else {
            continue;
        };
        let Some((ms, n)) = id.split_once('-') else {
            continue;
        };
        let (Ok(seq), Ok(n)) = (ms.parse::<u64>(), n.parse::<u64>()) else {
            continue;
        };
        let fields = items(fields);
        let text = fields
            .chunks(2)
            .find(|kv| kv.first().and_then(bulk).as_deref() == Some("e"))
            .and_then(|kv| kv.get(1).and_then(bulk));
        out.push(Entry {
            seq,
            end: n == 1,
            text,
        });
    }
    out
}

/// An `XREAD` reply as `(key, entries)`: RESP2 (arrays) or RESP3 (a map).
pub(super) fn streams(v: &Value) -> Vec<(String, Vec<Entry>)> {
    match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, e)| Some((bulk(k)?, entries(e))))
            .collect(),
        other => items(other)
            .iter()
            .filter_map(|s| {
                let p = items(s);
                Some((bulk(p.first()?)?, entries(p.get(1)?)))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_replies_parse_into_events_and_the_end() {
        let xrange = Value::Array(vec![
            Value::Array(vec![b("4-0"), Value::Array(vec![b("e"), b("{\"seq\":4}")])]),
            Value::Array(vec![b("4-1"), Value::Array(vec![b("end"), b("1")])]),
        ]);
        let got = entries(&xrange);
        assert_eq!(
            got,
            [
                Entry {
                    seq: 4,
                    end: false,
                    text: Some("{\"seq\":4}".into())
                },
                Entry {
                    seq: 4,
                    end: true,
                    text: None
                }
            ]
        );
        let xread = Value::Array(vec![Value::Array(vec![b("pollcap:run:{x}"), xrange])]);
        let s = streams(&xread);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, "pollcap:run:{x}");
        assert_eq!(s[0].1.len(), 2);
        assert!(streams(&Value::Nil).is_empty(), "a BLOCK that timed out");
    }
}
