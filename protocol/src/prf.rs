//! Session secrets and the keyed pseudo-random function that expands them
//! into masks.
//!
//! `PRF(seed, label, t)` is the ChaCha20 keystream under the key
//! `SHA-256("veil/prf/v1" ‖ seed ‖ len(label) ‖ label)` with the frame
//! counter `t` as stream number, cut into consecutive bit fields of the
//! values' widths (least significant bit first). One stream per seed and
//! counter holds all of a frame's masks (see [`crate::layout`]). The
//! device, A (with kA) and B (with kB) compute the same masks this way.

use rand::rngs::ChaCha20Rng;
use rand_core::{CryptoRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 256-bit session seed (kA or kB). Zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Seed([u8; 32]);

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(redacted)")
    }
}

impl Seed {
    /// A fresh seed from a cryptographic generator (a device's session).
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Seed {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Seed(bytes)
    }

    /// A seed received or stored before (a decrypted session seed).
    pub fn from_bytes(bytes: [u8; 32]) -> Seed {
        Seed(bytes)
    }

    /// The seed's bytes, to encrypt or persist it (never to log it).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key for one purpose, derived so that different labels never share
    /// keystream.
    pub fn derive(&self, label: &[u8]) -> Seed {
        let mut h = Sha256::new();
        h.update(b"veil/prf/v1");
        h.update(self.0);
        h.update((label.len() as u64).to_le_bytes());
        h.update(label);
        Seed(h.finalize().into())
    }
}

/// A session id: 128 random bits drawn by the device.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh id: 128 bits make a collision between one device's
    /// sessions negligible.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> SessionId {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        SessionId(bytes)
    }

    /// The id as 32 lowercase hex digits, as logs and state files write it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads [`SessionId::to_hex`]'s form back; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<SessionId> {
        let bytes = hex::decode(text).ok()?;
        Some(SessionId(bytes.try_into().ok()?))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.to_hex())
    }
}

/// The label of the masks in the protocol.
pub mod label {
    /// Derives the key of every mask a session draws.
    pub const MASKS: &[u8] = b"masks";
}

/// The mask key of one session seed, derived once per session so that a
/// frame costs no hashing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskKeys {
    /// The key the masks of every frame of the session are expanded from.
    pub masks: Seed,
}

impl MaskKeys {
    /// Derives the keys of the session with seed `seed`.
    pub fn new(seed: &Seed) -> MaskKeys {
        MaskKeys {
            masks: seed.derive(label::MASKS),
        }
    }
}

/// Keystreams up to this many bytes are computed one block at a time by
/// [`chacha_block`]; longer ones by rand's vectorized ChaCha20. Measured
/// on the device's first block after sleeping on the network (caches
/// flushed, `bench/examples/device_cache.rs`): 0.4 µs for the compact
/// loop against 1.3 µs for the vectorized code, most of it spent fetching
/// that code.
const COMPACT_KEYSTREAM: usize = 256;

/// One ChaCha20 block of `key` (as little-endian words) in the original
/// layout (64-bit block counter, 64-bit stream number): the same keystream
/// as rand's `ChaCha20Rng` with `set_stream(stream)`. A loop over double
/// rounds, small enough to stay a few cache lines.
#[inline(never)]
// The 64-bit counter and stream each fill two 32-bit state words, low
// half first: the truncating casts are the split.
#[allow(clippy::cast_possible_truncation)]
fn chacha_block(key: &[u32; 8], stream: u64, counter: u64) -> [u8; 64] {
    const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];
    let mut state = [0u32; 16];
    state[..4].copy_from_slice(&SIGMA);
    state[4..12].copy_from_slice(key);
    state[12] = counter as u32;
    state[13] = (counter >> 32) as u32;
    state[14] = stream as u32;
    state[15] = (stream >> 32) as u32;
    let mut x = state;
    #[inline(always)]
    fn quarter(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(16);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(12);
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(8);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(7);
    }
    for _ in 0..10 {
        quarter(&mut x, 0, 4, 8, 12);
        quarter(&mut x, 1, 5, 9, 13);
        quarter(&mut x, 2, 6, 10, 14);
        quarter(&mut x, 3, 7, 11, 15);
        quarter(&mut x, 0, 5, 10, 15);
        quarter(&mut x, 1, 6, 11, 12);
        quarter(&mut x, 2, 7, 8, 13);
        quarter(&mut x, 3, 4, 9, 14);
    }
    let mut out = [0u8; 64];
    for (chunk, (a, b)) in out.chunks_exact_mut(4).zip(x.iter().zip(&state)) {
        chunk.copy_from_slice(&a.wrapping_add(*b).to_le_bytes());
    }
    out
}

