//! Authentication of upgrade requests (SPEC §4): a bearer token from the
//! `Authorization` header or, for browsers, a `bearer.<token>` subprotocol
//! entry; checked as an HS256 JWT (`POLLCAP_JWT_SECRET`), as an RS256,
//! ES256 or EdDSA JWT from an identity provider's key set (`jwks`, feature
//! `idp`), or against static tokens (`POLLCAP_TOKENS_FILE`). Every JWT
//! meets the same claim rules (`claims`: `exp`, `nbf`, leeway, `aud`,
//! `iss`). No fallback: anything else is a 401. Wall-clock time is an
//! input.
//!
//! Parts: `claims` (the rules), `keys` (a key set and verification by
//! `kid`), `jwks` (the key set kept fresh by a helper thread),
//! `ring_provider` (jsonwebtoken's signature checks on ring).

mod claims;
#[cfg(feature = "idp")]
pub(crate) mod jwks;
#[cfg(feature = "idp")]
pub mod keys;
#[cfg(feature = "idp")]
mod ring_provider;

use std::collections::HashSet;
use std::fmt;
#[cfg(feature = "idp")]
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use serde::Deserialize;

use crate::settings::{ConfigError, Settings};
pub use claims::{Audience, Claims, Rules};

type HmacSha256 = Hmac<Sha256>;

/// Prefix of the browser form of a token inside `Sec-WebSocket-Protocol`.
pub use crate::http::SUBPROTOCOL_PREFIX;

/// Why a token was refused (the 401 body says which, never the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No token: no `Authorization: Bearer`, no `bearer.` subprotocol entry.
    Missing,
    /// A JWT whose parts do not decode (base64url, JSON, signature).
    Malformed,
    /// An algorithm this server does not check: `none`, anything but
    /// HS256 / RS256 / ES256 / EdDSA, HS256 without a secret, or the
    /// others without a key set.
    Algorithm,
    /// The signature does not verify.
    Signature,
    /// Past `exp` (plus the leeway).
    Expired,
    /// Before `nbf` (minus the leeway).
    NotYetValid,
    /// Neither a configured static token nor shaped like a JWT.
    Unknown,
    /// `aud` is not one of the accepted audiences.
    Audience,
    /// `iss` is not the configured issuer.
    Issuer,
    /// The `kid` names no key of the identity provider's set.
    UnknownKey,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::Missing => {
                "missing bearer token (Authorization: Bearer <token> or subprotocol bearer.<token>)"
            }
            AuthError::Malformed => "malformed token",
            AuthError::Algorithm => "unsupported token algorithm for this server",
            AuthError::Signature => "invalid token signature",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::Unknown => "unknown token",
            AuthError::Audience => "token audience (aud) not accepted",
            AuthError::Issuer => "token issuer (iss) not accepted",
            AuthError::UnknownKey => "unknown token signing key (kid)",
        })
    }
}

/// The key set as reported (`/health`, `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JwksView {
    /// The last fetch (or file check) worked.
    pub up: bool,
    /// Keys in the set now.
    pub keys: u64,
    /// Fetches (or file loads) that worked.
    pub fetches_ok: u64,
    /// Fetches (or file loads) that failed; the last good set stays.
    pub fetches_failed: u64,
    /// Refreshes started by a token with an unknown `kid`.
    pub kid_refreshes: u64,
}

/// Who a valid token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// A JWT's `sub` (empty when absent); a static token's
    /// `static:<16 hex digits of its SHA-256>`.
    pub subject: String,
}

/// The configured verifiers; at least one is present.
#[derive(Clone, Default)]
pub struct Auth {
    jwt_secret: Option<Vec<u8>>,
    tokens: HashSet<String>,
    /// The claims every JWT must meet.
    rules: Rules,
    /// The identity provider's key set.
    #[cfg(feature = "idp")]
    jwks: Option<Arc<jwks::Jwks>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        f.debug_struct("Auth")
            .field("jwt", &self.jwt_secret.is_some())
            .field("static_tokens", &self.tokens.len())
            .field("rules", &self.rules)
            .field("jwks", &self.jwks_view())
            .finish()
    }
}

