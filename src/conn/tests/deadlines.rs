//! Deadlines of every phase: connect, handshake, heartbeat, pong,
//! liveness, stale, lifetime, and soft versus hard.

use super::*;

#[test]
fn upgrade_then_echo() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    client.send(Message::text("hello")).unwrap();
    h.io(&mut c, t0);
    assert_eq!(client.read().unwrap(), Message::text("hello"));
    let opened = h
        .log
        .iter()
        .filter(|e| matches!(e, Event::Opened { .. }))
        .count();
    assert_eq!(opened, 1);
}

#[test]
fn connect_deadline_drops_a_silent_client() {
    let mut h = owner();
    let t0 = Instant::now();
    let (server, _client) = duplex();
    let mut c = Conn::new(1, server, t0, 1.0);
    assert_eq!(h.due(&c), Some(t0 + secs(2.0)));
    h.timeout(&mut c, t0 + secs(1.9));
    assert_eq!(c.phase(), PhaseName::Head);
    h.timeout(&mut c, t0 + secs(2.0));
    assert!(c.is_done());
    assert_eq!(h.timeouts_of(TimeoutPhase::Connect), 1);
}

#[test]
fn handshake_deadline_answers_408() {
    let mut h = owner();
    let t0 = Instant::now();
    let (server, mut client) = duplex();
    let mut c = Conn::new(1, server, t0, 1.0);
    client.write_all(b"GET /ws HT").unwrap();
    h.io(&mut c, t0 + secs(0.1));
    // A byte arrived: only the handshake deadline remains.
    assert_eq!(h.due(&c), Some(t0 + secs(3.0)));
    h.timeout(&mut c, t0 + secs(3.0));
    assert_eq!(c.phase(), PhaseName::Linger, "408 written, then lingering");
    let mut out = String::new();
    client.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert_eq!(h.timeouts_of(TimeoutPhase::Handshake), 1);
}

#[test]
fn a_request_left_unanswered_past_the_handshake_deadline_gets_503() {
    let mut h = owner();
    let t0 = Instant::now();
    let (server, mut client) = duplex();
    let mut c = Conn::new(1, server, t0, 1.0);
    client
        .write_all(b"GET /later HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    h.io(&mut c, t0 + secs(0.1));
    assert_eq!(c.phase(), PhaseName::Decide, "the owner has not answered");
    assert_eq!(h.due(&c), Some(t0 + secs(3.0)));
    h.timeout(&mut c, t0 + secs(3.0));
    assert_eq!(c.phase(), PhaseName::Linger, "503 written, then lingering");
    // A late answer is ignored: one response per connection.
    c.accept(None, &mut h.cx(t0 + secs(3.1)));
    c.respond(http::text(200, "OK", "late\n"), &mut h.cx(t0 + secs(3.1)));
    let mut out = String::new();
    client.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    assert!(out.contains("Retry-After: 1\r\n"), "{out}");
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
    assert_eq!(h.timeouts_of(TimeoutPhase::Handshake), 1);
}

#[test]
fn heartbeat_ping_then_pong_deadline_closes_1011() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let t = h.timeouts;
    assert_eq!(
        c.poll_timeout(&t, Duration::ZERO).map(|w| w.at),
        Some(t0 + t.heartbeat_interval)
    );
    let t1 = t0 + t.heartbeat_interval;
    h.timeout(&mut c, t1);
    // The client sees the Ping; it does not answer (its pong is never flushed).
    let mut raw: Vec<u8> = Vec::new();
    raw.extend(client.get_mut().rx.borrow().iter());
    assert_eq!(raw[0], 0x89, "a Ping frame was sent");
    assert_eq!(
        c.poll_timeout(&t, Duration::ZERO).map(|w| w.at),
        Some(t1 + t.ping)
    );
    h.timeout(&mut c, t1 + t.ping);
    assert_eq!(c.phase(), PhaseName::Closing);
    expect_close(&mut client, 1011, "keepalive ping timeout");
    assert_eq!(h.timeouts_of(TimeoutPhase::Ping), 1);
}

#[test]
fn any_inbound_frame_answers_the_ping_and_resets_heartbeat() {
    let mut h = owner();
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let t = h.timeouts;
    let t1 = t0 + t.heartbeat_interval;
    h.timeout(&mut c, t1);
    // The client reads the ping; tungstenite queues the pong; flush sends it.
    assert!(matches!(client.read(), Ok(Message::Ping(_))));
    client.flush().unwrap();
    let t2 = t1 + secs(0.5);
    h.io(&mut c, t2);
    assert_eq!(
        c.poll_timeout(&t, Duration::ZERO).map(|w| w.at),
        Some(t2 + t.heartbeat_interval)
    );
    assert_eq!(h.timeouts_of(TimeoutPhase::Ping), 0);
}

