//! The connection state machine (src/conn/) over an in-memory transport,
//! fed an arbitrary program: inbound bytes and client frames, readable and
//! writable readiness, time steps and timer turns, the peer reading or
//! going away, transport errors, and the owner's decisions and replies
//! (accept, respond, echo, handler runs, shutdown), either answered the
//! way the server's worker does or in raw orders of calls.
//!
//! Invariants, checked after every step:
//! - a connection not done has a deadline, never further away than the
//!   longest timeout; after its deadline is handled the next one lies in
//!   the future (no timer that fires forever);
//! - once the program ends, with time running and the peer silent, the
//!   connection finishes within a bounded number of timer turns;
//! - everything it writes is one valid HTTP response with the reported
//!   status (a 101 with the right accept key), then server frames that
//!   tungstenite's client accepts, ending with at most one Close;
//! - each of Request, Opened, Status and CloseSent is reported at most
//!   once, and close codes are ones the server may send;
//! - messages reported respect `max_message`;
//! - the heap held while it runs stays within a bound set by the limits.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pollcap::conn::{Conn, Cx, Event, PhaseName};
use pollcap::deflate::{Config, Mode};
use pollcap::http::{self, Head, Request};
use pollcap::settings::{Limits, Profile, Timeouts};
use pollcap_fuzz::{Bytes, Output, Pipe, client_frame, live_heap, upgrade_request};
use tungstenite::Message;

fuzz_target!(|data: &[u8]| run(data));

const SUPPORTED: &[&str] = &["agent_chat"];

struct Run {
    id: u64,
    seq: u64,
}

struct Harness {
    t: Timeouts,
    limits: Limits,
    slack: Duration,
    now: Instant,
    conn: Conn<Pipe>,
    pipe: Pipe,
    events: Vec<Event>,
    out: Output,
    /// Answer like the server's worker (read on while a message left input
    /// behind, flush after) or make only the calls the program says.
    worker: bool,
    pending: Option<Box<Head>>,
    runs: Vec<Run>,
    next_run: u64,
    expected_status: Option<u16>,
    requests: usize,
    opened: usize,
    statuses: usize,
    closes: usize,
    heap_base: usize,
}

/// Close codes the server sends: its own, and 1002/1007/1009 for peer
/// faults (tungstenite's echo of a peer's Close may repeat any valid one).
const OWNER_CODES: [u16; 5] = [1000, 1001, 1008, 1011, 1013];
const SENT_CODES: [u16; 8] = [1000, 1001, 1002, 1007, 1008, 1009, 1011, 1013];

fn limits(b: &mut Bytes) -> Limits {
    let max_message = [16, 1024, 65536][usize::from(b.byte() % 3)];
    let (max_frame, max_outbound, read_buffer, max_head_bytes, max_headers, linger) =
        (b.byte(), b.byte(), b.byte(), b.byte(), b.byte(), b.byte());
    Limits {
        max_message,
        max_frame: [16, 1024, 65536][usize::from(max_frame % 3)],
        max_connections: 10,
        max_outbound: [max_message + 15, 2 * max_message + 64, 1 << 20]
            [usize::from(max_outbound % 3)],
        read_buffer: [1, 128, 4096][usize::from(read_buffer % 3)],
        max_head_bytes: [256, 1024, 8192][usize::from(max_head_bytes % 3)],
        max_headers: [2, 8, 32][usize::from(max_headers % 3)],
        linger_bytes: [0, 100, 1 << 20][usize::from(linger % 3)],
        // From the same byte, so that seeds made before keep their meaning
        // (small bytes: on, threshold 0).
        deflate: Config {
            mode: [Mode::On, Mode::Takeover, Mode::Off][usize::from(linger / 3 % 3)],
            threshold: [0, 64, 1024][usize::from(linger / 9 % 3)],
        },
    }
}

fn longest(t: &Timeouts) -> Duration {
    [
        t.connect,
        t.handshake,
        t.ping,
        t.heartbeat_interval,
        t.heartbeat_timeout,
        t.stale,
        t.connection,
        t.close,
        t.execution,
    ]
    .into_iter()
    .max()
    .unwrap_or_default()
}

/// The call context from the harness's fields (borrowing only those, so
/// the connection stays free to call).
macro_rules! cx {
    ($h:expr) => {
        Cx {
            now: $h.now,
            timeouts: &$h.t,
            limits: &$h.limits,
            events: &mut $h.events,
        }
    };
}

