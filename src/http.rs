//! The plain-HTTP front before the upgrade: parse one request head with
//! `httparse` under size and header-count limits ([`parse`]), decide what
//! it asks for ([`classify`]), and build complete responses (always
//! `Content-Length`, `Connection: close` unless upgraded). Pure functions:
//! the connection parses, the server classifies and answers.

use std::fmt::Write;

/// Limits on the request head.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Bytes of request line + headers; over it → 431.
    pub max_bytes: usize,
    /// Header lines; over it → 431.
    pub max_headers: usize,
}

/// The parts of a request head the server acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor_version: u8,
    pub host: Option<String>,
    /// `Upgrade: websocket` and `Connection: upgrade` were both present.
    pub wants_websocket: bool,
    pub ws_version: Option<String>,
    pub ws_key: Option<String>,
    /// Every offered subprotocol, in the client's order.
    pub protocols: Vec<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// A `Content-Length` other than 0, or any `Transfer-Encoding`.
    pub has_body: bool,
    /// Every `Sec-WebSocket-Extensions` value, in order (the client's
    /// extension offers, e.g. permessage-deflate).
    pub extensions: Vec<String>,
    /// The `User-Agent` header, if any (a client whose compression is
    /// known broken is not offered it).
    pub user_agent: Option<String>,
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
    /// Another `GET` (or `HEAD`) route (`/health`, `/metrics`, `/`, `/auth`).
    Route(Route),
    /// Something to refuse with this response.
    Reject(Response),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    /// `/`: the built-in page.
    Index,
    /// `/auth`: checks the request's bearer token (200 or 401).
    Auth,
}

/// Outcome of feeding the buffered bytes to the parser.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Need more bytes.
    Partial,
    /// A complete head of `len` bytes.
    Complete { head: Box<Head>, len: usize },
    /// Not a request this server can read (400, 431).
    Invalid(Response),
}

/// A fully formed HTTP/1.1 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub bytes: Vec<u8>,
}

