//! Before the upgrade: reading the request head under the connect and
//! handshake deadlines, reporting it, writing the owner's answer (without
//! its body for HEAD), and turning a written 101 into an open WebSocket or
//! any other response into a lingering close.

use std::io::{self, Read, Write};

use super::Transport;
use std::time::Instant;

use tungstenite::protocol::{Role, WebSocket};

use super::boundary::FrameBoundary;
use super::{Conn, Cx, Event, Open, Phase, TimeoutPhase, deflate, ws_config};
use crate::deflate::stats::{self, Counter};
use crate::http::{self, HeadLimits, Parsed, Response};

/// What follows a written response.
pub(super) enum After {
    Close,
    Upgrade { leftover: Vec<u8> },
}

impl<S: Transport> Conn<S> {
    pub(super) fn read_head(&mut self, cx: &mut Cx) {
        let limits = HeadLimits {
            max_bytes: cx.limits.max_head_bytes,
            max_headers: cx.limits.max_headers,
        };
        let Phase::Head { io, buf, got_byte } = &mut self.phase else {
            return;
        };
        let old_len = buf.len();
        let mut chunk = [0u8; 1024];
        loop {
            if buf.len() > limits.max_bytes {
                break; // parse() answers 431
            }
            match io.read(&mut chunk) {
                Ok(0) => {
                    tracing::debug!(conn = self.id, "peer closed before a full request head");
                    self.finish();
                    return;
                }
                Ok(n) => {
                    *got_byte = true;
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    // The transport refused the peer's bytes (a TLS alert
                    // was sent): bad input, counted and logged.
                    tracing::info!(conn = self.id, "transport error before upgrade: {e}");
                    cx.events.push(Event::TransportFailed);
                    self.finish();
                    return;
                }
                Err(e) => {
                    tracing::debug!(conn = self.id, "read error before upgrade: {e}");
                    self.finish();
                    return;
                }
            }
        }
        // Any byte at the transport counts: a TLS ClientHello is the first
        // byte of the request.
        *got_byte |= io.inner.received() > 0;
        // httparse judges complete lines only: re-parse when a line ended
        // (or the size limit is hit), not after every byte a slow client
        // trickles in, which would make a slowloris cost quadratic work.
        if buf.len() <= limits.max_bytes && !buf[old_len..].contains(&b'\n') {
            return;
        }
        match http::parse(buf, limits) {
            Parsed::Partial => {}
            Parsed::Invalid(r) => self.write_response(r, After::Close, cx),
            Parsed::Complete { head, len } => {
                let Phase::Head { mut io, buf, .. } =
                    std::mem::replace(&mut self.phase, Phase::Done(None))
                else {
                    unreachable!("matched Head above")
                };
                io.deflate = deflate::negotiate(&head, cx.limits);
                self.phase = Phase::Decide {
                    io,
                    buf,
                    len,
                    key: head.ws_key.clone(),
                    head_only: head.method == "HEAD",
                };
                cx.events.push(Event::Request(head));
            }
        }
    }

    /// Answers the reported request with `r` and closes after it (a
    /// lingering close). The answer to a HEAD request goes out without its
    /// body, with the headers, `Content-Length` included, that a GET would
    /// get (RFC 9110 §9.3.2). Ignored unless a request is waiting for its
    /// answer.
    pub fn respond(&mut self, r: Response, cx: &mut Cx) {
        if let Phase::Decide { head_only, .. } = self.phase {
            let r = if head_only { http::without_body(r) } else { r };
            self.write_response(r, After::Close, cx);
        }
    }

    /// Accepts the reported upgrade request: writes the 101 (selecting
    /// `protocol`, if any), then opens the WebSocket. Ignored unless an
    /// upgrade request with a key is waiting for its answer.
    pub fn accept(&mut self, protocol: Option<&str>, cx: &mut Cx) {
        let Phase::Decide {
            buf, len, key, io, ..
        } = &mut self.phase
        else {
            return;
        };
        let Some(key) = key.take() else {
            return;
        };
        let leftover = buf.split_off(*len);
        let extension = io.deflate.map(|a| a.header_value());
        let r = Response {
            status: 101,
            bytes: http::switching_protocols_with(&key, protocol, extension.as_deref()),
        };
        self.write_response(r, After::Upgrade { leftover }, cx);
    }

    pub(super) fn head_timeout(&mut self, cx: &mut Cx) {
        let (now, t) = (cx.now, cx.timeouts);
        match &self.phase {
            Phase::Head { got_byte, .. } => {
                if !*got_byte && now >= self.accepted + t.connect {
                    cx.events.push(Event::Timeout(TimeoutPhase::Connect));
                    tracing::info!(conn = self.id, "connect timeout: no request byte; dropped");
                    self.finish();
                } else if now >= self.accepted + t.handshake {
                    self.handshake_timeout(cx);
                }
            }
            Phase::Decide { .. } if now >= self.accepted + t.handshake => {
                self.undecided_timeout(cx)
            }
            Phase::Respond {
                deadline, after, ..
            } if now >= *deadline => {
                let phase = match after {
                    After::Upgrade { .. } => TimeoutPhase::Handshake,
                    After::Close => TimeoutPhase::Close,
                };
                cx.events.push(Event::Timeout(phase));
                tracing::info!(conn = self.id, "response not written in time; dropped");
                self.finish();
            }
            _ => {}
        }
    }

