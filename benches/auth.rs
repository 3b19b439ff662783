//! Token verification per algorithm, as an upgrade pays it: `Auth::check`
//! on a valid token (header, key lookup by `kid`, signature, claims with
//! audience, issuer and leeway). HS256 is pollcap's own HMAC; RS256
//! (2048-bit), ES256 and EdDSA go through jsonwebtoken with its signature
//! checks on ring, and a key set loaded from a file. Tokens are signed
//! here with ring (RSA keys made by the `rsa` crate, which ring cannot
//! make). Results and the command live in BENCHMARKS.md.

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, criterion_group, criterion_main};
use pollcap::auth::Auth;
use pollcap::settings::{Profile, Secret, Settings};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use rsa::pkcs8::EncodePrivateKey;
use rsa::traits::PublicKeyParts;

const SECRET: &[u8] = b"bench-secret-0123456789abcdef-0123";
const AUD: &str = "pollcap-bench";
const ISS: &str = "https://idp.bench";

/// Signs `header.payload` with one key.
type Sign = Box<dyn Fn(&[u8]) -> Vec<u8>>;

/// (alg, kid, signer, public JWK) for RS256, ES256 and EdDSA.
fn keys() -> Vec<(&'static str, &'static str, Sign, serde_json::Value)> {
    let rng = SystemRandom::new();
    let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let rsa_jwk = serde_json::json!({
        "kty": "RSA", "kid": "rsa-1", "alg": "RS256",
        "n": B64.encode(rsa.n().to_bytes_be()), "e": B64.encode(rsa.e().to_bytes_be()),
    });
    let rsa = RsaKeyPair::from_pkcs8(rsa.to_pkcs8_der().unwrap().as_bytes()).unwrap();
    let ec_doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_doc.as_ref(), &rng).unwrap();
    let point = ec.public_key().as_ref().to_vec(); // 0x04 ‖ x ‖ y
    let ec_jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256",
        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]),
    });
    let ed =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let ed_jwk = serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "alg": "EdDSA",
        "x": B64.encode(ed.public_key().as_ref()),
    });
    vec![
        (
            "RS256",
            "rsa-1",
            Box::new(move |m: &[u8]| {
                let mut sig = vec![0; rsa.public().modulus_len()];
                rsa.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), m, &mut sig)
                    .unwrap();
                sig
            }) as Sign,
            rsa_jwk,
        ),
        (
            "ES256",
            "ec-1",
            Box::new(move |m: &[u8]| ec.sign(&SystemRandom::new(), m).unwrap().as_ref().to_vec()),
            ec_jwk,
        ),
        (
            "EdDSA",
            "ed-1",
            Box::new(move |m: &[u8]| ed.sign(m).as_ref().to_vec()),
            ed_jwk,
        ),
    ]
}

fn token(
    alg: &str,
    kid: &str,
    claims: &serde_json::Value,
    sign: &dyn Fn(&[u8]) -> Vec<u8>,
) -> String {
    let head = serde_json::json!({ "alg": alg, "kid": kid, "typ": "JWT" });
    let signed = format!(
        "{}.{}",
        B64.encode(head.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = B64.encode(sign(signed.as_bytes()));
    format!("{signed}.{sig}")
}

fn verify(c: &mut Criterion) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "alice", "aud": AUD, "iss": ISS, "iat": now, "exp": now + 3600,
    });
    let keys = keys();
    let set = serde_json::json!({
        "keys": keys.iter().map(|k| k.3.clone()).collect::<Vec<_>>(),
    });
    let dir = std::env::temp_dir().join(format!("pollcap-bench-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    std::fs::write(&path, set.to_string()).unwrap();
    let mut s = Settings::defaults(Profile::Production);
    s.jwt_secret = Some(Secret(SECRET.to_vec()));
    s.idp.jwks_file = Some(path);
    s.idp.audience = vec![AUD.into()];
    s.idp.issuer = Some(ISS.into());
    let auth = Auth::from_settings(&s).unwrap().unwrap();

    // HS256 with the same claims (auth::mint sets no aud or iss).
    let hs256 = |m: &[u8]| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        ring::hmac::sign(&key, m).as_ref().to_vec()
    };
    let mut tokens = vec![("HS256", token("HS256", "", &claims, &hs256))];
    for (alg, kid, sign, _) in &keys {
        tokens.push((alg, token(alg, kid, &claims, sign)));
    }
    let mut g = c.benchmark_group("verify");
    for (name, token) in &tokens {
        assert_eq!(
            auth.check(Some(token), now).map(|id| id.subject),
            Ok("alice".into()),
            "{name}"
        );
        g.bench_function(*name, |b| {
            b.iter(|| black_box(auth.check(Some(black_box(token)), now)))
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, verify);
criterion_main!(benches);
