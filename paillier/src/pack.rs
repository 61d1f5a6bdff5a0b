//! Packing many small signed values into one plaintext, homomorphically.
//!
//! Slot i of a packed plaintext holds `v_i + 2^b` in `b + 2` bits, where
//! `|v_i| < 2^b`: the bias makes every slot non-negative, and the top bit of
//! each slot stays zero for in-range values, so a value that broke its bound
//! is detected on unpacking instead of silently corrupting its neighbour.

use crate::ciphertext::Ciphertext;
use crate::error::{PaillierError, Result};
use crate::keys::PublicKey;
use crate::mont::{Elem, batch_width};
use crate::plaintext::Plaintext;
use crypto_bigint::{BoxedUint, Resize};
use ethnum::I256;
use rand_core::CryptoRng;
use rayon::prelude::*;
use zeroize::Zeroize;

/// How values are laid out in a packed plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackLayout {
    /// Every packed value satisfies `|v| < 2^value_bits`.
    pub value_bits: u32,
    /// Bits per slot: `value_bits + 2` (sign bias and guard bit).
    pub slot_bits: u32,
    /// Slots per plaintext.
    pub slots: usize,
}

/// One ciphertext of [`PublicKey::pack_noised`]: its values (lowest slot
/// first), each value's shift (empty: none) and slot offsets (missing: 0),
/// as [`PublicKey::pack_shifted_offset`] takes them.
#[derive(Clone, Copy, Debug)]
pub struct PackJob<'a> {
    /// How this ciphertext's values are laid out (jobs may differ).
    pub layout: PackLayout,
    /// The ciphertexts to pack.
    pub values: &'a [Ciphertext],
    /// Slot i holds `values[i]·2^(shifts[i])`; empty for no shifts.
    pub shifts: &'a [u32],
    /// Added to each slot (non-negative, below `2^value_bits`).
    pub offsets: &'a [I256],
}

/// The largest value bound a slot may have: slot contents are read back as
/// 256-bit integers.
pub const MAX_VALUE_BITS: u32 = 250;

impl PackLayout {
    /// Ciphertexts needed for `count` values.
    pub fn ciphertexts_for(&self, count: usize) -> usize {
        count.div_ceil(self.slots)
    }
}

impl PublicKey {
    /// The layout for values bounded by `|v| < 2^value_bits`: as many slots
    /// as fit below N with one bit to spare.
    pub fn pack_layout(&self, value_bits: u32) -> Result<PackLayout> {
        if value_bits == 0 || value_bits > MAX_VALUE_BITS {
            return Err(PaillierError::Packing(format!(
                "value bound of {value_bits} bits is outside 1..={MAX_VALUE_BITS}"
            )));
        }
        let slot_bits = value_bits + 2;
        let slots = ((self.bits() - 1) / slot_bits) as usize;
        Ok(PackLayout {
            value_bits,
            slot_bits,
            slots,
        })
    }

    fn check_layout(&self, layout: &PackLayout, count: usize) -> Result<()> {
        let expected = self.pack_layout(layout.value_bits)?;
        if layout.slot_bits != expected.slot_bits || layout.slots > expected.slots {
            return Err(PaillierError::Packing(format!(
                "layout {layout:?} does not fit this {}-bit key",
                self.bits()
            )));
        }
        if count > layout.slots {
            return Err(PaillierError::Packing(format!(
                "{count} values do not fit in {} slots",
                layout.slots
            )));
        }
        if count == 0 {
            return Err(PaillierError::Packing("nothing to pack".into()));
        }
        Ok(())
    }

    /// The bias added to `count` slots: `Σ 2^value_bits · 2^(slot_bits·i)`.
    fn pack_bias(&self, layout: &PackLayout, count: usize) -> BoxedUint {
        let mut bias = BoxedUint::zero_with_precision(self.bits());
        for i in 0..count {
            let bit = layout.slot_bits * i as u32 + layout.value_bits;
            bias = bias.bitor(&BoxedUint::one_with_precision(self.bits()).shl(bit));
        }
        bias
    }

