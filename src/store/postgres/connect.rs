//! From `storage.postgres_url` to connections: URL parsing, TLS, and what may be logged.
//!
//! The URL is a libpq URL. tokio-postgres understands most of it but only the `sslmode`s
//! `disable`, `prefer` and `require`; liveuser reads `sslmode` and `sslrootcert` itself
//! and hands the rest over:
//!
//! | `sslmode`       | TLS                | the server's certificate                                      |
//! |-----------------|--------------------|---------------------------------------------------------------|
//! | `disable`       | never              | —                                                             |
//! | `prefer` (default, as libpq) | if the server offers it | not checked (as libpq: protects against eavesdropping only) |
//! | `require`       | always             | not checked (as libpq)                                        |
//! | `verify-full`   | always             | chain to `sslrootcert` (a PEM file) or to the Mozilla roots, and the host name |
//!
//! `allow` and `verify-ca` are refused rather than approximated. TLS is rustls with the
//! ring provider, the same stack as liveuser's own HTTPS: no OpenSSL.
//!
//! The URL may hold a password: it is never logged or put in an error message; what is
//! shown is [`ConnectOptions::describe`], the hosts and the database.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP (or a Unix socket).
    Disable,
    /// TLS when the server offers it; certificate not checked.
    Prefer,
    /// TLS always; certificate not checked.
    Require,
    /// TLS always; certificate chain and host name checked.
    VerifyFull,
}

/// A parsed `storage.postgres_url`.
#[derive(Clone)]
pub struct ConnectOptions {
    /// What tokio-postgres connects with.
    pub pg: tokio_postgres::Config,
    /// The `sslmode`.
    pub tls: TlsMode,
    /// `sslrootcert`: the CA certificates (PEM) that `verify-full` trusts.
    pub root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Connect timeout when the URL sets none: a database that does not answer must turn
/// into a quick `unavailable`, not a request that hangs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl ConnectOptions {
    /// Parses a libpq URL (`postgres://` or `postgresql://`). The error never quotes
    /// the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<ConnectOptions, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("must be a postgres:// or postgresql:// URL")?;
        let (head, query) = match rest.split_once('?') {
            Some((head, query)) => (head, Some(query)),
            None => (rest, None),
        };
        let mut tls = TlsMode::Prefer;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    tls = match value {
                        "disable" => TlsMode::Disable,
                        "prefer" => TlsMode::Prefer,
                        "require" => TlsMode::Require,
                        "verify-full" => TlsMode::VerifyFull,
                        "allow" | "verify-ca" => {
                            return Err(format!(
                                "sslmode={value} is not supported; use require (encrypted) or \
                                 verify-full (encrypted, certificate and host name checked)"
                            ));
                        }
                        _ => {
                            return Err(
                                "sslmode must be disable, prefer, require or verify-full".into()
                            );
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value)?)),
                _ => kept.push(pair),
            }
        }
        let scheme = "postgres://";
        let rebuilt = if kept.is_empty() {
            format!("{scheme}{head}")
        } else {
            format!("{scheme}{head}?{}", kept.join("&"))
        };
        let mut pg = tokio_postgres::Config::from_str(&rebuilt)
            .map_err(|e| format!("is not a valid PostgreSQL URL: {e}"))?;
        if pg.get_hosts().is_empty() {
            return Err("must name a host (postgres://user@host/database)".into());
        }
        if pg.get_user().is_none() {
            // libpq defaults to the OS user; a service should say whom it connects as.
            return Err("must name a user (postgres://user@host/database)".into());
        }
        if root_cert.is_some() && tls != TlsMode::VerifyFull {
            return Err("sslrootcert is only used with sslmode=verify-full".into());
        }
        pg.ssl_mode(match tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyFull => SslMode::Require,
        });
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        // Dead peers are noticed by the kernel too, not only by a failing query.
        pg.keepalives(true);
        pg.keepalives_idle(Duration::from_secs(30));
        if pg.get_application_name().is_none() {
            pg.application_name("liveuser");
        }
        Ok(ConnectOptions { pg, tls, root_cert })
    }

    /// The hosts and the database, for logs and messages: never the user's password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .zip(self.pg.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(host, port)| match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        format!(
            "{}/{}",
            hosts.join(","),
            self.pg
                .get_dbname()
                .or(self.pg.get_user())
                .unwrap_or_default()
        )
    }

    /// The TLS connector for these options.
    pub fn tls(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        let config = match self.tls {
            TlsMode::VerifyFull => {
                let mut roots = RootCertStore::empty();
                match &self.root_cert {
                    Some(path) => {
                        let pem = std::fs::read(path).map_err(|e| {
                            format!("cannot read sslrootcert {}: {e}", path.display())
                        })?;
                        for cert in CertificateDer::pem_slice_iter(&pem) {
                            let cert = cert.map_err(|e| {
                                format!("sslrootcert {} is not PEM: {e}", path.display())
                            })?;
                            roots
                                .add(cert)
                                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                        }
                        if roots.is_empty() {
                            return Err(format!(
                                "sslrootcert {} holds no certificate",
                                path.display()
                            ));
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// libpq's `require`: encrypted, the certificate not checked (only the handshake's
/// signatures, so the session key is the server's). Use `verify-full` against an
/// attacker in the network path.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("has a bad %-escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "has a %-escape that is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows_and_host_and_database_do() {
        let o =
            ConnectOptions::parse("postgres://lu:hunter2secret@db.internal:6432/liveuser").unwrap();
        assert_eq!(o.describe(), "db.internal:6432/liveuser");
        assert!(!format!("{o:?}").contains("hunter2secret"));
        let err = ConnectOptions::parse("postgres://lu:hunter2secret@db/x?port=notaport")
            .err()
            .unwrap();
        assert!(!err.contains("hunter2secret"), "{err}");
    }

    #[test]
    fn sslmodes_map_to_tls_settings_and_unsupported_ones_are_refused() {
        let mode = |q: &str| ConnectOptions::parse(&format!("postgres://u@h/d{q}")).map(|o| o.tls);
        assert_eq!(mode(""), Ok(TlsMode::Prefer));
        assert_eq!(mode("?sslmode=disable"), Ok(TlsMode::Disable));
        assert_eq!(mode("?sslmode=require"), Ok(TlsMode::Require));
        assert_eq!(mode("?sslmode=verify-full"), Ok(TlsMode::VerifyFull));
        assert!(
            mode("?sslmode=verify-ca")
                .unwrap_err()
                .contains("verify-full")
        );
        assert!(mode("?sslmode=bogus").is_err());
        let o = ConnectOptions::parse(
            "postgresql://u@h/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(o.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(o.pg.get_application_name(), Some("x"));
        assert!(ConnectOptions::parse("postgres://u@h/d?sslrootcert=/x").is_err());
    }

    #[test]
    fn a_url_without_host_or_user_or_scheme_is_refused() {
        assert!(ConnectOptions::parse("mysql://u@h/d").is_err());
        assert!(ConnectOptions::parse("postgres:///d").is_err());
        assert!(ConnectOptions::parse("postgres://h/d").is_err());
    }

    #[test]
    fn verify_full_reads_its_root_certificates() {
        let o = ConnectOptions::parse("postgres://u@h/d?sslmode=verify-full").unwrap();
        assert!(o.tls().is_ok(), "the Mozilla roots");
        let o = ConnectOptions::parse(
            "postgres://u@h/d?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap();
        assert!(o.tls().err().unwrap().contains("/nonexistent/ca.pem"));
    }
}
