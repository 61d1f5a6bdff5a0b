//! The compact encoding of the messages on a device's own topics: frames,
//! results, acknowledgements and refusals. A device pays for every byte it
//! sends and receives, and the topic names the device already, so these
//! messages carry no name and no length that the model implies:
//!
//! `version (1 byte) ‖ kind (1) ‖ session id (16) ‖ counter (LEB128) ‖ body`
//!
//! - frame: the acknowledged counters (a LEB128 count of at most
//!   [`MAX_ACKS`], then each as LEB128 `t − ack`, so `ack < t`), then the
//!   packed values to the end;
//! - result: the packed values to the end;
//! - ack, sync: nothing;
//! - refusal: the code (1 byte), then its detail (UTF-8) to the end.
//!
//! Everything else (session messages, the servers' traffic) is a bincode
//! [`Envelope`] with the device's name.

use crate::error::{DecodeError, ProtocolError, Result};
use crate::messages::{
    Body, Envelope, Frame, FrameResult, PROTOCOL_VERSION, RejectCode, check_device_name,
};
use crate::prf::SessionId;

/// Most acknowledgements one frame carries; the rest wait for the next
/// frame or go on their own.
pub const MAX_ACKS: usize = 64;

/// Longest refusal detail accepted.
pub const MAX_DETAIL: usize = 4096;

/// The longest header: version, kind, session id, a 10-byte counter.
pub(crate) const HEADER_MAX: usize = 1 + 1 + 16 + 10;

/// What a device-topic message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Frame = 1,
    Result = 2,
    Ack = 3,
    Sync = 4,
    Reject = 5,
}

impl Kind {
    /// The [`Body::kind`] of messages of this kind.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Frame => "frame",
            Kind::Result => "result",
            Kind::Ack => "ack",
            Kind::Sync => "sync",
            Kind::Reject => "reject",
        }
    }

    fn of(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Frame,
            2 => Kind::Result,
            3 => Kind::Ack,
            4 => Kind::Sync,
            5 => Kind::Reject,
            _ => return None,
        })
    }
}

const CODES: [RejectCode; 8] = [
    RejectCode::Malformed,
    RejectCode::Version,
    RejectCode::UnknownSession,
    RejectCode::WrongDevice,
    RejectCode::Replay,
    RejectCode::Completed,
    RejectCode::OutOfOrder,
    RejectCode::Refused,
];

fn version_byte() -> u8 {
    u8::try_from(PROTOCOL_VERSION).unwrap_or(u8::MAX)
}

#[inline]
// LEB128: each byte carries the low 7 bits of what is left; dropping the
// rest in `as u8` is the encoding.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The header every device-topic message starts with.
#[inline]
pub(crate) fn write_header(out: &mut Vec<u8>, kind: Kind, sid: &SessionId, t: u64) {
    out.push(version_byte());
    out.push(kind as u8);
    out.extend_from_slice(&sid.0);
    write_varint(out, t);
}

/// A frame's acknowledgements, after its header.
pub(crate) fn write_acks(out: &mut Vec<u8>, t: u64, acks: &[u64]) -> Result<()> {
    if acks.len() > MAX_ACKS {
        return Err(ProtocolError::TooLarge {
            what: "acknowledgements on one frame",
            limit: MAX_ACKS as u64,
            got: acks.len() as u64,
        });
    }
    write_varint(out, acks.len() as u64);
    for ack in acks {
        if *ack >= t {
            return Err(ProtocolError::AckNotEarlier {
                frame: t,
                ack: *ack,
            });
        }
        write_varint(out, t - ack);
    }
    Ok(())
}

