//! The attacker's messages: garbage, maximum-size payloads, well-formed
//! envelopes that lie (counter jumps, sessions for seeds nobody can use,
//! other devices' names) and bodies sent to the wrong topic.

use bytes::Bytes;
use veil_protocol::{Body, Envelope, Frame, SessionId, SessionInit};

use crate::Pins;

/// One message to publish: topic and payload, and what it is for the
/// report.
pub(crate) struct Shot {
    pub topic: String,
    pub payload: Bytes,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Huge,
    Malformed,
    CounterJump,
    Session,
    Forged,
}

fn random_sid() -> SessionId {
    let mut sid = [0u8; 16];
    rand::fill(&mut sid);
    SessionId(sid)
}

fn encode(env: &Envelope) -> Bytes {
    // Encoding a value built here cannot fail; an empty payload is still
    // garbage worth sending if it ever did.
    Bytes::from(env.to_bytes().unwrap_or_default())
}

/// The compact encoding of the device's frame, result and ack topics.
fn encode_compact(env: &Envelope) -> Bytes {
    Bytes::from(env.to_device_bytes().unwrap_or_default())
}

/// The cycle of shots for `device`, `n` selecting one.
pub(crate) struct Arsenal {
    device: String,
    huge: Bytes,
    pins: Option<Pins>,
}

impl Arsenal {
    pub(crate) fn new(device: &str, max_payload: usize, pins: Option<Pins>) -> Arsenal {
        let mut huge = vec![0u8; max_payload];
        rand::fill(&mut huge[..]);
        Arsenal {
            device: device.to_string(),
            huge: Bytes::from(huge),
            pins,
        }
    }

    fn topic(&self, leaf: &str) -> String {
        format!("veil/v1/dev/{}/{leaf}", self.device)
    }

    pub(crate) fn shot(&self, n: u64) -> Shot {
        // One maximum-size payload in 256: with a byte quota in force, more
        // would leave no room for the rest of the mix.
        if n.is_multiple_of(256) {
            return Shot {
                topic: self.topic("frame"),
                payload: self.huge.clone(),
                kind: Kind::Huge,
            };
        }
        match n % 8 {
            0 | 1 => {
                let mut garbage = vec![0u8; 1 + usize::try_from(n % 200).unwrap_or(0)];
                rand::fill(&mut garbage[..]);
                Shot {
                    topic: self
                        .topic(["frame", "session/a", "session/b", "ack"][(n / 8 % 4) as usize]),
                    payload: Bytes::from(garbage),
                    kind: Kind::Malformed,
                }
            }
            2 | 3 => {
                // Counters near the top of the range and far ahead of any
                // real one: checked arithmetic and the lookahead cap.
                let t = match n % 3 {
                    0 => u64::MAX - (n % 5),
                    1 => 1 << 40,
                    _ => u64::MAX / 2 + n,
                };
                let env = Envelope::new(
                    &self.device,
                    random_sid(),
                    t,
                    Body::Frame(Frame {
                        acks: Vec::new(),
                        values: vec![0xa5; 16],
                    }),
                );
                Shot {
                    topic: self.topic("frame"),
                    payload: encode_compact(&env),
                    kind: Kind::CounterJump,
                }
            }
            4 | 5 => {
                // A new session every time: each makes a server decrypt a
                // seed, when the fingerprints are right.
                let server = if n.is_multiple_of(2) { 'a' } else { 'b' };
                let pins = self.pins.clone().unwrap_or_default();
                let mut seed = vec![0u8; 512];
                rand::fill(&mut seed[..]);
                let env = Envelope::new(
                    &self.device,
                    random_sid(),
                    0,
                    Body::SessionInit(SessionInit {
                        model: pins.model,
                        topology: pins.topology,
                        params: pins.params,
                        server_key: if server == 'a' {
                            pins.server_a
                        } else {
                            pins.server_b
                        },
                        seed,
                    }),
                );
                Shot {
                    topic: self.topic(if server == 'a' {
                        "session/a"
                    } else {
                        "session/b"
                    }),
                    payload: encode(&env),
                    kind: Kind::Session,
                }
            }
            6 => {
                // Another device's name on the attacker's own session topic
                // (frames carry no name: their topic is the device's).
                let env = Envelope::new("devA", random_sid(), n, Body::Ack);
                Shot {
                    topic: self.topic("session/a"),
                    payload: encode(&env),
                    kind: Kind::Forged,
                }
            }
            _ => {
                // A well-formed body of the wrong kind for the topic.
                let env = Envelope::new(&self.device, random_sid(), n, Body::Ack);
                let (topic, payload) = if n.is_multiple_of(2) {
                    ("frame", encode_compact(&env))
                } else {
                    ("session/a", encode(&env))
                };
                Shot {
                    topic: self.topic(topic),
                    payload,
                    kind: Kind::Malformed,
                }
            }
        }
    }
}
