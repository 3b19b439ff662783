//! Blocking WebSocket client with the server's phase model (SPEC §6): DNS,
//! TCP connect, handshake, per-message receive and close each have a
//! deadline; failed attempts are retried with exponential backoff and full
//! jitter and progressive connect timeouts, guarded by a client-side
//! circuit breaker.
//!
//! The policy ([`backoff`], [`connect_timeout`], the breaker) is pure and
//! time-injected. The driver is blocking and reads the clock itself: a
//! client owns one socket at a time, so a reactor would add nothing. Every
//! wait is still bounded: socket timeouts are re-armed before each read and
//! write from one absolute deadline ([`DeadlineStream`]), so a peer
//! dribbling a byte at a time cannot stretch a phase, and name resolution
//! runs on a helper thread that is abandoned when its deadline passes
//! (the system resolver cannot be cancelled).
//!
//! One file per job: [`Client`] (this file) runs attempts with retries,
//! backoff and the breaker; an attempt is `url` → `connect` (DNS + TCP) →
//! `tls` (`wss://`) → `handshake` (the upgrade request and its response),
//! over a `stream` with one deadline, giving a [`Connection`]; `error` is
//! the one error type.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::breaker::{Breaker, BreakerState};

mod connect;
mod connection;
mod error;
mod handshake;
mod stream;
mod tls;
mod url;

pub use connection::Connection;
pub use error::ClientError;
pub use stream::{ClientStream, DeadlineStream};
pub use url::parse_url;

/// Per-attempt connect timeouts of SPEC §6; the last repeats.
pub const DEFAULT_CONNECT_TIMEOUTS: [Duration; 5] = [
    Duration::from_millis(3000),
    Duration::from_millis(2000),
    Duration::from_millis(1500),
    Duration::from_millis(1000),
    Duration::from_millis(800),
];

/// Client settings; [`ClientConfig::default`] follows SPEC §6 where it
/// gives values (retries, backoff, connect timeouts). The handshake,
/// receive and close deadlines and the breaker's figures are ours: a
/// handshake has 5 s, a reply 15 s to start (the server's default
/// execution deadline), a close 2 s; 5 failed attempts in a row open the
/// breaker for 30 s (the backoff ceiling).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Connect timeout of attempt 1, 2, …; the last one repeats.
    pub connect_timeouts: Vec<Duration>,
    /// Attempts per [`Client::connect`] (at least 1).
    pub max_attempts: u32,
    /// The backoff before retry 1; it doubles per retry (full jitter, see
    /// [`backoff`]).
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_max: Duration,
    /// From the request's first byte to the whole 101 response read
    /// ([`ClientError::HandshakeTimeout`] past it).
    pub handshake_timeout: Duration,
    /// Longest wait for the next message (and for a send to complete).
    pub receive_timeout: Duration,
    /// The closing handshake ([`Connection::close`]); past it the socket is
    /// dropped ([`ClientError::CloseTimeout`]).
    pub close_timeout: Duration,
    /// Offered in `Sec-WebSocket-Protocol`, in order of preference.
    pub subprotocols: Vec<String>,
    /// Extra request headers, e.g. `Authorization: Bearer …`.
    pub headers: Vec<(String, String)>,
    /// Failed attempts in a row (network, timeouts, 5xx/408/429) that open
    /// the client's breaker.
    pub breaker_threshold: u32,
    /// How long the breaker stays open: [`Client::connect`] fails at once
    /// with [`ClientError::BreakerOpen`] meanwhile.
    pub breaker_recovery: Duration,
    /// Deadline of the TLS handshake (`wss://`).
    pub tls_timeout: Duration,
    /// PEM file of the CA(s) to trust for `wss://` (a private CA);
    /// `None` trusts the built-in web roots (`webpki-roots`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Offer permessage-deflate (on by default); what the server answered
    /// is in [`ConnectReport::deflate`].
    pub deflate: bool,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            connect_timeouts: DEFAULT_CONNECT_TIMEOUTS.to_vec(),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            receive_timeout: Duration::from_secs(15),
            close_timeout: Duration::from_secs(2),
            subprotocols: Vec::new(),
            headers: Vec::new(),
            breaker_threshold: 5,
            breaker_recovery: Duration::from_secs(30),
            tls_timeout: Duration::from_secs(5),
            ca_file: None,
            deflate: true,
        }
    }
}

impl ClientConfig {
    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(mut self, token: &str) -> ClientConfig {
        self.headers
            .push(("Authorization".into(), format!("Bearer {token}")));
        self
    }
}

