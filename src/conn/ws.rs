//! The open and closing phases over tungstenite: reading messages in
//! batches, the heartbeat, liveness, stale and lifetime deadlines, queued
//! output with backpressure, the closing handshake, and giving back the
//! buffers a burst grew.

use std::io;

use super::Transport;

use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::{Error as WsError, Message};

use super::io::KEEP_GROWN;
use super::{Conn, Cx, Event, Phase, TimeoutPhase, deflate};

/// Frames read in one call without a message to report (control frames;
/// anything while closing) before the owner gets the connection back.
const FRAMES_PER_CALL: u32 = 64;

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }
}

impl<S: Transport> Conn<S> {
    /// Reads frames until one data message (reported; the owner answers
    /// it before the next frame is parsed, see `Conn::has_more_input`) or
    /// until the input is drained. Control frames are handled on the way;
    /// what tungstenite queued (pongs, a Close echo) goes out with the
    /// owner's [`Conn::flush`]. Nothing is written here: a write per
    /// message would let a peer that answers each reply at once keep this
    /// connection reading forever.
    pub(super) fn drive_ws(&mut self, cx: &mut Cx) {
        let mut frames = 0u32;
        loop {
            let (ws, open) = match &mut self.phase {
                Phase::Open { ws, open } => (ws, Some(open)),
                // Failing the connection after a peer fault: tungstenite's
                // reader is left mid-frame (it refused the frame), and
                // reading on would take its next empty read for the peer's
                // EOF and drop the connection before our Close went out.
                // Nothing more is read until the Close is out; the
                // lingering close then discards what follows.
                Phase::Closing {
                    await_close: false, ..
                } => return,
                Phase::Closing { ws, .. } => (ws, None),
                _ => return,
            };
            if frames == FRAMES_PER_CALL {
                // Input left after a batch without a message: the owner
                // reads on within its budget, or on its next turn.
                self.more_input = true;
                break;
            }
            frames += 1;
            let msg = match ws.read() {
                Ok(msg) => msg,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.more_input = false;
                    break;
                }
                Err(e) => {
                    self.read_error(e, cx);
                    continue;
                }
            };
            let Some(open) = open else {
                continue; // closing: data is discarded until the peer's Close
            };
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    open.last_app = cx.now;
                    self.more_input = true;
                    match deflate::inbound(ws.get_ref(), msg, cx.limits) {
                        Ok(msg) => cx.events.push(Event::Message(msg)),
                        Err(refused) => self.refuse(refused, cx),
                    }
                    break;
                }
                Message::Close(_) => {
                    // The client ended the session itself (not an answer
                    // to ours): its runs are cancelled. tungstenite queued
                    // the echo of the peer's Close.
                    cx.events.push(Event::PeerClosed);
                    let deadline = cx.now + cx.timeouts.close;
                    self.enter_closing(deadline, true);
                }
                Message::Ping(p) => {
                    // tungstenite answers every Ping, and while the socket
                    // is blocked it keeps only the latest Pong, so memory
                    // stays bounded; but a peer that asks for more replies
                    // than `max_outbound` without reading them is a slow
                    // consumer like any other (a ping flood): close 1008.
                    if ws.get_ref().write_blocked {
                        open.pongs_owed = open.pongs_owed.saturating_add(p.len() + 2);
                    } else {
                        open.pongs_owed = 0; // the Pongs are going out
                    }
                    if open.pongs_owed > cx.limits.max_outbound {
                        tracing::info!(conn = self.id, "ping flood: pongs not read");
                        self.begin_close(1008, "backpressure", cx);
                    }
                }
                Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        if let Phase::Open { ws, open } = &mut self.phase {
            let io = ws.get_ref();
            let seen = io.bytes_in + io.inner.received();
            if seen != open.bytes_seen {
                // Any inbound byte is a sign of life: resets heartbeat,
                // liveness and the outstanding ping.
                open.bytes_seen = seen;
                open.last_inbound = cx.now;
                open.ping_sent = None;
            }
        }
    }

    /// Queues one outbound message. It goes out when the batch threshold
    /// is reached or the owner calls [`Conn::flush`]; a peer that does
    /// not read is closed 1008 once `max_outbound` is queued.
    pub fn send(&mut self, msg: Message, cx: &mut Cx) {
        let Phase::Open { ws, open } = &mut self.phase else {
            return;
        };
        open.last_app = cx.now;
        let msg = deflate::outbound(ws.get_mut(), msg, cx.limits, open.following);
        open.pushed = open.pushed.saturating_add(msg.len());
        match ws.write(msg) {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(WsError::WriteBufferFull(_)) => {
                tracing::info!(conn = self.id, "slow consumer: outbound buffer full");
                self.begin_close(1008, "backpressure", cx);
            }
            Err(e) => self.fail(e),
        }
    }

    /// [`Conn::send`] for an event of a run this connection follows, as
    /// the owner's run layer forwards it: until [`Conn::runs_settled`],
    /// the takeover mode may compress against the messages before.
    pub fn send_run(&mut self, msg: Message, cx: &mut Cx) {
        if let Phase::Open { open, .. } = &mut self.phase {
            open.following = true;
        }
        self.send(msg, cx);
    }

    /// Writes whatever is queued, as far as the socket takes it. The owner
    /// calls it last, before it waits again.
    pub fn flush(&mut self, cx: &mut Cx) {
        match &mut self.phase {
            Phase::Head { io, .. }
            | Phase::Decide { io, .. }
            | Phase::Respond { io, .. }
            | Phase::Linger { io, .. } => io.end_reading(),
            Phase::Open { ws, .. } | Phase::Closing { ws, .. } => ws.get_mut().end_reading(),
            Phase::Done(_) => {}
        }
        self.write_some(cx);
    }

    /// Writes what is queued and, once everything went out, gives back
    /// the buffers a burst grew.
    pub(super) fn write_some(&mut self, cx: &mut Cx) {
        if self.write_out(cx) {
            if let Phase::Open { open, .. } = &mut self.phase {
                open.pongs_owed = 0;
            }
            self.compact(cx);
        }
    }

    /// Writes what is queued; true when nothing is left to write.
    fn write_out(&mut self, cx: &mut Cx) -> bool {
        match &mut self.phase {
            Phase::Respond { .. } => {
                self.write_response_bytes(cx);
                false
            }
            Phase::Open { ws, .. } | Phase::Closing { ws, .. } => {
                let r = ws.flush();
                let flushed = r.is_ok();
                self.after_flush(r, cx);
                flushed
            }
            _ => false,
        }
    }

    /// Called with the write buffer empty. tungstenite keeps the capacity a
    /// message grew its buffers to until the connection closes (measured:
    /// +16 KiB per connection after one 8 KiB echo, +1.96 MiB after one
    /// 1 MB echo); when a frame or a batch above [`KEEP_GROWN`] passed and
    /// nothing is buffered either way — no inbound bytes (every complete
    /// frame was read: reads run until `WouldBlock`), no unfinished
    /// message, nothing to write — a fresh tungstenite with the same
    /// configuration loses nothing and gives the memory back.
    fn compact(&mut self, cx: &mut Cx) {
        let Phase::Open { ws, open } = &mut self.phase else {
            return;
        };
        if !open.following {
            deflate::quiet(ws.get_mut());
        }
        let frames = &ws.get_ref().frames;
        let burst = frames.largest() > KEEP_GROWN as u64 || open.pushed > KEEP_GROWN;
        if !burst {
            open.pushed = 0;
            return;
        }
        if self.more_input || !frames.between_messages() {
            return; // keep the counts: compact at the next quiet point
        }
        let Phase::Open { ws, mut open } = std::mem::replace(&mut self.phase, Phase::Done(None))
        else {
            unreachable!("matched Open above")
        };
        let config = *ws.get_config();
        let mut io = ws.into_inner();
        io.frames.reset_largest();
        open.pushed = 0;
        let ws = WebSocket::from_raw_socket(io, Role::Server, Some(config));
        self.phase = Phase::Open {
            ws: Box::new(ws),
            open,
        };
        cx.events.push(Event::Compacted);
    }

    pub(super) fn ws_timeout(&mut self, cx: &mut Cx) {
        if let Phase::Open { open, .. } = &mut self.phase {
            if open.drain_by.is_some_and(|d| cx.now >= d) {
                tracing::info!(
                    conn = self.id,
                    "drain: runs did not finish in time; closing"
                );
                return self.begin_close(1001, "server shutting down", cx);
            }
        }
        let (now, t) = (cx.now, cx.timeouts);
        match &mut self.phase {
            Phase::Closing { deadline, .. } if now >= *deadline => {
                cx.events.push(Event::Timeout(TimeoutPhase::Close));
                tracing::info!(
                    conn = self.id,
                    "close timeout: peer never finished closing; dropped"
                );
                self.finish();
            }
            Phase::Open { ws, open } => {
                let expired = if now >= open.opened + t.connection {
                    Some((TimeoutPhase::Lifetime, 1001, "max lifetime"))
                } else if now >= open.last_app + t.stale {
                    Some((TimeoutPhase::Stale, 1001, "idle"))
                } else if now >= open.last_inbound + t.heartbeat_timeout {
                    Some((TimeoutPhase::Heartbeat, 1001, "heartbeat timeout"))
                } else if open.ping_sent.is_some_and(|s| now >= s + t.ping) {
                    Some((TimeoutPhase::Ping, 1011, "keepalive ping timeout"))
                } else {
                    None
                };
                if let Some((phase, code, reason)) = expired {
                    cx.events.push(Event::Timeout(phase));
                    tracing::info!(
                        conn = self.id,
                        phase = phase.name(),
                        code,
                        reason,
                        "deadline expired; closing"
                    );
                    return self.begin_close(code, reason, cx);
                }
                let beat_due = open.last_inbound + t.heartbeat_interval.mul_f64(self.jitter);
                if open.ping_sent.is_none() && now >= beat_due {
                    open.ping_sent = Some(now);
                    let payload = self.id.to_be_bytes().to_vec();
                    match ws.send(Message::Ping(payload.into())) {
                        Ok(()) => {}
                        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(WsError::WriteBufferFull(_)) => {
                            self.begin_close(1008, "backpressure", cx)
                        }
                        Err(e) => self.fail(e),
                    }
                }
            }
            _ => {}
        }
    }

    /// Closes with `code` (e.g. 1011 after a handler failure): sends the
    /// Close frame and enters the closing phase.
    pub fn close(&mut self, code: u16, reason: &'static str, cx: &mut Cx) {
        self.begin_close(code, reason, cx);
    }

    fn read_error(&mut self, e: WsError, cx: &mut Cx) {
        if matches!(self.phase, Phase::Closing { .. }) {
            // Closing: any error ends it (ConnectionClosed is the normal end).
            self.finish();
            return;
        }
        match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed => self.finish(),
            WsError::Capacity(c) => {
                tracing::info!(conn = self.id, "inbound too big: {c}");
                self.begin_close(1009, "message too big", cx);
            }
            WsError::Utf8(_) => {
                tracing::info!(conn = self.id, "invalid UTF-8 in a text message");
                self.begin_close(1007, "invalid UTF-8", cx);
            }
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                tracing::debug!(conn = self.id, "peer left without a close handshake");
                self.finish();
            }
            WsError::Protocol(p) => {
                tracing::info!(conn = self.id, "protocol error: {p}");
                self.begin_close(1002, "protocol error", cx);
            }
            WsError::WriteBufferFull(_) => {
                tracing::info!(conn = self.id, "slow consumer: outbound buffer full");
                self.begin_close(1008, "backpressure", cx);
            }
            other => self.fail(other),
        }
    }

    /// Sends a Close and enters the closing phase (deadline `close`). Peer
    /// faults (1002 protocol, 1007 bad data, 1009 too big) fail the
    /// connection: once the Close is flushed no frame is read any more
    /// (the peer may never send a well-formed Close of its own) and a
    /// lingering close ends TCP within the same deadline.
    pub(super) fn begin_close(&mut self, code: u16, reason: &'static str, cx: &mut Cx) {
        let deadline = cx.now + cx.timeouts.close;
        let await_close = !matches!(code, 1002 | 1007 | 1009);
        let Phase::Open { ws, .. } = &mut self.phase else {
            return;
        };
        cx.events.push(Event::CloseSent(code));
        // Room for the Close frame even when the buffer is full (backpressure).
        ws.set_config(|c| c.max_write_buffer_size = c.max_write_buffer_size.saturating_add(256));
        let r = ws.close(Some(close_frame(code, reason)));
        self.enter_closing(deadline, await_close);
        self.after_flush(r, cx);
    }

    fn enter_closing(&mut self, deadline: std::time::Instant, await_close: bool) {
        if let Phase::Open { .. } = self.phase {
            let Phase::Open { ws, .. } = std::mem::replace(&mut self.phase, Phase::Done(None))
            else {
                unreachable!()
            };
            // Input already buffered (the peer's Close, perhaps) is read on
            // while awaiting theirs: the poller will not report it again.
            // Nothing may follow a Close frame: `send` refuses from here on.
            self.more_input &= await_close;
            self.phase = Phase::Closing {
                ws,
                deadline,
                await_close,
            };
        }
    }

    fn after_flush(&mut self, r: Result<(), WsError>, cx: &mut Cx) {
        match r {
            Ok(()) => {
                if let Phase::Closing {
                    await_close: false, ..
                } = self.phase
                {
                    let Phase::Closing { ws, deadline, .. } =
                        std::mem::replace(&mut self.phase, Phase::Done(None))
                    else {
                        unreachable!("matched Closing above")
                    };
                    self.linger(ws.into_inner(), deadline, cx);
                }
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The closing handshake finished, or the socket broke: drop it.
            Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => self.finish(),
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: WsError) {
        tracing::debug!(conn = self.id, "connection failed: {e}");
        self.finish();
    }
}
