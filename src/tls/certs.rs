//! The server's certificate and key: read from PEM files (a chain is
//! allowed), checked against each other, and turned into a rustls
//! `ServerConfig` (ring provider, TLS 1.3 and 1.2, ALPN `http/1.1`).
//! Reloaded on request (SIGHUP) and when the files change; a bad new pair
//! is refused and the one in use stays.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Which file a problem is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The certificate chain (`tls_cert`).
    Cert,
    /// The private key (`tls_key`).
    Key,
}

impl Which {
    /// The setting's name (see `settings::DECLS`).
    pub fn setting(self) -> &'static str {
        match self {
            Which::Cert => "tls_cert",
            Which::Key => "tls_key",
        }
    }
}

/// A certificate or key that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertError {
    /// The file at fault.
    pub which: Which,
    /// Its path.
    pub path: PathBuf,
    /// What is wrong with it, in words (missing, unreadable, empty, not PEM,
    /// does not match the certificate…).
    pub problem: String,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.which.setting(),
            self.path.display(),
            self.problem
        )
    }
}

impl std::error::Error for CertError {}

/// The ring provider: it builds with mingw for the Windows cross-build,
/// where aws-lc-rs would need NASM and CMake.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's provider: the same suites, AES-128-GCM first. TLS 1.3's
/// AES-256 suite hashes with SHA-384, which ring computes without hardware
/// help here (16 % of a handshake's CPU in a profile), where SHA-256 has
/// the SHA extensions; every suite offered is strong. The server's order
/// wins (`ignore_client_order`), as BoringSSL's does.
fn server_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::*;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

fn pem_problem(e: pem::Error, what: &str) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot be read: {e}"),
        pem::Error::NoItemsFound => format!("no {what} found in the PEM file"),
        other => format!("is not valid PEM: {other}"),
    }
}

/// Builds the server configuration from the two files.
pub fn load(cert: &Path, key: &Path) -> Result<ServerConfig, CertError> {
    let fail = |which: Which, path: &Path, problem: String| CertError {
        which,
        path: path.to_path_buf(),
        problem,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| fail(Which::Cert, cert, pem_problem(e, "CERTIFICATE")))?;
    if chain.is_empty() {
        return Err(fail(
            Which::Cert,
            cert,
            "no CERTIFICATE found in the PEM file".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| fail(Which::Key, key, pem_problem(e, "PRIVATE KEY")))?;
    server_config(chain, private).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => fail(
            Which::Key,
            key,
            format!("does not match the certificate in {} ({e})", cert.display()),
        ),
        rustls::Error::General(m) if m.contains("private key") => fail(Which::Key, key, m),
        other => fail(Which::Cert, cert, other.to_string()),
    })
}

/// The server configuration for a certificate chain and its key: the
/// server's suites, TLS 1.3 and 1.2, ALPN `http/1.1`, the server's order.
pub(super) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(config)
}

/// Size and modification time of a file, to notice a replacement.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The configuration new connections get, and how to renew it.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Arc<ServerConfig>>,
    /// The files as they were at the last load attempt.
    seen: Mutex<(Stamp, Stamp)>,
    /// Reloads that installed a new pair (`pollcap_tls_reloads_total`).
    pub(crate) reloads_total: AtomicU64,
    /// Reloads refused, the pair in use kept
    /// (`pollcap_tls_reload_failures_total`).
    pub(crate) reload_failures_total: AtomicU64,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl CertStore {
    /// Loads the pair; an error names the file and the problem.
    pub fn open(cert: &Path, key: &Path) -> Result<CertStore, CertError> {
        let seen = (stamp(cert), stamp(key));
        let config = load(cert, key)?;
        Ok(CertStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new(Arc::new(config)),
            seen: Mutex::new(seen),
            reloads_total: AtomicU64::new(0),
            reload_failures_total: AtomicU64::new(0),
        })
    }

    /// The configuration for a connection accepted now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True when either file changed since the last load attempt.
    pub fn changed_on_disk(&self) -> bool {
        let now = (stamp(&self.cert), stamp(&self.key));
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != now
    }

    /// Loads the files again: the new pair serves new connections, or the
    /// error is returned, counted, and the pair in use stays.
    pub fn reload(&self) -> Result<(), CertError> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) =
            (stamp(&self.cert), stamp(&self.key));
        match load(&self.cert, &self.key) {
            Ok(config) => {
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                self.reloads_total.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => {
                self.reload_failures_total.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }
}
