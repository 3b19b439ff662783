//! The request-head path: `http::parse` under size and header limits,
//! routing and upgrade validation (`http::classify`), the subprotocol
//! decision of admission, the bearer token's source, and the same bytes
//! arriving in arbitrary pieces through the connection (src/conn/head.rs)
//! with the server's answer written back.
//!
//! Input: 4 bytes of parameters (limits, the application's subprotocols,
//! the WebSocket path, how the bytes are cut), then the request bytes.
//!
//! Invariants:
//! - the parser never asks for more bytes once `max_bytes` are buffered;
//!   a complete head is no longer than the limit, parses the same without
//!   what follows it, and none of its prefixes is refused;
//! - every refusal is one valid HTTP response (length, `Connection: close`)
//!   with a 4xx status; a route or an upgrade is only what the request
//!   really asks for (method, path, headers, key); a 101 carries the
//!   accept key of the request's key;
//! - the subprotocol selected is the client's first supported one and
//!   never a `bearer.` credential; a refusal names every supported one;
//! - fed in pieces, the connection reaches the same outcome as one parse
//!   of the same bytes, never waits on a head that is already complete or
//!   already invalid, and writes exactly the answer it was given.

#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use pollcap::auth;
use pollcap::conn::{Conn, Cx, Event, PhaseName};
use pollcap::http::{self, Head, HeadLimits, Parsed, Request};
use pollcap::settings::{Limits, Profile};
use pollcap_fuzz::{Bytes, Output, Pipe, check_response};

fuzz_target!(|data: &[u8]| run(data));

const APPS: [&[&str]; 4] = [&["agent_chat"], &["echo"], &["chat.v2", "agent_chat"], &[]];
const PATHS: [&str; 3] = ["/ws", "/chat", "/ws/x"];

fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    let p0 = b.byte();
    let limits = HeadLimits {
        max_bytes: [64, 256, 1024, 8192][usize::from(p0 % 4)],
        max_headers: [1, 4, 32, 100][usize::from((p0 >> 2) % 4)],
    };
    let p1 = b.byte();
    let supported = APPS[usize::from(p1 % 4)];
    let ws_path = PATHS[usize::from((p1 >> 2) % 3)];
    let mut seed = u32::from(b.byte()) | 1;
    let piece = [1usize, 7, 64, 1024, usize::MAX][usize::from(b.byte() % 5)];
    let req = b.rest();

    one_parse(req, limits, supported, ws_path);

    // The same bytes in pieces through the connection.
    let now = Instant::now();
    let mut conn_limits = Limits {
        max_head_bytes: limits.max_bytes,
        max_headers: limits.max_headers,
        ..Limits::default()
    };
    conn_limits.max_outbound = conn_limits.max_message + 1024;
    let t = Profile::Local.timeouts();
    let pipe = Pipe::new(usize::MAX);
    let mut conn = Conn::new(1, pipe.clone(), now, 1.0);
    let mut events = Vec::new();
    let mut fed = 0;
    // Where the connection last had reason to parse: a piece that ended a
    // line, or the size limit reached.
    let mut parsed_at = 0;
    let mut answer: Option<Vec<u8>> = None;
    let mut head_seen: Option<Box<Head>> = None;
    let mut status: Option<u16> = None;
    while fed < req.len() && conn.phase() == PhaseName::Head {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = if piece == usize::MAX {
            req.len()
        } else {
            1 + seed as usize % piece
        };
        let chunk = &req[fed..(fed + n).min(req.len())];
        pipe.send(chunk);
        fed += chunk.len();
        if chunk.contains(&b'\n') || fed > limits.max_bytes {
            parsed_at = fed;
        }
        let mut cx = Cx {
            now,
            timeouts: &t,
            limits: &conn_limits,
            events: &mut events,
        };
        conn.handle_io(true, false, &mut cx);
        for ev in std::mem::take(&mut events) {
            let mut cx = Cx {
                now,
                timeouts: &t,
                limits: &conn_limits,
                events: &mut events,
            };
            match ev {
                Event::Request(head) => {
                    assert!(head_seen.is_none(), "two requests");
                    // The server's answer.
                    match http::classify(&head, ws_path) {
                        Request::Upgrade(u) => {
                            match pollcap::fuzzing::choose_subprotocol(&u.protocols, supported) {
                                Ok(p) => {
                                    answer = Some(http::switching_protocols(&u.key, p));
                                    conn.accept(p, &mut cx);
                                }
                                Err(r) => {
                                    answer = Some(r.bytes.clone());
                                    conn.respond(r, &mut cx);
                                }
                            }
                        }
                        Request::Route(_) => {
                            let r = http::text(200, "OK", "route\n");
                            answer = Some(r.bytes.clone());
                            conn.respond(r, &mut cx);
                        }
                        Request::Reject(r) => {
                            answer = Some(r.bytes.clone());
                            conn.respond(r, &mut cx);
                        }
                    }
                    head_seen = Some(head);
                }
                Event::Status(s) => {
                    assert!(status.is_none(), "two statuses");
                    status = Some(s);
                }
                _ => {}
            }
        }
        let mut cx = Cx {
            now,
            timeouts: &t,
            limits: &conn_limits,
            events: &mut events,
        };
        conn.flush(&mut cx);
    }
    let fed_bytes = &req[..fed];
    let out = pipe.recv(usize::MAX);
    match (&head_seen, conn.phase()) {
        (Some(head), _) => {
            // Reported a head: one parse of what was fed agrees.
            match http::parse(fed_bytes, limits) {
                Parsed::Complete { head: h, .. } => assert_eq!(&h, head, "pieces and whole differ"),
                other => panic!("the connection reported a head; one parse says {other:?}"),
            }
            let full = answer.as_deref().unwrap_or_default();
            // A HEAD request gets the answer's head only (SPEC §4).
            let want = match full.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) if head.method == "HEAD" => &full[..end + 4],
                _ => full,
            };
            assert!(
                out.starts_with(want),
                "wrote {:?}, answer was {:?}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want)
            );
            // Frames sent with the head may follow a 101; the checker
            // judges them. Nothing may follow any other response.
            let mut o = Output::new();
            o.accept = head
                .ws_key
                .as_deref()
                .map(|k| tungstenite::handshake::derive_accept_key(k.as_bytes()));
            if let Err(e) = o.feed(&out) {
                panic!("invalid output: {e}");
            }
        }
        (None, PhaseName::Head) => {
            // Still reading: nothing written, the head is not complete in
            // what was parsed, and the limit was not passed.
            assert!(out.is_empty(), "wrote while reading the head");
            assert!(fed <= limits.max_bytes, "kept reading past the size limit");
            let at_parse = http::parse(&req[..parsed_at], limits);
            assert_eq!(
                at_parse,
                Parsed::Partial,
                "the connection waits on a head one parse finishes"
            );
        }
        (None, _) => {
            // Refused while reading: the same refusal as one parse, and a
            // valid response for it.
            let s = status.expect("left the head phase without a response");
            let r = check_response(&out).unwrap_or_else(|e| panic!("invalid response: {e}"));
            assert_eq!(r.status, s, "wrote a status it did not report");
            match http::parse(fed_bytes, limits) {
                Parsed::Invalid(r) => {
                    // A buffer cut at the size limit may end in a 431 where
                    // the whole says 400 (the error lies past the limit).
                    assert!(
                        r.status == s || (s == 431 && fed > limits.max_bytes),
                        "pieces said {s}, whole says {}",
                        r.status
                    );
                }
                other => panic!("refused {s}; one parse says {other:?}"),
            }
        }
    }
}

/// One parse of the whole buffer, classified and admitted as the server
/// does, with every invariant of each step.
fn one_parse(req: &[u8], limits: HeadLimits, supported: &'static [&'static str], ws_path: &str) {
    let parsed = http::parse(req, limits);
    match &parsed {
        Parsed::Partial => {
            assert!(
                req.len() < limits.max_bytes,
                "partial at {} bytes",
                req.len()
            );
        }
        Parsed::Invalid(r) => {
            let h = check_response(&r.bytes).unwrap_or_else(|e| panic!("invalid refusal: {e}"));
            assert_eq!(h.status, r.status);
            assert!(
                matches!(r.status, 400 | 431),
                "parse refused with {}",
                r.status
            );
        }
        Parsed::Complete { head, len } => {
            let len = *len;
            assert!(
                len <= req.len() && len <= limits.max_bytes,
                "head of {len} bytes"
            );
            assert_eq!(
                http::parse(&req[..len], limits),
                Parsed::Complete {
                    head: head.clone(),
                    len
                },
                "the head depends on what follows it"
            );
            for k in [0, len / 2, len.saturating_sub(1)] {
                if k < len {
                    assert_eq!(
                        http::parse(&req[..k], limits),
                        Parsed::Partial,
                        "prefix {k}"
                    );
                }
            }
            assert!(!head.path.contains('?'), "query kept in {:?}", head.path);
            classified(head, supported, ws_path);
        }
    }
}

