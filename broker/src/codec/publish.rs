//! PUBLISH headers, packet ids, acknowledgements and v5 DISCONNECT.

use super::*;

/// What the gate needs from a PUBLISH; the payload is never looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishHeader<'a> {
    pub qos: u8,
    pub retain: bool,
    pub topic: &'a str,
    pub pkid: Option<u16>,
    pub topic_alias: Option<u16>,
}

impl<'a> PublishHeader<'a> {
    pub fn decode(version: Version, flags: u8, body: &'a [u8]) -> Result<Self, CodecError> {
        let qos = (flags >> 1) & 0x03;
        if qos == 3 {
            return Err(CodecError::Malformed("PUBLISH with QoS 3"));
        }
        let mut c = Cursor::new(body, "PUBLISH");
        let topic = c.string()?;
        let pkid = if qos > 0 {
            let id = c.u16()?;
            if id == 0 {
                return Err(CodecError::Malformed("PUBLISH with packet identifier 0"));
            }
            Some(id)
        } else {
            None
        };
        let topic_alias = match version {
            Version::V5 => {
                let props = c.properties()?;
                match find_property(props, PROP_TOPIC_ALIAS) {
                    Some([hi, lo]) => Some(u16::from_be_bytes([*hi, *lo])),
                    Some(_) => return Err(CodecError::Malformed("topic alias")),
                    None => None,
                }
            }
            Version::V4 => None,
        };
        Ok(PublishHeader {
            qos,
            retain: flags & 0x01 != 0,
            topic,
            pkid,
            topic_alias,
        })
    }
}

/// The packet identifier at the front of PUBACK, PUBREC, PUBREL, PUBCOMP,
/// SUBACK and UNSUBACK bodies.
pub fn packet_id(body: &[u8]) -> Result<u16, CodecError> {
    Cursor::new(body, "packet identifier").u16()
}

/// A PUBACK/PUBREC/PUBREL/PUBCOMP. `reason` is only sent to v5 peers.
///
/// v5 packets carry an explicit empty property block although the spec lets
/// it be omitted: rumqttc 0.25 loses a DISCONNECT that omits it.
pub fn encode_ack(kind: u8, version: Version, pkid: u16, reason: u8) -> Bytes {
    let [hi, lo] = pkid.to_be_bytes();
    let flags = if kind == PUBREL { 0x02 } else { 0 };
    match version {
        Version::V4 => packet(kind, flags, &[hi, lo]),
        Version::V5 => packet(kind, flags, &[hi, lo, reason, 0]),
    }
    .unwrap_or_default()
}

/// A v5 DISCONNECT with a reason code.
pub fn encode_disconnect_v5(reason: u8) -> Bytes {
    packet(DISCONNECT, 0, &[reason, 0]).unwrap_or_default()
}
