//! The TLS handshake of `wss://` on a connected socket, under its own
//! deadline: the roots to trust (read once per [`Client`](super::Client)),
//! SNI and hostname verification on, and failures named (untrusted
//! issuer, name mismatch, expired; see [`crate::tls::TlsProblem`]).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, RootCertStore, StreamOwned};

use super::{ClientError, DeadlineStream};
use crate::tls::{ClientTls, TlsProblem};

/// An established TLS session over the deadline-bound socket.
pub(super) type TlsSession = StreamOwned<ClientConnection, DeadlineStream>;

/// The roots to trust, read from the CA file (or the built-in web roots)
/// on first use and kept.
#[derive(Debug, Default)]
pub(super) struct Trust {
    roots: Option<Arc<RootCertStore>>,
}

impl Trust {
    fn roots(&mut self, ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, ClientError> {
        if let Some(r) = &self.roots {
            return Ok(r.clone());
        }
        let r = crate::tls::roots(ca_file).map_err(ClientError::CaFile)?;
        self.roots = Some(r.clone());
        Ok(r)
    }

    /// The handshake for `host` on `sock`, whose deadline is already the
    /// TLS deadline (`limit`, named in the error when it passes).
    pub fn handshake(
        &mut self,
        ca_file: Option<&Path>,
        host: &str,
        mut sock: DeadlineStream,
        limit: Duration,
    ) -> Result<TlsSession, ClientError> {
        let client_tls = ClientTls::new(self.roots(ca_file)?).map_err(ClientError::CaFile)?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| ClientError::InvalidUrl(format!("{host}: {e}")))?;
        let mut conn = ClientConnection::new(client_tls.config.clone(), name)
            .map_err(|e| ClientError::Tls(TlsProblem::Other(e.to_string())))?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sock) {
                let refused = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                return Err(match refused {
                    Some(r) => ClientError::Tls(client_tls.problem(r)),
                    None if e.kind() == io::ErrorKind::TimedOut => ClientError::TlsTimeout(limit),
                    None => ClientError::Tls(TlsProblem::Other(format!(
                        "connection failed during the TLS handshake: {e}"
                    ))),
                });
            }
        }
        Ok(StreamOwned::new(conn, sock))
    }
}
