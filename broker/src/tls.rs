//! The TLS listener's rustls configuration (ring provider, no global
//! state), with client certificates when the listener asks for them.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::cert::{CertIdentityError, certificate_username};
use crate::config::TlsListenerConfig;
use crate::error::BrokerError;

fn describe(path: &Path, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Tls(format!("{}: {e}", path.display()))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| describe(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| describe(path, e))?;
    if certs.is_empty() {
        return Err(describe(path, "no certificate found"));
    }
    Ok(certs)
}

/// The listener's acceptor, and whether its clients' usernames come from
/// their certificates.
pub(crate) struct Listener {
    pub acceptor: TlsAcceptor,
    pub identity_from_certificate: bool,
}

pub(crate) fn listener(config: &TlsListenerConfig) -> Result<Listener, BrokerError> {
    let certs = certificates(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| describe(&config.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(e.to_string()))?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(path)? {
                roots.add(cert).map_err(|e| describe(path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.require_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| describe(path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let server = builder
        .with_single_cert(certs, key)
        .map_err(|e| BrokerError::Tls(e.to_string()))?;
    Ok(Listener {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        identity_from_certificate: config.use_identity_as_username,
    })
}

/// The username the verified client certificate of `stream` carries.
pub(crate) fn peer_username<S>(stream: &TlsStream<S>) -> Result<String, CertIdentityError> {
    let (_, connection) = stream.get_ref();
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(CertIdentityError::NoCertificate)?;
    certificate_username(leaf)
}
