//! The per-connection gate: authenticates the CONNECT, opens a connection to
//! the embedded rumqttd for the client, and relays packets both ways,
//! enforcing the ACL on every PUBLISH (both directions) and SUBSCRIBE.
//!
//! The two directions run as two futures of one task so that neither side
//! can stall the other: the client may be blocked writing to us while we
//! are blocked writing to it. Replies the gate makes up itself (acks for
//! refused publishes, SUBACKs, acks to rumqttd for withheld deliveries) go
//! to the future that owns the destination's writer through small bounded
//! queues; a peer that lets one fill up is disconnected.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufWriter, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::acl::Identity;
use crate::cert::CertIdentityError;
use crate::codec::{
    self, CodecError, ConnAck, Connect, Frame, FrameReader, PublishHeader, ReadError, SubAck,
    Subscribe, Version, connack,
};
use crate::counters::Counters;
use crate::identity::{self, IdentityRefusal};
use crate::metered::Metered;
use crate::quota::Quotas;
use crate::security::{AclCache, SecurityStore};
use crate::topic;
use crate::upstream::UpstreamAddrs;

/// Settings every connection needs.
#[derive(Debug)]
pub(crate) struct Gate {
    pub security: SecurityStore,
    pub upstream: UpstreamAddrs,
    pub allow_anonymous: bool,
    pub max_packet: usize,
    pub max_violations: u32,
    pub connect_timeout: Duration,
    pub queue_len: usize,
    pub quotas: Quotas,
    pub counters: Counters,
}

/// v5 reason codes the gate uses.
const RC_NOT_AUTHORIZED: u8 = 0x87;
const RC_TOPIC_NAME_INVALID: u8 = 0x90;
const RC_PROTOCOL_ERROR: u8 = 0x82;
const RC_MALFORMED: u8 = 0x81;
const RC_TOPIC_ALIAS_INVALID: u8 = 0x94;
/// SUBACK failure code in 3.1.1.
const SUBACK_FAILURE_V4: u8 = 0x80;

/// Time the upstream gets to answer CONNECT, and the remaining direction
/// gets to finish after the other one ended.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
const GRACE: Duration = Duration::from_secs(1);

/// Output buffered per direction before a write reaches the socket.
const WRITE_BUFFER: usize = 64 * 1024;

type UpstreamWriter = BufWriter<OwnedWriteHalf>;

/// Why a relay direction stopped (shown in the close log through Debug).
#[derive(Debug)]
#[expect(dead_code, reason = "fields are read through Debug in the close log")]
enum End {
    Closed,
    Disconnected,
    Kicked(u8),
    Read(ReadError),
    Write(std::io::Error),
    Protocol(&'static str, u8),
    QueueFull,
}

impl From<ReadError> for End {
    fn from(e: ReadError) -> Self {
        End::Read(e)
    }
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Write(e)
    }
}

/// What a refused request tried to do.
#[derive(Clone, Copy, Debug)]
enum Action {
    Publish,
    Subscribe,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        }
    }
}

/// What the upstream-to-client direction is asked to send to the client.
enum ToClient {
    Packet(Bytes),
    /// Send a v5 DISCONNECT with this reason (v4: just close) and stop.
    Close(u8),
}

fn user_label(who: &Identity) -> &str {
    who.username.as_deref().unwrap_or("<anonymous>")
}

/// Who a TLS listener's client certificate says the client is.
pub(crate) enum CertIdentity {
    /// The listener takes no username from certificates: the CONNECT's
    /// username and password decide.
    NotUsed,
    /// The verified certificate's common name.
    User(String),
    /// A verified certificate whose name is no valid username.
    Refused(CertIdentityError),
}

