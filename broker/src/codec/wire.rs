//! Body-level primitives: a bounds-checked cursor, v5 properties, and the
//! encoders of lengths, strings and whole packets.

use super::*;

/// Bounds-checked reader over a packet body.
pub(super) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(data: &'a [u8], what: &'static str) -> Self {
        Cursor { data, pos: 0, what }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
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

    pub(super) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    pub(super) fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([
            b.first().copied().unwrap_or_default(),
            b.get(1).copied().unwrap_or_default(),
        ]))
    }

    pub(super) fn varint(&mut self) -> Result<usize, CodecError> {
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

    pub(super) fn binary(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    pub(super) fn string(&mut self) -> Result<&'a str, CodecError> {
        let bytes = self.binary()?;
        std::str::from_utf8(bytes).map_err(|_| CodecError::Utf8(self.what))
    }

    /// A v5 property block: returns its contents (without the length).
    pub(super) fn properties(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.varint()?;
        let props = self.take(len)?;
        // Validate now so later lookups cannot fail halfway.
        for_each_property(props, |_, _| true)?;
        Ok(props)
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        self.pos = self.data.len();
        rest
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// Walks a v5 property block, calling `visit` with each property's
/// identifier and the byte range of the whole property until it returns
/// false. Nothing is collected: a block of one-byte properties filling a
/// 16 MiB packet would otherwise become a list of 8 million ranges.
pub(super) fn for_each_property(
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
pub(super) fn find_property(props: &[u8], id: u8) -> Option<&[u8]> {
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
pub(super) fn without_property(props: &[u8], id: u8) -> Vec<u8> {
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

pub(super) fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let mut byte = u8::try_from(value % 128).unwrap_or_default();
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

pub(super) fn put_binary(out: &mut Vec<u8>, data: &[u8]) {
    // Callers only pass data that came out of a u16-length field or
    // short gate-generated strings.
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data.get(..usize::from(len)).unwrap_or_default());
}

pub(super) fn put_properties(out: &mut Vec<u8>, props: &[u8]) {
    put_varint(out, props.len());
    out.extend_from_slice(props);
}

/// Wraps a body in a fixed header.
pub(super) fn packet(kind: u8, flags: u8, body: &[u8]) -> Result<Bytes, CodecError> {
    if body.len() > MAX_REMAINING_LEN {
        return Err(CodecError::Malformed("packet too large to encode"));
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push((kind << 4) | (flags & 0x0f));
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    Ok(Bytes::from(out))
}
