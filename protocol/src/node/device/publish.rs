//! What the device publishes: frames and acknowledgements queued as
//! references to the node's state and written (acknowledgements) or lent
//! (frames, from the outbox) when the shell asks, so that neither is
//! copied or allocated on the node's side.

use super::DeviceNode;
use crate::node::Transmit;
use crate::prf::SessionId;
use crate::wire::{self, Kind};

/// A message queued for publishing: frames and acknowledgements are
/// written from the node's own state when the shell asks for them.
#[derive(Debug)]
pub(super) enum Pending {
    /// An outbox frame (skipped if it settled in the meantime).
    Frame {
        sid: SessionId,
        t: u64,
        confirm: Option<u64>,
    },
    /// A lone acknowledgement.
    Ack { sid: SessionId, t: u64 },
    /// Anything else (session messages, `Sync`): rare, built whole.
    Owned(Transmit),
}

/// A message to publish, lent by [`DeviceNode::poll_publish`] from the
/// node's buffers: the shell's MQTT client copies it into its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    /// The MQTT topic.
    pub topic: &'a str,
    /// The encoded message.
    pub payload: &'a [u8],
    /// Whether the broker keeps it for later subscribers.
    pub retain: bool,
    /// Report the broker's acknowledgement as [`Input::Confirmed`](crate::node::Input::Confirmed) with
    /// this token.
    pub confirm: Option<u64>,
}

impl Publish<'_> {
    /// An owned copy.
    pub fn to_transmit(&self) -> Transmit {
        Transmit {
            topic: self.topic.to_owned(),
            payload: self.payload.to_vec(),
            retain: self.retain,
            confirm: self.confirm,
        }
    }
}

impl DeviceNode {
    /// The next message to publish, as an owned copy (see
    /// [`DeviceNode::poll_publish`] for the one that copies nothing).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(Pending::Owned(_)) = self.transmits.front() {
            return match self.transmits.pop_front() {
                Some(Pending::Owned(t)) => Some(t),
                _ => None,
            };
        }
        self.poll_publish().map(|p| p.to_transmit())
    }

    /// The next message to publish, lent from the node's buffers until
    /// the next call: what the shell hands its MQTT client, which copies
    /// it. Frames that settled since they were queued are skipped.
    pub fn poll_publish(&mut self) -> Option<Publish<'_>> {
        let (sid, t, confirm) = loop {
            match self.transmits.pop_front()? {
                Pending::Frame { sid, t, confirm } => {
                    if self.outbox.contains(sid, t) {
                        break (sid, t, confirm);
                    }
                }
                Pending::Ack { sid, t } => {
                    self.ack_buffer.clear();
                    wire::write_header(&mut self.ack_buffer, Kind::Ack, &sid, t);
                    return Some(Publish {
                        topic: &self.topics.ack,
                        payload: &self.ack_buffer,
                        retain: false,
                        confirm: None,
                    });
                }
                Pending::Owned(transmit) => {
                    let lent = self.lent.insert(transmit);
                    return Some(Publish {
                        topic: &lent.topic,
                        payload: &lent.payload,
                        retain: lent.retain,
                        confirm: lent.confirm,
                    });
                }
            }
        };
        let slot = self.outbox.get(sid, t)?;
        Some(Publish {
            topic: &self.topics.frame,
            payload: &slot.entry.envelope,
            retain: false,
            confirm,
        })
    }
}