/// The wait before retry `n` (1 = after the first failed attempt): full
/// jitter, uniform in [0, min(max, base · 2ⁿ⁻¹)]; `unit` is a sample in
/// [0, 1].
pub fn backoff(base: Duration, max: Duration, n: u32, unit: f64) -> Duration {
    let doublings = n.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1u32 << doublings).min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// The connect timeout of attempt `n` (0-based): progressive, the last
/// entry repeating; 3 s if the list is empty.
pub fn connect_timeout(timeouts: &[Duration], n: u32) -> Duration {
    timeouts
        .get(n as usize)
        .or(timeouts.last())
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUTS[0])
}

/// A sample in [0, 1) for jitter. std's hasher keys are random per
/// process; jitter needs spread, not cryptographic quality.
fn jitter_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Phase durations of a successful connect.
#[derive(Clone, Debug)]
pub struct ConnectReport {
    /// Attempts made, this one included.
    pub attempts: u32,
    /// The address connected to.
    pub addr: SocketAddr,
    /// Name resolution.
    pub dns: Duration,
    /// The TCP connect.
    pub tcp: Duration,
    /// The TLS handshake (`wss://` only).
    pub tls: Option<Duration>,
    /// The negotiated TLS version, e.g. `TLSv1_3` (`wss://` only).
    pub tls_version: Option<String>,
    /// The upgrade: request written to 101 read.
    pub handshake: Duration,
    /// The subprotocol the server selected.
    pub subprotocol: Option<String>,
    /// The permessage-deflate agreement, as the server answered it
    /// (`None`: not negotiated, or not offered).
    pub deflate: Option<String>,
}

/// Connects with retries, backoff and the breaker; reusable across
/// connects so the breaker remembers.
///
/// ```no_run
/// use pollcap::client::{Client, ClientConfig};
/// use tungstenite::Message;
///
/// let cfg = ClientConfig {
///     subprotocols: vec!["agent_chat".into()],
///     ..ClientConfig::default()
/// }
/// .bearer("a-token");
/// let (mut conn, report) = Client::new(cfg).connect("ws://127.0.0.1:8765/ws")?;
/// println!("handshake took {:?} after {} attempt(s)", report.handshake, report.attempts);
/// conn.send(Message::text(r#"{"type":"user_message","text":"hi"}"#))?;
/// let first = conn.recv()?; // within the receive deadline, or an error
/// println!("{first}");
/// conn.close()?;
///
/// // A run whose connection was lost after event 3 (seq 3) goes on on
/// // the server: reconnect (with the same retries) and resume it.
/// let (mut conn, _) = Client::new(ClientConfig::default()).connect("ws://127.0.0.1:8765/ws")?;
/// conn.resume("the run_id of its events", 3)?;
/// println!("{}", conn.recv()?); // seq 4, then the rest until agent_completed
/// # Ok::<(), pollcap::client::ClientError>(())
/// ```
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    breaker: Breaker,
    /// The roots for `wss://`, read once.
    trust: tls::Trust,
}

impl Client {
    /// A client with a closed breaker; nothing is resolved or read until
    /// [`Client::connect`].
    pub fn new(cfg: ClientConfig) -> Client {
        let breaker = Breaker::new(cfg.breaker_threshold, cfg.breaker_recovery);
        Client {
            cfg,
            breaker,
            trust: tls::Trust::default(),
        }
    }

    /// The breaker's state now.
    pub fn breaker_state(&mut self) -> BreakerState {
        self.breaker.state(Instant::now())
    }

    /// Opens `url` (`ws://host[:port]/path`). Retries what
    /// [`ClientError::retryable`] allows, up to `max_attempts`; attempts
    /// that fail through the network or the server count against the
    /// breaker, and an open breaker fails at once without touching the
    /// network.
    pub fn connect(&mut self, url: &str) -> Result<(Connection, ConnectReport), ClientError> {
        let attempts = self.cfg.max_attempts.max(1);
        let mut last = None;
        for n in 0..attempts {
            if n > 0 {
                let wait = backoff(
                    self.cfg.backoff_base,
                    self.cfg.backoff_max,
                    n,
                    jitter_unit(),
                );
                std::thread::sleep(wait);
            }
            let permit =
                self.breaker
                    .allow(Instant::now())
                    .map_err(|r| ClientError::BreakerOpen {
                        retry_after: r.retry_after,
                    })?;
            match self.attempt(url, connect_timeout(&self.cfg.connect_timeouts, n)) {
                Ok((conn, mut report)) => {
                    self.breaker.success(permit);
                    report.attempts = n + 1;
                    return Ok((conn, report));
                }
                Err(e) if e.retryable() => {
                    self.breaker.failure(permit, Instant::now());
                    last = Some(e);
                }
                Err(e) => {
                    // The server answered: it is up, whatever it said.
                    self.breaker.success(permit);
                    return Err(e);
                }
            }
        }
        let last = last.expect("at least one attempt");
        if attempts == 1 {
            return Err(last);
        }
        Err(ClientError::GaveUp {
            attempts,
            last: Box::new(last),
        })
    }

