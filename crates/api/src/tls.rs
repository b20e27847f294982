//! HTTPS: a rustls server configuration (the `ring` provider, as for MQTT) read from PEM
//! files, held behind a swappable cell so that certificates can be re-read while the server
//! runs. A connection takes the configuration current when it is accepted and keeps it;
//! connections in flight are never dropped by a reload.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// The PEM files HTTPS is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf (PKCS#8, PKCS#1 or SEC1); never group or world readable.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Why a TLS configuration could not be built; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no usable PEM {kind}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
        reason: String,
    },
    #[error("the TLS key file {0} is readable by group or others; run chmod 600 on it")]
    KeyMode(PathBuf),
    #[error("the TLS configuration is refused: {0}")]
    Rustls(String),
}

/// A swappable server configuration; cheap to clone (all clones share the cell).
#[derive(Clone)]
pub struct Tls {
    files: TlsFiles,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the files; fails (naming the file) if any is missing, unreadable or unusable.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let config = server_config(&files)?;
        Ok(Tls {
            files,
            current: Arc::new(RwLock::new(Arc::new(config))),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the same files. New connections use the new configuration; connections
    /// already accepted keep theirs. On error the old configuration stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self.current.write() = Arc::new(config);
        Ok(())
    }

    /// The configuration a connection accepted now is served with.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.into(),
        source,
    })
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.into(),
            kind: "certificate",
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.into(),
            kind: "certificate",
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Builds the rustls configuration from `files` (HTTP/1.1 over TLS 1.2 or 1.3).
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("api.tls_cert", &files.cert)?;
    let meta = std::fs::metadata(&files.key).map_err(|source| TlsError::Read {
        what: "api.tls_key",
        path: files.key.clone(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(TlsError::KeyMode(files.key.clone()));
    }
    let key_pem = read("api.tls_key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what: "api.tls_key",
        path: files.key.clone(),
        kind: "private key",
        reason: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("api.client_ca", ca)? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    what: "api.client_ca",
                    path: ca.clone(),
                    kind: "CA certificate",
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rustls(format!("api.client_ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(format!("api.tls_cert and api.tls_key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