/// Serves one accepted client connection until either side closes.
pub(crate) async fn serve<S>(stream: S, peer: SocketAddr, gate: Arc<Gate>, cert: CertIdentity)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream = Metered::new(stream, Arc::clone(&gate));
    let (client_r, mut client_w) = tokio::io::split(stream);
    let mut client_r = FrameReader::new(client_r, gate.max_packet);

    let connect = match timeout(gate.connect_timeout, client_r.next()).await {
        Err(_) => {
            debug!(%peer, "no CONNECT in time");
            return;
        }
        Ok(Ok(Some(frame))) if frame.kind == codec::CONNECT => Connect::decode(frame.body()),
        Ok(Ok(Some(frame))) => {
            info!(%peer, kind = frame.kind, "first packet is not CONNECT; closing");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            info!(%peer, error = %e, "unreadable CONNECT; closing");
            return;
        }
    };
    let connect = match connect {
        Ok(c) => c,
        Err(CodecError::UnsupportedProtocol { name, level }) => {
            info!(%peer, %name, level, "unsupported MQTT protocol level");
            let refusal =
                codec::encode_connack_refusal(Version::V4, connack::V4_UNACCEPTABLE_PROTOCOL);
            let _ = client_w.write_all(&refusal).await;
            return;
        }
        Err(e) => {
            info!(%peer, error = %e, "malformed CONNECT; closing");
            return;
        }
    };
    let version = connect.version;
    let refuse = |code_v4: u8, code_v5: u8| match version {
        Version::V4 => codec::encode_connack_refusal(version, code_v4),
        Version::V5 => codec::encode_connack_refusal(version, code_v5),
    };

    if connect.wants_enhanced_auth() {
        info!(%peer, client_id = %connect.client_id, "MQTT 5 enhanced authentication is not supported");
        let _ = client_w
            .write_all(&refuse(
                connack::V4_NOT_AUTHORIZED,
                connack::V5_BAD_AUTH_METHOD,
            ))
            .await;
        return;
    }

    let mut connect = connect;
    match cert {
        CertIdentity::NotUsed => {}
        CertIdentity::User(user) => {
            // The certificate is the credential: the password file is not
            // consulted. A CONNECT naming someone else is refused rather
            // than renamed (Mosquitto renames silently), so that a device
            // configured for another identity shows up in the log.
            if connect.username.as_deref().is_some_and(|u| u != user) {
                Counters::bump(&gate.counters.certificate_refused);
                warn!(
                    %peer,
                    user = connect.username.as_deref().unwrap_or("<anonymous>"),
                    certificate = %user,
                    "CONNECT username differs from the client certificate's; refused"
                );
                let _ = client_w
                    .write_all(&refuse(
                        connack::V4_NOT_AUTHORIZED,
                        connack::V5_NOT_AUTHORIZED,
                    ))
                    .await;
                return;
            }
            connect.username = Some(user);
            connect.password = None;
            serve_authenticated(connect, client_r, client_w, peer, gate).await;
            return;
        }
        CertIdentity::Refused(reason) => {
            Counters::bump(&gate.counters.certificate_refused);
            warn!(%peer, %reason, "client certificate gives no valid username; refused");
            let _ = client_w
                .write_all(&refuse(
                    connack::V4_NOT_AUTHORIZED,
                    connack::V5_NOT_AUTHORIZED,
                ))
                .await;
            return;
        }
    }

    if !authenticate(&gate, &connect).await {
        Counters::bump(&gate.counters.auth_failed);
        warn!(
            %peer,
            user = connect.username.as_deref().unwrap_or("<anonymous>"),
            client_id = %connect.client_id,
            "authentication failed"
        );
        let _ = client_w
            .write_all(&refuse(
                connack::V4_NOT_AUTHORIZED,
                connack::V5_NOT_AUTHORIZED,
            ))
            .await;
        return;
    }
    serve_authenticated(connect, client_r, client_w, peer, gate).await;
}

