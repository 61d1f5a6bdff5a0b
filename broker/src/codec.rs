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
const MAX_REMAINING_LEN: usize = 268_435_455;

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

/// One whole packet: its fixed header's type and flags and its raw bytes.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    raw: Bytes,
    body_start: usize,
}

impl Frame {
    /// The variable header and payload (everything after the fixed header).
    pub fn body(&self) -> &[u8] {
        self.raw.get(self.body_start..).unwrap_or_default()
    }

    /// The packet exactly as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

/// Decodes the fixed header at the front of `buf`: `Some((kind_and_flags,
/// header_len, remaining_len))` once enough bytes are there.
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, CodecError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((first, 2 + i, value)));
        }
    }
    Err(CodecError::BadRemainingLength)
}

/// Splits one complete frame off the front of `buf`, if there is one.
pub fn take_frame(buf: &mut BytesMut, max_packet: usize) -> Result<Option<Frame>, CodecError> {
    let Some((first, header_len, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header_len + remaining;
    if size > max_packet {
        return Err(CodecError::TooLarge {
            size,
            limit: max_packet,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let raw = buf.split_to(size).freeze();
    Ok(Some(Frame {
        kind: first >> 4,
        flags: first & 0x0f,
        raw,
        body_start: header_len,
    }))
}

/// Bytes still missing for the frame at the front of `buf` (0 if unknown).
fn missing(buf: &[u8]) -> usize {
    match fixed_header(buf) {
        Ok(Some((_, h, r))) => (h + r).saturating_sub(buf.len()),
        _ => 0,
    }
}

/// Error from reading frames off a byte stream.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads whole frames from a stream. `next` is cancel-safe: partial data
/// stays in the buffer, so it can sit in a `select!`.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_packet: usize,
    /// A socket to acknowledge at once after every read (see
    /// [`FrameReader::acknowledge_at_once`]).
    quickack: Option<std::os::fd::RawFd>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_packet: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            max_packet,
            quickack: None,
        }
    }

    /// Acknowledges data on `socket` as soon as it is read. rumqttd does not
    /// disable Nagle's algorithm on its sockets, so when it writes a packet
    /// in pieces the later pieces wait for the acknowledgement of the
    /// first, which Linux delays by up to 40 ms: measured, 120 ms of a
    /// 150 ms round trip through the demo. Quick acknowledgements remove the
    /// wait. The flag does not stick, so it is set again after every read.
    pub fn acknowledge_at_once(mut self, socket: std::os::fd::RawFd) -> Self {
        self.quickack = Some(socket);
        self
    }

    fn quickack(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.quickack {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads `on` for its size; a stale or
            // non-TCP descriptor only makes it fail, which is harmless.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    /// Is a whole frame already buffered (so `next` will not wait)?
    pub fn has_frame(&self) -> bool {
        matches!(fixed_header(&self.buf), Ok(Some((_, h, r))) if self.buf.len() >= h + r)
    }

    /// The next frame, or `None` when the peer closed between packets.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = take_frame(&mut self.buf, self.max_packet)? {
                return Ok(Some(frame));
            }
            // Grow towards the announced size in bounded steps so that a
            // peer announcing a large packet cannot make us allocate it all
            // before sending it.
            let want = missing(&self.buf).clamp(8 * 1024, 1024 * 1024);
            if self.buf.capacity() - self.buf.len() < want {
                self.buf.reserve(want);
            }
            let read = self.inner.read_buf(&mut self.buf).await?;
            self.quickack();
            if read == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(CodecError::TruncatedStream.into())
                };
            }
        }
    }
}