    /// The checks of [`PublicKey::pack_shifted_offset`].
    fn check_shifted(
        &self,
        layout: &PackLayout,
        values: &[Ciphertext],
        shifts: &[u32],
        offsets: &[I256],
    ) -> Result<()> {
        self.check_layout(layout, values.len())?;
        if offsets.len() > values.len() {
            return Err(PaillierError::Dimension(format!(
                "{} offsets for {} values",
                offsets.len(),
                values.len()
            )));
        }
        let limit = I256::ONE << layout.value_bits;
        if offsets.iter().any(|o| *o < 0 || *o >= limit) {
            return Err(PaillierError::Packing(format!(
                "slot offsets must lie in [0, 2^{})",
                layout.value_bits
            )));
        }
        if shifts.len() != values.len() {
            return Err(PaillierError::Dimension(format!(
                "{} shifts for {} values",
                shifts.len(),
                values.len()
            )));
        }
        if let Some(e) = shifts.iter().find(|e| **e > layout.slot_bits) {
            return Err(PaillierError::Packing(format!(
                "shift {e} exceeds the slot width {}",
                layout.slot_bits
            )));
        }
        Ok(())
    }

    /// The packing bias of `count` slots plus each slot's offset.
    fn offset_bias(
        &self,
        layout: &PackLayout,
        count: usize,
        offsets: &[I256],
    ) -> Result<BoxedUint> {
        let mut bias = self.pack_bias(layout, count);
        for (i, offset) in offsets.iter().enumerate() {
            let bytes = offset.to_be_bytes();
            let value = BoxedUint::from_be_slice(&bytes, 256)
                .map_err(|_| PaillierError::Packing("slot offset".into()))?
                .resize_unchecked(self.bits())
                .shl(layout.slot_bits * i as u32);
            // Each offset and its slot's bias bit stay inside the slot.
            bias = bias.wrapping_add(&value);
        }
        Ok(bias)
    }

    /// [`PublicKey::pack_shifted_offset`] of every job, each re-randomized
    /// with fresh textbook noise `r^N` (r uniform in Z*_N, drawn from
    /// `rng`): what packing and then [`PublicKey::rerandomize`] with
    /// [`PublicKey::fresh_noise`] give, with the noise exponentiation's
    /// squarings doing Horner's too (`mont/injected.rs`), eight jobs at a
    /// time where the CPU has AVX-512 IFMA, batches in parallel. Same
    /// assumption as textbook noise (DCR alone).
    pub fn pack_noised<R: CryptoRng + ?Sized>(
        &self,
        jobs: &[PackJob<'_>],
        rng: &mut R,
    ) -> Result<Vec<Ciphertext>> {
        let mut biases = Vec::with_capacity(jobs.len());
        let mut extras: Vec<Vec<(u32, &Elem)>> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let layout = &job.layout;
            let zeros = vec![0u32; job.values.len()];
            let shifts = if job.shifts.is_empty() {
                &zeros[..]
            } else {
                job.shifts
            };
            self.check_shifted(layout, job.values, shifts, job.offsets)?;
            biases.push(self.offset_bias(layout, job.values.len(), job.offsets)?);
            extras.push(
                job.values
                    .iter()
                    .zip(shifts)
                    .enumerate()
                    .map(|(k, (v, e))| (layout.slot_bits * k as u32 + e, &v.elem))
                    .collect(),
            );
        }
        let ctx = self.ctx();
        let mut bases: Vec<Elem> = jobs.iter().map(|_| self.enter_random_unit(rng)).collect();
        let exponent = crate::words::u64_words(self.n());
        let public_positions = jobs.iter().all(|j| j.shifts.is_empty());
        // Batches run in parallel; the r were drawn in job order above, so
        // a seeded generator gives the same ciphertexts on any machine.
        let batch = batch_width();
        let sealed: Vec<Elem> = bases
            .par_chunks(batch)
            .zip(extras.par_chunks(batch))
            .flat_map_iter(|(bases, extras)| {
                ctx.pow_vartime_with_many(bases, &exponent, extras, public_positions)
            })
            .collect();
        for b in &mut bases {
            b.zeroize();
        }
        Ok(sealed
            .into_iter()
            .zip(&biases)
            .map(|(mut elem, bias)| {
                ctx.mul_assign(&mut elem, &self.g_pow(bias));
                Ciphertext {
                    key: self.clone(),
                    elem,
                }
            })
            .collect())
    }

    /// Packs up to `layout.slots` ciphertexts into one, value 0 in the lowest
    /// slot, by Horner's rule: `slot_bits` squarings per value plus one
    /// multiplication, and one more for the bias. The caller vouches for the
    /// bound `|v| < 2^value_bits` (it cannot be checked under encryption);
    /// [`Plaintext::unpack`] detects violations through the guard bits.
    pub fn pack(&self, layout: &PackLayout, values: &[Ciphertext]) -> Result<Ciphertext> {
        self.check_layout(layout, values.len())?;
        let mut iter = values.iter().rev();
        let Some(top) = iter.next() else {
            return Err(PaillierError::Packing("nothing to pack".into()));
        };
        let ctx = self.ctx();
        let mut acc = top.elem.clone();
        for value in iter {
            for _ in 0..layout.slot_bits {
                ctx.sqr_assign(&mut acc);
            }
            ctx.mul_assign(&mut acc, &value.elem);
        }
        let bias = self.pack_bias(layout, values.len());
        ctx.mul_assign(&mut acc, &self.g_pow(&bias));
        Ok(Ciphertext {
            key: self.clone(),
            elem: acc,
        })
    }

