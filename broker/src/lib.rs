//! veil's MQTT broker: an embedded rumqttd behind an ACL gate that reads
//! Mosquitto's `password_file` and `acl_file`, so one set of files
//! configures either this broker or a real Mosquitto.
//!
//! This crate owns everything between a client's socket and rumqttd's
//! router: the TCP and TLS listeners, authentication, topic ACLs, and the
//! lifecycle (start, reload, shutdown) of one broker instance.
//!
//! # Architecture
//!
//! rumqttd 0.20 authenticates but has no topic ACLs, and its own listeners
//! give no hook between reading a packet and routing it. Driving its local
//! links instead would mean reimplementing the MQTT server side (sessions,
//! QoS 1/2 state, keep-alive, v5 properties) on top of them. So the broker
//! is an MQTT-aware *gate* in front of an unmodified rumqttd:
//!
//! ```text
//! client ──TCP/TLS──▶ gate (our listener) ──loopback TCP──▶ rumqttd (v4 or v5 server)
//! ```
//!
//! - rumqttd listens on two ephemeral loopback ports (3.1.1 and 5) and only
//!   accepts a random per-instance username/password that the gate
//!   substitutes in each CONNECT, so nothing else on the host can bypass
//!   the gate through those ports.
//! - The gate authenticates the client's CONNECT against the password file
//!   (PBKDF2-SHA512 `$7$` and SHA-512 `$6$`, constant-time comparison),
//!   checks the will topic, and then relays packets. It frames every packet
//!   with a bounded codec and forwards the original bytes untouched, except:
//!   refused PUBLISHes are dropped (with PUBACK/PUBREC, reason 0x87 in v5),
//!   SUBSCRIBEs are trimmed to the allowed filters and their SUBACK gets
//!   the failure codes (0x80 / 0x87) merged back in, and deliveries the
//!   client may not read are withheld (the gate acknowledges them to
//!   rumqttd itself). Topic aliases are switched off in both directions so
//!   every PUBLISH carries its topic.
//! - Sessions, QoS 1/2, retained messages, persistent sessions and shared
//!   subscriptions are rumqttd's, unchanged.
//!
//! # ACL semantics
//!
//! Publishing needs a matching write (or readwrite) entry; each delivery
//! needs a matching read entry; a matching `deny` entry always wins. A
//! SUBSCRIBE filter (the inner filter of `$share/<group>/<filter>`) is
//! granted only if one read entry covers every topic the filter can match
//! and no `deny` entry overlaps it. Differences from Mosquitto 2.0's
//! `acl_file` plugin, all in the stricter direction: Mosquitto grants every
//! SUBSCRIBE and only filters deliveries (so a client of a real Mosquitto
//! never sees a SUBACK failure, but never receives a forbidden message
//! either); Mosquitto lets a user-section grant override a `pattern` deny;
//! and `%u`/`%c` must fill a whole topic level (a name containing `/`
//! matches no pattern using it).
//!
//! Shared subscriptions are the exception to "the inner filter decides":
//! `$share/<group>/<filter>` also needs a read entry naming the group,
//! `topic read $share/<group>/<f>` (or `$share/+/<f>` for every group) with
//! `<f>` covering `<filter>`, so that a client allowed to read a topic
//! cannot join the group of the servers consuming it and take a share of
//! their messages. Mosquitto checks only the inner filter; it reads such a
//! line as an ordinary (harmless) entry, so the same file works there.
//!
//! # Identities
//!
//! MQTT lets a new connection with a client id take over the session of
//! the connection that had it (the old one is disconnected, a persistent
//! session's queued messages go to the newcomer). Mosquitto binds client
//! ids to nothing (its `use_username_as_clientid` replaces every client id
//! by the username, one connection per user; `clientid_prefixes` imposes
//! fixed prefixes on everyone), so with it any authenticated client could
//! keep server A off the broker by connecting as `server-a`. The gate binds
//! them, after authentication:
//!
//! - a client with username `u` may use the client id `u`, or `u-…` (`u`
//!   followed by `-` and anything); ids holding `/` or `$` are refused
//!   (rumqttd would refuse them later, as it refuses `+` and `#`);
//! - a client id belongs to the *longest* user of the password file it
//!   starts with in that way, and only that user may use it: user `server`
//!   may use `server-b` but not `server-a-a1` while a user `server-a`
//!   exists; an anonymous client may use no id of a registered user;
//! - an empty client id (clean session only, as the MQTT spec says) gets
//!   `u-<16 hex digits>` (anonymous: `veil-<16 hex digits>`), announced to
//!   MQTT 5 clients as the Assigned Client Identifier, so logs and the ACL
//!   see the id rumqttd uses;
//! - a username or client id holding `+` or `#` is refused at CONNECT
//!   (Mosquitto accepts the connection but denies it every access; the ACL
//!   engine here does the same, as a second line).
//!
//! Refused ids get CONNACK 0x02 (3.1.1) or 0x85 (5). Without a password
//! file usernames are unauthenticated labels and only the prefix rule
//! applies. veil's own clients follow the rule: link and the edge agent use
//! the username (the device id), the retained-message fetch
//! `<username>-fetch`, server A workers `server-a-<worker>`.
//!
//! # Exposure
//!
//! The plain listener on an address other than loopback needs
//! `allow_remote_plaintext = true`; without an `acl_file` the broker warns
//! loudly and refuses to start unless every listener is on loopback.
//!
//! # Client certificates
//!
//! The TLS listener can ask for client certificates, with Mosquitto's
//! option names (`[tls]` in the config):
//!
//! - `client_ca`: PEM file of the CAs that sign client certificates. A
//!   certificate that does not chain to them fails the handshake.
//! - `require_certificate = true`: a client without a certificate fails
//!   the handshake too.
//! - `use_identity_as_username = true` (needs `require_certificate`): the
//!   certificate's subject common name (CN) is the client's username. A
//!   subject with no CN, several CNs, or a CN that is empty or holds `+`,
//!   `#`, `/` or a control character is refused (CONNACK "not
//!   authorized"): such names would widen `%u` ACL patterns.
//!
//! With `use_identity_as_username` the CONNECT's password is ignored (the
//! password file is not consulted on that listener: the certificate is
//! the credential, and devices need no password). Its username may be
//! left out; if present it must equal the CN, or the connection is
//! refused. Mosquitto silently replaces the username instead; refusing
//! means a device set up with one identity and a certificate for another
//! shows up in the log at once rather than acting as the certificate's
//! user. The client-id rules, the ACL and the quotas then apply to the CN
//! as to any username. The ownership rule still reads the password file:
//! keep the servers in it (a certificate for `server` cannot take the id
//! `server-a` while the user `server-a` is listed). The plain listener
//! keeps password authentication. [`BrokerHandle::counters`] counts failed
//! handshakes (`tls_refused`) and refused certificate users
//! (`certificate_refused`).
//!
//! # Quotas
//!
//! Every username except those in `publish_quota.exempt` (veil's servers)
//! gets a token bucket of PUBLISH packets and bytes per second, shared by
//! all its connections. A client over quota is held back, not refused: the
//! gate stops reading its socket until the bucket refills, so a QoS 0
//! flood (which no in-flight window limits) slows only its sender.
//! [`BrokerHandle::counters`] counts every refusal and hold by reason.
//! Mosquitto has no per-user rate limit (only `max_inflight_messages`,
//! `max_queued_messages` and `message_size_limit`).
//!
//! # Lifecycle
//!
//! [`Broker::start`] binds the listeners (port 0 picks a free one) and
//! returns a [`BrokerHandle`]; [`BrokerHandle::shutdown`] closes the
//! listeners, ends every connection and rumqttd's servers, and waits for
//! them; [`BrokerHandle::reload`] re-reads the password and ACL files
//! (`veil broker` calls it on SIGHUP; its doc says what a reload changes
//! for connected clients).
//! Instances share no global state, so a test can run several and restart
//! one on the same public port.
//!
//! # Limits inherited from rumqttd 0.20
//!
//! - All state is in memory: a restarted broker has no retained messages
//!   and no offline sessions. A persistent session (clean_session = false)
//!   gets the QoS 1/2 messages queued while it was away only as far back as
//!   rumqttd's per-filter log reaches (`log_segment_count` segments of
//!   `log_segment_size` bytes).
//! - The router thread cannot be stopped (it holds a sender to its own
//!   channel, so its receive loop never ends): each start leaves one idle
//!   thread behind with the messages its log held (measured: about one
//!   thread and 0.7 MB per start/stop cycle).
//! - rumqttd refuses keep-alive 0; the gate passes such clients on with the
//!   longest keep-alive instead (65535 s).
//! - Not supported: MQTT 3.1 (`MQIsdp`, refused with return code 1) and v5
//!   enhanced authentication (refused with reason 0x8C). Topic aliases are
//!   disabled, as described above.
//!
//! # Parity with Mosquitto
//!
//! [`mosquitto::Mosquitto`] starts a real Mosquitto with the same two files
//! on a loopback port, wherever they sit, so tests can hold both brokers to
//! the same scenario.

