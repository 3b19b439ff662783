//! The plain-HTTP front before the upgrade: parse one request head with
//! `httparse` under size and header-count limits, decide what it asks for,
//! and build complete responses (always `Content-Length`, `Connection: close`
//! unless upgraded).

use std::fmt::Write;

/// Limits on the request head.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Bytes of request line + headers; over it → 431.
    pub max_bytes: usize,
    /// Header lines; over it → 431.
    pub max_headers: usize,
}

/// The parts of an upgrade request the server acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpgradeRequest {
    pub key: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Every offered subprotocol, in the client's order.
    pub protocols: Vec<String>,
}

/// What a complete request head asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET <ws path>` with valid upgrade headers.
    Upgrade(UpgradeRequest),
    /// Another `GET` route (`/health`, `/metrics`, `/`).
    Route(Route),
    /// Something to refuse with this response.
    Reject(Response),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    Index,
}

/// Outcome of feeding the buffered bytes to the parser.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Need more bytes.
    Partial,
    /// A complete head of `len` bytes.
    Complete { request: Request, len: usize },
}

/// A fully formed HTTP/1.1 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub bytes: Vec<u8>,
}

/// Parses `buf` as a request head for a server whose WebSocket path is `ws_path`.
pub fn parse(buf: &[u8], limits: HeadLimits, ws_path: &str) -> Parsed {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_bytes => {
            return complete(too_large(), buf.len());
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return complete(too_large(), buf.len()),
        Err(e) => {
            return complete(
                text(400, "Bad Request", &format!("malformed request: {e}\n")),
                buf.len(),
            );
        }
    };
    if len > limits.max_bytes {
        return complete(too_large(), len);
    }
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let method = req.method.unwrap_or("");
    let route = match path {
        "/health" => Some(Route::Health),
        "/metrics" => Some(Route::Metrics),
        "/" => Some(Route::Index),
        p if p == ws_path => None,
        _ => return complete(text(404, "Not Found", "not found\n"), len),
    };
    if method != "GET" {
        let mut r = text(405, "Method Not Allowed", "only GET is allowed here\n");
        r = with_header(r, "Allow", "GET");
        return complete(r, len);
    }
    // A body on a GET is not something this server reads: refuse it rather
    // than leave unread bytes that would turn into a reset.
    if header(req.headers, "content-length").is_some_and(|v| v.trim() != "0")
        || header(req.headers, "transfer-encoding").is_some()
    {
        return complete(
            text(400, "Bad Request", "GET requests must not have a body\n"),
            len,
        );
    }
    let request = match route {
        Some(r) => Request::Route(r),
        None => upgrade(req.headers),
    };
    Parsed::Complete { request, len }
}

fn complete(r: Response, len: usize) -> Parsed {
    Parsed::Complete {
        request: Request::Reject(r),
        len,
    }
}

fn too_large() -> Response {
    text(
        431,
        "Request Header Fields Too Large",
        "request head too large or too many headers\n",
    )
}

fn upgrade(headers: &[httparse::Header]) -> Request {
    let has_token = |name: &str, token: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        let r = text(
            426,
            "Upgrade Required",
            "this path serves WebSocket only: send Upgrade: websocket\n",
        );
        return Request::Reject(upgrade_required(r));
    }
    if header(headers, "sec-websocket-version").map(str::trim) != Some("13") {
        let r = text(
            426,
            "Upgrade Required",
            "unsupported Sec-WebSocket-Version; this server speaks 13\n",
        );
        return Request::Reject(upgrade_required(r));
    }
    let key = match header(headers, "sec-websocket-key").map(str::trim) {
        Some(k) if valid_key(k) => k.to_string(),
        _ => {
            return Request::Reject(text(
                400,
                "Bad Request",
                "missing or invalid Sec-WebSocket-Key\n",
            ));
        }
    };
    let protocols = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let authorization = header(headers, "authorization").map(str::to_string);
    Request::Upgrade(UpgradeRequest {
        key,
        authorization,
        protocols,
    })
}

/// RFC 6455 §4.1: the key is 16 random bytes, base64-encoded (24 chars).
fn valid_key(k: &str) -> bool {
    k.len() == 24
        && k.ends_with("==")
        && k[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn upgrade_required(r: Response) -> Response {
    with_header(
        with_header(r, "Upgrade", "websocket"),
        "Sec-WebSocket-Version",
        "13",
    )
}

fn header<'a>(headers: &'a [httparse::Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// Chooses the first offered protocol the server supports (client order).
pub fn select_protocol<'a>(offered: &[String], supported: &[&'a str]) -> Option<&'a str> {
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
}

/// The `101 Switching Protocols` response.
pub fn switching_protocols(key: &str, protocol: Option<&str>) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut s = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        let _ = write!(s, "Sec-WebSocket-Protocol: {p}\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// A response with a body of the given content type.
pub fn response(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Response {
    let mut bytes = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    Response { status, bytes }
}

/// A plain-text response.
pub fn text(status: u16, reason: &str, body: &str) -> Response {
    response(status, reason, "text/plain; charset=utf-8", body.as_bytes())
}

/// Adds a header to a built response (before the blank line).
pub fn with_header(mut r: Response, name: &str, value: &str) -> Response {
    let end = r
        .bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("built responses have a head");
    let line = format!("\r\n{name}: {value}");
    r.bytes.splice(end..end, line.into_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 1024,
        max_headers: 8,
    };
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn req(s: &str) -> Parsed {
        parse(s.as_bytes(), LIMITS, "/ws")
    }

    fn status(p: Parsed) -> u16 {
        match p {
            Parsed::Complete {
                request: Request::Reject(r),
                ..
            } => r.status,
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
        assert_eq!(req("GET /health HTTP/1.1\r\n"), Parsed::Partial);
        assert!(matches!(
            req("GET /health?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Complete {
                request: Request::Route(Route::Health),
                ..
            }
        ));
        assert_eq!(status(req("GET /nope HTTP/1.1\r\n\r\n")), 404);
        assert_eq!(status(req("POST /health HTTP/1.1\r\n\r\n")), 405);
        assert_eq!(status(req("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")), 426);
        assert_eq!(status(req("GARBAGE\x01\r\n\r\n")), 400);
        let many: String = (0..9).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(status(req(&format!("GET / HTTP/1.1\r\n{many}\r\n"))), 431);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
        assert_eq!(status(req(&long)), 431);
    }

    #[test]
    fn upgrade_parses_key_and_protocols() {
        let p = req(&upgrade_req(
            "Sec-WebSocket-Protocol: a, agent_chat\r\nSec-WebSocket-Protocol: b\r\n",
        ));
        let Parsed::Complete {
            request: Request::Upgrade(u),
            ..
        } = p
        else {
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
}
