//! The permessage-deflate handshake (RFC 7692 §5, §7.1): the server's
//! choice among a client's offers ([`answer`]) and the client's offer and
//! check of the server's answer ([`CLIENT_OFFER`], [`client_accept`]).
//! Pure functions over header values: the connection calls them from its
//! own handshake code, the client from its own.

use std::fmt::Write;

/// The extension's registered name.
pub const NAME: &str = "permessage-deflate";

/// What the client offers: what browsers and Python `websockets` offer.
/// The server decides about context takeover; the client honours either.
pub const CLIENT_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// What both ends agreed for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// `server_max_window_bits`, when the client asked for one (the
    /// server's answer then names it): the server compresses with at most
    /// this window. `None`: up to 15.
    pub server_max_window_bits: Option<u8>,
    /// `client_max_window_bits` of the server's answer: the client
    /// compresses with at most this window. `None`: up to 15.
    pub client_max_window_bits: Option<u8>,
    /// The server starts every message with an empty window.
    pub server_no_context_takeover: bool,
    /// The client starts every message with an empty window.
    pub client_no_context_takeover: bool,
}

impl Agreed {
    /// The window the server compresses with (9..=15). A request for 8 is
    /// served with zlib's 9-bit window, whose matches reach back at most
    /// 250 bytes (`w_size - MIN_LOOKAHEAD`): within the 256 asked for.
    pub fn server_window(&self) -> u8 {
        self.server_max_window_bits.unwrap_or(15).max(9)
    }

    /// The window the client compresses with (9..=15), as for the server.
    pub fn client_window(&self) -> u8 {
        self.client_max_window_bits.unwrap_or(15).max(9)
    }

    /// The `Sec-WebSocket-Extensions` value that states this agreement.
    pub fn header_value(&self) -> String {
        let mut s = String::from(NAME);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if let Some(b) = self.server_max_window_bits {
            let _ = write!(s, "; server_max_window_bits={b}");
        }
        if let Some(b) = self.client_max_window_bits {
            let _ = write!(s, "; client_max_window_bits={b}");
        }
        s
    }
}

/// How the server answers an acceptable offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMode {
    /// No context takeover either way (the default): one compressor per
    /// reactor thread serves every connection, and an idle connection
    /// holds nothing.
    Shared,
    /// The server keeps its compression context while a connection
    /// streams (its answer leaves out `server_no_context_takeover`); it
    /// still asks the client for `client_no_context_takeover`, so that
    /// inflating needs no state per connection.
    Takeover,
}

/// The server's choice: the first acceptable permessage-deflate offer
/// among the `Sec-WebSocket-Extensions` header values (in order), or
/// `None` (answer without the extension; the handshake goes on). An offer
/// is declined for an unknown or repeated parameter, a parameter value
/// that is not allowed, or `server_max_window_bits` below 9.
pub fn answer(values: &[String], mode: ServerMode) -> Option<Agreed> {
    values
        .iter()
        .flat_map(|v| split_outside_quotes(v, b','))
        .find_map(|offer| {
            let mut parts = split_outside_quotes(offer, b';');
            let name = parts.next()?.trim();
            if !name.eq_ignore_ascii_case(NAME) {
                return None;
            }
            let params = Params::parse(parts, Side::Offer)?;
            if params.server_max_window_bits.is_some_and(|b| b < 9) {
                return None;
            }
            Some(Agreed {
                server_max_window_bits: params.server_max_window_bits,
                client_max_window_bits: None,
                // A client that asks the server to start every message
                // afresh is answered so, whatever the mode.
                server_no_context_takeover: mode == ServerMode::Shared
                    || params.server_no_context_takeover,
                client_no_context_takeover: true,
            })
        })
}

