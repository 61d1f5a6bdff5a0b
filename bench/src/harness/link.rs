//! One MQTT client behind a counting relay.

use super::*;
use std::collections::VecDeque;

/// One MQTT client behind a counting relay.
pub struct Link {
    client: Client,
    conn: Connection,
    /// Counts the bytes between the client and the broker.
    pub relay: Relay,
    pub(super) published: u64,
    pub(super) acked: u64,
    /// QoS 1 messages received and PUBACKs sent for them.
    delivered: u64,
    acks_sent: u64,
    /// Per publish not yet acknowledged, in order, the token its
    /// acknowledgement is reported with (the broker acknowledges a
    /// connection's QoS 1 publishes in order).
    confirms: VecDeque<Option<u64>>,
    /// Confirmations polled by [`Link::settle`], for the caller.
    settled_confirms: Vec<u64>,
    /// Publishes handed to the client and written to the socket.
    written: u64,
    /// What [`Link::flush`] polled past, for the next polls.
    backlog: VecDeque<Polled>,
}

/// What a poll of a link produced.
pub enum Polled {
    /// A message arrived.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// The broker acknowledged the publish sent with this token.
    Confirmed(u64),
    /// Something else happened (an acknowledgement).
    Other,
    /// Nothing within the timeout.
    Timeout,
}

impl Link {
    /// Connects through a counting relay whose threads run on `relay_cpus`
    /// (empty: wherever the calling thread may run).
    pub fn connect(
        broker: SocketAddr,
        user: &str,
        client_id: &str,
        relay_cpus: &[usize],
    ) -> Result<Link> {
        let relay = Relay::start(broker, relay_cpus)?;
        let addr = relay.addr();
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options
            .set_credentials(user, password(user))
            // Long enough that no keep-alive ping lands in a measurement.
            .set_keep_alive(Duration::from_secs(900))
            .set_max_packet_size(64 << 20, 64 << 20)
            .set_clean_session(true)
            .set_request_channel_capacity(1024);
        let (client, mut conn) = Client::new(options, 1024);
        // Without it every small packet waits for the peer's delayed ACK.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        conn.eventloop.set_network_options(network);
        let mut link = Link {
            client,
            conn,
            relay,
            published: 0,
            acked: 0,
            delivered: 0,
            acks_sent: 0,
            confirms: VecDeque::new(),
            settled_confirms: Vec::new(),
            written: 0,
            backlog: VecDeque::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match link.conn.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    if ack.code != rumqttc::ConnectReturnCode::Success {
                        bail!("broker refused {user}: {:?}", ack.code);
                    }
                    return Ok(link);
                }
                Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Err(e)) => bail!("connecting {user}: {e}"),
                Err(RecvTimeoutError::Disconnected) => bail!("connecting {user}: closed"),
            }
            if Instant::now() > deadline {
                bail!("connecting {user}: no CONNACK");
            }
        }
    }

    /// Subscribes (QoS 1) and waits for the broker's acknowledgement.
    pub fn subscribe(&mut self, filters: &[&str]) -> Result<()> {
        for filter in filters {
            self.client
                .try_subscribe(*filter, QoS::AtLeastOnce)
                .with_context(|| format!("subscribing to {filter}"))?;
        }
        let mut pending = filters.len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while pending > 0 {
            if let Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) =
                self.conn.recv_timeout(Duration::from_millis(200))
            {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    bail!("the broker refused a subscription among {filters:?}");
                }
                pending -= 1;
            }
            if Instant::now() > deadline {
                bail!("no SUBACK for {filters:?}");
            }
        }
        Ok(())
    }

    /// Publishes at QoS 1.
    pub fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<()> {
        self.publish_confirmed(topic, payload, retain, None)
    }

    /// Publishes at QoS 1; the broker's acknowledgement is polled as
    /// [`Polled::Confirmed`] with `confirm`, if given.
    pub fn publish_confirmed(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        confirm: Option<u64>,
    ) -> Result<()> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .with_context(|| format!("publishing on {topic}"))?;
        self.published += 1;
        self.confirms.push_back(confirm);
        Ok(())
    }

    /// Waits up to `timeout` for the next event.
    pub fn poll(&mut self, timeout: Duration) -> Result<Polled> {
        if let Some(polled) = self.backlog.pop_front() {
            return Ok(polled);
        }
        self.poll_connection(timeout)
    }

    /// Drives the client until everything published so far is on the
    /// socket, keeping what arrives meanwhile for [`Link::poll`]. The
    /// client's event loop hands out the packets it has read before it
    /// takes the next publish: a server that polls and works on the next
    /// message first held its reply back for that message's work
    /// (mnist-mlp: B's result waited 10.5 ms behind a mask request that
    /// had come in the same read, 2026-11-29).
    pub fn flush(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.written < self.published {
            match self.poll_connection(Duration::from_millis(20))? {
                Polled::Timeout | Polled::Other => {}
                polled => self.backlog.push_back(polled),
            }
            if Instant::now() > deadline {
                bail!("publishes were not written within a minute");
            }
        }
        Ok(())
    }

    fn poll_connection(&mut self, timeout: Duration) -> Result<Polled> {
        match self.conn.recv_timeout(timeout) {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if p.qos != QoS::AtMostOnce {
                    self.delivered += 1;
                }
                Ok(Polled::Message {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                })
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                self.acked += 1;
                Ok(match self.confirms.pop_front().flatten() {
                    Some(token) => Polled::Confirmed(token),
                    None => Polled::Other,
                })
            }
            Ok(Ok(Event::Outgoing(Outgoing::PubAck(_)))) => {
                self.acks_sent += 1;
                Ok(Polled::Other)
            }
            Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => {
                self.written += 1;
                Ok(Polled::Other)
            }
            Ok(Ok(_)) => Ok(Polled::Other),
            Ok(Err(e)) => Err(anyhow!("MQTT connection: {e}")),
            Err(RecvTimeoutError::Timeout) => Ok(Polled::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(anyhow!("MQTT connection closed")),
        }
    }

    /// Polls until every QoS 1 exchange is complete both ways, then until
    /// the socket has been quiet for a moment: a point between frames.
    pub fn settle(&mut self) -> Result<Traffic> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked < self.published || self.acks_sent < self.delivered {
            match self.poll(Duration::from_millis(20))? {
                Polled::Message { topic, .. } => {
                    bail!("unexpected message on {topic} between frames")
                }
                Polled::Confirmed(token) => self.settled_confirms.push(token),
                Polled::Other | Polled::Timeout => {}
            }
            if Instant::now() > deadline {
                bail!("acknowledgements did not complete");
            }
        }
        Ok(self
            .relay
            .settle(Duration::from_millis(40), Duration::from_secs(5)))
    }

    /// The confirmations [`Link::settle`] polled, in order, emptied.
    pub fn take_confirmed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.settled_confirms)
    }

    /// Disconnects cleanly.
    pub fn disconnect(mut self) {
        let _ = self.client.try_disconnect();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match self.conn.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
                Err(RecvTimeoutError::Disconnected) => break,
                _ => {}
            }
        }
    }
}
