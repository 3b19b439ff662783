//! The front door (SPEC §4): what a request from the public internet is
//! checked against before it costs anything — its browser origin, the
//! client address it comes from (through trusted proxies only), that
//! address's connections and connection rate — and the per-connection and
//! per-subject limits after it. Pure decisions with time as input; the
//! server applies them and counts every refusal.
//!
//! Parts: `bucket` (token bucket), `clients` (the bounded per-address
//! table), `subjects` (runs per subject across reactors).

pub mod bucket;
pub mod clients;
pub mod subjects;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::settings::{BURST_SECONDS, Cidr, ClientLimits, Origins, canonical, split_origin};

pub use bucket::Bucket;
pub use clients::{Clients, Over, key_of};
pub use subjects::SubjectRuns;

/// Why the front door refused something; each is counted
/// (`pollcap_front_door_refusals_total{reason}`) and logged at most once a
/// second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// 403: a browser origin that is not allowed.
    Origin,
    /// 429: the client address has `max_connections_per_ip` open.
    IpConnections,
    /// 429: the client address is over `ip_connects_per_sec`.
    IpRate,
    /// 400: `X-Forwarded-For` and `Forwarded` name different clients.
    Forwarded,
    /// Close 1008: over `conn_messages_per_sec`.
    ConnMessages,
    /// Close 1008: over `conn_bytes_per_sec`.
    ConnBytes,
    /// `overloaded`: the subject has `max_runs_per_subject` runs.
    SubjectRuns,
}

impl Refused {
    pub const ALL: [Refused; 7] = [
        Refused::Origin,
        Refused::IpConnections,
        Refused::IpRate,
        Refused::Forwarded,
        Refused::ConnMessages,
        Refused::ConnBytes,
        Refused::SubjectRuns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refused::Origin => "origin",
            Refused::IpConnections => "ip_connections",
            Refused::IpRate => "ip_rate",
            Refused::Forwarded => "forwarded",
            Refused::ConnMessages => "conn_messages",
            Refused::ConnBytes => "conn_bytes",
            Refused::SubjectRuns => "subject_runs",
        }
    }
}

/// One log line per reason per second at most, naming how many were not
/// logged since: a flood of refusals cannot flood the log.
#[derive(Debug)]
pub struct RefusalLog {
    epoch: Instant,
    /// Per reason: the millisecond (since `epoch`) of the last line + 1.
    last: [AtomicU64; Refused::ALL.len()],
    quiet: [AtomicU64; Refused::ALL.len()],
}

impl Default for RefusalLog {
    /// Counting from now (only differences of times are used).
    fn default() -> RefusalLog {
        RefusalLog::new(Instant::now())
    }
}

impl RefusalLog {
    pub fn new(epoch: Instant) -> RefusalLog {
        RefusalLog {
            epoch,
            last: Default::default(),
            quiet: Default::default(),
        }
    }

    /// Logs `what` for `reason` at `now` unless a line for it went out
    /// less than a second ago.
    pub fn note(&self, reason: Refused, now: Instant, what: std::fmt::Arguments) {
        let i = reason as usize;
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        let last = self.last[i].load(Relaxed);
        if (last != 0 && ms < last + 1000)
            || self.last[i]
                .compare_exchange(last, ms, Relaxed, Relaxed)
                .is_err()
        {
            self.quiet[i].fetch_add(1, Relaxed);
            return;
        }
        let quiet = self.quiet[i].swap(0, Relaxed);
        if quiet > 0 {
            tracing::info!(
                reason = reason.name(),
                "refused: {what} ({quiet} more since the last line)"
            );
        } else {
            tracing::info!(reason = reason.name(), "refused: {what}");
        }
    }
}

/// Whether a request with `origin` (its `Origin` header) may upgrade on
/// a server reached as `host`: no `Origin` (not a browser), the server's
/// own origin (the built-in page: same host and port, http or https), or
/// an allowed one.
pub fn origin_allowed(allowed: &Origins, origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allowed.any {
        return true;
    }
    let Some((scheme, ohost, port)) = split_origin(origin) else {
        return false; // `null` (sandboxed, file:) or malformed
    };
    if let Some(host) = host {
        let own = |scheme: &str| {
            split_origin(&format!("{scheme}://{host}"))
                .is_some_and(|(_, h, p)| h == ohost && p == port)
        };
        if own(&scheme) {
            return true;
        }
    }
    allowed
        .patterns
        .iter()
        .any(|p| p.matches(&scheme, &ohost, &port))
}

