//! The agent stream's decoder (src/source/upstream/events.rs) with events
//! relayed as the agent wrote them, against the same decoder with every
//! event on the general path (parsed into a `serde_json::Value`, the
//! envelope's names removed, `final` filled in, written again).
//!
//! Input: one byte of set-up (bit 0: SSE or JSON Lines; the rest: the
//! size of the pieces the body is fed in, 1 to 128 bytes), then the body.
//!
//! Invariants, event by event and at the end of the stream:
//! - both decoders succeed or fail alike, with the same error;
//! - they read the same number of events, with the same end (`last`) and
//!   `agent_started` marks;
//! - each event's text is a JSON object with `type` first;
//! - where the texts differ, both are the same JSON value, a float's last
//!   bits aside (serde_json's float parsing can be an ulp off, so the
//!   general path's rewrite of a long number is itself not exact), so the
//!   thinking kept for a `final` left out is the same too (an
//!   `agent_completed` without one carries it);
//! - and the as-written text is what the general path rewrites, byte for
//!   byte, into the general one: the difference is only one of form (key
//!   order, spacing, number and escape spelling).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pollcap::fuzzing::{Decoder, Framing, Read, same_value};
use serde_json::Value;

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((&setup, body)) = data.split_first() else {
        return;
    };
    let framing = if setup & 1 == 0 {
        Framing::Sse
    } else {
        Framing::JsonLines
    };
    let step = usize::from(setup >> 1) + 1;
    let mut fast = Decoder::new(framing, 4096, 1 << 16);
    let mut general = Decoder::new(framing, 4096, 1 << 16).general_only();
    for piece in body.chunks(step) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (x, y) = (fast.feed(piece, &mut a), general.feed(piece, &mut b));
        same(&a, &b);
        assert_eq!(x, y, "the same outcome");
        if x.is_err() {
            return; // the run fails here
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (x, y) = (fast.finish(&mut a), general.finish(&mut b));
    same(&a, &b);
    assert_eq!(x, y, "the same outcome at the end");
}

fn same(a: &[Read], b: &[Read]) {
    assert_eq!(a.len(), b.len(), "as many events");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.last, x.started), (y.last, y.started), "{}", x.body);
        assert!(x.body.starts_with("{\"type\":"), "{}", x.body);
        assert!(y.body.starts_with("{\"type\":"), "{}", y.body);
        if x.body != y.body {
            let vx: Value = serde_json::from_str(&x.body).expect("JSON as written");
            let vy: Value = serde_json::from_str(&y.body).expect("JSON in general");
            assert!(same_value(&vx, &vy), "{} vs {}", x.body, y.body);
            assert_eq!(rewritten(&x.body), y.body, "{} vs {}", x.body, y.body);
        }
    }
}

/// What the general path makes of one event's text (sent as SSE: the
/// text of an event read from several `data:` lines holds line feeds).
fn rewritten(text: &str) -> String {
    let mut d = Decoder::new(Framing::Sse, 1 << 16, 0).general_only();
    let mut out = Vec::new();
    let sse = format!("data: {}\n\n", text.replace('\n', "\ndata: "));
    d.feed(sse.as_bytes(), &mut out)
        .expect("an event relayed as written is one");
    assert_eq!(out.len(), 1);
    out.pop().map(|r| r.body).unwrap_or_default()
}