/// The first `out.len()` bytes of `key`'s keystream for counter `t`.
fn keystream(key: &Seed, t: u64, out: &mut [u8]) {
    if out.len() > COMPACT_KEYSTREAM {
        let mut rng = ChaCha20Rng::from_seed(*key.as_bytes());
        rng.set_stream(t);
        rng.fill_bytes(out);
        return;
    }
    let mut words = [0u32; 8];
    for (word, bytes) in words.iter_mut().zip(key.as_bytes().chunks_exact(4)) {
        *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    for (counter, chunk) in out.chunks_mut(64).enumerate() {
        let block = chacha_block(&words, t, counter as u64);
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

/// `count` values uniform in `[0, 2^bits)` (bits ≤ 128) for counter `t`.
pub fn expand(seed: &Seed, label: &[u8], t: u64, count: usize, bits: u32) -> Vec<u128> {
    expand_derived(&seed.derive(label), t, count, bits)
}

/// [`expand`] with the label's key already derived.
pub fn expand_derived(key: &Seed, t: u64, count: usize, bits: u32) -> Vec<u128> {
    let mut out = Vec::with_capacity(count);
    expand_into(
        key,
        t,
        std::iter::repeat_n(bits, count),
        &mut Vec::new(),
        |_, v| out.push(v),
    );
    out
}

/// Values for counter `t`, one per entry of `bits` (each at most 128;
/// more read as 128), value `i` uniform in `[0, 2^bits[i])`.
pub fn expand_fields(key: &Seed, t: u64, bits: &[u32]) -> Vec<u128> {
    let mut out = Vec::with_capacity(bits.len());
    expand_into(key, t, bits.iter().copied(), &mut Vec::new(), |_, v| {
        out.push(v)
    });
    out
}

/// The sums of two keys' values for counter `t` (as [`expand_into`]
/// gives each), field by field in one pass over both keystreams: the
/// device adds kA's and kB's masks of every frame, and one loop instead of
/// two halves the per-field work (measured: 1,588 MNIST fields).
pub fn expand_sum_into(
    (key_a, key_b): (&Seed, &Seed),
    t: u64,
    bits: impl Iterator<Item = u32> + Clone,
    (scratch_a, scratch_b): (&mut Vec<u8>, &mut Vec<u8>),
    mut each: impl FnMut(usize, u128),
) {
    let total: u64 = bits.clone().map(|b| u64::from(b.min(128))).sum();
    let len = usize::try_from(total.div_ceil(8)).unwrap_or(usize::MAX) + 8;
    for (key, scratch) in [(key_a, &mut *scratch_a), (key_b, &mut *scratch_b)] {
        scratch.clear();
        scratch.resize(len, 0);
        keystream(key, t, scratch);
    }
    let (a, b) = (&scratch_a[..], &scratch_b[..]);
    let mut at = 0usize;
    for (i, bits) in bits.enumerate() {
        let bits = bits.min(128);
        let sum = if bits <= 56 {
            let low = (1u64 << bits) - 1;
            u128::from(word_at(a, at) & low) + u128::from(word_at(b, at) & low)
        } else {
            bits_at(a, at, bits) + bits_at(b, at, bits)
        };
        each(i, sum);
        at += bits as usize;
    }
}

/// [`expand_fields`] handing each value to `each` with its index, the
/// keystream in `scratch`: nothing is allocated once `scratch` has grown,
/// as the device expands its masks on every frame. The values are
/// consecutive bit fields of the keystream, least significant bit first
/// (a 48-bit mask takes 48 bits of it, not a 64-bit word).
#[inline]
pub fn expand_into(
    key: &Seed,
    t: u64,
    bits: impl Iterator<Item = u32> + Clone,
    scratch: &mut Vec<u8>,
    mut each: impl FnMut(usize, u128),
) {
    let total: u64 = bits.clone().map(|b| u64::from(b.min(128))).sum();
    // Eight bytes of slack: every field is read with whole-word loads.
    let len = usize::try_from(total.div_ceil(8)).unwrap_or(usize::MAX) + 8;
    scratch.clear();
    scratch.resize(len, 0);
    keystream(key, t, scratch);
    let mut at = 0usize;
    for (i, bits) in bits.enumerate() {
        let bits = bits.min(128);
        let value = if bits <= 56 {
            u128::from(word_at(scratch, at) & ((1u64 << bits) - 1))
        } else {
            bits_at(scratch, at, bits)
        };
        each(i, value);
        at += bits as usize;
    }
}

/// The 57 or more bits of `bytes` from bit `at` on (a word load);
/// bytes past the end read as zero.
#[inline]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    let word = bytes
        .get(at / 8..at / 8 + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
        .map_or(0, u64::from_le_bytes);
    word >> (at % 8)
}

/// The `bits` (≤ 128) bits of `bytes` from bit `at` on, least significant
/// first; bytes past the end read as zero.
#[inline]
fn bits_at(bytes: &[u8], at: usize, bits: u32) -> u128 {
    let mut value = 0u128;
    let mut got = 0u32;
    while got < bits {
        // A word load covers 57 bits at any bit offset.
        let take = (bits - got).min(56);
        let field = word_at(bytes, at + got as usize) & ((1u64 << take) - 1);
        value |= u128::from(field) << got;
        got += take;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_expansion_sums_each_keys_values() {
        let (a, b) = (Seed::from_bytes([1; 32]), Seed::from_bytes([2; 32]));
        // Short (one block each) and long (vectorized) keystreams, fields
        // on both sides of the 56-bit word read.
        for count in [3usize, 400] {
            let bits: Vec<u32> = (0..count).map(|i| [48, 57, 100, 1][i % 4]).collect();
            let expected: Vec<u128> = expand_fields(&a, 9, &bits)
                .iter()
                .zip(expand_fields(&b, 9, &bits))
                .map(|(x, y)| x + y)
                .collect();
            let mut sums = Vec::new();
            let mut scratch = (Vec::new(), Vec::new());
            expand_sum_into(
                (&a, &b),
                9,
                bits.iter().copied(),
                (&mut scratch.0, &mut scratch.1),
                |i, v| {
                    assert_eq!(i, sums.len());
                    sums.push(v);
                },
            );
            assert_eq!(sums, expected);
        }
    }

    #[test]
    fn masks_are_deterministic_distinct_and_bounded() {
        let seed = Seed::from_bytes([7; 32]);
        let a = expand(&seed, label::MASKS, 5, 100, 57);
        assert_eq!(a, expand(&seed, label::MASKS, 5, 100, 57));
        assert_ne!(
            a,
            expand(&seed, label::MASKS, 6, 100, 57),
            "counter changes masks"
        );
        assert_ne!(
            a,
            expand(&seed, b"other", 5, 100, 57),
            "label changes masks"
        );
        assert_ne!(
            a,
            expand(&Seed::from_bytes([8; 32]), label::MASKS, 5, 100, 57),
            "seed changes masks"
        );
        assert!(a.iter().all(|v| *v < 1 << 57));
        // The top bit is used: values are not biased low.
        assert!(a.iter().any(|v| *v >= 1 << 56));
        let wide = expand(&seed, label::MASKS, 1, 50, 100);
        assert!(wide.iter().all(|v| *v < 1 << 100) && wide.iter().any(|v| *v >= 1 << 99));
        // A prefix is stable whatever the count.
        assert_eq!(&expand(&seed, label::MASKS, 5, 10, 57)[..], &a[..10]);
        // Fields of mixed widths are consecutive bit strings of the
        // keystream: the same bits as 8-bit fields read.
        let key = seed.derive(label::MASKS);
        let mixed = expand_fields(&key, 5, &[57, 100, 3]);
        let bytes = expand_derived(&key, 5, 20, 8);
        let bit = |i: usize| (bytes[i / 8] >> (i % 8)) & 1;
        let read = |from: usize, len: usize| (0..len).fold(0u128, |v, k| v | bit(from + k) << k);
        assert_eq!(mixed, vec![read(0, 57), read(57, 100), read(157, 3)]);
        // The keystream is rand's ChaCha20 with the counter as stream.
        let mut rng = ChaCha20Rng::from_seed(*key.as_bytes());
        rng.set_stream(5);
        let first = (0..8).fold(0u128, |v, k| v | bytes[k] << (8 * k));
        assert_eq!(u128::from(rng.next_u64()), first);
        // The compact core and rand's vectorized one agree on either side
        // of the switch between them.
        for len in [
            1,
            63,
            64,
            65,
            COMPACT_KEYSTREAM,
            COMPACT_KEYSTREAM + 1,
            1000,
        ] {
            let mut ours = vec![0u8; len];
            keystream(&key, 9, &mut ours);
            let mut rng = ChaCha20Rng::from_seed(*key.as_bytes());
            rng.set_stream(9);
            let mut theirs = vec![0u8; len];
            rng.fill_bytes(&mut theirs);
            assert_eq!(ours, theirs, "{len} bytes");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(format!("{:?}", Seed::from_bytes([1; 32])), "Seed(redacted)");
        let sid = SessionId([0xab; 16]);
        assert_eq!(SessionId::from_hex(&sid.to_hex()), Some(sid));
        assert_eq!(SessionId::from_hex("zz"), None);
    }
}
