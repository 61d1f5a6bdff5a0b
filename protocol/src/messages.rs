//! The messages of the protocol. Every message is an [`Envelope`] naming
//! the device, the session and the frame counter, so that every party can
//! check it belongs where it claims to. On a device's own topics the name
//! is the topic's and the encoding compact ([`crate::wire`]); elsewhere
//! the envelope travels whole (bincode).

use crate::codec;
use crate::error::{DecodeError, ProtocolError, Result};
use crate::prf::SessionId;
use serde::{Deserialize, Serialize};

/// Lists of byte strings (ciphertexts) encoded as such, so that decoding
/// copies each one in bulk rather than byte by byte.
mod byte_list {
    use serde::de::{Deserializer, Error as _, SeqAccess, Visitor};
    use serde::ser::{SerializeSeq, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    /// Most items one list may hold: well above the largest round of the
    /// shipped models (tens of thousands of ciphertexts), and small enough
    /// that the Vec headers of a full list stay around 25 MiB.
    pub const MAX_LIST_ITEMS: usize = 1 << 20;

    /// Writes the list as a sequence of byte strings.
    pub fn serialize<S: Serializer>(items: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(items.len()))?;
        for item in items {
            seq.serialize_element(Bytes::new(item))?;
        }
        seq.end()
    }

    /// Reads a list of non-empty byte strings, refusing one with more than
    /// [`MAX_LIST_ITEMS`] items before it has allocated them.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = Vec<Vec<u8>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of byte strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The length is the sender's claim: grow as items arrive.
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(item) = seq.next_element::<ByteBuf>()? {
                    // Every item costs a Vec header (24 bytes) for as little
                    // as one byte on the wire: without these limits a 16 MiB
                    // payload of empty items held about 0.5 GiB while it
                    // was decoded. No ciphertext encoding is empty.
                    if item.is_empty() {
                        return Err(A::Error::custom("empty item in a byte list"));
                    }
                    if items.len() >= MAX_LIST_ITEMS {
                        return Err(A::Error::custom(format_args!(
                            "byte list longer than {MAX_LIST_ITEMS} items"
                        )));
                    }
                    items.push(item.into_vec());
                }
                Ok(items)
            }
        }
        deserializer.deserialize_seq(ListVisitor)
    }
}

pub use byte_list::MAX_LIST_ITEMS;

/// The version this build speaks; others are refused with a reason.
/// Version 2: refusals carry a [`RejectCode`]. Version 3: messages on a
/// device's own topics use the compact encoding of [`crate::wire`], frames
/// carry per-feature widths and acknowledgements, results travel modulo
/// `2^(κ+1)`. Version 4: B answers rounds with masked plaintexts and
/// supplies the masks' encryptions with the first-layer masks.
pub const PROTOCOL_VERSION: u16 = 4;

/// Longest device name: names are MQTT topic levels and ACL user names.
pub const MAX_DEVICE_NAME: usize = 64;

/// Who a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Peer {
    /// The device that owns the session.
    Device,
    /// Server A, which holds the model.
    ServerA,
    /// Server B, which holds the Paillier secret key.
    ServerB,
}

/// One protocol message with what every party checks before acting on it:
/// which device, session and frame it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`PROTOCOL_VERSION`] of the sender; anything else is refused.
    pub version: u16,
    /// The device the message is about (on its own topics: the topic's).
    pub device: String,
    /// The session it belongs to.
    pub sid: SessionId,
    /// The frame counter (for session messages: the session's first one).
    pub t: u64,
    /// What the message says.
    pub body: Body,
}

/// How B evaluates an activation round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoundMode {
    /// B compares blinded, perturbed values and never sees them: ReLU,
    /// leaky ReLU and max pooling.
    Blind,
    /// B decrypts the shuffled, perturbed values and applies the function
    /// exactly: any activation (tanh, sigmoid, ...).
    Permute,
}