#![warn(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod acl;
mod cert;
mod codec;
mod config;
mod counters;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod identity;
mod metered;
pub mod mosquitto;
mod passwd;
mod quota;
mod security;
mod tls;
mod topic;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

pub use acl::{AclError, AclFile, ClientAcl, Identity};
pub use cert::{CertIdentityError, certificate_username};
pub use config::{BrokerConfig, TlsListenerConfig};
pub use counters::GateCounters;
pub use error::BrokerError;
pub use identity::IdentityRefusal;
pub use passwd::{PasswordFile, PasswordFileError};
pub use quota::PublishQuota;
pub use security::ReloadSummary;
pub use topic::TopicError;

use gate::{CertIdentity, Gate};
use security::{Security, SecurityStore};
use upstream::Upstream;

/// Entry point: `Broker::start(config)`.
#[derive(Debug)]
pub struct Broker;

/// A running broker. Dropping it stops the broker in the background;
/// [`BrokerHandle::shutdown`] stops it and waits until it has stopped.
pub struct BrokerHandle {
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
    config: BrokerConfig,
    gate: Arc<Gate>,
    stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    upstream: Option<Upstream>,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("local_addr", &self.local_addr)
            .field("tls_local_addr", &self.tls_local_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BrokerError::Bind { addr, source })
}