#[test]
fn jitter_spreads_the_heartbeat() {
    let mut h = owner();
    let t0 = Instant::now();
    let (server, _client) = duplex();
    let c = Conn::new(1, server, t0, 1.05);
    let (mut c2, _) = open(&mut h, t0);
    drop(c);
    c2.jitter = 1.05;
    let t = h.timeouts;
    assert_eq!(
        c2.poll_timeout(&t, Duration::ZERO).map(|w| w.at),
        Some(t0 + t.heartbeat_interval.mul_f64(1.05))
    );
    assert_eq!(Conn::new(2, duplex().0, t0, 7.0).jitter, 1.1, "clamped");
}

#[test]
fn stale_connection_closes_1001_idle() {
    let mut h = owner();
    // Keep the peer alive with pings but send no application message.
    h.timeouts.stale = secs(20.0);
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let mut now = t0;
    for _ in 0..4 {
        now += secs(4.0);
        client.send(Message::Ping(vec![].into())).unwrap();
        h.io(&mut c, now);
        h.timeout(&mut c, now);
        assert_eq!(c.phase(), PhaseName::Open);
    }
    assert_eq!(h.due(&c), Some(t0 + secs(20.0)));
    h.timeout(&mut c, t0 + secs(20.0));
    expect_close(&mut client, 1001, "idle");
    assert_eq!(h.timeouts_of(TimeoutPhase::Stale), 1);
}

#[test]
fn lifetime_closes_1001_max_lifetime() {
    let mut h = owner();
    h.timeouts.connection = secs(10.0);
    h.timeouts.stale = secs(10.0);
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    let mut now = t0;
    for _ in 0..4 {
        now += secs(2.4);
        client.send(Message::text("busy")).unwrap();
        h.io(&mut c, now);
    }
    h.timeout(&mut c, t0 + secs(10.0));
    expect_close(&mut client, 1001, "max lifetime");
    assert_eq!(h.timeouts_of(TimeoutPhase::Lifetime), 1);
}

#[test]
fn silent_peer_closes_at_heartbeat_timeout_when_ping_is_long() {
    let mut h = owner();
    // ping long enough that liveness (15 s) comes first.
    h.timeouts.ping = secs(4.9);
    h.timeouts.heartbeat_interval = secs(12.0);
    let t0 = Instant::now();
    let (mut c, mut client) = open(&mut h, t0);
    h.timeout(&mut c, t0 + secs(12.0)); // ping sent
    assert_eq!(h.due(&c), Some(t0 + secs(15.0)));
    h.timeout(&mut c, t0 + secs(15.0));
    expect_close(&mut client, 1001, "heartbeat timeout");
    assert_eq!(h.timeouts_of(TimeoutPhase::Heartbeat), 1);
}

#[test]
fn heartbeats_are_soft_and_pongs_drains_and_closes_are_hard() {
    let mut h = owner();
    let t0 = Instant::now();
    let slack = Duration::from_millis(50);
    let (mut c, _client) = open(&mut h, t0);
    let t = h.timeouts;
    // Idle and open: the heartbeat, a soft deadline.
    assert_eq!(
        c.poll_timeout(&t, slack),
        Some(Wake {
            at: t0 + t.heartbeat_interval,
            soft: true
        })
    );
    // A drain due within the slack after the heartbeat: reported hard, and
    // the heartbeat is handled with it.
    let mut d = owner();
    d.timeouts.close = (t.heartbeat_interval + Duration::from_millis(20)) * 2;
    let (mut busy, _client_busy) = open(&mut d, t0);
    d.drive(&mut busy, t0, |c, cx| c.shutdown(true, cx));
    let drain = t0 + d.timeouts.close / 2;
    assert_eq!(
        busy.poll_timeout(&t, slack),
        Some(Wake {
            at: drain,
            soft: false
        })
    );
    // With no slack the heartbeat comes first, still soft.
    assert_eq!(
        busy.poll_timeout(&t, Duration::ZERO),
        Some(Wake {
            at: t0 + t.heartbeat_interval,
            soft: true
        })
    );
    // The ping is sent: its pong deadline is hard.
    let t1 = t0 + t.heartbeat_interval + Duration::from_millis(30);
    h.timeout(&mut c, t1);
    assert_eq!(
        c.poll_timeout(&t, slack),
        Some(Wake {
            at: t1 + t.ping,
            soft: false
        })
    );
    // Closing: hard.
    h.drive(&mut c, t1, |c, cx| c.shutdown(false, cx));
    assert_eq!(
        c.poll_timeout(&t, slack),
        Some(Wake {
            at: t1 + t.close,
            soft: false
        })
    );
}

#[test]
fn a_soft_deadline_handled_late_by_the_slack_acts_as_on_time() {
    // The ping goes out at the end of the window, the pong deadline
    // counts from there, and the stale close is still 1001 "idle".
    let mut h = owner();
    let t0 = Instant::now();
    let slack = Duration::from_millis(50);
    let (mut c, mut client) = open(&mut h, t0);
    let t = h.timeouts;
    let late = t0 + t.heartbeat_interval + slack;
    h.timeout(&mut c, late);
    assert!(matches!(client.read(), Ok(Message::Ping(_))));
    assert_eq!(c.poll_timeout(&t, slack).map(|w| w.at), Some(late + t.ping));
}