    /// Packs like [`PublicKey::pack`], slot i holding `v_i·2^(shifts[i])`.
    /// The shifts cost nothing beyond Horner's squarings: a step becomes
    /// `acc ← (acc^(2^(slot-e))·c)^(2^e)`. Each shift must be at most the
    /// slot width, and the caller vouches that `|v_i·2^(shifts[i])|` stays
    /// below the layout's bound.
    pub fn pack_shifted(
        &self,
        layout: &PackLayout,
        values: &[Ciphertext],
        shifts: &[u32],
    ) -> Result<Ciphertext> {
        self.pack_shifted_offset(layout, values, shifts, &[])
    }

    /// Like [`PublicKey::pack_shifted`], slot i holding
    /// `v_i·2^(shifts[i]) + offsets[i]` (missing offsets are 0): the
    /// offsets ride on the bias multiplication, so they cost nothing. Each
    /// offset must be non-negative and below `2^value_bits`, and the caller
    /// vouches for the bound of the sum.
    pub fn pack_shifted_offset(
        &self,
        layout: &PackLayout,
        values: &[Ciphertext],
        shifts: &[u32],
        offsets: &[I256],
    ) -> Result<Ciphertext> {
        self.check_shifted(layout, values, shifts, offsets)?;
        let ctx = self.ctx();
        let mut pairs = values.iter().zip(shifts).rev();
        let Some((top, top_shift)) = pairs.next() else {
            return Err(PaillierError::Packing("nothing to pack".into()));
        };
        let mut acc = top.elem.clone();
        for _ in 0..*top_shift {
            ctx.sqr_assign(&mut acc);
        }
        for (value, shift) in pairs {
            for _ in 0..layout.slot_bits - shift {
                ctx.sqr_assign(&mut acc);
            }
            ctx.mul_assign(&mut acc, &value.elem);
            for _ in 0..*shift {
                ctx.sqr_assign(&mut acc);
            }
        }
        let bias = self.offset_bias(layout, values.len(), offsets)?;
        ctx.mul_assign(&mut acc, &self.g_pow(&bias));
        Ok(Ciphertext {
            key: self.clone(),
            elem: acc,
        })
    }

    /// Packs any number of ciphertexts, in chunks of `layout.slots`, in
    /// parallel.
    pub fn pack_all(&self, layout: &PackLayout, values: &[Ciphertext]) -> Result<Vec<Ciphertext>> {
        if layout.slots == 0 {
            return Err(PaillierError::Packing("layout has no slots".into()));
        }
        values
            .par_chunks(layout.slots)
            .map(|chunk| self.pack(layout, chunk))
            .collect()
    }

    /// Packs plaintext values the same way (for checking, and for packing
    /// values the encryptor knows in the clear).
    pub fn pack_plain(&self, layout: &PackLayout, values: &[I256]) -> Result<Plaintext> {
        self.check_layout(layout, values.len())?;
        let bound = I256::ONE << layout.value_bits;
        let mut acc = BoxedUint::zero_with_precision(self.bits());
        for (i, v) in values.iter().enumerate() {
            if *v >= bound || *v <= -bound {
                return Err(PaillierError::Packing(format!(
                    "value {i} ({v}) exceeds the slot bound 2^{}",
                    layout.value_bits
                )));
            }
            let biased = (*v + bound).as_u256();
            let (hi, lo) = biased.into_words();
            let slot = crate::words::from_u128_halves(lo, hi)
                .resize_unchecked(self.bits())
                .shl(layout.slot_bits * i as u32);
            acc = acc.bitor(&slot);
        }
        self.plaintext_from_residue(&acc)
    }
}

