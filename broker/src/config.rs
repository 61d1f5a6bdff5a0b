//! Broker configuration, deserializable from TOML (see `config/broker.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::quota::PublishQuota;

/// Room for a PUBLISH's topic, packet id and v5 properties on top of the
/// payload limit.
pub(crate) const HEADER_ALLOWANCE: usize = 64 * 1024 + 16;

/// Largest payload limit accepted: the MQTT remaining length tops out at
/// 256 MiB.
const MAX_PAYLOAD_LIMIT: usize = 268_435_455 - HEADER_ALLOWANCE;

/// Configuration of one broker instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Plain MQTT listener. Port 0 picks a free port; the bound address is
    /// reported by [`crate::BrokerHandle::local_addr`].
    pub listen: SocketAddr,
    /// Optional MQTT-over-TLS listener.
    pub tls: Option<TlsListenerConfig>,
    /// Mosquitto `password_file`. Without it only anonymous clients (if
    /// allowed) can connect.
    pub password_file: Option<PathBuf>,
    /// Mosquitto `acl_file`. Without it every authenticated client may
    /// publish and subscribe anywhere, as in Mosquitto; the broker then
    /// warns, and refuses to start unless every listener is on loopback.
    pub acl_file: Option<PathBuf>,
    /// Accept clients that send no username.
    pub allow_anonymous: bool,
    /// Let the plain (unencrypted) listener bind an address other than
    /// loopback. Off by default: passwords and frames would cross the
    /// network in clear text; use the TLS listener instead.
    pub allow_remote_plaintext: bool,
    /// Largest PUBLISH payload accepted, in bytes (default 16 MiB).
    pub max_payload_size: usize,
    /// ACL violations after which a client is disconnected; 0 never
    /// disconnects.
    pub max_violations: u32,
    /// Time allowed for the TLS handshake and the CONNECT packet.
    pub connect_timeout_ms: u64,
    /// Simultaneous client connections accepted per listener.
    pub max_connections: usize,
    /// QoS 1/2 messages in flight to one client before the broker waits for
    /// acknowledgements.
    pub max_inflight: u16,
    /// rumqttd keeps every filter's messages in an in-memory log of
    /// `log_segment_count` segments of about `log_segment_size` bytes; a
    /// persistent session that stays offline longer than that window loses
    /// the oldest messages.
    pub log_segment_size: usize,
    /// Segments kept per persistent session (see `log_segment_size`).
    pub log_segment_count: usize,
    /// Per-username PUBLISH rate and byte quotas.
    pub publish_quota: PublishQuota,
}

/// The TLS listener: certificate chain and private key, both PEM, and
/// optionally client certificates (see the crate documentation,
/// "Client certificates").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// Address of the TLS listener.
    pub listen: SocketAddr,
    /// PEM certificate chain of the broker.
    pub cert: PathBuf,
    /// PEM private key of `cert` (keep it 0600).
    pub key: PathBuf,
    /// PEM file of the CA certificates that sign client certificates
    /// (Mosquitto's `cafile` on a listener). With it the listener asks
    /// every client for a certificate and refuses, at the handshake, one
    /// that does not chain to these CAs.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Refuse, at the handshake, a client that presents no certificate
    /// (Mosquitto's `require_certificate`). Needs `client_ca`.
    #[serde(default)]
    pub require_certificate: bool,
    /// The certificate's subject common name is the client's username,
    /// and the password file is not consulted on this listener
    /// (Mosquitto's `use_identity_as_username`). Needs
    /// `require_certificate`.
    #[serde(default)]
    pub use_identity_as_username: bool,
}

impl TlsListenerConfig {
    /// A listener with a server certificate and no client certificates.
    pub fn new(listen: SocketAddr, cert: PathBuf, key: PathBuf) -> TlsListenerConfig {
        TlsListenerConfig {
            listen,
            cert,
            key,
            client_ca: None,
            require_certificate: false,
            use_identity_as_username: false,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            tls: None,
            password_file: None,
            acl_file: None,
            allow_anonymous: false,
            allow_remote_plaintext: false,
            max_payload_size: 16 * 1024 * 1024,
            max_violations: 10,
            connect_timeout_ms: 10_000,
            max_connections: 10_000,
            max_inflight: 100,
            log_segment_size: 16 * 1024 * 1024,
            log_segment_count: 4,
            publish_quota: PublishQuota::default(),
        }
    }
}

