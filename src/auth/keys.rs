//! An identity provider's key set (JWKS, RFC 7517) and the verification
//! of RS256, ES256 and EdDSA tokens against it, by `kid`, with
//! `jsonwebtoken` (its signature checks on ring: `ring_provider`).
//!
//! Each key is pinned to one algorithm (its `alg`, or the one its type
//! and curve allow), and a token is verified only with the algorithm of
//! the key its `kid` names: a token cannot choose how it is checked
//! (algorithm confusion: an HS256 token "signed" with the RSA public key
//! fails here, as does `alg: none`). Symmetric (`oct`) keys, encryption
//! keys and other algorithms in the set are skipped.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::AuthError;
use super::claims::{Claims, Rules};

/// The algorithms a key from the set may verify.
pub const ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

struct Key {
    /// The one algorithm this key verifies, as a header names it.
    alg: &'static str,
    key: DecodingKey,
    /// Validation pinned to `alg`, the claims left to [`Rules`].
    validation: Validation,
}

/// The usable keys of one key set, by `kid`.
pub struct KeySet {
    keys: HashMap<String, Key>,
    /// Keys in the document that could not be used (no `kid`, another
    /// algorithm, an encryption key, a bad value).
    pub skipped: usize,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeySet")
            .field("kids", &kids)
            .field("skipped", &self.skipped)
            .finish()
    }
}

fn name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "",
    }
}

/// The algorithm `jwk` is for, if it is one of [`ALGORITHMS`].
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => Some(by_type),
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => Some(by_type),
        Some(KeyAlgorithm::EdDSA) if by_type == Algorithm::EdDSA => Some(by_type),
        Some(_) => None,
    }
}

