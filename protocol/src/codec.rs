//! Wire encoding: bincode 2 with a size limit checked before allocation,
//! and fixed-width bit packing of the integers in frames and results (a
//! frame costs `ℓ + σ + 2` bits per feature, not a whole machine word).

use crate::error::{ProtocolError, Result};
use ethnum::I256;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest message any party accepts: a round of a large convolution
/// with packing off stays below it; anything bigger is refused unread.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config())
        .map_err(|e| ProtocolError::Decode(format!("encoding: {e}")))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::Size(format!(
            "message of {} bytes exceeds the limit of {MAX_MESSAGE_BYTES}",
            bytes.len()
        )));
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(ProtocolError::Decode(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Appends bit fields to a byte vector, least significant bit first.
struct BitWriter {
    out: Vec<u8>,
    buffer: u128,
    filled: u32,
}

impl BitWriter {
    fn with_capacity(bytes: usize) -> BitWriter {
        BitWriter {
            out: Vec::with_capacity(bytes),
            buffer: 0,
            filled: 0,
        }
    }

    /// Writes the low `bits` (≤ 64) bits of `value`.
    fn write(&mut self, value: u64, bits: u32) {
        let masked = if bits == 64 {
            value
        } else {
            value & ((1u64 << bits) - 1)
        };
        self.buffer |= u128::from(masked) << self.filled;
        self.filled += bits;
        while self.filled >= 8 {
            self.out.push(self.buffer as u8);
            self.buffer >>= 8;
            self.filled -= 8;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.filled > 0 {
            self.out.push(self.buffer as u8);
        }
        self.out
    }
}

/// Reads bit fields written by [`BitWriter`].
struct BitReader<'a> {
    bytes: &'a [u8],
    next: usize,
    buffer: u128,
    filled: u32,
}

impl BitReader<'_> {
    /// Reads `bits` (≤ 64) bits; missing bytes read as zero (the caller
    /// checked the length).
    fn read(&mut self, bits: u32) -> u64 {
        while self.filled < bits {
            let byte = self.bytes.get(self.next).copied().unwrap_or(0);
            self.next += 1;
            self.buffer |= u128::from(byte) << self.filled;
            self.filled += 8;
        }
        let value = if bits == 64 {
            self.buffer as u64
        } else {
            (self.buffer as u64) & ((1u64 << bits) - 1)
        };
        self.buffer >>= bits;
        self.filled -= bits;
        value
    }
}

fn check_width(width: u32) -> Result<()> {
    if !(1..=255).contains(&width) {
        return Err(ProtocolError::Range(format!(
            "field width {width} is outside 1..=255"
        )));
    }
    Ok(())
}

/// Packs signed values `|v| < 2^(width-1)` into `width` bits each
/// (offset binary, little-endian bit order).
pub fn pack_ints(values: &[I256], width: u32) -> Result<Vec<u8>> {
    check_width(width)?;
    let offset = I256::ONE << (width - 1);
    let mut writer = BitWriter::with_capacity((values.len() * width as usize).div_ceil(8));
    for (i, v) in values.iter().enumerate() {
        if *v >= offset || *v < -offset {
            return Err(ProtocolError::Range(format!(
                "value {i} does not fit in {width} bits"
            )));
        }
        let field = (*v + offset).as_u256();
        let mut left = width;
        let mut shift: u32 = 0;
        while left > 0 {
            let bits = left.min(64);
            writer.write((field >> shift).as_u64(), bits);
            shift += bits;
            left -= bits;
        }
    }
    Ok(writer.finish())
}

/// The inverse of [`pack_ints`]; the byte length must be exact.
pub fn unpack_ints(bytes: &[u8], count: usize, width: u32) -> Result<Vec<I256>> {
    check_width(width)?;
    let expected = count
        .checked_mul(width as usize)
        .map(|bits| bits.div_ceil(8))
        .ok_or_else(|| ProtocolError::Size("field count overflows".into()))?;
    if bytes.len() != expected {
        return Err(ProtocolError::Size(format!(
            "{} bytes for {count} fields of {width} bits (expected {expected})",
            bytes.len()
        )));
    }
    let offset = I256::ONE << (width - 1);
    let mut reader = BitReader {
        bytes,
        next: 0,
        buffer: 0,
        filled: 0,
    };
    Ok((0..count)
        .map(|_| {
            let mut field = ethnum::U256::ZERO;
            let mut shift: u32 = 0;
            let mut left = width;
            while left > 0 {
                let bits = left.min(64);
                field |= ethnum::U256::from(reader.read(bits)) << shift;
                shift += bits;
                left -= bits;
            }
            field.as_i256() - offset
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bit_packing_round_trips(width in 2u32..140, raw in prop::collection::vec(any::<i128>(), 0..40)) {
            let bound = I256::ONE << (width - 1);
            let values: Vec<I256> = raw.iter().map(|v| {
                let v = I256::from(*v);
                // Fold into range, keeping both edges reachable.
                v.rem_euclid(bound * 2) - bound
            }).collect();
            let bytes = pack_ints(&values, width).expect("in range");
            prop_assert_eq!(bytes.len(), (values.len() * width as usize).div_ceil(8));
            prop_assert_eq!(unpack_ints(&bytes, values.len(), width).expect("unpacks"), values);
        }
    }

    #[test]
    fn out_of_range_and_bad_lengths_are_refused() {
        assert!(pack_ints(&[I256::from(128)], 8).is_err());
        assert!(pack_ints(&[I256::from(-129)], 8).is_err());
        assert!(pack_ints(&[I256::from(-128), I256::from(127)], 8).is_ok());
        assert!(unpack_ints(&[0u8; 3], 2, 8).is_err());
        assert!(unpack_ints(&[], usize::MAX, 255).is_err());
        assert!(decode::<Vec<u8>>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