/// What a message says, one variant per step of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Device → A and device → B: the session seed for that server,
    /// Paillier-encrypted under its key.
    SessionInit(SessionInit),
    /// Device → A: the doubly masked frame `y = x̂ - L + a + b`, with the
    /// device's acknowledgements of earlier results (A passes them on to B).
    Frame(Frame),
    /// A → B: send the first-layer masks `[[-b]]` for counters
    /// `t .. t + count`.
    MaskRequest {
        /// How many consecutive counters, at most
        /// [`crate::MAX_MASK_REQUEST`].
        count: u32,
    },
    /// B → A: `[[-b_i]]` for counter `t`, one ciphertext per input
    /// feature, and `[[-μ]]` for every reply item of every activation
    /// round of the counter (stage by stage, group by group, in reply
    /// order), so that A can prepare its corrections offline.
    MaskSupply {
        /// `[[-b_i]]`, one per input feature.
        #[serde(with = "byte_list")]
        masks: Vec<Vec<u8>>,
        /// `[[-μ]]`, one per reply item of the counter's rounds.
        #[serde(with = "byte_list")]
        replies: Vec<Vec<u8>>,
    },
    /// A → B: one activation round.
    Round(Round),
    /// B → A: the round's answers in plaintext, each masked by B's `μ`
    /// (`v + μ`, 32 bytes little-endian each).
    RoundReply {
        /// The stage of the round answered.
        stage: u16,
        /// The masked answers, in the order of the round's groups.
        #[serde(with = "byte_list")]
        items: Vec<Vec<u8>>,
    },
    /// A → B: the outputs under A's output mask.
    Output(Output),
    /// B → device: the outputs under both output masks.
    Result(FrameResult),
    /// Device → B: the result of counter `t` arrived; B may forget it.
    Ack,
    /// Device → B, on (re)connecting: send again every result still
    /// queued for this device. Handled by B's shell, which owns the queue.
    Sync,
    /// A refusal, sent back to the peer whose message was refused. Peers
    /// act on `code` alone; `detail` is for logs.
    Reject {
        /// Why, as the receiver acts on it.
        code: RejectCode,
        /// Why, for a person reading the log (at most
        /// [`crate::wire::MAX_DETAIL`] bytes).
        detail: String,
    },
}

/// Why a message was refused, as the receiver acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectCode {
    /// The message could not be decoded, or does not fit the model.
    Malformed,
    /// The message speaks another protocol version.
    Version,
    /// No such session (or it was never accepted).
    UnknownSession,
    /// The session belongs to another device, or the message names a
    /// device other than the one whose topic carried it.
    WrongDevice,
    /// The frame counter was used already.
    Replay,
    /// B already produced this frame's output: its result is queued at B,
    /// so A forgets the frame instead of retrying it.
    Completed,
    /// A step arrived before the step it depends on.
    OutOfOrder,
    /// Refused for a reason the refusing party does not disclose.
    Refused,
    /// The device opened more sessions within a minute than the server
    /// accepts; refused before the seed is decrypted. Logged and counted
    /// by the servers but not sent (`DeviceNode` would take it as final
    /// for the frame with the session's first counter): the device's
    /// frames under the session come back as `UnknownSession` and recover
    /// once the minute has passed.
    TooManySessions,
}

impl RejectCode {
    /// A short name for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::Malformed => "malformed",
            RejectCode::Version => "version",
            RejectCode::UnknownSession => "unknown-session",
            RejectCode::WrongDevice => "wrong-device",
            RejectCode::Replay => "replay",
            RejectCode::Completed => "completed",
            RejectCode::OutOfOrder => "out-of-order",
            RejectCode::Refused => "refused",
            RejectCode::TooManySessions => "too-many-sessions",
        }
    }
}

