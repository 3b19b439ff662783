//! The server over real loopback sockets, for both backends: every phase
//! deadline, every HTTP refusal, subprotocols, limits, health and metrics,
//! and a drain that survives lost wakeups.

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn silent_tcp_client_is_dropped_at_the_connect_deadline() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        let t0 = Instant::now(); // before connecting: the deadline starts at accept
        let mut s = TcpStream::connect(srv.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let eof = wait_eof(&mut s);
        assert_near(eof - t0, 200 * MS, "connect deadline");
        assert_eq!(
            metric(
                srv.local_addr(),
                "pollcap_timeouts_total{phase=\"connect\"}"
            ),
            1.0
        );
    });
}

#[test]
fn slowloris_is_cut_at_the_handshake_deadline_with_408() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        let t0 = Instant::now(); // before connecting: the deadline starts at accept
        let mut s = TcpStream::connect(srv.local_addr()).unwrap();
        // One byte per 50 ms; the read timeout paces the loop and is also
        // where the server's answer shows up.
        s.set_read_timeout(Some(50 * MS)).unwrap();
        let req = upgrade_request("");
        let mut answer = Vec::new();
        for b in req.as_bytes() {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            if let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(3), "never cut");
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        assert_near(t0.elapsed(), 300 * MS, "handshake deadline");
        let m = metrics(srv.local_addr());
        assert_eq!(m["pollcap_timeouts_total{phase=\"handshake\"}"], 1.0);
        assert_eq!(m["pollcap_http_responses_total{status=\"408\"}"], 1.0);
    });
}

#[test]
fn a_client_that_never_answers_pings_gets_1011() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        // Before connecting: the server's clocks start after this.
        let t0 = Instant::now();
        let mut s = raw_ws(srv.local_addr());
        let (op, _) = read_frame(&mut s).unwrap();
        let ping_at = t0.elapsed();
        assert_eq!(op, 0x9, "first frame is the heartbeat Ping");
        // interval 0.3 s ± 10 % jitter
        assert!(
            ping_at >= 260 * MS && ping_at <= 330 * MS + SLACK,
            "{ping_at:?}"
        );
        let (code, reason, at) = read_close(&mut s);
        assert_eq!((code, reason.as_str()), (1011, "keepalive ping timeout"));
        // The pong deadline: 0.2 s after the Ping left (which the client
        // may have read late under load, so the lower bound is the Ping's
        // earliest departure).
        let took = at - t0;
        assert!(
            took + 5 * MS >= 270 * MS + 200 * MS,
            "pong deadline early: {took:?}"
        );
        assert!(
            took <= ping_at + 200 * MS + SLACK,
            "pong deadline late: {took:?}"
        );
        assert_eq!(
            metric(srv.local_addr(), "pollcap_timeouts_total{phase=\"ping\"}"),
            1.0
        );
        assert_eq!(
            metric(
                srv.local_addr(),
                "pollcap_close_frames_sent_total{code=\"1011\"}"
            ),
            1.0
        );
    });
}