impl Plaintext {
    /// Reads `count` values laid out by `layout`, checking every guard bit
    /// and that nothing lies above the last slot.
    pub fn unpack(&self, layout: &PackLayout, count: usize) -> Result<Vec<I256>> {
        self.key.check_layout(layout, count)?;
        let residue = &self.residue;
        let used = layout.slot_bits * count as u32;
        if residue.bit_width_vartime() > used {
            return Err(PaillierError::Packing(format!(
                "packed plaintext has {} bits, more than {count} slots of {} bits: a value broke its bound",
                residue.bit_width_vartime(),
                layout.slot_bits
            )));
        }
        let bias = I256::ONE << layout.value_bits;
        (0..count)
            .map(|i| {
                let start = layout.slot_bits * i as u32;
                let slot = read_bits(residue, start, layout.slot_bits);
                if slot >= bias << 1 {
                    return Err(PaillierError::Packing(format!(
                        "slot {i} overflowed its guard bit: a value broke its bound 2^{}",
                        layout.value_bits
                    )));
                }
                Ok(slot - bias)
            })
            .collect()
    }
}

/// Bits `start..start+len` of `value` (len at most 255) as a non-negative I256.
fn read_bits(value: &BoxedUint, start: u32, len: u32) -> I256 {
    let mut out = I256::ZERO;
    for b in (0..len).rev() {
        out <<= 1;
        if value.bit_vartime(start + b) {
            out |= I256::ONE;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::key_2048_a;
    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    #[test]
    fn noised_packs_are_packs_times_the_same_textbook_noise() {
        let secret = key_2048_a();
        let key = secret.public_key();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let layout = key.pack_layout(150).expect("layout");
        // Nine jobs: one batch of eight and a single one; full, partial
        // and one-value packs; shifted and not.
        let counts = [layout.slots, 3, 1, layout.slots, 5, 7, 2, layout.slots, 4];
        let values: Vec<Vec<Ciphertext>> = counts
            .iter()
            .enumerate()
            .map(|(j, &n)| {
                (0..n)
                    .map(|k| {
                        let v = I256::from((j * 1000 + k) as i64) - 40;
                        key.encrypt(&key.encode(v), &mut rng).expect("encrypts")
                    })
                    .collect()
            })
            .collect();
        let shifts: Vec<Vec<u32>> = counts
            .iter()
            .map(|&n| (0..n).map(|k| (k as u32 * 37) % 100).collect())
            .collect();
        let offsets: Vec<Vec<I256>> = counts
            .iter()
            .map(|&n| (0..n).map(|k| I256::from(k as i64 * 5)).collect())
            .collect();
        for shifted in [false, true] {
            let jobs: Vec<PackJob<'_>> = (0..counts.len())
                .map(|j| PackJob {
                    layout,
                    values: &values[j],
                    shifts: if shifted { &shifts[j] } else { &[] },
                    offsets: &offsets[j],
                })
                .collect();
            let sealed = key
                .pack_noised(&jobs, &mut ChaCha20Rng::seed_from_u64(9))
                .expect("packs");
            let mut draws = ChaCha20Rng::seed_from_u64(9);
            for (job, got) in jobs.iter().zip(&sealed) {
                let zeros = vec![0u32; job.values.len()];
                let job_shifts = if shifted { job.shifts } else { &zeros[..] };
                let packed = key
                    .pack_shifted_offset(&layout, job.values, job_shifts, job.offsets)
                    .expect("packs");
                let noise = key
                    .noise_from_r(&key.random_unit(&mut draws))
                    .expect("unit");
                let expected = key.rerandomize(&packed, noise);
                assert_eq!(got.to_bytes(), expected.to_bytes());
                let plain: Vec<I256> = job
                    .values
                    .iter()
                    .zip(job_shifts)
                    .zip(job.offsets)
                    .map(|((c, e), o)| {
                        let v = secret
                            .decrypt(c)
                            .expect("decrypts")
                            .to_i256()
                            .expect("small");
                        (v << *e) + *o
                    })
                    .collect();
                let opened = secret.decrypt(got).expect("decrypts");
                assert_eq!(opened.unpack(&layout, plain.len()).expect("unpacks"), plain);
            }
        }
    }

    #[test]
    fn noised_packing_refuses_what_packing_refuses() {
        let key = key_2048_a().public_key();
        let layout = key.pack_layout(100).expect("layout");
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let c = key
            .encrypt(&key.encode(I256::ONE), &mut rng)
            .expect("encrypts");
        let too_many = vec![c.clone(); layout.slots + 1];
        let jobs = [PackJob {
            layout,
            values: &too_many,
            shifts: &[],
            offsets: &[],
        }];
        assert!(matches!(
            key.pack_noised(&jobs, &mut rng),
            Err(PaillierError::Packing(_))
        ));
        let one = [c];
        let jobs = [PackJob {
            layout,
            values: &one,
            shifts: &[layout.slot_bits + 1],
            offsets: &[],
        }];
        assert!(matches!(
            key.pack_noised(&jobs, &mut rng),
            Err(PaillierError::Packing(_))
        ));
    }
}