impl std::fmt::Display for RejectCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Opens a session with one server: the seed it shares with the device,
/// and fingerprints of what the device expects the server to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInit {
    /// The model's name, as the server's topology names it.
    pub model: String,
    /// Fingerprint of the model's public topology.
    pub topology: [u8; 32],
    /// Fingerprint of the protocol parameters.
    pub params: [u8; 32],
    /// Fingerprint of the server key the seed is encrypted under.
    pub server_key: [u8; 32],
    /// The 256-bit seed as a Paillier ciphertext.
    #[serde(with = "serde_bytes")]
    pub seed: Vec<u8>,
}

/// One masked input frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Counters of the same session whose results the device has received
    /// (each below the frame's own): B may forget them.
    pub acks: Vec<u64>,
    /// The masked features, each in its own width
    /// ([`crate::layout::FrameLayout`]).
    #[serde(with = "serde_bytes")]
    pub values: Vec<u8>,
}

/// One activation round, A → B: the stage's perturbed entries under
/// Paillier, grouped and shuffled with dummies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    /// The activation stage of the model's topology.
    pub stage: u16,
    /// How B evaluates it.
    pub mode: RoundMode,
    /// Groups in the round (real ones and dummies, shuffled): one per
    /// element, or one per pooling window.
    pub groups: u32,
    /// Entries per group (the pooling window, or 1).
    pub group_size: u16,
    /// Whether the ciphertexts below hold many values each.
    pub packed: bool,
    /// Blind mode: `[[β·z]]` per entry. Permute mode: `[[z]]` per entry.
    #[serde(with = "byte_list")]
    pub values: Vec<Vec<u8>>,
    /// Blind mode: `[[z + ρ]]` per entry.
    #[serde(with = "byte_list")]
    pub masked: Vec<Vec<u8>>,
    /// Blind leaky ReLU: `[[α_q·z + ρ']]` per entry.
    #[serde(with = "byte_list")]
    pub masked_alpha: Vec<Vec<u8>>,
}

/// A frame's outputs under A's output mask, A → B.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// How many outputs (the model's output length).
    pub count: u32,
    /// Whether each ciphertext holds many outputs.
    pub packed: bool,
    /// The masked outputs as ciphertexts.
    #[serde(with = "byte_list")]
    pub values: Vec<Vec<u8>>,
}

/// A frame's outputs under both output masks, B → device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameResult {
    /// The doubly masked outputs modulo `2^(κ+1)`, `κ + 1` bits each.
    #[serde(with = "serde_bytes")]
    pub values: Vec<u8>,
}

/// [`Body::kind`] by variant index, in declaration order: bincode writes an
/// enum's variant index before its fields.
const BODY_KINDS: [&str; 11] = [
    "session-init",
    "frame",
    "mask-request",
    "mask-supply",
    "round",
    "round-reply",
    "output",
    "result",
    "ack",
    "sync",
    "reject",
];

impl Body {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::SessionInit(_) => "session-init",
            Body::Frame(_) => "frame",
            Body::MaskRequest { .. } => "mask-request",
            Body::MaskSupply { .. } => "mask-supply",
            Body::Round(_) => "round",
            Body::RoundReply { .. } => "round-reply",
            Body::Output(_) => "output",
            Body::Result(_) => "result",
            Body::Ack => "ack",
            Body::Sync => "sync",
            Body::Reject { .. } => "reject",
        }
    }
}

/// Checks that a device name can serve as an MQTT topic level and user name.
pub fn check_device_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_DEVICE_NAME {
        return Err(DecodeError::DeviceNameLength {
            len: name.len(),
            max: MAX_DEVICE_NAME,
        }
        .into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(DecodeError::DeviceNameChar(c).into());
    }
    Ok(())
}

