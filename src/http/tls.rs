//! HTTPS for the public listener: rustls (ring) over the server's own accept loop.
//!
//! WeChat mini-programs may only call HTTPS domains, and many self-hosters want no
//! reverse proxy in front; with `server.tls_cert` and `server.tls_key` set, liveuser
//! terminates TLS itself. The certificate chain and key are read once at start (PEM; the
//! key PKCS#8, PKCS#1 or SEC1); a renewed certificate takes effect at the next restart.
//! TLS 1.2 and 1.3 with rustls' safe defaults, HTTP/1.1 by ALPN.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A loaded certificate and key, ready to accept connections.
#[derive(Clone)]
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(***)")
    }
}

/// Why the certificate or key could not be used; names the file, never its content.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TlsError {
    /// The file at fault.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Tls {
    /// Reads the PEM certificate chain at `cert` and the PEM private key at `key`.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let cert_error = |reason: String| TlsError {
            path: cert.display().to_string(),
            reason,
        };
        let key_error = |reason: String| TlsError {
            path: key.display().to_string(),
            reason,
        };
        let pem = std::fs::read(cert).map_err(|e| cert_error(format!("cannot read: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(format!("not a PEM certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(cert_error("holds no PEM certificate".into()));
        }
        let pem = std::fs::read(key).map_err(|e| key_error(format!("cannot read: {e}")))?;
        let private = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|_| key_error("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into()))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| cert_error(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| key_error(format!("does not fit the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The acceptor for incoming connections.
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}
