//! TLS for the listeners (rustls with ring), from PEM files.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::ServerError;
use crate::config::TlsFiles;

/// A rustls acceptor for a certificate chain and key in PEM files.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &std::path::Path, why: String| ServerError::Tls {
        file: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&files.cert_file, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(&files.cert_file, "no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| bad(&files.key_file, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&files.cert_file, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&files.cert_file, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