#[test]
fn an_idle_client_that_answers_pings_is_closed_1001_at_stale() {
    each_backend(|kind| {
        let srv = start(
            kind,
            &[
                ("WEBSOCKET_STALE_TIMEOUT", "1.2"),
                ("WEBSOCKET_HEARTBEAT_TIMEOUT", "1"),
            ],
            |_| {},
        );
        let t0 = Instant::now(); // before connecting: the stale clock starts later
        let (mut ws, _) = ws_connect(srv.local_addr(), None).unwrap();
        // tungstenite answers every Ping while we read; no application data.
        let close = loop {
            match ws.read() {
                Ok(Message::Close(Some(f))) => break f,
                Ok(Message::Ping(_)) => continue,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(close.code, CloseCode::Away);
        assert_eq!(close.reason.as_str(), "idle");
        assert_near(t0.elapsed(), 1200 * MS, "stale deadline");
        let m = metrics(srv.local_addr());
        assert_eq!(m["pollcap_timeouts_total{phase=\"stale\"}"], 1.0);
        assert_eq!(
            m["pollcap_timeouts_total{phase=\"ping\"}"], 0.0,
            "pongs were seen"
        );
    });
}

#[test]
fn lifetime_closes_1001_max_lifetime_even_when_busy() {
    each_backend(|kind| {
        let env = [
            ("WEBSOCKET_HEARTBEAT_TIMEOUT", "0.8"),
            ("WEBSOCKET_STALE_TIMEOUT", "1"),
            ("WEBSOCKET_CONNECTION_TIMEOUT", "1"),
        ];
        let srv = start(kind, &env, |_| {});
        let t0 = Instant::now(); // before connecting: the lifetime starts later
        let (mut ws, _) = ws_connect(srv.local_addr(), None).unwrap();
        ws.get_mut().set_read_timeout(Some(5 * MS)).unwrap();
        let close = loop {
            assert!(t0.elapsed() < Duration::from_secs(3), "no lifetime close");
            if ws.can_write() {
                let _ = ws.send(Message::text("busy"));
            }
            match ws.read() {
                Ok(Message::Close(Some(f))) => break f,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(close.code, CloseCode::Away);
        assert_eq!(close.reason.as_str(), "max lifetime");
        assert_near(t0.elapsed(), 1000 * MS, "lifetime deadline");
        assert_eq!(
            metric(
                srv.local_addr(),
                "pollcap_timeouts_total{phase=\"lifetime\"}"
            ),
            1.0
        );
    });
}

#[test]
fn a_peer_that_never_answers_our_close_is_dropped_at_the_close_deadline() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        // Never answers the Ping, then never answers the 1011 Close either.
        let t0 = Instant::now(); // before connecting: every server clock starts later
        let mut s = raw_ws(srv.local_addr());
        let (code, _, at) = read_close(&mut s);
        assert_eq!(code, 1011);
        let eof = wait_eof(&mut s);
        // The Close left at the pong deadline: heartbeat (0.3 s - 10 %)
        // + ping (0.2 s) after the upgrade at the earliest; TCP must stay
        // until the close deadline (0.2 s) after that. Timed from `t0`, so
        // that a client slow to read the Close cannot shorten it.
        let earliest = 270 * MS + 200 * MS + 200 * MS;
        assert!(
            eof - t0 + 5 * MS >= earliest,
            "dropped early: {:?}",
            eof - t0
        );
        assert!(
            eof - at <= 200 * MS + SLACK,
            "close deadline: {:?}",
            eof - at
        );
        assert_eq!(
            metric(srv.local_addr(), "pollcap_timeouts_total{phase=\"close\"}"),
            1.0
        );
    });
}

#[test]
fn a_protocol_violation_fails_the_connection_at_once() {
    each_backend(|kind| {
        let srv = start(kind, &[], |c| c.settings.limits.max_message = 16);
        let mut s = raw_ws(srv.local_addr());
        s.write_all(&frame(0x1, true, b"far more than sixteen bytes"))
            .unwrap();
        let (code, _, at) = read_close(&mut s);
        assert_eq!(code, 1009);
        // TCP is dropped right after the Close, not at the close deadline.
        let eof = wait_eof(&mut s);
        assert!(eof - at < 150 * MS, "{:?}", eof - at);
        assert_eq!(
            metric(srv.local_addr(), "pollcap_timeouts_total{phase=\"close\"}"),
            0.0
        );
    });
}

#[test]
fn http_refusals_have_status_length_and_close() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        let a = srv.local_addr();
        let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
        let big = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
        let cases: Vec<(String, u16)> = vec![
            ("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n".into(), 404),
            (
                "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".into(),
                405,
            ),
            ("GET /health HTTP/1.1\r\n\r\n".into(), 400),
            ("GET /ws HTTP/1.1\r\nHost: t\r\n\r\n".into(), 426),
            ("\x01\x02 nonsense\r\n\r\n".into(), 400),
            (format!("GET / HTTP/1.1\r\n{many}\r\n"), 431),
            (big, 431),
            (
                upgrade_request("").replace("Version: 13", "Version: 7"),
                426,
            ),
            (upgrade_request("").replace(KEY, "bad"), 400),
        ];
        for (req, want) in cases {
            let r = raw_exchange(a, req.as_bytes(), Duration::from_secs(5));
            assert_eq!(status_of(&r), want, "{req:?} -> {r}");
            let head = r.split("\r\n\r\n").next().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("Content-Length")
                .parse()
                .unwrap();
            assert_eq!(len, body_of(&r).len());
            assert!(head.contains("Connection: close"));
        }
        assert_eq!(status_of(&get(a, "/")), 200);
        let m = metrics(a);
        assert_eq!(m["pollcap_http_responses_total{status=\"431\"}"], 2.0);
        assert_eq!(m["pollcap_http_responses_total{status=\"426\"}"], 2.0);
    });
}

