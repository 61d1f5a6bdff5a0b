//! Which device a message is about, told cheaply: what a server with
//! several workers routes each incoming message by (every session of a
//! device lives in one worker). Read from the topic where it names the
//! device, else from the head of the whole envelope, without decoding its
//! body (a mask supply or a round is megabytes).

use serde::Deserialize;

use crate::codec;
use crate::topics;

/// The device a whole envelope (the servers' `ab`/`ba` messages) names,
/// read from its head; `None` for anything that does not start like an
/// envelope. Nothing is checked beyond that: the worker it is routed to
/// decodes and checks the whole message.
pub fn envelope_device(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        _version: u16,
        device: String,
    }
    codec::decode_head::<Head>(bytes).ok().map(|h| h.device)
}

/// The device a message on `topic` is about: the topic's for a device's
/// own topics, else the envelope's.
pub fn message_device(topic: &str, payload: &[u8]) -> Option<String> {
    match topics::device_of(topic) {
        Some(device) => Some(device.to_string()),
        None => envelope_device(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Body, Envelope};
    use crate::prf::SessionId;

    #[test]
    fn the_device_comes_from_the_topic_or_the_envelope_head() {
        let env = Envelope::new("gw-7", SessionId([3; 16]), 9, Body::Ack);
        let bytes = env.to_bytes().expect("encodes");
        assert_eq!(envelope_device(&bytes).as_deref(), Some("gw-7"));
        assert_eq!(
            message_device(&topics::a_to_b("a1"), &bytes).as_deref(),
            Some("gw-7")
        );
        assert_eq!(
            message_device(&topics::frame("dev-1"), b"anything").as_deref(),
            Some("dev-1")
        );
        assert_eq!(envelope_device(&bytes[..2]), None);
        assert_eq!(envelope_device(&[]), None);
    }
}