fn classified(head: &Head, supported: &'static [&'static str], ws_path: &str) {
    match http::classify(head, ws_path) {
        Request::Route(_) => {
            // HEAD is answered like GET (SPEC §4), without the body.
            assert!(
                matches!(head.method.as_str(), "GET" | "HEAD"),
                "{}",
                head.method
            );
            assert!(!head.has_body);
            assert!(matches!(
                head.path.as_str(),
                "/health" | "/metrics" | "/" | "/auth"
            ));
        }
        Request::Reject(r) => {
            let h = check_response(&r.bytes).unwrap_or_else(|e| panic!("invalid refusal: {e}"));
            assert_eq!(h.status, r.status);
            assert!((400..500).contains(&r.status), "refused with {}", r.status);
            let known = matches!(head.path.as_str(), "/health" | "/metrics" | "/" | "/auth")
                || head.path == ws_path;
            // An unknown path is 404, unless the request is refused as a
            // whole first (400: an HTTP/1.1 request without one Host).
            if known {
                assert_ne!(r.status, 404, "404 for {:?}", head.path);
            } else {
                assert!(
                    matches!(r.status, 404 | 400),
                    "{} for {:?}",
                    r.status,
                    head.path
                );
            }
        }
        Request::Upgrade(u) => {
            assert_eq!(head.method, "GET");
            assert_eq!(head.path, ws_path);
            assert!(head.wants_websocket && !head.has_body);
            assert_eq!(head.ws_version.as_deref(), Some("13"));
            assert_eq!(head.ws_key.as_deref(), Some(u.key.as_str()));
            assert_eq!(u.key.len(), 24, "key {:?}", u.key);
            assert_eq!(u.protocols, head.protocols);
            admitted(&u, supported);
        }
    }
}

fn admitted(u: &http::UpgradeRequest, supported: &'static [&'static str]) {
    let offered: Vec<&String> = u
        .protocols
        .iter()
        .filter(|p| !p.starts_with(auth::SUBPROTOCOL_PREFIX))
        .collect();
    let first_supported = offered.iter().find(|p| supported.contains(&p.as_str()));
    match pollcap::fuzzing::choose_subprotocol(&u.protocols, supported) {
        Ok(p) => {
            assert_eq!(p, first_supported.map(|s| s.as_str()), "chose {p:?}");
            let r = http::switching_protocols(&u.key, p);
            let h = check_response(&r).unwrap_or_else(|e| panic!("invalid 101: {e}"));
            assert_eq!(h.status, 101);
            let accept = tungstenite::handshake::derive_accept_key(u.key.as_bytes());
            assert_eq!(h.header("sec-websocket-accept"), Some(accept.as_str()));
            assert_eq!(h.header("sec-websocket-protocol"), p);
        }
        Err(r) => {
            assert!(first_supported.is_none(), "refused a supported protocol");
            let h = check_response(&r.bytes).unwrap_or_else(|e| panic!("invalid refusal: {e}"));
            assert_eq!(h.status, 400);
            let body = String::from_utf8_lossy(&r.bytes[h.head_len..]).into_owned();
            for s in supported {
                assert!(body.contains(s), "refusal does not name {s}: {body:?}");
            }
        }
    }
    match auth::token_from(u.authorization.as_deref(), &u.protocols) {
        None => {}
        Some(t) => match &u.authorization {
            Some(a) => {
                let (scheme, _) = a.trim().split_once(' ').expect("a token has a scheme");
                assert!(scheme.eq_ignore_ascii_case("bearer"), "scheme {scheme:?}");
                assert!(a.contains(t) && t == t.trim(), "token {t:?} from {a:?}");
            }
            None => assert!(
                u.protocols
                    .iter()
                    .any(|p| p.strip_prefix(auth::SUBPROTOCOL_PREFIX) == Some(t)),
                "token {t:?} from nowhere"
            ),
        },
    }
}