/// The rest of a connection once its user is known: client id rules, will,
/// upstream, relay.
async fn serve_authenticated<S>(
    mut connect: Connect,
    client_r: FrameReader<ReadHalf<S>>,
    mut client_w: WriteHalf<S>,
    peer: SocketAddr,
    gate: Arc<Gate>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = connect.version;
    let refuse = |code_v4: u8, code_v5: u8| match version {
        Version::V4 => codec::encode_connack_refusal(version, code_v4),
        Version::V5 => codec::encode_connack_refusal(version, code_v5),
    };
    let assigned_client_id = if connect.client_id.is_empty() {
        // rumqttd would assign an id itself, which the gate would never
        // learn: its log lines and the identity rules need the real one.
        let assigned = if connect.clean {
            identity::assign(connect.username.as_deref()).ok_or(IdentityRefusal::CannotAssign)
        } else {
            Err(IdentityRefusal::EmptyWithPersistentSession)
        };
        match assigned {
            Ok(id) => {
                connect.client_id = id.clone();
                Some(id)
            }
            Err(reason) => {
                Counters::bump(&gate.counters.client_id_refused);
                info!(%peer, user = connect.username.as_deref().unwrap_or("<anonymous>"), %reason, "client id refused");
                let _ = client_w
                    .write_all(&refuse(
                        connack::V4_IDENTIFIER_REJECTED,
                        connack::V5_CLIENT_ID_NOT_VALID,
                    ))
                    .await;
                return;
            }
        }
    } else {
        None
    };
    let checked = identity::check(
        connect.username.as_deref(),
        &connect.client_id,
        gate.security.snapshot().passwords.as_ref(),
    );
    if let Err(reason) = checked {
        Counters::bump(&gate.counters.client_id_refused);
        warn!(
            %peer,
            user = connect.username.as_deref().unwrap_or("<anonymous>"),
            client_id = %connect.client_id,
            %reason,
            "client id refused"
        );
        let (v4, v5) = match reason {
            IdentityRefusal::WildcardUsername => {
                (connack::V4_NOT_AUTHORIZED, connack::V5_NOT_AUTHORIZED)
            }
            _ => (
                connack::V4_IDENTIFIER_REJECTED,
                connack::V5_CLIENT_ID_NOT_VALID,
            ),
        };
        let _ = client_w.write_all(&refuse(v4, v5)).await;
        return;
    }

    let who = Identity {
        username: connect.username.clone(),
        client_id: connect.client_id.clone(),
    };
    let mut acl = AclCache::new(&gate.security, who.clone());

    if let Some(will) = &connect.will {
        let allowed = topic::validate_topic_name(&will.topic).is_ok()
            && acl.get(&gate.security).can_publish(&will.topic);
        if !allowed {
            Counters::bump(&gate.counters.will_refused);
            warn!(
                %peer,
                user = user_label(&who),
                client_id = %who.client_id,
                topic = %will.topic,
                action = "will",
                "ACL violation: will topic not writable; connection refused"
            );
            let _ = client_w
                .write_all(&refuse(
                    connack::V4_NOT_AUTHORIZED,
                    connack::V5_NOT_AUTHORIZED,
                ))
                .await;
            return;
        }
    }

    let upstream = match open_upstream(&gate, &connect).await {
        Ok(u) => u,
        Err(reason) => {
            warn!(%peer, client_id = %who.client_id, %reason, "embedded broker unavailable");
            let _ = client_w
                .write_all(&refuse(
                    connack::V4_SERVER_UNAVAILABLE,
                    connack::V5_SERVER_UNAVAILABLE,
                ))
                .await;
            return;
        }
    };
    let (upstream_r, upstream_w, ack) = upstream;
    let ack_bytes = match version {
        Version::V4 => ack.1,
        Version::V5 => {
            match ack
                .0
                .encode_for_client(version, gate.max_packet, assigned_client_id.as_deref())
            {
                Ok(b) => b,
                Err(_) => return,
            }
        }
    };
    if client_w.write_all(&ack_bytes).await.is_err() || ack.0.code != 0 {
        return;
    }
    let _open = gate.counters.open_connection();
    debug!(%peer, user = user_label(&who), client_id = %who.client_id, ?version, "client connected");

    let (to_client_tx, to_client_rx) = mpsc::channel(gate.queue_len);
    let (to_upstream_tx, to_upstream_rx) = mpsc::channel(gate.queue_len);
    let pending_subacks = Mutex::new(HashMap::new());
    let inbound = ClientToUpstream {
        gate: &gate,
        version,
        peer,
        acl,
        violations: 0,
        throttle_logged: false,
        refused_qos2: HashSet::new(),
        pending_subacks: &pending_subacks,
        to_client: to_client_tx,
    };
    let outbound = UpstreamToClient {
        gate: &gate,
        version,
        acl: AclCache::new(&gate.security, who.clone()),
        withheld_qos2: HashSet::new(),
        pending_subacks: &pending_subacks,
        to_upstream: to_upstream_tx,
    };
    let mut inbound_run = std::pin::pin!(inbound.run(client_r, upstream_w, to_upstream_rx));
    let mut outbound_run = std::pin::pin!(outbound.run(upstream_r, client_w, to_client_rx));
    let end = tokio::select! {
        end = &mut inbound_run => {
            // Let the other direction deliver a final DISCONNECT or drain
            // what rumqttd still sends before the socket goes away.
            let _ = timeout(GRACE, &mut outbound_run).await;
            end
        }
        end = &mut outbound_run => end,
    };
    debug!(%peer, user = user_label(&who), client_id = %who.client_id, ?end, "connection closed");
}