impl KeySet {
    /// Parses a JWKS document (`{"keys":[…]}`). A key that cannot be used
    /// is skipped and counted; a document that is not a key set, or has no
    /// usable key, is an error (the last good set stays in use).
    pub fn parse(doc: &[u8]) -> Result<KeySet, String> {
        super::ring_provider::install();
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(doc).map_err(|e| {
            let head: String = String::from_utf8_lossy(&doc[..doc.len().min(40)])
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            format!("not a JWKS document ({e}; it starts {head:?})")
        })?;
        let mut keys = HashMap::new();
        let mut skipped = 0;
        for v in doc.keys {
            let usable = serde_json::from_value::<Jwk>(v).ok().and_then(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                    return None;
                }
                let alg = algorithm_of(&jwk)?;
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                let mut validation = Validation::new(alg);
                validation.required_spec_claims.clear();
                validation.validate_exp = false;
                validation.validate_nbf = false;
                validation.validate_aud = false;
                validation.leeway = 0;
                Some((
                    kid,
                    Key {
                        alg: name(alg),
                        key,
                        validation,
                    },
                ))
            });
            match usable {
                Some((kid, key)) => {
                    keys.insert(kid, key);
                }
                None => skipped += 1,
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "the key set has no usable key ({skipped} skipped: each needs a kid and an \
                 RS256, ES256 or EdDSA public key)"
            ));
        }
        Ok(KeySet { keys, skipped })
    }

    /// No key (a placeholder before the first load).
    pub fn empty() -> KeySet {
        KeySet {
            keys: HashMap::new(),
            skipped: 0,
        }
    }

    /// Usable keys in the set.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the set has a key with this `kid`.
    pub fn has(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// Verifies `token` (whose header named `alg` and `kid`) with the key
    /// `kid` names, then its claims against `rules` at `now_unix`.
    /// `UnknownKey` when the set has no such key.
    pub fn verify(
        &self,
        token: &str,
        alg: &str,
        kid: Option<&str>,
        rules: &Rules,
        now_unix: u64,
    ) -> Result<Claims, AuthError> {
        let key = kid
            .and_then(|k| self.keys.get(k))
            .ok_or(AuthError::UnknownKey)?;
        if key.alg != alg {
            return Err(AuthError::Algorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::Signature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => AuthError::Algorithm,
                _ => AuthError::Malformed,
            },
        )?;
        rules.check(&data.claims, now_unix)?;
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn rules() -> Rules {
        Rules {
            audience: vec!["app".into()],
            issuer: None,
            leeway: 0,
        }
    }

    fn token(alg: &str, kid: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let h = B64.encode(format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#));
        let p = B64.encode(format!(
            r#"{{"sub":"alice","aud":"app","exp":{}}}"#,
            NOW + 60
        ));
        let sig = B64.encode(sign(format!("{h}.{p}").as_bytes()));
        format!("{h}.{p}.{sig}")
    }

    /// An ES256 and an EdDSA key made here, a key set with both, an `oct`
    /// key and an encryption key, and a signer for each.
    #[allow(clippy::type_complexity)]
    fn fixture() -> (
        KeySet,
        Box<dyn Fn(&[u8]) -> Vec<u8>>,
        Box<dyn Fn(&[u8]) -> Vec<u8>>,
    ) {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap();
        let point = ec.public_key().as_ref().to_vec();
        let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref())
            .unwrap();
        let set = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": B64.encode(&point[1..33]),
             "y": B64.encode(&point[33..])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA",
             "x": B64.encode(ed.public_key().as_ref())},
            {"kty": "oct", "kid": "hmac", "k": B64.encode(b"a shared secret")},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc",
             "x": B64.encode(ed.public_key().as_ref())},
            {"kty": "EC", "crv": "P-256", "kid": "bad", "x": "!!", "y": "??"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        ]});
        let keys = KeySet::parse(set.to_string().as_bytes()).unwrap();
        let rng2 = SystemRandom::new();
        let sign_ec = move |m: &[u8]| ec.sign(&rng2, m).unwrap().as_ref().to_vec();
        let sign_ed = move |m: &[u8]| ed.sign(m).as_ref().to_vec();
        (keys, Box::new(sign_ec), Box::new(sign_ed))
    }

    #[test]
    fn each_key_verifies_its_own_algorithm_only() {
        let (keys, ec, ed) = fixture();
        assert_eq!((keys.len(), keys.skipped), (2, 4), "{keys:?}");
        let ok = |t: &str, alg| keys.verify(t, alg, t_kid(t).as_deref(), &rules(), NOW);
        let t = token("ES256", "ec", &ec);
        assert_eq!(ok(&t, "ES256").unwrap().sub.as_deref(), Some("alice"));
        let t = token("EdDSA", "ed", &ed);
        assert_eq!(ok(&t, "EdDSA").unwrap().sub.as_deref(), Some("alice"));
        // A token naming another key's algorithm, an unknown or skipped kid.
        let t = token("EdDSA", "ec", &ed);
        assert_eq!(ok(&t, "EdDSA").err(), Some(AuthError::Algorithm));
        for kid in ["nobody", "hmac", "enc"] {
            let t = token("EdDSA", kid, &ed);
            assert_eq!(ok(&t, "EdDSA").err(), Some(AuthError::UnknownKey), "{kid}");
        }
        // Signed by another key, or tampered with.
        let t = token("ES256", "ec", |m: &[u8]| {
            let mut s = ec(m);
            s[5] ^= 1;
            s
        });
        assert_eq!(ok(&t, "ES256").err(), Some(AuthError::Signature));
        let t = token("EdDSA", "ed", &ec);
        assert!(ok(&t, "EdDSA").is_err());
        // The claims' rules apply after the signature.
        let t = token("ES256", "ec", &ec);
        let other = Rules {
            audience: vec!["another".into()],
            ..rules()
        };
        assert_eq!(
            keys.verify(&t, "ES256", Some("ec"), &other, NOW).err(),
            Some(AuthError::Audience)
        );
    }

    fn t_kid(t: &str) -> Option<String> {
        let h = B64.decode(t.split('.').next()?).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&h).ok()?;
        v["kid"].as_str().map(str::to_string)
    }

    #[test]
    fn documents_that_are_no_key_set_are_errors() {
        let e = KeySet::parse(b"<html>Service Unavailable</html>").unwrap_err();
        assert!(
            e.contains("not a JWKS document") && e.contains("<html>"),
            "{e}"
        );
        let e = KeySet::parse(br#"{"keys":[{"kty":"oct","kid":"a","k":"AAAA"}]}"#).unwrap_err();
        assert!(e.contains("no usable key (1 skipped"), "{e}");
        assert!(KeySet::parse(b"").is_err());
    }
}
