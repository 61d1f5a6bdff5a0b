//! Entry points for the fuzz targets in `fuzz/` and for the regression
//! tests that replay their findings on stable. Each takes arbitrary bytes
//! and must return without panicking; where something decodes, what the
//! gate would re-encode from it must decode to the same thing. Not part of
//! the broker's API.

use bytes::BytesMut;

use crate::acl::{AclFile, Identity};
use crate::codec::{self, ConnAck, Connect, Frame, PublishHeader, SubAck, Subscribe, Version};
use crate::identity;
use crate::passwd::PasswordFile;
use crate::topic;

/// Packet limit for the framing target: small, so that the fuzzer also
/// reaches the too-large refusal.
const MAX_PACKET: usize = 64 * 1024;

/// A client's byte stream as the gate's framing sees it: every frame split
/// off is decoded as the gate would decode it in either protocol version.
pub fn frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec::take_frame(&mut buf, MAX_PACKET) {
        if frame.raw().len() > MAX_PACKET {
            panic!("take_frame returned a frame above its limit");
        }
        for version in [Version::V4, Version::V5] {
            decode(version, &frame);
        }
    }
}

/// One packet body: the first byte picks the version, packet type and
/// flags; the rest is the body, decoded directly (no framing).
pub fn packet(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let version = if selector & 0x80 == 0 {
        Version::V4
    } else {
        Version::V5
    };
    let kind = (selector >> 3) & 0x0f;
    let flags = match selector & 0x07 {
        7 => 0x0f,
        f => f,
    };
    let Some(bytes) = framed(kind, flags, body) else {
        return;
    };
    let mut buf = BytesMut::from(&bytes[..]);
    if let Ok(Some(frame)) = codec::take_frame(&mut buf, usize::MAX) {
        decode(version, &frame);
    }
}

fn framed(kind: u8, flags: u8, body: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![(kind << 4) | flags];
    let mut len = body.len();
    if len > 268_435_455 {
        return None;
    }
    loop {
        let mut byte = u8::try_from(len % 128).unwrap_or_default();
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    Some(out)
}

fn reframe(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    match codec::take_frame(&mut buf, usize::MAX) {
        Ok(Some(frame)) if buf.is_empty() => frame,
        other => panic!("the gate encoded an unframeable packet: {other:?}"),
    }
}

fn decode(version: Version, frame: &Frame) {
    let body = frame.body();
    match frame.kind {
        codec::CONNECT => connect(body),
        codec::CONNACK => {
            if let Ok(ack) = ConnAck::decode(version, body) {
                for assigned in [None, Some("u-0123456789abcdef")] {
                    let Ok(bytes) = ack.encode_for_client(version, MAX_PACKET, assigned) else {
                        continue;
                    };
                    let again = ConnAck::decode(version, reframe(&bytes).body())
                        .expect("re-encoded CONNACK decodes");
                    assert_eq!(again.code, ack.code);
                    assert_eq!(again.session_present, ack.session_present);
                }
            }
        }
        codec::PUBLISH => {
            if let Ok(header) = PublishHeader::decode(version, frame.flags, body) {
                let _ = topic::validate_topic_name(header.topic);
            }
        }
        codec::SUBSCRIBE => {
            if let Ok(sub) = Subscribe::decode(version, frame.flags, body) {
                let bytes = sub.encode(version).expect("a decoded SUBSCRIBE re-encodes");
                let again = reframe(&bytes);
                let again = Subscribe::decode(version, again.flags, again.body())
                    .expect("re-encoded SUBSCRIBE decodes");
                assert_eq!(again, sub);
                for (filter, _) in &sub.filters {
                    let _ = topic::split_shared(filter);
                }
            }
        }
        codec::SUBACK => {
            if let Ok(ack) = SubAck::decode(version, body) {
                let bytes = ack.encode(version).expect("a decoded SUBACK re-encodes");
                let again = SubAck::decode(version, reframe(&bytes).body())
                    .expect("re-encoded SUBACK decodes");
                assert_eq!(again, ack);
            }
        }
        _ => {
            let _ = codec::packet_id(body);
        }
    }
}

fn connect(body: &[u8]) {
    let Ok(c) = Connect::decode(body) else {
        return;
    };
    let _ = c.wants_enhanced_auth();
    let _ = identity::check(c.username.as_deref(), &c.client_id, None);
    // The gate always sends credentials upstream and may assign an id.
    let Ok(bytes) = c.encode_for_upstream("upstream-user", b"upstream-password") else {
        return;
    };
    let again = Connect::decode(reframe(&bytes).body()).expect("re-encoded CONNECT decodes");
    assert_eq!(again.version, c.version);
    assert_eq!(again.client_id, c.client_id);
    assert_eq!(again.clean, c.clean);
    assert_eq!(again.keep_alive, c.keep_alive);
    assert_eq!(again.will, c.will);
    assert_eq!(again.username.as_deref(), Some("upstream-user"));
}

/// An ACL file and a client: the first line is `<username> <client id>`
/// (`-` as username: anonymous), the rest is the file. Every decision on
/// topics taken from the file itself must be made without panicking, and
/// must agree with the rules' basic laws.
pub fn acl(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, file) = text.split_once('\n').unwrap_or((text, ""));
    let (user, client_id) = first.split_once(' ').unwrap_or((first, ""));
    let who = Identity {
        username: (user != "-").then(|| user.to_string()),
        client_id: client_id.to_string(),
    };
    let Ok(parsed) = AclFile::parse(file) else {
        return;
    };
    let rules = parsed.for_client(&who);
    for line in file.lines().take(64) {
        let Some(candidate) = line.rsplit(' ').next() else {
            continue;
        };
        let _ = rules.can_publish(candidate);
        let read = rules.can_read(candidate);
        let subscribe = rules.can_subscribe(candidate);
        let plain_name =
            topic::validate_topic_name(candidate).is_ok() && !candidate.starts_with("$share/");
        if subscribe && plain_name {
            assert!(
                read,
                "subscribing to {candidate:?} is allowed but reading it is not"
            );
        }
    }
}

/// A password file, and the identity rules applied to its own users.
pub fn passwords(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = PasswordFile::parse(text) else {
        return;
    };
    for line in text.lines().take(64) {
        let Some((user, _)) = line.split_once(':') else {
            continue;
        };
        let _ = identity::owner(user, &file);
        let _ = identity::check(Some(user), user, Some(&file));
        let _ = identity::check(None, user, Some(&file));
    }
}

/// Topic names and filters: two strings separated by a NUL byte, run
/// through every relation; coverage must imply matching.
pub fn topics(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = text.split_once('\0').unwrap_or((text, ""));
    let _ = topic::split_shared(a);
    if topic::validate_filter(a).is_err() || topic::validate_filter(b).is_err() {
        return;
    }
    let covers = topic::covers(a, b);
    let intersects = topic::intersects(a, b);
    if covers && topic::validate_topic_name(b).is_ok() {
        assert!(
            topic::matches(a, b),
            "{a:?} covers {b:?} but does not match it"
        );
    }
    if topic::validate_topic_name(b).is_ok() && topic::matches(a, b) {
        assert!(intersects, "{a:?} matches {b:?} but does not intersect it");
    }
}

/// A client certificate (DER) as the gate reads its username; a name it
/// accepts must pass the username rules.
pub fn certificate(data: &[u8]) {
    if let Ok(name) = crate::cert::certificate_username(data)
        && (name.is_empty() || name.contains(['+', '#', '/']))
    {
        panic!("certificate username {name:?} breaks the username rules");
    }
}
