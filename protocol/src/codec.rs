//! Wire encoding: bincode 2 with a size limit checked before allocation,
//! and bit packing of the unsigned fields of frames and results (a frame
//! costs each feature's own width, not a whole machine word).

use crate::error::{DecodeError, ProtocolError, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest message any party accepts: a round of a large convolution
/// with packing off stays below it; anything bigger is refused unread.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes a whole message with bincode under the size limit.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config()).map_err(ProtocolError::Encode)
}

/// Decodes a value from the start of `bytes`, ignoring what follows: a
/// message's head without its body.
pub fn decode_head<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(value, _)| value)
        .map_err(ProtocolError::from)
}

/// The refusal of a message above [`MAX_MESSAGE_BYTES`], before it is read.
pub(crate) fn too_large(bytes: usize) -> ProtocolError {
    ProtocolError::TooLarge {
        what: "message bytes",
        limit: MAX_MESSAGE_BYTES as u64,
        got: bytes as u64,
    }
}

/// Decodes a whole message: at most [`MAX_MESSAGE_BYTES`], checked before
/// anything is read, and no byte left over.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(too_large(bytes.len()));
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - used).into());
    }
    Ok(value)
}

/// The low `bits` (≤ 128) bits set.
pub(crate) fn low_mask(bits: u32) -> u128 {
    match bits {
        0 => 0,
        128.. => u128::MAX,
        b => (1u128 << b) - 1,
    }
}

/// Appends unsigned bit fields of up to 128 bits to a byte vector, least
/// significant bit first, a whole 64-bit word at a time (a frame of 784
/// pixels is one pass of word writes).
pub struct FieldWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Bits not yet written, `filled` of them (always fewer than 64).
    acc: u64,
    filled: u32,
}

impl<'a> FieldWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> FieldWriter<'a> {
        FieldWriter {
            out,
            acc: 0,
            filled: 0,
        }
    }

    /// Writes the low `bits` (≤ 128) bits of `value`.
    #[inline]
    // Splits the value into its two 64-bit limbs: dropping the high half
    // of each `as u64` is the point.
    #[allow(clippy::cast_possible_truncation)]
    pub fn put(&mut self, value: u128, bits: u32) {
        let value = value & low_mask(bits);
        if bits <= 64 {
            self.put64(value as u64, bits);
        } else {
            self.put64(value as u64, 64);
            self.put64((value >> 64) as u64, bits - 64);
        }
    }

    #[inline]
    fn put64(&mut self, value: u64, bits: u32) {
        let total = self.filled + bits;
        if total < 64 {
            self.acc |= value << self.filled;
            self.filled = total;
            return;
        }
        let word = if self.filled == 0 {
            value
        } else {
            self.acc | (value << self.filled)
        };
        self.out.extend_from_slice(&word.to_le_bytes());
        self.acc = if self.filled == 0 {
            0
        } else {
            value >> (64 - self.filled)
        };
        self.filled = total - 64;
    }

    /// Writes the last partial word (whole bytes, zero-padded).
    pub fn finish(self) {
        let bytes = self.filled.div_ceil(8) as usize;
        self.out
            .extend_from_slice(&self.acc.to_le_bytes()[..bytes.min(8)]);
    }
}

/// Reads fields written by [`FieldWriter`]; missing bytes read as zero
/// (callers check the length first).
pub struct FieldReader<'a> {
    bytes: &'a [u8],
    next: usize,
    acc: u128,
    filled: u32,
}