/// The addresses a forwarding header lists, first to last (`None` for an
/// entry that is not an address: `unknown`, an obfuscated name, junk).
fn hops_xff(v: &str) -> Vec<Option<IpAddr>> {
    v.split(',').map(|h| parse_hop(h.trim())).collect()
}

fn hops_forwarded(v: &str) -> Vec<Option<IpAddr>> {
    v.split(',')
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, v)| parse_hop(v.trim().trim_matches('"')))
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_hop(h: &str) -> Option<IpAddr> {
    if let Ok(ip) = h.parse() {
        return Some(ip);
    }
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split_once(']').and_then(|(a, _)| a.parse().ok());
    }
    let (a, port) = h.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    a.parse().ok()
}

/// The client of a list of hops reached through `peer`: walking back from
/// the peer, the first hop not in `trusted`; when every hop is trusted,
/// the first one; when a hop is not an address, the last trusted one
/// before it.
fn walk(peer: IpAddr, hops: &[Option<IpAddr>], trusted: &[Cidr]) -> IpAddr {
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = canonical(*ip);
                if !trusted.iter().any(|c| c.contains(client)) {
                    return client;
                }
            }
            None => return client,
        }
    }
    client
}

/// The client address of a request from `peer`: the peer itself, unless
/// it is a trusted proxy, then the last untrusted hop of
/// `X-Forwarded-For` or `Forwarded`. `Err` when both headers are present
/// and name different clients (a client's own copy of the header the
/// proxy does not set would otherwise choose its address).
pub fn client_addr(
    peer: IpAddr,
    trusted: &[Cidr],
    xff: Option<&str>,
    forwarded: Option<&str>,
) -> Result<IpAddr, Refused> {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.iter().any(|c| c.contains(peer)) {
        return Ok(peer);
    }
    let by_xff = xff.map(|v| walk(peer, &hops_xff(v), trusted));
    let by_fwd = forwarded.map(|v| walk(peer, &hops_forwarded(v), trusted));
    match (by_xff, by_fwd) {
        (Some(a), Some(b)) if a != b => Err(Refused::Forwarded),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => Ok(peer),
    }
}

/// One connection's message and byte buckets (`conn_messages_per_sec`,
/// `conn_bytes_per_sec`), checked on every inbound message.
#[derive(Clone, Copy, Debug)]
pub struct ConnRate {
    msgs: Bucket,
    bytes: Bucket,
}

impl ConnRate {
    /// Full buckets for a connection opened at `now`; `None` when both
    /// limits are off.
    pub fn new(l: &ClientLimits, max_message: usize, now: Instant) -> Option<ConnRate> {
        if l.conn_messages_per_sec == 0 && l.conn_bytes_per_sec == 0 {
            return None;
        }
        let (m, b) = capacities(l, max_message);
        Some(ConnRate {
            msgs: Bucket::full(m, now),
            bytes: Bucket::full(b, now),
        })
    }

    /// One inbound message of `len` bytes at `now`.
    pub fn take(
        &mut self,
        len: usize,
        l: &ClientLimits,
        max_message: usize,
        now: Instant,
    ) -> Result<(), Refused> {
        let (m, b) = capacities(l, max_message);
        if l.conn_messages_per_sec > 0
            && self
                .msgs
                .take(1.0, f64::from(l.conn_messages_per_sec), m, now)
                .is_err()
        {
            return Err(Refused::ConnMessages);
        }
        if l.conn_bytes_per_sec > 0
            && self
                .bytes
                .take(len as f64, l.conn_bytes_per_sec as f64, b, now)
                .is_err()
        {
            return Err(Refused::ConnBytes);
        }
        Ok(())
    }
}