/// A closed connection gives its slot back: `connections_open` returns to
/// 0 and a server at `--max-connections` admits the next client (a
/// regression: the slot of an open session was lost at its removal).
#[test]
fn a_closed_connection_gives_its_slot_back() {
    each_backend(|kind| {
        let srv = start(kind, &[("POLLCAP_MAX_CONNECTIONS", "2")], |_| {});
        let a = srv.local_addr();
        for _ in 0..3 {
            let mut held: Vec<_> = (0..2).map(|_| ws_connect(a, None).unwrap().0).collect();
            wait_metric(a, "pollcap_connections_open", Duration::from_secs(5), |v| {
                v == 2.0
            });
            for ws in &mut held {
                ws.close(None).unwrap();
                while ws.read().is_ok() {} // the server's Close, then its FIN
            }
            wait_metric(a, "pollcap_connections_open", Duration::from_secs(5), |v| {
                v == 0.0
            });
        }
        let m = metrics(a);
        assert_eq!(m["pollcap_upgrades_total"], 6.0, "every round was admitted");
    });
}

#[test]
fn subprotocol_negotiation() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        let a = srv.local_addr();
        let (_, resp) = ws_connect(a, None).unwrap();
        assert!(resp.headers().get("Sec-WebSocket-Protocol").is_none());
        let (_, resp) = ws_connect(a, Some("chat.v9, echo")).unwrap();
        assert_eq!(resp.headers()["Sec-WebSocket-Protocol"], "echo");
        let r = raw_exchange(
            a,
            upgrade_request("Sec-WebSocket-Protocol: chat.v9, mqtt\r\n").as_bytes(),
            Duration::from_secs(5),
        );
        assert_eq!(status_of(&r), 400);
        assert!(
            body_of(&r).contains("echo"),
            "body names the supported list: {r}"
        );
    });
}

#[test]
fn oversize_message_invalid_utf8_and_fragments() {
    each_backend(|kind| {
        let srv = start(kind, &[], |c| c.settings.limits.max_message = 1024);
        let a = srv.local_addr();

        let (mut ws, _) = ws_connect(a, None).unwrap();
        ws.send(Message::text("x".repeat(2048))).unwrap();
        match ws.read() {
            Ok(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Size),
            other => panic!("{other:?}"),
        }

        let mut s = raw_ws(a);
        s.write_all(&frame(
            0x1,
            true,
            &[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xff, 0xfe],
        ))
        .unwrap();
        assert_eq!(read_close(&mut s).0, 1007);

        // Text in two fragments with a Ping between them: Pong first, then the whole echo.
        let mut s = raw_ws(a);
        let mut bytes = frame(0x1, false, b"Hel");
        bytes.extend(frame(0x9, true, b"p"));
        bytes.extend(frame(0x0, true, b"lo"));
        s.write_all(&bytes).unwrap();
        assert_eq!(read_frame(&mut s).unwrap(), (0xA, b"p".to_vec()));
        assert_eq!(read_frame(&mut s).unwrap(), (0x1, b"Hello".to_vec()));

        // A fragmented control frame is a protocol error: 1002.
        let mut s = raw_ws(a);
        s.write_all(&frame(0x9, false, b"x")).unwrap();
        assert_eq!(read_close(&mut s).0, 1002);

        let m = metrics(a);
        for code in ["1009", "1007", "1002"] {
            assert_eq!(
                m[&format!("pollcap_close_frames_sent_total{{code=\"{code}\"}}")],
                1.0,
                "{code}"
            );
        }
    });
}

