//! The lingering close after a response that ends the connection (nginx's
//! `lingering_close`): the write side is shut down, then whatever the peer
//! still sends is read and thrown away until it closes, the response's
//! `close` deadline passes, or `linger_bytes` were discarded.
//!
//! Closing a socket with unread input makes the kernel answer with a reset
//! instead of a FIN, and a reset can destroy the response in the client's
//! receive buffer before the client reads it: a 431 for a large head sent
//! in pieces, any refusal of a request with a body, a pipelined second
//! request. Shutting down the write side first tells the client the
//! response is complete (EOF after it), and discarding keeps the receive
//! buffer empty so that the final close is clean.

use std::io;
use std::time::Instant;

use super::io::with_scratch;
use super::{Conn, Cx, Event, Io, LingerEnd, Phase, TimeoutPhase, Transport};

impl<S: Transport> Conn<S> {
    /// Enters the linger phase with the stream of a fully written response.
    pub(super) fn linger(&mut self, io: Io<S>, deadline: Instant, cx: &mut Cx) {
        self.phase = Phase::Linger {
            io,
            deadline,
            discarded: 0,
            write_closed: false,
        };
        self.drive_linger(cx);
    }

    /// Shuts down the write side once the transport has sent everything,
    /// then reads and discards until the socket has nothing more (an
    /// edge-triggered poller reports new input only after that), EOF, an
    /// error or the byte cap.
    pub(super) fn drive_linger(&mut self, cx: &mut Cx) {
        let cap = cx.limits.linger_bytes as u64;
        let id = self.id;
        let Phase::Linger {
            io,
            discarded,
            write_closed,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if !*write_closed {
            match io.inner.close_write() {
                Ok(()) => *write_closed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(conn = id, "lingering close: shutdown failed: {e}");
                    return self.end_linger(LingerEnd::Error, cx);
                }
            }
        }
        let end = with_scratch(|buf| {
            loop {
                match io.inner.discard(buf) {
                    Ok(0) => return Some(LingerEnd::PeerClosed),
                    Ok(n) => {
                        *discarded += n as u64;
                        if *discarded > cap {
                            return Some(LingerEnd::ByteCap);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Some(LingerEnd::Error),
                }
            }
        });
        if let Some(end) = end {
            self.end_linger(end, cx);
        }
    }

    pub(super) fn linger_timeout(&mut self, cx: &mut Cx) {
        if let Phase::Linger { deadline, .. } = self.phase
            && cx.now >= deadline
        {
            cx.events.push(Event::Timeout(TimeoutPhase::Linger));
            self.end_linger(LingerEnd::Deadline, cx);
        }
    }

    /// Reports how the linger ended and lets the stream go.
    fn end_linger(&mut self, end: LingerEnd, cx: &mut Cx) {
        let Phase::Linger { discarded, .. } = self.phase else {
            return;
        };
        cx.events.push(Event::Lingered { end, discarded });
        if end == LingerEnd::PeerClosed {
            tracing::debug!(conn = self.id, discarded, "lingering close: peer closed");
        } else {
            tracing::info!(
                conn = self.id,
                end = end.name(),
                discarded,
                "lingering close ended before the peer closed"
            );
        }
        self.finish();
    }
}
