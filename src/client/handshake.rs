//! The WebSocket upgrade: the request (our headers, the offered
//! subprotocols), then the response within the handshake deadline — a 101
//! and what it agreed to, or the refusal, the timeout or the failure
//! named. What a client offers in the request and checks in the response
//! (subprotocols; extensions) lives here, in [`request`] and
//! [`Negotiated::from_response`].

use std::time::{Duration, Instant};

use tungstenite::Error as WsError;
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::client::{Request, Response};
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::protocol::{WebSocket, WebSocketConfig};

use super::stream::timed_out;
use super::{ClientConfig, ClientError, ClientStream};
use crate::deflate::client::DeflateStream;

/// The upgrade request: `request` with the configured headers and the
/// subprotocols on offer. A header that cannot be sent is an
/// [`ClientError::InvalidUrl`], found before any network phase.
pub(super) fn request(mut request: Request, cfg: &ClientConfig) -> Result<Request, ClientError> {
    let headers = request.headers_mut();
    for (k, v) in &cfg.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| ClientError::InvalidUrl(format!("header {k:?}: {e}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|e| ClientError::InvalidUrl(format!("header {k:?}: {e}")))?;
        headers.append(name, value);
    }
    if !cfg.subprotocols.is_empty() {
        let list = cfg.subprotocols.join(", ");
        let value = HeaderValue::from_str(&list)
            .map_err(|e| ClientError::InvalidUrl(format!("subprotocols {list:?}: {e}")))?;
        headers.insert("Sec-WebSocket-Protocol", value);
    }
    if cfg.deflate {
        let offer = HeaderValue::from_static(crate::deflate::negotiate::CLIENT_OFFER);
        headers.insert("Sec-WebSocket-Extensions", offer);
    }
    Ok(request)
}

/// What the server's 101 agreed to.
pub(super) struct Negotiated {
    /// The subprotocol the server selected.
    pub subprotocol: Option<String>,
    /// The permessage-deflate agreement, as answered.
    pub deflate: Option<String>,
}

impl Negotiated {
    /// Reads the 101; an extension answer the client may not accept
    /// (RFC 7692 §5) fails the connection here.
    fn from_response(
        response: &Response,
        stream: &mut DeflateStream<ClientStream>,
        offered: bool,
    ) -> Result<Negotiated, ClientError> {
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let answer = crate::deflate::client::answer_values(response);
        let deflate = stream
            .accept_answer(offered, &answer)
            .map_err(ClientError::Handshake)?
            .map(|a| a.header_value());
        Ok(Negotiated {
            subprotocol,
            deflate,
        })
    }
}

/// An upgraded connection.
pub(super) struct Upgraded {
    pub ws: WebSocket<DeflateStream<ClientStream>>,
    pub negotiated: Negotiated,
    /// From sending the request to the end of the 101.
    pub took: Duration,
}

/// Sends `request` on `stream` and reads the response, all within the
/// handshake timeout.
pub(super) fn upgrade(
    request: Request,
    mut stream: ClientStream,
    cfg: &ClientConfig,
) -> Result<Upgraded, ClientError> {
    let limit = cfg.handshake_timeout;
    let t0 = Instant::now();
    stream.set_deadline(t0 + limit);
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    // Under tungstenite: lets compressed messages through (see
    // `deflate::client`).
    let stream = DeflateStream::new(stream);
    let (mut ws, response) = tungstenite::client::client_with_config(request, stream, Some(config))
        .map_err(|e| match e {
            HandshakeError::Failure(WsError::Http(resp)) => rejected(&resp),
            HandshakeError::Failure(e) if timed_out(&e) => ClientError::HandshakeTimeout(limit),
            HandshakeError::Failure(e) => ClientError::Handshake(e.to_string()),
            // Only a non-blocking stream interrupts; ours times out instead.
            HandshakeError::Interrupted(_) => ClientError::HandshakeTimeout(limit),
        })?;
    let negotiated = Negotiated::from_response(&response, ws.get_mut(), cfg.deflate)?;
    Ok(Upgraded {
        ws,
        negotiated,
        took: t0.elapsed(),
    })
}

/// A response other than 101: its status, `Retry-After` and body.
fn rejected(resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> ClientError {
    let retry_after = resp
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .body()
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    ClientError::Rejected {
        status: resp.status().as_u16(),
        retry_after,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::client::IntoClientRequest;

    #[test]
    fn the_request_carries_the_headers_and_the_offered_subprotocols() {
        let cfg = ClientConfig {
            subprotocols: vec!["agent_chat".into(), "v2".into()],
            ..ClientConfig::default()
        }
        .bearer("t0k");
        let req = request("ws://h/ws".into_client_request().unwrap(), &cfg).unwrap();
        let h = req.headers();
        assert_eq!(h["Authorization"], "Bearer t0k");
        assert_eq!(h["Sec-WebSocket-Protocol"], "agent_chat, v2");
    }

    #[test]
    fn a_header_that_cannot_be_sent_is_refused_before_any_network_phase() {
        let mut cfg = ClientConfig::default();
        cfg.headers.push(("X-Bad".into(), "line\nbreak".into()));
        let e = request("ws://h/ws".into_client_request().unwrap(), &cfg).unwrap_err();
        assert!(matches!(e, ClientError::InvalidUrl(_)), "{e}");
        assert_eq!(e.phase(), "url");
    }
}
