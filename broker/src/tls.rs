//! The TLS listener's rustls configuration (ring provider, no global state).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsListenerConfig;
use crate::error::BrokerError;

fn describe(path: &Path, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Tls(format!("{}: {e}", path.display()))
}

pub(crate) fn acceptor(config: &TlsListenerConfig) -> Result<TlsAcceptor, BrokerError> {
    let certs = CertificateDer::pem_file_iter(&config.cert)
        .map_err(|e| describe(&config.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| describe(&config.cert, e))?;
    if certs.is_empty() {
        return Err(describe(&config.cert, "no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| describe(&config.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| BrokerError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
