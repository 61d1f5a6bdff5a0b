//! TLS for the link (the `tls` feature): CA and client certificate from
//! files, or the system's roots.

use crate::*;

#[cfg(feature = "tls")]
pub(crate) fn configure_tls(
    options: &mut MqttOptions,
    ca_file: Option<&PathBuf>,
    identity: Option<(&PathBuf, &PathBuf)>,
) -> Result<(), LinkError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| LinkError::Tls(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| LinkError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| LinkError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_roots();
            for cert in found {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        None => config.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let tls = |path: &PathBuf, e: &dyn std::fmt::Display| {
                LinkError::Tls(format!("{}: {e}", path.display()))
            };
            let chain = CertificateDer::pem_file_iter(cert_file)
                .map_err(|e| tls(cert_file, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(cert_file, &e))?;
            if chain.is_empty() {
                return Err(tls(cert_file, &"no certificate found"));
            }
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| tls(key_file, &e))?;
            config
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(cert_file, &e))?
        }
    };
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
    ));
    Ok(())
}

#[cfg(feature = "tls")]
fn rustls_native_roots() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    // The usual Debian bundle; deployments with another layout set ca_file.
    CertificateDer::pem_file_iter("/etc/ssl/certs/ca-certificates.crt")
        .map(|iter| iter.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

#[cfg(not(feature = "tls"))]
pub(crate) fn configure_tls(
    _: &mut MqttOptions,
    _: Option<&PathBuf>,
    _: Option<(&PathBuf, &PathBuf)>,
) -> Result<(), LinkError> {
    Err(LinkError::Tls(
        "this build has no TLS support (enable the `tls` feature)".into(),
    ))
}
