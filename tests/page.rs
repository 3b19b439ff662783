//! The built-in page and the token check it relies on, over loopback for
//! both backends: `GET /` carries its Content-Security-Policy and the
//! configured WebSocket path; `GET /auth` answers 200 or 401 exactly as an
//! upgrade would decide. (The page's behaviour in a real browser is
//! `tests/browser/`.)

mod common;

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use pollcap::auth::{self, Auth};
use pollcap::settings::Settings;

const SECRET: &[u8] = b"page-test-secret-0123456789";

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(": ")?;
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

fn get_with(addr: std::net::SocketAddr, path: &str, extra: &str) -> String {
    raw_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n").as_bytes(),
        std::time::Duration::from_secs(5),
    )
}

#[test]
fn the_page_is_served_with_a_strict_policy_and_the_ws_path() {
    each_backend(|kind| {
        let srv = start(kind, &[("POLLCAP_WS_PATH", "/chat")], |_| {});
        let r = get(srv.local_addr(), "/");
        assert_eq!(status_of(&r), 200, "{r}");
        assert_eq!(header(&r, "Content-Type"), Some("text/html; charset=utf-8"));
        let csp = header(&r, "Content-Security-Policy").expect("a CSP");
        assert!(
            csp.starts_with("default-src 'none'; script-src 'sha256-"),
            "{csp}"
        );
        assert!(csp.contains("connect-src 'self' ws://t wss://t;"), "{csp}");
        assert_eq!(header(&r, "X-Content-Type-Options"), Some("nosniff"));
        let body = body_of(&r);
        assert!(body.contains(r#"<meta name="pollcap-ws-path" content="/chat">"#));
        for id in ["message", "send", "transcript", "status", "token", "health"] {
            assert!(body.contains(&format!("id=\"{id}\"")), "#{id} missing");
        }
    });
}

#[test]
fn auth_check_answers_like_an_upgrade() {
    each_backend(|kind| {
        // Authentication off: nothing to check.
        let open = start(kind, &[], |_| {});
        let r = get(open.local_addr(), "/auth");
        assert_eq!(status_of(&r), 200);
        assert_eq!(body_of(&r), r#"{"auth":false}"#);

        let srv = start(kind, &[], |cfg| {
            cfg.auth = Some(Auth::new(Some(SECRET.to_vec()), HashSet::new()));
        });
        let a = srv.local_addr();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let cases = [
            ("", 401, "missing bearer token"),
            ("Authorization: Bearer nope\r\n", 401, "unknown token"),
            (
                &format!(
                    "Authorization: Bearer {}\r\n",
                    auth::mint(b"another-secret-0123456789", "eve", now, 60)
                ),
                401,
                "invalid token signature",
            ),
            (
                &format!(
                    "Authorization: Bearer {}\r\n",
                    auth::mint(SECRET, "alice", now, 60)
                ),
                200,
                r#""subject":"alice""#,
            ),
        ];
        for (extra, want, says) in cases {
            let r = get_with(a, "/auth", extra);
            assert_eq!(status_of(&r), want, "{extra:?} -> {r}");
            assert_eq!(header(&r, "Content-Type"), Some("application/json"));
            assert!(body_of(&r).contains(says), "{extra:?} -> {r}");
            if want == 401 {
                assert_eq!(header(&r, "WWW-Authenticate"), Some("Bearer"));
            }
        }
        let m = metrics(a);
        assert_eq!(m["pollcap_http_responses_total{status=\"401\"}"], 3.0);
        // Checking a token is not a refused upgrade.
        assert_eq!(m["pollcap_auth_failures_total"], 0.0);
    });
}

#[test]
fn ws_path_cannot_shadow_the_token_check() {
    let env = |k: &str| (k == "POLLCAP_WS_PATH").then(|| "/auth".to_string());
    let err = Settings::resolve(&env, &[]).expect_err("/auth is taken");
    let line = err.to_string();
    assert!(line.contains("WS_PATH") && line.contains("/auth"), "{line}");
}
