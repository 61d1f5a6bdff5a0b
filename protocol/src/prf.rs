//! Session secrets and the keyed pseudo-random function that expands them
//! into masks.
//!
//! `PRF(seed, label, t, i)` is the ChaCha20 keystream under the key
//! `SHA-256("veil/prf/v1" ‖ seed ‖ label)` with the frame counter `t` as
//! stream number, read as consecutive 64-bit words (one per value up to 64
//! bits, two up to 128). The device, A (with kA) and B (with kB) compute the
//! same masks this way.

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
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Seed {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Seed(bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Seed {
        Seed(bytes)
    }

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
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> SessionId {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        SessionId(bytes)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

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

/// The labels of the masks in the protocol.
pub mod label {
    pub const INPUT: &[u8] = b"in";
    pub const OUTPUT: &[u8] = b"out";
}

/// The two mask keys of one session seed, derived once per session so that
/// a frame costs no hashing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskKeys {
    pub input: Seed,
    pub output: Seed,
}

impl MaskKeys {
    pub fn new(seed: &Seed) -> MaskKeys {
        MaskKeys {
            input: seed.derive(label::INPUT),
            output: seed.derive(label::OUTPUT),
        }
    }
}

/// `count` values uniform in `[0, 2^bits)` (bits ≤ 128) for counter `t`.
pub fn expand(seed: &Seed, label: &[u8], t: u64, count: usize, bits: u32) -> Vec<u128> {
    expand_derived(&seed.derive(label), t, count, bits)
}

/// [`expand`] with the label's key already derived.
pub fn expand_derived(key: &Seed, t: u64, count: usize, bits: u32) -> Vec<u128> {
    let mut out = Vec::with_capacity(count);
    expand_fields(key, t, std::iter::repeat_n(bits, count), |_, v| out.push(v));
    out
}

/// Values for counter `t`, one per entry of `bits`, each uniform in
/// `[0, 2^bits)` (bits ≤ 128; more read as 128) and handed to `each` with
/// its index: the i-th value takes the next 64-bit word of the keystream,
/// or the next two above 64 bits. Nothing is allocated: the device expands
/// its masks with this on every frame.
#[inline]
pub fn expand_fields(
    key: &Seed,
    t: u64,
    bits: impl IntoIterator<Item = u32>,
    mut each: impl FnMut(usize, u128),
) {
    let mut rng = ChaCha20Rng::from_seed(*key.as_bytes());
    rng.set_stream(t);
    for (i, bits) in bits.into_iter().enumerate() {
        let bits = bits.min(128);
        let low = u128::from(rng.next_u64());
        let value = if bits > 64 {
            low | (u128::from(rng.next_u64()) << 64)
        } else {
            low
        };
        each(i, value & crate::codec::low_mask(bits));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_deterministic_distinct_and_bounded() {
        let seed = Seed::from_bytes([7; 32]);
        let a = expand(&seed, label::INPUT, 5, 100, 57);
        assert_eq!(a, expand(&seed, label::INPUT, 5, 100, 57));
        assert_ne!(
            a,
            expand(&seed, label::INPUT, 6, 100, 57),
            "counter changes masks"
        );
        assert_ne!(
            a,
            expand(&seed, label::OUTPUT, 5, 100, 57),
            "label changes masks"
        );
        assert_ne!(
            a,
            expand(&Seed::from_bytes([8; 32]), label::INPUT, 5, 100, 57),
            "seed changes masks"
        );
        assert!(a.iter().all(|v| *v < 1 << 57));
        // The top bit is used: values are not biased low.
        assert!(a.iter().any(|v| *v >= 1 << 56));
        let wide = expand(&seed, label::OUTPUT, 1, 50, 100);
        assert!(wide.iter().all(|v| *v < 1 << 100) && wide.iter().any(|v| *v >= 1 << 99));
        // A prefix is stable whatever the count.
        assert_eq!(&expand(&seed, label::INPUT, 5, 10, 57)[..], &a[..10]);
        // Fields of mixed widths take one word each up to 64 bits, two
        // above: the same values as uniform expansions at those positions.
        let key = seed.derive(label::INPUT);
        let mut mixed = Vec::new();
        expand_fields(&key, 5, [57, 100, 3], |i, v| mixed.push((i, v)));
        let words = expand_derived(&key, 5, 4, 64);
        assert_eq!(mixed[0], (0, words[0] & ((1 << 57) - 1)));
        assert_eq!(
            mixed[1],
            (1, (words[1] | (words[2] << 64)) & ((1 << 100) - 1))
        );
        assert_eq!(mixed[2], (2, words[3] & 7));
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(format!("{:?}", Seed::from_bytes([1; 32])), "Seed(redacted)");
        let sid = SessionId([0xab; 16]);
        assert_eq!(SessionId::from_hex(&sid.to_hex()), Some(sid));
        assert_eq!(SessionId::from_hex("zz"), None);
    }
}