impl Envelope {
    /// A message of this build's [`PROTOCOL_VERSION`].
    pub fn new(device: &str, sid: SessionId, t: u64, body: Body) -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            device: device.to_string(),
            sid,
            t,
            body,
        }
    }

    /// The whole-envelope (bincode) encoding, for the servers' topics and
    /// the session topics.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        codec::encode(self)
    }

    /// The compact encoding of a message on one of the device's own topics
    /// (frame, result, ack; see [`crate::wire`]).
    pub fn to_device_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        crate::wire::encode(self, &mut out)?;
        Ok(out)
    }

    /// Decodes a message from one of `device`'s own topics (the topic
    /// names the device).
    pub fn from_device_bytes(device: &str, bytes: &[u8]) -> Result<Envelope> {
        crate::wire::decode(device, bytes)
    }

    /// Decodes a payload in the encoding its topic carries.
    pub fn from_topic(topic: &str, bytes: &[u8]) -> Result<Envelope> {
        match crate::topics::compact_device(topic) {
            Some(device) => Envelope::from_device_bytes(device, bytes),
            None => Envelope::from_bytes(bytes),
        }
    }

    /// The [`Body::kind`] of a whole envelope, read from its head without
    /// decoding the body (a mask supply or a round is several MB).
    pub fn peek_kind(bytes: &[u8]) -> Result<&'static str> {
        #[derive(Deserialize)]
        struct Head {
            _version: u16,
            _device: String,
            _sid: SessionId,
            _t: u64,
            variant: u32,
        }
        let head: Head = codec::decode_head(bytes)?;
        usize::try_from(head.variant)
            .ok()
            .and_then(|i| BODY_KINDS.get(i).copied())
            .ok_or_else(|| DecodeError::UnknownBody(head.variant).into())
    }

    /// Decodes and checks the envelope (version, size, device name).
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope> {
        let envelope: Envelope = codec::decode(bytes)?;
        if envelope.version != PROTOCOL_VERSION {
            return Err(ProtocolError::Version {
                got: envelope.version,
                supported: PROTOCOL_VERSION,
            });
        }
        check_device_name(&envelope.device)?;
        Ok(envelope)
    }
}

/// A message to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Its recipient.
    pub to: Peer,
    /// The message.
    pub envelope: Envelope,
}

impl Outgoing {
    /// A message for `to`.
    pub fn new(to: Peer, envelope: Envelope) -> Outgoing {
        Outgoing { to, envelope }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeked_kind_is_the_decoded_kind_for_every_body() {
        let bodies = vec![
            Body::SessionInit(SessionInit {
                model: "m".into(),
                topology: [1; 32],
                params: [2; 32],
                server_key: [3; 32],
                seed: vec![4; 9],
            }),
            Body::Frame(Frame {
                acks: vec![1, 2],
                values: vec![5; 7],
            }),
            Body::MaskRequest { count: 3 },
            Body::MaskSupply {
                masks: vec![vec![6; 4]],
                replies: vec![vec![6; 3]],
            },
            Body::Round(Round {
                stage: 1,
                mode: RoundMode::Permute,
                groups: 2,
                group_size: 1,
                packed: false,
                values: vec![vec![7; 3]],
                masked: Vec::new(),
                masked_alpha: Vec::new(),
            }),
            Body::RoundReply {
                stage: 1,
                items: vec![vec![8; 2]],
            },
            Body::Output(Output {
                count: 1,
                packed: false,
                values: vec![vec![9]],
            }),
            Body::Result(FrameResult { values: vec![1, 2] }),
            Body::Ack,
            Body::Sync,
            Body::Reject {
                code: RejectCode::Completed,
                detail: "d".into(),
            },
        ];
        assert_eq!(bodies.len(), BODY_KINDS.len());
        for body in bodies {
            let kind = body.kind();
            let bytes = Envelope::new("dev-1", SessionId([7; 16]), 300, body)
                .to_bytes()
                .expect("encodes");
            assert_eq!(Envelope::peek_kind(&bytes).expect("peeks"), kind);
        }
        assert!(Envelope::peek_kind(&[]).is_err());
    }
}
