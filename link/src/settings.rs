//! How to reach the broker: URL, credentials, TLS files, packet limits,
//! environment overrides, and the rumqttc options they make.

use crate::tls::configure_tls;
use crate::*;

/// How to reach the broker. Deserializable from the `[mqtt]` table of
/// every role's configuration file.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host:port` (plain) or `mqtts://host:port` (TLS).
    pub url: String,
    /// Broker username (absent: anonymous, or a certificate's name).
    pub username: Option<String>,
    /// The password itself; prefer `password_file` outside demos.
    pub password: Option<String>,
    /// A file holding the password (first line), e.g. a systemd credential.
    pub password_file: Option<PathBuf>,
    /// MQTT client id; empty means the username.
    pub client_id: String,
    /// PEM file of the CA certificates trusted for `mqtts://` (default: the
    /// system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to an `mqtts://` broker that asks
    /// for client certificates (with `client_key_file`). A broker with
    /// `use_identity_as_username` takes the certificate's common name as
    /// the username: `username` must then be that name or absent, and the
    /// password is not checked.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file` (keep it 0600).
    pub client_key_file: Option<PathBuf>,
    /// MQTT keep-alive interval.
    pub keep_alive_secs: u64,
    /// Largest MQTT packet sent or received. Mask supplies are about
    /// 400 KB for MNIST and rounds of big models several MiB, far above
    /// rumqttc's 10 KiB default.
    pub max_packet_bytes: usize,
    /// Keep the broker-side session (subscriptions and queued QoS 1
    /// messages) across disconnections.
    pub persistent_session: bool,
    /// First wait between reconnection attempts (doubling from there).
    pub backoff_min_ms: u64,
    /// Longest wait between reconnection attempts.
    pub backoff_max_ms: u64,
    /// QoS 1 publishes in flight before waiting for acknowledgements.
    pub inflight: u16,
    /// What the broker publishes when the connection drops without a
    /// DISCONNECT (availability topics). Set by code, not configuration.
    #[serde(skip)]
    pub last_will: Option<LastWill>,
}

/// A retained-or-not QoS 1 message the broker sends on the client's behalf
/// once it loses the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastWill {
    /// Where it is published.
    pub topic: String,
    /// What it says (e.g. `offline`).
    pub payload: Vec<u8>,
    /// Whether it is retained.
    pub retain: bool,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            url: "mqtt://127.0.0.1:1883".into(),
            username: None,
            password: None,
            password_file: None,
            client_id: String::new(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive_secs: 30,
            max_packet_bytes: 32 * 1024 * 1024,
            persistent_session: true,
            backoff_min_ms: 250,
            backoff_max_ms: 30_000,
            inflight: 100,
            last_will: None,
        }
    }
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("client_id", &self.client_id)
            .field("persistent_session", &self.persistent_session)
            .finish_non_exhaustive()
    }
}

impl MqttSettings {
    /// Settings for `url` with credentials.
    pub fn new(url: impl Into<String>, username: &str, password: &str) -> MqttSettings {
        MqttSettings {
            url: url.into(),
            username: Some(username.to_string()),
            password: Some(password.to_string()),
            ..MqttSettings::default()
        }
    }

    /// Applies `<PREFIX>BROKER_URL`, `<PREFIX>MQTT_USERNAME`,
    /// `<PREFIX>MQTT_PASSWORD`, `<PREFIX>MQTT_PASSWORD_FILE`,
    /// `<PREFIX>MQTT_CLIENT_ID`, `<PREFIX>MQTT_CA_FILE`,
    /// `<PREFIX>MQTT_CLIENT_CERT_FILE` and `<PREFIX>MQTT_CLIENT_KEY_FILE`
    /// from the environment, when set.
    pub fn apply_env(&mut self, prefix: &str) {
        let var = |name: &str| std::env::var(format!("{prefix}{name}")).ok();
        if let Some(v) = var("BROKER_URL") {
            self.url = v;
        }
        if let Some(v) = var("MQTT_USERNAME") {
            self.username = Some(v);
        }
        if let Some(v) = var("MQTT_PASSWORD") {
            self.password = Some(v);
        }
        if let Some(v) = var("MQTT_PASSWORD_FILE") {
            self.password_file = Some(v.into());
        }
        if let Some(v) = var("MQTT_CLIENT_ID") {
            self.client_id = v;
        }
        if let Some(v) = var("MQTT_CA_FILE") {
            self.ca_file = Some(v.into());
        }
        if let Some(v) = var("MQTT_CLIENT_CERT_FILE") {
            self.client_cert_file = Some(v.into());
        }
        if let Some(v) = var("MQTT_CLIENT_KEY_FILE") {
            self.client_key_file = Some(v.into());
        }
    }

