//! Dot products and matrix-vector products of ciphertexts with signed
//! integer weights, as multi-exponentiations.
//!
//! `Π c_i^(w_i)` is computed with the bucket method (Pippenger): the weights
//! are cut into windows of `c` bits; within a window every base is multiplied
//! into the bucket of its digit, and the buckets are combined with two
//! multiplications each by running products. Squarings are shared by all
//! terms. With inverses of the bases at hand ([`PreparedBases`]), digits are
//! signed (`-2^(c-1)..=2^(c-1)`), which halves the buckets; without them,
//! positive and negative weights are accumulated apart and one inversion
//! joins them. Windows are independent, so a single dot product runs its
//! windows in parallel and a matrix product runs its rows in parallel.
//!
//! Weights are the model owner's data and the computation is variable time
//! in them (it skips zero digits and empty buckets); ciphertexts are public.

use crate::ciphertext::Ciphertext;
use crate::error::{PaillierError, Result};
use crate::keys::PublicKey;
use crate::mont::{Elem, Modulus};
use rayon::prelude::*;

/// Bases per inversion at least when [`PublicKey::prepare_bases`] splits
/// its work across threads.
const MIN_INVERSION_CHUNK: usize = 256;

/// Bases with their inverses, ready for many signed dot products.
pub struct PreparedBases {
    key: PublicKey,
    bases: Vec<Elem>,
    inverses: Vec<Elem>,
}

impl PreparedBases {
    /// How many bases were prepared.
    pub fn len(&self) -> usize {
        self.bases.len()
    }

    /// Whether no base was prepared.
    pub fn is_empty(&self) -> bool {
        self.bases.is_empty()
    }
}

fn bits_of(weight: i64) -> u32 {
    64 - weight.unsigned_abs().leading_zeros()
}

/// The window width minimizing `windows · (terms + 2·buckets) + squarings`.
fn choose_window(terms: usize, max_bits: u32, signed: bool) -> u32 {
    let mut best = (u64::MAX, 1);
    // A one-bit signed digit cannot absorb its carry.
    let smallest = if signed { 2 } else { 1 };
    for c in smallest..=16u32 {
        let bits = if signed { max_bits + 1 } else { max_bits };
        let windows = u64::from(bits.div_ceil(c));
        let buckets: u64 = if signed { 1 << (c - 1) } else { (1 << c) - 1 };
        let cost = windows * (terms as u64 + 2 * buckets) + windows * u64::from(c);
        if cost < best.0 {
            best = (cost, c);
        }
    }
    best.1
}

/// Signed base-2^c digits of `w` (c ≥ 2), each of magnitude at most
/// `2^(c-1)`, least significant first, as many as needed.
fn signed_digits(w: i64, c: u32) -> Vec<i32> {
    let negative = w < 0;
    let mut m = i128::from(w.unsigned_abs());
    let half = 1i128 << (c - 1);
    let full = 1i128 << c;
    let mut digits = Vec::new();
    while m != 0 {
        let mut d = m & (full - 1);
        m >>= c;
        if d > half {
            d -= full;
            m += 1;
        }
        digits.push(if negative { -d as i32 } else { d as i32 });
    }
    digits
}

/// `slot ← slot·factor`, keeping it `None` until the first factor arrives so
/// that empty buckets cost nothing.
fn mul_into(ctx: &Modulus, slot: &mut Option<Elem>, factor: &Elem) {
    match slot {
        Some(value) => ctx.mul_assign(value, factor),
        None => *slot = Some(factor.clone()),
    }
}

/// One window of the bucket method: `Π_j bucket_j^j`. `picks` yields, for
/// each term, its bucket index (1-based, 0 to skip) and the factor to put in.
fn window_sum<'a>(
    ctx: &Modulus,
    buckets: usize,
    picks: impl Iterator<Item = (usize, &'a Elem)>,
) -> Option<Elem> {
    let mut slots: Vec<Option<Elem>> = vec![None; buckets + 1];
    for (bucket, factor) in picks {
        if let Some(slot) = slots.get_mut(bucket).filter(|_| bucket != 0) {
            mul_into(ctx, slot, factor);
        }
    }
    let mut running: Option<Elem> = None;
    let mut total: Option<Elem> = None;
    for slot in slots.into_iter().skip(1).rev() {
        if let Some(v) = slot {
            mul_into(ctx, &mut running, &v);
        }
        if let Some(r) = running.as_ref() {
            mul_into(ctx, &mut total, r);
        }
    }
    total
}

