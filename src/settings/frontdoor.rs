//! The front door's setting values (SPEC §4 "The front door"): tokens
//! from an identity provider ([`Idp`]), allowed origins ([`Origins`]),
//! per-client limits and trusted proxies ([`ClientLimits`], [`Cidr`]).
//! Parsing and matching only; the server applies them.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Tokens from an identity provider (JWKS) and the claim rules every JWT
/// meets, HS256 included.
#[derive(Clone, Debug, PartialEq)]
pub struct Idp {
    /// Where the key set is fetched (`https://…/jwks.json`).
    pub jwks_url: Option<String>,
    /// Or a local key set, reloaded when its size or mtime changes.
    pub jwks_file: Option<PathBuf>,
    /// Accepted `aud` values (any one); required with a key set.
    pub audience: Vec<String>,
    /// The required `iss`, if set.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Time between scheduled key set fetches.
    pub jwks_refresh: Duration,
}

impl Idp {
    /// A key set is configured (URL or file).
    pub fn has_jwks(&self) -> bool {
        self.jwks_url.is_some() || self.jwks_file.is_some()
    }
}

/// Which browser origins may open a WebSocket (besides the server's own,
/// always allowed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origins {
    /// `*`: any origin (no check).
    pub any: bool,
    /// The allowed patterns (when not `any`).
    pub patterns: Vec<OriginPattern>,
}

/// One allowed origin: exact (`https://app.example.com`), any subdomain
/// (`https://*.example.com`), or any port (`http://localhost:*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    /// The host, lowercase; for a subdomain pattern, the part after `*.`.
    host: String,
    subdomains: bool,
    /// `None`: any port; `Some("")`: the scheme's default port.
    port: Option<String>,
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let star = if self.subdomains { "*." } else { "" };
        write!(f, "{}://{star}{}", self.scheme, self.host)?;
        match &self.port {
            None => f.write_str(":*"),
            Some(p) if p.is_empty() => Ok(()),
            Some(p) => write!(f, ":{p}"),
        }
    }
}

/// An origin split into scheme, host and port (the scheme's default port
/// as `""`), lowercase; `None` if it is not `scheme://host[:port]`.
pub fn split_origin(origin: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = origin.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") || rest.is_empty() || rest.contains('/') {
        return None;
    }
    let rest = rest.to_ascii_lowercase();
    // An IPv6 literal keeps its brackets; the port follows them.
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']')?;
            let port = match after {
                "" => "",
                p => p.strip_prefix(':')?,
            };
            (format!("[{addr}]"), port.to_string())
        }
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (rest.clone(), String::new()),
        },
    };
    let default = if scheme == "https" { "443" } else { "80" };
    let port = if port == default { String::new() } else { port };
    if host.is_empty() || !(port.is_empty() || port == "*" || port.parse::<u16>().is_ok()) {
        return None;
    }
    Some((scheme, host, port))
}

impl OriginPattern {
    /// Parses one pattern; `Err` is the rule it broke.
    pub fn parse(v: &str) -> Result<OriginPattern, String> {
        let rule = "must be an origin (scheme://host[:port], http or https, no path), \
                    optionally https://*.example.com or http://localhost:*";
        let (scheme, host, port) = split_origin(v).ok_or(rule)?;
        let (host, subdomains) = match host.strip_prefix("*.") {
            Some(h) if !h.is_empty() && !h.contains('*') => (h.to_string(), true),
            _ if host.contains('*') => return Err(rule.into()),
            _ => (host, false),
        };
        let port = (port != "*").then_some(port);
        Ok(OriginPattern {
            scheme,
            host,
            subdomains,
            port,
        })
    }

    /// Whether `origin` (already split by [`split_origin`]) matches.
    pub fn matches(&self, scheme: &str, host: &str, port: &str) -> bool {
        if scheme != self.scheme || self.port.as_deref().is_some_and(|p| p != port) {
            return false;
        }
        if self.subdomains {
            host.strip_suffix(self.host.as_str())
                .is_some_and(|pre| pre.len() > 1 && pre.ends_with('.'))
        } else {
            host == self.host
        }
    }
}