impl<'a> FieldReader<'a> {
    /// A reader from the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> FieldReader<'a> {
        FieldReader {
            bytes,
            next: 0,
            acc: 0,
            filled: 0,
        }
    }

    /// Reads a field of `bits` (≤ 128) bits.
    #[inline]
    pub fn get(&mut self, bits: u32) -> u128 {
        if bits <= 64 {
            u128::from(self.get64(bits))
        } else {
            let low = u128::from(self.get64(64));
            low | (u128::from(self.get64(bits - 64)) << 64)
        }
    }

    #[inline]
    // `bits` ≤ 64 bits of the accumulator, masked first: the cast drops
    // only zeros.
    #[allow(clippy::cast_possible_truncation)]
    fn get64(&mut self, bits: u32) -> u64 {
        while self.filled < bits {
            let byte = self.bytes.get(self.next).copied().unwrap_or(0);
            self.next += 1;
            self.acc |= u128::from(byte) << self.filled;
            self.filled += 8;
        }
        let value = (self.acc & low_mask(bits)) as u64;
        self.acc >>= bits;
        self.filled -= bits;
        value
    }
}

/// Bytes that fields of these widths take.
pub fn packed_len(bits: impl IntoIterator<Item = u32>) -> usize {
    let total: u64 = bits.into_iter().map(u64::from).sum();
    usize::try_from(total.div_ceil(8)).unwrap_or(usize::MAX)
}

/// Packs `values[i]` (below `2^bits[i]`, each width at most 128) into one
/// byte string.
pub fn pack_fields(values: &[u128], bits: &[u32]) -> Result<Vec<u8>> {
    if values.len() != bits.len() {
        return Err(ProtocolError::Size {
            what: "values for the bit fields",
            expected: bits.len(),
            got: values.len(),
        });
    }
    let mut out = Vec::with_capacity(packed_len(bits.iter().copied()));
    let mut writer = FieldWriter::new(&mut out);
    for (i, (v, b)) in values.iter().zip(bits).enumerate() {
        if *b > 128 || *v > low_mask(*b) {
            return Err(ProtocolError::FieldOverflow { index: i, bits: *b });
        }
        writer.put(*v, *b);
    }
    writer.finish();
    Ok(out)
}

/// The inverse of [`pack_fields`]; the byte length must be exact.
pub fn unpack_fields(bytes: &[u8], bits: &[u32]) -> Result<Vec<u128>> {
    if let Some(b) = bits.iter().find(|b| **b > 128) {
        return Err(ProtocolError::FieldWidth(*b));
    }
    let expected = packed_len(bits.iter().copied());
    if bytes.len() != expected {
        return Err(ProtocolError::Size {
            what: "bytes of packed fields",
            expected,
            got: bytes.len(),
        });
    }
    let mut reader = FieldReader::new(bytes);
    Ok(bits.iter().map(|b| reader.get(*b)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn field_packing_round_trips(fields in prop::collection::vec((0u32..=128, any::<u128>()), 0..40)) {
            let bits: Vec<u32> = fields.iter().map(|(b, _)| *b).collect();
            let values: Vec<u128> = fields.iter().map(|(b, v)| v & low_mask(*b)).collect();
            let bytes = pack_fields(&values, &bits).expect("in range");
            prop_assert_eq!(bytes.len(), packed_len(bits.iter().copied()));
            prop_assert_eq!(unpack_fields(&bytes, &bits).expect("unpacks"), values);
        }
    }

    #[test]
    fn fields_are_little_endian_bit_strings() {
        // 3 bits of 0b101, then 9 bits of 0x1ff: 0b1_1111_1111_101 → fd 0f.
        assert_eq!(pack_fields(&[5, 0x1ff], &[3, 9]).unwrap(), [0xfd, 0x0f]);
        let wide = pack_fields(&[u128::MAX >> 2, 1], &[126, 2]).unwrap();
        assert_eq!(wide.len(), 16);
        assert_eq!(wide[15], 0x7f);
    }

    #[test]
    fn out_of_range_and_bad_lengths_are_refused() {
        assert!(pack_fields(&[256], &[8]).is_err());
        assert!(pack_fields(&[1], &[129]).is_err());
        assert!(pack_fields(&[1, 2], &[8]).is_err());
        assert!(pack_fields(&[255], &[8]).is_ok());
        assert!(unpack_fields(&[0u8; 3], &[8, 8]).is_err());
        assert!(unpack_fields(&[0u8; 17], &[129]).is_err());
        assert!(decode::<Vec<u8>>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
