//! Plain halves of Paillier ciphertexts: the part of a plaintext that A
//! learns online, as arithmetic on residues modulo N.
//!
//! Every ciphertext A sends B is an affine function of the stage's inputs,
//! and each input is a cipher half (known offline) times the trivial
//! encryption of a plain half (known online). A runs the same round code
//! twice: offline over cipher halves with the constants dropped, online over
//! these residues with the constants kept, and joins the two with one
//! multiplication per ciphertext sent ([`crate::PublicOps::join`]).
//!
//! # Why exact integers first
//! Plain halves are exact integers far below 2^255 until a comparison's
//! `2^e` shift or the packing moves them up; a 2048-bit modular
//! multiplication per operation would cost the online path what it saves,
//! so values stay in [`I256`] while they fit and become residues mod N
//! only when they do not (and once per packed ciphertext).

use crate::backend::{PublicOps, packing_slots};
use crate::error::{ProtocolError, Result};
use crypto_bigint::{BoxedUint, NonZero, Resize};
use ethnum::I256;
use veil_paillier::Signed;

/// A plain half.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Residue {
    /// An exact integer (its residue mod N is implied).
    Exact(I256),
    /// A residue in `[0, N)`.
    Mod(BoxedUint),
}

/// Arithmetic modulo N on plain halves, with the packing geometry of a
/// Paillier key of the same modulus.
#[derive(Clone, Debug)]
pub struct Residues {
    n: NonZero<BoxedUint>,
    bits: u32,
}

impl Residues {
    /// The residues modulo `n`, a Paillier modulus of `bits` bits (the
    /// packing geometry follows the key's width).
    pub fn new(n: &BoxedUint, bits: u32) -> Option<Residues> {
        Some(Residues {
            n: NonZero::new(n.resize_unchecked(bits)).into_option()?,
            bits,
        })
    }

    /// The residue in `[0, N)` of a plain half.
    pub fn reduce(&self, r: &Residue) -> BoxedUint {
        match r {
            Residue::Mod(m) => m.clone(),
            Residue::Exact(v) => {
                let Signed {
                    negative,
                    magnitude,
                } = Signed::from(*v);
                let magnitude = magnitude.resize_unchecked(self.bits);
                if negative && !bool::from(magnitude.is_zero()) {
                    self.n.as_ref().wrapping_sub(&magnitude)
                } else {
                    magnitude
                }
            }
        }
    }

    /// `r·2^e mod N`.
    fn shifted_mod(&self, r: &Residue, e: u32) -> BoxedUint {
        let wide = self.reduce(r).resize_unchecked(self.bits + e + 1).shl(e);
        wide.rem_vartime(&self.n)
    }

    fn combine(
        &self,
        a: &Residue,
        b: &Residue,
        exact: impl Fn(I256, I256) -> Option<I256>,
        modular: impl Fn(&BoxedUint, &BoxedUint, &NonZero<BoxedUint>) -> BoxedUint,
    ) -> Residue {
        if let (Residue::Exact(x), Residue::Exact(y)) = (a, b)
            && let Some(v) = exact(*x, *y)
        {
            return Residue::Exact(v);
        }
        Residue::Mod(modular(&self.reduce(a), &self.reduce(b), &self.n))
    }
}

impl PublicOps for Residues {
    type Ct = Residue;
    type Prepared = Vec<Residue>;
    type Residues = Residues;

