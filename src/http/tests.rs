//! The request head parser and classifier against hand-written heads.

use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 1024,
    max_headers: 8,
};
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Parses and classifies, as the connection and the server do.
fn req(s: &str) -> Result<Request, Parsed> {
    match parse(s.as_bytes(), LIMITS) {
        Parsed::Complete { head, .. } => Ok(classify(&head, "/ws")),
        other => Err(other),
    }
}

fn status(p: Result<Request, Parsed>) -> u16 {
    match p {
        Ok(Request::Reject(r)) | Err(Parsed::Invalid(r)) => r.status,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn upgrade_req(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

#[test]
fn routes_and_statuses() {
    assert_eq!(req("GET /health HTTP/1.1\r\n"), Err(Parsed::Partial));
    assert_eq!(
        req("GET /health?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
        Ok(Request::Route(Route::Health))
    );
    assert_eq!(status(req("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")), 404);
    assert_eq!(status(req("POST /health HTTP/1.1\r\nHost: x\r\n\r\n")), 405);
    assert_eq!(status(req("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")), 426);
    assert_eq!(status(req("GARBAGE\x01\r\n\r\n")), 400);
    let many: String = (0..9).map(|i| format!("X-{i}: y\r\n")).collect();
    assert_eq!(
        status(req(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"))),
        431
    );
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
    assert_eq!(status(req(&long)), 431);
}

/// Found by the `settings` fuzz target: a large `max_headers` was
/// allocated as is on every parse (capacity overflow, a panic).
#[test]
fn the_header_limit_is_not_an_allocation_size() {
    let huge = HeadLimits {
        max_bytes: 1024,
        max_headers: usize::MAX,
    };
    let p = parse(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", huge);
    assert!(matches!(p, Parsed::Complete { .. }), "{p:?}");
    // The limit still holds exactly.
    let three = HeadLimits {
        max_bytes: 1024,
        max_headers: 3,
    };
    let head = |n: usize| {
        let h: String = (0..n).map(|i| format!("X-{i}: y\r\n")).collect();
        format!("GET / HTTP/1.1\r\n{h}\r\n")
    };
    assert!(matches!(
        parse(head(3).as_bytes(), three),
        Parsed::Complete { .. }
    ));
    assert_eq!(status(Err(parse(head(4).as_bytes(), three))), 431);
}

#[test]
fn host_is_required_once_in_http_1_1() {
    // RFC 9112 §3.2: missing in HTTP/1.1, or repeated in any version.
    for r in [
        "GET /health HTTP/1.1\r\n\r\n",
        "GET /nope HTTP/1.1\r\n\r\n",
        "POST /health HTTP/1.1\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /health HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
    ] {
        assert_eq!(status(req(r)), 400, "{r:?}");
    }
    assert_eq!(
        status(req(&upgrade_req("").replace("Host: x\r\n", ""))),
        400
    );
    // HTTP/1.0 had no Host requirement.
    assert_eq!(
        req("GET /health HTTP/1.0\r\n\r\n"),
        Ok(Request::Route(Route::Health))
    );
}

#[test]
fn head_is_get_without_the_body() {
    for (path, route) in [
        ("/health", Route::Health),
        ("/metrics", Route::Metrics),
        ("/", Route::Index),
    ] {
        let r = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(req(&r), Ok(Request::Route(route)));
    }
    assert_eq!(status(req("HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n")), 404);
    // A HEAD cannot upgrade, even with the upgrade headers.
    let head_ws = upgrade_req("").replacen("GET", "HEAD", 1);
    assert_eq!(status(req(&head_ws)), 426);
    let Ok(Request::Reject(r)) = req("PUT / HTTP/1.1\r\nHost: x\r\n\r\n") else {
        panic!("PUT is refused")
    };
    assert!(
        String::from_utf8(r.bytes)
            .unwrap()
            .contains("Allow: GET, HEAD\r\n"),
        "405 names both methods"
    );
    let full = text(404, "Not Found", "not found\n");
    let head = without_body(full.clone());
    let s = String::from_utf8(head.bytes).unwrap();
    assert!(
        s.ends_with("Content-Length: 10\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"),
        "{s}"
    );
    assert_eq!(head.status, 404);
    assert_eq!(full.bytes.len(), s.len() + 10);
}

#[test]
fn upgrade_parses_key_and_protocols() {
    let p = req(&upgrade_req(
        "Sec-WebSocket-Protocol: a, agent_chat\r\nSec-WebSocket-Protocol: b\r\n",
    ));
    let Ok(Request::Upgrade(u)) = p else {
        panic!("{p:?}")
    };
    assert_eq!(u.key, KEY);
    assert_eq!(u.protocols, ["a", "agent_chat", "b"]);
    assert_eq!(
        select_protocol(&u.protocols, &["b", "agent_chat"]),
        Some("agent_chat")
    );
    assert_eq!(select_protocol(&u.protocols, &["zzz"]), None);
}

#[test]
fn bad_upgrade_headers() {
    let wrong_version = upgrade_req("").replace("Version: 13", "Version: 8");
    assert_eq!(status(req(&wrong_version)), 426);
    let no_key = upgrade_req("").replace(KEY, "short");
    assert_eq!(status(req(&no_key)), 400);
    let body = upgrade_req("Content-Length: 5\r\n");
    assert_eq!(status(req(&body)), 400);
}

#[test]
fn ambiguous_requests_get_400_naming_the_header() {
    for name in SINGLE_HEADERS {
        let value = match name {
            "Sec-WebSocket-Key" => KEY,
            "Sec-WebSocket-Version" => "13",
            "Origin" => "http://x",
            _ => "Bearer a.b.c",
        };
        // A second copy, in another case, after the first.
        let r = upgrade_req(&format!("{}: {value}\r\n", name.to_ascii_lowercase()));
        let r = if matches!(name, "Host" | "Sec-WebSocket-Key" | "Sec-WebSocket-Version") {
            r
        } else {
            r.replace("\r\n\r\n", &format!("\r\n{name}: {value}\r\n\r\n"))
        };
        let Err(Parsed::Invalid(resp)) = req(&r) else {
            panic!("{name}: {r:?} passed")
        };
        let body = String::from_utf8(resp.bytes).unwrap();
        assert_eq!(resp.status, 400, "{name}");
        assert!(
            body.ends_with(&format!("more than one {name} header\n")),
            "{body}"
        );
    }
    // Repeated list headers are one list (RFC 9110 §5.3), not ambiguous.
    let p = req(&upgrade_req(
        "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n",
    ));
    let Ok(Request::Upgrade(u)) = p else {
        panic!("{p:?}")
    };
    assert_eq!(u.forwarded_for.as_deref(), Some("1.1.1.1,2.2.2.2"));
}

#[test]
fn two_credentials_get_400() {
    for extra in [
        "Authorization: Bearer a.b.c\r\nSec-WebSocket-Protocol: agent_chat, bearer.d.e.f\r\n",
        "Authorization: Bearer a.b.c\r\nSec-WebSocket-Protocol: bearer.a.b.c\r\n",
        "Sec-WebSocket-Protocol: bearer.x, agent_chat, bearer.y\r\n",
    ] {
        assert_eq!(status(req(&upgrade_req(extra))), 400, "{extra}");
    }
    for one in [
        "Authorization: Bearer a.b.c\r\nSec-WebSocket-Protocol: agent_chat\r\n",
        "Sec-WebSocket-Protocol: agent_chat, bearer.a.b.c\r\n",
    ] {
        assert!(
            matches!(req(&upgrade_req(one)), Ok(Request::Upgrade(_))),
            "{one}"
        );
    }
}

#[test]
fn absolute_form_targets_are_accepted() {
    // RFC 9112 §3.2.2: the target's authority replaces Host.
    let r = "GET http://example.com:8080/health?x=1 HTTP/1.1\r\nHost: other\r\n\r\n";
    let Parsed::Complete { head, .. } = parse(r.as_bytes(), LIMITS) else {
        panic!()
    };
    assert_eq!(head.path, "/health");
    assert_eq!(head.host.as_deref(), Some("example.com:8080"));
    assert_eq!(classify(&head, "/ws"), Request::Route(Route::Health));
    for target in ["HTTPS://h", "http://h?x=1"] {
        let r = format!("GET {target} HTTP/1.1\r\n\r\n");
        assert_eq!(req(&r), Ok(Request::Route(Route::Index)), "{target}");
    }
    let ws = upgrade_req("").replace("GET /ws", "GET http://x/ws");
    assert!(matches!(req(&ws), Ok(Request::Upgrade(_))));
    assert_eq!(
        status(req("GET ftp://x/health HTTP/1.1\r\nHost: x\r\n\r\n")),
        404
    );
}

#[test]
fn accept_key_matches_rfc_example() {
    let r = String::from_utf8(switching_protocols(KEY, Some("agent_chat"))).unwrap();
    assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(r.contains("Sec-WebSocket-Protocol: agent_chat\r\n"));
    assert!(r.ends_with("\r\n\r\n"));
}

#[test]
fn responses_carry_length_and_close() {
    let r = with_header(
        text(503, "Service Unavailable", "busy\n"),
        "Retry-After",
        "1",
    );
    let s = String::from_utf8(r.bytes).unwrap();
    assert!(s.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    assert!(s.contains("Content-Length: 5\r\n"));
    assert!(s.contains("Connection: close\r\n"));
    assert!(s.contains("Retry-After: 1\r\n\r\nbusy\n"));
}

#[test]
fn the_query_and_every_header_line_are_kept_for_the_application() {
    let r: &[u8] = b"GET /ws?room=42&who=a%20b HTTP/1.1\r\nHost: t\r\nX-Tenant:  acme \r\n\
             x-tag: 1\r\nX-Tag: 2\r\nX-Bin: caf\xe9\r\n\r\n";
    let Parsed::Complete { head, .. } = parse(r, LIMITS) else {
        panic!()
    };
    assert_eq!(head.path, "/ws");
    assert_eq!(head.query.as_deref(), Some("room=42&who=a%20b"));
    let pairs: Vec<(&str, &str)> = head
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("Host", "t"),
            ("X-Tenant", "acme"),
            ("x-tag", "1"),
            ("X-Tag", "2"),
            ("X-Bin", "caf\u{fffd}"),
        ]
    );
    let Parsed::Complete { head, .. } = parse(b"GET /ws HTTP/1.1\r\n\r\n", LIMITS) else {
        panic!()
    };
    assert_eq!(head.query, None);
    assert_eq!(reason_phrase(403), "Forbidden");
    assert_eq!(reason_phrase(599), "");
}
