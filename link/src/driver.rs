//! The running link: the rumqttc poller with its backoff, the driver
//! that re-subscribes, holds requests while disconnected, maps packet ids
//! to confirmation tokens and tags acks with their connection, and the
//! one-shot retained fetch.

use crate::*;

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
    /// Publishes, acknowledges and stops the link.
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
                        after_ms = u64::try_from(lost.elapsed().as_millis()).unwrap_or(u64::MAX),
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