impl Auth {
    /// HS256 tokens signed with `jwt_secret` and/or the static `tokens`,
    /// with the default claim rules ([`Auth::with_rules`] to change them).
    pub fn new(jwt_secret: Option<Vec<u8>>, tokens: HashSet<String>) -> Auth {
        Auth {
            jwt_secret,
            tokens,
            ..Auth::default()
        }
    }

    /// The same checks with these claim rules.
    pub fn with_rules(mut self, rules: Rules) -> Auth {
        self.rules = rules;
        self
    }

    /// The claim rules every JWT meets.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The key set's state, when there is one.
    pub fn jwks_view(&self) -> Option<JwksView> {
        #[cfg(feature = "idp")]
        return self.jwks.as_ref().map(|j| j.view());
        #[cfg(not(feature = "idp"))]
        None
    }

    /// The checks the settings ask for (`jwt_secret`, `tokens_file`, which
    /// is read here, the key set, which is loaded here and kept fresh by a
    /// helper thread); `None` when none is set (authentication off).
    pub fn from_settings(s: &Settings) -> Result<Option<Auth>, ConfigError> {
        let mut tokens = HashSet::new();
        if let Some(path) = &s.tokens_file {
            let shown = path.display().to_string();
            // The file is read now, after resolution: name every source.
            let setting = crate::settings::find("tokens_file")
                .map_or_else(|| "tokens_file".to_string(), |d| d.sources());
            let setting = setting.as_str();
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(setting, &shown, &format!("cannot be read: {e}")))?;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    tokens.insert(line.to_string());
                }
            }
            if tokens.is_empty() {
                return Err(ConfigError::new(
                    setting,
                    &shown,
                    "must list at least one token (one per line, # comments)",
                ));
            }
        }
        let secret = s.jwt_secret.as_ref().map(|k| k.0.clone());
        let rules = Rules {
            audience: s.idp.audience.clone(),
            issuer: s.idp.issuer.clone(),
            leeway: s.idp.leeway.as_secs(),
        };
        #[cfg(feature = "idp")]
        let jwks = match s.idp.has_jwks() {
            true => Some(jwks::Jwks::start(&s.idp).map_err(|e| {
                let (name, shown) = match &s.idp.jwks_url {
                    Some(u) => ("jwks_url", u.clone()),
                    None => (
                        "jwks_file",
                        s.idp
                            .jwks_file
                            .as_ref()
                            .map_or_else(String::new, |p| p.display().to_string()),
                    ),
                };
                let setting =
                    crate::settings::find(name).map_or_else(|| name.to_string(), |d| d.sources());
                ConfigError::new(
                    &setting,
                    &shown,
                    &format!("no key set could be loaded: {e}"),
                )
            })?),
            false => None,
        };
        #[cfg(not(feature = "idp"))]
        if s.idp.has_jwks() {
            return Err(ConfigError::rule(
                "--jwks-url/--jwks-file need pollcap built with the `idp` feature".into(),
            ));
        }
        #[cfg(feature = "idp")]
        let idp = jwks.is_some();
        #[cfg(not(feature = "idp"))]
        let idp = false;
        if secret.is_none() && tokens.is_empty() && !idp {
            return Ok(None);
        }
        Ok(Some(Auth {
            jwt_secret: secret,
            tokens,
            rules,
            #[cfg(feature = "idp")]
            jwks,
        }))
    }

    /// The HS256 key, if any (`pollcap token` signs with it).
    pub fn jwt_secret(&self) -> Option<&[u8]> {
        self.jwt_secret.as_deref()
    }

    /// Checks `token` at wall-clock `now_unix` (seconds).
    pub fn check(&self, token: Option<&str>, now_unix: u64) -> Result<Identity, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        if self.tokens.contains(token) {
            return Ok(Identity {
                subject: static_identity(token),
            });
        }
        if token.matches('.').count() != 2 {
            return Err(AuthError::Unknown);
        }
        let header: Header = decode_json(token.split('.').next().unwrap_or(""))?;
        let claims = match (header.alg.as_deref(), &self.jwt_secret) {
            (Some("HS256"), Some(secret)) => hs256(secret, token, &self.rules, now_unix)?,
            #[cfg(feature = "idp")]
            (Some(alg), _) if keys::ALGORITHMS.contains(&alg) => match &self.jwks {
                Some(j) => j.verify(token, alg, header.kid.as_deref(), &self.rules, now_unix)?,
                None => return Err(AuthError::Algorithm),
            },
            _ => return Err(AuthError::Algorithm),
        };
        Ok(Identity {
            subject: claims.sub.unwrap_or_default(),
        })
    }
}

