//! veil-link owns the MQTT connection that every veil runtime (edge agent,
//! server A, server B) uses: the connection settings (URL, credentials,
//! optional TLS, packet limits), the rumqttc event loop run in its own task
//! with reconnection and exponential backoff, re-subscription after every
//! reconnect, publishes held back while the broker is unreachable, manual
//! acknowledgement of incoming messages (so a runtime acknowledges only what
//! it has made durable), and *confirmed* publishes: a publish that carries a
//! token is reported back once the broker has acknowledged it (PUBACK), and
//! is sent again after a reconnect until it has been. It knows nothing of
//! the protocol: the runtimes give it topics and bytes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// Why a link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("broker URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("no retained message on {topics} ({last_error})")]
    Missing { topics: String, last_error: String },
}

/// How to reach the broker. Deserializable from the `[mqtt]` table of
/// every role's configuration file.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host:port` (plain) or `mqtts://host:port` (TLS).
    pub url: String,
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
    pub keep_alive_secs: u64,
    /// Largest MQTT packet sent or received. Mask supplies are about
    /// 400 KB for MNIST and rounds of big models several MiB, far above
    /// rumqttc's 10 KiB default.
    pub max_packet_bytes: usize,
    /// Keep the broker-side session (subscriptions and queued QoS 1
    /// messages) across disconnections.
    pub persistent_session: bool,
    /// First and longest wait between reconnection attempts.
    pub backoff_min_ms: u64,
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
    pub topic: String,
    pub payload: Vec<u8>,
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

    fn options(&self) -> Result<MqttOptions, LinkError> {
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

#[cfg(feature = "tls")]
fn configure_tls(
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
fn configure_tls(
    _: &mut MqttOptions,
    _: Option<&PathBuf>,
    _: Option<(&PathBuf, &PathBuf)>,
) -> Result<(), LinkError> {
    Err(LinkError::Tls(
        "this build has no TLS support (enable the `tls` feature)".into(),
    ))
}

/// An incoming message.
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub retain: bool,
    /// Hand back to [`LinkHandle::ack`] once the message is safe.
    pub ack: AckToken,
}

/// Identifies one incoming QoS 1 message for its acknowledgement.
#[derive(Debug)]
pub struct AckToken {
    generation: u64,
    publish: Option<Publish>,
}

/// What the link reports to its owner.
#[derive(Debug)]
pub enum LinkEvent {
    /// Connected (again); subscriptions are being renewed.
    Connected {
        session_present: bool,
    },
    /// The subscriptions of this connection are in place; `granted` tells,
    /// per filter, whether the broker accepted it (a real Mosquitto accepts
    /// every filter and filters deliveries instead, so nothing may rely on
    /// a refusal showing up here).
    Subscribed {
        granted: Vec<bool>,
    },
    Message(Message),
    /// The broker acknowledged the publish that carried this token.
    Confirmed(u64),
    Disconnected {
        error: String,
    },
}

enum Request {
    Publish {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        token: Option<u64>,
    },
    Subscribe(Vec<String>),
    Ack(AckToken),
    Shutdown,
}

/// A cheap handle to send through the link. Nothing here waits for the
/// network: requests are queued while the broker is unreachable.
#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::UnboundedSender<Request>,
}

impl LinkHandle {
    /// Publishes with QoS 1; sent when connected, dropped if the link ends.
    pub fn publish(&self, topic: impl Into<String>, payload: Vec<u8>, retain: bool) {
        let _ = self.tx.send(Request::Publish {
            topic: topic.into(),
            payload,
            retain,
            token: None,
        });
    }

    /// Publishes with QoS 1 and reports [`LinkEvent::Confirmed`] with
    /// `token` once the broker has it; resent after reconnections until
    /// then.
    pub fn publish_confirmed(
        &self,
        topic: impl Into<String>,
        payload: Vec<u8>,
        retain: bool,
        token: u64,
    ) {
        let _ = self.tx.send(Request::Publish {
            topic: topic.into(),
            payload,
            retain,
            token: Some(token),
        });
    }

    /// Sets the filters to hold (QoS 1), now and after every reconnect.
    pub fn subscribe(&self, filters: Vec<String>) {
        let _ = self.tx.send(Request::Subscribe(filters));
    }

    /// Acknowledges an incoming message.
    pub fn ack(&self, token: AckToken) {
        let _ = self.tx.send(Request::Ack(token));
    }

