//! Plaintexts: residues modulo N read as signed integers in (-N/2, N/2).

use crate::error::{PaillierError, Result};
use crate::keys::PublicKey;
use crypto_bigint::{BoxedUint, Resize};
use ethnum::I256;
use zeroize::Zeroize;

/// A Paillier plaintext under a given public key.
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext {
    pub(crate) key: PublicKey,
    /// The residue in `[0, N)`, with the precision of N.
    pub(crate) residue: BoxedUint,
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_i256() {
            Ok(v) => write!(f, "Plaintext({v})"),
            Err(_) => write!(f, "Plaintext(<{} bits>)", self.residue.bit_width_vartime()),
        }
    }
}

/// A signed magnitude, the form in which arbitrary-size signed integers enter
/// and leave the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// Whether the value is below zero.
    pub negative: bool,
    /// Its absolute value.
    pub magnitude: BoxedUint,
}

impl From<I256> for Signed {
    fn from(value: I256) -> Signed {
        let (hi, lo) = value.unsigned_abs().into_words();
        Signed {
            negative: value < 0,
            magnitude: crate::words::from_u128_halves(lo, hi),
        }
    }
}

impl PublicKey {
    /// The residue of a signed value, rejecting values outside (-N/2, N/2).
    pub fn encode_signed(&self, value: &Signed) -> Result<Plaintext> {
        let bits = self.bits();
        if value.magnitude.bit_width_vartime() > bits
            || value.magnitude.clone().resize_unchecked(bits) > self.inner.half_n
        {
            return Err(PaillierError::PlaintextRange(format!(
                "|value| has {} bits; it must be at most floor(N/2) for a {bits}-bit N",
                value.magnitude.bit_width_vartime()
            )));
        }
        let magnitude = value.magnitude.clone().resize_unchecked(bits);
        let residue = if value.negative && !magnitude.is_zero().to_bool() {
            self.inner.n.wrapping_sub(&magnitude)
        } else {
            magnitude
        };
        Ok(Plaintext {
            key: self.clone(),
            residue,
        })
    }

    /// Encodes a 256-bit signed value (always in range for supported keys).
    pub fn encode(&self, value: I256) -> Plaintext {
        self.encode_signed(&Signed::from(value))
            .expect("a 256-bit value is far below N/2 for every supported key size")
    }

    /// Encodes a machine integer.
    pub fn encode_i128(&self, value: i128) -> Plaintext {
        self.encode(I256::from(value))
    }

    /// Wraps a residue in `[0, N)` as a plaintext.
    pub fn plaintext_from_residue(&self, residue: &BoxedUint) -> Result<Plaintext> {
        if residue.bit_width_vartime() > self.bits() {
            return Err(PaillierError::PlaintextRange(
                "residue is not below N".into(),
            ));
        }
        // One resized copy, which the plaintext takes over or which is
        // wiped: the residue may be a secret (a device's session seed).
        let mut resized = residue.resize_unchecked(self.bits());
        if resized >= self.inner.n {
            resized.zeroize();
            return Err(PaillierError::PlaintextRange(
                "residue is not below N".into(),
            ));
        }
        Ok(Plaintext {
            key: self.clone(),
            residue: resized,
        })
    }
}

/// For plaintexts that are secrets (session seeds): wrap them in
/// `zeroize::Zeroizing`. Not on drop for every plaintext, since most are
/// encodings of public or soon-published values.
impl Zeroize for Plaintext {
    fn zeroize(&mut self) {
        self.residue.zeroize();
    }
}

impl Plaintext {
    /// The residue in `[0, N)`.
    pub fn residue(&self) -> &BoxedUint {
        &self.residue
    }

    /// The signed value in (-N/2, N/2].
    pub fn to_signed(&self) -> Signed {
        if self.residue > self.key.inner.half_n {
            Signed {
                negative: true,
                magnitude: self.key.inner.n.wrapping_sub(&self.residue),
            }
        } else {
            Signed {
                negative: false,
                magnitude: self.residue.clone(),
            }
        }
    }

    /// The signed value, if it fits in 256 bits.
    pub fn to_i256(&self) -> Result<I256> {
        let signed = self.to_signed();
        if signed.magnitude.bit_width_vartime() > 255 {
            return Err(PaillierError::PlaintextRange(format!(
                "decrypted value has {} bits, more than fits in 256",
                signed.magnitude.bit_width_vartime()
            )));
        }
        let words = crate::words::u64_words(&signed.magnitude);
        let word = |i: usize| u128::from(words.get(i).copied().unwrap_or(0));
        let lo = word(0) | (word(1) << 64);
        let hi = word(2) | (word(3) << 64);
        let magnitude = I256::from_words(hi as i128, lo as i128);
        Ok(if signed.negative {
            -magnitude
        } else {
            magnitude
        })
    }

    /// The signed value, if it fits in an `i128`.
    pub fn to_i128(&self) -> Result<i128> {
        let v = self.to_i256()?;
        i128::try_from(v)
            .map_err(|_| PaillierError::PlaintextRange(format!("value {v} does not fit in i128")))
    }

    /// The key this plaintext belongs to.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }
}