impl Harness {
    /// One call into the connection, then the owner's answers.
    fn drive(&mut self, b: &mut Bytes, worker: bool, f: impl FnOnce(&mut Conn<Pipe>, &mut Cx)) {
        let mut cx = cx!(self);
        f(&mut self.conn, &mut cx);
        // The worker reads on at most this many messages per turn.
        let mut budget = 64;
        loop {
            let batch = std::mem::take(&mut self.events);
            if batch.is_empty() {
                if !worker {
                    break;
                }
                if self.conn.has_more_input() && budget > 0 {
                    budget -= 1;
                    let mut cx = cx!(self);
                    self.conn.handle_io(true, false, &mut cx);
                    continue;
                }
                let mut cx = cx!(self);
                self.conn.flush(&mut cx);
                if self.events.is_empty() {
                    break;
                }
                continue;
            }
            for ev in batch {
                self.observe(&ev);
                self.answer(ev, b);
            }
        }
        self.check();
    }

    fn observe(&mut self, ev: &Event) {
        match ev {
            Event::Request(_) => {
                self.requests += 1;
                assert_eq!(self.requests, 1, "one request per connection");
            }
            Event::Status(s) => {
                self.statuses += 1;
                assert_eq!(self.statuses, 1, "one response per connection");
                assert_eq!(self.opened, 0, "a status after the 101");
                self.expected_status = Some(*s);
            }
            Event::Opened { .. } => {
                self.opened += 1;
                assert_eq!(self.opened, 1, "opened twice");
                assert_eq!(self.statuses, 0, "opened after a response");
                assert_eq!(self.expected_status, Some(101), "opened without accept");
            }
            Event::Message(m) => {
                assert_eq!(self.opened, 1, "a message before the upgrade");
                assert!(
                    matches!(m, Message::Text(_) | Message::Binary(_)),
                    "reported {m:?}"
                );
                assert!(m.len() <= self.limits.max_message, "message over the limit");
            }
            Event::CloseSent(code) => {
                self.closes += 1;
                assert_eq!(self.closes, 1, "two Close frames sent");
                assert!(SENT_CODES.contains(code), "close code {code}");
            }
            Event::PeerClosed => {
                assert_eq!(self.opened, 1, "a peer Close before the upgrade");
            }
            Event::Lingered { .. } => {
                assert!(self.conn.is_done(), "a linger ended but not the connection");
            }
            Event::Timeout(_) | Event::Compacted | Event::TransportFailed => {}
        }
    }