impl Broker {
    /// Loads the password and ACL files, starts rumqttd and the gate's
    /// listeners, and returns once clients can connect.
    pub async fn start(config: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
        config.validate()?;
        let security = Security::load(&config)?;
        if security.passwords.is_none() && !config.allow_anonymous {
            warn!("no password_file and allow_anonymous = false: every client will be refused");
        }
        if security.acl.is_none() {
            // validate() refused this on any other address.
            warn!(
                "NO acl_file: every client may publish and subscribe to every topic \
                 (allowed only because the broker listens on loopback alone)"
            );
        }
        let tls = config
            .tls
            .as_ref()
            .map(tls::listener)
            .transpose()?
            .map(Arc::new);
        let plain_listener = bind(config.listen).await?;
        let tls_listener = match &config.tls {
            Some(t) => Some(bind(t.listen).await?),
            None => None,
        };
        let local_addr = plain_listener
            .local_addr()
            .map_err(|source| BrokerError::Bind {
                addr: config.listen,
                source,
            })?;
        let tls_local_addr = match &tls_listener {
            Some(l) => Some(l.local_addr().map_err(|source| BrokerError::Bind {
                addr: local_addr,
                source,
            })?),
            None => None,
        };

        let upstream = Upstream::start(&config).await?;
        let gate = Arc::new(Gate {
            security: SecurityStore::new(security),
            upstream: upstream.addrs.clone(),
            allow_anonymous: config.allow_anonymous,
            max_packet: config.max_packet_size(),
            max_violations: config.max_violations,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            queue_len: usize::from(config.max_inflight).saturating_add(64),
            quotas: quota::Quotas::new(&config.publish_quota, config.max_packet_size()),
            counters: counters::Counters::default(),
        });

        let (stop, stop_rx) = watch::channel(false);
        let mut listeners = vec![tokio::spawn(accept_loop(
            plain_listener,
            None,
            gate.clone(),
            config.max_connections,
            stop_rx.clone(),
        ))];
        if let (Some(listener), Some(acceptor)) = (tls_listener, tls) {
            listeners.push(tokio::spawn(accept_loop(
                listener,
                Some(acceptor),
                gate.clone(),
                config.max_connections,
                stop_rx,
            )));
        }
        info!(%local_addr, tls = ?tls_local_addr, "veil broker listening");
        Ok(BrokerHandle {
            local_addr,
            tls_local_addr,
            config,
            gate,
            stop,
            listeners,
            upstream: Some(upstream),
        })
    }
}