/// Horner over windows, most significant first: `acc = acc^(2^c) · w_k`.
fn combine_windows(ctx: &Modulus, sums: Vec<Option<Elem>>, c: u32) -> Option<Elem> {
    let mut acc: Option<Elem> = None;
    for sum in sums.into_iter().rev() {
        if let Some(a) = acc.as_mut() {
            for _ in 0..c {
                ctx.sqr_assign(a);
            }
        }
        if let Some(s) = sum.as_ref() {
            mul_into(ctx, &mut acc, s);
        }
    }
    acc
}

/// Unsigned bucket multi-exponentiation of `(base, weight ≥ 0)` terms.
fn multiexp_unsigned(ctx: &Modulus, terms: &[(&Elem, u64)], parallel: bool) -> Option<Elem> {
    let max_bits = terms
        .iter()
        .map(|(_, w)| 64 - w.leading_zeros())
        .max()
        .unwrap_or(0);
    if max_bits == 0 {
        return None;
    }
    let c = choose_window(terms.len(), max_bits, false);
    let windows = max_bits.div_ceil(c) as usize;
    let mask = (1u64 << c) - 1;
    let buckets = mask as usize;
    let one_window = |k: usize| {
        let shift = c * k as u32;
        window_sum(
            ctx,
            buckets,
            terms
                .iter()
                .map(move |(base, w)| (((w >> shift) & mask) as usize, *base)),
        )
    };
    let sums: Vec<Option<Elem>> = if parallel {
        (0..windows).into_par_iter().map(one_window).collect()
    } else {
        (0..windows).map(one_window).collect()
    };
    combine_windows(ctx, sums, c)
}

/// Signed bucket multi-exponentiation over prepared bases.
fn multiexp_signed(
    ctx: &Modulus,
    prepared: &PreparedBases,
    terms: &[(usize, i64)],
    parallel: bool,
) -> Option<Elem> {
    let max_bits = terms.iter().map(|(_, w)| bits_of(*w)).max().unwrap_or(0);
    if max_bits == 0 {
        return None;
    }
    let c = choose_window(terms.len(), max_bits, true);
    let digits: Vec<Vec<i32>> = terms.iter().map(|(_, w)| signed_digits(*w, c)).collect();
    let windows = digits.iter().map(Vec::len).max().unwrap_or(0);
    let buckets = 1usize << (c - 1);
    let one_window = |k: usize| {
        window_sum(
            ctx,
            buckets,
            terms
                .iter()
                .zip(&digits)
                .filter_map(move |((index, _), d)| {
                    let d = d.get(k).copied().unwrap_or(0);
                    let bucket = d.unsigned_abs() as usize;
                    let factor = if d >= 0 {
                        prepared.bases.get(*index)?
                    } else {
                        prepared.inverses.get(*index)?
                    };
                    Some((bucket, factor))
                }),
        )
    };
    let sums: Vec<Option<Elem>> = if parallel {
        (0..windows).into_par_iter().map(one_window).collect()
    } else {
        (0..windows).map(one_window).collect()
    };
    combine_windows(ctx, sums, c)
}

impl PublicKey {
    fn check_same_key(&self, cts: &[Ciphertext]) -> Result<()> {
        if cts.iter().any(|c| c.key != *self) {
            return Err(PaillierError::KeyMismatch);
        }
        Ok(())
    }

    /// `[[Σ w_i·x_i]]` for ciphertexts `[[x_i]]` and signed weights, with the
    /// bucket method (3 to 6 multiplications per term for 16-bit weights,
    /// fewer the more terms) and one inversion for the negative weights. The
    /// result is deterministic (no fresh noise): re-randomize it before it
    /// leaves the party.
    pub fn dot(&self, cts: &[Ciphertext], weights: &[i64]) -> Result<Ciphertext> {
        if cts.len() != weights.len() {
            return Err(PaillierError::Dimension(format!(
                "{} ciphertexts but {} weights",
                cts.len(),
                weights.len()
            )));
        }
        self.check_same_key(cts)?;
        let mut positive = Vec::new();
        let mut negative = Vec::new();
        for (c, &w) in cts.iter().zip(weights) {
            match w.signum() {
                1 => positive.push((&c.elem, w.unsigned_abs())),
                -1 => negative.push((&c.elem, w.unsigned_abs())),
                _ => {}
            }
        }
        let ctx = self.ctx();
        let (p, n) = rayon::join(
            || multiexp_unsigned(ctx, &positive, true),
            || multiexp_unsigned(ctx, &negative, true),
        );
        let n_inv = match n {
            Some(n) => Some(
                ctx.invert_vartime(&n, self.inversion())
                    .ok_or(PaillierError::CiphertextNotUnit)?,
            ),
            None => None,
        };
        let result = match (p, n_inv) {
            (Some(p), Some(n)) => ctx.mul(&p, &n),
            (Some(p), None) => p,
            (None, Some(n)) => n,
            (None, None) => ctx.one(),
        };
        Ok(Ciphertext {
            key: self.clone(),
            elem: result,
        })
    }