    fn answer(&mut self, ev: Event, b: &mut Bytes) {
        let mut cx = cx!(self);
        match ev {
            Event::Request(head) => {
                let d = b.byte();
                if d % 8 == 7 {
                    self.pending = Some(head);
                } else {
                    self.decide(&head, d);
                }
            }
            Event::Message(m) => match b.byte() % 8 {
                0..=2 => self.conn.send(m, &mut cx),
                3 => {
                    // A run started for the message: the owner follows it
                    // while the connection is open.
                    self.next_run += 1;
                    if self.conn.phase() == PhaseName::Open {
                        self.runs.push(Run {
                            id: self.next_run,
                            seq: 0,
                        });
                    }
                }
                4 => self.conn.send(
                    Message::text(r#"{"type":"error","code":"bad_request"}"#),
                    &mut cx,
                ),
                5 => {
                    let code = OWNER_CODES[usize::from(b.byte()) % OWNER_CODES.len()];
                    self.conn.close(code, "owner", &mut cx);
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// The owner's answer to a request head.
    fn decide(&mut self, head: &Head, d: u8) {
        let mut cx = cx!(self);
        // Only a request still waiting can be answered; a late answer is
        // made anyway (it must be ignored) but expects nothing.
        let waiting = self.conn.phase() == PhaseName::Decide;
        let accept_key = head
            .ws_key
            .as_deref()
            .filter(|_| waiting)
            .map(|k| tungstenite::handshake::derive_accept_key(k.as_bytes()));
        match d % 8 {
            // As the server decides.
            0..=2 => match http::classify(head, "/ws") {
                Request::Route(_) => self.conn.respond(http::text(200, "OK", "fine\n"), &mut cx),
                Request::Reject(r) => self.conn.respond(r, &mut cx),
                Request::Upgrade(u) => {
                    match pollcap::fuzzing::choose_subprotocol(&u.protocols, SUPPORTED) {
                        Ok(p) => {
                            if accept_key.is_some() {
                                self.expected_status = Some(101);
                                self.out.accept = accept_key;
                            }
                            self.conn.accept(p, &mut cx);
                        }
                        Err(r) => self.conn.respond(r, &mut cx),
                    }
                }
            },
            // Accept whatever it is (ignored without a key).
            3 => {
                if accept_key.is_some() {
                    self.expected_status = Some(101);
                    self.out.accept = accept_key;
                }
                self.conn.accept(Some("agent_chat"), &mut cx);
            }
            4 => self
                .conn
                .respond(http::text(404, "Not Found", "not found\n"), &mut cx),
            5 => {
                let r = http::text(503, "Service Unavailable", "busy\n");
                self.conn
                    .respond(http::with_header(r, "Retry-After", "1"), &mut cx);
            }
            // A large body, to be written across many writable turns.
            _ => {
                let body = vec![b'x'; 100_000];
                let r = http::response(200, "OK", "application/octet-stream", &body);
                self.conn.respond(r, &mut cx);
            }
        }
    }

    /// The peer reads up to `n` bytes of what the connection wrote.
    fn peer_reads(&mut self, n: usize) {
        let bytes = self.pipe.recv(n);
        if let Err(e) = self.out.feed(&bytes) {
            panic!("invalid output: {e}");
        }
        if let Some(s) = self.out.status {
            assert_eq!(
                self.expected_status,
                Some(s),
                "wrote a response not reported"
            );
        }
    }

    /// Invariants that hold after every step.
    fn check(&mut self) {
        let c = &self.conn;
        let wake = c.poll_timeout(&self.t, self.slack);
        assert_eq!(
            c.is_done(),
            wake.is_none(),
            "{:?} with deadline {wake:?}",
            c.phase()
        );
        assert_eq!(
            c.is_done(),
            c.poll_timeout(&self.t, Duration::ZERO).is_none()
        );
        if let Some(w) = wake {
            assert!(
                w.at <= self.now + longest(&self.t) + self.slack,
                "{:?}: deadline {:?} beyond every timeout",
                c.phase(),
                w.at - self.now
            );
        }
        assert!(
            !c.has_more_input() || matches!(c.phase(), PhaseName::Open | PhaseName::Closing),
            "more input outside the open and closing phases"
        );
        // Buffers stay bounded: the connection's own (limits) plus what the
        // peer queued and has not been read.
        let l = &self.limits;
        let conn_bound = 8
            * (l.max_head_bytes
                + l.read_buffer
                + l.max_frame
                + l.max_message
                + l.max_outbound
                + 4096)
            + 512 * 1024
            // This thread's compressors and decompressor, once made.
            + 1024 * 1024;
        let p = self.pipe.0.borrow();
        let peer = 2 * (p.inbound.capacity() + p.outbound.capacity()) + 256 * 1024;
        drop(p);
        let held = live_heap().saturating_sub(self.heap_base);
        assert!(
            held <= conn_bound + peer,
            "{:?}: {held} bytes held, bound {} + {peer}",
            self.conn.phase(),
            conn_bound
        );
    }

    /// After a deadline was handled at `now`, the next one is later.
    fn check_after_timeout(&self) {
        if let Some(w) = self.conn.poll_timeout(&self.t, self.slack) {
            assert!(
                w.at > self.now,
                "{:?}: deadline {:?} still due after it was handled",
                self.conn.phase(),
                self.now - w.at
            );
        }
    }

    fn timer_turn(&mut self, b: &mut Bytes, worker: bool) {
        if self
            .conn
            .poll_timeout(&self.t, self.slack)
            .is_some_and(|w| w.at <= self.now)
        {
            self.drive(b, worker, |c, cx| c.handle_timeout(cx));
            self.check_after_timeout();
        }
    }
}

/// A client frame from the program: any first byte (FIN, RSV, opcode),
/// lengths across every header form; with RSV1 and an odd fill, the
/// payload is deflate data (valid, unless the connection did not
/// negotiate the extension or the frame is not a message's first).
fn frame(b: &mut Bytes) -> Vec<u8> {
    let first = b.byte();
    let sel = b.byte();
    let len = match sel {
        0..=199 => usize::from(sel % 126),
        200..=239 => 126 + usize::from(b.u16() % 4096),
        _ => [65535, 65536, 70_000, 200_000, 1_100_000][usize::from(sel % 5)],
    };
    let fill = b.byte();
    let payload: Vec<u8> = if fill < 128 {
        std::iter::repeat_n(b'a' + fill % 26, len).collect()
    } else {
        b.take(len).to_vec()
    };
    let payload = if first & 0x40 != 0 && fill % 2 == 1 {
        pollcap::deflate::codec::compress(&payload, 15)
    } else {
        payload
    };
    let mask = [b.byte(), b.byte(), b.byte(), b.byte()];
    client_frame(first, &payload, mask)
}

fn request(b: &mut Bytes) -> Vec<u8> {
    let r = match b.byte() % 15 {
        0 => upgrade_request("/ws", ""),
        1 => upgrade_request("/ws", "Sec-WebSocket-Protocol: agent_chat\r\n"),
        2 => upgrade_request("/ws", "Sec-WebSocket-Protocol: bearer.abc\r\n"),
        3 => upgrade_request("/ws", "Sec-WebSocket-Protocol: other, agent_chat\r\n"),
        4 => "GET /health HTTP/1.1\r\nHost: fuzz\r\n\r\n".into(),
        5 => "GET /nope HTTP/1.1\r\nHost: fuzz\r\n\r\n".into(),
        6 => upgrade_request("/ws", "").replacen("GET", "POST", 1),
        7 => upgrade_request("/ws", "").replace("HTTP/1.1", "HTTP/1.0"),
        8 => upgrade_request("/ws", "").replace("Version: 13", "Version: 8"),
        9 => upgrade_request("/ws", "Content-Length: 5\r\n") + "hello",
        10 => upgrade_request("/ws", "").replace("Sec-WebSocket-Key", "X-Key"),
        12 => upgrade_request(
            "/ws",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        ),
        13 => upgrade_request(
            "/ws",
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9; \
             server_no_context_takeover, permessage-deflate\r\nSec-WebSocket-Protocol: agent_chat\r\n",
        ),
        14 => upgrade_request(
            "/ws",
            "Sec-WebSocket-Extensions: permessage-deflate; x=\"a,b\", permessage-deflate;;\r\n",
        ),
        _ => "GET / HTTP/1.1\r\n".into(),
    };
    r.into_bytes()
}

const STEPS_MS: [u64; 12] = [
    0, 1, 10, 50, 500, 1_000, 2_000, 5_000, 15_000, 60_000, 400_000, 4_000_000,
];

fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    let t = Profile::ALL[usize::from(b.byte() % 4)].timeouts();
    let limits = limits(&mut b);
    let slack = Duration::from_millis([0, 50, 500][usize::from(b.byte() % 3)]);
    let jitter = 0.9 + 0.2 * f64::from(b.byte()) / 255.0;
    let worker = !b.byte().is_multiple_of(4);
    let window = 1 + usize::from(b.u16());
    let pipe = Pipe::new(window);
    pipe.0.borrow_mut().short_read_drains = b.byte().is_multiple_of(2);
    let now = Instant::now();
    let heap_base = live_heap();
    let conn = Conn::new(1, pipe.clone(), now, jitter);
    let mut h = Harness {
        t,
        limits,
        slack,
        now,
        conn,
        pipe,
        events: Vec::new(),
        out: Output::new(),
        worker,
        pending: None,
        runs: Vec::new(),
        next_run: 0,
        expected_status: None,
        requests: 0,
        opened: 0,
        statuses: 0,
        closes: 0,
        heap_base,
    };
    h.check();
    let mut steps = 0;
    while !b.is_empty() && steps < 400 {
        steps += 1;
        let worker = h.worker;
        match b.byte() % 16 {
            0 => {
                let n = usize::from(b.byte());
                h.pipe.send(b.take(n));
            }
            1 => {
                let f = frame(&mut b);
                // Now and then a burst of the same frame.
                let times = if b.byte() < 240 { 1 } else { 20 };
                for _ in 0..times {
                    h.pipe.send(&f);
                }
            }
            2 => {
                let r = request(&mut b);
                h.pipe.send(&r);
            }
            3 => h.drive(&mut b, worker, |c, cx| c.handle_io(true, false, cx)),
            4 => h.drive(&mut b, worker, |c, cx| c.handle_io(false, true, cx)),
            5 => h.drive(&mut b, worker, |c, cx| c.handle_io(true, true, cx)),
            6 => {
                let s = b.byte();
                if s & 0x80 != 0 {
                    // Straight to the next deadline.
                    if let Some(w) = h.conn.poll_timeout(&h.t, h.slack) {
                        h.now = h.now.max(w.at);
                    }
                } else {
                    h.now += Duration::from_millis(STEPS_MS[usize::from(s) % STEPS_MS.len()]);
                }
                h.timer_turn(&mut b, worker);
            }
            7 => {
                let n = usize::from(b.byte());
                h.peer_reads(if n == 0 { usize::MAX } else { n * 64 });
            }
            8 => h.pipe.0.borrow_mut().eof = true,
            9 => {
                let busy = !h.runs.is_empty();
                h.drive(&mut b, worker, |c, cx| c.shutdown(busy, cx))
            }
            10 => {
                let pick = usize::from(b.byte());
                let size = usize::from(b.u16() % 2048);
                let live = h.runs.len().max(1);
                let (id, seq) = match h.runs.get_mut(pick % live) {
                    Some(r) => {
                        r.seq += 1;
                        (r.id, r.seq)
                    }
                    None => (pick as u64, 1),
                };
                let text = format!(
                    r#"{{"type":"agent_thinking","run":{id},"seq":{seq},"delta":"{}"}}"#,
                    "d".repeat(size)
                );
                h.drive(&mut b, worker, |c, cx| c.send(Message::text(text), cx));
            }
            11 => {
                let pick = usize::from(b.byte());
                let failed = b.byte().is_multiple_of(4);
                let id = match h.runs.get(pick % h.runs.len().max(1)) {
                    Some(r) => r.id,
                    None => pick as u64,
                };
                // The owner's run layer ends the run: a failed one closes
                // 1011; the last one settles a drain.
                if let Some(i) = h.runs.iter().position(|r| r.id == id) {
                    h.runs.swap_remove(i);
                    let settled = h.runs.is_empty();
                    h.drive(&mut b, worker, |c, cx| {
                        if failed {
                            c.close(1011, "handler failure", cx);
                        } else if settled {
                            c.runs_settled(cx);
                        }
                    });
                }
            }
            12 => {
                let size = usize::from(b.u16()) % 70_000;
                let msg = if b.byte().is_multiple_of(2) {
                    Message::text("t".repeat(size))
                } else {
                    Message::binary(vec![0xAB; size])
                };
                h.drive(&mut b, worker, |c, cx| c.send(msg, cx));
            }
            13 => {
                if let Some(head) = h.pending.take() {
                    let d = b.byte();
                    h.decide(&head, d);
                    h.drive(&mut b, worker, |_, _| {});
                }
            }
            14 => {
                let v = b.byte();
                let mut p = h.pipe.0.borrow_mut();
                match v % 5 {
                    0 => p.window = 1 + usize::from(v) * 256,
                    1 => p.read_max = usize::from(v / 5),
                    2 => p.fail_read = true,
                    3 => p.fail_write = true,
                    _ => p.short_read_drains = !p.short_read_drains,
                }
            }
            _ => {
                // A deadline handled early (as the audit sweep may).
                h.drive(&mut b, worker, |c, cx| c.handle_timeout(cx));
                h.check_after_timeout();
            }
        }
        // Nothing is forwarded once the connection left the open phase:
        // the owner stops following its runs.
        if h.conn.phase() != PhaseName::Open {
            h.runs.clear();
        }
        h.check();
    }

    // The program is over: the peer sends nothing more but reads what it
    // is sent; the owner answers as the server does; time runs on from
    // deadline to deadline. Nothing waits forever: the connection finishes.
    let mut none = Bytes::new(&[]);
    {
        let mut p = h.pipe.0.borrow_mut();
        p.window = usize::MAX;
        p.fail_read = false;
        p.fail_write = false;
    }
    if let Some(head) = h.pending.take() {
        h.decide(&head, 0);
        h.drive(&mut none, true, |_, _| {});
    }
    // Each turn handles at least one deadline; a connection has a bounded
    // number of them (one per run, heartbeat, pong, close, ...).
    for _ in 0..1024 {
        h.peer_reads(usize::MAX);
        if h.conn.is_done() {
            break;
        }
        // What the peer sent before going silent is read first.
        h.drive(&mut none, true, |c, cx| c.handle_io(true, true, cx));
        for _ in 0..100_000 {
            if !h.conn.has_more_input() {
                break;
            }
            h.drive(&mut none, true, |c, cx| c.handle_io(true, false, cx));
        }
        if h.conn.phase() != PhaseName::Open {
            h.runs.clear();
        }
        let Some(w) = h.conn.poll_timeout(&h.t, h.slack) else {
            continue;
        };
        h.now = h.now.max(w.at);
        h.drive(&mut none, true, |c, cx| c.handle_timeout(cx));
        h.check_after_timeout();
        if h.conn.phase() != PhaseName::Open {
            h.runs.clear();
        }
    }
    assert!(
        h.conn.is_done(),
        "still {:?} after 1024 deadlines with a silent peer",
        h.conn.phase()
    );
    h.peer_reads(usize::MAX);
}
