//! The servers' protocol logic as the bench drives it: veil's nodes
//! (A and B) and the conventional baseline's server.

use super::*;

/// Milliseconds since the server started (the nodes' clock).
pub(super) fn millis_since(start: Instant) -> Millis {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn is_online(body: &Body) -> bool {
    matches!(
        body,
        Body::Frame(_) | Body::Round(_) | Body::RoundReply { .. } | Body::Output(_)
    )
}

/// A node's transmits as publishes (A↔B ones counted as peer traffic),
/// and its refusals into `errors`: in the bench nothing is malformed or
/// lost, so a refusal is a bug.
pub(super) fn publishes(
    transmits: Vec<Transmit>,
    refusals: Vec<Refusal>,
    errors: &mut Vec<String>,
) -> Vec<Publish> {
    errors.extend(refusals.into_iter().map(|r| {
        format!(
            "{} from {} refused ({}): {}",
            r.what, r.from, r.code, r.detail
        )
    }));
    transmits
        .into_iter()
        .map(|t| Publish {
            to_peer: t.topic == topics::a_to_b(B_WORKER) || t.topic == topics::b_to_a(B_WORKER),
            topic: t.topic,
            payload: t.payload,
        })
        .collect()
}

pub(super) fn node_message(topic: &str, payload: &[u8]) -> NodeInput {
    NodeInput::Message {
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Server A as its shell runs it: the node owns routing, the device-topic
/// check, parking and ordering; the bench moves bytes and times them.
pub(super) struct VeilA {
    pub(super) node: ServerANode<PaillierPublic>,
    pub(super) precompute_due: bool,
    pub(super) started: Instant,
    pub(super) errors: Vec<String>,
}

impl VeilA {
    fn drain(&mut self) -> Vec<Publish> {
        let mut out = Vec::new();
        loop {
            let transmits: Vec<Transmit> =
                std::iter::from_fn(|| self.node.poll_transmit()).collect();
            let refusals = std::iter::from_fn(|| self.node.poll_event())
                .filter_map(|e| match e {
                    AEvent::Refused(r) => Some(r),
                    _ => None,
                })
                .collect();
            let tokens: Vec<u64> = transmits.iter().filter_map(|t| t.confirm).collect();
            out.extend(publishes(transmits, refusals, &mut self.errors));
            if tokens.is_empty() {
                return out;
            }
            // The broker is on loopback and nothing crashes: an output
            // handed to the client counts as confirmed (which may start
            // the session's next frame).
            let now = millis_since(self.started);
            for token in tokens {
                self.node.handle(now, NodeInput::Confirmed(token));
            }
        }
    }
}

pub(super) fn envelope_is_online(payload: &[u8]) -> bool {
    Envelope::from_bytes(payload).is_ok_and(|e| is_online(&e.body))
}

impl ServerRole for VeilA {
    fn filters(&self) -> Vec<&'static str> {
        vec![
            topics::filters::FRAMES,
            topics::filters::SESSIONS_A,
            "veil/v1/ba/bench",
        ]
    }

    fn is_online(&mut self, _topic: &str, payload: &[u8]) -> bool {
        envelope_is_online(payload)
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<Publish>> {
        self.node
            .handle(millis_since(self.started), node_message(topic, payload));
        self.precompute_due = true;
        Ok(self.drain())
    }

    /// The noise pool's refill waits, like the node's own precomputation,
    /// until no frame has a round out at B.
    fn has_offline_work(&self) -> bool {
        self.node.has_work() || (self.precompute_due && !self.node.machine().has_frame_in_round())
    }

    fn offline_step(&mut self) -> Result<Vec<Publish>> {
        if self.node.has_work() {
            self.node.work(millis_since(self.started));
            return Ok(self.drain());
        }
        self.node.machine().backend().precompute();
        self.precompute_due = false;
        Ok(Vec::new())
    }

    fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }
}

/// Server B as its shell runs it (see [`VeilA`]).
pub(super) struct VeilB {
    pub(super) node: ServerBNode<PaillierSecret>,
    pub(super) precompute_due: bool,
    /// What the message being handled says of the pool's refill: due
    /// (a frame's output, or a mask request, which comes after one),
    /// not yet (a round: more of the frame to come) or nothing.
    pub(super) refill: Option<bool>,
    pub(super) started: Instant,
    pub(super) errors: Vec<String>,
}

impl ServerRole for VeilB {
    fn filters(&self) -> Vec<&'static str> {
        vec![
            topics::filters::SESSIONS_B,
            topics::filters::ACKS,
            topics::filters::A_TO_B,
        ]
    }

    fn is_online(&mut self, _topic: &str, payload: &[u8]) -> bool {
        let body = Envelope::from_bytes(payload).map(|e| e.body);
        self.refill = match &body {
            Ok(Body::Output(_) | Body::MaskRequest { .. }) => Some(true),
            Ok(Body::Round(_)) => Some(false),
            _ => None,
        };
        body.is_ok_and(|b| is_online(&b))
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<Publish>> {
        self.node
            .handle(millis_since(self.started), node_message(topic, payload));
        // The pool is refilled once the frame's rounds are over (after its
        // output), as the in-process engine refills between frames: a
        // refill begun between two rounds held up A's next round (mnist-mlp
        // through the broker: a third of the frames took 95-128 ms against
        // 30-56 ms), and one begun after the acknowledgement that A
        // forwards with a frame held up its output (frames of 95-111 ms,
        // 2026-11-29). Server B's own pool fills on a thread of its own.
        if let Some(due) = self.refill {
            self.precompute_due = due;
        }
        let transmits = std::iter::from_fn(|| self.node.poll_transmit()).collect();
        let refusals = std::iter::from_fn(|| self.node.poll_event())
            .filter_map(|e| match e {
                BEvent::Refused(r) => Some(r),
                _ => None,
            })
            .collect();
        Ok(publishes(transmits, refusals, &mut self.errors))
    }

    fn has_offline_work(&self) -> bool {
        self.precompute_due
    }

    fn offline_step(&mut self) -> Result<Vec<Publish>> {
        self.node.machine().backend().precompute();
        self.precompute_due = false;
        Ok(Vec::new())
    }

    fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }
}

pub(super) struct ConvA {
    pub(super) server: ConvServer,
}

impl ServerRole for ConvA {
    fn filters(&self) -> Vec<&'static str> {
        vec![CONV_UP_FILTER]
    }

    fn is_online(&mut self, _topic: &str, payload: &[u8]) -> bool {
        ConvEnvelope::from_bytes(payload).is_ok_and(|e| matches!(e.body, ConvBody::Inputs { .. }))
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<Publish>> {
        let envelope = ConvEnvelope::from_bytes(payload)?;
        let owner = topic
            .strip_prefix("veil/v1/conv/")
            .and_then(|rest| rest.split('/').next());
        if owner != Some(envelope.device.as_str()) {
            bail!(
                "topic {topic} carries a message of device {}",
                envelope.device
            );
        }
        let out = match self.server.handle(envelope)? {
            Some(reply) => vec![Publish {
                topic: conv_down(&reply.device),
                payload: reply.to_bytes()?,
                to_peer: false,
            }],
            None => Vec::new(),
        };
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// The device side.