/// Bounds-checked reader over a packet body.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8], what: &'static str) -> Self {
        Cursor { data, pos: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(CodecError::Truncated(self.what))?;
        let slice = self
            .data
            .get(self.pos..end)
            .ok_or(CodecError::Truncated(self.what))?;
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([
            b.first().copied().unwrap_or_default(),
            b.get(1).copied().unwrap_or_default(),
        ]))
    }

    fn varint(&mut self) -> Result<usize, CodecError> {
        let mut value = 0usize;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    fn binary(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    fn string(&mut self) -> Result<&'a str, CodecError> {
        let bytes = self.binary()?;
        std::str::from_utf8(bytes).map_err(|_| CodecError::Utf8(self.what))
    }

    /// A v5 property block: returns its contents (without the length).
    fn properties(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.varint()?;
        let props = self.take(len)?;
        // Validate now so later lookups cannot fail halfway.
        for_each_property(props, |_, _| true)?;
        Ok(props)
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        self.pos = self.data.len();
        rest
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// Walks a v5 property block, calling `visit` with each property's
/// identifier and the byte range of the whole property until it returns
/// false. Nothing is collected: a block of one-byte properties filling a
/// 16 MiB packet would otherwise become a list of 8 million ranges.
fn for_each_property(
    props: &[u8],
    mut visit: impl FnMut(u8, Range<usize>) -> bool,
) -> Result<(), CodecError> {
    let mut c = Cursor::new(props, "properties");
    while !c.is_empty() {
        let start = c.pos;
        let id = c.varint()?;
        let id = u8::try_from(id).map_err(|_| CodecError::Malformed("property identifier"))?;
        match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                c.take(1)?;
            }
            0x13 | 0x21 | 0x22 | 0x23 => {
                c.take(2)?;
            }
            0x02 | 0x11 | 0x18 | 0x27 => {
                c.take(4)?;
            }
            0x0B => {
                c.varint()?;
            }
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
                c.string()?;
            }
            0x09 | 0x16 => {
                c.binary()?;
            }
            0x26 => {
                c.string()?;
                c.string()?;
            }
            other => return Err(CodecError::UnknownProperty(other)),
        }
        if !visit(id, start..c.pos) {
            break;
        }
    }
    Ok(())
}

/// The value bytes of the first property `id` in a validated block.
fn find_property(props: &[u8], id: u8) -> Option<&[u8]> {
    let mut found = None;
    for_each_property(props, |i, range| {
        if i == id {
            found = Some(range);
        }
        found.is_none()
    })
    .ok()?;
    let range = found?;
    // Identifiers the gate looks up are all below 128: one byte.
    props.get(range.start + 1..range.end)
}