/// The client's check of the server's answer to [`CLIENT_OFFER`]:
/// `Ok(None)` when the server declined (no header), the agreement, or why
/// the answer is not one the client may accept (the client must then fail
/// the connection, RFC 7692 §5).
pub fn client_accept(values: &[&str]) -> Result<Option<Agreed>, String> {
    let mut extensions = values
        .iter()
        .flat_map(|v| split_outside_quotes(v, b','))
        .filter(|e| !e.trim().is_empty());
    let Some(ext) = extensions.next() else {
        return Ok(None);
    };
    if extensions.next().is_some() {
        return Err("the server answered more than one extension".into());
    }
    let mut parts = split_outside_quotes(ext, b';');
    let name = parts.next().unwrap_or("").trim();
    if !name.eq_ignore_ascii_case(NAME) {
        return Err(format!(
            "the server answered an extension not offered: {name:?}"
        ));
    }
    let p = Params::parse(parts, Side::Answer)
        .ok_or_else(|| format!("the server's permessage-deflate answer is invalid: {ext:?}"))?;
    Ok(Some(Agreed {
        server_max_window_bits: p.server_max_window_bits,
        client_max_window_bits: p.client_max_window_bits,
        server_no_context_takeover: p.server_no_context_takeover,
        client_no_context_takeover: p.client_no_context_takeover,
    }))
}

/// Whether a User-Agent is Safari 15.0–15.3, whose permessage-deflate
/// ignores `client_no_context_takeover` (it keeps its window between
/// messages), so that every message after the first would fail to inflate
/// here (1007). uWebSockets declines compression to it for the same
/// reason; so does pollcap, rather than keep a decompressor per Safari
/// connection. The test is uWebSockets': `Version/15.N ` with N ≤ 3,
/// followed by ` Safari/`.
pub fn broken_safari(user_agent: &str) -> bool {
    let Some(at) = user_agent.find(" Version/15.") else {
        return false;
    };
    let rest = &user_agent[at + " Version/15.".len()..];
    let Some(end) = rest.find(' ') else {
        return false;
    };
    let minor = &rest[..end];
    !minor.is_empty()
        && minor.bytes().all(|b| b.is_ascii_digit())
        && minor.parse::<u32>().is_ok_and(|m| m <= 3)
        && rest[end..].contains(" Safari/")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// A client's offer: `client_max_window_bits` may come without a value.
    Offer,
    /// A server's answer: every window parameter has a value.
    Answer,
}

#[derive(Default)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// Its value, when one was given (an offer may name it without one).
    client_max_window_bits: Option<u8>,
    client_bits_named: bool,
}

impl Params {
    /// The parameters of one offer or answer; `None` when one is unknown,
    /// repeated, or has a value it may not have.
    fn parse<'a>(parts: impl Iterator<Item = &'a str>, side: Side) -> Option<Params> {
        let mut p = Params::default();
        for part in parts {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
                None => (part.trim(), None),
            };
            match key.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" if value.is_none() => {
                    if std::mem::replace(&mut p.server_no_context_takeover, true) {
                        return None;
                    }
                }
                "client_no_context_takeover" if value.is_none() => {
                    if std::mem::replace(&mut p.client_no_context_takeover, true) {
                        return None;
                    }
                }
                "server_max_window_bits" => {
                    if p.server_max_window_bits.is_some() {
                        return None;
                    }
                    p.server_max_window_bits = Some(window_bits(value?)?);
                }
                "client_max_window_bits" => {
                    if std::mem::replace(&mut p.client_bits_named, true) {
                        return None;
                    }
                    match value {
                        Some(v) => p.client_max_window_bits = Some(window_bits(v)?),
                        None if side == Side::Offer => {}
                        None => return None,
                    }
                }
                _ => return None,
            }
        }
        Some(p)
    }
}

/// A window size: a decimal 8..=15 without leading zeros.
fn window_bits(v: &str) -> Option<u8> {
    match v.as_bytes() {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// A parameter value as a token or a quoted string (RFC 6455 §9.1: once
/// unquoted it must be a token, so a backslash escape is refused).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(inner) => {
            let inner = inner.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => Some(v),
    }
}

