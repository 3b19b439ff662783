//! TLS with rustls (ring provider): the server transport under the
//! connection ([`TlsStream`]), the certificate pair and its reloads
//! ([`CertStore`]), and the client's trust and error naming
//! ([`ClientTls`], [`TlsProblem`]). The session itself is sans-IO
//! (`session.rs`: bytes in, bytes out); `stream.rs` moves its bytes to
//! and from the socket.

mod certs;
mod client;
mod session;
mod stream;
mod x509;

pub use certs::{CertError, CertStore, Which, load, provider};
pub use client::{ClientTls, TlsProblem, roots};
pub use stream::TlsStream;
pub use x509::issuer;
