//! HTTP/1.1 manners over real loopback sockets, for both backends (SPEC
//! §4): HEAD answered like GET without a body, Host required in HTTP/1.1,
//! a bearer-only subprotocol list refused by name, and error responses
//! that reach the client — the write side is shut down after them and
//! what the client still sends is discarded (a lingering close), so that
//! closing never resets the connection under the response.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// How long a test waits for a metric the server updates by itself.
const FIVE_S: Duration = Duration::from_secs(5);

fn content_length(response: &str) -> usize {
    let head = response.split("\r\n\r\n").next().unwrap();
    head.lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap_or_else(|| panic!("no Content-Length in {response:?}"))
        .parse()
        .unwrap()
}

fn request(method: &str, path: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

#[test]
fn head_is_answered_like_get_without_a_body() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        let a = srv.local_addr();
        let exchange = |r: String| raw_exchange(a, r.as_bytes(), Duration::from_secs(5));
        for (path, status) in [
            ("/health", 200),
            ("/metrics", 200),
            ("/", 200),
            ("/nope", 404),
            ("/ws", 426),
        ] {
            let get = exchange(request("GET", path));
            let head = exchange(request("HEAD", path));
            assert_eq!(status_of(&get), status, "GET {path}: {get}");
            assert_eq!(status_of(&head), status, "HEAD {path}: {head}");
            assert!(
                head.ends_with("\r\n\r\n"),
                "HEAD {path} has no body: {head:?}"
            );
            assert_eq!(content_length(&get), body_of(&get).len(), "GET {path}");
            assert!(content_length(&head) > 0, "HEAD {path}: {head}");
            let names = |r: &str| -> Vec<String> {
                r.lines()
                    .skip(1)
                    .take_while(|l| !l.is_empty())
                    .map(|l| l.split(':').next().unwrap().to_string())
                    .collect()
            };
            assert_eq!(names(&head), names(&get), "HEAD {path} has GET's headers");
        }
        // Static bodies: the very Content-Length a GET gets.
        for path in ["/", "/nope", "/ws"] {
            assert_eq!(
                content_length(&exchange(request("HEAD", path))),
                content_length(&exchange(request("GET", path))),
                "{path}"
            );
        }
        // Other methods are refused naming both.
        let put = exchange(request("PUT", "/health"));
        assert_eq!(status_of(&put), 405, "{put}");
        assert!(put.contains("Allow: GET, HEAD\r\n"), "{put}");
    });
}

#[test]
fn http_1_1_without_host_gets_400() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        let a = srv.local_addr();
        for r in [
            "GET /health HTTP/1.1\r\n\r\n".to_string(),
            "HEAD /health HTTP/1.1\r\n\r\n".to_string(),
            "GET /nope HTTP/1.1\r\n\r\n".to_string(),
            upgrade_request("").replace("Host: t\r\n", ""),
            "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_string(),
        ] {
            let resp = raw_exchange(a, r.as_bytes(), Duration::from_secs(5));
            assert_eq!(status_of(&resp), 400, "{r:?} -> {resp}");
            if !r.starts_with("HEAD") {
                assert!(body_of(&resp).contains("Host"), "{resp}");
            }
        }
        // HTTP/1.0 never required it.
        let old = raw_exchange(a, b"GET /health HTTP/1.0\r\n\r\n", Duration::from_secs(5));
        assert_eq!(status_of(&old), 200, "{old}");
        assert_eq!(
            metric(a, "pollcap_http_responses_total{status=\"400\"}"),
            5.0
        );
    });
}

#[test]
fn a_bearer_only_subprotocol_list_gets_400_naming_the_supported_ones() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        let a = srv.local_addr();
        let r = raw_exchange(
            a,
            upgrade_request("Sec-WebSocket-Protocol: bearer.abc\r\n").as_bytes(),
            Duration::from_secs(5),
        );
        assert_eq!(status_of(&r), 400, "{r}");
        assert!(body_of(&r).contains("supported: echo"), "{r}");
        // With a protocol the server speaks beside it, the upgrade works
        // and the credential is not echoed.
        let (_, resp) = ws_connect(a, Some("bearer.abc, echo")).unwrap();
        assert_eq!(resp.headers()["Sec-WebSocket-Protocol"], "echo");
    });
}