    /// One attempt: the URL and the request, then DNS and TCP within
    /// `connect_in`, TLS for `wss://`, and the upgrade, each phase within
    /// its deadline.
    fn attempt(
        &mut self,
        url: &str,
        connect_in: Duration,
    ) -> Result<(Connection, ConnectReport), ClientError> {
        let target = url::Target::parse(url)?;
        let request = handshake::request(target.request, &self.cfg)?;
        let connected = connect::open(&target.host, target.port, connect_in)?;
        let (stream, tls) = self.secure(&target.host, target.secure, connected.tcp)?;
        let upgraded = handshake::upgrade(request, stream, &self.cfg)?;
        let report = ConnectReport {
            attempts: 1,
            addr: connected.addr,
            dns: connected.dns,
            tcp: connected.tcp_time,
            tls: tls.as_ref().map(|t| t.took),
            tls_version: tls.and_then(|t| t.version),
            handshake: upgraded.took,
            subprotocol: upgraded.negotiated.subprotocol,
            deflate: upgraded.negotiated.deflate,
        };
        Ok((Connection::new(upgraded.ws, &self.cfg), report))
    }

    /// The stream for the upgrade: the socket under its deadline, with the
    /// TLS handshake done first for `wss://` (within `tls_timeout`).
    fn secure(
        &mut self,
        host: &str,
        secure: bool,
        tcp: std::net::TcpStream,
    ) -> Result<(ClientStream, Option<TlsPhase>), ClientError> {
        let limit = self.cfg.tls_timeout;
        let sock = DeadlineStream::new(tcp, Instant::now() + limit);
        if !secure {
            return Ok((ClientStream::Plain(sock), None));
        }
        let t0 = Instant::now();
        let ca_file = self.cfg.ca_file.as_deref();
        let session = self.trust.handshake(ca_file, host, sock, limit)?;
        let phase = TlsPhase {
            took: t0.elapsed(),
            version: session.conn.protocol_version().map(|v| format!("{v:?}")),
        };
        Ok((ClientStream::Tls(Box::new(session)), Some(phase)))
    }
}

/// How the TLS phase went.
struct TlsPhase {
    took: Duration,
    version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let (base, max) = (ms(500), Duration::from_secs(30));
        // The ceiling doubles per retry: 0.5, 1, 2, 4, 8, 16, then 30 s.
        let ceilings: Vec<_> = (1..=8).map(|n| backoff(base, max, n, 1.0)).collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000].map(ms)
        );
        // Full jitter: anywhere from zero to the ceiling.
        assert_eq!(backoff(base, max, 3, 0.0), Duration::ZERO);
        assert_eq!(backoff(base, max, 3, 0.25), ms(500));
        // Out-of-range samples and huge retry counts stay bounded.
        assert_eq!(backoff(base, max, 3, 7.0), ms(2000));
        assert_eq!(backoff(base, max, u32::MAX, 1.0), max);
    }

    #[test]
    fn jitter_samples_are_spread_over_the_unit_interval() {
        let v: Vec<f64> = (0..200).map(|_| jitter_unit()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(v.iter().any(|&x| x < 0.25) && v.iter().any(|&x| x > 0.75));
    }

    #[test]
    fn connect_timeouts_are_progressive_and_the_last_repeats() {
        let t = DEFAULT_CONNECT_TIMEOUTS;
        let got: Vec<_> = (0..7).map(|n| connect_timeout(&t, n)).collect();
        assert_eq!(got, [3000, 2000, 1500, 1000, 800, 800, 800].map(ms));
        assert_eq!(connect_timeout(&[], 3), ms(3000));
    }

    #[test]
    fn only_ws_and_wss_urls_are_accepted() {
        let (_, _, port) = parse_url("wss://example.com/ws").unwrap();
        assert_eq!(port, 443);
        let (_, _, port) = parse_url("ws://example.com/ws").unwrap();
        assert_eq!(port, 80);
        let mut c = Client::new(ClientConfig::default());
        for url in ["https://example.com/ws", "http://example.com/", "not a url"] {
            let e = c.attempt(url, ms(100)).unwrap_err();
            assert!(matches!(e, ClientError::InvalidUrl(_)), "{url}: {e}");
        }
    }
}