/// Bucket sizes: [`BURST_SECONDS`] of each rate; the byte bucket holds at
/// least one message of the largest size.
fn capacities(l: &ClientLimits, max_message: usize) -> (f64, f64) {
    let burst = f64::from(BURST_SECONDS);
    let m = f64::from(l.conn_messages_per_sec) * burst;
    let b = (l.conn_bytes_per_sec as f64 * burst).max(max_message as f64);
    (m, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Origins, parse_cidrs};
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn origins_own_listed_and_absent() {
        let none = Origins::default();
        assert!(origin_allowed(&none, None, Some("h:1")));
        assert!(origin_allowed(&none, Some("http://h:1"), Some("h:1")));
        assert!(origin_allowed(
            &none,
            Some("https://example.com"),
            Some("example.com")
        ));
        assert!(origin_allowed(
            &none,
            Some("https://example.com"),
            Some("example.com:443")
        ));
        assert!(!origin_allowed(&none, Some("http://h:2"), Some("h:1")));
        assert!(!origin_allowed(&none, Some("http://evil.com"), Some("h:1")));
        assert!(!origin_allowed(&none, Some("null"), Some("h:1")));
        assert!(!origin_allowed(&none, Some("http://h:1"), None));
        let some = Origins::parse("https://*.example.com").unwrap();
        assert!(origin_allowed(
            &some,
            Some("https://app.example.com"),
            Some("h:1")
        ));
        assert!(!origin_allowed(
            &some,
            Some("https://example.com.evil"),
            Some("h:1")
        ));
        let any = Origins::parse("*").unwrap();
        assert!(origin_allowed(&any, Some("null"), None));
    }

    #[test]
    fn the_client_is_the_last_untrusted_hop() {
        let lb = parse_cidrs("10.0.0.0/8").unwrap();
        let peer = ip("10.1.1.1");
        // An untrusted peer's headers are ignored.
        assert_eq!(
            client_addr(ip("8.8.8.8"), &lb, Some("1.1.1.1"), None),
            Ok(ip("8.8.8.8"))
        );
        assert_eq!(client_addr(peer, &[], Some("1.1.1.1"), None), Ok(peer));
        // A forged first entry does not win over the hop the proxy saw.
        let xff = "6.6.6.6, 2.2.2.2, 10.2.2.2";
        assert_eq!(client_addr(peer, &lb, Some(xff), None), Ok(ip("2.2.2.2")));
        assert_eq!(
            client_addr(peer, &lb, Some("10.3.3.3, 10.4.4.4"), None),
            Ok(ip("10.3.3.3"))
        );
        assert_eq!(
            client_addr(peer, &lb, Some("junk, 10.4.4.4"), None),
            Ok(ip("10.4.4.4"))
        );
        assert_eq!(
            client_addr(peer, &lb, Some("[2001:db8::1]:443"), None),
            Ok(ip("2001:db8::1"))
        );
        let fwd = r#"for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, for=10.9.9.9"#;
        assert_eq!(
            client_addr(peer, &lb, None, Some(fwd)),
            Ok(ip("2001:db8::7"))
        );
        assert_eq!(client_addr(peer, &lb, None, Some("for=_hidden")), Ok(peer));
        // Both, naming the same client: fine; different ones: ambiguous.
        let same = client_addr(peer, &lb, Some("2.2.2.2"), Some("for=2.2.2.2"));
        assert_eq!(same, Ok(ip("2.2.2.2")));
        let two = client_addr(peer, &lb, Some("3.3.3.3"), Some("for=2.2.2.2"));
        assert_eq!(two, Err(Refused::Forwarded));
    }

    #[test]
    fn connection_buckets() {
        let l = ClientLimits {
            max_connections_per_ip: 0,
            ip_connects_per_sec: 0,
            conn_messages_per_sec: 2,
            conn_bytes_per_sec: 10,
            max_runs_per_subject: 0,
        };
        let t = Instant::now();
        let mut r = ConnRate::new(&l, 150, t).unwrap();
        // The byte bucket holds one message of the largest size.
        assert_eq!(r.take(150, &l, 150, t), Ok(()));
        assert_eq!(r.take(1, &l, 150, t), Err(Refused::ConnBytes));
        let mut r = ConnRate::new(&l, 1, t).unwrap();
        for _ in 0..2 * BURST_SECONDS {
            assert_eq!(r.take(0, &l, 1, t), Ok(()));
        }
        assert_eq!(r.take(0, &l, 1, t), Err(Refused::ConnMessages));
        assert_eq!(r.take(0, &l, 1, t + Duration::from_millis(500)), Ok(()));
        let off = ClientLimits {
            conn_messages_per_sec: 0,
            conn_bytes_per_sec: 0,
            ..l
        };
        assert!(ConnRate::new(&off, 1, t).is_none());
    }

    #[test]
    fn refusal_lines_at_most_once_a_second() {
        let t0 = Instant::now();
        let log = RefusalLog::new(t0);
        log.note(Refused::Origin, t0, format_args!("a"));
        assert_ne!(log.last[0].load(Relaxed), 0);
        for i in 0..10 {
            log.note(
                Refused::Origin,
                t0 + Duration::from_millis(i * 50),
                format_args!("b"),
            );
        }
        assert_eq!(log.quiet[0].load(Relaxed), 10);
        log.note(
            Refused::Origin,
            t0 + Duration::from_millis(1001),
            format_args!("c"),
        );
        assert_eq!(log.quiet[0].load(Relaxed), 0);
    }
}