async fn authenticate(gate: &Gate, connect: &Connect) -> bool {
    let Some(user) = connect.username.clone() else {
        return gate.allow_anonymous;
    };
    let security = gate.security.snapshot();
    if security.passwords.is_none() {
        // No password file: usernames are only labels, as for anonymous
        // clients.
        return gate.allow_anonymous;
    }
    let password = connect.password.clone().unwrap_or_default();
    // PBKDF2 with a large iteration count would stall the runtime.
    tokio::task::spawn_blocking(move || {
        security
            .passwords
            .as_ref()
            .is_some_and(|p| p.verify(&user, &password))
    })
    .await
    .unwrap_or(false)
}

type UpstreamParts = (
    FrameReader<tokio::net::tcp::OwnedReadHalf>,
    OwnedWriteHalf,
    (ConnAck, Bytes),
);

async fn open_upstream(gate: &Gate, connect: &Connect) -> Result<UpstreamParts, String> {
    let addr = match connect.version {
        Version::V4 => gate.upstream.v4,
        Version::V5 => gate.upstream.v5,
    };
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let (r, mut w) = stream.into_split();
        let mut upstream_connect = connect.clone();
        // rumqttd refuses keep-alive 0 (MQTT's "no keep-alive"); the longest
        // interval it accepts is the closest equivalent.
        if upstream_connect.keep_alive == 0 {
            upstream_connect.keep_alive = u16::MAX;
        }
        let bytes = upstream_connect
            .encode_for_upstream(&gate.upstream.username, gate.upstream.password.as_bytes())
            .map_err(|e| e.to_string())?;
        w.write_all(&bytes).await.map_err(|e| e.to_string())?;
        let mut reader = FrameReader::new(r, gate.max_packet).acknowledge_at_once(fd);
        let frame = reader
            .next()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("closed before CONNACK")?;
        if frame.kind != codec::CONNACK {
            return Err(format!("expected CONNACK, got packet type {}", frame.kind));
        }
        let ack = ConnAck::decode(connect.version, frame.body()).map_err(|e| e.to_string())?;
        Ok((reader, w, (ack, frame.raw().clone())))
    };
    timeout(UPSTREAM_TIMEOUT, work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Client → rumqttd.
struct ClientToUpstream<'a> {
    gate: &'a Gate,
    version: Version,
    peer: SocketAddr,
    acl: AclCache,
    violations: u32,
    throttle_logged: bool,
    /// QoS 2 publishes refused in 3.1.1: the client still sends PUBREL for
    /// them, which rumqttd never heard of.
    refused_qos2: HashSet<u16>,
    pending_subacks: &'a Mutex<HashMap<u16, Vec<Option<u8>>>>,
    to_client: mpsc::Sender<ToClient>,
}