    /// The client certificate chain and key files, when both are set.
    fn client_identity(&self) -> Result<Option<(&PathBuf, &PathBuf)>, LinkError> {
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            _ => Err(LinkError::Tls(
                "client_cert_file and client_key_file go together".into(),
            )),
        }
    }

    /// Host, port and whether TLS is asked for.
    pub fn endpoint(&self) -> Result<(String, u16, bool), LinkError> {
        let bad = |reason: &str| LinkError::Url {
            url: self.url.clone(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| bad("expected mqtt://host:port or mqtts://host:port"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" | "tls" => true,
            _ => return Err(bad("the scheme must be mqtt or mqtts")),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
                (host, port)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok((host.to_string(), port, tls))
    }

    fn resolved_password(&self) -> Result<Option<Zeroizing<String>>, LinkError> {
        if let Some(path) = &self.password_file {
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                LinkError::Read {
                    path: path.clone(),
                    source,
                }
            })?);
            let first = text.lines().next().unwrap_or("").to_string();
            return Ok(Some(Zeroizing::new(first)));
        }
        Ok(self.password.clone().map(Zeroizing::new))
    }

    pub(crate) fn options(&self) -> Result<MqttOptions, LinkError> {
        let (host, port, tls) = self.endpoint()?;
        let client_id = if self.client_id.is_empty() {
            self.username.clone().unwrap_or_else(|| "veil".into())
        } else {
            self.client_id.clone()
        };
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_keep_alive(Duration::from_secs(self.keep_alive_secs.max(5)));
        options.set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes);
        options.set_clean_session(!self.persistent_session);
        options.set_manual_acks(true);
        options.set_inflight(self.inflight.max(1));
        if let Some(will) = &self.last_will {
            options.set_last_will(rumqttc::LastWill::new(
                will.topic.clone(),
                will.payload.clone(),
                QoS::AtLeastOnce,
                will.retain,
            ));
        }
        if let Some(user) = &self.username {
            let password = self.resolved_password()?;
            options.set_credentials(
                user.clone(),
                password.as_ref().map(|p| p.as_str()).unwrap_or(""),
            );
        }
        let identity = self.client_identity()?;
        if tls {
            configure_tls(&mut options, self.ca_file.as_ref(), identity)?;
        } else if identity.is_some() {
            return Err(LinkError::Tls(
                "a client certificate needs an mqtts:// URL".into(),
            ));
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_host_port_and_tls() {
        let mut s = MqttSettings {
            url: "mqtt://broker.local:1884".into(),
            ..MqttSettings::default()
        };
        assert_eq!(s.endpoint().unwrap(), ("broker.local".into(), 1884, false));
        s.url = "mqtts://10.0.0.1".into();
        assert_eq!(s.endpoint().unwrap(), ("10.0.0.1".into(), 8883, true));
        s.url = "mqtt://[::1]:1883".into();
        assert_eq!(s.endpoint().unwrap(), ("::1".into(), 1883, false));
        s.url = "http://x:1".into();
        assert!(s.endpoint().is_err());
        s.url = "mqtt://x:notaport".into();
        assert!(s.endpoint().is_err());
        s.url = "broker:1883".into();
        assert!(s.endpoint().is_err());
    }

    #[test]
    fn passwords_never_appear_in_debug_output() {
        let s = MqttSettings::new("mqtt://h:1", "devA", "secret-pw");
        assert!(!format!("{s:?}").contains("secret-pw"));
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_tls() {
        let mut s = MqttSettings {
            url: "mqtt://127.0.0.1:1883".into(),
            client_cert_file: Some("client.crt".into()),
            ..MqttSettings::default()
        };
        assert!(matches!(s.options(), Err(LinkError::Tls(_))));
        s.client_key_file = Some("client.key".into());
        assert!(matches!(s.options(), Err(LinkError::Tls(_))));
    }
}