impl Origins {
    /// A comma-separated list; `*` alone allows any origin; empty allows
    /// only the server's own.
    pub fn parse(v: &str) -> Result<Origins, String> {
        let items: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items == ["*"] {
            return Ok(Origins {
                any: true,
                patterns: Vec::new(),
            });
        }
        let patterns = items
            .iter()
            .map(|i| OriginPattern::parse(i).map_err(|e| format!("{i:?} {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Origins {
            any: false,
            patterns,
        })
    }

    /// The list as `--allowed-origins` takes it (`*`, or patterns joined by
    /// commas).
    pub fn show(&self) -> String {
        if self.any {
            return "*".into();
        }
        let v: Vec<String> = self.patterns.iter().map(|p| p.to_string()).collect();
        v.join(",")
    }
}

/// An address range (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

impl Cidr {
    /// Parses `ADDR/BITS` or one address (a /32 or /128); `Err` is the rule.
    pub fn parse(v: &str) -> Result<Cidr, String> {
        let rule = "must be an IP address or CIDR range (10.0.0.0/8, 2001:db8::/32)";
        let (addr, bits) = match v.trim().split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (v.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| rule)?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or(rule)?,
            None => max,
        };
        Ok(Cidr { net, bits })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let whole = usize::from(bits / 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// Parses a comma-separated list of ranges (empty: none).
pub fn parse_cidrs(v: &str) -> Result<Vec<Cidr>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|i| Cidr::parse(i).map_err(|e| format!("{i:?} {e}")))
        .collect()
}

/// Per-client limits; 0 turns one off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Open WebSocket connections per client address (429 at upgrade).
    pub max_connections_per_ip: usize,
    /// New upgrades per client address per second, a token bucket of
    /// [`BURST_SECONDS`] × this (429 at upgrade).
    pub ip_connects_per_sec: u32,
    /// Messages per connection per second, a token bucket of
    /// [`BURST_SECONDS`] × this (close 1008 `rate limit`).
    pub conn_messages_per_sec: u32,
    /// Message bytes per connection per second, a token bucket of
    /// [`BURST_SECONDS`] × this but never less than `max_message`.
    pub conn_bytes_per_sec: u64,
    /// Runs one subject may have in flight across every reactor
    /// (`overloaded`).
    pub max_runs_per_subject: usize,
}

/// How many seconds of its rate a token bucket holds: a burst of that
/// many seconds' worth passes at once.
pub const BURST_SECONDS: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &str, origin: &str) -> bool {
        let o = Origins::parse(list).unwrap();
        let (s, h, p) = split_origin(origin).unwrap();
        o.any || o.patterns.iter().any(|pat| pat.matches(&s, &h, &p))
    }

    #[test]
    fn origin_patterns() {
        let list = "https://app.example.com,https://*.example.org,http://localhost:*";
        assert!(allowed(list, "https://app.example.com"));
        assert!(allowed(list, "https://APP.example.com:443"));
        assert!(!allowed(list, "http://app.example.com"));
        assert!(!allowed(list, "https://app.example.com:8443"));
        assert!(!allowed(list, "https://evil.com"));
        assert!(allowed(list, "https://a.example.org"));
        assert!(allowed(list, "https://a.b.example.org"));
        assert!(!allowed(list, "https://example.org"));
        assert!(!allowed(list, "https://badexample.org"));
        assert!(allowed(list, "http://localhost:5173"));
        assert!(allowed(list, "http://localhost"));
        assert!(!allowed(list, "http://localhost.evil.com"));
        assert!(allowed("*", "https://anything.example"));
        assert!(allowed("http://[::1]:*", "http://[::1]:8080"));
        for bad in [
            "example.com",
            "ftp://x",
            "https://x/path",
            "https://a*.b",
            "https://*",
        ] {
            assert!(Origins::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Origins::parse("").unwrap(), Origins::default());
        assert_eq!(split_origin("null"), None);
        let shown = Origins::parse(list).unwrap().show();
        assert_eq!(
            Origins::parse(&shown).unwrap(),
            Origins::parse(list).unwrap()
        );
    }

    #[test]
    fn cidrs() {
        let c = parse_cidrs("10.0.0.0/8, 192.168.1.7, 2001:db8::/32").unwrap();
        let has = |ip: &str| c.iter().any(|c| c.contains(ip.parse().unwrap()));
        assert!(has("10.200.3.4"));
        assert!(has("::ffff:10.1.1.1"));
        assert!(!has("11.0.0.1"));
        assert!(has("192.168.1.7"));
        assert!(!has("192.168.1.8"));
        assert!(has("2001:db8:1::9"));
        assert!(!has("2001:db9::1"));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(
            Cidr::parse("127.0.0.1/31")
                .unwrap()
                .contains("127.0.0.0".parse().unwrap())
        );
        assert!(parse_cidrs("").unwrap().is_empty());
    }
}