/// Reads what a device-topic message holds, in order.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8> {
        let (first, rest) = self.bytes.split_first().ok_or(DecodeError::Truncated)?;
        self.bytes = rest;
        Ok(*first)
    }

    /// A minimal LEB128 encoding of a u64.
    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.byte()?;
            let part = u64::from(byte & 0x7f);
            if i == 9 && part > 1 {
                break;
            }
            value |= part << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    return Err(DecodeError::OverlongVarint.into());
                }
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow.into())
    }

    pub(crate) fn rest(self) -> &'a [u8] {
        self.bytes
    }

    fn end(self) -> Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.bytes.len()).into())
        }
    }
}

/// Version, kind, session and counter of a device-topic message, and its
/// body's bytes.
pub(crate) fn read_header(bytes: &[u8]) -> Result<(Kind, SessionId, u64, Reader<'_>)> {
    if bytes.len() > crate::codec::MAX_MESSAGE_BYTES {
        return Err(crate::codec::too_large(bytes.len()));
    }
    let mut r = Reader { bytes };
    let version = r.byte()?;
    if u16::from(version) != PROTOCOL_VERSION {
        return Err(ProtocolError::Version {
            got: u16::from(version),
            supported: PROTOCOL_VERSION,
        });
    }
    let kind = r.byte()?;
    let kind = Kind::of(kind).ok_or(DecodeError::UnknownKind(kind))?;
    let (sid, rest) = r
        .bytes
        .split_first_chunk::<16>()
        .ok_or(DecodeError::Truncated)?;
    r.bytes = rest;
    let t = r.varint()?;
    Ok((kind, SessionId(*sid), t, r))
}

/// Encodes an envelope for a device topic; refuses bodies that never
/// travel there.
pub fn encode(envelope: &Envelope, out: &mut Vec<u8>) -> Result<()> {
    let (sid, t) = (&envelope.sid, envelope.t);
    match &envelope.body {
        Body::Frame(frame) => {
            write_header(out, Kind::Frame, sid, t);
            write_acks(out, t, &frame.acks)?;
            out.extend_from_slice(&frame.values);
        }
        Body::Result(result) => {
            write_header(out, Kind::Result, sid, t);
            out.extend_from_slice(&result.values);
        }
        Body::Ack => write_header(out, Kind::Ack, sid, t),
        Body::Sync => write_header(out, Kind::Sync, sid, t),
        Body::Reject { code, detail } => {
            if detail.len() > MAX_DETAIL {
                return Err(ProtocolError::TooLarge {
                    what: "bytes of refusal detail",
                    limit: MAX_DETAIL as u64,
                    got: detail.len() as u64,
                });
            }
            write_header(out, Kind::Reject, sid, t);
            let index = CODES
                .iter()
                .position(|c| c == code)
                .and_then(|i| u8::try_from(i).ok())
                .unwrap_or(0);
            out.push(index);
            out.extend_from_slice(detail.as_bytes());
        }
        other => {
            return Err(ProtocolError::NotOnDeviceTopic(other.kind()));
        }
    }
    Ok(())
}