/// The headline case: a 30 KB request head sent in pieces, read only after
/// the last piece went out. Without a lingering close the server closes
/// with the rest of the head unread and the kernel answers the next piece
/// with a reset: the client's write fails and the 431 is lost.
#[test]
fn a_30_kb_head_sent_in_pieces_gets_its_431() {
    each_backend(|kind| {
        // A close deadline far above the time the pieces take.
        let srv = start(kind, &[("WEBSOCKET_CLOSE_TIMEOUT", "3")], |_| {});
        let a = srv.local_addr();
        let mut head = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
        let mut i = 0;
        while head.len() < 30 * 1024 {
            head.push_str(&format!("X-Filler-{i}: {}\r\n", "v".repeat(90)));
            i += 1;
        }
        head.push_str("\r\n");
        let mut s = TcpStream::connect(a).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for piece in head.as_bytes().chunks(1024) {
            s.write_all(piece).expect("every piece is accepted");
            // A client trickling its head: the server answers after the
            // first 8 KiB, while most pieces are still to come.
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .expect("EOF after the response, no reset");
        let r = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&r), 431, "{r}");
        assert_eq!(content_length(&r), body_of(&r).len());
        drop(s);
        assert_eq!(
            metric(a, "pollcap_http_responses_total{status=\"431\"}"),
            1.0
        );
        // Whatever the server had not read with the head was discarded.
        let discarded = wait_metric(a, "pollcap_linger_discarded_bytes_total", FIVE_S, |n| {
            n >= 1.0
        });
        assert!(discarded <= head.len() as f64, "{discarded}");
        wait_metric(
            a,
            "pollcap_lingering_closes_total{end=\"peer_closed\"}",
            FIVE_S,
            |n| n >= 1.0,
        );
    });
}

/// Requests pipelined behind a refused one are read and thrown away: the
/// client gets exactly the refusal, whole, then EOF.
#[test]
fn requests_pipelined_after_an_error_do_not_reset_it() {
    each_backend(|kind| {
        let srv = start(kind, &[("WEBSOCKET_CLOSE_TIMEOUT", "3")], |_| {});
        let a = srv.local_addr();
        for first in [
            request("GET", "/nope"),                                  // 404
            request("DELETE", "/health"),                             // 405
            "GET /health HTTP/1.1\r\n\r\n".to_string(),               // 400
            upgrade_request("").replace("Version: 13", "Version: 8"), // 426
        ] {
            let mut bytes = first.clone().into_bytes();
            // Far more than one socket read: most of it is still in the
            // kernel when the refusal goes out.
            while bytes.len() < 256 * 1024 {
                bytes.extend_from_slice(request("GET", "/health").as_bytes());
            }
            let mut s = TcpStream::connect(a).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&bytes).expect("the pipeline is read");
            let mut out = Vec::new();
            s.read_to_end(&mut out)
                .expect("EOF after the response, no reset");
            let r = String::from_utf8_lossy(&out);
            assert!(status_of(&r) >= 400, "{first:?} -> {r}");
            // One answer: nothing follows its body.
            assert_eq!(content_length(&r), body_of(&r).len(), "{r}");
        }
        let ended = wait_metric(
            a,
            "pollcap_lingering_closes_total{end=\"peer_closed\"}",
            FIVE_S,
            |n| n >= 4.0,
        );
        assert!(ended >= 4.0);
        assert!(metric(a, "pollcap_linger_discarded_bytes_total") > 100_000.0);
        // The server still serves.
        assert_eq!(status_of(&get(a, "/health")), 200);
    });
}

/// A peer that neither closes nor stops sending: the `close` deadline
/// (0.2 s in these tests) and the byte cap end the linger.
#[test]
fn a_lingering_close_is_bounded_by_the_close_deadline_and_the_byte_cap() {
    each_backend(|kind| {
        let srv = start(kind, &[("POLLCAP_LINGER_BYTES", "65536")], |_| {});
        let a = srv.local_addr();
        // Silent after its request: cut at the deadline.
        let t0 = Instant::now();
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request("GET", "/nope").as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap(); // the write side: shut at once
        assert!(out.starts_with(b"HTTP/1.1 404 "));
        wait_metric(
            a,
            "pollcap_lingering_closes_total{end=\"deadline\"}",
            FIVE_S,
            |n| n >= 1.0,
        );
        assert_near(t0.elapsed(), 200 * MS, "linger deadline");
        assert_eq!(metric(a, "pollcap_timeouts_total{phase=\"linger\"}"), 1.0);
        drop(s);
        // Sending on and on: cut past the cap (the writes then fail).
        let mut s = TcpStream::connect(a).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request("GET", "/nope").as_bytes()).unwrap();
        let chunk = vec![b'x'; 16 * 1024];
        let t0 = Instant::now();
        let failed = loop {
            if let Err(e) = s.write_all(&chunk) {
                break e;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "never cut");
        };
        assert!(
            matches!(
                failed.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ),
            "{failed}"
        );
        wait_metric(
            a,
            "pollcap_lingering_closes_total{end=\"byte_cap\"}",
            FIVE_S,
            |n| n >= 1.0,
        );
        assert_eq!(status_of(&get(a, "/health")), 200);
    });
}
