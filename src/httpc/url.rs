//! What the client may ask for: an `http://` or `https://` URL with a
//! host, parsed once (at start-up for a configured upstream).

use std::fmt;

use ureq_proto::http::Uri;

/// A parsed `http(s)://HOST[:PORT]/PATH?QUERY`.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given (the request line and `Host` come from it).
    pub uri: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Why a URL cannot be a target: the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetError(pub &'static str);

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No query string in logs: it may hold a key. An IPv6 host keeps
        // its brackets, so what is shown can be set again.
        let scheme = if self.tls { "https" } else { "http" };
        match self.host.contains(':') {
            true => write!(f, "{scheme}://[{}]:{}", self.host, self.port),
            false => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        const RULE: &str = "must be an http:// or https:// URL with a host \
                            (http://HOST[:PORT]/PATH), without user:password@";
        let uri: Uri = url.trim().parse().map_err(|_| TargetError(RULE))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(TargetError(RULE)),
        };
        let authority = uri.authority().ok_or(TargetError(RULE))?;
        if authority.as_str().contains('@') {
            return Err(TargetError(RULE));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(TargetError(RULE));
        }
        Ok(Target {
            uri: uri.to_string(),
            tls,
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        })
    }

    /// `host:port`, for resolving.
    pub fn host_port(&self) -> (String, u16) {
        (self.host.clone(), self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_name_the_rule() {
        let t = Target::parse("http://127.0.0.1:8000/agent?x=1").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (false, "127.0.0.1", 8000));
        let t = Target::parse("https://agent.internal/v1/run").unwrap();
        assert_eq!((t.tls, t.port), (true, 443));
        let t = Target::parse("http://[::1]/run").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(format!("{t:?}"), "http://[::1]:80");
        assert!(
            Target::parse(&format!("{t:?}")).is_ok(),
            "shown can be set again"
        );
        for bad in [
            "ftp://h/x",
            "http://",
            "/relative",
            "http://u:p@h/x",
            "agent:8000",
            "",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        let shown = format!("{:?}", Target::parse("https://h/x?key=secret").unwrap());
        assert!(!shown.contains("secret"), "{shown}");
    }
}