/// Decodes a device-topic message of `device` (the name its topic gives).
pub fn decode(device: &str, bytes: &[u8]) -> Result<Envelope> {
    check_device_name(device)?;
    let (kind, sid, t, mut r) = read_header(bytes)?;
    let body = match kind {
        Kind::Frame => {
            let count = r.varint()?;
            let count = usize::try_from(count)
                .ok()
                .filter(|n| *n <= MAX_ACKS)
                .ok_or(ProtocolError::TooLarge {
                    what: "acknowledgements on one frame",
                    limit: MAX_ACKS as u64,
                    got: count,
                })?;
            let mut acks = Vec::with_capacity(count);
            for _ in 0..count {
                let back = r.varint()?;
                let ack = t
                    .checked_sub(back)
                    .filter(|_| back > 0)
                    .ok_or(DecodeError::AckNotEarlier { frame: t, back })?;
                acks.push(ack);
            }
            Body::Frame(Frame {
                acks,
                values: r.rest().to_vec(),
            })
        }
        Kind::Result => Body::Result(FrameResult {
            values: r.rest().to_vec(),
        }),
        Kind::Ack => {
            r.end()?;
            Body::Ack
        }
        Kind::Sync => {
            r.end()?;
            Body::Sync
        }
        Kind::Reject => {
            let index = r.byte()?;
            let code = CODES
                .get(usize::from(index))
                .copied()
                .ok_or(DecodeError::UnknownRejectCode(index))?;
            let detail = r.rest();
            if detail.len() > MAX_DETAIL {
                return Err(ProtocolError::TooLarge {
                    what: "bytes of refusal detail",
                    limit: MAX_DETAIL as u64,
                    got: detail.len() as u64,
                });
            }
            let detail = std::str::from_utf8(detail).map_err(|_| DecodeError::DetailNotUtf8)?;
            Body::Reject {
                code,
                detail: detail.to_string(),
            }
        }
    };
    Ok(Envelope {
        version: PROTOCOL_VERSION,
        device: device.to_string(),
        sid,
        t,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: Body, t: u64) -> Vec<u8> {
        let env = Envelope::new("dev-1", SessionId([7; 16]), t, body);
        let mut bytes = Vec::new();
        encode(&env, &mut bytes).expect("encodes");
        assert_eq!(decode("dev-1", &bytes).expect("decodes"), env);
        bytes
    }

    #[test]
    fn messages_round_trip_in_few_bytes() {
        let frame = Frame {
            acks: vec![3, 9],
            values: vec![1, 2, 3],
        };
        // 1 + 1 + 16 + 1 (t) + 1 (count) + 2 (deltas) + 3.
        assert_eq!(round_trip(Body::Frame(frame), 10).len(), 25);
        let result = FrameResult { values: vec![9; 5] };
        assert_eq!(
            round_trip(Body::Result(result), 300).len(),
            1 + 1 + 16 + 2 + 5
        );
        assert_eq!(round_trip(Body::Ack, 0).len(), 19);
        round_trip(Body::Sync, u64::MAX);
        for code in CODES {
            round_trip(
                Body::Reject {
                    code,
                    detail: "why ✓".into(),
                },
                5,
            );
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = round_trip(Body::Ack, 1);
        let mut old = good.clone();
        old[0] = 2;
        assert!(matches!(
            decode("d", &old),
            Err(ProtocolError::Version { got: 2, .. })
        ));
        let mut kind = good.clone();
        kind[1] = 9;
        assert!(decode("d", &kind).is_err());
        assert!(decode("d", &good[..10]).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode("d", &trailing).is_err());
        assert!(decode("no/slash", &good).is_err());
        // Overlong and oversized counters.
        let mut overlong = good[..18].to_vec();
        overlong.extend_from_slice(&[0x81, 0x00]);
        assert!(decode("d", &overlong).is_err());
        let mut huge = good[..18].to_vec();
        huge.extend_from_slice(&[0xff; 9]);
        huge.push(0x02);
        assert!(decode("d", &huge).is_err());
        // An acknowledgement of the frame itself or a later counter.
        let env = Envelope::new(
            "d",
            SessionId([1; 16]),
            4,
            Body::Frame(Frame {
                acks: vec![4],
                values: vec![],
            }),
        );
        assert!(encode(&env, &mut Vec::new()).is_err());
        let mut bytes = Vec::new();
        write_header(&mut bytes, Kind::Frame, &SessionId([1; 16]), 4);
        bytes.extend_from_slice(&[1, 0]);
        assert!(decode("d", &bytes).is_err());
        // Too many acknowledgements.
        let mut bytes = Vec::new();
        write_header(&mut bytes, Kind::Frame, &SessionId([1; 16]), 4);
        write_varint(&mut bytes, MAX_ACKS as u64 + 1);
        assert!(decode("d", &bytes).is_err());
        // Bodies that belong to the servers' topics.
        let round = Envelope::new("d", SessionId([1; 16]), 4, Body::MaskRequest { count: 1 });
        assert!(encode(&round, &mut Vec::new()).is_err());
    }
}
