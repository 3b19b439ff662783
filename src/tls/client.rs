//! The client side of TLS: whom to trust (the built-in web roots from
//! `webpki-roots`, which work in scratch images, or a private CA file),
//! SNI and hostname verification on, and certificate problems named the
//! way a person reads them: untrusted issuer, name mismatch, expired.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::{certs::provider, x509};

/// Why a TLS connection failed, in words for a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsProblem {
    /// The chain does not lead to a trusted root.
    Untrusted {
        /// The issuer named by the presented certificate, when readable.
        issuer: Option<String>,
    },
    /// The certificate is not valid for the name connected to.
    NameMismatch {
        /// The name connected to.
        expected: String,
        /// The names the certificate is valid for.
        presented: Vec<String>,
    },
    /// The certificate's validity ended.
    Expired {
        /// When (Unix seconds), when readable.
        not_after: Option<u64>,
    },
    /// The certificate's validity has not begun (or this clock is behind).
    NotYetValid,
    /// Any other certificate or protocol failure.
    Other(String),
}

impl TlsProblem {
    /// True for the certificate problems (as opposed to protocol failures).
    pub fn is_certificate(&self) -> bool {
        !matches!(self, TlsProblem::Other(_))
    }
}

impl fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsProblem::Untrusted { issuer: Some(i) } => {
                write!(f, "certificate not trusted (issuer \"{i}\")")
            }
            TlsProblem::Untrusted { issuer: None } => write!(f, "certificate not trusted"),
            TlsProblem::NameMismatch {
                expected,
                presented,
            } if presented.is_empty() => {
                write!(f, "certificate name mismatch: not valid for \"{expected}\"")
            }
            TlsProblem::NameMismatch {
                expected,
                presented,
            } => write!(
                f,
                "certificate name mismatch: not valid for \"{expected}\" (valid for {})",
                presented.join(", ")
            ),
            TlsProblem::Expired { not_after: Some(t) } => {
                write!(f, "certificate expired (not after unix time {t})")
            }
            TlsProblem::Expired { not_after: None } => write!(f, "certificate expired"),
            TlsProblem::NotYetValid => write!(f, "certificate not yet valid"),
            TlsProblem::Other(m) => write!(f, "{m}"),
        }
    }
}

/// The roots to trust: `ca_file` (PEM, one or more certificates) or the
/// built-in web roots.
pub fn roots(ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("{}: no usable CA certificate", path.display()));
            }
        }
    }
    Ok(Arc::new(roots))
}

/// A verifier that remembers the certificate it was shown, so that a
/// refusal can name its issuer.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    shown: Arc<Mutex<Option<Vec<u8>>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.shown.lock().unwrap_or_else(|p| p.into_inner()) = Some(end_entity.to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client configuration for one connection, and the slot where the
/// server's certificate lands once shown.
pub struct ClientTls {
    /// The rustls configuration to connect with.
    pub config: Arc<ClientConfig>,
    shown: Arc<Mutex<Option<Vec<u8>>>>,
}

impl ClientTls {
    /// Trusts `roots`; offers ALPN `http/1.1` (a WebSocket upgrade).
    pub fn new(roots: Arc<RootCertStore>) -> Result<ClientTls, String> {
        let provider = provider();
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let shown = Arc::new(Mutex::new(None));
        let verifier = Arc::new(Recording {
            inner,
            shown: shown.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous() // only to install the recording wrapper; webpki decides
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            shown,
        })
    }

    /// The server's end-entity certificate, once the handshake showed it.
    pub fn shown(&self) -> Option<Vec<u8>> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Names the problem behind a failed handshake.
    pub fn problem(&self, e: &rustls::Error) -> TlsProblem {
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => TlsProblem::Untrusted {
                    issuer: self.shown().and_then(|der| x509::issuer(&der)),
                },
                CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                } => TlsProblem::NameMismatch {
                    expected: expected.to_str().into_owned(),
                    presented: presented.clone(),
                },
                CertificateError::NotValidForName => TlsProblem::NameMismatch {
                    expected: String::new(),
                    presented: Vec::new(),
                },
                CertificateError::ExpiredContext { not_after, .. } => TlsProblem::Expired {
                    not_after: Some(not_after.as_secs()),
                },
                CertificateError::Expired => TlsProblem::Expired { not_after: None },
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    TlsProblem::NotYetValid
                }
                other => TlsProblem::Other(format!("certificate refused: {other:?}")),
            },
            other => TlsProblem::Other(other.to_string()),
        }
    }
}