    fn name(&self) -> &'static str {
        "residues"
    }
    fn encrypt(&self, v: I256) -> Residue {
        Residue::Exact(v)
    }
    fn constant(&self, v: I256) -> Residue {
        Residue::Exact(v)
    }
    fn add(&self, a: &Residue, b: &Residue) -> Residue {
        self.combine(a, b, I256::checked_add, |x, y, n| x.add_mod(y, n))
    }
    fn add_plain(&self, a: &Residue, k: I256) -> Residue {
        self.add(a, &Residue::Exact(k))
    }
    fn scale(&self, a: &Residue, k: I256) -> Residue {
        self.combine(a, &Residue::Exact(k), I256::checked_mul, |x, y, n| {
            x.mul_mod(y, n)
        })
    }
    fn rerandomize(&self, a: &Residue) -> Residue {
        a.clone()
    }
    fn prepare(&self, xs: &[Residue]) -> Result<Vec<Residue>> {
        Ok(xs.to_vec())
    }
    fn dot(&self, prepared: &Vec<Residue>, terms: &[(u32, i64)]) -> Result<Residue> {
        let mut acc = Residue::Exact(I256::ZERO);
        for (i, w) in terms {
            let x = prepared.get(*i as usize).ok_or(ProtocolError::Index {
                what: "term",
                index: *i as usize,
                len: prepared.len(),
            })?;
            acc = self.add(&acc, &self.scale(x, I256::from(*w)));
        }
        Ok(acc)
    }
    fn slots(&self, value_bits: u32) -> Result<usize> {
        packing_slots(self.bits, value_bits)
    }
    fn pack(&self, value_bits: u32, values: &[Residue]) -> Result<Residue> {
        self.pack_shifted(value_bits, values, &vec![0; values.len()], &[])
    }
    fn shift(&self, c: &Residue, e: u32) -> Residue {
        if let Residue::Exact(v) = c
            && v.unsigned_abs().leading_zeros() > e + 1
        {
            return Residue::Exact(*v << e);
        }
        Residue::Mod(self.shifted_mod(c, e))
    }
    /// Slot i's `v_i·2^(shifts[i]) + offsets[i]` at its place, without the
    /// packing bias (the cipher half carries it): exact integers summed
    /// unreduced, one reduction per packed value.
    fn pack_shifted(
        &self,
        value_bits: u32,
        values: &[Residue],
        shifts: &[u32],
        offsets: &[I256],
    ) -> Result<Residue> {
        let slots = self.slots(value_bits)?;
        if values.is_empty() || values.len() > slots {
            return Err(ProtocolError::TooLarge {
                what: "values to pack",
                limit: slots as u64,
                got: values.len() as u64,
            });
        }
        if shifts.len() != values.len() || offsets.len() > values.len() {
            return Err(ProtocolError::Size {
                what: "slot shifts",
                expected: values.len(),
                got: shifts.len(),
            });
        }
        let slot_bits = value_bits + 2;
        if shifts.iter().any(|e| *e > slot_bits) {
            return Err(ProtocolError::Overflow {
                what: "a shift beyond its slot",
            });
        }
        // Positions stay below N's width, magnitudes below 2^256.
        let wide = self.bits + 2 * 256;
        let mut positive = BoxedUint::zero_with_precision(wide);
        let mut negative = BoxedUint::zero_with_precision(wide);
        let mut reduced = BoxedUint::zero_with_precision(self.bits);
        let place = |v: I256, at: u32, positive: &mut BoxedUint, negative: &mut BoxedUint| {
            let Signed {
                negative: neg,
                magnitude,
            } = Signed::from(v);
            let term = magnitude.resize_unchecked(wide).shl(at);
            if neg {
                *negative = negative.wrapping_add(&term);
            } else {
                *positive = positive.wrapping_add(&term);
            }
        };
        // Slot i starts at bit slot_bits·i, below N's width.
        let mut at = 0;
        for (i, (v, e)) in values.iter().zip(shifts).enumerate() {
            match v {
                Residue::Exact(x) => {
                    place(*x, at + e, &mut positive, &mut negative);
                }
                Residue::Mod(_) => {
                    reduced = reduced.add_mod(&self.shifted_mod(v, at + e), &self.n);
                }
            }
            if let Some(o) = offsets.get(i) {
                place(*o, at, &mut positive, &mut negative);
            }
            at += slot_bits;
        }
        let positive = positive.rem_vartime(&self.n);
        let negative = negative.rem_vartime(&self.n);
        Ok(Residue::Mod(
            positive
                .add_mod(&reduced, &self.n)
                .sub_mod(&negative, &self.n),
        ))
    }
    fn encode(&self, c: &Residue) -> Vec<u8> {
        self.reduce(c).to_be_bytes().into_vec()
    }
    fn decode(&self, _bytes: &[u8]) -> Result<Residue> {
        Err(ProtocolError::Inconsistent("plain halves never travel"))
    }
    fn residues(&self) -> &Residues {
        self
    }
    fn join(&self, cipher: &Residue, plain: &Residue) -> Result<Residue> {
        Ok(self.add(cipher, plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn residues() -> Residues {
        // A 2048-bit odd modulus stands in for N.
        let n = BoxedUint::one_with_precision(2048)
            .shl(2047)
            .wrapping_add(BoxedUint::from(12345u64).resize_unchecked(2048));
        Residues::new(&n, 2048).expect("non-zero")
    }

    #[test]
    fn exact_values_stay_exact_until_they_overflow() {
        let r = residues();
        let a = r.scale(&r.constant(I256::from(-3)), I256::from(7));
        assert_eq!(a, Residue::Exact(I256::from(-21)));
        let big = r.shift(&r.constant(I256::ONE << 200), 100);
        let expected = BoxedUint::one_with_precision(2048).shl(300);
        assert_eq!(big, Residue::Mod(expected));
    }

    #[test]
    fn packing_matches_the_sum_of_placed_values() {
        let r = residues();
        let values = [I256::from(-5), I256::from(9), I256::ONE << 240];
        let cts: Vec<Residue> = values.iter().map(|v| r.constant(*v)).collect();
        let packed = r
            .pack_shifted(248, &cts, &[3, 0, 1], &[I256::from(2), I256::ZERO])
            .expect("fits");
        // -5·2^3 + 2 + 9·2^250 + 2^241·2^500, mod N.
        let mut acc = Residue::Exact(I256::from(-38));
        acc = r.add(&acc, &r.shift(&r.constant(I256::from(9)), 250));
        acc = r.add(
            &acc,
            &r.shift(&r.shift(&r.constant(I256::ONE << 240), 1), 500),
        );
        assert_eq!(
            Residue::Mod(r.reduce(&packed)),
            Residue::Mod(r.reduce(&acc))
        );
    }
}