impl ClientToUpstream<'_> {
    async fn run<R: AsyncRead + Unpin>(
        mut self,
        mut client: FrameReader<R>,
        upstream: OwnedWriteHalf,
        mut replies: mpsc::Receiver<Bytes>,
    ) -> End {
        let mut upstream = BufWriter::with_capacity(WRITE_BUFFER, upstream);
        let end = loop {
            // Packets that arrived together leave together: flush only
            // before waiting for more input.
            if !client.has_frame()
                && replies.is_empty()
                && let Err(e) = upstream.flush().await
            {
                break End::Write(e);
            }
            let step = tokio::select! {
                biased;
                Some(bytes) = replies.recv() => upstream.write_all(&bytes).await.map_err(End::from),
                frame = client.next() => match frame {
                    Ok(Some(frame)) => {
                        let held = if frame.kind == codec::PUBLISH {
                            self.throttle(frame.raw().len(), &mut replies, &mut upstream).await
                        } else {
                            Ok(())
                        };
                        match held {
                            Ok(()) => self.handle(frame, &mut upstream).await,
                            Err(end) => Err(end),
                        }
                    }
                    Ok(None) => Err(End::Closed),
                    Err(e) => Err(End::from(e)),
                },
            };
            if let Err(end) = step {
                break end;
            }
        };
        match &end {
            End::Protocol(_, rc) | End::Kicked(rc) => {
                let counter = if matches!(end, End::Kicked(_)) {
                    &self.gate.counters.kicked
                } else {
                    &self.gate.counters.malformed
                };
                Counters::bump(counter);
                let _ = self.to_client.try_send(ToClient::Close(*rc));
            }
            End::Read(ReadError::Codec(CodecError::TooLarge { .. })) => {
                Counters::bump(&self.gate.counters.too_large);
                let _ = self.to_client.try_send(ToClient::Close(0x95));
            }
            End::Read(ReadError::Codec(_)) => {
                Counters::bump(&self.gate.counters.malformed);
                let _ = self.to_client.try_send(ToClient::Close(RC_MALFORMED));
            }
            _ => {}
        }
        if !matches!(end, End::Closed | End::Disconnected) {
            let who = self.acl.who();
            info!(peer = %self.peer, user = user_label(who), client_id = %who.client_id, ?end, "connection closed by the gate");
        }
        let _ = upstream.shutdown().await;
        end
    }

    /// Charges a publish to the user's quota and, when over it, stops
    /// reading from the client until the debt is repaid, still passing
    /// rumqttd the acknowledgements the other direction queues.
    async fn throttle(
        &mut self,
        bytes: usize,
        replies: &mut mpsc::Receiver<Bytes>,
        upstream: &mut UpstreamWriter,
    ) -> Result<(), End> {
        let user = self.acl.who().username.clone();
        let wait = self
            .gate
            .quotas
            .charge(user.as_deref(), bytes, std::time::Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        let counters = &self.gate.counters;
        Counters::bump(&counters.throttled);
        counters.throttled_ms.fetch_add(
            u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        if !self.throttle_logged {
            // Once per connection: a flood would otherwise flood the log.
            self.throttle_logged = true;
            let who = self.acl.who();
            warn!(
                peer = %self.peer,
                user = user_label(who),
                client_id = %who.client_id,
                wait_ms = wait.as_millis(),
                "publish quota exceeded; holding the connection back"
            );
        }
        upstream.flush().await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                Some(bytes) = replies.recv() => {
                    upstream.write_all(&bytes).await?;
                    upstream.flush().await?;
                }
            }
        }
    }

    fn reply(&self, bytes: Bytes) -> Result<(), End> {
        self.to_client
            .try_send(ToClient::Packet(bytes))
            .map_err(|_| End::QueueFull)
    }

    fn violation(&mut self, topic: &str, action: Action) -> Result<(), End> {
        Counters::bump(match action {
            Action::Subscribe => &self.gate.counters.subscribe_refused,
            Action::Publish => &self.gate.counters.publish_refused,
        });
        self.violations = self.violations.saturating_add(1);
        let who = self.acl.who();
        warn!(
            peer = %self.peer,
            user = user_label(who),
            client_id = %who.client_id,
            topic,
            action = action.as_str(),
            violations = self.violations,
            "ACL violation: refused"
        );
        if self.gate.max_violations > 0 && self.violations >= self.gate.max_violations {
            warn!(
                peer = %self.peer,
                user = user_label(who),
                client_id = %who.client_id,
                violations = self.violations,
                "too many ACL violations; disconnecting client"
            );
            return Err(End::Kicked(RC_NOT_AUTHORIZED));
        }
        Ok(())
    }

    async fn handle(&mut self, frame: Frame, upstream: &mut UpstreamWriter) -> Result<(), End> {
        match frame.kind {
            codec::PUBLISH => self.publish(frame, upstream).await,
            codec::SUBSCRIBE => self.subscribe(frame, upstream).await,
            codec::PUBREL => {
                let pkid = codec::packet_id(frame.body()).map_err(|e| End::Read(e.into()))?;
                if self.refused_qos2.remove(&pkid) {
                    self.reply(codec::encode_ack(codec::PUBCOMP, self.version, pkid, 0))
                } else {
                    Ok(upstream.write_all(frame.raw()).await?)
                }
            }
            codec::DISCONNECT => {
                upstream.write_all(frame.raw()).await?;
                Err(End::Disconnected)
            }
            codec::CONNECT => Err(End::Protocol("second CONNECT", RC_PROTOCOL_ERROR)),
            codec::AUTH => Err(End::Protocol("AUTH is not supported", RC_PROTOCOL_ERROR)),
            codec::CONNACK | codec::SUBACK | codec::UNSUBACK | codec::PINGRESP => Err(
                End::Protocol("server-only packet from client", RC_PROTOCOL_ERROR),
            ),
            0 => Err(End::Protocol("reserved packet type 0", RC_MALFORMED)),
            _ => Ok(upstream.write_all(frame.raw()).await?),
        }
    }

    async fn publish(&mut self, frame: Frame, upstream: &mut UpstreamWriter) -> Result<(), End> {
        let header = PublishHeader::decode(self.version, frame.flags, frame.body())
            .map_err(|e| End::Read(e.into()))?;
        if header.topic_alias.is_some() {
            // Our CONNACK told the client the alias maximum is 0.
            return Err(End::Protocol("topic alias used", RC_TOPIC_ALIAS_INVALID));
        }
        if topic::validate_topic_name(header.topic).is_err() {
            return Err(End::Protocol("invalid topic name", RC_TOPIC_NAME_INVALID));
        }
        if self.acl.get(&self.gate.security).can_publish(header.topic) {
            return Ok(upstream.write_all(frame.raw()).await?);
        }
        let topic = header.topic.to_string();
        match (header.qos, header.pkid) {
            (1, Some(pkid)) => self.reply(codec::encode_ack(
                codec::PUBACK,
                self.version,
                pkid,
                RC_NOT_AUTHORIZED,
            ))?,
            (2, Some(pkid)) => {
                self.reply(codec::encode_ack(
                    codec::PUBREC,
                    self.version,
                    pkid,
                    RC_NOT_AUTHORIZED,
                ))?;
                // A v5 client ends the exchange on a failure PUBREC; a 3.1.1
                // client cannot be told and goes on with PUBREL.
                if self.version == Version::V4 {
                    self.refused_qos2.insert(pkid);
                }
            }
            _ => {}
        }
        self.violation(&topic, Action::Publish)
    }

    async fn subscribe(&mut self, frame: Frame, upstream: &mut UpstreamWriter) -> Result<(), End> {
        let sub = Subscribe::decode(self.version, frame.flags, frame.body())
            .map_err(|e| End::Read(e.into()))?;
        let failure = match self.version {
            Version::V4 => SUBACK_FAILURE_V4,
            Version::V5 => RC_NOT_AUTHORIZED,
        };
        let mut plan = Vec::with_capacity(sub.filters.len());
        let mut allowed = Vec::with_capacity(sub.filters.len());
        let mut refused = Vec::new();
        {
            let acl = self.acl.get(&self.gate.security);
            for (filter, options) in &sub.filters {
                if acl.can_subscribe(filter) {
                    plan.push(None);
                    allowed.push((filter.clone(), *options));
                } else {
                    plan.push(Some(failure));
                    refused.push(filter.clone());
                }
            }
        }
        if refused.is_empty() {
            upstream.write_all(frame.raw()).await?;
            return Ok(());
        }
        if allowed.is_empty() {
            let ack = SubAck {
                pkid: sub.pkid,
                properties: Vec::new(),
                codes: plan.iter().map(|c| c.unwrap_or(failure)).collect(),
            };
            self.reply(ack.encode(self.version).map_err(|e| End::Read(e.into()))?)?;
        } else {
            // rumqttd answers for the allowed filters only; the other
            // direction merges the refusals back in at their positions.
            self.pending_subacks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(sub.pkid, plan);
            let forwarded = Subscribe {
                pkid: sub.pkid,
                properties: sub.properties,
                filters: allowed,
            };
            let bytes = forwarded
                .encode(self.version)
                .map_err(|e| End::Read(e.into()))?;
            upstream.write_all(&bytes).await?;
        }
        for filter in refused {
            self.violation(&filter, Action::Subscribe)?;
        }
        Ok(())
    }
}