impl BrokerConfig {
    /// Reads a TOML file. Relative paths inside it are taken relative to the
    /// file's own directory, so a config can sit next to its ACL and
    /// password files.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<BrokerConfig, BrokerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| BrokerError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: BrokerConfig =
            toml::from_str(&text).map_err(|source| BrokerError::Toml {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.resolve_relative_to(base);
        config.validate()?;
        Ok(config)
    }

    /// Makes every relative file path in the config relative to `base`.
    pub fn resolve_relative_to(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = &mut self.password_file {
            fix(p);
        }
        if let Some(p) = &mut self.acl_file {
            fix(p);
        }
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                fix(ca);
            }
        }
    }

    /// Checks limits that would otherwise fail later (some inside rumqttd,
    /// where they would panic).
    pub fn validate(&self) -> Result<(), BrokerError> {
        let fail = |m: String| Err(BrokerError::Config(m));
        if self.max_payload_size == 0 || self.max_payload_size > MAX_PAYLOAD_LIMIT {
            return fail(format!(
                "max_payload_size must be between 1 and {MAX_PAYLOAD_LIMIT}"
            ));
        }
        if self.max_inflight == 0 {
            return fail("max_inflight must be at least 1".into());
        }
        if self.max_connections == 0 {
            return fail("max_connections must be at least 1".into());
        }
        if self.log_segment_size < 1024 {
            return fail("log_segment_size must be at least 1024 bytes".into());
        }
        if self.log_segment_count == 0 {
            return fail("log_segment_count must be at least 1".into());
        }
        if self.connect_timeout_ms == 0 {
            return fail("connect_timeout_ms must be positive".into());
        }
        if !self.listen.ip().is_loopback() && !self.allow_remote_plaintext {
            return Err(BrokerError::RemotePlaintext { addr: self.listen });
        }
        if let Some(tls) = &self.tls {
            if tls.require_certificate && tls.client_ca.is_none() {
                return fail("tls.require_certificate needs tls.client_ca".into());
            }
            if tls.use_identity_as_username && !tls.require_certificate {
                return fail("tls.use_identity_as_username needs tls.require_certificate".into());
            }
        }
        if self.acl_file.is_none()
            && let Some(addr) = self.listen_addrs().find(|a| !a.ip().is_loopback())
        {
            return Err(BrokerError::NoAclOnRemoteListener { addr });
        }
        Ok(())
    }

    /// Every address the broker listens on for clients.
    pub fn listen_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.listen).chain(self.tls.as_ref().map(|t| t.listen))
    }

    /// Largest whole MQTT packet accepted.
    pub(crate) fn max_packet_size(&self) -> usize {
        self.max_payload_size.saturating_add(HEADER_ALLOWANCE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields_and_paths_resolve_next_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:0\"\nacl_file = \"acl\"\npassword_file = \"/etc/pw\"\n\
             [tls]\nlisten = \"0.0.0.0:8883\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
             client_ca = \"ca.pem\"\nrequire_certificate = true\n",
        )
        .unwrap();
        let c = BrokerConfig::from_toml_file(&path).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.acl_file, Some(dir.path().join("acl")));
        assert_eq!(c.password_file, Some(PathBuf::from("/etc/pw")));
        assert_eq!(c.tls.as_ref().unwrap().cert, dir.path().join("c.pem"));
        assert_eq!(
            c.tls.as_ref().unwrap().client_ca,
            Some(dir.path().join("ca.pem"))
        );
        assert!(!c.tls.as_ref().unwrap().use_identity_as_username);
        assert_eq!(c.max_payload_size, 16 * 1024 * 1024);
        assert_eq!(c.max_violations, 10);
    }

    #[test]
    fn remote_listeners_need_tls_or_consent_and_an_acl_file() {
        let remote = SocketAddr::from(([0, 0, 0, 0], 1883));
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let with_acl = BrokerConfig {
            acl_file: Some("acl".into()),
            ..BrokerConfig::default()
        };
        let plain = BrokerConfig {
            listen: remote,
            ..with_acl.clone()
        };
        assert!(matches!(
            plain.validate(),
            Err(BrokerError::RemotePlaintext { addr }) if addr == remote
        ));
        let consented = BrokerConfig {
            allow_remote_plaintext: true,
            ..plain
        };
        assert!(consented.validate().is_ok());
        let no_acl = BrokerConfig {
            acl_file: None,
            ..consented
        };
        assert!(matches!(
            no_acl.validate(),
            Err(BrokerError::NoAclOnRemoteListener { addr }) if addr == remote
        ));
        let tls_no_acl = BrokerConfig {
            listen: local,
            tls: Some(TlsListenerConfig::new(remote, "c".into(), "k".into())),
            acl_file: None,
            ..BrokerConfig::default()
        };
        assert!(matches!(
            tls_no_acl.validate(),
            Err(BrokerError::NoAclOnRemoteListener { .. })
        ));
        assert!(
            BrokerConfig {
                listen: local,
                ..BrokerConfig::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn certificate_identities_need_a_required_certificate_and_a_ca() {
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut tls = TlsListenerConfig::new(local, "c".into(), "k".into());
        tls.use_identity_as_username = true;
        let config = |tls: &TlsListenerConfig| BrokerConfig {
            listen: local,
            tls: Some(tls.clone()),
            ..BrokerConfig::default()
        };
        assert!(matches!(
            config(&tls).validate(),
            Err(BrokerError::Config(_))
        ));
        tls.require_certificate = true;
        assert!(matches!(
            config(&tls).validate(),
            Err(BrokerError::Config(_))
        ));
        tls.client_ca = Some("ca".into());
        assert!(config(&tls).validate().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_limits_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "listne = \"127.0.0.1:0\"\n").unwrap();
        // The file's name in the error, the TOML parser's reason as its
        // cause (each printed once by a reporter that walks the chain).
        let e = BrokerConfig::from_toml_file(&path).unwrap_err();
        assert!(e.to_string().contains("b.toml"), "{e}");
        let cause = std::error::Error::source(&e)
            .map(|c| c.to_string())
            .unwrap_or_default();
        assert!(cause.contains("listne"), "{cause}");
        assert!(
            !e.to_string().contains("listne"),
            "the cause is printed twice: {e}"
        );
        std::fs::write(&path, "log_segment_size = 10\n").unwrap();
        let e = BrokerConfig::from_toml_file(&path).unwrap_err();
        assert!(e.to_string().contains("log_segment_size"), "{e}");
        let e = BrokerConfig::from_toml_file(dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(e, BrokerError::Read { .. }));
    }
}
