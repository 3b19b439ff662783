//! The built-in page (`GET /`, SPEC §4): one self-contained document — its
//! stylesheet and script inlined, all embedded at build time — served under
//! a Content-Security-Policy that lets exactly that style and that script
//! run (by SHA-256 hash) and lets the page talk to this origin only.
//!
//! Why hashes rather than `script-src 'self'` with separate files: one
//! request, one route, and nothing but these exact bytes can execute — not
//! even another script served by this origin.

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::http::{self, Response};

const TEMPLATE: &str = include_str!("page/index.html");
const STYLE: &str = include_str!("page/page.css");
const SCRIPT: &str = include_str!("page/page.js");

/// Where the configured WebSocket path goes (a `<meta>` the script reads,
/// so the script's bytes and hash do not depend on the configuration).
const WS_PATH_SLOT: &str = "%WS_PATH%";

/// The document with style and script inlined, and its policy's hashes.
struct Assembled {
    html: String,
    style_hash: String,
    script_hash: String,
}

static PAGE: LazyLock<Assembled> = LazyLock::new(|| {
    let hash = |s: &str| format!("'sha256-{}'", B64.encode(sha256(s)));
    Assembled {
        html: TEMPLATE
            .replace("<!--STYLE-->", &format!("<style>{STYLE}</style>"))
            .replace("<!--SCRIPT-->", &format!("<script>{SCRIPT}</script>")),
        style_hash: hash(STYLE),
        script_hash: hash(SCRIPT),
    }
});

/// The page for a server whose WebSocket path is `ws_path`, requested with
/// `Host: host`.
pub(super) fn response(ws_path: &str, host: Option<&str>) -> Response {
    let page = &*PAGE;
    let body = page.html.replace(WS_PATH_SLOT, &escape(ws_path));
    let r = http::response(200, "OK", "text/html; charset=utf-8", body.as_bytes());
    let r = http::with_header(r, "Content-Security-Policy", &policy(page, host));
    let r = http::with_header(r, "X-Content-Type-Options", "nosniff");
    http::with_header(r, "Referrer-Policy", "no-referrer")
}

/// Nothing by default; the inline style and script by hash; connections
/// (fetch of `/health` and `/auth`, the WebSocket) to this origin only.
/// CSP 3 lets `'self'` match `ws:`/`wss:` on the same host, but browsers
/// that predate that rule need the WebSocket origins spelled out: they are
/// built from `Host` when it is a plain `host[:port]` (anything else is not
/// reflected, and `'self'` alone remains).
fn policy(page: &Assembled, host: Option<&str>) -> String {
    let mut connect = String::from("'self'");
    if let Some(h) = host.filter(|h| plain_host(h)) {
        connect.push_str(&format!(" ws://{h} wss://{h}"));
    }
    format!(
        "default-src 'none'; script-src {}; style-src {}; img-src data:; connect-src {connect}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        page.script_hash, page.style_hash
    )
}

/// A `Host` value safe to put in a header: DNS name, IPv4 or `[IPv6]`,
/// optional port; nothing that could end or extend the policy.
fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The SHA-256 of `s`, for a CSP source hash.
fn sha256(s: &str) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(r: &Response) -> (String, String) {
        let s = String::from_utf8(r.bytes.clone()).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    fn between<'a>(s: &'a str, open: &str, close: &str) -> Vec<&'a str> {
        s.split(open)
            .skip(1)
            .map(|rest| rest.split(close).next().unwrap())
            .collect()
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_style_and_script() {
        let (head, body) = parts(&response("/ws", Some("127.0.0.1:8765")));
        let csp = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
            .expect("a CSP header");
        let hash = |s: &str| format!("'sha256-{}'", B64.encode(sha256(s)));
        let scripts = between(&body, "<script>", "</script>");
        let styles = between(&body, "<style>", "</style>");
        assert_eq!((scripts.len(), styles.len()), (1, 1));
        assert!(
            csp.contains(&format!("script-src {};", hash(scripts[0]))),
            "{csp}"
        );
        assert!(
            csp.contains(&format!("style-src {};", hash(styles[0]))),
            "{csp}"
        );
        assert!(csp.starts_with("default-src 'none';"));
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(
            csp.contains("connect-src 'self' ws://127.0.0.1:8765 wss://127.0.0.1:8765;"),
            "{csp}"
        );
        // Nothing else may carry script: no handler attributes, no other
        // <script> forms, no style attributes (blocked by a hash policy).
        for bad in [
            " onclick=",
            " onload=",
            "<script ",
            " style=\"",
            "javascript:",
        ] {
            assert!(!body.contains(bad), "{bad} in the page");
        }
    }

    #[test]
    fn nothing_comes_from_another_host() {
        let (_, body) = parts(&response("/ws", None));
        for attr in ["src=", "href=", "url("] {
            for v in between(&body, attr, ">") {
                let v = v.trim_start_matches(['"', '\'']);
                assert!(
                    !v.starts_with("http") && !v.starts_with("//"),
                    "{attr}{v} loads from another host"
                );
            }
        }
        assert!(!body.contains("@import"));
        // Small: a page, not an application bundle.
        assert!(body.len() < 48 * 1024, "{} bytes", body.len());
    }

    #[test]
    fn ws_path_is_escaped_and_odd_hosts_are_not_reflected() {
        let (head, body) = parts(&response("/x\"><script>", Some("evil\r\nX: y")));
        assert!(body.contains("content=\"/x&quot;&gt;&lt;script&gt;\""));
        assert!(!body.contains("/x\"><script>"));
        assert!(head.contains("connect-src 'self'; base-uri"), "{head}");
        assert!(!head.contains("evil"));
        let (head, _) = parts(&response("/ws", Some("[::1]:80")));
        assert!(head.contains("ws://[::1]:80 wss://[::1]:80"));
    }
}