/// rumqttd → client.
struct UpstreamToClient<'a> {
    gate: &'a Gate,
    version: Version,
    acl: AclCache,
    /// QoS 2 deliveries withheld from the client: rumqttd will send PUBREL.
    withheld_qos2: HashSet<u16>,
    pending_subacks: &'a Mutex<HashMap<u16, Vec<Option<u8>>>>,
    to_upstream: mpsc::Sender<Bytes>,
}

impl UpstreamToClient<'_> {
    async fn run<R, W>(
        mut self,
        mut upstream: FrameReader<R>,
        client: WriteHalf<W>,
        mut requests: mpsc::Receiver<ToClient>,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncRead + AsyncWrite + Unpin,
    {
        let mut client = BufWriter::with_capacity(WRITE_BUFFER, client);
        let end = loop {
            if !upstream.has_frame()
                && requests.is_empty()
                && let Err(e) = client.flush().await
            {
                break End::Write(e);
            }
            let step = tokio::select! {
                biased;
                Some(request) = requests.recv() => match request {
                    ToClient::Packet(bytes) => client.write_all(&bytes).await.map_err(End::from),
                    ToClient::Close(reason) => {
                        if self.version == Version::V5 {
                            let _ = client.write_all(&codec::encode_disconnect_v5(reason)).await;
                        }
                        Err(End::Kicked(reason))
                    }
                },
                frame = upstream.next() => match frame {
                    Ok(Some(frame)) => self.handle(frame, &mut client).await,
                    Ok(None) => Err(End::Closed),
                    Err(e) => Err(End::from(e)),
                },
            };
            if let Err(end) = step {
                break end;
            }
        };
        let _ = client.shutdown().await;
        end
    }

    fn to_upstream(&self, bytes: Bytes) -> Result<(), End> {
        self.to_upstream.try_send(bytes).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => End::QueueFull,
            // The other direction already ended; the connection is closing.
            mpsc::error::TrySendError::Closed(_) => End::Closed,
        })
    }

    async fn handle<W: AsyncWrite>(
        &mut self,
        frame: Frame,
        client: &mut BufWriter<WriteHalf<W>>,
    ) -> Result<(), End> {
        match frame.kind {
            codec::PUBLISH => {
                let header = PublishHeader::decode(self.version, frame.flags, frame.body())
                    .map_err(|e| End::Read(e.into()))?;
                if self.acl.get(&self.gate.security).can_read(header.topic) {
                    return Ok(client.write_all(frame.raw()).await?);
                }
                let who = self.acl.who();
                Counters::bump(&self.gate.counters.deliveries_withheld);
                info!(
                    user = user_label(who),
                    client_id = %who.client_id,
                    topic = header.topic,
                    "delivery withheld: no read access"
                );
                match (header.qos, header.pkid) {
                    (1, Some(pkid)) => {
                        self.to_upstream(codec::encode_ack(codec::PUBACK, self.version, pkid, 0))
                    }
                    (2, Some(pkid)) => {
                        self.withheld_qos2.insert(pkid);
                        self.to_upstream(codec::encode_ack(codec::PUBREC, self.version, pkid, 0))
                    }
                    _ => Ok(()),
                }
            }
            codec::PUBREL => {
                let pkid = codec::packet_id(frame.body()).map_err(|e| End::Read(e.into()))?;
                if self.withheld_qos2.remove(&pkid) {
                    self.to_upstream(codec::encode_ack(codec::PUBCOMP, self.version, pkid, 0))
                } else {
                    Ok(client.write_all(frame.raw()).await?)
                }
            }
            codec::SUBACK => {
                let pkid = codec::packet_id(frame.body()).map_err(|e| End::Read(e.into()))?;
                let plan = self
                    .pending_subacks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&pkid);
                let Some(plan) = plan else {
                    return Ok(client.write_all(frame.raw()).await?);
                };
                let mut ack =
                    SubAck::decode(self.version, frame.body()).map_err(|e| End::Read(e.into()))?;
                let mut from_upstream = std::mem::take(&mut ack.codes).into_iter();
                ack.codes = plan
                    .into_iter()
                    .map(|slot| match slot {
                        Some(refused) => refused,
                        // rumqttd answered fewer codes than filters it got:
                        // report those as failures rather than invent grants.
                        None => from_upstream.next().unwrap_or(match self.version {
                            Version::V4 => SUBACK_FAILURE_V4,
                            Version::V5 => 0x80,
                        }),
                    })
                    .collect();
                let bytes = ack.encode(self.version).map_err(|e| End::Read(e.into()))?;
                Ok(client.write_all(&bytes).await?)
            }
            codec::DISCONNECT => {
                client.write_all(frame.raw()).await?;
                Err(End::Disconnected)
            }
            _ => Ok(client.write_all(frame.raw()).await?),
        }
    }
}
