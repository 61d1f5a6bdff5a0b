//! A small, bounded MQTT 3.1.1 / 5 codec: just enough to frame packets and to
//! read and rewrite the few the gate must understand (CONNECT, CONNACK,
//! PUBLISH, SUBSCRIBE, SUBACK and the acknowledgements).
//!
//! Every packet the gate does not need to change is forwarded as the exact
//! bytes it arrived in. Decoders never trust a length: every read is checked
//! against what is left of the packet, and a packet larger than the configured
//! limit is refused from its fixed header, before it is buffered.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt as _};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBACK: u8 = 11;
#[cfg(test)]
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;
pub const AUTH: u8 = 15;

/// v5 property identifiers the gate looks at.
pub const PROP_ASSIGNED_CLIENT_ID: u8 = 0x12;
pub const PROP_AUTH_METHOD: u8 = 0x15;
pub const PROP_TOPIC_ALIAS_MAX: u8 = 0x22;
pub const PROP_TOPIC_ALIAS: u8 = 0x23;
pub const PROP_MAX_PACKET_SIZE: u8 = 0x27;

/// Largest value the 4-byte remaining-length encoding can carry.
pub(crate) const MAX_REMAINING_LEN: usize = 268_435_455;

/// Protocol level from CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Why bytes were not accepted as MQTT.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("remaining length encoded in more than 4 bytes")]
    BadRemainingLength,
    #[error("packet of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("connection closed in the middle of a packet")]
    TruncatedStream,
    #[error("{0}: truncated")]
    Truncated(&'static str),
    #[error("{0}: invalid UTF-8")]
    Utf8(&'static str),
    #[error("{0}")]
    Malformed(&'static str),
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    #[error("unknown v5 property identifier 0x{0:02x}")]
    UnknownProperty(u8),
}

mod connect;
mod frame;
mod publish;
mod reader;
mod subscribe;
mod wire;

pub use connect::*;
pub use frame::*;
pub use publish::*;
pub use reader::*;
pub use subscribe::*;
use wire::*;

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(bytes: &[u8]) -> Frame {
        let mut buf = BytesMut::from(bytes);
        take_frame(&mut buf, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn frames_are_split_only_when_complete() {
        let mut buf = BytesMut::from(&[0x30, 0x05, 0x00, 0x01, b'a'][..]);
        assert!(take_frame(&mut buf, 100).unwrap().is_none());
        buf.extend_from_slice(&[b'x', b'y', 0xC0, 0x00]);
        let f = take_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(f.kind, PUBLISH);
        assert_eq!(f.body(), &[0x00, 0x01, b'a', b'x', b'y']);
        let ping = take_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(ping.kind, PINGREQ);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_and_malformed_lengths_are_refused_before_buffering() {
        let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0x7f][..]);
        assert_eq!(
            take_frame(&mut buf, 1024).unwrap_err(),
            CodecError::TooLarge {
                size: 2_097_155,
                limit: 1024
            }
        );
        let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert_eq!(
            take_frame(&mut buf, usize::MAX).unwrap_err(),
            CodecError::BadRemainingLength
        );
    }

    fn v5_connect_bytes() -> Vec<u8> {
        let mut body = Vec::new();
        put_binary(&mut body, b"MQTT");
        body.push(5);
        body.push(0xC0 | 0x04 | 0x08 | 0x02); // user, pass, will qos1, clean
        body.extend_from_slice(&60u16.to_be_bytes());
        // properties: topic alias max 10, session expiry 30
        put_properties(&mut body, &[0x22, 0, 10, 0x11, 0, 0, 0, 30]);
        put_binary(&mut body, b"dev-1");
        put_properties(&mut body, &[0x01, 1]);
        put_binary(&mut body, b"veil/v1/dev/dev-1/status");
        put_binary(&mut body, b"gone");
        put_binary(&mut body, b"devA");
        put_binary(&mut body, b"secret");
        packet(CONNECT, 0, &body).unwrap().to_vec()
    }

    #[test]
    fn connect_round_trips_with_replaced_credentials() {
        let f = frame_of(&v5_connect_bytes());
        let c = Connect::decode(f.body()).unwrap();
        assert_eq!(c.version, Version::V5);
        assert!(c.clean);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(c.client_id, "dev-1");
        assert_eq!(c.username.as_deref(), Some("devA"));
        assert_eq!(c.password.as_deref(), Some(&b"secret"[..]));
        let will = c.will.clone().unwrap();
        assert_eq!(will.qos, 1);
        assert_eq!(will.topic, "veil/v1/dev/dev-1/status");
        assert!(!format!("{c:?}").contains("secret"));

        let up = Connect::encode_for_upstream(&c, "internal", b"token").unwrap();
        let again = Connect::decode(frame_of(&up).body()).unwrap();
        assert_eq!(again.username.as_deref(), Some("internal"));
        assert_eq!(again.password.as_deref(), Some(&b"token"[..]));
        assert_eq!(again.will, c.will);
        assert_eq!(again.client_id, c.client_id);
        assert_eq!(again.properties, vec![0x11, 0, 0, 0, 30]);
    }

    #[test]
    fn connect_rejects_bad_input_with_reasons() {
        let good = v5_connect_bytes();
        // Every truncation of the body is an error, never a panic.
        let body = frame_of(&good).body().to_vec();
        for cut in 0..body.len() {
            assert!(Connect::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut v3 = Vec::new();
        put_binary(&mut v3, b"MQIsdp");
        v3.extend_from_slice(&[3, 0x02, 0, 60]);
        put_binary(&mut v3, b"c");
        assert!(matches!(
            Connect::decode(&v3),
            Err(CodecError::UnsupportedProtocol { level: 3, .. })
        ));
        let mut reserved = body.clone();
        reserved[7] |= 0x01;
        assert_eq!(
            Connect::decode(&reserved),
            Err(CodecError::Malformed("CONNECT reserved flag set"))
        );
    }

    #[test]
    fn publish_headers_are_read_for_both_versions() {
        let mut body = Vec::new();
        put_binary(&mut body, b"a/b");
        body.extend_from_slice(&7u16.to_be_bytes());
        body.extend_from_slice(b"payload");
        let p = PublishHeader::decode(Version::V4, 0x03, &body).unwrap();
        assert_eq!(
            p,
            PublishHeader {
                qos: 1,
                retain: true,
                topic: "a/b",
                pkid: Some(7),
                topic_alias: None
            }
        );
        let mut body5 = Vec::new();
        put_binary(&mut body5, b"");
        put_properties(&mut body5, &[0x23, 0, 3]);
        let p = PublishHeader::decode(Version::V5, 0x00, &body5).unwrap();
        assert_eq!(p.topic_alias, Some(3));
        assert!(PublishHeader::decode(Version::V4, 0x06, &body).is_err());
        assert!(PublishHeader::decode(Version::V4, 0x02, &[0, 1, b'a', 0, 0]).is_err());
        let mut bad_props = Vec::new();
        put_binary(&mut bad_props, b"t");
        put_properties(&mut bad_props, &[0x7f, 1]);
        assert_eq!(
            PublishHeader::decode(Version::V5, 0, &bad_props),
            Err(CodecError::UnknownProperty(0x7f))
        );
    }

    #[test]
    fn subscribe_and_suback_round_trip() {
        let s = Subscribe {
            pkid: 9,
            properties: vec![0x0B, 5],
            filters: vec![("a/+".into(), 1), ("$share/g/b/#".into(), 0)],
        };
        for v in [Version::V4, Version::V5] {
            let bytes = s.encode(v).unwrap();
            let f = frame_of(&bytes);
            assert_eq!((f.kind, f.flags), (SUBSCRIBE, 0x02));
            let back = Subscribe::decode(v, f.flags, f.body()).unwrap();
            assert_eq!(back.filters, s.filters);
            assert_eq!(back.pkid, 9);
        }
        let a = SubAck {
            pkid: 9,
            properties: vec![],
            codes: vec![1, 0x87],
        };
        let f = frame_of(&a.encode(Version::V5).unwrap());
        assert_eq!(SubAck::decode(Version::V5, f.body()).unwrap(), a);
        assert!(Subscribe::decode(Version::V4, 0x02, &[0, 1]).is_err());
        assert!(Subscribe::decode(Version::V4, 0x00, &[0, 1, 0, 1, b'a', 0]).is_err());
        assert!(Subscribe::decode(Version::V4, 0x02, &[0, 1, 0, 1, b'a', 3]).is_err());
    }

    #[test]
    fn connack_rewrite_drops_topic_alias_maximum() {
        let ack = ConnAck::decode(Version::V5, &[1, 0, 5, 0x22, 0x10, 0, 0x24, 1]).unwrap();
        let f = frame_of(
            &ack.encode_for_client(Version::V5, 0x0100_0400, None)
                .unwrap(),
        );
        assert_eq!(f.body(), &[1, 0, 7, 0x24, 1, 0x27, 1, 0, 4, 0][..]);
        let f = frame_of(
            &ack.encode_for_client(Version::V5, 0x0100_0400, Some("u-1"))
                .unwrap(),
        );
        assert_eq!(
            f.body(),
            &[
                1, 0, 13, 0x24, 1, 0x27, 1, 0, 4, 0, 0x12, 0, 3, b'u', b'-', b'1'
            ][..]
        );
        assert_eq!(
            encode_connack_refusal(Version::V4, connack::V4_NOT_AUTHORIZED).as_ref(),
            &[0x20, 2, 0, 5]
        );
    }

    #[test]
    fn acks_encode_per_version() {
        assert_eq!(
            encode_ack(PUBACK, Version::V4, 0x0102, 0x87).as_ref(),
            &[0x40, 2, 1, 2]
        );
        assert_eq!(
            encode_ack(PUBACK, Version::V5, 0x0102, 0x87).as_ref(),
            &[0x40, 4, 1, 2, 0x87, 0]
        );
        assert_eq!(
            encode_ack(PUBREL, Version::V4, 1, 0).as_ref(),
            &[0x62, 2, 0, 1]
        );
        assert_eq!(encode_disconnect_v5(0x87).as_ref(), &[0xE0, 2, 0x87, 0]);
    }

    #[tokio::test]
    async fn frame_reader_handles_split_reads_and_eof() {
        let (mut tx, rx) = tokio::io::duplex(4);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            tx.write_all(&[0x30, 0x06, 0x00, 0x01, b't', 1, 2, 3, 0xC0, 0x00])
                .await
                .unwrap();
        });
        let mut reader = FrameReader::new(rx, 1024);
        let p = reader.next().await.unwrap().unwrap();
        assert_eq!(p.raw().len(), 8);
        assert_eq!(reader.next().await.unwrap().unwrap().kind, PINGREQ);
        writer.await.unwrap();
        assert!(reader.next().await.unwrap().is_none());

        let (mut tx, rx) = tokio::io::duplex(64);
        {
            use tokio::io::AsyncWriteExt as _;
            tx.write_all(&[0x30, 0x06, 0x00]).await.unwrap();
        }
        drop(tx);
        let mut reader = FrameReader::new(rx, 1024);
        assert!(matches!(
            reader.next().await,
            Err(ReadError::Codec(CodecError::TruncatedStream))
        ));
    }
}