    /// Computes the inverses of `cts` (one inversion and three
    /// multiplications per base) so that many signed dot products can share
    /// them.
    pub fn prepare_bases(&self, cts: &[Ciphertext]) -> Result<PreparedBases> {
        self.check_same_key(cts)?;
        let ctx = self.ctx();
        let bases: Vec<Elem> = cts.iter().map(|c| c.elem.clone()).collect();
        // Each chunk pays one inversion (0.19 ms at N = 2048, lifted from
        // one modulo N; 0.74 ms modulo N² directly: `paillier` bench
        // "negate", 2026-11-29), against about 3 µs per base for the three
        // multiplications, so a chunk per thread only pays off for many
        // bases: with two chunks of a pima-mlp stage's 16 bases, direct
        // inversions were 15% of A's offline CPU per frame.
        let chunk = bases
            .len()
            .div_ceil(rayon::current_num_threads().max(1))
            .max(MIN_INVERSION_CHUNK);
        let inverses: Option<Vec<Vec<Elem>>> = bases
            .par_chunks(chunk)
            .map(|chunk| {
                let refs: Vec<&Elem> = chunk.iter().collect();
                ctx.batch_invert_vartime(&refs, self.inversion())
            })
            .collect();
        let inverses = inverses
            .ok_or(PaillierError::CiphertextNotUnit)?
            .into_iter()
            .flatten()
            .collect();
        Ok(PreparedBases {
            key: self.clone(),
            bases,
            inverses,
        })
    }

    /// `[[Σ w·x_index]]` over prepared bases, for sparse rows such as
    /// convolution windows. Indices must be in range.
    pub fn dot_prepared(
        &self,
        prepared: &PreparedBases,
        terms: &[(usize, i64)],
    ) -> Result<Ciphertext> {
        if prepared.key != *self {
            return Err(PaillierError::KeyMismatch);
        }
        if let Some((index, _)) = terms.iter().find(|(i, _)| *i >= prepared.len()) {
            return Err(PaillierError::Dimension(format!(
                "term index {index} out of {} bases",
                prepared.len()
            )));
        }
        let ctx = self.ctx();
        let elem = multiexp_signed(ctx, prepared, terms, false).unwrap_or_else(|| ctx.one());
        Ok(Ciphertext {
            key: self.clone(),
            elem,
        })
    }

    /// `[[W·x]]` for a row-major `rows × cts.len()` weight matrix, rows in
    /// parallel, sharing the bases' inverses.
    pub fn matvec(
        &self,
        cts: &[Ciphertext],
        weights: &[i64],
        rows: usize,
    ) -> Result<Vec<Ciphertext>> {
        let cols = cts.len();
        if weights.len() != rows * cols {
            return Err(PaillierError::Dimension(format!(
                "{} weights for a {rows}×{cols} matrix",
                weights.len()
            )));
        }
        if cols == 0 {
            return Ok(vec![self.zero_ciphertext(); rows]);
        }
        let prepared = self.prepare_bases(cts)?;
        weights
            .par_chunks(cols)
            .map(|row| {
                let terms: Vec<(usize, i64)> = row
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| **w != 0)
                    .map(|(i, w)| (i, *w))
                    .collect();
                self.dot_prepared(&prepared, &terms)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_digits_reconstruct() {
        for c in 2..=10 {
            for w in [
                -70000i64,
                -65535,
                -129,
                -1,
                0,
                1,
                2,
                127,
                128,
                255,
                65535,
                70000,
                i64::from(i32::MAX),
                i64::MAX,
                i64::MIN + 1,
            ] {
                let digits = signed_digits(w, c);
                assert!(digits.len() as u32 <= bits_of(w) / c + 2);
                let half = 1i64 << (c - 1);
                let mut value = 0i128;
                for (k, d) in digits.iter().enumerate() {
                    assert!(
                        i64::from(*d) >= -half && i64::from(*d) <= half,
                        "digit {d} c={c}"
                    );
                    value += i128::from(*d) << (c as usize * k);
                }
                assert_eq!(value, i128::from(w), "w={w} c={c}");
            }
        }
    }

    #[test]
    fn window_choice_grows_with_terms() {
        assert!(choose_window(784, 17, true) > choose_window(8, 17, true));
    }
}
