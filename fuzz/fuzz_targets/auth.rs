//! JWT and bearer parsing (src/auth.rs): `verify` on arbitrary tokens,
//! `mint` → `verify` round trips with arbitrary subjects, clocks and
//! lifetimes, `Auth::check`, `token_from` and `parse_ttl`.
//!
//! Invariants:
//! - `verify` accepts a token only if an independent check agrees: three
//!   base64url parts, header `alg` HS256, the HMAC-SHA256 of the first two
//!   under the secret equals the third, `exp` after now, `nbf` not after;
//!   the subject returned is the token's;
//! - a minted token verifies to its subject from its `nbf` until its
//!   `exp`, and not outside; changing any one of its bytes, or the secret,
//!   makes it fail;
//! - `Auth::check` accepts only a listed static token or a valid JWT;
//! - a bearer token comes from `Authorization: Bearer` (trimmed) when that
//!   header is present, else from a `bearer.` subprotocol entry;
//! - `parse_ttl` returns only positive seconds, `N` times its unit;
//! - a key set parsed from arbitrary bytes has a usable key or is an
//!   error, and no token is accepted by an empty one; the client address
//!   behind arbitrary forwarding headers is the peer unless the peer is
//!   trusted, and allowed origins never panic.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use pollcap::auth::{self, Auth, AuthError};
use pollcap_fuzz::Bytes;
use sha2::Sha256;

fuzz_target!(|data: &[u8]| run(data));

fn text(b: &mut Bytes) -> String {
    let n = usize::from(b.byte());
    String::from_utf8_lossy(b.take(n)).into_owned()
}

/// The independent check of a token `verify` accepted.
fn really_valid(secret: &[u8], token: &str, now: u64, subject: &str) {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else {
        panic!("accepted a token of {} parts", parts.len())
    };
    let header: serde_json::Value =
        serde_json::from_slice(&B64.decode(h).expect("header is base64url")).expect("JSON");
    assert_eq!(header["alg"], "HS256", "accepted alg {}", header["alg"]);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{h}.{p}").as_bytes());
    let want = mac.finalize().into_bytes();
    assert_eq!(
        B64.decode(s).expect("signature is base64url"),
        want.as_slice(),
        "accepted a wrong signature"
    );
    let claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(p).expect("claims are base64url")).expect("JSON");
    let exp = claims["exp"]
        .as_u64()
        .expect("accepted without a numeric exp");
    assert!(now < exp, "accepted at {now}, expired at {exp}");
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_u64().expect("numeric nbf");
        assert!(nbf <= now, "accepted at {now}, valid from {nbf}");
    }
    assert_eq!(claims["sub"].as_str().unwrap_or_default(), subject);
}

fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mode = b.byte();
    let secret_len = usize::from(b.byte() % 80);
    let secret = b.take(secret_len).to_vec();
    let now = if mode & 1 == 0 {
        1_700_000_000 + u64::from(b.u16()) * 1000
    } else {
        b.u64()
    };
    let ttl = match (mode >> 1) % 4 {
        0 => 1 + u64::from(b.byte()),
        1 => 3600,
        _ => b.u64().max(1),
    };
    let sub = text(&mut b);
    let tamper_at = usize::from(b.u16());
    let tamper_to = b.byte();
    let authorization = (mode & 0x10 != 0).then(|| text(&mut b));
    let protocols: Vec<String> = text(&mut b)
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let ttl_text = text(&mut b);
    let token = String::from_utf8_lossy(b.rest()).into_owned();

    // Arbitrary tokens.
    if let Ok(id) = auth::verify(&secret, &token, now) {
        really_valid(&secret, &token, now, &id.subject);
    }

    // Minted tokens: valid from nbf (= now) until exp (= now + ttl, which
    // ends at the last second of u64: a token minted then is expired).
    let now = now.min(u64::MAX - 1);
    let minted = auth::mint(&secret, &sub, now, ttl);
    match auth::verify(&secret, &minted, now) {
        Ok(id) => {
            assert_eq!(id.subject, sub);
            really_valid(&secret, &minted, now, &sub);
        }
        Err(e) => panic!("a fresh token fails: {e} (now {now}, ttl {ttl})"),
    }
    if let Some(end) = now.checked_add(ttl) {
        assert_eq!(auth::verify(&secret, &minted, end), Err(AuthError::Expired));
        assert!(auth::verify(&secret, &minted, end - 1).is_ok());
    }
    if now > 0 {
        assert_eq!(
            auth::verify(&secret, &minted, now - 1),
            Err(AuthError::NotYetValid)
        );
    }
    // One byte changed, anywhere, to any other ASCII byte.
    let mut bytes = minted.clone().into_bytes();
    let i = tamper_at % bytes.len();
    let to = tamper_to % 128;
    if bytes[i] != to {
        bytes[i] = to;
        let tampered = String::from_utf8(bytes).expect("ASCII");
        assert!(
            auth::verify(&secret, &tampered, now).is_err(),
            "accepted {tampered} (byte {i} changed)"
        );
    }
    // Another secret (HMAC pads short keys with zeros: flip a bit instead
    // of appending a zero).
    let mut other = secret.clone();
    match other.last_mut() {
        Some(x) => *x ^= 1,
        None => other.push(b'x'),
    }
    assert_eq!(
        auth::verify(&other, &minted, now),
        Err(AuthError::Signature)
    );

    // The configured checks.
    let listed = sub.clone();
    let a = Auth::new(
        (mode & 0x20 != 0).then(|| secret.clone()),
        [listed.clone()].into_iter().collect(),
    );
    assert_eq!(a.check(None, now), Err(AuthError::Missing));
    if let Ok(id) = a.check(Some(&token), now)
        && token != listed
    {
        really_valid(&secret, &token, now, &id.subject);
    }

    // Where the token comes from.
    if let Some(t) = auth::token_from(authorization.as_deref(), &protocols) {
        match &authorization {
            Some(h) => {
                let (scheme, _) = h.trim().split_once(' ').expect("a scheme");
                assert!(scheme.eq_ignore_ascii_case("bearer"), "scheme {scheme:?}");
                assert!(h.contains(t) && t == t.trim(), "{t:?} from {h:?}");
            }
            None => assert!(
                protocols
                    .iter()
                    .any(|p| p.strip_prefix(auth::SUBPROTOCOL_PREFIX) == Some(t)),
                "{t:?} from nowhere"
            ),
        }
    }

    // Key sets, forwarding headers and origins from arbitrary text.
    if let Ok(keys) = pollcap::auth::keys::KeySet::parse(token.as_bytes()) {
        assert!(!keys.is_empty(), "a key set without a usable key");
    }
    let rules = auth::Rules::default();
    assert!(
        pollcap::auth::keys::KeySet::empty()
            .verify(&token, "ES256", Some(&sub), &rules, now)
            .is_err()
    );
    let peer: std::net::IpAddr = [10, 0, 0, 1].into();
    let trusted = pollcap::settings::parse_cidrs("10.0.0.0/8").unwrap();
    let header = authorization.as_deref();
    let proto = protocols.first().map(String::as_str);
    let outside: std::net::IpAddr = [192, 0, 2, 1].into();
    assert_eq!(
        pollcap::fuzzing::client_addr(outside, &trusted, header, proto),
        Ok(outside)
    );
    let _ = pollcap::fuzzing::client_addr(peer, &trusted, header, proto);
    if let Ok(origins) = pollcap::settings::Origins::parse(&ttl_text) {
        let _ = pollcap::fuzzing::origin_allowed(&origins, Some(&sub), header);
    }

    // Token lifetimes.
    if let Some(n) = auth::parse_ttl(&ttl_text) {
        assert!(n > 0, "{ttl_text:?} gave 0");
    }
    let k = u64::from(b.byte()) | (ttl & 0xffff_ffff);
    for (unit, mult) in [("", 1u64), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)] {
        let want = k.checked_mul(mult).filter(|_| k > 0);
        assert_eq!(auth::parse_ttl(&format!("{k}{unit}")), want, "{k}{unit}");
    }
}
