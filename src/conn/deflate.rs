//! permessage-deflate on a connection: the offer decided from the request
//! head, messages compressed on the way out and inflated on the way in.
//! The inbound seam is in `boundary` (a compressed message's first header
//! is rewritten before tungstenite reads it); this file does what comes
//! after. The codecs are per thread (`crate::deflate::codec`); a
//! connection holds only its agreement, in its `Io`.

use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tungstenite::{Bytes, Utf8Bytes};

use super::Transport;
use super::boundary::Compressed;
use super::io::Io;
use super::{Conn, Cx};
use crate::deflate::stats::{self, Counter};
use crate::deflate::{Agreed, codec, negotiate};
use crate::http::Head;
use crate::settings::Limits;

/// The agreement for an upgrade request, if the client offered the
/// extension acceptably and the server negotiates it. An offer refused
/// (unacceptable, the server's `--deflate off`, a client whose
/// compression is known broken) is counted; the handshake goes on
/// without it.
pub(super) fn negotiate(head: &Head, limits: &Limits) -> Option<Agreed> {
    let offered = head
        .extensions
        .iter()
        .any(|e| e.to_ascii_lowercase().contains(negotiate::NAME));
    if !head.wants_websocket || !offered {
        return None;
    }
    let broken = head
        .user_agent
        .as_deref()
        .is_some_and(negotiate::broken_safari);
    let agreed = match limits.deflate.mode.server_mode() {
        Some(mode) if !broken => negotiate::answer(&head.extensions, mode),
        _ => None,
    };
    if agreed.is_none() {
        stats::add(Counter::Declined, 1);
    }
    agreed
}

/// What to hand tungstenite for `msg`: compressed, as one frame with RSV1
/// set, when the connection negotiated the extension, the message is at
/// least `--deflate-threshold` long and compression makes it smaller.
/// `streaming`: the connection follows a run. In the takeover mode such a
/// connection keeps a history of what it sent compressed and compresses
/// every message against it (the threshold does not apply: a 100-byte
/// event repeating the last one's envelope shrinks to a quarter).
pub(super) fn outbound<S>(
    io: &mut Io<S>,
    msg: Message,
    limits: &Limits,
    streaming: bool,
) -> Message {
    let Some(agreed) = io.deflate else {
        return msg;
    };
    let takeover = streaming
        && !agreed.server_no_context_takeover
        && limits.deflate.mode == crate::deflate::Mode::Takeover;
    if takeover && io.history.is_none() {
        io.history = Some(Box::default());
    }
    let threshold = if io.history.is_some() {
        0
    } else {
        limits.deflate.threshold
    };
    let (opcode, data) = match msg {
        Message::Text(t) if t.len() >= threshold => (OpData::Text, Bytes::from(t)),
        Message::Binary(b) if b.len() >= threshold => (OpData::Binary, b),
        Message::Text(_) | Message::Binary(_) => {
            stats::add(Counter::OutSkipped, 1);
            return msg;
        }
        other => return other,
    };
    let bits = agreed.server_window();
    let (z, seeds) = match io.history.as_deref_mut() {
        Some(h) => {
            let z = codec::compress_after(h, &data, bits);
            // Sent compressed even when it does not shrink (a run's first
            // small event): the client inflates it, so its window, and
            // our history, gain what the next events repeat.
            h.push(&data, bits);
            (Bytes::from(z), true)
        }
        None => (codec::compress_shared(&data, bits), false),
    };
    if z.len() >= data.len() && !seeds {
        // Incompressible: the peer is spared inflating it.
        stats::add(Counter::OutSkipped, 1);
        return Message::Frame(Frame::message(data, OpCode::Data(opcode), true));
    }
    stats::add(Counter::OutMessages, 1);
    stats::add(Counter::OutBytes, data.len() as u64);
    stats::add(Counter::OutWire, z.len() as u64);
    let mut f = Frame::message(z, OpCode::Data(opcode), true);
    f.header_mut().rsv1 = true;
    Message::Frame(f)
}

/// The connection has gone quiet (no run left to follow): what it
/// remembered for the takeover mode is let go.
pub(super) fn quiet<S>(io: &mut Io<S>) {
    io.history = None;
}

/// Why an inbound compressed message was refused: the close code and
/// reason to fail the connection with.
pub(super) struct Refused {
    pub code: u16,
    pub reason: &'static str,
    pub detail: String,
}

/// A complete message from tungstenite, inflated if it came compressed
/// (tungstenite reports it as Binary: its first header was rewritten).
pub(super) fn inbound<S>(io: &Io<S>, msg: Message, limits: &Limits) -> Result<Message, Refused> {
    let Some(kind) = io.frames.compressed() else {
        return Ok(msg);
    };
    let Message::Binary(data) = msg else {
        return Ok(msg);
    };
    let inflated = codec::inflate(&data, limits.max_message).map_err(|e| match e {
        codec::InflateError::TooBig => {
            stats::add(Counter::TooBig, 1);
            Refused {
                code: 1009,
                reason: "message too big",
                detail: format!(
                    "{} compressed bytes inflate past --max-message ({})",
                    data.len(),
                    limits.max_message
                ),
            }
        }
        codec::InflateError::Invalid(why) => {
            stats::add(Counter::Invalid, 1);
            Refused {
                code: 1007,
                reason: "invalid compressed data",
                detail: why,
            }
        }
    })?;
    stats::add(Counter::InMessages, 1);
    stats::add(Counter::InWire, data.len() as u64);
    stats::add(Counter::InBytes, inflated.len() as u64);
    match kind {
        Compressed::Binary => Ok(Message::Binary(inflated.into())),
        Compressed::Text => match Utf8Bytes::try_from(inflated) {
            Ok(t) => Ok(Message::Text(t)),
            Err(_) => {
                stats::add(Counter::Invalid, 1);
                Err(Refused {
                    code: 1007,
                    reason: "invalid UTF-8",
                    detail: "a compressed text message inflates to invalid UTF-8".into(),
                })
            }
        },
    }
}

impl<S: Transport> Conn<S> {
    /// Fails the connection over a refused compressed message.
    pub(super) fn refuse(&mut self, r: Refused, cx: &mut Cx) {
        tracing::info!(
            conn = self.id,
            code = r.code,
            "compressed message refused: {}",
            r.detail
        );
        self.begin_close(r.code, r.reason, cx);
    }
}