    /// Disconnects cleanly and ends the link.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Request::Shutdown);
    }
}

/// Incoming events a link holds before it stops reading from the broker.
/// Messages are up to `max_packet_bytes` each, so this is also what bounds
/// the memory a flood of them can take on the receiving side.
pub const EVENT_QUEUE: usize = 32;

/// rumqttc events between the poller and the driver.
const RAW_QUEUE: usize = 16;

/// A running link: its handle, its events, and its tasks.
pub struct Link {
    pub handle: LinkHandle,
    /// Bounded ([`EVENT_QUEUE`]): a runtime that falls behind stops the
    /// link reading from the broker, which pushes back through TCP instead
    /// of piling messages up in memory.
    pub events: mpsc::Receiver<LinkEvent>,
    tasks: Vec<JoinHandle<()>>,
}

impl Link {
    /// Starts connecting (in the background) and returns at once.
    pub fn start(settings: &MqttSettings) -> Result<Link, LinkError> {
        let options = settings.options()?;
        let (client, mut eventloop) = AsyncClient::new(options, 4096);
        // Protocol messages are small and chained (a reply triggers the
        // next round): Nagle's delay would add tens of milliseconds per hop.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(10);
        eventloop.set_network_options(network);
        let (raw_tx, raw_rx) = mpsc::channel(RAW_QUEUE);
        // Requests stay unbounded: they are this process's own publishes
        // and acks, made by code that must not block (LinkHandle is sync),
        // and the link drains them whether or not the broker is reachable.
        let (tx, rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
        let backoff = (
            Duration::from_millis(settings.backoff_min_ms.max(10)),
            Duration::from_millis(settings.backoff_max_ms.max(settings.backoff_min_ms.max(10))),
        );
        let poller = tokio::spawn(poll_loop(eventloop, raw_tx, backoff));
        let driver = tokio::spawn(
            Driver {
                client,
                events: event_tx,
                backlog: VecDeque::new(),
                connected: false,
                generation: 0,
                lost_at: None,
                failed_attempts: 0,
                filters: Vec::new(),
                assign: VecDeque::new(),
                by_pkid: HashMap::new(),
                unconfirmed: BTreeMap::new(),
            }
            .run(rx, raw_rx),
        );
        Ok(Link {
            handle: LinkHandle { tx },
            events,
            tasks: vec![poller, driver],
        })
    }

    /// Ends the link's tasks at once, without a DISCONNECT: what a crash
    /// or a power cut looks like to the broker.
    pub fn abort(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Sends DISCONNECT and waits (briefly) for the tasks to end.
    pub async fn close(mut self) {
        self.handle.shutdown();
        let mut tasks = std::mem::take(&mut self.tasks).into_iter();
        let poller = tasks.next();
        // The driver sends DISCONNECT through the poller, so it goes first.
        if let Some(driver) = tasks.next()
            && tokio::time::timeout(Duration::from_secs(2), driver)
                .await
                .is_err()
        {
            tracing::debug!("MQTT link did not close in time");
        }
        if let Some(poller) = poller {
            poller.abort();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

enum Raw {
    Event(Event),
    Error(String),
}

/// Polls rumqttc's event loop for ever, sleeping with exponential backoff
/// between failed connections (reset by every CONNACK).
async fn poll_loop(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<Raw>,
    (min, max): (Duration, Duration),
) {
    let mut backoff = min;
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                    backoff = min;
                }
                if tx.send(Raw::Event(event)).await.is_err() {
                    return;
                }
            }
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                if tx.send(Raw::Error(e.to_string())).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

struct Pending {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

struct Driver {
    client: AsyncClient,
    events: mpsc::Sender<LinkEvent>,
    /// Requests waiting for a connection (or for room in rumqttc's queue).
    backlog: VecDeque<Request>,
    connected: bool,
    /// Bumped on every connection, so that acknowledgements of messages of
    /// an earlier connection are not sent on a later one.
    generation: u64,
    /// When the last connection was lost, and the attempts failed since:
    /// an operator reads "lost", then a line every 10 failed attempts, then
    /// "reconnected after …" instead of silence.
    lost_at: Option<std::time::Instant>,
    failed_attempts: u32,
    filters: Vec<String>,
    /// Token of each publish handed to rumqttc whose packet id is not yet
    /// known, in order (rumqttc reports packet ids in the same order).
    assign: VecDeque<Option<u64>>,
    /// Publishes in flight by packet id.
    by_pkid: HashMap<u16, Option<u64>>,
    /// Confirmed-publish requests not yet acknowledged, by token.
    unconfirmed: BTreeMap<u64, Pending>,
}

impl Driver {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Request>,
        mut raw: mpsc::Receiver<Raw>,
    ) {
        loop {
            self.feed();
            let full_now = self.events.capacity() == 0;
            // A second sender to wait on: the select's handlers need `self`.
            let full = self.events.clone();
            tokio::select! {
                request = requests.recv() => match request {
                    None | Some(Request::Shutdown) => {
                        let _ = self.client.try_disconnect();
                        // Give the event loop a moment to send DISCONNECT.
                        let _ = tokio::time::timeout(Duration::from_millis(500), async {
                            while let Some(r) = raw.recv().await {
                                if matches!(r, Raw::Error(_) | Raw::Event(Event::Outgoing(Outgoing::Disconnect))) {
                                    break;
                                }
                            }
                        })
                        .await;
                        return;
                    }
                    Some(Request::Subscribe(filters)) => {
                        self.filters = filters;
                        if self.connected {
                            self.backlog.push_back(Request::Subscribe(self.filters.clone()));
                        }
                    }
                    Some(Request::Publish { topic, payload, retain, token: Some(token) }) => {
                        self.unconfirmed.insert(token, Pending { topic: topic.clone(), payload: payload.clone(), retain });
                        self.backlog.push_back(Request::Publish { topic, payload, retain, token: Some(token) });
                    }
                    Some(other) => self.backlog.push_back(other),
                },
                // Each raw event makes at most one link event, so reading
                // one only when there is room never drops any.
                room = full.reserve(), if full_now => {
                    drop(room);
                }
                raw_event = raw.recv(), if !full_now => match raw_event {
                    None => return,
                    Some(Raw::Error(error)) => {
                        if self.connected {
                            tracing::warn!(%error, "MQTT connection lost; reconnecting");
                            self.lost_at = Some(std::time::Instant::now());
                            self.failed_attempts = 0;
                        } else {
                            self.failed_attempts += 1;
                            if self.failed_attempts.is_multiple_of(10)
                                || (self.generation == 0 && self.failed_attempts == 1)
                            {
                                tracing::warn!(%error, attempts = self.failed_attempts, "MQTT still not connected");
                            } else {
                                tracing::debug!(%error, "MQTT connection attempt failed");
                            }
                        }
                        self.connected = false;
                        self.emit(LinkEvent::Disconnected { error });
                    }
                    Some(Raw::Event(event)) => self.on_event(event),
                },
            }
        }
    }

    fn emit(&self, event: LinkEvent) {
        match self.events.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::error!("link event queue full; event dropped");
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                self.connected = true;
                self.generation += 1;
                match self.lost_at.take() {
                    Some(lost) => tracing::info!(
                        after_ms = lost.elapsed().as_millis() as u64,
                        failed_attempts = self.failed_attempts,
                        session_present = ack.session_present,
                        "MQTT reconnected"
                    ),
                    None if self.failed_attempts == 0 => tracing::info!("MQTT connected"),
                    None => {
                        tracing::info!(failed_attempts = self.failed_attempts, "MQTT connected")
                    }
                }
                self.failed_attempts = 0;
                // Requests from the last connection (acks, subscriptions)
                // would be wrong on this one.
                self.backlog
                    .retain(|r| matches!(r, Request::Publish { .. }));
                if !ack.session_present {
                    // rumqttc dropped everything in flight: send the
                    // confirmed publishes again, in order.
                    self.assign.clear();
                    self.by_pkid.clear();
                    self.backlog
                        .retain(|r| matches!(r, Request::Publish { token: None, .. }));
                    for (token, p) in self.unconfirmed.iter().rev() {
                        self.backlog.push_front(Request::Publish {
                            topic: p.topic.clone(),
                            payload: p.payload.clone(),
                            retain: p.retain,
                            token: Some(*token),
                        });
                    }
                }
                if !self.filters.is_empty() {
                    self.backlog
                        .push_front(Request::Subscribe(self.filters.clone()));
                }
                self.emit(LinkEvent::Connected {
                    session_present: ack.session_present,
                });
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .map(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
                    .collect();
                self.emit(LinkEvent::Subscribed { granted });
            }
            Event::Incoming(Packet::Publish(publish)) => {
                let ack = AckToken {
                    generation: self.generation,
                    publish: (publish.qos != QoS::AtMostOnce).then(|| Publish {
                        payload: bytes::Bytes::new(),
                        ..publish.clone()
                    }),
                };
                self.emit(LinkEvent::Message(Message {
                    topic: publish.topic.clone(),
                    payload: publish.payload,
                    retain: publish.retain,
                    ack,
                }));
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Some(token)) = self.by_pkid.remove(&ack.pkid)
                    && self.unconfirmed.remove(&token).is_some()
                {
                    self.emit(LinkEvent::Confirmed(token));
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                // A retransmission keeps its packet id; a new publish takes
                // the next token in line.
                if pkid != 0
                    && !self.by_pkid.contains_key(&pkid)
                    && let Some(token) = self.assign.pop_front()
                {
                    self.by_pkid.insert(pkid, token);
                }
            }
            _ => {}
        }
    }

    /// Hands queued requests to rumqttc while connected and while its
    /// queue has room.
    fn feed(&mut self) {
        if !self.connected {
            return;
        }
        while let Some(request) = self.backlog.pop_front() {
            let sent = match &request {
                Request::Publish {
                    topic,
                    payload,
                    retain,
                    token,
                } => {
                    if token.is_some_and(|t| !self.unconfirmed.contains_key(&t)) {
                        continue;
                    }
                    let ok = self
                        .client
                        .try_publish(topic.clone(), QoS::AtLeastOnce, *retain, payload.clone())
                        .is_ok();
                    if ok {
                        self.assign.push_back(*token);
                    }
                    ok
                }
                Request::Subscribe(filters) => self
                    .client
                    .try_subscribe_many(
                        filters
                            .iter()
                            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
                    )
                    .is_ok(),
                Request::Ack(token) => {
                    if token.generation == self.generation
                        && let Some(publish) = &token.publish
                    {
                        self.client.try_ack(publish).is_ok()
                    } else {
                        true
                    }
                }
                Request::Shutdown => true,
            };
            if !sent {
                self.backlog.push_front(request);
                return;
            }
        }
    }
}

/// Messages between a server's link and its worker thread: with the link's
/// own bounded queue, what bounds the memory a flood can take in a server.
pub const WORKER_QUEUE: usize = 32;

/// Hands `item` to a worker thread, waiting while its queue is full (which
/// stops the link reading from the broker, and so pushes back on the
/// sender). `Err` once the worker is gone.
pub async fn hand_to_worker<T>(to: &std::sync::mpsc::SyncSender<T>, mut item: T) -> Result<(), ()> {
    loop {
        match to.try_send(item) {
            Ok(()) => return Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(back)) => {
                item = back;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(()),
        }
    }
}

/// Fetches the retained messages of `topics` (e.g. the servers' keys and a
/// model's topology), waiting up to `timeout` for all of them. Connects
/// with its own clean session so the caller's session is left alone.
pub async fn fetch_retained(
    settings: &MqttSettings,
    topics: &[String],
    timeout: Duration,
) -> Result<HashMap<String, Vec<u8>>, LinkError> {
    let mut settings = settings.clone();
    settings.persistent_session = false;
    let base = if settings.client_id.is_empty() {
        settings.username.clone().unwrap_or_else(|| "veil".into())
    } else {
        settings.client_id.clone()
    };
    settings.client_id = format!("{base}-fetch");
    let mut link = Link::start(&settings)?;
    link.handle.subscribe(topics.to_vec());
    let mut found = HashMap::new();
    let mut last_error = None;
    let deadline = tokio::time::Instant::now() + timeout;
    while found.len() < topics.len() {
        match tokio::time::timeout_at(deadline, link.events.recv()).await {
            Ok(Some(LinkEvent::Message(m))) => {
                if topics.contains(&m.topic) && !m.payload.is_empty() {
                    found.insert(m.topic.clone(), m.payload.to_vec());
                }
                link.handle.ack(m.ack);
            }
            Ok(Some(LinkEvent::Disconnected { error })) => last_error = Some(error),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    link.close().await;
    if found.len() < topics.len() {
        let missing: Vec<&str> = topics
            .iter()
            .filter(|t| !found.contains_key(*t))
            .map(String::as_str)
            .collect();
        return Err(LinkError::Missing {
            topics: missing.join(", "),
            last_error: last_error
                .unwrap_or_else(|| "connected, but nothing retained there".into()),
        });
    }
    Ok(found)
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