/// Splits on `sep` outside double-quoted strings (another extension's
/// quoted parameter may hold a comma or a semicolon).
fn split_outside_quotes(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, b) in s.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ if b == sep && !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Option<Agreed> {
        let v: Vec<String> = values.iter().map(|s| s.to_string()).collect();
        answer(&v, ServerMode::Shared)
    }

    fn answered(values: &[&str]) -> Option<String> {
        offer(values).map(|a| a.header_value())
    }

    const DEFAULT: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn what_browsers_and_python_offer_gets_the_default_answer() {
        for o in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "Permessage-Deflate;  client_max_window_bits=10 ",
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
        ] {
            assert_eq!(answered(&[o]).as_deref(), Some(DEFAULT), "{o}");
        }
        let a = offer(&["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!((a.server_window(), a.client_window()), (15, 15));
    }

    #[test]
    fn server_max_window_bits_is_named_only_when_asked_for() {
        assert_eq!(
            answered(&["permessage-deflate; server_max_window_bits=10"]).as_deref(),
            Some(&*format!("{DEFAULT}; server_max_window_bits=10"))
        );
        assert_eq!(
            answered(&["permessage-deflate; server_max_window_bits=\"12\""]).as_deref(),
            Some(&*format!("{DEFAULT}; server_max_window_bits=12"))
        );
        let a = offer(&["permessage-deflate; server_max_window_bits=9"]).unwrap();
        assert_eq!(a.server_window(), 9);
    }

    #[test]
    fn unacceptable_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=\"1\\0\"",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad:?}");
        }
        // The first acceptable offer wins, across header lines too.
        assert_eq!(
            answered(&[
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=11",
                "permessage-deflate",
            ])
            .as_deref(),
            Some(&*format!("{DEFAULT}; server_max_window_bits=11"))
        );
        assert_eq!(
            answered(&["foo; a=\"x, permessage-deflate\", permessage-deflate"]).as_deref(),
            Some(DEFAULT),
            "a quoted comma belongs to the other extension"
        );
    }

    #[test]
    fn the_takeover_mode_leaves_out_server_no_context_takeover() {
        let v = vec!["permessage-deflate; client_max_window_bits".to_string()];
        let a = answer(&v, ServerMode::Takeover).unwrap();
        assert_eq!(
            a.header_value(),
            "permessage-deflate; client_no_context_takeover"
        );
        let v = vec!["permessage-deflate; server_no_context_takeover".to_string()];
        let a = answer(&v, ServerMode::Takeover).unwrap();
        assert!(a.server_no_context_takeover, "asked for, so answered");
    }

    #[test]
    fn the_client_checks_the_answer() {
        assert_eq!(client_accept(&[]), Ok(None));
        let a = client_accept(&[DEFAULT]).unwrap().unwrap();
        assert!(a.server_no_context_takeover && a.client_no_context_takeover);
        let a = client_accept(&["permessage-deflate; client_max_window_bits=10"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.client_window(), a.server_no_context_takeover),
            (10, false)
        );
        for bad in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; mystery",
            "permessage-deflate, permessage-deflate",
            "x-other",
        ] {
            assert!(client_accept(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn safari_15_0_to_15_3_is_recognised_and_nothing_else() {
        let safari = |v: &str| {
            format!(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 \
                 (KHTML, like Gecko) Version/{v} Safari/605.1.15"
            )
        };
        for v in ["15.0", "15.1", "15.2", "15.3"] {
            assert!(broken_safari(&safari(v)), "{v}");
        }
        for v in ["15.4", "15.10", "16.0", "14.1", "15.x"] {
            assert!(!broken_safari(&safari(v)), "{v}");
        }
        let ios = "Mozilla/5.0 (iPhone; CPU iPhone OS 15_2 like Mac OS X) AppleWebKit/605.1.15 \
                   (KHTML, like Gecko) Version/15.2 Mobile/15E148 Safari/604.1";
        assert!(broken_safari(ios));
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/120.0.0.0 Safari/537.36";
        assert!(!broken_safari(chrome));
        assert!(!broken_safari("Version/15.1"));
    }
}