/// A property block with every property `id` removed.
fn without_property(props: &[u8], id: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(props.len());
    let walked = for_each_property(props, |i, range| {
        if i != id {
            out.extend_from_slice(props.get(range).unwrap_or_default());
        }
        true
    });
    match walked {
        Ok(()) => out,
        Err(_) => props.to_vec(),
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

fn put_binary(out: &mut Vec<u8>, data: &[u8]) {
    // Callers only pass data that came out of a u16-length field or
    // short gate-generated strings.
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data.get(..usize::from(len)).unwrap_or_default());
}

fn put_properties(out: &mut Vec<u8>, props: &[u8]) {
    put_varint(out, props.len());
    out.extend_from_slice(props);
}

/// Wraps a body in a fixed header.
fn packet(kind: u8, flags: u8, body: &[u8]) -> Result<Bytes, CodecError> {
    if body.len() > MAX_REMAINING_LEN {
        return Err(CodecError::Malformed("packet too large to encode"));
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push((kind << 4) | (flags & 0x0f));
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    Ok(Bytes::from(out))
}

/// The last-will part of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub qos: u8,
    pub retain: bool,
    pub properties: Vec<u8>,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A decoded CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub clean: bool,
    pub keep_alive: u16,
    pub properties: Vec<u8>,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("version", &self.version)
            .field("clean", &self.clean)
            .field("keep_alive", &self.keep_alive)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Connect {
    pub fn decode(body: &[u8]) -> Result<Connect, CodecError> {
        let mut c = Cursor::new(body, "CONNECT");
        let name = c.string()?;
        let level = c.u8()?;
        let version = match (name, level) {
            ("MQTT", 4) => Version::V4,
            ("MQTT", 5) => Version::V5,
            _ => {
                return Err(CodecError::UnsupportedProtocol {
                    name: name.to_string(),
                    level,
                });
            }
        };
        let flags = c.u8()?;
        if flags & 0x01 != 0 {
            return Err(CodecError::Malformed("CONNECT reserved flag set"));
        }
        let clean = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let has_password = flags & 0x40 != 0;
        let has_username = flags & 0x80 != 0;
        if will_qos > 2 {
            return Err(CodecError::Malformed("CONNECT will QoS 3"));
        }
        if !will_flag && (will_qos != 0 || will_retain) {
            return Err(CodecError::Malformed("CONNECT will flags without a will"));
        }
        if version == Version::V4 && has_password && !has_username {
            return Err(CodecError::Malformed("CONNECT password without username"));
        }
        let keep_alive = c.u16()?;
        let properties = match version {
            Version::V5 => c.properties()?.to_vec(),
            Version::V4 => Vec::new(),
        };
        let client_id = c.string()?.to_string();
        let will = if will_flag {
            let properties = match version {
                Version::V5 => c.properties()?.to_vec(),
                Version::V4 => Vec::new(),
            };
            let topic = c.string()?.to_string();
            let payload = c.binary()?.to_vec();
            Some(Will {
                qos: will_qos,
                retain: will_retain,
                properties,
                topic,
                payload,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(c.string()?.to_string())
        } else {
            None
        };
        let password = if has_password {
            Some(c.binary()?.to_vec())
        } else {
            None
        };
        if !c.is_empty() {
            return Err(CodecError::Malformed("CONNECT has trailing bytes"));
        }
        Ok(Connect {
            version,
            clean,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    /// Does the client ask for v5 enhanced authentication (AUTH exchange)?
    pub fn wants_enhanced_auth(&self) -> bool {
        find_property(&self.properties, PROP_AUTH_METHOD).is_some()
    }

    /// Encodes this CONNECT with other credentials and without a Topic Alias
    /// Maximum, so the broker behind the gate never aliases topics.
    pub fn encode_for_upstream(
        &self,
        username: &str,
        password: &[u8],
    ) -> Result<Bytes, CodecError> {
        let mut body = Vec::with_capacity(64 + self.client_id.len());
        put_binary(&mut body, b"MQTT");
        body.push(match self.version {
            Version::V4 => 4,
            Version::V5 => 5,
        });
        let mut flags = 0xC0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if self.version == Version::V5 {
            put_properties(
                &mut body,
                &without_property(&self.properties, PROP_TOPIC_ALIAS_MAX),
            );
        }
        put_binary(&mut body, self.client_id.as_bytes());
        if let Some(w) = &self.will {
            if self.version == Version::V5 {
                put_properties(&mut body, &w.properties);
            }
            put_binary(&mut body, w.topic.as_bytes());
            put_binary(&mut body, &w.payload);
        }
        put_binary(&mut body, username.as_bytes());
        put_binary(&mut body, password);
        packet(CONNECT, 0, &body)
    }
}

/// CONNACK return codes the gate sends itself.
pub mod connack {
    pub const V4_UNACCEPTABLE_PROTOCOL: u8 = 0x01;
    pub const V4_IDENTIFIER_REJECTED: u8 = 0x02;
    pub const V4_SERVER_UNAVAILABLE: u8 = 0x03;
    pub const V4_NOT_AUTHORIZED: u8 = 0x05;
    pub const V5_SERVER_UNAVAILABLE: u8 = 0x88;
    pub const V5_NOT_AUTHORIZED: u8 = 0x87;
    pub const V5_BAD_AUTH_METHOD: u8 = 0x8C;
    pub const V5_CLIENT_ID_NOT_VALID: u8 = 0x85;
}

/// A CONNACK refusing the connection.
pub fn encode_connack_refusal(version: Version, code: u8) -> Bytes {
    let body: &[u8] = match version {
        Version::V4 => &[0, code],
        Version::V5 => &[0, code, 0],
    };
    packet(CONNACK, 0, body).unwrap_or_default()
}

/// Decoded CONNACK from the broker behind the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: u8,
    pub properties: Vec<u8>,
}

impl ConnAck {
    pub fn decode(version: Version, body: &[u8]) -> Result<ConnAck, CodecError> {
        let mut c = Cursor::new(body, "CONNACK");
        let flags = c.u8()?;
        let code = c.u8()?;
        let properties = match version {
            Version::V5 if !c.is_empty() => c.properties()?.to_vec(),
            _ => Vec::new(),
        };
        Ok(ConnAck {
            session_present: flags & 0x01 != 0,
            code,
            properties,
        })
    }

    /// Re-encodes for the client. In v5 the Topic Alias Maximum is removed
    /// (meaning 0): the gate checks every PUBLISH by its topic and so does
    /// not accept aliases. The gate's packet limit is announced as the
    /// Maximum Packet Size, and the client id the gate assigned, if any.
    pub fn encode_for_client(
        &self,
        version: Version,
        max_packet: usize,
        assigned_client_id: Option<&str>,
    ) -> Result<Bytes, CodecError> {
        let mut body = vec![u8::from(self.session_present), self.code];
        if version == Version::V5 {
            let mut props = without_property(
                &without_property(
                    &without_property(&self.properties, PROP_TOPIC_ALIAS_MAX),
                    PROP_MAX_PACKET_SIZE,
                ),
                PROP_ASSIGNED_CLIENT_ID,
            );
            props.push(PROP_MAX_PACKET_SIZE);
            let limit = u32::try_from(max_packet).unwrap_or(u32::MAX);
            props.extend_from_slice(&limit.to_be_bytes());
            if let Some(id) = assigned_client_id {
                props.push(PROP_ASSIGNED_CLIENT_ID);
                put_binary(&mut props, id.as_bytes());
            }
            put_properties(&mut body, &props);
        }
        packet(CONNACK, 0, &body)
    }
}

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

/// Most filters one SUBSCRIBE may carry; veil's clients send one or two.
pub const MAX_SUBSCRIBE_FILTERS: usize = 1024;

/// A decoded SUBSCRIBE: filters with their option bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub properties: Vec<u8>,
    pub filters: Vec<(String, u8)>,
}

impl Subscribe {
    pub fn decode(version: Version, flags: u8, body: &[u8]) -> Result<Subscribe, CodecError> {
        if flags != 0x02 {
            return Err(CodecError::Malformed("SUBSCRIBE fixed header flags"));
        }
        let mut c = Cursor::new(body, "SUBSCRIBE");
        let pkid = c.u16()?;
        if pkid == 0 {
            return Err(CodecError::Malformed("SUBSCRIBE with packet identifier 0"));
        }
        let properties = match version {
            Version::V5 => c.properties()?.to_vec(),
            Version::V4 => Vec::new(),
        };
        let mut filters = Vec::new();
        while !c.is_empty() {
            // Three bytes on the wire make a 32-byte entry here: a 16 MiB
            // SUBSCRIBE of empty filters held 180 MiB while it was decoded.
            if filters.len() >= MAX_SUBSCRIBE_FILTERS {
                return Err(CodecError::Malformed("SUBSCRIBE with too many filters"));
            }
            let filter = c.string()?.to_string();
            if filter.is_empty() {
                return Err(CodecError::Malformed("SUBSCRIBE with an empty filter"));
            }
            let options = c.u8()?;
            if options & 0x03 == 3 {
                return Err(CodecError::Malformed("SUBSCRIBE with QoS 3"));
            }
            filters.push((filter, options));
        }
        if filters.is_empty() {
            return Err(CodecError::Malformed("SUBSCRIBE without filters"));
        }
        Ok(Subscribe {
            pkid,
            properties,
            filters,
        })
    }

    pub fn encode(&self, version: Version) -> Result<Bytes, CodecError> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.pkid.to_be_bytes());
        if version == Version::V5 {
            put_properties(&mut body, &self.properties);
        }
        for (filter, options) in &self.filters {
            put_binary(&mut body, filter.as_bytes());
            body.push(*options);
        }
        packet(SUBSCRIBE, 0x02, &body)
    }
}

/// A decoded SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub properties: Vec<u8>,
    pub codes: Vec<u8>,
}

impl SubAck {
    pub fn decode(version: Version, body: &[u8]) -> Result<SubAck, CodecError> {
        let mut c = Cursor::new(body, "SUBACK");
        let pkid = c.u16()?;
        let properties = match version {
            Version::V5 => c.properties()?.to_vec(),
            Version::V4 => Vec::new(),
        };
        Ok(SubAck {
            pkid,
            properties,
            codes: c.rest().to_vec(),
        })
    }

    pub fn encode(&self, version: Version) -> Result<Bytes, CodecError> {
        let mut body = Vec::with_capacity(4 + self.codes.len());
        body.extend_from_slice(&self.pkid.to_be_bytes());
        if version == Version::V5 {
            put_properties(&mut body, &self.properties);
        }
        body.extend_from_slice(&self.codes);
        packet(SUBACK, 0, &body)
    }
}

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
