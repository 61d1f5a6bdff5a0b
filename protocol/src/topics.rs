//! MQTT topic names, all under `veil/v1/`. Devices write only under their
//! own name and read only their own results; the servers talk to each other
//! on the `ab` and `ba` trees (see `config/acl`).

use crate::messages::Peer;

/// Every topic of this protocol generation starts here.
pub const ROOT: &str = "veil/v1";

/// Retained public key of server A (`a`) or B (`b`).
pub fn server_key(server: char) -> String {
    format!("{ROOT}/pub/{server}/key")
}

/// Retained public topology of a model.
pub fn topology(model: &str) -> String {
    format!("{ROOT}/pub/models/{model}")
}

/// Retained session message from a device to server A (`a`) or B (`b`).
pub fn session(device: &str, server: char) -> String {
    format!("{ROOT}/dev/{device}/session/{server}")
}

/// Frames from a device to server A (compact encoding).
pub fn frame(device: &str) -> String {
    format!("{ROOT}/dev/{device}/frame")
}

/// Results from server B to a device (compact encoding).
pub fn result(device: &str) -> String {
    format!("{ROOT}/dev/{device}/result")
}

/// Acknowledgements and `Sync` from a device to server B (compact
/// encoding).
pub fn ack(device: &str) -> String {
    format!("{ROOT}/dev/{device}/ack")
}

/// A → B messages (mask requests, rounds, outputs) from one A worker.
pub fn a_to_b(worker: &str) -> String {
    format!("{ROOT}/ab/{worker}")
}

/// B → A messages, addressed to one A worker.
pub fn b_to_a(worker: &str) -> String {
    format!("{ROOT}/ba/{worker}")
}

/// Wildcard filters the servers subscribe to.
pub mod filters {
    /// Every device's frames (server A).
    pub const FRAMES: &str = "veil/v1/dev/+/frame";
    /// Every device's session messages for A.
    pub const SESSIONS_A: &str = "veil/v1/dev/+/session/a";
    /// Every device's session messages for B.
    pub const SESSIONS_B: &str = "veil/v1/dev/+/session/b";
    /// Every device's acknowledgements (server B).
    pub const ACKS: &str = "veil/v1/dev/+/ack";
    /// Every A worker's messages to B.
    pub const A_TO_B: &str = "veil/v1/ab/#";
}

/// The device name in a `veil/v1/dev/<device>/...` topic.
pub fn device_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("veil/v1/dev/")?;
    let (device, _) = rest.split_once('/')?;
    (!device.is_empty()).then_some(device)
}

/// The device whose frame, result or ack topic this is: the topics whose
/// messages use the compact encoding of [`crate::wire`].
pub fn compact_device(topic: &str) -> Option<&str> {
    let device = device_of(topic)?;
    let rest = topic.strip_prefix(ROOT)?.strip_prefix("/dev/")?;
    let kind = rest.strip_prefix(device)?.strip_prefix('/')?;
    matches!(kind, "frame" | "result" | "ack").then_some(device)
}

/// Which party subscribes to `topic` (the servers' filters, a device its
/// own result topic): where a lossless in-memory broker delivers it. Every
/// A worker's `ab` topic goes to B.
pub fn subscriber(topic: &str) -> Option<Peer> {
    if topic.starts_with("veil/v1/ab/") {
        return Some(Peer::ServerB);
    }
    if topic.starts_with("veil/v1/ba/") {
        return Some(Peer::ServerA);
    }
    let device = device_of(topic)?;
    if topic == frame(device) || topic == session(device, 'a') {
        Some(Peer::ServerA)
    } else if topic == session(device, 'b') || topic == ack(device) {
        Some(Peer::ServerB)
    } else if topic == result(device) {
        Some(Peer::Device)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_come_back_out_of_topics() {
        assert_eq!(device_of(&frame("devA")), Some("devA"));
        assert_eq!(device_of(&session("gw-7", 'b')), Some("gw-7"));
        assert_eq!(device_of("veil/v1/ab/round"), None);
        assert_eq!(device_of("veil/v1/dev//frame"), None);
        assert_eq!(compact_device(&frame("gw-7")), Some("gw-7"));
        assert_eq!(compact_device(&result("gw-7")), Some("gw-7"));
        assert_eq!(compact_device(&ack("gw-7")), Some("gw-7"));
        assert_eq!(compact_device(&session("gw-7", 'a')), None);
        assert_eq!(compact_device("veil/v1/ab/a1"), None);
    }

    #[test]
    fn every_topic_has_its_subscriber() {
        assert_eq!(subscriber(&frame("d")), Some(Peer::ServerA));
        assert_eq!(subscriber(&session("d", 'a')), Some(Peer::ServerA));
        assert_eq!(subscriber(&session("d", 'b')), Some(Peer::ServerB));
        assert_eq!(subscriber(&ack("d")), Some(Peer::ServerB));
        assert_eq!(subscriber(&result("d")), Some(Peer::Device));
        assert_eq!(subscriber(&a_to_b("w2")), Some(Peer::ServerB));
        assert_eq!(subscriber(&b_to_a("w2")), Some(Peer::ServerA));
        assert_eq!(subscriber(&server_key('a')), None);
        assert_eq!(subscriber("veil/v1/dev/d/other"), None);
    }
}
