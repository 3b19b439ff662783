//! An open connection: send, receive, resume, leave and close, each
//! within its deadline (the receive timeout, the close timeout).

use std::time::{Duration, Instant};

use tungstenite::protocol::{WebSocket, WebSocketConfig};
use tungstenite::{Error as WsError, Message};

use super::stream::timed_out;
use super::{ClientConfig, ClientError, ClientStream};
use crate::deflate::client::DeflateStream;

/// An open connection; every call has its deadline.
#[derive(Debug)]
pub struct Connection {
    ws: WebSocket<DeflateStream<ClientStream>>,
    receive_timeout: Duration,
    close_timeout: Duration,
}

impl Connection {
    pub(super) fn new(
        ws: WebSocket<DeflateStream<ClientStream>>,
        cfg: &ClientConfig,
    ) -> Connection {
        Connection {
            ws,
            receive_timeout: cfg.receive_timeout,
            close_timeout: cfg.close_timeout,
        }
    }

    fn set_deadline(&mut self, d: Duration) {
        self.ws.get_mut().get_mut().set_deadline(Instant::now() + d);
    }

    /// Sends one message, completing within the receive timeout.
    pub fn send(&mut self, msg: Message) -> Result<(), ClientError> {
        self.set_deadline(self.receive_timeout);
        let msg = self
            .ws
            .get_ref()
            .outbound(msg, crate::deflate::DEFAULT_THRESHOLD);
        match self.ws.send(msg) {
            Ok(()) => Ok(()),
            Err(e) if timed_out(&e) => Err(ClientError::SendTimeout(self.receive_timeout)),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// The next text or binary message (Pings are answered on the way),
    /// within the receive timeout.
    pub fn recv(&mut self) -> Result<Message, ClientError> {
        self.set_deadline(self.receive_timeout);
        loop {
            match self.ws.read() {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                    let max = WebSocketConfig::default()
                        .max_message_size
                        .unwrap_or(usize::MAX);
                    return (self.ws.get_mut().inbound(m, max))
                        .map_err(|e| ClientError::Protocol(e.to_string()));
                }
                Ok(Message::Close(frame)) => return Err(ClientError::Closed(frame)),
                Ok(_) => {} // Ping (answered by tungstenite), Pong, raw frame
                Err(e) if timed_out(&e) => {
                    return Err(ClientError::ReceiveTimeout(self.receive_timeout));
                }
                Err(e) => return Err(self.failed(e)),
            }
        }
    }

    /// Asks to resume run `run_id` (SPEC §5): the server sends every event
    /// of the run after `after_seq` (the last `seq` this client has), in
    /// order and once each, then the live ones until the run's last; or
    /// one `{"type":"error","code":"resume_unavailable"}` and nothing else.
    /// Read them with [`Connection::recv`].
    pub fn resume(&mut self, run_id: &str, after_seq: u64) -> Result<(), ClientError> {
        let req = crate::store::ResumeRequest::new(run_id, after_seq);
        self.send(Message::text(req.to_json()))
    }

    /// Leaves without a Close frame, as a lost network would: TCP is shut
    /// down both ways. The server keeps this connection's runs going (a
    /// Close frame would cancel them), ready to be resumed.
    pub fn abort(self) {
        let _ = self
            .ws
            .get_ref()
            .get_ref()
            .tcp()
            .shutdown(std::net::Shutdown::Both);
    }

    /// Sends a normal Close and waits for the server's, within the close
    /// timeout; returns how long the closing handshake took.
    pub fn close(mut self) -> Result<Duration, ClientError> {
        let t0 = Instant::now();
        self.set_deadline(self.close_timeout);
        let mut r = self.ws.close(None);
        loop {
            match r {
                Ok(()) => {}
                Err(WsError::ConnectionClosed) => return Ok(t0.elapsed()),
                Err(e) if timed_out(&e) => {
                    return Err(ClientError::CloseTimeout(self.close_timeout));
                }
                // The server dropped TCP right after its Close (allowed).
                Err(WsError::Io(_)) | Err(WsError::AlreadyClosed) => return Ok(t0.elapsed()),
                Err(WsError::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => return Ok(t0.elapsed()),
                Err(e) => return Err(self.failed(e)),
            }
            r = self.ws.read().map(drop);
        }
    }

    fn failed(&self, e: WsError) -> ClientError {
        match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed => ClientError::Closed(None),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}