/// The identity of a static token: `static:` and the first 16 hex digits
/// of its SHA-256, so that each token owns its own runs (SPEC §5 "Resume")
/// and the token itself never reaches a store or a log.
pub fn static_identity(token: &str) -> String {
    use sha2::Digest;
    let digest = Sha256::digest(token.as_bytes());
    let mut id = String::with_capacity(7 + 16);
    id.push_str("static:");
    for b in &digest[..8] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// The bearer token of a request: the `Authorization` header wins over a
/// `bearer.` subprotocol entry.
pub fn token_from<'a>(authorization: Option<&'a str>, protocols: &'a [String]) -> Option<&'a str> {
    if let Some(h) = authorization {
        let (scheme, rest) = h.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    protocols
        .iter()
        .find_map(|p| p.strip_prefix(SUBPROTOCOL_PREFIX))
}

/// Verifies an HS256 JWT: signature, `exp` and `nbf` exactly (no
/// leeway, no audience or issuer: see [`Auth::check`] for the configured
/// rules).
pub fn verify(secret: &[u8], token: &str, now_unix: u64) -> Result<Identity, AuthError> {
    let claims = hs256(secret, token, &Rules::default(), now_unix)?;
    Ok(Identity {
        subject: claims.sub.unwrap_or_default(),
    })
}

/// Verifies an HS256 JWT's signature, then its claims against `rules`.
fn hs256(secret: &[u8], token: &str, rules: &Rules, now_unix: u64) -> Result<Claims, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header: Header = decode_json(h)?;
    if header.alg.as_deref() != Some("HS256") {
        return Err(AuthError::Algorithm);
    }
    let sig = B64.decode(sig).map_err(|_| AuthError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| AuthError::Signature)?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&sig).map_err(|_| AuthError::Signature)?;
    let claims: Claims = decode_json(p)?;
    rules.check(&claims, now_unix)?;
    Ok(claims)
}

/// The JOSE header fields this server reads.
#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    #[cfg_attr(not(feature = "idp"), allow(dead_code))]
    kid: Option<String>,
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, AuthError> {
    let bytes = B64.decode(part).map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// Mints an HS256 JWT for `sub`, valid from `now_unix` for `ttl_secs`
/// (a lifetime past the end of `u64` seconds ends there: never an
/// overflow into an already expired token).
pub fn mint(secret: &[u8], sub: &str, now_unix: u64, ttl_secs: u64) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = Claims {
        sub: Some(sub.to_string()),
        iat: Some(now_unix),
        nbf: Some(now_unix),
        exp: now_unix.saturating_add(ttl_secs),
        aud: None,
        iss: None,
    };
    let payload = B64.encode(serde_json::to_string(&claims).expect("plain claims serialize"));
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{sig}")
}

