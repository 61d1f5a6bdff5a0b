//! Framing: the fixed header, and whole packets cut from a byte stream.

use super::*;

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
pub(super) fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, CodecError> {
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
pub(super) fn missing(buf: &[u8]) -> usize {
    match fixed_header(buf) {
        Ok(Some((_, h, r))) => (h + r).saturating_sub(buf.len()),
        _ => 0,
    }
}
