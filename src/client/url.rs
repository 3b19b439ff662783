//! The URL of a connect: `ws://` or `wss://host[:port]/path`, checked
//! before any network phase, and the upgrade request it starts from.

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Request;

use super::ClientError;

/// Where a connect goes: the upgrade request (without our headers), the
/// host and port to reach, and whether TLS runs first.
pub(super) struct Target {
    pub request: Request,
    pub host: String,
    pub port: u16,
    /// `wss://`: TLS under the WebSocket.
    pub secure: bool,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, ClientError> {
        let request = url
            .into_client_request()
            .map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))?;
        let uri = request.uri();
        let (default_port, secure) = match uri.scheme_str() {
            Some("ws") => (80, false),
            Some("wss") => (443, true),
            _ => {
                return Err(ClientError::InvalidUrl(format!(
                    "{url}: the scheme must be ws:// or wss://"
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| ClientError::InvalidUrl(format!("{url}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(default_port);
        Ok(Target {
            request,
            host,
            port,
            secure,
        })
    }
}

/// Checks a `ws://` or `wss://host[:port]/path` URL; returns the upgrade
/// request (without our headers), the host and the port (80 or 443 by
/// default).
pub fn parse_url(url: &str) -> Result<(Request, String, u16), ClientError> {
    let t = Target::parse(url)?;
    Ok((t.request, t.host, t.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_follow_the_scheme_and_ipv6_hosts_lose_their_brackets() {
        let (_, _, port) = parse_url("wss://example.com/ws").unwrap();
        assert_eq!(port, 443);
        let (_, _, port) = parse_url("ws://example.com/ws").unwrap();
        assert_eq!(port, 80);
        let t = Target::parse("wss://[::1]:8443/ws").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.secure), ("::1", 8443, true));
        assert!(!Target::parse("ws://h/").unwrap().secure);
    }
}
