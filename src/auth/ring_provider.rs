//! jsonwebtoken's signature checks on `ring`, the provider pollcap's TLS
//! already uses, through jsonwebtoken's own `CryptoProvider` seam.
//!
//! Why not one of jsonwebtoken's backends: `aws_lc_rs` needs CMake and
//! NASM for the Windows cross-build, and `rust_crypto` (measured in
//! BENCHMARKS.md) verified RS256 in about 200 µs and ES256 in about
//! 310 µs on this machine, several handshakes' worth of CPU, and brought
//! 44 crates (rsa, p256, p384, ed25519-dalek, num-bigint-dig, rand…).
//! ring verifies each several times faster and is in the graph already.
//!
//! Verification only (RS256, ES256, EdDSA): pollcap never signs with
//! jsonwebtoken (`auth::mint` is its own HS256).

use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
    UnparsedPublicKey, VerificationAlgorithm,
};

/// The provider, installed once per process before the first key set is
/// used ([`install`]).
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    jwk_utils: JwkUtils::new_unimplemented(),
};

/// Makes ring jsonwebtoken's provider for this process. If an embedder
/// installed one of its own first, that one stays.
pub fn install() {
    let _ = PROVIDER.install_default();
}

fn signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Err(ErrorKind::InvalidAlgorithm.into())
}

enum Key {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Raw(&'static dyn VerificationAlgorithm, Vec<u8>),
}

struct RingVerifier {
    alg: Algorithm,
    key: Key,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let ok = match &self.key {
            Key::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
            Key::Raw(alg, key) => UnparsedPublicKey::new(*alg, key).verify(msg, sig).is_ok(),
        };
        ok.then_some(()).ok_or_else(signature::Error::new)
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let key = match (alg, key.kind()) {
        (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => Key::Rsa {
            n: n.clone(),
            e: e.clone(),
        },
        // `from_ec_components`: the uncompressed point, 0x04 ‖ x ‖ y.
        (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
            Key::Raw(&ECDSA_P256_SHA256_FIXED, point.clone())
        }
        // `from_ed_components`: the 32-byte public key.
        (Algorithm::EdDSA, DecodingKeyKind::SecretOrDer(x)) => Key::Raw(&ED25519, x.clone()),
        _ => return Err(ErrorKind::InvalidKeyFormat.into()),
    };
    Ok(Box::new(RingVerifier { alg: *alg, key }))
}