#[test]
fn max_connections_answers_503_with_retry_after() {
    each_backend(|kind| {
        let srv = start(kind, &[], |c| c.settings.limits.max_connections = 2);
        let a = srv.local_addr();
        let _c1 = ws_connect(a, None).unwrap();
        let _c2 = ws_connect(a, None).unwrap();
        let r = raw_exchange(a, upgrade_request("").as_bytes(), Duration::from_secs(5));
        assert_eq!(status_of(&r), 503, "{r}");
        assert!(r.contains("Retry-After: "));
        let h: serde_json::Value = serde_json::from_str(body_of(&get(a, "/health"))).unwrap();
        assert_eq!(h["status"], "degraded");
        assert_eq!(h["connections"]["open"], 2);
    });
}

#[test]
fn a_slow_consumer_is_closed_1008_backpressure() {
    each_backend(|kind| {
        // Under Wine, loopback buffers hold megabytes of unread echoes
        // before the outbound limit is reached, which takes seconds: the
        // FAST stale (2 s) and lifetime (3 s) deadlines would close first.
        let env = [
            ("WEBSOCKET_CLOSE_TIMEOUT", "5"),
            ("WEBSOCKET_STALE_TIMEOUT", "30"),
            ("WEBSOCKET_CONNECTION_TIMEOUT", "60"),
        ];
        let srv = start(kind, &env, |c| {
            c.settings.limits.max_message = 16 * 1024;
            c.settings.limits.max_outbound = 64 * 1024;
        });
        let mut s = raw_ws(srv.local_addr());
        // Write without reading until the server reports the 1008, then
        // read. Once its Close is queued behind the echoes we never read,
        // the server stops reading too, so our writes stall; if we were
        // still blocked in a write at its `close` deadline it would reset
        // the connection before we read the Close. So a write may block
        // for 50 ms at most, and a stall (or every 8th frame) checks the
        // metric.
        s.set_write_timeout(Some(50 * MS)).unwrap();
        let a = srv.local_addr();
        let sent_1008 = || {
            metrics(a)
                .get("pollcap_close_frames_sent_total{code=\"1008\"}")
                .copied()
                .unwrap_or(0.0)
                >= 1.0
        };
        let msg = frame(0x2, true, &[7u8; 16 * 1024]);
        let (mut sent, mut off) = (0usize, 0usize);
        loop {
            match s.write(&msg[off..]) {
                Ok(n) => {
                    off += n;
                    sent += n;
                    if off < msg.len() {
                        continue;
                    }
                    off = 0;
                    if sent % (8 * msg.len()) != 0 {
                        continue;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("write failed before the 1008: {e}"),
            }
            if sent_1008() {
                break;
            }
            assert!(sent < 32 << 20, "no 1008 after {sent} bytes");
        }
        let (code, reason, _) = read_close(&mut s);
        assert_eq!((code, reason.as_str()), (1008, "backpressure"));
        assert_eq!(
            metric(
                srv.local_addr(),
                "pollcap_close_frames_sent_total{code=\"1008\"}"
            ),
            1.0
        );
    });
}

#[test]
fn health_and_metrics_report_the_required_fields() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        let a = srv.local_addr();
        let (mut ws, _) = ws_connect(a, None).unwrap();
        ws.send(Message::text("hi")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("hi"));
        let r = get(a, "/health");
        assert_eq!(status_of(&r), 200);
        assert!(r.contains("Content-Type: application/json"));
        let h: serde_json::Value = serde_json::from_str(body_of(&r)).unwrap();
        assert_eq!(h["status"], "healthy");
        assert_eq!(h["backend"], kind.name());
        assert_eq!(h["poll_cap"], "fixed(100ms)");
        assert_eq!(h["profile"], "local");
        assert_eq!(h["connections"]["open"], 1);
        assert!(h["connections"]["total"].as_u64().unwrap() >= 2);
        assert!(h["handshake_latency_ms"]["p99"].as_f64().unwrap() > 0.0);
        for k in ["avg", "p50", "p95"] {
            assert!(h["handshake_latency_ms"][k].is_number(), "{k}");
        }
        for p in [
            "connect",
            "handshake",
            "ping",
            "heartbeat",
            "stale",
            "lifetime",
            "close",
        ] {
            assert!(h["timeouts"][p].is_u64(), "{p}");
        }
        assert!(h["reactor"]["waits"].as_u64().unwrap() > 0);
        assert!(h["uptime_s"].as_f64().unwrap() > 0.0);
        assert_eq!(h["timeouts_s"]["ping"], 0.2);

        let m = metrics(a);
        for k in [
            "pollcap_connections_open",
            "pollcap_upgrades_total",
            "pollcap_missed_deadlines_total",
            "pollcap_reactor_waits_total{reactor=\"0\",ended_by=\"cap\"}",
            "pollcap_reactor_waits_total{reactor=\"1\",ended_by=\"io\"}",
            "pollcap_reactor_lost_wakeups_recovered_total{reactor=\"1\"}",
            "pollcap_deadline_overshoot_seconds_count{reactor=\"0\"}",
            "pollcap_handshake_duration_seconds_bucket{le=\"+Inf\"}",
            "pollcap_handshake_duration_seconds_count",
        ] {
            assert!(m.contains_key(k), "{k} missing");
        }
        assert_eq!(m["pollcap_connections_open"], 1.0);
        assert_eq!(m["pollcap_missed_deadlines_total"], 0.0);
        assert_eq!(m["pollcap_handshake_duration_seconds_count"], 1.0);
    });
}