impl BrokerHandle {
    /// Address of the plain MQTT listener (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Address of the TLS listener, if one is configured.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// What the gate has refused or held back so far, by reason.
    pub fn counters(&self) -> GateCounters {
        self.gate.counters.snapshot()
    }

    /// A reader of [`BrokerHandle::counters`] that outlives borrows of the
    /// handle (a metrics exporter's refresh task holds one).
    pub fn counter_reader(&self) -> impl Fn() -> GateCounters + Send + Sync + 'static {
        let gate = Arc::clone(&self.gate);
        move || gate.counters.snapshot()
    }

    /// The configuration this broker was started with.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Re-reads the password and ACL files (what `veil broker` does on
    /// SIGHUP). Both are parsed in full before either replaces the files in
    /// force, so an unreadable or invalid file changes nothing: the error
    /// says which file and line, and the old users and rules stay.
    ///
    /// What the new files govern, as in Mosquitto:
    /// - the password file, every CONNECT from now on; connections already
    ///   authenticated are not checked again (a removed user's open
    ///   connection stays open);
    /// - the ACL, every PUBLISH, SUBSCRIBE and delivery from now on, on
    ///   existing connections too, subscriptions granted earlier included.
    ///   To cut a connected client off at once, give its user `topic deny
    ///   #` (a deny always wins) along with removing it from the password
    ///   file.
    pub fn reload(&self) -> Result<ReloadSummary, BrokerError> {
        let security = match Security::load(&self.config) {
            Ok(security) => security,
            Err(e) => {
                counters::Counters::bump(&self.gate.counters.reloads_refused);
                return Err(e);
            }
        };
        let summary = self.gate.security.replace(security);
        counters::Counters::bump(&self.gate.counters.reloads);
        info!("password and ACL files reloaded: {summary}");
        Ok(summary)
    }

    /// Closes the listeners, ends every client connection and the embedded
    /// rumqttd, and waits for all of it. The ports are free again when this
    /// returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for listener in std::mem::take(&mut self.listeners) {
            let _ = listener.await;
        }
        if let Some(upstream) = self.upstream.take() {
            upstream.stop().await;
        }
        debug!(local_addr = %self.local_addr, "veil broker stopped");
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<tls::Listener>>,
    gate: Arc<Gate>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= max_connections {
                        counters::Counters::bump(&gate.counters.connections_refused);
                        warn!(%peer, max_connections, "connection limit reached; refusing");
                        continue;
                    }
                    connections.spawn(handle_connection(stream, peer, tls.clone(), gate.clone()));
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead
                    // of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<tls::Listener>>,
    gate: Arc<Gate>,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        gate::serve(stream, peer, gate, CertIdentity::NotUsed).await;
        return;
    };
    let accepted = tokio::time::timeout(gate.connect_timeout, tls.acceptor.accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            counters::Counters::bump(&gate.counters.tls_refused);
            info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            counters::Counters::bump(&gate.counters.tls_refused);
            info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = if tls.identity_from_certificate {
        match tls::peer_username(&stream) {
            Ok(user) => CertIdentity::User(user),
            Err(e) => CertIdentity::Refused(e),
        }
    } else {
        CertIdentity::NotUsed
    };
    gate::serve(stream, peer, gate, identity).await;
}
