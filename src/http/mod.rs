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
    /// The method, as sent (`GET`, `HEAD`…).
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// The query string (after `?`, undecoded), if the target had one.
    pub query: Option<String>,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor_version: u8,
    /// The `Host` header, if any.
    pub host: Option<String>,
    /// `Upgrade: websocket` and `Connection: upgrade` were both present.
    pub wants_websocket: bool,
    /// `Sec-WebSocket-Version`, if any (only `13` is accepted).
    pub ws_version: Option<String>,
    /// `Sec-WebSocket-Key`, if any.
    pub ws_key: Option<String>,
    /// Every offered subprotocol, in the client's order.
    pub protocols: Vec<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Origin` header, if any (a browser's request).
    pub origin: Option<String>,
    /// Every `X-Forwarded-For` line, joined with `,` (one list).
    pub forwarded_for: Option<String>,
    /// Every `Forwarded` line, joined with `,` (one list).
    pub forwarded: Option<String>,
    /// The W3C `traceparent` header, if any (not checked here).
    pub traceparent: Option<String>,
    /// A `Content-Length` other than 0, or any `Transfer-Encoding`.
    pub has_body: bool,
    /// Every `Sec-WebSocket-Extensions` value, in order (the client's
    /// extension offers, e.g. permessage-deflate).
    pub extensions: Vec<String>,
    /// The `User-Agent` header, if any (a client whose compression is
    /// known broken is not offered it).
    pub user_agent: Option<String>,
    /// Every header line in order: its name as sent, its value trimmed
    /// (not UTF-8: replaced lossily). For the application's `open`;
    /// bounded by the head limits like the rest.
    pub headers: Vec<(String, String)>,
}

/// The parts of an upgrade request the server acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// `Sec-WebSocket-Key`, answered in `Sec-WebSocket-Accept`.
    pub key: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Every offered subprotocol, in the client's order.
    pub protocols: Vec<String>,
    /// The `Host` header, if any.
    pub host: Option<String>,
    /// The `Origin` header, if any (a browser's request).
    pub origin: Option<String>,
    /// Every `X-Forwarded-For` line, joined with `,`.
    pub forwarded_for: Option<String>,
    /// Every `Forwarded` line, joined with `,`.
    pub forwarded: Option<String>,
    /// The W3C `traceparent` header, if any.
    pub traceparent: Option<String>,
}

/// Prefix of the browser form of a bearer token inside
/// `Sec-WebSocket-Protocol` (`bearer.<token>`): a credential, never a
/// protocol.
pub const SUBPROTOCOL_PREFIX: &str = "bearer.";

/// Headers a request may carry once only: two copies make it ambiguous
/// (a proxy in front may read the other one), so it gets 400 naming the
/// header. `Host` is RFC 9112 §3.2's; the rest carry a credential, the
/// browser's origin or the handshake itself.
pub const SINGLE_HEADERS: [&str; 5] = [
    "Host",
    "Authorization",
    "Origin",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
];

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

/// A plain-HTTP route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/health`: JSON of the server's state (503 while draining).
    Health,
    /// `/metrics`: Prometheus text.
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
    Complete {
        /// The head.
        head: Box<Head>,
        /// Its length in the buffer; bytes after it came after the head.
        len: usize,
    },
    /// Not a request this server can read (400, 431).
    Invalid(Response),
}

/// A fully formed HTTP/1.1 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code (for metrics and logs).
    pub status: u16,
    /// The whole response: status line, headers and body.
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
    let h = req.headers;
    // RFC 9112 §3.2: more than one Host is a 400 whatever the version
    // (which one would the request be for?); so is any other header whose
    // copies could be read differently by a proxy and by this server.
    for name in SINGLE_HEADERS {
        if values(h, name).nth(1).is_some() {
            let body = format!("more than one {name} header\n");
            return Parsed::Invalid(text(400, "Bad Request", &body));
        }
    }
    let target = req.path.unwrap_or("/");
    // RFC 9112 §3.2.2: a server accepts the absolute form
    // (`GET http://host/health`), and its authority replaces Host.
    let (authority, path) = match absolute_form(target) {
        Some((authority, path)) => (Some(authority), path),
        None => (None, target),
    };
    let has_token = |name: &str, token: &str| {
        values(h, name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (path, None),
    };
    let head = Head {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query,
        minor_version: req.version.unwrap_or(1),
        host: authority
            .map(str::to_string)
            .or_else(|| header(h, "host").map(|v| v.trim().to_string())),
        wants_websocket: has_token("upgrade", "websocket") && has_token("connection", "upgrade"),
        ws_version: header(h, "sec-websocket-version").map(|v| v.trim().to_string()),
        ws_key: header(h, "sec-websocket-key").map(|v| v.trim().to_string()),
        protocols: values(h, "sec-websocket-protocol")
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        authorization: header(h, "authorization").map(str::to_string),
        origin: header(h, "origin").map(|v| v.trim().to_string()),
        forwarded_for: joined(h, "x-forwarded-for"),
        forwarded: joined(h, "forwarded"),
        traceparent: header(h, "traceparent").map(str::to_string),
        has_body: header(h, "content-length").is_some_and(|v| v.trim() != "0")
            || header(h, "transfer-encoding").is_some(),
        extensions: values(h, "sec-websocket-extensions")
            .map(str::to_string)
            .collect(),
        user_agent: header(h, "user-agent").map(str::to_string),
        headers: h
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value);
                (h.name.to_string(), value.trim().to_string())
            })
            .collect(),
    };
    Parsed::Complete {
        head: Box::new(head),
        len,
    }
}

/// `scheme://authority/path?query` → (authority, `/path?query`), for
/// http and https targets; `None` for the origin form (`/path`).
fn absolute_form(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // The authority never carries user info for http(s) (RFC 9110 §4.2.4).
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    // `http://h` and `http://h?q` ask for `/`.
    let path = if path.is_empty() || path.starts_with('?') {
        "/"
    } else {
        path
    };
    Some((authority, path))
}

/// Every line of header `name`, joined as one comma-separated list.
fn joined(headers: &[httparse::Header], name: &str) -> Option<String> {
    let v: Vec<&str> = values(headers, name).map(str::trim).collect();
    (!v.is_empty()).then(|| v.join(","))
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
    // Two credentials are ambiguous: which one would a gateway in front
    // have checked?
    let entries = head
        .protocols
        .iter()
        .filter(|p| p.starts_with(SUBPROTOCOL_PREFIX))
        .count();
    if entries + usize::from(head.authorization.is_some()) > 1 {
        return Request::Reject(text(
            400,
            "Bad Request",
            "two credentials: send one token, in Authorization or as one bearer.<token> \
             subprotocol entry\n",
        ));
    }
    Request::Upgrade(UpgradeRequest {
        key,
        authorization: head.authorization.clone(),
        protocols: head.protocols.clone(),
        host: head.host.clone(),
        origin: head.origin.clone(),
        forwarded_for: head.forwarded_for.clone(),
        forwarded: head.forwarded.clone(),
        traceparent: head.traceparent.clone(),
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

/// The reason phrase of a status the server may answer with (RFC 9110
/// §15); a status without one here gets an empty phrase, which HTTP/1.1
/// allows (clients read the code, not the phrase).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
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
mod tests;