#[test]
fn drain_closes_1001_and_finishes_even_when_wakeups_are_lost() {
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        let a = srv.local_addr();
        let mut clients: Vec<_> = (0..10).map(|_| ws_connect(a, None).unwrap().0).collect();
        let handle = srv.shutdown_handle();
        // Every wake signal is dropped: only the 100 ms cap can notice.
        handle.suppress_wakers(true);
        let t0 = Instant::now();
        handle.shutdown();
        for ws in &mut clients {
            match ws.read() {
                Ok(Message::Close(Some(f))) => {
                    assert_eq!(f.code, CloseCode::Away);
                    assert_eq!(f.reason.as_str(), "server shutting down");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(
            t0.elapsed() <= 100 * MS + SLACK,
            "noticed within one cap: {:?}",
            t0.elapsed()
        );
        for mut ws in clients {
            let _ = ws.flush(); // our Close reply
            drop(ws);
        }
        srv.join().unwrap();
        assert!(
            t0.elapsed() <= 200 * MS + 100 * MS + SLACK,
            "drain bounded by close + cap"
        );
    });
}

#[test]
fn a_flooding_client_cannot_delay_another_connections_deadline() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    each_backend(|kind| {
        // One reactor: the flood and the silent connection share it.
        let srv = start(kind, &[], |c| {
            c.settings.threads = 1;
            c.settings.limits.max_outbound = 256 << 20;
        });
        let addr = srv.local_addr();
        let (stop_writing, stop_reading) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        // Bytes of echoes the flooding client has read.
        let echoed = Arc::new(AtomicU64::new(0));
        // The flood: one-byte text frames written as fast as the socket
        // takes them, the echoes (3 bytes each) read and counted on
        // another thread. Either thread fails if the flood connection
        // breaks before the test is over.
        let flood = raw_ws(addr);
        let mut writer = flood.try_clone().unwrap();
        let mut reader = flood;
        const BURST: usize = 4096;
        let burst: Vec<u8> = (0..BURST).flat_map(|_| frame(0x1, true, b"x")).collect();
        let stop_w = stop_writing.clone();
        let w = std::thread::spawn(move || -> std::io::Result<u64> {
            let (t0, mut frames) = (Instant::now(), 0u64);
            while !stop_w.load(Relaxed) && t0.elapsed() < Duration::from_secs(10) {
                writer.write_all(&burst)?;
                frames += BURST as u64;
            }
            Ok(frames)
        });
        let (stop_r, echoed_r) = (stop_reading.clone(), echoed.clone());
        let r = std::thread::spawn(move || -> std::io::Result<()> {
            let mut b = vec![0u8; 65536];
            reader.set_read_timeout(Some(Duration::from_millis(100)))?;
            let t0 = Instant::now();
            while !stop_r.load(Relaxed) && t0.elapsed() < Duration::from_secs(10) {
                match std::io::Read::read(&mut reader, &mut b) {
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        echoed_r.fetch_add(n as u64, Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        // The flood is under way once a burst's worth of echoes is back.
        eventually(Duration::from_secs(5), || {
            (echoed.load(Relaxed) >= 3 * BURST as u64).then_some(())
        });
        // A peer that never answers pings: pinged at 0.3 s (± 10 %),
        // closed 1011 at the pong deadline 0.2 s later.
        let t0 = Instant::now();
        let before = echoed.load(Relaxed);
        let mut silent = raw_ws(addr);
        let (code, reason, at) = read_close(&mut silent);
        let during = echoed.load(Relaxed) - before;
        stop_writing.store(true, Relaxed);
        assert_eq!((code, reason.as_str()), (1011, "keepalive ping timeout"));
        let took = at - t0;
        assert!(took + 5 * MS >= 470 * MS, "early: {took:?}");
        assert!(
            took <= 530 * MS + SLACK,
            "pong deadline beside a flood: {took:?}"
        );
        // The flood went on all along: the writer was never refused, the
        // reader never cut off, and the server kept echoing meanwhile.
        // (The reader drains until the writer is done, so that the server
        // never stops taking the writer's frames.)
        let frames = w.join().unwrap().expect("the flood's writes are taken");
        stop_reading.store(true, Relaxed);
        r.join().unwrap().expect("the flood's echoes keep coming");
        eprintln!("flood: {frames} frames written, {during} bytes echoed beside the silent peer");
        // About a million echoes here on Linux, 20 000 to 150 000 under
        // Wine: at least a burst's worth (4 Ki messages) came back while
        // the silent peer waited, on any machine.
        assert!(
            during >= 3 * BURST as u64,
            "the server echoed only {during} bytes of the flood while the silent peer waited"
        );
    });
}

/// Every declared metric family is in `/metrics` and at its place in
/// `/health` (`null` there only when `/metrics` has no sample of it).
#[test]
fn health_and_metrics_carry_every_declared_family() {
    use pollcap::metrics::{HealthAt, families};
    each_backend(|kind| {
        let srv = start(kind, &[], |_| {});
        let a = srv.local_addr();
        let prom = get(a, "/metrics");
        let prom = body_of(&prom);
        let health: serde_json::Value = serde_json::from_str(body_of(&get(a, "/health"))).unwrap();
        let at = |path: &str| path.split('.').fold(&health, |v, k| &v[k]).clone();
        let mut absent = Vec::new();
        for f in families() {
            let sampled = prom.lines().any(|l| {
                l.strip_prefix(f.name)
                    .is_some_and(|rest| rest.starts_with([' ', '{', '_']))
            });
            let paths: Vec<&str> = match f.health {
                HealthAt::Total(p)
                | HealthAt::Flag(p)
                | HealthAt::ByLabel(p, _)
                | HealthAt::Which(p, _) => vec![p],
                HealthAt::Keys(_, keys) => keys.iter().map(|(_, p)| *p).collect(),
            };
            for p in paths {
                let v = at(p);
                if sampled {
                    assert!(!v.is_null(), "{} sampled, but /health {p} is {v}", f.name);
                } else {
                    assert!(
                        v.is_null(),
                        "{} not sampled, but /health {p} is {v}",
                        f.name
                    );
                }
            }
            if !sampled {
                absent.push(f.name);
            }
        }
        // The echo app has no pool and no agent, and this server has no
        // per-address or per-subject limits and no key set: their
        // families are the absent ones.
        absent.sort();
        assert_eq!(
            absent,
            [
                "pollcap_agent_breaker_opened_total",
                "pollcap_agent_breaker_rejections_total",
                "pollcap_agent_breaker_state",
                "pollcap_client_table_entries",
                "pollcap_client_table_evictions_total",
                "pollcap_jwks_fetches_total",
                "pollcap_jwks_keys",
                "pollcap_jwks_kid_refreshes_total",
                "pollcap_jwks_up",
                "pollcap_pool_queued",
                "pollcap_pool_threads",
                "pollcap_subjects_with_runs",
            ]
        );
        assert!(health["handlers"]["pool_threads"].is_null());
    });
}
