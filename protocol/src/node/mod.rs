//! Nodes: one per role, wrapping that role's state machine with every
//! recovery rule of the protocol, in the style of quinn-proto's
//! `Connection`.
//!
//! # Driving a node
//! A shell feeds [`Input`]s with [`ServerANode::handle`] (and the like),
//! then drains `poll_event` and `poll_transmit`, and calls
//! `handle_timeout` once `poll_timeout` has passed. Time is injected as
//! [`Millis`]; nodes read no clock, touch no disk or socket, and draw
//! randomness only from what they are given.
//!
//! # Ordering contract
//! A shell applies every event (writes to disk) before it sends any
//! transmit drained after it, and acknowledges an incoming MQTT message
//! only once both are done: what a transmit depends on is then durable
//! before anyone can see the transmit.

mod a;
mod b;
mod device;
mod sessions;

pub use a::{AEvent, ANote, AOptions, ServerANode};
pub use b::{BEvent, BNote, BOptions, Queued, ServerBNode};
pub use device::{
    DeviceDurable, DeviceEvent, DeviceNode, DeviceOptions, OutboxEntry, Publish, Settled,
};
pub use sessions::{SessionLimits, StoredSession, decode_times, encode_times, triage};

use crate::messages::{Body, Envelope, RejectCode};
use crate::prf::SessionId;
pub use bytes::Bytes;

/// Milliseconds on the shell's clock (the UNIX epoch for the shipped
/// shells, anything monotone-ish in a simulation).
pub type Millis = u64;

/// What a shell hands a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A message the broker delivered (shared bytes: a round is several
    /// MB, and no node copies it).
    Message {
        /// The topic it came on (it names the device or the worker).
        topic: String,
        /// The message's bytes.
        payload: Bytes,
    },
    /// The broker acknowledged the publish sent with this token.
    Confirmed(u64),
    /// (Re)connected, subscriptions in place.
    Connected,
    /// The connection dropped; publishes not yet confirmed are sent again
    /// after the next [`Input::Connected`].
    Disconnected,
}

/// A message a node wants published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The MQTT topic to publish on.
    pub topic: String,
    /// The encoded message.
    pub payload: Vec<u8>,
    /// Whether the broker keeps it for later subscribers (the servers'
    /// public keys and topologies).
    pub retain: bool,
    /// Report the broker's acknowledgement as [`Input::Confirmed`] with
    /// this token.
    pub confirm: Option<u64>,
}

impl Transmit {
    fn new(topic: String, payload: Vec<u8>) -> Transmit {
        Transmit {
            topic,
            payload,
            retain: false,
            confirm: None,
        }
    }
}

/// A message a node refused, for logs and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What was refused ("frame", "session", "round", …).
    pub what: &'static str,
    /// Who sent it (a device name, or a server).
    pub from: String,
    /// The code sent back (or that would be, for refusals not sent).
    pub code: RejectCode,
    /// The reason in words, for the log.
    pub detail: String,
}

/// The bytes of a refusal addressed to `device`'s message `(sid, t)`, as
/// a whole envelope (A's refusals travel to B, which relays them).
fn reject_bytes(device: &str, sid: SessionId, t: u64, code: RejectCode, detail: &str) -> Vec<u8> {
    let envelope = Envelope::new(
        device,
        sid,
        t,
        Body::Reject {
            code,
            detail: detail.to_string(),
        },
    );
    // An envelope of a refusal always encodes; an empty payload would be
    // dropped by the receiver as unreadable.
    envelope.to_bytes().unwrap_or_default()
}

/// The same refusal on the device's result topic (compact encoding).
fn device_reject_bytes(
    device: &str,
    sid: SessionId,
    t: u64,
    code: RejectCode,
    detail: &str,
) -> Vec<u8> {
    let mut end = detail.len().min(crate::wire::MAX_DETAIL);
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    let body = Body::Reject {
        code,
        detail: detail.get(..end).unwrap_or_default().to_string(),
    };
    Envelope::new(device, sid, t, body)
        .to_device_bytes()
        .unwrap_or_default()
}

/// Decodes a message from one of a device's own topics (compact
/// encoding, the device named by the topic the broker's ACL vouches for).
fn device_envelope(
    device: &str,
    payload: &[u8],
) -> Result<Envelope, (SessionId, u64, RejectCode, String)> {
    Envelope::from_device_bytes(device, payload)
        .map_err(|e| (SessionId([0; 16]), 0, e.code(), e.to_string()))
}

/// A device's session message (a whole envelope), checked to name the
/// device whose topic carried it and refused as malformed if it carries
/// anything but a session.
fn session_envelope(
    device: &str,
    payload: &[u8],
) -> Result<Envelope, (SessionId, u64, RejectCode, String)> {
    let env = match Envelope::from_bytes(payload) {
        Ok(env) if env.device == device => env,
        Ok(env) => {
            return Err((
                env.sid,
                env.t,
                RejectCode::WrongDevice,
                format!(
                    "message names device {:?} on device {device:?}'s topic",
                    env.device
                ),
            ));
        }
        Err(e) => return Err((SessionId([0; 16]), 0, e.code(), e.to_string())),
    };
    if matches!(env.body, Body::SessionInit(_)) {
        return Ok(env);
    }
    let detail = format!("{} on the session topic", env.body.kind());
    Err((env.sid, env.t, RejectCode::Malformed, detail))
}