/// Parses a TTL such as `90`, `90s`, `15m`, `1h`, `7d` into seconds.
pub fn parse_ttl(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().last()? {
        (i, 's') => (&v[..i], 1),
        (i, 'm') => (&v[..i], 60),
        (i, 'h') => (&v[..i], 3600),
        (i, 'd') => (&v[..i], 86_400),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)?
        .checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-test-secret";
    const NOW: u64 = 1_800_000_000;

    #[test]
    fn minted_tokens_verify() {
        let t = mint(SECRET, "alice", NOW, 3600);
        assert_eq!(verify(SECRET, &t, NOW).unwrap().subject, "alice");
        assert_eq!(verify(SECRET, &t, NOW + 3599).unwrap().subject, "alice");
    }

    /// Found by the `auth` fuzz target: `now + ttl` overflowed (a panic,
    /// or in a release build a token already expired when minted).
    #[test]
    fn a_lifetime_past_the_end_of_time_saturates() {
        for ttl in [
            u64::MAX,
            u64::MAX - NOW + 1,
            parse_ttl("213503982334601d").unwrap(),
        ] {
            let t = mint(SECRET, "alice", NOW, ttl);
            assert_eq!(verify(SECRET, &t, NOW).unwrap().subject, "alice", "{ttl}");
            assert_eq!(verify(SECRET, &t, u64::MAX - 1).unwrap().subject, "alice");
        }
    }

    #[test]
    fn bad_signature_expired_and_not_yet_valid() {
        let t = mint(SECRET, "alice", NOW, 3600);
        assert_eq!(
            verify(b"another-secret-of-16+", &t, NOW),
            Err(AuthError::Signature)
        );
        assert_eq!(verify(SECRET, &t, NOW + 3600), Err(AuthError::Expired));
        assert_eq!(verify(SECRET, &t, NOW - 1), Err(AuthError::NotYetValid));
        let mut tampered = t.clone();
        tampered.insert(t.find('.').unwrap() + 3, 'x');
        assert!(verify(SECRET, &tampered, NOW).is_err());
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let body = B64.encode(format!(r#"{{"sub":"mallory","exp":{}}}"#, NOW + 60));
        for alg in ["none", "HS512", "RS256"] {
            let h = B64.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            for sig in ["", "AAAA"] {
                let t = format!("{h}.{body}.{sig}");
                assert_eq!(verify(SECRET, &t, NOW), Err(AuthError::Algorithm), "{alg}");
            }
        }
    }

    #[test]
    fn exp_is_required() {
        let h = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let p = B64.encode(br#"{"sub":"x"}"#);
        let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
        mac.update(format!("{h}.{p}").as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        assert_eq!(
            verify(SECRET, &format!("{h}.{p}.{sig}"), NOW),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn static_tokens_and_missing_tokens() {
        let tokens = ["tok-1".to_string(), "tok-2b".to_string()];
        let auth = Auth::new(None, tokens.into_iter().collect());
        let one = auth.check(Some("tok-1"), NOW).unwrap().subject;
        let two = auth.check(Some("tok-2b"), NOW).unwrap().subject;
        // Each static token is its own subject, and never shows itself.
        assert_ne!(one, two);
        assert_eq!(one, static_identity("tok-1"));
        assert!(one.starts_with("static:") && one.len() == 23 && !one.contains("tok"));
        assert_eq!(auth.check(Some("tok-2"), NOW), Err(AuthError::Unknown));
        assert_eq!(auth.check(None, NOW), Err(AuthError::Missing));
    }

    #[test]
    fn token_sources() {
        let protos = vec!["agent_chat".to_string(), "bearer.abc.def.ghi".to_string()];
        assert_eq!(token_from(Some("Bearer xyz"), &protos), Some("xyz"));
        assert_eq!(token_from(Some("bearer  xyz "), &protos), Some("xyz"));
        assert_eq!(token_from(Some("Basic xyz"), &protos), None);
        assert_eq!(token_from(None, &protos), Some("abc.def.ghi"));
        assert_eq!(token_from(None, &[]), None);
    }

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("1h"), Some(3600));
        assert_eq!(parse_ttl("15m"), Some(900));
        assert_eq!(parse_ttl("90"), Some(90));
        assert_eq!(parse_ttl("2d"), Some(172_800));
        assert_eq!(parse_ttl("0"), None);
        assert_eq!(parse_ttl("soon"), None);
    }

    #[test]
    fn settings_config() {
        use crate::settings::{Profile, Secret};
        let mut s = Settings::defaults(Profile::Local);
        assert!(Auth::from_settings(&s).unwrap().is_none(), "off by default");
        s.jwt_secret = Some(Secret(SECRET.to_vec()));
        let auth = Auth::from_settings(&s).unwrap().unwrap();
        let t = mint(SECRET, "bob", NOW, 60);
        assert_eq!(auth.check(Some(&t), NOW).unwrap().subject, "bob");
        s.tokens_file = Some("/nonexistent/tokens".into());
        let e = Auth::from_settings(&s).unwrap_err().to_string();
        assert!(
            e.contains("tokens_file") && e.contains("/nonexistent/tokens"),
            "{e}"
        );
    }
}