/// Parses `buf` as a request head.
pub fn parse(buf: &[u8], limits: HeadLimits) -> Parsed {
    // Room for every header line the buffer can hold, up to the limit: the
    // shortest is 3 bytes (`a:\n`), so what a parse allocates follows the
    // bytes received, never the configured limit alone (a limit of 10^12
    // must not allocate 32 TB), without scanning the buffer for it.
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers.min(buf.len() / 3 + 1)];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_bytes => {
            return Parsed::Invalid(too_large());
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Invalid(too_large()),
        Err(e) => {
            return Parsed::Invalid(text(
                400,
                "Bad Request",
                &format!("malformed request: {e}\n"),
            ));
        }
    };
    if len > limits.max_bytes {
        return Parsed::Invalid(too_large());
    }
    let path = req.path.unwrap_or("/");
    let h = req.headers;
    // RFC 9112 §3.2: more than one Host is a 400 whatever the version
    // (which one would the request be for?).
    if values(h, "host").nth(1).is_some() {
        return Parsed::Invalid(text(400, "Bad Request", "more than one Host header\n"));
    }
    let has_token = |name: &str, token: &str| {
        values(h, name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let head = Head {
        method: req.method.unwrap_or("").to_string(),
        path: path.split('?').next().unwrap_or(path).to_string(),
        minor_version: req.version.unwrap_or(1),
        host: header(h, "host").map(|v| v.trim().to_string()),
        wants_websocket: has_token("upgrade", "websocket") && has_token("connection", "upgrade"),
        ws_version: header(h, "sec-websocket-version").map(|v| v.trim().to_string()),
        ws_key: header(h, "sec-websocket-key").map(|v| v.trim().to_string()),
        protocols: values(h, "sec-websocket-protocol")
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        authorization: header(h, "authorization").map(str::to_string),
        has_body: header(h, "content-length").is_some_and(|v| v.trim() != "0")
            || header(h, "transfer-encoding").is_some(),
        extensions: values(h, "sec-websocket-extensions")
            .map(str::to_string)
            .collect(),
        user_agent: header(h, "user-agent").map(str::to_string),
    };
    Parsed::Complete {
        head: Box::new(head),
        len,
    }
}

/// Decides what a head asks of a server whose WebSocket path is `ws_path`.
/// `HEAD` is classified as `GET` (the connection leaves the body out).
pub fn classify(head: &Head, ws_path: &str) -> Request {
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400, whatever
    // it asks for.
    if head.minor_version >= 1 && head.host.is_none() {
        return Request::Reject(text(
            400,
            "Bad Request",
            "HTTP/1.1 request without a Host header\n",
        ));
    }
    let route = match head.path.as_str() {
        "/health" => Some(Route::Health),
        "/metrics" => Some(Route::Metrics),
        "/" => Some(Route::Index),
        "/auth" => Some(Route::Auth),
        p if p == ws_path => None,
        _ => return Request::Reject(text(404, "Not Found", "not found\n")),
    };
    let head_request = head.method == "HEAD";
    if head.method != "GET" && !head_request {
        let r = text(
            405,
            "Method Not Allowed",
            "only GET and HEAD are allowed here\n",
        );
        return Request::Reject(with_header(r, "Allow", "GET, HEAD"));
    }
    // A body on a GET is not something this server reads: refuse it rather
    // than leave unread bytes that would turn into a reset.
    if head.has_body {
        return Request::Reject(text(
            400,
            "Bad Request",
            "GET requests must not have a body\n",
        ));
    }
    match route {
        Some(r) => Request::Route(r),
        // A HEAD cannot upgrade: it gets what a GET without the upgrade
        // headers gets (426), without the body.
        None if head_request => Request::Reject(not_websocket()),
        None => upgrade(head),
    }
}

fn too_large() -> Response {
    text(
        431,
        "Request Header Fields Too Large",
        "request head too large or too many headers\n",
    )
}

fn not_websocket() -> Response {
    let r = text(
        426,
        "Upgrade Required",
        "this path serves WebSocket only: send Upgrade: websocket\n",
    );
    upgrade_required(r)
}

fn upgrade(head: &Head) -> Request {
    if !head.wants_websocket {
        return Request::Reject(not_websocket());
    }
    if head.ws_version.as_deref() != Some("13") {
        let r = text(
            426,
            "Upgrade Required",
            "unsupported Sec-WebSocket-Version; this server speaks 13\n",
        );
        return Request::Reject(upgrade_required(r));
    }
    let key = match head.ws_key.as_deref() {
        Some(k) if valid_key(k) => k.to_string(),
        _ => {
            return Request::Reject(text(
                400,
                "Bad Request",
                "missing or invalid Sec-WebSocket-Key\n",
            ));
        }
    };
    Request::Upgrade(UpgradeRequest {
        key,
        authorization: head.authorization.clone(),
        protocols: head.protocols.clone(),
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

fn values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &'a str) -> Option<&'a str> {
    values(headers, name).next()
}

/// Chooses the first offered protocol the server supports (client order).
pub fn select_protocol<'a>(offered: &[String], supported: &[&'a str]) -> Option<&'a str> {
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
}

/// The `101 Switching Protocols` response.
pub fn switching_protocols(key: &str, protocol: Option<&str>) -> Vec<u8> {
    switching_protocols_with(key, protocol, None)
}

/// The `101 Switching Protocols` response, with the negotiated
/// `Sec-WebSocket-Extensions` value if any.
pub fn switching_protocols_with(
    key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut s = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        let _ = write!(s, "Sec-WebSocket-Protocol: {p}\r\n");
    }
    if let Some(e) = extensions {
        let _ = write!(s, "Sec-WebSocket-Extensions: {e}\r\n");
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

/// The response to a HEAD request: the same head (its `Content-Length`
/// still the body's), no body.
pub fn without_body(mut r: Response) -> Response {
    if let Some(end) = r.bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        r.bytes.truncate(end + 4);
    }
    r
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
            s.ends_with(
                "Content-Length: 10\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"
            ),
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
