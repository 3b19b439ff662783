//! The exchange fed byte by byte and in every split, and the blocking
//! fetch against small servers on loopback.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use super::*;

fn target(url: &str) -> Target {
    Target::parse(url).unwrap()
}

/// Feeds `response` to a fresh exchange in pieces of `step` bytes.
fn feed_all(response: &[u8], step: usize) -> (Option<Head>, Vec<u8>, bool) {
    let mut x = Exchange::new("POST", &target("http://h:1/p"), &[], b"{}").unwrap();
    x.sent(x.to_send().len());
    let (mut head, mut body, mut done) = (None, Vec::new(), false);
    for piece in response.chunks(step) {
        let p = x.feed(piece, &mut body).unwrap();
        head = head.or(p.head);
        done |= p.done;
    }
    (head, body, done)
}

#[test]
fn the_request_is_one_post_with_its_length_and_headers() {
    let t = target("http://agent.test:8000/run?x=1");
    let x = Exchange::new("POST", &t, &[("accept", "text/event-stream")], b"{\"a\":1}").unwrap();
    let req = String::from_utf8(x.to_send().to_vec()).unwrap();
    assert!(req.starts_with("POST /run?x=1 HTTP/1.1\r\n"), "{req}");
    let lower = req.to_ascii_lowercase();
    assert!(lower.contains("host: agent.test:8000\r\n"), "{req}");
    assert!(lower.contains("content-length: 7\r\n"), "{req}");
    assert!(lower.contains("accept: text/event-stream\r\n"), "{req}");
    assert!(req.ends_with("\r\n\r\n{\"a\":1}"), "{req}");
    assert!(Exchange::new("POST", &t, &[("x", "bad\r\nvalue")], b"").is_err());
}

#[test]
fn chunked_and_sized_bodies_decode_whatever_the_splits() {
    let chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
        Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
    let sized = b"HTTP/1.1 200 OK\r\ncontent-type: Application/JSONL\r\ncontent-length: 12\r\n\r\nhello, world";
    for step in [1, 2, 3, 7, 64, 4096] {
        for r in [&chunked[..], &sized[..]] {
            let (head, body, done) = feed_all(r, step);
            let head = head.expect("a head");
            assert_eq!(head.status, 200);
            assert!(matches!(
                head.media_type.as_deref(),
                Some("text/event-stream" | "application/jsonl")
            ));
            assert_eq!(body, b"hello, world", "step {step}");
            assert!(done, "step {step}");
        }
    }
}

#[test]
fn endings_before_their_time_are_errors_and_a_close_delimited_body_is_not() {
    let mut x = Exchange::new("GET", &target("http://h/"), &[], b"").unwrap();
    assert_eq!(x.eof(), Err(Error::NoResponse));
    let mut x = Exchange::new("GET", &target("http://h/"), &[], b"").unwrap();
    let mut body = Vec::new();
    x.feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        &mut body,
    )
    .unwrap();
    assert_eq!(x.eof(), Err(Error::Truncated));
    let mut x = Exchange::new("GET", &target("http://h/"), &[], b"").unwrap();
    let p = x
        .feed(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it",
            &mut body,
        )
        .unwrap();
    assert!(!p.done, "ends with the connection");
    assert_eq!(x.eof(), Ok(()));
    // A head past the limit, a broken chunk size, a 1xx before the head.
    let mut x = Exchange::new("GET", &target("http://h/"), &[], b"").unwrap();
    let big = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD + 1));
    assert!(matches!(
        x.feed(big.as_bytes(), &mut body),
        Err(Error::BadHead(_))
    ));
    let mut x = Exchange::new("GET", &target("http://h/"), &[], b"").unwrap();
    let r = x.feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        &mut body,
    );
    assert!(matches!(r, Err(Error::BadBody(_))), "{r:?}");
    let mut x = Exchange::new("GET", &target("http://h/"), &[], b"").unwrap();
    let p = x
        .feed(b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 503 No\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n", &mut body)
        .unwrap();
    let head = p.head.unwrap();
    assert_eq!((head.status, head.retry_after_s), (503, Some(7)));
    assert!(p.done);
}

#[test]
fn the_response_is_framed_by_the_method_sent_though_its_request_is_gone() {
    // The response to a HEAD has no body whatever its length says; to a
    // POST the same head is followed by its body.
    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    let mut body = Vec::new();
    let mut x = Exchange::new("HEAD", &target("http://h/"), &[], b"").unwrap();
    assert!(x.to_send().starts_with(b"HEAD / HTTP/1.1\r\n"));
    assert!(x.feed(reply, &mut body).unwrap().done);
    let mut x = Exchange::new("POST", &target("http://h/"), &[("a", "b")], b"{}").unwrap();
    assert!(!x.feed(reply, &mut body).unwrap().done);
    assert!(x.feed(b"hello", &mut body).unwrap().done);
    assert_eq!(body, b"hello");
    // Bytes already in `body` stay; a broken chunk leaves nothing behind.
    let mut x = Exchange::new("GET", &target("http://h/"), &[], b"").unwrap();
    let mut body = b"kept".to_vec();
    let r = x.feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        &mut body,
    );
    assert!(matches!(r, Err(Error::BadBody(_))), "{r:?}");
    assert!(
        body.starts_with(b"kept") && body.len() <= b"keptabc".len(),
        "{body:?}"
    );
}

/// A one-connection server: reads the request head, answers `reply`
/// after `delay`, closes.
fn serve_once(reply: &'static [u8], delay: Duration) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
        std::thread::sleep(delay); // the server being slow is the test
        let _ = s.write_all(reply);
    });
    addr
}

fn limits() -> Limits {
    Limits {
        connect: Duration::from_secs(2),
        response: Duration::from_millis(500),
        max_body: 1024,
    }
}

#[test]
fn a_blocking_fetch_returns_the_response_or_names_what_failed() {
    let ok = serve_once(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        Duration::ZERO,
    );
    let f = fetch(
        &target(&format!("http://{ok}/keys")),
        "GET",
        &[],
        b"",
        limits(),
        None,
    )
    .unwrap();
    assert_eq!((f.head.status, f.body.as_slice()), (200, &b"{}"[..]));
    let slow = serve_once(b"HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(3));
    let t0 = std::time::Instant::now();
    let e = fetch(
        &target(&format!("http://{slow}/")),
        "GET",
        &[],
        b"",
        limits(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, FetchError::Timeout("response")), "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "bounded by the response deadline"
    );
    let big: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n{}",
            "x".repeat(4096)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let big = serve_once(big, Duration::ZERO);
    let e = fetch(
        &target(&format!("http://{big}/")),
        "GET",
        &[],
        b"",
        limits(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, FetchError::TooBig(1024)), "{e}");
    // Nobody listens: refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = fetch(
        &target(&format!("http://{closed}/")),
        "GET",
        &[],
        b"",
        limits(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, FetchError::Connect(_)), "{e}");
}
