//! The client's one error type: what went wrong, in which phase
//! ([`ClientError::phase`]), whether another attempt may help
//! ([`ClientError::retryable`]), and a message that names the value and
//! what to check.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tungstenite::protocol::CloseFrame;

use crate::tls::TlsProblem;

/// What went wrong, in which phase.
#[derive(Debug)]
pub enum ClientError {
    /// Not a `ws://` / `wss://` URL the client can use.
    InvalidUrl(String),
    /// Name resolution failed.
    Dns(String),
    /// Name resolution took longer than the attempt's connect timeout.
    DnsTimeout(Duration),
    /// The TCP connect to this address failed (refused, unreachable…).
    Connect(SocketAddr, io::Error),
    /// The TCP connect took longer than the attempt's connect timeout.
    ConnectTimeout(Duration),
    /// The TLS handshake failed: a certificate problem or a protocol error.
    Tls(TlsProblem),
    /// The TLS handshake took longer than `tls_timeout`.
    TlsTimeout(Duration),
    /// The CA file given for `wss://` cannot be used.
    CaFile(String),
    /// No complete 101 within `handshake_timeout`.
    HandshakeTimeout(Duration),
    /// The server answered the upgrade with another status.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// Its `Retry-After`, if any (429, 503).
        retry_after: Option<String>,
        /// Its body (the server's reason, in words).
        body: String,
    },
    /// The upgrade failed: the socket failed, or the response is not a
    /// valid 101 for this request.
    Handshake(String),
    /// A send could not be written within `receive_timeout`.
    SendTimeout(Duration),
    /// No message within `receive_timeout`.
    ReceiveTimeout(Duration),
    /// The closing handshake did not finish within `close_timeout`.
    CloseTimeout(Duration),
    /// The server closed the connection (its Close frame, if any).
    Closed(Option<CloseFrame>),
    /// The open connection failed: a WebSocket protocol error, a message
    /// that does not inflate, or the socket failing.
    Protocol(String),
    /// The client-side breaker is open: no attempt was made.
    BreakerOpen {
        /// When it lets an attempt through again.
        retry_after: Duration,
    },
    /// Every attempt failed; the last error says how.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Worth another attempt: the network or the server failed, not the
    /// request (a 4xx other than 408/429 will fail the same way again).
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Dns(_)
            | ClientError::DnsTimeout(_)
            | ClientError::Connect(..)
            | ClientError::ConnectTimeout(_)
            | ClientError::TlsTimeout(_)
            | ClientError::HandshakeTimeout(_)
            | ClientError::Handshake(_) => true,
            // A certificate will not fix itself by retrying.
            ClientError::Tls(p) => !p.is_certificate(),
            ClientError::Rejected { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }

    /// The phase this error belongs to (for the probe's report).
    pub fn phase(&self) -> &'static str {
        match self {
            ClientError::InvalidUrl(_) => "url",
            ClientError::Dns(_) | ClientError::DnsTimeout(_) => "dns",
            ClientError::Connect(..) | ClientError::ConnectTimeout(_) => "tcp",
            ClientError::Tls(_) | ClientError::TlsTimeout(_) | ClientError::CaFile(_) => "tls",
            ClientError::HandshakeTimeout(_)
            | ClientError::Rejected { .. }
            | ClientError::Handshake(_) => "handshake",
            ClientError::SendTimeout(_)
            | ClientError::ReceiveTimeout(_)
            | ClientError::Closed(_)
            | ClientError::Protocol(_) => "message",
            ClientError::CloseTimeout(_) => "close",
            ClientError::BreakerOpen { .. } => "breaker",
            ClientError::GaveUp { last, .. } => last.phase(),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = crate::settings::secs;
        match self {
            ClientError::InvalidUrl(m) => write!(f, "invalid URL: {m}"),
            ClientError::Dns(m) => write!(f, "name resolution failed: {m}; check the host name"),
            ClientError::DnsTimeout(d) => write!(
                f,
                "name resolution took longer than {}; check the resolver, or use an IP address",
                s(*d)
            ),
            ClientError::Connect(a, e) => write!(
                f,
                "TCP connect to {a} failed: {e}; check that the server listens there"
            ),
            ClientError::ConnectTimeout(d) => write!(f, "TCP connect took longer than {}", s(*d)),
            ClientError::Tls(p) => write!(f, "{p}"),
            ClientError::TlsTimeout(d) => write!(
                f,
                "TLS handshake took longer than {}; check that this port speaks TLS (wss://)",
                s(*d)
            ),
            ClientError::CaFile(m) => write!(f, "CA file: {m}"),
            ClientError::HandshakeTimeout(d) => {
                write!(f, "no complete upgrade response within {}", s(*d))
            }
            ClientError::Rejected {
                status,
                retry_after,
                body,
            } => {
                write!(f, "server answered {status} instead of 101")?;
                if let Some(r) = retry_after {
                    write!(f, " (Retry-After: {r})")?;
                }
                if !body.is_empty() {
                    write!(f, ": {}", body.trim())?;
                }
                Ok(())
            }
            ClientError::Handshake(m) => write!(f, "handshake failed: {m}"),
            ClientError::SendTimeout(d) => write!(f, "send not completed within {}", s(*d)),
            ClientError::ReceiveTimeout(d) => write!(f, "no message within {}", s(*d)),
            ClientError::CloseTimeout(d) => {
                write!(f, "closing handshake not completed within {}", s(*d))
            }
            ClientError::Closed(Some(c)) => {
                write!(
                    f,
                    "server closed the connection: {} {}",
                    u16::from(c.code),
                    c.reason
                )
            }
            ClientError::Closed(None) => write!(f, "server closed the connection"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::BreakerOpen { retry_after } => write!(
                f,
                "client circuit breaker open after repeated failures; next attempt in {}",
                s(*retry_after)
            ),
            ClientError::GaveUp { attempts, last } => {
                write!(f, "gave up after {attempts} attempts; last: {last}")
            }
        }
    }
}

impl std::error::Error for ClientError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn retry_and_phase_classification() {
        let rejected = |status| ClientError::Rejected {
            status,
            retry_after: None,
            body: String::new(),
        };
        assert!(rejected(503).retryable());
        assert!(rejected(429).retryable());
        assert!(!rejected(401).retryable());
        assert!(!rejected(400).retryable());
        assert!(ClientError::ConnectTimeout(ms(1)).retryable());
        assert!(!ClientError::ReceiveTimeout(ms(1)).retryable());
        assert!(!ClientError::InvalidUrl("x".into()).retryable());
        assert_eq!(rejected(401).phase(), "handshake");
        let gave_up = ClientError::GaveUp {
            attempts: 3,
            last: Box::new(ClientError::ConnectTimeout(ms(800))),
        };
        assert_eq!(gave_up.phase(), "tcp");
        assert_eq!(
            gave_up.to_string(),
            "gave up after 3 attempts; last: TCP connect took longer than 0.8s"
        );
    }
}
