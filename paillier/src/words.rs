//! Conversions between crypto-bigint's native words (`u64` on 64-bit
//! targets, `u32` on 32-bit ones such as armv7 gateways) and the 64-bit words
//! the Montgomery engine works in, so the crate builds on both.

use crypto_bigint::{BoxedUint, Word};
use zeroize::Zeroizing;

const WORDS_PER_U64: usize = 64 / Word::BITS as usize;

/// The value's little-endian 64-bit words. Zeroized on drop, since callers
/// pass secret exponents through here.
pub(crate) fn u64_words(x: &BoxedUint) -> Zeroizing<Vec<u64>> {
    Zeroizing::new(
        x.as_words()
            .chunks(WORDS_PER_U64)
            .map(|chunk| {
                chunk.iter().enumerate().fold(0u64, |acc, (i, &w)| {
                    acc | (widen(w) << (i as u32 * Word::BITS))
                })
            })
            .collect(),
    )
}

// On 64-bit targets this is the identity, which clippy would flag.
#[allow(clippy::useless_conversion)]
fn widen(w: Word) -> u64 {
    u64::from(w)
}

/// A `BoxedUint` from little-endian 64-bit words.
pub(crate) fn from_u64_words(words: &[u64]) -> BoxedUint {
    let native: Vec<Word> = words
        .iter()
        .flat_map(|&w| (0..WORDS_PER_U64).map(move |i| (w >> (i as u32 * Word::BITS)) as Word))
        .collect();
    BoxedUint::from_words(native)
}

/// A `BoxedUint` from a 256-bit magnitude given as (low, high) halves.
pub(crate) fn from_u128_halves(lo: u128, hi: u128) -> BoxedUint {
    from_u64_words(&[lo as u64, (lo >> 64) as u64, hi as u64, (hi >> 64) as u64])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_u64_words() {
        let words = [0x0123_4567_89ab_cdefu64, u64::MAX, 0, 1 << 63];
        let x = from_u64_words(&words);
        assert_eq!(x.bits_precision(), 256);
        assert_eq!(u64_words(&x).as_slice(), &words);
        let y = from_u128_halves(u128::MAX - 5, 7);
        assert_eq!(u64_words(&y).as_slice(), &[u64::MAX - 5, u64::MAX, 7, 0]);
    }
}