    fn handshake_timeout(&mut self, cx: &mut Cx) {
        cx.events.push(Event::Timeout(TimeoutPhase::Handshake));
        let tls_unfinished = match &self.phase {
            Phase::Head { io, .. } | Phase::Decide { io, .. } => io.inner.handshaking(),
            _ => false,
        };
        if tls_unfinished {
            // No HTTP answer can be delivered on an unfinished TLS session.
            tracing::info!(
                conn = self.id,
                "handshake timeout in the TLS handshake; dropped"
            );
            return self.finish();
        }
        tracing::info!(conn = self.id, "handshake timeout: answering 408");
        let r = http::text(
            408,
            "Request Timeout",
            "request head not received in time\n",
        );
        self.write_response(r, After::Close, cx);
    }

    /// The whole head arrived but the owner did not answer it within the
    /// handshake deadline (e.g. an application still deciding whether to
    /// accept): the server was slow, not the client, so 503 rather than
    /// 408. Counted as a handshake timeout all the same.
    fn undecided_timeout(&mut self, cx: &mut Cx) {
        cx.events.push(Event::Timeout(TimeoutPhase::Handshake));
        tracing::info!(conn = self.id, "request not answered in time: 503");
        let r = http::text(
            503,
            "Service Unavailable",
            "the server did not answer the request in time; retry\n",
        );
        self.write_response(http::with_header(r, "Retry-After", "1"), After::Close, cx);
    }

    /// Enters the respond phase from reading or deciding. A 101 must be
    /// written within the handshake deadline; anything else within `close`,
    /// which also bounds the lingering close after it.
    fn write_response(&mut self, r: Response, after: After, cx: &mut Cx) {
        let io = match std::mem::replace(&mut self.phase, Phase::Done(None)) {
            Phase::Head { io, .. } | Phase::Decide { io, .. } => io,
            other => {
                self.phase = other;
                return;
            }
        };
        let deadline = match after {
            After::Upgrade { .. } => self.accepted + cx.timeouts.handshake,
            After::Close => {
                cx.events.push(Event::Status(r.status));
                // 403 and 429 are the front door's: its owner logs them at
                // most once a second per reason, so a flood of them cannot
                // flood the log one line per connection.
                if r.status >= 400 && !matches!(r.status, 403 | 429) {
                    tracing::info!(conn = self.id, status = r.status, "refused request");
                }
                cx.now + cx.timeouts.close
            }
        };
        self.phase = Phase::Respond {
            io,
            out: r.bytes,
            written: 0,
            after,
            deadline,
        };
        self.write_some(cx);
    }

    /// Writes what it can of the response; at its end, closes or opens.
    pub(super) fn write_response_bytes(&mut self, cx: &mut Cx) {
        let Phase::Respond {
            io, out, written, ..
        } = &mut self.phase
        else {
            return;
        };
        while *written < out.len() {
            match io.write(&out[*written..]) {
                Ok(0) => return self.finish(),
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.finish(),
            }
        }
        self.response_written(cx);
    }

    fn response_written(&mut self, cx: &mut Cx) {
        let Phase::Respond {
            io,
            after,
            deadline,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Done(None))
        else {
            return;
        };
        let After::Upgrade { leftover } = after else {
            // Connection: close. Closing now with unread input would reset
            // the connection and could destroy the response unread.
            return self.linger(io, deadline, cx);
        };
        let now: Instant = cx.now;
        cx.events.push(Event::Opened {
            handshake: now.saturating_duration_since(self.accepted),
        });
        let mut io = io;
        // The tracker saw the request head too: frames start after it.
        io.frames = FrameBoundary::default();
        if io.deflate.is_some() {
            io.frames.set_deflate();
            stats::add(Counter::Negotiated, 1);
        }
        // Frames that came with the head are read like any others, through
        // the tracker (which may rewrite their headers).
        io.unread(leftover);
        let ws = WebSocket::from_raw_socket(io, Role::Server, Some(ws_config(cx.limits)));
        self.phase = Phase::Open {
            ws: Box::new(ws),
            open: Open {
                opened: now,
                last_inbound: now,
                last_app: now,
                ping_sent: None,
                bytes_seen: 0,
                drain_by: None,
                pushed: 0,
                pongs_owed: 0,
                following: false,
            },
        };
        // Frames may have arrived with the request head, or while the
        // owner decided: read on so an edge-triggered poller is caught up
        // (see `has_more_input`).
        self.drive_ws(cx);
    }
}
